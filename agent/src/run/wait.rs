//! Waiting for the end of a run: the traced process exiting (through a pidfd), the launched
//! command exiting (its exit code is the run's), a deadline, or Ctrl-C / SIGTERM. A binary
//! target never ends by itself: meanwhile, its processes that started before us are enrolled.

use std::{
    os::fd::{FromRawFd, OwnedFd},
    sync::Mutex,
    time::Duration,
};

use anyhow::{Context, bail};
use flowtap_common::PROCESS_TRACED;
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{Signal, SignalKind, signal},
};

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
    signals: &mut StopSignals,
) -> anyhow::Result<Option<i32>> {
    let deadline = async {
        match duration {
            Some(duration) => tokio::time::sleep(duration).await,
            None => std::future::pending().await,
        }
    };
    match target.kind {
        TargetKind::Process { pid } => {
            let exited = process_exit(pid.get())?;
            tokio::select! {
                _ = exited.readable() => {},
                _ = deadline => {},
                _ = signals.next() => {},
            }
            Ok(None)
        }
        TargetKind::Binary {
            file, is_library, ..
        } => {
            tokio::select! {
                result = follow_binary(file, is_library, probes) => result?,
                _ = deadline => {},
                _ = signals.next() => {},
            }
            Ok(None)
        }
        TargetKind::Launch { child, .. } => run_child(child, deadline, signals).await.map(Some),
    }
}

/// How long the command has, after a stop signal was passed on, before flowtap stops anyway.
const STOP_GRACE: Duration = Duration::from_secs(10);

async fn run_child(
    child: HeldChild,
    deadline: impl std::future::Future<Output = ()>,
    signals: &mut StopSignals,
) -> anyhow::Result<i32> {
    let (pid, program_pid) = (child.pid, child.program_pid());
    let ended = child.release().context("starting the command")?;
    let mut exited = tokio::task::spawn_blocking(move || match ended {
        Some(code) => Ok(code),
        None => launch::wait_exit_code(pid),
    });
    let mut deadline = std::pin::pin!(deadline);
    let mut grace = std::pin::pin!(tokio::time::sleep(Duration::ZERO));
    let mut passed_on = None;
    loop {
        tokio::select! {
            code = &mut exited => {
                let code = code.context("waiting for the command")?.context("waiting for the command")?;
                crate::console::status(format_args!("command exited with code {code}"));
                return Ok(code);
            }
            // The command gets the same signal (Ctrl-C reaches it through the terminal too);
            // a second one, or the grace period, stops flowtap with its report.
            signal = signals.next() => {
                if let Some(first) = passed_on {
                    eprintln!("flowtap: stopping on a second signal; command {pid} keeps running untraced");
                    return Ok(128 + first);
                }
                // SAFETY: signalling our own child, which we have not reaped yet.
                unsafe { libc::kill(pid as i32, signal) };
                // A wrapper that forked the program (a shell) may die of it without passing
                // it on, as a terminal's signal reaches both.
                if program_pid != pid {
                    // SAFETY: plain kill(2); the program is the command's child or grandchild.
                    unsafe { libc::kill(program_pid as i32, signal) };
                }
                passed_on = Some(signal);
                grace.as_mut().reset(tokio::time::Instant::now() + STOP_GRACE);
            }
            _ = &mut grace, if passed_on.is_some() => {
                eprintln!(
                    "flowtap: command {pid} did not exit within {}s of the signal; stopping, it keeps running untraced",
                    STOP_GRACE.as_secs()
                );
                return Ok(128 + passed_on.unwrap_or(libc::SIGTERM));
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
        probes
            .lock()
            .expect("probes lock")
            .enrol(&running, PROCESS_TRACED)?;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// SIGINT and SIGTERM, listened to from before the ready line: a stop sent as soon as the
/// probes are attached is not lost, nor does it kill flowtap without its report.
pub(super) struct StopSignals {
    interrupt: Signal,
    terminate: Signal,
}

impl StopSignals {
    /// Call inside the event loop's context.
    pub(super) fn listen() -> std::io::Result<Self> {
        Ok(Self {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    /// The next SIGINT or SIGTERM: which one.
    async fn next(&mut self) -> i32 {
        tokio::select! {
            _ = self.interrupt.recv() => libc::SIGINT,
            _ = self.terminate.recv() => libc::SIGTERM,
        }
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
