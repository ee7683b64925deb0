//! The `file` sink: one JSON line per event appended to `path`. The file is reopened when
//! its path stops naming it (logrotate's rename or removal) and after a write error.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use serde::{Deserialize, Serialize};

use super::{Event, Sink, SinkSettings};

/// `type = "file"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSettings {
    /// Created if missing (its directory must exist); one JSON line appended per event.
    pub path: PathBuf,
}

impl SinkSettings for FileSettings {
    fn name(&self) -> String {
        format!("file:{}", self.path.display())
    }

    fn validate(&self) -> Result<(), String> {
        if self.path.as_os_str().is_empty() {
            return Err("file path must not be empty".into());
        }
        Ok(())
    }

    fn open(&self) -> io::Result<Box<dyn Sink>> {
        Ok(Box::new(FileSink::open(&self.path)?))
    }
}

/// An append-mode file that is reopened when its path stops naming it (logrotate's rename or
/// removal). `copytruncate` needs nothing: with `O_APPEND` writes follow the truncation.
struct FileSink {
    path: PathBuf,
    /// The open file and its (device, inode); `None` after a write error, reopened next event.
    file: Option<(File, (u64, u64))>,
    /// Times the file was opened (start, renames, failures).
    opens: u64,
}

impl FileSink {
    fn open(path: &Path) -> io::Result<FileSink> {
        let mut sink = FileSink { path: path.to_owned(), file: None, opens: 0 };
        sink.reopen()?;
        Ok(sink)
    }

    fn reopen(&mut self) -> io::Result<()> {
        self.file = None;
        self.opens += 1;
        let file = OpenOptions::new().append(true).create(true).open(&self.path)?;
        let meta = file.metadata()?;
        self.file = Some((file, (meta.dev(), meta.ino())));
        Ok(())
    }

    fn write_line(&mut self, json: &str) -> io::Result<()> {
        let moved = match (&self.file, fs::metadata(&self.path)) {
            (Some((_, id)), Ok(meta)) => *id != (meta.dev(), meta.ino()),
            _ => true,
        };
        if moved {
            self.reopen()?;
        }
        let mut line = String::with_capacity(json.len() + 1);
        line.push_str(json);
        line.push('\n');
        let Some((file, _)) = &mut self.file else { unreachable!("reopened above") };
        // One write(2) per line, so concurrent appenders never interleave inside it.
        let result = file.write_all(line.as_bytes());
        if result.is_err() {
            self.file = None;
        }
        result
    }
}

impl Sink for FileSink {
    fn deliver(&mut self, event: &Event, _abort: &AtomicBool) -> Result<super::Delivery, String> {
        self.write_line(&event.json).map_err(|e| e.to_string())?;
        Ok(super::Delivery::Delivered)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::testing::{event, spec, temp_dir, wait_for};
    use super::super::{DEFAULT_QUEUE, SinkSpec, Sinks};
    use super::*;

    fn lines(path: &Path) -> Vec<String> {
        fs::read_to_string(path).unwrap().lines().map(str::to_owned).collect()
    }

    #[test]
    fn file_sink_reopens_after_rename() {
        let dir = temp_dir("file");
        let path = dir.join("alerts.jsonl");
        let sinks = Sinks::start(&[spec(FileSettings { path: path.clone() }, 100)]).unwrap();
        assert_eq!(sinks.stats()[0].name, format!("file:{}", path.display()));
        (0..3).for_each(|n| sinks.send(&event(n)));
        wait_for(&sinks, |s| s.delivered == 3);
        fs::rename(&path, dir.join("alerts.jsonl.1")).unwrap();
        (3..5).for_each(|n| sinks.send(&event(n)));
        wait_for(&sinks, |s| s.delivered == 5);
        let stats = sinks.stats().remove(0);
        sinks.shutdown(Duration::from_secs(5));
        assert_eq!((stats.dropped, stats.failed), (0, 0));
        let expect = |r: std::ops::Range<usize>| r.map(|n| event(n).json).collect::<Vec<_>>();
        assert_eq!(lines(&dir.join("alerts.jsonl.1")), expect(0..3));
        assert_eq!(lines(&path), expect(3..5));
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn file_sink_on_a_full_disk_counts_failures_and_keeps_going() {
        let sinks = Sinks::start(&[spec(FileSettings { path: "/dev/full".into() }, 100)]).unwrap();
        (0..5).for_each(|n| sinks.send(&event(n)));
        let stats = wait_for(&sinks, |s| s.failed == 5);
        assert_eq!((stats.delivered, stats.dropped), (0, 0));
        sinks.shutdown(Duration::from_secs(5));
    }

    #[test]
    fn file_output_reopens_on_the_event_after_a_failure() {
        let mut out = FileSink::open(Path::new("/dev/full")).unwrap();
        assert_eq!(out.opens, 1);
        for n in 1..=3 {
            let err = out.write_line("{}").unwrap_err();
            assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
            assert!(out.file.is_none(), "a failed handle is dropped");
            assert_eq!(out.opens, n, "opened again only when the next event comes");
        }
    }

    #[test]
    fn toml_entry_round_trips() {
        let entry: SinkSpec = toml::from_str("type = \"file\"\npath = \"/tmp/a\"\n").unwrap();
        assert_eq!(entry, spec(FileSettings { path: "/tmp/a".into() }, DEFAULT_QUEUE));
        assert_eq!(toml::from_str::<SinkSpec>(&toml::to_string(&entry).unwrap()).unwrap(), entry);
        let error = toml::from_str::<SinkSpec>("type = \"file\"\npth = \"/tmp/a\"\n").unwrap_err().to_string();
        assert!(error.contains("unknown field `pth`"), "{error}");
    }

    #[test]
    fn an_empty_path_is_refused() {
        let err = FileSettings { path: PathBuf::new() }.validate().unwrap_err();
        assert_eq!(err, "file path must not be empty");
    }
}
