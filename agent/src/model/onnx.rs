//! The autoencoder as a standard ONNX file, and its scoring with tract.
//!
//! Export writes opset-13 `Gemm` and `Relu` nodes with the weights as initializers: input
//! `input` `[batch, width]` float, output `reconstruction` of the same shape. Loading accepts
//! any ONNX graph with one float input and one output of the same width (an autoencoder
//! exported from `PyTorch`, say); it is optimised once into a plan shared by all scorers.

use std::sync::Arc;

use prost::Message;
use tract_onnx::{
    pb::{
        self, AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto, TensorShapeProto,
        TypeProto, ValueInfoProto, attribute_proto::AttributeType, tensor_proto::DataType,
        tensor_shape_proto::dimension, type_proto,
    },
    prelude::*,
};

use super::autoencoder::Autoencoder;

/// Input and output names of the graphs Vigil writes.
pub const INPUT: &str = "input";
pub const OUTPUT: &str = "reconstruction";
/// ONNX operator set of the exported graph.
pub const OPSET: i64 = 13;
/// ONNX IR version of the exported file (IR 8 goes with opset 13–17).
pub const IR_VERSION: i64 = 8;

/// Why an ONNX model cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    #[error("not a loadable ONNX model: {0}")]
    Load(String),
    #[error("the model's input is {found} features wide, the schema has {expected}")]
    Width { expected: usize, found: String },
    #[error("the model's output has shape {found}, expected [batch, {expected}]")]
    Output { expected: usize, found: String },
    #[error("scoring failed: {0}")]
    Run(String),
}

fn tensor(name: &str, dims: &[usize], data: Vec<f32>) -> TensorProto {
    TensorProto {
        name: name.to_owned(),
        dims: dims.iter().map(|&d| i64::try_from(d).expect("small dims")).collect(),
        data_type: DataType::Float as i32,
        float_data: data,
        ..TensorProto::default()
    }
}

fn value_info(name: &str, width: usize) -> ValueInfoProto {
    let dims = [
        dimension::Value::DimParam("batch".to_owned()),
        dimension::Value::DimValue(i64::try_from(width).expect("small width")),
    ];
    ValueInfoProto {
        name: name.to_owned(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: DataType::Float as i32,
                shape: Some(TensorShapeProto {
                    dim: dims
                        .into_iter()
                        .map(|v| pb::tensor_shape_proto::Dimension { value: Some(v), ..Default::default() })
                        .collect(),
                }),
            })),
            ..TypeProto::default()
        }),
        ..ValueInfoProto::default()
    }
}

fn node(op: &str, name: &str, inputs: &[&str], output: &str, attribute: Vec<AttributeProto>) -> NodeProto {
    NodeProto {
        op_type: op.to_owned(),
        name: name.to_owned(),
        input: inputs.iter().map(|s| (*s).to_owned()).collect(),
        output: vec![output.to_owned()],
        attribute,
        ..NodeProto::default()
    }
}

/// Serialises the autoencoder as an ONNX model.
#[must_use]
pub fn export(ae: &Autoencoder, doc: &str) -> Vec<u8> {
    let mut nodes = Vec::new();
    let mut initializers = Vec::new();
    let mut current = INPUT.to_owned();
    let last = ae.layers.len() - 1;
    for (i, layer) in ae.layers.iter().enumerate() {
        let (w, b) = (format!("layer{i}.weight"), format!("layer{i}.bias"));
        let w_data = layer.weight.as_standard_layout().iter().copied().collect();
        initializers.push(tensor(&w, &[layer.weight.nrows(), layer.weight.ncols()], w_data));
        initializers.push(tensor(&b, &[layer.bias.len()], layer.bias.to_vec()));
        let gemm_out = if i == last { OUTPUT.to_owned() } else { format!("layer{i}.linear") };
        let alpha =
            AttributeProto { name: "alpha".into(), r#type: AttributeType::Float as i32, f: 1.0, ..Default::default() };
        nodes.push(node("Gemm", &format!("layer{i}.gemm"), &[&current, &w, &b], &gemm_out, vec![alpha]));
        current = gemm_out;
        if i != last {
            let relu_out = format!("layer{i}.relu");
            nodes.push(node("Relu", &relu_out, &[&current], &relu_out, vec![]));
            current = relu_out;
        }
    }
    let model = ModelProto {
        ir_version: IR_VERSION,
        opset_import: vec![OperatorSetIdProto { domain: String::new(), version: OPSET }],
        producer_name: "vigil".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        doc_string: doc.to_owned(),
        graph: Some(GraphProto {
            name: "vigil_autoencoder".into(),
            node: nodes,
            initializer: initializers,
            input: vec![value_info(INPUT, ae.width())],
            output: vec![value_info(OUTPUT, ae.width())],
            ..GraphProto::default()
        }),
        ..ModelProto::default()
    };
    model.encode_to_vec()
}

/// An optimised tract plan of an autoencoder, cheap to clone and share between threads.
#[derive(Clone)]
pub struct OnnxScorer {
    plan: Arc<TypedRunnableModel>,
    width: usize,
}

impl std::fmt::Debug for OnnxScorer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnnxScorer").field("width", &self.width).finish_non_exhaustive()
    }
}

/// The first output of `graph` or of a graph nested in its nodes' attributes that no node,
/// input or initializer of its own graph produces.
fn unproduced_output(graph: &GraphProto) -> Option<&str> {
    let produced = |name: &str| {
        graph.input.iter().any(|i| i.name == name)
            || graph.initializer.iter().any(|t| t.name == name)
            || graph.node.iter().any(|n| n.output.iter().any(|o| o == name))
    };
    if let Some(output) = graph.output.iter().find(|o| !produced(&o.name)) {
        return Some(&output.name);
    }
    graph.node.iter().flat_map(|n| &n.attribute).flat_map(|a| a.g.iter().chain(&a.graphs)).find_map(unproduced_output)
}

impl OnnxScorer {
    /// Loads and optimises an ONNX autoencoder whose input must be `width` features wide.
    ///
    /// # Errors
    /// [`OnnxError`] if the bytes are not an ONNX model tract can run or the widths differ.
    pub fn load(bytes: &[u8], width: usize) -> Result<Self, OnnxError> {
        let load = |e: TractError| OnnxError::Load(format!("{e:#}"));
        let onnx = tract_onnx::onnx();
        let proto = onnx.proto_model_for_read(&mut std::io::Cursor::new(bytes)).map_err(load)?;
        if let Some(graph) = &proto.graph
            && let Some(name) = unproduced_output(graph)
        {
            // tract 0.23 panics on a graph output that nothing produces.
            return Err(OnnxError::Load(format!("graph output {name:?} is produced by no node, input or initializer")));
        }
        let mut model = onnx.model_for_proto_model(&proto).map_err(load)?;
        if model.input_outlets().map_err(load)?.len() != 1 || model.output_outlets().map_err(load)?.len() != 1 {
            return Err(OnnxError::Load("expected exactly one input and one output".into()));
        }
        // The declared input width must match; the batch dimension becomes a symbol.
        let declared = model.input_fact(0).map_err(load)?.shape.clone();
        let width_dim = declared
            .dims()
            .nth(1)
            .and_then(tract_onnx::tract_hir::infer::Factoid::concretize)
            .and_then(|d| d.to_i64().ok());
        if let Some(found) = width_dim
            && usize::try_from(found).ok() != Some(width)
        {
            return Err(OnnxError::Width { expected: width, found: found.to_string() });
        }
        let batch = model.symbols.sym("batch");
        model
            .set_input_fact(0, InferenceFact::dt_shape(f32::datum_type(), tvec!(batch.to_dim(), width.to_dim())))
            .map_err(load)?;
        let typed = model.into_typed().map_err(load)?;
        let out = typed.output_fact(0).map_err(load)?.shape.clone();
        if out.len() != 2 || out[1] != width.to_dim() {
            return Err(OnnxError::Output { expected: width, found: format!("{out:?}") });
        }
        let plan = typed.into_optimized().map_err(load)?.into_runnable().map_err(load)?;
        Ok(Self { plan, width })
    }

    /// Input width.
    #[must_use]
    pub const fn width(&self) -> usize {
        self.width
    }

    /// Reconstructions of `rows` (`[n, width]`, already scaled).
    ///
    /// # Errors
    /// [`OnnxError::Run`] if tract fails.
    ///
    /// # Panics
    /// Never: the rows are copied to standard layout first.
    pub fn reconstruct(&self, rows: ndarray::ArrayView2<'_, f32>) -> Result<ndarray::Array2<f32>, OnnxError> {
        run_rows(&self.plan, rows)
    }
}

/// Runs a plan of one `[n, width]` float input and reads its first output as `[n, k]`.
///
/// # Errors
/// [`OnnxError::Run`] if tract fails or the output is not two-dimensional.
///
/// # Panics
/// Never: the rows are copied to standard layout first.
pub(crate) fn run_rows(
    plan: &Arc<TypedRunnableModel>,
    rows: ndarray::ArrayView2<'_, f32>,
) -> Result<ndarray::Array2<f32>, OnnxError> {
    let run = |e: TractError| OnnxError::Run(format!("{e:#}"));
    let input = Tensor::from_shape(
        &[rows.nrows(), rows.ncols()],
        rows.as_standard_layout().as_slice().expect("standard layout"),
    )
    .map_err(run)?;
    let outputs = plan.run(tvec!(input.into_tvalue())).map_err(run)?;
    let view = outputs[0].to_plain_array_view::<f32>().map_err(run)?;
    view.into_dimensionality::<ndarray::Ix2>()
        .map(|v| v.to_owned())
        .map_err(|e| OnnxError::Run(format!("unexpected output shape: {e}")))
}

#[cfg(test)]
mod tests {
    use ndarray::Array2;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    use super::*;
    use crate::model::autoencoder::{AutoencoderParams, Dense};

    fn random_ae(width: usize) -> Autoencoder {
        let mut rng = StdRng::seed_from_u64(3);
        let sizes = [width, 7, 3, 7, width];
        Autoencoder {
            layers: sizes
                .windows(2)
                .map(|w| Dense {
                    weight: Array2::from_shape_fn((w[0], w[1]), |_| rng.random_range(-1.0..1.0)),
                    bias: ndarray::Array1::from_shape_fn(w[1], |_| rng.random_range(-0.5..0.5)),
                })
                .collect(),
        }
    }

    #[test]
    fn tract_runs_the_export_like_the_reference_forward_pass() {
        let ae = random_ae(5);
        let scorer = OnnxScorer::load(&export(&ae, "test"), 5).expect("loads");
        let mut rng = StdRng::seed_from_u64(4);
        let rows = Array2::from_shape_fn((300, 5), |_| rng.random_range(-2.0f32..2.0));
        let ours = ae.forward(rows.view());
        let tract = scorer.reconstruct(rows.view()).expect("runs");
        let worst = (&ours - &tract).mapv(f32::abs).fold(0f32, |a, &b| a.max(b));
        assert!(worst < 1e-4, "max difference {worst}");
        // Any batch size, including one row.
        assert_eq!(scorer.reconstruct(rows.slice(ndarray::s![0..1, ..])).expect("runs").dim(), (1, 5));
    }

    #[test]
    fn wrong_width_and_garbage_are_refused() {
        let bytes = export(&random_ae(5), "test");
        assert!(matches!(OnnxScorer::load(&bytes, 6), Err(OnnxError::Width { expected: 6, .. })));
        assert!(matches!(OnnxScorer::load(b"not a model", 5), Err(OnnxError::Load(_))));
        let _ = AutoencoderParams::default();
    }

    #[test]
    fn an_output_nothing_produces_is_refused_not_a_panic() {
        // Found by the `bundle` fuzz target: tract 0.23 indexes its name map with the output's
        // name and panics ("no entry found for key").
        let mut proto = ModelProto::decode(export(&random_ae(5), "test").as_slice()).expect("decodes");
        let graph = proto.graph.as_mut().expect("graph");
        graph.output[0].name = "nowhere".into();
        let err = OnnxScorer::load(&proto.encode_to_vec(), 5).expect_err("refused");
        assert!(err.to_string().contains("\"nowhere\" is produced by no node"), "{err}");
    }
}
