//! Flows scored per second on one core: Vigil's isolation forest next to scikit-learn's
//! `IsolationForest.score_samples` (same size, 100 trees of ψ = 256, same data, same run), the
//! autoencoder through tract, and the whole detector (transform, scale, both models, combine)
//! with the built-in model. The process and the Python reference are pinned to CPU 0.
#![expect(clippy::cast_precision_loss, clippy::format_push_string, reason = "rates; the report is built by appending")]

use std::time::{Duration, Instant};

use ndarray::{Array2, Axis, s};
use vigil::{
    features::Schema,
    model::{
        Bundle,
        autoencoder::{Autoencoder, AutoencoderParams},
        iforest::{ForestParams, IsolationForest},
        onnx::{OnnxScorer, export},
    },
};
use vigil_tests::{
    agent::TempDir,
    bench::{machine, median, report},
    data::{arg, forest_split, python_on_cpu0, shared, sklearn_boosted, sklearn_forest, unsw_prepared, write_f32},
};

/// Median time of `runs` calls.
fn time(runs: usize, mut f: impl FnMut()) -> Duration {
    f(); // warm up
    let mut samples: Vec<Duration> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    median(&mut samples)
}

fn rate(rows: usize, d: Duration) -> f64 {
    rows as f64 / d.as_secs_f64()
}

fn pin_to_cpu0() {
    let mut set = nix::sched::CpuSet::new();
    set.set(0).expect("cpu 0");
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).expect("pin to CPU 0");
}

/// The supervised classifier (issue 17) against scikit-learn's `RandomForestClassifier`, same
/// size and rows: UNSW-NB15's ten classes without the TTL columns, trained on two thirds,
/// probabilities of the rest.
fn classifier() -> String {
    use vigil::{
        eval::supervised::Labelled,
        model::{
            boosted::{BoostParams, Boosted},
            classifier::{Classifier, ClassifierParams},
        },
    };
    let data =
        Labelled::from_unsw(&shared("flows/unsw-nb15/UNSW_NB15_training-set.csv.zip"), false).expect("UNSW-NB15");
    let split = forest_split(&data);
    let (train, test) = (&split.train, &split.test);
    let params = ClassifierParams::default();
    let started = Instant::now();
    let forest = Classifier::train(train.view(), &split.y_train, data.classes.clone(), &params);
    let trained = started.elapsed();
    let n = test.nrows();
    let ours = rate(
        n,
        time(5, || {
            std::hint::black_box(forest.predict_proba(test.view()));
        }),
    );
    let (_, _, sklearn) = sklearn_forest(&split, params.trees, params.max_depth, true);
    // Gradient-boosted trees at scikit-learn's HistGradientBoosting defaults (100 iterations, a
    // tree per class each, 31 leaves), trained on both CPUs, scored on one.
    let boost = BoostParams::default();
    let started = Instant::now();
    let boosted = Boosted::train(train.view(), &split.y_train, data.classes.clone(), &boost);
    let boost_trained = started.elapsed();
    let boosted_rate = rate(
        n,
        time(3, || {
            std::hint::black_box(boosted.predict_proba(test.view()));
        }),
    );
    let (_, _, sklearn_boosted_rate) = sklearn_boosted(&split, boost.iterations, true);
    format!(
        "| Vigil random forest ({} trees, depth ≤ {}, {:.0} nodes a tree, {} classes; `predict_proba`) | {n} | {ours:.0} |\n\
         | scikit-learn `RandomForestClassifier.predict_proba` (same size, same rows) | {n} | {sklearn:.0} |\n\n\
         | Vigil gradient-boosted trees ({} iterations × {} classes, ≤ {} leaves; `predict_proba`) | {n} | {boosted_rate:.0} |\n\
         | scikit-learn `HistGradientBoostingClassifier.predict_proba` (same settings, same rows) | {n} | {sklearn_boosted_rate:.0} |\n\n\
         Supervised classifier (UNSW-NB15's ten classes, {} features, trained on {} rows in {:.1} s on one CPU, the boosted \
         trees in {:.1} s): target ≥ 500,000 flows/s on one core: forest **{ours:.0}** ({}); {:.1}x scikit-learn's forest; \
         boosted trees **{boosted_rate:.0}** ({}), {:.1}x scikit-learn's.\n",
        params.trees,
        params.max_depth,
        forest.mean_nodes(),
        data.classes.len(),
        boost.iterations,
        data.classes.len(),
        boost.max_leaves,
        train.ncols(),
        train.nrows(),
        trained.as_secs_f64(),
        boost_trained.as_secs_f64(),
        if ours >= 500_000.0 { "met" } else { "not met" },
        ours / sklearn,
        if boosted_rate >= 500_000.0 { "met" } else { "not met" },
        boosted_rate / sklearn_boosted_rate,
    )
}

fn main() {
    let machine = machine(); // before pinning, so it counts every CPU
    if std::env::args().skip(1).any(|a| a == "classifier") {
        pin_to_cpu0();
        report(&format!(
            "### Supervised classifier scoring (one core)\n\n`cargo bench -p vigil-tests --bench scoring -- classifier`, {machine}.\n\n\
             | scorer | batch | flows/s |\n|---|---|---|\n{}",
            classifier()
        ));
        return;
    }
    pin_to_cpu0();
    let (train, test, _) = unsw_prepared();
    let (n, width) = test.dim();
    let mut out = format!(
        "## Scoring throughput (one core)\n\n`cargo xtask bench` → `tests/benches/scoring.rs`, {}. Data: UNSW-NB15 without the TTL columns, \
         prepared as `vigil eval unsw` prepares it ({} training rows, {n} test rows × {width} features). One thread, pinned to CPU 0 \
         (the Python reference too, `taskset -c 0`, `n_jobs=1`).\n\n| scorer | batch | flows/s |\n|---|---|---|\n",
        machine,
        train.nrows(),
    );

    // Isolation forest against scikit-learn.
    let forest = IsolationForest::train(train.view(), ForestParams::default());
    let mut scores = vec![0f32; n];
    let ours = rate(n, time(5, || forest.score_into(test.view(), &mut scores)));
    let dir = TempDir::new("bench-scoring");
    let (tr, te) = (dir.path().join("train.f32"), dir.path().join("test.f32"));
    write_f32(&tr, train.view());
    write_f32(&te, test.view());
    let (rows, cols, test_rows) = (train.nrows().to_string(), width.to_string(), n.to_string());
    let py_out = python_on_cpu0(&["bench", arg(&tr), &rows, &cols, arg(&te), &test_rows, "3"]);
    let mut parts = py_out.split_whitespace();
    let sklearn: f64 = parts.next().expect("rate").parse().expect("number");
    let sklearn_version = parts.next().unwrap_or("?").to_owned();
    out += &format!(
        "| Vigil isolation forest (100 trees, ψ 256, branch-free plan, 128-row blocks × 8 lanes) | {n} | {ours:.0} |\n"
    );
    out += &format!(
        "| scikit-learn {sklearn_version} `IsolationForest.score_samples` (same size) | {n} | {sklearn:.0} |\n"
    );

    // Autoencoder through tract at the default size, for this width and the flow schema's.
    let params = AutoencoderParams { max_epochs: 3, ..AutoencoderParams::default() };
    let flow_width = Schema::flow().len();
    let mut ae_rates = Vec::new();
    for w in [width, flow_width] {
        let sample = train.slice(s![..4000, ..w]).to_owned();
        let (ae, _) = Autoencoder::train(sample.view(), &params);
        let tract = OnnxScorer::load(&export(&ae, "bench"), w).expect("loads");
        let data: Array2<f32> = test.slice(s![.., ..w]).to_owned();
        for batch in [1usize, 64, 1024] {
            let rows = if batch == 1 { 20_000 } else { n };
            let d = time(3, || {
                for chunk in data.slice(s![..rows, ..]).axis_chunks_iter(Axis(0), batch) {
                    std::hint::black_box(tract.reconstruct(chunk).expect("runs"));
                }
            });
            let r = rate(rows, d);
            out += &format!("| autoencoder {w}→64→32→16→32→64→{w} (tract) | {batch} | {r:.0} |\n");
            if batch == 1024 && w == flow_width {
                ae_rates.push(r);
            }
        }
    }

    // The whole detector with the built-in model on flow-schema rows (raw values).
    let detector = Bundle::embedded().expect("built-in model").detector(&Schema::flow()).expect("loads");
    let raw: Array2<f32> = test.slice(s![.., ..flow_width]).mapv(|x| x.abs() * 10.0);
    let d = time(3, || {
        for chunk in raw.axis_chunks_iter(Axis(0), 1024) {
            std::hint::black_box(detector.score(chunk).expect("scores"));
        }
    });
    let whole = rate(n, d);
    out += &format!(
        "| whole detector, built-in model (transform, scale, forest, autoencoder, combine) | 1024 | {whole:.0} |\n"
    );
    let supervised = classifier();
    out += &format!(
        "{supervised}\nTargets: forest ≥ 5x scikit-learn: **{:.1}x** ({}); autoencoder ≥ 300k flows/s at the flow schema's width: **{:.0}** ({}).\n",
        ours / sklearn,
        if ours >= 5.0 * sklearn { "met" } else { "not met" },
        ae_rates[0],
        if ae_rates[0] >= 300_000.0 { "met" } else { "not met" },
    );
    report(&out);
}
