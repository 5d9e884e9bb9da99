//! The metrics profiles declare (`workflow_executions_total`, `cache_hits_total`, ...), derived
//! from the kernel's exact per-probe stats and aggregates through each probe's rule.

use std::collections::{BTreeMap, BTreeSet};

use crate::{
    kernel_counters::{AggregateRow, FunctionStats, Snapshot},
    plan::{Plan, PlannedProbe},
    profile::{FunctionRule, MetricDef, MetricKind, Part, Template, When},
    workloads::{Labels, Workloads},
};

/// Distinct values a string label may take per metric before further ones become `other`.
pub(crate) const LABEL_VALUES_CAP: usize = 256;
pub(crate) const OTHER: &str = "other";

pub(crate) const SUCCESS: &str = "success";
pub(crate) const FAILURE: &str = "failure";
/// Calls that ended without returning (`flowtap_function_calls_total` only).
pub(crate) const UNWOUND: &str = "unwound";

/// Label values admitted so far, per metric. Kept across scrapes so that the values admitted
/// (first come, first served) stay the same series.
#[derive(Debug, Default)]
pub(crate) struct LabelCap {
    admitted: BTreeMap<String, BTreeSet<String>>,
    refused: BTreeMap<String, BTreeSet<String>>,
}

impl LabelCap {
    fn admit(&mut self, metric: &str, value: &str) -> String {
        let admitted = self.admitted.entry(metric.to_string()).or_default();
        if admitted.contains(value) {
            return value.to_string();
        }
        if admitted.len() < LABEL_VALUES_CAP {
            admitted.insert(value.to_string());
            return value.to_string();
        }
        self.refused
            .entry(metric.to_string())
            .or_default()
            .insert(value.to_string());
        OTHER.to_string()
    }

    /// Distinct values folded into `other`, per metric.
    pub(crate) fn refused(&self) -> impl Iterator<Item = (&str, u64)> + '_ {
        self.refused
            .iter()
            .map(|(metric, values)| (metric.as_str(), values.len() as u64))
    }
}

#[derive(Debug, Clone)]
pub(crate) enum Series {
    Counter(f64),
    Histogram(FunctionStats),
}

#[derive(Debug, Clone)]
pub(crate) struct Family {
    pub help: String,
    pub is_counter: bool,
    pub series: BTreeMap<Labels, Series>,
}

/// Every declared metric, by name.
#[derive(Debug, Default)]
pub(crate) struct ProfileMetrics {
    pub families: BTreeMap<String, Family>,
}

impl ProfileMetrics {
    /// Series are labelled with their cgroup's workload, and left out where it is not reported.
    pub(crate) fn derive(
        snapshot: &Snapshot,
        plan: &Plan,
        labels: &mut LabelCap,
        workloads: &dyn Workloads,
    ) -> Self {
        let mut metrics = Self::default();
        // Grouped once: the loop below visits every planned probe.
        let mut stats_of: BTreeMap<u32, BTreeMap<u64, Option<&FunctionStats>>> = BTreeMap::new();
        for stats in &snapshot.functions {
            stats_of
                .entry(stats.probe_id)
                .or_default()
                .insert(stats.cgroup, Some(stats));
        }
        let mut rows: BTreeMap<(u32, u64), Vec<&AggregateRow>> = BTreeMap::new();
        for row in &snapshot.aggregates {
            rows.entry((row.probe_id, row.cgroup))
                .or_default()
                .push(row);
        }
        for probe in &plan.probes {
            let Some(rule) = &probe.rule else {
                continue;
            };
            // Per cgroup the probe was called in; a probe not called yet shows its zeros once.
            let cgroups = stats_of
                .remove(&probe.id)
                .unwrap_or_else(|| BTreeMap::from([(0, None)]));
            for (cgroup, stats) in cgroups {
                let Some(workload) = workloads.metric_labels(cgroup) else {
                    continue;
                };
                let rows = rows.get(&(probe.id, cgroup)).map_or(&[][..], Vec::as_slice);
                for metric in &rule.metrics {
                    let family = metrics.family(metric);
                    let calls = Calls {
                        probe,
                        rule,
                        metric,
                        workload: &workload,
                    };
                    match &metric.kind {
                        MetricKind::Histogram => calls.histogram(family, stats),
                        MetricKind::Counter { .. } if metric.needs_aggregates(&rule.captures) => {
                            calls.count_aggregates(family, rows, labels)
                        }
                        MetricKind::Counter { .. } => calls.count_stats(family, stats),
                    }
                }
            }
        }
        metrics
    }

    fn family(&mut self, metric: &MetricDef) -> &mut Family {
        let family = self
            .families
            .entry(metric.name.clone())
            .or_insert_with(|| Family {
                help: String::new(),
                is_counter: matches!(metric.kind, MetricKind::Counter { .. }),
                series: BTreeMap::new(),
            });
        if family.help.is_empty() {
            family.help.clone_from(&metric.help);
        }
        family
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.families.is_empty()
    }
}

/// One metric of one probe, in one workload.
struct Calls<'a> {
    probe: &'a PlannedProbe,
    rule: &'a FunctionRule,
    metric: &'a MetricDef,
    workload: &'a Labels,
}

impl Calls<'_> {
    /// The label set, with `text` for the captured string and `failed` for `{status}`.
    fn labels(&self, text: &str, failed: bool) -> Labels {
        self.metric
            .labels
            .iter()
            .map(|(name, template)| (name.clone(), self.render(template, text, failed)))
            .chain(self.workload.iter().cloned())
            .collect()
    }

    fn render(&self, template: &Template, text: &str, failed: bool) -> String {
        template.render(|part| match part {
            Part::Capture(n) => self.rule.captures[*n].kind.cut(text).to_string(),
            Part::Status => if failed { FAILURE } else { SUCCESS }.to_string(),
            Part::Function => self.probe.function.clone(),
            Part::Literal(text) => text.clone(),
        })
    }

    fn uses_status(&self) -> bool {
        self.metric
            .labels
            .iter()
            .any(|(_, template)| template.parts.contains(&Part::Status))
    }

    fn histogram(&self, family: &mut Family, stats: Option<&FunctionStats>) {
        let Some(stats) = stats else {
            return;
        };
        match family.series.entry(self.labels("", false)) {
            std::collections::btree_map::Entry::Vacant(entry) => {
                entry.insert(Series::Histogram(stats.clone()));
            }
            std::collections::btree_map::Entry::Occupied(mut entry) => {
                if let Series::Histogram(merged) = entry.get_mut() {
                    merged.merge(stats);
                }
            }
        }
    }

    /// Counters the per-probe stats answer: calls, by status (a call that ended without
    /// returning, by longjmp or exception, failed).
    fn count_stats(&self, family: &mut Family, stats: Option<&FunctionStats>) {
        let MetricKind::Counter { when, .. } = self.metric.kind else {
            return;
        };
        let (calls, errors) = stats.map_or((0, 0), |s| (s.calls, s.errors + s.unwound));
        for (failed, count) in [(false, calls - errors), (true, errors)] {
            let counted = match when {
                When::Always => true,
                When::Ok => !failed,
                When::Error => failed,
                When::Condition(_) => false,
            };
            // Series that exist at start exist from the first scrape, at 0.
            if counted || (failed && self.uses_status()) {
                let value = if counted { count as f64 } else { 0.0 };
                add(family, self.labels("", failed), value);
            }
        }
    }

    /// Counters the kernel aggregates by outcome and captured string.
    fn count_aggregates(&self, family: &mut Family, rows: &[&AggregateRow], cap: &mut LabelCap) {
        let MetricKind::Counter { sum, scale, when } = self.metric.kind else {
            return;
        };
        let uses_text = self
            .metric
            .labels
            .iter()
            .any(|(_, template)| template.uses_text(&self.rule.captures));
        if !uses_text {
            for failed in [false, true] {
                if !failed || self.uses_status() {
                    add(family, self.labels("", failed), 0.0);
                }
            }
        }
        for row in rows {
            let failed = row.outcome & 1 != 0;
            let holds = match when {
                When::Always => true,
                When::Ok => !failed,
                When::Error => failed,
                When::Condition(n) => row.outcome & (2 << n) != 0,
            };
            if !holds {
                continue;
            }
            let text = if uses_text {
                cap.admit(&self.metric.name, &row.label)
            } else {
                String::new()
            };
            let value = match sum {
                Some(n) => row.sums[n] as f64 * scale,
                None => row.calls as f64,
            };
            add(family, self.labels(&text, failed), value);
        }
    }
}

fn add(family: &mut Family, labels: Labels, value: f64) {
    if let Series::Counter(total) = family.series.entry(labels).or_insert(Series::Counter(0.0)) {
        *total += value;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_past_the_cap_become_other_and_are_counted() {
        let mut cap = LabelCap::default();
        for n in 0..LABEL_VALUES_CAP + 10 {
            let admitted = cap.admit("routes", &format!("route-{n}"));
            let expected = if n < LABEL_VALUES_CAP {
                format!("route-{n}")
            } else {
                OTHER.to_string()
            };
            assert_eq!(admitted, expected);
        }
        // Admitted values stay admitted; refused ones are counted once each.
        assert_eq!(cap.admit("routes", "route-0"), "route-0");
        cap.admit("routes", &format!("route-{}", LABEL_VALUES_CAP + 1));
        assert_eq!(cap.refused().collect::<Vec<_>>(), [("routes", 10)]);
    }
}
