//! Helpers for flowtap's integration tests: locating the agent and the fixture (built by
//! `cargo xtask test`), running them, and reading the counts each side reports.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    sync::mpsc,
    time::Duration,
};

/// The counts of calls per function.
pub type Counts = BTreeMap<String, u64>;

fn env_path(name: &str) -> PathBuf {
    let value = std::env::var_os(name).unwrap_or_else(|| {
        panic!("{name} is not set: run the integration tests with `cargo xtask test`")
    });
    PathBuf::from(value)
}

/// The agent binary; asserts the tests run as root, since they load real eBPF.
pub fn flowtap() -> Command {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "these tests load eBPF programs and must run as root"
    );
    Command::new(env_path("FLOWTAP_BIN"))
}

pub fn fixture_dir() -> PathBuf {
    env_path("FLOWTAP_FIXTURE")
}

pub fn demo_path() -> PathBuf {
    fixture_dir().join("wfdemo")
}

pub fn library_path() -> PathBuf {
    fixture_dir().join("libwfrt.so")
}

/// A fresh directory for one test's files.
pub fn scratch_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("flowtap-test-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The "calls <function> <n>" lines the demo prints at exit.
pub fn demo_counts(stdout: &str) -> Counts {
    stdout
        .lines()
        .filter_map(|line| {
            let mut words = line.strip_prefix("calls ")?.split_whitespace();
            Some((words.next()?.to_string(), words.next()?.parse().ok()?))
        })
        .collect()
}

/// A flowtap JSON report.
pub fn read_report(path: &std::path::Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|error| panic!("no report at {}: {error}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|error| panic!("bad JSON report: {error}\n{text}"))
}

/// Calls per function in a flowtap JSON report.
pub fn report_counts(report: &serde_json::Value) -> Counts {
    report["functions"]
        .as_array()
        .expect("functions array")
        .iter()
        .map(|f| {
            (
                f["function"].as_str().unwrap().to_string(),
                f["calls"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// One function's entry in a flowtap JSON report.
pub fn report_function<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["functions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["function"] == name)
        .unwrap_or_else(|| panic!("{name} not in report: {report}"))
}

/// Asserts `expected` (a program's own counts) and `actual` agree on every function,
/// a function missing from `actual` counting as zero calls.
pub fn assert_same_counts(expected: &Counts, actual: &Counts, what: &str) {
    assert!(!expected.is_empty(), "{what}: no expected counts");
    for (function, count) in expected {
        let got = actual.get(function).copied().unwrap_or(0);
        assert_eq!(
            got, *count,
            "{what}: {function} counted {got}, made {count}"
        );
    }
    for function in actual.keys() {
        assert!(
            expected.contains_key(function),
            "{what}: unexpected {function}"
        );
    }
}

/// Starts flowtap with stderr piped and waits (bounded) until its probes are attached.
/// Its remaining stderr is collected on a thread and returned by [`finish`].
pub struct Running {
    pub child: Child,
    stderr: mpsc::Receiver<String>,
}

impl Running {
    pub fn start(command: &mut Command) -> Self {
        let mut child = command
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting flowtap");
        let stderr = child.stderr.take().unwrap();
        let (attached_tx, attached_rx) = mpsc::channel();
        let (rest_tx, rest_rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut all = String::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("attached") {
                    let _ = attached_tx.send(());
                }
                all.push_str(&line);
                all.push('\n');
            }
            let _ = rest_tx.send(all);
        });
        if attached_rx.recv_timeout(Duration::from_secs(60)).is_err() {
            let _ = child.kill();
            let stderr = rest_rx
                .recv_timeout(Duration::from_secs(5))
                .unwrap_or_default();
            panic!("flowtap did not attach:\n{stderr}");
        }
        Self {
            child,
            stderr: rest_rx,
        }
    }

    /// Sends SIGINT, as Ctrl-C does.
    pub fn interrupt(&self) {
        // SAFETY: signalling a child we own and have not reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
    }

    /// Waits for exit; returns the exit code and all of stderr.
    pub fn finish(mut self) -> (i32, String) {
        let status = self.child.wait().expect("waiting for flowtap");
        let stderr = self
            .stderr
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_default();
        (status.code().unwrap_or(-1), stderr)
    }
}

/// Runs the demo to completion with these arguments.
pub fn run_demo(args: &[&str]) -> Output {
    let output = Command::new(demo_path())
        .args(args)
        .output()
        .expect("running wfdemo");
    assert!(output.status.success(), "wfdemo failed: {output:?}");
    output
}

/// Starts the demo held at `--wait-start`; it runs when its stdin is closed.
pub fn spawn_held_demo(args: &[&str]) -> Child {
    Command::new(demo_path())
        .args(args)
        .arg("--wait-start")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting wfdemo")
}

/// Releases a held demo and returns its stdout.
pub fn release_demo(mut demo: Child) -> String {
    drop(demo.stdin.take());
    let output = demo.wait_with_output().expect("waiting for wfdemo");
    assert!(output.status.success(), "wfdemo failed: {output:?}");
    String::from_utf8(output.stdout).unwrap()
}

/// Runs flowtap to completion; returns (exit code, stdout, stderr).
pub fn run_flowtap(args: &[&str]) -> (i32, String, String) {
    let output = flowtap().args(args).output().expect("running flowtap");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}
