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
pub mod pages;

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
}

impl Default for ConsoleSection {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN.parse().expect("literal address"),
            token_file: PathBuf::from("/var/lib/vigil/console.token"),
            session_ttl: HumanDuration(Duration::from_hours(12)),
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
        Ok(())
    }
}

/// What every handler shares.
pub struct Console {
    pub db: PathBuf,
    token: String,
    sessions: auth::Sessions,
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
        Self { db, token, sessions: auth::Sessions::new(session_ttl) }
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

async fn login_page() -> Html<String> {
    Html(pages::login(None).into_string())
}

async fn login(State(state): State<Shared>, Form(form): Form<LoginForm>) -> Response {
    if !auth::same_secret(form.token.trim(), &state.token) {
        warn!("console: a login with a wrong token");
        // A wrong guess costs time: the token cannot be guessed at speed.
        tokio::time::sleep(Duration::from_millis(500)).await;
        return (StatusCode::UNAUTHORIZED, Html(pages::login(Some("Wrong token.")).into_string())).into_response();
    }
    match state.sessions.create() {
        Ok((id, _)) => {
            let cookie = format!("{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict");
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
    Ok(query::Filter {
        source: prefix(&q.source)?,
        destination: prefix(&q.destination)?,
        min_severity,
        kind: q.kind.clone().filter(|k| !k.is_empty()),
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
            Ok((alerts, out, inbound, actions))
        })
        .await;
    match read {
        Ok((alerts, out, inbound, actions)) => {
            Html(pages::host(ip, &alerts, &out, &inbound, &actions, &s.csrf).into_string()).into_response()
        }
        Err(e) => e.into_response(),
    }
}

async fn css() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], include_str!("static/console.css"))
}

async fn js() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], include_str!("static/console.js"))
}

/// Serves the console until `shutdown` completes.
///
/// # Errors
/// The address cannot be bound.
pub async fn serve(
    console: Console,
    listen: SocketAddr,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    if !addr.ip().is_loopback() {
        warn!(
            %addr,
            "the console listens beyond loopback without TLS: logins and sessions cross the network in clear; \
             put a TLS proxy in front of it or bind it to loopback"
        );
    }
    info!(%addr, store = %console.db.display(), "console listening");
    axum::serve(listener, console.router()).with_graceful_shutdown(shutdown).await
}
