//! Following what the target does: processes it forks are traced from their first instruction,
//! with or without exec of the same program, in launch, `--pid --children` and `--exe` modes.
//! Every count is compared with the fixture's own (`forkdemo`).

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use flowtap_tests::*;

const SELECT: [&str; 2] = ["--symbols", "forkdemo:fk_*"];

/// A private copy of `forkdemo` in `dir` (a new inode: `--exe` sees no other test's processes).
fn forkdemo_copy(dir: &Path) -> PathBuf {
    let copy = dir.join("forkdemo");
    std::fs::copy(fixture_dir().join("forkdemo"), &copy).unwrap();
    // Just written: a child another test thread forks meanwhile may hold it open for a moment.
    for _ in 0..500 {
        match Command::new(&copy).arg("--help").output() {
            Err(error) if error.kind() == std::io::ErrorKind::ExecutableFileBusy => {
                std::thread::sleep(Duration::from_millis(10));
            }
            _ => return copy,
        }
    }
    panic!("{} stayed busy", copy.display());
}

/// The fixture's arguments: 20 children of 100 calls each, exec'ing itself when `exec`.
fn args(exec: bool) -> Vec<&'static str> {
    let mut args = vec!["--children", "20", "--calls", "100"];
    if exec {
        args.push("--exec");
    }
    args
}

fn fk_calls(report_path: &Path) -> u64 {
    report_counts(&read_report(report_path))
        .get("fk_work")
        .copied()
        .unwrap_or(0)
}

/// The fixture's own count, which must be the full 2,100 (the run went as planned).
fn made(stdout: &str) -> u64 {
    let made = demo_counts(stdout)["fk_work"];
    assert_eq!(made, 2_100, "the fixture did not run all its children");
    made
}

fn launch(exec: bool) {
    let dir = scratch_dir(&format!("follow-launch-{exec}"));
    let demo = forkdemo_copy(&dir);
    let traced = launch_with_report(&dir, &SELECT, &demo, &args(exec));
    assert_eq!(traced.code, 0, "{}", traced.stderr);
    assert_eq!(
        fk_calls(&traced.report),
        made(&traced.stdout),
        "exec: {exec}"
    );
}

#[test]
fn launch_mode_follows_forked_children() {
    launch(false);
}

#[test]
fn launch_mode_follows_children_that_exec_the_program() {
    launch(true);
}

#[test]
fn launch_mode_without_children_counts_the_parent_only() {
    let dir = scratch_dir("follow-launch-off");
    let demo = forkdemo_copy(&dir);
    let mut flags = SELECT.to_vec();
    flags.extend(["--children", "false"]);
    let traced = launch_with_report(&dir, &flags, &demo, &args(false));
    assert_eq!(traced.code, 0, "{}", traced.stderr);
    made(&traced.stdout);
    assert_eq!(fk_calls(&traced.report), 100);
}

#[test]
fn children_that_exec_another_program_are_not_traced() {
    let dir = scratch_dir("follow-launch-other");
    let demo = forkdemo_copy(&dir);
    // The same code in another file: not the target, so its calls are not counted.
    let other_dir = dir.join("other");
    std::fs::create_dir_all(&other_dir).unwrap();
    let other = forkdemo_copy(&other_dir);
    let mut demo_args = args(true);
    demo_args.extend(["--exec-path", other.to_str().unwrap()]);
    let traced = launch_with_report(&dir, &SELECT, &demo, &demo_args);
    assert_eq!(traced.code, 0, "{}", traced.stderr);
    made(&traced.stdout);
    assert_eq!(fk_calls(&traced.report), 100, "only the parent's calls");
}

#[test]
fn other_processes_running_the_launched_program_are_not_counted() {
    let dir = scratch_dir("follow-launch-stranger");
    let demo = forkdemo_copy(&dir);
    let report = dir.join("report.json");
    // The launched command inherits the agent's stdin: it waits until that closes.
    let mut flowtap = Running::start(
        flowtap()
            .args(["run", "--report", "json", "--output"])
            .arg(&report)
            .args(SELECT)
            .arg("--")
            .arg(&demo)
            .args(args(true))
            .arg("--wait-start")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped()),
    );
    // Started after the probes are in place: it runs through the program's entry probe.
    let stranger = Command::new(&demo).args(args(true)).output().unwrap();
    made(&String::from_utf8_lossy(&stranger.stdout));
    drop(flowtap.child.stdin.take());
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut flowtap.child.stdout.take().unwrap(), &mut stdout).unwrap();
    let (code, stderr) = flowtap.finish();
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        fk_calls(&report),
        made(&stdout),
        "the stranger's calls counted"
    );
}

/// The fixture held until its stdin closes, once it is running.
fn spawn_held_forkdemo(demo: &Path, exec: bool) -> Child {
    let child = Command::new(demo)
        .args(args(exec))
        .arg("--wait-start")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting forkdemo");
    let maps = format!("/proc/{}/maps", child.id());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&maps).is_ok_and(|m| m.contains("libc.so")) {
        assert!(Instant::now() < deadline, "forkdemo never started");
        std::thread::sleep(Duration::from_millis(10));
    }
    child
}

fn by_pid(exec: bool) {
    let dir = scratch_dir(&format!("follow-pid-{exec}"));
    let demo = forkdemo_copy(&dir);
    let report = dir.join("report.json");
    let held = spawn_held_forkdemo(&demo, exec);
    let pid = held.id().to_string();
    let flowtap = Running::start(
        flowtap()
            .args([
                "run",
                "--pid",
                &pid,
                "--children",
                "--report",
                "json",
                "--output",
            ])
            .arg(&report)
            .args(SELECT),
    );
    let stdout = release_demo(held);
    let (code, stderr) = flowtap.finish();
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(fk_calls(&report), made(&stdout), "exec: {exec}");
}

#[test]
fn pid_mode_with_children_follows_forked_children() {
    by_pid(false);
}

#[test]
fn pid_mode_with_children_follows_children_that_exec_the_program() {
    by_pid(true);
}

#[test]
fn exe_mode_counts_children_forked_and_exec_d() {
    let dir = scratch_dir("follow-exe");
    let demo = forkdemo_copy(&dir);
    let report = dir.join("report.json");
    let flowtap = Running::start(
        flowtap()
            .args(["run", "--exe"])
            .arg(&demo)
            .args(["--report", "json", "--output"])
            .arg(&report)
            .args(SELECT),
    );
    let mut made_total = 0;
    for exec in [false, true] {
        let output = Command::new(&demo).args(args(exec)).output().unwrap();
        assert!(output.status.success());
        made_total += made(&String::from_utf8_lossy(&output.stdout));
    }
    flowtap.interrupt();
    let (code, stderr) = flowtap.finish();
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(fk_calls(&report), made_total);
}
