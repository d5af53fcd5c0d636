//! d2l's optimizer, plain SGD, as libtorch's own `torch::optim::SGD` computes it (the update
//! PyTorch makes, bit for bit), with every call fallible: tch's `nn::Optimizer` unwraps
//! libtorch's errors, which turns a CUDA failure during a step into a panic.

use tch::nn::VarStore;
use tch::{COptimizer, TchError};

/// Plain SGD: no momentum, no weight decay, so it keeps no state besides its learning rate.
pub struct Sgd {
    optimizer: COptimizer,
}

impl Sgd {
    /// SGD at rate `lr` over every trainable variable of `vs` (batch-norm running statistics are
    /// not trainable).
    pub fn new(vs: &VarStore, lr: f64) -> Result<Self, TchError> {
        let mut optimizer = COptimizer::sgd(lr, 0.0, 0.0, 0.0, false)?;
        for variable in vs.trainable_variables() {
            optimizer.add_parameters(&variable, 0)?;
        }
        Ok(Sgd { optimizer })
    }

    /// Clears the gradients (libtorch sets them to none, as PyTorch's `zero_grad` does).
    pub fn zero_grad(&mut self) -> Result<(), TchError> {
        self.optimizer.zero_grad()
    }

    /// `p -= lr * p.grad` for every parameter.
    pub fn step(&mut self) -> Result<(), TchError> {
        self.optimizer.step()
    }
}
