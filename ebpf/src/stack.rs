//! The per-thread shadow stack, validated by stack pointer: a frame whose entry stack pointer
//! the thread's stack has come back up to (or past) belongs to a call that is over, whether or
//! not its return was seen (longjmp, exception, tail call, a return probe the kernel dropped).
//! Such frames are closed as unwound when the next entry or return on the thread shows it.

use aya_ebpf::{
    EbpfContext,
    bindings::pt_regs,
    helpers::{bpf_get_attach_cookie, bpf_get_current_pid_tgid, bpf_ktime_get_ns},
};
use flowtap_common::{
    FRAME_RETURN_PROBE, FRAME_SAMPLED, Frame, Loss, MAX_DEPTH, PROCESS_TRACED, SPAN_FAILED,
    SPAN_UNWOUND, STACK_COUNTED, STACK_TRACED, ShadowStack, SpanEvent, text_key,
};

use crate::{
    log,
    maps::{LIVE_STACKS, SPECS, STACKS, TEXTS, TRACED, config},
    span,
    stats::{Stats, aggregate, count_loss, opaque},
};

/// A thread whose calls are counted.
pub(crate) enum Thread {
    /// Not a process we count (binary mode filters by process).
    Untraced,
    /// Counted, but without a stack: none was asked for, or it could not be allocated.
    NoStack,
    /// Its shadow stack.
    Traced(&'static mut ShadowStack),
}

/// The calling thread and its shadow stack, allocated (empty) on its first call when
/// `create`. In binary mode a thread's stack remembers that its process is traced, so only
/// its first call looks the process up.
#[inline(always)]
pub(crate) fn current_thread(create: bool) -> Thread {
    let filter = config().filter_by_tgid != 0;
    if let Some(stack) = current(false)
        && (!filter || stack.state & STACK_TRACED != 0)
    {
        return Thread::Traced(stack);
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: a lookup in a map of plain values.
    if filter && unsafe { TRACED.get(&tgid) }.is_none_or(|state| *state != PROCESS_TRACED) {
        return Thread::Untraced;
    }
    match current(create) {
        Some(stack) => {
            stack.state |= STACK_TRACED;
            Thread::Traced(stack)
        }
        None => Thread::NoStack,
    }
}

/// The calling thread's shadow stack, allocated (empty) when `create` and it has none.
#[inline(always)]
pub(crate) fn current(create: bool) -> Option<&'static mut ShadowStack> {
    // SAFETY: task storage of the current thread: only this thread's programs touch it, and
    // they do not nest (a probe firing inside a BPF program is skipped by the kernel).
    let stack = unsafe { &mut *STACKS.current(create)? };
    if stack.state & STACK_COUNTED == 0 {
        stack.state |= STACK_COUNTED;
        count_live_stacks(1);
    }
    Some(stack)
}

/// Adds `delta` (wrapping: `u64::MAX` is -1) to the threads with a stack.
#[inline(always)]
pub(crate) fn count_live_stacks(delta: u64) {
    if let Some(counter) = LIVE_STACKS.get_ptr_mut(0) {
        // SAFETY: a live per-CPU array slot.
        unsafe { crate::stats::add(counter, delta) };
    }
}

/// The probe id: the agent attaches every point with cookie = probe id.
#[inline(always)]
pub(crate) fn probe_id<C: EbpfContext>(ctx: &C) -> u32 {
    // SAFETY: the context is the program's own.
    unsafe { bpf_get_attach_cookie(ctx.as_ptr()) as u32 }
}

/// The user stack pointer at the probed instruction.
#[inline(always)]
pub(crate) fn stack_pointer(regs: *const pt_regs) -> u64 {
    // SAFETY: the program's context is the probed thread's saved registers.
    #[cfg(bpf_target_arch = "x86_64")]
    let sp = unsafe { (*regs).rsp };
    #[cfg(not(bpf_target_arch = "x86_64"))]
    let sp = unsafe { (*regs).sp };
    sp
}

#[inline(always)]
pub(crate) fn now_ns() -> u64 {
    // SAFETY: the helper has no preconditions.
    unsafe { bpf_ktime_get_ns() }
}

/// How a call ended.
#[derive(Clone, Copy)]
pub(crate) enum Ending {
    /// Its return was seen, with this return register.
    Returned(u64),
    /// The stack was unwound past it.
    Unwound,
}

/// Closes the frames an entry at `sp` shows are over: every frame at or below `sp`, except a
/// return-probe frame of another function at exactly `sp`. That one may be a caller that
/// tail-called this function: the kernel then chains its return probe to this call's, and both
/// returns come. Of a run of such frames at `sp` only the newest is kept, so that calls
/// longjmp'd out of one after another at the same level cannot pile up.
#[inline(always)]
pub(crate) fn close_before_entry(stack: &mut ShadowStack, sp: u64, probe_id: u32) {
    close_while(stack, |frame| frame.entry_sp < sp);
    // Indexing is by `get` throughout: a bounds check the verifier must not see a panic behind.
    let depth = opaque(stack.depth as usize);
    let Some(top) = stack.frames.get(depth.wrapping_sub(1)).copied() else {
        return;
    };
    if top.entry_sp != sp {
        return;
    }
    let tail_call = top.flags & FRAME_RETURN_PROBE != 0 && top.probe_id != probe_id;
    if !tail_call {
        close_while(stack, |frame| frame.entry_sp <= sp);
        return;
    }
    let below = depth.wrapping_sub(2);
    let Some(stale) = stack.frames.get(below).copied() else {
        return;
    };
    if stale.entry_sp == sp {
        end_logged(stack, below, &stale, Ending::Unwound);
        if let Some(slot) = stack.frames.get_mut(below) {
            *slot = top;
            stack.depth = below as u32 + 1;
        }
    }
}

/// Closes frames from the top as unwound while `over` holds for them.
#[inline(always)]
pub(crate) fn close_while(stack: &mut ShadowStack, over: impl Fn(&Frame) -> bool) -> u32 {
    let mut closed = 0;
    for _ in 0..MAX_DEPTH {
        let level = opaque(stack.depth as usize).wrapping_sub(1);
        let Some(frame) = stack.frames.get(level).copied() else {
            break;
        };
        if !over(&frame) {
            break;
        }
        end_logged(stack, level, &frame, Ending::Unwound);
        stack.depth = level as u32;
        closed += 1;
    }
    if closed > 0 {
        log::unwound(closed, stack.depth);
    }
    closed
}

/// [`end`], counting its loss: one of several calls closed at once.
#[inline(always)]
fn end_logged(stack: &ShadowStack, level: usize, frame: &Frame, ending: Ending) {
    if let Err(loss) = end(stack, level, frame, ending, now_ns()) {
        count_loss(loss);
    }
}

/// Accounts for the end of the call of `frame`, stored at `level`: its stats, its aggregate
/// (returned calls: only they have an outcome) and its span when sampled.
#[inline(always)]
pub(crate) fn end(
    stack: &ShadowStack,
    level: usize,
    frame: &Frame,
    ending: Ending,
    now: u64,
) -> Result<(), Loss> {
    let stats = Stats::of(frame.probe_id)?;
    let spec = SPECS.get(frame.probe_id);
    let (ret, value, flags) = match ending {
        Ending::Returned(ret) => {
            let value = spec.map_or(ret as i64, |spec| spec.return_value(ret));
            let failed = spec.is_some_and(|spec| spec.error.holds(value));
            stats.returned(now.saturating_sub(frame.start_ns), failed);
            (ret, value, if failed { SPAN_FAILED } else { 0 })
        }
        Ending::Unwound => {
            stats.unwound();
            (0, 0, SPAN_UNWOUND)
        }
    };
    let Some(spec) = spec else {
        return Ok(());
    };
    let sampled = frame.flags & FRAME_SAMPLED != 0;
    if !sampled && spec.aggregate == 0 {
        return Ok(());
    }
    // Only spans and strings need the thread id: most calls skip the helper.
    let pid_tgid = bpf_get_current_pid_tgid();
    let tid = pid_tgid as u32;
    let text = if spec.wants_text(sampled) {
        // SAFETY: a lookup of a plain byte array.
        unsafe { TEXTS.get(&text_key(tid, level)) }
    } else {
        None
    };
    let mut result = Ok(());
    if spec.aggregate != 0 && matches!(ending, Ending::Returned(_)) {
        result = aggregate(spec, frame, &stats.key, value, flags != 0, text);
    }
    if sampled {
        let span = SpanEvent {
            trace_id: stack.trace_id,
            span_id: frame.span_id,
            parent_span_id: frame.parent_span_id,
            start_ns: frame.start_ns,
            end_ns: now,
            probe_id: frame.probe_id,
            tgid: (pid_tgid >> 32) as u32,
            tid,
            flags,
            values: frame.values,
            ret,
            cgroup: stats.key.cgroup,
        };
        result = result.and(span::emit(&span, spec.text_in_span != 0, text));
    }
    result
}
