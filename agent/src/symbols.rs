//! Reading an ELF object: its function symbols (from `.dynsym` and `.symtab`, demangled) as file
//! offsets, where each can be probed and which must not be, whether the object unwinds, its
//! entry point, and the libraries it needs.

use std::{
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
};

use crate::mapped_file::{MapError, MappedFile};

use object::{
    Endianness, Object, ObjectSymbol, SymbolKind,
    elf::{DT_NEEDED, DT_RPATH, DT_RUNPATH, DT_SONAME, PT_INTERP, PT_LOAD},
    read::elf::{ElfFile64, FileHeader, ProgramHeader},
};

/// A function that can carry a probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Function {
    /// The demangled name (the raw one for C symbols).
    pub name: String,
    /// The name as stored in the symbol table.
    pub raw_name: String,
    /// Offset of the first instruction in the file.
    pub file_offset: u64,
    /// Its code's length from the symbol table; 0 when not recorded (some assembly).
    pub size: u64,
    /// Other raw names of the same address (`free` and `cfree`, versioned aliases...).
    pub aliases: Vec<String>,
    /// Where the entry probe goes: the first instruction, or the one after `endbr64`.
    pub probe_offset: u64,
    /// The kernel single-steps the instruction at `probe_offset` instead of emulating it: two
    /// traps per call, ~25x the cost of one starting with `push %rbp` on a VM.
    pub costly_entry: bool,
    /// Why it must not be probed, if so.
    pub refusal: Option<Refusal>,
    /// Known only from the object's separate debug file (a library's internals, say).
    pub from_debug_file: bool,
}

/// Why flowtap will not put a probe on a function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refusal {
    #[error("its first instruction has a LOCK prefix, which uprobes refuse")]
    LockPrefix,
    #[error(
        "a `.cold` fragment of another function, entered by a jump: its stack top is the caller's data, not a return address"
    )]
    Fragment,
    #[error(
        "the program's entry point, not a function: its stack holds argc, not a return address"
    )]
    EntryPoint,
    #[error("part of the exception unwinder, which must walk the stack unprobed")]
    Unwinder,
    #[error(
        "part of setjmp/longjmp (or vfork, or user contexts): it returns twice or jumps across frames"
    )]
    NonLocalJump,
    #[error(
        "a trampoline entered without a call (signal return, lazy binding): no return address on its stack"
    )]
    Trampoline,
    #[error("its object unwinds and its code could not be decoded to find its return instructions")]
    Undecodable,
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
    /// Where the agent reads the file (through `/proc/PID/map_files` for a process's objects).
    pub(crate) path: PathBuf,
    /// The path shown in messages: as the process maps it.
    pub(crate) shown_path: PathBuf,
    /// The names `OBJECT:` selectors match, the one shown first: the file name, the name it
    /// was loaded or run as, and its DT_SONAME, without repeats.
    pub(crate) names: Vec<String>,
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
    /// Exceptions or panics can unwind through its functions: the symbol that says so
    /// (a personality routine or the unwinder, defined or imported).
    pub(crate) unwinds: Option<&'static str>,
    /// Names of defined data symbols, to tell a user who selected one that it is not code.
    pub(crate) data_symbols: Vec<String>,
    /// It has no `.symtab` and no separate debug file was found: only its exported functions
    /// are known.
    pub(crate) stripped: bool,
    /// The separate debug file its local functions were read from, if any.
    pub(crate) debug_file: Option<PathBuf>,
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

impl SymbolError {
    /// The same error, naming the file by `shown` (as the process maps it) rather than by where
    /// it was read.
    pub(crate) fn at(mut self, shown: &Path) -> Self {
        let (SymbolError::Read { path, .. }
        | SymbolError::NotElf { path }
        | SymbolError::NotRegular { path, .. }
        | SymbolError::Not64Bit { path }
        | SymbolError::ForeignArch { path, .. }
        | SymbolError::Malformed { path, .. }) = &mut self;
        *path = shown.to_path_buf();
        self
    }
}

impl ElfObject {
    /// Maps the file rather than reading it whole; refuses what is not a regular file. A
    /// stripped object's functions are read from its separate debug file when there is one.
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
        let debug = crate::debug_file::find(path, &data);
        Self::parse_with(
            path,
            &data,
            debug.as_ref().map(|d| (d.path.as_path(), &d.data[..])),
        )
    }

    /// Parses the contents `data` of the file at `path` (which is only used in messages).
    pub fn parse(path: &Path, data: &[u8]) -> Result<Self, SymbolError> {
        Self::parse_with(path, data, None)
    }

    /// Parses, with the contents of the object's separate debug file when it has one.
    fn parse_with(
        path: &Path,
        data: &[u8],
        debug: Option<(&Path, &[u8])>,
    ) -> Result<Self, SymbolError> {
        check_header(path, data)?;
        let malformed = |error: object::Error| SymbolError::Malformed {
            path: path.to_path_buf(),
            reason: error.to_string(),
        };
        let elf = ElfFile64::<Endianness>::parse(data).map_err(malformed)?;
        let segments = LoadSegments::of(&elf);
        let dynamic = dynamic_dependencies(&elf).map_err(malformed)?;
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
        let entry_offset = (entry != 0).then(|| segments.file_offset(entry)).flatten();
        let debug_elf = debug.and_then(|(debug_path, debug_data)| {
            Some((debug_path, ElfFile64::<Endianness>::parse(debug_data).ok()?))
        });
        let mut symbols: Vec<_> =
            text_symbols(elf.dynamic_symbols().chain(elf.symbols())).collect();
        let own = symbols.len();
        if let Some((_, debug_elf)) = &debug_elf {
            symbols.extend(text_symbols(debug_elf.symbols()));
        }
        let has_symtab = elf.section_by_name(".symtab").is_some();
        let mut object = Self {
            path: path.to_path_buf(),
            shown_path: path.to_path_buf(),
            names: vec![file_name(path)],
            functions: collect_functions(&symbols, own, &segments, data, entry_offset),
            entry_offset,
            is_executable,
            needed: dynamic.needed,
            search_path: dynamic.search_path,
            is_go,
            unwinds: unwinding_evidence(&elf),
            data_symbols,
            stripped: !has_symtab && debug_elf.is_none(),
            debug_file: debug_elf.map(|(debug_path, _)| debug_path.to_path_buf()),
        };
        object.add_names(dynamic.soname);
        Ok(object)
    }

    /// Adds names the object is known by (after those it has), skipping repeats.
    pub(crate) fn add_names(&mut self, names: impl IntoIterator<Item = String>) {
        for name in names {
            if !name.is_empty() && !self.names.contains(&name) {
                self.names.push(name);
            }
        }
    }

    /// Makes `name` the name shown for the object, keeping the others.
    pub(crate) fn show_as(&mut self, name: String) {
        self.names.retain(|known| *known != name);
        self.names.insert(0, name);
    }

    /// Whether `glob` matches one of the object's names.
    pub(crate) fn is_named(&self, glob: &glob::Pattern) -> bool {
        self.names.iter().any(|name| glob.matches(name))
    }

    /// The code of `function`: its `size` bytes from its first instruction.
    pub(crate) fn code(&self, function: &Function) -> Result<Vec<u8>, SymbolError> {
        let read = |source| SymbolError::Read {
            path: self.path.clone(),
            source,
        };
        let file = std::fs::File::open(&self.path).map_err(read)?;
        let mut code = vec![
            0;
            usize::try_from(function.size)
                .unwrap_or(usize::MAX)
                .min(1 << 24)
        ];
        file.read_exact_at(&mut code, function.file_offset)
            .map_err(read)?;
        Ok(code)
    }

    /// The `.cold` fragments GCC split from `function` (named after its raw name).
    pub(crate) fn fragments_of<'a>(
        &'a self,
        function: &'a Function,
    ) -> impl Iterator<Item = &'a Function> {
        let prefix = format!("{}.cold", function.raw_name);
        self.functions.iter().filter(move |f| {
            f.raw_name
                .strip_prefix(&prefix)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
        })
    }

    /// The name shown for it: its file name as the process sees it (or as it was loaded).
    pub(crate) fn file_name(&self) -> String {
        self.names[0].clone()
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

/// Defined functions as (name, address, size), in the order given.
fn text_symbols<'data>(
    symbols: impl Iterator<Item = impl ObjectSymbol<'data>>,
) -> impl Iterator<Item = (&'data str, u64, u64)> {
    symbols
        .filter(|s| s.kind() == SymbolKind::Text && s.is_definition() && s.address() != 0)
        .filter_map(|s| {
            Some((
                s.name().ok().filter(|n| !n.is_empty())?,
                s.address(),
                s.size(),
            ))
        })
}

/// Functions from `symbols`, the first `own` of them the object's, the others its debug file's.
fn collect_functions(
    symbols: &[(&str, u64, u64)],
    own: usize,
    segments: &LoadSegments,
    data: &[u8],
    entry_offset: Option<u64>,
) -> Vec<Function> {
    // Exported names first: where a local alias shares an address, a public name is primary.
    let mut by_offset = std::collections::BTreeMap::new();
    for (index, &(raw_name, address, size)) in symbols.iter().enumerate() {
        let Some(file_offset) = segments.file_offset(address) else {
            continue;
        };
        let function = by_offset.entry(file_offset).or_insert_with(|| Function {
            from_debug_file: index >= own,
            ..new_function(raw_name, file_offset, size, data)
        });
        if function.raw_name != raw_name && !function.aliases.iter().any(|a| a == raw_name) {
            function.aliases.push(raw_name.to_string());
        }
        // Any name, or the address, can make it unsafe; the first reason found stands.
        function.refusal = function
            .refusal
            .or_else(|| refusal_by_name(raw_name))
            .or((Some(file_offset) == entry_offset).then_some(Refusal::EntryPoint));
        function.size = function.size.max(size);
    }
    let mut functions: Vec<Function> = by_offset.into_values().collect();
    functions.sort_by(|a, b| a.name.cmp(&b.name));
    tell_apart(&mut functions);
    functions.sort_by(|a, b| a.name.cmp(&b.name));
    functions
}

/// Longest x86 instruction, twice: enough for `endbr64` and the instruction after it.
const ENTRY_BYTES: usize = 2 * 15;

fn new_function(raw_name: &str, file_offset: u64, size: u64, data: &[u8]) -> Function {
    let code = usize::try_from(file_offset)
        .ok()
        .and_then(|start| data.get(start..))
        .unwrap_or_default();
    let code = &code[..code.len().min(ENTRY_BYTES)];
    let entry = crate::instructions::entry(code);
    Function {
        name: demangle(raw_name),
        raw_name: raw_name.to_string(),
        file_offset,
        size,
        aliases: Vec::new(),
        probe_offset: file_offset.saturating_add(entry.skip),
        costly_entry: entry.single_stepped,
        refusal: entry.lock_prefix.then_some(Refusal::LockPrefix),
        from_debug_file: false,
    }
}

/// The unwinder's own functions (libgcc, libunwind, the C++ and Rust runtimes): they walk the
/// stack from their own frame, so a return probe anywhere below them breaks every throw.
const UNWINDER: [&str; 10] = [
    "__cxa_throw",
    "__cxa_rethrow",
    "__cxa_begin_catch",
    "__cxa_end_catch",
    "__cxa_end_cleanup",
    "__cxa_call_unexpected",
    "__cxa_call_terminate",
    "rust_eh_personality",
    "__rust_start_panic",
    "__frame_state_for",
];
const UNWINDER_PREFIXES: [&str; 5] = [
    "_Unwind_",
    "__gxx_personality_",
    "__gcc_personality_",
    "_ULx86_64_",
    "_ULaarch64_",
];

/// glibc's non-local jumps: setjmp saves a return address that a return probe has replaced;
/// longjmp and setcontext leave frames without returning; vfork's child returns on the parent's
/// stack.
const NON_LOCAL_JUMPS: [&str; 20] = [
    "setjmp",
    "_setjmp",
    "__setjmp",
    "sigsetjmp",
    "__sigsetjmp",
    "__sigsetjmp_cancel",
    "longjmp",
    "_longjmp",
    "siglongjmp",
    "__longjmp",
    "__longjmp_chk",
    "____longjmp_chk",
    "__libc_longjmp",
    "__libc_siglongjmp",
    "getcontext",
    "setcontext",
    "swapcontext",
    "__start_context",
    "vfork",
    "__vfork",
];

/// Entered by a jump or a signal return, with no return address on the stack.
const TRAMPOLINES: [&str; 1] = ["__restore_rt"];
const TRAMPOLINE_PREFIXES: [&str; 2] = ["_dl_runtime_resolve", "_dl_runtime_profile"];

fn refusal_by_name(raw_name: &str) -> Option<Refusal> {
    // Versioned names (`longjmp@GLIBC_2.2.5`) answer for the plain one.
    let name = raw_name.split('@').next().unwrap_or(raw_name);
    let any = |names: &[&str], prefixes: &[&str]| {
        names.contains(&name) || prefixes.iter().any(|prefix| name.starts_with(prefix))
    };
    if name.split('.').skip(1).any(|part| part == "cold") {
        Some(Refusal::Fragment)
    } else if any(&UNWINDER, &UNWINDER_PREFIXES) {
        Some(Refusal::Unwinder)
    } else if any(&NON_LOCAL_JUMPS, &[]) {
        Some(Refusal::NonLocalJump)
    } else if any(&TRAMPOLINES, &TRAMPOLINE_PREFIXES) {
        Some(Refusal::Trampoline)
    } else {
        None
    }
}

/// Symbols, defined or imported, that mean exceptions or panics unwind through this object's
/// frames: C++ and Rust personality routines, and `_Unwind_Resume`, which every cleanup that
/// lets an exception pass calls. A `.gcc_except_table` alone does not count: glibc has one for
/// thread cancellation, whose forced unwinding stops harmlessly at a return probe.
const UNWINDING_SYMBOLS: [&str; 6] = [
    "__gxx_personality_v0",
    "__gxx_personality_sj0",
    "rust_eh_personality",
    "_Unwind_Resume",
    "_Unwind_RaiseException",
    "__cxa_throw",
];

fn unwinding_evidence(elf: &ElfFile64<Endianness>) -> Option<&'static str> {
    elf.dynamic_symbols()
        .chain(elf.symbols())
        .find_map(|symbol| {
            let name = symbol.name().ok()?;
            let name = name.split('@').next().unwrap_or(name);
            UNWINDING_SYMBOLS
                .iter()
                .find(|&&known| known == name)
                .copied()
        })
}

/// What the dynamic section says of an object's name and dependencies.
struct Dynamic {
    needed: Vec<String>,
    /// DT_RUNPATH, or DT_RPATH when there is no RUNPATH, split on ':'.
    search_path: Vec<String>,
    soname: Option<String>,
}

fn dynamic_dependencies(elf: &ElfFile64<Endianness>) -> object::Result<Dynamic> {
    let endian = elf.endian();
    let table = elf.elf_section_table().dynamic_table(endian, elf.data())?;
    let mut needed = Vec::new();
    let (mut runpath, mut rpath, mut soname) = (Vec::new(), Vec::new(), None);
    let split = |value: &str| -> Vec<String> {
        value
            .split(':')
            .filter(|dir| !dir.is_empty())
            .map(String::from)
            .collect()
    };
    for entry in table.iter() {
        if ![DT_NEEDED, DT_SONAME, DT_RUNPATH, DT_RPATH].contains(&entry.tag) {
            continue;
        }
        let value = String::from_utf8_lossy(table.string(entry)?).into_owned();
        match entry.tag {
            DT_NEEDED => needed.push(value),
            DT_SONAME => soname = Some(value),
            DT_RUNPATH => runpath.extend(split(&value)),
            _ => rpath.extend(split(&value)),
        }
    }
    Ok(Dynamic {
        needed,
        search_path: if runpath.is_empty() { rpath } else { runpath },
        soname,
    })
}

/// Whether `pattern` matches a function by its raw or demangled name, or by the short form of its
/// name: a C++ name without its parameter list (`ns::Cls::g` for `ns::Cls::g(int)`), a Rust name
/// without its hash suffix.
pub(crate) fn matches(pattern: &glob::Pattern, raw: &str, demangled: &str) -> bool {
    pattern.matches(raw)
        || pattern.matches(demangled)
        || short_name(raw).is_some_and(|short| short != demangled && pattern.matches(&short))
}

/// The name without what a glob should not have to spell out: C++ parameter lists and
/// qualifiers, Rust hashes. `None` for C names.
fn short_name(raw: &str) -> Option<String> {
    if let Ok(rust) = rustc_demangle::try_demangle(raw) {
        return Some(format!("{rust:#}"));
    }
    let options = cpp_demangle::DemangleOptions::new()
        .no_params()
        .no_return_type();
    raw.starts_with("_Z")
        .then(|| cpp_demangle::Symbol::new(raw).ok()?.demangle(&options).ok())
        .flatten()
}

/// Functions of one object whose names demangle to the same text are told apart in listings
/// and reports: Rust's legacy mangling (monomorphizations carry no generic arguments) by the
/// hash suffix; other distinct symbols (Rust v0 copies instantiated by different crates) by the
/// raw name beside; copies under one raw name (local symbols of different codegen units, C
/// `static` functions of different files) by their file offset.
fn tell_apart(functions: &mut [Function]) {
    let mut index = 0;
    while index < functions.len() {
        let same = functions[index..]
            .iter()
            .take_while(|f| f.name == functions[index].name)
            .count();
        let group = &mut functions[index..index + same];
        let raw_names: Vec<String> = group.iter().map(|f| f.raw_name.clone()).collect();
        for function in group.iter_mut().filter(|_| same > 1) {
            let copies = raw_names
                .iter()
                .filter(|raw| **raw == function.raw_name)
                .count();
            function.name = match rustc_demangle::try_demangle(&function.raw_name) {
                _ if copies > 1 => format!("{} @{:#x}", function.name, function.file_offset),
                Ok(rust) if !function.raw_name.starts_with("_R") => format!("{rust}"),
                _ => format!("{} [{}]", function.name, function.raw_name),
            };
        }
        index += same;
    }
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
    fn globs_match_cpp_names_without_parameters_and_rust_names_without_hashes() {
        let glob = |text| glob::Pattern::new(text).unwrap();
        // ns::Cls::g(int) const
        let cpp = "_ZNK2ns3Cls1gEi";
        assert_eq!(demangle(cpp), "ns::Cls::g(int) const");
        assert!(matches(&glob("ns::Cls::g"), cpp, &demangle(cpp)));
        assert!(matches(&glob("ns::Cls::g(int) const"), cpp, &demangle(cpp)));
        assert!(!matches(&glob("ns::Cls::h"), cpp, &demangle(cpp)));
        let rust = "_ZN4core3fmt5write17h0123456789abcdefE";
        assert!(matches(
            &glob("core::fmt::write"),
            rust,
            "core::fmt::write::h0123456789abcdef"
        ));
        assert!(!matches(&glob("wf_*"), "printf", "printf"));
    }

    #[test]
    fn functions_that_demangle_alike_are_told_apart() {
        let function = |raw: &str| new_function(raw, 0, 0, &[]);
        let mut functions = vec![
            function("_ZN3app5parse17h0000000000000001E"),
            function("_ZN3app5parse17h0000000000000002E"),
            function("_ZN3app3run17h0000000000000003E"),
            // A C `static` function of two files.
            Function {
                file_offset: 0x1234,
                ..function("helper")
            },
            Function {
                file_offset: 0x5678,
                ..function("helper")
            },
        ];
        functions.sort_by(|a, b| a.name.cmp(&b.name));
        tell_apart(&mut functions);
        let names: Vec<&str> = functions.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "app::parse::h0000000000000001",
                "app::parse::h0000000000000002",
                "app::run",
                "helper @0x1234",
                "helper @0x5678"
            ]
        );
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
    fn fragments_unwinder_and_jumps_are_refused_by_name() {
        assert_eq!(refusal_by_name("accumulate.cold"), Some(Refusal::Fragment));
        assert_eq!(
            refusal_by_name("_ZN6Parser5checkEl.cold.3"),
            Some(Refusal::Fragment)
        );
        // Partial inlining's and constant propagation's clones are called: fine.
        assert_eq!(refusal_by_name("parse.part.0"), None);
        assert_eq!(refusal_by_name("parse.constprop.0.isra.0"), None);
        assert_eq!(refusal_by_name("coldstart"), None);
        assert_eq!(refusal_by_name("__cxa_throw"), Some(Refusal::Unwinder));
        assert_eq!(refusal_by_name("_Unwind_Resume"), Some(Refusal::Unwinder));
        assert_eq!(
            refusal_by_name("__gxx_personality_v0"),
            Some(Refusal::Unwinder)
        );
        assert_eq!(
            refusal_by_name("_setjmp@GLIBC_2.2.5"),
            Some(Refusal::NonLocalJump)
        );
        assert_eq!(refusal_by_name("siglongjmp"), Some(Refusal::NonLocalJump));
        assert_eq!(
            refusal_by_name("_dl_runtime_resolve_xsavec"),
            Some(Refusal::Trampoline)
        );
        assert_eq!(refusal_by_name("my_setjmp_wrapper"), None);
    }

    #[test]
    fn own_test_binary_unwinds_and_its_entry_point_is_refused() {
        let object = ElfObject::read(&std::env::current_exe().unwrap()).unwrap();
        assert!(object.unwinds.is_some(), "a Rust test binary unwinds");
        let entry = object.entry_offset.unwrap();
        let at_entry: Vec<_> = object
            .functions
            .iter()
            .filter(|f| f.file_offset == entry)
            .collect();
        assert!(!at_entry.is_empty());
        assert!(
            at_entry
                .iter()
                .all(|f| f.refusal == Some(Refusal::EntryPoint))
        );
        let this = object
            .functions
            .iter()
            .find(|f| {
                f.name
                    .ends_with("own_test_binary_unwinds_and_its_entry_point_is_refused")
            })
            .unwrap();
        assert_eq!(this.refusal, None);
        assert!(this.size > 0);
        assert_eq!(object.code(this).unwrap().len() as u64, this.size);
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
