//! The feature schema: which numbers describe a flow, in which order, in which unit, and how
//! they are transformed before scaling. Defined once here and used by training, scoring,
//! evaluation and the model manifest (which stores the names and refuses a mismatch).
//!
//! A conversation is described by both of its directions (sizes, timing, TCP flags and the
//! handshake's outcome, TTLs) plus the context of its initiator and responder over a sliding
//! window ([`context`]): scans and floods are made of tiny conversations that only look
//! anomalous together, as UNSW-NB15's `ct_*` features capture.

pub mod context;
pub mod dataset;
pub mod flow;

use serde::{Deserialize, Serialize};

pub use context::{ContextWindow, DEFAULT_WINDOW};
pub use flow::{FLOW_FEATURES, FlowFeatures};

/// How a raw feature value is transformed before standard scaling.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transform {
    /// Used as is (ratios, flags, values already on a log scale).
    Identity,
    /// `ln(1 + max(x, 0))`: counts, sizes, rates and durations span many orders of magnitude.
    Log1p,
}

impl Transform {
    /// Applies the transform.
    #[must_use]
    pub fn apply(self, x: f32) -> f32 {
        match self {
            Self::Identity => x,
            Self::Log1p => x.max(0.0).ln_1p(),
        }
    }
}

/// One feature: its name (stable, `snake_case`), unit and transform.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeatureSpec {
    pub name: String,
    pub unit: String,
    pub transform: Transform,
    pub description: String,
}

/// An ordered list of features with a name that identifies the schema.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schema {
    /// `vigil-flow-v3` for conversations built by Vigil, `unsw-nb15` for the dataset mode.
    pub id: String,
    pub features: Vec<FeatureSpec>,
}

/// The id of the flow schema that `vigil run`, `replay`-based training and evaluation use.
/// Version 3 adds the protocols and services a source reached and the long horizon (2
/// minutes) of its context; version 2 described conversations (both directions) with a 10 s
/// context; version 1 described one direction.
pub const FLOW_SCHEMA_ID: &str = "vigil-flow-v3";

impl Schema {
    /// The flow schema built from [`FLOW_FEATURES`].
    #[must_use]
    pub fn flow() -> Self {
        Self {
            id: FLOW_SCHEMA_ID.to_owned(),
            features: FLOW_FEATURES
                .iter()
                .map(|&(name, unit, transform, description)| FeatureSpec {
                    name: name.to_owned(),
                    unit: unit.to_owned(),
                    transform,
                    description: description.to_owned(),
                })
                .collect(),
        }
    }

    /// Number of features.
    #[must_use]
    pub fn len(&self) -> usize {
        self.features.len()
    }

    /// True if there are no features.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.features.is_empty()
    }

    /// Columns of the features whose training range is a score of its own (see
    /// `model::detector`): counts of one source's behaviour that stay small in benign traffic
    /// of every kind. Only the flow schema has them.
    pub fn ranged(&self) -> impl Iterator<Item = usize> + '_ {
        let ranged: &[&str] = if self.id == FLOW_SCHEMA_ID { flow::RANGED_FEATURES } else { &[] };
        self.names().enumerate().filter(move |(_, n)| ranged.contains(n)).map(|(j, _)| j)
    }

    /// Feature names in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.features.iter().map(|f| f.name.as_str())
    }

    /// Transforms raw rows in place.
    ///
    /// # Panics
    /// If the rows do not have one value per feature.
    pub fn transform(&self, rows: &mut ndarray::Array2<f32>) {
        assert_eq!(rows.ncols(), self.features.len(), "row width does not match the schema");
        for mut row in rows.rows_mut() {
            for (x, f) in row.iter_mut().zip(&self.features) {
                *x = f.transform.apply(*x);
            }
        }
    }

    /// The first difference between two schemas, for a clear refusal message.
    #[must_use]
    pub fn mismatch(&self, other: &Self) -> Option<String> {
        if self.id != other.id {
            let retrain = if self.id == FLOW_SCHEMA_ID {
                "; retrain the model with this version of vigil: \
                 `vigil train --pcap <benign captures> --out <dir>` or `vigil train --flows <records> --out <dir>`"
            } else {
                ""
            };
            return Some(format!("schema `{}` where `{}` is expected{retrain}", other.id, self.id));
        }
        if self.len() != other.len() {
            return Some(format!("{} features where {} are expected", other.len(), self.len()));
        }
        self.features.iter().zip(&other.features).enumerate().find_map(|(i, (a, b))| {
            (a.name != b.name || a.transform != b.transform).then(|| {
                format!(
                    "feature {i} is `{}` ({:?}) where `{}` ({:?}) is expected",
                    b.name, b.transform, a.name, a.transform
                )
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flow_schema_names_are_unique_snake_case() {
        let schema = Schema::flow();
        let mut names: Vec<&str> = schema.names().collect();
        assert!(names.iter().all(|n| n.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')));
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), schema.len());
    }

    #[test]
    fn mismatch_names_the_feature() {
        let a = Schema::flow();
        let mut b = a.clone();
        assert_eq!(a.mismatch(&b), None);
        b.features[3].name = "bogus".into();
        let msg = a.mismatch(&b).expect("differs");
        assert!(msg.contains("feature 3 is `bogus`"), "{msg}");
        b.features.pop();
        assert!(a.mismatch(&b).expect("differs").contains("features where"));
    }

    #[test]
    fn an_older_schema_is_refused_with_the_command_to_retrain() {
        let mut v2 = Schema::flow();
        v2.id = "vigil-flow-v2".into();
        let msg = Schema::flow().mismatch(&v2).expect("differs");
        assert!(msg.starts_with("schema `vigil-flow-v2` where `vigil-flow-v3` is expected"), "{msg}");
        assert!(msg.contains("vigil train --pcap"), "{msg}");
    }

    #[test]
    fn log1p_clamps_negatives() {
        assert!((Transform::Log1p.apply(-5.0)).abs() < f32::EPSILON);
        assert!((Transform::Log1p.apply(std::f32::consts::E - 1.0) - 1.0).abs() < 1e-6);
    }
}
