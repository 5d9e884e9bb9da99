//! Per-probe counters and histograms, the profile's aggregates, and loss counters: the only
//! memory the hot path writes besides the shadow stack.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::helpers::{bpf_get_current_cgroup_id, generated::bpf_probe_read_kernel_str};
use flowtap_common::{
    AggregateKey, AggregateValue, Frame, LABEL_LEN, Loss, ProbeSpec, ProbeStats, RETURN_VALUE,
    StatsKey, TEXT_LEN, histogram,
};

use crate::maps::{AGGREGATES, EMPTY_STATS, LOSSES, PROBE_STATS, STATS, config};

const BPF_NOEXIST: u64 = 1;

/// One probe's stats in the calling thread's cgroup.
pub(crate) struct Stats {
    pub(crate) key: StatsKey,
    counters: *mut ProbeStats,
}

impl Stats {
    /// The stats of `probe_id`: an array slot, or a hash entry per cgroup when metrics are per
    /// pod (created on its first call).
    #[inline(always)]
    pub(crate) fn of(probe_id: u32) -> Result<Self, Loss> {
        let by_cgroup = config().by_cgroup != 0;
        let cgroup = if by_cgroup {
            // SAFETY: the helper has no preconditions.
            unsafe { bpf_get_current_cgroup_id() }
        } else {
            0
        };
        let key = StatsKey {
            probe_id,
            _pad: 0,
            cgroup,
        };
        let counters = if by_cgroup {
            keyed(&key)
        } else {
            PROBE_STATS.get_ptr_mut(probe_id)
        };
        let counters = counters.ok_or(Loss::StatsMapFull)?;
        Ok(Self { key, counters })
    }

    /// A call entered and pushed (`timed`), or entered and only counted. A pushed call is not
    /// counted in flight apart: the agent derives that from the other counts.
    #[inline(always)]
    pub(crate) fn entered(&self, timed: bool) {
        // SAFETY: `counters` is a live map value (see `add`).
        unsafe {
            add(&raw mut (*self.counters).entered, 1);
            if !timed {
                add(&raw mut (*self.counters).untimed, 1);
            }
        }
    }

    /// A call returned after `duration_ns`.
    #[inline(always)]
    pub(crate) fn returned(&self, duration_ns: u64, failed: bool) {
        // SAFETY: as in `entered`.
        unsafe {
            add(&raw mut (*self.counters).total_ns, duration_ns);
            if failed {
                add(&raw mut (*self.counters).errors, 1);
            }
            let bucket = opaque(histogram::bucket_index(duration_ns));
            if bucket < histogram::BUCKETS {
                add(&raw mut (*self.counters).buckets[bucket], 1);
            }
            // A racing larger max may be overwritten; max is best-effort, the histogram exact.
            if duration_ns > (*self.counters).max_ns {
                (*self.counters).max_ns = duration_ns;
            }
        }
    }

    /// A call ended without returning: not timed.
    #[inline(always)]
    pub(crate) fn unwound(&self) {
        // SAFETY: as in `entered`.
        unsafe { add(&raw mut (*self.counters).unwound, 1) };
    }

    /// A return of a call entered before the probes were attached.
    #[inline(always)]
    pub(crate) fn unentered_return(&self) {
        // SAFETY: as in `entered`.
        unsafe { add(&raw mut (*self.counters).unentered_returns, 1) };
    }
}

#[inline(always)]
fn keyed(key: &StatsKey) -> Option<*mut ProbeStats> {
    if let Some(stats) = STATS.get_ptr_mut(key) {
        return Some(stats);
    }
    let empty = EMPTY_STATS.get(0)?;
    // EEXIST from a racing first call on another thread is fine: the lookup below finds it.
    let _ = STATS.insert(key, empty, BPF_NOEXIST);
    STATS.get_ptr_mut(key)
}

/// Adds the call to its (probe, outcome, label) aggregate, summing the spec's values.
#[inline(always)]
pub(crate) fn aggregate(
    spec: &ProbeSpec,
    frame: &Frame,
    stats: &StatsKey,
    value: i64,
    failed: bool,
    text: Option<&[u8; TEXT_LEN]>,
) -> Result<(), Loss> {
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
            AGGREGATES.get_ptr_mut(&key).ok_or(Loss::AggregateMapFull)?
        }
    };
    // SAFETY: a live map value, updated atomically as in `Stats`.
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
    Ok(())
}

/// Counts a loss: each program's body returns its loss, and its wrapper counts it here.
#[inline(always)]
pub(crate) fn count_loss(loss: Loss) {
    if let Some(counter) = LOSSES.get_ptr_mut(loss as u32) {
        // SAFETY: a live per-CPU array slot.
        unsafe { add(counter, 1) };
    }
}

/// Hides a value's known range from the compiler, so that a bounds check it would prove
/// redundant stays in the program for the verifier, which cannot prove it.
#[inline(always)]
pub(crate) fn opaque(value: usize) -> usize {
    // SAFETY: a volatile read of a local.
    unsafe { core::ptr::read_volatile(&value) }
}

/// Uprobe programs run with migration disabled but may be preempted, so even per-CPU values are
/// updated atomically to keep the counts exact.
///
/// # Safety
/// `counter` must point into a live, 8-byte aligned map value.
#[inline(always)]
pub(crate) unsafe fn add(counter: *mut u64, value: u64) {
    // SAFETY: the caller's contract.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(counter, value) };
}
