//! How a run's images become batches: the transforms of training, with the data set's usual
//! augmentation, and of evaluation, as torchvision's reference recipes make them.

use super::formats::cifar;
use super::{AutoAugment, ColorJitter, CropArea, Format, Normalize, Pipeline, Prep, Transform};

/// What decides a run's transforms.
#[derive(Debug, Clone, PartialEq)]
pub struct Presets {
    pub format: Format,
    /// The height and width of the network's input.
    pub side: usize,
    /// `--resize`: images resized to this side (without it, the MNISTs and CIFAR keep their own).
    pub resize: Option<usize>,
    /// Training-time augmentation, the data set's usual one (`--augment`).
    pub augment: bool,
    /// The seed each image's random draws start from (with the epoch and the image's index).
    pub seed: u64,
    /// `--normalize`: per-channel `(x - mean) / std` after ToTensor.
    pub normalize: Option<Normalize>,
    /// `--vertical-flip`: `RandomVerticalFlip()` after the data set's augmentation.
    pub vertical_flip: bool,
    /// `--auto-augment`: an automatic policy after the flips, as torchvision's reference recipe
    /// places it.
    pub auto_augment: Option<AutoAugment>,
    /// `--color-jitter`: `ColorJitter(...)` last.
    pub color_jitter: Option<ColorJitter>,
    /// An image folder's crop sizes when they are not `side` (torchvision's reference names).
    pub crops: CropSizes,
}

/// `--train-crop-size`, `--val-resize-size` and `--val-crop-size`: an image folder trained on
/// `RandomResizedCrop(train)` and evaluated on `Resize(val_resize)` then `CenterCrop(val_crop)`
/// (FixRes: train at 176, evaluate at 224); each defaults to the run's side (and 1/0.875 of
/// the crop for the resize).
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CropSizes {
    pub train: Option<usize>,
    pub val_resize: Option<usize>,
    pub val_crop: Option<usize>,
    /// `--train-crop-scale`: the training crop's share of the area, torchvision's (0.08, 1)
    /// when not given.
    #[serde(default)]
    pub scale: Option<[f64; 2]>,
    /// `--train-crop-ratio`: the training crop's width over height, (3/4, 4/3) when not given.
    #[serde(default)]
    pub ratio: Option<[f64; 2]>,
}

impl CropSizes {
    /// The training crop's `scale` and `ratio` ranges.
    pub fn area(&self) -> CropArea {
        CropArea {
            scale: self.scale.unwrap_or(CropArea::DEFAULT.scale),
            ratio: self.ratio.unwrap_or(CropArea::DEFAULT.ratio),
        }
    }
}

impl Presets {
    /// How training batches of `epoch` are made. With augmentation, the data set's: for CIFAR,
    /// torchvision's `RandomCrop(32, padding=4)` and `RandomHorizontalFlip()`, then the resize;
    /// for an image folder, `RandomResizedCrop(side)` and the flip; the MNISTs never augment
    /// (d2l). Without, evaluation's transforms. `--vertical-flip`, `--auto-augment` and
    /// `--color-jitter` follow, for any data set.
    pub fn train(&self, epoch: usize) -> Prep {
        let mut transforms = match self.format {
            _ if !self.augment => self.eval().pipeline.transforms,
            Format::Folder => {
                vec![
                    Transform::RandomResizedCrop(self.crops.train.unwrap_or(self.side), self.crops.area()),
                    Transform::RandomHorizontalFlip,
                ]
            }
            Format::Cifar10 | Format::Cifar100 => {
                let crop = [Transform::RandomCrop { size: cifar::SIDE, padding: 4 }, Transform::RandomHorizontalFlip];
                crop.into_iter().chain(self.resize.map(Transform::Resize)).collect()
            }
            Format::FashionMnist | Format::Mnist => self.resize.map(Transform::Resize).into_iter().collect(),
        };
        if self.vertical_flip {
            transforms.push(Transform::RandomVerticalFlip);
        }
        transforms.extend(self.auto_augment.map(Transform::AutoAugment));
        transforms.extend(self.color_jitter.map(Transform::ColorJitter));
        self.prep(transforms, epoch)
    }

    /// How evaluation batches are made: the resize alone; for an image folder, torchvision's
    /// `Resize(side / 0.875)` (256 for 224) and `CenterCrop(side)`, or, without augmentation,
    /// `Resize((side, side))` as for training.
    pub fn eval(&self) -> Prep {
        let transforms = match self.format {
            Format::Folder if self.augment => {
                let crop = self.crops.val_crop.unwrap_or(self.side);
                let resize = self.crops.val_resize.unwrap_or((crop as f64 / 0.875).round() as usize);
                vec![Transform::ResizeShorter(resize), Transform::CenterCrop(crop)]
            }
            Format::Folder => vec![Transform::Resize(self.side)],
            _ => self.resize.map(Transform::Resize).into_iter().collect(),
        };
        self.prep(transforms, 0)
    }

    fn prep(&self, transforms: Vec<Transform>, epoch: usize) -> Prep {
        Prep { pipeline: Pipeline { transforms }, seed: self.seed, epoch, normalize: self.normalize.clone() }
    }
}
