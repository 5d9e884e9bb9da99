//! Process and thread lifecycle: enrol processes of a traced binary before their first
//! instruction, close the calls of threads that are gone, and free what they leave.

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::{btf_tracepoint, uprobe},
    programs::{BtfTracePointContext, ProbeContext},
};
use flowtap_common::{
    STACK_TRACED,
    abi::{programs, same},
};

use crate::{
    maps::TRACED,
    stack::{self, close_while},
};

const _: () = assert!(same(programs::ENROL, "enrol_process"));
const _: () = assert!(same(programs::THREAD_EXIT, "thread_exit"));
const _: () = assert!(same(programs::PROCESS_EXEC, "process_exec"));

/// Attached to the traced binary's entry point: a process that starts running it is counted
/// from its first call into any probed library.
#[uprobe]
pub(crate) fn enrol_process(_ctx: ProbeContext) -> u32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let _ = TRACED.insert(&tgid, &1, 0);
    0
}

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
    }
    0
}

/// After exec the process runs another binary: the old one's calls are over, and it is enrolled
/// again only if the new binary is traced (its entry probe fires after this).
#[btf_tracepoint(function = "sched_process_exec")]
pub(crate) fn process_exec(_ctx: BtfTracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    close_all();
    let _ = TRACED.remove(&((pid_tgid >> 32) as u32));
    0
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
