//! `vigil console`: the web console over the embedded store, a process of its own.
//!
//! Why not inside `vigil run`: the console parses requests from a network, the agent holds the
//! XDP program and the detection loop. Kept apart, a console bug cannot stall or blind the
//! sensor, the console can be restarted (or not run at all) on its own, and it needs only
//! what its pages use: the store file, and the pinned blocklist for the blocks page.
//!
//! Security: it binds loopback unless told otherwise (`console.listen`), and warns when it
//! listens beyond loopback. Every page but the login needs a session, made by logging in with
//! the token in `console.token_file` (generated mode 0600 on first start); the session cookie
//! is `HttpOnly` and `SameSite=Strict`, and every state change (a form POST) must carry the
//! session's CSRF token. Responses forbid framing and inline script (a strict
//! Content-Security-Policy); the assets are embedded in the binary.
//!
//! Pages are rendered on the server ([`pages`]) and read the store through
//! [`crate::store::query`] on a blocking thread, one read-only connection per request.

pub mod auth;
pub mod chart;
pub mod pages;
pub mod tls;

use std::{
    convert::Infallible,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use axum::{
    Form, Router,
    extract::{Path, Query, Request, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    middleware::{self, Next},
    response::{Html, IntoResponse, Redirect, Response, sse},
    routing::{get, post},
};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::{
    config::HumanDuration,
    store::{query, schema},
};

/// Where the console listens unless `console.listen` says otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9180";
/// The session cookie's name.
const COOKIE: &str = "vigil_session";
/// How often the live inbox looks for new alerts.
const POLL: Duration = Duration::from_millis(250);
/// Alerts a page shows at most.
const PAGE: usize = 200;
/// Columns of a traffic chart, and the busiest keys it draws apart from the rest.
const TRAFFIC_COLUMNS: i64 = 60;
const TRAFFIC_TOP: usize = 6;

/// `[console]`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ConsoleSection {
    /// `ADDR:PORT` to listen on. Beyond loopback the console warns: put TLS in front of it.
    pub listen: SocketAddr,
    /// The login token (generated, mode 0600, if missing).
    pub token_file: PathBuf,
    /// How long a login lasts.
    pub session_ttl: HumanDuration,
    /// A file holding the Argon2id hash of a password that logs in as the token does
    /// (`vigil console --set-password` writes it, mode 0600). None: the token only.
    pub password_file: Option<PathBuf>,
    /// The PEM certificate chain and private key (mode 0600) of the console's own TLS. Both
    /// or neither; without them it speaks plain HTTP (and warns beyond loopback).
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Where `vigil eval --out` wrote its pictures: the health page shows the newest.
    pub eval_dir: PathBuf,
}

impl Default for ConsoleSection {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN.parse().expect("literal address"),
            token_file: PathBuf::from("/var/lib/vigil/console.token"),
            session_ttl: HumanDuration(Duration::from_hours(12)),
            password_file: None,
            tls_cert: None,
            tls_key: None,
            eval_dir: PathBuf::from("/var/lib/vigil/eval"),
        }
    }
}

impl ConsoleSection {
    /// Checks values that parse but cannot work.
    ///
    /// # Errors
    /// The field and why.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.token_file.as_os_str().is_empty() {
            return Err(("console.token_file", "must name a file".to_owned()));
        }
        if self.session_ttl.0 < Duration::from_mins(1) {
            return Err(("console.session_ttl", "must be at least 1m".to_owned()));
        }
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => return Err(("console.tls_key", "is needed with console.tls_cert".to_owned())),
            (None, Some(_)) => return Err(("console.tls_cert", "is needed with console.tls_key".to_owned())),
            _ => {}
        }
        Ok(())
    }
}

/// What every handler shares.
pub struct Console {
    pub db: PathBuf,
    token: String,
    /// The Argon2id hash of the password, if one is set.
    password: Option<String>,
    /// Cookies carry `Secure` (the console speaks TLS).
    secure: bool,
    /// Evaluation pictures for the health page.
    eval_dir: Option<PathBuf>,
    sessions: auth::Sessions,
    /// The pinned sensor and the rails of `vigil block add`, for the blocks page.
    blocks: Option<(crate::sensor::pin::Pins, crate::block::manual::Rails)>,
}

type Shared = Arc<Console>;

/// An error page with its status.
struct Failure(StatusCode, String);

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        (self.0, Html(pages::error(self.0.as_u16(), &self.1, None).into_string())).into_response()
    }
}

impl Console {
    /// A console over the store at `db`, logging in with `token`.
    #[must_use]
    pub fn new(db: PathBuf, token: String, session_ttl: Duration) -> Self {
        Self {
            db,
            token,
            password: None,
            secure: false,
            eval_dir: None,
            sessions: auth::Sessions::new(session_ttl),
            blocks: None,
        }
    }

    /// Also logs in with the password whose Argon2id hash this is.
    #[must_use]
    pub fn with_password_hash(mut self, hash: String) -> Self {
        self.password = Some(hash);
        self
    }

    /// Shows the newest evaluation pictures (`*.svg`) of `dir` on the health page.
    #[must_use]
    pub fn with_eval_dir(mut self, dir: PathBuf) -> Self {
        self.eval_dir = Some(dir);
        self
    }

    /// Lets the blocks page manage the rules of the sensor pinned under `pins`, behind
    /// `rails` (plus the requesting browser's own address).
    #[must_use]
    pub fn with_blocks(mut self, pins: crate::sensor::pin::Pins, rails: crate::block::manual::Rails) -> Self {
        self.blocks = Some((pins, rails));
        self
    }

    /// The routes, with the security headers on every response.
    pub fn router(self) -> Router {
        let shared: Shared = Arc::new(self);
        Router::new()
            .route("/", get(inbox))
            .route("/login", get(login_page).post(login))
            .route("/logout", post(logout))
            .route("/events", get(events))
            .route("/alerts/{id}", get(alert_detail))
            .route("/alerts/{id}/{status}", post(set_status))
            .route("/hosts/{ip}", get(host))
            .route("/traffic", get(traffic))
            .route("/blocks", get(blocks_page))
            .route("/blocks/add", post(add_block))
            .route("/blocks/remove", post(remove_block))
            .route("/health", get(health))
            .route("/eval/{name}", get(eval_picture))
            .route("/static/console.css", get(css))
            .route("/static/console.js", get(js))
            .with_state(shared)
            .layer(middleware::from_fn(security_headers))
    }

    /// Runs a blocking read of the store.
    async fn read<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&rusqlite::Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, Failure> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let conn = schema::open_for_reading(&db).map_err(|e| e.to_string())?;
            f(&conn).map_err(|e| format!("store {}: {e}", db.display()))
        })
        .await
        .map_err(|e| Failure(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| Failure(StatusCode::SERVICE_UNAVAILABLE, e))
    }
}

async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    for (name, value) in [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
        ),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-store"),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// The session the request's cookie names, if any.
fn session(state: &Console, headers: &HeaderMap) -> Option<(String, auth::Session)> {
    let cookies = headers.get_all(header::COOKIE);
    for value in cookies {
        for pair in value.to_str().ok()?.split(';') {
            if let Some((k, v)) = pair.trim().split_once('=')
                && k == COOKIE
                && let Some(s) = state.sessions.get(v)
            {
                return Some((v.to_owned(), s));
            }
        }
    }
    None
}

/// A page needs a session: without one the browser goes to the login page.
#[expect(clippy::result_large_err, reason = "the error is the response the handler returns at once")]
fn page_session(state: &Console, headers: &HeaderMap) -> Result<auth::Session, Response> {
    session(state, headers).map(|(_, s)| s).ok_or_else(|| Redirect::to("/login").into_response())
}

/// A state change needs a session and its CSRF token.
#[expect(clippy::result_large_err, reason = "the error is the response the handler returns at once")]
fn change_session(state: &Console, headers: &HeaderMap, csrf: &str) -> Result<(String, auth::Session), Response> {
    let Some((id, s)) = session(state, headers) else {
        return Err(Failure(StatusCode::UNAUTHORIZED, "log in first".into()).into_response());
    };
    if !auth::same_secret(&s.csrf, csrf) {
        return Err(Failure(
            StatusCode::FORBIDDEN,
            "the form's CSRF token is missing or wrong; reload the page".into(),
        )
        .into_response());
    }
    Ok((id, s))
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
}

#[derive(Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

async fn login_page(State(state): State<Shared>) -> Html<String> {
    Html(pages::login(state.password.is_some(), None).into_string())
}

async fn login(State(state): State<Shared>, Form(form): Form<LoginForm>) -> Response {
    let mut ok = auth::same_secret(form.token.trim(), &state.token);
    if !ok && let Some(hash) = state.password.clone() {
        // Argon2 takes tens of milliseconds of CPU and 19 MiB: off the async threads.
        let given = form.token;
        ok = tokio::task::spawn_blocking(move || auth::verify_password(&hash, &given)).await.unwrap_or(false);
    }
    if !ok {
        warn!("console: a login with a wrong token or password");
        // A wrong guess costs time: the token cannot be guessed at speed.
        tokio::time::sleep(Duration::from_millis(500)).await;
        return (
            StatusCode::UNAUTHORIZED,
            Html(pages::login(state.password.is_some(), Some("Wrong token or password.")).into_string()),
        )
            .into_response();
    }
    match state.sessions.create() {
        Ok((id, _)) => {
            let secure = if state.secure { "; Secure" } else { "" };
            let cookie = format!("{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict{secure}");
            ([(header::SET_COOKIE, cookie)], Redirect::to("/")).into_response()
        }
        Err(e) => Failure(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn logout(State(state): State<Shared>, headers: HeaderMap, Form(form): Form<CsrfForm>) -> Response {
    match change_session(&state, &headers, &form.csrf) {
        Ok((id, _)) => {
            state.sessions.remove(&id);
            let cookie = format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0");
            ([(header::SET_COOKIE, cookie)], Redirect::to("/login")).into_response()
        }
        Err(r) => r,
    }
}

/// The inbox filter as a store query.
fn filter(q: &pages::InboxQuery) -> Result<query::Filter, String> {
    let prefix = |v: &Option<String>| {
        v.as_deref().filter(|s| !s.trim().is_empty()).map(|s| crate::control::parse_prefix(s.trim())).transpose()
    };
    let min_severity = match q.severity.as_deref().unwrap_or("") {
        "" => None,
        "low" => Some(crate::detect::Severity::Low),
        "medium" => Some(crate::detect::Severity::Medium),
        "high" => Some(crate::detect::Severity::High),
        other => return Err(format!("unknown severity {other}")),
    };
    let statuses = match q.status.as_deref().unwrap_or("") {
        "" | "inbox" => vec!["new".to_owned(), "acknowledged".to_owned()],
        "all" => Vec::new(),
        s if query::STATUSES.contains(&s) => vec![s.to_owned()],
        other => return Err(format!("unknown status {other}")),
    };
    let attack = match q.attack.as_deref().filter(|a| !a.is_empty()) {
        None => None,
        Some(a) => Some(
            crate::alert::attack::AttackKind::from_name(a)
                .ok_or_else(|| format!("unknown attack kind {a}"))?
                .name()
                .to_owned(),
        ),
    };
    let technique = match q.technique.as_deref().map(str::trim).filter(|t| !t.is_empty()) {
        None => None,
        Some(t) if is_technique_id(t) => Some(t.to_ascii_uppercase()),
        Some(t) => return Err(format!("{t} is not an ATT&CK technique id (T1046, T1110.001)")),
    };
    Ok(query::Filter {
        source: prefix(&q.source)?,
        destination: prefix(&q.destination)?,
        min_severity,
        kind: q.kind.clone().filter(|k| !k.is_empty()),
        attack,
        technique,
        statuses,
        limit: PAGE,
        ..query::Filter::default()
    })
}

async fn inbox(State(state): State<Shared>, headers: HeaderMap, Query(q): Query<pages::InboxQuery>) -> Response {
    let s = match page_session(&state, &headers) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let (f, error) = match filter(&q) {
        Ok(f) => (f, None),
        Err(e) => (query::Filter { limit: PAGE, ..query::Filter::default() }, Some(e)),
    };
    match state.read(move |c| query::alerts(c, &f)).await {
        Ok(alerts) => Html(pages::inbox(&alerts, &q, &s.csrf, error.as_deref()).into_string()).into_response(),
        Err(e) => e.into_response(),
    }
}

/// Server-sent events: every alert stored after the stream opened that matches the filter,
/// as a rendered inbox row.
async fn events(State(state): State<Shared>, headers: HeaderMap, Query(q): Query<pages::InboxQuery>) -> Response {
    let Ok(s) = page_session(&state, &headers) else {
        return Failure(StatusCode::UNAUTHORIZED, "log in first".into()).into_response();
    };
    let Ok(base) = filter(&q) else {
        return Failure(StatusCode::BAD_REQUEST, "bad filter".into()).into_response();
    };
    let start =
        state.read(|c| c.query_row("SELECT coalesce(max(id), 0) FROM alerts", [], |r| r.get::<_, i64>(0))).await;
    let Ok(last) = start else {
        return Failure(StatusCode::SERVICE_UNAVAILABLE, "store unavailable".into()).into_response();
    };
    let stream =
        futures_util::stream::unfold((state, last, base, s.csrf), |(state, mut last, base, csrf)| async move {
            loop {
                tokio::time::sleep(POLL).await;
                let f = query::Filter { after_id: Some(last), limit: 100, ..base.clone() };
                let Ok(mut alerts) = state.read(move |c| query::alerts(c, &f)).await else { continue };
                if alerts.is_empty() {
                    continue;
                }
                last = alerts.iter().map(|a| a.id).max().unwrap_or(last);
                // Oldest first, so the newest ends on top.
                alerts.reverse();
                let data: Vec<String> = alerts.iter().map(|a| pages::alert_row(a, 0, &csrf).into_string()).collect();
                let events: Vec<Result<sse::Event, Infallible>> =
                    data.into_iter().map(|d| Ok(sse::Event::default().event("alert").data(d))).collect();
                return Some((futures_util::stream::iter(events), (state, last, base, csrf)));
            }
        });
    let stream = futures_util::StreamExt::flatten(stream);
    sse::Sse::new(stream).keep_alive(sse::KeepAlive::new().interval(Duration::from_secs(15))).into_response()
}

async fn alert_detail(State(state): State<Shared>, headers: HeaderMap, Path(id): Path<i64>) -> Response {
    let s = match page_session(&state, &headers) {
        Ok(s) => s,
        Err(r) => return r,
    };
    match state.read(move |c| query::alert(c, id)).await {
        Ok(Some(a)) => Html(pages::alert_detail(&a, &s.csrf).into_string()).into_response(),
        Ok(None) => Failure(StatusCode::NOT_FOUND, format!("no alert {id}")).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn set_status(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path((id, status)): Path<(i64, String)>,
    Form(form): Form<CsrfForm>,
) -> Response {
    if let Err(r) = change_session(&state, &headers, &form.csrf) {
        return r;
    }
    if !query::STATUSES.contains(&status.as_str()) {
        return Failure(StatusCode::BAD_REQUEST, format!("unknown status {status}")).into_response();
    }
    let db = state.db.clone();
    let status2 = status.clone();
    let changed = tokio::task::spawn_blocking(move || {
        let conn = schema::open_for_update(&db).map_err(|e| e.to_string())?;
        query::set_status(&conn, id, &status2).map_err(|e| e.to_string())
    })
    .await;
    match changed {
        Ok(Ok(true)) => {
            info!(alert = id, status, "console: alert status changed");
            Redirect::to(&format!("/alerts/{id}")).into_response()
        }
        Ok(Ok(false)) => Failure(StatusCode::NOT_FOUND, format!("no alert {id}")).into_response(),
        Ok(Err(e)) => Failure(StatusCode::SERVICE_UNAVAILABLE, e).into_response(),
        Err(e) => Failure(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn host(State(state): State<Shared>, headers: HeaderMap, Path(ip): Path<String>) -> Response {
    let s = match page_session(&state, &headers) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let Ok(ip) = ip.parse::<IpAddr>() else {
        return Failure(StatusCode::BAD_REQUEST, "not an address".into()).into_response();
    };
    let since = i64::try_from(crate::clock::wall_ns() / 1_000_000).unwrap_or(i64::MAX) - 86_400_000;
    let read = state
        .read(move |c| {
            let net = ipnet::IpNet::from(ip);
            let base = query::Filter { since_ms: Some(since), limit: 50, ..query::Filter::default() };
            let mut alerts = query::alerts(c, &query::Filter { source: Some(net), ..base.clone() })?;
            alerts.extend(query::alerts(c, &query::Filter { destination: Some(net), ..base.clone() })?);
            alerts.sort_by_key(|a| std::cmp::Reverse((a.time_ms, a.id)));
            alerts.dedup_by_key(|a| a.id);
            alerts.truncate(50);
            let out = query::flows(c, &query::Filter { source: Some(net), ..base.clone() }, false)?;
            let inbound = query::flows(c, &query::Filter { destination: Some(net), ..base.clone() }, false)?;
            let actions = query::actions(c, &query::Filter { source: Some(net), ..base })?;
            let (start, step) = (since.div_euclid(60_000) + 1, 24);
            let (sent, received) = query::host_traffic(c, ip, start, step, 60)?;
            Ok((alerts, out, inbound, actions, (start, step, sent, received)))
        })
        .await;
    match read {
        Ok((alerts, out, inbound, actions, (start, step, sent, received))) => {
            let over_time = Some((start, step, sent.as_slice(), received.as_slice()));
            Html(pages::host(ip, &alerts, &out, &inbound, &actions, over_time, &s.csrf).into_string()).into_response()
        }
        Err(e) => e.into_response(),
    }
}

/// Top talkers, destinations and services over a window (`?window=1h|6h|24h|7d`).
async fn traffic(State(state): State<Shared>, headers: HeaderMap, Query(q): Query<pages::TrafficQuery>) -> Response {
    let s = match page_session(&state, &headers) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let name = q.window.unwrap_or_else(|| "1h".to_owned());
    let Some(&(window, minutes)) = pages::WINDOWS.iter().find(|(n, _)| *n == name) else {
        let known: Vec<&str> = pages::WINDOWS.iter().map(|(n, _)| *n).collect();
        return Failure(StatusCode::BAD_REQUEST, format!("unknown window {name}: one of {}", known.join(", ")))
            .into_response();
    };
    let now_minute = i64::try_from(crate::clock::wall_ns() / 60_000_000_000).unwrap_or(i64::MAX);
    let step = minutes / TRAFFIC_COLUMNS;
    // The window ends with the current minute, which is still filling.
    let start = now_minute + 1 - minutes;
    let read = state
        .read(move |c| {
            let columns = usize::try_from(TRAFFIC_COLUMNS).unwrap_or(60);
            Ok([
                ("Top talkers", "sources", query::traffic(c, query::By::Source, start, step, columns, TRAFFIC_TOP)?),
                (
                    "Top destinations",
                    "destinations",
                    query::traffic(c, query::By::Destination, start, step, columns, TRAFFIC_TOP)?,
                ),
                ("Top services", "services", query::traffic(c, query::By::Service, start, step, columns, TRAFFIC_TOP)?),
            ])
        })
        .await;
    match read {
        Ok(sections) => Html(pages::traffic(window, &sections, &s.csrf).into_string()).into_response(),
        Err(e) => e.into_response(),
    }
}

#[derive(Deserialize)]
struct BlockForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    prefix: String,
    #[serde(default)]
    ttl: String,
}

/// The blocks page, with `notice` (success or failure of the last change).
async fn render_blocks(state: &Shared, csrf: String, notice: Option<(bool, String)>) -> Response {
    let rules = match state.blocks.clone() {
        None => Err("this console manages no sensor: it was started without a pin directory".to_owned()),
        Some((pins, _)) => {
            tokio::task::spawn_blocking(move || crate::control::list_rules(&pins).map_err(|e| e.to_string()))
                .await
                .unwrap_or_else(|e| Err(e.to_string()))
        }
    };
    let since = i64::try_from(crate::clock::wall_ns() / 1_000_000).unwrap_or(i64::MAX) - 86_400_000;
    let history = state
        .read(move |c| {
            query::actions(c, &query::Filter { since_ms: Some(since), limit: 200, ..query::Filter::default() })
        })
        .await;
    match history {
        Ok(history) => {
            Html(pages::blocks(&rules, &history, notice.as_ref().map(|(ok, t)| (*ok, t.as_str())), &csrf).into_string())
                .into_response()
        }
        Err(e) => e.into_response(),
    }
}

async fn blocks_page(State(state): State<Shared>, headers: HeaderMap) -> Response {
    match page_session(&state, &headers) {
        Ok(s) => render_blocks(&state, s.csrf, None).await,
        Err(r) => r,
    }
}

/// Adds a manual rule behind the rails of `vigil block add`, the browser's own address
/// included; never with `--force`.
async fn add_block(
    State(state): State<Shared>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<BlockForm>,
) -> Response {
    let s = match change_session(&state, &headers, &form.csrf) {
        Ok((_, s)) => s,
        Err(r) => return r,
    };
    let Some((pins, mut rails)) = state.blocks.clone() else {
        return render_blocks(&state, s.csrf, Some((false, "this console manages no sensor".to_owned()))).await;
    };
    let prefix = match crate::control::parse_prefix(form.prefix.trim()) {
        Ok(p) => p,
        Err(e) => return render_blocks(&state, s.csrf, Some((false, e))).await,
    };
    let ttl = match humantime::parse_duration(form.ttl.trim()) {
        Ok(t) => t,
        Err(e) => return render_blocks(&state, s.csrf, Some((false, format!("TTL `{}`: {e}", form.ttl)))).await,
    };
    // Blocking the browser's own address would cut the analyst off.
    rails.ssh_peers.push(peer.ip());
    let result = tokio::task::spawn_blocking(move || crate::control::add_rule(&pins, &rails, prefix, ttl, false))
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()));
    let notice = match result {
        Ok(rule) => {
            info!(prefix = %rule.prefix, ttl = %humantime::format_duration(ttl), %peer, "console: rule added");
            (true, format!("blocked {} for {}", rule.prefix, humantime::format_duration(ttl)))
        }
        Err(e) => (false, e),
    };
    render_blocks(&state, s.csrf, Some(notice)).await
}

async fn remove_block(
    State(state): State<Shared>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<BlockForm>,
) -> Response {
    let s = match change_session(&state, &headers, &form.csrf) {
        Ok((_, s)) => s,
        Err(r) => return r,
    };
    let Some((pins, _)) = state.blocks.clone() else {
        return render_blocks(&state, s.csrf, Some((false, "this console manages no sensor".to_owned()))).await;
    };
    let prefix = match crate::control::parse_prefix(form.prefix.trim()) {
        Ok(p) => p,
        Err(e) => return render_blocks(&state, s.csrf, Some((false, e))).await,
    };
    let result = tokio::task::spawn_blocking(move || crate::control::del_rule(&pins, prefix))
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()));
    let notice = match result {
        Ok(true) => {
            info!(%prefix, %peer, "console: rule removed");
            (true, format!("removed the rule for {prefix}"))
        }
        Ok(false) => (false, format!("no rule for {prefix}")),
        Err(e) => (false, e),
    };
    render_blocks(&state, s.csrf, Some(notice)).await
}

async fn health(State(state): State<Shared>, headers: HeaderMap) -> Response {
    let s = match page_session(&state, &headers) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let pictures = match state.eval_dir.clone() {
        Some(dir) => tokio::task::spawn_blocking(move || eval_pictures(&dir)).await.unwrap_or_default(),
        None => Vec::new(),
    };
    match state.read(|c| Ok((query::latest_health(c)?, query::models(c)?))).await {
        Ok((rows, models)) => {
            Html(pages::health(&rows, &models, &pictures, state.eval_dir.as_deref(), &s.csrf).into_string())
                .into_response()
        }
        Err(e) => e.into_response(),
    }
}

/// Evaluation pictures on the health page at most.
const EVAL_PICTURES: usize = 6;
/// An evaluation picture larger than this is not served.
const EVAL_PICTURE_MAX: u64 = 8 << 20;

/// A name `vigil eval` could have written: `[A-Za-z0-9._-]+.svg`, no path.
fn eval_name_ok(name: &str) -> bool {
    name.len() <= 200
        && name.strip_suffix(".svg").is_some_and(|stem| {
            !stem.is_empty()
                && !stem.starts_with('.')
                && stem.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        })
}

/// The newest evaluation pictures in `dir`: name and modification time (ms), newest first.
fn eval_pictures(dir: &std::path::Path) -> Vec<(String, i64)> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut found: Vec<(String, i64)> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().into_string().ok().filter(|n| eval_name_ok(n))?;
            let meta = e.metadata().ok().filter(std::fs::Metadata::is_file)?;
            let modified = meta.modified().ok()?.duration_since(std::time::UNIX_EPOCH).ok()?;
            Some((name, i64::try_from(modified.as_millis()).unwrap_or(i64::MAX)))
        })
        .collect();
    found.sort_by_key(|(name, ms)| (std::cmp::Reverse(*ms), name.clone()));
    found.truncate(EVAL_PICTURES);
    found
}

/// One evaluation picture, by name, from `console.eval_dir` only.
async fn eval_picture(State(state): State<Shared>, headers: HeaderMap, Path(name): Path<String>) -> Response {
    if let Err(r) = page_session(&state, &headers) {
        return r;
    }
    let Some(dir) = state.eval_dir.clone().filter(|_| eval_name_ok(&name)) else {
        return Failure(StatusCode::NOT_FOUND, "no such picture".into()).into_response();
    };
    let read = tokio::task::spawn_blocking(move || {
        let path = dir.join(&name);
        std::fs::symlink_metadata(&path).ok().filter(|m| m.is_file() && m.len() <= EVAL_PICTURE_MAX)?;
        std::fs::read(&path).ok()
    })
    .await
    .ok()
    .flatten();
    match read {
        Some(svg) => ([(header::CONTENT_TYPE, "image/svg+xml")], svg).into_response(),
        None => Failure(StatusCode::NOT_FOUND, "no such picture".into()).into_response(),
    }
}

async fn css() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], include_str!("static/console.css"))
}

async fn js() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], include_str!("static/console.js"))
}

/// Serves the console until `shutdown` completes, over TLS when `tls` is given.
///
/// # Errors
/// The address cannot be bound.
pub async fn serve(
    mut console: Console,
    listen: SocketAddr,
    tls: Option<rustls::ServerConfig>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    console.secure = tls.is_some();
    info!(%addr, store = %console.db.display(), tls = tls.is_some(), "console listening");
    let app = console.router().into_make_service_with_connect_info::<SocketAddr>();
    if let Some(config) = tls {
        // `tap_io` gives the TLS listener axum's connect info (the peer's address) for free.
        let listener = axum::serve::ListenerExt::tap_io(tls::TlsListener::new(listener, config)?, |_| {});
        return axum::serve(listener, app).with_graceful_shutdown(shutdown).await;
    }
    if !addr.ip().is_loopback() {
        warn!(
            %addr,
            "the console listens beyond loopback without TLS: logins and sessions cross the network in clear; \
             set console.tls_cert and console.tls_key, or bind it to loopback"
        );
    }
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}

/// `T` and four digits, optionally `.` and three (a technique or a sub-technique).
fn is_technique_id(t: &str) -> bool {
    let b = t.as_bytes();
    let digits = |r: std::ops::Range<usize>| b.get(r).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    matches!(b.first(), Some(b'T' | b't'))
        && digits(1..5)
        && (b.len() == 5 || (b.len() == 9 && b[5] == b'.' && digits(6..9)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_inbox_filters_attack_kinds_and_techniques_it_knows() {
        for ok in ["T1046", "T1110.001", "t1498"] {
            assert!(is_technique_id(ok), "{ok}");
        }
        for bad in ["T104", "T10466", "T1110.01", "X1046", "T1046.", "T1110.0011", "' OR 1=1"] {
            assert!(!is_technique_id(bad), "{bad}");
        }
        let q =
            pages::InboxQuery { attack: Some("scan".into()), technique: Some("t1046".into()), ..Default::default() };
        let f = filter(&q).unwrap();
        assert_eq!((f.attack.as_deref(), f.technique.as_deref()), (Some("scan"), Some("T1046")));
        assert!(q.to_query().contains("attack=scan") && q.to_query().contains("technique=t1046"));
        let bad = pages::InboxQuery { attack: Some("nonsense".into()), ..Default::default() };
        assert!(filter(&bad).unwrap_err().contains("unknown attack kind"));
        let bad = pages::InboxQuery { technique: Some("1046".into()), ..Default::default() };
        assert!(filter(&bad).unwrap_err().contains("not an ATT&CK technique"));
    }

    #[test]
    fn only_plain_svg_names_are_served_from_the_eval_directory() {
        for ok in ["captures.svg", "unsw-nb15_2026.svg", "a.b.svg"] {
            assert!(eval_name_ok(ok), "{ok}");
        }
        for bad in ["../etc/passwd.svg", ".hidden.svg", ".svg", "x.svg/..", "a/b.svg", "x.png", "x%2f.svg", "x .svg"] {
            assert!(!eval_name_ok(bad), "{bad}");
        }
    }

    #[test]
    fn tls_needs_both_files() {
        let c = ConsoleSection { tls_cert: Some("/c.pem".into()), ..ConsoleSection::default() };
        assert_eq!(c.validate().unwrap_err().0, "console.tls_key");
        let c = ConsoleSection { tls_key: Some("/k.pem".into()), ..ConsoleSection::default() };
        assert_eq!(c.validate().unwrap_err().0, "console.tls_cert");
        assert!(ConsoleSection::default().validate().is_ok());
    }
}
