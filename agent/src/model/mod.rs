//! Anomaly detection: an isolation forest and an autoencoder over the feature schema, combined
//! into one calibrated score with an explanation, packaged as a model bundle.

pub mod autoencoder;
pub mod bundle;
pub mod detector;
pub mod iforest;
pub mod onnx;
pub mod train;

pub use bundle::{Bundle, BundleError};
pub use detector::{Contribution, Detector, Score};
pub use train::{TrainConfig, train};
