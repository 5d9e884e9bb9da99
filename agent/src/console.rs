//! What flowtap tells the person at the terminal beside its output: status lines (silenced by
//! `--quiet`), progress lines (on a terminal only), and standard output that ends quietly when
//! its reader stops reading (`flowtap symbols ... | head`).

use std::{
    io::{IsTerminal, Write},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

static QUIET: AtomicBool = AtomicBool::new(false);

/// `--quiet`: no status or progress lines; warnings, errors and the output itself remain.
pub(crate) fn set_quiet(quiet: bool) {
    QUIET.store(quiet, Ordering::Relaxed);
}

fn quiet() -> bool {
    QUIET.load(Ordering::Relaxed)
}

/// A status line on stderr: `flowtap: MESSAGE`.
pub(crate) fn status(message: impl std::fmt::Display) {
    if !quiet() {
        eprintln!("flowtap: {message}");
    }
}

/// Standard output's reader went away: the command ends quietly, as `head` expects.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PrintError {
    #[error("standard output was closed")]
    Closed,
    #[error("cannot write to standard output: {0}")]
    Io(#[source] std::io::Error),
}

/// Writes to standard output through `write`, telling a closed pipe from other failures.
pub(crate) fn print(
    write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<(), PrintError> {
    let mut out = std::io::stdout().lock();
    write(&mut out)
        .and_then(|()| out.flush())
        .map_err(|error| match error.kind() {
            std::io::ErrorKind::BrokenPipe => PrintError::Closed,
            _ => PrintError::Io(error),
        })
}

/// Long work below this many symbols finishes before anyone wonders.
pub(crate) const PROGRESS_THRESHOLD: usize = 2_000;

/// A progress line rewritten in place on a terminal (`flowtap: attaching probes 1200/5000`), once
/// the work is past [`PROGRESS_THRESHOLD`] symbols. Nothing in pipes, files or CI logs, nothing
/// under `--quiet`.
pub(crate) struct Progress {
    enabled: bool,
    last: Option<Instant>,
}

impl Progress {
    pub(crate) fn new() -> Self {
        Self {
            enabled: !quiet() && std::io::stderr().is_terminal(),
            last: None,
        }
    }

    /// Shows `line` when `symbols` are past the threshold, at most ten times a second.
    pub(crate) fn show(&mut self, symbols: usize, line: impl std::fmt::Display) {
        let recent = self
            .last
            .is_some_and(|at| at.elapsed() < Duration::from_millis(100));
        if !self.enabled || symbols <= PROGRESS_THRESHOLD || recent {
            return;
        }
        self.last = Some(Instant::now());
        eprint!("\r\x1b[Kflowtap: {line}");
    }
}

impl Default for Progress {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if self.last.is_some() {
            // Clear the line so that the next status line starts clean.
            eprint!("\r\x1b[K");
        }
    }
}
