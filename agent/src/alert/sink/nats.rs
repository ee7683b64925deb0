//! The `nats` sink: each event published to a NATS `JetStream` stream on
//! `vigil.v1.alert.<site>.<host>` and acknowledged by the stream before it counts as
//! delivered (at-least-once). The message carries `Nats-Msg-Id: <host>/<event.id>`, so a retry
//! of a message that did arrive is dropped by the stream's duplicate window instead of stored
//! twice. The subject carries site and host, so a NATS account can confine each host to its
//! own subjects. TLS (rustls) and per-host credentials (a `.creds` file, an nkey seed, or a
//! user and password) are configured here; every secret file must be private (0600).
//!
//! With a `spool` (docs/fleet.md), an event the bus does not take goes to an on-disk spool
//! ([`crate::spool`]) instead of failing: from then on new events queue behind it in the spool,
//! and the sink's tick reconnects (with backoff) and replays it oldest first, at most
//! `replay_rate` events a second and `max_in_flight` unacknowledged at a time, with the same
//! message ids, so a replay of something that did arrive is dropped by the stream. What was
//! spooled survives a restart of the agent. Without a spool, an event still failing after its
//! retries counts as failed like any other sink's.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use super::{Delivery, Event, Sink, SinkSettings};
use crate::spool::{Class, Record, Spool, SpoolCounters, SpoolLimits};

/// The stream's subjects: every site's and host's alerts.
pub const ALERT_SUBJECTS: &str = "vigil.v1.alert.>";
/// How long the stream remembers message ids to drop a repeat (`create_stream`).
pub const DUPLICATE_WINDOW: Duration = Duration::from_mins(2);

/// `type = "nats"`. Durations are humantime strings ("500ms", "5s").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsSettings {
    /// The servers, comma-separated: `tls://host:4222` (TLS required), or `nats://host:4222`
    /// with `allow_plaintext = true`.
    pub url: String,
    /// The site token of the subject.
    #[serde(default = "default_site")]
    pub site: String,
    /// The host token of the subject; default: this host's name, with characters a subject
    /// token cannot hold (`.`, `*`, `>`, spaces) turned into `_`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The `JetStream` stream that takes `vigil.v1.alert.>`.
    #[serde(default = "default_stream")]
    pub stream: String,
    /// Create the stream (file storage, a 2-minute duplicate window) when it is missing. Needs
    /// the right to; a fleet's operators usually create it once instead.
    #[serde(default)]
    pub create_stream: bool,
    /// A NATS credentials file (JWT and nkey seed, as `nsc` writes it). Private (0600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_file: Option<PathBuf>,
    /// A file holding an nkey seed (`SU...`). Private (0600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nkey_seed_file: Option<PathBuf>,
    /// A user name, with its password in `password_file` (private, 0600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// PEM file of the CA certificates that sign the servers' certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Allow `nats://` without TLS: alerts and credentials then cross the network in clear.
    #[serde(default)]
    pub allow_plaintext: bool,
    /// How long a connection attempt and a publish acknowledgement may take.
    #[serde(default = "default_timeout", with = "crate::duration_serde")]
    pub timeout: Duration,
    #[serde(default = "default_max_retries")]
    pub max_retries: u32,
    /// First retry delay, doubled on each retry and capped at [`super::MAX_BACKOFF`].
    #[serde(default = "default_backoff", with = "crate::duration_serde")]
    pub backoff: Duration,
    /// Keep what the bus does not take on disk and replay it later (recommended for a fleet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spool: Option<Box<SpoolSettings>>,
}

/// `[alerts.sinks.spool]`: the `nats` sink's on-disk spool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpoolSettings {
    /// The spool's own directory (created 0700; one sink per directory).
    pub dir: PathBuf,
    /// Bytes on disk, in MiB. Alerts are only dropped (counted) when it is full.
    #[serde(default = "default_spool_mb")]
    pub max_size_mb: u64,
    /// Events older than this are dropped (counted as expired) instead of replayed.
    #[serde(default = "default_spool_age", with = "crate::duration_serde")]
    pub max_age: Duration,
    /// Events replayed per second at most once the bus is back, so a long outage does not
    /// flood the bus and the collector when it ends.
    #[serde(default = "default_replay_rate")]
    pub replay_rate: u32,
    /// Replayed events published and not yet acknowledged, at most.
    #[serde(default = "default_in_flight")]
    pub max_in_flight: u32,
}

fn default_spool_mb() -> u64 {
    256
}
fn default_spool_age() -> Duration {
    Duration::from_hours(7 * 24)
}
fn default_replay_rate() -> u32 {
    500
}
fn default_in_flight() -> u32 {
    64
}

fn default_site() -> String {
    "default".to_owned()
}
fn default_stream() -> String {
    "VIGIL_ALERTS".to_owned()
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

impl SinkSettings for NatsSettings {
    fn name(&self) -> String {
        format!("nats:{}", redact(&self.url))
    }

    fn validate(&self) -> Result<(), String> {
        validate(self)
    }

    fn open(&self) -> io::Result<Box<dyn Sink>> {
        Ok(Box::new(NatsSink::open(self)?))
    }
}

/// Whether `token` can be one token of a subject: letters, digits, `-` and `_`.
pub(crate) fn is_token(token: &str) -> bool {
    !token.is_empty()
        && token.len() <= 64
        && token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Checks settings that name a stream, bucket, consumer or subject token, in order: the
/// first that is not [`is_token`] is answered with its key.
///
/// # Errors
/// The key at fault and why.
pub(crate) fn check_tokens<'a>(
    settings: impl IntoIterator<Item = (&'static str, &'a str)>,
) -> Result<(), (&'static str, String)> {
    match settings.into_iter().find(|(_, value)| !is_token(value)) {
        Some((key, value)) => Err((key, format!("{value:?} must be letters, digits, - or _"))),
        None => Ok(()),
    }
}

/// This host's name as a subject token.
pub(crate) fn host_token() -> String {
    let name = nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default();
    let token: String =
        name.chars().take(64).map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect();
    if token.is_empty() { "unknown".to_owned() } else { token }
}

/// Hides `user:password@` of every server URL.
fn redact(url: &str) -> String {
    url.split(',')
        .map(|u| {
            let u = u.trim();
            let Some((scheme, rest)) = u.split_once("://") else { return u.to_owned() };
            match rest.rfind('@') {
                Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
                None => u.to_owned(),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Checks the settings without touching the system; the message names the key.
fn validate(s: &NatsSettings) -> Result<(), String> {
    let servers: Vec<&str> = s.url.split(',').map(str::trim).collect();
    for server in &servers {
        let Some((scheme, rest)) = server.split_once("://") else {
            return Err(format!("nats url {:?} must start with tls:// (or nats:// with allow_plaintext)", redact(server)));
        };
        match scheme {
            "tls" => {}
            "nats" if s.allow_plaintext => {}
            "nats" => {
                return Err(format!(
                    "nats url {:?} is plain nats://: alerts and credentials would cross the network in clear; use \
                     tls:// or set allow_plaintext = true",
                    redact(server)
                ));
            }
            other => return Err(format!("nats url scheme {other:?} is not tls:// or nats://")),
        }
        let host_port = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
        if host_port.is_empty() || host_port.contains('/') {
            return Err(format!("nats url {:?} must be scheme://host:port", redact(server)));
        }
    }
    if s.url.contains('@') && (s.credentials_file.is_some() || s.nkey_seed_file.is_some() || s.user.is_some()) {
        return Err("nats: credentials in the url and in the settings; keep them in the settings' files".into());
    }
    if !is_token(&s.site) {
        return Err(format!("nats site {:?} must be letters, digits, - or _ (it is a subject token)", s.site));
    }
    if let Some(host) = &s.host
        && !is_token(host)
    {
        return Err(format!("nats host {host:?} must be letters, digits, - or _ (it is a subject token)"));
    }
    if !is_token(&s.stream) {
        return Err(format!("nats stream {:?} must be letters, digits, - or _", s.stream));
    }
    let ways = usize::from(s.credentials_file.is_some())
        + usize::from(s.nkey_seed_file.is_some())
        + usize::from(s.user.is_some() || s.password_file.is_some());
    if ways > 1 {
        return Err("nats: choose one of credentials_file, nkey_seed_file, or user with password_file".into());
    }
    if s.user.is_some() != s.password_file.is_some() {
        return Err("nats: user and password_file go together".into());
    }
    for (key, path) in [
        ("credentials_file", &s.credentials_file),
        ("nkey_seed_file", &s.nkey_seed_file),
        ("password_file", &s.password_file),
        ("ca_file", &s.ca_file),
    ] {
        if path.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
            return Err(format!("nats {key} must not be empty"));
        }
    }
    if s.timeout.is_zero() {
        return Err("nats timeout must be more than zero".into());
    }
    if let Some(spool) = &s.spool {
        if spool.dir.as_os_str().is_empty() {
            return Err("nats spool.dir must not be empty".into());
        }
        if spool.max_size_mb == 0 || spool.max_size_mb > 1 << 20 {
            return Err("nats spool.max_size_mb must be between 1 and 1048576".into());
        }
        if spool.max_age.is_zero() {
            return Err("nats spool.max_age must be more than zero".into());
        }
        if spool.replay_rate == 0 {
            return Err("nats spool.replay_rate must be at least 1 (events per second)".into());
        }
        if spool.max_in_flight == 0 || spool.max_in_flight > 10_000 {
            return Err("nats spool.max_in_flight must be between 1 and 10000".into());
        }
    }
    Ok(())
}

/// A secret file's contents, refused when group or others can read it.
fn read_secret(key: &str, path: &Path) -> io::Result<String> {
    let named = |e: io::Error| io::Error::new(e.kind(), format!("nats {key} {}: {e}", path.display()));
    let meta = std::fs::metadata(path).map_err(named)?;
    crate::private_dir::check_secret_mode(&meta).map_err(|e| {
        io::Error::new(io::ErrorKind::PermissionDenied, format!("nats {key} {} is {e}", path.display()))
    })?;
    Ok(std::fs::read_to_string(path).map_err(named)?.trim().to_owned())
}

/// The id the stream deduplicates on: the host and the event's own `event.id`, or the host,
/// this process's start and a sequence for an event without one.
fn message_id(host: &str, json: &str, boot: u64, seq: &AtomicU64) -> String {
    #[derive(Deserialize)]
    struct Doc {
        event: Option<EventField>,
    }
    #[derive(Deserialize)]
    struct EventField {
        id: Option<String>,
    }
    match serde_json::from_str::<Doc>(json).ok().and_then(|d| d.event).and_then(|e| e.id) {
        Some(id) => format!("{host}/{id}"),
        None => format!("{host}/{boot}-{}", seq.fetch_add(1, Ordering::Relaxed)),
    }
}

struct NatsSink {
    runtime: tokio::runtime::Runtime,
    options: Options,
    jetstream: Option<async_nats::jetstream::Context>,
    subject: String,
    host: String,
    boot: u64,
    seq: AtomicU64,
    max_retries: u32,
    backoff: Duration,
    spool: Option<Replay>,
}

/// A spool and the state of its replay: a token bucket for the rate, and the backoff after a
/// failure. Shared by the `nats` sink and the fleet export.
pub(crate) struct Replay {
    pub(crate) spool: Spool,
    rate: f64,
    in_flight: usize,
    /// Replay budget in records (a token bucket of one second's worth).
    budget: f64,
    refilled: Instant,
    /// No (re)connection or publish before this, after a failure.
    not_before: Instant,
    first_delay: Duration,
    delay: Duration,
}

impl Replay {
    /// Opens the spool of `settings`; `backoff` is the first wait after a failure.
    pub(crate) fn open(settings: &SpoolSettings, backoff: Duration) -> io::Result<Replay> {
        let limits = SpoolLimits { max_bytes: settings.max_size_mb << 20, max_age: settings.max_age };
        let spool = Spool::open(&settings.dir, limits)?;
        if !spool.is_empty() {
            info!(
                dir = %settings.dir.display(),
                alerts = spool.pending(Class::Alert),
                flows = spool.pending(Class::Flow),
                "replaying what an earlier run spooled"
            );
        }
        let first_delay = backoff.min(super::MAX_BACKOFF);
        Ok(Replay {
            spool,
            rate: f64::from(settings.replay_rate),
            in_flight: settings.max_in_flight as usize,
            budget: 0.0,
            refilled: Instant::now(),
            not_before: Instant::now(),
            first_delay,
            delay: first_delay,
        })
    }

    /// Whether the bus may be tried now (the backoff after the last failure has passed).
    pub(crate) fn may_try(&self) -> bool {
        Instant::now() >= self.not_before
    }

    /// The bus failed: puts off the next try by the current delay, doubled for the one after.
    pub(crate) fn failed(&mut self, error: &str) {
        debug!(error, delay = ?self.delay, "nats: bus unavailable; spooling");
        self.not_before = Instant::now() + self.delay;
        self.delay = self.delay.saturating_mul(2).clamp(self.first_delay, super::MAX_BACKOFF);
    }

    /// The bus took something: the next failure waits the first delay again.
    pub(crate) fn succeeded(&mut self) {
        self.delay = self.first_delay;
    }

    /// How many records may be replayed now: the rate's budget (refilled first), at most the
    /// in-flight bound.
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "the budget is between 0 and replay_rate, a u32"
    )]
    pub(crate) fn allowance(&mut self) -> usize {
        let now = Instant::now();
        self.budget = (self.budget + now.duration_since(self.refilled).as_secs_f64() * self.rate).min(self.rate);
        self.refilled = now;
        (self.budget.max(0.0) as usize).min(self.in_flight)
    }

    /// `n` records were replayed.
    #[expect(clippy::cast_precision_loss, reason = "n is at most max_in_flight")]
    pub(crate) fn spent(&mut self, n: usize) {
        self.budget -= n as f64;
    }
}

/// What a (re)connection needs, secrets read once at open. The collector connects with the
/// same settings and code.
#[derive(Clone)]
pub(crate) struct Options {
    url: String,
    credentials: Option<String>,
    nkey: Option<String>,
    user: Option<(String, String)>,
    ca_file: Option<PathBuf>,
    tls: bool,
    timeout: Duration,
    stream: String,
    create_stream: bool,
}

impl NatsSink {
    /// Reads the secrets and CA file, so a bad setting fails before the sensor starts. The
    /// server is not contacted yet: a bus that is down at start is a delivery failure, not a
    /// configuration error.
    fn open(s: &NatsSettings) -> io::Result<NatsSink> {
        let options = Options::new(s)?;
        // One worker thread of its own keeps the client's connection alive (pings, reconnects)
        // while the sink's thread is not inside a call: a current-thread runtime would only run
        // it during a publish, and a spooling sink would never notice the bus is back.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("nats-sink-io")
            .enable_all()
            .build()?;
        let host = s.host.clone().unwrap_or_else(host_token);
        let boot = crate::clock::wall_ns();
        Ok(NatsSink {
            runtime,
            options,
            jetstream: None,
            subject: format!("vigil.v1.alert.{}.{host}", s.site),
            host,
            boot,
            seq: AtomicU64::new(0),
            max_retries: s.max_retries,
            backoff: s.backoff.min(super::MAX_BACKOFF),
            spool: s
                .spool
                .as_ref()
                .map(|sp| Replay::open(sp, s.backoff))
                .transpose()?,
        })
    }

}

impl Options {
    /// Checks the settings and reads the secret and CA files.
    ///
    /// # Errors
    /// A bad setting, or a file that cannot be read or is not private.
    pub(crate) fn new(s: &NatsSettings) -> io::Result<Options> {
        validate(s).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let credentials = s.credentials_file.as_deref().map(|p| read_secret("credentials_file", p)).transpose()?;
        let nkey = s.nkey_seed_file.as_deref().map(|p| read_secret("nkey_seed_file", p)).transpose()?;
        let password = s.password_file.as_deref().map(|p| read_secret("password_file", p)).transpose()?;
        if let Some(ca) = &s.ca_file {
            std::fs::metadata(ca).map_err(|e| io::Error::new(e.kind(), format!("nats ca_file {}: {e}", ca.display())))?;
        }
        Ok(Options {
            url: s.url.split(',').map(str::trim).collect::<Vec<_>>().join(","),
            credentials,
            nkey,
            user: s.user.clone().zip(password),
            ca_file: s.ca_file.clone(),
            tls: s.url.split(',').all(|u| u.trim().starts_with("tls://")),
            timeout: s.timeout,
            stream: s.stream.clone(),
            create_stream: s.create_stream,
        })
    }

    /// The servers, credentials hidden.
    pub(crate) fn url(&self) -> String {
        redact(&self.url)
    }

    pub(crate) fn stream(&self) -> &str {
        &self.stream
    }

    /// Makes sure `jetstream` holds a connected context: connects the first time (the client
    /// then reconnects by itself), and afterwards only checks the client's state.
    ///
    /// # Errors
    /// Not connected, or the connection failed.
    pub(crate) async fn ensure_connected(
        &self,
        jetstream: &mut Option<async_nats::jetstream::Context>,
    ) -> Result<(), String> {
        if let Some(j) = jetstream {
            return if j.client().connection_state() == async_nats::connection::State::Connected {
                Ok(())
            } else {
                Err("not connected".into())
            };
        }
        let j = self.connect().await?;
        info!(url = %redact(&self.url), "connected to the nats bus");
        *jetstream = Some(j);
        Ok(())
    }

    /// How long a connection attempt and an acknowledgement may take.
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Creates the stream `name` on `subjects` when `create_stream` is set and it is missing.
    ///
    /// # Errors
    /// The server refused.
    pub(crate) async fn ensure_stream(
        &self,
        jetstream: &async_nats::jetstream::Context,
        name: &str,
        subjects: &str,
    ) -> Result<(), String> {
        if !self.create_stream {
            return Ok(());
        }
        jetstream
            .get_or_create_stream(async_nats::jetstream::stream::Config {
                name: name.to_owned(),
                subjects: vec![subjects.to_owned()],
                storage: async_nats::jetstream::stream::StorageType::File,
                duplicate_window: DUPLICATE_WINDOW,
                ..Default::default()
            })
            .await
            .map(|_| ())
            .map_err(|e| format!("creating stream {name}: {e}"))
    }

    /// Connects (the client then reconnects by itself) and, with `create_stream`, makes sure
    /// the stream exists.
    pub(crate) async fn connect(&self) -> Result<async_nats::jetstream::Context, String> {
        let o = self;
        let mut options = async_nats::ConnectOptions::new()
            .name(concat!("vigil/", env!("CARGO_PKG_VERSION")))
            .connection_timeout(o.timeout)
            .require_tls(o.tls);
        if let Some(creds) = &o.credentials {
            options = options.credentials(creds).map_err(|e| format!("credentials_file: {e}"))?;
        }
        if let Some(seed) = &o.nkey {
            options = options.nkey(seed.clone());
        }
        if let Some((user, password)) = &o.user {
            options = options.user_and_password(user.clone(), password.clone());
        }
        if let Some(ca) = &o.ca_file {
            options = options.add_root_certificates(ca.clone());
        }
        // The client takes a list of servers, not one comma-separated string.
        let servers = o
            .url
            .split(',')
            .map(|u| u.parse::<async_nats::ServerAddr>().map_err(|e| format!("server {}: {e}", redact(u))))
            .collect::<Result<Vec<_>, _>>()?;
        let client = tokio::time::timeout(o.timeout, options.connect(servers))
            .await
            .map_err(|_| format!("no connection within {:?}", o.timeout))?
            .map_err(|e| e.to_string())?;
        let mut jetstream = async_nats::jetstream::new(client);
        jetstream.set_timeout(o.timeout);
        o.ensure_stream(&jetstream, &o.stream, ALERT_SUBJECTS).await?;
        Ok(jetstream)
    }
}

impl NatsSink {
    /// Publishes once and waits for the stream's acknowledgement.
    fn publish_once(&mut self, id: &str, payload: &bytes::Bytes) -> Result<bool, String> {
        let (runtime, options, subject) = (&self.runtime, &self.options, &self.subject);
        if self.jetstream.is_none() {
            let j = runtime.block_on(options.connect())?;
            info!(url = %redact(&options.url), subject, "nats sink connected");
            self.jetstream = Some(j);
        }
        let jetstream = self.jetstream.clone().ok_or("not connected")?;
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, id);
        let ack = runtime.block_on(async {
            tokio::time::timeout(options.timeout, async {
                jetstream
                    .publish_with_headers(subject.clone(), headers, payload.clone())
                    .await
                    .map_err(|e| e.to_string())?
                    .await
                    .map_err(|e| e.to_string())
            })
            .await
            .map_err(|_| format!("no acknowledgement within {:?}", options.timeout))?
        })?;
        Ok(ack.duplicate)
    }

    /// Publishes `event`, retrying with backoff; gives up after `max_retries` retries or on `abort`.
    fn publish(&mut self, event: &Event, abort: &AtomicBool) -> Result<(), String> {
        let id = message_id(&self.host, &event.json, self.boot, &self.seq);
        let payload = bytes::Bytes::copy_from_slice(event.json.as_bytes());
        let (max_retries, backoff) = (self.max_retries, self.backoff);
        super::retry("nats", max_retries, backoff, abort, || {
            if self.publish_once(&id, &payload)? {
                debug!(id, "nats: the stream already had this message");
            }
            Ok(())
        })
    }
}

impl NatsSink {
    /// Whether the bus can be tried now: connected, or connecting worked. A failure puts off
    /// the next try by the backoff.
    fn ready(&mut self) -> bool {
        let replay = self.spool.as_mut().expect("only with a spool");
        if !replay.may_try() {
            return false;
        }
        match self.runtime.block_on(self.options.ensure_connected(&mut self.jetstream)) {
            Ok(()) => true,
            Err(e) => {
                replay.failed(&e);
                false
            }
        }
    }

    /// With a spool: publish now if nothing is spooled and the bus answers, else spool.
    fn deliver_or_spool(&mut self, event: &Event) -> Result<Delivery, String> {
        let id = message_id(&self.host, &event.json, self.boot, &self.seq);
        let payload = bytes::Bytes::copy_from_slice(event.json.as_bytes());
        let empty = self.spool.as_ref().is_some_and(|r| r.spool.is_empty());
        if empty && self.ready() {
            let published = self.publish_once(&id, &payload);
            let replay = self.spool.as_mut().expect("only with a spool");
            match published {
                Ok(_) => {
                    replay.succeeded();
                    return Ok(Delivery::Delivered);
                }
                Err(e) => replay.failed(&e),
            }
        }
        let replay = self.spool.as_mut().expect("only with a spool");
        replay.spool.push(Class::Alert, &id, &payload, crate::clock::wall_ns()).map_err(|e| e.to_string())?;
        Ok(Delivery::Spooled)
    }

    /// Replays from the spool for up to about a second, within the rate and in-flight bounds.
    fn replay(&mut self, abort: &AtomicBool) {
        let Some(replay) = self.spool.as_mut() else { return };
        if replay.spool.is_empty() || replay.allowance() == 0 || !self.ready() {
            return;
        }
        let Some(jetstream) = self.jetstream.clone() else { return };
        let (subject, timeout) = (self.subject.clone(), self.options.timeout);
        let replay = self.spool.as_mut().expect("checked above");
        let drained = self.runtime.block_on(replay_some(replay, &jetstream, &subject, timeout, abort));
        if drained {
            info!(subject = self.subject, "nats sink: spool replayed");
        }
    }
}

/// Replays from `replay`'s spool on `subject` for up to about a second, within its rate and
/// in-flight bounds; a failure sets its backoff. Whether the spool is now empty.
pub(crate) async fn replay_some(
    replay: &mut Replay,
    jetstream: &async_nats::jetstream::Context,
    subject: &str,
    timeout: Duration,
    abort: &AtomicBool,
) -> bool {
    let started = Instant::now();
    while !abort.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(1) {
        let max = replay.allowance();
        if max == 0 {
            return false;
        }
        let records = match replay.spool.front(max, crate::clock::wall_ns()) {
            Ok((_, records)) => records,
            Err(e) => {
                warn!(error = %e, "cannot read the spool");
                return false;
            }
        };
        if records.is_empty() {
            return true;
        }
        let (acked, error) = publish_all(jetstream, subject, &records, timeout).await;
        replay.spool.commit(acked);
        replay.spent(acked);
        if let Some(e) = error {
            replay.failed(&e);
            return false;
        }
        replay.succeeded();
    }
    replay.spool.is_empty()
}

/// Publishes `records` on `subject` without waiting between them, then waits for their
/// acknowledgements: how many, from the first, were acknowledged, and the first error.
pub(crate) async fn publish_all(
    jetstream: &async_nats::jetstream::Context,
    subject: &str,
    records: &[Record],
    timeout: Duration,
) -> (usize, Option<String>) {
    let mut acks = Vec::with_capacity(records.len());
    for record in records {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, record.id.as_str());
        let payload = bytes::Bytes::copy_from_slice(&record.payload);
        match jetstream.publish_with_headers(subject.to_owned(), headers, payload).await {
            Ok(ack) => acks.push(ack),
            Err(e) => {
                let error = Some(e.to_string());
                return (count_acked(acks, timeout).await.0, error);
            }
        }
    }
    count_acked(acks, timeout).await
}

/// Waits for acknowledgements in order: how many, from the first, arrived within `timeout`,
/// and the first error.
async fn count_acked(
    acks: Vec<async_nats::jetstream::context::PublishAckFuture>,
    timeout: Duration,
) -> (usize, Option<String>) {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut acked = 0;
    for ack in acks {
        match tokio::time::timeout_at(deadline, ack.into_future()).await {
            Ok(Ok(_)) => acked += 1,
            Ok(Err(e)) => return (acked, Some(e.to_string())),
            Err(_) => return (acked, Some(format!("no acknowledgement within {timeout:?}"))),
        }
    }
    (acked, None)
}

impl Sink for NatsSink {
    fn deliver(&mut self, event: &Event, abort: &AtomicBool) -> Result<Delivery, String> {
        if self.spool.is_some() {
            return self.deliver_or_spool(event);
        }
        self.publish(event, abort)?;
        Ok(Delivery::Delivered)
    }

    fn tick(&mut self, abort: &AtomicBool) {
        self.replay(abort);
    }

    fn spool(&self) -> Option<Arc<SpoolCounters>> {
        self.spool.as_ref().map(|r| r.spool.counters())
    }

    fn close(&mut self) {
        if let Some(jetstream) = self.jetstream.take() {
            let client = jetstream.client();
            let _ = self.runtime.block_on(async { tokio::time::timeout(Duration::from_secs(1), client.flush()).await });
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
