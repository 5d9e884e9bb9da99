//! Loading flowtap's kernel programs and attaching them to the planned functions: one entry and
//! one exit program for every function, the attach cookie carrying the probe id. Exits are
//! attached before entries, so that no entry runs without its exit in place.

use std::{
    num::NonZeroU32,
    ops::Range,
    path::{Path, PathBuf},
};

use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray, ProgramArray, RingBuf},
    programs::{
        BtfTracePoint, ProgramError, TracePoint, UProbe,
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeScope},
    },
    sys::{UProbeMultiFeature, is_uprobe_multi_supported},
};
use flowtap_common::{
    AggregateKey, AggregateValue, Config, MAX_PROBES, PROCESS_EXECED, PROCESS_TRACED, ProbeSpec,
    ProcessInfo, TraceContext,
    abi::{self, maps, programs},
    capture::{CAPTURE_RING_BYTES, ConnectionKey},
};

use crate::symbols::ElfObject;

use crate::{
    plan::{ExitPoints, Plan, PlannedProbe},
    targets::Target,
};

/// The kernel's set of connections whose bytes are not captured.
pub(crate) type QuietConnections = HashMap<MapData, ConnectionKey, u8>;

/// The production programs.
pub(crate) static KERNEL_PROGRAMS: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/flowtap"));

/// Programs that do nothing, the benchmark's kernel floor (a separate object).
pub(crate) static EMPTY_PROGRAMS: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/flowtap-empty"));

#[derive(Debug, thiserror::Error)]
pub(crate) enum LoadError {
    #[error("the kernel refused flowtap's eBPF programs (run `flowtap check`)")]
    Load(#[source] aya::EbpfError),
    #[error(
        "bpf(2) was refused with EPERM although flowtap holds its capabilities: a seccomp filter confines this process (Seccomp: 2 in /proc/self/status), as container runtimes' default profiles do without CAP_SYS_ADMIN; run it with seccomp unconfined (Kubernetes: seccompProfile type Unconfined; docker, podman: --security-opt seccomp=unconfined) or add SYS_ADMIN"
    )]
    Seccomp(#[source] aya::EbpfError),
    #[error("the kernel refused the {program} program ({log})")]
    Program {
        program: &'static str,
        log: VerifierLog,
        #[source]
        cause: Refusal,
    },
    #[error("process {pid} exited while flowtap was attaching its probes: nothing left to trace")]
    TargetExited { pid: u32 },
    #[error("cannot attach probes to {object}")]
    Attach {
        object: String,
        #[source]
        cause: Refusal,
    },
    /// Observed on kernel 6.18 in a container holding CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE and
    /// CAP_DAC_READ_SEARCH: a uprobe on every process is refused, one on a PID is not.
    #[error(
        "cannot attach probes to every process of {object}, which the kernel allows only with CAP_SYS_ADMIN (CAP_BPF and CAP_PERFMON are not enough): grant SYS_ADMIN, or trace one process with --pid"
    )]
    EveryProcess {
        object: String,
        #[source]
        cause: Refusal,
    },
    #[error(
        "kernel type information (BTF) is unavailable; flowtap needs a kernel built with CONFIG_DEBUG_INFO_BTF"
    )]
    Btf(#[source] aya::BtfError),
    #[error(
        "cannot read the format of tracepoint {tracepoint} to follow forked processes: mount tracefs (`mount -t tracefs tracefs /sys/kernel/tracing`)"
    )]
    TracepointFormat {
        tracepoint: String,
        #[source]
        source: std::io::Error,
    },
    #[error("kernel map {name}")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error("cannot read the kernel's diagnostics (--kernel-log)")]
    KernelLog(#[source] aya_log::Error),
    #[error("cannot start reading the kernel's diagnostics (--kernel-log)")]
    KernelLogThread(#[source] std::io::Error),
    #[error("cannot start following the libraries the target loads")]
    FollowerThread(#[source] std::io::Error),
}

/// What became of the verifier's log of a refused program.
#[derive(Debug)]
pub(crate) enum VerifierLog {
    NotAsked,
    Written(PathBuf),
    /// The file exists already, is a symlink, or cannot be created.
    NotWritten(PathBuf),
}

impl std::fmt::Display for VerifierLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VerifierLog::NotAsked => {
                f.write_str("run `flowtap check`; for the verifier's log add --verifier-log FILE")
            }
            VerifierLog::Written(path) => write!(f, "verifier log in {}", path.display()),
            VerifierLog::NotWritten(path) => write!(
                f,
                "verifier log not written: {} must be a new file",
                path.display()
            ),
        }
    }
}

/// A program error shown by its first line (a verifier log can be thousands), keeping the
/// whole error as its cause.
#[derive(Debug)]
pub(crate) struct Refusal(pub(crate) Box<ProgramError>);

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = self.0.to_string();
        let line = text.lines().next().unwrap_or_default();
        f.write_str(line.split(". Verifier output").next().unwrap_or(line))
    }
}

impl std::error::Error for Refusal {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// Writes the verifier's log to `path`, a new file (never following a symlink), when asked.
fn write_verifier_log(path: Option<&Path>, error: &ProgramError) -> VerifierLog {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    let Some(path) = path else {
        return VerifierLog::NotAsked;
    };
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(0o600)
        .open(path)
        .and_then(|mut file| file.write_all(format!("{error}\n").as_bytes()));
    match written {
        Ok(()) => VerifierLog::Written(path.to_path_buf()),
        Err(_) => VerifierLog::NotWritten(path.to_path_buf()),
    }
}

/// Kernel memory the per-CPU statistics may take; functions called beyond what fits are counted
/// as `stats_map_full` losses.
const STATS_MEMORY_BUDGET: usize = 256 << 20;

/// Containers whose calls of one function are kept apart, when stats are per cgroup; past the
/// memory budget, further ones are counted as `stats_map_full` losses.
const CGROUPS_PER_PROBE: u32 = 64;

/// Probes that libraries loaded later can add to those planned at start; beyond, their functions
/// are counted as not probed (`Plan::over_capacity`).
const LATER_PROBES: u32 = 4096;

/// How many probes' statistics fit the budget on this machine.
fn stats_capacity() -> u32 {
    let cpus = aya::util::nr_cpus().map_or(1, |n| n.get() as usize);
    let per_probe = std::mem::size_of::<flowtap_common::ProbeStats>() * cpus;
    (STATS_MEMORY_BUDGET / per_probe).clamp(1, MAX_PROBES as usize) as u32
}

/// Kernel-side diagnostics (aya-log) to print: the most verbose level shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum KernelLogLevel {
    Error = 1,
    Warn = 2,
    Info = 3,
    Debug = 4,
    Trace = 5,
}

/// How to load: everything but the plan and the target.
#[derive(Debug, Clone, Default)]
pub(crate) struct LoadOptions {
    /// Fraction of traces whose spans are emitted (0: no spans at all).
    pub(crate) sample_rate: f64,
    /// Keep stats per cgroup (per-pod metrics).
    pub(crate) by_cgroup: bool,
    /// Attach programs that do nothing (the kernel floor, for benchmarks).
    pub(crate) empty_programs: bool,
    /// Print the kernel programs' diagnostics at this level; off when `None`.
    pub(crate) kernel_log: Option<KernelLogLevel>,
    /// Write the verifier's log here when the kernel refuses a program.
    pub(crate) verifier_log: Option<PathBuf>,
    /// Bytes of the capture ring (a power of two, at least a page); `None`: the default.
    pub(crate) capture_ring_bytes: Option<u32>,
}

/// The loaded programs and their links: dropping this detaches every probe.
pub(crate) struct Probes {
    ebpf: Ebpf,
    /// The benchmark's empty programs, attached instead of the production ones.
    floor: Option<Ebpf>,
    /// Forwards the programs' diagnostics (`--kernel-log`); flushes the rest when dropped.
    _kernel_log: Option<crate::kernel_log::KernelLog>,
    verifier_log: Option<PathBuf>,
    /// Whether stats are kept per cgroup (the `STATS` map) or per probe (`PROBE_STATS`).
    pub(crate) by_cgroup: bool,
    pub(crate) attached: usize,
    /// How many probes the kernel's per-probe tables hold: planned ones and room for more.
    pub(crate) capacity: usize,
    /// Probes on every process, filtered in the kernel by `TRACED`; else on this one.
    pid: Option<NonZeroU32>,
}

impl Probes {
    pub(crate) fn load(
        plan: &Plan,
        target: &Target,
        options: &LoadOptions,
    ) -> Result<Self, LoadError> {
        let fork_fields = fork_fields(target);
        let capacity = capacity(plan);
        let mut probes = Self {
            ebpf: load_object(
                capacity,
                target,
                options,
                fork_fields,
                capture_ring_bytes(plan, options),
            )?,
            floor: None,
            _kernel_log: None,
            verifier_log: options.verifier_log.clone(),
            by_cgroup: options.by_cgroup,
            attached: 0,
            capacity: capacity as usize,
            pid: target.attach_pid(),
        };
        if options.kernel_log.is_some() {
            probes._kernel_log = Some(crate::kernel_log::forward(&mut probes.ebpf)?);
        }
        probes.write_specs(plan, 0..plan.probes.len())?;
        if plan.captures_bytes() && !options.empty_programs {
            probes.load_capture_programs()?;
        }
        probes.attach_lifecycle(fork_fields.is_some())?;
        // Known to the kernel since before it started: recorded here.
        if let Some(pid) = target.pid() {
            probes.record(pid.get())?;
        }
        // Enrolled before its probes go live: it counts from the moment they do.
        if target.filters_by_process()
            && let Some(pid) = target.pid()
        {
            probes.enrol(&[pid.get()], PROCESS_TRACED)?;
            // The wrappers that started it enrol what they start later if it is the program.
            probes.enrol(&target.wrapper_pids(), PROCESS_EXECED)?;
        }
        if options.empty_programs {
            let floor = EbpfLoader::new()
                .load(EMPTY_PROGRAMS)
                .map_err(LoadError::Load)?;
            probes.floor = Some(floor);
        }
        probes.attach_objects(plan, 0..plan.objects.len())?;
        if target.filters_by_process()
            && let Some(program) = target.objects.first().filter(|o| o.is_executable)
            && let Some(entry) = program.entry_offset
        {
            probes.attach_enrolment(&program.path, entry)?;
        }
        Ok(probes)
    }

    /// Attaches the probes of the plan's `objects` (entries last), and counts them.
    pub(crate) fn attach_objects(
        &mut self,
        plan: &Plan,
        objects: Range<usize>,
    ) -> Result<(), LoadError> {
        let probes: Vec<usize> = plan
            .probes
            .iter()
            .enumerate()
            .filter(|(_, probe)| objects.contains(&probe.object))
            .map(|(index, _)| index)
            .collect();
        if let (Some(first), Some(last)) = (probes.first(), probes.last()) {
            self.write_specs(plan, *first..*last + 1)?;
        }
        let log = self.verifier_log.clone();
        let (ebpf, names) = match &mut self.floor {
            Some(floor) => (floor, Names::EMPTY),
            None => (&mut self.ebpf, Names::CALLS),
        };
        attach_calls(ebpf, plan, objects, self.pid, names, log)?;
        self.attached += probes.len();
        Ok(())
    }

    /// Has the kernel check and load the entry and exit programs now, not when a library
    /// loaded later first needs them: on a VM the verifier takes up to a second for them,
    /// during which the library's first calls would go unseen.
    pub(crate) fn load_call_programs(&mut self) -> Result<(), LoadError> {
        let multi = multi_index();
        let log = self.verifier_log.clone();
        let (ebpf, names) = match &mut self.floor {
            Some(floor) => (floor, Names::EMPTY),
            None => (&mut self.ebpf, Names::CALLS),
        };
        for program in [names.ret[multi], names.ret_insn[multi], names.entry[multi]] {
            let uprobe: &mut UProbe = program_mut(ebpf, program, log.as_deref())?;
            if uprobe.fd().is_err() {
                uprobe.load().map_err(refusal(program, log.as_deref()))?;
            }
        }
        Ok(())
    }

    /// Tells the agent through the `LOADS` ring whenever the dynamic loader `loader` (in which
    /// its debugger hook is at `hook`) changes a traced process's objects.
    pub(crate) fn attach_loader_hook(
        &mut self,
        loader: &ElfObject,
        hook: u64,
    ) -> Result<(), LoadError> {
        let program = programs::OBJECTS_CHANGED;
        let log = self.verifier_log.clone();
        let scope = self
            .pid
            .map_or(UProbeScope::AllProcesses, UProbeScope::OneProcess);
        let uprobe: &mut UProbe = program_mut(&mut self.ebpf, program, log.as_deref())?;
        uprobe.load().map_err(refusal(program, log.as_deref()))?;
        uprobe
            .attach([hook], &loader.path, scope)
            .map_err(|error| LoadError::Attach {
                object: loader.file_name(),
                cause: Refusal(Box::new(error)),
            })?;
        Ok(())
    }

    /// The ring buffer of the loader hook's notices, which the follower owns from then on.
    pub(crate) fn take_load_ring(&mut self) -> Result<RingBuf<MapData>, LoadError> {
        let map = self
            .ebpf
            .take_map(maps::LOADS)
            .expect("map LOADS is defined by flowtap-ebpf");
        RingBuf::try_from(map).map_err(|source| LoadError::Map {
            name: maps::LOADS,
            source,
        })
    }

    /// Writes the kernel's spec of the plan's `probes`.
    fn write_specs(&mut self, plan: &Plan, probes: Range<usize>) -> Result<(), LoadError> {
        let map_error = |source| LoadError::Map {
            name: maps::SPECS,
            source,
        };
        let mut specs: Array<_, ProbeSpec> =
            Array::try_from(self.kernel_map_mut(maps::SPECS)).map_err(map_error)?;
        for probe in &plan.probes[probes] {
            let spec = ProbeSpec {
                return_probe: u8::from(probe.exit == ExitPoints::ReturnProbe),
                ..probe.spec
            };
            specs.set(probe.id, &spec, 0).map_err(map_error)?;
        }
        Ok(())
    }

    /// The chunk programs the entry and exit programs tail-call to copy captured bytes: one per
    /// program kind, each in the program array its kind tail-calls through.
    fn load_capture_programs(&mut self) -> Result<(), LoadError> {
        let log = self.verifier_log.clone();
        for (program, array) in [
            (programs::CAPTURE_CHUNKS, maps::CAPTURE_TAIL),
            (programs::CAPTURE_CHUNKS_MULTI, maps::CAPTURE_TAIL_MULTI),
        ] {
            let uprobe: &mut UProbe = program_mut(&mut self.ebpf, program, log.as_deref())?;
            uprobe.load().map_err(refusal(program, log.as_deref()))?;
            let fd = uprobe
                .fd()
                .map_err(refusal(program, log.as_deref()))?
                .try_clone()
                .map_err(|error| LoadError::Map {
                    name: array,
                    source: MapError::IoError(error),
                })?;
            let map_error = |source| LoadError::Map {
                name: array,
                source,
            };
            let mut slots =
                ProgramArray::try_from(self.kernel_map_mut(array)).map_err(map_error)?;
            slots.set(0, &fd, 0).map_err(map_error)?;
        }
        Ok(())
    }

    /// Thread exit and exec always; fork when processes are followed (`follow`).
    fn attach_lifecycle(&mut self, follow: bool) -> Result<(), LoadError> {
        let btf = Btf::from_sys_fs().map_err(LoadError::Btf)?;
        let log = self.verifier_log.clone();
        if follow {
            let program = programs::PROCESS_FORK;
            let (category, name) = abi::NEW_TASK_TRACEPOINT;
            let tp: &mut TracePoint = program_mut(&mut self.ebpf, program, log.as_deref())?;
            tp.load().map_err(refusal(program, log.as_deref()))?;
            tp.attach(category, name)
                .map_err(refusal(program, log.as_deref()))?;
        }
        for (program, tracepoint) in [
            (programs::THREAD_EXIT, "sched_process_exit"),
            (programs::PROCESS_EXEC, "sched_process_exec"),
        ] {
            let refused = refusal(program, log.as_deref());
            let tp: &mut BtfTracePoint = program_mut(&mut self.ebpf, program, log.as_deref())?;
            tp.load(tracepoint, &btf).map_err(refused)?;
            tp.attach().map_err(refusal(program, log.as_deref()))?;
        }
        Ok(())
    }

    fn attach_enrolment(&mut self, executable: &Path, entry: u64) -> Result<(), LoadError> {
        let program = programs::ENROL;
        let log = self.verifier_log.clone();
        let uprobe: &mut UProbe = program_mut(&mut self.ebpf, program, log.as_deref())?;
        uprobe.load().map_err(refusal(program, log.as_deref()))?;
        uprobe
            .attach([entry], executable, UProbeScope::AllProcesses)
            .map_err(|error| every_process_refused(executable, error))?;
        Ok(())
    }

    /// Puts these processes in the traced set as `state`: [`PROCESS_TRACED`] counts them from
    /// now on, [`PROCESS_EXECED`] when they or their children execute the program.
    pub(crate) fn enrol(&mut self, pids: &[u32], state: u8) -> Result<(), LoadError> {
        let map_error = |source| LoadError::Map {
            name: maps::TRACED,
            source,
        };
        let mut traced: HashMap<_, u32, u8> =
            HashMap::try_from(self.kernel_map_mut(maps::TRACED)).map_err(map_error)?;
        for &pid in pids {
            traced.insert(&pid, &state, 0).map_err(map_error)?;
            // A process that exited after /proc was read had its exit cleanup run before this
            // insert: take it out again, or it would stay forever.
            if crate::targets::process::check_traceable(pid).is_err() {
                let _ = traced.remove(&pid);
            }
        }
        Ok(())
    }

    /// The ring buffer of sampled spans, which the reader owns from then on.
    pub(crate) fn take_span_ring(&mut self) -> Result<RingBuf<MapData>, LoadError> {
        let map = self
            .ebpf
            .take_map(maps::SPANS)
            .expect("map SPANS is defined by flowtap-ebpf");
        RingBuf::try_from(map).map_err(|source| LoadError::Map {
            name: maps::SPANS,
            source,
        })
    }

    /// Processes traced, counted as `how` says.
    pub(crate) fn processes_traced(&self, how: ProcessCount) -> Result<u64, MapError> {
        match how {
            ProcessCount::One => Ok(1),
            ProcessCount::Enrolled => self.traced_processes(),
            ProcessCount::Mapping(library) => {
                Ok(crate::targets::process::processes_mapping(library) as u64)
            }
        }
    }

    /// Records process `pid`, which started before the kernel could see it, as `/proc` shows it.
    fn record(&mut self, pid: u32) -> Result<(), LoadError> {
        let Some(info) = crate::processes::from_proc(pid) else {
            return Ok(());
        };
        let mut map: HashMap<_, u32, ProcessInfo> =
            HashMap::try_from(self.kernel_map_mut(maps::PROCESSES)).map_err(|source| {
                LoadError::Map {
                    name: maps::PROCESSES,
                    source,
                }
            })?;
        map.insert(&pid, &info, 0).map_err(|source| LoadError::Map {
            name: maps::PROCESSES,
            source,
        })
    }

    /// What the kernel recorded of the process holding `pid`.
    fn process(&self, pid: u32) -> Option<ProcessInfo> {
        let map: HashMap<_, u32, ProcessInfo> =
            HashMap::try_from(self.kernel_map(maps::PROCESSES)).ok()?;
        map.get(&pid, 0).ok()
    }

    /// The ring buffer of captured bytes and the map of quiet connections, which the capture
    /// reader owns from then on.
    pub(crate) fn take_capture(
        &mut self,
    ) -> Result<(RingBuf<MapData>, QuietConnections), LoadError> {
        let take = |ebpf: &mut Ebpf, name: &'static str| {
            ebpf.take_map(name)
                .unwrap_or_else(|| panic!("map {name} is defined by flowtap-ebpf"))
        };
        let ring = take(&mut self.ebpf, maps::CAPTURED);
        let ring = RingBuf::try_from(ring).map_err(|source| LoadError::Map {
            name: maps::CAPTURED,
            source,
        })?;
        let quiet = take(&mut self.ebpf, maps::QUIET);
        let quiet = HashMap::try_from(quiet).map_err(|source| LoadError::Map {
            name: maps::QUIET,
            source,
        })?;
        Ok((ring, quiet))
    }

    /// Processes enrolled in the kernel's TRACED set (binary mode).
    pub(crate) fn traced_processes(&self) -> Result<u64, MapError> {
        let map: HashMap<_, u32, u8> = HashMap::try_from(self.kernel_map(maps::TRACED))?;
        Ok(map
            .iter()
            .filter(|entry| {
                entry
                    .as_ref()
                    .is_ok_and(|(_, state)| *state == PROCESS_TRACED)
            })
            .count() as u64)
    }

    /// Entries of the kernel maps that grow with the target's threads, processes and labels.
    pub(crate) fn map_entries(&self) -> Result<[(&'static str, u64); 4], MapError> {
        // Task storage cannot be listed: the programs count the stacks they create and free.
        let stacks: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.kernel_map(maps::LIVE_STACKS))?;
        let stacks = stacks
            .get(&0, 0)?
            .iter()
            .fold(0u64, |sum, n| sum.wrapping_add(*n));
        Ok([
            ("thread_stacks", stacks),
            ("traced_processes", self.traced_processes()?),
            (
                "handoffs",
                self.count_entries::<u64, TraceContext>(maps::HANDOFFS)?,
            ),
            (
                "aggregates",
                self.count_entries::<AggregateKey, AggregateValue>(maps::AGGREGATES)?,
            ),
        ])
    }

    fn count_entries<K: aya::Pod, V: aya::Pod>(&self, name: &str) -> Result<u64, MapError> {
        let map: HashMap<_, K, V> = HashMap::try_from(self.kernel_map(name))?;
        Ok(map.keys().filter(Result::is_ok).count() as u64)
    }

    pub(crate) fn kernel_map(&self, name: &str) -> &Map {
        self.ebpf
            .map(name)
            .unwrap_or_else(|| panic!("map {name} is defined by flowtap-ebpf"))
    }

    fn kernel_map_mut(&mut self, name: &str) -> &mut Map {
        self.ebpf
            .map_mut(name)
            .unwrap_or_else(|| panic!("map {name} is defined by flowtap-ebpf"))
    }
}

/// How `flowtap_processes_traced` counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProcessCount {
    /// The one process traced (PID or launch mode, children not followed).
    One,
    /// The kernel's TRACED set: the processes enrolled when probes fire for every process.
    Enrolled,
    /// The processes that map the library that is the target (its probes are in them).
    Mapping(crate::targets::process::FileId),
}

impl crate::processes::ProcessTable for std::sync::Mutex<Probes> {
    fn process(&self, pid: u32) -> Option<ProcessInfo> {
        self.lock().expect("probes lock").process(pid)
    }
}

/// The probes the per-probe tables are sized for: those planned, and room for libraries loaded
/// later.
fn capacity(plan: &Plan) -> u32 {
    (plan.probes.len() as u32)
        .saturating_add(LATER_PROBES)
        .clamp(1, MAX_PROBES)
}

/// Loads the production object with its configuration and map sizes (programs not yet).
fn load_object(
    map_size: u32,
    target: &Target,
    options: &LoadOptions,
    fork_fields: Option<(u16, u16)>,
    capture_ring_bytes: u32,
) -> Result<Ebpf, LoadError> {
    let (new_task_pid_offset, new_task_flags_offset) = fork_fields.unwrap_or((0, 0));
    let config = Config {
        filter_by_tgid: u8::from(target.filters_by_process()),
        by_cgroup: u8::from(options.by_cgroup),
        new_task_pid_offset,
        new_task_flags_offset,
        enrol_any: u8::from(target.enrols_any_process()),
        _pad: 0,
        sample_threshold: Config::sample_threshold(options.sample_rate),
    };
    // The map not used is still created: at its smallest.
    let (keyed, indexed) = if options.by_cgroup {
        (map_size.saturating_mul(CGROUPS_PER_PROBE), 1)
    } else {
        (1, map_size)
    };
    let log_level = options.kernel_log.map_or(0u8, |level| level as u8);
    EbpfLoader::new()
        // The stacks are task storage, which aya creates but has no userspace type for.
        .allow_unsupported_maps()
        .override_global(abi::CONFIG, &config, true)
        .override_global(crate::kernel_log::LEVEL_GLOBAL, &log_level, true)
        .map_max_entries(maps::STATS, keyed.min(stats_capacity()))
        .map_max_entries(maps::PROBE_STATS, indexed.min(stats_capacity()))
        .map_max_entries(maps::SPECS, map_size)
        .map_max_entries(maps::CAPTURED, capture_ring_bytes)
        .load(KERNEL_PROGRAMS)
        .map_err(load_refused)
}

/// A refused load, told apart when a seccomp filter is what refused it: EPERM although the
/// capabilities were checked before.
fn load_refused(error: aya::EbpfError) -> LoadError {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&error);
    let mut eperm = false;
    while let Some(error) = cause {
        eperm |= error
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.raw_os_error() == Some(libc::EPERM));
        cause = error.source();
    }
    if eperm && crate::host::seccomp_filtered() {
        LoadError::Seccomp(error)
    } else {
        LoadError::Load(error)
    }
}

/// The capture ring's size: at its smallest (one page) when no probe captures bytes.
fn capture_ring_bytes(plan: &Plan, options: &LoadOptions) -> u32 {
    let page = 4096;
    if !plan.captures_bytes() {
        return page;
    }
    options
        .capture_ring_bytes
        .unwrap_or(CAPTURE_RING_BYTES)
        .max(page)
        .next_power_of_two()
}

/// Where the new-task tracepoint's record keeps the child's id and clone flags, when processes
/// are followed. Without tracefs (hosts and containers often do not mount it) a run still goes
/// on, said once: children are then traced only when they exec a target program (and, with
/// `--exe`, when the periodic scan finds them).
fn fork_fields(target: &Target) -> Option<(u16, u16)> {
    if !target.filters_by_process() {
        return None;
    }
    new_task_offsets()
        .inspect_err(|error| {
            eprintln!(
                "flowtap: warning: forked children are followed only when they exec the target: {}",
                crate::console::one_line(error)
            );
        })
        .ok()
}

/// Where the new task's id and clone flags lie in the new-task tracepoint's record, from its
/// format file in tracefs.
fn new_task_offsets() -> Result<(u16, u16), LoadError> {
    let (category, name) = abi::NEW_TASK_TRACEPOINT;
    let relative = format!("events/{category}/{name}/format");
    let read = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .iter()
        .map(|root| std::fs::read_to_string(Path::new(root).join(&relative)))
        .reduce(|first, second| first.or(second))
        .expect("two places");
    let error = |source| LoadError::TracepointFormat {
        tracepoint: format!("{category}:{name}"),
        source,
    };
    let format = read.map_err(error)?;
    let offset = |field| {
        field_offset(&format, field).ok_or_else(|| {
            error(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("no field {field}"),
            ))
        })
    };
    Ok((
        offset(abi::NEW_TASK_PID_FIELD)?,
        offset(abi::NEW_TASK_FLAGS_FIELD)?,
    ))
}

/// The offset of `field` in a tracepoint format (`field:pid_t pid;\toffset:8;\tsize:4;...`).
fn field_offset(format: &str, field: &str) -> Option<u16> {
    format.lines().find_map(|line| {
        let mut parts = line.trim().split(';');
        let declaration = parts.next()?.strip_prefix("field:")?;
        let name = declaration.rsplit([' ', '*']).next()?;
        if name != field {
            return None;
        }
        parts.next()?.trim().strip_prefix("offset:")?.parse().ok()
    })
}

/// The entry and exit programs to attach, in one object.
#[derive(Clone, Copy)]
struct Names {
    entry: [&'static str; 2],
    ret: [&'static str; 2],
    ret_insn: [&'static str; 2],
}

impl Names {
    /// `[per point, uprobe.multi]` of each.
    const CALLS: Self = Self {
        entry: [programs::ENTRY, programs::ENTRY_MULTI],
        ret: [programs::RETURN, programs::RETURN_MULTI],
        ret_insn: [programs::RET_INSN, programs::RET_INSN_MULTI],
    };
    const EMPTY: Self = Self {
        entry: [programs::empty::ENTRY, programs::empty::ENTRY_MULTI],
        ret: [programs::empty::RETURN, programs::empty::RETURN_MULTI],
        ret_insn: [programs::empty::RET_INSN, programs::empty::RET_INSN_MULTI],
    };
}

/// Which of a `[per point, uprobe.multi]` pair of programs to use: one link per object with
/// uprobe.multi (kernel >= 6.6); one perf event per point on older kernels.
fn multi_index() -> usize {
    usize::from(
        is_uprobe_multi_supported(UProbeMultiFeature::ProcessScopedPidFilter).unwrap_or(false),
    )
}

/// Attaches the exits of the probes of `objects`, then their entries.
fn attach_calls(
    ebpf: &mut Ebpf,
    plan: &Plan,
    objects: Range<usize>,
    pid: Option<NonZeroU32>,
    names: Names,
    log: Option<PathBuf>,
) -> Result<(), LoadError> {
    let multi = multi_index();
    let scope = pid.map_or(UProbeScope::AllProcesses, UProbeScope::OneProcess);
    let attach = Attach {
        plan,
        objects,
        scope,
        log: log.as_deref(),
    };
    attach.points(ebpf, names.ret[multi], |probe| match &probe.exit {
        ExitPoints::ReturnProbe => vec![probe.file_offset],
        ExitPoints::Instructions(_) => Vec::new(),
    })?;
    attach.points(ebpf, names.ret_insn[multi], |probe| match &probe.exit {
        ExitPoints::ReturnProbe => Vec::new(),
        ExitPoints::Instructions(offsets) => offsets.clone(),
    })?;
    attach.points(ebpf, names.entry[multi], |probe| vec![probe.file_offset])
}

struct Attach<'a> {
    plan: &'a Plan,
    objects: Range<usize>,
    scope: UProbeScope,
    log: Option<&'a Path>,
}

impl Attach<'_> {
    /// Loads `program` and attaches it at the points `points_of` gives each probe (cookie =
    /// probe id); a program no probe needs is not even loaded.
    fn points(
        &self,
        ebpf: &mut Ebpf,
        program: &'static str,
        points_of: impl Fn(&PlannedProbe) -> Vec<u64>,
    ) -> Result<(), LoadError> {
        let per_object: Vec<(usize, Vec<UProbeAttachPoint>)> = self
            .objects
            .clone()
            .map(|object| {
                let points = self
                    .plan
                    .probes_of(object)
                    .flat_map(|probe| {
                        points_of(probe)
                            .into_iter()
                            .map(|offset| UProbeAttachPoint {
                                location: UProbeAttachLocation::AbsoluteOffset(offset),
                                cookie: Some(u64::from(probe.id)),
                            })
                    })
                    .collect();
                (object, points)
            })
            .filter(|(_, points): &(usize, Vec<_>)| !points.is_empty())
            .collect();
        if per_object.is_empty() {
            return Ok(());
        }
        let uprobe: &mut UProbe = program_mut(ebpf, program, self.log)?;
        // Loaded once, attached again for objects loaded later.
        if uprobe.fd().is_err() {
            uprobe.load().map_err(refusal(program, self.log))?;
        }
        let total: usize = per_object.iter().map(|(_, points)| points.len()).sum();
        let mut progress = crate::console::Progress::new();
        let mut done = 0;
        for (object, points) in per_object {
            let object = &self.plan.objects[object];
            done += points.len();
            progress.show(total, format_args!("attaching {program} {done}/{total}"));
            uprobe
                .attach(points, &object.path, self.scope)
                .map_err(|error| self.attach_error(&object.shown_path, error))?;
        }
        Ok(())
    }

    /// A refused attach to one process is told apart from the process having gone meanwhile,
    /// which the kernel reports as a bare `ESRCH` or perf error.
    fn attach_error(&self, path: &Path, error: ProgramError) -> LoadError {
        match self.scope {
            UProbeScope::OneProcess(pid) if crate::targets::process::has_exited(pid.get()) => {
                LoadError::TargetExited { pid: pid.get() }
            }
            UProbeScope::AllProcesses => every_process_refused(path, error),
            _ => LoadError::Attach {
                object: path.display().to_string(),
                cause: Refusal(Box::new(error)),
            },
        }
    }
}

/// A refused probe on every process of `path` names the capability that is missing, if one is.
fn every_process_refused(path: &Path, error: ProgramError) -> LoadError {
    let object = path.display().to_string();
    let cause = Refusal(Box::new(error));
    if crate::host::may_probe_every_process() {
        LoadError::Attach { object, cause }
    } else {
        LoadError::EveryProcess { object, cause }
    }
}

/// The error of the kernel refusing `program`, its verifier log written where asked.
fn refusal(program: &'static str, log: Option<&Path>) -> impl Fn(ProgramError) -> LoadError {
    move |error| LoadError::Program {
        program,
        log: write_verifier_log(log, &error),
        cause: Refusal(Box::new(error)),
    }
}

fn program_mut<'a, P>(
    ebpf: &'a mut Ebpf,
    program: &'static str,
    log: Option<&Path>,
) -> Result<&'a mut P, LoadError>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    let found = ebpf
        .program_mut(program)
        .unwrap_or_else(|| panic!("program {program} is defined by flowtap-ebpf"));
    found.try_into().map_err(refusal(program, log))
}

#[cfg(test)]
mod tests {
    use super::*;
    use object::{Object, ObjectSymbol};

    /// Names defined in an eBPF object: its symbols (programs, legacy maps, globals).
    fn symbols(bytes: &[u8]) -> Vec<String> {
        let file = object::File::parse(bytes).expect("the embedded eBPF object parses");
        file.symbols()
            .filter_map(|symbol| symbol.name().ok().map(str::to_string))
            .collect()
    }

    #[test]
    fn every_name_the_agent_uses_is_in_the_kernel_object() {
        let defined = symbols(KERNEL_PROGRAMS);
        let used = maps::ALL
            .iter()
            .chain(&programs::ALL)
            .chain(&[abi::CONFIG, crate::kernel_log::LEVEL_GLOBAL]);
        for name in used {
            assert!(
                defined.iter().any(|d| d == name),
                "{name} is not defined by the kernel object"
            );
        }
        let file = object::File::parse(KERNEL_PROGRAMS).unwrap();
        assert!(
            file.section_by_name(".maps").is_some(),
            "the task-storage stack map is a BTF map"
        );
    }

    #[test]
    fn tracepoint_fields_are_found_by_name() {
        let format = "name: task_newtask\nformat:\n\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n\n\tfield:pid_t pid;\toffset:8;\tsize:4;\tsigned:1;\n\tfield:char comm[16];\toffset:12;\tsize:16;\tsigned:0;\n\tfield:u64 clone_flags;\toffset:32;\tsize:8;\tsigned:0;\n";
        assert_eq!(field_offset(format, "pid"), Some(8));
        assert_eq!(field_offset(format, "clone_flags"), Some(32));
        assert_eq!(field_offset(format, "flags"), None);
        // This kernel's own record.
        assert!(new_task_offsets().is_ok_and(|(pid, flags)| pid > 0 && flags > pid));
    }

    #[test]
    fn the_floor_object_has_only_empty_programs() {
        let defined = symbols(EMPTY_PROGRAMS);
        for name in programs::empty::ALL {
            assert!(defined.iter().any(|d| d == name), "{name} missing");
        }
        let production = symbols(KERNEL_PROGRAMS);
        for name in programs::empty::ALL {
            assert!(
                !production.iter().any(|d| d == name),
                "{name} in production"
            );
        }
    }

    #[test]
    fn verifier_log_is_written_only_as_a_new_file() {
        let dir = std::env::temp_dir().join(format!("flowtap-vlog-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let error = || ProgramError::NotLoaded;
        assert!(matches!(
            write_verifier_log(None, &error()),
            VerifierLog::NotAsked
        ));
        let path = dir.join("log");
        assert!(matches!(
            write_verifier_log(Some(&path), &error()),
            VerifierLog::Written(_)
        ));
        assert!(
            std::fs::read_to_string(&path)
                .unwrap()
                .contains("not loaded")
        );
        assert!(
            matches!(
                write_verifier_log(Some(&path), &error()),
                VerifierLog::NotWritten(_)
            ),
            "exists"
        );
        let link = dir.join("link");
        std::os::unix::fs::symlink(dir.join("elsewhere"), &link).unwrap();
        assert!(
            matches!(
                write_verifier_log(Some(&link), &error()),
                VerifierLog::NotWritten(_)
            ),
            "symlink"
        );
        assert!(!dir.join("elsewhere").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
