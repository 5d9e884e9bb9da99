use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

/// The eBPF toolchain: its LLVM (22) must match bpf-linker's (see xtask setup).
const EBPF_TOOLCHAIN: &str = "nightly-2026-08-01";

fn main() -> anyhow::Result<()> {
    git_commit();
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = metadata
        .packages
        .into_iter()
        .find(|package| package.name.as_str() == "flowtap-ebpf")
        .ok_or_else(|| anyhow!("flowtap-ebpf package not found in the workspace"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("flowtap-ebpf manifest has no parent directory"))?;
    aya_build::build_ebpf(
        [Package {
            name: ebpf.name.as_str(),
            root_dir: root_dir.as_str(),
            no_default_features: false,
            features: &[],
        }],
        Toolchain::Custom(EBPF_TOOLCHAIN),
    )
}

/// `flowtap --version` names the commit it was built from, when built from a git checkout.
fn git_commit() {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|output| output.status.success())
            .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_string())
    };
    // A container build has no .git in its context and passes the commit in instead.
    println!("cargo::rerun-if-env-changed=FLOWTAP_GIT_COMMIT");
    let commit = std::env::var("FLOWTAP_GIT_COMMIT")
        .ok()
        .filter(|commit| !commit.is_empty() && commit != "unknown")
        .or_else(|| git(&["rev-parse", "--short", "HEAD"]))
        .unwrap_or_else(|| "unknown".into());
    println!("cargo::rustc-env=FLOWTAP_GIT_COMMIT={commit}");
    // A commit or checkout in this work tree moves HEAD and appends to its log.
    if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        for file in ["HEAD", "logs/HEAD"] {
            println!("cargo::rerun-if-changed={dir}/{file}");
        }
    }
}
