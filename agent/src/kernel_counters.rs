//! Reading the kernel's exact per-probe counters and histograms, summed over CPUs, into
//! per-function statistics with percentiles.

use aya::maps::{HashMap, MapError, PerCpuArray, PerCpuHashMap, PerCpuValues};
use std::collections::BTreeMap;

use flowtap_common::{
    AggregateKey, AggregateValue, Loss, MAX_SUMS, ProbeStats, StatsKey, abi::maps,
    capture::CaptureCount, histogram,
};

use crate::{loader::Probes, plan::Plan, workloads::Workloads};

#[derive(Debug, Clone)]
pub(crate) struct FunctionStats {
    pub probe_id: u32,
    /// The cgroup the calls were made in, when the kernel keeps stats per cgroup; else 0.
    pub cgroup: u64,
    pub function: String,
    pub object: String,
    /// Calls that ended: returned (timed), unwound, or counted untimed (nested too deep).
    pub calls: u64,
    /// Calls that ended without returning (longjmp, exception, thread exit): not timed.
    pub unwound: u64,
    /// Calls counted at entry but not timed, with a loss reason (nested too deep to store).
    pub untimed: u64,
    pub entered: u64,
    /// Calls entered and not ended yet.
    pub in_flight: u64,
    /// Returns of calls entered before the probes were attached: not in `entered` or `calls`.
    pub unentered_returns: u64,
    /// Of the returned calls, those the profile's error rule says failed.
    pub errors: u64,
    pub total_ns: u64,
    pub max_ns: u64,
    /// Counts per [`histogram`] bucket.
    pub buckets: Vec<u64>,
}

impl FunctionStats {
    /// Stats of these durations, as the kernel would have counted them.
    #[cfg(test)]
    pub(crate) fn from_durations(durations: &[u64]) -> Self {
        let mut buckets = vec![0; histogram::BUCKETS];
        for &d in durations {
            buckets[histogram::bucket_index(d)] += 1;
        }
        FunctionStats {
            probe_id: 0,
            cgroup: 0,
            function: "f".into(),
            object: "o".into(),
            calls: durations.len() as u64,
            unwound: 0,
            untimed: 0,
            entered: durations.len() as u64,
            in_flight: 0,
            unentered_returns: 0,
            errors: 0,
            total_ns: durations.iter().sum(),
            max_ns: durations.iter().copied().max().unwrap_or(0),
            buckets,
        }
    }

    /// Adds another function's calls, as one histogram of both.
    pub(crate) fn merge(&mut self, other: &FunctionStats) {
        self.calls += other.calls;
        self.unwound += other.unwound;
        self.untimed += other.untimed;
        self.entered += other.entered;
        self.in_flight = self.in_flight.wrapping_add(other.in_flight);
        self.unentered_returns += other.unentered_returns;
        self.errors += other.errors;
        self.total_ns += other.total_ns;
        self.max_ns = self.max_ns.max(other.max_ns);
        for (sum, count) in self.buckets.iter_mut().zip(&other.buckets) {
            *sum += count;
        }
    }

    /// Calls that returned: the histogram's count.
    pub(crate) fn returned(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// Mean of the returned calls' durations.
    pub(crate) fn mean_ns(&self) -> u64 {
        self.total_ns.checked_div(self.returned()).unwrap_or(0)
    }

    /// The `q` quantile (0..=1), interpolated inside its bucket and capped by the true maximum.
    pub(crate) fn quantile_ns(&self, q: f64) -> u64 {
        let total: u64 = self.buckets.iter().sum();
        if total == 0 {
            return 0;
        }
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut below = 0;
        for (index, &count) in self.buckets.iter().enumerate() {
            if count > 0 && below + count >= rank {
                let (lower, upper) = histogram::bucket_bounds(index);
                let fraction = (rank - below) as f64 / count as f64;
                let value = lower as f64 + (upper - lower) as f64 * fraction;
                return (value as u64).min(self.max_ns);
            }
            below += count;
        }
        self.max_ns
    }
}

/// Calls of one probe with one outcome and label (see [`flowtap_common::ProbeSpec::outcome`]).
#[derive(Debug, Clone)]
pub(crate) struct AggregateRow {
    pub probe_id: u32,
    pub cgroup: u64,
    pub outcome: i32,
    pub label: String,
    pub calls: u64,
    pub sums: [u64; MAX_SUMS],
}

/// Everything the kernel counted so far.
#[derive(Debug, Clone, Default)]
pub(crate) struct Snapshot {
    /// Functions that were called at least once, most total time first.
    pub functions: Vec<FunctionStats>,
    pub aggregates: Vec<AggregateRow>,
    pub losses: Vec<(Loss, u64)>,
    /// The byte capture's counters (all zero when no probe captures bytes).
    pub capture: Vec<(CaptureCount, u64)>,
}

impl Snapshot {
    pub(crate) fn read(probes: &Probes, plan: &Plan) -> Result<Self, MapError> {
        let mut functions = Vec::new();
        if probes.by_cgroup {
            let stats: PerCpuHashMap<_, StatsKey, ProbeStats> =
                PerCpuHashMap::try_from(probes.kernel_map(maps::STATS))?;
            for entry in stats.iter() {
                let (key, per_cpu) = entry?;
                functions.extend(function_stats(plan, key, &per_cpu));
            }
        } else {
            let stats: PerCpuArray<_, ProbeStats> =
                PerCpuArray::try_from(probes.kernel_map(maps::PROBE_STATS))?;
            for probe in &plan.probes {
                let key = StatsKey {
                    probe_id: probe.id,
                    _pad: 0,
                    cgroup: 0,
                };
                functions.extend(function_stats(plan, key, &stats.get(&probe.id, 0)?));
            }
        }
        sort_by_time(&mut functions);

        let counters: PerCpuArray<_, u64> = PerCpuArray::try_from(probes.kernel_map(maps::LOSSES))?;
        let losses = Loss::ALL
            .iter()
            .map(|&loss| Ok((loss, counters.get(&(loss as u32), 0)?.iter().sum())))
            .collect::<Result<_, MapError>>()?;
        let counters: PerCpuArray<_, u64> =
            PerCpuArray::try_from(probes.kernel_map(maps::CAPTURE_COUNTS))?;
        let capture = CaptureCount::ALL
            .iter()
            .map(|&count| Ok((count, counters.get(&(count as u32), 0)?.iter().sum())))
            .collect::<Result<_, MapError>>()?;
        Ok(Self {
            functions,
            aggregates: read_aggregates(probes)?,
            losses,
            capture,
        })
    }

    /// One entry per function, over the cgroups `workloads` reports: what the report shows.
    pub(crate) fn per_function(&self, workloads: &dyn Workloads) -> Snapshot {
        let mut merged: BTreeMap<u32, FunctionStats> = BTreeMap::new();
        let reported = self
            .functions
            .iter()
            .filter(|s| workloads.reports(s.cgroup));
        for stats in reported {
            merged
                .entry(stats.probe_id)
                .and_modify(|total| total.merge(stats))
                .or_insert_with(|| FunctionStats {
                    cgroup: 0,
                    ..stats.clone()
                });
        }
        let mut functions: Vec<FunctionStats> = merged.into_values().collect();
        sort_by_time(&mut functions);
        let aggregates = self
            .aggregates
            .iter()
            .filter(|row| workloads.reports(row.cgroup))
            // Per function: rows of every cgroup add up, as the stats do.
            .map(|row| AggregateRow {
                cgroup: 0,
                ..row.clone()
            })
            .collect();
        Snapshot {
            functions,
            aggregates,
            losses: self.losses.clone(),
            capture: self.capture.clone(),
        }
    }

    pub(crate) fn lost_events(&self) -> u64 {
        self.losses.iter().map(|(_, count)| count).sum()
    }

    /// Calls entered and not ended when tracing stopped, by function.
    pub(crate) fn in_progress(&self) -> Vec<(String, u64)> {
        let mut counts: BTreeMap<String, u64> = BTreeMap::new();
        for function in self.functions.iter().filter(|f| f.in_flight > 0) {
            *counts.entry(function.function.clone()).or_default() += function.in_flight;
        }
        counts.into_iter().collect()
    }
}

/// The stats of one probe (and cgroup), summed over CPUs; `None` when it was never called.
fn function_stats(
    plan: &Plan,
    key: StatsKey,
    per_cpu: &PerCpuValues<ProbeStats>,
) -> Option<FunctionStats> {
    let probe = plan.probes.get(key.probe_id as usize)?;
    let mut function = FunctionStats {
        probe_id: key.probe_id,
        cgroup: key.cgroup,
        function: probe.function.clone(),
        object: plan.objects[probe.object].name.clone(),
        calls: 0,
        unwound: 0,
        untimed: 0,
        entered: 0,
        in_flight: 0,
        unentered_returns: 0,
        errors: 0,
        total_ns: 0,
        max_ns: 0,
        buckets: vec![0; histogram::BUCKETS],
    };
    for cpu in per_cpu.iter() {
        function.entered += cpu.entered;
        function.unwound += cpu.unwound;
        function.untimed += cpu.untimed;
        function.unentered_returns += cpu.unentered_returns;
        function.errors += cpu.errors;
        function.total_ns += cpu.total_ns;
        function.max_ns = function.max_ns.max(cpu.max_ns);
        for (sum, count) in function.buckets.iter_mut().zip(cpu.buckets) {
            *sum += count;
        }
    }
    function.calls = function.returned() + function.unwound + function.untimed;
    // The kernel does not count calls in flight apart (see `ProbeStats`). A read while calls
    // run copies `entered` before the fields after it, so it can be short by the calls entered
    // meanwhile: never below zero.
    function.in_flight = function.entered.saturating_sub(function.calls);
    (function.entered > 0 || function.unentered_returns > 0).then_some(function)
}

/// Most total time first.
fn sort_by_time(functions: &mut [FunctionStats]) {
    functions.sort_by(|a, b| {
        b.total_ns
            .cmp(&a.total_ns)
            .then(a.function.cmp(&b.function))
    });
}

fn read_aggregates(probes: &Probes) -> Result<Vec<AggregateRow>, MapError> {
    let map: HashMap<_, AggregateKey, AggregateValue> =
        HashMap::try_from(probes.kernel_map(maps::AGGREGATES))?;
    map.iter()
        .map(|entry| {
            let (key, value) = entry?;
            let end = key
                .label
                .iter()
                .position(|&b| b == 0)
                .unwrap_or(key.label.len());
            Ok(AggregateRow {
                probe_id: key.probe_id,
                cgroup: key.cgroup,
                outcome: key.outcome,
                label: String::from_utf8_lossy(&key.label[..end]).into_owned(),
                calls: value.calls,
                sums: value.sums,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_within_five_percent() {
        // A spread from 1 µs to 100 ms, as a real function shows.
        let durations: Vec<u64> = (1..=10_000u64).map(|i| i * i).collect();
        let stats = FunctionStats::from_durations(&durations);
        for q in [0.5, 0.95, 0.99] {
            let exact = durations[(q * durations.len() as f64).ceil() as usize - 1] as f64;
            let estimate = stats.quantile_ns(q) as f64;
            assert!(
                (estimate - exact).abs() / exact < 0.05,
                "q{q}: {estimate} vs {exact}"
            );
        }
    }

    #[test]
    fn empty_stats_have_zero_quantiles() {
        assert_eq!(FunctionStats::from_durations(&[]).quantile_ns(0.5), 0);
        assert_eq!(FunctionStats::from_durations(&[]).mean_ns(), 0);
    }
}
