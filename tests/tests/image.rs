//! The agent image run the way `deploy/kubernetes` runs it: the container options are read from
//! the DaemonSet (and the privileged overlay), its ConfigMap's flowtap.toml is mounted where the
//! DaemonSet mounts it. `cargo xtask image-check` builds the images and runs these tests; the
//! plain test run skips them (they need the images and a container runtime).
//!
//! What a node has and this machine has not: an API server. The ConfigMap's `k8s-*` keys and
//! its `exe` (a file name resolved in the pods it selects) are left out of the mounted file; the
//! target is given on the command line instead, which the agent reads over the file.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader},
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use flowtap_tests::{otlp::HttpReceiver, *};
use yaml_rust2::{Yaml, YamlLoader};

fn env(name: &str) -> String {
    std::env::var(name)
        .unwrap_or_else(|_| panic!("{name} is not set: run these with `cargo xtask image-check`"))
}

fn client() -> Command {
    Command::new(env("FLOWTAP_CONTAINER_CLIENT"))
}

fn client_output(args: &[&str]) -> String {
    let output = client()
        .args(args)
        .output()
        .expect("running the container client");
    assert!(output.status.success(), "{args:?}: {output:?}");
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

fn kubernetes_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes")
}

fn load(path: &Path) -> Yaml {
    let text = std::fs::read_to_string(path).unwrap();
    YamlLoader::load_from_str(&text).unwrap().remove(0)
}

/// The agent container of a DaemonSet manifest.
fn agent_container(daemonset: &Yaml) -> &Yaml {
    &daemonset["spec"]["template"]["spec"]["containers"][0]
}

fn strings(list: &Yaml) -> Vec<String> {
    list.as_vec()
        .into_iter()
        .flatten()
        .map(|item| item.as_str().unwrap().to_string())
        .collect()
}

/// How the DaemonSet's container runs, as container runtime options.
#[derive(Clone, Copy, PartialEq)]
enum Variant {
    /// deploy/kubernetes/base as shipped.
    Base,
    /// deploy/kubernetes/privileged: the base patched to a privileged container.
    Privileged,
    /// The base with exactly these capabilities instead of its own.
    Capabilities(&'static [&'static str]),
    /// The base, or these capabilities, under the runtime's default seccomp profile instead of
    /// the DaemonSet's setting.
    DefaultSeccomp(Option<&'static [&'static str]>),
}

/// `run` options equivalent to the DaemonSet's pod and container spec: host PID namespace,
/// security context, volume mounts (the ConfigMap from `config_dir`), port and environment.
fn daemonset_options(variant: Variant, config_dir: &Path) -> Vec<String> {
    let daemonset = load(&kubernetes_dir().join("base/daemonset.yaml"));
    let pod = &daemonset["spec"]["template"]["spec"];
    let container = agent_container(&daemonset);
    let security = &container["securityContext"];
    let mut options = Vec::new();
    assert_eq!(pod["hostPID"].as_bool(), Some(true));
    options.push("--pid=host".to_string());
    if variant == Variant::Privileged {
        let patch = load(&kubernetes_dir().join("privileged/daemonset-privileged.yaml"));
        assert_eq!(
            agent_container(&patch)["securityContext"]["privileged"].as_bool(),
            Some(true)
        );
        options.push("--privileged".into());
    } else {
        let added = match variant {
            Variant::Capabilities(capabilities) | Variant::DefaultSeccomp(Some(capabilities)) => {
                capabilities.iter().map(|c| c.to_string()).collect()
            }
            _ => strings(&security["capabilities"]["add"]),
        };
        for dropped in strings(&security["capabilities"]["drop"]) {
            options.push(format!("--cap-drop={dropped}"));
        }
        options.extend(added.iter().map(|c| format!("--cap-add={c}")));
        assert_eq!(security["allowPrivilegeEscalation"].as_bool(), Some(false));
        options.push("--security-opt=no-new-privileges".into());
    }
    if !matches!(variant, Variant::DefaultSeccomp(_))
        && security["seccompProfile"]["type"].as_str() == Some("Unconfined")
    {
        options.push("--security-opt=seccomp=unconfined".into());
    }
    if security["readOnlyRootFilesystem"].as_bool() == Some(true) {
        options.push("--read-only".into());
    }
    options.extend(volume_options(pod, container, config_dir));
    for port in container["ports"].as_vec().unwrap() {
        let port = port["containerPort"].as_i64().unwrap();
        options.push(format!("--publish=127.0.0.1::{port}"));
    }
    // FLOWTAP_NODE_NAME (downward API) would turn on the pod lookup, which needs an API server.
    for variable in container["env"].as_vec().unwrap() {
        if let Some(value) = variable["value"].as_str().filter(|v| !v.contains("$(")) {
            let name = variable["name"].as_str().unwrap();
            options.push(format!("--env={name}={value}"));
        }
    }
    options
}

/// The DaemonSet's volumes: its ConfigMap from `config_dir`, host paths as they are.
fn volume_options(pod: &Yaml, container: &Yaml, config_dir: &Path) -> Vec<String> {
    let volumes = pod["volumes"].as_vec().unwrap();
    container["volumeMounts"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|mount| {
            let volume = volumes
                .iter()
                .find(|v| v["name"].as_str() == mount["name"].as_str())
                .expect("a volume for every mount");
            let source = match volume["hostPath"]["path"].as_str() {
                Some(path) => path.to_string(),
                None => {
                    assert!(!volume["configMap"].is_badvalue(), "{volume:?}");
                    config_dir.display().to_string()
                }
            };
            let read_only = if mount["readOnly"].as_bool() == Some(true) {
                ":ro"
            } else {
                ""
            };
            format!(
                "--volume={source}:{}{read_only}",
                mount["mountPath"].as_str().unwrap()
            )
        })
        .collect()
}

/// The DaemonSet's arguments (`run --config ...`).
fn daemonset_args() -> Vec<String> {
    let daemonset = load(&kubernetes_dir().join("base/daemonset.yaml"));
    strings(&agent_container(&daemonset)["args"])
}

/// The ConfigMap's flowtap.toml without what needs a cluster (see the module's comment),
/// written as `dir/flowtap.toml`.
fn write_config(dir: &Path) {
    let config_map = load(&kubernetes_dir().join("base/configmap.yaml"));
    let toml = config_map["data"]["flowtap.toml"].as_str().unwrap();
    let kept: Vec<&str> = toml
        .lines()
        .filter(|line| !line.starts_with("k8s-") && !line.starts_with("exe "))
        .collect();
    assert!(kept.iter().any(|line| line.starts_with("metrics-addr")));
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("flowtap.toml"), kept.join("\n") + "\n").unwrap();
}

/// The host's address on the runtime's default bridge: where a container reaches the host.
fn bridge_gateway() -> String {
    // Docker's network is `bridge`, podman's `podman`, each with its own inspect layout.
    let docker = client()
        .args(["network", "inspect", "bridge", "--format"])
        .arg("{{(index .IPAM.Config 0).Gateway}}")
        .output()
        .expect("running the container client");
    if docker.status.success() {
        return String::from_utf8_lossy(&docker.stdout).trim().to_string();
    }
    client_output(&[
        "network",
        "inspect",
        "podman",
        "--format",
        "{{(index .Subnets 0).Gateway}}",
    ])
}

/// An agent container, removed when dropped.
struct Agent {
    name: String,
    child: Child,
    stderr: mpsc::Receiver<String>,
    metrics_url: String,
}

impl Agent {
    /// Starts the agent image with `options`, the DaemonSet's arguments and `args`; returns
    /// once its /metrics answers from the host with its probes attached.
    fn start(name: &str, options: &[String], args: &[&str]) -> Self {
        let name = format!("flowtap-image-check-{name}-{}", std::process::id());
        let mut child = client()
            .args(["run", "--rm", "--name", &name])
            .args(options)
            .arg(env("FLOWTAP_IMAGE"))
            .args(daemonset_args())
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting the agent container");
        let stderr = collect(child.stderr.take().unwrap());
        let mut agent = Self {
            name,
            child,
            stderr,
            metrics_url: String::new(),
        };
        agent.wait_ready();
        agent
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "the agent container exited with {status}:\n{}",
                    self.stderr_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "not ready:\n{}",
                self.stderr_text()
            );
            let port = client()
                .args(["port", &self.name, "9464/tcp"])
                .output()
                .ok()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                .unwrap_or_default();
            if let Some(address) = port.lines().next().filter(|a| !a.is_empty()) {
                self.metrics_url = format!("http://{address}/metrics");
                if std::net::TcpStream::connect(address).is_ok()
                    && sample(&self.scrape(), "flowtap_probes_attached", &[]) > 0.0
                {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn scrape(&self) -> String {
        http_get(&self.metrics_url)
    }

    /// Stops it as the kubelet does (SIGTERM) and returns its exit code and stderr.
    fn stop(mut self) -> (i32, String) {
        client_output(&["stop", "--time", "20", &self.name]);
        let code = self.child.wait().unwrap().code().unwrap_or(-1);
        (code, self.stderr_text())
    }

    /// Waits for it to end by itself; returns its exit code and stderr.
    fn finish(mut self) -> (i32, String) {
        let code = self.child.wait().unwrap().code().unwrap_or(-1);
        (code, self.stderr_text())
    }

    fn stderr_text(&self) -> String {
        self.stderr
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if self.child.try_wait().is_ok_and(|status| status.is_none()) {
            let _ = client().args(["rm", "--force", &self.name]).output();
            let _ = self.child.wait();
        }
    }
}

fn collect(stream: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let text: Vec<String> = BufReader::new(stream)
            .lines()
            .map_while(Result::ok)
            .collect();
        let _ = tx.send(text.join("\n"));
    });
    rx
}

/// Runs a container to completion; returns (exit code, stderr).
fn run_container(options: &[String], args: &[&str]) -> (i32, String) {
    let output = client()
        .args(["run", "--rm"])
        .args(options)
        .arg(env("FLOWTAP_IMAGE"))
        .args(daemonset_args())
        .args(args)
        .output()
        .expect("running the agent container");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Calls per function in the scrape, over every status and label set.
fn scraped_counts(exposition: &str) -> Counts {
    let mut counts = BTreeMap::new();
    for (name, labels, value) in samples(exposition) {
        if name != "flowtap_function_calls_total" {
            continue;
        }
        let function = labels
            .split("function=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap()
            .to_string();
        *counts.entry(function).or_insert(0) += value as u64;
    }
    counts
}

/// Waits until the receiver holds spans, at most `limit`.
fn received_spans(receiver: &HttpReceiver, limit: Duration) -> Vec<otlp::ReceivedSpan> {
    let deadline = Instant::now() + limit;
    while receiver.spans().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    receiver.spans()
}

/// A receiver on the bridge's host address, and the flags pointing the agent at it.
fn otlp_receiver() -> (HttpReceiver, Vec<String>) {
    // Every address: podman creates its bridge, and the host's address on it, only with the
    // first container.
    let listener = TcpListener::bind("0.0.0.0:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let endpoint = format!("http://{}:{port}", bridge_gateway());
    let flags = vec![
        "--otlp-endpoint".to_string(),
        endpoint,
        "--otlp-protocol".into(),
        "http/protobuf".into(),
    ];
    (HttpReceiver::start(listener), flags)
}

/// The demo on the host, traced with `--exe` (every process of it) by the agent container;
/// the demo's directory is mounted at the same path, as a pod's files are reached through
/// /proc/PID/root on a node.
fn traces_the_host_demo(variant: Variant, test: &str) {
    let dir = scratch_dir(test);
    let (demo, _) = isolated_fixture(&dir);
    write_config(&dir.join("config"));
    let (receiver, otlp) = otlp_receiver();
    let mut options = daemonset_options(variant, &dir.join("config"));
    options.push(format!("--volume={0}:{0}:ro", dir.display()));
    let mut args: Vec<&str> = vec!["--exe", demo.to_str().unwrap()];
    args.extend(otlp.iter().map(String::as_str));
    let agent = Agent::start(test, &options, &args);
    let output = Command::new(&demo)
        .args(["--runs", "100", "--error-rate", "0.2"])
        .output()
        .expect("running wfdemo");
    assert!(output.status.success(), "{output:?}");
    let expected = demo_counts(&String::from_utf8(output.stdout).unwrap());
    assert_same_counts(
        &expected,
        &scraped_counts(&agent.scrape()),
        "scraped from the host",
    );
    let spans = received_spans(&receiver, Duration::from_secs(30));
    let (code, stderr) = agent.stop();
    assert_eq!(code, 0, "{stderr}");
    assert_received(&spans, &stderr);
}

/// Spans of the DaemonSet's service (its OTEL_SERVICE_NAME) arrived.
fn assert_received(spans: &[otlp::ReceivedSpan], stderr: &str) {
    assert!(
        !spans.is_empty(),
        "no span reached the host's receiver:\n{stderr}"
    );
    assert!(
        spans
            .iter()
            .all(|s| s.resource.get("service.name").map(String::as_str) == Some("workflow-server")),
        "{:?}",
        spans[0].resource
    );
}

#[test]
#[ignore = "needs the images: cargo xtask image-check"]
fn daemonset_as_shipped_traces_every_process_of_the_host_demo() {
    traces_the_host_demo(Variant::Base, "image-base");
}

#[test]
#[ignore = "needs the images: cargo xtask image-check"]
fn privileged_variant_traces_every_process_of_the_host_demo() {
    traces_the_host_demo(Variant::Privileged, "image-privileged");
}

/// The capabilities the DaemonSet had before SYS_ADMIN: enough for one process (`--pid`).
const FOUR: &[&str] = &["BPF", "PERFMON", "SYS_PTRACE", "DAC_READ_SEARCH"];

/// The demo image in its own container, traced by PID from the agent container: its binaries
/// are read through /proc/PID/root, as a pod's are on a node.
#[test]
#[ignore = "needs the images: cargo xtask image-check"]
fn four_capabilities_trace_the_demo_container_by_pid() {
    let dir = scratch_dir("image-pid");
    write_config(&dir.join("config"));
    let name = format!("flowtap-image-check-demo-{}", std::process::id());
    let mut demo = client()
        .args(["run", "--rm", "--interactive", "--name", &name])
        .arg(env("FLOWTAP_DEMO_IMAGE"))
        .args(["--runs", "100", "--error-rate", "0.2", "--wait-start"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting the demo container");
    let pid = demo_pid(&name);
    let (receiver, otlp) = otlp_receiver();
    let mut options = daemonset_options(Variant::Capabilities(FOUR), &dir.join("config"));
    // The one writable place: the report, read at the end.
    std::fs::create_dir_all(dir.join("report")).unwrap();
    options.push(format!("--volume={}:/report", dir.join("report").display()));
    let mut args: Vec<&str> = vec!["--pid", &pid, "--report", "json", "--output"];
    args.push("/report/report.json");
    args.extend(otlp.iter().map(String::as_str));
    let agent = Agent::start("pid", &options, &args);
    drop(demo.stdin.take());
    let output = demo.wait_with_output().unwrap();
    assert!(output.status.success(), "{output:?}");
    let expected = demo_counts(&String::from_utf8(output.stdout).unwrap());
    // `--pid` ends with its process, after the last spans are sent.
    let (code, stderr) = agent.finish();
    assert_eq!(code, 0, "{stderr}");
    let report = read_report(&dir.join("report/report.json"));
    assert_same_counts(&expected, &report_counts(&report), "in the agent's report");
    assert_received(&receiver.spans(), &stderr);
}

/// The host PID of the demo container's process, once it has mapped its runtime library.
fn demo_pid(name: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let pid = client()
            .args(["inspect", "--format", "{{.State.Pid}}", name])
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .filter(|pid| !pid.is_empty() && pid != "0");
        if let Some(pid) = pid
            && std::fs::read_to_string(format!("/proc/{pid}/maps"))
                .is_ok_and(|maps| maps.contains("libwfrt.so"))
        {
            return pid;
        }
        assert!(
            Instant::now() < deadline,
            "the demo container never started"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every process of an executable is a system-wide uprobe, which the kernel refuses without
/// CAP_SYS_ADMIN: the agent says so, in one line, before loading anything.
#[test]
#[ignore = "needs the images: cargo xtask image-check"]
fn four_capabilities_refuse_every_process_naming_sys_admin() {
    let dir = scratch_dir("image-four-exe");
    let (demo, _) = isolated_fixture(&dir);
    write_config(&dir.join("config"));
    let mut options = daemonset_options(Variant::Capabilities(FOUR), &dir.join("config"));
    options.push(format!("--volume={0}:{0}:ro", dir.display()));
    let (code, stderr) = run_container(&options, &["--exe", demo.to_str().unwrap()]);
    assert_ne!(code, 0, "{stderr}");
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("flowtap: error:"))
        .collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains("only with CAP_SYS_ADMIN"), "{stderr}");
}

/// The runtime's default seccomp profile (podman 4.3's here) lets bpf(2) and perf_event_open(2)
/// through with CAP_SYS_ADMIN, which the DaemonSet has.
#[test]
#[ignore = "needs the images: cargo xtask image-check"]
fn default_seccomp_with_the_daemonsets_capabilities_traces_the_host_demo() {
    traces_the_host_demo(Variant::DefaultSeccomp(None), "image-seccomp");
}

/// Without CAP_SYS_ADMIN the default profile refuses bpf(2): the agent names seccomp.
#[test]
#[ignore = "needs the images: cargo xtask image-check"]
fn default_seccomp_with_four_capabilities_is_named_as_the_refusal() {
    let dir = scratch_dir("image-seccomp-four");
    write_config(&dir.join("config"));
    let demo = spawn_held_demo(&["--runs", "3"]);
    let pid = demo.id().to_string();
    let options = daemonset_options(Variant::DefaultSeccomp(Some(FOUR)), &dir.join("config"));
    let (code, stderr) = run_container(&options, &["--pid", &pid]);
    release_demo(demo);
    assert_ne!(code, 0, "{stderr}");
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("flowtap: error:"))
        .collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(
        errors[0].contains("a seccomp filter confines this process"),
        "{stderr}"
    );
}
