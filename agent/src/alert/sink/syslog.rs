//! The `syslog` sink: RFC 5424 messages over UDP or a unix datagram socket (such as
//! `/dev/log`). A unix socket that went away (the daemon restarted) is reconnected once per
//! event.

use std::io;
use std::net::{ToSocketAddrs, UdpSocket};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Event, Sink, SinkSettings};

/// Largest syslog message: the biggest UDP payload over IPv4 (64 KiB less the headers).
pub const MAX_SYSLOG_MESSAGE: usize = 65_507;

/// `type = "syslog"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyslogSettings {
    /// `udp://HOST:PORT` or `unix:///PATH` (a unix datagram socket such as `/dev/log`).
    pub address: String,
    #[serde(default)]
    pub facility: Facility,
    /// Defaults to the system host name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default = "default_app_name")]
    pub app_name: String,
}

fn default_app_name() -> String {
    "vigil".to_owned()
}

/// Syslog facility (RFC 5424 section 6.2.1), by its conventional lowercase name; the
/// discriminant is the code.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Facility {
    Kern = 0,
    User = 1,
    Daemon = 3,
    Auth = 4,
    Authpriv = 10,
    #[default]
    Local0 = 16,
    Local1 = 17,
    Local2 = 18,
    Local3 = 19,
    Local4 = 20,
    Local5 = 21,
    Local6 = 22,
    Local7 = 23,
}

impl SinkSettings for SyslogSettings {
    fn name(&self) -> String {
        format!("syslog:{}", self.address)
    }

    fn validate(&self) -> Result<(), String> {
        SyslogAddress::parse(&self.address)?;
        if let Some(host) = &self.hostname
            && !is_header_field(host, 255)
        {
            return Err(format!("syslog hostname must be 1-255 printable ASCII characters, got {host:?}"));
        }
        if !is_header_field(&self.app_name, 48) {
            return Err(format!("syslog app_name must be 1-48 printable ASCII characters, got {:?}", self.app_name));
        }
        Ok(())
    }

    fn open(&self) -> io::Result<Box<dyn Sink>> {
        Ok(Box::new(SyslogSink::open(self)?))
    }
}

/// RFC 5424 header fields are PRINTUSASCII (no spaces) of bounded length.
fn is_header_field(s: &str, max: usize) -> bool {
    !s.is_empty() && s.len() <= max && s.bytes().all(|b| b.is_ascii_graphic())
}

enum SyslogAddress {
    Udp(String),
    Unix(PathBuf),
}

impl SyslogAddress {
    fn parse(address: &str) -> Result<SyslogAddress, String> {
        let bad = || format!("syslog address must be udp://HOST:PORT or unix:///PATH, got {address:?}");
        if let Some(host_port) = address.strip_prefix("udp://") {
            let (host, port) = host_port.rsplit_once(':').ok_or_else(bad)?;
            match port.parse::<u16>() {
                Ok(p) if p != 0 && !host.is_empty() => Ok(SyslogAddress::Udp(host_port.to_owned())),
                _ => Err(bad()),
            }
        } else if let Some(path) = address.strip_prefix("unix://").filter(|p| p.starts_with('/') && p.len() > 1) {
            Ok(SyslogAddress::Unix(PathBuf::from(path)))
        } else {
            Err(bad())
        }
    }
}

enum SyslogSocket {
    Udp(UdpSocket),
    Unix(UnixDatagram, PathBuf),
}

struct SyslogSink {
    socket: SyslogSocket,
    facility: Facility,
    hostname: String,
    app_name: String,
    pid: u32,
}

impl SyslogSink {
    fn open(settings: &SyslogSettings) -> io::Result<SyslogSink> {
        let address =
            SyslogAddress::parse(&settings.address).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let socket = match address {
            SyslogAddress::Udp(host_port) => {
                let target = host_port.to_socket_addrs()?.next().ok_or_else(|| {
                    io::Error::new(io::ErrorKind::NotFound, format!("{host_port} resolves to no address"))
                })?;
                let socket = UdpSocket::bind(if target.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" })?;
                socket.connect(target)?;
                SyslogSocket::Udp(socket)
            }
            SyslogAddress::Unix(path) => SyslogSocket::Unix(connect_unix(&path)?, path),
        };
        let hostname = settings.hostname.clone().unwrap_or_else(system_hostname);
        Ok(SyslogSink {
            socket,
            facility: settings.facility,
            hostname,
            app_name: settings.app_name.clone(),
            pid: std::process::id(),
        })
    }

    fn format(&self, event: &Event) -> String {
        let pri = self.facility as u16 * 8 + u16::from(event.severity.syslog());
        let mut message = format!(
            "<{pri}>1 {} {} {} {} alert - \u{feff}{}",
            crate::clock::rfc3339_micros(event.timestamp_ns),
            self.hostname,
            self.app_name,
            self.pid,
            event.json
        );
        message.truncate(message.floor_char_boundary(MAX_SYSLOG_MESSAGE));
        message
    }

    fn send(&mut self, event: &Event) -> io::Result<()> {
        let message = self.format(event);
        match &mut self.socket {
            SyslogSocket::Udp(socket) => socket.send(message.as_bytes()).map(drop),
            SyslogSocket::Unix(socket, path) => socket.send(message.as_bytes()).map(drop).or_else(|_| {
                // The syslog daemon may have restarted and recreated its socket: reconnect once.
                *socket = connect_unix(path)?;
                socket.send(message.as_bytes()).map(drop)
            }),
        }
    }
}

impl Sink for SyslogSink {
    fn deliver(&mut self, event: &Event, _abort: &AtomicBool) -> Result<super::Delivery, String> {
        self.send(event).map_err(|e| e.to_string())?;
        Ok(super::Delivery::Delivered)
    }
}

fn connect_unix(path: &Path) -> io::Result<UnixDatagram> {
    let socket = UnixDatagram::unbound()?;
    socket.connect(path)?;
    // A stalled syslog daemon must not wedge the sink forever.
    socket.set_write_timeout(Some(Duration::from_secs(1)))?;
    Ok(socket)
}

/// The kernel's node name (what gethostname(2) returns), made a valid RFC 5424 HOSTNAME.
fn system_hostname() -> String {
    let name = nix::sys::utsname::uname().map(|u| u.nodename().to_string_lossy().into_owned()).unwrap_or_default();
    let name: String = name.chars().map(|c| if c.is_ascii_graphic() { c } else { '_' }).take(255).collect();
    if name.is_empty() { "-".to_owned() } else { name }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::super::testing::{event, spec, temp_dir, wait_for};
    use super::super::{Severity, Sinks};
    use super::*;

    /// Checks an RFC 5424 message from a sink configured with local0 and app "vigil".
    fn check_syslog(datagram: &[u8], expect: &Event) {
        let text = std::str::from_utf8(datagram).unwrap();
        let fields: Vec<&str> = text.splitn(8, ' ').collect();
        assert_eq!(fields[0], "<132>1", "local0 (16) * 8 + warning (4), version 1");
        assert_eq!(fields[1], "2026-11-21T10:00:00.123456Z");
        assert!(!fields[2].is_empty() && fields[2].bytes().all(|b| b.is_ascii_graphic()));
        assert_eq!(fields[3..7], ["vigil", &std::process::id().to_string(), "alert", "-"]);
        let body = fields[7].strip_prefix('\u{feff}').expect("BOM before MSG");
        let parsed: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(parsed, serde_json::from_str::<serde_json::Value>(&expect.json).unwrap());
    }

    #[test]
    fn syslog_udp_sends_rfc5424() {
        let receiver = UdpSocket::bind("127.0.0.1:0").unwrap();
        receiver.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let address = format!("udp://{}", receiver.local_addr().unwrap());
        let config = SyslogSettings { address, facility: Facility::Local0, hostname: None, app_name: "vigil".into() };
        let sinks = Sinks::start(&[spec(config, 10)]).unwrap();
        sinks.send(&event(7));
        let mut buf = vec![0; 70_000];
        let n = receiver.recv(&mut buf).unwrap();
        check_syslog(&buf[..n], &event(7));
        sinks.shutdown(Duration::from_secs(5));
    }

    #[test]
    fn syslog_unix_datagram() {
        let dir = temp_dir("unix");
        let path = dir.join("log.sock");
        let receiver = UnixDatagram::bind(&path).unwrap();
        receiver.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let config = SyslogSettings {
            address: format!("unix://{}", path.display()),
            facility: Facility::default(),
            hostname: Some("sensor-1".into()),
            app_name: default_app_name(),
        };
        let sinks = Sinks::start(&[spec(config, 10)]).unwrap();
        sinks.send(&event(1));
        let mut buf = vec![0; 70_000];
        let n = receiver.recv(&mut buf).unwrap();
        check_syslog(&buf[..n], &event(1));
        assert!(std::str::from_utf8(&buf[..n]).unwrap().contains(" sensor-1 vigil "));
        sinks.shutdown(Duration::from_secs(5));
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn syslog_message_is_truncated_at_char_boundary() {
        let out = SyslogSink {
            socket: SyslogSocket::Udp(UdpSocket::bind("127.0.0.1:0").unwrap()),
            facility: Facility::Kern,
            hostname: "h".into(),
            app_name: "a".into(),
            pid: 1,
        };
        let big = Event { json: "é".repeat(40_000), severity: Severity::High, timestamp_ns: 0 };
        let message = out.format(&big);
        assert!(message.len() <= MAX_SYSLOG_MESSAGE && message.len() > MAX_SYSLOG_MESSAGE - 2);
        // kern (0) * 8 + error (3, a high alert)
        assert!(message.starts_with("<3>1 1970-01-01T00:00:00.000000Z h a 1 alert - \u{feff}é"));
    }

    #[test]
    fn timestamps() {
        assert_eq!(crate::clock::rfc3339_micros(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(crate::clock::rfc3339_micros(1_709_251_199_999_999_999), "2024-02-29T23:59:59.999999Z");
        assert_eq!(crate::clock::rfc3339_micros(1_795_255_200_123_456_789), "2026-11-21T10:00:00.123456Z");
    }

    #[test]
    fn syslog_socket_gone_then_back() {
        let dir = temp_dir("unix-gone");
        let path = dir.join("log.sock");
        let receiver = UnixDatagram::bind(&path).unwrap();
        let config = SyslogSettings {
            address: format!("unix://{}", path.display()),
            facility: Facility::default(),
            hostname: None,
            app_name: default_app_name(),
        };
        let sinks = Sinks::start(&[spec(config, 10)]).unwrap();
        drop(receiver);
        fs::remove_file(&path).unwrap();
        sinks.send(&event(1));
        sinks.send(&event(2));
        let stats = wait_for(&sinks, |s| s.failed == 2);
        assert_eq!(stats.delivered, 0);
        // The daemon comes back: the next event reconnects.
        let receiver = UnixDatagram::bind(&path).unwrap();
        receiver.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        sinks.send(&event(3));
        let mut buf = vec![0; 70_000];
        let n = receiver.recv(&mut buf).unwrap();
        check_syslog(&buf[..n], &event(3));
        assert_eq!(wait_for(&sinks, |s| s.delivered == 1).failed, 2);
        sinks.shutdown(Duration::from_secs(5));
        fs::remove_dir_all(dir).unwrap();
    }
}
