//! `nn.Conv2d`.

use tch::Tensor;
use tch::nn::Path;

use super::init::{default_bias, xavier_uniform};
use super::layer::{check_window, expect_image};
use super::{Ctx, Fwd, InLayer, Layer};
use crate::onnx::{self, OnnxGraph};

#[derive(Debug)]
pub struct Conv2d {
    pub weight: Tensor,
    pub bias: Tensor,
    in_channels: i64,
    kernel: i64,
    stride: i64,
    padding: i64,
}

impl Conv2d {
    /// `nn.Conv2d(in, out, kernel_size, stride, padding)` with d2l's Xavier init.
    pub fn new(p: &Path, in_channels: i64, out_channels: i64, kernel: i64, stride: i64, padding: i64) -> Self {
        let receptive = kernel * kernel;
        let weight = xavier_uniform(
            p,
            &[out_channels, in_channels, kernel, kernel],
            in_channels * receptive,
            out_channels * receptive,
        );
        let bias = default_bias(p, out_channels, in_channels * receptive);
        Conv2d { weight, bias, in_channels, kernel, stride, padding }
    }
}

impl Layer for Conv2d {
    fn type_name(&self) -> &'static str {
        "Conv2d"
    }
    fn forward(&self, x: &Tensor, _: &mut Ctx) -> Fwd {
        let (h, w) = expect_image(x, self.in_channels)?;
        check_window(x, h, w, self.kernel, self.stride, self.padding)?;
        let (s, p) = (self.stride, self.padding);
        x.f_conv2d(&self.weight, Some(&self.bias), [s, s], [p, p], [1, 1], 1).in_layer(x)
    }
    fn parameters(&self) -> Vec<&Tensor> {
        vec![&self.weight, &self.bias]
    }
    fn mult_adds(&self, out: &[i64]) -> i64 {
        let params = self.weight.numel() as i64 + self.bias.numel() as i64;
        params * out.iter().product::<i64>() / out[1]
    }
    fn onnx(&self, graph: &mut OnnxGraph, input: &str) -> Option<Result<String, String>> {
        let (k, s, p) = (self.kernel, self.stride, self.padding);
        Some((|| {
            let inputs = vec![
                input.to_string(),
                graph.parameter(&self.weight, &self.weight.size())?,
                graph.parameter(&self.bias, &self.bias.size())?,
            ];
            let attributes = vec![
                onnx::ints("kernel_shape", &[k, k]),
                onnx::ints("strides", &[s, s]),
                onnx::ints("pads", &[p, p, p, p]),
                onnx::ints("dilations", &[1, 1]),
                onnx::int("group", 1),
            ];
            Ok(graph.node("Conv", inputs, attributes))
        })())
    }
}
