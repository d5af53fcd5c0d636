//! A network of your own, built from convnets' layers the way the chapter builds its networks,
//! trained by d2l's loop with the run directory's usual files (config, checkpoints, metrics,
//! chart, TensorBoard events) and d2l's lines on the console.
//!
//! ```text
//! cargo run --release --example own_network -- [RUN_DIR]     (default runs/tiny-vgg)
//! ```
//!
//! The data is what `convnets train` finds without `--data`: `$CONVNETS_DATA`, the user cache,
//! else the Fashion-MNIST sample embedded in the binary.

use convnets::data::Dataset;
use convnets::models::{ModelInfo, NetConfig, Network, Origin};
use convnets::nn::{BatchNorm, Conv2d, Flatten, Linear, MaxPool2d, ReLU, Sequential};
use convnets::report::{self, Console};
use convnets::train::{self, Run, TrainConfig};
use tch::nn::Path;

/// Two VGG-style blocks (3x3 convolutions, batch norm, ReLU, 2x2 max pooling) and a linear
/// classifier, for 28x28 images.
fn tiny_vgg(p: &Path, cfg: &NetConfig) -> Sequential {
    Sequential::new()
        .add_at(p, |p| Conv2d::new(p, cfg.in_channels, 16, 3, 1, 1))
        .add_at(p, |p| BatchNorm::new(p, 16, 4))
        .add(ReLU)
        .add(MaxPool2d::new(2, 2))
        .add_at(p, |p| Conv2d::new(p, 16, 32, 3, 1, 1))
        .add_at(p, |p| BatchNorm::new(p, 32, 4))
        .add(ReLU)
        .add(MaxPool2d::new(2, 2))
        .add(Flatten)
        .add_at(p, |p| Linear::new(p, 32 * 7 * 7, cfg.num_classes))
}

/// The network's entry, as the zoo's networks have theirs: its input and d2l-style settings.
static TINY_VGG: ModelInfo = ModelInfo {
    name: "tiny-vgg",
    description: "two VGG blocks with batch norm (an example of a network of your own)",
    input_size: 28,
    batch_size: 128,
    lr: 0.1,
    epochs: 3,
    book: None,
    channels_last_on_cuda: false,
    channels_last_on_cpu: false,
    bf16_on_cpu: false,
    build: tiny_vgg,
    origin: Origin::Book,
    default_config: NetConfig::FASHION_MNIST,
    extra_heads: &[],
};

fn main() -> anyhow::Result<()> {
    let dir = std::env::args().nth(1).unwrap_or_else(|| "runs/tiny-vgg".into());
    let data = Dataset::load(None, None)?;
    let mut config = TrainConfig::d2l_for(&TINY_VGG);
    config.use_dataset(&data);
    tch::manual_seed(config.seed as i64);
    let net = Network::from_info(&TINY_VGG, config.net_config(), tch::Device::Cpu);
    let input = config.input_shape();
    print!("{}", convnets::summary::torchsummary(&net.trace(&input)?, &input, -1));

    let mut run = Run::new(config, &data, &dir).observed_by(report::run_files());
    run.observers.push(Box::new(Console::default()));
    let history = train::train(&mut run, &net, None)?;
    let last = history.epochs.last().expect("at least one epoch");
    println!("test accuracy {:.3} after {} epochs; the run is in {dir}", last.test_acc, last.epoch);
    Ok(())
}
