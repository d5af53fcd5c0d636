//! The live view: a web page that redraws d2l's Animator chart as points arrive, the way the
//! notebook's chart grows while a network trains. `convnets train --serve` serves the run it
//! trains; `convnets serve DIR` serves every run under DIR, finished or running, side by side.
//!
//! The state is small (a run's points, progress and configuration), so every update sends all
//! of it as one server-sent event: a browser that connects late or reconnects gets the whole
//! picture at once, and nothing is lost between updates.

mod runs;
mod server;
mod view;

pub use runs::scan_runs;
pub use server::{Server, parse_addr, serve, serve_runs};
pub use view::{Board, BoardObserver, RunView, View};
