//! Which process a span came from. A PID alone is not one: a traced process that exits leaves
//! its PID to the next, so the kernel records each traced process with when it started (at a
//! traced fork, at exec: `ProcessInfo`; the agent records the one it traces from before), and
//! spans are matched to that record as they are pumped: a process is (PID, start). Names come
//! from the record, which outlives the process; `/proc` is read only while it still shows that
//! process. The resources built from them are kept in a bounded cache that drops exited
//! processes first.

use std::{
    collections::{HashMap, VecDeque},
    path::PathBuf,
};

use flowtap_common::ProcessInfo;

use crate::spans::clock_ns;

/// The kernel's record of the processes it saw traced.
pub(crate) trait ProcessTable: Send + Sync {
    /// What the kernel recorded of the process holding `pid`, if it still has a record.
    fn process(&self, pid: u32) -> Option<ProcessInfo>;
}

/// What is known of one process: (PID, start) and where its name comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ProcessIdentity {
    /// Its `comm` when the kernel still holds this process's record.
    pub name: Option<String>,
    /// Its executable, while `/proc/PID` is still this process.
    pub executable: Option<PathBuf>,
}

impl ProcessIdentity {
    /// Process `pid` that started at `start` (CLOCK_MONOTONIC; 0: unknown).
    pub(crate) fn of(pid: u32, start: u64, table: &dyn ProcessTable) -> Self {
        let known = table
            .process(pid)
            .filter(|info| start != 0 && info.start_ns == start);
        let name = known.map(|info| comm(&info.comm));
        let executable = still_running(pid, start, name.as_deref())
            .then(|| std::fs::read_link(format!("/proc/{pid}/exe")).ok())
            .flatten();
        Self { name, executable }
    }
}

/// A `comm` field as text.
fn comm(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// Whether `/proc/PID` is still the process that started at `start` named `name`: it started
/// no later (`/proc` counts clock ticks from boot, so it may read up to one tick earlier) and
/// bears the same name.
fn still_running(pid: u32, start: u64, name: Option<&str>) -> bool {
    if start == 0 {
        return true;
    }
    let Some(started) = proc_start_monotonic_ns(pid) else {
        return false;
    };
    let same_name = name.is_none_or(|name| {
        std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim_end() == name)
    });
    started <= i128::from(start) + SLACK_NS && same_name
}

/// Clock conversion jitter allowed when comparing starts.
const SLACK_NS: i128 = 1_000_000;

/// Process `pid` as the kernel would have recorded it, from `/proc`: for processes traced from
/// before the kernel could see them start.
pub(crate) fn from_proc(pid: u32) -> Option<ProcessInfo> {
    let start = u64::try_from(proc_start_monotonic_ns(pid)?.max(1)).ok()?;
    let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    let mut comm = [0u8; flowtap_common::COMM_LEN];
    let name = name.trim_end().as_bytes();
    let len = name.len().min(comm.len() - 1);
    comm[..len].copy_from_slice(&name[..len]);
    Some(ProcessInfo {
        start_ns: start,
        comm,
        exited: 0,
        _padding: 0,
    })
}

/// When `/proc/PID/stat` says the process started, on CLOCK_MONOTONIC.
fn proc_start_monotonic_ns(pid: u32) -> Option<i128> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 22, counted after the parenthesised name (field 2), which may hold spaces.
    let ticks: i128 = stat
        .rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let hz = i128::from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).max(1);
    let boot_minus_monotonic = clock_ns(libc::CLOCK_BOOTTIME) - clock_ns(libc::CLOCK_MONOTONIC);
    Some(ticks * 1_000_000_000 / hz - boot_minus_monotonic)
}

/// Entries a [`ResourceCache`] keeps at most.
pub(crate) const CACHE_CAPACITY: usize = 1024;

/// Per-process values (resources) by (PID, start), bounded: when full, the entries of processes
/// that have exited go first, then the oldest.
pub(crate) struct ResourceCache<T> {
    entries: HashMap<(u32, u64), T>,
    order: VecDeque<(u32, u64)>,
    capacity: usize,
}

impl<T: Clone> ResourceCache<T> {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            entries: HashMap::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    /// The value for `key`, made by `make` when not cached; `alive` tells the processes still
    /// running, asked only when the cache is full.
    pub(crate) fn get_or_insert(
        &mut self,
        key: (u32, u64),
        make: impl FnOnce() -> T,
        alive: impl Fn((u32, u64)) -> bool,
    ) -> T {
        if let Some(value) = self.entries.get(&key) {
            return value.clone();
        }
        if self.entries.len() >= self.capacity {
            let entries = &mut self.entries;
            self.order
                .retain(|key| alive(*key) || entries.remove(key).is_none());
            while self.entries.len() >= self.capacity {
                let Some(oldest) = self.order.pop_front() else {
                    break;
                };
                self.entries.remove(&oldest);
            }
        }
        let value = make();
        self.order.push_back(key);
        self.entries.insert(key, value.clone());
        value
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

/// Whether the process (PID, start) is, as far as the kernel says, still running.
pub(crate) fn alive(table: &dyn ProcessTable, (pid, start): (u32, u64)) -> bool {
    table
        .process(pid)
        .is_some_and(|info| info.start_ns == start && info.exited == 0)
}

/// A table that knows no process (tests of what uses one).
#[cfg(test)]
pub(crate) struct NoProcesses;

#[cfg(test)]
impl ProcessTable for NoProcesses {
    fn process(&self, _pid: u32) -> Option<ProcessInfo> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_drops_exited_processes_first_then_the_oldest() {
        let mut cache = ResourceCache::new(3);
        let exited = |key: (u32, u64)| key.0 != 2;
        for pid in 1..=3 {
            cache.get_or_insert((pid, 10), || pid, |_| true);
        }
        // Full: 1 and 3 have exited, 2 runs on.
        assert_eq!(cache.get_or_insert((4, 10), || 4, |key| !exited(key)), 4);
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.get_or_insert((2, 10), || 0, |_| true), 2);
        // A reused PID is another process.
        assert_eq!(cache.get_or_insert((2, 20), || 22, |_| true), 22);
        assert_eq!(cache.len(), 3);
        // Full, everything alive: the oldest goes.
        cache.get_or_insert((5, 10), || 5, |_| true);
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.get_or_insert((2, 10), || 0, |_| true), 0);
    }

    struct OneProcess(ProcessInfo);

    impl ProcessTable for OneProcess {
        fn process(&self, pid: u32) -> Option<ProcessInfo> {
            (pid == std::process::id()).then_some(self.0)
        }
    }

    #[test]
    fn a_process_is_named_by_the_kernel_and_read_from_proc_while_it_is_itself() {
        let pid = std::process::id();
        let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
        let mut comm = [0u8; 16];
        comm[..name.trim_end().len()].copy_from_slice(name.trim_end().as_bytes());
        let start = (clock_ns(libc::CLOCK_MONOTONIC)) as u64;
        let table = OneProcess(ProcessInfo {
            start_ns: start,
            comm,
            exited: 0,
            _padding: 0,
        });
        let me = ProcessIdentity::of(pid, start, &table);
        assert_eq!(me.name.as_deref(), Some(name.trim_end()));
        assert_eq!(me.executable, std::env::current_exe().ok());
        // Started before this process did: another one held the PID then.
        let before = ProcessIdentity::of(pid, 1, &table);
        assert_eq!(before.name, None);
        assert_eq!(before.executable, None);
    }
}
