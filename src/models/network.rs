//! [`Network`]: a network of the zoo with its weights, and how it runs (precision, layout,
//! graphs), checked against the inputs it cannot take.

use std::collections::HashMap;
use std::fmt;
use std::ops::RangeInclusive;

use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use super::{ModelInfo, NetConfig, UnknownModel, find};
use crate::accel::{self, Autocast, Precision};
use crate::nn::{Ctx, Fwd, InLayer, Layer, LayerError, Record, Sequential, SyncBatchNorm, Tracer, count_parameters};

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
    /// Fine-tuning with a frozen backbone: only the classifier head learns, and everything
    /// runs as in evaluation (batch norm on its running statistics, no dropout).
    frozen_backbone: bool,
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
            frozen_backbone: false,
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

    /// The classifier layers a new data set's classes replace, by `state_dict` prefix: the
    /// last Linear layer the network runs (`fc`, `classifier`, `classifier.6`, `15`), and any
    /// auxiliary classifier its zoo entry names.
    pub fn head(&self) -> Vec<String> {
        fn last_linear(layer: &dyn Layer) -> Option<usize> {
            let own = (layer.type_name() == "Linear").then(|| layer.parameters()[0].data_ptr() as usize);
            layer.children().into_iter().rev().find_map(last_linear).or(own)
        }
        let names: HashMap<usize, String> =
            self.vs.variables().into_iter().map(|(name, t)| (t.data_ptr() as usize, name)).collect();
        let last = last_linear(&self.body).and_then(|ptr| names.get(&ptr)).and_then(|w| w.strip_suffix(".weight"));
        last.into_iter().chain(self.info.extra_heads.iter().copied()).map(str::to_string).collect()
    }

    /// Freezes everything but the [`Network::head`]: no gradient for the backbone's weights,
    /// and every forward pass as in evaluation, so its batch-norm statistics stay as they are.
    pub fn freeze_backbone(&mut self) {
        let head = self.head();
        for (name, t) in self.vs.variables() {
            if !crate::weights::is_under(&name, &head) {
                let _ = t.set_requires_grad(false);
            }
        }
        self.frozen_backbone = true;
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
        self.forward_with(x, Ctx::new(train))
    }

    /// A training-mode pass with dropout off: batch statistics as in training, every unit kept
    /// (to compare a training step with PyTorch's with its dropout at p = 0).
    pub fn forward_train_without_dropout(&self, x: &Tensor) -> Fwd {
        let mut cx = Ctx::new(true);
        cx.dropout = false;
        self.forward_with(x, cx)
    }

    /// [`Network::forward_t`] with batch norm normalising over the batches of every replica of a
    /// distributed run (`--sync-bn`), when `sync_bn` is given.
    pub fn forward_synced(&self, x: &Tensor, train: bool, sync_bn: Option<&dyn SyncBatchNorm>) -> Fwd {
        match sync_bn {
            Some(sync_bn) if train => self.forward_with(x, Ctx::synced(train, sync_bn)),
            _ => self.forward_t(x, train),
        }
    }

    /// One forward pass on `x` recorded by `tracer` (a timed tracer times every layer call).
    pub fn forward_traced(&self, x: &Tensor, train: bool, tracer: &mut Tracer) -> Fwd {
        self.forward_with(x, Ctx::traced(train, tracer))
    }

    fn forward_with(&self, x: &Tensor, mut cx: Ctx) -> Fwd {
        cx.train &= !self.frozen_backbone;
        cx.fuse = true;
        cx.channels_last = self.channels_last;
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
            reason: crate::error::torch_error(&e),
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
