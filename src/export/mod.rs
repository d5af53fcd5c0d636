//! A trained network for use elsewhere: the eval-mode network as ONNX (`onnx`, built through
//! `crate::onnx` from the same trace as every summary), described by a model card (`card`), or
//! its weights as a PyTorch `state_dict` in safetensors (`safetensors`).

mod card;
mod onnx;
mod safetensors;

pub use card::ModelCard;
pub use onnx::{INPUT, OPSET, OUTPUT, export};
pub use safetensors::state_dict_file;
