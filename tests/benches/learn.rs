//! The learning phase at its default size: the sample's cost per conversation, the site
//! model's training time and memory on `learn.max_rows` rows, and whether the agent's cycle
//! keeps its interval while training runs beside it.
//!
//! The cycle is stood in for by its heaviest step, scoring: every second the main thread
//! scores a batch of rows with the built-in model and sleeps to the next tick. It runs first
//! alone, then while a site model trains on a thread at `SCHED_IDLE`, as the agent runs it. The
//! rows are synthetic: the built-in model's per-feature medians, scaled by log-normal noise
//! around a few hundred "services". Training time depends on the number of rows, not on what
//! they hold.
#![expect(
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "rates, shares and synthetic values"
)]

use std::{
    net::{IpAddr, Ipv4Addr},
    sync::mpsc,
    time::{Duration, Instant},
};

use ndarray::Array2;
use rand::{Rng as _, SeedableRng as _, rngs::StdRng};
use vigil::{
    features::{Schema, flow::FLOW_FEATURE_COUNT},
    learn::{
        LearnSection, lowest_priority,
        sample::{Row, RowKey, Sample, SampleConfig},
        train_site,
    },
    model::Bundle,
};
use vigil_tests::{
    agent::TempDir,
    bench::{machine, report},
};

/// Conversations offered to the sample: ten times what it keeps.
const OFFERED: u64 = 1_000_000;
/// Rows the stand-in cycle scores each second.
const CYCLE_ROWS: usize = 20_000;
const TICK: Duration = Duration::from_secs(1);
const IDLE_CYCLES: usize = 10;
/// Longest the training may take before the bench gives up on it.
const TRAIN_LIMIT: Duration = Duration::from_mins(30);

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with(field)).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0)
}

/// A standard normal draw (Box-Muller).
fn gauss(rng: &mut StdRng) -> f64 {
    let (u, v): (f64, f64) = (rng.random_range(f64::EPSILON..1.0), rng.random());
    (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
}

/// A synthetic row of service `service`.
fn row(baseline: &[f32], service: u64, rng: &mut StdRng) -> Row {
    let mut r = [0f32; FLOW_FEATURE_COUNT];
    for (j, (v, base)) in r.iter_mut().zip(baseline).enumerate() {
        let shift = ((service * 31 + j as u64) % 7) as f64 * 0.3;
        let scale = (0.4 * gauss(rng) + shift).exp();
        *v = (f64::from(base.abs().max(0.01)) * scale) as f32;
    }
    r
}

fn percentile(values: &mut [f64], p: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    let i = ((values.len() as f64 - 1.0) * p).round() as usize;
    values.get(i).copied().unwrap_or(f64::NAN)
}

/// Runs stand-in cycles until `done` answers something, or `limit` cycles without `done`;
/// answers each cycle's scoring time and how late its tick came, in ms.
fn cycles<T>(
    detector: &vigil::model::Detector,
    batch: &Array2<f32>,
    limit: usize,
    mut done: impl FnMut() -> Option<T>,
) -> (Vec<f64>, Vec<f64>, Option<T>) {
    let (mut took, mut late) = (Vec::new(), Vec::new());
    let mut next = Instant::now() + TICK;
    for _ in 0..limit {
        let now = Instant::now();
        if now < next {
            std::thread::sleep(next - now);
        }
        late.push(next.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        let scores = detector.score(batch.view()).expect("scoring");
        assert_eq!(scores.len(), batch.nrows());
        took.push(t.elapsed().as_secs_f64() * 1e3);
        next += TICK;
        if let Some(v) = done() {
            return (took, late, Some(v));
        }
    }
    (took, late, None)
}

/// `-- train1m`: the models alone (`vigil train`'s work after the rows are built) on a million
/// synthetic rows, with the default settings: time and peak memory.
fn train_million(machine: &str, detector: &vigil::model::Detector, schema: &Schema) {
    const ROWS: usize = 1_000_000;
    let mut rng = StdRng::seed_from_u64(2);
    let hwm_start = status_kib("VmHWM:");
    let mut rows = Array2::zeros((ROWS, FLOW_FEATURE_COUNT));
    for mut r in rows.rows_mut() {
        let service = rng.random_range(0..300u64);
        r.assign(&ndarray::ArrayView1::from(&row(&detector.baseline, service, &mut rng)[..]));
    }
    let rows_mb = status_kib("VmRSS:") as f64 / 1024.0;
    let config = vigil::model::TrainConfig::default();
    let started = Instant::now();
    let mut phases = Vec::new();
    let trained = vigil::model::train(schema, rows.view(), &config, serde_json::json!({ "bench": "train1m" }), |m| {
        if !m.starts_with("  epoch") {
            phases.push((started.elapsed().as_secs_f64(), m.to_owned()));
        }
    })
    .expect("trained");
    let took = started.elapsed().as_secs_f64();
    let hwm = status_kib("VmHWM:") as f64 / 1024.0;
    let epochs = trained.autoencoder.as_ref().map_or(0, |r| r.best_epoch);
    let phases: Vec<String> = phases.iter().map(|(t, m)| format!("{t:.1} s: {m}")).collect();
    report(&format!(
        "## Training on a million rows (`cargo bench -p vigil-tests --bench learn -- train1m`)\n\n\
         Machine: {machine}. `vigil::model::train` with the default settings (100 trees of 256, autoencoder \
         {hidden:?}, up to {max_epochs} epochs) on {ROWS} synthetic rows of {FLOW_FEATURE_COUNT} features; the \
         replay and feature extraction of `vigil train` are not included.\n\n\
         | measure | value |\n|---|---|\n\
         | training time | {took:.1} s (best epoch {epochs}) |\n\
         | RSS with the rows built / peak during training (VmHWM, process start {hwm0:.0} MB) | {rows_mb:.0} / {hwm:.0} MB |\n\
         | phases | {phases} |\n",
        hidden = config.autoencoder.hidden,
        max_epochs = config.autoencoder.max_epochs,
        hwm0 = hwm_start as f64 / 1024.0,
        phases = phases.join("; "),
    ));
}

/// One side of a synthetic conversation: `packets` and `bytes` over `duration_ns` from `t0`.
#[expect(clippy::too_many_arguments, reason = "one record's varying fields")]
fn side(
    (src, dst): (IpAddr, IpAddr),
    (sport, dport): (u16, u16),
    protocol: u8,
    t0: u64,
    duration_ns: u64,
    packets: u64,
    bytes: u64,
    answer: bool,
) -> vigil::flows::FlowRecord {
    use vigil::flows::{EndReason, record::TcpFlagCounts};
    let mean = bytes / packets;
    let tcp = protocol == 6;
    let (acks, pushes) = ((packets - 1) as u32, (packets / 3) as u32);
    vigil::flows::FlowRecord {
        src_ip: src,
        dst_ip: dst,
        src_port: sport,
        dst_port: dport,
        protocol,
        ip_version: 4,
        first_seen_ns: t0 + u64::from(answer) * 300_000,
        last_seen_ns: t0 + duration_ns,
        packets,
        bytes,
        len_min: mean.min(60) as u32,
        len_max: (mean * 2).min(1514) as u32,
        len_sq_sum: mean * mean * packets,
        iat_min_ns: (packets > 1).then_some(20_000),
        iat_max_ns: (packets > 1).then_some(duration_ns / 2),
        iat_sum_ns: duration_ns,
        iat_sq_sum_us2: (duration_ns / 1000).pow(2) / packets.max(1),
        tcp_flags: match (tcp, answer) {
            (false, _) => TcpFlagCounts::default(),
            (true, false) => TcpFlagCounts { syn: 1, ack: acks, psh: pushes, fin: 1, ..TcpFlagCounts::default() },
            (true, true) => TcpFlagCounts { syn_ack: 1, ack: acks, psh: pushes, fin: 1, ..TcpFlagCounts::default() },
        },
        ttl_min: if answer { 57 } else { 64 },
        ttl_max: if answer { 57 } else { 64 },
        fragment_first: false,
        fragment_later: false,
        malformed: 0,
        transport_truncated: false,
        network_unwalked: false,
        end_reason: EndReason::Idle,
    }
}

/// `-- train1m-flows`: what `vigil train --flows FILE` does with a file of a million
/// conversation records (reading and pairing them, the context and features, the models),
/// called in-process; the file's writing is not timed.
fn train_million_flows(machine: &str) {
    use std::io::Write as _;
    const CONVERSATIONS: u64 = 1_000_000;
    let dir = TempDir::new("train1m-flows");
    let path = dir.path().join("flows.jsonl");
    let mut rng = StdRng::seed_from_u64(3);
    let mut out = std::io::BufWriter::new(std::fs::File::create(&path).expect("flows file"));
    // An hour of traffic: 5,000 clients, 400 servers, a few services each with its own size.
    let services: [(u8, u16, u64); 8] = [
        (6, 443, 40),
        (6, 80, 20),
        (17, 53, 1),
        (6, 22, 200),
        (17, 443, 300),
        (6, 993, 30),
        (6, 445, 60),
        (17, 123, 1),
    ];
    for i in 0..CONVERSATIONS {
        let client = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + rng.random_range(0..5_000u32)));
        let server = IpAddr::V4(Ipv4Addr::from(0xc633_6400 + rng.random_range(0..400u32)));
        let (protocol, port, scale) = services[rng.random_range(0..services.len())];
        let sport = rng.random_range(32_768..61_000u16);
        let t0 = 1_764_511_513_000_000_000 + i * 3_600_000_000_000 / CONVERSATIONS;
        let packets = 1 + (scale as f64 * rng.random_range(0.2f64..5.0)) as u64;
        let back = 1 + packets * rng.random_range(1..4u64) / 2;
        let duration = rng.random_range(1_000_000..(60_000_000_000 * scale.min(30)));
        let first = side(
            (client, server),
            (sport, port),
            protocol,
            t0,
            duration,
            packets,
            packets * rng.random_range(60..400u64),
            false,
        );
        let answer = side(
            (server, client),
            (port, sport),
            protocol,
            t0,
            duration,
            back,
            back * rng.random_range(60..1400u64),
            true,
        );
        let record = vigil::flows::biflow::Conversation::new(first, Some(answer)).record();
        serde_json::to_writer(&mut out, &record).expect("record");
        out.write_all(b"\n").expect("newline");
    }
    out.flush().expect("flushed");
    drop(out);
    let file_mb = std::fs::metadata(&path).expect("written").len() as f64 / 1e6;
    let hwm_start = status_kib("VmHWM:");
    let config = vigil::model::TrainConfig::default();
    let started = Instant::now();
    let data = vigil::features::dataset::FlowDataset::from_flow_files(
        std::slice::from_ref(&path),
        vigil::features::DEFAULT_WINDOW,
    )
    .expect("records read");
    let read = started.elapsed().as_secs_f64();
    assert_eq!(data.len() as u64, CONVERSATIONS, "one conversation per record");
    let trained = vigil::model::train(
        &Schema::flow(),
        data.rows.view(),
        &config,
        serde_json::json!({ "bench": "train1m-flows" }),
        |_| {},
    )
    .expect("trained");
    let took = started.elapsed().as_secs_f64();
    let hwm = status_kib("VmHWM:") as f64 / 1024.0;
    let epochs = trained.autoencoder.as_ref().map_or(0, |r| r.best_epoch);
    report(&format!(
        "## `vigil train --flows` on a million conversations (`cargo bench -p vigil-tests --bench learn -- train1m-flows`)\n\n\
         Machine: {machine}. {CONVERSATIONS} synthetic conversation records ({file_mb:.0} MB of JSON lines, an hour of \
         5,000 clients and 400 servers), read, paired and turned into features by \
         `FlowDataset::from_flow_files` and trained on by `vigil::model::train` with the default settings, in-process \
         (what `vigil train --flows FILE` runs).\n\n\
         | measure | value |\n|---|---|\n\
         | total | {took:.1} s |\n\
         | records to feature rows | {read:.1} s |\n\
         | models (best epoch {epochs}) | {:.1} s |\n\
         | peak RSS (VmHWM, {hwm0:.0} MB before) | {hwm:.0} MB |\n",
        took - read,
        hwm0 = hwm_start as f64 / 1024.0,
    ));
}

fn main() {
    let machine = machine();
    if std::env::args().skip(1).any(|a| a == "train1m-flows") {
        train_million_flows(&machine);
        return;
    }
    let schema = Schema::flow();
    let detector = Bundle::embedded().and_then(|b| b.detector(&schema)).expect("built-in model");
    if std::env::args().skip(1).any(|a| a == "train1m") {
        train_million(&machine, &detector, &schema);
        return;
    }
    let config = LearnSection::default();
    let mut rng = StdRng::seed_from_u64(1);

    // The sample: a day's conversations from 2,000 clients over 300 services.
    let rss_before = status_kib("VmRSS:");
    let mut sample = Sample::new(SampleConfig {
        max_rows: config.max_rows,
        holdout_rows: config.holdout_rows,
        max_source_share: config.max_source_share,
        seed: 1,
    });
    // Generated in chunks, so that memory growth is the sample's; only offering is timed.
    let mut offering = Duration::ZERO;
    let mut chunk: Vec<(RowKey, Row)> = Vec::with_capacity(10_000);
    for n in 0..OFFERED {
        let service = rng.random_range(0..300u64);
        let client = u32::try_from(rng.random_range(0..2_000u64)).expect("small");
        let key = RowKey {
            conversation: rng.random(),
            source: IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + client * 256 + 1)),
            hour: u8::try_from(n * 24 / OFFERED).expect("an hour"),
            protocol: if service % 5 == 0 { 17 } else { 6 },
            port: u16::try_from(service * 13 % 49_000).expect("a port"),
        };
        chunk.push((key, row(&detector.baseline, service, &mut rng)));
        if chunk.len() == chunk.capacity() || n + 1 == OFFERED {
            let t = Instant::now();
            for (key, r) in &chunk {
                sample.offer(key, r);
            }
            offering += t.elapsed();
            chunk.clear();
        }
    }
    drop(chunk);
    let offer_ns = offering.as_nanos() as f64 / OFFERED as f64;
    let rss_sample = status_kib("VmRSS:");
    let (train_rows, holdout) = (sample.rows(), sample.holdout_rows());
    let (kept, held, strata, hours) = (sample.len(), sample.holdout_len(), sample.strata(), sample.hours_covered());
    drop(sample);

    let batch = Array2::from_shape_fn((CYCLE_ROWS, FLOW_FEATURE_COUNT), |(i, j)| train_rows[[i % kept, j]]);
    let (idle_took, idle_late, _) = cycles(&detector, &batch, IDLE_CYCLES, || None::<()>);

    let dir = TempDir::new("bench-learn");
    let site = LearnSection { dir: dir.path().join("models"), min_hours: 0, ..config.clone() };
    let (tx, rx) = mpsc::channel();
    let started = Instant::now();
    let hwm_before = status_kib("VmHWM:");
    std::thread::Builder::new()
        .name("vigil-learn".to_owned())
        .spawn(move || {
            lowest_priority();
            let _ = tx.send(train_site(&site, &schema, train_rows, holdout, hours, None));
        })
        .expect("training thread");
    let limit = usize::try_from(TRAIN_LIMIT.as_secs()).expect("small");
    let (mut busy_took, mut busy_late, outcome) = cycles(&detector, &batch, limit, || rx.try_recv().ok());
    let train_s = started.elapsed().as_secs_f64();
    let outcome = outcome.expect("training finished within the limit");
    let hwm = status_kib("VmHWM:");
    let (verdict, threshold, rate) = match &outcome {
        Ok(m) => ("swapped in".to_owned(), m.detector.thresholds.alert, m.report.holdout_alert_rate),
        Err(v) => (format!("held back: {}", v.refused.as_deref().unwrap_or("")), f32::NAN, v.holdout_alert_rate),
    };
    let (mut idle_took, mut idle_late) = (idle_took, idle_late);
    let text = format!(
        "## Learning phase (`cargo bench -p vigil-tests --bench learn`)\n\n\
         Machine: {machine}. Defaults of `[learn]`: {max} rows kept, {hold} held back. Synthetic rows (the built-in model's \
         medians under log-normal noise, 300 services, 2,000 clients, 24 hours).\n\n\
         | step | result |\n|---|---|\n\
         | sample: {offered} conversations offered | {offer_ns:.0} ns each; {kept} rows kept in {strata} strata, {held} held back, {hours} hours |\n\
         | sample memory (RSS growth while filling) | {sample_mb:.0} MB |\n\
         | site model training at `SCHED_IDLE` on {kept} rows | {train_s:.0} s; {verdict}; held-back alert rate {rate:.4}; alert threshold {threshold:.2} |\n\
         | peak RSS, before training → after | {hwm0:.0} → {hwm1:.0} MB |\n\
         | stand-in cycle (score {CYCLE_ROWS} rows each 1 s), alone: p50 / max | {a50:.0} / {amax:.0} ms; tick late p50 / max {al50:.1} / {almax:.1} ms |\n\
         | the same cycle while training: p50 / max ({n} cycles) | {b50:.0} / {bmax:.0} ms; tick late p50 / max {bl50:.1} / {blmax:.1} ms |\n",
        max = config.max_rows,
        hold = config.holdout_rows,
        offered = OFFERED,
        sample_mb = rss_sample.saturating_sub(rss_before) as f64 / 1024.0,
        hwm0 = hwm_before as f64 / 1024.0,
        hwm1 = hwm as f64 / 1024.0,
        a50 = percentile(&mut idle_took, 0.5),
        amax = percentile(&mut idle_took, 1.0),
        al50 = percentile(&mut idle_late, 0.5),
        almax = percentile(&mut idle_late, 1.0),
        n = busy_took.len(),
        b50 = percentile(&mut busy_took, 0.5),
        bmax = percentile(&mut busy_took, 1.0),
        bl50 = percentile(&mut busy_late, 0.5),
        blmax = percentile(&mut busy_late, 1.0),
    );
    report(&text);
}
