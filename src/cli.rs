//! The `convnets` command line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use tch::Device;

use crate::accel::{MemoryFormat, Precision};
use crate::bench::BenchConfig;
use crate::data::{self, Dataset};
use crate::dist::{self, launch};
use crate::models::{self, MODELS, NetConfig, Network};
use crate::summary;
use crate::train::{self, TrainConfig};
use crate::{UsageError, usage};

#[derive(Parser)]
#[command(name = "convnets", version, about = "The modern CNNs of Dive into Deep Learning, in Rust on libtorch")]
struct Cli {
    #[command(subcommand)]
    command: Command,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum SummaryStyle {
    /// torchsummary 1.5.1's table.
    Torchsummary,
    /// A torchinfo-like nested tree with mult-adds.
    Tree,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ExportFormat {
    /// The eval-mode network as an ONNX model (opset 17, dynamic batch).
    Onnx,
    /// The weights under PyTorch's state_dict names.
    Safetensors,
}

#[derive(Subcommand)]
enum Command {
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
    /// Train a network on Fashion-MNIST as d2l's train_ch6 does (d2l's settings by default).
    Train(Box<TrainArgs>),
    /// Test accuracy, per-class accuracy and confusion matrix of a trained run.
    Eval {
        /// A run directory or its checkpoint.safetensors.
        run: PathBuf,
        #[command(flatten)]
        data: DataArgs,
        #[arg(long, default_value = "auto")]
        device: String,
    },
    /// Classify test images (d2l's predict_ch3) or your own PNG images.
    Predict {
        /// A run directory or its checkpoint.safetensors.
        run: PathBuf,
        /// How many test images to show.
        #[arg(long, default_value_t = 18)]
        count: usize,
        /// Where to write the picture of images with true and predicted labels.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Classify these grayscale PNG images instead (resized to the network's input).
        #[arg(long, num_args = 1..)]
        image: Vec<PathBuf>,
        #[command(flatten)]
        data: DataArgs,
        #[arg(long, default_value = "auto")]
        device: String,
    },
    /// Load a PyTorch state_dict (.safetensors, .pt or .pth) into a network, as a new run directory.
    Import {
        /// The weights, under the key names d2l's PyTorch code gives them (`0.weight`, ...).
        weights: PathBuf,
        #[arg(long)]
        net: String,
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
    /// Fashion-MNIST: download the official files or describe the data in use.
    Data {
        #[command(subcommand)]
        command: DataCommand,
    },
}

/// The network's input channels and classes, for data sets other than d2l's.
#[derive(clap::Args)]
struct NetShapeArgs {
    /// Input channels (3 for colour images); --input's C sets it too.
    #[arg(long, allow_negative_numbers = true)]
    in_channels: Option<i64>,
    /// Number of classes of the last layer.
    #[arg(long, allow_negative_numbers = true)]
    classes: Option<i64>,
}

#[derive(clap::Args)]
struct DataArgs {
    /// Directory with a data set: the four (Fashion-)MNIST IDX files (.gz or not), or CIFAR-10's
    /// or CIFAR-100's binary files. Default: $CONVNETS_DATA, then the user cache
    /// (~/.cache/convnets/fashion-mnist), then the embedded Fashion-MNIST sample.
    #[arg(long = "data", value_name = "DIR")]
    dir: Option<PathBuf>,
    /// fashion-mnist, mnist, cifar10, cifar100 or folder (default: what the directory holds;
    /// IDX files are taken for Fashion-MNIST, a train/ folder of class folders for an image folder).
    #[arg(long)]
    dataset: Option<data::Format>,
    /// An image folder without val/: hold this fraction of train/ out for evaluation (the same
    /// images every time).
    #[arg(long, allow_negative_numbers = true)]
    val_split: Option<f64>,
    /// Leave unreadable images of an image folder out (each is decoded once to check), listing
    /// them, instead of stopping at the first.
    #[arg(long)]
    skip_bad_images: bool,
}

#[derive(clap::Args)]
struct TrainArgs {
    /// Network name (see `convnets models`); not needed with --resume.
    net: Option<String>,
    // Numbers are parsed signed so that a negative value gets our message, not a parse error.
    #[arg(long, allow_negative_numbers = true)]
    lr: Option<f64>,
    #[arg(long, allow_negative_numbers = true)]
    epochs: Option<i64>,
    #[arg(long, allow_negative_numbers = true)]
    batch_size: Option<i64>,
    /// Resize images to NxN (d2l: 224 for AlexNet, VGG, NiN; 96 for GoogLeNet, ResNet, DenseNet).
    #[arg(long, allow_negative_numbers = true)]
    resize: Option<i64>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// auto (a GPU when there is one), cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
    #[command(flatten)]
    data: DataArgs,
    /// Run directory (default: runs/<net>-<date>).
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    recipe: RecipeArgs,
    /// Training-time augmentation: default (the data set's: for CIFAR, RandomCrop(32, padding=4)
    /// and RandomHorizontalFlip; none for the MNISTs, as d2l) or none.
    #[arg(long, value_name = "default|none", value_parser = ["default", "none"])]
    augment: Option<String>,
    /// Normalise each input channel: auto (mean and standard deviation of the training images,
    /// computed once and cached beside the data) or none (d2l).
    #[arg(long, value_name = "auto|none", value_parser = ["auto", "none"])]
    normalize: Option<String>,
    /// Serve a live view of the run (chart, progress, configuration) at ADDR: 127.0.0.1 and a
    /// free port by default (printed at start); other interfaces only when named.
    #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = "127.0.0.1")]
    serve: Option<String>,
    #[command(flatten)]
    dist: DistArgs,
    /// Continue the run in this directory from its last complete epoch.
    #[arg(long, value_name = "DIR", conflicts_with_all = [
        "net", "lr", "batch_size", "resize", "seed", "out", "precision", "memory_format", "optimizer", "momentum",
        "nesterov", "weight_decay", "lr_schedule", "warmup_epochs", "label_smoothing", "augment", "normalize",
        "sync_bn",
    ])]
    resume: Option<PathBuf>,
    #[command(flatten)]
    speed: SpeedArgs,
}

/// Data-parallel training (see `convnets::dist`).
#[derive(clap::Args)]
struct DistArgs {
    /// Train with N processes on this machine (Gloo on the CPU), each on 1/N of every batch;
    /// --batch-size stays the global batch. Under torchrun, Slurm or with RANK, WORLD_SIZE,
    /// MASTER_ADDR and MASTER_PORT set, convnets joins that run by itself instead.
    #[arg(long, allow_negative_numbers = true)]
    nproc: Option<i64>,
    /// Batch norm with the statistics of the whole global batch (PyTorch's SyncBatchNorm); by
    /// default each process normalises with its own share, as DDP does.
    #[arg(long)]
    sync_bn: bool,
    /// Seconds a process waits for the others (to join, or in a collective) before it gives up
    /// with an error.
    #[arg(long, default_value_t = 300, allow_negative_numbers = true)]
    dist_timeout: i64,
}

/// The training recipe (the defaults are d2l's: plain SGD at a constant rate).
#[derive(clap::Args)]
struct RecipeArgs {
    /// sgd (d2l) or adamw.
    #[arg(long)]
    optimizer: Option<train::OptimizerName>,
    /// SGD's momentum, e.g. 0.9 (default 0).
    #[arg(long, allow_negative_numbers = true)]
    momentum: Option<f64>,
    /// Nesterov momentum (with --momentum).
    #[arg(long)]
    nesterov: bool,
    /// Weight decay: an L2 penalty for SGD, decoupled for AdamW (default 0).
    #[arg(long, allow_negative_numbers = true)]
    weight_decay: Option<f64>,
    /// constant (d2l), step (/10 at 1/2 and 3/4 of the epochs), cosine or onecycle.
    #[arg(long)]
    lr_schedule: Option<train::Schedule>,
    /// Epochs of linear warm-up before the schedule (default 0).
    #[arg(long)]
    warmup_epochs: Option<usize>,
    /// Label smoothing of the cross-entropy loss, e.g. 0.1 (default 0).
    #[arg(long, allow_negative_numbers = true)]
    label_smoothing: Option<f64>,
}

impl RecipeArgs {
    fn recipe(&self) -> train::Recipe {
        let d2l = train::Recipe::default();
        train::Recipe {
            optimizer: self.optimizer.unwrap_or(d2l.optimizer),
            momentum: self.momentum.unwrap_or(d2l.momentum),
            nesterov: self.nesterov,
            weight_decay: self.weight_decay.unwrap_or(d2l.weight_decay),
            lr_schedule: self.lr_schedule.unwrap_or(d2l.lr_schedule),
            warmup_epochs: self.warmup_epochs.unwrap_or(d2l.warmup_epochs),
            label_smoothing: self.label_smoothing.unwrap_or(d2l.label_smoothing),
        }
    }
}

/// How the arithmetic runs (the defaults compute exactly as d2l does).
#[derive(clap::Args)]
struct SpeedArgs {
    /// fp32 (d2l), or bf16: autocast-style mixed precision (bfloat16 convolutions and matrix
    /// products, float32 weights, gradients and loss).
    #[arg(long)]
    precision: Option<Precision>,
    /// Layout of images and convolution weights: contiguous (NCHW), channels-last (NHWC), or
    /// auto: channels-last where it speeds the network up on the device (all but LeNet on a
    /// CPU; on a GPU, not DenseNet either).
    #[arg(long, default_value = "auto")]
    memory_format: MemoryFormat,
    /// On CUDA, replay each training and evaluation step from a captured CUDA graph (fewer
    /// launches; experimental: off until a GPU soak passes with it, see issue 11).
    #[arg(long)]
    cuda_graphs: bool,
    /// Run every step eagerly: the default; kept so that older scripts still run.
    #[arg(long, hide = true, conflicts_with = "cuda_graphs")]
    no_graphs: bool,
}

impl SpeedArgs {
    fn bench_config(&self, device: Device, batch_size: Option<usize>, steps: usize, warmup: usize) -> BenchConfig {
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

    fn apply(&self, net: &mut Network) -> anyhow::Result<()> {
        net.set_channels_last(self.memory_format.channels_last(net.device(), net.info))?;
        net.set_cuda_graphs(self.cuda_graphs);
        Ok(())
    }
}

#[derive(Subcommand)]
enum DataCommand {
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
    },
}

/// Runs the command line; returns the process exit code.
pub fn main() -> ExitCode {
    keep_freed_memory();
    // Every libtorch call on the paths a command takes is fallible, but a panic raised with one
    // of libtorch's errors (inside tch, or a call missed) must still end as one line, not as a
    // panic report with a C++ stack: the hook stays quiet for those, and `run_guarded` turns
    // them into errors. Any other panic is a bug and is reported as usual.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if libtorch_panic(info.payload()).is_none() {
            default_hook(info);
        }
    }));
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if e.use_stderr() => {
            // One line: clap's first, which names the argument and the problem.
            let text = e.render().to_string();
            eprintln!("{} (see --help)", text.lines().next().unwrap_or("error: invalid arguments"));
            return ExitCode::from(2);
        }
        Err(e) => {
            let _ = e.print(); // --help, --version
            return ExitCode::SUCCESS;
        }
    };
    match run_guarded(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", crate::error_line(&e));
            ExitCode::from(if e.downcast_ref::<UsageError>().is_some() { 2 } else { 1 })
        }
    }
}

/// Asks glibc's allocator to keep freed blocks of up to 256 MiB for reuse instead of returning
/// them to the kernel at once: every batch allocates and frees the same few megabytes (decoded
/// images, crops, the float input), and fresh pages from the kernel cost a page fault and a
/// zeroing each, an eighth of an image folder's pipeline. Peak memory is unchanged.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        unsafe extern "C" {
            fn mallopt(param: i32, value: i32) -> i32;
        }
        const M_TRIM_THRESHOLD: i32 = -1;
        const M_MMAP_THRESHOLD: i32 = -3;
        // SAFETY: mallopt only sets allocator parameters; called before any thread starts.
        unsafe {
            mallopt(M_MMAP_THRESHOLD, 256 << 20);
            mallopt(M_TRIM_THRESHOLD, 512 << 20);
        }
    }
}

/// [`run`], with a panic that carries a libtorch error turned into that error.
fn run_guarded(command: Command) -> anyhow::Result<()> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(command))) {
        Ok(result) => result,
        Err(payload) => match libtorch_panic(payload.as_ref()) {
            Some(message) => Err(anyhow::anyhow!("libtorch: {}", crate::libtorch_message(&message))),
            None => std::panic::resume_unwind(payload),
        },
    }
}

/// libtorch's message, when a panic's payload is tch unwrapping one of its errors.
fn libtorch_panic(payload: &(dyn std::any::Any + Send)) -> Option<String> {
    let text =
        payload.downcast_ref::<String>().map(String::as_str).or_else(|| payload.downcast_ref::<&str>().copied())?;
    // tch's `unwrap()`s read: called `Result::unwrap()` on an `Err` value: Torch("...")
    let start = text.find("Torch(\"")? + "Torch(\"".len();
    let message = text[start..].trim_end_matches(')').trim_end_matches('"');
    // Debug formatting escaped the message's line breaks and quotes.
    Some(message.replace("\\n", "\n").replace("\\\"", "\""))
}

/// Builds `name` for `input` (its channels set the network's) and checks the input fits.
fn network_for(name: &str, input: Option<InputShape>, shape: &NetShapeArgs) -> anyhow::Result<(Network, [i64; 3])> {
    let info = models::find(name).map_err(|e| usage(e.to_string()))?;
    let channels = match (input.and_then(|i| i.channels), shape.in_channels) {
        (Some(a), Some(b)) if a != b => {
            return Err(usage(format!("--input has {a} channels but --in-channels says {b}")));
        }
        (a, b) => a.or(b).unwrap_or(1),
    };
    let classes = shape.classes.unwrap_or(NetConfig::default().num_classes);
    for (flag, value) in [("--in-channels", channels), ("--classes", classes)] {
        if value < 1 {
            return Err(usage(format!("{flag} must be at least 1, got {value}")));
        }
    }
    let net = Network::from_info(info, NetConfig { in_channels: channels, num_classes: classes }, Device::Cpu);
    let shape = match input {
        Some(i) => [channels, i.height, i.width],
        None => net.default_input(),
    };
    net.check_input(&shape).map_err(|e| usage(e.to_string()))?;
    Ok((net, shape))
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Models { json } => {
            if !json {
                println!("{:<18} {:<11} {:>12}  description", "name", "input", "params");
            }
            for info in MODELS {
                let net = Network::from_info(info, NetConfig::default(), Device::Cpu);
                let [c, h, w] = net.default_input();
                let input = format!("{c}x{h}x{w}");
                if json {
                    let book = info.book.map(|b| {
                        serde_json::json!({
                            "loss": b.loss,
                            "train_acc": b.train_acc,
                            "test_acc": b.test_acc,
                            "test_acc_band": [b.test_acc_band.0, b.test_acc_band.1],
                        })
                    });
                    let line = serde_json::json!({
                        "name": info.name,
                        "input": input,
                        "params": net.num_parameters(),
                        "batch_size": info.batch_size,
                        "lr": info.lr,
                        "epochs": info.epochs,
                        "book": book,
                    });
                    println!("{line}");
                    continue;
                }
                println!(
                    "{:<18} {:<11} {:>12}  {}",
                    info.name,
                    input,
                    summary::thousands(net.num_parameters()),
                    info.description
                );
            }
        }
        Command::Summary { net, input, batch_size, style, shape } => {
            let (net, shape) = network_for(&net, input, &shape)?;
            if batch_size.is_some_and(|b| b == 0 || b < -1) {
                return Err(usage("--batch-size must be -1 (unspecified) or at least 1"));
            }
            let records = net.trace(&shape)?;
            let text = match style {
                SummaryStyle::Torchsummary => summary::torchsummary(&records, &shape, batch_size.unwrap_or(-1)),
                SummaryStyle::Tree => {
                    let batch = batch_size.filter(|&b| b > 0).unwrap_or(net.info.batch_size);
                    summary::torchinfo(&records, &shape, batch)
                }
            };
            print!("{text}");
        }
        Command::Shapes { net, input, shape } => {
            let (net, shape) = network_for(&net, input, &shape)?;
            print!("{}", summary::shapes(&net.trace(&shape)?));
        }
        Command::Train(args) => run_train(*args)?,
        Command::Eval { run, data, device } => {
            let device = train::parse_device(&device).map_err(usage)?;
            let checkpoint = train::load_checkpoint(&run, device)?;
            let config = &checkpoint.state.config;
            let data = load_data(&data, config.val_split, true)?;
            config.check_dataset(&data).map_err(usage)?;
            let evaluation = train::evaluate(&checkpoint.net, &data.test, config.batch_size, &config.eval_prep())?;
            println!("{} after {} epochs, {} test images", config.net, checkpoint.state.epoch, data.test.len());
            print!("{}", evaluation.report(&config.classes));
        }
        Command::Predict { run, count, out, image, data, device } => {
            let device = train::parse_device(&device).map_err(usage)?;
            let checkpoint = train::load_checkpoint(&run, device)?;
            if image.is_empty() {
                let data = load_data(&data, checkpoint.state.config.val_split, true)?;
                checkpoint.state.config.check_dataset(&data).map_err(usage)?;
                predict_test(&checkpoint, &data, count, out.as_deref())?;
            } else {
                predict_files(&checkpoint, &image)?;
            }
        }
        Command::Import { weights, net, out, allow_partial } => {
            let config = TrainConfig::d2l(&net).map_err(|e| usage(e.to_string()))?;
            if out.join(train::CHECKPOINT_FILE).exists() {
                return Err(usage(format!("{} already holds a run; choose another --out", out.display())));
            }
            let network = Network::new(&net, config.net_config(), Device::Cpu)?;
            let tensors = crate::weights::read_tensors(&weights)?;
            let report = crate::weights::load_state_dict(&network.vs, &net, &tensors, allow_partial)?;
            for problem in &report.skipped {
                eprintln!("skipped: {problem}");
            }
            std::fs::create_dir_all(&out).map_err(|e| anyhow::anyhow!("cannot create {}: {e}", out.display()))?;
            let config_path = out.join("config.json");
            crate::weights::write_atomic(&config_path, &serde_json::to_vec_pretty(&config)?)?;
            let state = train::CheckpointState::new(config, 0, train::History::default());
            train::save_checkpoint(&out, &network, None, &state)?;
            println!("loaded {} tensors into {net}; run directory {}", report.loaded.len(), out.display());
        }
        Command::Export { run, out, format } => {
            let mut checkpoint = train::load_checkpoint(&run, Device::Cpu)?;
            let onnx = format.unwrap_or(if out.extension().is_some_and(|e| e == "onnx") {
                ExportFormat::Onnx
            } else {
                ExportFormat::Safetensors
            }) == ExportFormat::Onnx;
            if onnx {
                // The trace runs in float32, laid out NCHW, whatever the run trained with.
                checkpoint.net.set_precision(Precision::Fp32)?;
                checkpoint.net.set_channels_last(false)?;
                let card = crate::onnx::ModelCard::of_run(&checkpoint.state);
                let bytes = crate::onnx::export(&checkpoint.net, &card)?;
                crate::weights::write_atomic(&out, &bytes)
                    .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", out.display()))?;
                let [c, h, w] = card.input;
                println!(
                    "{} (ONNX opset {}, input \"{}\" batch x {c} x {h} x {w}, output \"{}\") written to {}",
                    checkpoint.state.config.net,
                    crate::onnx::OPSET,
                    crate::onnx::INPUT,
                    crate::onnx::OUTPUT,
                    out.display()
                );
                return Ok(());
            }
            let metadata = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
            let named = crate::weights::state_dict(&checkpoint.net.vs);
            let bytes = crate::weights::safetensors_bytes(&named, Some(metadata))?;
            crate::weights::write_atomic(&out, &bytes)
                .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", out.display()))?;
            println!("{} tensors of {} written to {}", named.len(), checkpoint.state.config.net, out.display());
        }
        Command::Parity { file, net } => {
            models::find(&net).map_err(|e| usage(e.to_string()))?;
            let report = crate::parity::run(&file, &net)?;
            println!("{report}");
            if !report.passed() {
                anyhow::bail!("{net} differs from PyTorch beyond tolerance");
            }
        }
        Command::Bench { nets, device, batch_size, steps, warmup, json, speed, data } => {
            let device = train::parse_device(&device).map_err(usage)?;
            if steps == 0 || batch_size == Some(0) {
                return Err(usage("--steps and --batch-size must be at least 1"));
            }
            let nets: Vec<String> = if nets.is_empty() {
                MODELS.iter().filter(|m| m.book.is_some()).map(|m| m.name.to_string()).collect()
            } else {
                nets
            };
            for net in &nets {
                models::find(net).map_err(|e| usage(e.to_string()))?;
            }
            let data = load_data(&data, None, true)?;
            let config = speed.bench_config(device, batch_size, steps, warmup);
            let mut results = Vec::new();
            for net in &nets {
                let result = crate::bench::bench(net, &config, &data)?;
                if json {
                    println!("{}", serde_json::to_string(&result)?);
                } else {
                    eprintln!("{net}: {:.1} train examples/s", result.train_examples_per_s);
                }
                results.push(result);
            }
            if !json {
                print!("{}", crate::bench::table(&results));
            }
        }
        Command::Profile { net, device, batch_size, passes, speed } => {
            let device = train::parse_device(&device).map_err(usage)?;
            if passes == 0 || batch_size == Some(0) {
                return Err(usage("--passes and --batch-size must be at least 1"));
            }
            models::find(&net).map_err(|e| usage(e.to_string()))?;
            let profile = crate::bench::profile(&net, &speed.bench_config(device, batch_size, passes, 1))?;
            print!("{}", crate::bench::profile_table(&profile));
        }
        Command::Serve { dir, addr } => {
            let addr = crate::live::parse_addr("--addr", addr.as_deref()).map_err(usage)?;
            let server = crate::live::serve_runs(addr, &dir)?;
            eprintln!("live view of the runs in {}: {} (Ctrl-C stops it)", dir.display(), server.url());
            loop {
                std::thread::park();
            }
        }
        Command::Data { command: DataCommand::Download { dataset, dir } } => {
            let dir = dir
                .or_else(|| data::cache_dir_of(dataset))
                .ok_or_else(|| usage("no cache directory ($HOME unset): pass --dir"))?;
            let log = |line: &str| eprintln!("{line}");
            match dataset {
                data::Format::FashionMnist => data::download(&dir, &data::mirrors(), &data::OFFICIAL_MD5, log)?,
                data::Format::Cifar10 | data::Format::Cifar100 => {
                    let cifar = if dataset == data::Format::Cifar10 { data::Cifar::Ten } else { data::Cifar::Hundred };
                    let (url, md5) = data::cifar_archive(cifar);
                    data::download_cifar(&dir, cifar, url, md5, log)?;
                }
                other => {
                    return Err(usage(format!(
                        "{} has no official download: give its folder with --data",
                        other.name()
                    )));
                }
            }
            println!("{} is in {}", dataset.name(), dir.display());
        }
        Command::Data { command: DataCommand::Bench { data, side, batch_size, epochs } } => {
            let data = load_data(&data, None, true)?;
            let mut config = TrainConfig::d2l("resnet18").map_err(|e| usage(e.to_string()))?;
            config.use_dataset(&data);
            config.resize = Some(at_least_one("--side", side as i64)?);
            // torchvision's ImageNet constants, as its reference training script uses them.
            let imagenet = data::Normalize { mean: vec![0.485, 0.456, 0.406], std: vec![0.229, 0.224, 0.225] };
            config.normalize = Some(match data.channels() {
                3 => imagenet,
                c => data::Normalize { mean: vec![0.5; c], std: vec![0.25; c] },
            });
            let batch_size = at_least_one("--batch-size", batch_size as i64)?;
            let (cpu_started, started) = (crate::bench::cpu_seconds(), std::time::Instant::now());
            let mut images = 0;
            for epoch in 0..at_least_one("--epochs", epochs as i64)? {
                let prep = config.train_prep(epoch);
                let order = data::epoch_order(data.train.len(), config.seed, epoch);
                for batch in data::batches(data.train.clone(), order, batch_size, prep.clone()) {
                    let input = batch?.images(Device::Cpu, prep.normalize.as_ref())?;
                    images += input.size()[0] as usize;
                }
            }
            let (wall, cpu) = (started.elapsed().as_secs_f64(), crate::bench::cpu_seconds() - cpu_started);
            println!(
                "{images} images to {side}x{side} in {wall:.2} s: {:.1} images/s, {:.1} images per CPU second",
                images as f64 / wall,
                images as f64 / cpu.max(1e-9)
            );
        }
        Command::Data { command: DataCommand::Info { data } } => {
            let data = load_data(&data, None, true)?;
            println!("train: {}", data::describe(&data.train, &data.classes).trim_end());
            println!("test: {}", data::describe(&data.test, &data.classes).trim_end());
        }
    }
    Ok(())
}

/// A count the user gave, which must be positive.
fn at_least_one(flag: &str, value: i64) -> anyhow::Result<usize> {
    usize::try_from(value)
        .ok()
        .filter(|&v| v >= 1)
        .ok_or_else(|| usage(format!("{flag} must be at least 1, got {value}")))
}

/// Loads the data set and says where it came from (and which images it left out). A run that
/// held out part of an image folder (`val_split`) holds out the same part again.
fn load_data(args: &DataArgs, run_val_split: Option<f64>, report: bool) -> anyhow::Result<Dataset> {
    let options =
        data::FolderOptions { val_split: args.val_split.or(run_val_split), skip_bad_images: args.skip_bad_images };
    let data = Dataset::load_with(args.dir.as_deref(), args.dataset, &options)?;
    let kind =
        if data.format == data::Format::FashionMnist { String::new() } else { format!("{} ", data.format.name()) };
    if !report {
        return Ok(data);
    }
    eprintln!("data: {kind}{}", data.source);
    if !data.skipped.is_empty() {
        eprintln!("data: left out {} unreadable image(s):", data.skipped.len());
        for why in &data.skipped {
            eprintln!("  {why}");
        }
    }
    Ok(data)
}

fn run_train(args: TrainArgs) -> anyhow::Result<()> {
    let world = dist::World::from_env()?;
    let timeout = std::time::Duration::from_secs(at_least_one("--dist-timeout", args.dist.dist_timeout)? as u64);
    if let Some(nproc) = args.dist.nproc {
        if world.is_some() {
            return Err(usage(
                "--nproc starts processes of its own: leave it out where torchrun, Slurm or RANK and WORLD_SIZE start convnets",
            ));
        }
        return launch_workers(&args, at_least_one("--nproc", nproc)?, timeout);
    }
    match &world {
        Some(world) => train_rank(args, Some(world), timeout).map_err(|e| {
            // Under --nproc every rank has the same arguments, so rank 0 alone reports a mistake
            // in them; a failure of this rank's own is always reported.
            if world.rank > 0 && std::env::var_os(launch::WORKER_VAR).is_some() && e.is::<UsageError>() {
                std::process::exit(2);
            }
            e.context(format!("rank {}", world.rank))
        }),
        None => train_rank(args, None, timeout),
    }
}

/// `--nproc N`: starts N workers on this machine and waits for them (see [`launch`]).
fn launch_workers(args: &TrainArgs, nproc: usize, timeout: std::time::Duration) -> anyhow::Result<()> {
    if train::parse_device(&args.device).map_err(usage)?.is_cuda() && args.device != "auto" {
        return Err(usage(CUDA_NOT_DISTRIBUTED));
    }
    let mut worker_args = launch::without_nproc(std::env::args_os().skip(1));
    if args.resume.is_none() && args.out.is_none() {
        // One run directory for all workers: each would otherwise name its own by its start time.
        let name = args.net.as_deref().ok_or_else(|| usage("name a network to train, or --resume DIR"))?;
        worker_args.extend(["--out".into(), default_run_dir(name).into_os_string()]);
    }
    launch::run(&launch::Launch { nproc, args: worker_args, timeout })
}

const CUDA_NOT_DISTRIBUTED: &str = "distributed training runs on the CPU (Gloo) only: its CUDA path (NCCL) has not \
     run on a GPU yet; use --device cpu";

/// `runs/<net>-<date>-<time>`.
fn default_run_dir(net: &str) -> PathBuf {
    PathBuf::from("runs").join(format!("{net}-{}", chrono::Utc::now().format("%Y%m%d-%H%M%S")))
}

/// What a rank publishes when it joins a distributed run: everything that must be the same on
/// every rank (the configuration, where training starts, the program).
fn run_description(config: &TrainConfig, start_epoch: usize) -> anyhow::Result<String> {
    // Each rank may name its own device (cuda:LOCAL_RANK): not part of the agreement.
    let config = TrainConfig { device: String::new(), ..config.clone() };
    Ok(format!(
        "convnets {}\nstarting after epoch {start_epoch}\n{}",
        env!("CARGO_PKG_VERSION"),
        serde_json::to_string_pretty(&config)?
    ))
}

/// Trains in this process: alone, or as one rank of `world`.
fn train_rank(args: TrainArgs, world: Option<&dist::World>, timeout: std::time::Duration) -> anyhow::Result<()> {
    let lead = world.is_none_or(|w| w.rank == 0);
    let device = match (train::parse_device(&args.device).map_err(usage)?, world) {
        // Gloo is the only backend yet: `auto` means the CPU in a distributed run.
        (d, Some(_)) if d.is_cuda() && args.device != "auto" => return Err(usage(CUDA_NOT_DISTRIBUTED)),
        (_, Some(_)) => Device::Cpu,
        (d, None) => d,
    };
    if args.dist.sync_bn && world.is_none() {
        eprintln!("note: --sync-bn only changes a run of several processes (--nproc)");
    }
    let resumed = args.resume.as_deref().map(|dir| train::load_checkpoint(dir, device)).transpose()?;
    // The data set decides the network's input channels and classes (a resumed run's, which
    // part of an image folder is held out).
    let data = load_data(&args.data, resumed.as_ref().and_then(|c| c.state.config.val_split), lead)?;
    let (net, config, start, dir) = match (resumed, &args.resume) {
        (Some(checkpoint), Some(dir)) => {
            let mut config = checkpoint.state.config.clone();
            if let Some(epochs) = args.epochs {
                config.epochs = at_least_one("--epochs", epochs)?;
            }
            config.device = train::device_name(device);
            if checkpoint.state.epoch >= config.epochs {
                return Err(usage(format!(
                    "{} already completed all {} epochs; pass a larger --epochs to continue it",
                    dir.display(),
                    config.epochs
                )));
            }
            config.check_dataset(&data).map_err(usage)?;
            if lead {
                eprintln!("resuming {} after epoch {}", dir.display(), checkpoint.state.epoch);
            }
            // Precision and layout come from the run's configuration (load_checkpoint).
            let mut net = checkpoint.net;
            net.set_cuda_graphs(args.speed.cuda_graphs);
            (net, config, Some(checkpoint.state), dir.clone())
        }
        _ => {
            let name = args
                .net
                .as_deref()
                .ok_or_else(|| usage("name a network to train (see `convnets models`), or --resume DIR"))?;
            let mut config = TrainConfig::d2l(name).map_err(|e| usage(e.to_string()))?;
            config.use_dataset(&data);
            config.lr = args.lr.unwrap_or(config.lr);
            if let Some(epochs) = args.epochs {
                config.epochs = at_least_one("--epochs", epochs)?;
            }
            if let Some(batch_size) = args.batch_size {
                config.batch_size = at_least_one("--batch-size", batch_size)?;
            }
            if let Some(size) = args.resize {
                config.resize = Some(at_least_one("--resize", size)?);
            }
            config.seed = args.seed;
            config.device = train::device_name(device);
            config.precision = args.speed.precision.unwrap_or_default();
            config.memory_format = args.speed.memory_format;
            config.recipe = args.recipe.recipe();
            config.val_split = args.data.val_split;
            config.sync_bn = args.dist.sync_bn;
            if args.augment.as_deref() == Some("none") {
                config.augment = false;
            }
            if args.normalize.as_deref() == Some("auto") {
                let stats = data::normalization(&data, &config.eval_prep())?;
                if lead {
                    eprintln!("normalize: mean {:?}, std {:?}", stats.mean, stats.std);
                }
                config.normalize = Some(stats);
            }
            let dir = args.out.clone().unwrap_or_else(|| default_run_dir(name));
            if dir.join(train::CHECKPOINT_FILE).exists() {
                return Err(usage(format!(
                    "{} already holds a run; continue it with --resume {0} or choose another --out",
                    dir.display()
                )));
            }
            tch::manual_seed(config.seed as i64);
            let mut net = Network::new(name, config.net_config(), device)?;
            net.set_precision(config.precision)?;
            args.speed.apply(&mut net)?;
            (net, config, None, dir)
        }
    };
    let mut net = net;
    if let Some(world) = world {
        let description = run_description(&config, start.as_ref().map_or(0, |s| s.epoch))?;
        let group = world.join(&description, timeout)?;
        net.set_data_parallel(Some(std::sync::Arc::new(dist::DataParallel::new(group, config.sync_bn))));
    }
    // train() checks the hyper-parameters and the resize before it writes anything.
    let live = match args.serve.as_ref().filter(|_| lead) {
        Some(addr) => {
            let board = crate::live::Board::default();
            let server = crate::live::serve(crate::live::parse_addr("--serve", Some(addr)).map_err(usage)?, &board)?;
            eprintln!("live view: {}", server.url());
            Some(board)
        }
        None => None,
    };
    let run = train::Run { config, data: &data, dir: dir.clone(), verbose: true, live: live.clone() };
    let mut result = train::train(&run, &net, start);
    if let (Err(e), Some(replicas)) = (&result, net.data_parallel()) {
        if !dist::is_lost_contact(e) {
            let _ = replicas.group.report_failure(); // best effort: the error itself is reported below
        } else if let Some(first) = replicas.group.first_failure() {
            result = result.map_err(|e| e.context(format!("after rank {first} failed")));
        }
    }
    if let Some(board) = &live {
        if let Err(e) = &result {
            board.update(|view| view.status = format!("failed: {}", crate::error_line(e)));
        }
        // Connected pages receive the final state before the process (and the server) ends.
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    result?;
    if lead {
        eprintln!("run saved in {}", dir.display());
    }
    Ok(())
}

/// d2l's `predict_ch3`: the first `count` test images with true and predicted labels.
fn predict_test(
    checkpoint: &train::Checkpoint,
    data: &Dataset,
    count: usize,
    out: Option<&Path>,
) -> anyhow::Result<()> {
    let config = &checkpoint.state.config;
    let count = count.min(data.test.len());
    let indices: Vec<usize> = (0..count).collect();
    let prep = config.eval_prep();
    let batch = data::make_batch(&data.test, &indices, &prep)?;
    let predicted = classify(&checkpoint.net, &batch.images(Device::Cpu, prep.normalize.as_ref())?)?;
    let mut tiles = Vec::new();
    let name = |c: usize| config.classes.get(c).map_or("?", String::as_str);
    for (i, p) in predicted.iter().enumerate() {
        let (truth, guess) = (name(data.test.labels[i] as usize), name(*p));
        println!("{i:>4}: true {truth:<11} predicted {guess:<11}{}", if truth == guess { "" } else { "  (wrong)" });
        tiles.push(crate::chart::Labelled {
            pixels: data.test.image(i),
            channels: data.test.channels,
            size: (data.test.rows, data.test.cols),
            title: [truth.to_string(), guess.to_string()],
        });
    }
    if let Some(out) = out {
        let png = crate::chart::prediction_grid(&tiles)?;
        crate::weights::write_atomic(out, &png).map_err(|e| anyhow::anyhow!("cannot write {}: {e}", out.display()))?;
        eprintln!("picture written to {}", out.display());
    }
    Ok(())
}

/// Classifies the user's own images (PNG or JPEG), transformed as evaluation does.
fn predict_files(checkpoint: &train::Checkpoint, files: &[PathBuf]) -> anyhow::Result<()> {
    let config = &checkpoint.state.config;
    let channels = config.in_channels as usize;
    let mut pipeline = config.eval_prep().pipeline;
    if pipeline.fixed_size().is_none() {
        // d2l's data sets need no resize of their own images; the user's do.
        pipeline.transforms.push(data::Transform::Resize(config.image_side()));
    }
    let mut pixels = Vec::new();
    for file in files {
        let image = data::folder::decode_as(file, channels).map_err(|e| usage(e.to_string()))?;
        let image = pipeline.apply(image, config.seed, 0, 0);
        pixels.extend(image.pixels.iter().map(|&b| b as f32 / 255.0));
    }
    let size = config.image_side() as i64;
    let images = tch::Tensor::f_from_slice(&pixels)?.f_view([files.len() as i64, channels as i64, size, size])?;
    let images = match &config.normalize {
        Some(n) => n.apply(&images)?,
        None => images,
    };
    for (file, p) in files.iter().zip(classify(&checkpoint.net, &images)?) {
        println!("{}: {}", file.display(), config.classes.get(p).map_or("?", String::as_str));
    }
    Ok(())
}

fn classify(net: &Network, images: &tch::Tensor) -> anyhow::Result<Vec<usize>> {
    let classified = || -> anyhow::Result<Vec<i64>> {
        let images = images.f_to_device(net.device())?;
        let logits = tch::no_grad(|| net.forward_t(&images, false))?;
        Ok(Vec::<i64>::try_from(logits.f_argmax(1, false)?.f_to_device(Device::Cpu)?)?)
    };
    let predicted = classified().with_context(|| format!("{}: prediction failed", net.info.name))?;
    Ok(predicted.into_iter().map(|p| p as usize).collect())
}
