//! Entry of a probed call: close the frames the new stack pointer shows are over, then push the
//! call's frame (or, nested too deep to store, only count it).

use core::ffi::c_void;

use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_prandom_u32, bpf_probe_read_user,
        generated::bpf_probe_read_user_str,
    },
    macros::uprobe,
    maps::ProgramArray,
    programs::ProbeContext,
};
use flowtap_common::{
    CAPTURES, Capture, ContextRole, FRAME_RETURN_PROBE, FRAME_SAMPLED, Frame, Loss, MAX_DEPTH,
    NO_ARG, ProbeSpec, ShadowStack, TEXT_LEN, TraceContext,
    abi::{ARGUMENT_REGISTERS, programs, same},
    capture::BufferMode,
    text_key,
};

use crate::{
    capture::{self, CallContext},
    log,
    maps::{CAPTURE_TAIL, CAPTURE_TAIL_MULTI, HANDOFFS, SPECS, TEXT_SCRATCH, TEXTS, config},
    stack::{self, Thread, close_before_entry},
    stats::{Stats, count_loss, opaque},
};

const _: () = assert!(same(programs::ENTRY_MULTI, "call_entry_multi"));
const _: () = assert!(same(programs::ENTRY, "call_entry"));

#[uprobe(multi)]
pub(crate) fn call_entry_multi(ctx: ProbeContext) -> u32 {
    entry(&ctx, &CAPTURE_TAIL_MULTI)
}

/// Per-point attach, for kernels without uprobe.multi (< 6.6).
#[uprobe]
pub(crate) fn call_entry(ctx: ProbeContext) -> u32 {
    entry(&ctx, &CAPTURE_TAIL)
}

/// The entry, then the chunk program when it readied bytes to capture.
#[inline(always)]
fn entry(ctx: &ProbeContext, capture_programs: &ProgramArray) -> u32 {
    match on_entry(ctx) {
        Ok(true) => capture::tail_call(ctx, capture_programs),
        Ok(false) => {}
        Err(loss) => count_loss(loss),
    }
    0
}

/// Returns whether bytes were readied for the chunk program.
#[inline(always)]
fn on_entry(ctx: &ProbeContext) -> Result<bool, Loss> {
    let stack = match stack::current_thread(true) {
        Thread::Untraced => return Ok(false),
        Thread::NoStack => {
            Stats::of(stack::probe_id(ctx))?.entered(false);
            return Err(Loss::StackMapFull);
        }
        Thread::Traced(stack) => stack,
    };
    let probe_id = stack::probe_id(ctx);
    let sp = stack::stack_pointer(ctx.regs);
    let stats = Stats::of(probe_id)?;
    let spec = SPECS.get(probe_id);
    let return_probe = spec.is_none_or(|spec| spec.return_probe != 0);
    let depth = match plain_push(stack, sp) {
        Some(depth) => depth,
        None => realign_before_push(stack, sp, probe_id, return_probe).inspect_err(|_| {
            stats.entered(false);
        })?,
    };
    stats.entered(true);
    let values = match spec {
        Some(spec) if spec.captures[0].arg != NO_ARG => capture(&registers(ctx), spec),
        // Most probes capture nothing. A zero the compiler cannot see makes four stores, where
        // a constant one makes a call to a byte-by-byte memset.
        _ => [opaque(0) as u64; CAPTURES],
    };
    let (parent_span_id, sampled) = match stack.frames.get(depth.wrapping_sub(1)) {
        Some(caller) => (caller.span_id, caller.flags & FRAME_SAMPLED != 0),
        None => start_trace(stack, spec, &values),
    };
    let mut readied = false;
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
        if spec.wants_text(sampled) {
            let tid = bpf_get_current_pid_tgid() as u32;
            capture_text(&registers(ctx), &spec.text, text_key(tid, depth));
        }
        if spec.buffer.mode != BufferMode::None {
            let context = CallContext {
                trace_id: stack.trace_id,
                parent_span_id,
                sampled,
            };
            readied = capture::at_entry(&registers(ctx), spec, probe_id, depth, &context);
        }
    }
    let mut flags = if sampled { FRAME_SAMPLED } else { 0 };
    if return_probe {
        flags |= FRAME_RETURN_PROBE;
    }
    let Some(slot) = stack.frames.get_mut(depth) else {
        return Ok(readied);
    };
    *slot = Frame {
        probe_id,
        flags,
        entry_sp: sp,
        start_ns: stack::now_ns(),
        // Ids matter only to sampled traces: unsampled calls (all of them, with metrics
        // only) skip drawing them.
        span_id: if sampled { random_id() } else { 0 },
        parent_span_id,
        values,
    };
    stack.depth = depth as u32 + 1;
    Ok(readied)
}

/// Where a call entered at `sp` is pushed when nothing is to be realigned first, as for nearly
/// every call: no call nested too deep is running, the newest frame is a caller (entered
/// above `sp`), and there is room.
#[inline(always)]
fn plain_push(stack: &ShadowStack, sp: u64) -> Option<usize> {
    let depth = opaque(stack.depth as usize);
    let below_caller = match stack.frames.get(depth.wrapping_sub(1)) {
        Some(caller) => caller.entry_sp > sp,
        None => depth == 0,
    };
    (stack.untracked_sp == 0 && below_caller && depth < MAX_DEPTH).then_some(depth)
}

/// Where a call entered at `sp` is pushed after closing the frames its stack pointer shows are
/// over; or its loss when it is nested too deep to store.
#[inline(never)]
fn realign_before_push(
    stack: &mut ShadowStack,
    sp: u64,
    probe_id: u32,
    return_probe: bool,
) -> Result<usize, Loss> {
    if stack.untracked_sp != 0 {
        if sp < stack.untracked_sp {
            return Err(too_deep(return_probe));
        }
        stack.untracked_sp = 0;
    }
    close_before_entry(stack, sp, probe_id);
    let depth = opaque(stack.depth as usize);
    if depth >= MAX_DEPTH {
        stack.untracked_sp = sp;
        log::too_deep(probe_id, depth);
        return Err(too_deep(return_probe));
    }
    Ok(depth)
}

/// The loss of a call nested deeper than frames are stored: a return-probe exit gets no return
/// from the kernel there either.
#[inline(always)]
fn too_deep(return_probe: bool) -> Loss {
    if return_probe {
        Loss::ReturnProbeDepth
    } else {
        Loss::StackOverflow
    }
}

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

/// The spec's integer captures: argument registers, or fields behind them (captures are
/// filled in order, so the first unused one ends them).
#[inline(always)]
fn capture(registers: &[u64; ARGUMENT_REGISTERS], spec: &ProbeSpec) -> [u64; CAPTURES] {
    let [a, b, c, d] = &spec.captures;
    [
        capture_one(registers, a),
        capture_one(registers, b),
        capture_one(registers, c),
        capture_one(registers, d),
    ]
}

#[inline(always)]
fn capture_one(registers: &[u64; ARGUMENT_REGISTERS], capture: &Capture) -> u64 {
    if capture.arg == NO_ARG {
        return 0;
    }
    let register = register(registers, capture.arg);
    if capture.deref != 0 && register != 0 {
        read_user(
            register.wrapping_add(u64::from(capture.offset)),
            capture.width,
        )
    } else {
        register
    }
}

/// `width` bytes of the target's memory at `address`, zero-extended; 0 when unreadable
/// (counted). Never writes to the target. Out of line: it is called from every capture.
#[inline(never)]
fn read_user(address: u64, width: u8) -> u64 {
    // SAFETY: the helper reads user memory and fails safely on a bad address.
    let value = unsafe {
        match width {
            1 => bpf_probe_read_user(address as *const u8).map(u64::from),
            2 => bpf_probe_read_user(address as *const u16).map(u64::from),
            4 => bpf_probe_read_user(address as *const u32).map(u64::from),
            _ => bpf_probe_read_user(address as *const u64),
        }
    };
    value.unwrap_or_else(|_| {
        count_loss(Loss::ArgumentUnreadable);
        0
    })
}

/// Reads the C string the spec names, at entry (the call may change it), for its end.
#[inline(always)]
fn capture_text(registers: &[u64; ARGUMENT_REGISTERS], text: &Capture, key: u64) {
    let mut pointer = register(registers, text.arg);
    if text.deref != 0 && pointer != 0 {
        pointer = read_user(pointer.wrapping_add(u64::from(text.offset)), 8);
    }
    let Some(scratch) = TEXT_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: the helper reads at most TEXT_LEN bytes of user memory into the per-CPU scratch,
    // faulting safely; on failure it zeroes the buffer: an empty string.
    let read = unsafe {
        bpf_probe_read_user_str(scratch.cast(), TEXT_LEN as u32, pointer as *const c_void)
    };
    // A NULL string is no loss: the call was given none.
    if read < 0 && pointer != 0 {
        count_loss(Loss::ArgumentUnreadable);
    }
    // SAFETY: the per-CPU scratch, just written, copied into the map.
    let _ = TEXTS.insert(&key, unsafe { &*scratch }, 0);
}

/// The outermost probed call on a thread: continues a context handed off to it, or starts a new
/// trace, sampled or not. Returns the parent span id and whether the trace is sampled.
#[inline(always)]
fn start_trace(
    stack: &mut ShadowStack,
    spec: Option<&ProbeSpec>,
    values: &[u64; CAPTURES],
) -> (u64, bool) {
    if let Some(spec) = spec
        && spec.context == ContextRole::Adopt
        && let Some(key) = values.get(usize::from(spec.context_capture))
        // SAFETY: a lookup of a plain value.
        && let Some(context) = unsafe { HANDOFFS.get(key) }
    {
        let adopted = (context.span_id, context.sampled != 0);
        stack.trace_id = context.trace_id;
        // One hand-off, one adoption: the key (a task pointer) is reused for later tasks.
        let _ = HANDOFFS.remove(key);
        return adopted;
    }
    let threshold = config().sample_threshold;
    // SAFETY: the helper has no preconditions.
    let sampled =
        threshold == u32::MAX || (threshold != 0 && unsafe { bpf_get_prandom_u32() } < threshold);
    if sampled {
        stack.trace_id = [random_id(), random_id()];
    }
    (0, sampled)
}

#[inline(always)]
fn random_id() -> u64 {
    // SAFETY: the helper has no preconditions.
    let (high, low) = unsafe { (bpf_get_prandom_u32(), bpf_get_prandom_u32()) };
    ((u64::from(high) << 32) | u64::from(low)).max(1)
}
