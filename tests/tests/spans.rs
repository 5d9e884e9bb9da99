//! Spans over OTLP: exact parentage (across threads too) against the fixture's own call record,
//! sampling, resources, and export that survives the collector being down.

use std::{
    net::TcpListener,
    path::Path,
    process::Command,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use flowtap_tests::{
    otlp::HttpReceiver,
    spans::{SpanRecord, assert_complete_traces, expected_edges, read_json_lines, span_edges},
    *,
};

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// flowtap launching the demo with its call record in `dir/calls.txt`.
fn launch_demo(dir: &Path, flowtap_args: &[&str], demo_args: &[&str]) -> Command {
    let mut command = flowtap();
    command
        .args(["run", "--report", "json", "--output"])
        .arg(dir.join("report.json"))
        .args(flowtap_args)
        .arg("--")
        .arg(demo_path())
        .args(demo_args)
        .arg("--trace")
        .arg(dir.join("calls.txt"));
    command
}

fn total_calls(counts: &Counts) -> u64 {
    counts.values().sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_collector_gets_one_trace_per_run_with_exact_parents() {
    let started = now_ns();
    let mut collector = fake_opentelemetry_collector::FakeCollectorServer::start()
        .await
        .unwrap();
    let dir = scratch_dir("grpc");
    let endpoint = collector.endpoint();
    let mut flowtap = tokio::process::Command::from(launch_demo(
        &dir,
        &["--otlp-endpoint", &endpoint, "--otlp-protocol", "grpc"],
        &["--runs", "5", "--seed", "21"],
    ))
    .stdout(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    // The fake collector holds a few spans at a time: keep draining while flowtap runs.
    let mut received = Vec::new();
    while flowtap.try_wait().unwrap().is_none() {
        received.extend(
            collector
                .exported_spans(64, Duration::from_millis(50))
                .await,
        );
    }
    received.extend(
        collector
            .exported_spans(usize::MAX, Duration::from_millis(500))
            .await,
    );
    let output = flowtap.wait_with_output().await.unwrap();
    assert!(output.status.success(), "{output:?}");
    let counts = demo_counts(&String::from_utf8(output.stdout).unwrap());

    let spans: Vec<SpanRecord> = received
        .iter()
        .map(|s| SpanRecord {
            trace_id: s.trace_id.clone(),
            span_id: s.span_id.clone(),
            parent_span_id: s.parent_span_id.clone(),
            name: s.name.clone(),
            start_ns: s.start_time_unix_nano,
            end_ns: s.end_time_unix_nano,
            attributes: Default::default(),
            failed: false,
        })
        .collect();
    assert_eq!(
        spans.len() as u64,
        total_calls(&counts),
        "one span per call"
    );
    assert_eq!(
        assert_complete_traces(&spans),
        5,
        "one trace per workflow run"
    );
    let calls = std::fs::read_to_string(dir.join("calls.txt")).unwrap();
    assert_eq!(
        span_edges(&spans),
        expected_edges(&calls),
        "span parents = real callers"
    );
    let finished = now_ns();
    for span in &spans {
        assert!(
            span.start_ns + 1_000_000_000 >= started && span.end_ns <= finished + 1_000_000_000
        );
    }
    // The fake collector renders attribute values with their protobuf wrapper.
    for span in &received {
        let attribute = |key: &str| span.attributes.get(key).cloned().unwrap_or_default();
        assert!(attribute("code.function.name").contains(&format!("\"{}\"", span.name)));
        assert!(attribute("thread.id").contains("IntValue"));
        assert!(attribute("flowtap.object").contains("\"libwfrt.so\""));
    }
}

#[test]
fn http_protobuf_receiver_gets_spans_with_process_resources() {
    let dir = scratch_dir("http");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let receiver = HttpReceiver::start(listener);
    let output = launch_demo(
        &dir,
        &[
            "--otlp-endpoint",
            &endpoint,
            "--otlp-protocol",
            "http/protobuf",
        ],
        &["--runs", "4", "--seed", "8", "--error-rate", "0.5"],
    )
    .env("OTEL_SERVICE_NAME", "support-bot")
    .env("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=test")
    .output()
    .unwrap();
    assert!(output.status.success(), "{output:?}");
    let counts = demo_counts(&String::from_utf8(output.stdout).unwrap());
    let received = receiver.spans();
    assert_eq!(
        received.len() as u64,
        total_calls(&counts),
        "one span per call"
    );
    let report = read_report(&dir.join("report.json"));
    assert_eq!(
        report["spans"]["exported"].as_u64(),
        Some(received.len() as u64)
    );
    assert_eq!(report["spans"]["dropped"].as_u64(), Some(0));

    let spans: Vec<SpanRecord> = received
        .iter()
        .map(|r| SpanRecord {
            trace_id: hex(&r.span.trace_id),
            span_id: hex(&r.span.span_id),
            parent_span_id: hex(&r.span.parent_span_id),
            name: r.span.name.clone(),
            start_ns: r.span.start_time_unix_nano,
            end_ns: r.span.end_time_unix_nano,
            attributes: Default::default(),
            failed: false,
        })
        .collect();
    assert_eq!(assert_complete_traces(&spans), 4);
    let calls = std::fs::read_to_string(dir.join("calls.txt")).unwrap();
    assert_eq!(span_edges(&spans), expected_edges(&calls));
    let resource = &received[0].resource;
    assert_eq!(resource["service.name"], "support-bot");
    assert_eq!(resource["process.executable.name"], "wfdemo");
    assert_eq!(resource["deployment.environment"], "test");
    assert!(resource["process.executable.path"].ends_with("/wfdemo"));
    assert!(resource.contains_key("host.name") && resource.contains_key("process.pid"));
    // Errors come from the runtime's semantics: failed retry attempts have status ERROR (2).
    let failures = received
        .iter()
        .filter(|r| r.span.status.as_ref().is_some_and(|s| s.code == 2));
    assert!(
        failures.count() > 0,
        "some attempts fail at the default error rate"
    );
}

#[test]
fn sampling_keeps_a_fraction_of_whole_traces() {
    let dir = scratch_dir("sampling");
    let spans_path = dir.join("spans.jsonl");
    let mut demo_args = vec!["--runs", "2000", "--seed", "4"];
    for primitive in ["step", "cache", "router", "llm", "timeout", "task"] {
        demo_args.extend([
            "--latency",
            Box::leak(format!("{primitive}=0").into_boxed_str()),
        ]);
    }
    let output = launch_demo(
        &dir,
        &[
            "--sample-rate",
            "0.1",
            "--spans-out",
            spans_path.to_str().unwrap(),
        ],
        &demo_args,
    )
    .output()
    .unwrap();
    assert!(output.status.success(), "{output:?}");
    let spans = read_json_lines(&std::fs::read_to_string(&spans_path).unwrap());
    let traces = assert_complete_traces(&spans);
    // 2000 runs at 0.1: mean 200, standard deviation 13.4; 4.5 of them either side.
    assert!((140..=260).contains(&traces), "{traces} sampled traces");
    // Complete: every sampled run has its whole shape (one workflow, three steps, three
    // branches handed off and executed).
    for (name, per_trace) in [
        ("wf_workflow_run", 1),
        ("wf_sequential", 1),
        ("wf_step_run", 3),
        ("wf_parallel", 1),
        ("wf_task_submit", 3),
        ("wf_task_execute", 3),
    ] {
        let count = spans.iter().filter(|s| s.name == name).count();
        assert_eq!(count, traces * per_trace, "{name}");
    }
    // Metrics do not depend on sampling.
    let report = read_report(&dir.join("report.json"));
    assert_eq!(report_function(&report, "wf_workflow_run")["calls"], 2000);
}

/// VmRSS of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn export_survives_the_collector_being_down() {
    let dir = scratch_dir("collector-down");
    let (demo, _) = isolated_fixture(&dir);
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let report_path = dir.join("report.json");
    let flowtap = Running::start(flowtap().args([
        "run",
        "--exe",
        demo.to_str().unwrap(),
        "--otlp-endpoint",
        &endpoint,
        "--otlp-protocol",
        "http/protobuf",
        "--report",
        "json",
        "--output",
        report_path.to_str().unwrap(),
    ]));
    let workload = Command::new(&demo)
        .args(["--forever", "--latency", "llm=100", "--latency", "step=50"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();

    // Ten seconds without a collector: the agent keeps running in bounded memory.
    let down_until = Instant::now() + Duration::from_secs(10);
    let mut peak_rss = 0;
    while Instant::now() < down_until {
        peak_rss = peak_rss.max(rss_kib(flowtap.child.id()));
        std::thread::sleep(Duration::from_millis(250));
    }
    let receiver = HttpReceiver::start(TcpListener::bind(("127.0.0.1", port)).unwrap());
    std::thread::sleep(Duration::from_secs(4));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(workload.id() as i32, libc::SIGTERM) };
    let output = workload.wait_with_output().unwrap();
    let counts = demo_counts(&String::from_utf8(output.stdout).unwrap());
    flowtap.interrupt();
    let (code, stderr) = flowtap.finish();
    assert_eq!(code, 0, "{stderr}");

    let report = read_report(&report_path);
    let spans = &report["spans"];
    let (received, exported, dropped) = (
        spans["received"].as_u64().unwrap(),
        spans["exported"].as_u64().unwrap(),
        spans["dropped"].as_u64().unwrap(),
    );
    assert!(
        spans["export_errors"].as_u64().unwrap() > 0,
        "the collector was down: {spans}"
    );
    assert!(exported > 0, "export resumed: {spans}");
    assert_eq!(receiver.spans().len() as u64, exported, "{spans}");
    assert_eq!(
        exported + dropped,
        received,
        "every span accounted for: {spans}"
    );
    // Every call made is a span produced: received, or lost at a full ring buffer (counted).
    let ring_full = report["losses"]["span_ring_full"].as_u64().unwrap();
    assert_eq!(received + ring_full, total_calls(&counts));
    assert!(peak_rss < 256 * 1024, "agent RSS peaked at {peak_rss} KiB");
}
