//! Launch mode traces what the command becomes: through a `#!` script, `sh -c 'exec …'`, `env`
//! and wrappers that fork it (`sh -c 'prog; …'`, `timeout`), the program is probed before its
//! first instruction, its forked children too; counts are compared with the fixture's own
//! (`forkdemo`). A command that runs only wrappers ends with one line; one whose program matches
//! nothing dies before running it.

use std::{
    io::Write,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use flowtap_tests::*;

const SELECT: [&str; 2] = ["--symbols", "forkdemo:fk_*"];

/// 20 children of 100 calls each, forked without exec.
const ARGS: [&str; 4] = ["--children", "20", "--calls", "100"];

fn forkdemo() -> PathBuf {
    fixture_dir().join("forkdemo")
}

fn fk_calls(report_path: &Path) -> u64 {
    report_counts(&read_report(report_path))
        .get("fk_work")
        .copied()
        .unwrap_or(0)
}

/// Launches `program args` and checks that every call the fixture made was counted.
fn counts_everything(test: &str, program: &Path, args: &[&str]) {
    let dir = scratch_dir(test);
    let traced = launch_with_report(&dir, &SELECT, program, args);
    assert_eq!(traced.code, 0, "{}", traced.stderr);
    let made = demo_counts(&traced.stdout)["fk_work"];
    assert_eq!(made, 2_100, "the fixture did not run all its children");
    assert_eq!(fk_calls(&traced.report), made, "{}", traced.stderr);
}

/// Launches `wrapper option forkdemo ARGS` and checks every call was counted.
fn counts_everything_behind(test: &str, wrapper: &str, option: &str) {
    let demo = forkdemo();
    let mut args = vec![option, demo.to_str().unwrap()];
    args.extend(ARGS);
    counts_everything(test, Path::new(wrapper), &args);
}

/// A `#!` script in `dir` whose body is `body`.
fn script(dir: &Path, interpreter: &str, body: &str) -> PathBuf {
    let path = dir.join("launcher");
    std::fs::write(&path, format!("#!{interpreter}\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[test]
fn a_script_that_execs_the_program_is_followed() {
    let dir = scratch_dir("exec-script");
    let body = format!("exec {} \"$@\"", forkdemo().display());
    let launcher = script(&dir, "/bin/sh", &body);
    counts_everything("exec-script-run", &launcher, &ARGS);
}

#[test]
fn a_script_run_through_env_is_followed() {
    // `#!/usr/bin/env bash` runs env, then bash, then the program: two wrappers.
    let dir = scratch_dir("exec-env-script");
    let body = format!("exec {} \"$@\"", forkdemo().display());
    let launcher = script(&dir, "/usr/bin/env bash", &body);
    counts_everything("exec-env-script-run", &launcher, &ARGS);
}

#[test]
fn sh_c_exec_is_followed() {
    let command = format!("exec {} {}", forkdemo().display(), ARGS.join(" "));
    counts_everything("exec-sh-c", Path::new("/bin/sh"), &["-c", &command]);
}

#[test]
fn sh_c_that_forks_the_program_is_followed() {
    // Not the last command: the shell forks a child that executes the program.
    let command = format!("{} {}; true", forkdemo().display(), ARGS.join(" "));
    counts_everything("exec-sh-c-fork", Path::new("/bin/sh"), &["-c", &command]);
}

#[test]
fn every_run_of_the_program_a_wrapper_starts_is_traced() {
    // A restart loop: the shell starts the program three times (a subshell the third); every
    // run counts, the shell's own calls do not.
    let dir = scratch_dir("exec-sh-c-runs");
    let run = format!("{} {}", forkdemo().display(), ARGS.join(" "));
    let command = format!("{run}; {run}; ({run})");
    let traced = launch_with_report(&dir, &SELECT, Path::new("/bin/sh"), &["-c", &command]);
    assert_eq!(traced.code, 0, "{}", traced.stderr);
    let made: u64 = traced
        .stdout
        .lines()
        .filter_map(|line| line.strip_prefix("calls fk_work ")?.parse::<u64>().ok())
        .sum();
    assert_eq!(made, 3 * 2_100, "the fixture did not run all its children");
    assert_eq!(fk_calls(&traced.report), made, "{}", traced.stderr);
}

#[test]
fn timeout_which_forks_the_program_is_followed() {
    counts_everything_behind("exec-timeout", "/usr/bin/timeout", "60");
}

#[test]
fn a_script_is_followed_past_the_programs_it_runs_first_to_the_one_that_matches() {
    // `mkdir` and `true` match nothing: they run untraced, and the script is followed on to
    // the program, whose calls all count; the script's own exit code is flowtap's.
    let dir = scratch_dir("exec-script-first-programs");
    let made_dir = dir.join("made");
    let body = format!(
        "mkdir -p {}\n/bin/true\n{} \"$@\"\nexit 3",
        made_dir.display(),
        forkdemo().display()
    );
    let launcher = script(&dir, "/bin/sh", &body);
    let traced = launch_with_report(&dir, &SELECT, &launcher, &ARGS);
    assert_eq!(traced.code, 3, "{}", traced.stderr);
    assert!(made_dir.is_dir(), "mkdir did not run: {}", traced.stderr);
    let made = demo_counts(&traced.stdout)["fk_work"];
    assert_eq!(made, 2_100, "the fixture did not run all its children");
    assert_eq!(fk_calls(&traced.report), made, "{}", traced.stderr);
}

#[test]
fn env_is_followed() {
    counts_everything_behind("exec-env", "/usr/bin/env", "FLOWTAP_TEST=1");
}

#[test]
fn output_input_and_exit_code_pass_through_the_wrappers() {
    let demo = forkdemo();
    let direct = Command::new(&demo)
        .args([
            "--children",
            "2",
            "--calls",
            "5",
            "--exit",
            "7",
            "--wait-start",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(direct.status.code(), Some(7));
    let command = format!(
        "exec {} --children 2 --calls 5 --exit 7 --wait-start",
        demo.display()
    );
    let mut traced = flowtap()
        .args(["run", "--quiet"])
        .args(SELECT)
        .args(["--", "sh", "-c", &command])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The program waits for its standard input to end: it reads what we write.
    traced
        .stdin
        .take()
        .unwrap()
        .write_all(b"some bytes\n")
        .unwrap();
    let traced = traced.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&traced.stderr);
    assert_eq!(traced.status.code(), Some(7), "{stderr}");
    assert_eq!(traced.stdout, direct.stdout, "{stderr}");
}

#[test]
fn a_command_that_runs_only_wrappers_and_programs_matching_nothing_ends_with_one_line() {
    // The shell's builtin echo; then an echo it forks, which matches nothing and runs untraced.
    for (command, code, named) in [
        ("echo out; exit 3", "code 3", "matching nothing (dash"),
        ("/bin/echo out; exit 4", "code 4", "echo (matching nothing)"),
    ] {
        let (exit, stdout, stderr) =
            run_flowtap(&["run", "--symbols", "fk_*", "--", "sh", "-c", command]);
        assert_eq!(exit, 2, "{stderr}");
        assert_eq!(stdout, "out\n");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{stderr}");
        assert!(
            lines[0].contains(&format!("exited with {code}")) && lines[0].contains(named),
            "{stderr}"
        );
    }
}

#[test]
fn a_program_that_matches_nothing_never_runs() {
    let command = format!("exec {} --children 0 --calls 5", forkdemo().display());
    let (code, stdout, stderr) = run_flowtap(&[
        "run",
        "--symbols",
        "nothing_like_this*",
        "--",
        "sh",
        "-c",
        &command,
    ]);
    assert_eq!(code, 2, "{stderr}");
    // Killed before its first instruction: it printed nothing.
    assert_eq!(stdout, "", "{stderr}");
    assert!(
        stderr.contains("forkdemo") && stderr.contains("matches nothing_like_this*"),
        "{stderr}"
    );
}

#[test]
fn a_wrapper_named_by_a_selector_is_the_target() {
    // Named, the shell is the target: its libc's `execve`, through which it runs each
    // command (in a forked child, or itself for the last), is counted.
    let dir = scratch_dir("exec-named-wrapper");
    let traced = launch_with_report(
        &dir,
        &["--symbols", "libc.so.6:execve", "--symbols", "dash:*"],
        Path::new("/bin/sh"),
        &["-c", "/bin/true; /bin/true"],
    );
    assert_eq!(traced.code, 0, "{}", traced.stderr);
    assert_eq!(
        report_counts(&read_report(&traced.report)).get("execve"),
        Some(&2),
        "{}",
        traced.stderr
    );
}
