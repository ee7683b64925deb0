//! `vigil model keygen|sign|verify` as an operator runs them: keys, signatures, tampering, and
//! the shipped bundle verifying with the models' key. No root; the `vigil run` cases, which
//! attach to an interface, are in the privileged suite (`tests/tests/root/model_run.rs`).

mod common;

use std::{
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use common::{TempDir, arg as s, bundle_copy, public_key_hex, run_vigil as vigil};

#[test]
fn keygen_sign_verify_round_trip_and_tampering() {
    let dir = TempDir::new("model-cli");
    let keys = dir.path().join("keys");
    let (code, stdout, stderr) = vigil(&["model", "keygen", "--out", s(&keys)]);
    assert_eq!(code, 0, "{stderr}");
    let secret = keys.join("vigil-model.key");
    let public = keys.join("vigil-model.pub");
    assert_eq!(std::fs::metadata(&secret).expect("private key").mode() & 0o777, 0o600, "private key mode");
    let hex = public_key_hex(&public);
    assert!(stdout.contains(&hex), "keygen prints the public key: {stdout}");
    let (code, _, stderr) = vigil(&["model", "keygen", "--out", s(&keys)]);
    assert_ne!(code, 0);
    assert!(stderr.contains("vigil-model.key exists; refusing to overwrite"), "{stderr}");

    let bundle = bundle_copy(dir.path());
    let (code, _, stderr) = vigil(&["model", "verify", "--key", s(&public), s(&bundle)]);
    assert_ne!(code, 0, "an unsigned bundle does not verify");
    assert!(stderr.contains("no manifest.sig"), "{stderr}");

    let (code, stdout, stderr) = vigil(&["model", "sign", "--key", s(&secret), s(&bundle)]);
    assert_eq!(code, 0, "{stderr}");
    assert!(bundle.join("manifest.sig").is_file(), "{stdout}");
    let manifest_sha = "5a484c092b6db5d56b3332f23c2dfdcddd23dbd512741a96b58c4f9980061156";
    for key in [s(&public), hex.as_str()] {
        let (code, stdout, stderr) = vigil(&["model", "verify", "--key", key, s(&bundle)]);
        assert_eq!(code, 0, "{stderr}");
        assert!(stdout.contains(&format!("valid, signed by {hex}; manifest sha256 {manifest_sha}")), "{stdout}");
    }

    // Another key: refused.
    let (code, _, stderr) = vigil(&["model", "keygen", "--out", s(&dir.path().join("other"))]);
    assert_eq!(code, 0, "{stderr}");
    let other = dir.path().join("other/vigil-model.pub");
    let (code, _, stderr) = vigil(&["model", "verify", "--key", s(&other), s(&bundle)]);
    assert_ne!(code, 0);
    assert!(stderr.contains("does not verify with 1 trusted key(s)"), "{stderr}");
    // Either of two keys: accepted.
    let (code, _, stderr) = vigil(&["model", "verify", "--key", s(&other), "--key", s(&public), s(&bundle)]);
    assert_eq!(code, 0, "{stderr}");

    // The manifest changed after signing, checksums intact: a lowered threshold.
    let manifest = bundle.join("manifest.json");
    let text = std::fs::read_to_string(&manifest).expect("manifest");
    // The threshold as the manifest writes it, whatever the model.
    let alert = text.lines().find(|l| l.trim_start().starts_with("\"alert\": ")).expect("an alert threshold");
    let alert = alert.trim().trim_end_matches(',');
    assert!(text.matches(alert).count() == 1, "{alert} is unique in the manifest");
    std::fs::write(&manifest, text.replacen(alert, "\"alert\": 2.0", 1)).expect("tamper");
    let (code, _, stderr) = vigil(&["model", "verify", "--key", s(&public), s(&bundle)]);
    assert_ne!(code, 0);
    assert!(stderr.contains("manifest.sig does not verify"), "{stderr}");
    // A threshold out of range is named before the signature is even looked at.
    std::fs::write(&manifest, text.replacen(alert, "\"alert\": 1e30", 1)).expect("tamper");
    let (code, _, stderr) = vigil(&["model", "verify", "--key", s(&public), s(&bundle)]);
    assert_ne!(code, 0);
    assert!(stderr.contains("thresholds.alert is 1e30"), "{stderr}");

    // A private key others can read is not used.
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let (code, _, stderr) = vigil(&["model", "sign", "--key", s(&secret), s(&bundle)]);
    assert_ne!(code, 0);
    assert!(stderr.contains("a private key others can read (mode 0644)"), "{stderr}");
}

#[test]
fn the_shipped_bundle_verifies_with_the_models_key() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let key = root.join("models/vigil-models.pub");
    for bundle in [root.join("models/default"), PathBuf::from("default")] {
        let (code, stdout, stderr) = vigil(&["model", "verify", "--key", s(&key), s(&bundle)]);
        assert_eq!(code, 0, "{}: {stderr}", bundle.display());
        assert!(stdout.contains("valid, signed by"), "{stdout}");
    }
}

#[test]
fn site_model_commands_on_an_empty_store_say_so() {
    let dir = TempDir::new("site-store");
    let store = dir.path().join("models");
    let (code, stdout, stderr) = vigil(&["model", "list", "--dir", s(&store)]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("no site models kept in"), "{stdout}");
    let (code, _, stderr) = vigil(&["model", "rollback", "--dir", s(&store)]);
    assert_ne!(code, 0);
    assert!(stderr.contains("no site model kept before"), "{stderr}");
    let (code, _, stderr) = vigil(&["model", "use", "--dir", s(&store), "abcdef"]);
    assert_ne!(code, 0);
    assert!(stderr.contains("0 kept site models match \"abcdef\""), "{stderr}");
}

#[test]
fn feedback_takes_alert_ids_only() {
    let dir = TempDir::new("feedback");
    let store = dir.path().join("models");
    let (code, _, stderr) = vigil(&["feedback", "false-positive", "--dir", s(&store), "../../etc/passwd"]);
    assert_ne!(code, 0);
    assert!(stderr.contains("is not an alert id"), "{stderr}");
    let (code, stdout, stderr) = vigil(&["feedback", "false-positive", "--dir", s(&store), "3fa9c2d1-42"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("alert 3fa9c2d1-42 marked a false positive"), "{stdout}");
    let text = std::fs::read_to_string(store.join("feedback.json")).expect("written");
    assert!(text.contains("\"id\": \"3fa9c2d1-42\"") && text.contains("false-positive"), "{text}");
    assert_eq!(std::fs::metadata(&store).unwrap().permissions().mode() & 0o777, 0o700);
}
