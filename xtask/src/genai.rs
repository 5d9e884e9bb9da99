//! The official OpenAI and Anthropic Python SDKs the GenAI integration tests call through, in
//! a virtualenv under target/ made from Debian's interpreter: its `_ssl` module links the
//! system's libssl, which is what flowtap probes.

use std::{path::PathBuf, process::Command};

use anyhow::Context;

use crate::{run, workspace_root};

/// Pinned, so that a test run is the same tomorrow.
const PYTHON_PACKAGES: &[&str] = &["openai==3.57.0", "anthropic==2.14.0"];

/// The interpreter whose ssl module links /usr/lib's libssl.
const SYSTEM_PYTHON: &str = "/usr/bin/python3.11";

/// Creates or updates the virtualenv; returns its python.
pub(crate) fn install_clients() -> anyhow::Result<PathBuf> {
    let venv = workspace_root().join("target/genai-venv");
    let bin = venv.join("bin");
    if !bin.join("python").exists() {
        run(Command::new(SYSTEM_PYTHON).args(["-m", "venv"]).arg(&venv)).with_context(|| {
            format!("creating the GenAI tests' virtualenv: {SYSTEM_PYTHON} with its venv module is needed (apt-get install python3-venv)")
        })?;
    }
    // pip leaves pinned versions that are already installed alone, without asking the index.
    run(Command::new(bin.join("pip"))
        .args(["install", "--quiet", "--disable-pip-version-check"])
        .args(PYTHON_PACKAGES))?;
    Ok(bin.join("python"))
}
