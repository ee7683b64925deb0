//! The daemon's dependency tree: offline evaluation (`--features offline`) brings a CSV reader,
//! a zip reader and a plotting library; a default build of `vigil` must link none of them.

use std::{path::PathBuf, process::Command};

/// Crates only the `offline` feature may bring in.
const OFFLINE_ONLY: [&str; 3] = ["plotters", "csv", "zip"];

fn workspace_root() -> PathBuf {
    // At run time first: a build directory shared by two checkouts may hold a test binary
    // compiled in the other one.
    let manifest =
        std::env::var_os("CARGO_MANIFEST_DIR").map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
    manifest.parent().expect("agent/ is in the workspace").to_path_buf()
}

/// `cargo tree` for the normal dependencies of `vigil` with `features`, one crate name per line.
fn tree(features: &[&str]) -> Vec<String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
    let out = Command::new(cargo)
        .current_dir(workspace_root())
        .args(["tree", "--package", "vigil", "--edges", "normal", "--prefix", "none"])
        .args(features)
        .output()
        .expect("cargo tree runs");
    assert!(out.status.success(), "cargo tree failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .lines()
        .filter_map(|line| line.split_whitespace().next().map(str::to_owned))
        .collect()
}

#[test]
fn the_daemon_links_no_offline_crates() {
    let names = tree(&[]);
    assert!(names.iter().any(|n| n == "vigil"), "unexpected cargo tree output: {names:?}");
    let found: Vec<&String> = names.iter().filter(|n| OFFLINE_ONLY.contains(&n.as_str())).collect();
    assert!(found.is_empty(), "a default build of vigil depends on {found:?}: make them optional (feature `offline`)");
}

#[test]
fn the_offline_feature_brings_them() {
    // Proves the check above looks at the right names: with the feature they are there.
    let names = tree(&["--features", "offline"]);
    for name in OFFLINE_ONLY {
        assert!(names.iter().any(|n| n == name), "`--features offline` no longer brings {name}");
    }
}
