//! Stripped objects: functions come from a separate debug file when there is one (the fixture's
//! `stripdemo`, split with `objcopy --only-keep-debug` and linked by `.gnu_debuglink`); without
//! one, "no function matches" names the object and says it is stripped (the fixture's
//! `strippeddemo`, and a stripped Debian program).

use std::path::Path;

use flowtap_tests::*;

#[test]
fn functions_of_a_stripped_program_come_from_its_debug_link() {
    let dir = scratch_dir("stripped-debuglink");
    let traced = launch_with_report(
        &dir,
        &["--symbols", "stripdemo:fk_*"],
        &fixture_dir().join("stripdemo"),
        &["--children", "3", "--calls", "100"],
    );
    assert_eq!(traced.code, 0, "{}", traced.stderr);
    let made = demo_counts(&traced.stdout)["fk_work"];
    assert_eq!(made, 400);
    let counted = report_counts(&read_report(&traced.report))["fk_work"];
    assert_eq!(counted, made);
    assert!(
        traced
            .stderr
            .contains("stripdemo is stripped: its functions were read from its debug file")
            && traced.stderr.contains("stripdemo.debug"),
        "{}",
        traced.stderr
    );
}

/// Runs flowtap expecting its one-line refusal.
fn refusal(args: &[&str]) -> String {
    let (code, stdout, stderr) = run_flowtap(args);
    assert_eq!(code, 2, "{stderr}");
    assert_eq!(stdout, "", "the program must not have run: {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    lines[0].to_string()
}

#[test]
fn a_stripped_program_without_debug_file_is_named_as_stripped() {
    let demo = fixture_dir().join("strippeddemo");
    let demo = demo.to_str().unwrap();
    for args in [
        vec!["run", "--symbols", "fk_*", "--", demo],
        vec!["run", "--exe", demo, "--symbols", "fk_*"],
    ] {
        let line = refusal(&args);
        assert!(
            line.contains(&format!("{demo} is stripped")) && line.contains("debug symbols"),
            "{line}"
        );
    }
}

#[test]
fn a_stripped_debian_program_is_named_as_stripped() {
    let ls = Path::new("/usr/bin/ls");
    let ls_debug = std::process::Command::new("sh")
        .args([
            "-c",
            "ls /usr/lib/debug/.build-id/*/*.debug 2>/dev/null | wc -l",
        ])
        .output()
        .unwrap();
    assert!(
        ls.exists(),
        "coreutils' ls is the stripped program this test reads"
    );
    // `gobble_file` is one of ls's own (static) functions, gone with its .symtab.
    let line = refusal(&["run", "--exe", "/usr/bin/ls", "--symbols", "gobble_file"]);
    assert!(
        line.contains("/usr/bin/ls is stripped") && line.contains("-dbgsym"),
        "{line} ({} debug files installed)",
        String::from_utf8_lossy(&ls_debug.stdout).trim()
    );
}
