//! `nn.Dropout`.

use tch::Tensor;

use super::layer::stateless;
use super::{Ctx, Fwd, InLayer, Layer};
use crate::onnx::OnnxGraph;

#[derive(Debug)]
pub struct Dropout(pub f64);
stateless!(Dropout, "Dropout", |s, x, cx| x.f_dropout(s.0, cx.train && cx.dropout).in_layer(x),
    // Gone in eval mode: its output is its input.
    onnx: |_s, _graph, input| Ok(input.to_string()));
