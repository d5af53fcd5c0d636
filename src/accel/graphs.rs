//! CUDA graphs: a whole training or evaluation step captured once and replayed with one launch.

#[cfg(feature = "cuda")]
use std::ffi::c_void;

use tch::{Device, Tensor};

#[cfg(feature = "cuda")]
use crate::ffi::{
    check, convnets_graph_begin, convnets_graph_end, convnets_graph_free, convnets_graph_new, convnets_graph_replay,
};

/// Whether this build can capture CUDA graphs.
pub const GRAPHS_AVAILABLE: bool = cfg!(feature = "cuda");

/// A captured sequence of CUDA work, replayed with one launch.
pub struct CudaGraph {
    #[cfg(feature = "cuda")]
    handle: *mut c_void,
}

impl CudaGraph {
    /// Captures the CUDA work `f` queues (it is recorded, not run: replay it to run it). `f` must
    /// not read values back to the host. Tensors `f` creates live in the graph's own memory and
    /// are rewritten by every replay.
    #[cfg(feature = "cuda")]
    pub fn capture<T>(f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<(CudaGraph, T)> {
        let mut handle = std::ptr::null_mut();
        check(unsafe { convnets_graph_new(&mut handle) })?;
        let graph = CudaGraph { handle };
        check(unsafe { convnets_graph_begin(graph.handle) })?;
        // The capture must end whatever `f` does, or the stream stays in capture mode.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        let ended = check(unsafe { convnets_graph_end(graph.handle) });
        let value = match result {
            Ok(value) => value?,
            Err(panic) => std::panic::resume_unwind(panic),
        };
        ended?;
        Ok((graph, value))
    }

    #[cfg(not(feature = "cuda"))]
    pub fn capture<T>(_f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<(CudaGraph, T)> {
        anyhow::bail!("CUDA graphs need a build with the `cuda` feature")
    }

    pub fn replay(&self) -> anyhow::Result<()> {
        #[cfg(feature = "cuda")]
        return check(unsafe { convnets_graph_replay(self.handle) });
        #[cfg(not(feature = "cuda"))]
        unreachable!("no CudaGraph exists without the cuda feature")
    }
}

#[cfg(feature = "cuda")]
impl Drop for CudaGraph {
    fn drop(&mut self) {
        unsafe { convnets_graph_free(self.handle) }
    }
}

/// Runs a function of a few tensors, and on CUDA replays it from a captured graph once the
/// same input shapes have come [`Replayer::EAGER_CALLS`] times in a row (cuDNN's autotuner and lazy
/// initialisation happen in those eager calls). Inputs of another shape, such as an epoch's
/// short last batch, run eagerly. d2l's shapes are static, so nearly every step is a replay:
/// one launch instead of hundreds. Off unless asked for (`--cuda-graphs`): a capture or replay
/// that fails is reported once, and the replayer goes on eagerly.
pub struct Replayer {
    enabled: bool,
    last_shapes: Vec<Vec<i64>>,
    repeats: usize,
    captured: Option<Captured>,
}

struct Captured {
    graph: CudaGraph,
    inputs: Vec<Tensor>,
    outputs: Vec<Tensor>,
}

impl Replayer {
    /// Eager calls with the same shapes before a capture.
    pub const EAGER_CALLS: usize = 3;

    /// Graphs are used when asked for, on a CUDA device, in a build that has them.
    pub fn new(device: Device, graphs: bool) -> Self {
        Replayer {
            enabled: graphs && device.is_cuda() && GRAPHS_AVAILABLE,
            last_shapes: Vec::new(),
            repeats: 0,
            captured: None,
        }
    }

    /// Whether this replayer will capture graphs (a CUDA device, graphs asked for and built in).
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    pub fn graphed(&self) -> bool {
        self.captured.is_some()
    }

    /// `f(inputs)`, eagerly or replayed. Replayed outputs are the graph's own tensors: read them
    /// before the next call.
    pub fn run(
        &mut self,
        inputs: &[&Tensor],
        mut f: impl FnMut(&[&Tensor]) -> anyhow::Result<Vec<Tensor>>,
    ) -> anyhow::Result<Vec<Tensor>> {
        if !self.enabled {
            return f(inputs);
        }
        match self.graphed_run(inputs, &mut f) {
            Ok(Some(outputs)) => Ok(outputs),
            Ok(None) => f(inputs),
            Err(GraphFailure(error)) => {
                // Neither a failed capture nor a failed launch has run the step: running it
                // eagerly now gives the numbers the graph would have.
                eprintln!("warning: {}; continuing without CUDA graphs", crate::error::error_line(&error));
                self.enabled = false;
                self.captured = None;
                f(inputs)
            }
        }
    }

    /// The replayed (or just captured) outputs, `None` when this call runs eagerly, or the
    /// failure of the graph machinery. A failure of `f` during a capture counts as one (work a
    /// capture forbids fails there); run eagerly again, `f` reports its own errors.
    fn graphed_run(
        &mut self,
        inputs: &[&Tensor],
        f: &mut impl FnMut(&[&Tensor]) -> anyhow::Result<Vec<Tensor>>,
    ) -> Result<Option<Vec<Tensor>>, GraphFailure> {
        let shapes: Vec<Vec<i64>> = inputs.iter().map(|t| t.size()).collect();
        if let Some(c) = &self.captured {
            if !c.inputs.iter().map(|t| t.size()).eq(shapes.iter().cloned()) {
                return Ok(None);
            }
            for (to, from) in c.inputs.iter().zip(inputs) {
                to.shallow_clone().f_copy_(from).map_err(|e| GraphFailure(e.into()))?;
            }
            c.graph.replay().map_err(|e| GraphFailure(e.context("replaying a CUDA graph failed")))?;
            return Ok(Some(c.outputs.iter().map(|t| t.shallow_clone()).collect()));
        }
        if shapes == self.last_shapes {
            self.repeats += 1;
        } else {
            self.last_shapes = shapes;
            self.repeats = 1;
        }
        if self.repeats <= Self::EAGER_CALLS {
            return Ok(None);
        }
        let statics = inputs
            .iter()
            .map(|t| t.f_zeros_like().and_then(|mut s| s.f_copy_(t).map(|_| s)))
            .collect::<Result<Vec<Tensor>, _>>()
            .map_err(|e| GraphFailure(e.into()))?;
        let (graph, outputs) = CudaGraph::capture(|| f(&statics.iter().collect::<Vec<_>>()))
            .map_err(|e| GraphFailure(e.context("capturing a CUDA graph failed")))?;
        graph.replay().map_err(|e| GraphFailure(e.context("replaying a CUDA graph failed")))?;
        let result = outputs.iter().map(|t| t.shallow_clone()).collect();
        self.captured = Some(Captured { graph, inputs: statics, outputs });
        Ok(Some(result))
    }
}

/// The graph machinery failed (not the function captured): the replayer falls back to eager.
struct GraphFailure(anyhow::Error);
