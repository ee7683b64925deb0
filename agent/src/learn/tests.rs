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

/// `n` rows around the built-in model's medians, with some spread.
fn rows(n: usize, seed: u64) -> ndarray::Array2<f32> {
    use rand::{Rng as _, SeedableRng as _};
    let baseline = crate::detect::score::tests::detector().baseline;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    ndarray::Array2::from_shape_fn((n, baseline.len()), |(_, j)| baseline[j] * rng.random_range(0.5..1.5))
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vigil-learn-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn a_site_model_is_saved_signed_and_loaded_back_and_tampering_is_refused() {
    let dir = temp("site");
    let config =
        LearnSection { dir: dir.clone(), min_rows: 100, min_hours: 0, max_alert_rate: 1.0, ..LearnSection::default() };
    assert!(current_site(&dir).ok().is_some_and(|s| s.is_none()), "nothing yet");
    let site = train_site(&config, &Schema::flow(), rows(400, 1), rows(40, 2), 1, None).expect("passes");
    let saved = site.dir.clone().expect("written");
    let loaded = current_site(&dir).ok().flatten().expect("a site model loads");
    assert_eq!((loaded.sha256.as_str(), loaded.path.as_path()), (site.sha256.as_str(), saved.as_path()));

    // A changed model file fails its checksum; a bundle signed by another key is refused.
    let forest = saved.join(crate::model::bundle::IFOREST);
    let original = std::fs::read(&forest).expect("forest");
    std::fs::write(&forest, [&original[..], b" "].concat()).expect("tamper");
    let e = current_site(&dir).err().expect("refused");
    assert_eq!(e.path, saved);
    assert!(e.error.to_string().contains("iforest"), "{}", e.error);
    std::fs::write(&forest, &original).expect("restore");
    let other = temp("other-key");
    crate::model::sign::keygen(&other).expect("keygen");
    let stranger = crate::model::sign::SecretKey::read(&other.join(crate::model::sign::SECRET_KEY_FILE)).expect("key");
    crate::model::Bundle::sign_dir(&saved, &stranger).expect("re-sign");
    let e = current_site(&dir).err().expect("refused");
    assert!(matches!(e.error, crate::model::BundleError::Sign(_)), "{}", e.error);

    // `current` may only name a site directory beside it.
    std::fs::write(dir.join(CURRENT), "../../etc\n").expect("write");
    let e = current_site(&dir).err().expect("refused");
    assert_eq!(e.path, dir.join(CURRENT));
    assert!(e.error.to_string().contains("site-<12 hex digits>"), "{}", e.error);
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&other);
}

#[test]
fn validation_holds_back_a_model_that_alerts_on_recent_traffic() {
    let dir = temp("alerting");
    let config =
        LearnSection { dir: dir.clone(), min_rows: 100, min_hours: 0, max_alert_rate: 0.01, ..LearnSection::default() };
    // Held-back traffic unlike anything trained on: ten times the medians.
    let odd = rows(40, 3).mapv(|v| v * 10.0 + 5.0);
    let report = train_site(&config, &Schema::flow(), rows(400, 1), odd, 1, None).err().expect("held back");
    assert!(report.holdout_alert_rate > 0.01, "{report:?}");
    assert!(report.refused.as_deref().is_some_and(|r| r.contains("learn.max_alert_rate")), "{report:?}");
    assert!(!dir.join(CURRENT).exists(), "nothing written");
    let too_few_hours = LearnSection { min_hours: 12, period: HumanDuration(Duration::from_hours(24)), ..config };
    let report =
        train_site(&too_few_hours, &Schema::flow(), rows(400, 1), rows(40, 2), 3, None).err().expect("held back");
    assert!(report.refused.as_deref().is_some_and(|r| r.contains("3 hours")), "{report:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_retrained_model_that_moves_the_alert_rate_is_held_back_as_drift() {
    let dir = temp("drift");
    let config = LearnSection {
        dir: dir.clone(),
        min_rows: 100,
        min_hours: 0,
        max_alert_rate: 1.0,
        max_rate_change: 0.2,
        ..LearnSection::default()
    };
    let current = train_site(&config, &Schema::flow(), rows(400, 1), rows(40, 2), 1, None).expect("first model");
    // Trained on like traffic: about the same alert rate on recent traffic as the model in use.
    let like = train_site(&config, &Schema::flow(), rows(400, 3), rows(40, 4), 1, Some(&current.detector))
        .expect("a like model passes");
    assert!(like.report.current_alert_rate.is_some() && !like.report.drift, "{:?}", like.report);
    // Trained on traffic that moved (ten times the volumes): on today's traffic its alert rate
    // jumps where the model in use stays quiet.
    let moved = rows(400, 5).mapv(|v| v * 10.0 + 5.0);
    let report =
        train_site(&config, &Schema::flow(), moved, rows(40, 4), 1, Some(&current.detector)).err().expect("held back");
    assert!(report.drift, "{report:?}");
    let (new, now) = (report.holdout_alert_rate, report.current_alert_rate.expect("compared"));
    assert!(new - now > 0.2, "{report:?}");
    assert!(report.refused.as_deref().is_some_and(|r| r.starts_with("drift:")), "{report:?}");
    // And the other way: a model in use that alerts on today's traffic, and a new one that
    // finds all of it normal. The alert rate collapses: held back too.
    let loud = LearnSection { max_alert_rate: 1.0, ..config.clone() };
    let loud_model = train_site(
        &loud,
        &Schema::flow(),
        rows(400, 5).mapv(|v| v * 10.0 + 5.0),
        rows(40, 5).mapv(|v| v * 10.0 + 5.0),
        1,
        None,
    )
    .unwrap_or_else(|r| panic!("{r:?}"));
    let report = train_site(&config, &Schema::flow(), rows(400, 3), rows(40, 4), 1, Some(&loud_model.detector))
        .err()
        .expect("held back");
    assert!(report.drift && report.current_alert_rate > Some(report.holdout_alert_rate + 0.2), "{report:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn retraining_can_be_turned_off_and_bad_values_are_named() {
    let off = LearnSection { retrain_every: HumanDuration(Duration::ZERO), ..LearnSection::default() };
    off.validate().expect("0s is never");
    let schema = Schema::flow();
    let detector = crate::detect::score::tests::detector();
    assert!(Learner::adapting(off, schema.clone(), detector.clone(), 0).is_none());
    let on = Learner::adapting(LearnSection::default(), schema, detector, 0).expect("adapting");
    assert_eq!(on.phase(), Phase::Site);
    assert!(on.may_block());
    let bad = LearnSection { retrain_every: HumanDuration(Duration::from_millis(10)), ..LearnSection::default() };
    assert_eq!(bad.validate().unwrap_err().0, "learn.retrain_every");
    let bad = LearnSection { max_rate_change: 0.0, ..LearnSection::default() };
    assert_eq!(bad.validate().unwrap_err().0, "learn.max_rate_change");
}

#[test]
fn kept_site_models_are_listed_chosen_rolled_back_and_pruned() {
    let dir = temp("store");
    let config = LearnSection {
        dir: dir.clone(),
        min_rows: 100,
        min_hours: 0,
        max_alert_rate: 1.0,
        keep: 2,
        ..LearnSection::default()
    };
    let names: Vec<String> = (0..3)
        .map(|i| {
            let site =
                train_site(&config, &Schema::flow(), rows(300, 10 + i), rows(30, 20 + i), 1, None).expect("passes");
            site.dir.expect("written").file_name().unwrap().to_string_lossy().into_owned()
        })
        .collect();
    // Two kept, the oldest removed; the newest in use.
    assert_eq!(store::history(&dir), names[1..]);
    assert!(!dir.join(&names[0]).exists() && dir.join(&names[1]).exists());
    let listed = store::list(&dir);
    assert_eq!(
        listed.iter().map(|k| (k.name.as_str(), k.current)).collect::<Vec<_>>(),
        [(names[1].as_str(), false), (names[2].as_str(), true)]
    );
    assert!(listed.iter().all(|k| k.problem.is_none() && k.training["rows"] == 300), "{listed:#?}");

    assert_eq!(store::rollback(&dir).expect("rollback"), names[1]);
    assert_eq!(store::current_name(&dir).as_deref(), Some(names[1].as_str()));
    assert!(store::rollback(&dir).is_err(), "nothing older is kept");
    // By a prefix of its hash, as `vigil model list` shows it.
    assert_eq!(store::use_site(&dir, &names[2][5..12]).expect("use"), names[2]);
    assert!(store::use_site(&dir, "site-000000").is_err());
    assert!(store::use_site(&dir, "abc").is_err(), "too short to choose");
    // A kept model that no longer loads is listed with its problem, and cannot be chosen.
    std::fs::write(dir.join(&names[1]).join(crate::model::bundle::IFOREST), b"{}").expect("tamper");
    assert!(store::list(&dir)[0].problem.is_some());
    assert!(store::use_site(&dir, &names[1]).is_err());
    assert_eq!(store::current_name(&dir).as_deref(), Some(names[2].as_str()), "unchanged");
    let _ = std::fs::remove_dir_all(&dir);
}
