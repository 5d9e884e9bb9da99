//! Libraries loaded after the start (`dlopen`: Python modules, plugins, JNI and Node addons):
//! the kernel tells, through the `LOADS` ring, that the dynamic loader of a traced process
//! called its debugger hook; a thread of its own, woken at once, rescans that process's
//! mappings, plans the selected functions of the objects it has not seen yet and attaches their
//! probes, exits first, as at the start.
//!
//! The window: glibc calls the hook once the new objects are mapped, then relocates them and
//! runs their constructors before `dlopen` returns. Calls made before the probes are attached
//! (constructors, or calls right after `dlopen` while the agent is still attaching) are not
//! seen; the latency from the hook to the probes being live is shown per load.

use std::{
    collections::{BTreeMap, HashSet},
    os::fd::AsRawFd,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use aya::maps::{MapData, RingBuf};
use flowtap_common::{LoadEvent, abi};

use crate::{
    console::{one_line, status},
    loader::{LoadError, Probes},
    plan::{Plan, Selection},
    symbols::ElfObject,
    targets::{
        Target,
        process::{self, FileId},
        read_mapped,
    },
};

/// What libraries loaded later added, for the report.
#[derive(Debug, Clone, Default)]
pub(crate) struct LoadStats {
    /// Objects that got probes.
    pub objects: usize,
    pub probes: usize,
    /// The longest time from the loader's hook to the new probes being live.
    pub slowest: Option<Duration>,
    /// Objects whose probes could not be planned or attached (said on standard error).
    pub failed: usize,
}

/// The thread following the loads; stopped when dropped.
pub(crate) struct LoadFollower {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    stats: Arc<Mutex<LoadStats>>,
}

/// How long the thread waits for a notice before looking whether it must stop.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

impl LoadFollower {
    /// Attaches to the target's dynamic loader and starts following; `None` when there is
    /// nothing to follow (a library target, whose probes are on its file already; a static
    /// program) or the hook cannot be attached (said once).
    pub(crate) fn start(
        target: &Target,
        probes: &Arc<Mutex<Probes>>,
        plan: &Arc<RwLock<Plan>>,
        selection: Arc<Selection>,
    ) -> Result<Option<Self>, LoadError> {
        if !target.loads_libraries_later() {
            return Ok(None);
        }
        let Some((loader, hook)) = loader_hook(&target.objects) else {
            return Ok(None);
        };
        let ring = {
            let mut probes = probes.lock().expect("probes lock");
            // Before the target runs: the verifier is slow, a library's first calls are not.
            let ready = probes
                .load_call_programs()
                .and_then(|()| probes.attach_loader_hook(loader, hook));
            if let Err(error) = ready {
                eprintln!(
                    "flowtap: warning: libraries loaded later will not be probed: {}",
                    one_line(&error)
                );
                return Ok(None);
            }
            probes.take_load_ring()?
        };
        let known = target
            .objects
            .iter()
            .filter_map(|object| FileId::of(&object.path).ok())
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Mutex::new(LoadStats::default()));
        let follower = Follower {
            ring,
            known,
            probes: probes.clone(),
            plan: plan.clone(),
            selection,
            stats: stats.clone(),
        };
        let stopping = stop.clone();
        let thread = std::thread::Builder::new()
            .name("flowtap-loads".into())
            .spawn(move || follower.run(&stopping))
            .map_err(LoadError::FollowerThread)?;
        Ok(Some(Self {
            stop,
            thread: Some(thread),
            stats,
        }))
    }
}

impl LoadFollower {
    /// Stops following; what was added.
    pub(crate) fn stop(mut self) -> LoadStats {
        self.join();
        self.stats.lock().expect("load stats").clone()
    }

    fn join(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for LoadFollower {
    fn drop(&mut self) {
        self.join();
    }
}

/// The dynamic loader among `objects` and where its debugger hook is.
fn loader_hook(objects: &[ElfObject]) -> Option<(&ElfObject, u64)> {
    objects.iter().find_map(|object| {
        let hook = object.functions.iter().find(|function| {
            function.raw_name == abi::LOADER_HOOK
                || function
                    .aliases
                    .iter()
                    .any(|alias| alias == abi::LOADER_HOOK)
        })?;
        Some((object, hook.file_offset))
    })
}

struct Follower {
    ring: RingBuf<MapData>,
    /// Objects already considered, whether or not they got probes.
    known: HashSet<FileId>,
    probes: Arc<Mutex<Probes>>,
    plan: Arc<RwLock<Plan>>,
    selection: Arc<Selection>,
    stats: Arc<Mutex<LoadStats>>,
}

impl Follower {
    fn run(mut self, stop: &AtomicBool) {
        while !stop.load(Ordering::Relaxed) {
            if !self.wait() {
                continue;
            }
            // Several notices of one process (before and after a load) make one rescan.
            let mut processes: BTreeMap<u32, u64> = BTreeMap::new();
            while let Some(item) = self.ring.next() {
                if item.len() < size_of::<LoadEvent>() {
                    continue;
                }
                // SAFETY: the kernel wrote a whole LoadEvent, a plain #[repr(C)] value; the
                // ring gives no alignment guarantee, hence the unaligned read.
                let event = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<LoadEvent>()) };
                processes.entry(event.tgid).or_insert(event.time_ns);
            }
            for (pid, since_ns) in processes {
                self.rescan(pid, since_ns);
            }
        }
    }

    /// Whether a notice is waiting (for up to [`POLL_INTERVAL`]).
    fn wait(&self) -> bool {
        let mut poll = libc::pollfd {
            fd: self.ring.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, for a descriptor the ring owns.
        let ready = unsafe { libc::poll(&mut poll, 1, POLL_INTERVAL.as_millis() as i32) };
        ready > 0
    }

    /// Probes the objects of `pid` not seen before; `since_ns` is when the loader told.
    fn rescan(&mut self, pid: u32, since_ns: u64) {
        // The process may have exited since: nothing to do.
        let Ok(mapped) = process::mapped_objects(pid) else {
            return;
        };
        let new: Vec<_> = mapped
            .into_iter()
            .filter(|object| self.known.insert(object.file))
            .collect();
        let objects: Vec<ElfObject> = new
            .iter()
            .filter_map(|object| read_mapped(pid, object).ok())
            .collect();
        if objects.is_empty() {
            return;
        }
        let mut probes = self.probes.lock().expect("probes lock");
        let mut plan = self.plan.write().expect("plan lock");
        let capacity = probes.capacity;
        let first_probe = plan.probes.len();
        let attached = plan
            .extend(&objects, &self.selection, capacity)
            .map_err(|error| one_line(&error))
            .and_then(|added| {
                probes
                    .attach_objects(&plan, added.clone())
                    .map(|()| added)
                    .map_err(|error| one_line(&error))
            });
        let mut stats = self.stats.lock().expect("load stats");
        match attached {
            Ok(added) if !added.is_empty() => {
                let latency = Duration::from_nanos(monotonic_ns().saturating_sub(since_ns));
                let count = plan.probes.len() - first_probe;
                let names: Vec<&str> = plan.objects[added.clone()]
                    .iter()
                    .map(|object| object.name.as_str())
                    .collect();
                status(format_args!(
                    "attached {count} probes in {} loaded by PID {pid}, {:.1} ms after the loader's hook",
                    names.join(", "),
                    latency.as_secs_f64() * 1e3
                ));
                stats.objects += added.len();
                stats.probes += count;
                stats.slowest = stats.slowest.max(Some(latency));
            }
            Ok(_) => {}
            Err(error) => {
                eprintln!("flowtap: warning: a library loaded by PID {pid} is not probed: {error}");
                stats.failed += 1;
            }
        }
    }
}

/// `CLOCK_MONOTONIC` in nanoseconds, the clock of the kernel's `bpf_ktime_get_ns`.
fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out-pointer for clock_gettime.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    (now.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(now.tv_nsec as u64)
}
