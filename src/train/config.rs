//! [`TrainConfig`]: everything that defines a run, d2l's settings as its defaults, and the checks
//! made before anything runs.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{FineTune, Recipe};
use crate::accel::{MemoryFormat, Precision};
use crate::data::{self, CLASSES, Dataset, Split};
use crate::models::{self, ModelInfo, NetConfig};

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
    /// Training-time augmentation, the data set's (see [`data::Presets::train`]); d2l's runs
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
    /// The directory of the data set trained on (absolute), so that `eval`, `predict` and
    /// `--resume` find it without `--data`; none for the embedded sample, and for runs saved
    /// before it was recorded.
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    /// `--vertical-flip`: `RandomVerticalFlip()` in training.
    #[serde(default)]
    pub vertical_flip: bool,
    /// `--auto-augment`: an automatic augmentation policy in training.
    #[serde(default)]
    pub auto_augment: Option<data::AutoAugment>,
    /// `--color-jitter B,C,S,H`: `ColorJitter` in training.
    #[serde(default)]
    pub color_jitter: Option<data::ColorJitter>,
    /// `--random-erase P`: torchvision's `RandomErasing(p=P)` on each normalised training image
    /// (0: none).
    #[serde(default)]
    pub random_erase: f64,
    /// An image folder's crop sizes where they differ from `resize` (`--train-crop-size`,
    /// `--val-resize-size`, `--val-crop-size`).
    #[serde(default)]
    pub crops: data::CropSizes,
    /// Fine-tuning from pretrained weights (`--pretrained`); none for a run from scratch.
    #[serde(default)]
    pub finetune: Option<FineTune>,
}

/// ImageNet's class names in label order, as torchvision lists them.
const IMAGENET_CLASSES: &str = include_str!("../../assets/imagenet_classes.txt");

fn fashion_mnist() -> String {
    data::Format::FashionMnist.name().to_string()
}

fn fashion_mnist_classes() -> Vec<String> {
    CLASSES.iter().map(|c| c.to_string()).collect()
}

impl TrainConfig {
    /// d2l's settings for `net`: the book's learning rate, epochs, batch size and resize.
    pub fn d2l(net: &str) -> Result<Self, models::UnknownModel> {
        Ok(Self::d2l_for(models::find(net)?))
    }

    /// d2l's settings for the network `info` describes, one of the zoo's or a network of your
    /// own (see `examples/own_network.rs`).
    pub fn d2l_for(info: &ModelInfo) -> Self {
        let config = info.default_config;
        TrainConfig {
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
            data_dir: None,
            vertical_flip: false,
            auto_augment: None,
            color_jitter: None,
            crops: data::CropSizes::default(),
            random_erase: 0.0,
            finetune: None,
        }
    }

    /// The height and width of the network's input: the resize, or the data set's own size.
    pub fn image_side(&self) -> usize {
        self.resize.unwrap_or_else(|| self.format().side())
    }

    /// The height and width evaluation feeds the network (`--val-crop-size`, else the side).
    pub fn eval_side(&self) -> usize {
        self.crops.val_crop.unwrap_or_else(|| self.image_side())
    }

    /// The height and width training feeds the network (`--train-crop-size`, else the side).
    pub fn train_side(&self) -> usize {
        self.crops.train.unwrap_or_else(|| self.image_side())
    }

    /// How this run's images become batches (see [`data::Presets`]).
    pub fn presets(&self) -> data::Presets {
        data::Presets {
            format: self.format(),
            side: self.image_side(),
            resize: self.resize,
            augment: self.augment,
            seed: self.seed,
            normalize: self.normalize.clone(),
            vertical_flip: self.vertical_flip,
            auto_augment: self.auto_augment,
            color_jitter: self.color_jitter,
            crops: self.crops,
        }
    }

    /// How training batches of `epoch` are made, each image's draws depending on the seed, the
    /// epoch and the image alone.
    pub fn train_prep(&self, epoch: usize) -> data::Prep {
        self.presets().train(epoch)
    }

    /// How evaluation batches are made.
    pub fn eval_prep(&self) -> data::Prep {
        self.presets().eval()
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
        self.data_dir = data.source.dir().map(|dir| dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf()));
        if data.format == data::Format::Folder && self.resize.is_none() {
            // A folder's photos have no size of their own: they are cropped to the network's d2l
            // input, which d2l's settings leave unset only where it is the MNISTs' 28x28 (LeNet).
            self.resize = Some(data::Format::Mnist.side());
        }
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
        if !(0.0..=1.0).contains(&self.random_erase) {
            return Err(format!("--random-erase is a probability from 0 to 1, got {}", self.random_erase));
        }
        let sizes = [
            ("--train-crop-size", self.crops.train),
            ("--val-resize-size", self.crops.val_resize),
            ("--val-crop-size", self.crops.val_crop),
        ];
        if let Some((flag, _)) = sizes.iter().find(|(_, size)| *size == Some(0)) {
            return Err(format!("{flag} must be at least 1"));
        }
        let ranges = [("--train-crop-scale", self.crops.scale), ("--train-crop-ratio", self.crops.ratio)];
        let given = sizes.iter().filter(|(_, s)| s.is_some()).map(|(f, _)| f);
        let first = given.chain(ranges.iter().filter(|(_, r)| r.is_some()).map(|(f, _)| f)).next();
        if let Some(flag) = first
            && (self.format() != data::Format::Folder || !self.augment)
        {
            return Err(format!(
                "{flag} applies to image folders trained with their augmentation (torchvision's recipe), not to this run's {}",
                self.dataset
            ));
        }
        self.crops.area().validate("--train-crop-")?;
        if let Some(finetune) = &self.finetune {
            finetune.validate()?;
        }
        self.recipe.validate(self.epochs)
    }

    /// What torchvision's networks are trained on and its weights expect: ImageNet's 1000
    /// classes, colour, its normalisation and its evaluation crop (`Resize(256)`,
    /// `CenterCrop(224)`, as an image folder's augmented runs evaluate).
    pub fn use_imagenet(&mut self) {
        self.in_channels = 3;
        self.classes = IMAGENET_CLASSES.lines().map(str::to_string).collect();
        self.num_classes = self.classes.len() as i64;
        // ImageNet is an image folder in torchvision's layout.
        self.dataset = data::Format::Folder.name().to_string();
        self.augment = true;
        self.normalize = Some(data::Normalize::imagenet());
    }

    /// Checks that one batch of inputs (`examples` of them at most) fits in `available_bytes`
    /// of memory with room to spare: a batch too large for the machine is a clear error, not
    /// an allocation failure that aborts the process. Training needs several times the input
    /// (activations), so a quarter of the available memory is the limit for the input alone.
    pub fn check_batch_memory(&self, split: &Split, available_bytes: u64) -> Result<(), String> {
        let [c, _, _] = self.input_shape();
        let side = self.train_side().max(self.eval_side()) as i64;
        let (h, w) = (side, side);
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
