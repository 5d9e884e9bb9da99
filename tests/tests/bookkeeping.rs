//! Exact call bookkeeping where real programs break naive shadow stacks: attaching to a thread
//! running flat out, longjmp out of probed calls, recursion deeper than the kernel's 64 nested
//! return probes, signal handlers, threads ending mid-call. Every count is compared with the
//! fixture's own (`bkdemo`), and every span's parent must have been emitted.

use std::{
    collections::HashSet,
    io::Write,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use flowtap_tests::*;

fn bkdemo() -> PathBuf {
    fixture_dir().join("bkdemo")
}

/// The fixture's "<what> <function> <n>" lines ("calls", "unwound").
fn fixture_counts(stdout: &str, what: &str) -> Counts {
    stdout
        .lines()
        .filter_map(|line| {
            let mut words = line.strip_prefix(what)?.split_whitespace();
            Some((words.next()?.to_string(), words.next()?.parse().ok()?))
        })
        .collect()
}

/// Per function of the report: `field`.
fn report_field(report: &serde_json::Value, field: &str) -> Counts {
    report["functions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["function"].as_str().unwrap().to_string(),
                f[field]
                    .as_u64()
                    .unwrap_or_else(|| panic!("{field} in {f}")),
            )
        })
        .collect()
}

/// Every call entered is returned, unwound, counted untimed or in flight, per function.
fn assert_balanced(report: &serde_json::Value) {
    for f in report["functions"].as_array().unwrap() {
        let n = |key: &str| f[key].as_u64().unwrap();
        let returned = n("calls") - n("unwound") - n("untimed");
        assert_eq!(
            n("entered"),
            returned + n("unwound") + n("untimed") + n("in_flight"),
            "unbalanced: {f}"
        );
    }
}

fn loss(report: &serde_json::Value, reason: &str) -> u64 {
    report["losses"][reason].as_u64().unwrap()
}

/// Runs `bkdemo ARGS` under flowtap (launch mode, every `bk_*` function); checks its calls and
/// unwound calls against the fixture's and the balance; returns the report.
fn launch_and_compare(test: &str, args: &[&str], flowtap_args: &[&str]) -> serde_json::Value {
    let dir = scratch_dir(test);
    let mut all = vec!["--symbols", "bk_*"];
    all.extend(flowtap_args);
    let run = launch_with_report(&dir, &all, &bkdemo(), args);
    assert_eq!(run.code, 0, "flowtap failed: {}", run.stderr);
    let report = read_report(&run.report);
    assert_same_counts(
        &fixture_counts(&run.stdout, "calls "),
        &report_counts(&report),
        test,
    );
    let unwound = fixture_counts(&run.stdout, "unwound ");
    let reported = report_field(&report, "unwound");
    for (function, calls) in report_counts(&report) {
        let expected = unwound.get(&function).copied().unwrap_or(0);
        assert_eq!(
            reported[&function], expected,
            "{test}: {function} unwound ({calls} calls)"
        );
    }
    assert_balanced(&report);
    report
}

#[test]
fn a_handler_that_longjmps_out_every_tenth_call_is_counted_exactly() {
    let report = launch_and_compare("longjmp", &["longjmp", "1000"], &[]);
    let handler = report_function(&report, "bk_handler");
    assert_eq!(handler["calls"], 1000);
    assert_eq!(handler["unwound"], 100);
    assert_eq!(loss(&report, "stack_overflow"), 0);
}

#[test]
fn recursion_that_longjmps_back_to_its_top_is_counted_exactly() {
    let report = launch_and_compare("rec-jump", &["rec-jump", "50", "20"], &[]);
    assert_eq!(report_function(&report, "bk_rec_jump")["unwound"], 1000);
}

#[test]
fn recursion_40_70_and_1000_deep_counts_every_call() {
    for (depth, times) in [(40u64, 20u64), (70, 20), (1000, 3)] {
        let test = format!("recurse-{depth}");
        let report = launch_and_compare(
            &test,
            &["recurse", &depth.to_string(), &times.to_string()],
            &[],
        );
        let rec = report_function(&report, "bk_rec");
        assert_eq!(rec["calls"], depth * times, "{test}");
        // Return probes nest 64 deep at most: deeper calls are counted, not timed.
        let untimed = depth.saturating_sub(64) * times;
        assert_eq!(rec["untimed"], untimed, "{test}");
        assert_eq!(loss(&report, "return_probe_depth"), untimed, "{test}");
        assert_eq!(loss(&report, "stack_overflow"), 0, "{test}");
    }
}

#[test]
fn probed_calls_in_signal_handlers_are_counted_exactly() {
    let report = launch_and_compare("signals", &["signals", "300000"], &[]);
    assert_eq!(report_function(&report, "bk_work_outer")["unwound"], 0);
}

#[test]
fn threads_ending_mid_call_close_their_calls_as_unwound() {
    launch_and_compare("threads", &["threads", "20"], &[]);
}

/// A span whose parent was never emitted (a dangling child) is the bug this looks for.
fn assert_no_dangling_parents(spans: &[spans::SpanRecord], what: &str) {
    let ids: HashSet<(&str, &str)> = spans
        .iter()
        .map(|s| (s.trace_id.as_str(), s.span_id.as_str()))
        .collect();
    let dangling: Vec<&spans::SpanRecord> = spans
        .iter()
        .filter(|s| !s.parent_span_id.is_empty() && !s.parent_span_id.chars().all(|c| c == '0'))
        .filter(|s| !ids.contains(&(s.trace_id.as_str(), s.parent_span_id.as_str())))
        .collect();
    assert!(
        dangling.is_empty(),
        "{what}: {} spans with a parent never emitted, e.g. {:?}",
        dangling.len(),
        dangling.first()
    );
}

#[test]
fn span_trees_after_longjmp_recursion_and_thread_exit_have_every_parent() {
    for args in [
        &["longjmp", "1000"][..],
        &["rec-jump", "50", "20"],
        &["recurse", "70", "10"],
        &["threads", "20"],
    ] {
        let test = format!("spans-{}", args[0]);
        let spans_file = scratch_dir(&test).join("spans.jsonl");
        let report = launch_and_compare(
            &test,
            args,
            &[
                "--spans-out",
                spans_file.to_str().unwrap(),
                "--sample-rate",
                "1",
            ],
        );
        let spans = spans::read_json_lines(&std::fs::read_to_string(&spans_file).unwrap());
        assert_no_dangling_parents(&spans, &test);
        let unwound: u64 = report_field(&report, "unwound").values().sum();
        let marked = spans
            .iter()
            .filter(|s| s.attribute("flowtap.unwound") == Some("true"))
            .inspect(|s| assert!(s.failed, "an unwound span has status ERROR"))
            .count() as u64;
        assert_eq!(marked, unwound, "{test}: unwound spans");
    }
}

/// Starts `bkdemo busy N` (a thread calling probed functions flat out) and waits until it has
/// mapped `library`.
fn spawn_busy(demo: &Path, library: &str, calls: &str) -> Child {
    let spawn = || {
        Command::new(demo)
            .args(["busy", calls])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
    };
    // A copy just written can be "busy" while a child another test forked holds its descriptor.
    let mut child = spawn();
    for _ in 0..500 {
        match &child {
            Err(error) if error.kind() == std::io::ErrorKind::ExecutableFileBusy => {
                std::thread::sleep(Duration::from_millis(10));
                child = spawn();
            }
            _ => break,
        }
    }
    let child = child.expect("starting bkdemo");
    let maps = format!("/proc/{}/maps", child.id());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&maps).is_ok_and(|m| m.contains(library)) {
        assert!(Instant::now() < deadline, "bkdemo never mapped {library}");
        std::thread::sleep(Duration::from_millis(10));
    }
    // Let it run flat out before the probes go in.
    std::thread::sleep(Duration::from_millis(200));
    child
}

/// Attaches while the fixture spins, then has it make its counted calls.
fn busy_attach(test: &str, target: &[&str], demo: &Path, mut child: Child) {
    let report_path = scratch_dir(&format!("{test}-report")).join("report.json");
    let mut args = vec!["run", "--symbols", "bk_*", "--report", "json", "--output"];
    args.push(report_path.to_str().unwrap());
    args.extend(target);
    let flowtap = Running::start(flowtap().args(&args));
    // Spinning on under the probes for a while, then the counted calls.
    std::thread::sleep(Duration::from_millis(300));
    writeln!(child.stdin.as_mut().unwrap(), "go").unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{} failed: {output:?}",
        demo.display()
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    if target[0] == "--exe" {
        flowtap.interrupt();
    }
    let (code, stderr) = flowtap.finish();
    assert_eq!(code, 0, "{stderr}");
    let report = read_report(&report_path);
    let made = fixture_counts(&stdout, "calls ");
    let counted = report_counts(&report);
    for function in ["bk_work_outer", "bk_work_inner"] {
        assert_eq!(
            counted.get(function),
            made.get(function),
            "{test}: {function}"
        );
    }
    assert_eq!(
        counted["bk_work_inner"],
        2 * counted["bk_work_outer"],
        "callers and callees agree"
    );
    assert_eq!(loss(&report, "stack_overflow"), 0, "{test}");
    assert_eq!(loss(&report, "return_probe_depth"), 0, "{test}");
    assert!(counted["bk_spin_outer"] > 0, "{test}: attached while busy");
    assert_balanced(&report);
}

#[test]
fn attaching_by_pid_to_a_thread_running_flat_out_counts_every_later_call() {
    let child = spawn_busy(&bkdemo(), "libbk.so", "200000");
    let pid = child.id().to_string();
    busy_attach("busy-pid", &["--pid", &pid], &bkdemo(), child);
}

#[test]
fn attaching_to_a_library_used_flat_out_counts_every_later_call() {
    let dir = scratch_dir("busy-lib");
    let (demo, library) = (dir.join("bkdemo"), dir.join("libbk.so"));
    std::fs::copy(bkdemo(), &demo).unwrap();
    std::fs::copy(fixture_dir().join("libbk.so"), &library).unwrap();
    let child = spawn_busy(&demo, library.to_str().unwrap(), "200000");
    busy_attach(
        "busy-lib",
        &["--exe", library.to_str().unwrap()],
        &demo,
        child,
    );
}
