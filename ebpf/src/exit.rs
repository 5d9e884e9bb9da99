//! Return of a probed call, seen by a return probe on its entry or by a uprobe on one of its
//! return instructions: close the frames below the caller's stack pointer as unwound, pop the
//! returning call's frame, and account for it.

use aya_ebpf::{
    macros::{uprobe, uretprobe},
    maps::ProgramArray,
    programs::{ProbeContext, RetProbeContext},
};
use flowtap_common::{
    Frame, Loss, ShadowStack,
    abi::{programs, same},
    capture::BufferMode,
};

use crate::{
    capture,
    maps::{CAPTURE_TAIL, CAPTURE_TAIL_MULTI, SPECS},
    stack::{self, Ending, Thread, close_while},
    stats::{Stats, count_loss, opaque},
};

const _: () = assert!(same(programs::RETURN_MULTI, "call_return_multi"));
const _: () = assert!(same(programs::RETURN, "call_return"));
const _: () = assert!(same(programs::RET_INSN_MULTI, "call_ret_insn_multi"));
const _: () = assert!(same(programs::RET_INSN, "call_ret_insn"));

/// Bytes a return pops off the stack before a return probe runs: the return address on
/// x86-64; none on aarch64 (it returns through the link register).
#[cfg(bpf_target_arch = "x86_64")]
const RETURN_ADDRESS_BYTES: u64 = 8;
#[cfg(not(bpf_target_arch = "x86_64"))]
const RETURN_ADDRESS_BYTES: u64 = 0;

#[uretprobe(multi)]
pub(crate) fn call_return_multi(ctx: RetProbeContext) -> u32 {
    by_return_probe(&ctx, &CAPTURE_TAIL_MULTI)
}

/// Per-point attach, for kernels without uprobe.multi (< 6.6).
#[uretprobe]
pub(crate) fn call_return(ctx: RetProbeContext) -> u32 {
    by_return_probe(&ctx, &CAPTURE_TAIL)
}

#[uprobe(multi)]
pub(crate) fn call_ret_insn_multi(ctx: ProbeContext) -> u32 {
    at_return_instruction(&ctx, &CAPTURE_TAIL_MULTI)
}

#[uprobe]
pub(crate) fn call_ret_insn(ctx: ProbeContext) -> u32 {
    at_return_instruction(&ctx, &CAPTURE_TAIL)
}

/// The kernel has already popped the return address: the entry's stack pointer is below.
#[inline(always)]
fn by_return_probe(ctx: &RetProbeContext, capture_programs: &ProgramArray) -> u32 {
    let sp = stack::stack_pointer(ctx.regs).wrapping_sub(RETURN_ADDRESS_BYTES);
    match on_return(|| stack::probe_id(ctx), sp, ctx.ret::<u64>()) {
        Ok(true) => capture::tail_call(ctx, capture_programs),
        Ok(false) => {}
        Err(loss) => count_loss(loss),
    }
    0
}

/// At the return instruction the stack pointer is the entry's again.
#[inline(always)]
fn at_return_instruction(ctx: &ProbeContext, capture_programs: &ProgramArray) -> u32 {
    let sp = stack::stack_pointer(ctx.regs);
    let ret = RetProbeContext::new(ctx.regs.cast()).ret::<u64>();
    match on_return(|| stack::probe_id(ctx), sp, ret) {
        Ok(true) => capture::tail_call(ctx, capture_programs),
        Ok(false) => {}
        Err(loss) => count_loss(loss),
    }
    0
}

/// A call of the probe `probe_id` (read only when needed), entered at stack pointer `sp`, returns
/// `ret`. Returns whether bytes were readied for the chunk program.
#[inline(always)]
fn on_return(probe_id: impl Fn() -> u32, sp: u64, ret: u64) -> Result<bool, Loss> {
    let now = stack::now_ns();
    let stack = match stack::current_thread(false) {
        Thread::Untraced => return Ok(false),
        Thread::NoStack => {
            Stats::of(probe_id())?.unentered_return();
            return Ok(false);
        }
        Thread::Traced(stack) => stack,
    };
    let level = opaque(stack.depth as usize).wrapping_sub(1);
    // Nearly every return is that of the newest frame, with nothing to realign first. Its
    // entry stack pointer tells it: only a call entered there can return there while no newer
    // frame is open, so the attach cookie (a helper call) is not read to tell it again. Calls
    // sharing an entry stack pointer (tail calls) return newest first, as they are stacked.
    let returning_top = stack.untracked_sp == 0
        && stack
            .frames
            .get(level)
            .is_some_and(|frame| frame.entry_sp == sp);
    // Realigned out of line, ended here: the accounting inlined once keeps the two frames
    // within the verifier's 512 bytes of combined stack.
    let level = if returning_top {
        level
    } else {
        match realign(stack, probe_id(), sp)? {
            Some(level) => level,
            None => return Ok(false),
        }
    };
    stack.depth = level as u32;
    let stack: &ShadowStack = stack;
    // The popped frame stays in place until the next push: it is read there, not copied.
    let Some(frame) = stack.frames.get(level) else {
        return Ok(false);
    };
    Ok(end_returned(stack, level, frame, ret, now))
}

/// A return that is not the newest frame's: below a call nested too deep to store, or after
/// frames the stack has been unwound past (closed here), or of a call entered before attach.
/// The level of the returning call's frame, if it has one.
#[inline(never)]
fn realign(stack: &mut ShadowStack, probe_id: u32, sp: u64) -> Result<Option<usize>, Loss> {
    if stack.untracked_sp != 0 {
        if sp <= stack.untracked_sp {
            // A call nested too deep to store, counted at entry; the outermost one ends it.
            if sp == stack.untracked_sp {
                stack.untracked_sp = 0;
            }
            return Ok(None);
        }
        stack.untracked_sp = 0;
    }
    close_while(stack, |frame| frame.entry_sp < sp);
    let level = opaque(stack.depth as usize).wrapping_sub(1);
    let returning = stack
        .frames
        .get(level)
        .is_some_and(|frame| frame.entry_sp == sp && frame.probe_id == probe_id);
    if !returning {
        Stats::of(probe_id)?.unentered_return();
        return Ok(None);
    }
    Ok(Some(level))
}

/// Accounts for the call stored at `level` returning `ret`; returns whether it readied bytes
/// for the chunk program (a return-mode capture).
#[inline(always)]
fn end_returned(stack: &ShadowStack, level: usize, frame: &Frame, ret: u64, now: u64) -> bool {
    let readied = SPECS.get(frame.probe_id).is_some_and(|spec| {
        spec.buffer.mode == BufferMode::Return
            && capture::at_return(spec, stack.trace_id, level, frame, ret, now)
    });
    if let Err(loss) = stack::end(stack, level, frame, Ending::Returned(ret), now) {
        count_loss(loss);
    }
    readied
}
