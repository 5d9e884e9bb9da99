//! Where probes go: never on what is not a function entry (`.cold` fragments, `_start`, the
//! unwinder), and exits that survive exceptions and panics. Each target's output and exit code
//! must be byte-identical with and without flowtap, and its own counts must match the report's.

use std::{path::Path, process::Command};

use flowtap_tests::*;

/// A program's stdout, stderr and exit code, run without flowtap.
fn untraced(program: &Path, args: &[&str]) -> (String, String, i32) {
    let output = Command::new(program)
        .args(args)
        .output()
        .expect("running the fixture");
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
        output.status.code().unwrap_or(-1),
    )
}

/// Runs `program ARGS` under `flowtap run FLOWTAP_ARGS` and asserts the program's stdout and
/// exit code are those of an untraced run; returns the run.
fn traced_identically(
    test: &str,
    flowtap_args: &[&str],
    program: &Path,
    args: &[&str],
) -> Launched {
    let (stdout, _, code) = untraced(program, args);
    let dir = scratch_dir(test);
    let run = launch_with_report(&dir, flowtap_args, program, args);
    assert_eq!(run.stdout, stdout, "{test}: output changed\n{}", run.stderr);
    assert!(
        run.stderr
            .contains(&format!("command exited with code {code}")),
        "{test}: exit code changed from {code}\n{}",
        run.stderr
    );
    run
}

/// The "unwound <function> <n>" lines a fixture prints: calls an exception or panic left.
fn fixture_unwound(stdout: &str) -> Counts {
    stdout
        .lines()
        .filter_map(|line| {
            let (function, count) = line.strip_prefix("unwound ")?.rsplit_once(' ')?;
            Some((function.to_string(), count.parse().ok()?))
        })
        .collect()
}

/// "calls <function> <n>" lines whose function name may hold spaces (C++ signatures).
fn fixture_calls(stdout: &str) -> Counts {
    stdout
        .lines()
        .filter_map(|line| {
            let (function, count) = line.strip_prefix("calls ")?.rsplit_once(' ')?;
            Some((function.to_string(), count.parse().ok()?))
        })
        .collect()
}

fn report_field(report: &serde_json::Value, field: &str) -> Counts {
    report["functions"]
        .as_array()
        .expect("functions array")
        .iter()
        .map(|f| {
            let count = f[field]
                .as_u64()
                .unwrap_or_else(|| panic!("no `{field}` in {f}"));
            (f["function"].as_str().unwrap().to_string(), count)
        })
        .collect()
}

/// Every call the fixture entered ended (returned or unwound), and the unwound ones are told.
fn assert_every_call_accounted(run: &Launched, what: &str) {
    let report = read_report(&run.report);
    assert_same_counts(&fixture_calls(&run.stdout), &report_counts(&report), what);
    assert_same_counts(
        &fixture_unwound(&run.stdout),
        &report_field(&report, "unwound"),
        what,
    );
}

fn names_in_report(report: &serde_json::Value) -> Vec<String> {
    report_counts(report).into_keys().collect()
}

#[test]
fn a_cold_fragment_is_not_probed_and_its_function_is_counted() {
    let cold = fixture_dir().join("cold");
    let run = traced_identically("cold-fragment", &["--symbols", "accumulate*"], &cold, &[]);
    assert!(
        run.stderr.contains("`accumulate.cold`") && run.stderr.contains("entered by a jump"),
        "the skipped fragment is named with why: {}",
        run.stderr
    );
    let report = read_report(&run.report);
    let counts = report_counts(&report);
    let made = fixture_calls(&run.stdout);
    assert_eq!(
        counts.get("accumulate"),
        made.get("accumulate"),
        "{counts:?}"
    );
    assert!(!counts.contains_key("accumulate.cold"), "{counts:?}");
}

#[test]
fn a_broad_glob_over_a_small_program_leaves_it_intact() {
    let cold = fixture_dir().join("cold");
    let run = traced_identically("cold-star", &["--symbols", "*"], &cold, &["1000", "x"]);
    let report = read_report(&run.report);
    let names = names_in_report(&report);
    for refused in ["_start", "accumulate.cold"] {
        assert!(!names.iter().any(|n| n == refused), "{refused} was probed");
    }
    let counts = report_counts(&report);
    for (function, made) in fixture_calls(&run.stdout) {
        assert_eq!(counts.get(&function), Some(&made), "{function}: {counts:?}");
    }
}

#[test]
fn a_broad_glob_over_python_leaves_it_intact() {
    let python = Path::new("/usr/bin/python3");
    assert!(python.exists(), "install python3 (apt-get install python3)");
    let args = ["-c", "print(sum(range(10)))"];
    for glob in ["*", "python3*:*"] {
        let run = traced_identically("python-star", &["--symbols", glob], python, &args);
        assert_eq!(run.stdout, "45\n");
        let report = read_report(&run.report);
        assert!(
            report_counts(&report).values().sum::<u64>() > 1000,
            "python3 made calls: {report}"
        );
    }
}

#[test]
fn cpp_exceptions_through_probed_member_functions() {
    let throws = fixture_dir().join("throws");
    let run = traced_identically("cpp-exceptions", &["--symbols", "Parser::*"], &throws, &[]);
    assert_every_call_accounted(&run, "C++ exceptions");
}

#[test]
fn cpp_with_the_unwinder_selected_skips_it_and_names_why() {
    let throws = fixture_dir().join("throws");
    let run = traced_identically(
        "cpp-cxa-throw",
        &["--symbols", "Parser::*", "--symbols", "__cxa_throw"],
        &throws,
        &[],
    );
    assert!(
        run.stderr.contains("`__cxa_throw`") && run.stderr.contains("unwinder"),
        "{}",
        run.stderr
    );
    assert_every_call_accounted(&run, "C++ exceptions, __cxa_throw selected");
}

#[test]
fn the_unwinder_alone_is_refused_in_one_line() {
    let throws = fixture_dir().join("throws");
    let (code, _, stderr) = run_flowtap(&[
        "run",
        "--symbols",
        "__cxa_throw",
        "--",
        throws.to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("`__cxa_throw`") && stderr.contains("part of the exception unwinder"),
        "{stderr}"
    );
}

#[test]
fn a_broad_glob_over_libstdcxx_with_exceptions_thrown_inside_it() {
    let stdthrow = fixture_dir().join("stdthrow");
    let run = traced_identically(
        "stdthrow",
        &["--symbols", "libstdc++.so.6:*"],
        &stdthrow,
        &[],
    );
    let report = read_report(&run.report);
    let (calls, unwound) = (report_counts(&report), report_field(&report, "unwound"));
    // The throwing helpers never return: every call of theirs ended by unwinding.
    for (function, caught) in fixture_unwound(&run.stdout) {
        assert_eq!(calls.get(&function), Some(&caught), "{function}: {calls:?}");
        assert_eq!(
            unwound.get(&function),
            Some(&caught),
            "{function}: {unwound:?}"
        );
    }
    let names = names_in_report(&report);
    assert!(
        !names.iter().any(|n| n == "__cxa_throw"),
        "the unwinder was probed"
    );
}

#[test]
fn rust_panics_caught_through_probed_functions() {
    let panics = fixture_dir().join("panics");
    let run = traced_identically("rust-panics", &["--symbols", "probed_*"], &panics, &[]);
    assert_every_call_accounted(&run, "Rust panics");
}

#[test]
fn exit_modes_on_a_c_program_leave_it_intact_and_exact() {
    // The C fixture does not unwind: return probes (`auto`) and return instructions both fit it,
    // asked for everywhere or for its object alone.
    let cold = fixture_dir().join("cold");
    for mode in ["auto", "instructions", "return", "cold=instructions"] {
        let run = traced_identically(
            "exit-modes",
            &[
                "--symbols",
                "accumulate",
                "--symbols",
                "mix",
                "--exit-probes",
                mode,
            ],
            &cold,
            &[],
        );
        let counts = report_counts(&read_report(&run.report));
        let made = fixture_calls(&run.stdout);
        for function in ["accumulate", "mix"] {
            assert_eq!(
                counts.get(function),
                made.get(function),
                "{mode}: {counts:?}"
            );
        }
    }
}

#[test]
fn symbols_lists_refusals_apart_with_reasons_and_the_exit_mode() {
    let listing = |program: &str, filter: &str| {
        let path = fixture_dir().join(program);
        let (code, stdout, stderr) = run_flowtap(&[
            "symbols",
            "--exe",
            path.to_str().unwrap(),
            "--filter",
            filter,
        ]);
        assert_eq!(code, 0, "{stderr}");
        stdout
    };
    let cold = listing("cold", "*");
    let (traceable, refused) = cold.split_once("  not traceable:").expect(&cold);
    assert!(traceable.contains("exits: return probes"), "{cold}");
    assert!(traceable.contains("\n  accumulate\n"), "{cold}");
    assert!(!traceable.contains("_start"), "{cold}");
    assert!(!traceable.contains("accumulate.cold"), "{cold}");
    assert!(
        refused.contains("accumulate.cold: a `.cold` fragment"),
        "{cold}"
    );
    assert!(
        refused.contains("_start: the program's entry point"),
        "{cold}"
    );

    let marked = fixture_dir().join("cold");
    let (code, marked, stderr) = run_flowtap(&[
        "symbols",
        "--exe",
        marked.to_str().unwrap(),
        "--filter",
        "accumulate",
        "--exit-probes",
        "cold=instructions",
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        marked
            .contains("/cold (1 functions); exits: return instructions (as --exit-probes asks)\n"),
        "{marked}"
    );

    let throws = listing("throws", "*Parser*");
    assert!(
        throws.contains("exits: return instructions (it unwinds"),
        "{throws}"
    );
    assert!(throws.contains("\n  Parser::parse(long)\n"), "{throws}");
    let panics = listing("panics", "*");
    assert!(
        panics.contains("exits: return instructions (it unwinds"),
        "{panics}"
    );
    let (traceable, refused) = panics.split_once("  not traceable:").expect(&panics);
    assert!(traceable.contains("\n  probed_step"), "{panics}");
    assert!(
        refused.contains("rust_eh_personality: part of the exception unwinder"),
        "{panics}"
    );
}

/// Uprobes already on a file (another tracer's, or ours on a library armed before it loads) are
/// put by the kernel into every private mapping of it: reading a function's first instructions
/// from such a mapping showed a breakpoint, and `accumulate` (a `push %rbp` entry) was listed as
/// single-stepped while another test probed it.
#[test]
fn probes_already_on_a_file_do_not_change_what_its_code_reads_as() {
    let dir = scratch_dir("probed-file");
    let copy = dir.join("cold");
    std::fs::copy(fixture_dir().join("cold"), &copy).unwrap();
    let copy = copy.to_str().unwrap();
    let listing = || {
        let (code, stdout, stderr) =
            run_flowtap(&["symbols", "--exe", copy, "--filter", "accumulate"]);
        assert_eq!(code, 0, "{stderr}");
        stdout
    };
    let unprobed = listing();
    assert!(unprobed.contains("\n  accumulate\n"), "{unprobed}");
    let agent = Running::start(flowtap().args(["run", "--exe", copy, "--symbols", "accumulate"]));
    let probed = listing();
    agent.interrupt();
    let (code, stderr) = agent.finish();
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(probed, unprobed, "the listing while the file is probed");
}
