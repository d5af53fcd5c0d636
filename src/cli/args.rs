//! The command line's arguments, as clap parses them: one struct per group of flags, the
//! commands that use them in the files beside this one.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use tch::Device;

use crate::accel::{MemoryFormat, PrecisionChoice};
use crate::bench::BenchConfig;
use crate::data;
use crate::models::Network;
use crate::nn::KernelPolicy;
use crate::train;

#[derive(Parser)]
#[command(name = "convnets", version, about = "The modern CNNs of Dive into Deep Learning, in Rust on libtorch")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// An input shape: `CxHxW`, `HxW` or a single size `N` (square).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputShape {
    pub channels: Option<i64>,
    pub height: i64,
    pub width: i64,
}

impl InputShape {
    pub fn parse(s: &str) -> Result<Self, String> {
        let parts: Result<Vec<i64>, _> = s.split(['x', 'X']).map(|p| p.trim().parse::<i64>()).collect();
        let bad =
            || format!("'{s}' is not an input shape: use CxHxW (e.g. 1x224x224), HxW, or N for NxN, sizes at least 1");
        let parts = parts.map_err(|_| bad())?;
        if parts.iter().any(|&d| d < 1) {
            return Err(bad());
        }
        match parts[..] {
            [c, h, w] => Ok(InputShape { channels: Some(c), height: h, width: w }),
            [h, w] => Ok(InputShape { channels: None, height: h, width: w }),
            [n] => Ok(InputShape { channels: None, height: n, width: n }),
            _ => Err(bad()),
        }
    }
}

/// Which kernels compute the CPU convolutions the shim has kernels of its own for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum CpuKernels {
    /// The shim's where they were measured faster than oneDNN's: Winograd's algorithm on every
    /// CPU, training's weight gradients by blocks without AVX-512 (with it, only in the layers
    /// Winograd's algorithm takes).
    #[default]
    Auto,
    /// The shim's wherever they apply (to measure them on a CPU with AVX-512).
    Shim,
    /// oneDNN's everywhere.
    Onednn,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SummaryStyle {
    /// torchsummary 1.5.1's table.
    Torchsummary,
    /// A torchinfo-like nested tree with mult-adds.
    Tree,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    /// The eval-mode network as an ONNX model (opset 17, dynamic batch).
    Onnx,
    /// The weights under PyTorch's state_dict names.
    Safetensors,
}

#[derive(Subcommand)]
pub enum Command {
    /// List every network with its d2l input size, parameter count and description.
    Models {
        /// One JSON object per network, with d2l's settings and the book's results (the GPU soak
        /// checks test accuracy against `test_acc_band`).
        #[arg(long)]
        json: bool,
    },
    /// Print a network's summary table, as torchsummary (default) or as a torchinfo-like tree.
    Summary {
        /// Network name (see `convnets models`).
        net: String,
        /// Input shape CxHxW (default: the network's d2l input).
        #[arg(long, value_parser = InputShape::parse)]
        input: Option<InputShape>,
        /// Batch size shown in shapes and sizes (torchsummary default -1; tree default: d2l's).
        #[arg(long, allow_negative_numbers = true)]
        batch_size: Option<i64>,
        #[arg(long, value_enum, default_value_t = SummaryStyle::Torchsummary)]
        style: SummaryStyle,
        /// With --style tree: the deepest rows shown (torchinfo's `depth`, default 3); a block at
        /// that depth shows the parameters and mult-adds of everything in it.
        #[arg(long)]
        depth: Option<usize>,
        #[command(flatten)]
        shape: NetShapeArgs,
    },
    /// Print each top-level layer's output shape for one input, as the notebook's loops do.
    Shapes {
        net: String,
        #[command(flatten)]
        shape: NetShapeArgs,
        #[arg(long, value_parser = InputShape::parse)]
        input: Option<InputShape>,
    },
    /// Train a network as d2l's train_ch6 does (d2l's settings by default), on Fashion-MNIST,
    /// MNIST, CIFAR-10/100 or a folder of your own images (--data).
    Train(Box<TrainArgs>),
    /// Test accuracy, per-class accuracy and confusion matrix of a trained run.
    Eval {
        /// A run directory or its checkpoint.safetensors.
        run: PathBuf,
        #[command(flatten)]
        data: DataArgs,
        #[arg(long, default_value = "auto")]
        device: String,
        /// Test-time augmentation: `flip` averages each image's class probabilities with its
        /// horizontal mirror's.
        #[arg(long, value_parser = ["flip"])]
        tta: Option<String>,
    },
    /// d2l's `apply(img, aug)`: an image and augmented versions of it in one picture, to see an
    /// augmentation before training with it.
    Augment {
        /// A PNG or JPEG.
        image: PathBuf,
        /// Where to write the picture.
        #[arg(long)]
        out: PathBuf,
        /// How many augmented versions to draw.
        #[arg(long, default_value_t = 8)]
        count: usize,
        /// `RandomResizedCrop(SIZE)` (scale 0.08 to 1, ratio 3/4 to 4/3 unless given).
        #[arg(long, value_name = "SIZE")]
        crop: Option<usize>,
        /// --crop's share of the image's area, LO,HI.
        #[arg(long, value_name = "LO,HI", value_parser = crate::data::parse_range, requires = "crop")]
        crop_scale: Option<[f64; 2]>,
        /// --crop's width over its height, LO,HI.
        #[arg(long, value_name = "LO,HI", value_parser = crate::data::parse_range, requires = "crop")]
        crop_ratio: Option<[f64; 2]>,
        /// `RandomHorizontalFlip()`.
        #[arg(long)]
        flip: bool,
        /// `RandomVerticalFlip()`.
        #[arg(long)]
        vertical_flip: bool,
        /// `ColorJitter(B, C, S, H)`, e.g. 0.5,0,0,0 (d2l's brightness) or 0.5,0.5,0.5,0.5.
        #[arg(long, value_name = "B,C,S,H", value_parser = crate::data::ColorJitter::parse)]
        color_jitter: Option<crate::data::ColorJitter>,
        #[command(flatten)]
        auto_augment: AutoAugmentArgs,
        /// The draws' seed (each version k draws as image k of epoch 0 would in training).
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Classify test images (d2l's predict_ch3) or your own images (PNG, JPEG).
    Predict {
        /// A run directory or its checkpoint.safetensors.
        run: PathBuf,
        /// How many test images to show: the first ones (d2l's), or, for an image folder, whose
        /// images are listed class by class, a spread across the classes (the same every time).
        #[arg(long, default_value_t = 18)]
        count: usize,
        /// Where to write the picture of the images (as the network saw them, before
        /// normalisation) with true and predicted labels, wrong ones marked in red.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Classify these images instead (PNG or JPEG, transformed as the run evaluates).
        #[arg(long, num_args = 1..)]
        image: Vec<PathBuf>,
        /// With --image: the most likely classes to print for each, with their probabilities
        /// (default 5, at most the number of classes).
        #[arg(long, requires = "image")]
        topk: Option<usize>,
        /// With --image: one JSON object per image instead of a line.
        #[arg(long, requires = "image")]
        json: bool,
        #[command(flatten)]
        data: DataArgs,
        #[arg(long, default_value = "auto")]
        device: String,
    },
    /// Load a PyTorch state_dict (.safetensors, .pt or .pth) into a network, as a new run directory.
    Import {
        /// The weights, under the key names d2l's PyTorch code gives them (`0.weight`, ...). A
        /// .pt/.pth/.bin file is read as torch.load(weights_only=True) would: tensors and
        /// containers only, nothing in it run.
        weights: PathBuf,
        #[arg(long)]
        net: String,
        /// A PyTorch checkpoint's key that holds the state_dict (`model`, `state_dict`, ...).
        #[arg(long)]
        key: Option<String>,
        /// The run directory to create (then usable with eval, predict and train --resume).
        #[arg(long)]
        out: PathBuf,
        /// Load the keys that fit and report the others instead of refusing.
        #[arg(long)]
        allow_partial: bool,
    },
    /// Write a trained network as ONNX (any ONNX runtime) or its weights as a PyTorch state_dict
    /// in safetensors (load_state_dict accepts it).
    Export {
        /// A run directory or its checkpoint.safetensors.
        run: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Default: onnx when --out ends in .onnx, else safetensors.
        #[arg(long, value_enum)]
        format: Option<ExportFormat>,
        /// The moving average of the weights instead of the weights (runs with --model-ema).
        #[arg(long)]
        ema: bool,
    },
    /// Compare a network with PyTorch on a parity file (weights, input, outputs, gradients).
    Parity {
        file: PathBuf,
        #[arg(long)]
        net: String,
    },
    /// Measure train-step, pipeline-fed, eval and data throughput and peak memory per network.
    Bench {
        /// Networks to measure (default: the eight d2l trains).
        nets: Vec<String>,
        #[arg(long, default_value = "cpu")]
        device: String,
        /// Default: d2l's batch size for each network.
        #[arg(long)]
        batch_size: Option<usize>,
        /// Timed steps per measurement.
        #[arg(long, default_value_t = 10)]
        steps: usize,
        /// Untimed steps before timing.
        #[arg(long, default_value_t = 2)]
        warmup: usize,
        /// One JSON object per network instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        speed: SpeedArgs,
        #[command(flatten)]
        data: DataArgs,
    },
    /// Where a training step spends its time: each layer of the forward pass, backward, SGD step.
    Profile {
        net: String,
        #[arg(long, default_value = "cpu")]
        device: String,
        /// Default: d2l's batch size for the network.
        #[arg(long)]
        batch_size: Option<usize>,
        /// Timed steps to average (after one untimed step).
        #[arg(long, default_value_t = 3)]
        passes: usize,
        #[command(flatten)]
        speed: SpeedArgs,
    },
    /// Serve a live view of every run under a directory (finished and running, side by side).
    Serve {
        /// A directory of run directories (e.g. runs), or one run directory.
        #[arg(default_value = "runs")]
        dir: PathBuf,
        /// Address to listen on: 127.0.0.1 and a free port by default.
        #[arg(long, value_name = "ADDR")]
        addr: Option<String>,
    },
    /// Data sets: download the official files, describe the data in use, time the pipeline.
    Data {
        #[command(subcommand)]
        command: DataCommand,
    },
}

/// The network's input channels and classes, for data sets other than d2l's.
#[derive(clap::Args)]
pub struct NetShapeArgs {
    /// Input channels (3 for colour images); --input's C sets it too.
    #[arg(long, allow_negative_numbers = true)]
    pub in_channels: Option<i64>,
    /// Number of classes of the last layer.
    #[arg(long, allow_negative_numbers = true)]
    pub classes: Option<i64>,
}

#[derive(clap::Args)]
pub struct DataArgs {
    /// Directory with a data set: the four (Fashion-)MNIST IDX files (.gz or not), CIFAR-10's or
    /// CIFAR-100's binary files, or an image folder (train/<class>/*.jpg|png, and val/ or
    /// --val-split). Default: $CONVNETS_DATA, then the user cache
    /// (~/.cache/convnets/fashion-mnist), then the embedded Fashion-MNIST sample.
    #[arg(long = "data", value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// fashion-mnist, mnist, cifar10, cifar100 or folder (default: what the directory holds;
    /// IDX files are taken for Fashion-MNIST, a train/ folder of class folders for an image folder).
    #[arg(long)]
    pub dataset: Option<data::Format>,
    /// An image folder without val/: hold this fraction of train/ out for evaluation (the same
    /// images every time).
    #[arg(long, allow_negative_numbers = true)]
    pub val_split: Option<f64>,
    /// Leave unreadable images of an image folder out (each is decoded once to check), listing
    /// them, instead of stopping at the first.
    #[arg(long)]
    pub skip_bad_images: bool,
}

#[derive(clap::Args)]
pub struct TrainArgs {
    /// Network name (see `convnets models`); not needed with --resume.
    pub net: Option<String>,
    // Numbers are parsed signed so that a negative value gets our message, not a parse error.
    #[arg(long, allow_negative_numbers = true)]
    pub lr: Option<f64>,
    #[arg(long, allow_negative_numbers = true)]
    pub epochs: Option<i64>,
    #[arg(long, allow_negative_numbers = true)]
    pub batch_size: Option<i64>,
    /// Resize images to NxN (d2l: 224 for AlexNet, VGG, NiN; 96 for GoogLeNet, ResNet, DenseNet).
    #[arg(long, allow_negative_numbers = true)]
    pub resize: Option<i64>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// auto (a GPU when there is one), cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
    #[command(flatten)]
    pub data: DataArgs,
    /// Run directory (default: runs/<net>-<date>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub recipe: RecipeArgs,
    /// Training-time augmentation: default (the data set's: for CIFAR, RandomCrop(32, padding=4)
    /// and RandomHorizontalFlip; none for the MNISTs, as d2l) or none.
    #[arg(long, value_name = "default|none", value_parser = ["default", "none"])]
    pub augment: Option<String>,
    /// Normalise each input channel: auto (mean and standard deviation of the training images,
    /// computed once and cached beside the data) or none (d2l).
    #[arg(long, value_name = "auto|none", value_parser = ["auto", "none"])]
    pub normalize: Option<String>,
    /// Also flip training images vertically with probability 0.5 (torchvision's
    /// `RandomVerticalFlip`), for any data set.
    #[arg(long)]
    pub vertical_flip: bool,
    /// Jitter training images' brightness, contrast, saturation and hue as torchvision's
    /// `ColorJitter(B, C, S, H)` does (e.g. 0.4,0.4,0.4,0.1; 0 leaves one out), for any data set.
    #[arg(long, value_name = "B,C,S,H", value_parser = crate::data::ColorJitter::parse)]
    pub color_jitter: Option<crate::data::ColorJitter>,
    #[command(flatten)]
    pub auto_augment: AutoAugmentArgs,
    /// Erase a random box of each training image with probability P, after normalisation
    /// (torchvision's `RandomErasing(p=P)`; its recipe: 0.1).
    #[arg(long, value_name = "P", allow_negative_numbers = true)]
    pub random_erase: Option<f64>,
    /// An image folder's training crop (`RandomResizedCrop`), when not --resize's side
    /// (torchvision's reference recipe; FixRes trains at 176 and evaluates at 224).
    #[arg(long, value_name = "SIZE")]
    pub train_crop_size: Option<usize>,
    /// The training crop's share of the image's area, LO,HI (`RandomResizedCrop`'s scale;
    /// torchvision's 0.08,1 by default).
    #[arg(long, value_name = "LO,HI", value_parser = crate::data::parse_range)]
    pub train_crop_scale: Option<[f64; 2]>,
    /// The training crop's width over its height, LO,HI (`RandomResizedCrop`'s ratio; 0.75,1.333
    /// by default).
    #[arg(long, value_name = "LO,HI", value_parser = crate::data::parse_range)]
    pub train_crop_ratio: Option<[f64; 2]>,
    /// An image folder's evaluation resize (shorter side), by default 1/0.875 of the crop.
    #[arg(long, value_name = "SIZE")]
    pub val_resize_size: Option<usize>,
    /// An image folder's evaluation crop (`CenterCrop`), when not --resize's side.
    #[arg(long, value_name = "SIZE")]
    pub val_crop_size: Option<usize>,
    /// Serve a live view of the run (chart, progress, configuration) at ADDR: 127.0.0.1 and a
    /// free port by default (printed at start); other interfaces only when named.
    #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = "127.0.0.1")]
    pub serve: Option<String>,
    #[command(flatten)]
    pub dist: DistArgs,
    #[command(flatten)]
    pub finetune: FineTuneArgs,
    /// Continue the run in this directory from its last complete epoch.
    #[arg(long, value_name = "DIR", conflicts_with_all = [
        "net", "lr", "batch_size", "resize", "seed", "out", "precision", "memory_format", "optimizer", "momentum",
        "nesterov", "weight_decay", "lr_schedule", "warmup_epochs", "label_smoothing", "augment", "normalize",
        "sync_bn", "pretrained", "pretrained_key", "freeze_backbone", "head_lr_scale", "clip_grad_norm", "accum_steps", "vertical_flip", "color_jitter", "auto_augment", "ra_magnitude", "augmix_severity", "mixup_alpha", "cutmix_alpha", "train_crop_size", "train_crop_scale", "train_crop_ratio", "val_resize_size", "val_crop_size", "model_ema", "model_ema_decay", "model_ema_steps", "random_erase",
    ])]
    pub resume: Option<PathBuf>,
    #[command(flatten)]
    pub speed: SpeedArgs,
}

/// An automatic augmentation policy, as torchvision's reference recipe names it.
#[derive(clap::Args)]
pub struct AutoAugmentArgs {
    /// Augment each training image with one of torchvision's automatic policies, after the
    /// flips: ra (RandAugment, 2 operations), ta_wide (TrivialAugmentWide), augmix (AugMix), or
    /// AutoAugment's learned policy for imagenet, cifar10 or svhn.
    #[arg(long, value_name = "POLICY", value_parser = ["ra", "ta_wide", "augmix", "imagenet", "cifar10", "svhn"])]
    pub auto_augment: Option<String>,
    /// RandAugment's magnitude, 0 to 30.
    #[arg(long, default_value_t = crate::data::RA_MAGNITUDE as u64, requires = "auto_augment",
          value_parser = clap::value_parser!(u64).range(0..=30))]
    pub ra_magnitude: u64,
    /// AugMix's severity, 1 to 10.
    #[arg(long, default_value_t = crate::data::AUGMIX_SEVERITY as u64, requires = "auto_augment",
          value_parser = clap::value_parser!(u64).range(1..=10))]
    pub augmix_severity: u64,
}

impl AutoAugmentArgs {
    /// The policy asked for, if any.
    pub fn policy(&self) -> Result<Option<crate::data::AutoAugment>, String> {
        let Some(name) = &self.auto_augment else { return Ok(None) };
        crate::data::AutoAugment::parse(name, self.ra_magnitude as usize, self.augmix_severity as usize).map(Some)
    }
}

/// Fine-tuning from pretrained weights, as d2l's computer-vision chapter does it.
#[derive(clap::Args)]
pub struct FineTuneArgs {
    /// Start from these weights: a run directory, or a weight file (torchvision's `.pth` as
    /// published, any `torch.save`d state dict, safetensors). Every layer but the classifier
    /// loads; a new classifier is made for the data set's classes. Runs of torchvision's
    /// networks from a file use ImageNet's normalisation unless --normalize says otherwise.
    #[arg(long, value_name = "RUN_OR_FILE")]
    pub pretrained: Option<PathBuf>,
    /// The state dict's key inside a PyTorch checkpoint file (`model`, `state_dict`, ...).
    #[arg(long, value_name = "KEY", requires = "pretrained")]
    pub pretrained_key: Option<String>,
    /// Train the new classifier alone: the rest keeps its weights and runs as in evaluation
    /// (batch norm on its running statistics, no dropout).
    #[arg(long, requires = "pretrained")]
    pub freeze_backbone: bool,
    /// The new classifier's learning rate as a multiple of --lr (d2l: 10), in a parameter
    /// group of its own.
    #[arg(long, value_name = "K", allow_negative_numbers = true, requires = "pretrained")]
    pub head_lr_scale: Option<f64>,
}

/// Data-parallel training (see `convnets::dist`).
#[derive(clap::Args)]
pub struct DistArgs {
    /// Train with N processes on this machine (Gloo on the CPU), each on 1/N of every batch;
    /// --batch-size stays the global batch. Under torchrun, Slurm or with RANK, WORLD_SIZE,
    /// MASTER_ADDR and MASTER_PORT set, convnets joins that run by itself instead.
    #[arg(long, allow_negative_numbers = true)]
    pub nproc: Option<i64>,
    /// Batch norm with the statistics of the whole global batch (PyTorch's SyncBatchNorm); by
    /// default each process normalises with its own share, as DDP does.
    #[arg(long)]
    pub sync_bn: bool,
    /// Seconds a process waits for the others (to join, or in a collective) before it gives up
    /// with an error.
    #[arg(long, default_value_t = 300, allow_negative_numbers = true)]
    pub dist_timeout: i64,
}

/// The training recipe (the defaults are d2l's: plain SGD at a constant rate).
#[derive(clap::Args)]
pub struct RecipeArgs {
    /// sgd (d2l) or adamw.
    #[arg(long)]
    pub optimizer: Option<train::OptimizerName>,
    /// SGD's momentum, e.g. 0.9 (default 0).
    #[arg(long, allow_negative_numbers = true)]
    pub momentum: Option<f64>,
    /// Nesterov momentum (with --momentum).
    #[arg(long)]
    pub nesterov: bool,
    /// Weight decay: an L2 penalty for SGD, decoupled for AdamW (default 0).
    #[arg(long, allow_negative_numbers = true)]
    pub weight_decay: Option<f64>,
    /// constant (d2l), step (/10 at 1/2 and 3/4 of the epochs), cosine or onecycle.
    #[arg(long)]
    pub lr_schedule: Option<train::Schedule>,
    /// Epochs of linear warm-up before the schedule (default 0).
    #[arg(long)]
    pub warmup_epochs: Option<usize>,
    /// Label smoothing of the cross-entropy loss, e.g. 0.1 (default 0).
    #[arg(long, allow_negative_numbers = true)]
    pub label_smoothing: Option<f64>,
    /// Scale the gradients down to a total 2-norm of at most N before each update
    /// (`torch.nn.utils.clip_grad_norm_`; default: no clipping).
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub clip_grad_norm: Option<f64>,
    /// Add up the gradients of K batches of --batch-size before each update: the update of one
    /// K-times batch, in the memory of one (batch norm still sees each batch alone).
    #[arg(long, value_name = "K", allow_negative_numbers = true)]
    pub accum_steps: Option<i64>,
    /// MixUp each training batch with itself rolled by one, lam ~ Beta(A, A), labels mixed
    /// alike (torchvision's recipe: 0.2; default 0, none).
    #[arg(long, value_name = "A", allow_negative_numbers = true)]
    pub mixup_alpha: Option<f64>,
    /// CutMix likewise (torchvision's recipe: 1.0); with --mixup-alpha, one of the two per batch.
    #[arg(long, value_name = "A", allow_negative_numbers = true)]
    pub cutmix_alpha: Option<f64>,
    /// Keep an exponential moving average of the weights, evaluated beside them every epoch
    /// (`export --ema` writes it).
    #[arg(long)]
    pub model_ema: bool,
    /// The average's decay per update, before torchvision's adjustment for batch size and
    /// epochs (default 0.99998).
    #[arg(long, value_name = "D", allow_negative_numbers = true, requires = "model_ema")]
    pub model_ema_decay: Option<f64>,
    /// Batches between two updates of the average (default 32).
    #[arg(long, value_name = "N", requires = "model_ema")]
    pub model_ema_steps: Option<usize>,
}

impl RecipeArgs {
    pub fn recipe(&self) -> train::Recipe {
        let d2l = train::Recipe::default();
        train::Recipe {
            optimizer: self.optimizer.unwrap_or(d2l.optimizer),
            momentum: self.momentum.unwrap_or(d2l.momentum),
            nesterov: self.nesterov,
            weight_decay: self.weight_decay.unwrap_or(d2l.weight_decay),
            lr_schedule: self.lr_schedule.unwrap_or(d2l.lr_schedule),
            warmup_epochs: self.warmup_epochs.unwrap_or(d2l.warmup_epochs),
            label_smoothing: self.label_smoothing.unwrap_or(d2l.label_smoothing),
            clip_grad_norm: self.clip_grad_norm,
            // Validated with the rest of the recipe (0 or less: a clear error).
            accum_steps: self.accum_steps.map_or(d2l.accum_steps, |k| k.max(0) as usize),
            mixup_alpha: self.mixup_alpha.unwrap_or(d2l.mixup_alpha),
            cutmix_alpha: self.cutmix_alpha.unwrap_or(d2l.cutmix_alpha),
            model_ema: self.model_ema,
            model_ema_decay: self.model_ema_decay.unwrap_or(d2l.model_ema_decay),
            model_ema_steps: self.model_ema_steps.unwrap_or(d2l.model_ema_steps),
        }
    }
}

/// How the arithmetic runs (the defaults compute exactly as d2l does).
#[derive(clap::Args)]
pub struct SpeedArgs {
    /// fp32 (d2l); bf16: autocast-style mixed precision (bfloat16 convolutions and matrix
    /// products, float32 weights, gradients and loss); or auto: bf16 on a CPU with bfloat16
    /// arithmetic (AVX512-BF16 or AMX) for the networks it trains faster there (all but
    /// lenet-bn-scratch), fp32 otherwise (and on GPUs, for now).
    #[arg(long, value_name = "fp32|bf16|auto")]
    pub precision: Option<PrecisionChoice>,
    /// Layout of images and convolution weights: contiguous (NCHW), channels-last (NHWC), or
    /// auto: channels-last where it speeds the network up on the device (all but LeNet on a
    /// CPU; on a GPU, not DenseNet either).
    #[arg(long, default_value = "auto")]
    pub memory_format: MemoryFormat,
    /// On CUDA, replay each training and evaluation step from a captured CUDA graph (fewer
    /// launches; experimental: off until a GPU soak passes with it, see issue 11).
    #[arg(long)]
    pub cuda_graphs: bool,
    /// Run every step eagerly: the default; kept so that older scripts still run.
    #[arg(long, hide = true, conflicts_with = "cuda_graphs")]
    pub no_graphs: bool,
    /// CPU convolutions by the shim's own kernels (training's weight gradients, Winograd's
    /// algorithm for 3x3 and 5x5 layers) or oneDNN's: auto (the shim's where they were measured
    /// faster on this CPU's vector width), shim or onednn.
    #[arg(long, default_value = "auto")]
    pub cpu_kernels: CpuKernels,
}

impl SpeedArgs {
    pub fn bench_config(&self, device: Device, batch_size: Option<usize>, steps: usize, warmup: usize) -> BenchConfig {
        BenchConfig {
            device,
            batch_size,
            steps,
            warmup,
            precision: self.precision.unwrap_or_default(),
            memory_format: self.memory_format,
            cuda_graphs: self.cuda_graphs,
        }
    }

    pub fn apply(&self, net: &mut Network) -> anyhow::Result<()> {
        self.apply_cpu_kernels();
        net.set_channels_last(net.info.uses_channels_last(self.memory_format, net.device()))?;
        net.set_cuda_graphs(self.cuda_graphs);
        Ok(())
    }

    /// Sets `--cpu-kernels` for the whole process.
    pub fn apply_cpu_kernels(&self) {
        let policy = match self.cpu_kernels {
            CpuKernels::Auto => KernelPolicy::Auto,
            CpuKernels::Shim => KernelPolicy::Always,
            CpuKernels::Onednn => KernelPolicy::Never,
        };
        crate::nn::set_weight_grad_kernel(policy);
        crate::nn::set_winograd_kernel(policy);
    }
}

#[derive(Subcommand)]
pub enum DataCommand {
    /// Download the official files (md5-checked) into the user cache or --dir.
    Download {
        /// fashion-mnist (default), cifar10 or cifar100.
        #[arg(default_value = "fashion-mnist")]
        dataset: data::Format,
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Counts, class balance and pixel mean/std of the data in use.
    Info {
        #[command(flatten)]
        data: DataArgs,
    },
    /// Times the training pipeline alone: decoding, the data set's augmentation at --side
    /// (an image folder: RandomResizedCrop and flip), batching and Normalize, over the training
    /// set. Reports images per second of wall time and per second of CPU time (per core).
    Bench {
        #[command(flatten)]
        data: DataArgs,
        /// Side of the network input the images are cropped or resized to.
        #[arg(long, default_value_t = 224)]
        side: usize,
        #[arg(long, default_value_t = 32)]
        batch_size: usize,
        /// Passes over the training set (each with new random crops).
        #[arg(long, default_value_t = 1)]
        epochs: usize,
        /// An automatic augmentation policy after the crop and flip, as `train` applies it.
        #[command(flatten)]
        auto_augment: AutoAugmentArgs,
        /// Random erasing with probability P after normalisation, as `train` applies it.
        #[arg(long, value_name = "P", default_value_t = 0.0)]
        random_erase: f64,
    },
}
