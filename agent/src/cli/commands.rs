//! The small commands: `flowtap symbols`, `flowtap profile ...` and `flowtap check`.

use std::io::Write;

use anyhow::Context;

use super::args::{ProfileCommand, SymbolsArgs};
use crate::{
    host,
    plan::{ExitPolicy, Listing},
    profile::{self, Profile},
    symbols::ElfObject,
    targets::{Target, TargetSpec},
};

pub(super) fn profile(command: ProfileCommand) -> anyhow::Result<i32> {
    let mut out = std::io::stdout().lock();
    match command {
        ProfileCommand::List => {
            for (name, _) in profile::BUILTIN {
                let profile = Profile::builtin(name)?;
                writeln!(out, "{name:<10} {}", profile.description)?;
            }
        }
        ProfileCommand::Show { name } => {
            let text = profile::builtin_source(&name).ok_or_else(|| {
                anyhow::anyhow!("no built-in profile `{name}`: see `flowtap profile list`")
            })?;
            out.write_all(text.as_bytes())?;
        }
        ProfileCommand::Check { files } => {
            for file in files {
                check_profile(&mut out, &file)?;
            }
        }
    }
    Ok(0)
}

fn check_profile(out: &mut dyn Write, file: &std::path::Path) -> anyhow::Result<()> {
    let profile = Profile::from_file(file)?;
    let metrics: std::collections::BTreeSet<&str> = profile
        .functions
        .iter()
        .flat_map(|rule| rule.metrics.iter().map(|m| m.name.as_str()))
        .collect();
    writeln!(
        out,
        "{}: profile `{}` is valid: {} function rules, {} metrics ({})",
        file.display(),
        profile.name,
        profile.functions.len(),
        metrics.len(),
        metrics.into_iter().collect::<Vec<_>>().join(", ")
    )?;
    Ok(())
}

pub(super) fn symbols(args: SymbolsArgs) -> anyhow::Result<i32> {
    let filter = args
        .filter
        .as_deref()
        .map(glob::Pattern::new)
        .transpose()
        .context("--filter")?;
    let objects: Vec<ElfObject> = match (args.target.pid, args.target.exe) {
        (Some(pid), _) => Target::resolve(&TargetSpec::Pid(pid))?.objects,
        (_, Some(exe)) => Target::resolve(&TargetSpec::Binary(exe))?.objects,
        _ => unreachable!("clap requires exactly one target"),
    };
    let policy = ExitPolicy(args.exit_probes);
    let mut out = std::io::stdout().lock();
    for object in &objects {
        let listing = Listing::of(object, policy.mode_for(object), |f| {
            filter
                .as_ref()
                .is_none_or(|p| p.matches(&f.name) || p.matches(&f.raw_name))
        })?;
        if !listing.is_empty() {
            write!(out, "{listing}")?;
        }
    }
    Ok(0)
}

pub(super) fn check() -> i32 {
    let findings = host::findings();
    for finding in &findings {
        let verdict = match (finding.ok, finding.required) {
            (true, _) => "ok",
            (false, true) => "MISSING",
            (false, false) => "absent",
        };
        println!("{:<15} {:<8} {}", finding.what, verdict, finding.detail);
    }
    if findings.iter().all(|f| f.ok || !f.required) {
        println!("flowtap can trace on this host.");
        0
    } else {
        println!("flowtap cannot trace on this host: fix the MISSING lines above.");
        1
    }
}
