//! Waiting for the end of a run: the traced process exiting (through a pidfd), the launched
//! command exiting (its exit code is the run's), a deadline, or Ctrl-C / SIGTERM. A binary
//! target never ends by itself: meanwhile, its processes that started before us are enrolled.

use std::{
    os::fd::{FromRawFd, OwnedFd},
    sync::Mutex,
    time::Duration,
};

use anyhow::{Context, bail};
use tokio::io::unix::AsyncFd;

use crate::{
    loader::Probes,
    targets::{
        Target, TargetKind,
        launch::{self, HeldChild},
        process::{self, FileId},
    },
};

/// Waits for the end of the run; returns the launched command's exit code, if any.
pub(super) async fn until_done(
    target: Target,
    duration: Option<Duration>,
    probes: &Mutex<Probes>,
) -> anyhow::Result<Option<i32>> {
    let deadline = async {
        match duration {
            Some(duration) => tokio::time::sleep(duration).await,
            None => std::future::pending().await,
        }
    };
    let interrupted = interrupted();
    match target.kind {
        TargetKind::Process { pid } => {
            let exited = process_exit(pid.get())?;
            tokio::select! {
                _ = exited.readable() => {},
                _ = deadline => {},
                _ = interrupted => {},
            }
            Ok(None)
        }
        TargetKind::Binary {
            file, is_library, ..
        } => {
            tokio::select! {
                result = follow_binary(file, is_library, probes) => result?,
                _ = deadline => {},
                _ = interrupted => {},
            }
            Ok(None)
        }
        TargetKind::Launch { child, .. } => run_child(child, deadline).await.map(Some),
    }
}

async fn run_child(
    child: HeldChild,
    deadline: impl std::future::Future<Output = ()>,
) -> anyhow::Result<i32> {
    let pid = child.pid;
    child.release().context("starting the command")?;
    let mut exited = tokio::task::spawn_blocking(move || launch::wait_exit_code(pid));
    let mut interrupt = std::pin::pin!(interrupted());
    let mut deadline = std::pin::pin!(deadline);
    loop {
        tokio::select! {
            code = &mut exited => {
                let code = code.context("waiting for the command")?.context("waiting for the command")?;
                crate::console::status(format_args!("command exited with code {code}"));
                return Ok(code);
            }
            // The command shares our terminal and gets Ctrl-C too; pass on other stops.
            _ = &mut interrupt => {
                // SAFETY: signalling our own child, which we have not reaped yet.
                unsafe { libc::kill(pid as i32, libc::SIGINT) };
                interrupt.set(interrupted());
            }
            _ = &mut deadline => {
                crate::console::status(format_args!(
                    "duration reached; command {pid} keeps running untraced"
                ));
                return Ok(0);
            }
        }
    }
}

/// Enrols processes of the binary that started before us or were forked without exec; those
/// that exec it later enrol themselves in the kernel at their entry point.
async fn follow_binary(
    file: FileId,
    is_library: bool,
    probes: &Mutex<Probes>,
) -> anyhow::Result<()> {
    if is_library {
        return std::future::pending().await;
    }
    loop {
        let running = process::processes_running(file);
        probes.lock().expect("probes lock").enrol(&running)?;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Completes on SIGINT or SIGTERM.
async fn interrupted() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => {},
        _ = term.recv() => {},
    }
}

/// A descriptor that becomes readable when process `pid` exits.
fn process_exit(pid: u32) -> anyhow::Result<AsyncFd<OwnedFd>> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        bail!("process {pid} exited before tracing started");
    }
    // SAFETY: the kernel just returned this descriptor to us.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // SAFETY: the AsyncFd owns the descriptor, so it stays open for as long as it is registered.
    unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
        .with_context(|| format!("watching process {pid}"))
}
