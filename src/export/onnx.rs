//! ONNX export, written from the same traced forward pass as every summary: an exporting
//! [`Tracer`] carries an [`OnnxGraph`], each leaf layer adds its nodes as it runs
//! ([`crate::nn::Layer::onnx`]), and the functional steps of blocks (`Residual`'s sum,
//! `Inception`'s concatenation) add theirs through `Ctx`. No network describes itself twice.
//!
//! The graph is the eval-mode network (dropout gone, batch norm with its running statistics),
//! in float32, with a dynamic batch dimension: input `input` of shape (batch, C, H, W), output
//! `logits` of shape (batch, classes). Weights are initializers named as in PyTorch's
//! `state_dict`; the from-scratch batch norm's take the built-in layer's names, so both LeNets
//! export one graph.

use prost::Message;
use tch::{Device, Kind, Tensor};

use super::ModelCard;
use crate::accel::Precision;
use crate::models::Network;
use crate::nn::Tracer;
use crate::onnx::OnnxGraph;
use crate::onnx::proto::{
    Dimension, DimensionValue, FLOAT, GraphProto, ModelProto, OperatorSetIdProto, StringStringEntryProto,
    TensorShapeProto, TensorTypeProto, TypeProto, ValueInfoProto,
};
use crate::weights;

/// The ONNX operator set the graph is written for.
pub const OPSET: i64 = 17;
/// ONNX IR version 8 (ONNX 1.10+), the one that goes with opset 17.
const IR_VERSION: i64 = 8;
/// The names of the graph's input and output, and of its batch dimension.
pub const INPUT: &str = "input";
pub const OUTPUT: &str = "logits";
const BATCH: &str = "batch";

/// The built-in batch norm's name for a from-scratch batch norm's value (`1.gamma` ->
/// `1.weight`); other names stay.
fn builtin_name(name: &str) -> String {
    match name.rsplit_once('.') {
        Some((_, "gamma" | "beta" | "moving_mean" | "moving_var")) => {
            weights::batch_norm_alias(name).unwrap_or_else(|| name.to_string())
        }
        _ => name.to_string(),
    }
}

/// A float32 tensor value of `dims`, the first of them the dynamic batch.
fn batched_value(name: &str, dims: &[i64], doc: &str) -> ValueInfoProto {
    let mut dim = vec![Dimension { value: Some(DimensionValue::DimParam(BATCH.into())) }];
    dim.extend(dims.iter().map(|&d| Dimension { value: Some(DimensionValue::DimValue(d)) }));
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            tensor_type: Some(TensorTypeProto { elem_type: FLOAT, shape: Some(TensorShapeProto { dim }) }),
        }),
        doc_string: doc.into(),
    }
}

/// The ONNX model of `net` in eval mode (see the module's comment). `net` must compute in
/// float32, on the CPU, laid out contiguously: the export traces one real forward pass.
pub fn export(net: &Network, card: &ModelCard) -> anyhow::Result<Vec<u8>> {
    anyhow::ensure!(
        net.device() == Device::Cpu && !net.channels_last() && net.precision() == Precision::Fp32,
        "ONNX export traces a float32, contiguous network on the CPU"
    );
    let name = net.info.name;
    net.check_input(&card.input)?;
    // One example: an empty batch may hold no storage, and values are told apart by storage.
    let shape = [1, card.input[0], card.input[1], card.input[2]];
    let x = Tensor::f_zeros(shape, (Kind::Float, Device::Cpu))?;
    // The from-scratch batch norm's values take the built-in layer's names (`1.gamma` ->
    // `1.weight`), so both LeNets export one graph.
    let names = net.vs.variables().into_iter().map(|(name, t)| (builtin_name(&name), t));
    let mut tracer = Tracer::exporting(OnnxGraph::new(names));
    if let Some(graph) = tracer.graph.as_mut() {
        graph.bind(&x, INPUT.into());
    }
    let logits = tch::no_grad(|| net.forward_traced(&x, false, &mut tracer))
        .map_err(|e| anyhow::anyhow!("{name}: cannot export to ONNX: {e}"))?;
    let graph = tracer.graph.take().ok_or_else(|| anyhow::anyhow!("{name}: the trace kept no ONNX graph"))?;
    let last = graph.value(&logits).map_err(|e| anyhow::anyhow!("{name}: the output is {e}"))?;
    // The value the network ends with becomes the graph's output, `logits`.
    let (nodes, initializers) = graph.finish(&last, OUTPUT);
    let classes = logits.size()[1];
    let model = ModelProto {
        ir_version: IR_VERSION,
        producer_name: "convnets".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        doc_string: format!("{name}: {}", net.info.description),
        graph: Some(GraphProto {
            node: nodes,
            name: name.into(),
            initializer: initializers,
            doc_string: net.info.description.into(),
            input: vec![batched_value(INPUT, &card.input, &card.preprocessing)],
            output: vec![batched_value(OUTPUT, &[classes], "unnormalised class scores (softmax gives probabilities)")],
        }),
        opset_import: vec![OperatorSetIdProto { domain: String::new(), version: OPSET }],
        metadata_props: card
            .metadata
            .iter()
            .map(|(key, value)| StringStringEntryProto { key: key.clone(), value: value.clone() })
            .collect(),
    };
    Ok(model.encode_to_vec())
}
