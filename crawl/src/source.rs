//! The crawl as a dataflow source: each worker crawls the hosts of its key groups, and its
//! links to other workers' hosts go to their partitions. The partitions live in one process
//! and are shared in memory, so a job that spans several processes crawls in its first
//! process, over that process's workers: the other processes' source workers read nothing,
//! and the records go on from the first process to every worker of the job, as any source's
//! do. (Crawling in every process would need links sent between processes and an end agreed
//! between them.)

use std::sync::{Arc, Mutex};

use arrow::datatypes::SchemaRef;
use streamrun_engine::{
    Descriptor, Error, Result, Source, SourceCollector, SourceReader, WorkerContext,
};
use tokio::sync::mpsc;

use crate::crawler::Shared;
use crate::{CrawlConfig, PageRecord};

/// Records read into one batch at most.
const BATCH: usize = 256;

/// A crawl, as a job's source: one row per fetch ([`PageRecord::schema`]), its `fetched_at`
/// the event time.
pub struct CrawlSource {
    config: CrawlConfig,
    running: Mutex<Option<Running>>,
}

struct Running {
    shared: Arc<Shared>,
    runtime: Arc<tokio::runtime::Runtime>,
}

impl CrawlSource {
    /// A source crawling as `config` says.
    pub fn new(config: CrawlConfig) -> Self {
        CrawlSource {
            config,
            running: Mutex::new(None),
        }
    }

    /// Its plan descriptor (`crawl`, with the configuration).
    pub fn descriptor(&self) -> Descriptor {
        Descriptor::new(
            "crawl",
            serde_json::to_value(&self.config).unwrap_or(serde_json::Value::Null),
        )
    }

    /// The descriptor and the source, as `Job::source` takes them.
    pub fn into_parts(self) -> (Descriptor, Arc<dyn Source>) {
        (self.descriptor(), Arc::new(self))
    }
}

impl Source for CrawlSource {
    fn schema(&self) -> Result<SchemaRef> {
        self.config
            .validate()
            .map_err(|e| Error::Input(e.to_string()))?;
        Ok(PageRecord::schema())
    }

    fn open(&self, ctx: &WorkerContext) -> Result<Box<dyn SourceReader>> {
        let local = ctx.process_workers();
        if local.start > 0 {
            // Not the job's first process: the crawl runs there.
            return Ok(Box::new(Nothing));
        }
        let partitions = local.len();
        if partitions < ctx.workers && ctx.index == 0 {
            tracing::info!(
                partitions,
                workers = ctx.workers,
                "the job spans several processes: the crawl runs on the first process's workers"
            );
        }
        let (shared, runtime) = {
            let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
            let r = match &mut *running {
                Some(r) => r,
                none => {
                    let shared = Shared::new(self.config.clone(), partitions)
                        .map_err(|e| Error::Input(e.to_string()))?;
                    shared.seed();
                    let runtime = tokio::runtime::Builder::new_multi_thread()
                        .worker_threads(partitions.clamp(1, 4))
                        .thread_name("streamrun-crawl")
                        .enable_all()
                        .build()
                        .map_err(|e| Error::Input(format!("starting the crawl's runtime: {e}")))?;
                    none.insert(Running {
                        shared,
                        runtime: Arc::new(runtime),
                    })
                }
            };
            (Arc::clone(&r.shared), Arc::clone(&r.runtime))
        };
        let (tx, rx) = mpsc::channel(self.config.buffer);
        let task = runtime.spawn(Arc::clone(&shared).run_worker(ctx.index % shared.workers(), tx));
        Ok(Box::new(CrawlReader {
            records: rx,
            task,
            _runtime: runtime,
        }))
    }
}

/// The reader of a source worker outside the crawl's process.
struct Nothing;

impl SourceReader for Nothing {
    fn read(&mut self, _out: &mut SourceCollector) -> Result<bool> {
        Ok(false)
    }
}

struct CrawlReader {
    records: mpsc::Receiver<PageRecord>,
    /// The task crawling this worker's hosts: it goes with the reader (a failed job's
    /// reader is dropped without reading to the end).
    task: tokio::task::JoinHandle<()>,
    _runtime: Arc<tokio::runtime::Runtime>,
}

impl Drop for CrawlReader {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SourceReader for CrawlReader {
    fn read(&mut self, out: &mut SourceCollector) -> Result<bool> {
        let mut records = Vec::new();
        let mut open = true;
        while records.len() < BATCH {
            match self.records.try_recv() {
                Ok(r) => records.push(r),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }
        if !records.is_empty() {
            let bytes = records.iter().map(|r| r.bytes).sum();
            let batch = PageRecord::to_batch(&records)
                .map_err(|e| Error::Input(format!("crawl records: {e}")))?;
            out.emit(batch, bytes);
        }
        Ok(open || !records.is_empty())
    }
}
