//! The HTTP server: the page, its state as JSON, and the state as server-sent events, on a thread
//! of its own.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::Router;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Json};
use axum::routing::get;
use tokio::sync::watch;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::WatchStream;

use super::runs::scan_runs;
use super::{Board, View};

const PAGE: &str = include_str!("page.html");

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
    start(addr, board.subscribe(), None)
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
    let listener = TcpListener::bind(addr).map_err(|e| crate::error::usage(format!("cannot listen on {addr}: {e}")))?;
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
