//! Installing prerequisites idempotently: each step checks the version it needs first.

use std::process::Command;

use anyhow::{Context, bail};

use crate::{run_quietly, stage};

pub(crate) const RUST_TOOLCHAIN: &str = "1.98.0";
pub(crate) const EBPF_TOOLCHAIN: &str = "nightly-2026-08-01";
pub(crate) const BPF_LINKER_VERSION: &str = "0.13.0";
pub(crate) const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
/// Build inputs of bpf-linker, the C compiler of the fixture (and C++ for the demangling test),
/// and the reference tools the tests compare with (bpftrace; Prometheus and promtool), and Go for
/// the Go-binary refusal test.
pub(crate) const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "bpftrace",
    "gcc",
    "g++",
    "prometheus",
    "golang-go",
];

pub(crate) fn install_all() -> anyhow::Result<()> {
    stage(&format!(
        "prerequisites: Rust {RUST_TOOLCHAIN}, {EBPF_TOOLCHAIN}, LLVM 22, bpf-linker {BPF_LINKER_VERSION}, apt packages"
    ));
    install_toolchain(RUST_TOOLCHAIN, &["clippy", "rustfmt"])?;
    install_toolchain(EBPF_TOOLCHAIN, &["rust-src", "clippy"])?;
    install_apt_packages()?;
    install_bpf_linker()
}

fn output(command: &mut Command) -> Option<String> {
    let out = command.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn install_toolchain(toolchain: &str, components: &[&str]) -> anyhow::Result<()> {
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        toolchain,
    ]))
    .unwrap_or_default();
    if components
        .iter()
        .all(|c| installed.lines().any(|line| line.starts_with(c)))
    {
        return Ok(());
    }
    stage(&format!(
        "installing Rust {toolchain} with {} (rustup)",
        components.join(", ")
    ));
    let mut command = Command::new("rustup");
    command.args(["toolchain", "install", toolchain, "--profile", "minimal"]);
    for component in components {
        command.args(["--component", component]);
    }
    run_quietly(&mut command)
}

fn install_apt_packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|package| {
            output(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
                .is_none_or(|status| !status.contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "apt packages missing ({}): run `cargo xtask setup` as root",
            missing.join(" ")
        );
    }
    stage(&format!("installing {} (apt-get)", missing.join(" ")));
    run_quietly(Command::new("apt-get").arg("update").arg("-q"))?;
    run_quietly(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn is_root() -> bool {
    output(Command::new("id").arg("-u")).is_some_and(|uid| uid.trim() == "0")
}

fn install_bpf_linker() -> anyhow::Result<()> {
    let version = output(Command::new("bpf-linker").arg("--version")).unwrap_or_default();
    if version.contains(BPF_LINKER_VERSION) {
        return Ok(());
    }
    let path = format!(
        "{LLVM_PREFIX}/bin:{}",
        std::env::var("PATH").context("PATH is not set")?
    );
    stage(&format!(
        "building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (cargo install, a few minutes)"
    ));
    run_quietly(
        Command::new("rustup")
            .args(["run", RUST_TOOLCHAIN, "cargo", "install", "bpf-linker"])
            .args(["--version", BPF_LINKER_VERSION, "--locked", "--force"])
            .args(["--no-default-features", "--features", "llvm-22"])
            .env("LLVM_PREFIX", LLVM_PREFIX)
            .env("PATH", path),
    )
}

const CARGO_FUZZ_VERSION: &str = "0.13";

/// cargo-fuzz, built with the nightly toolchain it runs on.
pub(crate) fn install_cargo_fuzz() -> anyhow::Result<()> {
    let version =
        output(Command::new("rustup").args(["run", EBPF_TOOLCHAIN, "cargo", "fuzz", "--version"]))
            .unwrap_or_default();
    if version.contains(&format!("cargo-fuzz {CARGO_FUZZ_VERSION}")) {
        return Ok(());
    }
    stage(&format!(
        "building cargo-fuzz {CARGO_FUZZ_VERSION} (cargo install)"
    ));
    run_quietly(Command::new("rustup").args([
        "run",
        EBPF_TOOLCHAIN,
        "cargo",
        "install",
        "cargo-fuzz",
        "--version",
        &format!("^{CARGO_FUZZ_VERSION}"),
        "--locked",
    ]))
}
