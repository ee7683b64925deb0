//! `docs/vigil.example.toml` is what operators copy: it must parse, validate, and say what its
//! comments say.

use std::{path::Path, time::Duration};

use vigil::{config::Config, detect::BlockMode};

fn example() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/vigil.example.toml");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn the_example_configuration_parses_and_validates() {
    let config = Config::parse(&example()).expect("docs/vigil.example.toml parses");
    config.validate().expect("docs/vigil.example.toml validates");
    assert_eq!(config.block.mode, BlockMode::DryRun, "the example starts in dry-run");
    assert_eq!(config.block.ttl.0, Duration::from_mins(10));
    assert_eq!(config.alerts.sinks.len(), 2, "file and syslog");
    assert_eq!(config.metrics.listen.map(|a| a.ip().is_loopback()), Some(true), "metrics on loopback");
    assert!(config.console.listen.ip().is_loopback(), "the console on loopback");
    assert_eq!(config.console, vigil::console::ConsoleSection::default(), "the example shows the console's defaults");
}

#[test]
fn the_commented_webhook_sink_is_valid_once_uncommented() {
    let text = example();
    let mut uncommented = String::new();
    let mut in_webhook = false;
    for line in text.lines() {
        if line == "# [[alerts.sinks]]" {
            in_webhook = true;
        }
        if in_webhook && let Some(rest) = line.strip_prefix("# ") {
            uncommented.push_str(rest);
        } else {
            in_webhook = false;
            uncommented.push_str(line);
        }
        uncommented.push('\n');
    }
    let config = Config::parse(&uncommented).expect("parses with the webhook");
    assert_eq!(config.alerts.sinks.len(), 3);
    config.validate().expect("validates with the webhook");
}

#[test]
fn the_commented_fleet_export_is_valid_once_uncommented() {
    let text = example();
    let start = text.find("# [fleet.bus]").expect("a commented [fleet.bus]");
    let uncommented: String = text[..start].to_owned()
        + &text[start..].lines().map(|l| l.strip_prefix("# ").unwrap_or(l)).collect::<Vec<_>>().join("\n");
    let mut config = Config::parse(&uncommented).expect("parses with the fleet export");
    let e = config.validate().expect_err("[fleet.models] without trusted keys").to_string();
    assert!(e.contains("fleet.models") && e.contains("detection.trusted_keys"), "{e}");
    let models_key = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../models/vigil-models.pub"))
        .expect("the models key");
    let hex = models_key.lines().find(|l| !l.starts_with('#')).expect("a key line").trim().to_owned();
    config.detection.trusted_keys = vec![hex];
    config.validate().expect("validates with the fleet export");
    let fleet = config.fleet.expect("a [fleet] section");
    assert_eq!(fleet.models.expect("a [fleet.models] section").group, "canary");
    assert_eq!(fleet.bus.site, "paris");
    let spool = fleet.bus.spool.expect("a spool");
    assert_eq!(spool.max_size_mb, 1024);
    assert_eq!(fleet.batch, 1000, "the defaults");
    let blocking = fleet.blocking.expect("a [fleet.blocking] section");
    assert!(blocking.propose);
    assert_eq!(blocking.follow, vigil::detect::engine::BlockMode::DryRun);
}
