//! Reading an ELF object: its function symbols (from `.dynsym` and `.symtab`, demangled) as file
//! offsets, its entry point, and the libraries it needs.

use std::path::{Path, PathBuf};

use crate::mapped_file::{MapError, MappedFile};

use object::{
    Endianness, Object, ObjectSymbol, SymbolKind,
    elf::{DT_NEEDED, DT_RPATH, DT_RUNPATH, PT_INTERP, PT_LOAD},
    read::elf::{ElfFile64, FileHeader, ProgramHeader},
};

/// A function that can carry a probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Function {
    /// The demangled name (the raw one for C symbols).
    pub name: String,
    /// The name as stored in the symbol table.
    pub raw_name: String,
    /// Offset of the first instruction in the file: what the kernel attaches to.
    pub file_offset: u64,
    /// Other raw names of the same address (`free` and `cfree`, versioned aliases...).
    pub aliases: Vec<String>,
    /// Whether the kernel can put a uprobe on the first instruction.
    pub probeable: bool,
}

impl Function {
    /// Every (raw, demangled) name this function answers to, its primary name first.
    pub(crate) fn names(&self) -> impl Iterator<Item = (&str, String)> {
        std::iter::once((self.raw_name.as_str(), self.name.clone()))
            .chain(self.aliases.iter().map(|raw| (raw.as_str(), demangle(raw))))
    }
}

/// What flowtap needs of one ELF object.
#[derive(Debug, Clone)]
pub struct ElfObject {
    /// Where the agent reads the file (through `/proc/PID/root` for a process's objects).
    pub(crate) path: PathBuf,
    /// The functions, sorted by name, one per address (aliases collapsed).
    pub(crate) functions: Vec<Function>,
    /// File offset of the entry point, for executables.
    pub(crate) entry_offset: Option<u64>,
    /// Whether it asks for a program interpreter, i.e. is an executable rather than a library.
    pub(crate) is_executable: bool,
    pub(crate) needed: Vec<String>,
    /// DT_RUNPATH, or DT_RPATH when there is no RUNPATH, split on ':'.
    pub(crate) search_path: Vec<String>,
    /// Go binaries move their stacks, which uretprobes corrupt.
    pub(crate) is_go: bool,
    /// Names of defined data symbols, to tell a user who selected one that it is not code.
    pub(crate) data_symbols: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SymbolError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not an ELF file: give the path of an executable or shared library")]
    NotElf { path: PathBuf },
    #[error(
        "{path} is {kind}, not a regular file: give the path of an executable or shared library"
    )]
    NotRegular { path: PathBuf, kind: String },
    #[error("{path} is a 32-bit ELF file: flowtap traces 64-bit x86_64 and aarch64 programs only")]
    Not64Bit { path: PathBuf },
    #[error("{path} is built for {arch}, not for this machine ({host})")]
    ForeignArch {
        path: PathBuf,
        arch: String,
        host: &'static str,
    },
    #[error("{path} is a malformed ELF file: {reason}")]
    Malformed { path: PathBuf, reason: String },
}

impl ElfObject {
    /// Maps the file rather than reading it whole; refuses what is not a regular file.
    pub(crate) fn read(path: &Path) -> Result<Self, SymbolError> {
        let data = MappedFile::open(path).map_err(|error| match error {
            MapError::NotRegular(kind) => SymbolError::NotRegular {
                path: path.to_path_buf(),
                kind: kind.to_string(),
            },
            MapError::Io(source) => SymbolError::Read {
                path: path.to_path_buf(),
                source,
            },
        })?;
        Self::parse(path, &data)
    }

    /// Parses the contents `data` of the file at `path` (which is only used in messages).
    pub fn parse(path: &Path, data: &[u8]) -> Result<Self, SymbolError> {
        check_header(path, data)?;
        let malformed = |error: object::Error| SymbolError::Malformed {
            path: path.to_path_buf(),
            reason: error.to_string(),
        };
        let elf = ElfFile64::<Endianness>::parse(data).map_err(malformed)?;
        let segments = LoadSegments::of(&elf);
        let functions = collect_functions(&elf, &segments, data);
        let (needed, search_path) = dynamic_dependencies(&elf).map_err(malformed)?;
        let is_executable = elf
            .elf_program_headers()
            .iter()
            .any(|header| header.p_type(elf.endian()) == PT_INTERP);
        let entry = elf.elf_header().e_entry(elf.endian());
        let data_symbols = elf
            .dynamic_symbols()
            .chain(elf.symbols())
            .filter(|s| s.kind() == SymbolKind::Data && s.is_definition())
            .filter_map(|s| s.name().ok().map(str::to_string))
            .collect();
        let is_go = [".go.buildinfo", ".gopclntab"]
            .iter()
            .any(|name| elf.section_by_name(name).is_some());
        Ok(Self {
            path: path.to_path_buf(),
            functions,
            entry_offset: (entry != 0).then(|| segments.file_offset(entry)).flatten(),
            is_executable,
            needed,
            search_path,
            is_go,
            data_symbols,
        })
    }

    /// The file name, as users scope symbols with it (`libwfrt.so:wf_*`).
    pub(crate) fn file_name(&self) -> String {
        file_name(&self.path)
    }
}

pub(crate) fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

// ELF header values, read before the object crate parses the file.
const ELFCLASS64: u8 = 2;
const EM_X86_64: u16 = 62;
const EM_AARCH64: u16 = 183;

/// Rejects what is not a 64-bit ELF for this machine with a message that says which it is.
fn check_header(path: &Path, data: &[u8]) -> Result<(), SymbolError> {
    if data.len() < 20 || &data[..4] != b"\x7fELF" {
        return Err(SymbolError::NotElf {
            path: path.to_path_buf(),
        });
    }
    if data[4] != ELFCLASS64 {
        return Err(SymbolError::Not64Bit {
            path: path.to_path_buf(),
        });
    }
    let machine = u16::from_le_bytes([data[18], data[19]]);
    let (expected, host) = if cfg!(target_arch = "aarch64") {
        (EM_AARCH64, "aarch64")
    } else {
        (EM_X86_64, "x86_64")
    };
    if machine != expected {
        return Err(SymbolError::ForeignArch {
            path: path.to_path_buf(),
            arch: machine_name(machine),
            host,
        });
    }
    Ok(())
}

fn machine_name(machine: u16) -> String {
    match machine {
        EM_X86_64 => "x86_64".into(),
        EM_AARCH64 => "aarch64".into(),
        3 => "i386".into(),
        40 => "arm".into(),
        243 => "riscv".into(),
        21 => "ppc64".into(),
        22 => "s390x".into(),
        other => format!("ELF machine {other}"),
    }
}

/// Translates virtual addresses to file offsets through the PT_LOAD segments.
struct LoadSegments(Vec<(u64, u64, u64)>);

impl LoadSegments {
    fn of(elf: &ElfFile64<Endianness>) -> Self {
        let endian = elf.endian();
        Self(
            elf.elf_program_headers()
                .iter()
                .filter(|header| header.p_type(endian) == PT_LOAD)
                .map(|header| {
                    (
                        header.p_vaddr(endian),
                        header.p_filesz(endian),
                        header.p_offset(endian),
                    )
                })
                .collect(),
        )
    }

    /// Checked throughout: the header values come from an untrusted file (the fuzzer found a
    /// segment whose end overflowed).
    fn file_offset(&self, address: u64) -> Option<u64> {
        self.0.iter().find_map(|&(vaddr, size, offset)| {
            let into = address.checked_sub(vaddr)?;
            (into < size).then(|| offset.checked_add(into)).flatten()
        })
    }
}

fn collect_functions(
    elf: &ElfFile64<Endianness>,
    segments: &LoadSegments,
    data: &[u8],
) -> Vec<Function> {
    // Exported names first: where a local alias shares an address, a public name is primary.
    let mut by_offset = std::collections::BTreeMap::new();
    for symbol in elf.dynamic_symbols().chain(elf.symbols()) {
        if symbol.kind() != SymbolKind::Text || !symbol.is_definition() || symbol.address() == 0 {
            continue;
        }
        let (Ok(raw_name), Some(file_offset)) =
            (symbol.name(), segments.file_offset(symbol.address()))
        else {
            continue;
        };
        if raw_name.is_empty() {
            continue;
        }
        let function = by_offset.entry(file_offset).or_insert_with(|| Function {
            name: demangle(raw_name),
            raw_name: raw_name.to_string(),
            file_offset,
            aliases: Vec::new(),
            probeable: !starts_with_lock_prefix(data.get(file_offset as usize..).unwrap_or(&[])),
        });
        if function.raw_name != raw_name && !function.aliases.iter().any(|a| a == raw_name) {
            function.aliases.push(raw_name.to_string());
        }
    }
    let mut functions: Vec<Function> = by_offset.into_values().collect();
    functions.sort_by(|a, b| a.name.cmp(&b.name));
    functions
}

/// x86 uprobes refuse instructions with a LOCK prefix; the attach itself does not fail, the
/// breakpoint is silently never installed, so such functions must be found beforehand.
fn starts_with_lock_prefix(code: &[u8]) -> bool {
    const LOCK: u8 = 0xf0;
    const LEGACY_PREFIXES: [u8; 11] = [
        LOCK, 0xf2, 0xf3, 0x2e, 0x36, 0x3e, 0x26, 0x64, 0x65, 0x66, 0x67,
    ];
    cfg!(target_arch = "x86_64")
        && code
            .iter()
            .take(4)
            .take_while(|byte| LEGACY_PREFIXES.contains(byte))
            .any(|&byte| byte == LOCK)
}

fn dynamic_dependencies(elf: &ElfFile64<Endianness>) -> object::Result<(Vec<String>, Vec<String>)> {
    let endian = elf.endian();
    let table = elf.elf_section_table().dynamic_table(endian, elf.data())?;
    let mut needed = Vec::new();
    let (mut runpath, mut rpath) = (Vec::new(), Vec::new());
    for entry in table.iter() {
        let target = match entry.tag {
            DT_NEEDED => &mut needed,
            DT_RUNPATH => &mut runpath,
            DT_RPATH => &mut rpath,
            _ => continue,
        };
        let value = String::from_utf8_lossy(table.string(entry)?).into_owned();
        if entry.tag == DT_NEEDED {
            target.push(value);
        } else {
            target.extend(
                value
                    .split(':')
                    .filter(|dir| !dir.is_empty())
                    .map(String::from),
            );
        }
    }
    Ok((needed, if runpath.is_empty() { rpath } else { runpath }))
}

/// Rust (legacy and v0) and Itanium C++ names, without Rust's hash suffix; others as they are.
pub(crate) fn demangle(raw: &str) -> String {
    if let Ok(rust) = rustc_demangle::try_demangle(raw) {
        return format!("{rust:#}");
    }
    if raw.starts_with("_Z")
        && let Ok(symbol) = cpp_demangle::Symbol::new(raw)
        && let Ok(name) = symbol.demangle(&cpp_demangle::DemangleOptions::default())
    {
        return name;
    }
    raw.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demangles_rust_and_cpp_and_keeps_c() {
        assert_eq!(
            demangle("_ZN4core3fmt5write17h0123456789abcdefE"),
            "core::fmt::write"
        );
        assert_eq!(demangle("_ZN3foo3barEv"), "foo::bar()");
        assert_eq!(demangle("wf_cache_get"), "wf_cache_get");
    }

    #[test]
    fn reads_own_test_binary() {
        let exe = std::env::current_exe().unwrap();
        let object = ElfObject::read(&exe).unwrap();
        assert!(object.is_executable);
        assert!(object.entry_offset.is_some());
        assert!(
            object
                .functions
                .iter()
                .any(|f| f.name.ends_with("reads_own_test_binary"))
        );
    }

    #[test]
    fn inputs_the_fuzzer_crashed_on_are_refused_or_read() {
        let dir = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../fuzz/regressions/elf_symbols"
        );
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let _ = ElfObject::parse(&path, &std::fs::read(&path).unwrap());
        }
    }

    #[test]
    fn segments_at_the_top_of_the_address_space_do_not_overflow() {
        let segments = LoadSegments(vec![(u64::MAX - 10, 100, 0), (0x1000, 0x100, u64::MAX)]);
        assert_eq!(segments.file_offset(u64::MAX - 5), Some(5));
        assert_eq!(segments.file_offset(0x1010), None);
        assert_eq!(segments.file_offset(0x10), None);
    }

    #[test]
    fn lock_prefixed_entries_are_not_probeable() {
        assert!(starts_with_lock_prefix(&[0xf0, 0x48, 0x83, 0x05]));
        assert!(starts_with_lock_prefix(&[0x66, 0xf0, 0x0f, 0xb1]));
        assert!(!starts_with_lock_prefix(&[0x55, 0x48, 0x89, 0xe5]));
        assert!(!starts_with_lock_prefix(&[0xf3, 0x0f, 0x1e, 0xfa]));
        assert!(!starts_with_lock_prefix(&[]));
    }

    #[test]
    fn refuses_non_elf_and_32_bit() {
        let dir = std::env::temp_dir().join(format!("flowtap-symbols-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let text = dir.join("text");
        std::fs::write(&text, "#!/bin/sh\necho hi\n").unwrap();
        assert!(matches!(
            ElfObject::read(&text),
            Err(SymbolError::NotElf { .. })
        ));
        let mut elf32 = b"\x7fELF\x01\x01\x01".to_vec();
        elf32.resize(64, 0);
        let path32 = dir.join("elf32");
        std::fs::write(&path32, elf32).unwrap();
        assert!(matches!(
            ElfObject::read(&path32),
            Err(SymbolError::Not64Bit { .. })
        ));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
