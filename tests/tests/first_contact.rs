//! What a new user meets first: launch mode leaves the command's standard output alone, the
//! report tells the truth when it is empty, `symbols` fails clearly, stops quietly on a closed
//! pipe and matches C++ names without their parameter lists, `--version` says what it is.

use std::process::{Command, Stdio};

use flowtap_tests::{
    demo_path, flowtap, launch_with_report, read_report, run_flowtap, scratch_dir,
};

/// Compiles one C or C++ source into `dir`; returns the program's path.
fn compile(dir: &std::path::Path, compiler: &str, name: &str, source: &str) -> std::path::PathBuf {
    let extension = if compiler == "g++" { "cc" } else { "c" };
    let file = dir.join(format!("{name}.{extension}"));
    std::fs::write(&file, source).unwrap();
    let program = dir.join(name);
    let status = Command::new(compiler)
        .args(["-O1", "-fno-omit-frame-pointer", "-o"])
        .arg(&program)
        .arg(&file)
        .status()
        .unwrap_or_else(|error| panic!("{compiler} (installed by `cargo xtask setup`): {error}"));
    assert!(status.success(), "{compiler} failed on {name}");
    program
}

#[test]
fn launch_mode_leaves_standard_output_to_the_command() {
    // A binary file, so that any byte flowtap added would show.
    let input = flowtap_tests::library_path();
    let alone = Command::new("cat").arg(&input).output().unwrap();
    assert!(alone.status.success());
    let traced = flowtap()
        .args([
            "run",
            "--symbols",
            "libc.so.6:read",
            "--symbols",
            "libc.so.6:write",
        ])
        .args(["--", "cat"])
        .arg(&input)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&traced.stderr);
    assert_eq!(traced.status.code(), Some(0), "{stderr}");
    assert!(
        traced.stdout == alone.stdout,
        "the command's stdout changed under flowtap: {} bytes instead of {}",
        traced.stdout.len(),
        alone.stdout.len()
    );
    assert_eq!(traced.stdout, std::fs::read(&input).unwrap());
    // The report went to stderr, with the calls cat made.
    assert!(stderr.contains("FUNCTION"), "{stderr}");
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with("read ") || l.starts_with("write ")),
        "{stderr}"
    );
}

#[test]
fn pid_mode_report_stays_on_standard_output() {
    let demo = flowtap_tests::spawn_held_demo(&["--runs", "3"]);
    let pid = demo.id().to_string();
    let agent = flowtap_tests::Running::start(
        flowtap()
            .args(["run", "--pid", &pid])
            .stdout(Stdio::piped()),
    );
    flowtap_tests::release_demo(demo);
    let mut child = agent;
    let stdout = {
        use std::io::Read;
        let mut text = String::new();
        child
            .child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        text
    };
    let (code, stderr) = child.finish();
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.starts_with("FUNCTION"), "{stdout}");
    assert!(stdout.contains("wf_workflow_run"), "{stdout}");
    assert!(!stderr.contains("FUNCTION"), "{stderr}");
}

#[test]
fn empty_report_when_nothing_was_called() {
    let dir = scratch_dir("nothing-called");
    let program = compile(
        &dir,
        "cc",
        "idle",
        "__attribute__((noinline)) int never_called(int x) { return x * 2; }\n\
         int main(int argc, char **argv) { (void)argv; return argc > 5 ? never_called(argc) : 0; }\n",
    );
    let (code, stdout, stderr) = run_flowtap(&[
        "run",
        "--symbols",
        "never_called",
        "--",
        program.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert!(
        stderr.contains("(no probed function was called)"),
        "{stderr}"
    );
    assert!(stderr.contains("lost events: 0"), "{stderr}");
}

#[test]
fn empty_report_counts_calls_that_never_returned() {
    let dir = scratch_dir("never-returned");
    // One call that exits the process from inside, one that is still running when the trace
    // stops (--duration): neither returns, neither may pass for "not called".
    let program = compile(
        &dir,
        "cc",
        "stuck",
        "#include <stdlib.h>\n#include <unistd.h>\n\
         __attribute__((noinline)) void leave(int code) { exit(code); }\n\
         __attribute__((noinline)) void wait_long(void) { sleep(3); }\n\
         int main(int argc, char **argv) { (void)argv; if (argc > 1) wait_long(); leave(3); }\n",
    );
    let run = launch_with_report(&dir, &["--symbols", "leave"], &program, &[]);
    assert_eq!(run.code, 3, "{}", run.stderr);
    let report = read_report(&run.report);
    // The kernel closes the frame of a thread that exits inside a call as unwound.
    let leave = &report["functions"][0];
    assert_eq!(leave["function"], "leave", "{report}");
    assert_eq!(leave["calls"], 1, "{report}");
    assert_eq!(leave["unwound"], 1, "{report}");

    let (code, _, stderr) = run_flowtap(&[
        "run",
        "--symbols",
        "wait_long",
        "--duration",
        "1",
        "--",
        program.to_str().unwrap(),
        "wait",
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        !stderr.contains("no probed function was called"),
        "{stderr}"
    );
    assert!(
        stderr.contains("calls in progress when tracing stopped: 1 (wait_long 1)"),
        "{stderr}"
    );
}

#[test]
fn symbols_with_no_match_fail_in_one_line() {
    let demo = demo_path();
    let (code, stdout, stderr) = run_flowtap(&[
        "symbols",
        "--exe",
        demo.to_str().unwrap(),
        "--filter",
        "no_such_function_*",
    ]);
    assert_ne!(code, 0);
    assert!(stdout.is_empty(), "{stdout}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("no function matches `no_such_function_*`"),
        "{stderr}"
    );
}

/// Runs flowtap with its stdout a pipe whose reader is already gone.
fn closed_pipe(args: &[&str]) -> (Option<i32>, String) {
    let mut child = flowtap()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let output = child.wait_with_output().unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn symbols_and_profile_show_end_quietly_on_a_closed_pipe() {
    // libc lists thousands of functions: far more than a pipe holds.
    let (code, stderr) = closed_pipe(&["symbols", "--exe", "/lib/x86_64-linux-gnu/libc.so.6"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.is_empty(), "{stderr}");
    let (code, stderr) = closed_pipe(&["profile", "show", "workflow"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.is_empty(), "{stderr}");
}

#[test]
fn cpp_names_match_without_their_parameter_list() {
    let dir = scratch_dir("cpp-glob");
    let program = compile(
        &dir,
        "g++",
        "shapes",
        "namespace ns { struct Cls {\n\
           __attribute__((noinline)) int g(int x) const { return x + 1; }\n\
           __attribute__((noinline)) int g(double x) const { return (int)x + 2; }\n\
         }; }\n\
         int main() { ns::Cls c; int s = 0; for (int i = 0; i < 3; i++) s += c.g(i); return s + c.g(1.5) > 100; }\n",
    );
    let (code, stdout, stderr) = run_flowtap(&[
        "symbols",
        "--exe",
        program.to_str().unwrap(),
        "--filter",
        "ns::Cls::g",
    ]);
    assert_eq!(code, 0, "{stderr}");
    // Both overloads, told apart by their parameter lists.
    assert!(stdout.contains("ns::Cls::g(int) const"), "{stdout}");
    assert!(stdout.contains("ns::Cls::g(double) const"), "{stdout}");

    let run = launch_with_report(&dir, &["--symbols", "ns::Cls::g"], &program, &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report = read_report(&run.report);
    let calls = |name: &str| {
        report["functions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["function"] == name)
            .map(|f| f["calls"].as_u64().unwrap())
    };
    assert_eq!(calls("ns::Cls::g(int) const"), Some(3), "{report}");
    assert_eq!(calls("ns::Cls::g(double) const"), Some(1), "{report}");
}

#[test]
fn version_names_the_commit_and_the_kernel_features() {
    let (code, stdout, stderr) = run_flowtap(&["--version"]);
    assert_eq!(code, 0, "{stderr}");
    let first = stdout.lines().next().unwrap_or_default();
    assert!(
        first.starts_with(&format!("flowtap {} (commit ", env!("CARGO_PKG_VERSION"))),
        "{stdout}"
    );
    assert!(!first.contains("commit )"), "{stdout}");
    for feature in ["uprobe PMU", "kernel BTF", "attach cookies", "uprobe.multi"] {
        assert!(stdout.contains(&format!("{feature} yes")), "{stdout}");
    }
}

#[test]
fn quiet_silences_status_lines() {
    let dir = scratch_dir("quiet");
    let run = launch_with_report(&dir, &["--quiet"], &demo_path(), &["--runs", "2"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stderr.is_empty(), "{}", run.stderr);
    assert_eq!(read_report(&run.report)["exit_code"], 0);
}

#[test]
fn symbols_says_which_objects_it_skipped_and_why() {
    let dir = scratch_dir("skipped");
    let program = compile(&dir, "cc", "plain", "int main(void) { return 0; }\n");
    let stripped = Command::new("strip").arg(&program).status().unwrap();
    assert!(stripped.success());
    let (code, stdout, stderr) = run_flowtap(&[
        "symbols",
        "--exe",
        program.to_str().unwrap(),
        "--filter",
        "main",
    ]);
    assert_ne!(code, 0, "{stdout}");
    assert!(
        stderr.contains("/plain: stripped: no function symbols"),
        "{stderr}"
    );
    assert!(stderr.contains("no function matches `main`"), "{stderr}");
}
