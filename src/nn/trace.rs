//! What a traced forward pass recorded: one [`Record`] per layer call, in the order the calls
//! started. Summaries and shape traces are rendered from it (see `summary`), and, with a clock
//! attached, where a forward pass spends its time (`convnets profile`).

use std::time::Instant;

use tch::Device;

use super::Layer;
use crate::accel;
use crate::onnx::OnnxGraph;

/// One call of one layer.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// PyTorch class name, e.g. `Conv2d`.
    pub type_name: &'static str,
    /// 0 for the network itself, 1 for its top-level layers, and so on.
    pub depth: usize,
    /// Output shape, batch dimension first.
    pub output: Vec<i64>,
    /// Trainable values the layer owns directly.
    pub params: i64,
    /// torchinfo's multiply-add count for one example.
    pub mult_adds: i64,
    /// A pure container (`Sequential`): no torchsummary row.
    pub container: bool,
    /// Whether other calls happened inside this one.
    pub has_children: bool,
    /// Position in the order calls finished (torchsummary numbers rows by it).
    pub finished: usize,
    /// Wall time of the call, children included (0 unless the tracer was timed).
    pub seconds: f64,
    /// `false` for a container the forward pass never calls but runs the children of (see
    /// `Ctx::within`): it has no output, and torchinfo shows it as a level of the tree.
    pub called: bool,
}

/// Collects [`Record`]s while a forward pass runs through `Ctx::call`.
#[derive(Default)]
pub struct Tracer {
    pub records: Vec<Record>,
    open: Vec<usize>,
    finished: usize,
    /// When timing: the device to wait for around each call, and each open call's start.
    clock: Option<(Device, Vec<Instant>)>,
    /// When exporting: the ONNX graph the layers add their nodes to as they run.
    pub graph: Option<OnnxGraph>,
}

impl Tracer {
    pub fn new() -> Self {
        Self::default()
    }

    /// A tracer that also times every call, waiting for `device` before and after each so that
    /// a GPU's asynchronous work is charged to the layer that queued it.
    pub fn timed(device: Device) -> Self {
        Tracer { clock: Some((device, Vec::new())), ..Self::default() }
    }

    /// A tracer that also builds the ONNX graph of the pass (what the `export` module does).
    pub fn exporting(graph: OnnxGraph) -> Self {
        Tracer { graph: Some(graph), ..Self::default() }
    }

    /// A call of `layer` starts; returns the handle for [`Tracer::exit`].
    pub fn enter(&mut self, layer: &dyn Layer) -> usize {
        let entry = self.open_record(layer, true);
        if let Some((device, starts)) = &mut self.clock {
            accel::synchronize(*device);
            starts.push(Instant::now());
        }
        entry
    }

    /// The children of `container`, which is not itself called, are about to run; returns the
    /// handle for [`Tracer::leave`].
    pub fn enter_uncalled(&mut self, container: &dyn Layer) -> usize {
        self.open_record(container, false)
    }

    /// The children of the uncalled container `entry` have run.
    pub fn leave(&mut self, entry: usize) {
        let popped = self.open.pop();
        debug_assert_eq!(popped, Some(entry));
    }

    fn open_record(&mut self, layer: &dyn Layer, called: bool) -> usize {
        if let Some(&parent) = self.open.last() {
            self.records[parent].has_children = true;
        }
        self.records.push(Record {
            type_name: layer.type_name(),
            depth: self.open.len(),
            output: Vec::new(),
            params: layer.parameters().iter().map(|t| t.numel() as i64).sum(),
            mult_adds: 0,
            container: layer.is_container(),
            has_children: false,
            finished: 0,
            seconds: 0.0,
            called,
        });
        self.open.push(self.records.len() - 1);
        self.records.len() - 1
    }

    /// The call `entry` of `layer` returned a tensor of shape `output` (batch first).
    pub fn exit(&mut self, entry: usize, layer: &dyn Layer, output: &[i64]) {
        let popped = self.open.pop();
        debug_assert_eq!(popped, Some(entry));
        let record = &mut self.records[entry];
        if let Some((device, starts)) = &mut self.clock {
            accel::synchronize(*device);
            record.seconds = starts.pop().map_or(0.0, |start| start.elapsed().as_secs_f64());
        }
        record.output = output.to_vec();
        let mut one_example = output.to_vec();
        if let Some(batch) = one_example.first_mut() {
            *batch = 1;
        }
        record.mult_adds = layer.mult_adds(&one_example);
        record.finished = self.finished;
        self.finished += 1;
    }
}
