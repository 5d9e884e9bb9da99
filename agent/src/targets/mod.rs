//! Resolving what to trace — a running process, a binary, or a command to launch — into the ELF
//! objects to probe and the scope in which probes count.

pub(crate) mod launch;
pub(crate) mod libraries;
pub(crate) mod process;

use std::{
    ffi::OsString,
    num::NonZeroU32,
    path::{Path, PathBuf},
};

use crate::{
    invoker::{self, TraceRefused},
    symbols::{ElfObject, SymbolError},
};
use launch::{HeldChild, Step};
use process::FileId;

#[derive(Debug, thiserror::Error)]
pub(crate) enum TargetError {
    #[error("no process with PID {pid}: check it with `ps -p {pid}` or find one with `pgrep`")]
    NoSuchProcess { pid: u32 },
    #[error("{pid} is a thread of process {process}: give the process ID, --pid {process}")]
    Thread { pid: u32, process: u32 },
    #[error("process {pid} has already exited (zombie): nothing left to trace")]
    Zombie { pid: u32 },
    #[error("PID {pid} is a kernel thread: flowtap traces user-space programs only")]
    KernelThread { pid: u32 },
    #[error(
        "not allowed to inspect process {pid}: run flowtap as root (or with CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH)"
    )]
    PermissionDenied { pid: u32 },
    #[error(
        "the kernel does not let even root inspect process {pid} (it is not dumpable, or a security module or another namespace protects it): trace another process"
    )]
    ProtectedProcess { pid: u32 },
    #[error("{path} does not exist: give the path of an executable or shared library")]
    PathNotFound { path: PathBuf },
    #[error("command `{command}` not found in PATH: give its full path")]
    CommandNotFound { command: String },
    #[error("cannot launch the command: {reason}")]
    BadCommand { reason: String },
    #[error("cannot launch the command: {0}")]
    Launch(#[source] std::io::Error),
    #[error("cannot follow the command through its programs (ptrace): {0}")]
    Follow(#[source] std::io::Error),
    #[error(
        "the command exited with code {code} without running a program to trace, only wrappers and programs matching nothing ({ran}): to trace a wrapper itself, name it in OBJECT:GLOB (e.g. bash:GLOB)"
    )]
    NeverTraced { code: i32, ran: String },
    #[error(transparent)]
    Symbols(#[from] SymbolError),
    #[error(transparent)]
    NotYours(#[from] TraceRefused),
    #[error(
        "--exe traces every user's processes running {path}, which needs root: trace your own with --pid PID or launch it with -- CMD"
    )]
    EveryUser { path: PathBuf },
}

/// Reads an object process `pid` maps, through its map_files entry, known by the name the
/// process mapped it by (and, for its executable, the name it was started by) besides its own.
pub(crate) fn read_mapped(
    pid: u32,
    mapped: &process::MappedObject,
) -> Result<ElfObject, SymbolError> {
    let mut object = ElfObject::read(&mapped.open_path).map_err(|error| error.at(&mapped.path))?;
    object.shown_path = mapped.path.clone();
    object.show_as(crate::symbols::file_name(&mapped.path));
    if FileId::of(Path::new(&format!("/proc/{pid}/exe"))).ok() == Some(mapped.file) {
        object.add_names(process::run_as_name(pid));
    }
    Ok(object)
}

/// What the user pointed flowtap at, before anything is resolved.
#[derive(Debug, Clone)]
pub(crate) enum TargetSpec {
    Pid(u32),
    Binary(PathBuf),
    /// A command, run as the `sudo` user when there is one unless `as_root`.
    Launch {
        command: Vec<OsString>,
        as_root: bool,
    },
}

/// A resolved target: its objects, and how probes on them are scoped.
#[derive(Debug)]
pub(crate) struct Target {
    pub kind: TargetKind,
    /// The objects to look for symbols in; the program's executable first when there is one.
    pub objects: Vec<ElfObject>,
    /// Whether the processes the target forks are traced too (always, for a binary).
    children: bool,
    /// Mapped files that could not be read as ELF objects, and why.
    pub skipped: Vec<SymbolError>,
}

#[derive(Debug)]
pub(crate) enum TargetKind {
    Process {
        pid: NonZeroU32,
    },
    /// Every process running (or, for a library, mapping) `path`.
    Binary {
        path: PathBuf,
        file: FileId,
        is_library: bool,
    },
    Launch {
        child: HeldChild,
        program: PathBuf,
    },
}

impl Target {
    pub(crate) fn resolve(spec: &TargetSpec) -> Result<Self, TargetError> {
        match spec {
            TargetSpec::Pid(pid) => Self::process(*pid),
            TargetSpec::Binary(path) => Self::binary(path),
            TargetSpec::Launch { command, as_root } => Self::launch(command, *as_root),
        }
    }

    fn process(pid: u32) -> Result<Self, TargetError> {
        let pid = NonZeroU32::new(pid).ok_or(TargetError::NoSuchProcess { pid })?;
        process::check_traceable(pid.get())?;
        invoker::may_trace(pid.get())?;
        let mut skipped = Vec::new();
        let mapped = process::mapped_objects(pid.get())?;
        let mut progress = crate::console::Progress::new();
        let mut functions = 0;
        let objects = mapped
            .iter()
            .enumerate()
            .filter_map(|(index, mapped_object)| {
                let object = read_mapped(pid.get(), mapped_object)
                    .map_err(|error| skipped.push(error))
                    .ok()?;
                functions += object.functions.len();
                progress.show(
                    functions,
                    format_args!(
                        "reading symbols: {}/{} objects, {functions} functions",
                        index + 1,
                        mapped.len()
                    ),
                );
                Some(object)
            })
            .collect();
        Ok(Self {
            kind: TargetKind::Process { pid },
            objects,
            children: false,
            skipped,
        })
    }

    fn binary(path: &Path) -> Result<Self, TargetError> {
        if invoker::is_unprivileged_user() {
            return Err(TargetError::EveryUser {
                path: path.to_path_buf(),
            });
        }
        if !path.exists() {
            return Err(TargetError::PathNotFound {
                path: path.to_path_buf(),
            });
        }
        let path = path.canonicalize().map_err(|_| TargetError::PathNotFound {
            path: path.to_path_buf(),
        })?;
        let objects = libraries::load_closure(&path, None)?;
        let is_library = !objects[0].is_executable;
        let file =
            FileId::of(&path).map_err(|_| TargetError::PathNotFound { path: path.clone() })?;
        Ok(Self {
            kind: TargetKind::Binary {
                path,
                file,
                is_library,
            },
            objects: if is_library {
                objects.into_iter().take(1).collect()
            } else {
                objects
            },
            children: true,
            skipped: Vec::new(),
        })
    }

    fn launch(command: &[OsString], as_root: bool) -> Result<Self, TargetError> {
        let first = command.first().ok_or_else(|| TargetError::BadCommand {
            reason: "no command after `--`".into(),
        })?;
        let program = launch::find_command(first)?;
        let run_as = (!as_root).then(invoker::sudo_user).flatten();
        let child = HeldChild::spawn(&program, command, run_as)?;
        // Its objects are known once it has executed the program to trace: see `follow_exec`.
        Ok(Self {
            kind: TargetKind::Launch { child, program },
            objects: Vec::new(),
            children: true,
            skipped: Vec::new(),
        })
    }

    /// Launch mode: lets the command run through wrappers (shells, `env`, `timeout`, a `#!`
    /// script's interpreter when it is one), program after program and into the processes they
    /// fork, to the first other program executed, stopped before its first instruction; `judge`
    /// then plans it. A wrapper a selector names (`named`, e.g. `bash:GLOB`) is the target
    /// itself. If `judge` refuses the program the command itself became, flowtap's exit kills
    /// the command before that first instruction: nothing runs untraced but wrappers. One a
    /// wrapper forked (a script's `mkdir`) that `judge` refuses, or whose plan probes nothing in
    /// the objects it loads at start (`probes_own`: its selectors only name libraries it may
    /// load later, which match any program), is let run untraced, and the command followed on.
    pub(crate) fn follow_exec<T, E: From<TargetError>>(
        &mut self,
        named: impl Fn(&str) -> bool,
        mut judge: impl FnMut(&mut Self) -> Result<T, E>,
        probes_own: impl Fn(&T, &[ElfObject]) -> bool,
    ) -> Result<T, E> {
        let mut ran = Vec::new();
        loop {
            let TargetKind::Launch { child, program } = &mut self.kind else {
                let reason = "no command to follow".into();
                return Err(TargetError::BadCommand { reason }.into());
            };
            let exe = match child.next_program()? {
                Step::Program(exe) => exe,
                Step::Exited(code) => {
                    let ran = if ran.is_empty() {
                        "nothing".into()
                    } else {
                        ran.join(", ")
                    };
                    return Err(TargetError::NeverTraced { code, ran }.into());
                }
            };
            let name = crate::symbols::file_name(&exe);
            if launch::is_wrapper(&name) && !named(&name) {
                ran.push(name);
                continue;
            }
            let (pid, forked) = (child.program_pid(), child.program_is_forked());
            program.clone_from(&exe);
            match self.plan_program(&exe, pid, &mut judge) {
                Ok((plan, own)) if forked && !probes_own(&plan, &self.objects[..own]) => {
                    ran.push(format!("{name} (matching nothing it loads)"));
                    self.let_program_run()?;
                }
                Err(_) if forked => {
                    ran.push(format!("{name} (matching nothing)"));
                    self.let_program_run()?;
                }
                planned => return planned.map(|(plan, _)| plan),
            }
        }
    }

    /// Plans `program`, which process `pid` is stopped at, with its libraries; with the plan,
    /// how many of the first [`Target::objects`] the program loads at start.
    fn plan_program<T, E: From<TargetError>>(
        &mut self,
        program: &Path,
        pid: u32,
        judge: &mut impl FnMut(&mut Self) -> Result<T, E>,
    ) -> Result<(T, usize), E> {
        let library_path = launch::library_path(pid);
        self.objects =
            libraries::load_closure(program, library_path.as_deref()).map_err(TargetError::from)?;
        // Known by the name it was executed as too (a link's), as in PID mode.
        self.objects[0].add_names(process::run_as_name(pid));
        let own = self.objects.len();
        judge(self).map(|plan| (plan, own))
    }

    /// Lets the program a forked process stopped at run untraced.
    fn let_program_run(&mut self) -> Result<(), TargetError> {
        self.objects.clear();
        match &mut self.kind {
            TargetKind::Launch { child, .. } => child.let_program_run(),
            _ => Ok(()),
        }
    }

    /// Whether this is a command to launch, whose program is found by [`Target::follow_exec`].
    pub(crate) fn is_launch(&self) -> bool {
        matches!(self.kind, TargetKind::Launch { .. })
    }

    /// Follows the processes a launched command or a process forks, or not; `None` keeps the
    /// mode's default: on in launch mode, off for a PID. A binary's processes are always
    /// followed.
    pub(crate) fn follow_children(&mut self, children: Option<bool>) {
        if !matches!(self.kind, TargetKind::Binary { .. })
            && let Some(children) = children
        {
            self.children = children;
        }
    }

    /// The process probes fire for, when they are scoped to one; `None` means every process
    /// (filtered in the kernel when [`Target::filters_by_process`]).
    pub(crate) fn attach_pid(&self) -> Option<NonZeroU32> {
        if self.filters_by_process() {
            None
        } else {
            self.pid()
        }
    }

    /// Adds the installed libraries that names `globs` match (see [`libraries::installed`]),
    /// under the process's root in PID mode: their probes are then in place before a process
    /// loads them. Returns the names of those added.
    pub(crate) fn add_installed(&mut self, globs: &[glob::Pattern]) -> Vec<String> {
        if !self.loads_libraries_later() {
            return Vec::new();
        }
        let root = match &self.kind {
            TargetKind::Process { pid } => PathBuf::from(format!("/proc/{pid}/root")),
            _ => PathBuf::from("/"),
        };
        let mut known: Vec<FileId> = self
            .objects
            .iter()
            .filter_map(|object| FileId::of(&object.path).ok())
            .collect();
        let mut added = Vec::new();
        for glob in globs {
            for object in libraries::installed(&root, glob) {
                let Ok(file) = FileId::of(&object.path) else {
                    continue;
                };
                if !known.contains(&file) {
                    known.push(file);
                    added.push(object.path.display().to_string());
                    self.objects.push(object);
                }
            }
        }
        added
    }

    /// Whether libraries its processes load later are looked for: a library target's probes
    /// are on its file already, wherever and whenever it is loaded.
    pub(crate) fn loads_libraries_later(&self) -> bool {
        !matches!(
            self.kind,
            TargetKind::Binary {
                is_library: true,
                ..
            }
        )
    }

    /// The process the target is (PID and launch modes).
    pub(crate) fn pid(&self) -> Option<NonZeroU32> {
        match &self.kind {
            TargetKind::Process { pid } => Some(*pid),
            TargetKind::Launch { child, .. } => NonZeroU32::new(child.program_pid()),
            TargetKind::Binary { .. } => None,
        }
    }

    /// Launch mode: the wrappers that started the program (a shell running a script), which may
    /// start it again.
    pub(crate) fn wrapper_pids(&self) -> Vec<u32> {
        match &self.kind {
            TargetKind::Launch { child, .. } => child.wrapper_pids(),
            _ => Vec::new(),
        }
    }

    /// Whether probes, attached for every process, must count only enrolled ones: a binary's
    /// libraries are shared with unrelated processes, and a probe scoped to one process does
    /// not fire in its children.
    pub(crate) fn filters_by_process(&self) -> bool {
        match self.kind {
            TargetKind::Binary { is_library, .. } => !is_library,
            TargetKind::Process { .. } | TargetKind::Launch { .. } => self.children,
        }
    }

    /// How the processes traced are counted: the kernel's TRACED set where probes filter by
    /// process, those mapping a library target, else the one process.
    pub(crate) fn process_count(&self) -> crate::loader::ProcessCount {
        use crate::loader::ProcessCount;
        match self.kind {
            _ if self.filters_by_process() => ProcessCount::Enrolled,
            TargetKind::Binary { file, .. } => ProcessCount::Mapping(file),
            TargetKind::Process { .. } | TargetKind::Launch { .. } => ProcessCount::One,
        }
    }

    /// Whether every process that starts the program is enrolled (binary mode), not only one
    /// traced before it exec'd.
    pub(crate) fn enrols_any_process(&self) -> bool {
        matches!(
            self.kind,
            TargetKind::Binary {
                is_library: false,
                ..
            }
        )
    }

    /// The program traced, when there is one (a library target has none).
    pub(crate) fn executable(&self) -> Option<PathBuf> {
        match &self.kind {
            TargetKind::Binary {
                path, is_library, ..
            } => (!is_library).then(|| path.clone()),
            TargetKind::Launch { program, .. } => Some(program.clone()),
            TargetKind::Process { pid } => std::fs::read_link(format!("/proc/{pid}/exe")).ok(),
        }
    }

    /// `unknown_service:<executable name>`, as OpenTelemetry names a service nobody named.
    pub(crate) fn default_service_name(&self) -> String {
        let executable = self
            .executable()
            .map_or_else(|| "unknown".into(), |path| crate::symbols::file_name(&path));
        format!("unknown_service:{executable}")
    }

    /// A short description for messages: "PID 42", "/usr/bin/app", "command ./demo".
    pub(crate) fn describe(&self) -> String {
        match &self.kind {
            TargetKind::Process { pid } => format!("PID {pid}"),
            TargetKind::Binary { path, .. } => path.display().to_string(),
            TargetKind::Launch { child, program } => {
                format!("{} (PID {})", program.display(), child.program_pid())
            }
        }
    }
}
