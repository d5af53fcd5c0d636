//! `nn.Flatten`.

use tch::Tensor;

use super::layer::{shape_error, stateless};
use super::{Ctx, Fwd, InLayer, Layer};
use crate::onnx::{self, OnnxGraph};

/// `nn.Flatten()`: keeps the batch dimension, flattens the rest.
#[derive(Debug)]
pub struct Flatten;
stateless!(Flatten, "Flatten", |_s, x, _cx| {
    if x.dim() < 2 {
        return Err(shape_error(x, "expects a batch dimension"));
    }
    x.f_flatten(1, -1).in_layer(x)
}, onnx: |_s, graph, input| Ok(graph.node("Flatten", vec![input.into()], vec![onnx::int("axis", 1)])));
