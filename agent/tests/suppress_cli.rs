//! `vigil suppress add|list|del` as an analyst runs them, on a rules file of their own (no
//! root). The agent's side, rules applied to live alerts, is in `agent/src/live/tests.rs`.

mod common;

use std::os::unix::fs::PermissionsExt as _;

use common::{TempDir, arg as s, run_vigil as vigil};

#[test]
fn rules_are_added_listed_and_removed_and_bad_ones_refused() {
    let dir = TempDir::new("suppress-cli");
    let file = dir.path().join("state/suppressions.json");
    let f = s(&file);
    let (code, out, err) = vigil(&["suppress", "--file", f, "list"]);
    assert_eq!((code, out.trim()), (0, "no suppression rules"), "{err}");

    let (code, out, err) = vigil(&[
        "suppress",
        "--file",
        f,
        "add",
        "--source",
        "10.1.2.0/24",
        "--port",
        "873",
        "--ttl",
        "2h",
        "--reason",
        "backups",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("rule 1: suppressing alerts of source 10.1.2.0/24, port 873 for 2h"), "{out}");
    let (code, _, err) =
        vigil(&["suppress", "--file", f, "add", "--destination", "192.0.2.7", "--kind", "anomalous-flows"]);
    assert_eq!(code, 0, "{err}");
    let (_, out, _) = vigil(&["suppress", "--file", f, "list"]);
    assert!(
        out.contains("   1  source 10.1.2.0/24, port 873  expires in 1h 59m") && out.contains("(backups)"),
        "{out}"
    );
    assert!(out.contains("   2  destination 192.0.2.7/32, kind anomalous-flows  expires in 23h"), "{out}");
    let (_, json, _) = vigil(&["suppress", "--file", f, "list", "--json"]);
    let rules: serde_json::Value = serde_json::from_str(&json).expect("json");
    assert_eq!(rules[0]["source"], "10.1.2.0/24");
    assert_eq!(rules[1]["port"], serde_json::Value::Null);
    // Only the writer may enter the directory the rules live in.
    assert_eq!(std::fs::metadata(file.parent().unwrap()).unwrap().permissions().mode() & 0o777, 0o700);

    for (args, why) in [
        (vec!["add", "--ttl", "1h"], "at least one of"),
        (vec!["add", "--port", "53", "--ttl", "1000days"], "at most 90 days"),
        (vec!["add", "--source", "not-an-address"], "not-an-address"),
        (vec!["add", "--kind", "scan"], "invalid value 'scan'"),
        (vec!["del", "9"], "no rule 9"),
    ] {
        let mut full = vec!["suppress", "--file", f];
        full.extend(args);
        let (code, _, err) = vigil(&full);
        assert_ne!(code, 0, "{full:?} must fail");
        assert!(err.contains(why), "{full:?}: {err}");
    }
    let (code, out, err) = vigil(&["suppress", "--file", f, "del", "1"]);
    assert_eq!((code, out.trim()), (0, "removed rule 1"), "{err}");
    let (_, out, _) = vigil(&["suppress", "--file", f, "list"]);
    assert!(!out.contains("10.1.2.0/24") && out.contains("192.0.2.7"), "{out}");

    // A rules file others can write is refused: it could hide attacks.
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).unwrap();
    let (code, _, err) = vigil(&["suppress", "--file", f, "list"]);
    assert_ne!(code, 0);
    assert!(err.contains("suppressions.json"), "{err}");
}
