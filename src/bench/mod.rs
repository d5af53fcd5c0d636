//! `convnets bench`: how fast each network trains and evaluates, measured the way d2l times
//! `train_ch6` (the timed step reads the loss back), plus the data pipeline and peak memory.
//! Timings live here, never in tests.

use std::time::Instant;

use anyhow::Context;
use serde::Serialize;
use tch::{Device, Kind, Tensor};

use crate::accel::{self, MemoryFormat, PrecisionChoice, device_name};
use crate::data::{self, Dataset};
use crate::models::{self, NetConfig, Network};
use crate::train::{self, Optimizer};

mod profile;

pub use profile::{Profile, profile, profile_table};

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    pub device: Device,
    /// `None`: d2l's batch size for each network.
    pub batch_size: Option<usize>,
    /// Timed steps (after `warmup` untimed ones).
    pub steps: usize,
    pub warmup: usize,
    /// `auto` resolves per network.
    pub precision: PrecisionChoice,
    pub memory_format: MemoryFormat,
    pub cuda_graphs: bool,
}

/// One network's figures; serialised as one stable JSON line.
#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    pub model: String,
    pub device: String,
    pub precision: &'static str,
    pub channels_last: bool,
    /// Whether the train steps were replayed from a captured CUDA graph.
    pub cuda_graphs: bool,
    pub batch: usize,
    pub side: usize,
    pub steps: usize,
    /// d2l's timed train step on a fixed random batch already on the device.
    pub train_examples_per_s: f64,
    /// Training steps fed by the real pipeline (Fashion-MNIST sample, resize, batching, copy).
    pub epoch_examples_per_s: f64,
    /// Eval-mode forward passes without gradients.
    pub eval_examples_per_s: f64,
    /// Batches the data pipeline alone produces per second, in examples.
    pub data_examples_per_s: f64,
    /// Peak resident memory of this process while measuring this network (CPU), MiB.
    pub peak_rss_mib: Option<f64>,
    /// Peak memory held by tensors on the GPU (the CUDA allocator's figure) after the warm-up
    /// steps, in MiB: training, pipeline-fed steps and evaluation.
    pub peak_gpu_mib: Option<f64>,
    /// The same during the warm-up steps (cuDNN autotuning, graph capture).
    pub warmup_gpu_mib: Option<f64>,
    pub params: i64,
    pub threads: i32,
    /// Threads the shim's own kernels share their work among (`threads` unless the shim was
    /// built without OpenMP).
    pub shim_threads: i32,
    /// Convolutions (forward passes and gradients) computed by Winograd's algorithm while
    /// measuring this network.
    pub winograd_convolutions: u64,
    pub libtorch: &'static str,
}

/// Resets the kernel's peak-RSS counter of this process (Linux `clear_refs`), so that each
/// network's peak is its own.
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Peak resident set size since the last reset, in MiB (Linux only).
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// A network ready to be measured: built with seed 0 and `cfg`'s settings, d2l's SGD, and a
/// fixed random batch at d2l's input size and batch size (or `cfg`'s).
pub(crate) struct Setup {
    pub batch: usize,
    pub side: usize,
    pub net: Network,
    pub opt: Optimizer,
    pub x: Tensor,
    pub y: Tensor,
}

pub(crate) fn setup(name: &str, cfg: &BenchConfig) -> anyhow::Result<Setup> {
    let info = models::find(name)?;
    let batch = cfg.batch_size.unwrap_or(info.batch_size as usize);
    let side = info.input_size as usize;
    tch::manual_seed(0);
    let mut net = Network::from_info(info, info.default_config, cfg.device);
    net.set_precision(info.precision_for(cfg.precision, cfg.device).0)?;
    net.set_channels_last(info.uses_channels_last(cfg.memory_format, cfg.device))?;
    net.set_cuda_graphs(cfg.cuda_graphs);
    let opt = Optimizer::d2l(&net.vs, info.lr)?;
    let NetConfig { in_channels, num_classes } = info.default_config;
    let x = Tensor::f_rand([batch as i64, in_channels, side as i64, side as i64], (Kind::Float, cfg.device))?;
    let y = Tensor::f_randint(num_classes, [batch as i64], (Kind::Int64, cfg.device))?;
    Ok(Setup { batch, side, net, opt, x, y })
}

/// Measures one network; a failure names it.
pub fn bench(name: &str, cfg: &BenchConfig, data: &Dataset) -> anyhow::Result<BenchResult> {
    measure(name, cfg, data).with_context(|| format!("bench {name} on {}", device_name(cfg.device)))
}

fn measure(name: &str, cfg: &BenchConfig, data: &Dataset) -> anyhow::Result<BenchResult> {
    // The networks measured before this one leave kept blocks and heap behind: freed first, so
    // that this one's peak memory and reuse are its own.
    accel::release_large_cpu_blocks()?;
    reset_peak_rss();
    accel::reset_peak_memory(cfg.device);
    let Setup { batch, side, net, mut opt, x, y } = setup(name, cfg)?;
    let winograd_before = crate::nn::winograd_conv_calls();

    // d2l's step (zero grad, forward, loss, backward, step) as `train` runs it, the loss read
    // back (which waits for a GPU).
    let mut replayer = net.replayer();
    // Graph capture happens in the warm-up, never in the timed steps.
    let warmup = if replayer.enabled() { cfg.warmup.max(accel::Replayer::EAGER_CALLS + 1) } else { cfg.warmup };
    let mut step = |x: &Tensor, y: &Tensor| -> anyhow::Result<f64> {
        Ok(train::replayed_train_step(&mut replayer, &net, None, &mut opt, 0.0, x, y)?.0.f_double_value(&[])?)
    };
    let mut timed = 0.0;
    let mut warmup_gpu_mib = None;
    for i in 0..warmup + cfg.steps {
        if i == warmup {
            // cuDNN's autotuner tries algorithms with large workspaces in the first steps only:
            // the steady-state peak is measured from here.
            warmup_gpu_mib = accel::peak_memory_mib(cfg.device).map(round1);
            accel::reset_peak_memory(cfg.device);
        }
        let t = Instant::now();
        step(&x, &y)?;
        if i >= warmup {
            timed += t.elapsed().as_secs_f64();
        }
    }
    let train_examples_per_s = (batch * cfg.steps) as f64 / timed;

    // The same steps fed by the real pipeline, wall clock including any wait for data.
    let resize = (side != data.train.rows).then_some(side);
    let order: Vec<usize> = (0..batch * cfg.steps).map(|i| i % data.train.len()).collect();
    let started = Instant::now();
    for b in data::device_batches(data.train.clone(), order.clone(), batch, data::Prep::d2l(resize), cfg.device) {
        let b = b?;
        // Grey images for a colour network (torchvision's): the channel repeated, as
        // torchvision's `Grayscale(3)` makes them.
        let channels = net.config.in_channels;
        let images =
            if b.images.size()[1] == 1 && channels > 1 { b.images.f_repeat([1, channels, 1, 1])? } else { b.images };
        step(&images, &b.labels)?;
    }
    let epoch_examples_per_s = (batch * cfg.steps) as f64 / started.elapsed().as_secs_f64();

    // The pipeline alone.
    let started = Instant::now();
    let mut produced = 0;
    for b in data::batches(data.train.clone(), order, batch, data::Prep::d2l(resize)) {
        produced += b?.labels.size()[0] as usize;
    }
    let data_examples_per_s = produced as f64 / started.elapsed().as_secs_f64();

    let cuda_graphs = replayer.graphed();
    let mut replayer = net.replayer();
    let eval_examples_per_s = tch::no_grad(|| -> anyhow::Result<f64> {
        // Predictions read back, as `evaluate` does.
        let mut predict = || -> anyhow::Result<i64> {
            Ok(train::predict(&mut replayer, &net, &x)?.f_sum(Kind::Int64)?.f_int64_value(&[])?)
        };
        for _ in 0..warmup {
            predict()?;
        }
        accel::synchronize(cfg.device);
        let t = Instant::now();
        for _ in 0..cfg.steps {
            predict()?;
        }
        Ok((batch * cfg.steps) as f64 / t.elapsed().as_secs_f64())
    })?;

    Ok(BenchResult {
        model: name.to_string(),
        device: device_name(cfg.device),
        precision: net.precision().name(),
        channels_last: net.channels_last(),
        cuda_graphs,
        batch,
        side,
        steps: cfg.steps,
        train_examples_per_s: round1(train_examples_per_s),
        epoch_examples_per_s: round1(epoch_examples_per_s),
        eval_examples_per_s: round1(eval_examples_per_s),
        data_examples_per_s: round1(data_examples_per_s),
        peak_rss_mib: if cfg.device == Device::Cpu { peak_rss_mib().map(round1) } else { None },
        peak_gpu_mib: accel::peak_memory_mib(cfg.device).map(round1),
        warmup_gpu_mib,
        params: net.num_parameters(),
        threads: tch::get_num_threads(),
        shim_threads: accel::shim_threads(),
        winograd_convolutions: crate::nn::winograd_conv_calls() - winograd_before,
        libtorch: "2.11.0",
    })
}

/// CPU time this process has used so far (user and system, all threads), in seconds.
pub fn cpu_seconds() -> f64 {
    // /proc/self/stat: after the command name in parentheses, utime and stime are the 12th and
    // 13th fields, in clock ticks (100 per second on Linux).
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return 0.0 };
    let Some((_, rest)) = stat.rsplit_once(')') else { return 0.0 };
    let fields: Vec<f64> = rest.split_whitespace().skip(11).take(2).filter_map(|f| f.parse().ok()).collect();
    fields.iter().sum::<f64>() / 100.0
}

pub(crate) fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

/// A table of results for people.
pub fn table(results: &[BenchResult]) -> String {
    let mut out = format!(
        "{:<18} {:>6} {:>5} {:>12} {:>12} {:>12} {:>12} {:>10}\n",
        "network", "batch", "side", "train ex/s", "epoch ex/s", "eval ex/s", "data ex/s", "peak MiB"
    );
    for r in results {
        out += &format!(
            "{:<18} {:>6} {:>5} {:>12.1} {:>12.1} {:>12.1} {:>12.1} {:>10}\n",
            r.model,
            r.batch,
            r.side,
            r.train_examples_per_s,
            r.epoch_examples_per_s,
            r.eval_examples_per_s,
            r.data_examples_per_s,
            r.peak_rss_mib.or(r.peak_gpu_mib).map_or("-".into(), |m| format!("{m:.0}"))
        );
    }
    out
}
