//! The live view: a web page that redraws d2l's Animator chart as points arrive, the way the
//! notebook's chart grows while a network trains. `convnets train --serve` serves the run it
//! trains; `convnets serve DIR` serves every run under DIR, finished or running, side by side.
//!
//! The state is small (a run's points, progress and configuration), so every update sends all
//! of it as one server-sent event: a browser that connects late or reconnects gets the whole
//! picture at once, and nothing is lost between updates.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Json};
use axum::routing::get;
use serde::Serialize;
use tokio::sync::watch;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::WatchStream;

use crate::train::{CHECKPOINT_FILE, EpochRecord, History, Point, TrainConfig};

const PAGE: &str = include_str!("page.html");

/// Where a run stands.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Progress {
    /// The epoch under way (1-based); 0 before the first.
    pub epoch: usize,
    pub epochs: usize,
    /// Batches done in that epoch, of `batches`; 0 of 0 when unknown.
    pub batch: usize,
    pub batches: usize,
}

/// One run as the page shows it.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RunView {
    pub name: String,
    /// `running`, `finished`, `stopped` or `failed: <why>`.
    pub status: String,
    pub config: Option<TrainConfig>,
    pub progress: Progress,
    pub points: Vec<Point>,
    pub epochs: Vec<EpochRecord>,
}

impl RunView {
    fn from_history(name: String, config: TrainConfig, history: &History, status: &str) -> Self {
        let progress = Progress { epoch: history.epochs.len(), epochs: config.epochs, batch: 0, batches: 0 };
        RunView {
            name,
            status: status.into(),
            config: Some(config),
            progress,
            points: history.points.clone(),
            epochs: history.epochs.clone(),
        }
    }
}

/// Everything the page shows.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct View {
    pub runs: Vec<RunView>,
}

/// The live state of one training run, published to every connected page.
#[derive(Clone)]
pub struct Board {
    view: watch::Sender<View>,
}

impl Default for Board {
    fn default() -> Self {
        Board { view: watch::Sender::new(View::default()) }
    }
}

impl Board {
    /// Changes the run's view and publishes it.
    pub fn update(&self, change: impl FnOnce(&mut RunView)) {
        self.view.send_modify(|view| {
            if view.runs.is_empty() {
                view.runs.push(RunView::default());
            }
            change(&mut view.runs[0]);
        });
    }

    /// What the page would show now.
    pub fn snapshot(&self) -> View {
        self.view.borrow().clone()
    }
}

/// A running live-view server; it stops with the process.
pub struct Server {
    pub addr: SocketAddr,
}

impl Server {
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }
}

/// The address to listen on: loopback unless another is named (`--serve 0.0.0.0:8080`), a
/// free port unless one is named.
pub fn parse_addr(flag: &str, addr: Option<&str>) -> Result<SocketAddr, String> {
    let addr = addr.unwrap_or("127.0.0.1:0");
    let with_port = if addr.contains(':') { addr.to_string() } else { format!("{addr}:0") };
    with_port
        .parse::<SocketAddr>()
        .map_err(|_| format!("{flag} {addr}: expected an address such as 127.0.0.1, 127.0.0.1:8080 or 0.0.0.0:8080"))
}

/// Serves `board` on `addr` from a thread of its own.
pub fn serve(addr: SocketAddr, board: &Board) -> anyhow::Result<Server> {
    start(addr, board.view.subscribe(), None)
}

/// Serves every run under `dir` (each directory holding a `config.json`, `dir` itself too),
/// read again every second.
pub fn serve_runs(addr: SocketAddr, dir: &Path) -> anyhow::Result<Server> {
    anyhow::ensure!(dir.is_dir(), "{}: no such directory", dir.display());
    let (tx, rx) = watch::channel(scan_runs(dir));
    start(addr, rx, Some((tx, dir.to_path_buf())))
}

fn start(
    addr: SocketAddr,
    view: watch::Receiver<View>,
    rescan: Option<(watch::Sender<View>, PathBuf)>,
) -> anyhow::Result<Server> {
    // Bound here, so that a taken port is an error now and the chosen port is known.
    let listener = TcpListener::bind(addr).map_err(|e| crate::usage(format!("cannot listen on {addr}: {e}")))?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_io().enable_time().build()?;
    std::thread::Builder::new().name("live-view".into()).spawn(move || {
        runtime.block_on(async move {
            if let Some((tx, dir)) = rescan {
                tokio::spawn(async move {
                    loop {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        let runs = scan_runs(&dir);
                        tx.send_if_modified(|view| {
                            let changed = *view != runs;
                            *view = runs;
                            changed
                        });
                    }
                });
            }
            let events = view.clone();
            let router = Router::new()
                .route("/", get(|| async { Html(PAGE) }))
                .route("/state", get(move || async move { Json(view.borrow().clone()) }))
                .route("/events", get(move || async move { sse(events.clone()) }));
            match tokio::net::TcpListener::from_std(listener) {
                Ok(listener) => {
                    if let Err(e) = axum::serve(listener, router).await {
                        eprintln!("live view stopped: {e}");
                    }
                }
                Err(e) => eprintln!("live view cannot start: {e}"),
            }
        })
    })?;
    Ok(Server { addr })
}

/// The view as a stream of server-sent events: the whole state now, then at every change.
fn sse(view: watch::Receiver<View>) -> impl IntoResponse {
    let stream = WatchStream::new(view)
        .map(|view| Event::default().event("view").json_data(&view).map_err(|e| std::io::Error::other(e.to_string())));
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// The runs under `dir`, by name.
pub fn scan_runs(dir: &Path) -> View {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| entries.flatten().map(|e| e.path()).filter(|p| p.join("config.json").is_file()).collect())
        .unwrap_or_default();
    if dir.join("config.json").is_file() {
        dirs.push(dir.to_path_buf());
    }
    dirs.sort();
    View { runs: dirs.iter().filter_map(|d| read_run(d)).collect() }
}

/// A run directory as the page shows it: finished when every epoch is done, running while its
/// event file (appended at every point) changed in the last two minutes, stopped otherwise.
fn read_run(dir: &Path) -> Option<RunView> {
    let config: TrainConfig = serde_json::from_slice(&std::fs::read(dir.join("config.json")).ok()?).ok()?;
    let history: History =
        std::fs::read(dir.join("metrics.json")).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
    let recently = |path: Option<PathBuf>| {
        path.and_then(|p| p.metadata().ok()?.modified().ok())
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .is_some_and(|age| age < Duration::from_secs(120))
    };
    let status = if history.epochs.len() >= config.epochs && dir.join(CHECKPOINT_FILE).is_file() {
        "finished"
    } else if recently(crate::tensorboard::event_file(dir)) {
        "running"
    } else {
        "stopped"
    };
    let name = dir.file_name().map_or_else(|| dir.display().to_string(), |n| n.to_string_lossy().into_owned());
    Some(RunView::from_history(name, config, &history, status))
}
