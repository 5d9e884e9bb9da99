//! Bad input: one line that says what is wrong and what to do, a non-zero exit, no panic.

use flowtap_tests::*;

/// Runs flowtap, expecting failure; returns its single stderr line.
fn fails(args: &[&str]) -> String {
    let (code, _, stderr) = run_flowtap(args);
    assert_eq!(code, 2, "expected exit code 2 for {args:?}: {stderr}");
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.starts_with("flowtap: warning"))
        .collect();
    assert_eq!(lines.len(), 1, "expected one line for {args:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    lines[0].to_string()
}

#[test]
fn unknown_pid() {
    let line = fails(&["run", "--pid", "4000000"]);
    assert!(line.contains("no process with PID 4000000"), "{line}");
}

#[test]
fn kernel_thread_pid() {
    let line = fails(&["run", "--pid", "2"]);
    assert!(line.contains("kernel thread"), "{line}");
}

#[test]
fn path_not_an_elf_file() {
    let line = fails(&["run", "--exe", "/etc/passwd"]);
    assert!(line.contains("/etc/passwd is not an ELF file"), "{line}");
}

#[test]
fn path_that_does_not_exist() {
    let line = fails(&["run", "--exe", "/nonexistent/app"]);
    assert!(line.contains("/nonexistent/app does not exist"), "{line}");
}

#[test]
fn no_symbol_matches() {
    let demo = demo_path();
    let line = fails(&[
        "run",
        "--symbols",
        "nothing_like_this*",
        "--",
        demo.to_str().unwrap(),
    ]);
    assert!(
        line.contains("matches nothing_like_this*") && line.contains("flowtap symbols"),
        "{line}"
    );
}

#[test]
fn target_without_the_runtime_needs_symbols() {
    let line = fails(&["run", "--", "/bin/true"]);
    assert!(line.contains("--symbols"), "{line}");
}

#[test]
fn bad_duration() {
    let (code, _, stderr) = run_flowtap(&["run", "--duration", "soon", "--pid", "1"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("not a positive duration"), "{stderr}");
}

#[test]
fn two_targets_at_once() {
    let (code, _, stderr) = run_flowtap(&["run", "--pid", "1", "--exe", "/bin/true"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("cannot be used with"), "{stderr}");
}

#[test]
fn not_root() {
    let binary = std::env::var("FLOWTAP_BIN").unwrap();
    // Drop every privilege, as an ordinary user would run it.
    let output = std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .args([&binary, "run", "--", "/bin/true"])
        .output()
        .expect("setpriv (util-linux)");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("needs root") && stderr.contains("CAP_BPF"),
        "{stderr}"
    );
}

#[test]
fn metrics_port_in_use() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = busy.local_addr().unwrap().to_string();
    let line = fails(&["run", "--metrics-addr", &address, "--", "/bin/true"]);
    assert!(
        line.contains("cannot serve metrics on") && line.contains("--metrics-addr"),
        "{line}"
    );
}
