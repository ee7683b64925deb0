//! `--flows-out`: conversation records ([`BiflowRecord`], format version 2) as JSON lines, to a
//! file (appended) or standard output.
//!
//! Two ways to use a [`FlowWriter`]: `vigil replay` wants every error (a replay that cannot
//! write has failed), so [`FlowWriter::write`] and [`FlowWriter::flush`] return them. The live
//! agent must never stop detecting because a disk filled up or a pipe closed, so it uses
//! [`FlowWriter::emit`] and [`FlowWriter::end_batch`], which count what could not be written,
//! keep the last error for the log, and reopen the file before the next batch.

use std::{
    fs::OpenOptions,
    io::{self, BufWriter, Write},
    path::{Path, PathBuf},
};

use super::biflow::BiflowRecord;

/// Where records go.
enum Target {
    Stdout,
    File(PathBuf),
}

impl Target {
    fn open(&self) -> io::Result<Box<dyn Write + Send>> {
        Ok(match self {
            Self::Stdout => Box::new(io::stdout()),
            Self::File(path) => {
                Box::new(
                    OpenOptions::new().create(true).append(true).open(path).map_err(|e| {
                        io::Error::new(e.kind(), format!("opening flow output {}: {e}", path.display()))
                    })?,
                )
            }
        })
    }
}

/// Records that could not be written since the last [`FlowWriter::take_failures`].
#[derive(Debug, Default)]
pub struct Failures {
    /// Records lost (not written, or written into a buffer that could not be flushed).
    pub records: u64,
    /// The last error seen.
    pub last_error: Option<io::Error>,
}

/// Writes flow records as one JSON object per line.
pub struct FlowWriter {
    target: Target,
    /// `None` after a failure, until the next batch reopens it.
    out: Option<BufWriter<Box<dyn Write + Send>>>,
    written: u64,
    /// Records in the buffer since the last successful flush (lost if the flush fails).
    unflushed: u64,
    failures: Failures,
    failed_total: u64,
}

impl FlowWriter {
    /// Opens `path` for appending (creating it), or standard output for `-`.
    ///
    /// # Errors
    /// The file cannot be opened.
    pub fn open(path: &Path) -> io::Result<Self> {
        let target = if path == Path::new("-") { Target::Stdout } else { Target::File(path.to_owned()) };
        let out = Some(BufWriter::new(target.open()?));
        Ok(Self { target, out, written: 0, unflushed: 0, failures: Failures::default(), failed_total: 0 })
    }

    /// Appends one record.
    ///
    /// # Errors
    /// The write fails (or an earlier one did and the writer was not reopened).
    pub fn write(&mut self, record: &BiflowRecord) -> io::Result<()> {
        let out = self.out.as_mut().ok_or_else(|| io::Error::other("flow output failed earlier"))?;
        serde_json::to_writer(&mut *out, record)?;
        out.write_all(b"\n")?;
        self.written += 1;
        self.unflushed += 1;
        Ok(())
    }

    /// Flushes buffered records to the file.
    ///
    /// # Errors
    /// The flush fails.
    pub fn flush(&mut self) -> io::Result<()> {
        let out = self.out.as_mut().ok_or_else(|| io::Error::other("flow output failed earlier"))?;
        out.flush()?;
        self.unflushed = 0;
        Ok(())
    }

    /// Appends one record for the live agent: a failure is counted, never returned. After a
    /// failure the rest of the batch is counted as lost without trying.
    pub fn emit(&mut self, record: &BiflowRecord) {
        if self.out.is_none() {
            self.lose(1, None);
            return;
        }
        if let Err(e) = self.write(record) {
            self.fail(e, 1);
        }
    }

    /// Ends a live batch: flushes (counting the buffered records as lost if that fails) and,
    /// if anything failed, reopens the output for the next batch.
    pub fn end_batch(&mut self) {
        if self.out.is_some()
            && let Err(e) = self.flush()
        {
            self.fail(e, 0);
        }
        if self.out.is_none() {
            match self.target.open() {
                Ok(sink) => self.out = Some(BufWriter::new(sink)),
                Err(e) => self.failures.last_error = Some(e),
            }
        }
    }

    /// Gives up on the open output after `error`: the records still in the buffer cannot be
    /// trusted to reach the file in order, so they are dropped (a `BufWriter` would retry them
    /// on drop) and counted with `extra` more.
    fn fail(&mut self, error: io::Error, extra: u64) {
        if let Some(out) = self.out.take() {
            let (_, _) = out.into_parts();
        }
        let buffered = std::mem::take(&mut self.unflushed);
        self.written -= buffered;
        self.lose(buffered + extra, Some(error));
    }

    fn lose(&mut self, records: u64, error: Option<io::Error>) {
        self.failures.records += records;
        self.failed_total += records;
        if let Some(e) = error {
            self.failures.last_error = Some(e);
        }
    }

    /// The failures since the last call, for logging and metrics.
    pub fn take_failures(&mut self) -> Failures {
        std::mem::take(&mut self.failures)
    }

    /// Records written so far (lost ones excluded).
    #[must_use]
    pub const fn written(&self) -> u64 {
        self.written
    }

    /// Records lost to output failures so far.
    #[must_use]
    pub const fn failed(&self) -> u64 {
        self.failed_total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> BiflowRecord {
        BiflowRecord::pair(&crate::features::flow::tests::record(1, 2, 80, 0), None)
    }

    #[test]
    fn a_full_disk_is_counted_batch_after_batch_and_never_returned() {
        let mut w = FlowWriter::open(Path::new("/dev/full")).expect("/dev/full opens");
        for batch in 1..=3u64 {
            for _ in 0..10 {
                w.emit(&record());
            }
            w.end_batch();
            let f = w.take_failures();
            assert_eq!(f.records, 10, "batch {batch}: every record of the batch is lost");
            assert_eq!(f.last_error.expect("an error").raw_os_error(), Some(libc::ENOSPC));
            assert_eq!(w.failed(), 10 * batch);
        }
        assert_eq!(w.written(), 0);
        assert!(w.take_failures().last_error.is_none(), "taken");
    }

    #[test]
    fn a_file_that_comes_back_is_written_again() {
        let dir = std::env::temp_dir().join(format!("vigil-output-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("flows.jsonl");
        let mut w = FlowWriter::open(&path).unwrap();
        w.emit(&record());
        w.end_batch();
        // The directory goes away (a volume unmounted): writes still land in the open file;
        // then a failure (simulated) makes the next batch reopen the path.
        w.fail(io::Error::other("simulated"), 0);
        assert!(w.out.is_none());
        w.emit(&record());
        w.end_batch();
        assert_eq!(w.take_failures().records, 1, "the record emitted while closed");
        w.emit(&record());
        w.end_batch();
        assert_eq!(w.take_failures().records, 0);
        let lines = std::fs::read_to_string(&path).unwrap().lines().count();
        assert_eq!((lines, w.written()), (2, 2));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
