//! Libraries loaded later: the dynamic loader calls its debugger hook before and after it maps
//! objects (`dlopen`, `dlclose`); each call of a traced process tells the agent, which rescans
//! that process's mappings and probes what is new. The agent is woken at once: the loader
//! relocates and initialises the new objects after the hook, which buys it a little time before
//! their first call.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::uprobe,
    programs::ProbeContext,
};
use flowtap_common::{
    LoadEvent, Loss, PROCESS_TRACED,
    abi::{programs, same},
};

use crate::{
    maps::{LOADS, TRACED, config},
    stats::count_loss,
};

const _: () = assert!(same(programs::OBJECTS_CHANGED, "objects_changed"));

/// Attached to the loader's hook; with the attach scope doing the filtering when probes are
/// scoped to one process, and `TRACED` when they are attached for every process.
#[uprobe]
pub(crate) fn objects_changed(_ctx: ProbeContext) -> u32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: a lookup in a map of plain values.
    if config().filter_by_tgid != 0 && unsafe { TRACED.get(&tgid) } != Some(&PROCESS_TRACED) {
        return 0;
    }
    let event = LoadEvent {
        tgid,
        _pad: 0,
        // SAFETY: the helper has no preconditions.
        time_ns: unsafe { bpf_ktime_get_ns() },
    };
    if LOADS.output(&event, 0).is_err() {
        count_loss(Loss::LoadRingFull);
    }
    0
}
