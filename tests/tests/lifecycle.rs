//! The target is never harmed and the agent cleans up after it: processes and threads coming and
//! going, the agent killed, overload, thousands of threads, Go binaries.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use flowtap_tests::*;

/// Demo arguments for the fastest workload: no simulated latency, `branches` worker threads.
fn fast(runs: &str, branches: &str) -> Vec<String> {
    let mut args = vec![
        "--runs".to_string(),
        runs.into(),
        "--branches".into(),
        branches.into(),
    ];
    for primitive in ["step", "cache", "router", "llm", "timeout", "task"] {
        args.extend(["--latency".into(), format!("{primitive}=0")]);
    }
    args
}

fn map_entries(flowtap: &Running, map: &str) -> f64 {
    sample(
        &flowtap.scrape(),
        "flowtap_kernel_map_entries",
        &[&format!("map=\"{map}\"")],
    )
}

#[test]
fn exited_threads_and_processes_leave_no_kernel_state() {
    let dir = scratch_dir("cleanup");
    let (demo, _) = isolated_fixture(&dir);
    let flowtap = Running::start(flowtap().args(["run", "--exe", demo.to_str().unwrap()]));
    // Three processes, one after another, with 1,000 worker threads each.
    for seed in ["1", "2", "3"] {
        let status = Command::new(&demo)
            .args(fast("200", "5"))
            .args(["--seed", seed])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while map_entries(&flowtap, "thread_stacks") + map_entries(&flowtap, "traced_processes") > 0.0 {
        assert!(
            Instant::now() < deadline,
            "kernel state left: {}",
            flowtap.scrape()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        map_entries(&flowtap, "handoffs"),
        0.0,
        "every hand-off was adopted"
    );
    flowtap.interrupt();
    assert_eq!(flowtap.finish().0, 0);
}

#[test]
fn killing_the_agent_leaves_the_target_running_with_identical_output() {
    // Long enough (about a second) to be mid-run when the agent is killed.
    let args = ["--runs", "1000", "--seed", "3", "--latency", "llm=300"];
    let baseline = Command::new(demo_path()).args(args).output().unwrap();
    assert!(baseline.status.success());

    let demo = spawn_held_demo(&args);
    let mut flowtap = Running::start(flowtap().args(["run", "--pid", &demo.id().to_string()]));
    let demo_pid = demo.id();
    let waiter = std::thread::spawn(move || release_demo(demo));
    std::thread::sleep(Duration::from_millis(200));
    flowtap.child.kill().unwrap();
    flowtap.child.wait().unwrap();
    assert!(
        std::path::Path::new(&format!("/proc/{demo_pid}")).exists(),
        "the target outlived the agent"
    );
    let traced = waiter.join().unwrap();
    assert_eq!(traced.as_bytes(), baseline.stdout.as_slice());
}

#[test]
fn output_is_identical_across_a_million_probed_calls() {
    let args = fast("70000", "1");
    let baseline = Command::new(demo_path()).args(&args).output().unwrap();
    assert!(baseline.status.success());
    let dir = scratch_dir("million");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let traced = launch_with_report(&dir, &[], &demo_path(), &args);
    assert_eq!(traced.code, 0, "{}", traced.stderr);
    assert_eq!(
        traced.stdout.as_bytes(),
        baseline.stdout,
        "the target's output changed"
    );
    let calls: u64 = report_counts(&read_report(&traced.report)).values().sum();
    assert!(calls >= 1_000_000, "{calls} calls");
}

#[test]
fn overload_loses_spans_never_metrics() {
    let dir = scratch_dir("overload");
    let spans_path = dir.join("spans.jsonl");
    let report_path = dir.join("report.json");
    // No worker threads: the fastest calls this workload makes.
    let args = fast("100000", "0");
    let demo = spawn_held_demo(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let flowtap = Running::start(flowtap().args([
        "run",
        "--pid",
        &demo.id().to_string(),
        "--spans-out",
        spans_path.to_str().unwrap(),
        "--report",
        "json",
        "--output",
        report_path.to_str().unwrap(),
    ]));
    let waiter = std::thread::spawn(move || release_demo(demo));
    // Stop the agent's reader: the ring buffer fills while the target keeps calling.
    std::thread::sleep(Duration::from_millis(100));
    // SAFETY: signalling a child we own.
    unsafe { libc::kill(flowtap.child.id() as i32, libc::SIGSTOP) };
    std::thread::sleep(Duration::from_secs(3));
    // SAFETY: signalling a child we own.
    unsafe { libc::kill(flowtap.child.id() as i32, libc::SIGCONT) };
    let counts = demo_counts(&waiter.join().unwrap());
    let (code, stderr) = flowtap.finish();
    assert_eq!(code, 0, "{stderr}");

    let report = read_report(&report_path);
    assert_same_counts(&counts, &report_counts(&report), "metrics under overload");
    let ring_full = report["losses"]["span_ring_full"].as_u64().unwrap();
    assert!(ring_full > 0, "the ring buffer never filled: {report}");
    let written =
        flowtap_tests::spans::read_json_lines(&std::fs::read_to_string(&spans_path).unwrap());
    assert_eq!(
        report["spans"]["received"].as_u64(),
        Some(written.len() as u64)
    );
    let calls: u64 = counts.values().sum();
    assert_eq!(
        written.len() as u64 + ring_full,
        calls,
        "spans written + lost = calls made"
    );
}

#[test]
fn go_binaries_are_refused() {
    let dir = scratch_dir("go");
    std::fs::write(
        dir.join("main.go"),
        "package main\n\nfunc work() int { return 42 }\n\nfunc main() { println(work()) }\n",
    )
    .unwrap();
    let built = Command::new("go")
        .args(["build", "-o", "hello", "main.go"])
        .current_dir(&dir)
        .env("GOCACHE", dir.join("cache"))
        .env("GOPATH", dir.join("gopath"))
        .env("GO111MODULE", "off")
        .status()
        .expect("go (Debian's golang-go) is installed by `cargo xtask setup`");
    assert!(built.success());
    let program = dir.join("hello");
    let (code, _, stderr) = run_flowtap(&[
        "run",
        "--symbols",
        "main.*",
        "--",
        program.to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("is a Go binary"), "{stderr}");
}
