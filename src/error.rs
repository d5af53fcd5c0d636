//! How convnets reports what went wrong: a mistake in what the user asked for (exit code 2)
//! apart from a failure while doing it (exit code 1), and libtorch's messages cut to the line a
//! user can act on.

/// A mistake in what the user asked for (the CLI exits with code 2), as opposed to a failure
/// while doing it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// A [`UsageError`] as an `anyhow::Error`.
pub fn usage(message: impl Into<String>) -> anyhow::Error {
    UsageError(message.into()).into()
}

/// Writes `line` and a newline to stderr in one write. The ranks of a `--nproc` run share
/// stderr, and a line written in pieces (as `eprintln!` writes its arguments) interleaves with
/// another rank's: two ranks' `held at ...` lines have come out merged into one.
pub fn stderr_line(line: &str) {
    let whole = format!("{line}\n");
    let _ = std::io::Write::write_all(&mut std::io::stderr().lock(), whole.as_bytes());
}

/// Whether the user asked for backtraces (`RUST_BACKTRACE` set and not `0`): then libtorch's
/// messages keep their C++ stack, otherwise only their first line is shown.
pub fn backtraces_wanted() -> bool {
    std::env::var_os("RUST_BACKTRACE").is_some_and(|v| v != "0")
}

/// A message from libtorch as convnets reports it: its first line (libtorch appends the C++
/// stack, "Exception raised from ... frame #0 ...", dozens of lines a user cannot act on),
/// or all of it when [`backtraces_wanted`].
pub fn libtorch_message(message: &str) -> String {
    let message = message.trim();
    if backtraces_wanted() {
        return message.to_string();
    }
    message.lines().next().unwrap_or("").trim_end().to_string()
}

/// A libtorch error as a one-line message (see [`libtorch_message`]).
pub fn torch_error(error: &tch::TchError) -> String {
    match error {
        tch::TchError::Torch(message) => format!("libtorch: {}", libtorch_message(message)),
        other => libtorch_message(&other.to_string()),
    }
}

/// An error and its causes on one line, as the command line prints them (`what: why: ...`), with
/// libtorch's messages cut to their first line (see [`libtorch_message`]).
pub fn error_line(error: &anyhow::Error) -> String {
    let parts: Vec<String> = error
        .chain()
        .map(|e| match e.downcast_ref::<tch::TchError>() {
            Some(torch) => torch_error(torch),
            None => libtorch_message(&e.to_string()),
        })
        .collect();
    parts.join(": ")
}

thread_local! {
    /// Whether this thread runs inside [`catch_panic`].
    static CATCHING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f`, turning a panic inside it into an error that says `what` failed: for third-party
/// code that may assert on hostile input (an image decoder on a crafted file), where a panic
/// would otherwise end the thread that runs it.
pub fn catch_panic<T>(what: &str, f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    let outer = CATCHING.replace(true);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    CATCHING.set(outer);
    result.unwrap_or_else(|payload| {
        let message = panic_text(payload.as_ref()).unwrap_or("unknown panic");
        Err(anyhow::anyhow!("{what} failed: {message}"))
    })
}

/// A panic's message: what `panic!` with a format (a `String`) or a literal (a `&str`) carries.
pub fn panic_text(payload: &(dyn std::any::Any + Send)) -> Option<&str> {
    payload.downcast_ref::<String>().map(String::as_str).or_else(|| payload.downcast_ref::<&str>().copied())
}

/// Whether a panic on this thread now would be caught by [`catch_panic`] (a panic hook then
/// has nothing to report).
pub fn panic_is_caught() -> bool {
    CATCHING.get()
}
