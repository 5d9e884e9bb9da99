//! `flowtap run --config FILE`: the file's settings take effect, flags win over them, and a bad
//! file is one line naming `file:line:column`, with exit code 2.

use flowtap_tests::*;

/// A TOML basic string (the paths here have no quotes or backslashes to escape).
fn quoted(path: &std::path::Path) -> String {
    format!("\"{}\"", path.display())
}

fn write_config(dir: &std::path::Path, text: &str) -> std::path::PathBuf {
    let path = dir.join("flowtap.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn settings_from_the_file_take_effect() {
    let dir = scratch_dir("config-file");
    let report = dir.join("report.json");
    let config = write_config(
        &dir,
        &format!(
            "# the demo, traced from launch\nreport = \"json\"\noutput = {}\nsymbols = [\"wf_workflow_run\", \"wf_cache_get\"]\ncommand = [{}, \"--runs\", \"25\"]\n",
            quoted(&report),
            quoted(&demo_path()),
        ),
    );
    let (code, stdout, stderr) = run_flowtap(&["run", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    let expected = demo_counts(&stdout);
    let report = read_report(&report);
    let counts = report_counts(&report);
    assert_eq!(counts.len(), 2, "{report}");
    assert_eq!(counts["wf_workflow_run"], 25);
    assert_eq!(counts["wf_workflow_run"], expected["wf_workflow_run"]);
    assert_eq!(counts["wf_cache_get"], expected["wf_cache_get"]);
}

#[test]
fn flags_on_the_command_line_win_over_the_file() {
    let dir = scratch_dir("config-override");
    let report = dir.join("report.txt");
    let config = write_config(
        &dir,
        &format!(
            "report = \"json\"\noutput = {}\nsymbols = [\"wf_cache_get\"]\ncommand = [{}, \"--runs\", \"5\"]\n",
            quoted(&report),
            quoted(&demo_path()),
        ),
    );
    let (code, _, stderr) = run_flowtap(&[
        "run",
        "--config",
        config.to_str().unwrap(),
        "--report",
        "table",
        "--symbols",
        "wf_workflow_run",
        "--",
        demo_path().to_str().unwrap(),
        "--runs",
        "7",
    ]);
    assert_eq!(code, 0, "{stderr}");
    // The file's output, the command line's format, symbols and command.
    let table = std::fs::read_to_string(&report).unwrap();
    assert!(table.starts_with("FUNCTION"), "{table}");
    let row = table
        .lines()
        .find(|line| line.starts_with("wf_workflow_run"))
        .unwrap_or_else(|| panic!("no wf_workflow_run row: {table}"));
    assert_eq!(row.split_whitespace().nth(2), Some("7"), "{table}");
    assert!(!table.contains("wf_cache_get"), "{table}");
}

#[test]
fn a_bad_file_is_one_line_with_its_place() {
    let dir = scratch_dir("config-errors");
    let cases = [
        (
            "report = \"json\"\nreprot = \"table\"\n",
            ":2:1: unknown key `reprot`",
        ),
        (
            "pid = \"4242x\"\n",
            ":1:7: invalid value '4242x' for '--pid <PID>'",
        ),
        (
            "sample-rate = 2.0\n",
            ":1:15: invalid value '2' for '--sample-rate <RATE>'",
        ),
        ("report = \"json\n", ":1:15: invalid basic string"),
        (
            "symbols = \"wf_*\"\nempty-programs = 1\n",
            ":2:18: `empty-programs` expects true or false",
        ),
    ];
    for (text, expected) in cases {
        let config = write_config(&dir, text);
        let config = config.to_str().unwrap();
        let (code, _, stderr) = run_flowtap(&["run", "--config", config, "--pid", "1"]);
        assert_eq!(code, 2, "{text:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{text:?}: {stderr}");
        let line = stderr.trim_end();
        assert!(
            line.starts_with(&format!("flowtap: error: {config}{expected}")),
            "{text:?}: {line}"
        );
    }
    let (code, _, stderr) = run_flowtap(&["run", "--config", "/nonexistent/flowtap.toml"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.starts_with("flowtap: error: cannot read the config file /nonexistent/flowtap.toml"),
        "{stderr}"
    );
}

#[test]
fn flowtap_toml_in_the_working_directory_is_read_by_default() {
    let dir = scratch_dir("config-default");
    write_config(
        &dir,
        &format!(
            "report = \"json\"\noutput = \"report.json\"\ncommand = [{}, \"--runs\", \"3\"]\n",
            quoted(&demo_path()),
        ),
    );
    let output = flowtap()
        .args(["run", "--symbols", "wf_workflow_run"])
        .current_dir(&dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.starts_with("flowtap: reading settings from ./flowtap.toml\n"),
        "{stderr}"
    );
    let report = read_report(&dir.join("report.json"));
    assert_eq!(report_function(&report, "wf_workflow_run")["calls"], 3);
}
