//! The learning phase on live traffic: the real `vigil` binary on a veth, ordinary TCP
//! conversations from a peer namespace, a short `learn.period`. The agent must learn them,
//! train a site model in the background, validate it on held-back conversations, swap it in,
//! and say so in its log, `vigil status` and its status file, with the site model written and
//! signed under `learn.dir`; and the next run must score with that model from the start.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use vigil_tests::{
    agent::{Agent, TempDir},
    netns::Link,
    require_root,
};

const PORT: u16 = 8081;

/// An echo server in B that serves connections one after another until `until` or `stop`.
fn echo_server(link: &Link, until: Instant, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<usize> {
    let (ready_tx, ready) = std::sync::mpsc::channel();
    let server = link.b.spawn(move || {
        let listener = TcpListener::bind(("10.200.0.2", PORT)).expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        ready_tx.send(()).expect("ready");
        let mut served = 0;
        while Instant::now() < until && !stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((mut conn, _)) => {
                    conn.set_nonblocking(false).expect("blocking");
                    conn.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
                    let mut buf = [0u8; 512];
                    if let Ok(n) = conn.read(&mut buf) {
                        let _ = conn.write_all(&buf[..n]);
                    }
                    served += 1;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(2)),
            }
        }
        served
    });
    ready.recv().expect("echo server");
    server
}

#[test]
#[expect(clippy::too_many_lines, reason = "one story: learn, swap, check what was written, restart")]
fn a_site_model_is_learnt_from_live_traffic_validated_and_swapped_in() {
    require_root();
    let link = Link::new("learn");
    let dir = TempDir::new("learn");
    let models = dir.path().join("models");
    let config = dir.path().join("vigil.toml");
    std::fs::write(
        &config,
        format!(
            "[learn]\nperiod = \"5s\"\nmin_rows = 20\nholdout_rows = 10\nmin_hours = 0\nmax_alert_rate = 0.5\ndir = \"{}\"\n",
            models.display()
        ),
    )
    .expect("config");
    let run_dir = dir.path().join("run");
    let start = || {
        let (config, run_dir) = (config.to_str().expect("utf-8"), run_dir.to_str().expect("utf-8"));
        Agent::start(
            &link.b,
            &[
                "run",
                "--config",
                config,
                "--no-pin",
                "--iface",
                Link::IFACE_B,
                "--interval",
                "200ms",
                "--run-dir",
                run_dir,
            ],
        )
    };
    let mut agent = start();
    let until = Instant::now() + Duration::from_secs(20);
    let stop = Arc::new(AtomicBool::new(false));
    let server = echo_server(&link, until, Arc::clone(&stop));
    let client_stop = Arc::clone(&stop);
    // Ordinary conversations for up to 20 s: connect, send a line, read it back, close.
    let client = link.a.spawn(move || {
        let mut done = 0u32;
        while Instant::now() < until && done < 2_000 && !client_stop.load(Ordering::Relaxed) {
            let to = SocketAddr::from(([10, 200, 0, 2], PORT));
            if let Ok(mut s) = TcpStream::connect_timeout(&to, Duration::from_secs(1)) {
                let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
                let request = format!("GET /item/{done} HTTP/1.0\r\n\r\n");
                let mut buf = [0u8; 512];
                if s.write_all(request.as_bytes()).is_ok() && s.read(&mut buf).is_ok() {
                    done += 1;
                }
            }
            std::thread::sleep(Duration::from_millis(15));
        }
        done
    });
    // While learning, `vigil status` says so.
    std::thread::sleep(Duration::from_secs(2));
    let shown = std::process::Command::new(vigil_tests::agent::vigil_bin())
        .args(["status", "--run-dir", run_dir.to_str().expect("utf-8")])
        .output()
        .expect("vigil status");
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(shown.contains("learning: ") && shown.contains("rows sampled"), "{shown}");
    agent.wait_for("site model swapped in", Duration::from_secs(40));
    // The status file follows at the end of that cycle.
    let read_status = || -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(run_dir.join("status.json")).unwrap_or_default()).unwrap_or_default()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while read_status()["model_phase"] != "site" && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = read_status();
    stop.store(true, Ordering::Relaxed);
    let conversations = client.join().expect("client");
    let _ = server.join();
    let (exit, log) = agent.stop();
    assert!(exit.success(), "{log}");
    assert!(conversations >= 200, "{conversations} conversations");

    assert!(log.contains("learning phase: alerting with the built-in model"), "{log}");
    assert!(log.contains("learning period over: training the site model"), "{log}");
    // The status file names the site model, its hash and how it was validated.
    assert_eq!(status["model_phase"], "site", "{status:#}");
    let sha = status["model_sha256"].as_str().expect("sha");
    let builtin = vigil::model::Bundle::embedded().expect("built-in").sha256();
    assert_ne!(sha, builtin, "a new model");
    let last = &status["learn"]["last"];
    assert!(last["refused"].is_null() && last["rows"].as_u64() >= Some(20), "{status:#}");
    assert!(last["holdout_rows"].as_u64() >= Some(10), "{status:#}");
    // Written and signed with the host's own key, in directories only root can write.
    let saved = models.join(format!("site-{}", &sha[..12]));
    assert!(saved.join("manifest.json").exists() && saved.join("manifest.sig").exists(), "{}", saved.display());
    let key_dir = models.join("site-key");
    let mode = |p: &std::path::Path| {
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(p).expect("meta").permissions()) & 0o777
    };
    assert_eq!(mode(&models), 0o700);
    assert_eq!(mode(&key_dir.join("vigil-model.key")), 0o600);
    let verify = std::process::Command::new(vigil_tests::agent::vigil_bin())
        .args(["model", "verify", saved.to_str().expect("utf-8"), "--key"])
        .arg(key_dir.join("vigil-model.pub"))
        .output()
        .expect("vigil model verify");
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stderr));

    // The next run scores with it from the start: no second learning phase.
    let mut again = start();
    again.wait_for("detecting", Duration::from_secs(10));
    let (exit, log) = again.stop();
    assert!(exit.success(), "{log}");
    assert!(log.contains("site model learnt by an earlier run") && log.contains(sha), "{log}");
    assert!(log.contains("phase=\"site\"") || log.contains("phase=site"), "{log}");
    assert!(!log.contains("learning phase:"), "{log}");
}
