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

#[test]
fn pid_zero() {
    let line = fails(&["run", "--pid", "0"]);
    assert!(line.contains("no process with PID 0"), "{line}");
}

#[test]
fn zombie_pid() {
    // A child that exited and is not waited for until flowtap has looked at it.
    let mut zombie = std::process::Command::new("/bin/true").spawn().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let line = fails(&["run", "--pid", &zombie.id().to_string()]);
    zombie.wait().unwrap();
    assert!(line.contains("zombie"), "{line}");
}

/// A file with an ELF header only: class, byte order and machine as given.
fn elf_header(name: &str, class: u8, machine: u16) -> std::path::PathBuf {
    let mut header = vec![0x7f, b'E', b'L', b'F', class, 1, 1];
    header.resize(64, 0);
    header[18..20].copy_from_slice(&machine.to_le_bytes());
    let path = scratch_dir(name).join("app");
    std::fs::write(&path, header).unwrap();
    path
}

#[test]
fn elf_32_bit() {
    let path = elf_header("elf32", 1, 3);
    let line = fails(&["run", "--exe", path.to_str().unwrap()]);
    assert!(line.contains("32-bit"), "{line}");
}

#[test]
fn elf_for_another_architecture() {
    let path = elf_header("aarch64", 2, 183);
    let line = fails(&["run", "--exe", path.to_str().unwrap()]);
    assert!(line.contains("built for aarch64"), "{line}");
}

#[test]
fn truncated_elf() {
    let path = elf_header("truncated", 2, 62);
    // Program headers said to lie past the end of the file.
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[32..40].copy_from_slice(&0x1000u64.to_le_bytes());
    bytes[54..56].copy_from_slice(&56u16.to_le_bytes());
    bytes[56..58].copy_from_slice(&1u16.to_le_bytes());
    std::fs::write(&path, bytes).unwrap();
    let line = fails(&["run", "--exe", path.to_str().unwrap()]);
    assert!(line.contains("malformed ELF"), "{line}");
}

#[test]
fn directory_as_binary() {
    let line = fails(&["run", "--exe", "/tmp"]);
    assert!(line.contains("/tmp"), "{line}");
}

#[test]
fn symbol_that_is_data() {
    let line = fails(&["run", "--symbols", "libc.so.6:environ", "--", "/bin/true"]);
    assert!(
        line.contains("`environ` in libc.so.6 is data, not a function"),
        "{line}"
    );
}

#[test]
fn empty_symbol_glob() {
    let line = fails(&["run", "--symbols", "libc.so.6:", "--", "/bin/true"]);
    assert!(line.contains("names no function"), "{line}");
}

#[test]
fn malformed_symbol_glob() {
    let line = fails(&["run", "--symbols", "wf_[", "--", "/bin/true"]);
    assert!(line.contains("bad glob"), "{line}");
}

#[test]
fn no_target() {
    let line = fails(&["run"]);
    assert!(line.contains("give exactly one target"), "{line}");
}

#[test]
fn ready_fd_that_is_not_open() {
    let line = fails(&["run", "--pid", "1", "--ready-fd", "987"]);
    assert!(
        line.contains("--ready-fd 987 is not an open file descriptor"),
        "{line}"
    );
    let line = fails(&["run", "--pid", "1", "--ready-fd", "1"]);
    assert!(line.contains("--ready-fd 1 is a standard stream"), "{line}");
}

#[test]
fn command_not_in_path() {
    let line = fails(&["run", "--", "no-such-command-flowtap"]);
    assert!(line.contains("not found in PATH"), "{line}");
}

#[test]
fn command_path_missing() {
    let line = fails(&["run", "--", "./no/such/app"]);
    assert!(line.contains("does not exist"), "{line}");
}

#[test]
fn zero_duration() {
    let (code, _, stderr) = run_flowtap(&["run", "--duration", "0", "--pid", "1"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("not a positive duration"), "{stderr}");
}

#[test]
fn bad_endpoint_url() {
    let (code, _, stderr) =
        run_flowtap(&["run", "--otlp-endpoint", "collector:4317", "--pid", "1"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("is not an http:// or https:// URL"),
        "{stderr}"
    );
}

#[test]
fn bad_otlp_protocol() {
    let (code, _, stderr) = run_flowtap(&["run", "--otlp-protocol", "thrift", "--pid", "1"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("grpc") && stderr.contains("http/protobuf"),
        "{stderr}"
    );
}

#[test]
fn sample_rate_out_of_range() {
    let (code, _, stderr) = run_flowtap(&["run", "--sample-rate", "1.5", "--pid", "1"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("not a fraction between 0 and 1"),
        "{stderr}"
    );
}

#[test]
fn bad_metrics_address() {
    let (code, _, stderr) = run_flowtap(&["run", "--metrics-addr", "localhost", "--pid", "1"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--metrics-addr"), "{stderr}");
}

#[test]
fn unknown_report_format() {
    let (code, _, stderr) = run_flowtap(&["run", "--report", "xml", "--pid", "1"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("table") && stderr.contains("json"),
        "{stderr}"
    );
}

#[test]
fn report_file_that_cannot_be_written() {
    let line = fails(&[
        "run",
        "--output",
        "/nonexistent/dir/report.json",
        "--",
        "/bin/true",
    ]);
    assert!(
        line.contains("cannot write the report to /nonexistent/dir/report.json"),
        "{line}"
    );
}

#[test]
fn spans_file_that_cannot_be_written() {
    let demo = demo_path();
    let line = fails(&[
        "run",
        "--spans-out",
        "/nonexistent/spans.jsonl",
        "--",
        demo.to_str().unwrap(),
    ]);
    assert!(
        line.contains("cannot write spans to /nonexistent/spans.jsonl"),
        "{line}"
    );
}

#[test]
fn symbols_of_unknown_pid() {
    let line = fails(&["symbols", "--pid", "4000001"]);
    assert!(line.contains("no process with PID 4000001"), "{line}");
}

#[test]
fn only_lock_prefixed_functions_selected() {
    let dir = scratch_dir("lock-prefix");
    let source = dir.join("counter.c");
    std::fs::write(
        &source,
        "static long hits;\n__attribute__((noinline)) void count_hit(void) { __atomic_fetch_add(&hits, 1, __ATOMIC_RELAXED); }\nint main(void) { count_hit(); return 0; }\n",
    )
    .unwrap();
    let program = dir.join("counter");
    let compiled = std::process::Command::new("cc")
        .args(["-O2", "-o"])
        .arg(&program)
        .arg(&source)
        .status()
        .unwrap();
    assert!(compiled.success());
    let line = fails(&[
        "run",
        "--symbols",
        "count_hit",
        "--",
        program.to_str().unwrap(),
    ]);
    assert!(
        line.contains("LOCK prefix") && line.contains("count_hit"),
        "{line}"
    );
}

#[test]
fn stripped_binary_is_traced_through_dynsym() {
    let dir = scratch_dir("stripped");
    let (demo, library) = isolated_fixture(&dir);
    for file in [&demo, &library] {
        let stripped = std::process::Command::new("strip")
            .arg(file)
            .status()
            .unwrap();
        assert!(stripped.success());
    }
    let run = launch_with_report(&dir, &[], &demo, &["--runs", "5"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report = read_report(&run.report);
    assert_same_counts(
        &demo_counts(&run.stdout),
        &report_counts(&report),
        "stripped",
    );
}
