//! The chapter's networks, one file per family, and the [`Network`] that runs any of them.

pub mod alexnet;
pub mod densenet;
pub mod googlenet;
pub mod lenet;
pub mod nin;
pub mod resnet;
pub mod vgg;

use std::fmt;
use std::ops::RangeInclusive;
use std::sync::Arc;

use tch::nn::{Path, VarStore};
use tch::{Device, Kind, Tensor};

use crate::accel::{self, Autocast, Precision};
use crate::dist::DataParallel;
use crate::nn::{Ctx, Fwd, InLayer, LayerError, Sequential, count_parameters};
use crate::trace::{Record, Tracer};

/// What every network is built for: input channels and number of classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NetConfig {
    pub in_channels: i64,
    pub num_classes: i64,
}

impl Default for NetConfig {
    /// Fashion-MNIST: one grey channel, ten classes.
    fn default() -> Self {
        NetConfig { in_channels: 1, num_classes: 10 }
    }
}

/// d2l's published result for a network (REFERENCE.md).
#[derive(Debug, Clone, Copy)]
pub struct BookResult {
    pub loss: f64,
    pub train_acc: f64,
    pub test_acc: f64,
    /// On one Tesla V100.
    pub examples_per_sec: f64,
    /// Test accuracy range over nine builds of the book.
    pub test_acc_band: (f64, f64),
}

/// A network of the zoo with d2l's training settings for it.
pub struct ModelInfo {
    /// The CLI name, e.g. `resnet18`.
    pub name: &'static str,
    pub description: &'static str,
    /// Height and width d2l resizes Fashion-MNIST to for this network.
    pub input_size: i64,
    pub batch_size: i64,
    pub lr: f64,
    pub epochs: usize,
    /// `None` for networks d2l does not train (full-width VGG-11).
    pub book: Option<BookResult>,
    /// Whether channels-last (NHWC) is the faster layout on a GPU, as measured on an H100
    /// (docs/benchmarks.md): it is for the plain convolution stacks, not for DenseNet, whose
    /// concatenations cost more in NHWC, nor for LeNet, too small to gain.
    pub channels_last_on_cuda: bool,
    /// The same on a CPU (oneDNN; NCHW max pooling in particular is several times slower):
    /// faster for every network but LeNet, whose 6- and 16-channel maps are too thin for it.
    pub channels_last_on_cpu: bool,
    pub build: fn(&Path, &NetConfig) -> Sequential,
}

const fn book(loss: f64, train_acc: f64, test_acc: f64, examples_per_sec: f64, band: (f64, f64)) -> Option<BookResult> {
    Some(BookResult { loss, train_acc, test_acc, examples_per_sec, test_acc_band: band })
}

/// Every network, in the chapter's order.
pub static MODELS: &[ModelInfo] = &[
    ModelInfo {
        name: "alexnet",
        description: "AlexNet: 5 convolutions, 3 dense layers with dropout, ReLU (d2l 7.1)",
        input_size: 224,
        batch_size: 128,
        lr: 0.01,
        epochs: 10,
        book: book(0.327, 0.880, 0.882, 4171.0, (0.877, 0.883)),
        channels_last_on_cuda: true,
        channels_last_on_cpu: true,
        build: alexnet::alexnet,
    },
    ModelInfo {
        name: "vgg11",
        description: "VGG-11 at full width: 5 vgg_blocks (8 convolutions), 3 dense layers (d2l 7.2)",
        input_size: 224,
        batch_size: 128,
        lr: 0.05,
        epochs: 10,
        book: None,
        channels_last_on_cuda: true,
        channels_last_on_cpu: true,
        build: |p, cfg| vgg::vgg(p, &vgg::VGG11_ARCH, 1, cfg),
    },
    ModelInfo {
        name: "vgg11-small",
        description: "VGG-11 with channels divided by 4, as d2l trains it (d2l 7.2)",
        input_size: 224,
        batch_size: 128,
        lr: 0.05,
        epochs: 10,
        book: book(0.185, 0.931, 0.922, 2551.0, (0.915, 0.924)),
        channels_last_on_cuda: true,
        channels_last_on_cpu: true,
        build: |p, cfg| vgg::vgg(p, &vgg::VGG11_ARCH, 4, cfg),
    },
    ModelInfo {
        name: "nin",
        description: "Network in Network: nin_blocks of 1x1 convolutions, global average pooling (d2l 7.3)",
        input_size: 224,
        batch_size: 128,
        lr: 0.1,
        epochs: 10,
        book: book(0.591, 0.795, 0.785, 3201.0, (0.449, 0.872)),
        channels_last_on_cuda: true,
        channels_last_on_cpu: true,
        build: nin::nin,
    },
    ModelInfo {
        name: "googlenet",
        description: "GoogLeNet: 9 Inception blocks with parallel paths (d2l 7.4)",
        input_size: 96,
        batch_size: 128,
        lr: 0.1,
        epochs: 10,
        book: book(0.232, 0.913, 0.883, 3568.0, (0.854, 0.902)),
        channels_last_on_cuda: true,
        channels_last_on_cpu: true,
        build: googlenet::googlenet,
    },
    ModelInfo {
        name: "lenet-bn-scratch",
        description: "LeNet with batch normalization written from tensor operations (d2l 7.5)",
        input_size: 28,
        batch_size: 256,
        lr: 1.0,
        epochs: 10,
        book: book(0.269, 0.900, 0.838, 34609.0, (0.682, 0.885)),
        channels_last_on_cuda: false,
        channels_last_on_cpu: false,
        build: |p, cfg| lenet::lenet_bn(p, cfg, lenet::Norm::Scratch),
    },
    ModelInfo {
        name: "lenet-bn",
        description: "LeNet with the built-in BatchNorm2d/BatchNorm1d layers (d2l 7.5)",
        input_size: 28,
        batch_size: 256,
        lr: 1.0,
        epochs: 10,
        book: book(0.278, 0.897, 0.836, 63564.0, (0.518, 0.883)),
        channels_last_on_cuda: false,
        channels_last_on_cpu: false,
        build: |p, cfg| lenet::lenet_bn(p, cfg, lenet::Norm::BuiltIn),
    },
    ModelInfo {
        name: "resnet18",
        description: "ResNet-18: Residual blocks with shortcut Y + X, 4 resnet_block stages (d2l 7.6)",
        input_size: 96,
        batch_size: 256,
        lr: 0.05,
        epochs: 10,
        book: book(0.013, 0.997, 0.918, 4672.0, (0.894, 0.924)),
        channels_last_on_cuda: true,
        channels_last_on_cpu: true,
        build: resnet::resnet18,
    },
    ModelInfo {
        name: "densenet",
        description: "DenseNet: 4 DenseBlocks of 4 conv_blocks, growth 32, transition_blocks (d2l 7.7)",
        input_size: 96,
        batch_size: 256,
        lr: 0.1,
        epochs: 10,
        book: book(0.139, 0.950, 0.821, 5563.0, (0.821, 0.911)),
        channels_last_on_cuda: false,
        channels_last_on_cpu: true,
        build: densenet::densenet,
    },
];

/// A network name that is not in the zoo.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("unknown network '{0}'; valid names: {names}", names = model_names().join(", "))]
pub struct UnknownModel(pub String);

pub fn model_names() -> Vec<&'static str> {
    MODELS.iter().map(|m| m.name).collect()
}

/// Looks a network up by its CLI name.
pub fn find(name: &str) -> Result<&'static ModelInfo, UnknownModel> {
    MODELS.iter().find(|m| m.name == name).ok_or_else(|| UnknownModel(name.to_string()))
}

/// An input shape a network cannot take, with the sizes it can.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub struct InputError {
    pub network: String,
    /// The rejected (C, H, W).
    pub input: Vec<i64>,
    pub error: LayerError,
    /// Square sizes (H = W) that pass, up to [`InputError::SCAN_LIMIT`].
    pub working_sizes: Vec<RangeInclusive<i64>>,
}

impl InputError {
    pub const SCAN_LIMIT: i64 = 512;
}

fn dims(shape: &[i64]) -> String {
    shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("x")
}

impl fmt::Display for InputError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{} cannot take a {} input: {}", self.network, dims(&self.input), self.error)?;
        let channels = self.input.first().copied().unwrap_or(1);
        let ranges: Vec<String> = self
            .working_sizes
            .iter()
            .map(|r| match (*r.start(), *r.end()) {
                (lo, hi) if lo == hi => format!("{channels}x{lo}x{lo}"),
                (lo, Self::SCAN_LIMIT) => format!("{channels}x{lo}x{lo} and larger"),
                (lo, hi) => format!("{channels}x{lo}x{lo} to {channels}x{hi}x{hi}"),
            })
            .collect();
        if ranges.is_empty() {
            write!(f, "; no square input up to {0}x{0} works with {channels} channels", Self::SCAN_LIMIT)
        } else {
            write!(f, "; inputs that work: {}", ranges.join(", "))
        }
    }
}

/// A network of the zoo with its weights.
pub struct Network {
    pub info: &'static ModelInfo,
    pub config: NetConfig,
    /// The weights and state, named as PyTorch's `state_dict` names them.
    pub vs: VarStore,
    pub body: Sequential,
    precision: Precision,
    channels_last: bool,
    cuda_graphs: bool,
    /// Set in a distributed run: this network is one of the replicas kept in step by it.
    data_parallel: Option<Arc<DataParallel>>,
}

impl Network {
    /// Builds `name` with fresh d2l-initialised weights on `device`.
    pub fn new(name: &str, config: NetConfig, device: Device) -> Result<Self, UnknownModel> {
        Ok(Self::from_info(find(name)?, config, device))
    }

    pub fn from_info(info: &'static ModelInfo, config: NetConfig, device: Device) -> Self {
        let vs = VarStore::new(device);
        let body = (info.build)(&vs.root(), &config);
        if device.is_cuda() {
            // d2l's shapes are static: cuDNN's autotuner pays for itself within the first steps.
            tch::Cuda::cudnn_set_benchmark(true);
        }
        Network {
            info,
            config,
            vs,
            body,
            precision: Precision::Fp32,
            channels_last: false,
            cuda_graphs: false,
            data_parallel: None,
        }
    }

    /// Computes forward passes in `precision` (weights stay float32).
    pub fn set_precision(&mut self, precision: Precision) -> anyhow::Result<()> {
        // Switching autocast on once here is the check that it works on this device.
        drop(Autocast::enter(self.device(), precision)?);
        self.precision = precision;
        Ok(())
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Whether training and evaluation on CUDA replay captured graphs (off by default until a GPU
    /// soak has passed with them; see [`accel::Replayer`]).
    pub fn set_cuda_graphs(&mut self, on: bool) {
        self.cuda_graphs = on;
    }

    /// A [`accel::Replayer`] for this network's device and graph setting.
    pub fn replayer(&self) -> accel::Replayer {
        accel::Replayer::new(self.device(), self.cuda_graphs)
    }

    /// Makes this network a replica of a distributed run (see [`crate::dist`]).
    pub fn set_data_parallel(&mut self, replicas: Option<Arc<DataParallel>>) {
        self.data_parallel = replicas;
    }

    pub fn data_parallel(&self) -> Option<&DataParallel> {
        self.data_parallel.as_deref()
    }

    pub fn channels_last(&self) -> bool {
        self.channels_last
    }

    /// Lays convolution weights and inputs out as channels-last (NHWC), the layout cuDNN's
    /// tensor-core kernels work in. Values and parameter names are unchanged.
    pub fn set_channels_last(&mut self, on: bool) -> anyhow::Result<()> {
        let mut tensors: Vec<Tensor> = self.vs.variables().into_values().collect();
        if on && !self.channels_last {
            accel::set_channels_last(&mut tensors)?;
        } else if !on && self.channels_last {
            for t in &mut tensors {
                t.set_data(&t.contiguous());
            }
        }
        self.channels_last = on;
        Ok(())
    }

    /// The (C, H, W) d2l feeds this network.
    pub fn default_input(&self) -> [i64; 3] {
        [self.config.in_channels, self.info.input_size, self.info.input_size]
    }

    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// Trainable values (BatchNorm running statistics are state, not parameters).
    pub fn num_parameters(&self) -> i64 {
        count_parameters(&self.body)
    }

    /// Runs the network on a batch; `train` selects batch statistics and active dropout.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Fwd {
        let mut cx = Ctx::new(train);
        if let Some(replicas) = self.data_parallel.as_ref().filter(|r| r.sync_bn && train) {
            cx.sync_bn = Some(replicas.group.clone());
        }
        self.forward_with(x, cx)
    }

    /// One forward pass on `x` recorded by `tracer` (a timed tracer times every layer call).
    pub fn forward_traced(&self, x: &Tensor, train: bool, tracer: &mut Tracer) -> Fwd {
        self.forward_with(x, Ctx::traced(train, tracer))
    }

    fn forward_with(&self, x: &Tensor, mut cx: Ctx) -> Fwd {
        if self.precision == Precision::Fp32 && !self.channels_last {
            return cx.call(&self.body, x);
        }
        // Failures here (the copy, autocast) are the input's: report them as such.
        let at_input = |e: anyhow::Error| LayerError { layer: "input".into(), shape: x.size(), reason: e.to_string() };
        let x = if self.channels_last { accel::channels_last(x).map_err(at_input)? } else { x.shallow_clone() };
        let autocast = Autocast::enter(self.device(), self.precision).map_err(at_input)?;
        let logits = cx.call(&self.body, &x)?;
        drop(autocast);
        // The loss and everything read from the logits stay in float32, as under autocast.
        logits.f_to_kind(Kind::Float).in_layer(&logits).map_err(|e| LayerError { layer: "output".into(), ..e })
    }

    /// Records every layer call of one forward pass on an input of shape (C, H, W), without
    /// computing anything (an empty batch, eval mode), so even the largest network is instant.
    pub fn trace(&self, input: &[i64]) -> Result<Vec<Record>, Box<InputError>> {
        let mut tracer = Tracer::new();
        self.dry_run(input, Some(&mut tracer)).map_err(|error| self.input_error(input, error))?;
        Ok(tracer.records)
    }

    /// Checks that the network can take inputs of shape (C, H, W).
    pub fn check_input(&self, input: &[i64]) -> Result<(), Box<InputError>> {
        self.dry_run(input, None).map_err(|error| self.input_error(input, error))
    }

    fn dry_run(&self, input: &[i64], tracer: Option<&mut Tracer>) -> Result<(), LayerError> {
        let shape: Vec<i64> = std::iter::once(0).chain(input.iter().copied()).collect();
        if input.len() != 3 || input.iter().any(|&d| d < 1) {
            return Err(LayerError {
                layer: "input".into(),
                shape,
                reason: "expects (C, H, W) with every size at least 1".into(),
            });
        }
        let x = Tensor::f_zeros(&shape, (Kind::Float, self.device())).map_err(|e| LayerError {
            layer: "input".into(),
            shape: shape.clone(),
            reason: crate::torch_error(&e),
        })?;
        tch::no_grad(|| {
            let mut cx = match tracer {
                Some(t) => Ctx::traced(false, t),
                None => Ctx::new(false),
            };
            cx.call(&self.body, &x).map(|_| ())
        })
    }

    fn input_error(&self, input: &[i64], mut error: LayerError) -> Box<InputError> {
        // The dry run's batch is empty; report shapes as for one example.
        if let Some(batch) = error.shape.first_mut() {
            *batch = 1;
        }
        let channels = input.first().copied().unwrap_or(1).max(1);
        let mut working_sizes: Vec<RangeInclusive<i64>> = Vec::new();
        for size in 1..=InputError::SCAN_LIMIT {
            if self.dry_run(&[channels, size, size], None).is_ok() {
                match working_sizes.last_mut() {
                    Some(r) if *r.end() == size - 1 => *r = *r.start()..=size,
                    _ => working_sizes.push(size..=size),
                }
            }
        }
        Box::new(InputError { network: self.info.name.to_string(), input: input.to_vec(), error, working_sizes })
    }
}
