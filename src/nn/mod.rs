//! The layers the chapter uses, one file per family, and the one mechanism every network runs
//! through.
//!
//! Each layer is a [`Layer`]; every call of a layer goes through [`Ctx::call`], which carries the
//! train/eval flag and, when a [`Tracer`] is attached, records what ran: its type, depth, output
//! shape and parameters (and, when exporting, its ONNX nodes). Summaries (torchsummary,
//! torchinfo), shape traces, profiles and the ONNX export are all read off that record, so no
//! network has summary or export code of its own.
//!
//! Leaves check their input shape before computing, so an input a network cannot take becomes a
//! [`LayerError`] naming the layer, never a panic inside libtorch; every tensor operation is a
//! fallible (`f_`) call, so whatever libtorch raises while computing (a CUDA error, memory) is a
//! [`LayerError`] too, with libtorch's message.

mod activation;
mod container;
mod conv;
mod ctx;
mod dropout;
mod flatten;
mod fused;
mod init;
mod layer;
mod linear;
mod loss;
mod norm;
mod pool;
mod trace;

pub use activation::{ReLU, Sigmoid};
pub use container::Sequential;
pub use conv::{
    Conv2d, KernelPolicy, one_channel_conv_calls, set_weight_grad_kernel, set_winograd_kernel,
    training_conv_kernel_calls, winograd_conv_calls,
};
pub use ctx::{Ctx, dense_blocks_in_one_map, pools_before_relu};
pub use dropout::Dropout;
pub use flatten::Flatten;
pub use fused::{Fusable, Norm, fused_calls, fuses_bf16};
pub use init::{BiasInit, WeightInit};
pub use layer::{Fwd, InLayer, Layer, LayerError, count_parameters, expect_image};
pub use linear::{Linear, reset_linear};
pub use loss::cross_entropy;
pub use norm::{BatchNorm, ScratchBatchNorm, SyncBatchNorm, batch_norm_kernel_calls, batch_norm_relu_kernel_calls};
pub use pool::{
    AdaptiveAvgPool2d, AvgPool2d, GlobalAvgPool2d, MaxPool2d, avg_pool_kernel_calls, max_pool_kernel_calls,
};
pub use trace::{Record, Tracer};
