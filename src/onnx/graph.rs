//! The graph a traced forward pass builds, node by node.

use std::collections::{HashMap, HashSet};

use tch::{Device, Kind, Tensor};

use super::proto::{ATTRIBUTE_FLOAT, ATTRIBUTE_INT, ATTRIBUTE_INTS, AttributeProto, FLOAT, NodeProto, TensorProto};

/// The nodes and weights a traced forward pass adds, and which value each live tensor holds.
pub struct OnnxGraph {
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    /// The value a tensor holds, by storage address and shape (a view such as `Flatten`'s
    /// shares its input's storage; an in-place ReLU's output replaces its input's value).
    values: HashMap<(usize, Vec<i64>), String>,
    /// The shape of each value bound to a tensor.
    shapes: HashMap<String, Vec<i64>>,
    /// The names the network's tensors are exported under, by storage address.
    parameter_names: HashMap<usize, String>,
    exported_parameters: HashSet<String>,
    op_counts: HashMap<String, usize>,
}

fn value_key(t: &Tensor) -> (usize, Vec<i64>) {
    (t.data_ptr() as usize, t.size())
}

impl OnnxGraph {
    /// An empty graph whose weights are the tensors of `parameters`, each exported under its
    /// name.
    pub fn new(parameters: impl IntoIterator<Item = (String, Tensor)>) -> Self {
        let parameter_names = parameters.into_iter().map(|(name, t)| (t.data_ptr() as usize, name)).collect();
        OnnxGraph {
            nodes: Vec::new(),
            initializers: Vec::new(),
            values: HashMap::new(),
            shapes: HashMap::new(),
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
        self.shapes.insert(name.clone(), t.size());
        self.values.insert(value_key(t), name);
    }

    /// The shape of the value `name`, when a tensor holding it was bound.
    pub fn shape(&self, name: &str) -> Option<Vec<i64>> {
        self.shapes.get(name).cloned()
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
            .cloned()
            .ok_or_else(|| format!("a tensor of shape {:?} that is not one of the network's", t.size()))?;
        if self.exported_parameters.insert(name.clone()) {
            let values = t
                .f_to_device(Device::Cpu)
                .and_then(|t| t.f_to_kind(Kind::Float))
                .and_then(|t| t.f_contiguous())
                .and_then(|t| Vec::<f32>::try_from(t.f_flatten(0, -1)?))
                .map_err(|e| crate::error::torch_error(&e))?;
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

    /// An initializer holding `values` with shape `dims` that is not one of the network's
    /// tensors (a fixed scale or shift).
    pub fn constant(&mut self, values: &[f32], dims: &[i64]) -> String {
        let name = format!("constant_{}", self.initializers.len());
        self.initializers.push(TensorProto {
            dims: dims.to_vec(),
            data_type: FLOAT,
            name: name.clone(),
            raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        });
        name
    }

    /// The nodes and initializers, with the value `last` renamed `output` wherever it appears.
    pub fn finish(mut self, last: &str, output: &str) -> (Vec<NodeProto>, Vec<TensorProto>) {
        for node in &mut self.nodes {
            for value in node.output.iter_mut().chain(node.input.iter_mut()) {
                if value == last {
                    *value = output.into();
                }
            }
        }
        (self.nodes, self.initializers)
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
