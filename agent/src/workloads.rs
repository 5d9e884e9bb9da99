//! Workload metadata: where a traced process or cgroup runs, as span resource attributes and
//! metric labels, and whether its calls are reported at all. Spans, metrics and the report ask
//! this one seam; Kubernetes is one implementation, and without it nothing is added.

use opentelemetry::KeyValue;

/// Metric labels, as (name, value) pairs.
pub(crate) type Labels = Vec<(String, String)>;

pub(crate) trait Workloads: Send + Sync {
    /// Extra resource attributes of process `pid`, whose spans came from cgroup `cgroup` (0
    /// when not known): the process may be gone by the time its spans are read.
    fn resource_attributes(&self, pid: u32, cgroup: u64) -> Vec<KeyValue>;

    /// The labels of the workload in cgroup `cgroup` (0: not known), or None when its calls are
    /// not reported.
    fn metric_labels(&self, cgroup: u64) -> Option<Labels>;

    /// Whether the calls made in cgroup `cgroup` are reported.
    fn reports(&self, cgroup: u64) -> bool {
        self.metric_labels(cgroup).is_some()
    }

    /// Whether the kernel should keep its counts apart per cgroup, for these labels to apply.
    fn per_cgroup(&self) -> bool;
}

/// No workload metadata: every call is reported, with nothing added.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct NoWorkloads;

impl Workloads for NoWorkloads {
    fn resource_attributes(&self, _pid: u32, _cgroup: u64) -> Vec<KeyValue> {
        Vec::new()
    }

    fn metric_labels(&self, _cgroup: u64) -> Option<Labels> {
        Some(Vec::new())
    }

    fn reports(&self, _cgroup: u64) -> bool {
        true
    }

    fn per_cgroup(&self) -> bool {
        false
    }
}
