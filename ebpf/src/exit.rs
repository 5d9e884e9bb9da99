//! Return of a probed call, seen by a return probe on its entry or by a uprobe on one of its
//! return instructions: close the frames below the caller's stack pointer as unwound, pop the
//! returning call's frame, and account for it.

use aya_ebpf::{
    macros::{uprobe, uretprobe},
    maps::ProgramArray,
    programs::{ProbeContext, RetProbeContext},
};
use flowtap_common::{
    Loss,
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
    match on_return(stack::probe_id(ctx), sp, ctx.ret::<u64>()) {
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
    match on_return(stack::probe_id(ctx), sp, ret) {
        Ok(true) => capture::tail_call(ctx, capture_programs),
        Ok(false) => {}
        Err(loss) => count_loss(loss),
    }
    0
}

/// The call of `probe_id` entered at stack pointer `sp` returns `ret`. Returns whether bytes
/// were readied for the chunk program.
#[inline(always)]
fn on_return(probe_id: u32, sp: u64, ret: u64) -> Result<bool, Loss> {
    let now = stack::now_ns();
    let stack = match stack::current_thread(false) {
        Thread::Untraced => return Ok(false),
        Thread::NoStack => {
            Stats::of(probe_id)?.unentered_return();
            return Ok(false);
        }
        Thread::Traced(stack) => stack,
    };
    if stack.untracked_sp != 0 {
        if sp <= stack.untracked_sp {
            // A call nested too deep to store, counted at entry; the outermost one ends it.
            if sp == stack.untracked_sp {
                stack.untracked_sp = 0;
            }
            return Ok(false);
        }
        stack.untracked_sp = 0;
    }
    close_while(stack, |frame| frame.entry_sp < sp);
    let level = opaque(stack.depth as usize).wrapping_sub(1);
    let Some(frame) = stack
        .frames
        .get(level)
        .copied()
        .filter(|frame| frame.entry_sp == sp && frame.probe_id == probe_id)
    else {
        Stats::of(probe_id)?.unentered_return();
        return Ok(false);
    };
    stack.depth = level as u32;
    let readied = SPECS.get(probe_id).is_some_and(|spec| {
        spec.buffer.mode == BufferMode::Return
            && capture::at_return(spec, stack.trace_id, level, &frame, ret, now)
    });
    if let Err(loss) = stack::end(stack, level, &frame, Ending::Returned(ret), now) {
        count_loss(loss);
    }
    Ok(readied)
}
