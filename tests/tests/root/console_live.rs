//! The console against the real sensor. Over HTTP as a browser posts its forms: a rule added
//! from the blocks page is in the kernel and drops the attacker's traffic, the rails refuse
//! what `vigil block add` refuses, and removing it lets traffic through again. And in a real
//! browser (headless Chromium over WebDriver): the inbox loads, an attack raised in the lab
//! appears in it within 2 s without a reload, its detail shows the explanation, a block added
//! on the blocks page drops traffic, and requests without a session or without the CSRF token
//! are refused. Screenshots of every page go to `<target>/tmp/console-screenshots` (the docs'
//! pictures come from there).

use std::{
    net::TcpListener,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use vigil_tests::{
    agent::vigil_bin,
    browser::Browser,
    lab::{ATTACKER, BYSTANDER, Lab, is_alert, now_ms, timestamp_ms},
    require_root,
};

struct Console {
    child: Child,
    base: String,
    token: String,
}

impl Console {
    /// `vigil console` over the lab's store and pinned sensor, on a free loopback port.
    fn start(lab: &Lab) -> Self {
        let port = TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("addr").port();
        let token_file = lab.dir.path().join("console.token");
        let child = Command::new(vigil_bin())
            .args(["console", "--listen", &format!("127.0.0.1:{port}"), "--db"])
            .arg(lab.store_path())
            .arg("--pin-dir")
            .arg(&lab.pin_dir)
            .arg("--token-file")
            .arg(&token_file)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("vigil console");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "the console did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        let token = std::fs::read_to_string(&token_file).expect("token").trim().to_owned();
        Self { child, base: format!("http://127.0.0.1:{port}"), token }
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn http() -> ureq::Agent {
    ureq::Agent::config_builder().max_redirects(0).http_status_as_error(false).build().into()
}

fn page(resp: ureq::http::Response<ureq::Body>) -> String {
    resp.into_body().read_to_string().expect("body")
}

#[test]
fn a_block_added_on_the_blocks_page_drops_traffic_and_the_rails_hold() {
    require_root();
    let lab = Lab::new("console");
    let _agent = lab.agent("");
    let c = Console::start(&lab);
    let resp = http().post(&format!("{}/login", c.base)).send_form([("token", c.token.as_str())]).expect("login");
    assert_eq!(resp.status(), 303);
    let cookie = resp
        .headers()
        .get("set-cookie")
        .expect("cookie")
        .to_str()
        .expect("ascii")
        .split(';')
        .next()
        .expect("pair")
        .to_owned();
    let blocks = page(http().get(&format!("{}/blocks", c.base)).header("Cookie", &cookie).call().expect("blocks"));
    assert!(blocks.contains("No rules."), "{blocks}");
    let at = blocks.find("name=\"csrf\" value=\"").expect("csrf") + 19;
    let csrf = blocks[at..at + 64].to_owned();
    let post = |path: &str, form: &[(&str, &str)]| {
        page(
            http()
                .post(&format!("{}{path}", c.base))
                .header("Cookie", &cookie)
                .send_form(form.iter().copied())
                .expect("post"),
        )
    };

    // Without the CSRF token nothing is added.
    let resp = http()
        .post(&format!("{}/blocks/add", c.base))
        .header("Cookie", &cookie)
        .send_form([("prefix", ATTACKER), ("ttl", "1m")])
        .expect("post");
    assert_eq!(resp.status(), 403);
    // The rails: loopback and a TTL beyond block.max_ttl are refused.
    let refused = post("/blocks/add", &[("csrf", &csrf), ("prefix", "127.0.0.1"), ("ttl", "1m")]);
    assert!(refused.contains("refusing to block 127.0.0.1/32"), "{refused}");
    let refused = post("/blocks/add", &[("csrf", &csrf), ("prefix", BYSTANDER), ("ttl", "30days")]);
    assert!(refused.contains("longer than block.max_ttl"), "{refused}");

    let counter = lab.udp_counter(9000);
    let added = post("/blocks/add", &[("csrf", &csrf), ("prefix", ATTACKER), ("ttl", "2m")]);
    assert!(added.contains(&format!("blocked {ATTACKER}/32 for 2m")), "{added}");
    assert!(added.contains(&format!("data-prefix=\"{ATTACKER}/32\"")), "the rule is listed from the kernel: {added}");
    Lab::send_udp(&lab.attacker, ATTACKER, 9000, 30);
    Lab::send_udp(&lab.bystander, BYSTANDER, 9000, 30);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(counter.from(ATTACKER), 0, "the blocked source got through");
    assert_eq!(counter.from(BYSTANDER), 30, "the bystander was hurt");

    let removed = post("/blocks/remove", &[("csrf", &csrf), ("prefix", &format!("{ATTACKER}/32"))]);
    assert!(removed.contains(&format!("removed the rule for {ATTACKER}/32")), "{removed}");
    Lab::send_udp(&lab.attacker, ATTACKER, 9000, 20);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(counter.from(ATTACKER), 20, "traffic passes once the rule is removed");
}

/// Polls `js` (an expression) in the page until it is true; the time it took.
fn until(browser: &Browser, js: &str, timeout: Duration) -> Duration {
    let start = Instant::now();
    loop {
        if browser.script(&format!("return Boolean({js});")) == Value::Bool(true) {
            return start.elapsed();
        }
        assert!(start.elapsed() < timeout, "`{js}` still false after {timeout:?} on {}", browser.url());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `fetch` from the page: the response's status.
fn fetch_status(browser: &Browser, path: &str, body: &str, credentials: &str) -> u64 {
    let js = format!(
        "const done = arguments[arguments.length - 1];
         fetch({path:?}, {{method: 'POST', credentials: {credentials:?}, redirect: 'manual',
                 headers: {{'Content-Type': 'application/x-www-form-urlencoded'}}, body: {body:?}}})
           .then(r => done(r.status), e => done(String(e)));"
    );
    browser.async_script(&js).as_u64().unwrap_or_else(|| panic!("fetch {path} failed"))
}

#[test]
fn the_console_in_a_real_browser_from_login_to_a_block_that_drops_traffic() {
    require_root();
    let lab = Lab::new("browser");
    let agent = lab.agent("");
    let c = Console::start(&lab);
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
    let browser = Browser::start(&shots);

    // Without a session every page leads to the login.
    browser.goto(&format!("{}/blocks", c.base));
    assert!(browser.url().ends_with("/login"), "{}", browser.url());
    browser.screenshot("login");
    browser.wait_for("#token", Duration::from_secs(5)).type_text("not the token");
    browser.wait_for("button[type=submit]", Duration::from_secs(5)).click();
    assert!(browser.wait_for("p.error", Duration::from_secs(5)).text().contains("Wrong token"));
    browser.wait_for("#token", Duration::from_secs(5)).type_text(&c.token);
    browser.wait_for("main button[type=submit]", Duration::from_secs(5)).click();
    browser.wait_for("table#inbox", Duration::from_secs(5));

    // An attack while the inbox is open: its alert appears without a reload.
    let _ = browser.script("window.vigilNoReload = 42;");
    let row = format!(
        "Array.from(document.querySelectorAll('#inbox tbody tr.alert')).some(r => r.textContent.includes('{ATTACKER}'))"
    );
    assert_eq!(browser.script(&format!("return {row};")), Value::Bool(false), "an alert before the attack");
    let mut flood = lab.syn_flood(3000, 1000, None);
    let alert = lab.wait_event("alert naming the attacker", Duration::from_secs(10), |e| {
        is_alert(e) && e["source"]["ip"] == ATTACKER
    });
    until(&browser, &row, Duration::from_secs(5));
    let latency = now_ms() - timestamp_ms(&alert);
    flood.wait().expect("hping3");
    assert!(latency <= 2_000, "the alert reached the open inbox {latency} ms after it was raised");
    assert_eq!(browser.script("return window.vigilNoReload;"), Value::from(42), "the page was reloaded");
    let rows = browser.count("#inbox tbody tr.alert");
    assert_eq!(
        browser.wait_for("#shown", Duration::from_secs(5)).text(),
        rows.to_string(),
        "the count follows the live rows"
    );
    browser.screenshot("inbox");

    // Its detail: the explanation as bars, the raw document, a link to the source's page.
    browser.wait_for("#inbox tbody tr.alert td.message a", Duration::from_secs(5)).click();
    browser.wait_for("svg.explanation rect.bar", Duration::from_secs(5));
    assert!(browser.count("svg.explanation rect.bar") >= 1);
    let id = alert["event"]["id"].as_str().expect("event.id");
    assert!(browser.wait_for("pre.document", Duration::from_secs(5)).text().contains(id));
    browser.screenshot("alert");
    browser.wait_for(&format!("main a.host[href='/hosts/{ATTACKER}']"), Duration::from_secs(5)).click();
    browser.wait_for("svg.chart", Duration::from_secs(5));
    assert!(browser.wait_for("h1", Duration::from_secs(5)).text().contains(ATTACKER));

    // A block from the blocks page: into the kernel, and the attacker's packets are dropped.
    browser.goto(&format!("{}/blocks", c.base));
    browser.wait_for("#add-block input[name=prefix]", Duration::from_secs(5)).type_text(ATTACKER);
    browser.wait_for("#add-block input[name=ttl]", Duration::from_secs(5)).type_text("2m");
    browser.wait_for("#add-block button", Duration::from_secs(5)).click();
    let notice = browser.wait_for("#notice", Duration::from_secs(5)).text();
    assert!(notice.contains(&format!("blocked {ATTACKER}/32")), "{notice}");
    browser.wait_for(&format!("tr[data-prefix='{ATTACKER}/32']"), Duration::from_secs(5));
    let counter = lab.udp_counter(9000);
    Lab::send_udp(&lab.attacker, ATTACKER, 9000, 30);
    Lab::send_udp(&lab.bystander, BYSTANDER, 9000, 30);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(counter.from(ATTACKER), 0, "the blocked source got through");
    assert_eq!(counter.from(BYSTANDER), 30, "the bystander was hurt");
    // The page shows the rule's drops from the kernel, and the history the rule as the agent
    // recorded it on its next cycle.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        browser.goto(&format!("{}/blocks", c.base));
        if browser.count("#block-history tbody tr") > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the block is not in the history");
        std::thread::sleep(Duration::from_millis(200));
    }
    let rule = browser.wait_for(&format!("tr[data-prefix='{ATTACKER}/32']"), Duration::from_secs(5)).text();
    assert!(rule.contains("manual") && rule.contains(" 30 "), "{rule}");
    let history = browser.wait_for("#block-history tbody", Duration::from_secs(5)).text();
    assert!(history.contains(&format!("block {ATTACKER}/32 manual")), "{history}");
    browser.screenshot("blocks");

    // Without the CSRF token, and without the session, nothing changes.
    let csrf = browser.script("return document.querySelector('#add-block input[name=csrf]').value;");
    let csrf = csrf.as_str().expect("csrf");
    let body = format!("prefix={BYSTANDER}&ttl=1m");
    assert_eq!(fetch_status(&browser, "/blocks/add", &body, "same-origin"), 403);
    assert_eq!(fetch_status(&browser, "/blocks/add", &format!("{body}&csrf={csrf}"), "omit"), 401);
    browser.goto(&format!("{}/blocks", c.base));
    assert_eq!(browser.count("tr[data-prefix]"), 1, "a refused request added a rule");

    browser.goto(&format!("{}/health", c.base));
    browser.wait_for("table.facts", Duration::from_secs(5));
    browser.screenshot("health");

    // Stopping the agent writes the minute's flow rows: the attacker tops the traffic page.
    let (exit, log) = agent.stop();
    assert!(exit.success(), "{log}");
    browser.goto(&format!("{}/traffic", c.base));
    let talkers = browser.wait_for("#sources table.top", Duration::from_secs(5)).text();
    assert!(talkers.contains(ATTACKER), "{talkers}");
    assert!(browser.count("#sources svg.chart rect") >= 1);
    browser.screenshot("traffic");
    // And its host page charts what it sent and lists the service it hammered.
    browser.goto(&format!("{}/hosts/{ATTACKER}", c.base));
    assert!(browser.count("svg.chart rect") >= 1, "no bytes on the host's chart");
    let peers = browser.wait_for("table.flows tbody tr", Duration::from_secs(5)).text();
    assert!(peers.contains(vigil_tests::lab::VICTIM) && peers.contains("/80"), "{peers}");
    browser.screenshot("host");

    // Logging out ends the session.
    browser.wait_for("form.logout button", Duration::from_secs(5)).click();
    browser.goto(&format!("{}/", c.base));
    assert!(browser.url().ends_with("/login"), "{}", browser.url());
}
