//! Scoring the flows of one harvest cycle.
//!
//! Every cycle brings the flows that saw packets since the previous one (snapshots of open
//! flows and the final records of flows that left). New flows enter the context window once,
//! at their first packet, as in training; flows seen before are re-scored against the
//! window's current context without being counted again.

use std::time::{Duration, Instant};

use ndarray::{Array2, ArrayView2, s};

use crate::{
    features::{
        context::ContextWindow,
        flow::{FLOW_FEATURE_COUNT, raw_row},
    },
    flows::harvest::LiveFlow,
    model::{
        Detector,
        detector::{Contribution, Score},
        onnx::OnnxError,
    },
};

/// Rows scored per model call: the prepared rows, the reconstructions and the models' own
/// buffers exist for one chunk at a time, whatever the cycle's size (a spoofed flood brings a
/// flow table's worth of new flows every cycle).
pub const SCORE_CHUNK: usize = 4096;

/// The scores of one cycle's flows, with what is needed to explain any of them.
#[derive(Debug)]
pub struct CycleScores {
    pub scores: Vec<Score>,
    /// Raw feature rows (128 bytes a flow): explaining recomputes the rest from them.
    raw: Array2<f32>,
    /// Wall time spent scoring (features, models).
    pub elapsed: Duration,
}

impl CycleScores {
    /// The `top` features behind flow `i`'s score.
    #[must_use]
    pub fn explain(&self, detector: &Detector, i: usize, top: usize) -> Vec<Contribution> {
        self.evidence(i).explain(detector, top)
    }

    /// What explaining flow `i` later needs: its raw feature row. Explaining costs a walk of
    /// every tree and a pass of the autoencoder; the engine keeps this instead and explains only
    /// the flows an alert reports (a spoofed flood brings tens of thousands of sources).
    #[must_use]
    pub fn evidence(&self, i: usize) -> Evidence {
        Evidence(self.raw.row(i).iter().copied().collect())
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.scores.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.scores.is_empty()
    }
}

/// One flow's raw feature row, kept to explain its score later.
#[derive(Clone, Debug)]
pub struct Evidence(Box<[f32]>);

impl Evidence {
    /// The `top` features behind the score: the row is prepared and reconstructed again (the
    /// same computation as when it was scored), then attributed. Empty if the autoencoder fails.
    #[must_use]
    pub fn explain(&self, detector: &Detector, top: usize) -> Vec<Contribution> {
        let Ok(raw) = ArrayView2::from_shape((1, self.0.len()), &self.0) else { return Vec::new() };
        let prepared = detector.prepare(raw);
        match detector.score_prepared(prepared.view()) {
            Ok((_, recon)) => detector.explain(raw.row(0), prepared.row(0), recon.row(0), top),
            Err(e) => {
                tracing::warn!(error = %e, "explaining a score failed");
                Vec::new()
            }
        }
    }
}

/// The detector and the context window it scores against.
pub struct LiveScorer {
    pub detector: Detector,
    context: ContextWindow,
}

impl LiveScorer {
    #[must_use]
    pub fn new(detector: Detector, context: ContextWindow) -> Self {
        Self { detector, context }
    }

    /// Scores one cycle's flows at `now_mono_ns` (`CLOCK_MONOTONIC`, the clock the context
    /// window runs on, with each flow's [`LiveFlow::first_mono_ns`]); it moves the window along
    /// even when no new flow arrives. Row `i` of the result belongs to `flows[i]`.
    ///
    /// # Errors
    /// If tract fails.
    pub fn score(&mut self, flows: &[LiveFlow], now_mono_ns: u64) -> Result<CycleScores, OnnxError> {
        let started = Instant::now();
        self.context.advance(now_mono_ns.saturating_sub(1));
        let mut raw = Array2::zeros((flows.len(), FLOW_FEATURE_COUNT));
        // New flows join the window in order of their first packet, as in training.
        let mut order: Vec<usize> = (0..flows.len()).filter(|&i| flows[i].new).collect();
        order.sort_by_key(|&i| flows[i].first_mono_ns);
        for i in order {
            let ctx = self.context.observe_at(&flows[i].record, flows[i].first_mono_ns);
            raw.row_mut(i).assign(&ndarray::ArrayView1::from(&raw_row(&flows[i].record, &ctx)[..]));
        }
        for (i, flow) in flows.iter().enumerate().filter(|(_, f)| !f.new) {
            let ctx = self.context.peek(&flow.record);
            raw.row_mut(i).assign(&ndarray::ArrayView1::from(&raw_row(&flow.record, &ctx)[..]));
        }
        let mut scores = Vec::with_capacity(flows.len());
        for start in (0..flows.len()).step_by(SCORE_CHUNK) {
            let chunk = raw.slice(s![start..(start + SCORE_CHUNK).min(flows.len()), ..]);
            let prepared = self.detector.prepare(chunk);
            scores.extend(self.detector.score_prepared(prepared.view())?.0);
        }
        Ok(CycleScores { scores, raw, elapsed: started.elapsed() })
    }

    /// Flows in the context window.
    #[must_use]
    pub fn context_len(&self) -> usize {
        self.context.len()
    }
}

#[cfg(test)]
impl CycleScores {
    /// Given scores for `n` flows with all-zero feature rows.
    pub(crate) fn fixed(scores: Vec<Score>) -> Self {
        let raw = Array2::zeros((scores.len(), FLOW_FEATURE_COUNT));
        Self { scores, raw, elapsed: Duration::ZERO }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::{net::Ipv4Addr, path::Path};

    use super::*;
    use crate::{
        features::{Schema, flow::tests::record},
        model::Bundle,
    };

    /// The built-in model.
    pub(crate) fn detector() -> Detector {
        Bundle::load(Path::new("default")).and_then(|b| b.detector(&Schema::flow())).expect("built-in model")
    }

    const S: u64 = 1_000_000_000;

    /// `n` new one-packet flows from distinct sources, first seen at `mono_ns` (monotonic) and
    /// `wall_ns` (their records).
    fn new_flows(n: u32, cycle: u32, mono_ns: u64, wall_ns: u64) -> Vec<LiveFlow> {
        (0..n)
            .map(|i| {
                let mut r = record(1, 2, 80, 0);
                r.src_ip = Ipv4Addr::from(0x0a00_0000 | (cycle << 12) | i).into();
                r.first_seen_ns = wall_ns;
                r.last_seen_ns = wall_ns;
                LiveFlow { record: r, new: true, first_mono_ns: mono_ns }
            })
            .collect()
    }

    #[test]
    fn context_follows_the_monotonic_clock_when_the_wall_clock_jumps() {
        for jump in [-1i64, 1] {
            let mut scorer = LiveScorer::new(detector(), ContextWindow::new(Duration::from_secs(10)));
            let (mono0, wall0) = (1000 * S, 1_700_000_000 * S);
            let mut sizes = Vec::new();
            for cycle in 0..40u32 {
                let mono = mono0 + u64::from(cycle) * S;
                // The wall clock steps by an hour (back, then forward) after cycle 5.
                let wall = (wall0 + u64::from(cycle) * S).saturating_add_signed(if cycle > 5 {
                    jump * 3600 * 1_000_000_000
                } else {
                    0
                });
                let flows = new_flows(100, cycle, mono - S / 2, wall - S / 2);
                let cycle_scores = scorer.score(&flows, mono).expect("scored");
                assert_eq!(cycle_scores.len(), 100);
                sizes.push(scorer.context_len());
            }
            // 10 s of flows at 100 a second, whatever the wall clock did: expiry went on after
            // a step back, and nothing left early after a step forward.
            assert!(sizes.iter().skip(12).all(|&n| n == 1000), "jump {jump}: {sizes:?}");
        }
    }

    #[test]
    fn scores_in_chunks_match_one_batch_and_explanations_replay() {
        let mut scorer = LiveScorer::new(detector(), ContextWindow::new(Duration::from_secs(10)));
        let n = u32::try_from(SCORE_CHUNK).expect("small") + 100;
        let flows: Vec<LiveFlow> =
            (0..n).map(|i| new_flows(1, i % 7, S * u64::from(i), S * u64::from(i)).remove(0)).collect();
        let cycle = scorer.score(&flows, S * u64::from(n)).expect("scored");
        let whole = scorer.detector.score(cycle.raw.view()).expect("one batch");
        assert_eq!(cycle.len(), flows.len());
        for (a, b) in cycle.scores.iter().zip(&whole) {
            assert!((a.combined - b.combined).abs() < 1e-4, "{a:?} / {b:?}");
        }
        // An explanation from the kept row is the one from the full matrices.
        let i = SCORE_CHUNK + 7;
        let prepared = scorer.detector.prepare(cycle.raw.view());
        let (_, recon) = scorer.detector.score_prepared(prepared.view()).expect("scored");
        let direct = scorer.detector.explain(cycle.raw.row(i), prepared.row(i), recon.row(i), 3);
        let kept = cycle.explain(&scorer.detector, i, 3);
        assert_eq!(kept.len(), 3);
        for (a, b) in kept.iter().zip(&direct) {
            assert_eq!(a.feature, b.feature);
            assert!((a.share - b.share).abs() < 1e-4);
        }
    }
}
