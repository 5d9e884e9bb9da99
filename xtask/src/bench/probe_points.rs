//! What where a probe goes costs: a `push %rbp` entry (emulated by the kernel), an `endbr64`
//! entry (flowtap probes after it), an entry the kernel single-steps, and return probes against
//! probes on the return instructions; interleaved in one run, reported as ratios.

use std::{path::Path, process::Command, time::Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use super::{ROUNDS, Tracer, median};

const CALLS: u64 = 100_000;

/// (name, function probed, extra flowtap flags)
const CASES: [(&str, &str, &[&str]); 4] = [
    ("push %rbp entry, return probe", "entry_push", &[]),
    ("endbr64 entry, return probe", "entry_endbr", &[]),
    ("single-stepped entry, return probe", "entry_stepped", &[]),
    (
        "push %rbp entry, return-instruction probe",
        "entry_push",
        &["--exit-probes", "instructions"],
    ),
];

/// Added ns per call of each case over the same function unprobed, medians of the rounds.
pub(super) fn measure(agent: &Path, program: &Path) -> anyhow::Result<Value> {
    let mut added: Vec<Vec<f64>> = vec![Vec::new(); CASES.len()];
    for round in 1..=ROUNDS {
        println!("== probe placement, round {round} of {ROUNDS}");
        for (case, (name, function, flags)) in CASES.iter().enumerate() {
            let bare = calls_ns(program, function, CALLS)?;
            let tracer = Tracer::flowtap(agent, program, function, flags)?;
            wait_until_probed(program, function)?;
            let probed = calls_ns(program, function, CALLS)?;
            tracer.stop()?;
            println!("   {name:<44} {:>8.1} ns/call added", probed - bare);
            added[case].push(probed - bare);
        }
    }
    let added: Vec<f64> = added.into_iter().map(median).collect();
    let cases: Vec<Value> = CASES
        .iter()
        .zip(&added)
        .map(|((name, ..), ns)| json!({"case": name, "added_ns_per_call": ns}))
        .collect();
    Ok(json!({
        "calls_per_run": CALLS,
        "cases": cases,
        "endbr64_over_push": added[1] / added[0],
        "single_stepped_over_push": added[2] / added[0],
        "return_instructions_over_return_probe": added[3] / added[0],
    }))
}

pub(super) fn render(r: &Value) -> String {
    let mut table = String::from("\n| probe placement | added ns/call |\n| --- | ---: |\n");
    for case in r["cases"].as_array().into_iter().flatten() {
        table.push_str(&format!(
            "| {} | {:.0} |\n",
            case["case"].as_str().unwrap_or(""),
            case["added_ns_per_call"].as_f64().unwrap_or(f64::NAN)
        ));
    }
    let f = |key: &str| r[key].as_f64().unwrap_or(f64::NAN);
    table.push_str(&format!(
        "\n| ratio | value |\n| --- | ---: |\n\
         | endbr64 entry / push %rbp entry | {:.2}x |\n\
         | single-stepped entry / push %rbp entry | {:.2}x |\n\
         | return-instruction probes / return probes | {:.2}x |\n",
        f("endbr64_over_push"),
        f("single_stepped_over_push"),
        f("return_instructions_over_return_probe"),
    ));
    table
}

/// Nanoseconds per call of `calls` calls of `function`.
fn calls_ns(program: &Path, function: &str, calls: u64) -> anyhow::Result<f64> {
    let output = Command::new(program)
        .args([function, &calls.to_string()])
        .output()?;
    if !output.status.success() {
        bail!("{} failed: {output:?}", program.display());
    }
    let text = String::from_utf8_lossy(&output.stdout);
    text.split_whitespace()
        .next()
        .and_then(|ns| ns.parse().ok())
        .with_context(|| format!("{} printed {text:?}", program.display()))
}

/// Waits until calls are slowed by the probes (a probed call costs at least a few hundred ns).
fn wait_until_probed(program: &Path, function: &str) -> anyhow::Result<()> {
    let started = Instant::now();
    while calls_ns(program, function, 1_000)? < 100.0 {
        if started.elapsed().as_secs() > 60 {
            bail!("the probes on {function} never took effect");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    Ok(())
}
