//! A headless Chromium driven over `WebDriver`, for the console's browser tests.
//!
//! `chromedriver` (Debian's `chromium-driver`, installed by `cargo xtask setup`) speaks the W3C
//! `WebDriver` protocol: JSON over HTTP. The tests need a dozen of its commands, so this is a
//! small blocking client on the HTTP client the tests already use (ureq) rather than an async
//! `WebDriver` crate and a runtime for it.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use base64::Engine as _;
use serde_json::{Value, json};

/// The key under which `WebDriver` returns an element's reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// One browser session; the browser and its driver end on drop.
pub struct Browser {
    driver: Child,
    base: String,
    http: ureq::Agent,
    artefacts: PathBuf,
    _profile: tempfile_dir::Dir,
}

/// A throwaway Chromium profile directory.
mod tempfile_dir {
    use std::path::PathBuf;

    pub struct Dir(pub PathBuf);

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl Browser {
    /// Starts chromedriver and a headless Chromium (1280×900) whose screenshots go to
    /// `artefacts`.
    ///
    /// # Panics
    /// When chromedriver or Chromium is missing or does not start.
    #[must_use]
    pub fn start(artefacts: &Path) -> Self {
        let port = TcpListener::bind("127.0.0.1:0").expect("a free port").local_addr().expect("addr").port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (Debian's chromium-driver; cargo xtask setup installs it)");
        let http: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        let root = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let ready = http
                .get(&format!("{root}/status"))
                .call()
                .ok()
                .and_then(|r| r.into_body().read_json::<Value>().ok())
                .is_some_and(|v| v["value"]["ready"] == true);
            if ready {
                break;
            }
            assert!(Instant::now() < deadline, "chromedriver did not become ready on port {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        let profile = std::env::temp_dir().join(format!("vigil-chromium-{}-{}", std::process::id(), crate::unique()));
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--no-first-run", "--window-size=1280,900", "--hide-scrollbars",
                format!("--user-data-dir={}", profile.display()),
            ]}
        }}});
        let mut resp = http.post(&format!("{root}/session")).send_json(&caps).expect("new session");
        let v: Value = resp.body_mut().read_json().expect("session reply");
        let session =
            v["value"]["sessionId"].as_str().unwrap_or_else(|| panic!("Chromium did not start: {v}")).to_owned();
        std::fs::create_dir_all(artefacts).expect("artefacts directory");
        Self {
            driver,
            base: format!("{root}/session/{session}"),
            http,
            artefacts: artefacts.to_owned(),
            _profile: tempfile_dir::Dir(profile),
        }
    }

    /// Runs one command; `Err` carries `WebDriver`'s error code (`"no such element"`, ...).
    fn command(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, String> {
        let url = format!("{}{path}", self.base);
        let resp = match (method, body) {
            ("GET", _) => self.http.get(&url).call(),
            ("DELETE", _) => self.http.delete(&url).call(),
            (_, Some(b)) => self.http.post(&url).send_json(b),
            (_, None) => self.http.post(&url).send_json(json!({})),
        };
        let v: Value =
            resp.unwrap_or_else(|e| panic!("{method} {path}: {e}")).into_body().read_json().expect("JSON reply");
        match v["value"].get("error").and_then(Value::as_str) {
            Some(code) => Err(format!("{code}: {}", v["value"]["message"].as_str().unwrap_or_default())),
            None => Ok(v["value"].clone()),
        }
    }

    fn must(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        self.command(method, path, body).unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    /// Opens a page and waits for it to load.
    pub fn goto(&self, url: &str) {
        self.must("POST", "/url", Some(&json!({ "url": url })));
    }

    /// The current address.
    #[must_use]
    pub fn url(&self) -> String {
        self.must("GET", "/url", None).as_str().unwrap_or_default().to_owned()
    }

    /// The first element matching a CSS selector, if there is one now.
    ///
    /// # Panics
    /// When the browser answers with anything but an element or "no such element".
    #[must_use]
    pub fn find(&self, css: &str) -> Option<Element<'_>> {
        match self.command("POST", "/element", Some(&json!({"using": "css selector", "value": css}))) {
            Ok(v) => Some(Element { browser: self, id: v[ELEMENT].as_str().expect("element reference").to_owned() }),
            Err(e) if e.starts_with("no such element") => None,
            Err(e) => panic!("finding {css}: {e}"),
        }
    }

    /// How many elements match a CSS selector now.
    #[must_use]
    pub fn count(&self, css: &str) -> usize {
        self.must("POST", "/elements", Some(&json!({"using": "css selector", "value": css})))
            .as_array()
            .map_or(0, Vec::len)
    }

    /// Waits up to `timeout` for an element matching `css`.
    ///
    /// # Panics
    /// When none appears in time (the message has the page's address).
    #[allow(clippy::must_use_candidate)]
    pub fn wait_for(&self, css: &str, timeout: Duration) -> Element<'_> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(e) = self.find(css) {
                return e;
            }
            assert!(Instant::now() < deadline, "no {css} on {} after {timeout:?}", self.url());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs JavaScript in the page and returns its result.
    #[must_use]
    pub fn script(&self, js: &str) -> Value {
        self.must("POST", "/execute/sync", Some(&json!({"script": js, "args": []})))
    }

    /// Runs JavaScript that calls its last argument (`arguments[0]`) with the result.
    #[must_use]
    pub fn async_script(&self, js: &str) -> Value {
        self.must("POST", "/execute/async", Some(&json!({"script": js, "args": []})))
    }

    /// Saves a PNG of the viewport as `<artefacts>/<name>.png` and returns its path.
    ///
    /// # Panics
    /// When the browser sends no picture or it cannot be written.
    #[allow(clippy::must_use_candidate)]
    pub fn screenshot(&self, name: &str) -> PathBuf {
        let data = self.must("GET", "/screenshot", None);
        let png = base64::engine::general_purpose::STANDARD.decode(data.as_str().expect("base64")).expect("PNG");
        let path = self.artefacts.join(format!("{name}.png"));
        std::fs::write(&path, png).expect("writing the screenshot");
        path
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.command("DELETE", "", None);
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// An element of the current page.
pub struct Element<'a> {
    browser: &'a Browser,
    id: String,
}

impl Element<'_> {
    /// Its rendered text.
    #[must_use]
    pub fn text(&self) -> String {
        self.browser.must("GET", &format!("/element/{}/text", self.id), None).as_str().unwrap_or_default().to_owned()
    }

    /// One of its attributes.
    #[must_use]
    pub fn attribute(&self, name: &str) -> Option<String> {
        self.browser.must("GET", &format!("/element/{}/attribute/{name}", self.id), None).as_str().map(str::to_owned)
    }

    /// Clicks it.
    pub fn click(&self) {
        self.browser.must("POST", &format!("/element/{}/click", self.id), None);
    }

    /// Clears it and types `text`.
    pub fn type_text(&self, text: &str) {
        self.browser.must("POST", &format!("/element/{}/clear", self.id), None);
        self.browser.must("POST", &format!("/element/{}/value", self.id), Some(&json!({ "text": text })));
    }
}
