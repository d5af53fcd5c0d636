//! Files that are never half-written: whatever happens (a kill, a full disk), a path holds
//! either its old content or the complete new one.

use std::io::Write;
use std::path::Path;

/// Writes `bytes` to `path` so that `path` is always either the old file or the complete new
/// one: a temporary file in the same directory, flushed to disk, then renamed over it.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}{TEMPORARY_MARK}{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // Make the rename itself durable.
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// What the temporary file of [`write_atomic`] has in its name, between `.NAME` and the
/// process id.
const TEMPORARY_MARK: &str = ".tmp-";

/// Removes the temporary files that [`write_atomic`] calls killed in `dir` left behind.
pub fn remove_stale_temporaries(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') && name.contains(TEMPORARY_MARK) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}
