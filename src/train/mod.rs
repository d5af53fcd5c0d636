//! Training as d2l's `train_ch6` does it, one concern a file: the run's configuration with d2l's
//! settings (`config`) and recipe (`recipe`, `optimizer`), the epoch loop (`fit`) and its step
//! (`step`), evaluation (`evaluate`), what is measured (`history`), the checkpoint and run
//! directory (`checkpoint`, `run_dir`), fine-tuning from pretrained weights (`finetune`), how a run stops (`failure`, `fault`), and the trait its
//! reporters implement (`observer`).

mod checkpoint;
mod config;
mod ema;
mod evaluate;
mod failure;
mod fault;
mod finetune;
mod fit;
mod history;
mod mix;
mod observer;
mod optimizer;
mod recipe;
pub mod run_dir;
mod step;

pub use checkpoint::{CHECKPOINT_FILE, Checkpoint, CheckpointState, checkpoint_path, load_checkpoint, save_checkpoint};
pub use config::TrainConfig;
pub use ema::{EMA_PREFIX, Ema};
pub use evaluate::{Evaluation, evaluate, evaluate_with_flips};
pub use failure::{Diverged, RunFailed, fitting_batch_size, is_out_of_memory};
pub use finetune::{FineTune, Pretrained, load_pretrained, pretrained_weights};
pub use fit::{Run, augment_batch, train};
pub use history::{EpochRecord, History, Point};
pub use mix::{Mix, batch_key, draw as draw_mix};
pub use observer::{BatchDone, Observer, Progress, RunStart};
pub use optimizer::Optimizer;
pub use recipe::{OptimizerName, Recipe, Schedule};
pub use step::{
    MicroBatch, StepOptions, clip_grad_norm, micro_batch_step, predict, replayed_train_step, replica_train_step,
    train_step,
};
