//! The kernel programs' diagnostics (aya-log), printed on stderr when `--kernel-log LEVEL` asks
//! for them; off, the programs skip logging at their first branch.

use std::os::fd::AsRawFd;

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

/// Forwards the programs' records from now on, from a thread of its own.
/// The level was set at load ([`LEVEL_GLOBAL`]): the kernel sends only what is wanted.
pub(crate) fn forward(ebpf: &mut Ebpf) -> Result<(), LoadError> {
    let mut logger = EbpfLogger::init_with_logger(ebpf, Stderr).map_err(LoadError::KernelLog)?;
    std::thread::Builder::new()
        .name("flowtap-kernel-log".into())
        .spawn(move || {
            loop {
                let mut poll = libc::pollfd {
                    fd: logger.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd, for the duration of the call.
                if unsafe { libc::poll(&mut poll, 1, 1000) } < 0 {
                    return;
                }
                logger.flush();
            }
        })
        .map_err(LoadError::KernelLogThread)?;
    Ok(())
}
