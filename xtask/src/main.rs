//! Project tasks: `cargo xtask setup | demo | test | deploy-check | fixture`.
//!
//! xtask itself builds on an older stable (its own `rust-version`), so that `cargo xtask` works
//! with whatever default toolchain rustup has; it installs the pinned toolchains and runs every
//! other build through them explicitly (`rustup run`), with rustup's auto-install on or off.

mod bench;
mod deploy;
mod fixture;
mod fresh;
mod genai;
mod setup;

use std::{io::Write, process::Command};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "flowtap's project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install every prerequisite (pinned toolchains, bpf-linker with LLVM 22, apt packages),
    /// skipping what is already there.
    Setup,
    /// Build flowtap and the fixture, run the demo workload under `flowtap run --pid`, print the
    /// report.
    Demo {
        /// Workflow runs the demo makes.
        #[arg(long, default_value_t = 200)]
        runs: u32,
    },
    /// Run every test: lints, deploy/, unit tests, the integration tests that load real eBPF
    /// (as root), and the README's first command in a fresh clone with fresh toolchains.
    Test {
        /// Only integration tests whose name contains this (skips the fresh-clone check).
        filter: Option<String>,
    },
    /// The README's first command in a fresh clone of HEAD, with a fresh RUSTUP_HOME and
    /// CARGO_HOME holding only the default toolchain and rustup's auto-install off.
    FreshClone,
    /// Fuzz the ELF symbol reader and the `--symbols` parser for a bounded time each.
    Fuzz {
        /// Seconds per fuzz target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
    /// Measure what flowtap costs per call against the kernel floor and bpftrace, its
    /// throughput, memory and attach time; writes target/bench/results.{json,md}.
    Bench,
    /// Validate `deploy/`: Kubernetes manifests, the compose file, the Dockerfile, Prometheus
    /// rules and their unit tests, Grafana dashboards.
    DeployCheck,
    /// Build the fixture workflow app into target/fixture (wfdemo and libwfrt.so).
    Fixture,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::Setup => setup::install_all(),
        Task::Demo { runs } => {
            setup::install_all()?;
            demo(runs)
        }
        Task::Test { filter } => {
            setup::install_all()?;
            test(filter)
        }
        Task::Fuzz { seconds } => {
            setup::install_all()?;
            fuzz(seconds)
        }
        Task::Bench => {
            setup::install_all()?;
            bench::run()
        }
        Task::DeployCheck => {
            setup::install_all()?;
            deploy::check()
        }
        Task::FreshClone => fresh::check(),
        Task::Fixture => {
            let out = fixture::build()?;
            println!("{}", out.display());
            Ok(())
        }
    }
}

/// The workspace root (xtask lives one level below it).
pub fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask is inside the workspace")
        .to_path_buf()
}

pub fn run(command: &mut Command) -> anyhow::Result<()> {
    let status = command
        .status()
        .with_context(|| format!("cannot start {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed with {status}");
    }
    Ok(())
}

/// Says what is starting: one line per stage, the output a user reads.
pub fn stage(what: &str) {
    println!("== {what}");
}

/// Runs a command whose output is of interest only when it fails: a build, an installation.
pub fn run_quietly(command: &mut Command) -> anyhow::Result<()> {
    let output = command
        .output()
        .with_context(|| format!("cannot start {command:?}"))?;
    if !output.status.success() {
        std::io::stderr().write_all(&output.stdout)?;
        std::io::stderr().write_all(&output.stderr)?;
        bail!("{command:?} failed with {}", output.status);
    }
    Ok(())
}

/// Cargo of the pinned toolchain, through rustup: `cargo xtask` itself runs on whatever the
/// default toolchain is, and the workspace has no rust-toolchain.toml.
fn cargo() -> Command {
    toolchain_cargo(setup::RUST_TOOLCHAIN)
}

/// Cargo of the eBPF (nightly) toolchain.
fn nightly_cargo() -> Command {
    toolchain_cargo(setup::EBPF_TOOLCHAIN)
}

fn toolchain_cargo(toolchain: &str) -> Command {
    let mut command = Command::new("rustup");
    command
        .current_dir(workspace_root())
        .args(["run", toolchain, "cargo"]);
    // What the default toolchain's `cargo run` told us about itself must not steer the pinned one.
    for var in ["RUSTUP_TOOLCHAIN", "CARGO", "RUSTC", "RUSTDOC"] {
        command.env_remove(var);
    }
    command
}

pub fn build_agent() -> anyhow::Result<std::path::PathBuf> {
    stage("building flowtap (release, with its eBPF programs; the first build takes minutes)");
    run_quietly(cargo().args(["build", "--quiet", "--release", "--package", "flowtap"]))?;
    Ok(workspace_root().join("target/release/flowtap"))
}

fn demo(runs: u32) -> anyhow::Result<()> {
    let agent = build_agent()?;
    stage("building the demo workflow app (tests/fixture)");
    let fixture = fixture::build()?;
    stage(&format!(
        "starting the demo workflow app ({runs} runs), then attaching flowtap by PID"
    ));
    let mut app = Command::new(fixture.join("wfdemo"))
        .args(["--runs", &runs.to_string(), "--wait-start"])
        .args(["--latency", "timeout=20000"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .context("starting the demo app")?;
    // `spawn` returns at execve; attach once ld.so has mapped the runtime.
    let maps = format!("/proc/{}/maps", app.id());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !std::fs::read_to_string(&maps).is_ok_and(|m| m.contains("libwfrt.so")) {
        if std::time::Instant::now() > deadline || app.try_wait()?.is_some() {
            bail!("the demo app did not start");
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let mut flowtap = fixture::start_until_ready(Command::new(&agent).args([
        "run",
        "--pid",
        &app.id().to_string(),
    ]))?;
    // The demo starts its workload when its stdin closes.
    drop(app.stdin.take());
    app.wait().context("waiting for the demo app")?;
    let status = flowtap.wait().context("waiting for flowtap")?;
    if !status.success() {
        bail!("flowtap failed with {status}");
    }
    Ok(())
}

const FUZZ_TARGETS: [&str; 4] = ["elf_symbols", "symbol_selector", "profile", "config"];

fn fuzz(seconds: u64) -> anyhow::Result<()> {
    setup::install_cargo_fuzz()?;
    // Start the ELF fuzzer from real objects: the fixture's executable and library.
    let fixture = fixture::build()?;
    let corpus = workspace_root().join("fuzz/corpus/elf_symbols");
    std::fs::create_dir_all(&corpus)?;
    for file in ["wfdemo", "libwfrt.so"] {
        std::fs::copy(fixture.join(file), corpus.join(file))?;
    }
    // And the profile fuzzer from the built-in profiles.
    let profiles = workspace_root().join("fuzz/corpus/profile");
    std::fs::create_dir_all(&profiles)?;
    for entry in std::fs::read_dir(workspace_root().join("agent/src/profile/builtin"))? {
        let path = entry?.path();
        std::fs::copy(&path, profiles.join(path.file_name().unwrap_or_default()))?;
    }
    // And the config file fuzzer from a file using every kind of value.
    let configs = workspace_root().join("fuzz/corpus/config");
    std::fs::create_dir_all(&configs)?;
    std::fs::write(
        configs.join("flowtap.toml"),
        "# every kind of value\nreport = \"json\"\nduration = 30\nsample-rate = 0.5\nsymbols = [\"wf_*\", \"libc.so.6:malloc\"]\ncommand = [\"./app\", \"--workers\", 4]\n",
    )?;
    for target in FUZZ_TARGETS {
        run(nightly_cargo()
            .args(["fuzz", "run", target, "--"])
            .arg(format!("-max_total_time={seconds}")))?;
    }
    Ok(())
}

/// Formatting and clippy with warnings denied, the eBPF crate on its own target.
fn lint() -> anyhow::Result<()> {
    stage("lints: rustfmt, clippy (host crates), clippy (eBPF crate)");
    run(cargo().args(["fmt", "--all", "--", "--check"]))?;
    run_quietly(
        cargo()
            .args([
                "clippy",
                "--workspace",
                "--exclude",
                "flowtap-ebpf",
                "--all-targets",
            ])
            .args(["--", "-D", "warnings"]),
    )?;
    run_quietly(
        nightly_cargo()
            .args(["clippy", "--package", "flowtap-ebpf"])
            .args([
                "--release",
                "--target",
                "bpfel-unknown-none",
                "-Z",
                "build-std=core",
            ])
            .args(["--", "-D", "warnings"]),
    )
}

fn test(filter: Option<String>) -> anyhow::Result<()> {
    let filter_given = filter.is_some();
    lint()?;
    deploy::check()?;
    let agent = build_agent()?;
    let fixture = fixture::build()?;
    fixture::mount_tracefs()?;
    let genai_python = genai::install_clients()?;
    stage("unit tests");
    run(cargo().args([
        "test",
        "--workspace",
        "--exclude",
        "flowtap-tests",
        "--exclude",
        "flowtap-ebpf",
    ]))?;
    stage("integration tests (real eBPF)");
    let mut integration = cargo();
    integration
        .args(["test", "--release", "--package", "flowtap-tests", "--"])
        .args(filter)
        .env("FLOWTAP_BIN", agent)
        .env("FLOWTAP_FIXTURE", fixture)
        .env("FLOWTAP_GENAI_PYTHON", genai_python);
    run(&mut integration)?;
    if filter_given {
        return Ok(());
    }
    fresh::check()
}
