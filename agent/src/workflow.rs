//! The workflow metrics users know (`workflow_executions_total`, `cache_hits_total`, ...),
//! derived from the kernel's exact counts through the workflow runtime's semantics.

use std::collections::{BTreeMap, BTreeSet};

use crate::{
    metrics::{FunctionStats, Snapshot},
    plan::Plan,
    profile::WORKFLOW,
};

/// Distinct values a string label may take per metric before further ones become `other`.
pub const LABEL_VALUES_CAP: usize = 256;
pub const OTHER: &str = "other";

pub const SUCCESS: &str = "success";
pub const FAILURE: &str = "failure";

/// Label values admitted so far, per metric. Kept across scrapes so that the values admitted
/// (first come, first served) stay the same series.
#[derive(Debug, Default)]
pub struct LabelCap {
    admitted: BTreeMap<&'static str, BTreeSet<String>>,
    refused: BTreeMap<&'static str, BTreeSet<String>>,
}

impl LabelCap {
    fn admit(&mut self, metric: &'static str, value: &str) -> String {
        let admitted = self.admitted.entry(metric).or_default();
        if admitted.contains(value) {
            return value.to_string();
        }
        if admitted.len() < LABEL_VALUES_CAP {
            admitted.insert(value.to_string());
            return value.to_string();
        }
        self.refused
            .entry(metric)
            .or_default()
            .insert(value.to_string());
        OTHER.to_string()
    }

    /// Distinct values folded into `other`, per metric.
    pub fn refused(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        self.refused
            .iter()
            .map(|(metric, values)| (*metric, values.len() as u64))
    }
}

#[derive(Debug, Default)]
pub struct WorkflowMetrics {
    /// (workflow, status) → runs.
    pub executions: BTreeMap<(String, &'static str), u64>,
    /// (primitive, status) → calls.
    pub primitive_executions: BTreeMap<(&'static str, &'static str), u64>,
    pub primitive_durations: BTreeMap<&'static str, FunctionStats>,
    pub cache_hits: u64,
    pub cache_misses: u64,
    pub cache_evictions: u64,
    pub routes: BTreeMap<String, u64>,
    pub timeouts: u64,
    pub retry_attempts: u64,
    /// (model, kind) → tokens; kind is `prompt` or `completion`.
    pub llm_tokens: BTreeMap<(String, &'static str), u64>,
    /// model → cost in dollars.
    pub llm_cost: BTreeMap<String, f64>,
}

impl WorkflowMetrics {
    pub fn derive(snapshot: &Snapshot, plan: &Plan, labels: &mut LabelCap) -> Self {
        let mut metrics = Self::default();
        let workflow_function = |probe_id: u32| {
            plan.probes
                .get(probe_id as usize)
                .filter(|probe| probe.in_workflow_runtime)
                .map(|probe| probe.raw_name.as_str())
        };
        for stats in &snapshot.functions {
            if let Some(function) = workflow_function(stats.probe_id) {
                metrics.add_function(function, stats);
            }
        }
        for row in &snapshot.aggregates {
            let Some(function) = workflow_function(row.probe_id) else {
                continue;
            };
            let status = if row.outcome == 0 { SUCCESS } else { FAILURE };
            match function {
                "wf_workflow_run" => {
                    let workflow = labels.admit("workflow_executions_total", &row.label);
                    *metrics.executions.entry((workflow, status)).or_default() += row.calls;
                }
                "wf_router_route" => {
                    let route = labels.admit("router_route_selected_total", &row.label);
                    *metrics.routes.entry(route).or_default() += row.calls;
                }
                "wf_cache_get" => match row.outcome {
                    1 => metrics.cache_hits += row.calls,
                    0 => metrics.cache_misses += row.calls,
                    _ => {}
                },
                "wf_llm_call" => {
                    let model = labels.admit("llm_tokens_total", &row.label);
                    let [prompt, completion, cost_micros] = row.sums;
                    *metrics
                        .llm_tokens
                        .entry((model.clone(), "prompt"))
                        .or_default() += prompt;
                    *metrics
                        .llm_tokens
                        .entry((model.clone(), "completion"))
                        .or_default() += completion;
                    *metrics.llm_cost.entry(model).or_default() += cost_micros as f64 / 1e6;
                }
                _ => {}
            }
        }
        metrics
    }

    fn add_function(&mut self, function: &str, stats: &FunctionStats) {
        if let Some(primitive) = WORKFLOW.function(function).and_then(|f| f.primitive) {
            let succeeded = stats.calls - stats.errors;
            *self
                .primitive_executions
                .entry((primitive, SUCCESS))
                .or_default() += succeeded;
            *self
                .primitive_executions
                .entry((primitive, FAILURE))
                .or_default() += stats.errors;
            self.primitive_durations.insert(primitive, stats.clone());
        }
        match function {
            "wf_cache_evict" => self.cache_evictions += stats.calls,
            "wf_timeout_run" => self.timeouts += stats.errors,
            "wf_retry_attempt" => self.retry_attempts += stats.calls,
            _ => {}
        }
    }

    pub fn is_empty(&self) -> bool {
        self.primitive_executions.is_empty() && self.executions.is_empty()
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
