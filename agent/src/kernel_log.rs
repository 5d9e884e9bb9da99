//! The kernel programs' diagnostics (aya-log), printed on stderr when `--kernel-log LEVEL` asks
//! for them; off, the programs skip logging at their first branch.

use std::{
    os::fd::AsRawFd,
    sync::{Arc, Mutex},
};

use aya::Ebpf;
use aya_log::EbpfLogger;

use crate::loader::LoadError;

/// The global the programs read their log level from (0: off).
pub(crate) const LEVEL_GLOBAL: &str = aya_log::LEVEL;

/// Prints the records on stderr, prefixed, one line each.
struct Stderr;

impl log::Log for Stderr {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        eprintln!("flowtap: kernel {}: {}", record.level(), record.args());
    }

    fn flush(&self) {}
}

/// The programs' records, forwarded from a thread of its own; the rest is flushed when this is
/// dropped (at the end of a run).
pub(crate) struct KernelLog {
    logger: Arc<Mutex<EbpfLogger<Stderr>>>,
}

impl Drop for KernelLog {
    fn drop(&mut self) {
        if let Ok(mut logger) = self.logger.lock() {
            logger.flush();
        }
    }
}

/// Forwards the programs' records from now on. The level was set at load ([`LEVEL_GLOBAL`]):
/// the kernel sends only what is wanted.
pub(crate) fn forward(ebpf: &mut Ebpf) -> Result<KernelLog, LoadError> {
    let logger = EbpfLogger::init_with_logger(ebpf, Stderr).map_err(LoadError::KernelLog)?;
    let fd = logger.as_raw_fd();
    let logger = Arc::new(Mutex::new(logger));
    let reader = logger.clone();
    std::thread::Builder::new()
        .name("flowtap-kernel-log".into())
        .spawn(move || {
            loop {
                let mut poll = libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd, for the duration of the call; the descriptor stays
                // open while `reader` holds the logger.
                if unsafe { libc::poll(&mut poll, 1, 100) } < 0 {
                    return;
                }
                match reader.lock() {
                    Ok(mut logger) => logger.flush(),
                    Err(_) => return,
                }
            }
        })
        .map_err(LoadError::KernelLogThread)?;
    Ok(KernelLog { logger })
}
