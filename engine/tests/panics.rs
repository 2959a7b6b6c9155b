//! A connector that panics fails its job with an error naming the panic; it never hangs it.

use std::sync::Arc;

use arrow::array::{Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use streamrun_engine::*;

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]))
}

/// Where the connectors panic.
#[derive(Clone, Copy, PartialEq)]
enum At {
    SourceOpen,
    SinkOpen,
    SinkWrite,
}

struct One(At);
struct OneReader(bool);

impl Source for One {
    fn schema(&self) -> Result<SchemaRef> {
        Ok(schema())
    }
    fn open(&self, _ctx: &WorkerContext) -> Result<Box<dyn SourceReader>> {
        assert!(self.0 != At::SourceOpen, "source open blew up");
        Ok(Box::new(OneReader(false)))
    }
}

impl SourceReader for OneReader {
    fn read(&mut self, out: &mut SourceCollector) -> Result<bool> {
        if !self.0 {
            let batch = RecordBatch::try_new(schema(), vec![Arc::new(Int64Array::from(vec![1]))])
                .map_err(|e| Error::arrow("one", e))?;
            out.emit(batch, 8);
            self.0 = true;
        }
        Ok(false)
    }
}

struct Boom(At);

impl Sink for Boom {
    fn open(&self, _ctx: &WorkerContext, _schema: &SchemaRef) -> Result<Box<dyn SinkWriter>> {
        assert!(self.0 != At::SinkOpen, "sink open blew up");
        Ok(Box::new(Boom(self.0)))
    }
}

impl SinkWriter for Boom {
    fn write(&mut self, _batch: &RecordBatch) -> Result<()> {
        assert!(self.0 != At::SinkWrite, "sink write blew up");
        Ok(())
    }
    fn finish(&mut self) -> Result<()> {
        Ok(())
    }
}

#[test]
fn a_panicking_connector_fails_the_job_naming_the_panic() {
    for (at, words) in [
        (At::SourceOpen, "source open blew up"),
        (At::SinkOpen, "sink open blew up"),
        (At::SinkWrite, "sink write blew up"),
    ] {
        for workers in [1, 2] {
            let mut graph = JobGraph::new("panics");
            let source = graph.add_source(
                "one",
                SourceDecl {
                    descriptor: Descriptor::new("one", serde_json::Value::Null),
                    source: Arc::new(One(at)),
                    on_bad_record: BadRecordPolicy::Fail,
                    dead_letters: None,
                    event_time: None,
                },
            );
            graph.add_sink(
                source,
                "boom",
                Descriptor::new("boom", serde_json::Value::Null),
                Arc::new(Boom(at)),
            );
            let error = execute(&graph, &ExecOptions::new(workers))
                .expect_err("the job fails")
                .to_string();
            assert!(error.contains(words), "{workers} workers: {error}");
        }
    }
}
