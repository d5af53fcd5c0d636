//! d2l's `train_ch6`, step for step: the epoch loop, with what a user expects around it (a run
//! directory with an atomic checkpoint after every epoch, exact resumption, a clear stop when the
//! loss diverges or libtorch fails), telling its reporters of every step through [`Observer`].

use std::path::PathBuf;
use std::time::Instant;

use tch::{Device, Kind, Tensor};

use super::evaluate::{EvalFailed, evaluate_with};
use super::failure::{OutOfMemory, available_memory, is_out_of_memory, kept_checkpoint, out_of_memory_note};
use super::fault::Injected;
use super::observer::{BatchDone, Observer, Progress, RunStart};
use super::{
    CheckpointState, Diverged, Ema, EpochRecord, History, MicroBatch, Optimizer, Point, RunFailed, StepOptions,
    TrainConfig, batch_key, checkpoint_path, draw_mix, load_checkpoint, micro_batch_step, replayed_train_step, run_dir,
    save_checkpoint,
};
use crate::data::{self, Dataset};
use crate::distributed::{self, DataParallel};
use crate::error::{error_line, usage};
use crate::models::Network;

/// Where and how to train.
pub struct Run<'a> {
    pub config: TrainConfig,
    pub data: &'a Dataset,
    pub dir: PathBuf,
    /// The run's reporters (the `report` module's): the console, the run directory's metrics and
    /// charts, TensorBoard, the live view. Without any, a run writes its configuration and
    /// checkpoints and nothing else.
    pub observers: Vec<Box<dyn Observer + 'a>>,
    /// In a distributed run, the replicas this process trains with (see `crate::distributed`).
    pub replicas: Option<&'a DataParallel>,
}

impl<'a> Run<'a> {
    /// A run of `config` on `data` in `dir`, in this process alone, with no reporters.
    pub fn new(config: TrainConfig, data: &'a Dataset, dir: impl Into<PathBuf>) -> Self {
        Run { config, data, dir: dir.into(), observers: Vec::new(), replicas: None }
    }

    /// Adds reporters.
    pub fn observed_by(mut self, observers: impl IntoIterator<Item = Box<dyn Observer + 'a>>) -> Self {
        self.observers.extend(observers);
        self
    }
}

/// Trains `net` as `d2l.train_ch6` does, from `start` (a resumed checkpoint's state) or from
/// scratch, writing the run directory as it goes. Returns the full history.
pub fn train(run: &mut Run, net: &Network, start: Option<CheckpointState>) -> anyhow::Result<History> {
    let result = fit(run, net, start);
    if let Err(error) = &result {
        run.observers.iter_mut().for_each(|o| o.failed(error));
    }
    result
}

/// Tells every observer, stopping at the first that fails.
fn tell<'a>(
    observers: &mut [Box<dyn Observer + 'a>],
    mut event: impl FnMut(&mut dyn Observer) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    observers.iter_mut().try_for_each(|o| event(o.as_mut()))
}

fn fit(run: &mut Run, net: &Network, start: Option<CheckpointState>) -> anyhow::Result<History> {
    let Run { config: cfg, data, dir, observers, replicas } = run;
    let (cfg, data, dir, replicas) = (&*cfg, *data, &*dir, *replicas);
    cfg.validate().map_err(usage)?;
    let injected = Injected::from_env()?;
    anyhow::ensure!(
        net.precision() == cfg.precision,
        "the network computes in {} but the run is configured for {}: call Network::set_precision first",
        net.precision(),
        cfg.precision
    );
    let device = net.device();
    let channels_last = net.info.uses_channels_last(cfg.memory_format, device);
    anyhow::ensure!(
        net.channels_last() == channels_last,
        "the network is laid out {} but the run is configured for {}: call Network::set_channels_last first",
        layout_name(net.channels_last()),
        layout_name(channels_last)
    );
    cfg.check_dataset(data).map_err(usage)?;
    // In a distributed run every rank trains on its share of each batch; rank 0 alone writes the
    // run directory (and alone has reporters).
    let (rank, world) = replicas.map_or((0, 1), |r| (r.rank(), r.size()));
    let lead = rank == 0;
    if !cfg.batch_size.is_multiple_of(world) {
        return Err(usage(format!(
            "--batch-size {} does not split evenly over {world} processes: use a multiple of {world}",
            cfg.batch_size
        )));
    }
    let batch_size = cfg.batch_size / world;
    let train_split = data.train.clone();
    if let Some(available) = available_memory() {
        cfg.check_batch_memory(&train_split, available).map_err(usage)?;
    }
    net.check_input(&cfg.input_shape()).map_err(|e| match cfg.resize {
        Some(side) => usage(format!("--resize {side}: {e}")),
        None => usage(format!("{e} (the data set's size; --resize changes it)")),
    })?;
    for (flag, size) in [("--train-crop-size", cfg.crops.train), ("--val-crop-size", cfg.crops.val_crop)] {
        if let Some(side) = size {
            net.check_input(&[cfg.in_channels, side as i64, side as i64])
                .map_err(|e| usage(format!("{flag} {side}: {e}")))?;
        }
    }
    // Only now, with everything checked, does the run directory appear.
    if lead {
        run_dir::prepare(dir, cfg)?;
    }

    let (first_epoch, mut history) = match start {
        Some(state) => (state.epoch, state.history),
        None => (0, History::default()),
    };
    let mut opt = match &cfg.finetune {
        Some(finetune) => Optimizer::grouped(&net.vs, cfg.lr, &cfg.recipe, &finetune.head, finetune.head_lr_scale)?,
        None => Optimizer::new(&net.vs, cfg.lr, &cfg.recipe)?,
    };
    // A resumed run continues from its checkpoint's optimizer state (momentum, moving averages)
    // and average of the weights, read once.
    let (optimizer_state, ema_state) = match first_epoch > 0 {
        true => {
            let checkpoint = load_checkpoint(dir, Device::Cpu)?;
            (checkpoint.optimizer, checkpoint.ema)
        }
        false => (Vec::new(), Vec::new()),
    };
    let in_checkpoint = |e: anyhow::Error| anyhow::anyhow!("{}: {e}", checkpoint_path(dir).display());
    if first_epoch > 0 {
        opt.load_state_dict(&optimizer_state).map_err(in_checkpoint)?;
    }
    if let Some(replicas) = replicas {
        // Rank 0's starting point everywhere (fresh weights, or its checkpoint).
        replicas.broadcast_variables(&net.vs)?;
    }
    // The weights' moving average, from the (broadcast) weights or the checkpoint's average.
    let mut ema = match cfg.recipe.model_ema {
        true => Some(Ema::new(net, cfg)?),
        false => None,
    };
    if let (Some(ema), true) = (&mut ema, first_epoch > 0) {
        ema.load_state_dict(&ema_state).map_err(in_checkpoint)?;
    }
    let mut ema_replayer = ema.as_ref().map(|ema| ema.net.replayer());
    let num_batches = train_split.len().div_ceil(world).div_ceil(batch_size);
    let start =
        RunStart { dir, config: cfg, history: &history, first_epoch, batches_per_epoch: num_batches, device, world };
    tell(observers, |o| o.started(&start))?;
    let mut replayer = net.replayer();
    let mut eval_replayer = net.replayer();
    let smoothing = cfg.recipe.label_smoothing;
    let step_options = StepOptions { label_smoothing: smoothing, clip_grad_norm: cfg.recipe.clip_grad_norm };
    let mixing = cfg.recipe.mixup_alpha > 0.0 || cfg.recipe.cutmix_alpha > 0.0;
    if replayer.enabled() && (cfg.recipe.accum_steps > 1 || step_options.clip_grad_norm.is_some() || mixing) {
        // Off the graphs until a GPU soak has run them (a captured step replays its update).
        return Err(usage(
            "--accum-steps, --clip-grad-norm, --mixup-alpha and --cutmix-alpha do not run under --cuda-graphs yet; leave one out",
        ));
    }
    let eval_prep = cfg.eval_prep();
    let mut last_finite: Option<f64> = history.epochs.last().map(|e| e.train_loss);
    for epoch in first_epoch..cfg.epochs {
        // Every epoch's randomness (shuffle, dropout) depends only on the seed and the epoch, so
        // a resumed run continues exactly as an uninterrupted one.
        tch::manual_seed(cfg.seed.wrapping_mul(1_000_003).wrapping_add(epoch as u64) as i64);
        let lr = cfg.recipe.lr_at(cfg.lr, epoch, cfg.epochs);
        opt.set_lr(lr)?;
        let started = Instant::now();
        let (mut loss_sum, mut correct, mut seen, mut step_seconds) = (0f64, 0i64, 0usize, 0f64);
        // The whole run's sums so far (this rank's alone in a single-process run).
        let (mut total_loss, mut total_correct, mut total_seen) = (0f64, 0f64, 0usize);
        let mut order = data::epoch_order(train_split.len(), cfg.seed, epoch);
        if replicas.is_some() {
            order = distributed::shard(&order, rank, world);
        }
        let batches = data::device_batches(train_split.clone(), order, batch_size, cfg.train_prep(epoch), device);
        // What a failure at batch `i` of this epoch reports.
        let failed = |i: usize, error: anyhow::Error, note: String| RunFailed {
            net: cfg.net.clone(),
            phase: "training",
            at: format!("epoch {}, batch {} of {num_batches}", epoch + 1, i + 1),
            cause: error_line(&error),
            note: [note, kept_checkpoint(epoch, dir)].join(" ").trim().to_string(),
        };
        for (i, batch) in batches.enumerate() {
            injected.hold_if_at(epoch + 1, i + 1, rank);
            let timer = Instant::now();
            let step = batch.and_then(|batch| {
                if injected.fail.is_some_and(|f| f.is(epoch + 1, i + 1, rank)) {
                    // A real libtorch error (a negative size), raised where a step's would be.
                    Tensor::f_zeros([-1], (Kind::Float, device)).map(drop)?;
                }
                let at = [cfg.seed, epoch as u64, i as u64, rank as u64];
                let (images, labels) = augment_batch(cfg, at, &batch.images, &batch.labels)?;
                let (images, labels) = (&images, &labels);
                let micro = MicroBatch::of(i, num_batches, cfg.recipe.accum_steps);
                let step = if micro == MicroBatch::WHOLE && step_options.clip_grad_norm.is_none() && !mixing {
                    replayed_train_step(&mut replayer, net, replicas, &mut opt, smoothing, images, labels)
                } else {
                    micro_batch_step(net, replicas, &mut opt, &step_options, micro, images, labels)
                };
                let (loss, correct) = step.map_err(|error| {
                    if is_out_of_memory(&error_line(&error)) {
                        OutOfMemory { error, input: batch.images.size() }.into()
                    } else {
                        error
                    }
                })?;
                if let Some(ema) = &mut ema {
                    ema.after_batch(net, epoch, i, cfg.recipe.warmup_epochs)?;
                }
                Ok((loss.f_double_value(&[])?, correct.f_int64_value(&[])?, batch.host_labels.size()[0] as usize))
            });
            let (loss_value, batch_correct, n) = match step {
                Ok(values) => values,
                Err(error) => {
                    let note = match error.downcast_ref::<OutOfMemory>() {
                        Some(oom) => out_of_memory_note(net, &mut opt, &oom.input, device),
                        None => String::new(),
                    };
                    return Err(failed(i, error, note).into());
                }
            };
            step_seconds += timer.elapsed().as_secs_f64();
            if !loss_value.is_finite() {
                return Err(
                    Diverged { epoch: epoch + 1, batch: i + 1, loss: loss_value, last_finite, lr: cfg.lr }.into()
                );
            }
            last_finite = Some(loss_value);
            loss_sum += loss_value * n as f64;
            correct += batch_correct;
            seen += n;
            let at_point = (i + 1) % (num_batches / 5).max(1) == 0 || i == num_batches - 1;
            (total_loss, total_correct, total_seen) = match replicas {
                // Every rank reaches the same points: the sums over all ranks, there.
                Some(replicas) if at_point => {
                    let sums = replicas
                        .sum(&[loss_sum, correct as f64, seen as f64])
                        .map_err(|error| failed(i, error, String::new()))?;
                    (sums[0], sums[1], sums[2] as usize)
                }
                Some(_) => (total_loss, total_correct, total_seen),
                None => (loss_sum, correct as f64, seen),
            };
            let (train_loss, train_acc) = (total_loss / total_seen as f64, total_correct / total_seen as f64);
            if at_point {
                let x = epoch as f64 + (i + 1) as f64 / num_batches as f64;
                let point = Point { x, train_loss: Some(train_loss), train_acc: Some(train_acc), test_acc: None };
                tell(observers, |o| o.point(&point))?;
                history.points.push(point);
            }
            let progress = Progress { epoch: epoch + 1, epochs: cfg.epochs, batch: i + 1, batches: num_batches };
            let examples_per_sec = (seen * world) as f64 / step_seconds;
            let done = BatchDone { progress, train_loss, train_acc, examples_per_sec };
            tell(observers, |o| o.batch(&done))?;
        }
        // What a failed evaluation of `phase` reports.
        let eval_failed = |phase: &'static str| {
            move |f: EvalFailed| RunFailed {
                net: cfg.net.clone(),
                phase,
                at: format!("epoch {}, test batch {} of {}", epoch + 1, f.batch, f.batches),
                cause: error_line(&f.error),
                note: kept_checkpoint(epoch, dir),
            }
        };
        let test = evaluate_with(&mut eval_replayer, net, replicas, &data.test, batch_size, &eval_prep, false)
            .map_err(eval_failed("evaluation"))?;
        let ema_test = match (&ema, &mut ema_replayer) {
            (Some(ema), Some(replayer)) => Some(
                evaluate_with(replayer, &ema.net, replicas, &data.test, batch_size, &eval_prep, false)
                    .map_err(eval_failed("evaluation of the weights' average"))?
                    .accuracy,
            ),
            _ => None,
        };
        let point = Point { x: (epoch + 1) as f64, train_loss: None, train_acc: None, test_acc: Some(test.accuracy) };
        tell(observers, |o| o.point(&point))?;
        history.points.push(point);
        let record = EpochRecord {
            epoch: epoch + 1,
            train_loss: total_loss / total_seen as f64,
            train_acc: total_correct / total_seen as f64,
            test_acc: test.accuracy,
            examples: total_seen,
            step_seconds,
            wall_seconds: started.elapsed().as_secs_f64(),
            lr: Some(lr),
            ema_test_acc: ema_test,
        };
        history.epochs.push(record.clone());
        if !lead {
            continue;
        }
        let state = CheckpointState::new(cfg.clone(), epoch + 1, history.clone());
        save_checkpoint(dir, net, Some(&opt), ema.as_ref(), &state)?;
        tell(observers, |o| o.epoch(&record, &history))?;
    }
    tell(observers, |o| o.finished(&history))?;
    Ok(history)
}

/// The recipe's augmentations of a whole batch, after the per-image transforms: random erasing
/// of each normalised image, then MixUp or CutMix (labels become class probabilities). Their
/// draws depend on `at`, (seed, epoch, batch, rank), alone. `data bench` measures it too.
pub fn augment_batch(
    cfg: &TrainConfig,
    at: [u64; 4],
    images: &Tensor,
    labels: &Tensor,
) -> anyhow::Result<(Tensor, Tensor)> {
    let (mut images, mut labels) = (images.shallow_clone(), labels.shallow_clone());
    if cfg.random_erase > 0.0 {
        // In place: the batch is this step's alone.
        data::random_erasing_(&images, cfg.random_erase, batch_key(at) ^ 0x0065_7261_7365)?;
    }
    let [h, w] = [images.size()[2], images.size()[3]];
    if let Some(mix) = draw_mix(cfg.recipe.mixup_alpha, cfg.recipe.cutmix_alpha, at, h, w) {
        (images, labels) = mix.apply(&images, &labels, cfg.num_classes)?;
    }
    Ok((images, labels))
}

fn layout_name(channels_last: bool) -> &'static str {
    if channels_last { "channels-last" } else { "contiguous" }
}
