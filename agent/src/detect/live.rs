//! Scoring the flows of one harvest cycle.
//!
//! Every cycle brings the flows that saw packets since the previous one (snapshots of open
//! flows and the final records of flows that left). New flows enter the context window once,
//! at their first packet, as in training; flows seen before are re-scored against the
//! window's current context without being counted again.

use std::time::{Duration, Instant};

use ndarray::Array2;

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

/// The scores of one cycle's flows, with what is needed to explain any of them.
#[derive(Debug)]
pub struct CycleScores {
    pub scores: Vec<Score>,
    raw: Array2<f32>,
    prepared: Array2<f32>,
    recon: Array2<f32>,
    /// Wall time spent scoring (features, models).
    pub elapsed: Duration,
}

impl CycleScores {
    /// The `top` features behind flow `i`'s score.
    #[must_use]
    pub fn explain(&self, detector: &Detector, i: usize, top: usize) -> Vec<Contribution> {
        self.evidence(i).explain(detector, top)
    }

    /// What explaining flow `i` later needs: its raw, prepared and reconstructed rows.
    /// Explaining costs a walk of every tree; the engine keeps this instead and explains only
    /// the flows an alert reports (a spoofed flood brings tens of thousands of sources).
    #[must_use]
    pub fn evidence(&self, i: usize) -> Evidence {
        let rows = [self.raw.row(i), self.prepared.row(i), self.recon.row(i)];
        Evidence(rows.iter().flat_map(|r| r.iter().copied()).collect())
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

/// One flow's rows, kept to explain its score later.
#[derive(Clone, Debug)]
pub struct Evidence(Box<[f32]>);

impl Evidence {
    /// The `top` features behind the score.
    #[must_use]
    pub fn explain(&self, detector: &Detector, top: usize) -> Vec<Contribution> {
        let n = self.0.len() / 3;
        let row = |k: usize| ndarray::ArrayView1::from(&self.0[k * n..(k + 1) * n]);
        detector.explain(row(0), row(1), row(2), top)
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

    /// Scores one cycle's flows; `now_wall_ns` moves the context window along even when no
    /// new flow arrives. Row `i` of the result belongs to `flows[i]`.
    ///
    /// # Errors
    /// If tract fails.
    pub fn score(&mut self, flows: &[LiveFlow], now_wall_ns: u64) -> Result<CycleScores, OnnxError> {
        let started = Instant::now();
        self.context.advance(now_wall_ns.saturating_sub(1));
        let mut raw = Array2::zeros((flows.len(), FLOW_FEATURE_COUNT));
        // New flows join the window in order of their first packet, as in training.
        let mut order: Vec<usize> = (0..flows.len()).filter(|&i| flows[i].new).collect();
        order.sort_by_key(|&i| flows[i].record.first_seen_ns);
        for i in order {
            let ctx = self.context.observe(&flows[i].record);
            raw.row_mut(i).assign(&ndarray::ArrayView1::from(&raw_row(&flows[i].record, &ctx)[..]));
        }
        for (i, flow) in flows.iter().enumerate().filter(|(_, f)| !f.new) {
            let ctx = self.context.peek(&flow.record);
            raw.row_mut(i).assign(&ndarray::ArrayView1::from(&raw_row(&flow.record, &ctx)[..]));
        }
        let prepared = self.detector.prepare(raw.view());
        let (scores, recon) = if flows.is_empty() {
            (Vec::new(), Array2::zeros((0, FLOW_FEATURE_COUNT)))
        } else {
            self.detector.score_prepared(prepared.view())?
        };
        Ok(CycleScores { scores, raw, prepared, recon, elapsed: started.elapsed() })
    }

    /// Flows in the context window.
    #[must_use]
    pub fn context_len(&self) -> usize {
        self.context.len()
    }
}
