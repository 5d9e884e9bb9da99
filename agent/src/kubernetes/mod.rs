//! Kubernetes metadata: which pod and container a traced process runs in (from its cgroup and
//! the API server's pod list), as OpenTelemetry `k8s.*` resource attributes, and a pod selector
//! (namespace and labels) that picks the process to trace.

pub(crate) mod cgroup;
pub(crate) mod pods;

use std::{
    collections::HashMap,
    num::NonZeroU32,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    str::FromStr,
    sync::Mutex,
    time::{Duration, Instant},
};

use opentelemetry::KeyValue;

use crate::workloads::{Labels, Workloads};
use pods::{ApiServer, Pod, PodIndex};

#[derive(Debug, thiserror::Error)]
pub(crate) enum KubeError {
    #[error(
        "KUBERNETES_SERVICE_HOST/KUBERNETES_SERVICE_PORT are not set (not in a pod): give the API server with --k8s-api URL, e.g. from `kubectl proxy`"
    )]
    NotInCluster,
    #[error("cannot read the service account's {path}: {source}")]
    ServiceAccount {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the service account's ca.crt is not a PEM certificate bundle: {0}")]
    BadCa(#[source] reqwest::Error),
    #[error("cannot set up the HTTP client for the API server: {0}")]
    Client(#[source] reqwest::Error),
    #[error(
        "cannot reach the Kubernetes API server at {url}: {}",
        pods::with_causes(.source)
    )]
    Request { url: String, source: reqwest::Error },
    #[error(
        "the Kubernetes API server answered {status} to GET {url}: {message} (flowtap's service account needs `list` on `pods`)"
    )]
    Status {
        url: String,
        status: String,
        message: String,
    },
    #[error("the Kubernetes API server's answer to GET {url} is not a pod list: {source}")]
    BadPodList {
        url: String,
        source: serde_json::Error,
    },
    #[error(
        "no running container on this node is in a pod matching {selector}: check with `kubectl get pods {selector_args}`"
    )]
    NoMatch {
        selector: String,
        selector_args: String,
    },
    #[error(
        "no process of `{exe}` runs in a pod matching {selector} on this node: give the executable's path inside the container, or its file name"
    )]
    NoExecutable { exe: String, selector: String },
    #[error(
        "{count} containers match {selector} ({examples}): narrow --k8s-selector, or trace by --exe"
    )]
    ManyMatches {
        count: usize,
        selector: String,
        examples: String,
    },
    #[error("internal error: {0}")]
    Internal(&'static str),
}

/// What `flowtap run` asks of Kubernetes: none of it, by default.
#[derive(Debug, Clone, Default)]
pub(crate) struct KubernetesConfig {
    /// Trace pods of this namespace on this node.
    pub namespace: Option<String>,
    /// Trace pods these labels pick.
    pub selector: Option<LabelSelector>,
    /// This node's name, to list only its pods.
    pub node: Option<String>,
    /// The API server; default: the in-cluster address.
    pub api: Option<String>,
}

/// Equality-based label requirements, as `kubectl -l` takes them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct LabelSelector(pub Vec<LabelRequirement>);

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LabelRequirement {
    pub key: String,
    pub value: String,
    pub equal: bool,
}

impl FromStr for LabelSelector {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        text.split(',')
            .map(|term| {
                let term = term.trim();
                let (key, value, equal) = if let Some((k, v)) = term.split_once("!=") {
                    (k, v, false)
                } else if let Some((k, v)) = term.split_once("==") {
                    (k, v, true)
                } else if let Some((k, v)) = term.split_once('=') {
                    (k, v, true)
                } else {
                    return Err(format!(
                        "`{term}` is not a label requirement: use key=value or key!=value, comma-separated"
                    ));
                };
                let (key, value) = (key.trim(), value.trim());
                if key.is_empty() || value.contains(['=', '!']) {
                    return Err(format!(
                        "`{term}` is not a label requirement: use key=value or key!=value, comma-separated"
                    ));
                }
                Ok(LabelRequirement {
                    key: key.to_string(),
                    value: value.to_string(),
                    equal,
                })
            })
            .collect::<Result<_, _>>()
            .map(LabelSelector)
    }
}

/// Which pods to trace: a namespace, labels, or both.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct PodSelector {
    pub namespace: Option<String>,
    pub labels: LabelSelector,
}

impl PodSelector {
    pub(crate) fn matches(&self, pod: &Pod) -> bool {
        let namespace = self
            .namespace
            .as_ref()
            .is_none_or(|ns| *ns == pod.metadata.namespace);
        namespace
            && self.labels.0.iter().all(|requirement| {
                // As in Kubernetes, `key!=value` also holds for pods without the label.
                let value = pod.metadata.labels.get(&requirement.key);
                (value == Some(&requirement.value)) == requirement.equal
            })
    }

    fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(ns) = &self.namespace {
            parts.push(format!("namespace {ns}"));
        }
        if !self.labels.0.is_empty() {
            parts.push(format!("labels {}", self.labels_text()));
        }
        parts.join(" and ")
    }

    fn labels_text(&self) -> String {
        let terms: Vec<String> = self
            .labels
            .0
            .iter()
            .map(|r| format!("{}{}{}", r.key, if r.equal { "=" } else { "!=" }, r.value))
            .collect();
        terms.join(",")
    }

    fn kubectl_args(&self) -> String {
        let namespace = self
            .namespace
            .as_ref()
            .map_or_else(|| "--all-namespaces".to_string(), |ns| format!("-n {ns}"));
        if self.labels.0.is_empty() {
            namespace
        } else {
            format!("{namespace} -l {}", self.labels_text())
        }
    }
}

/// Where a process runs in the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PodMetadata {
    pub namespace: String,
    pub pod_name: String,
    pub pod_uid: String,
    /// Unknown when the pod was found by UID but its status does not list the container yet.
    pub container_name: Option<String>,
    pub node_name: Option<String>,
}

impl PodMetadata {
    fn new(pod: &Pod, container_name: Option<&str>, node: Option<&str>) -> Self {
        Self {
            namespace: pod.metadata.namespace.clone(),
            pod_name: pod.metadata.name.clone(),
            pod_uid: pod.metadata.uid.clone(),
            container_name: container_name.map(str::to_string),
            node_name: pod.spec.node_name.as_deref().or(node).map(str::to_string),
        }
    }

    /// The OpenTelemetry semantic-convention `k8s.*` resource attributes.
    pub(crate) fn resource_attributes(&self) -> Vec<KeyValue> {
        let mut attributes = vec![
            KeyValue::new("k8s.namespace.name", self.namespace.clone()),
            KeyValue::new("k8s.pod.name", self.pod_name.clone()),
            KeyValue::new("k8s.pod.uid", self.pod_uid.clone()),
        ];
        if let Some(container) = &self.container_name {
            attributes.push(KeyValue::new("k8s.container.name", container.clone()));
        }
        if let Some(node) = &self.node_name {
            attributes.push(KeyValue::new("k8s.node.name", node.clone()));
        }
        attributes
    }

    /// The same as Prometheus labels (`k8s_namespace_name`, ...: no dots in label names).
    pub(crate) fn metric_labels(&self) -> Vec<(String, String)> {
        self.resource_attributes()
            .into_iter()
            .map(|kv| (kv.key.as_str().replace('.', "_"), kv.value.to_string()))
            .collect()
    }
}

/// At most one pod list refresh per this long, however many unknown containers show up.
const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(10);

/// The pods of this node, refreshed when a process's container is not in the cached list.
pub(crate) struct Kubernetes {
    api: ApiServer,
    node: Option<String>,
    index: PodIndex,
    /// None until the first refresh: a container started just after flowtap is looked up at once.
    refreshed: Option<Instant>,
    proc_root: PathBuf,
    warned: bool,
    /// Looked up ahead of their spans: a process may be gone by the time they are read.
    early: HashMap<u32, Option<PodMetadata>>,
    /// cgroup v2 ids (the kernel's per-cgroup stats keys) → the container their path names.
    cgroups: HashMap<u64, Option<cgroup::ContainerCgroup>>,
    /// The cgroup v2 hierarchy, whose directories' inode numbers are the cgroup ids.
    cgroup_root: Option<PathBuf>,
    cgroups_scanned: Option<Instant>,
    /// When set, only pods it matches are reported (spans and metrics of others are left out).
    selector: Option<PodSelector>,
}

/// Where a process or cgroup runs, as far as reporting goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Workload {
    /// Not in a known pod (and no pod selector): reported without pod metadata.
    Unlabelled,
    Pod(PodMetadata),
    /// Outside the pods the selector picks: not reported.
    Excluded,
}

impl KubernetesConfig {
    /// Whether any Kubernetes flag (or FLOWTAP_NODE_NAME) asks for Kubernetes metadata.
    fn wanted(&self) -> bool {
        self.namespace.is_some()
            || self.selector.is_some()
            || self.node.is_some()
            || self.api.is_some()
    }

    pub(crate) fn pod_selector(&self) -> Option<PodSelector> {
        (self.namespace.is_some() || self.selector.is_some()).then(|| PodSelector {
            namespace: self.namespace.clone(),
            labels: self.selector.clone().unwrap_or_default(),
        })
    }

    /// Lists the node's pods once, so that a wrong address or missing permission fails now.
    pub(crate) fn connect(&self) -> Result<Option<Kubernetes>, KubeError> {
        if !self.wanted() {
            return Ok(None);
        }
        let api = ApiServer::locate(self.api.as_deref())?;
        Kubernetes::new(api, self.node.clone(), PathBuf::from("/proc")).map(Some)
    }
}

impl Kubernetes {
    pub(crate) fn new(
        api: ApiServer,
        node: Option<String>,
        proc_root: PathBuf,
    ) -> Result<Self, KubeError> {
        let index = PodIndex::new(api.list_pods(node.as_deref())?);
        Ok(Self {
            api,
            node,
            index,
            refreshed: None,
            proc_root,
            warned: false,
            early: HashMap::new(),
            cgroups: HashMap::new(),
            cgroup_root: cgroup_v2_mount(Path::new("/proc/self/mountinfo")),
            cgroups_scanned: None,
            selector: None,
        })
    }

    /// Reports only pods `selector` matches from now on.
    pub(crate) fn restrict_to(&mut self, selector: PodSelector) {
        self.selector = Some(selector);
    }

    /// How to report the calls counted under cgroup `id`.
    pub(crate) fn workload_of_cgroup(&mut self, id: u64) -> Workload {
        let container = if id == 0 {
            None
        } else {
            if !self.cgroups.contains_key(&id) {
                self.scan_cgroups();
            }
            self.cgroups.get(&id).cloned().flatten()
        };
        self.workload_of(container.as_ref())
    }

    fn workload_of(&mut self, container: Option<&cgroup::ContainerCgroup>) -> Workload {
        let pod = container.and_then(|c| self.pod_of_container(c));
        let Some(selector) = &self.selector else {
            return pod.map_or(Workload::Unlabelled, Workload::Pod);
        };
        let selected = container
            .and_then(|c| self.index.by_container(&c.container_id))
            .is_some_and(|(pod, _)| selector.matches(pod));
        match pod {
            Some(pod) if selected => Workload::Pod(pod),
            _ => Workload::Excluded,
        }
    }

    /// `/proc/PID/root/...` of the executable `exe` (a path inside the container, or a file
    /// name) of the first process running it in a pod `selector` matches: binary mode on it
    /// traces every process of that file.
    pub(crate) fn select_executable(
        &self,
        selector: &PodSelector,
        exe: &Path,
    ) -> Result<PathBuf, KubeError> {
        let mut candidates: Vec<(u32, PathBuf)> = self
            .containers_on_node()
            .into_iter()
            .filter(|(_, container)| {
                self.index
                    .by_container(container)
                    .is_some_and(|(pod, _)| selector.matches(pod))
            })
            .filter_map(|(pid, _)| {
                let path = std::fs::read_link(self.proc_root.join(format!("{pid}/exe"))).ok()?;
                let named = if exe.components().count() > 1 {
                    path == exe
                } else {
                    path.file_name() == Some(exe.as_os_str())
                };
                named.then_some((pid, path))
            })
            .collect();
        candidates.sort();
        let (pid, path) = candidates
            .into_iter()
            .next()
            .ok_or_else(|| KubeError::NoExecutable {
                exe: exe.display().to_string(),
                selector: selector.describe(),
            })?;
        let inside = path.strip_prefix("/").unwrap_or(&path);
        Ok(self.proc_root.join(format!("{pid}/root")).join(inside))
    }

    /// The pod and container of process `pid`; None outside a container or a known pod.
    pub(crate) fn pod_of(&mut self, pid: u32) -> Option<PodMetadata> {
        let text = std::fs::read_to_string(self.proc_root.join(format!("{pid}/cgroup"))).ok()?;
        let container = cgroup::parse(&text)?;
        self.pod_of_container(&container)
    }

    /// Maps every cgroup directory's id to the container its path names: a cgroup the kernel
    /// reports exists already. A local walk, but bounded to once per [`MIN_CGROUP_SCAN`].
    fn scan_cgroups(&mut self) {
        if self
            .cgroups_scanned
            .is_some_and(|at| at.elapsed() < MIN_CGROUP_SCAN)
        {
            return;
        }
        self.cgroups_scanned = Some(Instant::now());
        let Some(root) = self.cgroup_root.clone() else {
            return;
        };
        let mut pending = vec![(root.clone(), 0)];
        while let Some((dir, depth)) = pending.pop() {
            let Ok(metadata) = std::fs::metadata(&dir) else {
                continue;
            };
            let path = dir.strip_prefix(&root).unwrap_or(&dir).to_string_lossy();
            let container = cgroup::parse(&format!("0::/{path}"));
            self.cgroups.insert(metadata.ino(), container);
            if depth >= MAX_CGROUP_DEPTH {
                continue;
            }
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    pending.push((entry.path(), depth + 1));
                }
            }
        }
    }

    fn pod_of_container(&mut self, container: &cgroup::ContainerCgroup) -> Option<PodMetadata> {
        if self.index.by_container(&container.container_id).is_none() {
            self.refresh();
        }
        let node = self.node.as_deref();
        if let Some((pod, name)) = self.index.by_container(&container.container_id) {
            return Some(PodMetadata::new(pod, Some(name), node));
        }
        let pod = self.index.by_uid(container.pod_uid.as_deref()?)?;
        Some(PodMetadata::new(pod, None, node))
    }

    /// The `k8s.*` resource attributes of process `pid` (none when it is in no known pod),
    /// found through its cgroup `cgroup` (0: unknown) when the process is gone.
    pub(crate) fn resource_attributes(&mut self, pid: u32, cgroup: u64) -> Vec<KeyValue> {
        let pod = match self.early.remove(&pid) {
            Some(pod) => pod,
            None => self
                .pod_of(pid)
                .or_else(|| match self.workload_of_cgroup(cgroup) {
                    Workload::Pod(pod) => Some(pod),
                    Workload::Unlabelled | Workload::Excluded => None,
                }),
        };
        pod.map(|pod| pod.resource_attributes()).unwrap_or_default()
    }

    /// A new pod list, at most once per [`MIN_REFRESH_INTERVAL`]; a failure is reported once and
    /// keeps the old list, so spans keep flowing without the metadata.
    fn refresh(&mut self) {
        if self
            .refreshed
            .is_some_and(|at| at.elapsed() < MIN_REFRESH_INTERVAL)
        {
            return;
        }
        self.refreshed = Some(Instant::now());
        match self.api.list_pods(self.node.as_deref()) {
            Ok(pods) => self.index = PodIndex::new(pods),
            Err(error) if !self.warned => {
                self.warned = true;
                eprintln!("flowtap: warning: keeping the previous pod list: {error}");
            }
            Err(_) => {}
        }
    }

    /// The PID to trace for `selector`: the first process (lowest PID) of the one running
    /// container whose pod matches.
    pub(crate) fn select_pid(&self, selector: &PodSelector) -> Result<u32, KubeError> {
        let mut matches: Vec<(&Pod, &str, u32)> = Vec::new();
        for (pid, container) in self.containers_on_node() {
            let Some((pod, name)) = self.index.by_container(&container) else {
                continue;
            };
            if !selector.matches(pod) {
                continue;
            }
            let same =
                |m: &&mut (&Pod, &str, u32)| m.0.metadata.uid == pod.metadata.uid && m.1 == name;
            match matches.iter_mut().find(same) {
                Some(found) => found.2 = found.2.min(pid),
                None => matches.push((pod, name, pid)),
            }
        }
        match matches.as_slice() {
            [(_, _, pid)] => Ok(*pid),
            [] => Err(KubeError::NoMatch {
                selector: selector.describe(),
                selector_args: selector.kubectl_args(),
            }),
            many => Err(KubeError::ManyMatches {
                count: many.len(),
                selector: selector.describe(),
                examples: many
                    .iter()
                    .take(3)
                    .map(|(pod, name, _)| {
                        format!("{}/{}/{name}", pod.metadata.namespace, pod.metadata.name)
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }

    /// (pid, container id) of every process in a container, from `/proc`.
    fn containers_on_node(&self) -> Vec<(u32, String)> {
        let Ok(entries) = std::fs::read_dir(&self.proc_root) else {
            return Vec::new();
        };
        entries
            .filter_map(|entry| {
                let pid: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
                let text =
                    std::fs::read_to_string(self.proc_root.join(format!("{pid}/cgroup"))).ok()?;
                Some((pid, cgroup::parse(&text)?.container_id))
            })
            .collect()
    }
}

/// At most one walk of the cgroup hierarchy per this long.
const MIN_CGROUP_SCAN: Duration = Duration::from_secs(1);

/// Cgroup directories deeper than this are not looked at (kubelet's are 4 to 6 deep).
const MAX_CGROUP_DEPTH: usize = 8;

/// The pods of this node as the [`Workloads`] of spans, metrics and the report.
pub(crate) struct PodWorkloads {
    cluster: Mutex<Kubernetes>,
}

impl PodWorkloads {
    /// The `target` process is looked up now: it may have exited before its spans are read.
    pub(crate) fn new(mut cluster: Kubernetes, target: Option<NonZeroU32>) -> Self {
        if let Some(pid) = target.map(NonZeroU32::get) {
            let pod = cluster.pod_of(pid);
            cluster.early.insert(pid, pod);
        }
        Self {
            cluster: Mutex::new(cluster),
        }
    }

    fn workload_of_cgroup(&self, cgroup: u64) -> Workload {
        self.cluster
            .lock()
            .expect("kubernetes lock")
            .workload_of_cgroup(cgroup)
    }
}

impl Workloads for PodWorkloads {
    fn resource_attributes(&self, pid: u32, cgroup: u64) -> Vec<KeyValue> {
        self.cluster
            .lock()
            .expect("kubernetes lock")
            .resource_attributes(pid, cgroup)
    }

    fn metric_labels(&self, cgroup: u64) -> Option<Labels> {
        match self.workload_of_cgroup(cgroup) {
            Workload::Unlabelled => Some(Vec::new()),
            Workload::Pod(pod) => Some(pod.metric_labels()),
            Workload::Excluded => None,
        }
    }

    fn reports(&self, cgroup: u64) -> bool {
        self.workload_of_cgroup(cgroup) != Workload::Excluded
    }

    /// Per-pod metrics: the kernel keeps stats per cgroup, which this maps to pods.
    fn per_cgroup(&self) -> bool {
        true
    }
}

/// Where the cgroup v2 hierarchy is mounted (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on
/// hybrid hosts), from a mountinfo file.
fn cgroup_v2_mount(mountinfo: &Path) -> Option<PathBuf> {
    std::fs::read_to_string(mountinfo)
        .ok()?
        .lines()
        .find_map(|line| {
            let (mount, filesystem) = line.split_once(" - ")?;
            let point = mount.split_whitespace().nth(4)?;
            filesystem
                .starts_with("cgroup2 ")
                .then(|| PathBuf::from(point))
        })
}

#[cfg(test)]
mod tests;
