//! Object files mapped into memory rather than read whole: the kernel pages in only what
//! parsing touches (headers, symbol and string tables, a few bytes per function), so a huge or
//! sparse file costs what its tables cost. Only regular files are opened, without blocking: a
//! FIFO or a device (`/dev/zero` mapped executable by a target, say) is refused before any read.

use std::{
    fs::{File, OpenOptions},
    io,
    os::{fd::AsRawFd, unix::fs::OpenOptionsExt},
    path::Path,
};

/// What a path is when it is not a regular file, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NotRegular {
    Directory,
    Fifo,
    Device,
    Socket,
}

impl std::fmt::Display for NotRegular {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Directory => "a directory",
            Self::Fifo => "a FIFO",
            Self::Device => "a device",
            Self::Socket => "a socket",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum MapError {
    #[error("it is {0}, not a regular file")]
    NotRegular(NotRegular),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// The kind of a non-regular file type.
pub(crate) fn not_regular(kind: std::fs::FileType) -> Option<NotRegular> {
    use std::os::unix::fs::FileTypeExt;
    if kind.is_file() {
        None
    } else if kind.is_dir() {
        Some(NotRegular::Directory)
    } else if kind.is_fifo() {
        Some(NotRegular::Fifo)
    } else if kind.is_socket() {
        Some(NotRegular::Socket)
    } else {
        Some(NotRegular::Device)
    }
}

/// A read-only private mapping of a whole regular file.
pub(crate) struct MappedFile {
    address: *mut libc::c_void,
    len: usize,
}

impl MappedFile {
    pub(crate) fn open(path: &Path) -> Result<Self, MapError> {
        if let Some(kind) = not_regular(path.metadata()?.file_type()) {
            return Err(MapError::NotRegular(kind));
        }
        // Non-blocking: a FIFO swapped in after the check above must not hang the open.
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)?;
        let metadata = file.metadata()?;
        if let Some(kind) = not_regular(metadata.file_type()) {
            return Err(MapError::NotRegular(kind));
        }
        Self::map(&file, metadata.len())
    }

    fn map(file: &File, len: u64) -> Result<Self, MapError> {
        let len = usize::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::FileTooLarge))?;
        if len == 0 {
            return Ok(Self {
                address: std::ptr::null_mut(),
                len: 0,
            });
        }
        // Shared, not private: the kernel puts the breakpoints of uprobes already on the file
        // (ours on a library pre-armed before it loads, another tracer's) into every private
        // mapping of it that may execute, and the code read here would show them in place of
        // the functions' first instructions.
        // SAFETY: a fresh read-only mapping of a file opened read-only; nothing writes through it.
        let address = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if address == libc::MAP_FAILED {
            return Err(io::Error::last_os_error().into());
        }
        Ok(Self { address, len })
    }
}

impl std::ops::Deref for MappedFile {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: the mapping is `len` readable bytes and lives as long as self.
        unsafe { std::slice::from_raw_parts(self.address.cast(), self.len) }
    }
}

impl Drop for MappedFile {
    fn drop(&mut self) {
        if self.len != 0 {
            // SAFETY: unmapping the mapping this value owns, once.
            unsafe { libc::munmap(self.address, self.len) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fifo_and_a_device_are_refused_without_reading() {
        let dir = std::env::temp_dir().join(format!("flowtap-mapped-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        let fifo = dir.join("fifo");
        let path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid path string.
        assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0);
        for (path, kind) in [
            (fifo.as_path(), NotRegular::Fifo),
            (Path::new("/dev/zero"), NotRegular::Device),
            (dir.as_path(), NotRegular::Directory),
        ] {
            match MappedFile::open(path) {
                Err(MapError::NotRegular(found)) => assert_eq!(found, kind),
                _ => panic!("{} was not refused", path.display()),
            }
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_sparse_file_costs_only_what_is_touched() {
        let path = std::env::temp_dir().join(format!("flowtap-sparse-{}", std::process::id()));
        let file = File::create(&path).unwrap();
        file.set_len(6 << 30).unwrap();
        let mapped = MappedFile::open(&path).unwrap();
        assert_eq!(mapped.len(), 6 << 30);
        assert_eq!(mapped[..4], [0, 0, 0, 0]);
        std::fs::remove_file(path).unwrap();
    }
}
