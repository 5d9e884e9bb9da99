//! Kubernetes metadata end to end: a demo process put in a cgroup laid out as the kubelet does
//! (`…/kubepods/besteffort/pod<uid>/<container id>`), a stand-in API server listing its pod, and
//! flowtap's spans and target selection from there.

use std::{
    io::{Read, Write},
    net::TcpListener,
    path::PathBuf,
    sync::{Arc, Mutex},
};

use flowtap_tests::*;

/// Answers every request with `status` and `body`; keeps each request's first line.
fn api_server(status: u16, body: String) -> (String, Arc<Mutex<Vec<String>>>) {
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
            let first = String::from_utf8_lossy(&request)
                .lines()
                .next()
                .unwrap_or_default()
                .to_string();
            seen.lock().unwrap().push(first);
            let _ = write!(
                stream,
                "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (url, requests)
}

/// A pod with one container, as `GET /api/v1/pods` lists it.
fn pod_list(uid: &str, container_id: &str) -> String {
    pods(&[pod("worker-0", uid, container_id, "worker")])
}

fn pods(items: &[serde_json::Value]) -> String {
    serde_json::json!({
        "kind": "PodList",
        "apiVersion": "v1",
        "metadata": {"resourceVersion": "42"},
        "items": items
    })
    .to_string()
}

/// Pod `name` in namespace `flows` labelled `app`, whose container `worker` has `container_id`.
fn pod(name: &str, uid: &str, container_id: &str, app: &str) -> serde_json::Value {
    serde_json::json!({
        "metadata": {
            "name": name,
            "namespace": "flows",
            "uid": uid,
            "labels": {"app": app}
        },
        "spec": {"nodeName": "node-t", "containers": [{"name": "worker", "image": "wfdemo"}]},
        "status": {
            "phase": "Running",
            "containerStatuses": [{
                "name": "worker",
                "ready": true,
                "restartCount": 0,
                "containerID": format!("containerd://{container_id}")
            }]
        }
    })
}

/// A process moved into a kubelet-style cgroup (cgroupfs driver), removed again on drop.
struct PodCgroup {
    dirs: Vec<PathBuf>,
    uid: String,
    container_id: String,
}

impl PodCgroup {
    fn enter(pid: u32, test: u32) -> Self {
        // The cgroup v2 hierarchy: its ids are what the kernel keys per-pod stats by. A new
        // cgroup there enables no controller, so moving a process changes nothing but its path.
        let base = cgroup_v2_mount();
        let uid = format!("{:08x}-1111-4222-8333-{:012x}", std::process::id(), test);
        let container_id = format!(
            "{:064x}",
            u128::from(std::process::id()) << 8 | u128::from(test)
        );
        // Under a directory of this test's own, so that the cleanup removes every level.
        let top = base.join(format!("flowtap-test-{}-{test}", std::process::id()));
        let pod = top.join(format!("kubepods/besteffort/pod{uid}"));
        let leaf = pod.join(&container_id);
        std::fs::create_dir_all(&leaf).unwrap();
        std::fs::write(leaf.join("cgroup.procs"), pid.to_string()).unwrap();
        let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        assert!(cgroup.contains(&container_id), "{cgroup}");
        Self {
            dirs: leaf.ancestors().take(5).map(PathBuf::from).collect(),
            uid,
            container_id,
        }
    }
}

/// Where cgroup v2 is mounted (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on hybrid hosts).
fn cgroup_v2_mount() -> PathBuf {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    mountinfo
        .lines()
        .find_map(|line| {
            let (mount, filesystem) = line.split_once(" - ")?;
            let point = mount.split_whitespace().nth(4)?;
            filesystem
                .starts_with("cgroup2 ")
                .then(|| PathBuf::from(point))
        })
        .expect("cgroup v2 is mounted (flowtap's per-pod metrics need it)")
}

impl Drop for PodCgroup {
    fn drop(&mut self) {
        for dir in &self.dirs {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// The string attributes of every resource in an OTLP JSON lines file.
fn resources(spans_file: &std::path::Path) -> Vec<std::collections::BTreeMap<String, String>> {
    let text = std::fs::read_to_string(spans_file).unwrap();
    let mut resources = Vec::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        let request: serde_json::Value = serde_json::from_str(line).unwrap();
        for spans in request["resourceSpans"].as_array().unwrap() {
            let attributes = spans["resource"]["attributes"].as_array().unwrap();
            resources.push(
                attributes
                    .iter()
                    .filter_map(|kv| {
                        let value = kv["value"]["stringValue"].as_str()?;
                        Some((kv["key"].as_str()?.to_string(), value.to_string()))
                    })
                    .collect(),
            );
        }
    }
    resources
}

#[test]
fn spans_of_a_process_in_a_pod_carry_its_kubernetes_metadata() {
    let dir = scratch_dir("k8s-spans");
    let spans_path = dir.join("spans.jsonl");
    let demo = spawn_held_demo(&["--runs", "3"]);
    let cgroup = PodCgroup::enter(demo.id(), 1);
    let (url, requests) = api_server(200, pod_list(&cgroup.uid, &cgroup.container_id));
    let pid = demo.id().to_string();
    let flowtap = Running::start(flowtap().args([
        "run",
        "--pid",
        &pid,
        "--spans-out",
        spans_path.to_str().unwrap(),
        "--k8s-api",
        &url,
        "--k8s-node",
        "node-t",
    ]));
    release_demo(demo);
    let (code, stderr) = flowtap.finish();
    assert_eq!(code, 0, "{stderr}");
    let resources = resources(&spans_path);
    assert!(!resources.is_empty(), "no spans: {stderr}");
    for resource in &resources {
        let get = |key: &str| resource.get(key).map(String::as_str);
        assert_eq!(get("k8s.namespace.name"), Some("flows"), "{resource:?}");
        assert_eq!(get("k8s.pod.name"), Some("worker-0"));
        assert_eq!(get("k8s.pod.uid"), Some(cgroup.uid.as_str()));
        assert_eq!(get("k8s.container.name"), Some("worker"));
        assert_eq!(get("k8s.node.name"), Some("node-t"));
    }
    let requests = requests.lock().unwrap();
    assert_eq!(
        requests.as_slice(),
        ["GET /api/v1/pods?fieldSelector=spec.nodeName%3Dnode-t HTTP/1.1"]
    );
}

#[test]
fn metrics_carry_the_pod_their_calls_were_made_in() {
    let dir = scratch_dir("k8s-metrics");
    let (demo_path, _) = isolated_fixture(&dir);
    // Two processes of one binary: one in a pod, one on the host.
    let in_pod = spawn_held(&demo_path, &["--runs", "5"]);
    let on_host = spawn_held(&demo_path, &["--runs", "3"]);
    let cgroup = PodCgroup::enter(in_pod.id(), 3);
    let (url, _) = api_server(200, pod_list(&cgroup.uid, &cgroup.container_id));
    let flowtap = Running::start(flowtap().args([
        "run",
        "--exe",
        demo_path.to_str().unwrap(),
        "--k8s-api",
        &url,
        "--k8s-node",
        "node-t",
    ]));
    // Both are enrolled from /proc within half a second of the start.
    std::thread::sleep(std::time::Duration::from_secs(1));
    let pod_counts = demo_counts(&release_demo(in_pod));
    let host_counts = demo_counts(&release_demo(on_host));
    let exposition = flowtap.scrape();
    flowtap.interrupt();
    let (code, stderr) = flowtap.finish();
    assert_eq!(code, 0, "{stderr}");

    let pod = format!(r#"k8s_pod_uid="{}""#, cgroup.uid);
    let total = |name: &str, with: &[&str], in_pod: bool| -> u64 {
        samples(&exposition)
            .into_iter()
            .filter(|(n, labels, _)| {
                n == name
                    && with.iter().all(|w| labels.contains(w))
                    && labels.contains(&pod) == in_pod
            })
            .map(|(_, _, value)| value as u64)
            .sum()
    };
    for (function, calls) in &pod_counts {
        let label = format!(r#"function="{function}""#);
        assert_eq!(
            total("flowtap_function_calls_total", &[&label], true),
            *calls,
            "{function} in the pod"
        );
        assert_eq!(
            total("flowtap_function_calls_total", &[&label], false),
            host_counts[function],
            "{function} on the host"
        );
    }
    let pod_labels = [
        r#"k8s_namespace_name="flows""#,
        r#"k8s_pod_name="worker-0""#,
        r#"k8s_container_name="worker""#,
        r#"k8s_node_name="node-t""#,
    ];
    assert_eq!(
        total("workflow_executions_total", &pod_labels, true),
        pod_counts["wf_workflow_run"]
    );
    assert_eq!(
        total("workflow_executions_total", &[], false),
        host_counts["wf_workflow_run"]
    );
}

#[test]
fn an_executable_in_selected_pods_is_traced_and_other_pods_left_out() {
    let dir = scratch_dir("k8s-exe");
    let (demo_path, _) = isolated_fixture(&dir);
    let selected = spawn_held(&demo_path, &["--runs", "4"]);
    let other = spawn_held(&demo_path, &["--runs", "2"]);
    let on_host = spawn_held(&demo_path, &["--runs", "3"]);
    let selected_cgroup = PodCgroup::enter(selected.id(), 4);
    let other_cgroup = PodCgroup::enter(other.id(), 5);
    let (url, _) = api_server(
        200,
        pods(&[
            pod(
                "worker-0",
                &selected_cgroup.uid,
                &selected_cgroup.container_id,
                "worker",
            ),
            pod(
                "batch-0",
                &other_cgroup.uid,
                &other_cgroup.container_id,
                "batch",
            ),
        ]),
    );
    let spans_path = dir.join("spans.jsonl");
    let report = dir.join("report.json");
    // By file name, as the container sees it; the selector narrows to the worker pod.
    let flowtap = Running::start(flowtap().args([
        "run",
        "--exe",
        "wfdemo",
        "--k8s-selector",
        "app=worker",
        "--k8s-api",
        &url,
        "--k8s-node",
        "node-t",
        "--spans-out",
        spans_path.to_str().unwrap(),
        "--report",
        "json",
        "--output",
        report.to_str().unwrap(),
    ]));
    std::thread::sleep(std::time::Duration::from_secs(1));
    let counts = demo_counts(&release_demo(selected));
    release_demo(other);
    release_demo(on_host);
    let exposition = flowtap.scrape();
    flowtap.interrupt();
    let (code, stderr) = flowtap.finish();
    assert_eq!(code, 0, "{stderr}");

    let runs: Vec<(String, f64)> = samples(&exposition)
        .into_iter()
        .filter(|(name, labels, _)| {
            name == "flowtap_function_calls_total"
                && labels.contains(r#"function="wf_workflow_run""#)
        })
        .map(|(_, labels, value)| (labels, value))
        .collect();
    assert!(
        runs.iter()
            .all(|(labels, _)| labels.contains(r#"k8s_pod_name="worker-0""#)),
        "only the selected pod is reported: {runs:?}"
    );
    let total: f64 = runs.iter().map(|(_, value)| value).sum();
    assert_eq!(total as u64, counts["wf_workflow_run"]);
    assert_same_counts(
        &counts,
        &report_counts(&read_report(&report)),
        "the report counts the selected pod only",
    );
    let resources = resources(&spans_path);
    assert!(!resources.is_empty(), "{stderr}");
    assert!(
        resources
            .iter()
            .all(|r| r.get("k8s.pod.name").map(String::as_str) == Some("worker-0")),
        "spans of other pods and of the host are left out"
    );
}

#[test]
fn a_pod_selector_picks_the_process_to_trace() {
    let dir = scratch_dir("k8s-selector");
    let report = dir.join("report.json");
    let demo = spawn_held_demo(&["--runs", "4"]);
    let cgroup = PodCgroup::enter(demo.id(), 2);
    let (url, _) = api_server(200, pod_list(&cgroup.uid, &cgroup.container_id));
    let flowtap = Running::start(flowtap().args([
        "run",
        "--k8s-api",
        &url,
        "--k8s-node",
        "node-t",
        "--k8s-namespace",
        "flows",
        "--k8s-selector",
        "app=worker,tier!=canary",
        "--report",
        "json",
        "--output",
        report.to_str().unwrap(),
    ]));
    let expected = demo_counts(&release_demo(demo));
    let (code, stderr) = flowtap.finish();
    assert_eq!(code, 0, "{stderr}");
    assert_same_counts(
        &expected,
        &report_counts(&read_report(&report)),
        "selected pod",
    );
}

#[test]
fn kubernetes_problems_are_one_line_with_exit_code_2() {
    let forbidden = r#"{"kind":"Status","apiVersion":"v1","status":"Failure","message":"pods is forbidden: User \"system:serviceaccount:obs:flowtap\" cannot list resource \"pods\" in API group \"\" at the cluster scope","reason":"Forbidden","code":403}"#;
    let (denied, _) = api_server(403, forbidden.to_string());
    let (empty, _) = api_server(
        200,
        pod_list("00000000-0000-4000-8000-000000000000", &"a".repeat(64)),
    );
    let cases = [
        (
            vec!["run", "--k8s-api", &denied, "--pid", "1"],
            "answered 403 Forbidden to GET",
        ),
        (
            vec!["run", "--k8s-api", &empty, "--k8s-selector", "app=nothing"],
            "no running container on this node is in a pod matching labels app=nothing",
        ),
    ];
    for (args, expected) in cases {
        let (code, _, stderr) = run_flowtap(&args);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}
