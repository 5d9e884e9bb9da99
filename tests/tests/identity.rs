//! Process identity is (PID, start): spans of a process that took over a traced process's PID
//! carry their own process, named by the kernel even after it exited (`pidreuse`); and
//! `flowtap_processes_traced` counts the processes traced with a library as the target.

use std::{
    collections::BTreeMap,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use flowtap_tests::*;

/// Spans per (process.pid, process.executable.name) in a `--spans-out` file.
fn spans_per_process(text: &str) -> BTreeMap<(String, String), u64> {
    let mut per_process = BTreeMap::new();
    for line in text.lines().filter(|line| !line.is_empty()) {
        let request: serde_json::Value = serde_json::from_str(line).expect("OTLP JSON line");
        for resource in request["resourceSpans"].as_array().unwrap() {
            let attribute = |key: &str| {
                resource["resource"]["attributes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|a| a["key"] == key)
                    .map(|a| {
                        let value = &a["value"];
                        value["stringValue"]
                            .as_str()
                            .map(str::to_string)
                            .or_else(|| value["intValue"].as_str().map(str::to_string))
                            .unwrap_or_default()
                    })
                    .unwrap_or_default()
            };
            let spans: usize = resource["scopeSpans"]
                .as_array()
                .unwrap()
                .iter()
                .map(|scope| scope["spans"].as_array().unwrap().len())
                .sum();
            *per_process
                .entry((
                    attribute("process.pid"),
                    attribute("process.executable.name"),
                ))
                .or_default() += spans as u64;
        }
    }
    per_process
}

#[test]
fn spans_of_a_reused_pid_carry_the_process_that_made_them() {
    let dir = scratch_dir("identity-pid-reuse");
    let link = dir.join("pidreuse-again");
    std::os::unix::fs::symlink(fixture_dir().join("pidreuse"), &link).unwrap();
    let spans_path = dir.join("spans.json");
    let output = flowtap()
        .args([
            "run",
            "--quiet",
            "--symbols",
            "pidreuse:pr_*",
            "--spans-out",
        ])
        .arg(&spans_path)
        .arg("--")
        .arg(fixture_dir().join("pidreuse"))
        .arg(&link)
        .args(["--calls", "50"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stdout}{stderr}");
    let pid = stdout
        .lines()
        .find_map(|line| line.strip_prefix("reused pid "))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("the PID was not reused: {stdout}"))
        .to_string();
    assert_eq!(demo_counts(&stdout)["pr_work"], 100);
    let per_process = spans_per_process(&std::fs::read_to_string(&spans_path).unwrap());
    // The first process and the one that took its PID, each with its 50 calls and its name
    // (the second is named after the link it was started through), though both had exited
    // long before flowtap could read /proc.
    let expected = BTreeMap::from([
        ((pid.clone(), "pidreuse".to_string()), 50),
        ((pid, "pidreuse-again".to_string()), 50),
    ]);
    assert_eq!(per_process, expected, "{stderr}");
}

/// `wfdemo --forever` from the private copy: it calls the library without end.
fn forever(demo: &std::path::Path) -> Child {
    Command::new(demo)
        .arg("--forever")
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

/// Scrapes until `flowtap_processes_traced` is `expected` (10 s at most); returns the last value.
fn processes_traced_becomes(flowtap: &Running, expected: f64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let traced = sample(&flowtap.scrape(), "flowtap_processes_traced", &[]);
        if traced == expected || Instant::now() > deadline {
            return traced;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn processes_traced_counts_the_users_of_a_library_target() {
    let dir = scratch_dir("identity-library-processes");
    let (demo, library) = isolated_fixture(&dir);
    let mut users: Vec<Child> = (0..3).map(|_| forever(&demo)).collect();
    let flowtap = Running::start(flowtap().args(["run", "--exe", library.to_str().unwrap()]));
    assert_eq!(processes_traced_becomes(&flowtap, 3.0), 3.0);
    // One exits: it is traced no more.
    let mut gone = users.pop().unwrap();
    gone.kill().unwrap();
    gone.wait().unwrap();
    assert_eq!(processes_traced_becomes(&flowtap, 2.0), 2.0);
    for mut user in users {
        user.kill().unwrap();
        user.wait().unwrap();
    }
    flowtap.interrupt();
    let (code, stderr) = flowtap.finish();
    assert_eq!(code, 0, "{stderr}");
}
