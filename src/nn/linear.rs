//! `nn.Linear`.

use tch::Tensor;
use tch::nn::Path;

use super::fused::{self, Activation, FoldCache, Fusable, LinearCall, Norm};
use super::init::{self, BiasInit, WeightInit};
use super::layer::shape_error;
use super::{Ctx, Fwd, InLayer, Layer, LayerError};
use crate::onnx::{self, OnnxGraph};

#[derive(Debug)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Tensor,
    in_features: i64,
    /// Evaluation's fused calls' folded weights.
    folded: FoldCache,
}

impl Linear {
    /// `nn.Linear(in, out)` with d2l's Xavier init.
    pub fn new(p: &Path, in_features: i64, out_features: i64) -> Self {
        Self::init(p, in_features, out_features, WeightInit::XavierUniform, BiasInit::PytorchDefault)
    }

    /// `nn.Linear(in, out)` initialised by `weight` and `bias`.
    pub fn init(p: &Path, in_features: i64, out_features: i64, weight: WeightInit, bias: BiasInit) -> Self {
        let weight = init::weight(p, &[out_features, in_features], weight);
        let bias = init::bias(p, out_features, in_features, bias);
        Linear { weight, bias, in_features, folded: FoldCache::default() }
    }
}

impl Linear {
    /// `activation(norm(self(x)))` in one fused call (see [`fused`]), through oneDNN's fused
    /// operator if `onednn`; `None` where it does not apply.
    pub(crate) fn forward_fused(
        &self,
        x: &Tensor,
        norm: Option<&Norm>,
        activation: Activation,
        onednn: bool,
    ) -> Option<Fwd> {
        if let Err(e) = self.check_input(x) {
            return Some(Err(e));
        }
        let linear = LinearCall { weight: &self.weight, bias: &self.bias, folded: &self.folded, onednn };
        fused::run_linear(linear, x, norm, activation)
    }

    fn check_input(&self, x: &Tensor) -> Result<(), LayerError> {
        let shape = x.size();
        if shape.len() != 2 || shape[1] != self.in_features {
            return Err(shape_error(x, format!("expects {} input features", self.in_features)));
        }
        Ok(())
    }
}

/// Draws a Linear layer's weight again from d2l's Xavier-uniform and its bias from PyTorch's
/// default: a new classifier head, as d2l's fine-tuning section initialises it.
pub fn reset_linear(weight: &Tensor, bias: &Tensor) -> Result<(), tch::TchError> {
    let [out_features, in_features] = weight.size()[..] else {
        return Err(tch::TchError::Shape(format!("a Linear weight is 2-d, not {:?}", weight.size())));
    };
    let xavier = (6.0 / (in_features + out_features) as f64).sqrt();
    let default = 1.0 / (in_features as f64).sqrt();
    tch::no_grad(|| {
        let _ = weight.shallow_clone().f_uniform_(-xavier, xavier)?;
        bias.shallow_clone().f_uniform_(-default, default).map(drop)
    })
}

impl Layer for Linear {
    fn type_name(&self) -> &'static str {
        "Linear"
    }
    fn forward(&self, x: &Tensor, _: &mut Ctx) -> Fwd {
        self.check_input(x)?;
        x.f_linear(&self.weight, Some(&self.bias)).in_layer(x)
    }
    fn parameters(&self) -> Vec<&Tensor> {
        vec![&self.weight, &self.bias]
    }
    fn fusable(&self) -> Option<Fusable<'_>> {
        Some(Fusable::Linear(self))
    }
    fn mult_adds(&self, out: &[i64]) -> i64 {
        (self.weight.numel() + self.bias.numel()) as i64 * out[..out.len() - 1].iter().product::<i64>()
    }
    /// `x @ W^T + b`: ONNX's Gemm with the weight transposed.
    fn onnx(&self, graph: &mut OnnxGraph, input: &str) -> Option<Result<String, String>> {
        Some((|| {
            let inputs = vec![
                input.to_string(),
                graph.parameter(&self.weight, &self.weight.size())?,
                graph.parameter(&self.bias, &self.bias.size())?,
            ];
            Ok(graph.node("Gemm", inputs, vec![onnx::int("transB", 1)]))
        })())
    }
}
