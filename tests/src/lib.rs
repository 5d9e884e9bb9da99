//! Helpers for flowtap's integration tests: locating the agent and the fixture (built by
//! `cargo xtask test`), running them, and reading the counts each side reports.

pub mod llm;
pub mod otlp;
pub mod promql;
pub mod spans;

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader},
    os::{fd::AsRawFd, unix::process::CommandExt},
    path::PathBuf,
    process::{Child, Command, Stdio},
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

/// The agent binary; asserts the tests run as root, since they load real eBPF. Its metrics
/// endpoint takes any free port, so that tests can run side by side.
pub fn flowtap() -> Command {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "these tests load eBPF programs and must run as root"
    );
    let mut command = Command::new(env_path("FLOWTAP_BIN"));
    command.env("FLOWTAP_METRICS_ADDR", "127.0.0.1:0");
    command
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

/// A private copy of the fixture (`wfdemo` and `libwfrt.so`, new inodes) in `dir`: probes on
/// it, by binary or library, see no other test's processes.
pub fn isolated_fixture(dir: &std::path::Path) -> (PathBuf, PathBuf) {
    let demo = dir.join("wfdemo");
    let library = dir.join("libwfrt.so");
    std::fs::copy(demo_path(), &demo).unwrap();
    std::fs::copy(library_path(), &library).unwrap();
    wait_until_executable(&demo);
    (demo, library)
}

/// A file just written can be "busy" for a moment: a child that another test thread forked
/// meanwhile holds the writing descriptor until it execs. Once one exec succeeds, all will.
pub fn wait_until_executable(program: &std::path::Path) {
    for _ in 0..500 {
        match Command::new(program).arg("--help").output() {
            Err(error) if error.kind() == std::io::ErrorKind::ExecutableFileBusy => {
                std::thread::sleep(Duration::from_millis(10));
            }
            _ => return,
        }
    }
    panic!("{} stayed busy", program.display());
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

/// Starts flowtap with stderr piped and waits (bounded) until its probes are attached, which it
/// tells on its ready descriptor (`--ready-fd`, here through `FLOWTAP_READY_FD`).
/// Its stderr is collected on a thread and returned by [`Running::finish`].
pub struct Running {
    pub child: Child,
    /// Where it serves `/metrics`, from its ready line.
    pub metrics_url: String,
    /// Its ready line.
    pub ready: String,
    stderr: mpsc::Receiver<String>,
}

impl Running {
    pub fn start(command: &mut Command) -> Self {
        let (ready, ready_writer) = std::io::pipe().expect("a pipe for the ready line");
        ready_to(command, &ready_writer);
        let mut child = command
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting flowtap");
        // Only the agent holds the writing end now: its exit ends the line.
        drop(ready_writer);
        let stderr = child.stderr.take().unwrap();
        let (rest_tx, rest_rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut all = String::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                all.push_str(&line);
                all.push('\n');
            }
            let _ = rest_tx.send(all);
        });
        let Some(ready) = read_ready_line(ready, Duration::from_secs(60)) else {
            let _ = child.kill();
            let stderr = rest_rx
                .recv_timeout(Duration::from_secs(5))
                .unwrap_or_default();
            panic!("flowtap did not attach:\n{stderr}");
        };
        Self {
            child,
            metrics_url: ready_field(&ready, "metrics")
                .expect("a metrics URL in the ready line")
                .to_string(),
            ready,
            stderr: rest_rx,
        }
    }

    /// The body of a GET of its `/metrics`.
    pub fn scrape(&self) -> String {
        http_get(&self.metrics_url)
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

/// Has the command started by `command` write its ready line to `writer` (see `--ready-fd`).
pub fn ready_to(command: &mut Command, writer: &std::io::PipeWriter) {
    let fd = writer.as_raw_fd();
    command.env("FLOWTAP_READY_FD", fd.to_string());
    let inherit = move || {
        // SAFETY: fcntl on a descriptor of this (forked) process; it only changes its flags.
        if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } == -1 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    };
    // SAFETY: between fork and exec the closure calls only fcntl, which is async-signal-safe,
    // and allocates nothing.
    unsafe { command.pre_exec(inherit) };
}

/// The ready line (`ready metrics=URL probes=N objects=M`), or None when the agent exited, or
/// did not get ready within `limit`.
pub fn read_ready_line(ready: std::io::PipeReader, limit: Duration) -> Option<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(ready).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(limit).ok()?;
    line.starts_with("ready ")
        .then(|| line.trim_end().to_string())
}

/// The value of field `key` of a ready line.
pub fn ready_field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .skip(1)
        .find_map(|field| field.strip_prefix(key)?.strip_prefix('='))
}

/// A test that fails midway must not leave its agent running.
impl Drop for Running {
    fn drop(&mut self) {
        if self.child.try_wait().is_ok_and(|status| status.is_none()) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Starts the demo held at `--wait-start`; it runs when its stdin is closed. Returns once the
/// runtime library is mapped: `spawn` returns at `execve`, before ld.so has loaded it.
pub fn spawn_held_demo(args: &[&str]) -> Child {
    spawn_held(&demo_path(), args)
}

/// [`spawn_held_demo`] of a copy of the demo (see [`isolated_fixture`]).
pub fn spawn_held(demo: &std::path::Path, args: &[&str]) -> Child {
    let demo = Command::new(demo)
        .args(args)
        .arg("--wait-start")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting wfdemo");
    let maps = format!("/proc/{}/maps", demo.id());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&maps).is_ok_and(|m| m.contains("libwfrt.so")) {
        assert!(
            std::time::Instant::now() < deadline,
            "wfdemo never mapped libwfrt.so"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    demo
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

/// A plain HTTP/1.0 GET of `http://host:port/path`; returns the body of a 200 answer.
pub fn http_get(url: &str) -> String {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").expect("an http:// URL");
    let (host, path) = rest.split_once('/').map_or((rest, ""), |(h, p)| (h, p));
    let mut stream = std::net::TcpStream::connect(host).expect("connecting to flowtap");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(stream, "GET /{path} HTTP/1.0\r\nHost: {host}\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(
        head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200"),
        "{head}\n{body}"
    );
    body.to_string()
}

/// Samples of the text exposition: (name, labels as `k="v",...`, value).
pub fn samples(exposition: &str) -> Vec<(String, String, f64)> {
    exposition
        .lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (name, labels) = match series.split_once('{') {
                Some((name, labels)) => (name, labels.trim_end_matches('}')),
                None => (series, ""),
            };
            Some((name.to_string(), labels.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// The value of the one sample of `name` whose labels contain every `k="v"` in `with`.
pub fn sample(exposition: &str, name: &str, with: &[&str]) -> f64 {
    let matching: Vec<f64> = samples(exposition)
        .into_iter()
        .filter(|(n, labels, _)| n == name && with.iter().all(|w| labels.contains(w)))
        .map(|(_, _, value)| value)
        .collect();
    assert_eq!(matching.len(), 1, "{name} {with:?}: {matching:?}");
    matching[0]
}

/// What a launch-mode run of flowtap left: its exit code and stderr, the launched program's
/// stdout, and the JSON report's path.
pub struct Launched {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub report: PathBuf,
}

/// Runs `flowtap run FLOWTAP_ARGS --report json --output DIR/report.json -- PROGRAM ARGS`.
pub fn launch_with_report(
    dir: &std::path::Path,
    flowtap_args: &[&str],
    program: &std::path::Path,
    args: &[&str],
) -> Launched {
    let report = dir.join("report.json");
    let output = flowtap()
        .args(["run", "--report", "json", "--output"])
        .arg(&report)
        .args(flowtap_args)
        .arg("--")
        .arg(program)
        .args(args)
        .output()
        .expect("running flowtap");
    Launched {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        report,
    }
}
