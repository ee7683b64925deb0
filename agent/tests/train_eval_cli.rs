//! `vigil train` and `vigil eval` as a user runs them, on the shared captures.

mod common;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use common::{TempDir, arg as s, shared, vigil_bin};

fn vigil(args: &[&str]) -> (std::process::ExitStatus, String, String) {
    let out = Command::new(vigil_bin()).args(args).env("NO_COLOR", "1").output().expect("vigil runs");
    (out.status, String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .unwrap_or_else(|e| panic!("{}: not JSON: {e}", path.display()))
}

#[test]
fn eval_captures_with_a_classifier_plays_every_capture_a_second_time_with_it() {
    let dir = TempDir::new("eval-classifier");
    let labels = shared("pcaps/labels.json");
    let (status, stdout, stderr) = vigil(&[
        "eval",
        "captures",
        "--labels",
        s(&labels),
        "--classifier",
        "forest",
        "--out",
        s(dir.path()),
        "--no-progress",
    ]);
    assert!(status.success(), "{stderr}");
    assert!(stdout.contains("with the classifier"), "{stdout}");
    let report = read_json(&dir.path().join("captures.json"));
    let files = |section: &str| -> Vec<String> {
        let played = report[section]["captures"].as_array().unwrap_or_else(|| panic!("{section}: {report:#}"));
        played.iter().map(|c| c["file"].as_str().expect("file").to_owned()).collect()
    };
    // The same captures, held-out benign ones and every attack capture, played both ways.
    assert_eq!(files("attackers"), files("attackers_with_classifier"));
    assert_eq!(
        report["attackers_with_classifier"]["benign_conversations"],
        report["attackers"]["benign_conversations"]
    );
    // The two port scans: each played with a classifier trained on the other one.
    let scans = report["attackers_with_classifier"]["per_kind"]
        .as_array()
        .expect("per kind")
        .iter()
        .find(|k| k["kind"] == "port-scan")
        .expect("port scans")
        .clone();
    assert_eq!((scans["captures"].as_u64(), scans["alerted"].as_u64()), (Some(2), Some(2)), "{scans:#}");
    // A classifier must not see the files it is tested on.
    let (status, _, stderr) =
        vigil(&["eval", "captures", "--labels", s(&labels), "--classifier", "forest", "--split-by", "flow"]);
    assert!(!status.success() && stderr.contains("--split-by file"), "{stderr}");
    let (status, _, stderr) =
        vigil(&["eval", "captures", "--labels", s(&labels), "--classifier", "forest", "--model", "default"]);
    assert!(!status.success() && stderr.contains("--model"), "{stderr}");
}

#[test]
fn eval_on_labelled_captures_writes_json_and_picture() {
    let dir = TempDir::new("eval");
    let labels = shared("pcaps/labels.json");
    let (status, stdout, stderr) =
        vigil(&["eval", "captures", "--labels", s(&labels), "--out", s(dir.path()), "--no-progress"]);
    assert!(status.success(), "{stderr}");
    let report = read_json(&dir.path().join("captures.json"));
    // Every attack kind in labels.json is reported, with the flow counts of its captures.
    let kinds: Vec<&str> =
        report["per_kind"].as_array().expect("per kind").iter().map(|k| k["kind"].as_str().expect("kind")).collect();
    assert_eq!(kinds, ["brute-force", "port-scan", "syn-flood", "udp-flood"]);
    let flows = |kind: &str| {
        report["per_kind"].as_array().expect("list").iter().find(|k| k["kind"] == kind).expect("kind")["flows"]
            .as_u64()
            .expect("n")
    };
    assert_eq!(flows("udp-flood"), 10_000, "one flow per source port of the flood");
    let auc = report["areas"]["combined"]["roc_auc"].as_f64().expect("roc_auc");
    assert!(auc > 0.95, "combined ROC-AUC on the shared captures: {auc}\n{stdout}");
    let c = &report["at_threshold"]["confusion"];
    let total: u64 = ["true_positives", "false_positives", "true_negatives", "false_negatives"]
        .iter()
        .map(|k| c[k].as_u64().expect("count"))
        .sum();
    assert_eq!(total, report["test_benign"].as_u64().expect("n") + report["test_attack"].as_u64().expect("n"));
    let svg = std::fs::read_to_string(dir.path().join("captures.svg")).expect("picture");
    assert!(
        svg.starts_with("<svg") && svg.contains("ROC") && svg.contains("alert threshold"),
        "an SVG with the three panels"
    );
    assert!(stdout.contains("ROC-AUC"), "a summary on stdout: {stdout}");
    // Per capture, through the live alert grouping: the held-out benign captures and every
    // attack capture, each attack capture's attacker alerted or not.
    let attackers = &report["attackers"];
    let played = attackers["captures"].as_array().expect("captures played");
    let attack_files = played.iter().filter(|c| c["kind"] != "benign").count();
    assert_eq!(attack_files, 5, "every attack capture");
    let benign_files = played.iter().filter(|c| c["kind"] == "benign").count();
    assert!(benign_files > 0 && benign_files < 14, "only held-out benign captures: {benign_files}");
    let syn_scan = played.iter().find(|c| c["file"] == "attack/synscan.pcapng").expect("the SYN scan");
    assert_eq!(syn_scan["alerted"], true, "{syn_scan:#}");
    assert!(syn_scan["seconds_to_alert"].as_f64().is_some_and(|t| (0.0..5.0).contains(&t)), "{syn_scan:#}");
    let benign_conversations: u64 =
        played.iter().filter(|c| c["kind"] == "benign").map(|c| c["conversations"].as_u64().expect("n")).sum();
    assert_eq!(attackers["benign_conversations"].as_u64(), Some(benign_conversations));
    assert!(stdout.contains("attackers alerted"), "{stdout}");
    // Split by capture file by default: no benign file on both sides. By conversation on
    // request, and then the training set is half the benign conversations.
    let protocol = report["protocol"].as_str().expect("protocol");
    assert!(protocol.starts_with("split by files ("), "{protocol}");
    let by_file_train = report["train_rows"].as_u64().expect("train rows");
    let flow_dir = dir.path().join("by-flow");
    let (status, _, stderr) = vigil(&[
        "eval",
        "captures",
        "--labels",
        s(&labels),
        "--out",
        s(&flow_dir),
        "--no-progress",
        "--split-by",
        "flow",
    ]);
    assert!(status.success(), "{stderr}");
    let by_flow = read_json(&flow_dir.join("captures.json"));
    assert!(by_flow["protocol"].as_str().is_some_and(|p| p.starts_with("split by conversations")), "{by_flow:#}");
    assert!(by_flow.get("attackers").is_none(), "no per-capture report when files are split across sides");
    let benign_total = by_flow["train_rows"].as_u64().expect("n") + by_flow["test_benign"].as_u64().expect("n");
    assert_eq!(by_flow["train_rows"].as_u64(), Some(benign_total.div_ceil(2)), "half the conversations");
    assert_ne!(by_file_train, by_flow["train_rows"].as_u64().expect("n"), "whole files, not half the conversations");
}

#[test]
fn eval_with_the_builtin_model_scores_every_flow() {
    let dir = TempDir::new("eval");
    let labels = shared("pcaps/labels.json");
    let (status, _, stderr) = vigil(&[
        "eval",
        "captures",
        "--labels",
        s(&labels),
        "--model",
        "default",
        "--out",
        s(dir.path()),
        "--no-progress",
    ]);
    assert!(status.success(), "{stderr}");
    let report = read_json(&dir.path().join("captures.json"));
    assert_eq!(report["train_rows"], 0);
    assert!(report["protocol"].as_str().expect("protocol").contains("given model"));
    // All 279 benign-capture conversations plus the attack captures' background are benign
    // test rows.
    assert!(report["test_benign"].as_u64().expect("n") >= 279);
}

#[test]
fn train_writes_a_bundle_that_eval_can_use() {
    let dir = TempDir::new("train");
    let flows = dir.path().join("flows.jsonl");
    let benign = shared("pcaps/benign/reddit.pcap");
    let benign2 = shared("pcaps/benign/sites.pcapng");
    let (status, _, stderr) = vigil(&["replay", s(&benign), s(&benign2), "--flows-out", s(&flows), "--no-progress"]);
    assert!(status.success(), "{stderr}");
    let bundle = dir.path().join("bundle");
    let (status, _, stderr) =
        vigil(&["train", "--flows", s(&flows), "--out", s(&bundle), "--max-epochs", "20", "--trees", "20"]);
    assert!(status.success(), "{stderr}");
    let manifest = read_json(&bundle.join("manifest.json"));
    assert_eq!(manifest["training"]["data"]["flows"], 133, "60 + 73 conversations from the two captures");
    assert_eq!(manifest["training"]["config"]["forest"]["trees"], 20);
    let labels = shared("pcaps/labels.json");
    let (status, _, stderr) = vigil(&[
        "eval",
        "captures",
        "--labels",
        s(&labels),
        "--model",
        s(&bundle),
        "--out",
        s(dir.path()),
        "--no-progress",
    ]);
    assert!(status.success(), "{stderr}");
}

/// `vigil train --base default --supervised LABELS --out OUT --no-progress` with `more`
/// arguments: its exit status and standard error.
fn add_classifier(labels: &Path, out: &Path, more: &[&str]) -> (std::process::ExitStatus, String) {
    let mut args = vec!["train", "--base", "default", "--supervised", s(labels), "--out", s(out), "--no-progress"];
    args.extend_from_slice(more);
    let (status, _, stderr) = vigil(&args);
    (status, stderr)
}

#[test]
fn train_supervised_adds_a_classifier_to_a_bundle_that_eval_uses() {
    let dir = TempDir::new("train-supervised");
    let labels = shared("pcaps/labels.json");
    let bundle = dir.path().join("bundle");
    let (status, stderr) = add_classifier(&labels, &bundle, &["--classifier-trees", "10"]);
    assert!(status.success(), "{stderr}");
    let manifest = read_json(&bundle.join("manifest.json"));
    assert_eq!(manifest["format_version"], 2, "a bundle with a classifier is format 2");
    let classes: Vec<&str> =
        manifest["classifier"]["classes"].as_array().expect("classes").iter().filter_map(|c| c.as_str()).collect();
    assert_eq!(classes[0], "benign");
    assert!(classes.contains(&"password-guessing") && classes.contains(&"scan"), "{classes:?}");
    assert_eq!(manifest["classifier"]["file"], "classifier.json");
    assert_eq!(manifest["classifier"]["training"]["params"]["trees"], 10);
    let size = std::fs::metadata(bundle.join("classifier.json")).expect("written").len();
    assert_eq!(manifest["files"]["classifier.json"]["bytes"], size);
    // The anomaly models are the base's.
    let base = read_json(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/default/manifest.json"));
    assert_eq!(manifest["files"]["iforest.json"], base["files"]["iforest.json"]);
    assert_eq!(manifest["thresholds"], base["thresholds"]);
    let (status, _, stderr) = vigil(&[
        "eval",
        "captures",
        "--labels",
        s(&labels),
        "--model",
        s(&bundle),
        "--out",
        s(dir.path()),
        "--no-progress",
    ]);
    assert!(status.success(), "{stderr}");
    // Gradient-boosted trees instead of the forest.
    let boosted = dir.path().join("boosted");
    let (status, stderr) =
        add_classifier(&labels, &boosted, &["--classifier", "boosted", "--classifier-iterations", "5"]);
    assert!(status.success(), "{stderr}");
    let manifest = read_json(&boosted.join("manifest.json"));
    assert_eq!(manifest["classifier"]["file"], "boosted.json");
    assert_eq!(manifest["classifier"]["training"]["params"]["model"], "boosted");
    assert_eq!(manifest["classifier"]["training"]["params"]["iterations"], 5);
    assert!(boosted.join("boosted.json").is_file() && !boosted.join("classifier.json").exists());
    // Refused before any data is read: --base alone, a probability that is no threshold.
    let (status, _, stderr) = vigil(&["train", "--base", "default", "--out", s(&bundle)]);
    assert!(!status.success() && stderr.contains("--supervised"), "{stderr}");
    let (status, stderr) = add_classifier(&labels, Path::new("x"), &["--min-probability", "0.4"]);
    assert!(!status.success() && stderr.contains("0.4 is not in (0.5, 1]"), "{stderr}");
}

#[test]
fn bad_input_is_named_and_fails() {
    let dir = TempDir::new("train-bad");
    let cases: [(&[&str], &str); 6] = [
        (&["train", "--pcap", "/nonexistent.pcap", "--out", "/tmp/x"], "/nonexistent.pcap"),
        (&["train", "--pcap", "x.pcap", "--out", "/tmp/x", "--target-fpr", "2"], "--target-fpr"),
        (&["train", "--pcap", "x.pcap", "--out", "/tmp/x", "--max-file-share", "0"], "0 is not in (0, 1]"),
        (&["train", "--pcap", "x.pcap", "--out", "/tmp/x", "--max-file-share", "1.5"], "--max-file-share"),
        (&["eval", "captures", "--labels", "/nonexistent/labels.json"], "/nonexistent/labels.json"),
        (
            &["eval", "captures", "--labels", "/dev/null", "--model", "/nonexistent-bundle"],
            "/nonexistent-bundle/manifest.json",
        ),
    ];
    for (args, needle) in cases {
        let (status, _, stderr) = vigil(args);
        assert!(!status.success(), "{args:?} must fail");
        assert!(stderr.contains(needle), "{args:?}: the error names {needle}: {stderr}");
    }
    // A bundle whose file was changed after training is refused with the file's name.
    let bundle = dir.path().join("bundle");
    std::fs::create_dir_all(&bundle).expect("dir");
    for f in ["manifest.json", "iforest.json", "autoencoder.onnx"] {
        std::fs::copy(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/default").join(f), bundle.join(f))
            .expect("copy");
    }
    std::fs::write(bundle.join("iforest.json"), b"{}").expect("tamper");
    let labels = shared("pcaps/labels.json");
    let (status, _, stderr) = vigil(&["eval", "captures", "--labels", s(&labels), "--model", s(&bundle)]);
    assert!(!status.success());
    assert!(stderr.contains("iforest.json: sha256"), "{stderr}");
}

#[test]
fn supervised_eval_measures_gradient_boosted_trees_the_same_way() {
    let dir = TempDir::new("eval-supervised-boosted");
    let labels = shared("pcaps/labels.json");
    let (status, stdout, stderr) = vigil(&[
        "eval",
        "supervised",
        "--captures",
        s(&labels),
        "--model",
        "boosted",
        "--iterations",
        "10",
        "--split",
        "random",
        "--folds",
        "2",
        "--out",
        s(dir.path()),
        "--no-progress",
    ]);
    assert!(status.success(), "{stderr}");
    let random = read_json(&dir.path().join("supervised-random.json"));
    assert_eq!(random["params"]["model"], "boosted");
    assert!(random["accuracy"].as_f64().unwrap() > 0.95, "{stdout}");
    assert!(stdout.contains("gradient-boosted trees (10 iterations"), "{stdout}");
}

#[test]
fn supervised_eval_reports_both_splits_by_attack_kind() {
    let dir = TempDir::new("eval-supervised");
    let labels = shared("pcaps/labels.json");
    let (status, stdout, stderr) = vigil(&[
        "eval",
        "supervised",
        "--captures",
        s(&labels),
        "--folds",
        "2",
        "--trees",
        "10",
        "--out",
        s(dir.path()),
        "--no-progress",
    ]);
    assert!(status.success(), "{stderr}");
    let random = read_json(&dir.path().join("supervised-random.json"));
    let by_file = read_json(&dir.path().join("supervised-by-group.json"));
    assert_eq!(random["split"], "random");
    assert_eq!(by_file["split"], "by-group");
    assert_eq!(by_file["group_kind"], "file");
    // The labels' kinds become the table's kinds: brute-force is password guessing.
    let classes: Vec<&str> =
        by_file["classes"].as_array().expect("classes").iter().map(|c| c["class"].as_str().expect("name")).collect();
    assert_eq!(classes, ["benign", "password-guessing", "scan", "syn-flood", "udp-flood"]);
    let rows = by_file["rows"].as_u64().expect("rows");
    let counted: u64 = by_file["confusion"]
        .as_array()
        .expect("matrix")
        .iter()
        .flat_map(|r| r.as_array().unwrap())
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(counted, rows, "every conversation predicted once");
    // Two scans in two files: the split by file must predict one from the other alone.
    let scan = &by_file["classes"][2];
    assert_eq!(scan["groups"], 2);
    assert!(random["accuracy"].as_f64().unwrap() > 0.95, "{stdout}");
    assert!(stdout.contains("by whole files") && stdout.contains("by random rows"), "{stdout}");
    assert!(std::fs::read_to_string(dir.path().join("supervised-by-group.md")).expect("markdown").contains("| scan |"));
    let svg = std::fs::read_to_string(dir.path().join("supervised-by-group.svg")).expect("picture");
    assert!(
        svg.starts_with("<svg") && svg.contains("password-guessing") && svg.contains("by whole files"),
        "the confusion matrix"
    );

    // The unknown-attack test and the cross-dataset test, on the same captures.
    let (status, stdout, stderr) = vigil(&[
        "eval",
        "supervised",
        "--captures",
        s(&labels),
        "--test-captures",
        s(&labels),
        "--split",
        "random",
        "--folds",
        "2",
        "--trees",
        "10",
        "--unknown",
        "--out",
        s(dir.path()),
        "--no-progress",
    ]);
    assert!(status.success(), "{stderr}");
    let left_out = read_json(&dir.path().join("supervised-unknown.json"));
    let kinds: Vec<&str> =
        left_out.as_array().expect("list").iter().map(|k| k["kind"].as_str().expect("kind")).collect();
    assert_eq!(kinds, ["password-guessing", "scan", "syn-flood", "udp-flood"]);
    for k in left_out.as_array().unwrap() {
        let anomaly = k["anomaly_alert"].as_f64().expect("the built-in model scores captures' rows");
        assert!((0.0..=1.0).contains(&anomaly));
        assert!(k["classifier_said"].as_array().unwrap().iter().all(|s| s[0] != k["kind"]), "{k}");
    }
    let cross = read_json(&dir.path().join("supervised-cross.json"));
    assert_eq!(cross["group_kind"], "dataset");
    assert!(cross["accuracy"].as_f64().unwrap() > 0.95, "trained and tested on the same rows: {stdout}");
    assert!(stdout.contains("unknown attacks") && stdout.contains("across datasets"), "{stdout}");

    // UNSW-NB15's training set has no file or day: the split by group says so and fails when asked for.
    let (status, _, stderr) = vigil(&[
        "eval",
        "supervised",
        "--unsw",
        s(&shared("flows/unsw-nb15/UNSW_NB15_training-set.csv.zip")),
        "--split",
        "by-group",
        "--out",
        s(dir.path()),
    ]);
    assert!(!status.success());
    assert!(stderr.contains("no file or day column") && stderr.contains("random split"), "{stderr}");
    // Flags are checked before any data is read.
    let (status, _, stderr) = vigil(&["eval", "supervised", "--cicflowmeter", "/nonexistent.csv.gz", "--folds", "1"]);
    assert!(!status.success() && stderr.contains("--folds") && !stderr.contains("nonexistent"), "{stderr}");
    let (status, _, stderr) = vigil(&["eval", "supervised", "--cicflowmeter", "/nonexistent.csv.gz"]);
    assert!(!status.success() && stderr.contains("/nonexistent.csv.gz"), "{stderr}");
}
