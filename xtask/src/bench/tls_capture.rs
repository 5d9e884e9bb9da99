//! What the genai profile's byte capture costs a TLS user: a Python loop of SSL_write_ex and
//! SSL_read_ex (`tests/genai/ssl_loop.py`) without probes, under the `openssl` profile (the same
//! libssl functions probed, nothing captured) and under `genai` (the writes captured, the
//! server side's reads quiet), in library mode; interleaved, medians of the rounds.

use std::{
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use super::{ROUNDS, median};
use crate::workspace_root;

const ITERATIONS: &str = "20000";
const LIBSSL: &str = "/usr/lib/x86_64-linux-gnu/libssl.so.3";
const PYTHON: &str = "/usr/bin/python3.11";

/// ns per iteration: none, openssl, genai.
pub(super) fn measure(agent: &Path, dir: &Path) -> anyhow::Result<Value> {
    certificate(dir)?;
    let mut runs: [Vec<f64>; 3] = Default::default();
    for round in 1..=ROUNDS {
        println!("== TLS byte capture, round {round} of {ROUNDS}");
        runs[0].push(iteration_ns(dir)?);
        for (slot, profile) in [(1, "openssl"), (2, "genai")] {
            let mut tracer = crate::fixture::start_until_ready(
                Command::new(agent)
                    .args(["run", "--profile", profile, "--exe", LIBSSL])
                    .args(["--metrics-addr", "127.0.0.1:0"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null()),
            )?;
            let ns = iteration_ns(dir);
            // SAFETY: signalling our own child.
            unsafe { libc::kill(tracer.id() as i32, libc::SIGINT) };
            tracer.wait()?;
            runs[slot].push(ns?);
        }
        let last = |n: usize| runs[n].last().copied().unwrap_or_default();
        println!(
            "   none {:.0}, openssl {:.0}, genai {:.0} ns/iteration",
            last(0),
            last(1),
            last(2)
        );
    }
    let [none, openssl, genai] = runs.map(median);
    Ok(json!({
        "iterations_per_run": ITERATIONS,
        "no_probes_ns": none,
        "openssl_profile_ns": openssl,
        "genai_profile_ns": genai,
        "capture_added_ns": genai - openssl,
    }))
}

pub(super) fn render(r: &Value) -> String {
    let ns = |key: &str| r[key].as_f64().unwrap_or_default();
    format!(
        "\n| TLS loop (1 SSL_write_ex captured + 1 SSL_read_ex quiet) | ns/iteration |\n| --- | ---: |\n\
         | no probes | {:.0} |\n| `openssl` profile (probes, no capture) | {:.0} |\n\
         | `genai` profile (capture) | {:.0} |\n| added by the capture | {:.0} |\n",
        ns("no_probes_ns"),
        ns("openssl_profile_ns"),
        ns("genai_profile_ns"),
        ns("capture_added_ns"),
    )
}

fn certificate(dir: &Path) -> anyhow::Result<()> {
    let status = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args([
            "-keyout",
            "tls-bench.key",
            "-out",
            "tls-bench.pem",
            "-subj",
            "/CN=bench",
        ])
        .current_dir(dir)
        .stderr(Stdio::null())
        .status()
        .context("running openssl for the TLS bench's certificate")?;
    if !status.success() {
        bail!("openssl could not make the TLS bench's certificate");
    }
    Ok(())
}

fn iteration_ns(dir: &Path) -> anyhow::Result<f64> {
    let output = Command::new(PYTHON)
        .arg(workspace_root().join("tests/genai/ssl_loop.py"))
        .arg(dir.join("tls-bench.pem"))
        .arg(dir.join("tls-bench.key"))
        .arg(ITERATIONS)
        .output()
        .with_context(|| format!("running {PYTHON} ssl_loop.py"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    stdout
        .split_whitespace()
        .next()
        .and_then(|ns| ns.parse().ok())
        .with_context(|| format!("ssl_loop.py said {stdout:?}"))
}
