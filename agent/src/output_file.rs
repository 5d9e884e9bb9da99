//! The files a run writes (`--output`, `--spans-out`): opened while the run is prepared, so a
//! path that cannot be written fails at once, but emptied only when the run starts, so a refused
//! run leaves an existing file as it was. flowtap often runs as root: a final symlink is
//! followed only when the invoking user (or root) owns it, and a new file is created `0600`
//! because it may hold strings captured from other processes.

use std::{
    fs::{File, OpenOptions},
    io,
    os::unix::fs::{MetadataExt, OpenOptionsExt},
    path::{Path, PathBuf},
};

use crate::invoker;

#[derive(Debug, thiserror::Error)]
pub(crate) enum OutputError {
    #[error("cannot write {what} to {path}: {source}")]
    Open {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "cannot write {what} to {path}: it is a symbolic link owned by uid {owner}, not by you or root; give the link's target instead"
    )]
    ForeignSymlink {
        what: &'static str,
        path: PathBuf,
        owner: u32,
    },
    #[error("{first} and {second} name the same file {path}: give each its own file")]
    SamePath {
        first: &'static str,
        second: &'static str,
        path: PathBuf,
    },
}

/// An output file, open but not yet emptied.
#[derive(Debug)]
pub(crate) struct OutputFile {
    file: File,
    path: PathBuf,
    /// Created by this run: removed again when the run never starts.
    created: bool,
    started: bool,
}

impl OutputFile {
    /// Opens `path` for writing without emptying it; `what` names it in messages.
    pub(crate) fn open(path: &Path, what: &'static str) -> Result<Self, OutputError> {
        let error = |source| OutputError::Open {
            what,
            path: path.to_path_buf(),
            source,
        };
        let link = path.symlink_metadata().ok();
        let is_link = link
            .as_ref()
            .is_some_and(|link| link.file_type().is_symlink());
        if let Some(link) = link.as_ref().filter(|_| is_link)
            && !invoker::trusted_owner(link.uid())
        {
            return Err(OutputError::ForeignSymlink {
                what,
                path: path.to_path_buf(),
                owner: link.uid(),
            });
        }
        let existed = path.exists();
        // A link planted between the check above and this open is not followed either.
        let no_follow = if is_link { 0 } else { libc::O_NOFOLLOW };
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(no_follow)
            .open(path)
            .map_err(error)?;
        Ok(Self {
            file,
            path: path.to_path_buf(),
            created: !existed,
            started: false,
        })
    }

    /// The run has started: the file, emptied when it is a regular file (a FIFO or a terminal
    /// cannot be and need not be).
    pub(crate) fn start(mut self) -> io::Result<File> {
        self.started = true;
        if self.file.metadata()?.is_file() {
            self.file.set_len(0)?;
        }
        self.file.try_clone()
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for OutputFile {
    fn drop(&mut self) {
        if self.created && !self.started {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Refuses two outputs that name the same file (by path, or by device and inode when both
/// exist): their writes would interleave into neither format.
pub(crate) fn check_distinct(outputs: &[(&'static str, &Path)]) -> Result<(), OutputError> {
    for (index, (first, a)) in outputs.iter().enumerate() {
        for (second, b) in &outputs[index + 1..] {
            if same_file(a, b) {
                return Err(OutputError::SamePath {
                    first,
                    second,
                    path: a.to_path_buf(),
                });
            }
        }
    }
    Ok(())
}

fn same_file(a: &Path, b: &Path) -> bool {
    let absolute = |path: &Path| std::path::absolute(path).ok();
    if absolute(a).is_some() && absolute(a) == absolute(b) {
        return true;
    }
    match (a.metadata(), b.metadata()) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("flowtap-output-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        dir
    }

    #[test]
    fn an_existing_file_is_emptied_only_when_the_run_starts() {
        let dir = scratch("start");
        let path = dir.join("report");
        std::fs::write(&path, "previous report").unwrap();
        drop(OutputFile::open(&path, "the report").unwrap());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "previous report");
        let file = OutputFile::open(&path, "the report")
            .unwrap()
            .start()
            .unwrap();
        assert_eq!(file.metadata().unwrap().len(), 0);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_new_file_is_private_and_removed_when_the_run_never_starts() {
        let dir = scratch("new");
        let path = dir.join("spans");
        let output = OutputFile::open(&path, "spans").unwrap();
        assert_eq!(path.metadata().unwrap().mode() & 0o777, 0o600);
        drop(output);
        assert!(!path.exists());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn the_same_file_twice_is_refused() {
        let error = check_distinct(&[
            ("--output", Path::new("out.json")),
            ("--spans-out", Path::new("./out.json")),
        ])
        .unwrap_err();
        assert!(error.to_string().contains("name the same file"), "{error}");
        check_distinct(&[
            ("--output", Path::new("a")),
            ("--spans-out", Path::new("b")),
        ])
        .unwrap();
    }
}
