//! Kernel-side diagnostics of rare events, through aya-log. Off unless the agent runs with
//! `--kernel-log LEVEL`: it then sets aya-log's level global at load; off, each call site costs
//! one load and branch, and only on the rare paths below, never per call.

use aya_log_ebpf::{debug, warn};

/// Frames closed as unwound: their function returned without its return being seen (longjmp,
/// exception, tail call, a return probe the kernel dropped), or the thread exited.
#[inline(always)]
pub(crate) fn unwound(closed: u32, depth: u32) {
    debug!(
        &(),
        "shadow stack resynchronised: {} frames closed as unwound, {} left", closed, depth
    );
}

/// A call nested deeper than frames are stored: counted, not timed.
#[inline(always)]
pub(crate) fn too_deep(probe_id: u32, depth: usize) {
    warn!(
        &(),
        "probe {} nested {} deep: counted, not timed until the stack is shallower", probe_id, depth
    );
}
