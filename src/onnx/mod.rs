//! The ONNX format as convnets writes it: the protobuf messages (`proto`) and the graph a traced
//! forward pass builds (`graph`): nodes, weights as initializers, and which value each live
//! tensor holds. It knows nothing of networks or runs: each layer says what nodes it adds, and
//! the `export` module turns a traced network into a file.

mod graph;
pub mod proto;

pub use graph::{OnnxGraph, float, int, ints};
