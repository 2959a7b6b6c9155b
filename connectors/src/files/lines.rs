//! Byte-range splits of line-oriented files, and the bounded reading of their lines.
//!
//! A split `[start, end)` owns the lines whose first byte lies in it. Its reader starts at
//! `start` when `start` is 0, and otherwise just after the first `\n` at or after `start - 1`
//! (so a line starting exactly at `start` is its own); it reads lines while the next line
//! starts before `end`, reading past `end` to finish the last one.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use streamrun_engine::{Error, Result};

use super::display;

/// No split is smaller than this (unless its file is).
pub(crate) const MIN_SPLIT_BYTES: u64 = 64 * 1024;
/// How many splits per worker the planner aims at, over all files.
const SPLITS_PER_WORKER: u64 = 4;
/// The longest line a reader accepts.
pub(crate) const MAX_LINE_BYTES: usize = 64 << 20;
/// A chunk stops taking lines once it holds this many bytes.
pub(crate) const MAX_CHUNK_BYTES: usize = 8 << 20;
/// The size of read buffers.
const IO_BUFFER_BYTES: usize = 64 * 1024;

/// A byte range of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ByteSplit {
    /// The file.
    pub path: Arc<PathBuf>,
    /// The first byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
}

/// Cuts `files` (path and size, in order) into splits: about 4 per worker over all files,
/// none smaller than [`MIN_SPLIT_BYTES`] unless its file is, or one per file when the files
/// are not splittable. Empty files have no split. Splits come in file order, then offset
/// order.
pub(crate) fn plan_splits(
    files: &[(PathBuf, u64)],
    workers: usize,
    splittable: bool,
) -> Vec<ByteSplit> {
    let sizes: Vec<u64> = files.iter().map(|(_, size)| *size).collect();
    let min_split = if splittable {
        MIN_SPLIT_BYTES
    } else {
        u64::MAX
    };
    let paths: Vec<Arc<PathBuf>> = files.iter().map(|(p, _)| Arc::new(p.clone())).collect();
    plan_ranges(&sizes, workers, min_split)
        .into_iter()
        .map(|(file, range)| ByteSplit {
            path: Arc::clone(&paths[file]),
            start: range.start,
            end: range.end,
        })
        .collect()
}

/// Cuts items of `sizes` bytes into byte ranges `(item, range)`: about 4 per worker over
/// all items, none smaller than `min_split` unless its item is (`u64::MAX`: one per item).
/// Empty items have none. Ranges come in item order, then offset order.
pub(crate) fn plan_ranges(
    sizes: &[u64],
    workers: usize,
    min_split: u64,
) -> Vec<(usize, std::ops::Range<u64>)> {
    let total: u64 = sizes.iter().sum();
    let target = (workers.max(1) as u64).saturating_mul(SPLITS_PER_WORKER);
    let split_bytes = total.div_ceil(target).max(min_split).max(1);
    let mut ranges = Vec::new();
    for (item, &size) in sizes.iter().enumerate() {
        if size == 0 {
            continue;
        }
        let pieces = (size / split_bytes).max(1);
        for k in 0..pieces {
            // Even pieces; u128 keeps k * size from overflowing.
            let bound = |k: u64| (u128::from(k) * u128::from(size) / u128::from(pieces)) as u64;
            ranges.push((item, bound(k)..bound(k + 1)));
        }
    }
    ranges
}

/// Reads one line, terminator included, into `buf`, stopping after [`MAX_LINE_BYTES`].
/// Returns how many bytes it read: 0 at the end of the input.
pub(crate) fn read_line(reader: &mut impl BufRead, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    reader.take(MAX_LINE_BYTES as u64).read_until(b'\n', buf)
}

/// Skips to just after the next `\n` (or to the end), without buffering the line.
/// Returns how many bytes it skipped.
fn skip_line(reader: &mut impl BufRead) -> std::io::Result<u64> {
    let mut skipped = 0u64;
    loop {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            return Ok(skipped);
        }
        match buf.iter().position(|b| *b == b'\n') {
            Some(i) => {
                reader.consume(i + 1);
                return Ok(skipped + i as u64 + 1);
            }
            None => {
                let n = buf.len();
                reader.consume(n);
                skipped += n as u64;
            }
        }
    }
}

/// Counts the `\n` bytes in the first `upto` bytes of the file.
fn count_newlines(path: &Path, upto: u64) -> Result<u64> {
    let io = |e| Error::io(format!("reading {}", display(path)), e);
    let file = File::open(path).map_err(io)?;
    let mut reader = file.take(upto);
    let mut buf = vec![0u8; IO_BUFFER_BYTES];
    let mut count = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => return Ok(count),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io(e)),
        };
        count += buf[..n].iter().filter(|b| **b == b'\n').count() as u64;
    }
}

/// Reads the first line of a file, without its terminator.
pub(crate) fn first_line(path: &Path) -> Result<Vec<u8>> {
    let io = |e| Error::io(format!("reading {}", display(path)), e);
    let mut reader = BufReader::with_capacity(IO_BUFFER_BYTES, File::open(path).map_err(io)?);
    let mut line = Vec::new();
    read_line(&mut reader, &mut line).map_err(io)?;
    Ok(line_content(&line).to_vec())
}

/// A line without its terminator: `\n`, or `\r\n`.
pub(crate) fn line_content(raw: &[u8]) -> &[u8] {
    match raw.strip_suffix(b"\n") {
        Some(line) => line.strip_suffix(b"\r").unwrap_or(line),
        None => raw,
    }
}

/// A run of consecutive lines of a split, in one buffer.
#[derive(Debug, Default)]
pub(crate) struct Chunk {
    buf: Vec<u8>,
    /// Where each line ends in `buf` (terminator included).
    ends: Vec<usize>,
    /// The index, within its split, of the first line.
    first_index: u64,
}

impl Chunk {
    /// How many lines it holds.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether it holds no line.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// All its bytes, terminators included.
    pub fn raw(&self) -> &[u8] {
        &self.buf
    }

    /// How many bytes of input it holds.
    pub fn bytes(&self) -> u64 {
        self.buf.len() as u64
    }

    /// Line `i`, terminator included.
    pub fn raw_line(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.buf[start..self.ends[i]]
    }

    /// Where line `i`, without its terminator, lies in [`Chunk::raw`].
    pub fn line_range(&self, i: usize) -> std::ops::Range<usize> {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        start..start + self.line(i).len()
    }

    /// Line `i`, without its terminator.
    pub fn line(&self, i: usize) -> &[u8] {
        line_content(self.raw_line(i))
    }

    /// The index, within its split, of line `i`.
    pub fn index(&self, i: usize) -> u64 {
        self.first_index + i as u64
    }

    fn clear(&mut self) {
        self.buf.clear();
        if self.buf.capacity() > 2 * MAX_CHUNK_BYTES {
            self.buf.shrink_to(MAX_CHUNK_BYTES);
        }
        self.ends.clear();
    }
}

/// Reads the lines of one split, a chunk at a time.
#[derive(Debug)]
pub(crate) struct SplitCursor {
    path: Arc<PathBuf>,
    reader: BufReader<File>,
    /// Where the next line starts.
    pos: u64,
    end: u64,
    /// Where the split's first line starts.
    first_line_pos: u64,
    /// How many lines it has read.
    lines_read: u64,
    /// The 1-based line number of the split's first line, once needed.
    line_base: Option<u64>,
    eof: bool,
}

impl SplitCursor {
    /// Opens a split; with `skip_header`, the first line of the file is not data.
    pub fn open(split: &ByteSplit, skip_header: bool) -> Result<Self> {
        let path = &split.path;
        let io = |e| Error::io(format!("reading {}", display(path)), e);
        let file = File::open(path.as_path())
            .map_err(|e| Error::io(format!("opening {}", display(path)), e))?;
        let mut reader = BufReader::with_capacity(IO_BUFFER_BYTES, file);
        let mut pos = 0;
        if split.start > 0 {
            reader.seek(SeekFrom::Start(split.start - 1)).map_err(io)?;
            pos = split.start - 1 + skip_line(&mut reader).map_err(io)?;
        } else if skip_header {
            pos = skip_line(&mut reader).map_err(io)?;
        }
        Ok(SplitCursor {
            path: Arc::clone(path),
            reader,
            pos,
            end: split.end,
            first_line_pos: pos,
            lines_read: 0,
            line_base: None,
            eof: false,
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether every line of the split has been read.
    pub fn is_done(&self) -> bool {
        self.eof || self.pos >= self.end
    }

    /// Reads the next lines into `chunk`: at most `max_lines`, and no more once it holds
    /// [`MAX_CHUNK_BYTES`]. Leaves it empty when the split is done.
    pub fn read_chunk(&mut self, chunk: &mut Chunk, max_lines: usize) -> Result<()> {
        chunk.clear();
        chunk.first_index = self.lines_read;
        // Works on the reader's buffer directly: whole runs of lines are found with memchr
        // and copied at once, and only a line cut by the buffer's end is copied in pieces.
        let mut line_start = 0;
        loop {
            let partial = chunk.buf.len() > line_start;
            let full = chunk.len() >= max_lines || chunk.buf.len() >= MAX_CHUNK_BYTES;
            if !partial && (full || self.is_done()) {
                return Ok(());
            }
            let path = Arc::clone(&self.path);
            let io = |e| Error::io(format!("reading {}", display(&path)), e);
            let available = self.reader.fill_buf().map_err(io)?;
            if available.is_empty() {
                self.eof = true;
                if partial {
                    // The last line of the file, without a terminator.
                    self.end_line(chunk, line_start);
                }
                return Ok(());
            }
            let mut used = 0;
            let mut stop = false;
            while let Some(i) = memchr::memchr(b'\n', &available[used..]) {
                let next = used + i + 1;
                chunk.buf.extend_from_slice(&available[used..next]);
                used = next;
                if chunk.buf.len() - line_start > MAX_LINE_BYTES {
                    break;
                }
                chunk.ends.push(chunk.buf.len());
                self.pos += (chunk.buf.len() - line_start) as u64;
                self.lines_read += 1;
                line_start = chunk.buf.len();
                if chunk.len() >= max_lines
                    || chunk.buf.len() >= MAX_CHUNK_BYTES
                    || self.pos >= self.end
                {
                    stop = true;
                    break;
                }
            }
            if !stop && chunk.buf.len() - line_start <= MAX_LINE_BYTES {
                // A line continues past the buffer: keep its beginning and read on.
                chunk.buf.extend_from_slice(&available[used..]);
                used = available.len();
            }
            self.reader.consume(used);
            if chunk.buf.len() - line_start > MAX_LINE_BYTES {
                let line = self.line_number(self.lines_read)?;
                return Err(Error::Input(format!(
                    "{}:{line}: line longer than {} MiB",
                    display(&self.path),
                    MAX_LINE_BYTES >> 20
                )));
            }
        }
    }

    /// Records the line that ends at the end of `chunk.buf` and began at `line_start`.
    fn end_line(&mut self, chunk: &mut Chunk, line_start: usize) {
        chunk.ends.push(chunk.buf.len());
        self.pos += (chunk.buf.len() - line_start) as u64;
        self.lines_read += 1;
    }

    /// The 1-based line number, in the file, of the split's line `index`. The first call
    /// counts the lines before the split.
    pub fn line_number(&mut self, index: u64) -> Result<u64> {
        let base = match self.line_base {
            Some(base) => base,
            None => {
                let base = 1 + count_newlines(&self.path, self.first_line_pos)?;
                self.line_base = Some(base);
                base
            }
        };
        Ok(base + index)
    }

    /// `file:line` for the split's line `index`.
    pub fn location(&mut self, index: u64) -> Result<String> {
        let line = self.line_number(index)?;
        Ok(format!("{}:{line}", display(&self.path)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_cover_files_evenly() {
        let files = vec![
            (PathBuf::from("a"), 1_000_000),
            (PathBuf::from("b"), 0),
            (PathBuf::from("c"), 100),
        ];
        let splits = plan_splits(&files, 4, true);
        // 1_000_100 / 16 is below the 64 KiB minimum: 15 pieces of a, 1 of c.
        assert_eq!(splits.len(), 16);
        let mut expected_start = 0;
        for split in splits.iter().filter(|s| s.path.as_path() == Path::new("a")) {
            assert_eq!(split.start, expected_start);
            assert!(split.end - split.start >= MIN_SPLIT_BYTES);
            expected_start = split.end;
        }
        assert_eq!(expected_start, 1_000_000);
        assert_eq!(plan_splits(&files, 4, false).len(), 2);
        assert_eq!(plan_splits(&files, 1, true).len(), 4);
    }

    #[test]
    fn line_content_strips_terminators() {
        assert_eq!(line_content(b"a\r\n"), b"a");
        assert_eq!(line_content(b"a\n"), b"a");
        assert_eq!(line_content(b"a\r"), b"a\r");
        assert_eq!(line_content(b"a"), b"a");
    }
}
