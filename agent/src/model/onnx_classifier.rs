//! Bring your own classifier: a classifier exported to ONNX (scikit-learn through skl2onnx:
//! `TreeEnsembleClassifier`, `LinearClassifier`), run with tract. Cross-checked against
//! scikit-learn (`agent/tests/model_crosscheck.rs`): random forests, gradient boosting with
//! three classes and logistic regression give its probabilities; skl2onnx's binary gradient
//! boosting does not build in tract 0.23 and is refused with tract's reason.
//!
//! Only the class probabilities are read. skl2onnx's exports have two outputs, the label and
//! the probabilities; tract 0.23 computes the probabilities of a random forest right but its
//! label wrong, so the label output is dropped before the plan is built and the label is the
//! most probable class. A probabilities output wrapped in a `ZipMap` (a sequence of maps,
//! skl2onnx's default) cannot be run and is refused with the export option that avoids it.
//! Loading runs the model on probe rows: probabilities outside [0, 1], or rows that do not
//! sum to one, mean tract does not run this model correctly, and the model is refused.

use std::sync::Arc;

use tract_onnx::{pb::type_proto, prelude::*};

use super::onnx::OnnxError;

/// A loaded ONNX classifier.
#[derive(Clone)]
pub struct OnnxClassifier {
    plan: Arc<TypedRunnableModel>,
    width: usize,
    classes: usize,
    /// The graph output read.
    pub output: String,
}

impl std::fmt::Debug for OnnxClassifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnnxClassifier")
            .field("width", &self.width)
            .field("classes", &self.classes)
            .field("output", &self.output)
            .finish_non_exhaustive()
    }
}

impl OnnxClassifier {
    /// Loads a classifier of `width` features and checks it on probe rows.
    ///
    /// # Errors
    /// [`OnnxError`] saying why the model cannot be used: no probabilities output, a `ZipMap`,
    /// a width that is not the schema's, an operator tract cannot run, probabilities that are
    /// not a distribution.
    pub fn load(bytes: &[u8], width: usize) -> Result<Self, OnnxError> {
        let load = |e: TractError| OnnxError::Load(format!("{e:#}"));
        let onnx = tract_onnx::onnx();
        let proto = onnx.proto_model_for_read(&mut std::io::Cursor::new(bytes)).map_err(load)?;
        let graph = proto.graph.as_ref().ok_or_else(|| OnnxError::Load("no graph".into()))?;
        let probabilities = graph.output.iter().find(|o| o.name.to_lowercase().contains("prob")).ok_or_else(|| {
            let names: Vec<&str> = graph.output.iter().map(|o| o.name.as_str()).collect();
            OnnxError::Load(format!("no probabilities output among {names:?}: Vigil reads the class probabilities"))
        })?;
        let zipmap = graph.node.iter().any(|n| n.op_type == "ZipMap" && n.output.contains(&probabilities.name));
        let tensor = matches!(
            probabilities.r#type.as_ref().and_then(|t| t.value.as_ref()),
            Some(type_proto::Value::TensorType(_))
        );
        if zipmap || !tensor {
            return Err(OnnxError::Load(format!(
                "output {:?} is a ZipMap (a sequence of maps), which tract cannot run: export it as a tensor \
                 (skl2onnx: options={{id(model): {{'zipmap': False}}}})",
                probabilities.name
            )));
        }
        let output = probabilities.name.clone();
        let mut model = onnx.model_for_proto_model(&proto).map_err(|e| {
            OnnxError::Load(format!(
                "tract cannot build this model: {e:#} (skl2onnx's binary GradientBoosting exports are known to fail)"
            ))
        })?;
        if model.input_outlets().map_err(load)?.len() != 1 {
            return Err(OnnxError::Load("expected exactly one input".into()));
        }
        // Only the probabilities: the label output is not read (tract gets it wrong for some
        // forests), and dropping it leaves its nodes out of the plan.
        let outlet = model
            .find_outlet_label(&output)
            .or_else(|| model.outputs.iter().copied().find(|o| model.outlet_label(*o) == Some(output.as_str())))
            .ok_or_else(|| OnnxError::Load(format!("output {output:?} is not in the graph tract built")))?;
        model.select_output_outlets(&[outlet]).map_err(load)?;
        // The declared input width must be the schema's; the batch dimension becomes a symbol.
        let declared = model
            .input_fact(0)
            .map_err(load)?
            .shape
            .dims()
            .nth(1)
            .and_then(tract_onnx::tract_hir::infer::Factoid::concretize)
            .and_then(|d| d.to_i64().ok());
        match declared {
            Some(found) if usize::try_from(found).ok() == Some(width) => {}
            found => {
                return Err(OnnxError::Width {
                    expected: width,
                    found: found.map_or_else(|| "undeclared".to_owned(), |f| f.to_string()),
                });
            }
        }
        let batch = model.symbols.sym("batch");
        model
            .set_input_fact(0, InferenceFact::dt_shape(f32::datum_type(), tvec!(batch.to_dim(), width.to_dim())))
            .map_err(load)?;
        let typed = model.into_typed().map_err(|e| OnnxError::Load(format!("tract cannot run this model: {e:#}")))?;
        let shape = typed.output_fact(0).map_err(load)?.shape.clone();
        let classes = match shape.as_concrete() {
            Some(&[_, k]) => k,
            _ if shape.len() == 2 => shape[1].to_i64().ok().and_then(|k| usize::try_from(k).ok()).unwrap_or(0),
            _ => 0,
        };
        if classes < 2 {
            return Err(OnnxError::Output {
                expected: 2,
                found: format!("{shape:?} (probabilities of at least two classes)"),
            });
        }
        let plan = typed.into_optimized().map_err(load)?.into_runnable().map_err(load)?;
        let loaded = Self { plan, width, classes, output };
        loaded.probe()?;
        Ok(loaded)
    }

    /// Features per row.
    #[must_use]
    pub const fn width(&self) -> usize {
        self.width
    }

    /// Classes (columns of the probabilities).
    #[must_use]
    pub const fn classes(&self) -> usize {
        self.classes
    }

    /// Runs probe rows (zeros, ones, a ramp, large values) and checks the output is a
    /// probability distribution per row.
    #[expect(clippy::cast_precision_loss, reason = "a ramp over the feature index")]
    fn probe(&self) -> Result<(), OnnxError> {
        let w = self.width;
        let rows = ndarray::Array2::from_shape_fn((4, w), |(r, c)| match r {
            0 => 0.0,
            1 => 1.0,
            2 => c as f32 / w as f32,
            _ => 1e6,
        });
        let p = self.predict_proba(rows.view())?;
        for row in p.rows() {
            let sum: f32 = row.sum();
            if row.iter().any(|v| !(0.0..=1.0 + 1e-4).contains(v)) || (sum - 1.0).abs() > 1e-3 {
                return Err(OnnxError::Load(format!(
                    "output {:?} gave {row} on a probe row: not probabilities, tract does not run this model correctly",
                    self.output
                )));
            }
        }
        Ok(())
    }

    /// Class probabilities of `rows` (`[n, width]`): `[n, classes]`.
    ///
    /// # Errors
    /// [`OnnxError::Run`] if tract fails.
    pub fn predict_proba(&self, rows: ndarray::ArrayView2<'_, f32>) -> Result<ndarray::Array2<f32>, OnnxError> {
        super::onnx::run_rows(&self.plan, rows)
    }
}
