//! Entry and exit of probed calls: push a frame at entry, pop it at exit, and add the duration
//! to the probe's in-kernel histogram.

use core::{
    ffi::c_void,
    intrinsics::{AtomicOrdering, atomic_xadd},
};

use aya_ebpf::{
    EbpfContext,
    helpers::{
        bpf_get_attach_cookie, bpf_get_current_cgroup_id, bpf_get_current_pid_tgid,
        bpf_get_prandom_u32, bpf_ktime_get_ns, bpf_probe_read_user,
        generated::{bpf_probe_read_kernel_str, bpf_probe_read_user_str},
    },
    macros::{map, uprobe, uretprobe},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{ProbeContext, RetProbeContext},
};
use flowtap_common::{
    AggregateKey, AggregateValue, CAPTURES, Capture, Config, ContextRole, Frame, LABEL_LEN, Loss,
    MAX_AGGREGATES, MAX_DEPTH, MAX_HANDOFFS, MAX_PROBES, MAX_TEXTS, MAX_TRACED_PROCESSES,
    MAX_TRACKED_THREADS, NO_ARG, ProbeSpec, ProbeStats, RETURN_VALUE, SPAN_RING_BYTES, ShadowStack,
    SpanEvent, StatsKey, TEXT_LEN, TextSpanEvent, TraceContext, histogram, text_key,
};

/// Written by the agent before load (read-only data section).
#[unsafe(no_mangle)]
static CONFIG: Config = Config {
    filter_by_tgid: 0,
    by_cgroup: 0,
    _pad: [0; 2],
    sample_threshold: 0,
};

#[map]
pub static STACKS: LruHashMap<u32, ShadowStack> =
    LruHashMap::with_max_entries(MAX_TRACKED_THREADS, 0);

/// An entry per probe that was called. Preallocated: inserting into a non-preallocated map can
/// fail for want of memory in probe context. The agent sizes it to a memory budget.
#[map]
static STATS: PerCpuHashMap<StatsKey, ProbeStats> = PerCpuHashMap::with_max_entries(MAX_PROBES, 0);

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

/// Strings captured at entry, waiting for their call's exit; LRU, so strings of calls that
/// never return age out.
#[map]
static TEXTS: LruHashMap<u64, [u8; TEXT_LEN]> = LruHashMap::with_max_entries(MAX_TEXTS, 0);

/// Where a string is read before it is stored: larger than the 512-byte eBPF stack allows.
#[map]
static TEXT_SCRATCH: PerCpuArray<[u8; TEXT_LEN]> = PerCpuArray::with_max_entries(1, 0);

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
    let tid = pid_tgid as u32;
    let Some(stack) = stack_of(tid) else {
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
    let probe_id = probe_id(ctx);
    let spec = SPECS.get(probe_id);
    let registers = registers(ctx);
    let values = spec.map_or([0; CAPTURES], |spec| capture(&registers, spec));
    let (parent_span_id, sampled) = match depth.checked_sub(1) {
        Some(caller) if caller < MAX_DEPTH => {
            let caller = &stack.frames[caller];
            (caller.span_id, caller.sampled)
        }
        _ => start_trace(stack, spec, &values),
    };
    if let Some(spec) = spec {
        if spec.context == ContextRole::HandOff
            && let Some(&key) = values.get(usize::from(spec.context_capture))
        {
            let context = TraceContext {
                trace_id: stack.trace_id,
                span_id: parent_span_id,
                sampled: u64::from(sampled),
            };
            let _ = HANDOFFS.insert(&key, &context, 0);
        }
        if wants_text(spec, sampled) {
            capture_text(&registers, &spec.text, text_key(tid, depth));
        }
    }
    stack.frames[depth] = Frame {
        probe_id,
        sampled,
        start_ns: unsafe { bpf_ktime_get_ns() },
        // Ids matter only to sampled traces: unsampled calls (all of them, with metrics
        // only) skip drawing them.
        span_id: if sampled != 0 { random_id() } else { 0 },
        parent_span_id,
        values,
    };
}

/// Integer argument registers read: the six both conventions pass arguments in (x86-64: rdi,
/// rsi, rdx, rcx, r8, r9; aarch64: x0..x5).
const ARGUMENT_REGISTERS: usize = 6;

/// The argument registers, each read at a constant offset: the verifier refuses a context read
/// at an offset it cannot know, as an argument index from the spec would make it.
#[inline(always)]
fn registers(ctx: &ProbeContext) -> [u64; ARGUMENT_REGISTERS] {
    core::array::from_fn(|n| ctx.arg::<u64>(n).unwrap_or(0))
}

/// Argument `arg` (bounded again here for the verifier), or 0.
#[inline(always)]
fn register(registers: &[u64; ARGUMENT_REGISTERS], arg: u8) -> u64 {
    registers
        .get(opaque(usize::from(arg)))
        .copied()
        .unwrap_or(0)
}

/// The spec's integer captures: argument registers, or fields behind them.
#[inline(always)]
fn capture(registers: &[u64; ARGUMENT_REGISTERS], spec: &ProbeSpec) -> [u64; CAPTURES] {
    let mut values = [0u64; CAPTURES];
    for (value, capture) in values.iter_mut().zip(spec.captures.iter()) {
        if capture.arg == NO_ARG {
            continue;
        }
        let register = register(registers, capture.arg);
        *value = if capture.deref != 0 {
            read_user(
                register.wrapping_add(u64::from(capture.offset)),
                capture.width,
            )
        } else {
            register
        };
    }
    values
}

/// `width` bytes of the target's memory at `address`, zero-extended; 0 when unreadable. Never
/// writes to the target.
#[inline(always)]
fn read_user(address: u64, width: u8) -> u64 {
    // SAFETY: the helper reads user memory and fails safely on a bad address.
    unsafe {
        match width {
            1 => bpf_probe_read_user(address as *const u8).map(u64::from),
            2 => bpf_probe_read_user(address as *const u16).map(u64::from),
            4 => bpf_probe_read_user(address as *const u32).map(u64::from),
            _ => bpf_probe_read_user(address as *const u64),
        }
    }
    .unwrap_or(0)
}

/// Whether this call's string is needed: as a label (every call), or on a sampled span.
#[inline(always)]
fn wants_text(spec: &ProbeSpec, sampled: u32) -> bool {
    spec.text.arg != NO_ARG && (spec.text_label != 0 || (spec.text_in_span != 0 && sampled != 0))
}

/// Reads the C string the spec names, at entry (the call may change it), for its exit.
#[inline(always)]
fn capture_text(registers: &[u64; ARGUMENT_REGISTERS], text: &Capture, key: u64) {
    let mut pointer = register(registers, text.arg);
    if text.deref != 0 {
        pointer = read_user(pointer.wrapping_add(u64::from(text.offset)), 8);
    }
    let Some(scratch) = TEXT_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: the helper reads at most TEXT_LEN bytes of user memory into the per-CPU scratch,
    // faulting safely; on failure (a NULL pointer...) it zeroes the buffer: an empty string.
    unsafe {
        bpf_probe_read_user_str(scratch.cast(), TEXT_LEN as u32, pointer as *const c_void);
        let _ = TEXTS.insert(&key, &*scratch, 0);
    }
}

/// The outermost probed call on a thread: continues a context handed off to it, or starts a new
/// trace, sampled or not. Returns the parent span id and whether the trace is sampled.
#[inline(always)]
fn start_trace(
    stack: &mut ShadowStack,
    spec: Option<&ProbeSpec>,
    values: &[u64; CAPTURES],
) -> (u64, u32) {
    if let Some(spec) = spec
        && spec.context == ContextRole::Adopt
        && let Some(key) = values.get(usize::from(spec.context_capture))
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
    let tid = pid_tgid as u32;
    let Some(stack) = STACKS.get_ptr_mut(&tid) else {
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
    let value = spec.return_value(ret);
    let failed = spec.error.holds(value);
    let key = StatsKey {
        probe_id,
        _pad: 0,
        cgroup: current_cgroup(),
    };
    record(&key, now.saturating_sub(frame.start_ns), failed);
    let text = if wants_text(spec, frame.sampled) {
        // pop_frame left the depth at the returning call's level: its entry's key.
        unsafe { TEXTS.get(&text_key(tid, stack.depth as usize)) }
    } else {
        None
    };
    if spec.aggregate != 0 {
        aggregate(spec, &frame, &key, value, failed, text);
    }
    if frame.sampled != 0 {
        let span = SpanEvent {
            trace_id: stack.trace_id,
            span_id: frame.span_id,
            parent_span_id: frame.parent_span_id,
            start_ns: frame.start_ns,
            end_ns: now,
            probe_id,
            tgid: (pid_tgid >> 32) as u32,
            tid,
            failed: u32::from(failed),
            values: frame.values,
            ret,
            cgroup: key.cgroup,
        };
        if spec.text_in_span != 0 {
            emit_text_span(&span, text);
        } else {
            emit_span(&span);
        }
    }
}

#[inline(always)]
fn emit_span(span: &SpanEvent) {
    let Some(mut entry) = SPANS.reserve::<SpanEvent>(0) else {
        count_loss(Loss::SpanRingFull);
        return;
    };
    entry.write(*span);
    entry.submit(BPF_RB_NO_WAKEUP);
}

#[inline(always)]
fn emit_text_span(span: &SpanEvent, text: Option<&[u8; TEXT_LEN]>) {
    let Some(mut entry) = SPANS.reserve::<TextSpanEvent>(0) else {
        count_loss(Loss::SpanRingFull);
        return;
    };
    let event = entry.as_mut_ptr();
    // SAFETY: `event` is the reserved, writable ring-buffer record; the string is copied from
    // a map value, at most TEXT_LEN bytes, NUL-terminated.
    unsafe {
        (*event).span = *span;
        match text {
            Some(text) => {
                bpf_probe_read_kernel_str(
                    (*event).text.as_mut_ptr().cast(),
                    TEXT_LEN as u32,
                    text.as_ptr().cast(),
                );
            }
            None => (*event).text[0] = 0,
        }
    }
    entry.submit(BPF_RB_NO_WAKEUP);
}

/// Adds the call to its (probe, outcome, label) aggregate, summing the spec's values.
#[inline(always)]
fn aggregate(
    spec: &ProbeSpec,
    frame: &Frame,
    stats: &StatsKey,
    value: i64,
    failed: bool,
    text: Option<&[u8; TEXT_LEN]>,
) {
    let mut key = AggregateKey {
        probe_id: stats.probe_id,
        outcome: spec.outcome(value, failed),
        cgroup: stats.cgroup,
        label: [0; LABEL_LEN],
    };
    if spec.text_label != 0
        && let Some(text) = text
    {
        // SAFETY: copies at most LABEL_LEN bytes of a map value, stopping at its NUL; the rest
        // of the label stays zero, so equal strings make equal keys.
        unsafe {
            bpf_probe_read_kernel_str(
                key.label.as_mut_ptr().cast(),
                LABEL_LEN as u32,
                text.as_ptr().cast(),
            )
        };
    }
    let aggregate = match AGGREGATES.get_ptr_mut(&key) {
        Some(aggregate) => aggregate,
        None => {
            let _ = AGGREGATES.insert(&key, &AggregateValue::default(), BPF_NOEXIST);
            let Some(aggregate) = AGGREGATES.get_ptr_mut(&key) else {
                count_loss(Loss::AggregateMapFull);
                return;
            };
            aggregate
        }
    };
    // SAFETY: a live map value, updated atomically as in `record`.
    unsafe {
        add(&raw mut (*aggregate).calls, 1);
        for (slot, &source) in spec.sums.iter().enumerate() {
            let amount = if source == RETURN_VALUE {
                value as u64
            } else if let Some(&captured) = frame.values.get(usize::from(source)) {
                captured
            } else {
                continue;
            };
            add(&raw mut (*aggregate).sums[slot], amount);
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

/// The calling thread's cgroup, when stats are kept per cgroup; else 0.
#[inline(always)]
fn current_cgroup() -> u64 {
    // SAFETY: as in traced_thread; the helper has no preconditions.
    if unsafe { core::ptr::read_volatile(&CONFIG.by_cgroup) } != 0 {
        unsafe { bpf_get_current_cgroup_id() }
    } else {
        0
    }
}

#[inline(always)]
fn record(key: &StatsKey, duration_ns: u64, failed: bool) {
    let Some(stats) = stats_of(key) else {
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
fn stats_of(key: &StatsKey) -> Option<*mut ProbeStats> {
    if let Some(stats) = STATS.get_ptr_mut(key) {
        return Some(stats);
    }
    let empty = EMPTY_STATS.get(0)?;
    // EEXIST from a racing first call on another thread is fine: the lookup below finds it.
    let _ = STATS.insert(key, empty, BPF_NOEXIST);
    STATS.get_ptr_mut(key)
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
    count_losses(loss, 1);
}

#[inline(always)]
pub fn count_losses(loss: Loss, count: u64) {
    if let Some(counter) = LOSSES.get_ptr_mut(loss as u32) {
        // SAFETY: a live per-CPU array slot.
        unsafe { add(counter, count) };
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
