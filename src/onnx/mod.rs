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

pub mod proto;

use std::collections::{HashMap, HashSet};

use prost::Message;
use tch::{Device, Kind, Tensor};

use crate::models::Network;
use crate::trace::Tracer;
use crate::train::CheckpointState;
use proto::{
    ATTRIBUTE_FLOAT, ATTRIBUTE_INT, ATTRIBUTE_INTS, AttributeProto, Dimension, DimensionValue, FLOAT, GraphProto,
    ModelProto, NodeProto, OperatorSetIdProto, StringStringEntryProto, TensorProto, TensorShapeProto, TensorTypeProto,
    TypeProto, ValueInfoProto,
};

/// The ONNX operator set the graph is written for.
pub const OPSET: i64 = 17;
/// ONNX IR version 8 (ONNX 1.10+), the one that goes with opset 17.
const IR_VERSION: i64 = 8;
/// The names of the graph's input and output, and of its batch dimension.
pub const INPUT: &str = "input";
pub const OUTPUT: &str = "logits";
const BATCH: &str = "batch";

/// The nodes and weights a traced forward pass adds, and which value each live tensor holds.
pub struct OnnxGraph {
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    /// The value a tensor holds, by storage address and shape (a view such as `Flatten`'s
    /// shares its input's storage; an in-place ReLU's output replaces its input's value).
    values: HashMap<(usize, Vec<i64>), String>,
    /// The network's tensors' `state_dict` names, by storage address.
    parameter_names: HashMap<usize, String>,
    exported_parameters: HashSet<String>,
    op_counts: HashMap<String, usize>,
}

fn value_key(t: &Tensor) -> (usize, Vec<i64>) {
    (t.data_ptr() as usize, t.size())
}

impl OnnxGraph {
    fn new(net: &Network) -> Self {
        let parameter_names = net.vs.variables().into_iter().map(|(name, t)| (t.data_ptr() as usize, name)).collect();
        OnnxGraph {
            nodes: Vec::new(),
            initializers: Vec::new(),
            values: HashMap::new(),
            parameter_names,
            exported_parameters: HashSet::new(),
            op_counts: HashMap::new(),
        }
    }

    /// The value `t` holds.
    pub fn value(&self, t: &Tensor) -> Result<String, String> {
        self.values
            .get(&value_key(t))
            .cloned()
            .ok_or_else(|| format!("a tensor of shape {:?} that no exported operation produced", t.size()))
    }

    /// Records that `t` holds the value `name`.
    pub fn bind(&mut self, t: &Tensor, name: String) {
        self.values.insert(value_key(t), name);
    }

    /// Adds an `op_type` node reading `inputs`; returns the name of its output.
    pub fn node(&mut self, op_type: &str, inputs: Vec<String>, attribute: Vec<AttributeProto>) -> String {
        let count = self.op_counts.entry(op_type.to_string()).or_default();
        *count += 1;
        let name = format!("{op_type}_{count}");
        let output = format!("{name}_out");
        self.nodes.push(NodeProto {
            input: inputs,
            output: vec![output.clone()],
            name,
            op_type: op_type.to_string(),
            attribute,
        });
        output
    }

    /// The initializer holding `t`, one of the network's tensors, stored with `shape`.
    pub fn parameter(&mut self, t: &Tensor, shape: &[i64]) -> Result<String, String> {
        let name = self
            .parameter_names
            .get(&(t.data_ptr() as usize))
            .map(|n| builtin_name(n))
            .ok_or_else(|| format!("a tensor of shape {:?} that is not one of the network's", t.size()))?;
        if self.exported_parameters.insert(name.clone()) {
            let values = t
                .f_to_device(Device::Cpu)
                .and_then(|t| t.f_to_kind(Kind::Float))
                .and_then(|t| t.f_contiguous())
                .and_then(|t| Vec::<f32>::try_from(t.f_flatten(0, -1)?))
                .map_err(|e| crate::torch_error(&e))?;
            if values.len() as i64 != shape.iter().product::<i64>() {
                return Err(format!("{name} has {} values, not the {shape:?} asked for", values.len()));
            }
            self.initializers.push(TensorProto {
                dims: shape.to_vec(),
                data_type: FLOAT,
                name: name.clone(),
                raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            });
        }
        Ok(name)
    }
}

/// The built-in batch norm's name for a from-scratch batch norm's value (`1.gamma` ->
/// `1.weight`); other names stay.
fn builtin_name(name: &str) -> String {
    match name.rsplit_once('.') {
        Some((_, "gamma" | "beta" | "moving_mean" | "moving_var")) => {
            crate::weights::batch_norm_alias(name).unwrap_or_else(|| name.to_string())
        }
        _ => name.to_string(),
    }
}

/// An integer attribute.
pub fn int(name: &str, value: i64) -> AttributeProto {
    AttributeProto { name: name.into(), i: value, r#type: ATTRIBUTE_INT, ..Default::default() }
}

/// A list-of-integers attribute.
pub fn ints(name: &str, values: &[i64]) -> AttributeProto {
    AttributeProto { name: name.into(), ints: values.to_vec(), r#type: ATTRIBUTE_INTS, ..Default::default() }
}

/// A float attribute.
pub fn float(name: &str, value: f32) -> AttributeProto {
    AttributeProto { name: name.into(), f: value, r#type: ATTRIBUTE_FLOAT, ..Default::default() }
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

/// What the exported file says about its input and its origin.
pub struct ModelCard {
    /// (C, H, W) the network takes.
    pub input: [i64; 3],
    /// How images become the input, for the input's description.
    pub preprocessing: String,
    /// `metadata_props`: class names, the run's configuration, anything a user needs.
    pub metadata: Vec<(String, String)>,
}

impl ModelCard {
    /// The input and metadata of a trained run: its data set's images as training fed them, its
    /// class names, where it stood and how it was trained.
    pub fn of_run(state: &CheckpointState) -> ModelCard {
        let config = &state.config;
        let side = config.image_side() as i64;
        let kind = if config.in_channels == 1 { "grey images" } else { "RGB images (red, green, blue planes)" };
        let normalisation = match &config.normalize {
            Some(n) => format!("then per channel (x - mean) / std with mean {:?} and std {:?}", n.mean, n.std),
            None => "no normalisation".to_string(),
        };
        let preprocessing = format!(
            "float32 images, N x {c} x {side} x {side}: {kind} resized to {side}x{side} \
             (bilinear, as torchvision's Resize on a PIL image), then pixel / 255 (torchvision's ToTensor), \
             {normalisation}",
            c = config.in_channels
        );
        let classes = serde_json::to_string(&config.classes).unwrap_or_default();
        let mut metadata = vec![
            ("convnets.network".to_string(), config.net.clone()),
            ("convnets.classes".to_string(), classes),
            ("convnets.preprocessing".to_string(), preprocessing.clone()),
            ("convnets.epochs_trained".to_string(), state.epoch.to_string()),
            ("convnets.config".to_string(), serde_json::to_string(config).unwrap_or_default()),
        ];
        if let Some(last) = state.history.epochs.last() {
            metadata.push(("convnets.test_accuracy".to_string(), format!("{:.4}", last.test_acc)));
        }
        ModelCard { input: [config.in_channels, side, side], preprocessing, metadata }
    }
}

/// The ONNX model of `net` in eval mode (see the module's comment). `net` must compute in
/// float32, on the CPU, laid out contiguously: the export traces one real forward pass.
pub fn export(net: &Network, card: &ModelCard) -> anyhow::Result<Vec<u8>> {
    anyhow::ensure!(
        net.device() == Device::Cpu && !net.channels_last() && net.precision() == crate::accel::Precision::Fp32,
        "ONNX export traces a float32, contiguous network on the CPU"
    );
    let name = net.info.name;
    net.check_input(&card.input)?;
    // One example: an empty batch may hold no storage, and values are told apart by storage.
    let shape = [1, card.input[0], card.input[1], card.input[2]];
    let x = Tensor::f_zeros(shape, (Kind::Float, Device::Cpu))?;
    let mut tracer = Tracer::exporting(OnnxGraph::new(net));
    if let Some(graph) = tracer.graph.as_mut() {
        graph.bind(&x, INPUT.into());
    }
    let logits = tch::no_grad(|| net.forward_traced(&x, false, &mut tracer))
        .map_err(|e| anyhow::anyhow!("{name}: cannot export to ONNX: {e}"))?;
    let mut graph = tracer.graph.take().ok_or_else(|| anyhow::anyhow!("{name}: the trace kept no ONNX graph"))?;
    let last = graph.value(&logits).map_err(|e| anyhow::anyhow!("{name}: the output is {e}"))?;
    // The value the network ends with becomes the graph's output, `logits`.
    for node in &mut graph.nodes {
        for value in node.output.iter_mut().chain(node.input.iter_mut()) {
            if *value == last {
                *value = OUTPUT.into();
            }
        }
    }
    let classes = logits.size()[1];
    let model = ModelProto {
        ir_version: IR_VERSION,
        producer_name: "convnets".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        doc_string: format!("{name}: {}", net.info.description),
        graph: Some(GraphProto {
            node: graph.nodes,
            name: name.into(),
            initializer: graph.initializers,
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
