//! Separate debug files: where a stripped object's `.symtab` went. Distributions install them
//! under `/usr/lib/debug` by build id (Debian's `-dbgsym` packages); `objcopy
//! --only-keep-debug` + `--add-gnu-debuglink` leaves one beside the object, named in its
//! `.gnu_debuglink` section. Searched in the places gdb searches.

use std::path::{Path, PathBuf};

use object::{Object, read::elf::ElfFile64};

use crate::mapped_file::MappedFile;

const DEBUG_ROOT: &str = "/usr/lib/debug";

/// A debug file found for an object, mapped.
pub(crate) struct DebugFile {
    pub(crate) path: PathBuf,
    pub(crate) data: MappedFile,
}

/// The separate debug file of the object `path` (contents `data`) when it has no `.symtab` and
/// one exists whose build id, if both have one, is the object's.
pub(crate) fn find(path: &Path, data: &[u8]) -> Option<DebugFile> {
    let elf = ElfFile64::<object::Endianness>::parse(data).ok()?;
    if elf.section_by_name(".symtab").is_some() {
        return None;
    }
    let build_id = elf.build_id().ok().flatten();
    let link = elf.gnu_debuglink().ok().flatten().map(|(name, _crc)| name);
    candidates(path, build_id, link)
        .into_iter()
        .filter(|candidate| candidate.as_path() != path && candidate.is_file())
        .find_map(|candidate| {
            let data = MappedFile::open(&candidate).ok()?;
            same_build(build_id, &data).then_some(DebugFile {
                path: candidate,
                data,
            })
        })
}

/// Where gdb looks: by build id, then the debug link beside the object, in its `.debug`
/// directory, and under the debug root.
fn candidates(path: &Path, build_id: Option<&[u8]>, link: Option<&[u8]>) -> Vec<PathBuf> {
    let mut found = Vec::new();
    if let Some(id) = build_id.filter(|id| id.len() > 1) {
        let hex: String = id.iter().map(|byte| format!("{byte:02x}")).collect();
        found.push(
            Path::new(DEBUG_ROOT)
                .join(".build-id")
                .join(&hex[..2])
                .join(format!("{}.debug", &hex[2..])),
        );
    }
    let link = link.and_then(|name| std::str::from_utf8(name).ok());
    let directory = path
        .canonicalize()
        .ok()
        .and_then(|real| real.parent().map(Path::to_path_buf));
    if let (Some(name), Some(directory)) = (link.filter(|n| !n.contains('/')), directory) {
        found.push(directory.join(name));
        found.push(directory.join(".debug").join(name));
        found.push(
            Path::new(DEBUG_ROOT)
                .join(directory.strip_prefix("/").unwrap_or(&directory))
                .join(name),
        );
    }
    found
}

/// Whether the debug file `data` was split from the object with `build_id` (unknown: trusted).
fn same_build(build_id: Option<&[u8]>, data: &[u8]) -> bool {
    let Ok(debug) = ElfFile64::<object::Endianness>::parse(data) else {
        return false;
    };
    match (build_id, debug.build_id().ok().flatten()) {
        (Some(object), Some(debug)) => object == debug,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_id_and_debug_link_candidates_follow_gdb() {
        let found = candidates(
            Path::new("/usr/bin/true"),
            Some(&[0xab, 0xcd, 0xef]),
            Some(b"true.debug"),
        );
        let directory = Path::new("/usr/bin").canonicalize().unwrap();
        assert_eq!(
            found,
            [
                PathBuf::from("/usr/lib/debug/.build-id/ab/cdef.debug"),
                directory.join("true.debug"),
                directory.join(".debug/true.debug"),
                Path::new("/usr/lib/debug")
                    .join(directory.strip_prefix("/").unwrap())
                    .join("true.debug"),
            ]
        );
    }
}
