//! Loading flowtap's kernel programs and attaching them to the planned functions: one entry and
//! one exit program for every function, the attach cookie carrying the probe id.

use std::num::NonZeroU32;

use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{Array, HashMap, Map, MapData, MapError, RingBuf},
    programs::{
        BtfTracePoint, ProgramError, UProbe,
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeScope},
    },
    sys::{UProbeMultiFeature, is_uprobe_multi_supported},
};
use flowtap_common::{
    AggregateKey, AggregateValue, Config, MAX_PROBES, ProbeSpec, ShadowStack, TraceContext,
};

use crate::{plan::Plan, targets::Target};

static KERNEL_PROGRAMS: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/flowtap"));

#[derive(Debug, thiserror::Error)]
pub(crate) enum LoadError {
    #[error(
        "the kernel refused flowtap's eBPF programs: {} (run `flowtap check`)",
        first_line(.0)
    )]
    Load(#[from] aya::EbpfError),
    #[error(
        "the kernel refused the {program} program: {} (run `flowtap check`; verifier log in {VERIFIER_LOG})",
        first_line(error)
    )]
    Program {
        program: &'static str,
        error: ProgramError,
    },
    #[error("cannot attach probes to {object}: {}", first_line(error))]
    Attach { object: String, error: ProgramError },
    #[error(
        "kernel type information (BTF) is unavailable: {0}; flowtap needs a kernel built with CONFIG_DEBUG_INFO_BTF"
    )]
    Btf(#[from] aya::BtfError),
    #[error("kernel map {name}: {source}")]
    Map {
        name: &'static str,
        source: MapError,
    },
}

const VERIFIER_LOG: &str = "/tmp/flowtap-verifier.log";

/// The first line of an error whose text may carry a whole verifier log (kept in a file).
fn first_line(error: &dyn std::error::Error) -> String {
    let text = error.to_string();
    let _ = std::fs::write(VERIFIER_LOG, &text);
    let line = text.lines().next().unwrap_or_default();
    line.split(". Verifier output")
        .next()
        .unwrap_or(line)
        .to_string()
}

/// Kernel memory the per-CPU statistics may take; functions called beyond what fits are counted
/// as `stats_map_full` losses.
const STATS_MEMORY_BUDGET: usize = 256 << 20;

/// Containers whose calls of one function are kept apart, when stats are per cgroup; past the
/// memory budget, further ones are counted as `stats_map_full` losses.
const CGROUPS_PER_PROBE: u32 = 64;

/// How many probes' statistics fit the budget on this machine.
fn stats_capacity() -> u32 {
    let cpus = aya::util::nr_cpus().map_or(1, |n| n.get() as usize);
    let per_probe = std::mem::size_of::<flowtap_common::ProbeStats>() * cpus;
    (STATS_MEMORY_BUDGET / per_probe).clamp(1, MAX_PROBES as usize) as u32
}

/// The loaded programs and their links: dropping this detaches every probe.
pub(crate) struct Probes {
    ebpf: Ebpf,
    pub attached: usize,
}

impl Probes {
    /// Loads and attaches; `sample_rate` is the fraction of traces whose spans are emitted
    /// (0: no spans at all). `empty_programs` attaches programs that do nothing (the kernel
    /// floor, for benchmarks).
    pub(crate) fn load(
        plan: &Plan,
        target: &Target,
        sample_rate: f64,
        by_cgroup: bool,
        empty_programs: bool,
    ) -> Result<Self, LoadError> {
        let config = Config {
            filter_by_tgid: u8::from(target.filters_by_process()),
            by_cgroup: u8::from(by_cgroup),
            _pad: [0; 2],
            sample_threshold: Config::sample_threshold(sample_rate),
        };
        let map_size = (plan.probes.len() as u32).clamp(1, MAX_PROBES);
        let stats_entries = if by_cgroup {
            map_size.saturating_mul(CGROUPS_PER_PROBE)
        } else {
            map_size
        };
        let ebpf = EbpfLoader::new()
            .override_global("CONFIG", &config, true)
            .map_max_entries("STATS", stats_entries.min(stats_capacity()))
            .map_max_entries("SPECS", map_size)
            .load(KERNEL_PROGRAMS)?;
        let mut probes = Self { ebpf, attached: 0 };
        probes.write_specs(plan)?;
        probes.attach_lifecycle()?;
        probes.attach_calls(plan, target.pid(), empty_programs)?;
        if target.filters_by_process()
            && let Some(entry) = target.objects.first().and_then(|o| o.entry_offset)
        {
            probes.attach_enrolment(&target.objects[0].path, entry)?;
        }
        Ok(probes)
    }

    fn write_specs(&mut self, plan: &Plan) -> Result<(), LoadError> {
        let map_error = |source| LoadError::Map {
            name: "SPECS",
            source,
        };
        let mut specs: Array<_, ProbeSpec> =
            Array::try_from(self.kernel_map_mut("SPECS")).map_err(map_error)?;
        for probe in &plan.probes {
            specs.set(probe.id, &probe.spec, 0).map_err(map_error)?;
        }
        Ok(())
    }

    fn attach_lifecycle(&mut self) -> Result<(), LoadError> {
        let btf = Btf::from_sys_fs()?;
        for (program, tracepoint) in [
            ("thread_exit", "sched_process_exit"),
            ("process_exec", "sched_process_exec"),
        ] {
            let error = |error| LoadError::Program { program, error };
            let tp: &mut BtfTracePoint = self.program_mut(program)?;
            tp.load(tracepoint, &btf).map_err(error)?;
            tp.attach().map_err(error)?;
        }
        Ok(())
    }

    fn attach_calls(
        &mut self,
        plan: &Plan,
        pid: Option<NonZeroU32>,
        empty_programs: bool,
    ) -> Result<(), LoadError> {
        let scope = pid.map_or(UProbeScope::AllProcesses, UProbeScope::OneProcess);
        // One link per object with uprobe.multi (kernel >= 6.6); one perf event per function
        // on older kernels.
        let multi =
            is_uprobe_multi_supported(UProbeMultiFeature::ProcessScopedPidFilter).unwrap_or(false);
        let (entry, exit) = match (multi, empty_programs) {
            (true, false) => ("call_entry_multi", "call_exit_multi"),
            (false, false) => ("call_entry", "call_exit"),
            (true, true) => ("empty_entry_multi", "empty_exit_multi"),
            (false, true) => ("empty_entry", "empty_exit"),
        };
        let mut progress = crate::console::Progress::new();
        let total = 2 * plan.probes.len();
        let mut done = 0;
        for program in [entry, exit] {
            let uprobe: &mut UProbe = self.program_mut(program)?;
            uprobe
                .load()
                .map_err(|error| LoadError::Program { program, error })?;
            for (index, object) in plan.objects.iter().enumerate() {
                let points = plan.probes_of(index).map(|probe| UProbeAttachPoint {
                    location: UProbeAttachLocation::AbsoluteOffset(probe.file_offset),
                    cookie: Some(u64::from(probe.id)),
                });
                uprobe
                    .attach(points, &object.path, scope)
                    .map_err(|error| LoadError::Attach {
                        object: object.path.display().to_string(),
                        error,
                    })?;
                done += plan.probes_of(index).count();
                progress.show(total, format_args!("attaching probes {done}/{total}"));
            }
        }
        self.attached = plan.probes.len();
        Ok(())
    }

    fn attach_enrolment(
        &mut self,
        executable: &std::path::Path,
        entry: u64,
    ) -> Result<(), LoadError> {
        let program = "enrol_process";
        let uprobe: &mut UProbe = self.program_mut(program)?;
        uprobe
            .load()
            .map_err(|error| LoadError::Program { program, error })?;
        uprobe
            .attach([entry], executable, UProbeScope::AllProcesses)
            .map_err(|error| LoadError::Attach {
                object: executable.display().to_string(),
                error,
            })?;
        Ok(())
    }

    /// Counts these processes from now on (binary mode).
    pub(crate) fn enrol(&mut self, pids: &[u32]) -> Result<(), LoadError> {
        let map_error = |source| LoadError::Map {
            name: "TRACED",
            source,
        };
        let mut traced: HashMap<_, u32, u8> =
            HashMap::try_from(self.kernel_map_mut("TRACED")).map_err(map_error)?;
        for &pid in pids {
            traced.insert(&pid, &1, 0).map_err(map_error)?;
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
            .take_map("SPANS")
            .expect("map SPANS is defined by flowtap-ebpf");
        RingBuf::try_from(map).map_err(|source| LoadError::Map {
            name: "SPANS",
            source,
        })
    }

    /// Processes enrolled in the kernel's TRACED set (binary mode).
    pub(crate) fn traced_processes(&self) -> Result<u64, MapError> {
        self.count_entries::<u32, u8>("TRACED")
    }

    /// Entries of the kernel maps that grow with the target's threads, processes and labels.
    pub(crate) fn map_entries(&self) -> Result<[(&'static str, u64); 4], MapError> {
        Ok([
            (
                "thread_stacks",
                self.count_entries::<u32, ShadowStack>("STACKS")?,
            ),
            ("traced_processes", self.traced_processes()?),
            (
                "handoffs",
                self.count_entries::<u64, TraceContext>("HANDOFFS")?,
            ),
            (
                "aggregates",
                self.count_entries::<AggregateKey, AggregateValue>("AGGREGATES")?,
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

    fn program_mut<'a, P>(&'a mut self, program: &'static str) -> Result<&'a mut P, LoadError>
    where
        &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
    {
        let found = self
            .ebpf
            .program_mut(program)
            .unwrap_or_else(|| panic!("program {program} is defined by flowtap-ebpf"));
        found
            .try_into()
            .map_err(|error| LoadError::Program { program, error })
    }
}
