//! The pods of this node, from the API server's pod list, indexed by container id and pod UID.

use std::{
    collections::{BTreeMap, HashMap},
    path::Path,
    time::Duration,
};

use serde::Deserialize;

use super::KubeError;

#[derive(Debug, Deserialize)]
struct PodList {
    #[serde(default)]
    items: Vec<Pod>,
}

/// The parts of a `v1.Pod` flowtap uses.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct Pod {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: PodSpec,
    #[serde(default)]
    pub status: PodStatus,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct ObjectMeta {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PodSpec {
    pub node_name: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PodStatus {
    #[serde(default)]
    pub container_statuses: Vec<ContainerStatus>,
    #[serde(default)]
    pub init_container_statuses: Vec<ContainerStatus>,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct ContainerStatus {
    pub name: String,
    /// `containerd://<id>`, `cri-o://<id>`, `docker://<id>`; absent until the container starts.
    #[serde(rename = "containerID")]
    pub container_id: Option<String>,
}

impl Pod {
    /// (container id without its runtime scheme, container name) of every started container.
    fn containers(&self) -> impl Iterator<Item = (&str, &str)> {
        self.status
            .container_statuses
            .iter()
            .chain(&self.status.init_container_statuses)
            .filter_map(|status| {
                let id = status.container_id.as_deref()?;
                let id = id.split_once("://").map_or(id, |(_, id)| id);
                (!id.is_empty()).then_some((id, status.name.as_str()))
            })
    }
}

/// One pod list, with lookups by container id and by pod UID.
#[derive(Debug, Default)]
pub(crate) struct PodIndex {
    pods: Vec<Pod>,
    by_container: HashMap<String, (usize, String)>,
    by_uid: HashMap<String, usize>,
}

impl PodIndex {
    pub(crate) fn new(pods: Vec<Pod>) -> Self {
        let mut by_container = HashMap::new();
        let mut by_uid = HashMap::new();
        for (i, pod) in pods.iter().enumerate() {
            by_uid.insert(pod.metadata.uid.clone(), i);
            for (id, name) in pod.containers() {
                by_container.insert(id.to_string(), (i, name.to_string()));
            }
        }
        Self {
            pods,
            by_container,
            by_uid,
        }
    }

    /// The pod and the container's name.
    pub(crate) fn by_container(&self, container_id: &str) -> Option<(&Pod, &str)> {
        let (i, name) = self.by_container.get(container_id)?;
        Some((&self.pods[*i], name))
    }

    pub(crate) fn by_uid(&self, uid: &str) -> Option<&Pod> {
        self.by_uid.get(uid).map(|i| &self.pods[*i])
    }
}

/// Where the API server is and how to authenticate to it.
#[derive(Debug, Clone)]
pub(crate) struct ApiServer {
    base: String,
    token: Option<String>,
    ca: Option<Vec<u8>>,
}

/// The files a pod's service account is mounted as.
const SERVICE_ACCOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// A pod list of a busy node is a few MB; a slow API server should not stall the spans long.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

impl ApiServer {
    /// `url` (e.g. `kubectl proxy`'s http://127.0.0.1:8001) or, without it, the in-cluster
    /// address from `KUBERNETES_SERVICE_HOST`/`_PORT`. The service account's token and CA are
    /// used whenever they are mounted.
    pub(crate) fn locate(url: Option<&str>) -> Result<Self, KubeError> {
        let base = match url {
            Some(url) => url.trim_end_matches('/').to_string(),
            None => in_cluster_url()?,
        };
        let dir = Path::new(SERVICE_ACCOUNT);
        Ok(Self {
            base,
            token: read_optional(&dir.join("token"))?.map(|t| t.trim().to_string()),
            ca: read_optional(&dir.join("ca.crt"))?.map(String::into_bytes),
        })
    }

    /// Node names are DNS subdomains (lowercase letters, digits, `-`, `.`): nothing to escape.
    fn pods_url(&self, node: Option<&str>) -> String {
        match node {
            Some(node) => format!(
                "{}/api/v1/pods?fieldSelector=spec.nodeName%3D{node}",
                self.base
            ),
            None => format!("{}/api/v1/pods", self.base),
        }
    }

    /// The pods on `node` (every pod when no node is given).
    pub(crate) fn list_pods(&self, node: Option<&str>) -> Result<Vec<Pod>, KubeError> {
        let url = self.pods_url(node);
        let client = self.client()?;
        let token = self.token.clone();
        // Called from inside the agent's event loop, which cannot block on another future: the
        // request gets a thread and a loop of its own. Refreshes are rare (rate-limited).
        let body = std::thread::scope(|scope| {
            scope
                .spawn(|| get(&client, &url, token.as_deref()))
                .join()
                .unwrap_or(Err(KubeError::Internal("the pod list request panicked")))
        })?;
        let list: PodList =
            serde_json::from_slice(&body).map_err(|source| KubeError::BadPodList {
                url: url.clone(),
                source,
            })?;
        Ok(list.items)
    }

    fn client(&self) -> Result<reqwest::Client, KubeError> {
        // reqwest is built without a default crypto provider; main installs it, and this covers
        // library users (the tests). A second install is refused harmlessly.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut builder = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            // Each request runs on a short-lived event loop: pooled connections would outlive it.
            .pool_max_idle_per_host(0);
        if let Some(ca) = &self.ca {
            let certificates =
                reqwest::Certificate::from_pem_bundle(ca).map_err(KubeError::BadCa)?;
            builder = builder.tls_certs_only(certificates);
        }
        builder.build().map_err(KubeError::Client)
    }
}

fn get(client: &reqwest::Client, url: &str, token: Option<&str>) -> Result<Vec<u8>, KubeError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|_| KubeError::Internal("cannot start an event loop for the pod list"))?;
    runtime.block_on(async {
        let mut request = client.get(url).header("Accept", "application/json");
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let request_error = |source: reqwest::Error| KubeError::Request {
            url: url.to_string(),
            source,
        };
        let response = request.send().await.map_err(request_error)?;
        let status = response.status();
        let body = response.bytes().await.map_err(request_error)?;
        if !status.is_success() {
            return Err(KubeError::Status {
                url: url.to_string(),
                status: status.to_string(),
                message: api_message(&body),
            });
        }
        Ok(body.to_vec())
    })
}

/// reqwest's own message names only the step ("error sending request"); the causes say why.
pub(super) fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(error) = cause {
        text.push_str(": ");
        text.push_str(&error.to_string());
        cause = error.source();
    }
    text
}

/// The `message` of the API server's `v1.Status` error body, else the start of the body.
fn api_message(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Status {
        message: String,
    }
    serde_json::from_slice::<Status>(body)
        .map(|status| status.message)
        .unwrap_or_else(|_| String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned())
}

fn in_cluster_url() -> Result<String, KubeError> {
    let var = |name| std::env::var(name).ok().filter(|v: &String| !v.is_empty());
    let (Some(host), Some(port)) = (
        var("KUBERNETES_SERVICE_HOST"),
        var("KUBERNETES_SERVICE_PORT"),
    ) else {
        return Err(KubeError::NotInCluster);
    };
    // An IPv6 service address needs brackets in a URL.
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host
    };
    Ok(format!("https://{host}:{port}"))
}

fn read_optional(path: &Path) -> Result<Option<String>, KubeError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(KubeError::ServiceAccount {
            path: path.to_path_buf(),
            source,
        }),
    }
}
