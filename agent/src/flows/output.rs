//! `--flows-out`: flow records as JSON lines, to a file (appended) or standard output.

use std::{
    fs::OpenOptions,
    io::{self, BufWriter, Write},
    path::Path,
};

use super::record::FlowRecord;

/// Writes flow records as one JSON object per line.
pub struct FlowWriter {
    out: BufWriter<Box<dyn Write + Send>>,
    written: u64,
}

impl FlowWriter {
    /// Opens `path` for appending (creating it), or standard output for `-`.
    ///
    /// # Errors
    /// The file cannot be opened.
    pub fn open(path: &Path) -> io::Result<Self> {
        let sink: Box<dyn Write + Send> =
            if path == Path::new("-") {
                Box::new(io::stdout())
            } else {
                Box::new(
                    OpenOptions::new().create(true).append(true).open(path).map_err(|e| {
                        io::Error::new(e.kind(), format!("opening flow output {}: {e}", path.display()))
                    })?,
                )
            };
        Ok(Self { out: BufWriter::new(sink), written: 0 })
    }

    /// Appends one record.
    ///
    /// # Errors
    /// The write fails.
    pub fn write(&mut self, record: &FlowRecord) -> io::Result<()> {
        serde_json::to_writer(&mut self.out, record)?;
        self.out.write_all(b"\n")?;
        self.written += 1;
        Ok(())
    }

    /// Flushes buffered records to the file.
    ///
    /// # Errors
    /// The flush fails.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    /// Records written so far.
    #[must_use]
    pub const fn written(&self) -> u64 {
        self.written
    }
}
