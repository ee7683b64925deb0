use super::*;

#[test]
fn defaults_validate_and_bad_values_are_named() {
    let d = LearnSection::default();
    d.validate().expect("defaults are valid");
    assert_eq!(d.hours_needed(), 12);
    let short = LearnSection { period: HumanDuration(Duration::from_secs(90)), ..d.clone() };
    assert_eq!(short.hours_needed(), 1, "a short period needs only the hours it spans");
    for (bad, field) in [
        (LearnSection { min_rows: 10, ..d.clone() }, "learn.min_rows"),
        (LearnSection { min_rows: 200_000, ..d.clone() }, "learn.min_rows"),
        (LearnSection { max_source_share: 0.0, ..d.clone() }, "learn.max_source_share"),
        (LearnSection { max_alert_rate: 2.0, ..d.clone() }, "learn.max_alert_rate"),
        (LearnSection { min_hours: 25, ..d.clone() }, "learn.min_hours"),
        (LearnSection { dir: PathBuf::new(), ..d.clone() }, "learn.dir"),
    ] {
        assert_eq!(bad.validate().unwrap_err().0, field);
    }
}
