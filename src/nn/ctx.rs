//! [`Ctx`]: what a forward pass carries besides the tensor, and the one place every layer call
//! goes through, so that a traced pass records it (summaries, shapes, profiles) and an exporting
//! pass adds its ONNX nodes.

use std::sync::atomic::{AtomicU64, Ordering};

use tch::Tensor;

use super::fused::{self, Activation, Epilogue};
use super::layer::{kernel_output, shape_error};
use super::{BatchNorm, Conv2d, Fwd, InLayer, Layer, LayerError, SyncBatchNorm, Tracer};
use crate::ffi::convnets_dense_concatenation;
use crate::onnx::{self, OnnxGraph, proto::AttributeProto};

static POOLS_BEFORE_RELU: AtomicU64 = AtomicU64::new(0);
static DENSE_BLOCKS_IN_ONE_MAP: AtomicU64 = AtomicU64::new(0);

/// How many ReLU + max-pool pairs this process has computed pool first ([`Ctx::pool_before_relu`]).
pub fn pools_before_relu() -> u64 {
    POOLS_BEFORE_RELU.load(Ordering::Relaxed)
}

/// How many dense blocks this process has evaluated into one map ([`Ctx::dense_block`]).
pub fn dense_blocks_in_one_map() -> u64 {
    DENSE_BLOCKS_IN_ONE_MAP.load(Ordering::Relaxed)
}

/// Everything a forward pass carries besides the tensor.
pub struct Ctx<'t> {
    /// Training mode: batch statistics in batch norm, dropout active.
    pub train: bool,
    tracer: Option<&'t mut Tracer>,
    /// Non-container layers finished so far: names a failing layer as torchsummary would.
    finished_leaves: usize,
    /// `--sync-bn` in a distributed run: training-mode batch norm normalises with the statistics
    /// of every replica's batch, gathered through this.
    pub sync_bn: Option<&'t dyn SyncBatchNorm>,
    /// Whether dropout drops in training mode (off only to compare a training step with
    /// PyTorch's, whose random masks libtorch cannot draw alike).
    pub dropout: bool,
    /// Whether evaluation may fuse layers (see [`Ctx::fused`]): set for a network's passes.
    pub fuse: bool,
    /// The network is laid out channels-last: its fused linear layers go through oneDNN's fused
    /// operator too (convolutions choose by their input's layout).
    pub channels_last: bool,
}

impl<'t> Ctx<'t> {
    pub fn new(train: bool) -> Ctx<'static> {
        Ctx::with(train, None, None)
    }

    pub fn traced(train: bool, tracer: &'t mut Tracer) -> Ctx<'t> {
        Ctx::with(train, Some(tracer), None)
    }

    /// A forward pass whose batch norms normalise with the statistics of every replica's batch.
    pub fn synced(train: bool, sync_bn: &'t dyn SyncBatchNorm) -> Ctx<'t> {
        Ctx::with(train, None, Some(sync_bn))
    }

    /// The other fields at their defaults: dropout on, no fusion (a network's passes turn it on).
    fn with(train: bool, tracer: Option<&'t mut Tracer>, sync_bn: Option<&'t dyn SyncBatchNorm>) -> Ctx<'t> {
        Ctx { train, tracer, finished_leaves: 0, sync_bn, dropout: true, fuse: false, channels_last: false }
    }

    /// Runs `layer` on `x`, recording the call when tracing.
    pub fn call(&mut self, layer: &dyn Layer, x: &Tensor) -> Fwd {
        let entry = self.tracer.as_deref_mut().map(|t| t.enter(layer));
        let y = layer.forward(x, self).map_err(|mut e| {
            if e.layer.is_empty() {
                e.layer = self.leaf_name(layer);
            }
            e
        })?;
        // When exporting, a leaf adds its nodes; a block's are its children's and its own
        // functional steps'.
        let leaf = !layer.is_container() && layer.children().is_empty();
        if let Some(graph) = self.graph().filter(|_| leaf) {
            let exported = graph
                .value(x)
                .and_then(|input| layer.onnx(graph, &input).unwrap_or_else(|| Err("no ONNX form".into())));
            match exported {
                Ok(output) => graph.bind(&y, output),
                Err(reason) => return Err(self.export_error(layer, x, reason)),
            }
        }
        if !layer.is_container() {
            self.finished_leaves += 1;
        }
        if let (Some(t), Some(entry)) = (self.tracer.as_deref_mut(), entry) {
            t.exit(entry, layer, &y.size());
        }
        Ok(y)
    }

    /// The ONNX graph being built, when exporting.
    fn graph(&mut self) -> Option<&mut OnnxGraph> {
        self.tracer.as_deref_mut().and_then(|t| t.graph.as_mut())
    }

    /// `layer` as torchsummary would name its row if it were the next one.
    fn leaf_name(&self, layer: &dyn Layer) -> String {
        format!("{}-{}", layer.type_name(), self.finished_leaves + 1)
    }

    fn export_error(&self, layer: &dyn Layer, x: &Tensor, reason: String) -> LayerError {
        LayerError { layer: self.leaf_name(layer), shape: x.size(), reason: format!("ONNX export: {reason}") }
    }

    /// Whether this pass fuses: evaluation, [`Ctx::fuse`], nothing recording the pass
    /// (summaries, shape traces and exports see every layer), and `CONVNETS_FUSED_EVAL` not off.
    pub(crate) fn fusing(&self) -> bool {
        self.fuse && !self.train && self.tracer.is_none() && fused::enabled()
    }

    /// When [`Ctx::fusing`]: `run(x)`, the fused call of `head` and the layers after it, counted
    /// as the `leaves` layers it stands for (errors are `head`'s). `None` where that does not
    /// apply: the caller runs the layers one by one.
    pub(crate) fn fused(
        &mut self,
        head: &dyn Layer,
        leaves: usize,
        run: impl FnOnce(&Tensor) -> Option<Fwd>,
        x: &Tensor,
    ) -> Option<Fwd> {
        if !self.fusing() {
            return None;
        }
        let y = run(x)?.map_err(|mut e| {
            e.layer = self.leaf_name(head);
            e
        });
        self.finished_leaves += leaves;
        Some(y)
    }

    /// `pool(relu(x))` computed as `relu(pool(x))` in a training pass that records nothing, for a
    /// `ReLU` followed by a `MaxPool2d`: the two commute exactly (a ReLU keeps the order of
    /// positive values and maps the rest to 0, whose gradient is 0 either way), values and
    /// gradients alike, and the ReLU and its backward then run over the pooled map, a quarter of
    /// the one before it or less. `None` where that does not apply.
    pub(crate) fn pool_before_relu(&mut self, relu: &dyn Layer, pool: &dyn Layer, x: &Tensor) -> Option<Fwd> {
        if !self.train || self.tracer.is_some() || relu.type_name() != "ReLU" || pool.type_name() != "MaxPool2d" {
            return None;
        }
        // The ReLU keeps its place in the order, so that an error names either layer as the
        // steps one by one would.
        let relu_name = self.leaf_name(relu);
        self.finished_leaves += 1;
        let pooled = match self.call(pool, x) {
            Ok(pooled) => pooled,
            Err(e) => return Some(Err(e)),
        };
        POOLS_BEFORE_RELU.fetch_add(1, Ordering::Relaxed);
        Some(relu.forward(&pooled, self).map_err(|mut e| {
            e.layer = relu_name;
            e
        }))
    }

    /// `relu(layer(x))` in one training-mode call where `layer` has one for `x`
    /// ([`Layer::train_with_relu`]: a batch norm of a channels-last float32 map), in a training
    /// pass that records nothing and normalises with its own batch (not `--sync-bn`), counted as
    /// the `leaves` layers it stands for. `None` where that does not apply: the caller runs the
    /// layers one by one.
    pub(crate) fn train_with_relu(&mut self, layer: &dyn Layer, leaves: usize, x: &Tensor) -> Option<Fwd> {
        if !self.train || self.tracer.is_some() || self.sync_bn.is_some() {
            return None;
        }
        let y = layer.train_with_relu(x)?.map_err(|mut e| {
            e.layer = self.leaf_name(layer);
            e
        });
        self.finished_leaves += leaves;
        Some(y)
    }

    /// A block's `relu(conv(x))`, in one fused call where evaluation allows.
    pub fn conv_relu(&mut self, conv: &Conv2d, x: &Tensor) -> Fwd {
        let epilogue = Epilogue { norm: None, shortcut: None, activation: Activation::Relu };
        if let Some(y) = self.fused(conv, 1, |x| conv.forward_fused(x, &epilogue), x) {
            return y;
        }
        let y = self.call(conv, x)?;
        self.relu(&y)
    }

    /// A block's `relu(bn(conv(x)))`, in one fused call where evaluation allows (the batch
    /// norm folded into the convolution), the batch norm and ReLU in one where training does.
    pub fn conv_norm_relu(&mut self, conv: &Conv2d, bn: &BatchNorm, x: &Tensor) -> Fwd {
        let epilogue = Epilogue { norm: Some(bn.norm()), shortcut: None, activation: Activation::Relu };
        if let Some(y) = self.fused(conv, 2, |x| conv.forward_fused(x, &epilogue), x) {
            return y;
        }
        let y = self.call(conv, x)?;
        if let Some(y) = self.train_with_relu(bn, 1, &y) {
            return y;
        }
        let y = self.call(bn, &y)?;
        self.relu(&y)
    }

    /// A block's `relu(bn(conv(x)) + shortcut(self))`, in one fused call where evaluation
    /// allows. `shortcut` runs after the batch norm when the steps run one by one (the order
    /// summaries list them in), before the convolution when fused.
    pub fn conv_norm_add_relu(
        &mut self,
        conv: &Conv2d,
        bn: &BatchNorm,
        x: &Tensor,
        shortcut: impl FnOnce(&mut Self) -> Fwd,
    ) -> Fwd {
        let mut shortcut = Some(shortcut);
        let mut computed = None;
        if self.fusing() {
            let early = (shortcut.take().expect("not run yet"))(self)?;
            let epilogue = Epilogue { norm: Some(bn.norm()), shortcut: Some(&early), activation: Activation::Relu };
            if let Some(y) = self.fused(conv, 2, |x| conv.forward_fused(x, &epilogue), x) {
                return y;
            }
            computed = Some(early);
        }
        let y = self.call(conv, x)?;
        let y = self.call(bn, &y)?;
        let shortcut = match (computed, shortcut) {
            (Some(early), _) => early,
            (None, Some(run)) => run(self)?,
            (None, None) => unreachable!("the shortcut runs once"),
        };
        let sum = self.add(&y, &shortcut)?;
        self.relu(&sum)
    }

    /// A block's functional ReLU (not a layer of its own, as `F.relu` in PyTorch).
    pub fn relu(&mut self, x: &Tensor) -> Fwd {
        let y = x.f_relu().in_layer(x)?;
        self.functional("Relu", &[x], &y, Vec::new())?;
        Ok(y)
    }

    /// A block's sum of two tensors (`Residual`'s `Y + X`).
    pub fn add(&mut self, a: &Tensor, b: &Tensor) -> Fwd {
        let y = a.f_add(b).in_layer(a)?;
        self.functional("Add", &[a, b], &y, Vec::new())?;
        Ok(y)
    }

    /// A block's concatenation on the channel axis (`torch.cat(..., dim=1)`).
    pub fn cat(&mut self, xs: &[&Tensor]) -> Fwd {
        let first = xs.first().copied().ok_or_else(|| LayerError {
            layer: String::new(),
            shape: Vec::new(),
            reason: "nothing to concatenate".into(),
        })?;
        let y = Tensor::f_cat(xs, 1).in_layer(first)?;
        self.functional("Concat", xs, &y, vec![onnx::int("axis", 1)])?;
        Ok(y)
    }

    /// A dense block's loop (d2l's `DenseBlock`, torchvision's `_DenseBlock`): each of `layers`
    /// runs on the concatenation of `x` and every earlier layer's output, on the channel axis,
    /// and the result is the concatenation of them all. Each layer's output has `growth`
    /// channels.
    ///
    /// Evaluation of a channels-last CPU map with nothing recording the pass and autograd off
    /// writes them into one map of the block's final width instead: each layer reads the slice of
    /// the channels before it, and its output is copied after them, where concatenating after
    /// each layer copies every channel so far again (a block of n layers its input n times).
    pub fn dense_block<'l>(
        &mut self,
        layers: impl ExactSizeIterator<Item = &'l dyn Layer>,
        x: &Tensor,
        growth: i64,
    ) -> Fwd {
        let width = x.size().get(1).copied().unwrap_or(0) + layers.len() as i64 * growth;
        // SAFETY: `x` is a live tensor; the shim writes the out-parameter only.
        let start = |out| unsafe { convnets_dense_concatenation(x.as_ptr(), width, out) };
        if self.fusing()
            && let Some(map) = kernel_output(x, &DENSE_BLOCKS_IN_ONE_MAP, start)
        {
            let map = map?;
            let mut channels = x.size()[1];
            for layer in layers {
                let y = self.call(layer, &map.f_narrow(1, 0, channels).in_layer(x)?)?;
                map.f_narrow(1, channels, growth).and_then(|mut slice| slice.f_copy_(&y)).in_layer(&y)?;
                channels += growth;
            }
            return Ok(map);
        }
        let mut x = x.shallow_clone();
        for layer in layers {
            let y = self.call(layer, &x)?;
            x = self.cat(&[&x, &y])?;
        }
        Ok(x)
    }

    /// When exporting, adds the node of a functional step that computed `y` from `inputs`.
    fn functional(
        &mut self,
        op_type: &str,
        inputs: &[&Tensor],
        y: &Tensor,
        attributes: Vec<AttributeProto>,
    ) -> Result<(), LayerError> {
        let Some(graph) = self.graph() else { return Ok(()) };
        let names: Result<Vec<String>, String> = inputs.iter().map(|t| graph.value(t)).collect();
        let names = names.map_err(|reason| shape_error(y, format!("ONNX export: {op_type} reads {reason}")))?;
        let output = graph.node(op_type, names, attributes);
        graph.bind(y, output);
        Ok(())
    }
}

impl Ctx<'_> {
    /// Runs `f`, which calls the children of `container` without calling `container` itself (as
    /// `DenseBlock` iterates over its `net`). PyTorch's module tree still holds that level, and
    /// torchinfo lists it (with no output), so the trace records it as an uncalled container.
    pub fn within<T>(&mut self, container: &dyn Layer, f: impl FnOnce(&mut Self) -> T) -> T {
        let entry = self.tracer.as_deref_mut().map(|t| t.enter_uncalled(container));
        let result = f(self);
        if let (Some(t), Some(entry)) = (self.tracer.as_deref_mut(), entry) {
            t.leave(entry);
        }
        result
    }
}
