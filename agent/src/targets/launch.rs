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
    /// Forks; the child waits on a pipe, sheds flowtap's privileges (see [`Demotion`]), then
    /// `execv`s `program`. Call before the agent starts threads: between fork and exec the
    /// child only calls async-signal-safe functions.
    pub(crate) fn spawn(
        program: &Path,
        args: &[OsString],
        run_as: Option<(u32, u32)>,
    ) -> Result<Self, TargetError> {
        let demotion = Demotion::prepare(run_as)?;
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
                if libc::read(wait_end.as_raw_fd(), (&raw mut byte).cast(), 1) == 1
                    && demotion.apply()
                {
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

/// `capget`/`capset`'s header (`_LINUX_CAPABILITY_VERSION_3`, this process).
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

/// One of `capset`'s two 32-bit halves.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAPABILITY_VERSION_3: u32 = 0x2008_0522;
const CAP_LAST: libc::c_int = 63;

/// What the child sheds before `execv`, prepared before the fork so that the child only makes
/// system calls: no ambient or inheritable capabilities (a user given capabilities must not
/// pass them on), and under `sudo` the invoking user's identity, with the bounding set emptied
/// so that nothing it runs regains root's capabilities.
struct Demotion {
    capabilities: [CapData; 2],
    /// uid, gid and supplementary groups to become.
    user: Option<(u32, u32, Vec<libc::gid_t>)>,
}

impl Demotion {
    fn prepare(run_as: Option<(u32, u32)>) -> Result<Self, TargetError> {
        let mut header = CapHeader {
            version: CAPABILITY_VERSION_3,
            pid: 0,
        };
        let mut capabilities = [CapData::default(); 2];
        // SAFETY: header and two data structs, as capget's version 3 expects.
        if unsafe { libc::syscall(libc::SYS_capget, &raw mut header, capabilities.as_mut_ptr()) }
            != 0
        {
            return Err(TargetError::Launch(io::Error::last_os_error()));
        }
        for data in &mut capabilities {
            data.inheritable = 0;
        }
        let user = run_as.map(|(uid, gid)| (uid, gid, groups_of(uid, gid)));
        Ok(Self { capabilities, user })
    }

    /// In the child: whether every step succeeded (else it must not run the command).
    /// SAFETY (callers): only system calls, on memory prepared before the fork.
    unsafe fn apply(&self) -> bool {
        let mut header = CapHeader {
            version: CAPABILITY_VERSION_3,
            pid: 0,
        };
        // SAFETY: see above; raw system calls with valid pointers.
        unsafe {
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL,
                0,
                0,
                0,
            );
            if libc::syscall(
                libc::SYS_capset,
                &raw mut header,
                self.capabilities.as_ptr(),
            ) != 0
            {
                return fail(b"flowtap: cannot clear the command's inheritable capabilities\n");
            }
            let Some((uid, gid, groups)) = &self.user else {
                return true;
            };
            for cap in 0..=CAP_LAST {
                libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0);
            }
            if libc::setgroups(groups.len(), groups.as_ptr()) != 0
                || libc::setgid(*gid) != 0
                || libc::setuid(*uid) != 0
            {
                return fail(b"flowtap: cannot run the command as the sudo user\n");
            }
        }
        true
    }
}

/// Writes `message` to standard error (async-signal-safe) and returns false.
fn fail(message: &[u8]) -> bool {
    // SAFETY: writing a valid buffer to descriptor 2.
    unsafe { libc::write(libc::STDERR_FILENO, message.as_ptr().cast(), message.len()) };
    false
}

/// The supplementary groups of user `uid` (as `initgroups` would set them), else `gid` alone.
fn groups_of(uid: u32, gid: u32) -> Vec<libc::gid_t> {
    let mut entry: libc::passwd = unsafe_zeroed_passwd();
    let mut buffer = vec![0 as libc::c_char; 16 * 1024];
    let mut found = std::ptr::null_mut();
    // SAFETY: valid out-pointers and a buffer of the given length.
    let status = unsafe {
        libc::getpwuid_r(
            uid,
            &mut entry,
            buffer.as_mut_ptr(),
            buffer.len(),
            &mut found,
        )
    };
    if status != 0 || found.is_null() {
        return vec![gid];
    }
    let mut groups = vec![0 as libc::gid_t; 256];
    let mut count = groups.len() as libc::c_int;
    // SAFETY: pw_name is a valid C string inside buffer; groups has `count` entries.
    let status = unsafe { libc::getgrouplist(entry.pw_name, gid, groups.as_mut_ptr(), &mut count) };
    if status < 0 {
        return vec![gid];
    }
    groups.truncate(count as usize);
    groups
}

fn unsafe_zeroed_passwd() -> libc::passwd {
    // SAFETY: passwd is plain data (integers and pointers) for which all zeroes is valid.
    unsafe { std::mem::zeroed() }
}

/// Finds a command the way a shell does: as given when it has a '/', else in `PATH`.
pub(crate) fn find_command(command: &OsString) -> Result<PathBuf, TargetError> {
    let as_path = Path::new(command);
    if command.as_bytes().contains(&b'/') {
        return check_command_path(as_path).map(|()| as_path.to_path_buf());
    }
    let path_var = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
    std::env::split_paths(&path_var)
        .map(|dir| dir.join(command))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| TargetError::CommandNotFound {
            command: command.to_string_lossy().into_owned(),
        })
}

/// A command given as a path: a regular file, or what is wrong with it, told apart.
fn check_command_path(path: &Path) -> Result<(), TargetError> {
    let bad = |what: String| TargetError::BadCommand {
        reason: format!("{} {what}", path.display()),
    };
    match path.metadata() {
        Ok(metadata) => match crate::mapped_file::not_regular(metadata.file_type()) {
            None => Ok(()),
            Some(kind) => Err(bad(format!("is {kind}, not a program"))),
        },
        Err(error) if error.kind() == io::ErrorKind::NotFound => Err(TargetError::PathNotFound {
            path: path.to_path_buf(),
        }),
        Err(error) if error.raw_os_error() == Some(libc::ELOOP) => {
            Err(bad("is a loop of symbolic links".into()))
        }
        Err(error) if error.kind() == io::ErrorKind::PermissionDenied => Err(bad(
            "cannot be reached: permission denied on a directory of its path".into(),
        )),
        Err(error) => Err(bad(format!("cannot be inspected: {error}"))),
    }
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
