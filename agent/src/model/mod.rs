//! Anomaly detection: an isolation forest and an autoencoder over the feature schema, combined
//! into one calibrated score with an explanation, packaged as a model bundle; and the
//! supervised classifier that names the attacks it was trained on.

#![expect(
    clippy::needless_pass_by_value,
    reason = "ndarray views are cheap handles, passed by value as ndarray's own API does"
)]

pub mod autoencoder;
pub mod boosted;
pub mod bundle;
pub mod classifier;
pub mod detector;
pub mod files;
pub mod iforest;
pub mod kind_classifier;
pub mod onnx;
pub mod onnx_classifier;
#[cfg(test)]
mod refusals;
pub mod sign;
pub mod train;

pub use bundle::{Bundle, BundleError};
pub use detector::{Contribution, Detector, Score};
pub use sign::{Provenance, Trust};
pub use train::{TrainConfig, train};
