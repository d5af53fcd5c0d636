//! `convnets serve`: the live view of every run under a directory.

use std::path::Path;

use crate::error::usage;
use crate::report::live;

pub fn run(dir: &Path, addr: Option<&str>) -> anyhow::Result<()> {
    let addr = live::parse_addr("--addr", addr).map_err(usage)?;
    let server = live::serve_runs(addr, dir)?;
    eprintln!("live view of the runs in {}: {} (Ctrl-C stops it)", dir.display(), server.url());
    loop {
        std::thread::park();
    }
}
