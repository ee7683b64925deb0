//! The Score stage: one harvest cycle's flows in, [`ScoredFlow`]s out.
//!
//! Every cycle brings the flows that saw packets since the previous one (snapshots of open
//! flows and the final records of flows that left). New flows enter the context window once,
//! at their first packet, as in training; flows seen before are re-scored against the
//! window's current context without being counted again. Each scored flow carries its record,
//! its score and its [`Evidence`] (the feature row and its reconstruction), so explaining it
//! later needs no second pass through the models.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use agent_common::flow::FlowKey;

use ndarray::{Array2, ArrayView1, ArrayView2};

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

/// What explains a score: the raw feature row and the autoencoder's reconstruction of the
/// prepared row (256 bytes a flow). Attribution from these is cheap; the engine explains only
/// the flows an alert reports (a spoofed flood brings tens of thousands of sources).
#[derive(Clone, Debug, PartialEq)]
pub struct Evidence {
    pub raw: [f32; FLOW_FEATURE_COUNT],
    pub reconstruction: [f32; FLOW_FEATURE_COUNT],
}

impl Default for Evidence {
    fn default() -> Self {
        Self { raw: [0.0; FLOW_FEATURE_COUNT], reconstruction: [0.0; FLOW_FEATURE_COUNT] }
    }
}

/// A flow with its score and what explains it: the Score stage's output.
#[derive(Clone, Debug)]
pub struct ScoredFlow {
    pub flow: LiveFlow,
    pub score: Score,
    pub evidence: Evidence,
}

/// One cycle's scored flows.
#[derive(Debug, Default)]
pub struct ScoredCycle {
    /// In the order the flows came in.
    pub flows: Vec<ScoredFlow>,
    /// Wall time spent scoring (features, models).
    pub elapsed: Duration,
}

/// Turns evidence into the features behind a score. The detector does it for real; engine
/// tests pass a fake that needs no model.
pub trait Explain {
    /// The `top` features behind the score, largest share first.
    fn explain(&self, evidence: &Evidence, top: usize) -> Vec<Contribution>;
}

impl Explain for Detector {
    fn explain(&self, evidence: &Evidence, top: usize) -> Vec<Contribution> {
        let Ok(raw) = ArrayView2::from_shape((1, FLOW_FEATURE_COUNT), &evidence.raw) else { return Vec::new() };
        if raw.ncols() != self.schema.features.len() {
            return Vec::new();
        }
        let prepared = self.prepare(raw);
        Detector::explain(self, raw.row(0), prepared.row(0), ArrayView1::from(&evidence.reconstruction), top)
    }
}

/// The detector and the context window it scores against.
pub struct Scorer {
    pub detector: Detector,
    context: ContextWindow,
    /// The context event of each conversation still in the window, by its initiator's key,
    /// so a conversation scored again revises what the window says about it.
    events: HashMap<FlowKey, u64>,
}

impl Scorer {
    #[must_use]
    pub fn new(detector: Detector, context: ContextWindow) -> Self {
        Self { detector, context, events: HashMap::new() }
    }

    /// Scores one cycle's flows at `now_mono_ns` (`CLOCK_MONOTONIC`, the clock the context
    /// window runs on, with each flow's [`LiveFlow::first_mono_ns`]); it moves the window along
    /// even when no new flow arrives.
    ///
    /// # Errors
    /// If tract fails.
    pub fn score(&mut self, flows: Vec<LiveFlow>, now_mono_ns: u64) -> Result<ScoredCycle, OnnxError> {
        let started = Instant::now();
        self.context.advance(now_mono_ns.saturating_sub(1));
        // The flows move into their scored form first (the incoming vector is freed at once),
        // and every row is written in place: under a flood the cycle's flows exist once, with
        // their evidence, plus one chunk of model buffers.
        let mut scored: Vec<ScoredFlow> = flows
            .into_iter()
            .map(|flow| ScoredFlow {
                flow,
                score: Score { iforest: 0.0, autoencoder: 0.0, range: 0.0, combined: 0.0, ..Score::default() },
                evidence: Evidence::default(),
            })
            .collect();
        // Conversations seen before revise their event first (an answer may have come since),
        // then new ones join the window in order of their first packet, as in training.
        let oldest = self.context.oldest_seq();
        self.events.retain(|_, seq| *seq >= oldest);
        for s in scored.iter().filter(|s| !s.flow.new) {
            if let Some(&seq) = self.events.get(&s.flow.record.key()) {
                self.context.revise(seq, &s.flow.record, s.flow.back.as_ref());
            }
        }
        let mut order: Vec<usize> = (0..scored.len()).filter(|&i| scored[i].flow.new).collect();
        order.sort_by_key(|&i| scored[i].flow.first_mono_ns);
        for i in order {
            let s = &mut scored[i];
            let (orig, resp) = (&s.flow.record, s.flow.back.as_ref());
            let ctx = self.context.observe_at(orig, resp, s.flow.first_mono_ns);
            self.events.insert(orig.key(), self.context.last_seq());
            s.evidence.raw = raw_row(orig, resp, &ctx);
        }
        for s in scored.iter_mut().filter(|s| !s.flow.new) {
            let ctx = self.context.peek(&s.flow.record);
            s.evidence.raw = raw_row(&s.flow.record, s.flow.back.as_ref(), &ctx);
        }
        for chunk in scored.chunks_mut(SCORE_CHUNK) {
            let mut raw = Array2::zeros((chunk.len(), FLOW_FEATURE_COUNT));
            for (mut row, s) in raw.rows_mut().into_iter().zip(chunk.iter()) {
                row.assign(&ArrayView1::from(&s.evidence.raw));
            }
            let prepared = self.detector.prepare(raw.view());
            let (mut chunk_scores, recon) = self.detector.score_prepared(prepared.view())?;
            self.detector.classify_into(raw.view(), &mut chunk_scores)?;
            for ((s, score), row) in chunk.iter_mut().zip(chunk_scores).zip(recon.rows()) {
                s.score = score;
                for (to, from) in s.evidence.reconstruction.iter_mut().zip(row) {
                    *to = *from;
                }
            }
        }
        Ok(ScoredCycle { flows: scored, elapsed: started.elapsed() })
    }

    /// Flows in the context window.
    #[must_use]
    pub fn context_len(&self) -> usize {
        self.context.len()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::{net::Ipv4Addr, path::Path};

    use super::*;
    use crate::{
        features::{FLOW_FEATURES, Schema, flow::tests::record},
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
                LiveFlow { record: r, back: None, new: true, first_mono_ns: mono_ns }
            })
            .collect()
    }

    #[test]
    fn a_bundle_with_a_classifier_gives_every_live_flow_its_word() {
        let (spec, bytes) = crate::model::kind_classifier::tests::small_forest(FLOW_FEATURE_COUNT);
        let bundle = Bundle::embedded().expect("built in").with_classifier(spec, bytes);
        let mut scorer = Scorer::new(
            bundle.detector(&Schema::flow()).expect("detector"),
            ContextWindow::new(Duration::from_secs(10)),
        );
        let n = u32::try_from(SCORE_CHUNK).expect("small") + 3;
        let cycle = scorer.score(new_flows(n, 0, S, S), 2 * S).expect("scored");
        assert_eq!(cycle.flows.len(), SCORE_CHUNK + 3);
        // Every chunk was classified, the rows as the features gave them.
        let raw = ndarray::Array2::from_shape_fn((cycle.flows.len(), FLOW_FEATURE_COUNT), |(i, j)| {
            cycle.flows[i].evidence.raw[j]
        });
        let direct = scorer.detector.classifier.as_ref().expect("classifier").classify(raw.view()).expect("classified");
        assert!(cycle.flows.iter().zip(&direct).all(|(f, d)| f.score.classifier == Some(*d)));
    }

    #[test]
    fn an_answer_after_the_first_cycle_revises_the_context() {
        let mut scorer = Scorer::new(detector(), ContextWindow::new(Duration::from_secs(10)));
        let failed = FLOW_FEATURES.iter().position(|f| f.0 == "src_failed").expect("feature");
        // First seen as a lone SYN: a failed attempt so far.
        let mut syn = record(1, 2, 80, 0);
        syn.tcp_flags = crate::flows::record::TcpFlagCounts { syn: 1, ..Default::default() };
        let first = LiveFlow { record: syn, back: None, new: true, first_mono_ns: S };
        let cycle = scorer.score(vec![first], 2 * S).expect("scored");
        assert!((cycle.flows[0].evidence.raw[failed] - 1.0).abs() < f32::EPSILON);
        // The next cycle brings the answer and the completed handshake.
        let done = record(1, 2, 80, 0);
        let back = crate::features::flow::tests::answer(&done);
        let again = LiveFlow { record: done, back: Some(back), new: false, first_mono_ns: S };
        let cycle = scorer.score(vec![again], 3 * S).expect("scored");
        assert!(cycle.flows[0].evidence.raw[failed].abs() < f32::EPSILON, "no longer failed");
    }

    #[test]
    fn context_follows_the_monotonic_clock_when_the_wall_clock_jumps() {
        for jump in [-1i64, 1] {
            let mut scorer = Scorer::new(detector(), ContextWindow::new(Duration::from_secs(10)));
            let (mono0, wall0) = (1000 * S, 1_700_000_000 * S);
            let mut sizes = Vec::new();
            for cycle in 0..140u32 {
                let mono = mono0 + u64::from(cycle) * S;
                // The wall clock steps by an hour (back, then forward) after cycle 5.
                let wall = (wall0 + u64::from(cycle) * S).saturating_add_signed(if cycle > 5 {
                    jump * 3600 * 1_000_000_000
                } else {
                    0
                });
                let flows = new_flows(100, cycle, mono - S / 2, wall - S / 2);
                let cycle_scores = scorer.score(flows, mono).expect("scored");
                assert_eq!(cycle_scores.flows.len(), 100);
                sizes.push(scorer.context_len());
            }
            // The long horizon's 2 minutes of flows at 100 a second, whatever the wall clock
            // did: expiry went on after a step back, and nothing left early after a step forward.
            assert!(sizes.iter().skip(122).all(|&n| n == 12_000), "jump {jump}: {sizes:?}");
        }
    }

    #[test]
    fn scores_in_chunks_match_one_batch_and_explanations_replay() {
        let mut scorer = Scorer::new(detector(), ContextWindow::new(Duration::from_secs(10)));
        let n = u32::try_from(SCORE_CHUNK).expect("small") + 100;
        let flows: Vec<LiveFlow> =
            (0..n).map(|i| new_flows(1, i % 7, S * u64::from(i), S * u64::from(i)).remove(0)).collect();
        let sources: Vec<_> = flows.iter().map(|f| f.record.src_ip).collect();
        let cycle = scorer.score(flows, S * u64::from(n)).expect("scored");
        assert_eq!(cycle.flows.len(), sources.len());
        // Flows keep their order: each scored flow is the flow that came in at its place.
        assert!(cycle.flows.iter().zip(&sources).all(|(f, s)| f.flow.record.src_ip == *s));
        let mut raw = Array2::zeros((cycle.flows.len(), FLOW_FEATURE_COUNT));
        for (mut row, f) in raw.rows_mut().into_iter().zip(&cycle.flows) {
            row.assign(&ArrayView1::from(&f.evidence.raw));
        }
        let whole = scorer.detector.score(raw.view()).expect("one batch");
        for (a, b) in cycle.flows.iter().map(|f| f.score).zip(&whole) {
            assert!((a.combined - b.combined).abs() < 1e-4, "{a:?} / {b:?}");
        }
        // An explanation from the kept evidence is the one from the full matrices.
        let i = SCORE_CHUNK + 7;
        let prepared = scorer.detector.prepare(raw.view());
        let (_, recon) = scorer.detector.score_prepared(prepared.view()).expect("scored");
        let direct = scorer.detector.explain(raw.row(i), prepared.row(i), recon.row(i), 3);
        let kept = Explain::explain(&scorer.detector, &cycle.flows[i].evidence, 3);
        assert_eq!(kept.len(), 3);
        for (a, b) in kept.iter().zip(&direct) {
            assert_eq!(a.feature, b.feature);
            assert!((a.share - b.share).abs() < 1e-4);
        }
    }
}
