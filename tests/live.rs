//! The live view's server, without a browser (the page itself is tested in Chromium by
//! tests/browser/live_view.sh): the state a page receives, over plain HTTP and as server-sent
//! events, while a run trains and after it, for one run and for a directory of runs.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};

mod common;

/// Starts `convnets ARGS` with the variables `env` and waits for the URL it prints on stderr,
/// then for a line that starts with `until` (when given).
fn start(args: &[&str], env: &[(&str, &str)], until: Option<&str>) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_convnets"))
        .args(args)
        .envs(env.iter().copied())
        .env_remove("CONVNETS_DATA")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines().map(Result::unwrap);
    let url = lines.find_map(|line| Some(line[line.find("http://")?..].split_whitespace().next()?.to_string()));
    let url = url.expect("the URL before stderr ends");
    if let Some(until) = until {
        assert!(lines.any(|line| line.starts_with(until)), "no line {until:?} before stderr ended");
    }
    // Keep draining stderr so the child never blocks on it.
    std::thread::spawn(move || for _ in lines {});
    (child, url)
}

fn host(url: &str) -> &str {
    url.trim_start_matches("http://").trim_end_matches('/')
}

/// A GET request's body.
fn get(url: &str, path: &str) -> String {
    let mut stream = TcpStream::connect(host(url)).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", host(url)).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response.split_once("\r\n\r\n").unwrap().1.to_string()
}

fn state(url: &str) -> serde_json::Value {
    serde_json::from_str(&get(url, "/state")).unwrap()
}

#[test]
fn a_training_run_publishes_its_progress_points_and_config_as_it_goes() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    // The run is held before the first step of epoch 2: epoch 1's points are published, and the
    // run is still training.
    let (mut child, url) = start(
        &[
            "train",
            "googlenet",
            "--resize",
            "32",
            "--batch-size",
            "64",
            "--epochs",
            "2",
            "--serve",
            "--out",
            out.to_str().unwrap(),
        ],
        &[("CONVNETS_HOLD_AT", "2:1")],
        Some("held at epoch 2, batch 1"),
    );
    assert!(url.starts_with("http://127.0.0.1:"), "loopback by default: {url}");
    assert!(get(&url, "/").contains("<title>convnets: live view</title>"));

    let view = state(&url);
    let run = &view["runs"][0];
    assert_eq!(run["status"], "running");
    assert_eq!(run["name"], "run");
    assert_eq!(run["config"]["net"], "googlenet");
    assert_eq!(run["progress"], serde_json::json!({"epoch": 1, "epochs": 2, "batch": 32, "batches": 32}));
    assert_eq!(
        run["points"].as_array().unwrap().len(),
        7,
        "epoch 1's points while the run trains: 32 batches, a point every 6 and after the last, then the test accuracy"
    );
    assert_eq!(run["epochs"].as_array().unwrap().len(), 1);

    // The event stream starts with the whole state, for a page that connects late.
    let mut stream = TcpStream::connect(host(&url)).unwrap();
    write!(stream, "GET /events HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    let data = loop {
        line.clear();
        reader.read_line(&mut line).unwrap();
        if let Some(data) = line.strip_prefix("data: ") {
            break data.to_string();
        }
    };
    let first: serde_json::Value = serde_json::from_str(&data).unwrap();
    assert_eq!(first, view, "the stream's first event is the state");
    child.kill().unwrap();
    let _ = child.wait();
}

#[test]
fn serve_shows_every_run_of_a_directory_and_refuses_a_bad_address() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, epochs) in [("a", "1"), ("b", "2")] {
        let dir = tmp.path().join(name);
        let (code, _, err) =
            common::convnets(&["train", "lenet-bn", "--epochs", epochs, "--out", dir.to_str().unwrap()]);
        assert_eq!(code, 0, "{err}");
    }
    std::fs::create_dir(tmp.path().join("not-a-run")).unwrap();
    let (mut child, url) = start(&["serve", tmp.path().to_str().unwrap()], &[], None);
    let view = state(&url);
    child.kill().unwrap();
    let _ = child.wait();
    let runs = view["runs"].as_array().unwrap();
    let names: Vec<&str> = runs.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["a", "b"]);
    assert!(runs.iter().all(|r| r["status"] == "finished"), "{view}");
    assert_eq!(runs[1]["epochs"].as_array().unwrap().len(), 2);
    assert_eq!(
        runs[1]["points"].as_array().unwrap().len(),
        2 * 9,
        "8 batches an epoch: a point after each (8 / 5 rounds down to 1), then the test accuracy"
    );

    // Other interfaces only when named, and then with a warning: the page has no authentication.
    let mut child = Command::new(env!("CARGO_BIN_EXE_convnets"))
        .args(["serve", tmp.path().to_str().unwrap(), "--addr", "0.0.0.0"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines: Vec<String> = BufReader::new(child.stderr.take().unwrap())
        .lines()
        .map(Result::unwrap)
        .take_while(|line| !line.contains("http://"))
        .collect();
    child.kill().unwrap();
    let _ = child.wait();
    assert!(
        lines.iter().any(|l| l.starts_with("warning: the live view listens on 0.0.0.0:")
            && l.ends_with("anyone who can reach this machine there can read it (it has no authentication)")),
        "{lines:?}"
    );

    let (code, _, err) = common::convnets(&["serve", tmp.path().to_str().unwrap(), "--addr", "localhost:http"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--addr localhost:http: expected an address such as 127.0.0.1"), "{err}");
    let (code, _, err) = common::convnets(&["serve", "/nonexistent/runs"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("/nonexistent/runs: no such directory"), "{err}");
}

#[test]
fn at_most_64_event_streams_are_served_at_once_and_the_training_goes_on() {
    let tmp = tempfile::tempdir().unwrap();
    let (out, release) = (tmp.path().join("run"), tmp.path().join("release"));
    let hold = [("CONVNETS_HOLD_AT", "1:2"), ("CONVNETS_HOLD_RELEASE", release.to_str().unwrap())];
    let args = ["train", "lenet-bn", "--epochs", "1", "--serve", "--out", out.to_str().unwrap()];
    let (mut child, url) = start(&args, &hold, Some("held at epoch 1, batch 2"));
    // An event stream's request (the refused one's connection closes after the answer).
    let open = || {
        let mut stream = TcpStream::connect(host(&url)).unwrap();
        write!(stream, "GET /events HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
        let mut reader = BufReader::new(stream);
        let mut status = String::new();
        reader.read_line(&mut status).unwrap();
        (status, reader)
    };
    let mut streams = Vec::new();
    for _ in 0..64 {
        let (status, mut reader) = open();
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        let mut line = String::new();
        while !line.starts_with("data: ") {
            line.clear();
            reader.read_line(&mut line).unwrap();
        }
        streams.push(reader);
    }
    let (status, mut reader) = open();
    assert!(status.starts_with("HTTP/1.1 503"), "the 65th: {status}");
    let mut body = String::new();
    reader.read_to_string(&mut body).unwrap();
    assert!(body.contains("the live view serves 64 event streams at most"), "{body}");
    // The page itself is still served, and the run trains on to its end.
    assert!(get(&url, "/").contains("<title>convnets: live view</title>"));
    std::fs::write(&release, b"").unwrap();
    assert!(child.wait().unwrap().success());
    assert!(out.join("checkpoint.safetensors").is_file());
    drop(streams);
}
