//! What `/proc` says about a running process: whether it is one we can trace, and which ELF
//! objects it has mapped, read through `/proc/PID/root` so processes in containers work too.

use std::{
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use super::TargetError;

/// A file's identity across mount namespaces: the same binary seen by different paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileId {
    pub dev: u64,
    pub ino: u64,
}

impl FileId {
    pub(crate) fn of(path: &Path) -> std::io::Result<Self> {
        let metadata = std::fs::metadata(path)?;
        Ok(Self {
            dev: metadata.dev(),
            ino: metadata.ino(),
        })
    }
}

/// Checks that `pid` is a live user-space process we may inspect.
pub(crate) fn check_traceable(pid: u32) -> Result<(), TargetError> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|_| TargetError::NoSuchProcess { pid })?;
    if is_zombie(&stat) {
        return Err(TargetError::Zombie { pid });
    }
    if let Some(process) = thread_group(pid).filter(|&process| process != pid) {
        return Err(TargetError::Thread { pid, process });
    }
    match std::fs::read_link(format!("/proc/{pid}/exe")) {
        Ok(_) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::PermissionDenied => {
            Err(permission_denied(pid))
        }
        // Kernel threads have no executable.
        Err(_) => Err(TargetError::KernelThread { pid }),
    }
}

/// Whether `pid` is gone or a zombie: exited, whether or not its parent has reaped it.
pub(crate) fn has_exited(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |stat| is_zombie(&stat))
}

/// Whether a `/proc/PID/stat` line is that of a process that has exited.
fn is_zombie(stat: &str) -> bool {
    // The state follows the command name, which is parenthesised and may contain spaces.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .unwrap_or("?");
    state == "Z" || state == "X"
}

/// The process a thread id belongs to (`Tgid`), which is the id itself for a process.
fn thread_group(pid: u32) -> Option<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|line| line.strip_prefix("Tgid:"))?
        .trim()
        .parse()
        .ok()
}

/// Refused inspection: for root, the kernel itself protects the process; else privileges lack.
fn permission_denied(pid: u32) -> TargetError {
    if crate::invoker::is_unprivileged_user() {
        TargetError::PermissionDenied { pid }
    } else {
        TargetError::ProtectedProcess { pid }
    }
}

/// The executable files mapped by `pid`, as paths the agent can open.
pub(crate) fn mapped_objects(pid: u32) -> Result<Vec<PathBuf>, TargetError> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).map_err(|error| match error
        .kind()
    {
        std::io::ErrorKind::PermissionDenied => permission_denied(pid),
        _ => TargetError::NoSuchProcess { pid },
    })?;
    let root = PathBuf::from(format!("/proc/{pid}/root"));
    let mut paths: Vec<PathBuf> = Vec::new();
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let permissions = fields.nth(1).unwrap_or("");
        let Some(path) = fields.nth(3) else { continue };
        if !permissions.contains('x') || !path.starts_with('/') || line.ends_with("(deleted)") {
            continue;
        }
        let host_path = root.join(path.trim_start_matches('/'));
        if !paths.contains(&host_path) {
            paths.push(host_path);
        }
    }
    Ok(paths)
}

/// Every process whose executable is the file `binary`.
pub(crate) fn processes_running(binary: FileId) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| FileId::of(Path::new(&format!("/proc/{pid}/exe"))).ok() == Some(binary))
        .collect()
}

/// Every process that maps the file `library` (by device and inode, as `/proc/PID/maps` shows).
pub(crate) fn processes_mapping(library: FileId) -> usize {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/maps"))
                .is_ok_and(|maps| maps.lines().any(|line| maps_file(line) == Some(library)))
        })
        .count()
}

/// The file a `/proc/PID/maps` line maps: its `major:minor` device and inode fields.
fn maps_file(line: &str) -> Option<FileId> {
    let mut fields = line.split_whitespace().skip(3);
    let (major, minor) = fields.next()?.split_once(':')?;
    let ino = fields.next()?.parse().ok().filter(|&ino| ino != 0)?;
    let (major, minor) = (
        u32::from_str_radix(major, 16).ok()?,
        u32::from_str_radix(minor, 16).ok()?,
    );
    Some(FileId {
        dev: libc::makedev(major, minor),
        ino,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_traceable_and_maps_its_executable() {
        let pid = std::process::id();
        check_traceable(pid).unwrap();
        let own = FileId::of(&std::env::current_exe().unwrap()).unwrap();
        let objects = mapped_objects(pid).unwrap();
        assert!(
            objects
                .iter()
                .any(|path| FileId::of(path).ok() == Some(own))
        );
        assert!(processes_running(own).contains(&pid));
        assert!(processes_mapping(own) >= 1);
    }

    #[test]
    fn kernel_threads_and_missing_pids_are_refused() {
        assert!(matches!(
            check_traceable(2),
            Err(TargetError::KernelThread { pid: 2 })
        ));
        assert!(matches!(
            check_traceable(u32::MAX - 1),
            Err(TargetError::NoSuchProcess { .. })
        ));
    }

    #[test]
    fn a_process_has_exited_once_a_zombie_and_once_reaped() {
        let mut child = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        let pid = child.id();
        assert!(!has_exited(pid));
        child.kill().unwrap();
        // Killed but not yet reaped: a zombie.
        while std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|stat| !is_zombie(&stat))
        {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(has_exited(pid));
        child.wait().unwrap();
        assert!(has_exited(pid));
    }
}
