//! Finding the shared libraries a program will load, the way ld.so does: DT_RPATH/DT_RUNPATH
//! (with `$ORIGIN`), `LD_LIBRARY_PATH`, `/etc/ld.so.cache`, then the default directories.

use std::{
    collections::{HashSet, VecDeque},
    path::{Path, PathBuf},
};

use crate::symbols::{ElfObject, SymbolError};

const DEFAULT_DIRS: &[&str] = &[
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib/aarch64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/lib64",
    "/usr/lib64",
    "/lib",
    "/usr/lib",
];

/// The executable and every library it needs, transitively, each read once. Libraries that
/// cannot be found are left out: the program would not start either, and ld.so will say so.
/// `library_path` is the program's `LD_LIBRARY_PATH` when it is not flowtap's own (a command
/// started through `env LD_LIBRARY_PATH=… prog`).
pub(crate) fn load_closure(
    executable: &Path,
    library_path: Option<&str>,
) -> Result<Vec<ElfObject>, SymbolError> {
    let env_dirs = library_path.map_or_else(
        || std::env::var("LD_LIBRARY_PATH").unwrap_or_default(),
        str::to_string,
    );
    let cache = LdSoCache::read(Path::new("/"));
    let mut objects = vec![read(executable)?];
    let mut seen: HashSet<String> = HashSet::new();
    let mut queue: VecDeque<(String, usize)> = objects[0]
        .needed
        .iter()
        .map(|name| (name.clone(), 0))
        .collect();
    while let Some((name, parent)) = queue.pop_front() {
        if !seen.insert(name.clone()) {
            continue;
        }
        let Some(path) = resolve(&name, &objects[parent], &cache, &env_dirs) else {
            continue;
        };
        let object = read(&path)?;
        let index = objects.len();
        queue.extend(object.needed.iter().map(|needed| (needed.clone(), index)));
        objects.push(object);
    }
    Ok(objects)
}

/// More candidates than this for one name, and none is looked at: the name is too loose to
/// guess which one a program will load.
const MAX_CANDIDATES: usize = 4;

/// The libraries of the system under `root` (a process's root directory) that `dlopen` of a
/// name `glob` matches would load: `/etc/ld.so.cache`'s entries by that name, each read once and
/// known by it too. Probes on them are live before a process maps them (uprobes are per file).
pub(crate) fn installed(root: &Path, glob: &glob::Pattern) -> Vec<ElfObject> {
    let cache = LdSoCache::read(root);
    let mut files: Vec<(String, PathBuf)> = Vec::new();
    for (name, path) in &cache.0 {
        let path = root.join(path.strip_prefix("/").unwrap_or(path));
        let real = path.canonicalize().unwrap_or_else(|_| path.clone());
        if glob.matches(name) && path.is_file() && !files.iter().any(|(_, known)| *known == real) {
            files.push((name.clone(), real));
        }
    }
    if files.len() > MAX_CANDIDATES {
        return Vec::new();
    }
    files
        .into_iter()
        .filter_map(|(name, path)| {
            let mut object = read(&path).ok()?;
            object.add_names([name]);
            Some(object)
        })
        .collect()
}

/// Reads the object at `path`, shown by its real file's name as in PID mode (`libz.so.1` is a
/// link to `libz.so.1.2.13`) and known by the name it is loaded as (the path's) too.
fn read(path: &Path) -> Result<ElfObject, SymbolError> {
    let mut object = ElfObject::read(path)?;
    if let Ok(real) = path.canonicalize() {
        object.show_as(crate::symbols::file_name(&real));
    }
    Ok(object)
}

fn resolve(name: &str, parent: &ElfObject, cache: &LdSoCache, env_dirs: &str) -> Option<PathBuf> {
    if name.contains('/') {
        return Some(PathBuf::from(name));
    }
    let origin = parent.path.parent().unwrap_or(Path::new("/"));
    let expand = |dir: &String| {
        PathBuf::from(
            dir.replace("${ORIGIN}", &origin.to_string_lossy())
                .replace("$ORIGIN", &origin.to_string_lossy()),
        )
    };
    parent
        .search_path
        .iter()
        .map(expand)
        .chain(
            env_dirs
                .split(':')
                .filter(|d| !d.is_empty())
                .map(PathBuf::from),
        )
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .or_else(|| cache.lookup(name))
        .or_else(|| {
            DEFAULT_DIRS
                .iter()
                .map(|dir| Path::new(dir).join(name))
                .find(|candidate| candidate.is_file())
        })
}

/// The new-format (glibc >= 2.32) `/etc/ld.so.cache`: name → path for this machine's libraries.
struct LdSoCache(Vec<(String, PathBuf)>);

impl LdSoCache {
    const MAGIC: &'static [u8] = b"glibc-ld.so.cache1.1";
    const HEADER_LEN: usize = 48;
    const ENTRY_LEN: usize = 24;

    /// The cache of the system under `root`.
    fn read(root: &Path) -> Self {
        let data = std::fs::read(root.join("etc/ld.so.cache")).unwrap_or_default();
        Self(Self::parse(&data).unwrap_or_default())
    }

    fn parse(data: &[u8]) -> Option<Vec<(String, PathBuf)>> {
        let u32_at = |at: usize| -> Option<u32> {
            Some(u32::from_ne_bytes(data.get(at..at + 4)?.try_into().ok()?))
        };
        // Old caches prefix the new format with a legacy table; find the new header.
        let start = data
            .windows(Self::MAGIC.len())
            .position(|window| window == Self::MAGIC)?;
        let count = u32_at(start + 20)? as usize;
        // String offsets count from the start of the new-format header.
        let string_at = |offset: u32| -> Option<String> {
            let bytes = data.get(start + offset as usize..)?;
            let end = bytes.iter().position(|&b| b == 0)?;
            Some(String::from_utf8_lossy(&bytes[..end]).into_owned())
        };
        (0..count)
            .map(|index| {
                let entry = start + Self::HEADER_LEN + index * Self::ENTRY_LEN;
                Some((
                    string_at(u32_at(entry + 4)?)?,
                    PathBuf::from(string_at(u32_at(entry + 8)?)?),
                ))
            })
            .collect()
    }

    fn lookup(&self, name: &str) -> Option<PathBuf> {
        self.0
            .iter()
            .find(|(key, path)| key == name && path.is_file())
            .map(|(_, path)| path.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_libc_through_the_cache_of_this_machine() {
        let cache = LdSoCache::read(Path::new("/"));
        let libc = cache
            .lookup("libc.so.6")
            .expect("libc.so.6 in /etc/ld.so.cache");
        assert!(libc.is_file());
    }

    #[test]
    fn installed_libraries_are_found_by_the_name_they_are_loaded_as() {
        let libc = installed(Path::new("/"), &glob::Pattern::new("libc.so*").unwrap());
        assert_eq!(libc.len(), 1);
        assert!(libc[0].names.iter().any(|name| name == "libc.so.6"));
        assert!(installed(Path::new("/"), &glob::Pattern::new("lib*").unwrap()).is_empty());
    }

    #[test]
    fn closure_of_a_system_binary_includes_libc() {
        let objects = load_closure(Path::new("/bin/ls"), None).unwrap();
        assert!(objects.iter().any(|o| o.file_name() == "libc.so.6"));
    }
}
