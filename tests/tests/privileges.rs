//! flowtap works with only CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH, and says
//! which one is missing when one is.

use std::process::Command;

use flowtap_tests::*;

const NEEDED: [&str; 4] = ["bpf", "perfmon", "sys_ptrace", "dac_read_search"];

/// flowtap under `setpriv`, keeping only `capabilities` (as root: the bounding set decides).
fn flowtap_with(capabilities: &[&str]) -> Command {
    let flowtap = flowtap();
    let mut command = Command::new("setpriv");
    let bounding: String = std::iter::once("-all".to_string())
        .chain(capabilities.iter().map(|c| format!("+{c}")))
        .collect::<Vec<_>>()
        .join(",");
    command
        .arg(format!("--bounding-set={bounding}"))
        .arg(flowtap.get_program())
        .envs(flowtap.get_envs().filter_map(|(k, v)| Some((k, v?))));
    command
}

#[test]
fn four_capabilities_are_enough() {
    let dir = scratch_dir("capabilities");
    let report = dir.join("report.json");
    let output = flowtap_with(&NEEDED)
        .args([
            "run",
            "--report",
            "json",
            "--output",
            report.to_str().unwrap(),
            "--",
        ])
        .arg(demo_path())
        .args(["--runs", "20"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let counts = demo_counts(&String::from_utf8(output.stdout).unwrap());
    assert_same_counts(
        &counts,
        &report_counts(&read_report(&report)),
        "four capabilities",
    );
}

#[test]
fn a_missing_capability_is_named() {
    for missing in NEEDED {
        let kept: Vec<&str> = NEEDED.iter().copied().filter(|c| *c != missing).collect();
        let output = flowtap_with(&kept)
            .args(["run", "--", "/bin/true"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        let name = format!("missing CAP_{}", missing.to_uppercase());
        assert!(stderr.contains(&name), "{missing}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
    }
}

/// Every process of an executable is one system-wide uprobe, which the kernel refuses without
/// CAP_SYS_ADMIN (EACCES from `perf_event_open` on 6.18): the error names what is missing.
#[test]
fn every_process_without_sys_admin_names_it() {
    let dir = scratch_dir("capabilities-exe");
    let (demo, _) = isolated_fixture(&dir);
    let output = flowtap_with(&NEEDED)
        .args(["run", "--exe"])
        .arg(&demo)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_ne!(output.status.code(), Some(0), "{stderr}");
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|line| line.starts_with("flowtap: error:"))
        .collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(
        errors[0].contains("which the kernel allows only with CAP_SYS_ADMIN"),
        "{stderr}"
    );
}

/// By PID the objects are opened through /proc/PID/map_files, which needs CAP_SYS_ADMIN or
/// CAP_CHECKPOINT_RESTORE; with the four capabilities they are reached under
/// /proc/PID/root instead, and every call is still counted.
#[test]
fn four_capabilities_are_enough_by_pid() {
    let dir = scratch_dir("capabilities-pid");
    let report = dir.join("report.json");
    let demo = spawn_held_demo(&["--runs", "20"]);
    let pid = demo.id().to_string();
    let mut flowtap = flowtap_with(&NEEDED);
    flowtap.args(["run", "--pid", &pid, "--report", "json", "--output"]);
    let agent = Running::start(flowtap.arg(&report));
    let counts = demo_counts(&release_demo(demo));
    let (code, stderr) = agent.finish();
    assert_eq!(code, 0, "{stderr}");
    assert_same_counts(&counts, &report_counts(&read_report(&report)), "by PID");
}
