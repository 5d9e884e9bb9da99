//! Exact per-function counts and latencies of the fixture runtime, in every target mode,
//! checked against the runtime's own counts and against bpftrace.

use std::{path::PathBuf, process::Command};

use flowtap_tests::*;

#[test]
fn launch_mode_counts_every_call_exactly() {
    let dir = scratch_dir("launch");
    let run = launch_with_report(&dir, &[], &demo_path(), &["--runs", "150", "--seed", "7"]);
    assert_eq!(run.code, 0, "flowtap failed: {}", run.stderr);
    assert!(
        run.stderr.contains("command exited with code 0"),
        "{}",
        run.stderr
    );
    let report = read_report(&run.report);
    assert_same_counts(
        &demo_counts(&run.stdout),
        &report_counts(&report),
        "launch mode",
    );
    assert_eq!(report["lost_events"], 0);
    assert_eq!(report["exit_code"], 0);
}

#[test]
fn launch_mode_passes_the_exit_code_through() {
    let (code, _, stderr) = run_flowtap(&["run", "--", demo_path().to_str().unwrap(), "--bogus"]);
    assert_eq!(code, 2, "wfdemo's usage error exits 2: {stderr}");
    assert!(stderr.contains("command exited with code 2"), "{stderr}");
}

#[test]
fn pid_mode_counts_every_call_after_attaching_and_ends_with_the_process() {
    let dir = scratch_dir("pid");
    let report_path = dir.join("report.json");
    let demo = spawn_held_demo(&["--runs", "120", "--seed", "11"]);
    let pid = demo.id().to_string();
    let flowtap = Running::start(flowtap().args([
        "run",
        "--pid",
        &pid,
        "--report",
        "json",
        "--output",
        report_path.to_str().unwrap(),
    ]));
    let stdout = release_demo(demo);
    let (code, stderr) = flowtap.finish();
    assert_eq!(code, 0, "{stderr}");
    let report = read_report(&report_path);
    assert_same_counts(&demo_counts(&stdout), &report_counts(&report), "pid mode");
}

#[test]
fn exe_mode_counts_processes_of_the_binary_only() {
    let dir = scratch_dir("exe");
    let report_path = dir.join("report.json");
    let (demo, _) = isolated_fixture(&dir);
    // Another program mapping the same libwfrt.so: its calls must not be counted.
    let other = dir.join("other-app");
    std::fs::copy(&demo, &other).unwrap();

    let flowtap = Running::start(flowtap().args([
        "run",
        "--exe",
        demo.to_str().unwrap(),
        "--report",
        "json",
        "--output",
        report_path.to_str().unwrap(),
    ]));
    let run = |demo: PathBuf, seed: &'static str| {
        move || {
            let output = Command::new(demo)
                .args(["--runs", "70", "--seed", seed])
                .output();
            let output = output.expect("running wfdemo");
            assert!(output.status.success(), "{output:?}");
            output
        }
    };
    let first = std::thread::spawn(run(demo.clone(), "1"));
    let second = std::thread::spawn(run(demo.clone(), "2"));
    let unrelated = Command::new(&other)
        .args(["--runs", "50"])
        .output()
        .unwrap();
    assert!(unrelated.status.success());
    let mut expected = demo_counts(&String::from_utf8(first.join().unwrap().stdout).unwrap());
    let second = demo_counts(&String::from_utf8(second.join().unwrap().stdout).unwrap());
    for (function, count) in second {
        *expected.entry(function).or_default() += count;
    }
    flowtap.interrupt();
    let (code, stderr) = flowtap.finish();
    assert_eq!(code, 0, "{stderr}");
    let report = read_report(&report_path);
    assert_same_counts(
        &expected,
        &report_counts(&report),
        "exe mode, two processes",
    );
}

#[test]
fn exe_mode_on_a_library_counts_every_process_mapping_it() {
    let dir = scratch_dir("library");
    let report_path = dir.join("report.json");
    let (demo, library) = isolated_fixture(&dir);
    let flowtap = Running::start(flowtap().args([
        "run",
        "--exe",
        library.to_str().unwrap(),
        "--report",
        "json",
        "--output",
        report_path.to_str().unwrap(),
    ]));
    let output = Command::new(&demo)
        .args(["--runs", "40", "--seed", "5"])
        .output()
        .unwrap();
    assert!(output.status.success());
    flowtap.interrupt();
    let (code, stderr) = flowtap.finish();
    assert_eq!(code, 0, "{stderr}");
    let expected = demo_counts(&String::from_utf8(output.stdout).unwrap());
    assert_same_counts(
        &expected,
        &report_counts(&read_report(&report_path)),
        "library",
    );
}

#[test]
fn a_20ms_primitive_reports_p50_between_20_and_30ms() {
    let dir = scratch_dir("latency");
    let args = ["--runs", "10", "--latency", "timeout=20000"];
    let run = launch_with_report(&dir, &[], &demo_path(), &args);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report = read_report(&run.report);
    let timeout = report_function(&report, "wf_timeout_run");
    let p50 = timeout["p50_ns"].as_u64().unwrap();
    assert!((20_000_000..=30_000_000).contains(&p50), "p50 {p50} ns");
    let max = timeout["max_ns"].as_u64().unwrap();
    let p99 = timeout["p99_ns"].as_u64().unwrap();
    assert!(p50 <= p99 && p99 <= max, "p50 {p50} p99 {p99} max {max}");
    // Errors come from the runtime's semantics: wf_timeout_run returns -1 when it times out.
    assert!(timeout["errors"].as_u64().unwrap() > 0, "{timeout}");
}

#[test]
fn bpftrace_counts_the_same_calls() {
    let dir = scratch_dir("bpftrace");
    let (demo, library) = isolated_fixture(&dir);
    let script = format!(
        "uprobe:{}:wf_* {{ @[probe] = count(); }}",
        library.display()
    );
    let command = format!("{} --runs 60 --seed 9", demo.display());
    let output = Command::new("bpftrace")
        .args(["-e", &script, "-c", &command])
        .output()
        .expect("bpftrace is installed by `cargo xtask setup`");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "bpftrace failed: {output:?}");
    let bpftrace: Counts = stdout
        .lines()
        .filter_map(|line| {
            // @[uprobe:/path/libwfrt.so:wf_llm_call]: 200
            let (probe, value) = line.strip_prefix("@[")?.split_once("]: ")?;
            let function = probe.rsplit(':').next()?;
            Some((function.to_string(), value.trim().parse().ok()?))
        })
        .collect();
    let demo_own = demo_counts(&stdout);
    assert_same_counts(&demo_own, &bpftrace, "bpftrace against the runtime");

    let run = launch_with_report(&dir, &[], &demo, &["--runs", "60", "--seed", "9"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report = read_report(&run.report);
    assert_same_counts(
        &bpftrace,
        &report_counts(&report),
        "flowtap against bpftrace",
    );
}

#[test]
fn symbols_lists_the_runtime_per_object() {
    let (code, stdout, stderr) = run_flowtap(&[
        "symbols",
        "--exe",
        demo_path().to_str().unwrap(),
        "--filter",
        "wf_*",
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("libwfrt.so (14 functions)"), "{stdout}");
    assert!(
        stdout.lines().any(|line| line.trim() == "wf_llm_call"),
        "{stdout}"
    );
}

#[test]
fn check_reports_a_capable_host() {
    let (code, stdout, _) = run_flowtap(&["check"]);
    assert_eq!(code, 0, "{stdout}");
    for what in [
        "privileges",
        "uprobe PMU",
        "kernel BTF",
        "attach cookies",
        "uprobe.multi",
    ] {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(what) && l.contains(" ok ")),
            "{what}: {stdout}"
        );
    }
}
