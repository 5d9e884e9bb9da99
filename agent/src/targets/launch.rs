//! Launching a command with probes in place before its first instruction: the child is forked
//! and held before `execve` until the agent has attached, then released.

use std::{
    ffi::{CString, OsString},
    io,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::{Path, PathBuf},
};

use super::TargetError;

/// A forked child waiting for [`HeldChild::release`] before it executes the command.
#[derive(Debug)]
pub(crate) struct HeldChild {
    pub pid: u32,
    release: OwnedFd,
}

impl HeldChild {
    /// Forks; the child waits on a pipe, then `execv`s `program`. Call before the agent starts
    /// threads: between fork and exec the child only calls async-signal-safe functions.
    pub(crate) fn spawn(program: &Path, args: &[OsString]) -> Result<Self, TargetError> {
        let to_c = |bytes: &[u8]| {
            CString::new(bytes).map_err(|_| TargetError::BadCommand {
                reason: "an argument contains a NUL byte".into(),
            })
        };
        let program_c = to_c(program.as_os_str().as_bytes())?;
        let argv_c = args
            .iter()
            .map(|arg| to_c(arg.as_bytes()))
            .collect::<Result<Vec<_>, _>>()?;
        let mut argv: Vec<*const libc::c_char> = argv_c.iter().map(|arg| arg.as_ptr()).collect();
        argv.push(std::ptr::null());

        let mut fds = [0; 2];
        // SAFETY: fds is a valid array of two ints.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(TargetError::Launch(io::Error::last_os_error()));
        }
        // SAFETY: pipe2 returned two fresh descriptors that we now own.
        let (wait_end, release_end) =
            unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: the child only calls close/read/execv/_exit (async-signal-safe) on memory
        // prepared before the fork.
        match unsafe { libc::fork() } {
            -1 => Err(TargetError::Launch(io::Error::last_os_error())),
            // SAFETY: in the child, only async-signal-safe calls on descriptors it owns and on
            // memory prepared before the fork.
            0 => unsafe {
                libc::close(release_end.as_raw_fd());
                let mut byte = 0u8;
                // The agent closes without writing when it fails to attach: do not run untraced.
                if libc::read(wait_end.as_raw_fd(), (&raw mut byte).cast(), 1) == 1 {
                    libc::execv(program_c.as_ptr(), argv.as_ptr());
                }
                libc::_exit(127)
            },
            pid => Ok(Self {
                pid: pid as u32,
                release: release_end,
            }),
        }
    }

    /// Lets the child execute the command.
    pub(crate) fn release(self) -> io::Result<()> {
        let byte = 1u8;
        // SAFETY: writing one byte from a valid buffer to a descriptor we own.
        let written = unsafe { libc::write(self.release.as_raw_fd(), (&raw const byte).cast(), 1) };
        if written == 1 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

/// Finds a command the way a shell does: as given when it has a '/', else in `PATH`.
pub(crate) fn find_command(command: &OsString) -> Result<PathBuf, TargetError> {
    let as_path = Path::new(command);
    if command.as_bytes().contains(&b'/') {
        return if as_path.is_file() {
            Ok(as_path.to_path_buf())
        } else {
            Err(TargetError::PathNotFound {
                path: as_path.to_path_buf(),
            })
        };
    }
    let path_var = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
    std::env::split_paths(&path_var)
        .map(|dir| dir.join(command))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| TargetError::CommandNotFound {
            command: command.to_string_lossy().into_owned(),
        })
}

/// Waits for the child and returns its exit code (128 + signal when killed, as shells do).
pub(crate) fn wait_exit_code(pid: u32) -> io::Result<i32> {
    let mut status = 0;
    loop {
        // SAFETY: status is a valid out-pointer.
        let result = unsafe { libc::waitpid(pid as i32, &mut status, 0) };
        if result == pid as i32 {
            break;
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
    Ok(if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    })
}
