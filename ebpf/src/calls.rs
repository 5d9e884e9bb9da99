//! Entry and exit of probed calls: push a frame at entry, pop it at exit, and add the duration
//! to the probe's in-kernel histogram.

use core::{
    ffi::c_void,
    intrinsics::{AtomicOrdering, atomic_xadd},
};

use aya_ebpf::{
    EbpfContext,
    helpers::{
        bpf_get_attach_cookie, bpf_get_current_pid_tgid, bpf_get_prandom_u32, bpf_ktime_get_ns,
        generated::bpf_probe_read_user_str,
    },
    macros::{map, uprobe, uretprobe},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{ProbeContext, RetProbeContext},
};
use flowtap_common::{
    Aggregate, AggregateKey, AggregateValue, CAPTURED_ARGS, Config, ContextRole, Frame, LABEL_LEN,
    Loss, MAX_AGGREGATES, MAX_DEPTH, MAX_HANDOFFS, MAX_PROBES, MAX_TRACED_PROCESSES,
    MAX_TRACKED_THREADS, NO_ARG, ProbeSpec, ProbeStats, SPAN_RING_BYTES, ShadowStack, SpanEvent,
    TraceContext, histogram,
};

/// Written by the agent before load (read-only data section).
#[unsafe(no_mangle)]
static CONFIG: Config = Config {
    filter_by_tgid: 0,
    _pad: [0; 3],
    sample_threshold: 0,
};

#[map]
pub static STACKS: LruHashMap<u32, ShadowStack> =
    LruHashMap::with_max_entries(MAX_TRACKED_THREADS, 0);

/// An entry per probe that was called. Preallocated: inserting into a non-preallocated map can
/// fail for want of memory in probe context. The agent sizes it to a memory budget.
#[map]
static STATS: PerCpuHashMap<u32, ProbeStats> = PerCpuHashMap::with_max_entries(MAX_PROBES, 0);

#[map]
static SPECS: Array<ProbeSpec> = Array::with_max_entries(MAX_PROBES, 0);

#[map]
pub static TRACED: HashMap<u32, u8> = HashMap::with_max_entries(MAX_TRACED_PROCESSES, 0);

/// Shared, not per CPU: few probes aggregate, and the keys carry strings.
#[map]
static AGGREGATES: HashMap<AggregateKey, AggregateValue> =
    HashMap::with_max_entries(MAX_AGGREGATES, 0);

#[map]
static HANDOFFS: LruHashMap<u64, TraceContext> = LruHashMap::with_max_entries(MAX_HANDOFFS, 0);

#[map]
static SPANS: RingBuf = RingBuf::with_byte_size(SPAN_RING_BYTES, 0);

#[map]
static LOSSES: PerCpuArray<u64> = PerCpuArray::with_max_entries(Loss::COUNT, 0);

/// Zeroed values to insert from: both are larger than the 512-byte eBPF stack.
#[map]
static EMPTY_STACK: PerCpuArray<ShadowStack> = PerCpuArray::with_max_entries(1, 0);
#[map]
static EMPTY_STATS: PerCpuArray<ProbeStats> = PerCpuArray::with_max_entries(1, 0);

const BPF_NOEXIST: u64 = 1;
/// Spans are read in batches on a timer: waking the reader per span would cost more than the
/// probe itself.
const BPF_RB_NO_WAKEUP: u64 = 1;

#[uprobe(multi)]
pub fn call_entry_multi(ctx: ProbeContext) -> u32 {
    on_entry(&ctx);
    0
}

#[uretprobe(multi)]
pub fn call_exit_multi(ctx: RetProbeContext) -> u32 {
    on_exit(&ctx);
    0
}

/// Per-point attach, for kernels without uprobe.multi (< 6.6).
#[uprobe]
pub fn call_entry(ctx: ProbeContext) -> u32 {
    on_entry(&ctx);
    0
}

#[uretprobe]
pub fn call_exit(ctx: RetProbeContext) -> u32 {
    on_exit(&ctx);
    0
}

#[inline(always)]
fn on_entry(ctx: &ProbeContext) {
    let Some(pid_tgid) = traced_thread() else {
        return;
    };
    let Some(stack) = stack_of(pid_tgid as u32) else {
        count_loss(Loss::StackMapFull);
        return;
    };
    // SAFETY: the pointer is a live map value of this thread; only this thread touches it.
    let stack = unsafe { &mut *stack };
    let depth = opaque(stack.depth as usize);
    stack.depth += 1;
    if depth >= MAX_DEPTH {
        count_loss(Loss::StackOverflow);
        return;
    }
    // Copying four registers costs less than looking up whether the probe needs them.
    let mut args = [0u64; CAPTURED_ARGS];
    for (n, arg) in args.iter_mut().enumerate() {
        *arg = ctx.arg(n).unwrap_or(0);
    }
    let probe_id = probe_id(ctx);
    let spec = SPECS.get(probe_id);
    let (parent_span_id, sampled) = match depth.checked_sub(1) {
        Some(caller) if caller < MAX_DEPTH => {
            let caller = &stack.frames[caller];
            (caller.span_id, caller.sampled)
        }
        _ => start_trace(stack, spec, &args),
    };
    if let Some(spec) = spec
        && spec.context == ContextRole::HandOff
        && let Some(&key) = args.get(usize::from(spec.context_arg))
    {
        let context = TraceContext {
            trace_id: stack.trace_id,
            span_id: parent_span_id,
            sampled: u64::from(sampled),
        };
        let _ = HANDOFFS.insert(&key, &context, 0);
    }
    stack.frames[depth] = Frame {
        probe_id,
        sampled,
        start_ns: unsafe { bpf_ktime_get_ns() },
        // Ids matter only to sampled traces: unsampled calls (all of them, with metrics
        // only) skip drawing them.
        span_id: if sampled != 0 { random_id() } else { 0 },
        parent_span_id,
        args,
    };
}

/// The outermost probed call on a thread: continues a context handed off to it, or starts a new
/// trace, sampled or not. Returns the parent span id and whether the trace is sampled.
#[inline(always)]
fn start_trace(
    stack: &mut ShadowStack,
    spec: Option<&ProbeSpec>,
    args: &[u64; CAPTURED_ARGS],
) -> (u64, u32) {
    if let Some(spec) = spec
        && spec.context == ContextRole::Adopt
        && let Some(key) = args.get(usize::from(spec.context_arg))
        && let Some(context) = unsafe { HANDOFFS.get(key) }
    {
        let adopted = (context.span_id, context.sampled as u32);
        stack.trace_id = context.trace_id;
        // One hand-off, one adoption: the key (a task pointer) is reused for later tasks.
        let _ = HANDOFFS.remove(key);
        return adopted;
    }
    // SAFETY: as in traced_thread.
    let threshold = unsafe { core::ptr::read_volatile(&CONFIG.sample_threshold) };
    let sampled =
        threshold == u32::MAX || (threshold != 0 && unsafe { bpf_get_prandom_u32() } < threshold);
    if sampled {
        stack.trace_id = [random_id(), random_id()];
    }
    (0, u32::from(sampled))
}

#[inline(always)]
fn random_id() -> u64 {
    // SAFETY: the helper has no preconditions.
    let (high, low) = unsafe { (bpf_get_prandom_u32(), bpf_get_prandom_u32()) };
    ((u64::from(high) << 32) | u64::from(low)).max(1)
}

#[inline(always)]
fn on_exit(ctx: &RetProbeContext) {
    let now = unsafe { bpf_ktime_get_ns() };
    let Some(pid_tgid) = traced_thread() else {
        return;
    };
    let Some(stack) = STACKS.get_ptr_mut(&(pid_tgid as u32)) else {
        count_loss(Loss::UnmatchedReturn);
        return;
    };
    // SAFETY: as in on_entry.
    let stack = unsafe { &mut *stack };
    let probe_id = probe_id(ctx);
    let Some(frame) = pop_frame(stack, probe_id) else {
        return;
    };
    let Some(spec) = SPECS.get(probe_id) else {
        return;
    };
    let ret = ctx.ret::<u64>();
    let failed = spec.is_error(ret);
    record(probe_id, now.saturating_sub(frame.start_ns), failed);
    if spec.aggregate != Aggregate::None {
        aggregate(spec, &frame, ret, failed);
    }
    if frame.sampled != 0 {
        emit_span(&frame, stack.trace_id, pid_tgid, now, failed);
    }
}

#[inline(always)]
fn emit_span(frame: &Frame, trace_id: [u64; 2], pid_tgid: u64, end_ns: u64, failed: bool) {
    let Some(mut entry) = SPANS.reserve::<SpanEvent>(0) else {
        count_loss(Loss::SpanRingFull);
        return;
    };
    entry.write(SpanEvent {
        trace_id,
        span_id: frame.span_id,
        parent_span_id: frame.parent_span_id,
        start_ns: frame.start_ns,
        end_ns,
        probe_id: frame.probe_id,
        tgid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        failed: u32::from(failed),
    });
    entry.submit(BPF_RB_NO_WAKEUP);
}

/// Adds the call to its (probe, outcome, label) aggregate, summing the spec's value arguments.
#[inline(always)]
fn aggregate(spec: &ProbeSpec, frame: &Frame, ret: u64, failed: bool) {
    let mut key = AggregateKey {
        probe_id: frame.probe_id,
        outcome: match spec.aggregate {
            Aggregate::ByReturn => ret as i32,
            _ => i32::from(failed),
        },
        label: [0; LABEL_LEN],
    };
    if let Some(&pointer) = frame.args.get(usize::from(spec.label_arg)) {
        // SAFETY: the helper reads at most LABEL_LEN bytes of user memory, faulting safely; a
        // failed read leaves an empty label.
        unsafe {
            bpf_probe_read_user_str(
                key.label.as_mut_ptr().cast(),
                LABEL_LEN as u32,
                pointer as *const c_void,
            )
        };
    }
    let value = match AGGREGATES.get_ptr_mut(&key) {
        Some(value) => value,
        None => {
            let _ = AGGREGATES.insert(&key, &AggregateValue::default(), BPF_NOEXIST);
            let Some(value) = AGGREGATES.get_ptr_mut(&key) else {
                count_loss(Loss::AggregateMapFull);
                return;
            };
            value
        }
    };
    // SAFETY: a live map value, updated atomically as in `record`.
    unsafe {
        add(&raw mut (*value).calls, 1);
        for (slot, &arg) in spec.value_args.iter().enumerate() {
            if arg != NO_ARG
                && let Some(&amount) = frame.args.get(usize::from(arg))
            {
                add(&raw mut (*value).sums[slot], amount);
            }
        }
    }
}

/// The current `pid_tgid` (thread id in the low half), or None when the process is not one we
/// count.
#[inline(always)]
fn traced_thread() -> Option<u64> {
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: CONFIG is plain data in .rodata; the volatile read stops the compiler from folding
    // the default value the agent overrides at load time.
    let filter = unsafe { core::ptr::read_volatile(&CONFIG.filter_by_tgid) };
    if filter != 0 && unsafe { TRACED.get(&((pid_tgid >> 32) as u32)) }.is_none() {
        return None;
    }
    Some(pid_tgid)
}

#[inline(always)]
fn probe_id<C: EbpfContext>(ctx: &C) -> u32 {
    // The agent attaches every point with cookie = probe id.
    unsafe { bpf_get_attach_cookie(ctx.as_ptr()) as u32 }
}

#[inline(always)]
fn stack_of(tid: u32) -> Option<*mut ShadowStack> {
    if let Some(stack) = STACKS.get_ptr_mut(&tid) {
        return Some(stack);
    }
    let empty = EMPTY_STACK.get(0)?;
    STACKS.insert(&tid, empty, BPF_NOEXIST).ok()?;
    STACKS.get_ptr_mut(&tid)
}

/// Pops the frame of `probe_id`. Frames above it belong to calls that never returned normally
/// (longjmp, exceptions): they are dropped so the stack realigns with the real one.
#[inline(always)]
fn pop_frame(stack: &mut ShadowStack, probe_id: u32) -> Option<Frame> {
    let depth = stack.depth as usize;
    if depth == 0 {
        count_loss(Loss::UnmatchedReturn);
        return None;
    }
    if depth > MAX_DEPTH {
        // The returning call was nested too deep to be stored; already counted at entry.
        stack.depth -= 1;
        return None;
    }
    let mut remaining = depth;
    while remaining > 0 {
        remaining -= 1;
        let level = opaque(remaining);
        if level >= MAX_DEPTH {
            break;
        }
        let frame = stack.frames[level];
        if frame.probe_id == probe_id {
            stack.depth = level as u32;
            return Some(frame);
        }
    }
    count_loss(Loss::UnmatchedReturn);
    None
}

#[inline(always)]
fn record(probe_id: u32, duration_ns: u64, failed: bool) {
    let Some(stats) = stats_of(probe_id) else {
        count_loss(Loss::StatsMapFull);
        return;
    };
    // Uprobe programs run with migration disabled but may be preempted, so even per-CPU values
    // are updated atomically to keep the counts exact.
    // SAFETY: the pointer is a live, 8-byte aligned per-CPU map value.
    unsafe {
        add(&raw mut (*stats).calls, 1);
        add(&raw mut (*stats).total_ns, duration_ns);
        if failed {
            add(&raw mut (*stats).errors, 1);
        }
        let bucket = opaque(histogram::bucket_index(duration_ns));
        if bucket < histogram::BUCKETS {
            add(&raw mut (*stats).buckets[bucket], 1);
        }
        // A racing larger max may be overwritten; max is best-effort, the histogram is exact.
        if duration_ns > (*stats).max_ns {
            (*stats).max_ns = duration_ns;
        }
    }
}

#[inline(always)]
fn stats_of(probe_id: u32) -> Option<*mut ProbeStats> {
    if let Some(stats) = STATS.get_ptr_mut(&probe_id) {
        return Some(stats);
    }
    let empty = EMPTY_STATS.get(0)?;
    // EEXIST from a racing first call on another thread is fine: the lookup below finds it.
    let _ = STATS.insert(&probe_id, empty, BPF_NOEXIST);
    STATS.get_ptr_mut(&probe_id)
}

/// Hides a value's known range from the compiler, so that a bounds check it would prove
/// redundant stays in the program for the verifier, which cannot prove it.
#[inline(always)]
fn opaque(value: usize) -> usize {
    // SAFETY: a volatile read of a local.
    unsafe { core::ptr::read_volatile(&value) }
}

/// # Safety
/// `counter` must point into a live map value.
#[inline(always)]
unsafe fn add(counter: *mut u64, value: u64) {
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(counter, value) };
}

#[inline(always)]
pub fn count_loss(loss: Loss) {
    if let Some(counter) = LOSSES.get_ptr_mut(loss as u32) {
        // SAFETY: a live per-CPU array slot.
        unsafe { add(counter, 1) };
    }
}

/// The kernel floor for benchmarks: the same attach points with programs that do nothing, so
/// `cargo xtask bench` can tell the uprobe's own cost from flowtap's.
#[uprobe(multi)]
pub fn empty_entry_multi(_ctx: ProbeContext) -> u32 {
    0
}

#[uretprobe(multi)]
pub fn empty_exit_multi(_ctx: RetProbeContext) -> u32 {
    0
}

#[uprobe]
pub fn empty_entry(_ctx: ProbeContext) -> u32 {
    0
}

#[uretprobe]
pub fn empty_exit(_ctx: RetProbeContext) -> u32 {
    0
}
