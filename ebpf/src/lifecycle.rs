//! Process and thread lifecycle: enrol processes of a traced binary before their first
//! instruction, and free kernel state of threads and processes that are gone.

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::{btf_tracepoint, uprobe},
    programs::{BtfTracePointContext, ProbeContext},
};

use flowtap_common::Loss;

use crate::calls::{STACKS, TRACED, count_losses};

/// Attached to the traced binary's entry point: a process that starts running it is counted
/// from its first call into any probed library.
#[uprobe]
pub fn enrol_process(_ctx: ProbeContext) -> u32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let _ = TRACED.insert(&tgid, &1, 0);
    0
}

/// A thread that exits leaves no stack behind; its process leaves the traced set with its
/// leader thread.
#[btf_tracepoint(function = "sched_process_exit")]
pub fn thread_exit(_ctx: BtfTracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tid = pid_tgid as u32;
    let tgid = (pid_tgid >> 32) as u32;
    drop_stack(tid);
    if tid == tgid {
        let _ = TRACED.remove(&tgid);
    }
    0
}

/// After exec the process runs another binary: it is enrolled again only if that binary is
/// traced (its entry probe fires after this).
#[btf_tracepoint(function = "sched_process_exec")]
pub fn process_exec(_ctx: BtfTracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let _ = TRACED.remove(&((pid_tgid >> 32) as u32));
    drop_stack(pid_tgid as u32);
    0
}

/// Removes a thread's stack, counting the calls on it: they will never return.
#[inline(always)]
fn drop_stack(tid: u32) {
    if let Some(stack) = STACKS.get_ptr(&tid) {
        // SAFETY: a live map value; only its own thread, which is this one, changes it.
        let depth = unsafe { (*stack).depth };
        if depth > 0 {
            count_losses(Loss::ExitedInCall, u64::from(depth));
        }
    }
    let _ = STACKS.remove(&tid);
}
