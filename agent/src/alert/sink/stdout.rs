//! The `stdout` sink: one JSON line per event on standard output. It has no settings.

use std::io::{self, Write};
use std::sync::atomic::AtomicBool;

use super::{Event, Sink, SinkSettings};

/// The `stdout` sink's (empty) settings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StdoutSettings;

impl SinkSettings for StdoutSettings {
    fn name(&self) -> String {
        "stdout".into()
    }

    fn validate(&self) -> Result<(), String> {
        Ok(())
    }

    fn open(&self) -> io::Result<Box<dyn Sink>> {
        Ok(Box::new(StdoutSink))
    }
}

/// Writes each event and flushes, holding the stdout lock for the whole line.
struct StdoutSink;

impl Sink for StdoutSink {
    fn deliver(&mut self, event: &Event, _abort: &AtomicBool) -> Result<super::Delivery, String> {
        let mut out = io::stdout().lock();
        out.write_all(event.json.as_bytes())
            .and_then(|()| out.write_all(b"\n"))
            .and_then(|()| out.flush())
            .map_err(|e| e.to_string())?;
        Ok(super::Delivery::Delivered)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::testing::{event, spec, wait_for};
    use super::super::{SinkConfig, Sinks};

    #[test]
    fn stdout_delivers() {
        let sinks = Sinks::start(&[spec(SinkConfig::Stdout, 10)]).unwrap();
        assert_eq!(sinks.stats()[0].name, "stdout");
        sinks.send(&event(1));
        let stats = wait_for(&sinks, |s| s.delivered + s.failed > 0);
        assert_eq!((stats.delivered, stats.failed, stats.dropped), (1, 0, 0));
        sinks.shutdown(Duration::from_secs(5));
    }
}
