//! Launching a command with probes in place before its first instruction. The child is forked
//! under ptrace (`PTRACE_O_TRACEEXEC`, `TRACEFORK`) and it, and every process it forks, stops at
//! each program it executes, before that program's first instruction: the agent follows it
//! through wrappers (`#!` interpreters, `env`, `sh -c 'exec …'`, a shell or `timeout` forking
//! the program) to the program it traces, attaches, then detaches ptrace and lets all run.

use std::{
    collections::BTreeSet,
    ffi::{CString, OsString},
    io,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::{Path, PathBuf},
};

use nix::{
    errno::Errno,
    sys::{
        ptrace::{self, Options},
        wait::{WaitPidFlag, WaitStatus, waitpid},
    },
    unistd::Pid,
};

use super::TargetError;

/// A forked child under ptrace: it waits until [`HeldChild::next_program`] lets it execute the
/// command, then stops at each program it or a process it forks executes, until
/// [`HeldChild::release`] lets them all go.
#[derive(Debug)]
pub(crate) struct HeldChild {
    /// The command's own process: signalled, waited for, its exit code flowtap's.
    pub pid: u32,
    /// Written to (or closed, to abandon the command) before the child runs anything.
    start: Option<OwnedFd>,
    /// The process stopped at the program [`HeldChild::next_program`] reported.
    stopped: Option<Pid>,
    /// Every process under ptrace: the command's and those forked from it since.
    tracees: BTreeSet<Pid>,
}

/// Where the followed command stopped.
#[derive(Debug)]
pub(crate) enum Step {
    /// It (or a process it forked) executed this program, and is stopped before its first
    /// instruction.
    Program(PathBuf),
    /// It exited with this code (128 + signal when killed) without executing another program.
    Exited(i32),
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
            pid => {
                // Killed with flowtap until released: a command never runs untraced by accident.
                // Forks are followed because wrappers such as `timeout` or a shell running a
                // script fork the program rather than execute it themselves.
                let options = Options::PTRACE_O_TRACEEXEC
                    | Options::PTRACE_O_TRACEFORK
                    | Options::PTRACE_O_TRACEVFORK
                    | Options::PTRACE_O_EXITKILL;
                let pid = Pid::from_raw(pid);
                ptrace::seize(pid, options)
                    .map_err(|errno| TargetError::Follow(io::Error::from(errno)))?;
                Ok(Self {
                    pid: pid.as_raw() as u32,
                    start: Some(release_end),
                    stopped: None,
                    tracees: BTreeSet::from([pid]),
                })
            }
        }
    }

    /// The process that executed the program last reported: the command's, or one it forked.
    pub(crate) fn program_pid(&self) -> u32 {
        self.stopped.map_or(self.pid, |pid| pid.as_raw() as u32)
    }

    /// The processes under ptrace but the one stopped at the program: the command's and the
    /// wrappers between it and the program.
    pub(crate) fn wrapper_pids(&self) -> Vec<u32> {
        self.tracees
            .iter()
            .filter(|&&pid| Some(pid) != self.stopped)
            .map(|pid| pid.as_raw() as u32)
            .collect()
    }

    /// Whether the program last reported was executed by a process the command forked, which
    /// [`HeldChild::let_program_run`] can let go on its own while the command is followed on.
    pub(crate) fn program_is_forked(&self) -> bool {
        self.program_pid() != self.pid
    }

    /// Lets the process stopped at the program last reported run on, untraced.
    pub(crate) fn let_program_run(&mut self) -> Result<(), TargetError> {
        if let Some(pid) = self.stopped.take() {
            self.tracees.remove(&pid);
            ignore_gone(ptrace::detach(pid, None)).map_err(follow)?;
        }
        Ok(())
    }

    /// Lets the command run until it, or a process it forked, executes a program (stopped
    /// there, before its first instruction) or the command exits. Signals its processes receive
    /// meanwhile are passed on to them unchanged.
    pub(crate) fn next_program(&mut self) -> Result<Step, TargetError> {
        match (self.start.take(), self.stopped.take()) {
            (Some(start), _) => write_byte(&start).map_err(TargetError::Launch)?,
            (None, Some(stopped)) => resume(stopped, None)?,
            (None, None) => {}
        }
        loop {
            let status = match waitpid(None, Some(WaitPidFlag::__WALL)) {
                Err(Errno::EINTR) => continue,
                status => status.map_err(follow)?,
            };
            let Some(pid) = status.pid() else { continue };
            match status {
                WaitStatus::Exited(_, code) => {
                    if let Some(step) = self.ended(pid, code) {
                        return Ok(step);
                    }
                }
                WaitStatus::Signaled(_, signal, _) => {
                    if let Some(step) = self.ended(pid, 128 + signal as i32) {
                        return Ok(step);
                    }
                }
                WaitStatus::PtraceEvent(_, _, libc::PTRACE_EVENT_EXEC) => {
                    self.tracees.insert(pid);
                    self.stopped = Some(pid);
                    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
                        .map_err(TargetError::Follow)?;
                    return Ok(Step::Program(exe));
                }
                // A stop signal took effect: it stays stopped until SIGCONT, as without ptrace
                // (SIGCONT then reports the same event with SIGTRAP: it runs on).
                WaitStatus::PtraceEvent(_, signal, libc::PTRACE_EVENT_STOP)
                    if signal != nix::sys::signal::Signal::SIGTRAP =>
                {
                    self.tracees.insert(pid);
                    listen(pid)?
                }
                WaitStatus::Stopped(_, signal) => resume(pid, Some(signal))?,
                // A fork (the parent's event, or the child's first stop), or a SIGCONT.
                _ => {
                    self.tracees.insert(pid);
                    resume(pid, None)?
                }
            }
        }
    }

    /// Process `pid` ended with `code`: the end of the follow if it was the command's.
    fn ended(&mut self, pid: Pid, code: i32) -> Option<Step> {
        self.tracees.remove(&pid);
        (pid.as_raw() as u32 == self.pid).then_some(Step::Exited(code))
    }

    /// Lets the command and the processes it forked run on, no longer under ptrace (debuggers
    /// can attach, nothing slows them). Returns the command's exit code if it ended meanwhile.
    pub(crate) fn release(mut self) -> io::Result<Option<i32>> {
        if let Some(pid) = self.stopped.take() {
            self.tracees.remove(&pid);
            ignore_gone(ptrace::detach(pid, None)).map_err(io::Error::from)?;
        }
        // The others run: each is stopped first (detaching needs a stop), then let go at
        // whatever stop it reports, in any order (a vfork parent stops only after its child).
        for &pid in &self.tracees {
            ignore_gone(ptrace::interrupt(pid)).map_err(io::Error::from)?;
        }
        let mut exit_code = None;
        // Let go already: a forked child's first stop may come before its parent's event.
        let mut gone = BTreeSet::new();
        while !self.tracees.is_empty() {
            let status = match waitpid(None, Some(WaitPidFlag::__WALL)) {
                Err(Errno::EINTR) => continue,
                Err(Errno::ECHILD) => break,
                status => status.map_err(io::Error::from)?,
            };
            let Some(pid) = status.pid() else { continue };
            let (code, signal) = match status {
                WaitStatus::Exited(_, code) => (Some(code), None),
                WaitStatus::Signaled(_, signal, _) => (Some(128 + signal as i32), None),
                WaitStatus::Stopped(_, signal) => (None, Some(signal)),
                WaitStatus::PtraceEvent(
                    _,
                    _,
                    libc::PTRACE_EVENT_FORK | libc::PTRACE_EVENT_VFORK,
                ) => {
                    // The child is under ptrace too: its first stop is to come, if not come yet.
                    if let Ok(child) = ptrace::getevent(pid) {
                        let child = Pid::from_raw(child as i32);
                        if !gone.contains(&child) {
                            self.tracees.insert(child);
                        }
                    }
                    (None, None)
                }
                _ => (None, None),
            };
            if code.is_none() {
                ignore_gone(ptrace::detach(pid, signal)).map_err(io::Error::from)?;
            }
            if pid.as_raw() as u32 == self.pid {
                exit_code = code;
            }
            self.tracees.remove(&pid);
            gone.insert(pid);
        }
        Ok(exit_code)
    }
}

fn follow(errno: Errno) -> TargetError {
    TargetError::Follow(io::Error::from(errno))
}

/// Restarts tracee `pid`, delivering `signal`; one killed meanwhile is reported by `waitpid`.
fn resume(pid: Pid, signal: Option<nix::sys::signal::Signal>) -> Result<(), TargetError> {
    ignore_gone(ptrace::cont(pid, signal)).map_err(follow)
}

/// A ptrace request's result, where a tracee that died meanwhile (ESRCH) is no failure.
fn ignore_gone(result: nix::Result<()>) -> nix::Result<()> {
    match result {
        Err(Errno::ESRCH) => Ok(()),
        other => other,
    }
}

/// Leaves a tracee in its group-stop, to be woken by SIGCONT (nix has no `PTRACE_LISTEN`).
fn listen(pid: Pid) -> Result<(), TargetError> {
    // SAFETY: PTRACE_LISTEN takes no addresses; the kernel checks that `pid` is our tracee.
    let result = unsafe {
        libc::ptrace(
            libc::PTRACE_LISTEN,
            pid.as_raw(),
            std::ptr::null_mut::<libc::c_void>(),
            std::ptr::null_mut::<libc::c_void>(),
        )
    };
    if result == 0 {
        Ok(())
    } else {
        Err(TargetError::Follow(io::Error::last_os_error()))
    }
}

/// Tells the waiting child to go on.
fn write_byte(fd: &OwnedFd) -> io::Result<()> {
    let byte = 1u8;
    // SAFETY: writing one byte from a valid buffer to a descriptor we own.
    let written = unsafe { libc::write(fd.as_raw_fd(), (&raw const byte).cast(), 1) };
    if written == 1 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Programs that only start another one, by executing it or in a child they fork: the command
/// is followed through them rather than traced, unless a selector names them (`bash:GLOB`).
/// `#!` scripts run their interpreter, which is one of these (`/usr/bin/env`, a shell) or the
/// program to trace (python3.11).
const WRAPPERS: &[&str] = &[
    "sh",
    "dash",
    "bash",
    "zsh",
    "ksh",
    "ksh93",
    "mksh",
    "ash",
    "busybox",
    "env",
    "nice",
    "nohup",
    "setsid",
    "stdbuf",
    "taskset",
    "chrt",
    "ionice",
    "setpriv",
    "gosu",
    "su-exec",
    "chpst",
    "timeout",
    "time",
    "tini",
    "dumb-init",
    "flock",
];

/// Whether the program `file_name` is one that only starts another.
pub(crate) fn is_wrapper(file_name: &str) -> bool {
    WRAPPERS.contains(&file_name)
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

/// The `LD_LIBRARY_PATH` process `pid` runs with, which its dynamic loader follows.
pub(crate) fn library_path(pid: u32) -> Option<String> {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    environ
        .split(|&byte| byte == 0)
        .find_map(|entry| entry.strip_prefix(b"LD_LIBRARY_PATH="))
        .map(|value| String::from_utf8_lossy(value).into_owned())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrappers_are_told_from_programs() {
        for wrapper in [
            "sh", "dash", "bash", "env", "nice", "setsid", "timeout", "tini",
        ] {
            assert!(is_wrapper(wrapper), "{wrapper}");
        }
        for program in ["python3.11", "redis-server", "node", "nginx"] {
            assert!(!is_wrapper(program), "{program}");
        }
    }

    #[test]
    fn the_library_path_is_the_processs_own() {
        // /proc/PID/environ is the environment the process started with, which tests keep.
        let expected = std::env::var("LD_LIBRARY_PATH").ok();
        assert_eq!(library_path(std::process::id()), expected);
    }
}
