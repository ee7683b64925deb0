//! `vigil console` over HTTP as a browser would use it (no root): the login, sessions, the
//! CSRF token on every state change, the security headers, the pages over a store written by
//! the agent's own store code, and the live inbox's event stream.

mod common;

use std::{
    io::{BufRead as _, BufReader},
    net::TcpListener,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::{TempDir, vigil_bin};
use vigil::{
    detect::Severity,
    store::{AlertRow, Record, Store, StoreSection, query, schema},
};

fn now_ms() -> i64 {
    i64::try_from(vigil::clock::wall_ns() / 1_000_000).unwrap()
}

fn alert(id: &str, source: &str) -> Record {
    let doc = serde_json::json!({
        "event": { "id": id, "action": "anomalous-flows" },
        "message": format!("{source}: anomalous <flows>"),
        "vigil": {
            "score": { "combined": 6.5, "iforest": 0.7, "autoencoder": 3.0, "range": 6.5, "alert_threshold": 4.1, "block_threshold": 4.6 },
            "explanation": [
                { "feature": "src_dst_ports", "value": 900.0, "baseline": 3.0, "share": 0.6 },
                { "feature": "src_failed", "value": 880.0, "baseline": 0.0, "share": 0.2 }
            ],
            "top_flow": { "initiator_ip": source, "initiator_port": 40000, "responder_ip": "10.0.0.1", "responder_port": 22,
                          "protocol": 6, "conn_state": "S0", "initiator": { "packets": 1, "bytes": 60, "tcp_flags": { "syn": 1 } },
                          "responder": null }
        }
    });
    Record::Alert(Box::new(AlertRow {
        time_ms: now_ms(),
        event_id: id.into(),
        severity: Severity::High,
        kind: "anomalous-flows".into(),
        source: Some(source.parse().unwrap()),
        destination: Some("10.0.0.1".parse().unwrap()),
        destination_port: Some(22),
        score: Some(6.5),
        model_sha256: "abcdef0123456789".into(),
        model_phase: "site".into(),
        message: format!("{source}: anomalous <flows>"),
        document: doc.to_string(),
    }))
}

fn record(db: &std::path::Path, records: Vec<Record>) {
    let store = Store::start(&StoreSection { path: db.to_owned(), ..StoreSection::default() }, "sensor-1").unwrap();
    for r in records {
        store.record(r);
    }
    store.shutdown(Duration::from_secs(10));
}

struct ConsoleProcess {
    child: Child,
    base: String,
}

impl Drop for ConsoleProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(dir: &TempDir, db: &std::path::Path) -> (ConsoleProcess, String) {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let token_file = dir.path().join("console.token");
    let child = Command::new(vigil_bin())
        .args(["console", "--listen", &format!("127.0.0.1:{port}"), "--db"])
        .arg(db)
        .arg("--token-file")
        .arg(&token_file)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("vigil console");
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the console did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    let token = std::fs::read_to_string(&token_file).unwrap().trim().to_owned();
    (ConsoleProcess { child, base }, token)
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder().max_redirects(0).http_status_as_error(false).build().into()
}

fn body(resp: ureq::http::Response<ureq::Body>) -> String {
    resp.into_body().read_to_string().unwrap()
}

/// Logs in: the session cookie.
fn login(c: &ConsoleProcess, token: &str) -> String {
    let resp = agent().post(&format!("{}/login", c.base)).send_form([("token", token)]).unwrap();
    assert_eq!(resp.status(), 303);
    let cookie = resp.headers().get("set-cookie").unwrap().to_str().unwrap().to_owned();
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"), "{cookie}");
    cookie.split(';').next().unwrap().to_owned()
}

fn csrf_of(page: &str) -> String {
    let at = page.find("name=\"csrf\" value=\"").expect("a form with a CSRF token") + 19;
    page[at..at + 64].to_owned()
}

#[test]
fn pages_need_a_login_and_changes_need_the_csrf_token() {
    let dir = TempDir::new("console-http");
    let db = dir.path().join("vigil.db");
    record(&db, vec![alert("a-1", "192.0.2.7")]);
    let (c, token) = start(&dir, &db);
    let http = agent();

    // Unauthenticated: pages send the browser to the login page, changes are refused.
    let resp = http.get(&format!("{}/", c.base)).call().unwrap();
    assert_eq!(resp.status(), 303);
    assert_eq!(resp.headers().get("location").unwrap(), "/login");
    let csp = resp.headers().get("content-security-policy").unwrap().to_str().unwrap().to_owned();
    assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(http.get(&format!("{}/alerts/1", c.base)).call().unwrap().status(), 303);
    assert_eq!(http.get(&format!("{}/events", c.base)).call().unwrap().status(), 401);
    let resp = http.post(&format!("{}/alerts/1/archived", c.base)).send_form([("csrf", "x")]).unwrap();
    assert_eq!(resp.status(), 401);
    let resp = http.post(&format!("{}/login", c.base)).send_form([("token", "wrong")]).unwrap();
    assert_eq!(resp.status(), 401);
    assert!(resp.headers().get("set-cookie").is_none());

    let cookie = login(&c, &token);
    let resp = http.get(&format!("{}/", c.base)).header("Cookie", &cookie).call().unwrap();
    assert_eq!(resp.status(), 200);
    let page = body(resp);
    assert!(page.contains("192.0.2.7: anomalous &lt;flows&gt;"), "the message, escaped: {page}");
    let csrf = csrf_of(&page);

    // Without the CSRF token, or with another, the change is refused and nothing changes.
    let url = format!("{}/alerts/1/acknowledged", c.base);
    let resp = http.post(&url).header("Cookie", &cookie).send_form([("csrf", "")]).unwrap();
    assert_eq!(resp.status(), 403);
    let resp = http.post(&url).header("Cookie", &cookie).send_form([("csrf", &"0".repeat(64))]).unwrap();
    assert_eq!(resp.status(), 403);
    let status = |db: &std::path::Path| {
        let conn = schema::open_for_reading(db).unwrap();
        query::alert(&conn, 1).unwrap().unwrap().status
    };
    assert_eq!(status(&db), "new");
    let resp = http.post(&url).header("Cookie", &cookie).send_form([("csrf", csrf.as_str())]).unwrap();
    assert_eq!(resp.status(), 303);
    assert_eq!(status(&db), "acknowledged");

    // The detail page: the explanation as bars, the top flow, the document; the host page.
    let page = body(http.get(&format!("{}/alerts/1", c.base)).header("Cookie", &cookie).call().unwrap());
    assert!(page.contains("<svg class=\"explanation\"") && page.contains("src_dst_ports"), "{page}");
    assert!(page.contains("60%") && page.contains("900 vs 3"), "{page}");
    assert!(page.contains("Top conversation") && page.contains("state S0"), "{page}");
    assert!(page.contains("href=\"/hosts/192.0.2.7\""), "{page}");
    let page = body(http.get(&format!("{}/hosts/192.0.2.7", c.base)).header("Cookie", &cookie).call().unwrap());
    assert!(page.contains("Host 192.0.2.7") && page.contains("/alerts/1"), "{page}");
    // Archived alerts leave the inbox.
    let resp = http
        .post(&format!("{}/alerts/1/archived", c.base))
        .header("Cookie", &cookie)
        .send_form([("csrf", csrf.as_str())])
        .unwrap();
    assert_eq!(resp.status(), 303);
    let page = body(http.get(&format!("{}/", c.base)).header("Cookie", &cookie).call().unwrap());
    assert!(page.contains("No alerts match."), "{page}");

    // Logging out ends the session.
    let resp = http
        .post(&format!("{}/logout", c.base))
        .header("Cookie", &cookie)
        .send_form([("csrf", csrf.as_str())])
        .unwrap();
    assert_eq!(resp.status(), 303);
    assert_eq!(http.get(&format!("{}/", c.base)).header("Cookie", &cookie).call().unwrap().status(), 303);
}

#[test]
fn new_alerts_reach_the_live_stream() {
    let dir = TempDir::new("console-sse");
    let db = dir.path().join("vigil.db");
    record(&db, vec![alert("old", "192.0.2.1")]);
    let (c, token) = start(&dir, &db);
    let cookie = login(&c, &token);
    let resp = agent().get(&format!("{}/events", c.base)).header("Cookie", &cookie).call().unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("content-type").unwrap().to_str().unwrap().starts_with("text/event-stream"));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(resp.into_body().into_reader()).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    let sent = Instant::now();
    record(&db, vec![alert("fresh", "198.51.100.9")]);
    let deadline = sent + Duration::from_secs(5);
    loop {
        let line = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())).expect("an alert event in time");
        assert!(!line.contains("192.0.2.1"), "alerts from before the stream opened are not sent again: {line}");
        if line.starts_with("data:") && line.contains("198.51.100.9") {
            assert!(line.contains("<tr class=\"alert\""), "{line}");
            break;
        }
    }
    eprintln!("alert on the stream {} ms after it was stored", sent.elapsed().as_millis());
}
