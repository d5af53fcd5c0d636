//! Faults injected on purpose, so that the error paths (one line, the checkpoint kept,
//! `--resume`, the other ranks stopping) can be tested on any machine.

/// Where `CONVNETS_FAIL_AT` makes a training step fail.
#[derive(Clone, Copy)]
pub(crate) struct Fault {
    pub epoch: usize,
    pub batch: usize,
    /// In a distributed run, only this rank's step fails (all ranks' when not given).
    pub rank: Option<usize>,
}

/// `CONVNETS_FAIL_AT=EPOCH:BATCH[:RANK]` makes that training step fail inside libtorch, so that
/// the error path (one line, the checkpoint kept, `--resume`, the other ranks stopping) can be
/// tested on any machine.
pub(crate) fn injected_fault() -> anyhow::Result<Option<Fault>> {
    let Ok(value) = std::env::var("CONVNETS_FAIL_AT") else { return Ok(None) };
    let numbers: Option<Vec<usize>> = value.split(':').map(|n| n.parse().ok()).collect();
    match numbers.as_deref() {
        Some(&[epoch, batch]) => Ok(Some(Fault { epoch, batch, rank: None })),
        Some(&[epoch, batch, rank]) => Ok(Some(Fault { epoch, batch, rank: Some(rank) })),
        _ => Err(crate::error::usage(format!("CONVNETS_FAIL_AT={value}: expected EPOCH:BATCH[:RANK], e.g. 2:3"))),
    }
}
