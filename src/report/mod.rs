//! The reporters of a training run, each an [`Observer`](crate::train::Observer) that reads what
//! `train` measures and that `train` never names: the console (`console`), the run directory's
//! metrics and charts (`files`, drawn by `plot`), TensorBoard event files (`tensorboard`) and the
//! live view in a browser (`live`).

pub mod console;
pub mod files;
pub mod live;
pub mod plot;
pub mod tensorboard;

pub use console::Console;
pub use files::{ResultFiles, write_results};
pub use tensorboard::EventLog;

use crate::train::Observer;

/// The reporters whose files every run directory holds: metrics and charts, and TensorBoard's
/// event file.
pub fn run_files<'a>() -> Vec<Box<dyn Observer + 'a>> {
    vec![Box::new(ResultFiles::default()), Box::new(EventLog::default())]
}
