//! The zoo: every network of the chapter with d2l's settings and published results for it.

use tch::Device;
use tch::nn::Path;

use super::{alexnet, densenet, googlenet, lenet, nin, resnet, torchvision, vgg};
use crate::accel::{AutoPrecision, MemoryFormat, Precision, PrecisionChoice, auto_precision, cpu_bf16};
use crate::nn::Sequential;

/// What every network is built for: input channels and number of classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NetConfig {
    pub in_channels: i64,
    pub num_classes: i64,
}

impl NetConfig {
    /// Fashion-MNIST, what the book's networks are built for: one grey channel, ten classes.
    pub const FASHION_MNIST: NetConfig = NetConfig { in_channels: 1, num_classes: 10 };
    /// ImageNet, what torchvision's networks and published weights are for: colour, 1000
    /// classes.
    pub const IMAGENET: NetConfig = NetConfig { in_channels: 3, num_classes: 1000 };
}

impl Default for NetConfig {
    /// Fashion-MNIST: one grey channel, ten classes.
    fn default() -> Self {
        Self::FASHION_MNIST
    }
}

/// Where a network's definition comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The chapter, as d2l writes it (`nn.Sequential` names, Xavier init, Fashion-MNIST).
    Book,
    /// `torchvision.models`, module for module, so that its published weights load.
    Torchvision,
}

/// d2l's published result for a network.
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
    /// Whether bf16 trains this network faster than fp32 on a CPU whose bfloat16 convolutions are
    /// faster than its float32 ones (`--precision auto`): 1.7-2.7x for the image networks on
    /// two Zen 5 cores with AVX512-BF16, and LeNet-BN since
    /// its first convolution has a kernel of its own; not for LeNet with the from-scratch batch
    /// norm, which trained no faster in bf16 there while its batch norm ran as tensor operations
    /// (it has had the shim's bf16 kernel since, 1.6x as fast in bf16 on Emerald Rapids, still
    /// slower than its fp32 there; not measured since on a CPU with fast bf16).
    pub bf16_on_cpu: bool,
    pub build: fn(&Path, &NetConfig) -> Sequential,
    pub origin: Origin,
    /// The input channels and classes it is built for unless a data set says otherwise.
    pub default_config: NetConfig,
    /// Classifiers besides the last Linear layer that a new data set's classes replace
    /// (GoogLeNet's auxiliary heads), by `state_dict` prefix.
    pub extra_heads: &'static [&'static str],
}

impl ModelInfo {
    /// Whether this network runs channels-last on `device` when `format` is asked for (`auto`:
    /// where it measured faster, see `channels_last_on_cuda` and `channels_last_on_cpu`).
    pub fn uses_channels_last(&self, format: MemoryFormat, device: Device) -> bool {
        match format {
            MemoryFormat::Auto if device.is_cuda() => self.channels_last_on_cuda,
            MemoryFormat::Auto => self.channels_last_on_cpu,
            MemoryFormat::Contiguous => false,
            MemoryFormat::ChannelsLast => true,
        }
    }

    /// The precision `choice` stands for with this network on `device`, and for `auto` what it
    /// picked and why.
    pub fn precision_for(&self, choice: PrecisionChoice, device: Device) -> (Precision, Option<AutoPrecision>) {
        match choice {
            PrecisionChoice::Fixed(precision) => (precision, None),
            PrecisionChoice::Auto => {
                let auto = auto_precision(device, cpu_bf16, self.bf16_on_cpu);
                (auto.precision, Some(auto))
            }
        }
    }
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
        bf16_on_cpu: true,
        build: alexnet::alexnet,
        origin: Origin::Book,
        default_config: NetConfig::FASHION_MNIST,
        extra_heads: &[],
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
        bf16_on_cpu: true,
        build: |p, cfg| vgg::vgg(p, &vgg::VGG11_ARCH, 1, cfg),
        origin: Origin::Book,
        default_config: NetConfig::FASHION_MNIST,
        extra_heads: &[],
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
        bf16_on_cpu: true,
        build: |p, cfg| vgg::vgg(p, &vgg::VGG11_ARCH, 4, cfg),
        origin: Origin::Book,
        default_config: NetConfig::FASHION_MNIST,
        extra_heads: &[],
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
        bf16_on_cpu: true,
        build: nin::nin,
        origin: Origin::Book,
        default_config: NetConfig::FASHION_MNIST,
        extra_heads: &[],
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
        bf16_on_cpu: true,
        build: googlenet::googlenet,
        origin: Origin::Book,
        default_config: NetConfig::FASHION_MNIST,
        extra_heads: &[],
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
        bf16_on_cpu: false,
        build: |p, cfg| lenet::lenet_bn(p, cfg, lenet::Norm::Scratch),
        origin: Origin::Book,
        default_config: NetConfig::FASHION_MNIST,
        extra_heads: &[],
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
        bf16_on_cpu: true,
        build: |p, cfg| lenet::lenet_bn(p, cfg, lenet::Norm::BuiltIn),
        origin: Origin::Book,
        default_config: NetConfig::FASHION_MNIST,
        extra_heads: &[],
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
        bf16_on_cpu: true,
        build: resnet::resnet18,
        origin: Origin::Book,
        default_config: NetConfig::FASHION_MNIST,
        extra_heads: &[],
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
        bf16_on_cpu: true,
        build: densenet::densenet,
        origin: Origin::Book,
        default_config: NetConfig::FASHION_MNIST,
        extra_heads: &[],
    },
    ModelInfo {
        name: "tv-alexnet",
        description: "torchvision's alexnet: 5 convolutions (64-192-384-256-256), 6x6 adaptive pool, classifier",
        input_size: 224,
        batch_size: 128,
        lr: 0.01,
        epochs: 5,
        book: None,
        channels_last_on_cuda: true,
        channels_last_on_cpu: true,
        bf16_on_cpu: true,
        build: torchvision::alexnet::alexnet,
        origin: Origin::Torchvision,
        default_config: NetConfig::IMAGENET,
        extra_heads: &[],
    },
    ModelInfo {
        name: "tv-vgg11",
        description: "torchvision's vgg11 (configuration A): features, 7x7 adaptive pool, classifier",
        input_size: 224,
        batch_size: 64,
        lr: 0.01,
        epochs: 5,
        book: None,
        channels_last_on_cuda: true,
        channels_last_on_cpu: true,
        bf16_on_cpu: true,
        build: |p, cfg| torchvision::vgg::vgg11(p, cfg, false),
        origin: Origin::Torchvision,
        default_config: NetConfig::IMAGENET,
        extra_heads: &[],
    },
    ModelInfo {
        name: "tv-vgg11-bn",
        description: "torchvision's vgg11_bn: vgg11 with batch norm after every convolution",
        input_size: 224,
        batch_size: 64,
        lr: 0.01,
        epochs: 5,
        book: None,
        channels_last_on_cuda: true,
        channels_last_on_cpu: true,
        bf16_on_cpu: true,
        build: |p, cfg| torchvision::vgg::vgg11(p, cfg, true),
        origin: Origin::Torchvision,
        default_config: NetConfig::IMAGENET,
        extra_heads: &[],
    },
    ModelInfo {
        name: "tv-googlenet",
        description: "torchvision's googlenet: BasicConv2d, Inception, transform_input; aux1/aux2 kept for loading",
        input_size: 224,
        batch_size: 128,
        lr: 0.01,
        epochs: 5,
        book: None,
        channels_last_on_cuda: true,
        channels_last_on_cpu: true,
        bf16_on_cpu: true,
        build: torchvision::googlenet::googlenet,
        origin: Origin::Torchvision,
        default_config: NetConfig::IMAGENET,
        extra_heads: &["aux1.fc2", "aux2.fc2"],
    },
    ModelInfo {
        name: "tv-resnet18",
        description: "torchvision's resnet18: BasicBlock x [2, 2, 2, 2], fc",
        input_size: 224,
        batch_size: 128,
        lr: 0.01,
        epochs: 5,
        book: None,
        channels_last_on_cuda: true,
        channels_last_on_cpu: true,
        bf16_on_cpu: true,
        build: torchvision::resnet::resnet18,
        origin: Origin::Torchvision,
        default_config: NetConfig::IMAGENET,
        extra_heads: &[],
    },
    ModelInfo {
        name: "tv-resnet34",
        description: "torchvision's resnet34: BasicBlock x [3, 4, 6, 3], fc",
        input_size: 224,
        batch_size: 128,
        lr: 0.01,
        epochs: 5,
        book: None,
        channels_last_on_cuda: true,
        channels_last_on_cpu: true,
        bf16_on_cpu: true,
        build: torchvision::resnet::resnet34,
        origin: Origin::Torchvision,
        default_config: NetConfig::IMAGENET,
        extra_heads: &[],
    },
    ModelInfo {
        name: "tv-resnet50",
        description: "torchvision's resnet50: Bottleneck x [3, 4, 6, 3] (V1.5), fc",
        input_size: 224,
        batch_size: 64,
        lr: 0.01,
        epochs: 5,
        book: None,
        channels_last_on_cuda: true,
        channels_last_on_cpu: true,
        bf16_on_cpu: true,
        build: torchvision::resnet::resnet50,
        origin: Origin::Torchvision,
        default_config: NetConfig::IMAGENET,
        extra_heads: &[],
    },
    ModelInfo {
        name: "tv-densenet121",
        description: "torchvision's densenet121: _DenseBlock x [6, 12, 24, 16], growth 32, classifier",
        input_size: 224,
        batch_size: 64,
        lr: 0.01,
        epochs: 5,
        book: None,
        channels_last_on_cuda: false,
        channels_last_on_cpu: true,
        bf16_on_cpu: true,
        build: torchvision::densenet::densenet121,
        origin: Origin::Torchvision,
        default_config: NetConfig::IMAGENET,
        extra_heads: &[],
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
