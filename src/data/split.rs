//! One split of a data set (train or test): its images, in memory or as files, and labels.

use std::path::PathBuf;

use super::{Image, decode};

/// Images (bytes, each image its channels' planes of row-major pixels) and labels of one split.
#[derive(Debug, Clone, PartialEq)]
pub struct Split {
    pub images: Vec<u8>,
    pub labels: Vec<u8>,
    /// 1 for grey images, 3 for colour (red, green and blue planes).
    pub channels: usize,
    /// Height and width of every image; 0 for an image folder's, whose sizes vary.
    pub rows: usize,
    pub cols: usize,
    /// An image folder's files, decoded when their batch is made (`images` is then empty).
    pub files: Vec<PathBuf>,
}

impl Split {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The pixels of image `i`, plane after plane (images held in memory).
    pub fn image(&self, i: usize) -> &[u8] {
        let size = self.channels * self.rows * self.cols;
        &self.images[i * size..(i + 1) * size]
    }

    /// `count` images spread across the classes, the same every time for the same `seed`: each
    /// class's images in a seeded shuffle, taken a class at a time in turn (an image folder's
    /// are listed class by class, so its first images would all be of one class).
    pub fn spread(&self, count: usize, seed: u64) -> Vec<usize> {
        use rand::SeedableRng;
        use rand::seq::SliceRandom;
        let mut by_class: std::collections::BTreeMap<u8, Vec<usize>> = Default::default();
        for (i, &label) in self.labels.iter().enumerate() {
            by_class.entry(label).or_default().push(i);
        }
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut classes: Vec<std::vec::IntoIter<usize>> = by_class
            .into_values()
            .map(|mut images| {
                images.shuffle(&mut rng);
                images.into_iter()
            })
            .collect();
        let mut picked = Vec::with_capacity(count.min(self.len()));
        while picked.len() < count.min(self.len()) {
            picked.extend(classes.iter_mut().filter_map(Iterator::next).take(count - picked.len()));
        }
        picked
    }

    /// Image `i`, decoded from its file when the split is an image folder's.
    pub fn load(&self, i: usize) -> anyhow::Result<Image> {
        match self.files.get(i) {
            Some(path) => decode::decode_as(path, self.channels),
            None => Ok(Image {
                pixels: self.image(i).to_vec(),
                channels: self.channels,
                height: self.rows,
                width: self.cols,
            }),
        }
    }
}
