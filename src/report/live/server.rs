//! The HTTP server: the page, its state as JSON, and the state as server-sent events, on a thread
//! of its own.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::Duration;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Json, Response};
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
    if !addr.ip().is_loopback() {
        eprintln!(
            "warning: the live view listens on {addr}: anyone who can reach this machine there can read it (it has no authentication)"
        );
    }
    let streams = Arc::new(AtomicUsize::new(0));
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
                .route("/events", get(move || async move { sse(events.clone(), &streams) }));
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

/// Event streams served at once at most: each holds a connection and a copy of every update, so
/// that pages left open (or a client opening streams on purpose) cannot exhaust the process.
pub const MAX_STREAMS: usize = 64;

/// One open event stream, counted in `streams` while it lives.
struct OpenStream(Arc<AtomicUsize>);

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The view as a stream of server-sent events: the whole state now, then at every change; or,
/// with [`MAX_STREAMS`] open already, 503 Service Unavailable.
fn sse(view: watch::Receiver<View>, streams: &Arc<AtomicUsize>) -> Response {
    if streams.fetch_add(1, Ordering::SeqCst) >= MAX_STREAMS {
        streams.fetch_sub(1, Ordering::SeqCst);
        let why = format!("the live view serves {MAX_STREAMS} event streams at most; close a page and retry\n");
        return (StatusCode::SERVICE_UNAVAILABLE, why).into_response();
    }
    let open = OpenStream(streams.clone());
    let stream = WatchStream::new(view).map(move |view| {
        let _counted = &open; // dropped, and uncounted, with the stream
        Event::default().event("view").json_data(&view).map_err(|e| std::io::Error::other(e.to_string()))
    });
    Sse::new(stream).keep_alive(KeepAlive::default()).into_response()
}
