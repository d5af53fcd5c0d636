//! `convnets profile`: where one training step spends its time, layer by layer.

use std::time::Instant;

use anyhow::Context;
use tch::{Device, Tensor};

use super::{BenchConfig, Setup, setup};
use crate::accel::{self, device_name};
use crate::nn::{Record, Tracer, cross_entropy};

/// Where one d2l training step spends its time: every layer call of the forward pass, then the
/// backward pass and the SGD step, averaged over `cfg.steps` steps (after one untimed step).
/// Steps run eagerly whatever `cfg.cuda_graphs` says, waiting for the device around each layer,
/// so the parts add up to more than a graph-replayed step takes.
pub struct Profile {
    pub model: String,
    pub device: String,
    pub batch: usize,
    pub side: usize,
    /// The forward pass's calls, with `seconds` averaged over the passes.
    pub records: Vec<Record>,
    pub forward_seconds: f64,
    pub backward_seconds: f64,
    pub step_seconds: f64,
}

/// Profiles `name` at its d2l settings (or `cfg.batch_size`) with `cfg`'s precision and layout.
pub fn profile(name: &str, cfg: &BenchConfig) -> anyhow::Result<Profile> {
    profile_steps(name, cfg).with_context(|| format!("profile {name} on {}", device_name(cfg.device)))
}

fn profile_steps(name: &str, cfg: &BenchConfig) -> anyhow::Result<Profile> {
    let Setup { batch, side, net, mut opt, x, y } = setup(name, cfg)?;
    let passes = cfg.steps;
    let mut total: Option<Vec<Record>> = None;
    let (mut forward_seconds, mut backward_seconds, mut step_seconds) = (0.0, 0.0, 0.0);
    for pass in 0..=passes {
        opt.zero_grad()?;
        accel::synchronize(cfg.device);
        let mut tracer = Tracer::timed(cfg.device);
        let (loss, forward) = timed(cfg.device, || -> anyhow::Result<Tensor> {
            Ok(cross_entropy(&net.forward_traced(&x, true, &mut tracer)?, &y, 0.0)?)
        });
        let loss = loss?;
        let (backward_done, backward) = timed(cfg.device, || loss.f_backward());
        backward_done?;
        let (step_done, step) = timed(cfg.device, || opt.step());
        step_done?;
        if pass == 0 {
            continue; // lazy initialisation and cuDNN's autotuning
        }
        forward_seconds += forward / passes as f64;
        backward_seconds += backward / passes as f64;
        step_seconds += step / passes as f64;
        match &mut total {
            None => total = Some(tracer.records),
            Some(sum) => sum.iter_mut().zip(&tracer.records).for_each(|(s, r)| s.seconds += r.seconds),
        }
    }
    let mut records = total.unwrap_or_default();
    records.iter_mut().for_each(|r| r.seconds /= passes as f64);
    Ok(Profile {
        model: name.to_string(),
        device: device_name(cfg.device),
        batch,
        side,
        records,
        forward_seconds,
        backward_seconds,
        step_seconds,
    })
}

/// `f()` and its wall time, the work it queued on `device` included.
fn timed<T>(device: Device, f: impl FnOnce() -> T) -> (T, f64) {
    let started = Instant::now();
    let value = f();
    accel::synchronize(device);
    (value, started.elapsed().as_secs_f64())
}

/// The profile as a table: each layer that computes (blocks are the sum of their layers), in
/// torchsummary's order and names, with its share of the forward pass; then the step's parts.
pub fn profile_table(p: &Profile) -> String {
    let mut out = format!(
        "{} on {}, batch {} of 1x{}x{}, one training step\n{:>20}  {:>25} {:>10} {:>8}\n",
        p.model, p.device, p.batch, p.side, p.side, "Layer (type)", "Output Shape", "ms", "forward"
    );
    let mut rows: Vec<&Record> = p.records.iter().filter(|r| !r.container).collect();
    rows.sort_by_key(|r| r.finished);
    for (i, r) in rows.iter().enumerate().filter(|(_, r)| !r.has_children) {
        out += &format!(
            "{:>20}  {:>25} {:>10.3} {:>7.1}%\n",
            format!("{}-{}", r.type_name, i + 1),
            format!("{:?}", r.output),
            r.seconds * 1e3,
            100.0 * r.seconds / p.forward_seconds.max(f64::MIN_POSITIVE)
        );
    }
    let total = p.forward_seconds + p.backward_seconds + p.step_seconds;
    for (part, seconds) in
        [("forward", p.forward_seconds), ("backward", p.backward_seconds), ("SGD step", p.step_seconds)]
    {
        out += &format!("{part:<9} {:>10.3} ms {:>6.1}% of the step\n", seconds * 1e3, 100.0 * seconds / total);
    }
    out += &format!(
        "step      {:>10.3} ms, {:.1} examples/s (eager, timed layer by layer)\n",
        total * 1e3,
        p.batch as f64 / total
    );
    out
}
