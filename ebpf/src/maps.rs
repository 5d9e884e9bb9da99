//! The kernel state: every map and the load-time configuration, each declared under its name in
//! [`flowtap_common::abi`].

use core::ffi::c_void;

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, bpf_map_type::BPF_MAP_TYPE_TASK_STORAGE},
    helpers::generated::{bpf_get_current_task_btf, bpf_task_storage_get},
    macros::{btf_map, map},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap, ProgramArray, RingBuf},
};
use flowtap_common::{
    AggregateKey, AggregateValue, Config, LOAD_RING_BYTES, Loss, MAX_AGGREGATES, MAX_HANDOFFS,
    MAX_PROBES, MAX_TEXTS, MAX_TRACED_PROCESSES, ProbeSpec, ProbeStats, ProcessInfo,
    SPAN_RING_BYTES, ShadowStack, StatsKey, TEXT_LEN, TraceContext,
    abi::{self, maps as names, same},
    capture::{
        CAPTURE_RING_BYTES, CaptureArgs, CaptureCount, ConnectionKey, MAX_PENDING, MAX_QUIET,
        PendingCapture,
    },
};

/// Written by the agent before load (read-only data section).
#[unsafe(no_mangle)]
static CONFIG: Config = Config {
    filter_by_tgid: 0,
    by_cgroup: 0,
    new_task_pid_offset: 0,
    new_task_flags_offset: 0,
    enrol_any: 0,
    _pad: 0,
    sample_threshold: 0,
};

/// The load-time configuration. The volatile read stops the compiler from folding the default
/// value the agent overrides at load time.
#[inline(always)]
pub(crate) fn config() -> Config {
    // SAFETY: CONFIG is plain data in .rodata.
    unsafe { core::ptr::read_volatile(&CONFIG) }
}

/// A task-local storage map (`BPF_MAP_TYPE_TASK_STORAGE`), which aya-ebpf has no wrapper for:
/// the same BTF layout as its other `btf_maps`. Each thread's value is allocated on its first
/// probed call and freed by the kernel with the thread; a lookup is a per-task cache hit.
#[repr(C)]
pub(crate) struct TaskStorage<T> {
    r#type: *const [i32; BPF_MAP_TYPE_TASK_STORAGE as usize],
    key: *const i32,
    value: *const T,
    max_entries: *const [i32; 0],
    map_flags: *const [i32; BPF_F_NO_PREALLOC as usize],
}

// SAFETY: the fields are placeholders the loader reads from BTF; they are never dereferenced.
unsafe impl<T> Sync for TaskStorage<T> {}

impl<T> TaskStorage<T> {
    pub(crate) const fn new() -> Self {
        Self {
            r#type: core::ptr::null(),
            key: core::ptr::null(),
            value: core::ptr::null(),
            max_entries: core::ptr::null(),
            map_flags: core::ptr::null(),
        }
    }

    /// The current thread's value, zero-filled when `create` and it has none yet.
    #[inline(always)]
    pub(crate) fn current(&self, create: bool) -> Option<*mut T> {
        let flags = if create {
            u64::from(aya_ebpf::bindings::BPF_LOCAL_STORAGE_GET_F_CREATE)
        } else {
            0
        };
        // SAFETY: the map pointer is this map's definition, which the loader relocates; the
        // task is the current one, valid for the whole program; a NULL value asks for zeroes.
        let value = unsafe {
            bpf_task_storage_get(
                core::ptr::from_ref(self).cast_mut().cast::<c_void>(),
                bpf_get_current_task_btf(),
                core::ptr::null_mut(),
                flags,
            )
        };
        (!value.is_null()).then_some(value.cast::<T>())
    }
}

const _: () = assert!(same(abi::CONFIG, "CONFIG"));
const _: () = assert!(same(names::STACKS, "STACKS"));
const _: () = assert!(same(names::STATS, "STATS"));
const _: () = assert!(same(names::PROBE_STATS, "PROBE_STATS"));
const _: () = assert!(same(names::SPECS, "SPECS"));
const _: () = assert!(same(names::TRACED, "TRACED"));
const _: () = assert!(same(names::AGGREGATES, "AGGREGATES"));
const _: () = assert!(same(names::HANDOFFS, "HANDOFFS"));
const _: () = assert!(same(names::SPANS, "SPANS"));
const _: () = assert!(same(names::LOSSES, "LOSSES"));
const _: () = assert!(same(names::LIVE_STACKS, "LIVE_STACKS"));
const _: () = assert!(same(names::PROCESSES, "PROCESSES"));
const _: () = assert!(same(names::CAPTURED, "CAPTURED"));
const _: () = assert!(same(names::CAPTURE_COUNTS, "CAPTURE_COUNTS"));
const _: () = assert!(same(names::QUIET, "QUIET"));
const _: () = assert!(same(names::CAPTURE_TAIL, "CAPTURE_TAIL"));
const _: () = assert!(same(names::CAPTURE_TAIL_MULTI, "CAPTURE_TAIL_MULTI"));
const _: () = assert!(same(names::LOADS, "LOADS"));

/// Per-thread shadow stacks.
#[btf_map(name = "STACKS")]
pub(crate) static STACKS: TaskStorage<ShadowStack> = TaskStorage::new();

/// Stats per probe and cgroup (per-pod metrics). Preallocated: inserting into a
/// non-preallocated map can fail for want of memory in probe context. The agent sizes it.
#[map(name = "STATS")]
pub(crate) static STATS: PerCpuHashMap<StatsKey, ProbeStats> =
    PerCpuHashMap::with_max_entries(MAX_PROBES, 0);

/// Stats per probe, indexed by probe id: one lookup the verifier inlines, no hashing.
#[map(name = "PROBE_STATS")]
pub(crate) static PROBE_STATS: PerCpuArray<ProbeStats> =
    PerCpuArray::with_max_entries(MAX_PROBES, 0);

#[map(name = "SPECS")]
pub(crate) static SPECS: Array<ProbeSpec> = Array::with_max_entries(MAX_PROBES, 0);

#[map(name = "TRACED")]
pub(crate) static TRACED: HashMap<u32, u8> = HashMap::with_max_entries(MAX_TRACED_PROCESSES, 0);

/// LRU: an exited process's entry stays (its spans may still be in the ring) until evicted or
/// its PID is reused.
#[map(name = "PROCESSES")]
pub(crate) static PROCESSES: LruHashMap<u32, ProcessInfo> =
    LruHashMap::with_max_entries(MAX_TRACED_PROCESSES, 0);

/// Shared, not per CPU: few probes aggregate, and the keys carry strings.
#[map(name = "AGGREGATES")]
pub(crate) static AGGREGATES: HashMap<AggregateKey, AggregateValue> =
    HashMap::with_max_entries(MAX_AGGREGATES, 0);

#[map(name = "HANDOFFS")]
pub(crate) static HANDOFFS: LruHashMap<u64, TraceContext> =
    LruHashMap::with_max_entries(MAX_HANDOFFS, 0);

/// Strings captured at entry, waiting for their call's end; LRU, so strings of calls whose end
/// is never seen age out.
#[map]
pub(crate) static TEXTS: LruHashMap<u64, [u8; TEXT_LEN]> =
    LruHashMap::with_max_entries(MAX_TEXTS, 0);

/// Where a string is read before it is stored: larger than the 512-byte eBPF stack allows.
#[map]
pub(crate) static TEXT_SCRATCH: PerCpuArray<[u8; TEXT_LEN]> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "SPANS")]
pub(crate) static SPANS: RingBuf = RingBuf::with_byte_size(SPAN_RING_BYTES, 0);

/// Notices that a traced process's loaded objects changed: rare, so each wakes the agent.
#[map(name = "LOADS")]
pub(crate) static LOADS: RingBuf = RingBuf::with_byte_size(LOAD_RING_BYTES, 0);

/// Threads with a shadow stack: added 1 when one is created, `u64::MAX` (-1) at thread exit.
#[map(name = "LIVE_STACKS")]
pub(crate) static LIVE_STACKS: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "LOSSES")]
pub(crate) static LOSSES: PerCpuArray<u64> = PerCpuArray::with_max_entries(Loss::COUNT, 0);

/// Zeroed stats to insert from: larger than the 512-byte eBPF stack.
#[map]
pub(crate) static EMPTY_STATS: PerCpuArray<ProbeStats> = PerCpuArray::with_max_entries(1, 0);

/// Chunks of captured bytes; the agent may size it at load.
#[map(name = "CAPTURED")]
pub(crate) static CAPTURED: RingBuf = RingBuf::with_byte_size(CAPTURE_RING_BYTES, 0);

/// Capture byte and call counters, by [`flowtap_common::capture::CaptureCount`].
#[map(name = "CAPTURE_COUNTS")]
pub(crate) static CAPTURE_COUNTS: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(CaptureCount::COUNT, 0);

/// Connections the agent decided are not of interest: their calls are not captured.
#[map(name = "QUIET")]
pub(crate) static QUIET: LruHashMap<ConnectionKey, u8> = LruHashMap::with_max_entries(MAX_QUIET, 0);

/// Where a return-mode capture's bytes will be, kept from entry to return per (thread, depth);
/// LRU, so entries of calls whose return is never seen age out.
#[map]
pub(crate) static PENDING: LruHashMap<u64, PendingCapture> =
    LruHashMap::with_max_entries(MAX_PENDING, 0);

/// A call's bytes readied for the chunk program, per CPU (see [`CaptureArgs`]).
#[map]
pub(crate) static CAPTURE_ARGS: PerCpuArray<CaptureArgs> = PerCpuArray::with_max_entries(1, 0);

/// The chunk program for per-point programs; a program array takes one kind of program.
#[map(name = "CAPTURE_TAIL")]
pub(crate) static CAPTURE_TAIL: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// The chunk program for uprobe.multi programs.
#[map(name = "CAPTURE_TAIL_MULTI")]
pub(crate) static CAPTURE_TAIL_MULTI: ProgramArray = ProgramArray::with_max_entries(1, 0);
