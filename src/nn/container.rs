//! `nn.Sequential`.

use tch::Tensor;
use tch::nn::Path;

use super::{Ctx, Fwd, Layer, fused};

/// `nn.Sequential`: runs its layers in order.
pub struct Sequential {
    pub layers: Vec<Box<dyn Layer>>,
    /// The PyTorch class this sequence stands for, when it is a module of its own that runs its
    /// children in order (torchvision's `BasicConv2d`, `_DenseLayer`): such a module gets a
    /// summary row, a pure `nn.Sequential` does not.
    module: Option<&'static str>,
}

impl Sequential {
    pub fn new() -> Self {
        Sequential { layers: Vec::new(), module: None }
    }

    /// A module of class `type_name` whose forward runs its children in order.
    pub fn module(type_name: &'static str) -> Self {
        Sequential { layers: Vec::new(), module: Some(type_name) }
    }

    /// Appends a layer (builder style, named like tch's `Sequential::add`).
    #[allow(clippy::should_implement_trait)]
    pub fn add(mut self, layer: impl Layer + 'static) -> Self {
        self.layers.push(Box::new(layer));
        self
    }

    /// Appends the layer `build` makes under this container's next index, the name PyTorch's
    /// `nn.Sequential` gives it (`0`, `1`, ...), so weights carry `state_dict` names.
    pub fn add_at<L: Layer + 'static>(self, p: &Path, build: impl FnOnce(&Path) -> L) -> Self {
        let child = p / self.layers.len();
        self.add(build(&child))
    }

    /// Appends the layer `build` makes under the attribute name `name` (`conv1`, `layer1`),
    /// as a PyTorch module registers its children.
    pub fn add_named<L: Layer + 'static>(self, p: &Path, name: &str, build: impl FnOnce(&Path) -> L) -> Self {
        let child = p / name;
        self.add(build(&child))
    }

    pub fn len(&self) -> usize {
        self.layers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }
}

impl Default for Sequential {
    fn default() -> Self {
        Self::new()
    }
}

impl Layer for Sequential {
    fn type_name(&self) -> &'static str {
        self.module.unwrap_or("Sequential")
    }
    fn forward(&self, x: &Tensor, cx: &mut Ctx) -> Fwd {
        let mut y = x.shallow_clone();
        let mut next = 0;
        while next < self.layers.len() {
            // A convolution with the batch norm and activation after it (a linear layer with its
            // activation), in one call where evaluation can fuse them.
            if let Some((fused, used)) = fused::run_sequence(&self.layers[next..], &y, cx) {
                y = fused?;
                next += used;
                continue;
            }
            // A batch norm and the ReLU after it in one kernel, in training.
            if self.layers.get(next + 1).is_some_and(|relu| relu.type_name() == "ReLU")
                && let Some(normalized) = cx.train_with_relu(self.layers[next].as_ref(), 2, &y)
            {
                y = normalized?;
                next += 2;
                continue;
            }
            // A ReLU and the max pool after it, pool first, in training.
            if let Some(pooled) = self
                .layers
                .get(next + 1)
                .and_then(|pool| cx.pool_before_relu(self.layers[next].as_ref(), pool.as_ref(), &y))
            {
                y = pooled?;
                next += 2;
                continue;
            }
            y = cx.call(self.layers[next].as_ref(), &y)?;
            next += 1;
        }
        Ok(y)
    }
    fn is_container(&self) -> bool {
        self.module.is_none()
    }
    fn children(&self) -> Vec<&dyn Layer> {
        self.layers.iter().map(|l| l.as_ref()).collect()
    }
}
