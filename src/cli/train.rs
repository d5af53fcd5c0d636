//! `convnets train`: a new run from d2l's settings and the flags, or a resumed one, in this
//! process, as one rank of a distributed run, or as the launcher of `--nproc` workers.

use std::path::PathBuf;
use std::time::Duration;

use tch::Device;

use super::args::TrainArgs;
use super::{at_least_one, data, warn_if_bf16_emulated};
use crate::accel::{PrecisionChoice, device_name, parse_device};
use crate::data::Dataset;
use crate::distributed::{self, DataParallel, World, launch};
use crate::error::{UsageError, error_line, usage};
use crate::models::{Network, Origin};
use crate::report::{self, Console, live};
use crate::train::{self, CheckpointState, FineTune, History, Run, TrainConfig};

pub fn run(args: TrainArgs) -> anyhow::Result<()> {
    let world = World::from_env()?;
    let timeout = Duration::from_secs(at_least_one("--dist-timeout", args.dist.dist_timeout)? as u64);
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
fn launch_workers(args: &TrainArgs, nproc: usize, timeout: Duration) -> anyhow::Result<()> {
    if parse_device(&args.device).map_err(usage)?.is_cuda() && args.device != "auto" {
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
    // Each rank may name its own device (cuda:LOCAL_RANK) and see the data at a path of its
    // machine's: neither is part of the agreement.
    let config = TrainConfig { device: String::new(), data_dir: None, ..config.clone() };
    Ok(format!(
        "convnets {}\nstarting after epoch {start_epoch}\n{}",
        env!("CARGO_PKG_VERSION"),
        serde_json::to_string_pretty(&config)?
    ))
}

/// A run ready to train: the network, its configuration, where it starts and its directory.
struct Prepared {
    net: Network,
    config: TrainConfig,
    start: Option<CheckpointState>,
    dir: PathBuf,
}

/// Trains in this process: alone, or as one rank of `world`.
fn train_rank(args: TrainArgs, world: Option<&World>, timeout: Duration) -> anyhow::Result<()> {
    let lead = world.is_none_or(|w| w.rank == 0);
    let device = match (parse_device(&args.device).map_err(usage)?, world) {
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
    let data = data::load(&args.data, resumed.as_ref().map(|c| &c.state.config), false, lead)?;
    let Prepared { net, config, start, dir } = match (resumed, &args.resume) {
        (Some(checkpoint), Some(dir)) => resume(&args, checkpoint, dir.clone(), device, &data, lead)?,
        _ => start_new(&args, device, &data, lead)?,
    };
    let first_epoch = start.as_ref().map_or(0, |s| s.epoch);
    let replicas = match world {
        Some(world) => {
            let group = world.join(&run_description(&config, first_epoch)?, timeout)?;
            Some(DataParallel::new(group, config.sync_bn))
        }
        None => None,
    };
    // train() checks the hyper-parameters and the resize before it writes anything.
    let board = match args.serve.as_ref().filter(|_| lead) {
        Some(addr) => {
            let board = live::Board::default();
            let server = live::serve(live::parse_addr("--serve", Some(addr)).map_err(usage)?, &board)?;
            eprintln!("live view: {}", server.url());
            Some(board)
        }
        None => None,
    };
    let mut run = Run::new(config, &data, dir.clone());
    run.replicas = replicas.as_ref();
    // Rank 0 alone reports: it prints d2l's lines and writes the run's files.
    if lead {
        run.observers.push(Box::new(Console::default()));
        run.observers.extend(report::run_files());
        if let Some(board) = &board {
            run.observers.push(Box::new(board.observer()));
        }
    }
    let mut result = train::train(&mut run, &net, start);
    if let (Err(e), Some(replicas)) = (&result, &replicas) {
        if !distributed::is_lost_contact(e) {
            let _ = replicas.group.report_failure(); // best effort: the error itself is reported below
        } else if let Some(first) = replicas.group.first_failure() {
            result = result.map_err(|e| e.context(format!("after rank {first} failed")));
        }
    }
    if let Some(board) = &board {
        if let Err(e) = &result {
            board.update(|view| view.status = format!("failed: {}", error_line(e)));
        }
        // Connected pages receive the final state before the process (and the server) ends.
        std::thread::sleep(Duration::from_millis(500));
    }
    let history = result?;
    if let (true, Some(replicas)) = (lead, &replicas) {
        print_traffic(replicas, &history, first_epoch);
    }
    if lead {
        eprintln!("run saved in {}", dir.display());
    }
    Ok(())
}

/// What the gradient all-reduces of this process's epochs cost, per step: where they overlap
/// backward (on the CPU), the time waited for them after it, and how many buckets had started
/// before it ended.
fn print_traffic(replicas: &DataParallel, history: &History, first_epoch: usize) {
    let traffic = replicas.traffic();
    let steps = traffic.steps.max(1) as f64;
    let step_seconds: f64 = history.epochs[first_epoch..].iter().map(|e| e.step_seconds).sum();
    let (megabytes, milliseconds) = (traffic.bytes as f64 / steps / 1e6, traffic.seconds / steps * 1e3);
    let share = 100.0 * traffic.seconds / step_seconds.max(1e-9);
    let size = replicas.size();
    if traffic.overlapped_buckets > 0 {
        println!(
            "gradient all-reduce over {size} processes: {megabytes:.2} MB per step in {:.1} buckets, {:.1} of them started \
             during backward; {milliseconds:.1} ms per step waited for after it ({share:.0}% of the step)",
            traffic.overlapped_buckets as f64 / steps,
            traffic.started_in_backward as f64 / steps,
        );
    } else {
        println!(
            "gradient all-reduce over {size} processes: {megabytes:.2} MB and {milliseconds:.1} ms per step ({share:.0}% of the step)"
        );
    }
}

/// `--resume DIR`: the run's own configuration (only `--epochs` may change), from its checkpoint.
fn resume(
    args: &TrainArgs,
    checkpoint: train::Checkpoint,
    dir: PathBuf,
    device: Device,
    data: &Dataset,
    lead: bool,
) -> anyhow::Result<Prepared> {
    let mut config = checkpoint.state.config.clone();
    if let Some(epochs) = args.epochs {
        config.epochs = at_least_one("--epochs", epochs)?;
    }
    config.device = device_name(device);
    if checkpoint.state.epoch >= config.epochs {
        return Err(usage(format!(
            "{} already completed all {} epochs; pass a larger --epochs to continue it",
            dir.display(),
            config.epochs
        )));
    }
    config.check_dataset(data).map_err(usage)?;
    if lead {
        eprintln!("resuming {} after epoch {}", dir.display(), checkpoint.state.epoch);
        warn_if_bf16_emulated(device, PrecisionChoice::Fixed(config.precision));
    }
    // Precision and layout come from the run's configuration (load_checkpoint).
    let mut net = checkpoint.net;
    net.set_cuda_graphs(args.speed.cuda_graphs);
    Ok(Prepared { net, config, start: Some(checkpoint.state), dir })
}

/// `--pretrained`: every weight of `source` but the classifier, a new classifier for the data
/// set's classes, and the fine-tuning settings in the run's configuration.
fn start_from_pretrained(
    args: &TrainArgs,
    source: &std::path::Path,
    config: &mut TrainConfig,
    net: &mut Network,
    lead: bool,
) -> anyhow::Result<()> {
    let pretrained = train::pretrained_weights(source, args.finetune.pretrained_key.as_deref())?;
    let head = train::load_pretrained(net, &pretrained.tensors)
        .map_err(|e| anyhow::anyhow!("--pretrained {}: {e}", source.display()))?;
    if args.normalize.is_none() {
        // The input the weights learned from: the source run's, or ImageNet's for a file of
        // torchvision's networks.
        config.normalize = match pretrained.run {
            Some(run) => run.normalize,
            None if net.info.origin == Origin::Torchvision && config.in_channels == 3 => {
                Some(crate::data::Normalize::imagenet())
            }
            None => None,
        };
    }
    let finetune = FineTune {
        pretrained: source.canonicalize().unwrap_or_else(|_| source.to_path_buf()),
        head,
        freeze_backbone: args.finetune.freeze_backbone,
        head_lr_scale: args.finetune.head_lr_scale.unwrap_or(1.0),
    };
    finetune.validate().map_err(usage)?;
    if finetune.freeze_backbone {
        net.freeze_backbone();
    }
    if lead {
        eprintln!("{}", finetune.describe());
    }
    config.finetune = Some(finetune);
    Ok(())
}

/// A new run: d2l's settings for the network, the data set's shape, and the flags.
fn start_new(args: &TrainArgs, device: Device, data: &Dataset, lead: bool) -> anyhow::Result<Prepared> {
    let name =
        args.net.as_deref().ok_or_else(|| usage("name a network to train (see `convnets models`), or --resume DIR"))?;
    let mut config = TrainConfig::d2l(name).map_err(|e| usage(e.to_string()))?;
    config.use_dataset(data);
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
    config.device = device_name(device);
    config.memory_format = args.speed.memory_format;
    config.recipe = args.recipe.recipe();
    config.val_split = args.data.val_split;
    config.sync_bn = args.dist.sync_bn;
    if args.augment.as_deref() == Some("none") {
        config.augment = false;
    }
    config.vertical_flip = args.vertical_flip;
    config.random_erase = args.random_erase.unwrap_or(0.0);
    config.crops = crate::data::CropSizes {
        train: args.train_crop_size,
        val_resize: args.val_resize_size,
        val_crop: args.val_crop_size,
        scale: args.train_crop_scale,
        ratio: args.train_crop_ratio,
    };
    config.color_jitter = args.color_jitter;
    config.auto_augment = args.auto_augment.policy().map_err(usage)?;
    if args.normalize.as_deref() == Some("auto") {
        let stats = crate::data::normalization(data, &config.eval_prep())?;
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
    let (precision, auto) = net.info.precision_for(args.speed.precision.unwrap_or_default(), device);
    config.precision = precision;
    if let (true, Some(auto)) = (lead, auto) {
        eprintln!("precision: {} (auto: {})", auto.precision, auto.reason);
    }
    if lead {
        warn_if_bf16_emulated(device, PrecisionChoice::Fixed(precision));
    }
    if let Some(source) = &args.finetune.pretrained {
        start_from_pretrained(args, source, &mut config, &mut net, lead)?;
    }
    net.set_precision(config.precision)?;
    args.speed.apply(&mut net)?;
    Ok(Prepared { net, config, start: None, dir })
}
