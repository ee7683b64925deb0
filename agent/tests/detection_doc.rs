//! The feature table of `docs/detection.md` is the flow schema: names, units, transforms and
//! meanings in order, so the page cannot drift from `FLOW_FEATURES`.

use std::path::Path;

use vigil::features::{FLOW_FEATURES, Schema, Transform};

#[test]
fn the_feature_table_is_the_flow_schema() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/detection.md");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let schema = Schema::flow();
    assert!(text.contains(&format!("## Features (schema `{}`)", schema.id)), "the heading names the schema");
    let rows: Vec<Vec<String>> = text
        .lines()
        .skip_while(|l| !l.starts_with("| # | feature |"))
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .map(|l| l.trim_matches('|').split(" | ").map(|c| c.trim().to_owned()).collect())
        .collect();
    assert_eq!(rows.len(), FLOW_FEATURES.len(), "one row per feature");
    for (i, (row, &(name, unit, transform, meaning))) in rows.iter().zip(FLOW_FEATURES).enumerate() {
        let transform = match transform {
            Transform::Log1p => "log1p",
            Transform::Identity => "identity",
        };
        let want = [i.to_string(), format!("`{name}`"), unit.to_owned(), transform.to_owned(), meaning.to_owned()];
        assert_eq!(row, &want, "row {i}");
    }
}
