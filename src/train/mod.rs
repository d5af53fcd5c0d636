//! d2l's `train_ch6`, step for step, and what a user expects around it: a run directory with
//! config, metrics, chart and an atomic checkpoint after every epoch, exact resumption, and a
//! clear stop when the loss diverges or libtorch fails.

pub mod optimizer;
pub mod recipe;

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::accel::{MemoryFormat, Precision, Replayer};
use crate::chart;
use crate::data::{self, CLASSES, Dataset, Split};
use crate::dist;
use crate::live::{Board, Progress};
use crate::models::{self, NetConfig, Network};
use crate::tensorboard::EventWriter;
use crate::weights::{self, write_atomic};
pub use optimizer::Optimizer;
pub use recipe::{OptimizerName, Recipe, Schedule};

/// Everything that defines a run; saved as `config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub net: String,
    pub in_channels: i64,
    pub num_classes: i64,
    pub lr: f64,
    pub epochs: usize,
    pub batch_size: usize,
    /// Height and width images are resized to; `None` keeps 28x28.
    pub resize: Option<usize>,
    pub seed: u64,
    /// `cpu` or `cuda:N`.
    pub device: String,
    /// The forward pass's arithmetic (d2l: fp32); runs saved before it existed are fp32.
    #[serde(default)]
    pub precision: Precision,
    /// The layout asked for (resolved per device, so a resumed run lays its tensors out as the
    /// uninterrupted run did); runs saved before it existed are `auto`.
    #[serde(default)]
    pub memory_format: MemoryFormat,
    /// The data set trained on (`fashion-mnist`, `cifar10`, ...); runs saved before it existed
    /// trained on Fashion-MNIST.
    #[serde(default = "fashion_mnist")]
    pub dataset: String,
    /// The data set's class names, in label order: what `eval` and `predict` print.
    #[serde(default = "fashion_mnist_classes")]
    pub classes: Vec<String>,
    /// Optimizer, schedule and loss settings (d2l's by default).
    #[serde(default)]
    pub recipe: Recipe,
    /// Training-time augmentation, the data set's (see [`TrainConfig::train_prep`]); d2l's runs
    /// and runs saved before it existed have none.
    #[serde(default)]
    pub augment: bool,
    /// An image folder without `val/`: the fraction of `train/` held out (`--val-split`).
    #[serde(default)]
    pub val_split: Option<f64>,
    /// Per-channel normalisation of the input (`--normalize auto`; d2l: none).
    #[serde(default)]
    pub normalize: Option<data::Normalize>,
    /// `--sync-bn`: in a distributed run, batch norm normalises with the statistics of the
    /// whole global batch (PyTorch's SyncBatchNorm) instead of each rank's share.
    #[serde(default)]
    pub sync_bn: bool,
}

fn fashion_mnist() -> String {
    data::Format::FashionMnist.name().to_string()
}

fn fashion_mnist_classes() -> Vec<String> {
    CLASSES.iter().map(|c| c.to_string()).collect()
}

impl TrainConfig {
    /// d2l's settings for `net` (REFERENCE.md).
    pub fn d2l(net: &str) -> Result<Self, models::UnknownModel> {
        let info = models::find(net)?;
        let config = NetConfig::default();
        Ok(TrainConfig {
            net: info.name.to_string(),
            in_channels: config.in_channels,
            num_classes: config.num_classes,
            lr: info.lr,
            epochs: info.epochs,
            batch_size: info.batch_size as usize,
            resize: (info.input_size != 28).then_some(info.input_size as usize),
            seed: 0,
            device: "cpu".into(),
            precision: Precision::Fp32,
            memory_format: MemoryFormat::Auto,
            dataset: fashion_mnist(),
            classes: fashion_mnist_classes(),
            recipe: Recipe::default(),
            augment: false,
            val_split: None,
            normalize: None,
            sync_bn: false,
        })
    }

    /// The height and width of the network's input: the resize, or the data set's own size.
    pub fn image_side(&self) -> usize {
        self.resize.unwrap_or_else(|| self.format().side())
    }

    /// How training batches of `epoch` are made, each image's draws depending on the seed, the
    /// epoch and the image alone. With augmentation, the data set's (CIFAR: torchvision's
    /// `RandomCrop(32, padding=4)` and `RandomHorizontalFlip()`, then the resize; an image
    /// folder: `RandomResizedCrop(side)` and the flip); without, evaluation's transforms.
    pub fn train_prep(&self, epoch: usize) -> data::Prep {
        let format = self.format();
        let transforms = match format {
            _ if !self.augment => return data::Prep { epoch, ..self.eval_prep() },
            data::Format::Folder => {
                vec![data::Transform::RandomResizedCrop(self.image_side()), data::Transform::RandomHorizontalFlip]
            }
            _ => format.augmentation().into_iter().chain(self.resize.map(data::Transform::Resize)).collect(),
        };
        self.prep(transforms, epoch)
    }

    /// How evaluation batches are made: the resize alone; an image folder's, torchvision's
    /// `Resize(side / 0.875)` (256 for 224) and `CenterCrop(side)`, or, without augmentation,
    /// `Resize((side, side))` as for training.
    pub fn eval_prep(&self) -> data::Prep {
        let transforms = match self.format() {
            data::Format::Folder if self.augment => {
                let side = self.image_side();
                let resize = (side as f64 / 0.875).round() as usize;
                vec![data::Transform::ResizeShorter(resize), data::Transform::CenterCrop(side)]
            }
            data::Format::Folder => vec![data::Transform::Resize(self.image_side())],
            _ => self.resize.map(data::Transform::Resize).into_iter().collect(),
        };
        self.prep(transforms, 0)
    }

    fn prep(&self, transforms: Vec<data::Transform>, epoch: usize) -> data::Prep {
        data::Prep {
            pipeline: data::Pipeline { transforms },
            seed: self.seed,
            epoch,
            normalize: self.normalize.clone(),
        }
    }

    fn format(&self) -> data::Format {
        self.dataset.parse().unwrap_or(data::Format::FashionMnist)
    }

    /// Trains on `data`: its images' channels, its classes, its augmentation.
    pub fn use_dataset(&mut self, data: &Dataset) {
        self.augment = data.format.augments();
        self.in_channels = data.channels() as i64;
        self.num_classes = data.classes.len() as i64;
        self.classes = data.classes.clone();
        self.dataset = data.format.name().to_string();
    }

    /// Checks that `data` is what this run trains on (a resumed run, evaluation).
    pub fn check_dataset(&self, data: &Dataset) -> Result<(), String> {
        if data.channels() as i64 != self.in_channels || data.classes.len() as i64 != self.num_classes {
            return Err(format!(
                "the run trained on {} ({} channel(s), {} classes) but the data is {} ({} channel(s), {} classes); pass its --data",
                self.dataset,
                self.in_channels,
                self.num_classes,
                data.format.name(),
                data.channels(),
                data.classes.len()
            ));
        }
        Ok(())
    }

    /// Checks the hyper-parameters, naming the one at fault.
    pub fn validate(&self) -> Result<(), String> {
        // libtorch keeps the learning rate of float parameters as a float.
        if !(self.lr.is_finite() && self.lr > 0.0 && self.lr <= f32::MAX as f64) {
            return Err(format!("--lr must be a positive number no larger than 3.4e38, got {}", self.lr));
        }
        if self.epochs == 0 {
            return Err("--epochs must be at least 1".into());
        }
        if self.batch_size == 0 {
            return Err("--batch-size must be at least 1".into());
        }
        if self.resize == Some(0) {
            return Err("--resize must be at least 1".into());
        }
        self.recipe.validate(self.epochs)
    }

    /// Checks that one batch of inputs (`examples` of them at most) fits in `available_bytes`
    /// of memory with room to spare: a batch too large for the machine is a clear error, not
    /// an allocation failure that aborts the process. Training needs several times the input
    /// (activations), so a quarter of the available memory is the limit for the input alone.
    pub fn check_batch_memory(&self, split: &Split, available_bytes: u64) -> Result<(), String> {
        let [c, h, w] = self.input_shape();
        let per_example = (c * h * w) as u64 * 4;
        let batch = self.batch_size.min(split.len().max(1)) as u64;
        let limit = available_bytes / 4;
        if batch.saturating_mul(per_example) > limit {
            let fits = (limit / per_example.max(1)).max(1);
            return Err(format!(
                "--batch-size {}: one batch of {h}x{w} images needs {:.1} GiB, more than this machine can spare; try --batch-size {fits}",
                self.batch_size,
                (batch * per_example) as f64 / (1u64 << 30) as f64
            ));
        }
        Ok(())
    }

    pub fn net_config(&self) -> NetConfig {
        NetConfig { in_channels: self.in_channels, num_classes: self.num_classes }
    }

    /// The (C, H, W) the network sees.
    pub fn input_shape(&self) -> [i64; 3] {
        let side = self.image_side() as i64;
        [self.in_channels, side, side]
    }
}

/// Parses `auto`, `cpu`, `cuda` or `cuda:N`; `auto` is d2l's `try_gpu()`.
pub fn parse_device(s: &str) -> Result<Device, String> {
    let cuda = |index: usize| {
        if !cfg!(feature = "cuda") {
            Err(format!(
                "device {s}: this convnets was built without the `cuda` feature; rebuild with `cargo build --release --features cuda`, or use --device cpu"
            ))
        } else if (index as i64) >= tch::Cuda::device_count() {
            Err(format!("device {s}: no such CUDA device ({} visible); use --device cpu", tch::Cuda::device_count()))
        } else {
            Ok(Device::Cuda(index))
        }
    };
    match s {
        "auto" => Ok(if tch::Cuda::is_available() { Device::Cuda(0) } else { Device::Cpu }),
        "cpu" => Ok(Device::Cpu),
        "cuda" => cuda(0),
        _ => match s.strip_prefix("cuda:").and_then(|i| i.parse::<usize>().ok()) {
            Some(i) => cuda(i),
            None => Err(format!("unknown device '{s}': use auto, cpu, cuda or cuda:N")),
        },
    }
}

/// A device as d2l prints it: `cpu`, `cuda:0`.
pub fn device_name(device: Device) -> String {
    match device {
        Device::Cuda(i) => format!("cuda:{i}"),
        _ => "cpu".into(),
    }
}

/// One point of d2l's Animator: train metrics 5 times per epoch, test accuracy at its end.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Point {
    pub x: f64,
    pub train_loss: Option<f64>,
    pub train_acc: Option<f64>,
    pub test_acc: Option<f64>,
}

/// The summary of one finished epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    pub epoch: usize,
    pub train_loss: f64,
    pub train_acc: f64,
    pub test_acc: f64,
    pub examples: usize,
    /// Seconds of timed training steps in this epoch.
    pub step_seconds: f64,
    pub wall_seconds: f64,
    /// The learning rate of the epoch (runs saved before it was recorded: none).
    #[serde(default)]
    pub lr: Option<f64>,
}

/// Everything measured so far; stored in the checkpoint and as `metrics.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    pub points: Vec<Point>,
    pub epochs: Vec<EpochRecord>,
}

impl History {
    /// d2l's figure: examples of the last epoch x epochs / summed step time.
    pub fn examples_per_sec(&self) -> f64 {
        let seconds: f64 = self.epochs.iter().map(|e| e.step_seconds).sum();
        let last = self.epochs.last().map_or(0, |e| e.examples);
        last as f64 * self.epochs.len() as f64 / seconds
    }
}

/// What a checkpoint holds besides the weights (safetensors metadata, one atomic file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointState {
    pub format: String,
    pub config: TrainConfig,
    /// Epochs completed.
    pub epoch: usize,
    /// The optimizer and schedule; their state, if any, is in the checkpoint's `optimizer.*`
    /// tensors.
    pub optimizer: String,
    pub history: History,
}

impl CheckpointState {
    pub fn new(config: TrainConfig, epoch: usize, history: History) -> Self {
        let optimizer = config.recipe.describe(config.lr);
        CheckpointState { format: CHECKPOINT_FORMAT.into(), config, epoch, optimizer, history }
    }
}

const CHECKPOINT_FORMAT: &str = "convnets-checkpoint-1";
const STATE_KEY: &str = "convnets.checkpoint";
pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";

/// A loaded checkpoint: the network with its weights, the run's state and the optimizer's.
pub struct Checkpoint {
    pub net: Network,
    pub state: CheckpointState,
    /// The optimizer's tensors (`optimizer.*`; none for d2l's plain SGD).
    pub optimizer: Vec<(String, Tensor)>,
}

/// Finds the checkpoint file of a run directory, or takes the file itself.
pub fn checkpoint_path(run_or_file: &Path) -> PathBuf {
    if run_or_file.is_dir() { run_or_file.join(CHECKPOINT_FILE) } else { run_or_file.to_path_buf() }
}

/// Loads a checkpoint written by [`train`] onto `device`.
pub fn load_checkpoint(run_or_file: &Path, device: Device) -> anyhow::Result<Checkpoint> {
    let path = checkpoint_path(run_or_file);
    let file = path.display().to_string();
    let bytes = std::fs::read(&path)
        .map_err(|e| anyhow::anyhow!("{file}: {e} (expected a run directory or its {CHECKPOINT_FILE})"))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| anyhow::anyhow!("{file}: not a valid safetensors checkpoint: {e}"))?;
    let state_json = meta.metadata().as_ref().and_then(|m| m.get(STATE_KEY)).ok_or_else(|| {
        anyhow::anyhow!("{file}: a safetensors file but not a convnets checkpoint (no training state)")
    })?;
    let state: CheckpointState =
        serde_json::from_str(state_json).map_err(|e| anyhow::anyhow!("{file}: corrupt training state: {e}"))?;
    state.config.validate().map_err(|e| anyhow::anyhow!("{file}: corrupt training state: {e}"))?;
    if state.format != CHECKPOINT_FORMAT {
        anyhow::bail!("{file}: checkpoint format {} is not {CHECKPOINT_FORMAT}", state.format);
    }
    let mut net = Network::new(&state.config.net, state.config.net_config(), device)?;
    net.set_precision(state.config.precision)?;
    net.set_channels_last(state.config.memory_format.channels_last(device, net.info))?;
    let tensors = weights::parse_safetensors(&bytes, &file)?;
    // The network's weights; the optimizer's state (see optimizer.rs) is read on resume.
    let (optimizer, weights): (Vec<_>, Vec<_>) =
        tensors.into_iter().partition(|(name, _)| name.starts_with(optimizer::STATE_PREFIX));
    weights::load_state_dict(&net.vs, &state.config.net, &weights, false)?;
    Ok(Checkpoint { net, state, optimizer })
}

/// Writes `checkpoint.safetensors` in `dir` atomically: weights and state, one file.
pub fn save_checkpoint(
    dir: &Path,
    net: &Network,
    optimizer: Option<&Optimizer>,
    state: &CheckpointState,
) -> anyhow::Result<()> {
    let metadata = HashMap::from([(STATE_KEY.to_string(), serde_json::to_string(state)?)]);
    let mut tensors = weights::state_dict(&net.vs);
    if let Some(optimizer) = optimizer {
        tensors.extend(optimizer.state_dict()?);
    }
    let bytes = weights::safetensors_bytes(&tensors, Some(metadata))?;
    let path = dir.join(CHECKPOINT_FILE);
    write_atomic(&path, &bytes).map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))
}

/// Writes `metrics.json`, `metrics.csv`, `chart.svg` and `chart.png`, each atomically.
pub fn write_results(dir: &Path, history: &History, epochs: usize) -> anyhow::Result<()> {
    let mut csv = csv::Writer::from_writer(Vec::new());
    csv.write_record(["x", "train_loss", "train_acc", "test_acc", "lr"])?;
    let cell = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.6}"));
    for p in &history.points {
        // The learning rate of the epoch the point belongs to (an epoch ends at x = its number).
        let epoch = (p.x.ceil() as usize).max(1);
        let lr = history.epochs.get(epoch - 1).and_then(|e| e.lr);
        csv.write_record([format!("{:.6}", p.x), cell(p.train_loss), cell(p.train_acc), cell(p.test_acc), cell(lr)])?;
    }
    let files: [(&str, Vec<u8>); 4] = [
        ("metrics.json", serde_json::to_vec_pretty(history)?),
        ("metrics.csv", csv.into_inner()?),
        ("chart.svg", chart::training_svg(history, epochs)?.into_bytes()),
        ("chart.png", chart::training_png(history, epochs)?),
    ];
    for (name, bytes) in files {
        let path = dir.join(name);
        write_atomic(&path, &bytes).map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    }
    Ok(())
}

/// What a failed run leaves behind, for the end of its error message.
fn kept_checkpoint(completed_epochs: usize, dir: &Path) -> String {
    if completed_epochs > 0 {
        format!(
            "The checkpoint of epoch {completed_epochs} is kept: `convnets train --resume {}` continues from it.",
            dir.display()
        )
    } else {
        "No epoch had completed, so there is no checkpoint.".to_string()
    }
}

/// The loss stopped being a number.
#[derive(Debug, thiserror::Error)]
#[error(
    "training diverged at epoch {epoch}, batch {batch}: the loss is {loss}{last}. {kept} \
     Try a lower --lr (this run used {lr})",
    last = match .last_finite { Some(l) => format!(" (last finite loss {l:.4})"), None => String::new() },
    kept = if *.epoch > 1 {
        format!("The checkpoint of epoch {} is kept.", .epoch - 1)
    } else {
        "No epoch had completed, so there is no checkpoint.".to_string()
    }
)]
pub struct Diverged {
    pub epoch: usize,
    pub batch: usize,
    pub loss: f64,
    pub last_finite: Option<f64>,
    pub lr: f64,
}

/// libtorch (or the data pipeline) failed during a run: which network, where, why, and what is
/// kept. One line: libtorch's message without its C++ stack (see [`crate::libtorch_message`]).
#[derive(Debug, thiserror::Error)]
#[error(
    "{net}: {phase} failed at {at}: {cause}{note}",
    cause = if .note.is_empty() { .cause.as_str() } else { .cause.trim_end_matches('.') },
    note = if .note.is_empty() { String::new() } else { format!(". {}", .note) }
)]
pub struct RunFailed {
    pub net: String,
    /// `training` or `evaluation`.
    pub phase: &'static str,
    /// Where: `epoch 3, batch 17 of 235`, `batch 2 of 40`.
    pub at: String,
    pub cause: String,
    /// What the user can do next (resume, a batch size that fits); may be empty.
    pub note: String,
}

/// The batch of an evaluation that failed, and why.
struct EvalFailed {
    batch: usize,
    batches: usize,
    error: anyhow::Error,
}

/// Accuracy and confusion matrix (rows: true class, columns: predicted) of a split.
pub struct Evaluation {
    pub accuracy: f64,
    pub confusion: Vec<Vec<u64>>,
}

/// d2l's `evaluate_accuracy_gpu`: eval mode, no gradients, batches in order.
pub fn evaluate(net: &Network, split: &Arc<Split>, batch_size: usize, prep: &data::Prep) -> anyhow::Result<Evaluation> {
    evaluate_with(&mut net.replayer(), net, split, batch_size, prep).map_err(|failed| {
        RunFailed {
            net: net.info.name.to_string(),
            phase: "evaluation",
            at: format!("batch {} of {}", failed.batch, failed.batches),
            cause: crate::error_line(&failed.error),
            note: String::new(),
        }
        .into()
    })
}

/// [`evaluate`] through `replayer`, which a training run keeps from epoch to epoch (one graph
/// capture per run, not one per epoch).
fn evaluate_with(
    replayer: &mut Replayer,
    net: &Network,
    split: &Arc<Split>,
    batch_size: usize,
    prep: &data::Prep,
) -> Result<Evaluation, EvalFailed> {
    let classes = net.config.num_classes as usize;
    let mut confusion = vec![vec![0u64; classes]; classes];
    // A replica evaluates every world-th example (no padding: each is counted once) with rank
    // 0's batch-norm statistics, and the counts are summed: the accuracy of the whole set.
    let replicas = net.data_parallel();
    let (rank, world) = replicas.map_or((0, 1), |r| (r.rank(), r.size()));
    let order: Vec<usize> = (rank..split.len()).step_by(world).collect();
    let batches = order.len().div_ceil(batch_size);
    if let Some(replicas) = replicas {
        replicas.broadcast_buffers(&net.vs).map_err(|error| EvalFailed { batch: 1, batches, error })?;
    }
    let _guard = tch::no_grad_guard();
    for (i, batch) in data::device_batches(split.clone(), order, batch_size, prep.clone(), net.device()).enumerate() {
        let counted = batch.and_then(|batch| {
            let predicted = predict(replayer, net, &batch.images)?;
            let predicted = Vec::<i64>::try_from(predicted.f_to_device(Device::Cpu)?)?;
            let truth = Vec::<i64>::try_from(&batch.host_labels)?;
            for (&t, &p) in truth.iter().zip(&predicted) {
                let (t, p) = (t as usize, p as usize);
                anyhow::ensure!(t < classes, "label {t} is not one of the network's {classes} classes");
                confusion[t][p] += 1;
            }
            Ok(())
        });
        counted.map_err(|error| EvalFailed { batch: i + 1, batches, error })?;
    }
    if let Some(replicas) = replicas {
        let counts: Vec<f64> = confusion.iter().flatten().map(|&c| c as f64).collect();
        let summed = replicas.sum(&counts).map_err(|error| EvalFailed { batch: batches, batches, error })?;
        for (cell, total) in confusion.iter_mut().flatten().zip(summed) {
            *cell = total as u64;
        }
    }
    let correct: u64 = (0..classes).map(|c| confusion[c][c]).sum();
    Ok(Evaluation { accuracy: correct as f64 / split.len().max(1) as f64, confusion })
}

impl Evaluation {
    /// Per-class accuracy and the confusion matrix as a table, classes named by `classes`.
    pub fn report(&self, classes: &[String]) -> String {
        let name = |c: usize| classes.get(c).map_or("?", String::as_str);
        let mut out = format!("test acc {:.3}\n\n{:<11} {:>8} {:>7}\n", self.accuracy, "class", "acc", "count");
        for (c, row) in self.confusion.iter().enumerate() {
            let count: u64 = row.iter().sum();
            out += &format!("{:<11} {:>8.3} {count:>7}\n", name(c), row[c] as f64 / count.max(1) as f64);
        }
        out += "\nconfusion matrix (rows: true class, columns: predicted)\n";
        out += &format!("{:<11}", "");
        for c in 0..self.confusion.len() {
            out += &format!(" {c:>5}");
        }
        out += "\n";
        for (c, row) in self.confusion.iter().enumerate() {
            out += &format!("{:<11}", format!("{c} {}", name(c)).chars().take(11).collect::<String>());
            for v in row {
                out += &format!(" {v:>5}");
            }
            out += "\n";
        }
        out
    }
}

/// Where and how to train.
pub struct Run<'a> {
    pub config: TrainConfig,
    pub data: &'a Dataset,
    pub dir: PathBuf,
    /// Print d2l's lines to stdout (off in library use).
    pub verbose: bool,
    /// Publish the run's progress and points to the live view (`--serve`).
    pub live: Option<Board>,
}

/// Trains `net` as `d2l.train_ch6` does, from `start` (a resumed checkpoint's state) or from
/// scratch, writing the run directory as it goes. Returns the full history.
pub fn train(run: &Run, net: &Network, start: Option<CheckpointState>) -> anyhow::Result<History> {
    let cfg = &run.config;
    cfg.validate().map_err(crate::usage)?;
    let fault = injected_fault()?;
    anyhow::ensure!(
        net.precision() == cfg.precision,
        "the network computes in {} but the run is configured for {}: call Network::set_precision first",
        net.precision(),
        cfg.precision
    );
    let device = net.device();
    let channels_last = cfg.memory_format.channels_last(device, net.info);
    anyhow::ensure!(
        net.channels_last() == channels_last,
        "the network is laid out {} but the run is configured for {}: call Network::set_channels_last first",
        layout_name(net.channels_last()),
        layout_name(channels_last)
    );
    cfg.check_dataset(run.data).map_err(crate::usage)?;
    // In a distributed run every rank trains on its share of each batch; rank 0 alone prints
    // d2l's lines and writes the run directory.
    let replicas = net.data_parallel();
    let (rank, world) = replicas.map_or((0, 1), |r| (r.rank(), r.size()));
    let lead = rank == 0;
    if !cfg.batch_size.is_multiple_of(world) {
        return Err(crate::usage(format!(
            "--batch-size {} does not split evenly over {world} processes: use a multiple of {world}",
            cfg.batch_size
        )));
    }
    let batch_size = cfg.batch_size / world;
    let train_split = run.data.train.clone();
    let input = cfg.input_shape();
    if let Some(available) = available_memory() {
        cfg.check_batch_memory(&train_split, available).map_err(crate::usage)?;
    }
    net.check_input(&input).map_err(|e| match cfg.resize {
        Some(side) => crate::usage(format!("--resize {side}: {e}")),
        None => crate::usage(format!("{e} (the data set's size; --resize changes it)")),
    })?;
    // Only now, with everything checked, does the run directory appear.
    let dir = run.dir.display();
    if lead {
        std::fs::create_dir_all(&run.dir)
            .map_err(|e| crate::usage(format!("cannot create {dir}: {e}; choose another --out")))?;
        let probe = run.dir.join(".convnets-write-test");
        std::fs::write(&probe, b"")
            .map_err(|e| crate::usage(format!("cannot write in {dir}: {e}; choose another --out")))?;
        let _ = std::fs::remove_file(probe);
        remove_stale_temporaries(&run.dir);
        let config_path = run.dir.join("config.json");
        write_atomic(&config_path, &serde_json::to_vec_pretty(cfg)?)
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", config_path.display()))?;
    }

    let (first_epoch, mut history) = match start {
        Some(state) => (state.epoch, state.history),
        None => (0, History::default()),
    };
    let mut opt = Optimizer::new(&net.vs, cfg.lr, &cfg.recipe)?;
    if first_epoch > 0 {
        // A resumed run's optimizer continues from its checkpoint (momentum, moving averages).
        let checkpoint = load_checkpoint(&run.dir, Device::Cpu)?;
        opt.load_state_dict(&checkpoint.optimizer)
            .map_err(|e| anyhow::anyhow!("{}: {e}", checkpoint_path(&run.dir).display()))?;
    }
    if let Some(replicas) = replicas {
        // Rank 0's starting point everywhere (fresh weights, or its checkpoint).
        replicas.broadcast_variables(&net.vs)?;
    }
    let num_batches = train_split.len().div_ceil(world).div_ceil(batch_size);
    let mut events = match lead {
        true => Some(
            EventWriter::create(&run.dir, &history, num_batches)
                .map_err(|e| anyhow::anyhow!("cannot write TensorBoard events in {dir}: {e}"))?,
        ),
        false => None,
    };
    let events_path = events.as_ref().map(|e| e.path().to_path_buf()).unwrap_or_default();
    let event_error = |e: std::io::Error| anyhow::anyhow!("cannot write {}: {e}", events_path.display());
    let verbose = run.verbose && lead;
    if verbose {
        match world {
            1 => println!("training on {}", device_name(device)),
            _ => println!("training on {} x {world} processes", device_name(device)),
        }
    }
    let mut replayer = net.replayer();
    let mut eval_replayer = net.replayer();
    let smoothing = cfg.recipe.label_smoothing;
    let eval_prep = cfg.eval_prep();
    let mut last_finite: Option<f64> = history.epochs.last().map(|e| e.train_loss);
    let live = |change: &dyn Fn(&mut crate::live::RunView)| {
        if let Some(board) = &run.live {
            board.update(|view| change(view));
        }
    };
    live(&|view| {
        view.name = run.dir.file_name().map_or_else(|| dir.to_string(), |n| n.to_string_lossy().into_owned());
        view.status = "running".into();
        view.config = Some(cfg.clone());
        view.progress = Progress { epoch: first_epoch + 1, epochs: cfg.epochs, batch: 0, batches: num_batches };
        view.points = history.points.clone();
        view.epochs = history.epochs.clone();
    });
    for epoch in first_epoch..cfg.epochs {
        // Every epoch's randomness (shuffle, dropout) depends only on the seed and the epoch, so
        // a resumed run continues exactly as an uninterrupted one.
        tch::manual_seed(cfg.seed.wrapping_mul(1_000_003).wrapping_add(epoch as u64) as i64);
        let lr = cfg.recipe.lr_at(cfg.lr, epoch, cfg.epochs);
        opt.set_lr(lr)?;
        let started = Instant::now();
        let bar = if lead { progress_bar(num_batches as u64, epoch, cfg.epochs) } else { ProgressBar::hidden() };
        let (mut loss_sum, mut correct, mut seen, mut step_seconds) = (0f64, 0i64, 0usize, 0f64);
        // The whole run's sums so far (this rank's alone in a single-process run).
        let (mut total_loss, mut total_correct, mut total_seen) = (0f64, 0f64, 0usize);
        let mut order = data::epoch_order(train_split.len(), cfg.seed, epoch);
        if replicas.is_some() {
            order = dist::shard(&order, rank, world);
        }
        let batches = data::device_batches(train_split.clone(), order, batch_size, cfg.train_prep(epoch), device);
        // What a failure at batch `i` of this epoch reports.
        let failed = |i: usize, error: anyhow::Error, note: String| RunFailed {
            net: cfg.net.clone(),
            phase: "training",
            at: format!("epoch {}, batch {} of {num_batches}", epoch + 1, i + 1),
            cause: crate::error_line(&error),
            note: [note, kept_checkpoint(epoch, &run.dir)].join(" ").trim().to_string(),
        };
        for (i, batch) in batches.enumerate() {
            let timer = Instant::now();
            let step = batch.and_then(|batch| {
                if fault.is_some_and(|f| (f.epoch, f.batch) == (epoch + 1, i + 1) && f.rank.is_none_or(|r| r == rank)) {
                    // A real libtorch error (a negative size), raised where a step's would be.
                    Tensor::f_zeros([-1], (Kind::Float, device)).map(drop)?;
                }
                let (loss, correct) =
                    replayed_train_step(&mut replayer, net, &mut opt, smoothing, &batch.images, &batch.labels)
                        .map_err(|error| {
                            if is_out_of_memory(&crate::error_line(&error)) {
                                OutOfMemory { error, input: batch.images.size() }.into()
                            } else {
                                error
                            }
                        })?;
                Ok((loss.f_double_value(&[])?, correct.f_int64_value(&[])?, batch.host_labels.size()[0] as usize))
            });
            let (loss_value, batch_correct, n) = match step {
                Ok(values) => values,
                Err(error) => {
                    bar.abandon();
                    let note = match error.downcast_ref::<OutOfMemory>() {
                        Some(oom) => out_of_memory_note(net, &mut opt, &oom.input, device),
                        None => String::new(),
                    };
                    return Err(failed(i, error, note).into());
                }
            };
            step_seconds += timer.elapsed().as_secs_f64();
            if !loss_value.is_finite() {
                bar.abandon();
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
                    let sums = replicas.sum(&[loss_sum, correct as f64, seen as f64]).map_err(|error| {
                        bar.abandon();
                        failed(i, error, String::new())
                    })?;
                    (sums[0], sums[1], sums[2] as usize)
                }
                Some(_) => (total_loss, total_correct, total_seen),
                None => (loss_sum, correct as f64, seen),
            };
            let (train_loss, train_acc) = (total_loss / total_seen as f64, total_correct / total_seen as f64);
            if at_point {
                let x = epoch as f64 + (i + 1) as f64 / num_batches as f64;
                let point = Point { x, train_loss: Some(train_loss), train_acc: Some(train_acc), test_acc: None };
                if let Some(events) = &mut events {
                    events.point(&point).map_err(event_error)?;
                }
                live(&|view| view.points.push(point.clone()));
                history.points.push(point);
            }
            live(&|view| {
                view.progress = Progress { epoch: epoch + 1, epochs: cfg.epochs, batch: i + 1, batches: num_batches }
            });
            bar.set_message(format!(
                "loss {train_loss:.3}, train acc {train_acc:.3}, {:.1} examples/sec",
                (seen * world) as f64 / step_seconds
            ));
            bar.inc(1);
        }
        let test = evaluate_with(&mut eval_replayer, net, &run.data.test, batch_size, &eval_prep).map_err(|f| {
            bar.abandon();
            RunFailed {
                net: cfg.net.clone(),
                phase: "evaluation",
                at: format!("epoch {}, test batch {} of {}", epoch + 1, f.batch, f.batches),
                cause: crate::error_line(&f.error),
                note: kept_checkpoint(epoch, &run.dir),
            }
        })?;
        let point = Point { x: (epoch + 1) as f64, train_loss: None, train_acc: None, test_acc: Some(test.accuracy) };
        if let Some(events) = &mut events {
            events.point(&point).map_err(event_error)?;
        }
        live(&|view| view.points.push(point.clone()));
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
        };
        let line = format!(
            "epoch {}/{}: loss {:.3}, train acc {:.3}, test acc {:.3}, {:.1} s",
            record.epoch, cfg.epochs, record.train_loss, record.train_acc, record.test_acc, record.wall_seconds
        );
        bar.finish_and_clear();
        if verbose {
            eprintln!("{line}");
        }
        history.epochs.push(record);
        if !lead {
            continue;
        }
        let state = CheckpointState::new(cfg.clone(), epoch + 1, history.clone());
        save_checkpoint(&run.dir, net, Some(&opt), &state)?;
        write_results(&run.dir, &history, cfg.epochs)?;
        if let (Some(record), Some(events)) = (history.epochs.last(), &mut events) {
            events.epoch(record).map_err(event_error)?;
            live(&|view| view.epochs.push(record.clone()));
        }
    }
    live(&|view| view.status = "finished".into());
    if let (true, Some(last)) = (verbose, history.epochs.last()) {
        println!("loss {:.3}, train acc {:.3}, test acc {:.3}", last.train_loss, last.train_acc, last.test_acc);
        println!("{:.1} examples/sec on {}", history.examples_per_sec(), device_name(device));
        if let Some(replicas) = replicas {
            let traffic = replicas.traffic();
            let steps = traffic.steps.max(1) as f64;
            let step_seconds: f64 = history.epochs[first_epoch..].iter().map(|e| e.step_seconds).sum();
            println!(
                "gradient all-reduce over {world} processes: {:.2} MB and {:.1} ms per step ({:.0}% of the step)",
                traffic.bytes as f64 / steps / 1e6,
                traffic.seconds / steps * 1e3,
                100.0 * traffic.seconds / step_seconds.max(1e-9)
            );
        }
    }
    Ok(history)
}

fn layout_name(channels_last: bool) -> &'static str {
    if channels_last { "channels-last" } else { "contiguous" }
}

/// d2l's training step: zero the gradients, forward, cross-entropy, backward, SGD step. Returns
/// the loss and the number of correct predictions as tensors on the device, so that the step
/// queues work without waiting for it (what a CUDA graph capture needs); the caller reads them.
pub fn train_step(
    net: &Network,
    opt: &mut Optimizer,
    label_smoothing: f64,
    x: &Tensor,
    y: &Tensor,
) -> anyhow::Result<(Tensor, Tensor)> {
    opt.zero_grad()?;
    let replicas = net.data_parallel();
    if let Some(replicas) = replicas.filter(|r| !r.sync_bn) {
        replicas.broadcast_buffers(&net.vs)?;
    }
    let y_hat = net.forward_t(x, true)?;
    let mut loss = cross_entropy(&y_hat, y, label_smoothing)?;
    loss.f_backward()?;
    if let Some(replicas) = replicas {
        // All ranks then take the same step: that of the whole global batch.
        let params = net.vs.trainable_variables();
        loss = replicas.average_gradients(&params.iter().collect::<Vec<_>>(), &loss)?;
    }
    opt.step()?;
    let correct = tch::no_grad(|| y_hat.f_argmax(1, false)?.f_eq_tensor(y)?.f_sum(Kind::Int64))?;
    Ok((loss.detach(), correct))
}

/// `nn.CrossEntropyLoss(label_smoothing=...)` of logits and class indices (mean over the
/// batch); without smoothing, d2l's log-softmax and NLL, as before recipes existed.
pub fn cross_entropy(logits: &Tensor, labels: &Tensor, label_smoothing: f64) -> Result<Tensor, tch::TchError> {
    if label_smoothing > 0.0 {
        return logits.f_cross_entropy_loss(labels, None::<Tensor>, tch::Reduction::Mean, -100, label_smoothing);
    }
    logits.f_log_softmax(-1, Kind::Float)?.f_nll_loss(labels, None::<Tensor>, tch::Reduction::Mean, -100)
}

/// [`train_step`] through `replayer`: replayed from a captured CUDA graph once the shapes repeat.
/// Read the results before the next call (a replay rewrites them).
pub fn replayed_train_step(
    replayer: &mut Replayer,
    net: &Network,
    opt: &mut Optimizer,
    label_smoothing: f64,
    x: &Tensor,
    y: &Tensor,
) -> anyhow::Result<(Tensor, Tensor)> {
    let out = replayer.run(&[x, y], |xy| {
        let (loss, correct) = train_step(net, opt, label_smoothing, xy[0], xy[1])?;
        Ok(vec![loss, correct])
    })?;
    Ok((out[0].shallow_clone(), out[1].shallow_clone()))
}

/// Eval-mode predictions (the argmax class of each image) for the batch `x`, through `replayer`.
pub fn predict(replayer: &mut Replayer, net: &Network, x: &Tensor) -> anyhow::Result<Tensor> {
    let out = replayer.run(&[x], |x| Ok(vec![net.forward_t(x[0], false)?.f_argmax(1, false)?]))?;
    Ok(out[0].shallow_clone())
}

/// A training step ran out of memory on a batch of shape `input`.
#[derive(Debug, thiserror::Error)]
#[error("{error:#}")]
struct OutOfMemory {
    error: anyhow::Error,
    input: Vec<i64>,
}

/// What to tell a user whose step ran out of memory: a batch size whose training step was just
/// run and fitted. (The run is over: these trial steps change nothing that is kept.)
fn out_of_memory_note(net: &Network, opt: &mut Optimizer, input: &[i64], device: Device) -> String {
    let batch_size = input[0] as usize;
    let fits = fitting_batch_size(batch_size, |b| {
        let shape: Vec<i64> = std::iter::once(b as i64).chain(input[1..].iter().copied()).collect();
        let x = Tensor::f_zeros(&shape, (Kind::Float, device))?;
        let y = Tensor::f_zeros([b as i64], (Kind::Int64, device))?;
        train_step(net, opt, 0.0, &x, &y)?.0.f_double_value(&[])?;
        Ok(())
    });
    match fits {
        Some(b) => format!("A training step with --batch-size {b} fits on {}: rerun with it.", device_name(device)),
        None => format!("Not even one example fits on {}; free its memory or use --device cpu.", device_name(device)),
    }
}

/// The largest of `batch_size / 2`, `/ 4`, ... down to 1 for which `try_step` succeeds.
pub fn fitting_batch_size(batch_size: usize, mut try_step: impl FnMut(usize) -> anyhow::Result<()>) -> Option<usize> {
    std::iter::successors(Some(batch_size / 2), |&b| (b > 1).then_some(b / 2))
        .filter(|&b| b >= 1)
        .find(|&b| try_step(b).is_ok())
}

/// Where `CONVNETS_FAIL_AT` makes a training step fail.
#[derive(Clone, Copy)]
struct Fault {
    epoch: usize,
    batch: usize,
    /// In a distributed run, only this rank's step fails (all ranks' when not given).
    rank: Option<usize>,
}

/// `CONVNETS_FAIL_AT=EPOCH:BATCH[:RANK]` makes that training step fail inside libtorch, so that
/// the error path (one line, the checkpoint kept, `--resume`, the other ranks stopping) can be
/// tested on any machine.
fn injected_fault() -> anyhow::Result<Option<Fault>> {
    let Ok(value) = std::env::var("CONVNETS_FAIL_AT") else { return Ok(None) };
    let numbers: Option<Vec<usize>> = value.split(':').map(|n| n.parse().ok()).collect();
    match numbers.as_deref() {
        Some(&[epoch, batch]) => Ok(Some(Fault { epoch, batch, rank: None })),
        Some(&[epoch, batch, rank]) => Ok(Some(Fault { epoch, batch, rank: Some(rank) })),
        _ => Err(crate::usage(format!("CONVNETS_FAIL_AT={value}: expected EPOCH:BATCH[:RANK], e.g. 2:3"))),
    }
}

/// Memory the kernel says is available (`MemAvailable` in /proc/meminfo), in bytes.
fn available_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
}

/// Removes temporary files a killed run left behind (`write_atomic` names them `.NAME.tmp-PID`).
fn remove_stale_temporaries(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if name.to_string_lossy().starts_with('.') && name.to_string_lossy().contains(".tmp-") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// libtorch's out-of-memory messages (CUDA's and the CPU allocator's).
pub fn is_out_of_memory(message: &str) -> bool {
    message.contains("out of memory") || message.contains("DefaultCPUAllocator: can't allocate memory")
}

fn progress_bar(len: u64, epoch: usize, epochs: usize) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} batches  {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix(format!("epoch {}/{epochs}", epoch + 1));
    bar
}
