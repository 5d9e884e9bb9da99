//! Libraries loaded later (`dlopen`) are probed in launch, `--pid` and `--exe` modes; objects are
//! opened as the process sees them (chroot, deleted file, a space in the path); `OBJECT:` matches
//! a soname; a selector that never matched is reported. Counts are compared with the fixture's
//! own (`dlopendemo`) and, for CPython's `import sqlite3`, with bpftrace's.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use flowtap_tests::*;

/// By soname: the file is `libdlplug.so.1.0`.
const SELECT: [&str; 4] = [
    "--symbols",
    "libdlplug.so.1:dl_plugin_*",
    "--symbols",
    "dlopendemo:dl_main_work",
];

/// Calls of each function the fixture makes.
const CALLS: &str = "2000";

/// Private copies of `dlopendemo` and its library in `dir` (new inodes: `--exe` sees no other
/// test's processes); the library under `lib_dir` (relative to `dir`).
fn fixture_copy(dir: &Path, lib_dir: &str) -> (PathBuf, PathBuf) {
    let demo = dir.join("dlopendemo");
    std::fs::copy(fixture_dir().join("dlopendemo"), &demo).unwrap();
    let libs = dir.join(lib_dir);
    std::fs::create_dir_all(&libs).unwrap();
    let lib = libs.join("libdlplug.so.1.0");
    std::fs::copy(fixture_dir().join("libdlplug.so.1.0"), &lib).unwrap();
    wait_until_executable(&demo);
    (demo, lib)
}

/// The fixture's arguments: load `lib` after `delay` ms, and call it 200 ms after (the agent
/// attaches meanwhile: see the README on the window).
fn later_args(lib: &Path, delay: &str) -> Vec<String> {
    [
        "--calls",
        CALLS,
        "--lib",
        lib.to_str().unwrap(),
        "--delay-ms",
        delay,
        "--settle-ms",
        "200",
    ]
    .map(String::from)
    .to_vec()
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// Every function the fixture says it called, counted exactly as many times.
fn assert_counts(stdout: &str, report: &Path, what: &str) {
    let made = demo_counts(stdout);
    assert_eq!(made.get("dl_plugin_work"), Some(&2000), "{what}: {stdout}");
    let mut expected = made.clone();
    expected.remove("getppid");
    assert_same_counts(&expected, &report_counts(&read_report(report)), what);
}

#[test]
fn launch_mode_probes_a_library_loaded_later() {
    let dir = scratch_dir("later-launch");
    let (demo, lib) = fixture_copy(&dir, "lib");
    let traced = launch_with_report(&dir, &SELECT, &demo, &strs(&later_args(&lib, "1000")));
    assert_eq!(traced.code, 0, "{}", traced.stderr);
    assert!(
        traced.stderr.contains("waiting for libraries loaded later"),
        "{}",
        traced.stderr
    );
    assert_counts(&traced.stdout, &traced.report, "launch");
    let report = read_report(&traced.report);
    let loads = &report["libraries_loaded_later"];
    assert_eq!(loads["objects"], 1, "{report}");
    assert!(loads["unmatched_selectors"].as_array().unwrap().is_empty());
}

/// The fixture held until its stdin closes, once libc is mapped.
fn spawn_held(demo: &Path, args: &[String], in_dir: &Path) -> Child {
    let child = Command::new(demo)
        .args(args)
        .arg("--wait-start")
        .current_dir(in_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting dlopendemo");
    wait_mapped(child.id(), "libc.so");
    child
}

fn wait_mapped(pid: u32, name: &str) {
    let maps = format!("/proc/{pid}/maps");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&maps).is_ok_and(|m| m.contains(name)) {
        assert!(Instant::now() < deadline, "{name} never mapped");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Traces `held` by PID with `select`; releases it; returns its stdout and the report's path.
fn trace_pid(dir: &Path, held: Child, select: &[&str]) -> (String, PathBuf) {
    let report = dir.join("report.json");
    let pid = held.id().to_string();
    let flowtap = Running::start(
        flowtap()
            .args(["run", "--pid", &pid, "--report", "json", "--output"])
            .arg(&report)
            .args(select),
    );
    let stdout = release_demo(held);
    let (code, stderr) = flowtap.finish();
    assert_eq!(code, 0, "{stderr}");
    (stdout, report)
}

#[test]
fn pid_mode_probes_a_library_loaded_later() {
    let dir = scratch_dir("later-pid");
    let (demo, lib) = fixture_copy(&dir, "lib");
    let held = spawn_held(&demo, &later_args(&lib, "0"), &dir);
    let (stdout, report) = trace_pid(&dir, held, &SELECT);
    assert_counts(&stdout, &report, "pid");
}

/// flowtap tracing every process of `target` (`--exe`), its JSON report to `report`.
fn trace_exe(target: &Path, report: &Path, selectors: &[&str]) -> Running {
    Running::start(
        flowtap()
            .args(["run", "--exe"])
            .arg(target)
            .args(["--report", "json", "--output"])
            .arg(report)
            .args(selectors),
    )
}

#[test]
fn exe_mode_probes_a_library_loaded_later() {
    let dir = scratch_dir("later-exe");
    let (demo, lib) = fixture_copy(&dir, "lib");
    let report = dir.join("report.json");
    let flowtap = trace_exe(&demo, &report, &SELECT);
    let output = Command::new(&demo)
        .args(later_args(&lib, "0"))
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    flowtap.interrupt();
    let (code, stderr) = flowtap.finish();
    assert_eq!(code, 0, "{stderr}");
    assert_counts(&String::from_utf8_lossy(&output.stdout), &report, "exe");
}

#[test]
fn exe_mode_on_a_library_no_process_has_loaded_yet() {
    let dir = scratch_dir("later-exe-lib");
    let (demo, lib) = fixture_copy(&dir, "lib");
    let report = dir.join("report.json");
    let flowtap = trace_exe(&lib, &report, &["--symbols", "dl_plugin_*"]);
    // Called at once: the probes are on the file already.
    let mut args = later_args(&lib, "0");
    args[7] = "0".into();
    let output = Command::new(&demo).args(args).output().unwrap();
    assert!(output.status.success(), "{output:?}");
    flowtap.interrupt();
    let (code, stderr) = flowtap.finish();
    assert_eq!(code, 0, "{stderr}");
    let counts = report_counts(&read_report(&report));
    assert_eq!(counts.get("dl_plugin_work"), Some(&2000), "{stderr}");
}

#[test]
fn a_library_under_a_directory_with_a_space_is_probed() {
    let dir = scratch_dir("later-space");
    let (demo, lib) = fixture_copy(&dir, "plug ins\ndir");
    // Loaded before the agent attaches (PID mode reads it from the maps), and later (launch).
    let mut early = later_args(&lib, "0");
    early.push("--early".into());
    let held = spawn_held(&demo, &early, &dir);
    let (stdout, report) = trace_pid(&dir, held, &SELECT);
    assert_counts(&stdout, &report, "pid, loaded before");
    let traced = launch_with_report(&dir, &SELECT, &demo, &strs(&later_args(&lib, "0")));
    assert_eq!(traced.code, 0, "{}", traced.stderr);
    assert_counts(&traced.stdout, &traced.report, "launch, loaded later");
}

#[test]
fn a_library_deleted_after_loading_is_probed_by_pid() {
    let dir = scratch_dir("later-deleted");
    let (demo, lib) = fixture_copy(&dir, "lib");
    let mut args = later_args(&lib, "0");
    args.extend(["--early".into(), "--delete".into()]);
    let held = spawn_held(&demo, &args, &dir);
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", held.id())).unwrap();
    assert!(maps.contains("libdlplug.so.1.0 (deleted)"), "{maps}");
    let (stdout, report) = trace_pid(&dir, held, &SELECT);
    assert_counts(&stdout, &report, "deleted");
}

#[test]
fn a_chrooted_process_is_traced_by_pid_in_its_own_copies() {
    let dir = scratch_dir("later-chroot");
    let root = dir.join("root");
    std::fs::create_dir_all(&root).unwrap();
    let (demo, _) = fixture_copy(&root, "lib");
    // The loader and libc it runs are copies: other files than the host's.
    for (host, inside) in [
        ("/lib64/ld-linux-x86-64.so.2", "lib64"),
        ("/lib/x86_64-linux-gnu/libc.so.6", "lib/x86_64-linux-gnu"),
    ] {
        let dir = root.join(inside);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(host, dir.join(Path::new(host).file_name().unwrap())).unwrap();
    }
    let held = Command::new("chroot")
        .arg(&root)
        .arg(Path::new("/").join(demo.file_name().unwrap()))
        .args(["--calls", CALLS, "--wait-start"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("chroot");
    wait_mapped(held.id(), "root/lib/x86_64-linux-gnu/libc.so.6");
    let select = [
        "--symbols",
        "dlopendemo:dl_main_work",
        "--symbols",
        "libc.so.6:getppid",
    ];
    let (stdout, report) = trace_pid(&dir, held, &select);
    let counts = report_counts(&read_report(&report));
    assert_same_counts(&demo_counts(&stdout), &counts, "chroot");
}

#[test]
fn a_selector_that_never_matched_is_reported_and_one_that_cannot_fails() {
    let dir = scratch_dir("later-unmatched");
    let (demo, _) = fixture_copy(&dir, "lib");
    let traced = launch_with_report(&dir, &SELECT, &demo, &["--calls", "10"]);
    assert_eq!(traced.code, 0, "{}", traced.stderr);
    let report = read_report(&traced.report);
    assert_eq!(
        report["libraries_loaded_later"]["unmatched_selectors"],
        serde_json::json!(["libdlplug.so.1:dl_plugin_*"]),
        "{report}"
    );
    assert_eq!(report_counts(&report).get("dl_main_work"), Some(&10));
    // No object part: nothing tells it may come later; a typo fails at once, in one line.
    let failed = launch_with_report(&dir, &["--symbols", "dl_no_such_*"], &demo, &[]);
    assert_ne!(failed.code, 0);
    assert!(
        failed.stderr.trim().lines().count() == 1 && failed.stderr.contains("dl_no_such_*"),
        "{}",
        failed.stderr
    );
}

const SQLITE: &str = "/lib/x86_64-linux-gnu/libsqlite3.so.0";
const PYTHON: &str = "/usr/bin/python3.11";

/// A script that imports sqlite3 (CPython then loads libsqlite3) once its standard input is
/// closed, and runs a fixed workload at once.
fn sqlite_script(dir: &Path) -> PathBuf {
    let script = dir.join("app.py");
    std::fs::write(
        &script,
        "import sys\nsys.stdin.read()\nimport sqlite3\ndb = sqlite3.connect(':memory:')\n\
         db.execute('create table t(x)')\nfor i in range(300):\n    db.execute('insert into t values (?)', (i,))\n\
         db.executescript('create table u(y); insert into u values (1);')\n\
         print(sum(r[0] for r in db.execute('select x from t')))\n",
    )
    .unwrap();
    script
}

/// Calls of each function of the sqlite profile made by the script, with bpftrace.
fn bpftrace_counts(script: &Path) -> Vec<(&'static str, u64)> {
    ["sqlite3_prepare_v2", "sqlite3_step", "sqlite3_exec"]
        .into_iter()
        .map(|function| {
            let probe = format!("uprobe:{SQLITE}:{function} /pid == cpid/ {{ @calls = count(); }}");
            let command = format!("{PYTHON} {}", script.display());
            // The script's standard input is closed at once: it runs without waiting.
            let output = Command::new("bpftrace")
                .args(["-e", &probe, "-c", &command])
                .stdin(Stdio::null())
                .output()
                .expect("bpftrace is installed by `cargo xtask setup`");
            assert!(output.status.success(), "bpftrace failed: {output:?}");
            let calls = String::from_utf8_lossy(&output.stdout)
                .lines()
                .find_map(|line| line.strip_prefix("@calls: "))
                .map_or(0, |n| n.trim().parse().unwrap());
            assert!(calls > 0, "{function}: bpftrace saw no call");
            (function, calls)
        })
        .collect()
}

fn assert_bpftrace_counts(script: &Path, report: &Path, what: &str) {
    let counts = report_counts(&read_report(report));
    for (function, expected) in bpftrace_counts(script) {
        assert_eq!(
            counts.get(function).copied().unwrap_or(0),
            expected,
            "{what}: {function}"
        );
    }
}

#[test]
fn cpython_import_sqlite3_counts_what_bpftrace_counts_in_launch_mode() {
    let dir = scratch_dir("later-sqlite-launch");
    let script = sqlite_script(&dir);
    let output = flowtap()
        .args(["run", "--profile", "sqlite", "--report", "json", "--output"])
        .arg(dir.join("report.json"))
        .args(["--", PYTHON])
        .arg(&script)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("before it is loaded"), "{stderr}");
    assert_bpftrace_counts(&script, &dir.join("report.json"), "launch");
}

#[test]
fn cpython_behind_a_script_that_forks_other_programs_first_is_the_target() {
    // As a pyenv shim does: programs forked before the interpreter (readlink) would match the
    // profile too, its library being probed before any program loads it; they load nothing of
    // it at start, so they run untraced and the interpreter the script executes is the target.
    let dir = scratch_dir("later-sqlite-script");
    let script = sqlite_script(&dir);
    let command = format!(
        "readlink -f /bin/sh > /dev/null; exec {PYTHON} {}",
        script.display()
    );
    let output = flowtap()
        .args(["run", "--profile", "sqlite", "--report", "json", "--output"])
        .arg(dir.join("report.json"))
        .args(["--", "/bin/sh", "-c", &command])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains(&format!("of {PYTHON} (PID")), "{stderr}");
    assert_bpftrace_counts(&script, &dir.join("report.json"), "launch-script");
}

#[test]
fn cpython_import_sqlite3_counts_what_bpftrace_counts_by_pid() {
    let dir = scratch_dir("later-sqlite-pid");
    let script = sqlite_script(&dir);
    let held = Command::new(PYTHON)
        .arg(&script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    wait_mapped(held.id(), "libc.so");
    let (_, report) = trace_pid(&dir, held, &["--profile", "sqlite"]);
    assert_bpftrace_counts(&script, &report, "pid");
}

#[test]
fn cpython_import_sqlite3_counts_what_bpftrace_counts_in_exe_mode() {
    let dir = scratch_dir("later-sqlite-exe");
    let script = sqlite_script(&dir);
    // A copy: other python3.11 processes on the machine are not this test's.
    let python = dir.join("python3.11");
    std::fs::copy(PYTHON, &python).unwrap();
    wait_until_executable(&python);
    let report = dir.join("report.json");
    let flowtap = trace_exe(&python, &report, &["--profile", "sqlite"]);
    let output = Command::new(&python)
        .arg(&script)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    flowtap.interrupt();
    let (code, stderr) = flowtap.finish();
    assert_eq!(code, 0, "{stderr}");
    assert_bpftrace_counts(&script, &report, "exe");
}

#[test]
fn the_program_answers_to_the_name_it_was_started_as_in_every_mode() {
    let dir = scratch_dir("later-names");
    let (demo, _) = fixture_copy(&dir, "lib");
    let link = dir.join("dlo");
    std::os::unix::fs::symlink(&demo, &link).unwrap();
    let select = ["--symbols", "dlo:dl_main_work"];
    let args = ["--calls", CALLS].map(String::from);
    let held = spawn_held(&link, &args, &dir);
    let (stdout, report) = trace_pid(&dir, held, &select);
    let counts = report_counts(&read_report(&report));
    assert_eq!(
        counts.get("dl_main_work"),
        demo_counts(&stdout).get("dl_main_work")
    );
    let traced = launch_with_report(&dir, &select, &link, &strs(&args));
    assert_eq!(traced.code, 0, "{}", traced.stderr);
    let report = read_report(&traced.report);
    assert_eq!(report_counts(&report).get("dl_main_work"), Some(&2000));
    // Shown by its file's name, as by PID.
    assert_eq!(
        report_function(&report, "dl_main_work")["object"],
        "dlopendemo"
    );
}
