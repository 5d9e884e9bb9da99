//! Who flowtap acts for. Root (often through `sudo`) or a user given capabilities as a file
//! attribute must not be steered by files other users control, nor reach what the invoking
//! user could not: this module answers "may the invoking user do this?".

use std::{
    ffi::CString,
    io,
    os::unix::{ffi::OsStrExt, fs::MetadataExt},
    path::Path,
};

/// The user and group a launched command runs as under `sudo`: `SUDO_UID`/`SUDO_GID`, when
/// flowtap is root and both are set and numeric.
pub(crate) fn sudo_user() -> Option<(u32, u32)> {
    if !is_root() {
        return None;
    }
    let number = |name| std::env::var(name).ok()?.parse::<u32>().ok();
    Some((number("SUDO_UID")?, number("SUDO_GID")?))
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn real_uid() -> u32 {
    // SAFETY: getuid has no preconditions.
    unsafe { libc::getuid() }
}

/// Whether a file owned by `uid` may steer flowtap: root's, flowtap's own user's, or the user
/// who ran `sudo`.
pub(crate) fn trusted_owner(uid: u32) -> bool {
    uid == 0 || uid == real_uid() || sudo_user().is_some_and(|(sudo_uid, _)| sudo_uid == uid)
}

/// Whether the real user (not flowtap's capabilities) may read `path`: `access(2)` checks with
/// the real user and, for a user other than root, without capabilities.
pub(crate) fn may_read(path: &Path) -> bool {
    let Ok(path) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: path is a valid NUL-terminated string.
    unsafe { libc::access(path.as_ptr(), libc::R_OK) == 0 }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum TraceRefused {
    #[error(
        "process {pid} belongs to another user (or cannot be inspected): flowtap running with capabilities traces only your own processes; run it as root to trace others"
    )]
    OtherUser { pid: u32 },
    #[error("cannot inspect process {pid}: {source}")]
    Proc {
        pid: u32,
        #[source]
        source: io::Error,
    },
}

/// The kernel's `PTRACE_MODE_READ` test for a user without capabilities: the process's real,
/// effective and saved ids are all the user's, and it is dumpable (`/proc/PID` of a
/// non-dumpable process is owned by root). Root may trace anything.
pub(crate) fn may_trace(pid: u32) -> Result<(), TraceRefused> {
    let uid = real_uid();
    if uid == 0 {
        return Ok(());
    }
    let proc = format!("/proc/{pid}");
    let owner = std::fs::metadata(&proc)
        .map_err(|source| TraceRefused::Proc { pid, source })?
        .uid();
    let status = std::fs::read_to_string(format!("{proc}/status"))
        .map_err(|source| TraceRefused::Proc { pid, source })?;
    // SAFETY: getgid has no preconditions.
    let gid = unsafe { libc::getgid() };
    let all_are = |key: &str, id: u32| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(key))
            .is_some_and(|ids| ids.split_whitespace().take(3).all(|v| v == id.to_string()))
    };
    if owner == uid && all_are("Uid:", uid) && all_are("Gid:", gid) {
        Ok(())
    } else {
        Err(TraceRefused::OtherUser { pid })
    }
}

/// Whether flowtap runs as a user other than root (with capabilities as a file attribute or
/// ambient ones): then it may only do what that user could.
pub(crate) fn is_unprivileged_user() -> bool {
    real_uid() != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_processes_may_be_traced() {
        may_trace(std::process::id()).unwrap();
    }

    #[test]
    fn root_and_own_files_are_trusted() {
        assert!(trusted_owner(0));
        assert!(trusted_owner(real_uid()));
    }
}
