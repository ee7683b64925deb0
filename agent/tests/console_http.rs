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
        "threat": { "framework": "MITRE ATT&CK", "tactic": { "id": "TA0006", "name": "Credential Access" },
                    "technique": { "id": "T1110", "name": "Brute Force",
                                   "subtechnique": { "id": "T1110.001", "name": "Password Guessing" } } },
        "vigil": {
            "attack": { "kind": "password-guessing", "from": "classifier" },
            "score": { "combined": 6.5, "iforest": 0.7, "autoencoder": 3.0, "range": 6.5, "alert_threshold": 4.1, "block_threshold": 4.6,
                       "classifier": { "kind": "password-guessing", "kind_probability": 0.93, "attack_probability": 0.97, "fired": true },
                       "fired": ["range", "classifier"] },
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
    start_with(dir, db, &[], "http")
}

/// `vigil console` over `db` with `extra` arguments, once it listens.
fn start_with(
    dir: &TempDir,
    db: &std::path::Path,
    extra: &[&std::ffi::OsStr],
    scheme: &str,
) -> (ConsoleProcess, String) {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let token_file = dir.path().join("console.token");
    let child = Command::new(vigil_bin())
        .args(["console", "--listen", &format!("127.0.0.1:{port}"), "--db"])
        .arg(db)
        .arg("--token-file")
        .arg(&token_file)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("vigil console");
    let base = format!("{scheme}://127.0.0.1:{port}");
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
    assert!(page.contains("password-guessing · T1110.001"), "the attack kind and technique: {page}");
    // Filtered by attack kind and by technique (a parent finds its sub-technique's alerts).
    let get = |q: &str| body(http.get(&format!("{}/?{q}", c.base)).header("Cookie", &cookie).call().unwrap());
    assert!(get("attack=scan").contains("No alerts match."));
    assert!(get("attack=password-guessing").contains("/alerts/1"));
    assert!(get("technique=T1110").contains("/alerts/1"));
    assert!(get("technique=T1046").contains("No alerts match."));
    assert!(get("attack=nonsense").contains("unknown attack kind"));

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
    // Which models fired and what the classifier said.
    assert!(page.contains("range, classifier; classifier: password-guessing 0.930, some attack 0.970"), "{page}");
    assert!(page.contains("(from the classifier)"), "{page}");
    assert!(page.contains("60%") && page.contains("900 vs 3"), "{page}");
    assert!(page.contains("Top conversation") && page.contains("state S0"), "{page}");
    assert!(page.contains("Credential Access: T1110 Brute Force, T1110.001 Password Guessing"), "{page}");
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

fn flow_row(minute: i64, source: &str, port: u16, bytes: u64) -> vigil::store::FlowRow {
    vigil::store::FlowRow {
        minute,
        source: source.parse().unwrap(),
        destination: "10.0.0.1".parse().unwrap(),
        protocol: 6,
        port,
        flows: 3,
        packets: 10,
        bytes,
        anomalous: 1,
    }
}

#[test]
fn the_traffic_page_charts_the_busiest_and_the_health_page_shows_evaluation_pictures() {
    let dir = TempDir::new("console-traffic");
    let db = dir.path().join("vigil.db");
    let minute = now_ms() / 60_000;
    record(
        &db,
        vec![Record::Flows(vec![
            flow_row(minute - 5, "192.0.2.7", 22, 5_000_000),
            flow_row(minute - 3, "192.0.2.8", 443, 2_000),
            // Two days old: outside every window but the week.
            flow_row(minute - 2 * 1440, "192.0.2.99", 80, 9_000_000_000),
        ])],
    );
    let eval = dir.path().join("eval");
    std::fs::create_dir_all(&eval).unwrap();
    std::fs::write(eval.join("captures.svg"), "<svg xmlns=\"http://www.w3.org/2000/svg\"><text>ROC</text></svg>")
        .unwrap();
    std::fs::write(eval.join("notes.txt"), "not a picture").unwrap();
    let (c, token) = start_with(&dir, &db, &["--eval-dir".as_ref(), eval.as_os_str()], "http");
    let http = agent();
    assert_eq!(http.get(&format!("{}/traffic", c.base)).call().unwrap().status(), 303, "needs a login");
    let cookie = login(&c, &token);
    let get = |path: &str| http.get(&format!("{}{path}", c.base)).header("Cookie", &cookie).call().unwrap();

    let page = body(get("/traffic"));
    for needle in
        ["Top talkers", "Top destinations", "Top services", "<svg", "192.0.2.7", "5.0 MB", "tcp/22", "tcp/443"]
    {
        assert!(page.contains(needle), "{needle} missing from the traffic page: {page}");
    }
    assert!(!page.contains("192.0.2.99"), "a row outside the hour is drawn");
    assert!(body(get("/traffic?window=7d")).contains("192.0.2.99"), "the week holds it");
    let resp = get("/traffic?window=1y");
    assert_eq!(resp.status(), 400);
    assert!(body(resp).contains("unknown window 1y"));
    let host = body(get("/hosts/192.0.2.7"));
    assert!(host.contains("Bytes over the last 24 h") && host.contains("it started: 5.0 MB"), "{host}");

    let health = body(get("/health"));
    assert!(health.contains("src=\"/eval/captures.svg\""), "{health}");
    assert!(!health.contains("notes.txt"));
    let picture = get("/eval/captures.svg");
    assert_eq!(picture.status(), 200);
    assert_eq!(picture.headers().get("content-type").unwrap(), "image/svg+xml");
    assert!(body(picture).contains("ROC"));
    for bad in ["/eval/notes.txt", "/eval/..%2Fvigil.db", "/eval/missing.svg"] {
        assert_eq!(get(bad).status(), 404, "{bad}");
    }
}

#[test]
fn a_password_logs_in_and_is_kept_only_as_an_argon2id_hash() {
    use std::{io::Write as _, os::unix::fs::PermissionsExt as _};
    let dir = TempDir::new("console-password");
    let db = dir.path().join("vigil.db");
    record(&db, vec![alert("a-1", "192.0.2.7")]);
    let file = dir.path().join("console.password");
    let set = |password: &str| {
        let mut child = Command::new(vigil_bin())
            .args(["console", "--set-password", "--password-file"])
            .arg(&file)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
        child.wait_with_output().unwrap()
    };
    let out = set("too short");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least 12"), "{out:?}");
    assert!(set("correct horse battery staple").status.success());
    let stored = std::fs::read_to_string(&file).unwrap();
    assert!(stored.starts_with("$argon2id$") && !stored.contains("horse"), "{stored}");
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);

    let (c, token) = start_with(&dir, &db, &["--password-file".as_ref(), file.as_os_str()], "http");
    let http = agent();
    assert!(body(http.get(&format!("{}/login", c.base)).call().unwrap()).contains("Password or console token"));
    login(&c, "correct horse battery staple");
    login(&c, &token);
    let resp = http.post(&format!("{}/login", c.base)).send_form([("token", "correct horse battery")]).unwrap();
    assert_eq!(resp.status(), 401);

    // A hash file others can read is refused before listening.
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = Command::new(vigil_bin())
        .args(["console", "--listen", "127.0.0.1:0", "--db"])
        .arg(&db)
        .arg("--token-file")
        .arg(dir.path().join("console.token"))
        .arg("--password-file")
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("chmod 600"), "{out:?}");
}

#[test]
fn with_tls_the_console_speaks_https_only_and_its_cookie_is_secure() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = TempDir::new("console-tls");
    let db = dir.path().join("vigil.db");
    record(&db, vec![alert("a-1", "192.0.2.7")]);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap().self_signed(&key).unwrap();
    let (cert_file, key_file) = (dir.path().join("console.crt"), dir.path().join("console.key"));
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();

    // A key others can read is refused before listening, naming the file.
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = Command::new(vigil_bin())
        .args(["console", "--listen", "127.0.0.1:0", "--db"])
        .arg(&db)
        .arg("--token-file")
        .arg(dir.path().join("console.token"))
        .arg("--tls-cert")
        .arg(&cert_file)
        .arg("--tls-key")
        .arg(&key_file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("console.tls_key") && err.contains("chmod 600"), "{err}");
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();

    let (c, token) = start_with(
        &dir,
        &db,
        &["--tls-cert".as_ref(), cert_file.as_os_str(), "--tls-key".as_ref(), key_file.as_os_str()],
        "https",
    );
    let roots = ureq::tls::RootCerts::new_with_certs(&[ureq::tls::Certificate::from_der(cert.der()).to_owned()]);
    let tls = ureq::tls::TlsConfig::builder().provider(ureq::tls::TlsProvider::Rustls).root_certs(roots).build();
    let https: ureq::Agent =
        ureq::Agent::config_builder().tls_config(tls).max_redirects(0).http_status_as_error(false).build().into();
    assert_eq!(https.get(&format!("{}/login", c.base)).call().unwrap().status(), 200);
    let resp = https.post(&format!("{}/login", c.base)).send_form([("token", token.as_str())]).unwrap();
    assert_eq!(resp.status(), 303);
    let cookie = resp.headers().get("set-cookie").unwrap().to_str().unwrap().to_owned();
    assert!(cookie.contains("; Secure"), "{cookie}");
    let pair = cookie.split(';').next().unwrap().to_owned();
    let inbox = https.get(&format!("{}/", c.base)).header("Cookie", &pair).call().unwrap();
    assert_eq!(inbox.status(), 200);
    assert!(body(inbox).contains("192.0.2.7"));

    // Plain HTTP gets no page.
    let plain = agent().get(&c.base.replacen("https", "http", 1)).call();
    assert!(plain.is_err() || plain.unwrap().status() != 200, "plain HTTP was served");
    // A client that connects and never shakes hands does not stop the others.
    let _silent = std::net::TcpStream::connect(c.base.trim_start_matches("https://")).unwrap();
    assert_eq!(https.get(&format!("{}/login", c.base)).call().unwrap().status(), 200);
}
