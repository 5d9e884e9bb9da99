//! The Prometheus endpoint: a valid exposition, exact counts through a real Prometheus server,
//! and bounded label sets.

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use flowtap_tests::*;

/// Starts flowtap on every process of an isolated copy of the fixture; returns it with the
/// copy's demo path.
fn trace_isolated_binary(dir: &Path) -> (Running, std::path::PathBuf) {
    let (demo, _) = isolated_fixture(dir);
    let flowtap = Running::start(flowtap().args(["run", "--exe", demo.to_str().unwrap()]));
    (flowtap, demo)
}

fn run(demo: &Path, args: &[&str]) -> Counts {
    let output = Command::new(demo)
        .args(args)
        .output()
        .expect("running wfdemo");
    assert!(output.status.success(), "{output:?}");
    demo_counts(&String::from_utf8(output.stdout).unwrap())
}

/// The fixture's functions that implement each workflow primitive.
const PRIMITIVES: [(&str, &str); 9] = [
    ("sequential", "wf_sequential"),
    ("step", "wf_step_run"),
    ("parallel", "wf_parallel"),
    ("task", "wf_task_execute"),
    ("router", "wf_router_route"),
    ("cache", "wf_cache_get"),
    ("timeout", "wf_timeout_run"),
    ("retry", "wf_retry_run"),
    ("llm", "wf_llm_call"),
];

#[test]
fn the_ready_line_tells_scripts_where_and_what() {
    let dir = scratch_dir("ready");
    let (flowtap, _) = trace_isolated_binary(&dir);
    let line = flowtap.ready.clone();
    let exposition = flowtap.scrape();
    flowtap.interrupt();
    let (code, stderr) = flowtap.finish();
    assert_eq!(code, 0, "{stderr}");
    // `ready` and the documented fields, in their order.
    let keys: Vec<&str> = line
        .split_whitespace()
        .map(|field| field.split('=').next().unwrap())
        .collect();
    assert_eq!(keys, ["ready", "metrics", "probes", "objects"], "{line}");
    let metrics = ready_field(&line, "metrics").unwrap();
    assert!(
        metrics.starts_with("http://127.0.0.1:") && metrics.ends_with("/metrics"),
        "{line}"
    );
    let probes: f64 = ready_field(&line, "probes").unwrap().parse().unwrap();
    assert_eq!(probes, sample(&exposition, "flowtap_probes_attached", &[]));
    let objects: u64 = ready_field(&line, "objects").unwrap().parse().unwrap();
    assert!(objects >= 1, "{line}");
}

#[test]
fn promtool_accepts_a_live_scrape() {
    let dir = scratch_dir("promtool");
    let (flowtap, demo) = trace_isolated_binary(&dir);
    let counts = run(&demo, &["--runs", "30"]);
    let exposition = flowtap.scrape();
    flowtap.interrupt();
    let (code, stderr) = flowtap.finish();
    assert_eq!(code, 0, "{stderr}");

    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus) is installed by `cargo xtask setup`");
    use std::io::Write;
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let output = promtool.wait_with_output().unwrap();
    assert!(output.status.success(), "promtool: {output:?}");
    assert!(
        output.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );

    // The exposition carries the exact counts, the workflow metrics and the agent's health.
    let calls = sample(
        &exposition,
        "flowtap_function_calls_total",
        &[r#"function="wf_llm_call""#, r#"status="success""#],
    );
    assert_eq!(calls as u64, counts["wf_llm_call"]);
    assert_eq!(
        sample(&exposition, "cache_evictions_total", &[]) as u64,
        counts["wf_cache_evict"]
    );
    assert_eq!(
        sample(&exposition, "retry_attempts_total", &[]) as u64,
        counts["wf_retry_attempt"]
    );
    let hits = sample(&exposition, "cache_hits_total", &[]);
    let misses = sample(&exposition, "cache_misses_total", &[]);
    assert_eq!((hits + misses) as u64, counts["wf_cache_get"]);
    let runs = sample(
        &exposition,
        "workflow_executions_total",
        &[r#"workflow="support-bot""#, r#"status="success""#],
    ) + samples(&exposition)
        .iter()
        .filter(|(n, l, _)| n == "workflow_executions_total" && l.contains("failure"))
        .map(|(_, _, v)| v)
        .sum::<f64>();
    assert_eq!(runs as u64, 30);
    assert_eq!(sample(&exposition, "flowtap_probes_attached", &[]), 14.0);
    assert_eq!(
        sample(
            &exposition,
            "flowtap_events_lost_total",
            &[r#"reason="stack_overflow""#]
        ),
        0.0
    );
    let tokens: f64 = samples(&exposition)
        .iter()
        .filter(|(n, _, _)| n == "llm_tokens_total")
        .map(|(_, _, v)| v)
        .sum();
    assert!(tokens > 0.0, "llm tokens from the call arguments");
}

/// A Prometheus server on loopback, stopped when dropped.
struct PrometheusServer {
    child: Child,
    url: String,
}

impl Drop for PrometheusServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl PrometheusServer {
    fn start(dir: &Path, target: &str) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: flowtap\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (Debian's) is installed by `cargo xtask setup`");
        let server = Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "prometheus did not start");
            std::thread::sleep(Duration::from_millis(200));
        }
        server
    }

    /// An instant PromQL query: (labels, value) per series.
    fn query(&self, promql: &str) -> Vec<(serde_json::Value, f64)> {
        let encoded: String = promql
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'.' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect();
        let body = http_get(&format!("{}/api/v1/query?query={encoded}", self.url));
        let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
        answer["data"]["result"]
            .as_array()
            .unwrap_or(&Vec::new())
            .iter()
            .map(|series| {
                let value = series["value"][1].as_str().unwrap().parse().unwrap();
                (series["metric"].clone(), value)
            })
            .collect()
    }

    /// Waits (bounded) until `promql` returns exactly one series with value `expected`.
    fn wait_for(&self, promql: &str, expected: f64) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let result = self.query(promql);
            if result.len() == 1 && result[0].1 == expected {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{promql}: {result:?}, expected {expected}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

#[test]
fn a_prometheus_server_sees_the_exact_counts_and_latency() {
    let dir = scratch_dir("prometheus");
    let (flowtap, demo) = trace_isolated_binary(&dir);
    let target = flowtap
        .metrics_url
        .trim_start_matches("http://")
        .trim_end_matches("/metrics")
        .to_string();
    let prometheus = PrometheusServer::start(&dir, &target);
    let counts = run(
        &demo,
        &["--runs", "100", "--seed", "3", "--latency", "timeout=20000"],
    );

    let expected_total: u64 = PRIMITIVES
        .iter()
        .map(|(_, function)| counts[*function])
        .sum();
    prometheus.wait_for("sum(primitive_executions_total)", expected_total as f64);
    let by_primitive = prometheus.query("sum by (primitive) (primitive_executions_total)");
    assert_eq!(by_primitive.len(), PRIMITIVES.len(), "{by_primitive:?}");
    for (primitive, function) in PRIMITIVES {
        let (_, value) = by_primitive
            .iter()
            .find(|(labels, _)| labels["primitive"] == primitive)
            .unwrap_or_else(|| panic!("no {primitive} series"));
        assert_eq!(*value as u64, counts[function], "{primitive}");
    }
    let median = prometheus.query(
        r#"histogram_quantile(0.5, sum by (le) (primitive_execution_duration_seconds_bucket{primitive="timeout"}))"#,
    );
    assert_eq!(median.len(), 1, "{median:?}");
    let relative_error = (median[0].1 - 0.020).abs() / 0.020;
    assert!(
        relative_error <= 0.10,
        "p50 {} s is not within 10% of 20 ms",
        median[0].1
    );

    flowtap.interrupt();
    let (code, stderr) = flowtap.finish();
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn label_values_are_capped_against_10000_routes() {
    let dir = scratch_dir("label-cap");
    let (flowtap, demo) = trace_isolated_binary(&dir);
    let mut args = vec![
        "--runs",
        "10000",
        "--distinct-routes",
        "10000",
        "--branches",
        "1",
    ];
    for primitive in ["step", "cache", "router", "llm", "timeout", "task"] {
        args.extend([
            "--latency",
            Box::leak(format!("{primitive}=0").into_boxed_str()),
        ]);
    }
    let counts = run(&demo, &args);
    assert_eq!(counts["wf_router_route"], 10_000);
    let exposition = flowtap.scrape();
    flowtap.interrupt();
    let (code, stderr) = flowtap.finish();
    assert_eq!(code, 0, "{stderr}");

    let routes: Vec<(String, String, f64)> = samples(&exposition)
        .into_iter()
        .filter(|(name, _, _)| name == "router_route_selected_total")
        .collect();
    assert_eq!(routes.len(), 257, "256 routes and `other`");
    assert!(
        routes
            .iter()
            .any(|(_, labels, _)| labels.contains(r#"route="other""#))
    );
    let selected: f64 = routes.iter().map(|(_, _, value)| value).sum();
    assert_eq!(selected as u64, 10_000, "every selection is still counted");
    let capped = sample(
        &exposition,
        "flowtap_label_values_capped_total",
        &[r#"metric="router_route_selected_total""#],
    );
    assert_eq!(capped as u64, 10_000 - 256);
    assert_eq!(
        sample(
            &exposition,
            "flowtap_events_lost_total",
            &[r#"reason="aggregate_map_full""#]
        ),
        0.0
    );
}
