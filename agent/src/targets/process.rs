//! What `/proc` says about a running process: whether it is one we can trace, and which ELF
//! objects it has mapped, opened through `/proc/PID/map_files` so that processes in chroots and
//! containers, deleted files and odd names work too.

use std::{
    os::unix::{ffi::OsStrExt, fs::MetadataExt},
    path::{Path, PathBuf},
};

use super::TargetError;

/// A file's identity across mount namespaces: the same binary seen by different paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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

/// A file a process maps executable, opened as the process sees it.
#[derive(Debug, Clone)]
pub(crate) struct MappedObject {
    /// `/proc/PID/map_files/START-END`: the mapped file itself, whatever the process's root and
    /// mount namespace, even when deleted or renamed since; without the capability to open
    /// those, `/proc/PID/root/PATH` (see [`open_mapped`]).
    pub open_path: PathBuf,
    /// The path the process mapped it by, as `/proc/PID/maps` shows it (" (deleted)" removed).
    pub path: PathBuf,
    pub file: FileId,
}

/// The executable files mapped by `pid`, each once, in address order (the executable first).
pub(crate) fn mapped_objects(pid: u32) -> Result<Vec<MappedObject>, TargetError> {
    let maps = std::fs::read(format!("/proc/{pid}/maps")).map_err(|error| match error.kind() {
        std::io::ErrorKind::PermissionDenied => permission_denied(pid),
        _ => TargetError::NoSuchProcess { pid },
    })?;
    let mut objects: Vec<MappedObject> = Vec::new();
    for line in maps.split(|&byte| byte == b'\n') {
        let Some(mapping) = Mapping::parse(line).filter(|m| m.executable) else {
            continue;
        };
        // The process may have unmapped it since: skip what is gone.
        let Some((open_path, file)) = open_mapped(pid, &mapping) else {
            continue;
        };
        if !objects.iter().any(|object| object.file == file) {
            objects.push(MappedObject {
                open_path,
                path: mapping.path,
                file,
            });
        }
    }
    Ok(objects)
}

/// Where to open a mapped file, and its identity. Opening `/proc/PID/map_files` needs
/// CAP_SYS_ADMIN or CAP_CHECKPOINT_RESTORE (EPERM otherwise, seen in a container holding
/// BPF, PERFMON, SYS_PTRACE and DAC_READ_SEARCH): without them the file is reached by its path
/// under the process's root, which those four allow.
fn open_mapped(pid: u32, mapping: &Mapping) -> Option<(PathBuf, FileId)> {
    let map_file = PathBuf::from(format!("/proc/{pid}/map_files/{}", mapping.range));
    match FileId::of(&map_file) {
        Ok(file) => Some((map_file, file)),
        Err(error) if error.kind() == std::io::ErrorKind::PermissionDenied => {
            let relative = mapping.path.strip_prefix("/").unwrap_or(&mapping.path);
            let rooted = Path::new(&format!("/proc/{pid}/root")).join(relative);
            FileId::of(&rooted).ok().map(|file| (rooted, file))
        }
        Err(_) => None,
    }
}

/// One line of `/proc/PID/maps` that maps a file.
#[derive(Debug, PartialEq, Eq)]
struct Mapping {
    /// `START-END`, as `/proc/PID/map_files` names it.
    range: String,
    executable: bool,
    path: PathBuf,
}

impl Mapping {
    /// `START-END PERMS OFFSET DEV INODE   PATH`: the path is the rest of the line, spaces
    /// included; the kernel writes a newline in it as `\012` and marks a deleted file with
    /// " (deleted)". Lines without a path, or a pseudo-path (`[vdso]`), are not files.
    fn parse(line: &[u8]) -> Option<Self> {
        let mut rest = line;
        let mut fields = Vec::with_capacity(5);
        for _ in 0..5 {
            let start = rest.iter().position(|b| *b != b' ')?;
            rest = &rest[start..];
            let end = rest.iter().position(|b| *b == b' ').unwrap_or(rest.len());
            fields.push(&rest[..end]);
            rest = &rest[end..];
        }
        let start = rest.iter().position(|b| *b != b' ')?;
        let path = &rest[start..];
        if path.first() != Some(&b'/') {
            return None;
        }
        let path = path.strip_suffix(b" (deleted)").unwrap_or(path);
        Some(Self {
            range: String::from_utf8_lossy(fields[0]).into_owned(),
            executable: fields[1].get(2) == Some(&b'x'),
            path: PathBuf::from(std::ffi::OsStr::from_bytes(&unescape_newlines(path))),
        })
    }
}

/// The kernel's `\012` back to the newline it stands for.
fn unescape_newlines(path: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(path.len());
    let mut rest = path;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix(b"\\012") {
            out.push(b'\n');
            rest = after;
        } else {
            out.push(rest[0]);
            rest = &rest[1..];
        }
    }
    out
}

/// The file name `pid` was started by (`argv[0]`'s), which may differ from its executable's
/// (`python3` for `python3.11`).
pub(crate) fn run_as_name(pid: u32) -> Option<String> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let argv0 = cmdline.split(|&byte| byte == 0).next()?;
    let name = Path::new(std::ffi::OsStr::from_bytes(argv0)).file_name()?;
    Some(name.to_string_lossy().into_owned())
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
        assert!(objects.iter().any(|object| object.file == own));
        assert!(
            objects
                .iter()
                .all(|object| FileId::of(&object.open_path).ok() == Some(object.file))
        );
        assert!(processes_running(own).contains(&pid));
        assert!(processes_mapping(own) >= 1);
    }

    #[test]
    fn maps_lines_keep_spaces_newlines_and_deleted_files() {
        let line = b"7f00-7f10 r-xp 00001000 fd:01 1234                       /tmp/a dir/lib x.so (deleted)";
        assert_eq!(
            Mapping::parse(line),
            Some(Mapping {
                range: "7f00-7f10".into(),
                executable: true,
                path: PathBuf::from("/tmp/a dir/lib x.so"),
            })
        );
        let newline = b"7f00-7f10 r--p 00000000 fd:01 1234   /tmp/a\\012b.so";
        let parsed = Mapping::parse(newline).unwrap();
        assert_eq!(parsed.path, PathBuf::from("/tmp/a\nb.so"));
        assert!(!parsed.executable);
        assert_eq!(
            Mapping::parse(b"7fff-8000 r-xp 00000000 00:00 0                  [vdso]"),
            None
        );
        assert_eq!(Mapping::parse(b"7fff-8000 rw-p 00000000 00:00 0 "), None);
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
