//! The README's first command as a new user meets it: a fresh clone, a `RUSTUP_HOME` holding
//! only the default toolchain, an empty `CARGO_HOME`, and rustup's auto-install off. Every pinned
//! toolchain, bpf-linker and the whole build must then come from that one command.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context, ensure};

use crate::{stage, workspace_root};

/// The proxies rustup installs into `CARGO_HOME/bin`: every one is the rustup binary itself.
const PROXIES: &[&str] = &[
    "cargo",
    "cargo-clippy",
    "cargo-fmt",
    "clippy-driver",
    "rustc",
    "rustdoc",
    "rustfmt",
];

pub(crate) fn check() -> anyhow::Result<()> {
    let command = readme_first_command()?;
    let scratch = std::env::temp_dir().join(format!("flowtap-fresh-clone-{}", std::process::id()));
    stage(&format!(
        "fresh clone: `{command}` with only the default toolchain, auto-install off, in {}",
        scratch.display()
    ));
    let result = run_in_fresh_clone(&scratch, &command);
    // The clone's build and toolchains take gigabytes: keep only the log.
    let log = workspace_root().join("target/fresh-clone.log");
    let _ = std::fs::copy(scratch.join("output.log"), &log);
    std::fs::remove_dir_all(&scratch).with_context(|| format!("removing {}", scratch.display()))?;
    result.with_context(|| format!("the fresh clone's output is in {}", log.display()))
}

fn run_in_fresh_clone(scratch: &Path, command: &str) -> anyhow::Result<()> {
    std::fs::create_dir_all(scratch)?;
    let clone = scratch.join("flowtap");
    warn_if_dirty()?;
    crate::run_quietly(
        Command::new("git")
            .args(["clone", "--quiet"])
            .arg(workspace_root())
            .arg(&clone),
    )?;
    let (rustup_home, cargo_home) = fresh_homes(scratch)?;
    let log = std::fs::File::create(scratch.join("output.log"))?;
    let mut shell = Command::new("sh");
    shell
        .args(["-c", command])
        .current_dir(&clone)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // The user's environment (proxies, CA bundles...), but none of the host's Rust installation:
    // no rustup or cargo variables, no directory of Rust binaries on PATH.
    for (var, _) in std::env::vars_os() {
        let name = var.to_string_lossy();
        if [
            "RUSTUP",
            "CARGO",
            "RUSTC",
            "RUSTDOC",
            "RUSTFLAGS",
            "LD_LIBRARY_PATH",
        ]
        .iter()
        .any(|prefix| name.starts_with(prefix))
        {
            shell.env_remove(&var);
        }
    }
    let host_path = std::env::var_os("PATH").unwrap_or_default();
    let path = std::iter::once(cargo_home.join("bin")).chain(
        std::env::split_paths(&host_path)
            .filter(|dir| !dir.join("rustup").exists() && !dir.join("cargo").exists()),
    );
    shell
        .env("PATH", std::env::join_paths(path)?)
        .env("RUSTUP_HOME", &rustup_home)
        .env("CARGO_HOME", &cargo_home)
        .env("RUSTUP_AUTO_INSTALL", "0");
    let start = Instant::now();
    let status = shell.status().context("starting sh")?;
    let elapsed = start.elapsed().as_secs();
    let output = std::fs::read_to_string(scratch.join("output.log"))?;
    stage(&format!(
        "fresh clone: `{command}` took {}m{:02}s",
        elapsed / 60,
        elapsed % 60
    ));
    ensure!(
        status.success(),
        "`{command}` failed with {status}:\n{output}"
    );
    check_output(&output)
}

/// The demo's output is the product: its report, without the build's chatter.
fn check_output(output: &str) -> anyhow::Result<()> {
    ensure!(
        output.lines().any(|l| l.starts_with("FUNCTION ")) && output.contains("wf_workflow_run"),
        "the fresh clone's demo printed no report:\n{output}"
    );
    let chatter: Vec<&str> = output
        .lines()
        .filter(|l| l.starts_with("warning:") || l.trim_start().starts_with("Compiling "))
        .collect();
    ensure!(
        chatter.is_empty(),
        "the fresh clone's demo printed the build's output ({} lines), e.g. {:?}",
        chatter.len(),
        chatter.first()
    );
    Ok(())
}

/// A RUSTUP_HOME with only the host's default toolchain (linked, not copied: it is what the user
/// already has) and a CARGO_HOME with only rustup and its proxies.
fn fresh_homes(scratch: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let rustup_home = scratch.join("rustup");
    let cargo_home = scratch.join("cargo");
    let default = default_toolchain()?;
    let host_toolchain = host_rustup_home()?.join("toolchains").join(&default);
    std::fs::create_dir_all(rustup_home.join("toolchains"))?;
    std::os::unix::fs::symlink(
        &host_toolchain,
        rustup_home.join("toolchains").join(&default),
    )
    .with_context(|| format!("linking {}", host_toolchain.display()))?;
    // Self-update off, as on the host: a test must not replace rustup.
    std::fs::write(
        rustup_home.join("settings.toml"),
        format!(
            "version = \"12\"\ndefault_toolchain = \"{default}\"\nprofile = \"minimal\"\n\
             auto_self_update = \"disable\"\n"
        ),
    )?;
    let bin = cargo_home.join("bin");
    std::fs::create_dir_all(&bin)?;
    let rustup = which("rustup")?;
    std::fs::copy(&rustup, bin.join("rustup"))
        .with_context(|| format!("copying {}", rustup.display()))?;
    for proxy in PROXIES {
        std::os::unix::fs::symlink("rustup", bin.join(proxy))?;
    }
    Ok((rustup_home, cargo_home))
}

/// The host's default toolchain, by its full name, e.g. `stable-x86_64-unknown-linux-gnu`.
fn default_toolchain() -> anyhow::Result<String> {
    let output = Command::new("rustup")
        .args(["default"])
        .output()
        .context("rustup default")?;
    let text = String::from_utf8_lossy(&output.stdout);
    text.split_whitespace()
        .next()
        .filter(|_| output.status.success())
        .map(str::to_string)
        .context("rustup has no default toolchain")
}

fn host_rustup_home() -> anyhow::Result<PathBuf> {
    let output = Command::new("rustup")
        .args(["show", "home"])
        .output()
        .context("rustup show home")?;
    ensure!(output.status.success(), "rustup show home failed");
    Ok(PathBuf::from(
        String::from_utf8_lossy(&output.stdout).trim(),
    ))
}

fn which(program: &str) -> anyhow::Result<PathBuf> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(program))
        .find(|path| path.is_file())
        .with_context(|| format!("{program} is not on PATH"))
}

/// The clone holds the last commit: say so when the work tree has more.
fn warn_if_dirty() -> anyhow::Result<()> {
    let output = Command::new("git")
        .args(["status", "--porcelain", "--untracked-files=no"])
        .current_dir(workspace_root())
        .output()
        .context("git status")?;
    if !output.stdout.is_empty() {
        stage("fresh clone: note: uncommitted changes are not in the clone (it holds HEAD)");
    }
    Ok(())
}

/// The first command of the README's quick start, exactly as written there.
fn readme_first_command() -> anyhow::Result<String> {
    let readme = std::fs::read_to_string(workspace_root().join("README.md"))?;
    first_command(&readme).context("README.md: no command in the `## Quick start` section")
}

fn first_command(readme: &str) -> Option<String> {
    let section = &readme[readme.find("## Quick start")?..];
    let block = &section[section.find("```sh\n")? + "```sh\n".len()..];
    let line = block.lines().next()?;
    let command = line.split(" #").next()?.trim();
    if command.is_empty() || command.starts_with("```") {
        return None;
    }
    Some(command.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_command_is_read_from_the_quick_start() {
        let readme = "# x\n```sh\nnot this\n```\n## Quick start (as root)\n\n```sh\n\
                      cargo xtask demo   # builds\ncargo xtask test\n```\n";
        assert_eq!(first_command(readme).as_deref(), Some("cargo xtask demo"));
        assert_eq!(first_command("## Quick start\n```sh\n```\n"), None);
    }

    #[test]
    fn the_readme_starts_with_the_demo() {
        assert_eq!(readme_first_command().unwrap(), "cargo xtask demo");
    }
}
