use std::{
    io::{Read, Write},
    net::TcpListener,
    path::Path,
    sync::{Arc, Mutex},
};

use super::*;

const WORKER_ID: &str = "acb62391578595ec849d87d8556369cee7f935f0425097fd5f870df0e8aabd3c";
const MIGRATE_ID: &str = "6c1e0f0b4a3d2c1b0a99887766554433221100ffeeddccbbaa99887766554433";

fn testdata(name: &str) -> String {
    let path = format!(
        "{}/src/kubernetes/testdata/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// A stand-in for the API server: answers every request with `status` and `body`, and keeps
/// each request's first line.
struct Stub {
    url: String,
    requests: Arc<Mutex<Vec<String>>>,
}

fn stub(status: u16, body: String) -> Stub {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let requests = Arc::new(Mutex::new(Vec::new()));
    let seen = requests.clone();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().map_while(Result::ok) {
            let mut request = Vec::new();
            let mut buffer = [0; 4096];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buffer) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buffer[..n]),
                }
            }
            let text = String::from_utf8_lossy(&request);
            seen.lock()
                .unwrap()
                .push(text.lines().next().unwrap_or_default().to_string());
            let _ = write!(
                stream,
                "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    Stub { url, requests }
}

impl Stub {
    fn count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }
}

/// A `/proc` with one `<pid>/cgroup` per entry.
fn fake_proc(test: &str, processes: &[(u32, &str)]) -> PathBuf {
    let root = std::env::temp_dir().join(format!("flowtap-k8s-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    for (pid, cgroup) in processes {
        std::fs::create_dir_all(root.join(pid.to_string())).unwrap();
        std::fs::write(root.join(format!("{pid}/cgroup")), cgroup).unwrap();
    }
    root
}

fn connect(stub: &Stub, proc_root: &Path) -> Result<Kubernetes, KubeError> {
    let api = ApiServer::locate(Some(&stub.url))?;
    Kubernetes::new(api, Some("node-a".into()), proc_root.to_path_buf())
}

fn worker_in_pod(container_id: &str) -> String {
    format!(
        "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-poddde1244b_5bb5_4297_b544_85f3bc0d80bf.slice/cri-containerd-{container_id}.scope\n"
    )
}

#[test]
fn a_process_maps_to_its_pod_and_container_by_container_id() {
    let api = stub(200, testdata("podlist.json"));
    let proc_root = fake_proc(
        "by-id",
        &[
            (101, &testdata("containerd-systemd-v2-burstable.cgroup")),
            (102, &worker_in_pod(MIGRATE_ID)),
            (301, &testdata("docker-systemd-hybrid-guaranteed.cgroup")),
        ],
    );
    let mut kubernetes = connect(&api, &proc_root).unwrap();
    assert_eq!(
        kubernetes.pod_of(101),
        Some(PodMetadata {
            namespace: "flows".into(),
            pod_name: "workflow-worker-7d9f8b6c5d-x2k8p".into(),
            pod_uid: "dde1244b-5bb5-4297-b544-85f3bc0d80bf".into(),
            container_name: Some("worker".into()),
            node_name: Some("node-a".into()),
        })
    );
    let init = kubernetes.pod_of(102).unwrap();
    assert_eq!(init.container_name.as_deref(), Some("migrate"));
    let docker = kubernetes.pod_of(301).unwrap();
    assert_eq!(
        (docker.namespace.as_str(), docker.container_name.as_deref()),
        ("default", Some("nginx"))
    );
    // All found in the first list: no refresh.
    assert_eq!(api.count(), 1);
    let requests = api.requests.lock().unwrap();
    assert!(
        requests[0].starts_with("GET /api/v1/pods?fieldSelector=spec.nodeName%3Dnode-a "),
        "{requests:?}"
    );
}

#[test]
fn a_container_not_listed_yet_falls_back_to_its_pod_uid() {
    let api = stub(200, testdata("podlist.json"));
    let proc_root = fake_proc(
        "by-uid",
        &[(7, &testdata("containerd-cgroupfs-v2-burstable.cgroup"))],
    );
    let mut kubernetes = connect(&api, &proc_root).unwrap();
    let pod = kubernetes.pod_of(7).unwrap();
    assert_eq!(pod.pod_name, "starting-up");
    assert_eq!(pod.container_name, None);
    // The container was unknown, so the list was fetched again once.
    assert_eq!(api.count(), 2);
}

#[test]
fn an_unknown_container_refreshes_the_list_once_then_is_in_no_pod() {
    let api = stub(200, testdata("podlist.json"));
    let unknown = "f".repeat(64);
    let proc_root = fake_proc(
        "unknown",
        &[
            (
                8,
                &format!(
                    "0::/kubepods/besteffort/pod11111111-2222-3333-4444-555555555555/{unknown}\n"
                ),
            ),
            (9, &testdata("host-user-slice-v2.cgroup")),
        ],
    );
    let mut kubernetes = connect(&api, &proc_root).unwrap();
    assert_eq!(kubernetes.pod_of(8), None);
    assert_eq!(api.count(), 2);
    // Rate-limited: a second miss right after does not ask again.
    assert_eq!(kubernetes.pod_of(8), None);
    assert_eq!(api.count(), 2);
    // A host process is in no container: nothing to ask.
    assert_eq!(kubernetes.pod_of(9), None);
    assert!(kubernetes.resource_attributes(9, 0).is_empty());
    assert_eq!(kubernetes.pod_of(4_000_000), None);
    assert_eq!(api.count(), 2);
}

#[test]
fn an_api_error_says_what_the_server_answered() {
    let forbidden = r#"{"kind":"Status","apiVersion":"v1","status":"Failure","message":"pods is forbidden: User \"system:serviceaccount:obs:flowtap\" cannot list resource \"pods\" in API group \"\" at the cluster scope","reason":"Forbidden","code":403}"#;
    let api = stub(403, forbidden.to_string());
    let error = connect(&api, Path::new("/nonexistent")).err().unwrap();
    let text = error.to_string();
    assert!(matches!(error, KubeError::Status { .. }), "{text}");
    assert!(
        text.contains("403 Forbidden")
            && text.contains("cannot list resource \"pods\"")
            && text.contains("needs `list` on `pods`"),
        "{text}"
    );
}

#[test]
fn a_body_that_is_not_a_pod_list_is_an_error() {
    let api = stub(200, "<html>login</html>".to_string());
    let error = connect(&api, Path::new("/nonexistent")).err().unwrap();
    assert!(matches!(error, KubeError::BadPodList { .. }), "{error}");
}

#[test]
fn an_unreachable_api_server_is_an_error() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let api = ApiServer::locate(Some(&format!("http://127.0.0.1:{port}"))).unwrap();
    let error = Kubernetes::new(api, None, PathBuf::from("/proc"))
        .err()
        .unwrap();
    assert!(
        error
            .to_string()
            .starts_with("cannot reach the Kubernetes API server at http://127.0.0.1:"),
        "{error}"
    );
}

#[test]
fn resource_attributes_follow_the_semantic_conventions() {
    let pod = PodMetadata {
        namespace: "flows".into(),
        pod_name: "router-0".into(),
        pod_uid: "8ca306fa-3c03-47fa-97dd-19979c345572".into(),
        container_name: Some("router".into()),
        node_name: Some("node-a".into()),
    };
    let attributes: Vec<(String, String)> = pod
        .resource_attributes()
        .into_iter()
        .map(|kv| (kv.key.to_string(), kv.value.to_string()))
        .collect();
    let expected = [
        ("k8s.namespace.name", "flows"),
        ("k8s.pod.name", "router-0"),
        ("k8s.pod.uid", "8ca306fa-3c03-47fa-97dd-19979c345572"),
        ("k8s.container.name", "router"),
        ("k8s.node.name", "node-a"),
    ];
    assert_eq!(
        attributes,
        expected.map(|(k, v)| (k.to_string(), v.to_string()))
    );
}

#[test]
fn label_selectors_parse_equality_and_inequality() {
    let selector: LabelSelector = "app=worker, tier!=canary,env==prod".parse().unwrap();
    assert_eq!(
        selector.0,
        vec![
            LabelRequirement {
                key: "app".into(),
                value: "worker".into(),
                equal: true
            },
            LabelRequirement {
                key: "tier".into(),
                value: "canary".into(),
                equal: false
            },
            LabelRequirement {
                key: "env".into(),
                value: "prod".into(),
                equal: true
            },
        ]
    );
    for bad in ["app", "=worker", "app=a=b", "app=x,", "a!=b!=c"] {
        let error = bad.parse::<LabelSelector>().unwrap_err();
        assert!(error.contains("key=value"), "{bad}: {error}");
    }
}

#[test]
fn pod_selectors_match_namespace_and_labels() {
    let list: serde_json::Value = serde_json::from_str(&testdata("podlist.json")).unwrap();
    let pods: Vec<Pod> = serde_json::from_value(list["items"].clone()).unwrap();
    let names = |selector: PodSelector| -> Vec<String> {
        pods.iter()
            .filter(|pod| selector.matches(pod))
            .map(|pod| pod.metadata.name.clone())
            .collect()
    };
    let select = |namespace: Option<&str>, labels: &str| PodSelector {
        namespace: namespace.map(str::to_string),
        labels: if labels.is_empty() {
            LabelSelector::default()
        } else {
            labels.parse().unwrap()
        },
    };
    assert_eq!(
        names(select(Some("flows"), "app=workflow-worker,tier!=canary")),
        ["workflow-worker-7d9f8b6c5d-x2k8p"]
    );
    assert_eq!(
        names(select(Some("default"), "")),
        ["nginx-deployment-59d675bcb5-c2hv5"]
    );
    // `!=` holds for pods without the label, as in Kubernetes.
    assert_eq!(names(select(None, "tier!=batch")).len(), 3);
    assert!(names(select(Some("kube-system"), "app=nginx")).is_empty());
}

#[test]
fn a_selector_picks_the_first_process_of_the_one_matching_container() {
    let api = stub(200, testdata("podlist.json"));
    let proc_root = fake_proc(
        "select",
        &[
            (140, &worker_in_pod(WORKER_ID)),
            (120, &worker_in_pod(WORKER_ID)),
            (201, &testdata("crio-systemd-v1-besteffort.cgroup")),
            (301, &testdata("docker-systemd-hybrid-guaranteed.cgroup")),
            (1, &testdata("host-init-scope-v2.cgroup")),
        ],
    );
    let kubernetes = connect(&api, &proc_root).unwrap();
    let select = |namespace: Option<&str>, labels: &str| {
        kubernetes.select_pid(&PodSelector {
            namespace: namespace.map(str::to_string),
            labels: if labels.is_empty() {
                LabelSelector::default()
            } else {
                labels.parse().unwrap()
            },
        })
    };
    assert_eq!(select(Some("flows"), "app=workflow-worker").unwrap(), 120);
    assert_eq!(select(None, "app=router").unwrap(), 201);
    let none = select(Some("flows"), "app=nothing")
        .unwrap_err()
        .to_string();
    assert!(
        none.contains("namespace flows and labels app=nothing")
            && none.contains("kubectl get pods -n flows -l app=nothing"),
        "{none}"
    );
    let many = select(Some("flows"), "").unwrap_err().to_string();
    assert!(
        many.starts_with("2 containers match namespace flows"),
        "{many}"
    );
}

#[test]
fn span_resources_carry_the_pod_of_their_process() {
    let api = stub(200, testdata("podlist.json"));
    let proc_root = fake_proc(
        "resource",
        &[(4_000_001, &testdata("crio-systemd-v1-besteffort.cgroup"))],
    );
    let kubernetes = connect(&api, &proc_root).unwrap();
    let workloads = std::sync::Arc::new(PodWorkloads::new(kubernetes, None));
    let mut factory = crate::spans::SpanFactory::new(
        Some("svc".into()),
        None,
        std::sync::Arc::new(crate::processes::NoProcesses),
        workloads,
    );
    let resource = factory.resource(4_000_001, 0, 0);
    let get = |key: &'static str| {
        resource
            .get(&opentelemetry::Key::from_static_str(key))
            .map(|value| value.to_string())
    };
    assert_eq!(get("k8s.pod.name").as_deref(), Some("router-0"));
    assert_eq!(get("k8s.container.name").as_deref(), Some("router"));
    assert_eq!(get("k8s.namespace.name").as_deref(), Some("flows"));
    assert_eq!(get("process.pid").as_deref(), Some("4000001"));
    assert_eq!(get("service.name").as_deref(), Some("svc"));
}

#[test]
fn the_target_is_looked_up_before_it_can_exit() {
    let api = stub(200, testdata("podlist.json"));
    let proc_root = fake_proc(
        "early",
        &[(4_000_002, &testdata("crio-systemd-v1-besteffort.cgroup"))],
    );
    let kubernetes = connect(&api, &proc_root).unwrap();
    let workloads = PodWorkloads::new(kubernetes, std::num::NonZeroU32::new(4_000_002));
    // The process exits before its first span is read.
    std::fs::remove_dir_all(proc_root.join("4000002")).unwrap();
    let pod_name = workloads
        .resource_attributes(4_000_002, 0)
        .into_iter()
        .find(|kv| kv.key.as_str() == "k8s.pod.name")
        .map(|kv| kv.value.to_string());
    assert_eq!(pod_name.as_deref(), Some("router-0"));
}
