//! AlexNet (d2l 7.1): deeper and wider than LeNet, ReLU, dropout, max pooling.

use tch::nn::Path;

use super::NetConfig;
use crate::nn::{Conv2d, Dropout, Flatten, Linear, MaxPool2d, ReLU, Sequential};

/// AlexNet for 224x224 inputs. The first Linear layer expects 256 * 5 * 5 = 6400 features,
/// which fixes the input size to about 224.
pub fn alexnet(p: &Path, cfg: &NetConfig) -> Sequential {
    Sequential::new()
        // A large 11x11 window with stride 4 captures objects; far more channels than LeNet.
        .add_at(p, |p| Conv2d::new(p, cfg.in_channels, 96, 11, 4, 1))
        .add(ReLU)
        .add(MaxPool2d::new(3, 2))
        // Smaller window, padding 2 keeps height and width; more output channels.
        .add_at(p, |p| Conv2d::new(p, 96, 256, 5, 1, 2))
        .add(ReLU)
        .add(MaxPool2d::new(3, 2))
        // Three successive 3x3 convolutions, then pooling.
        .add_at(p, |p| Conv2d::new(p, 256, 384, 3, 1, 1))
        .add(ReLU)
        .add_at(p, |p| Conv2d::new(p, 384, 384, 3, 1, 1))
        .add(ReLU)
        .add_at(p, |p| Conv2d::new(p, 384, 256, 3, 1, 1))
        .add(ReLU)
        .add(MaxPool2d::new(3, 2))
        .add(Flatten)
        // Fully connected layers many times larger than LeNet's; dropout against overfitting.
        .add_at(p, |p| Linear::new(p, 256 * 5 * 5, 4096))
        .add(ReLU)
        .add(Dropout(0.5))
        .add_at(p, |p| Linear::new(p, 4096, 4096))
        .add(ReLU)
        .add(Dropout(0.5))
        .add_at(p, |p| Linear::new(p, 4096, cfg.num_classes))
}
