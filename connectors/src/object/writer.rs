//! One worker's writer: a part file written locally, uploaded when the worker finishes.

use std::path::PathBuf;

use arrow::array::RecordBatch;
use object_store::path::Path;
use streamrun_engine::{Error, Result, SinkWriter};

use super::reader::rename_error;
use super::store::{Client, Scratch};

/// One worker's part: written by a file sink's writer into a scratch directory, then
/// uploaded as one object.
pub(crate) struct ObjectWriter {
    /// `None` once finished.
    inner: Option<Box<dyn SinkWriter>>,
    client: Client,
    /// Holds the local part file; removed when the writer is dropped.
    scratch: Scratch,
    /// The local part file, once the file writer has committed it.
    local: PathBuf,
    /// The local names of the part (the temporary and the committed file), as the file
    /// writer's errors name it.
    local_names: [String; 2],
    target: Path,
    url: String,
}

impl ObjectWriter {
    pub fn new(
        inner: Box<dyn SinkWriter>,
        client: Client,
        scratch: Scratch,
        part_name: &str,
        target: Path,
        url: String,
    ) -> Self {
        let local = scratch.path().join(part_name);
        let tmp = scratch.path().join(format!(".{part_name}.tmp"));
        ObjectWriter {
            inner: Some(inner),
            client,
            local_names: [tmp.display().to_string(), local.display().to_string()],
            scratch,
            local,
            target,
            url,
        }
    }

    /// `e` with the local part file named as the object.
    fn rename(&self, e: Error) -> Error {
        let [tmp, local] = &self.local_names;
        rename_error(rename_error(e, tmp, &self.url), local, &self.url)
    }
}

impl std::fmt::Debug for ObjectWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectWriter")
            .field("url", &self.url)
            .field("scratch", &self.scratch)
            .finish_non_exhaustive()
    }
}

impl SinkWriter for ObjectWriter {
    fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        match self.inner.as_mut() {
            Some(inner) => inner.write(batch).map_err(|e| self.rename(e)),
            None => Err(Error::Internal(format!(
                "writing {}: the part was already uploaded",
                self.url
            ))),
        }
    }

    fn finish(&mut self) -> Result<()> {
        let Some(mut inner) = self.inner.take() else {
            return Ok(());
        };
        let uploaded = inner
            .finish()
            .map_err(|e| self.rename(e))
            .and_then(|()| self.client.upload(&self.local, &self.target, &self.url));
        // Best effort: the scratch directory goes too, when the writer is dropped.
        let _ = std::fs::remove_file(&self.local);
        uploaded
    }
}
