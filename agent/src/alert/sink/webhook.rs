//! The `webhook` sink: an HTTP POST of each event, over TLS with certificate verification
//! (rustls; Mozilla's roots compiled in, or the CAs of `ca_file`), plain `http://` only when
//! the configuration says `allow_http = true`. Failed posts are retried with backoff.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use ureq::tls::{Certificate, PemItem, RootCerts, TlsConfig, TlsProvider};

use super::{Event, Sink, SinkSettings};

/// Ceiling of the webhook retry backoff.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// `type = "webhook"`. Durations are humantime strings ("500ms", "5s").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSettings {
    /// `https://` (certificates verified), or `http://` with `allow_http = true`.
    pub url: String,
    #[serde(default = "default_timeout", with = "crate::duration_serde")]
    pub timeout: Duration,
    #[serde(default = "default_max_retries")]
    pub max_retries: u32,
    /// First retry delay, doubled on each retry and capped at [`MAX_BACKOFF`].
    #[serde(default = "default_backoff", with = "crate::duration_serde")]
    pub backoff: Duration,
    /// PEM file of the CA certificates to trust instead of the built-in (Mozilla) roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Allow a plain `http://` url: alerts then cross the network unencrypted.
    #[serde(default)]
    pub allow_http: bool,
}

fn default_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_max_retries() -> u32 {
    5
}
fn default_backoff() -> Duration {
    Duration::from_millis(500)
}

impl SinkSettings for WebhookSettings {
    fn name(&self) -> String {
        format!("webhook:{}", redact_userinfo(&self.url))
    }

    fn validate(&self) -> Result<(), String> {
        validate(self)
    }

    fn open(&self) -> io::Result<Box<dyn Sink>> {
        Ok(Box::new(WebhookSink::open(self)?))
    }
}

/// Checks the settings without touching the system; the message names the key.
fn validate(s: &WebhookSettings) -> Result<(), String> {
    let tls = parse_url(&s.url)?;
    if !tls && !s.allow_http {
        return Err(format!(
            "webhook url {:?} is plain http://: alerts would cross the network unencrypted; use https:// \
             or set allow_http = true",
            redact_userinfo(&s.url)
        ));
    }
    match &s.ca_file {
        Some(path) if path.as_os_str().is_empty() => return Err("webhook ca_file must not be empty".into()),
        Some(_) if !tls => return Err("webhook ca_file applies to https:// urls only".into()),
        _ => {}
    }
    if s.timeout.is_zero() {
        return Err("webhook timeout must be more than zero".into());
    }
    Ok(())
}

/// Whether `url` is `https://` (else `http://`).
fn parse_url(url: &str) -> Result<bool, String> {
    let tls = if url.starts_with("https://") {
        true
    } else if url.starts_with("http://") {
        false
    } else {
        return Err(format!("webhook url must start with https:// (or http:// with allow_http), got {url:?}"));
    };
    match url.parse::<ureq::http::Uri>() {
        Ok(uri) if uri.host().is_some_and(|h| !h.is_empty()) => Ok(tls),
        Ok(_) => Err(format!("webhook url has no host: {url:?}")),
        Err(e) => Err(format!("webhook url {url:?} is invalid: {e}")),
    }
}

/// Hides `user:password@` in a URL so it does not reach logs or metrics.
fn redact_userinfo(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
        None => url.to_owned(),
    }
}

/// The certificates of a PEM file, to trust as roots instead of the built-in ones.
fn read_ca_file(path: &Path) -> io::Result<Vec<Certificate<'static>>> {
    let bad = |what: String| io::Error::new(io::ErrorKind::InvalidData, format!("ca_file {}: {what}", path.display()));
    let pem = std::fs::read(path).map_err(|e| io::Error::new(e.kind(), format!("ca_file {}: {e}", path.display())))?;
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        match item.map_err(|e| bad(e.to_string()))? {
            PemItem::Certificate(cert) => certs.push(cert),
            _ => return Err(bad("holds something else than certificates (a private key?)".into())),
        }
    }
    if certs.is_empty() {
        return Err(bad("no PEM certificate in it".into()));
    }
    Ok(certs)
}

struct WebhookSink {
    agent: ureq::Agent,
    url: String,
    max_retries: u32,
    backoff: Duration,
}

impl WebhookSink {
    /// Builds the client (reading `ca_file`), so a bad setting fails before the sensor starts.
    fn open(s: &WebhookSettings) -> io::Result<WebhookSink> {
        validate(s).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let roots = match &s.ca_file {
            Some(path) => RootCerts::new_with_certs(&read_ca_file(path)?),
            None => RootCerts::WebPki,
        };
        let tls = TlsConfig::builder().provider(TlsProvider::Rustls).root_certs(roots).build();
        let config = ureq::Agent::config_builder()
            .timeout_global(Some(s.timeout))
            .http_status_as_error(false)
            .https_only(!s.allow_http)
            .tls_config(tls)
            .user_agent(concat!("vigil/", env!("CARGO_PKG_VERSION")))
            .build();
        Ok(WebhookSink {
            agent: ureq::Agent::new_with_config(config),
            url: s.url.clone(),
            max_retries: s.max_retries,
            backoff: s.backoff.min(MAX_BACKOFF),
        })
    }

    /// Posts `event`, retrying with backoff; gives up after `max_retries` retries or on `abort`.
    fn post(&self, event: &Event, abort: &AtomicBool) -> Result<(), String> {
        super::retry(&redact_userinfo(&self.url), self.max_retries, self.backoff, abort, || {
            match self.agent.post(&self.url).header("content-type", "application/json").send(event.json.as_bytes()) {
                Ok(response) if response.status().is_success() => Ok(()),
                Ok(response) => Err(format!("HTTP status {}", response.status())),
                Err(e) => Err(e.to_string()),
            }
        })
    }
}

impl Sink for WebhookSink {
    fn deliver(&mut self, event: &Event, abort: &AtomicBool) -> Result<super::Delivery, String> {
        self.post(event, abort)?;
        Ok(super::Delivery::Delivered)
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;
    use std::sync::Arc;
    use std::thread::{self, JoinHandle};
    use std::time::Instant;

    use super::super::testing::{spec, wait_for};
    use super::super::{Severity, Sinks};
    use super::*;

    fn event(n: usize) -> Event {
        Event { json: format!(r#"{{"n":{n}}}"#), severity: Severity::Medium, timestamp_ns: 0 }
    }

    fn webhook(url: String, max_retries: u32) -> WebhookSettings {
        WebhookSettings {
            url,
            timeout: Duration::from_secs(1),
            max_retries,
            backoff: Duration::from_millis(10),
            ca_file: None,
            allow_http: true,
        }
    }

    /// Reads one HTTP request from `stream` and answers `status` (0: never answer). Returns the
    /// body, or `None` if the peer went away first (a refused TLS handshake).
    fn serve_one(stream: impl Read + Write, status: u16) -> Option<String> {
        let mut reader = BufReader::new(stream);
        let mut length = 0;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).ok()? == 0 {
                return None;
            }
            if let Some((key, value)) = line.split_once(':')
                && key.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap();
            }
            if line.trim().is_empty() {
                break;
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).ok()?;
        if status == 0 {
            thread::sleep(Duration::from_secs(3));
        } else {
            let response = format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            reader.get_mut().write_all(response.as_bytes()).ok()?;
            reader.get_mut().flush().ok()?;
        }
        Some(String::from_utf8(body).unwrap())
    }

    /// Serves one plain HTTP request per entry of `statuses`, returning the bodies read.
    fn http_server(statuses: Vec<u16>) -> (String, JoinHandle<Vec<String>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/alerts", listener.local_addr().unwrap());
        let server = thread::spawn(move || {
            statuses.into_iter().filter_map(|status| serve_one(listener.accept().unwrap().0, status)).collect()
        });
        (url, server)
    }

    #[test]
    fn webhook_retries_after_server_error() {
        let (url, server) = http_server(vec![500, 200]);
        let sinks = Sinks::start(&[spec(webhook(url.clone(), 3), 10)]).unwrap();
        assert_eq!(sinks.stats()[0].name, format!("webhook:{url}"));
        sinks.send(&event(1));
        let stats = wait_for(&sinks, |s| s.delivered + s.failed > 0);
        assert_eq!((stats.delivered, stats.failed, stats.dropped), (1, 0, 0));
        sinks.shutdown(Duration::from_secs(5));
        assert_eq!(server.join().unwrap(), vec![event(1).json, event(1).json]);
    }

    #[test]
    fn webhook_gives_up_on_dead_receiver() {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let sinks = Sinks::start(&[spec(webhook(format!("http://127.0.0.1:{port}/"), 1), 10)]).unwrap();
        sinks.send(&event(1));
        sinks.send(&event(2));
        let stats = wait_for(&sinks, |s| s.delivered + s.failed > 1);
        assert_eq!((stats.delivered, stats.failed), (0, 2), "each event failed, the sink kept going");
        sinks.shutdown(Duration::from_secs(5));
    }

    #[test]
    fn slow_webhook_drops_instead_of_blocking() {
        let (url, _server) = http_server(vec![0]);
        let sinks = Sinks::start(&[spec(webhook(url, 0), 2)]).unwrap();
        (0..50).for_each(|n| sinks.send(&event(n)));
        let stats = sinks.stats().remove(0);
        assert!(stats.dropped >= 40, "{stats:?}");
        assert_eq!(stats.delivered, 0);
        let started = Instant::now();
        sinks.shutdown(Duration::from_millis(100));
        assert!(started.elapsed() < Duration::from_secs(1), "shutdown waits at most its timeout");
    }

    #[test]
    fn plain_http_needs_allow_http() {
        let settings = |url: &str, allow_http, ca_file: Option<&Path>| WebhookSettings {
            url: url.into(),
            timeout: Duration::from_secs(1),
            max_retries: 0,
            backoff: Duration::ZERO,
            ca_file: ca_file.map(Path::to_path_buf),
            allow_http,
        };
        let err = validate(&settings("http://u:pw@siem.local/x", false, None)).unwrap_err();
        assert!(err.contains("allow_http = true") && !err.contains("pw"), "{err}");
        assert!(validate(&settings("http://siem.local/x", true, None)).is_ok());
        assert!(validate(&settings("https://siem.local/x", false, None)).is_ok());
        let err = validate(&settings("ftp://siem.local/x", true, None)).unwrap_err();
        assert!(err.starts_with("webhook url must start with https://"), "{err}");
        let err = validate(&settings("http://siem.local/x", true, Some(Path::new("/ca.pem")))).unwrap_err();
        assert!(err.contains("ca_file"), "{err}");
        let err = validate(&settings("https://siem.local/x", false, Some(Path::new("")))).unwrap_err();
        assert!(err.contains("ca_file"), "{err}");
    }

    /// A test CA and a server certificate it signed for 127.0.0.1 and localhost.
    struct TestPki {
        ca_pem: String,
        server_chain: Vec<rustls::pki_types::CertificateDer<'static>>,
        server_key: rustls::pki_types::PrivateKeyDer<'static>,
    }

    fn test_pki(ca_name: &str) -> TestPki {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.distinguished_name.push(rcgen::DnType::CommonName, ca_name);
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
        let cert = params.signed_by(&key, &ca).unwrap();
        TestPki {
            ca_pem: ca.pem(),
            server_chain: vec![cert.der().clone()],
            server_key: rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        }
    }

    /// Serves one HTTPS request per entry of `statuses` with `pki`'s server certificate;
    /// a connection whose handshake the client refuses yields no body.
    fn https_server(pki: &TestPki, connections: usize) -> (String, JoinHandle<Vec<String>>) {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(pki.server_chain.clone(), pki.server_key.clone_key())
            .unwrap();
        let config = Arc::new(config);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("https://127.0.0.1:{}/alerts", listener.local_addr().unwrap().port());
        let server = thread::spawn(move || {
            let mut bodies = Vec::new();
            for _ in 0..connections {
                let (tcp, _) = listener.accept().unwrap();
                tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let tls = rustls::ServerConnection::new(config.clone()).unwrap();
                bodies.extend(serve_one(rustls::StreamOwned::new(tls, tcp), 200));
            }
            bodies
        });
        (url, server)
    }

    fn https_webhook(url: String, ca_file: Option<PathBuf>) -> WebhookSettings {
        WebhookSettings {
            url,
            timeout: Duration::from_secs(2),
            max_retries: 0,
            backoff: Duration::from_millis(10),
            ca_file,
            allow_http: false,
        }
    }

    fn temp_file(name: &str, text: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!("vigil-webhook-{}-{name}", std::process::id()));
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn https_with_an_untrusted_certificate_is_refused() {
        let pki = test_pki("vigil test CA (untrusted)");
        let other = test_pki("another CA");
        let other_ca = temp_file("other-ca.pem", &other.ca_pem);
        // Neither Mozilla's roots nor another CA vouch for the server: nothing is posted.
        for ca_file in [None, Some(other_ca.clone())] {
            let (url, server) = https_server(&pki, 1);
            let sinks = Sinks::start(&[spec(https_webhook(url, ca_file.clone()), 10)]).unwrap();
            sinks.send(&event(1));
            let stats = wait_for(&sinks, |s| s.delivered + s.failed > 0);
            assert_eq!((stats.delivered, stats.failed), (0, 1), "ca_file {ca_file:?}");
            sinks.shutdown(Duration::from_secs(5));
            assert!(server.join().unwrap().is_empty(), "the request never crossed a refused handshake");
        }
        std::fs::remove_file(other_ca).unwrap();
    }

    #[test]
    fn https_with_a_trusted_ca_file_delivers() {
        let pki = test_pki("vigil test CA");
        let ca = temp_file("ca.pem", &pki.ca_pem);
        let (url, server) = https_server(&pki, 2);
        let sinks = Sinks::start(&[spec(https_webhook(url, Some(ca.clone())), 10)]).unwrap();
        sinks.send(&event(1));
        sinks.send(&event(2));
        let stats = wait_for(&sinks, |s| s.delivered + s.failed > 1);
        assert_eq!((stats.delivered, stats.failed), (2, 0));
        sinks.shutdown(Duration::from_secs(5));
        assert_eq!(server.join().unwrap(), vec![event(1).json, event(2).json]);
        std::fs::remove_file(ca).unwrap();
    }

    #[test]
    fn a_bad_ca_file_fails_at_start() {
        let key_only = temp_file("key.pem", &rcgen::KeyPair::generate().unwrap().serialize_pem());
        let empty = temp_file("empty.pem", "");
        for (path, expect) in [
            (key_only, "something else"),
            (empty.clone(), "no PEM certificate"),
            (empty.with_extension("missing"), "No such file"),
        ] {
            let config = https_webhook("https://127.0.0.1:1/".into(), Some(path.clone()));
            let Err(e) = Sinks::start(&[spec(config, 1)]) else { panic!("{} must be refused", path.display()) };
            let text = format!("{e}: {}", std::error::Error::source(&e).map(ToString::to_string).unwrap_or_default());
            assert!(text.contains("ca_file") && text.contains(expect), "{text}");
            let _ = std::fs::remove_file(path);
        }
    }
}
