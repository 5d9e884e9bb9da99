//! Process and thread lifecycle: enrol processes of a traced binary before their first
//! instruction, close the calls of threads that are gone, and free what they leave.

use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid},
    macros::{btf_tracepoint, tracepoint, uprobe},
    programs::{BtfTracePointContext, ProbeContext, TracePointContext},
};
use flowtap_common::{
    Loss, PROCESS_EXECED, PROCESS_TRACED, ProcessInfo, STACK_TRACED,
    abi::{programs, same},
};

use crate::{
    maps::{PROCESSES, TRACED, config},
    stack::{self, close_while},
    stats::count_loss,
};

const _: () = assert!(same(programs::ENROL, "enrol_process"));
const _: () = assert!(same(programs::THREAD_EXIT, "thread_exit"));
const _: () = assert!(same(programs::PROCESS_EXEC, "process_exec"));
const _: () = assert!(same(programs::PROCESS_FORK, "process_fork"));

/// Attached to the traced program's entry point: a process that starts running it is counted
/// from its first call into any probed library; in launch and PID modes, only one that was
/// traced before it exec'd (another process may run the same program).
#[uprobe]
pub(crate) fn enrol_process(_ctx: ProbeContext) -> u32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: a lookup whose value is only tested for presence.
    if (config().enrol_any != 0 || unsafe { TRACED.get(&tgid) }.is_some())
        && TRACED.insert(&tgid, &PROCESS_TRACED, 0).is_err()
    {
        count_loss(Loss::TracedMapFull);
    }
    0
}

/// Runs in the parent, before the child's first instruction: the child process of a traced
/// process is traced too (it runs the same image until it execs, which [`process_exec`] judges);
/// that of an exec'd one or a wrapper is not, but is enrolled should it execute the traced
/// program. New threads share their process's entry. Attached only when the agent follows
/// children.
#[tracepoint]
pub(crate) fn process_fork(ctx: TracePointContext) -> u32 {
    let parent = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: a lookup in a map of plain values.
    let Some(state) = (unsafe { TRACED.get(&parent) }).copied() else {
        return 0;
    };
    let config = config();
    // SAFETY: the offsets are those of the record's fields, read from its format.
    let (flags, child) = unsafe {
        (
            ctx.read_at::<u64>(usize::from(config.new_task_flags_offset)),
            ctx.read_at::<u32>(usize::from(config.new_task_pid_offset)),
        )
    };
    let (Ok(flags), Ok(child)) = (flags, child) else {
        return 0;
    };
    if flags & CLONE_THREAD != 0 {
        return 0;
    }
    if TRACED.insert(&child, &state, 0).is_err() {
        count_loss(Loss::TracedMapFull);
    }
    if state == PROCESS_TRACED {
        // The child's name is its parent's until it execs: this thread's.
        record_process(child);
    }
    0
}

/// `clone(2)`'s flag for a thread of the same process.
const CLONE_THREAD: u64 = 0x0001_0000;

/// A thread that exits ends its calls in flight (unwound); the kernel frees its stack with it.
/// Its process leaves the traced set with its leader thread.
#[btf_tracepoint(function = "sched_process_exit")]
pub(crate) fn thread_exit(_ctx: BtfTracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if close_all() {
        stack::count_live_stacks(u64::MAX);
    }
    let (tid, tgid) = (pid_tgid as u32, (pid_tgid >> 32) as u32);
    if tid == tgid {
        let _ = TRACED.remove(&tgid);
        // Kept, named, for its spans still in the ring; a new holder of the PID replaces it.
        if let Some(info) = PROCESSES.get_ptr_mut(&tgid) {
            // SAFETY: a live entry of a map of plain values.
            unsafe { (*info).exited = 1 };
        }
    }
    0
}

/// After exec the process runs another binary: the old one's calls are over, and it is enrolled
/// again only if the new binary is traced (its entry probe fires after this). In launch and PID
/// modes it stays known as exec'd, the entry probe's only way to tell it from strangers.
#[btf_tracepoint(function = "sched_process_exec")]
pub(crate) fn process_exec(_ctx: BtfTracePointContext) -> u32 {
    // First, with nothing else live: closing every call is what the verifier walks longest.
    close_all();
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: a lookup whose value is only tested for presence.
    let traced = unsafe { TRACED.get(&tgid) }.is_some();
    if config().enrol_any != 0 || !traced {
        let _ = TRACED.remove(&tgid);
        // Recorded again at its next first call, should it be traced (binary, library modes).
        let _ = PROCESSES.remove(&tgid);
        return 0;
    }
    let _ = TRACED.insert(&tgid, &PROCESS_EXECED, 0);
    // Another program now: a new start, under its new name.
    record_process(tgid);
    0
}

/// Records process `tgid` as starting now, named as the calling thread is.
#[inline(always)]
fn record_process(tgid: u32) {
    let info = ProcessInfo {
        start_ns: stack::now_ns(),
        comm: bpf_get_current_comm().unwrap_or_default(),
        exited: 0,
        _padding: 0,
    };
    // An LRU map: never full, its oldest entry goes.
    let _ = PROCESSES.insert(&tgid, &info, 0);
}

/// Closes every call of the thread, which is traced again only if found in `TRACED` anew;
/// whether it had a stack.
#[inline(always)]
fn close_all() -> bool {
    let Some(stack) = stack::current(false) else {
        return false;
    };
    close_while(stack, |_| true);
    stack.untracked_sp = 0;
    stack.state &= !STACK_TRACED;
    true
}
