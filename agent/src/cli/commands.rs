//! The small commands: `flowtap symbols`, `flowtap profile ...` and `flowtap check`.

use std::io::Write;

use anyhow::Context;

use super::args::{ProfileCommand, SymbolsArgs};
use crate::{
    console::print,
    host,
    plan::{ExitPolicy, Listing},
    profile::{self, Profile},
    symbols::{ElfObject, SymbolError},
    targets::{Target, TargetSpec},
};

pub(super) fn profile(command: ProfileCommand) -> anyhow::Result<i32> {
    // Written whole at the end, so that a closed pipe is told from other failures once.
    let mut text = Vec::new();
    let out = &mut text;
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
                check_profile(out, &file)?;
            }
        }
    }
    print(|stdout| stdout.write_all(&text))?;
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
    let target = match (args.target.pid, args.target.exe) {
        (Some(pid), _) => Target::resolve(&TargetSpec::Pid(pid))?,
        (_, Some(exe)) => Target::resolve(&TargetSpec::Binary(exe))?,
        _ => unreachable!("clap requires exactly one target"),
    };
    let unreadable = target.skipped.iter().map(unreadable_object);
    for (path, reason) in unreadable.chain(skipped_objects(&target.objects)) {
        eprintln!("flowtap: skipped {}: {reason}", path.display());
    }
    let listings = listings(
        &target.objects,
        ExitPolicy(args.exit_probes),
        filter.as_ref(),
    )?;
    if listings.is_empty() {
        let what = args.filter.map_or("no function".into(), |glob| {
            format!("no function matches `{glob}`")
        });
        anyhow::bail!(
            "{what} in the {} objects of {}: try a broader glob, e.g. '*name*'",
            target.objects.len(),
            target.describe()
        );
    }
    print(|out| {
        listings
            .iter()
            .try_for_each(|listing| write!(out, "{listing}"))
    })?;
    Ok(0)
}

/// Per object, the functions the filter matches: traceable ones, and refused ones with why.
fn listings(
    objects: &[ElfObject],
    policy: ExitPolicy,
    filter: Option<&glob::Pattern>,
) -> Result<Vec<Listing>, SymbolError> {
    let mut listings = Vec::new();
    for object in objects.iter().filter(|object| !object.is_go) {
        let listing = Listing::of(object, policy.mode_for(object), |f| {
            filter.is_none_or(|p| crate::symbols::matches(p, &f.raw_name, &f.name))
        })?;
        if !listing.is_empty() {
            listings.push(listing);
        }
    }
    Ok(listings)
}

/// A mapped file that is not an ELF object flowtap can read, and why, in a few words.
fn unreadable_object(error: &SymbolError) -> (std::path::PathBuf, String) {
    match error {
        SymbolError::Read { path, source } => (path.clone(), format!("cannot read it: {source}")),
        SymbolError::NotElf { path } => (path.clone(), "not an ELF file".into()),
        SymbolError::NotRegular { path, kind } => (path.clone(), format!("{kind}, not a file")),
        SymbolError::Not64Bit { path } => (path.clone(), "a 32-bit ELF file".into()),
        SymbolError::ForeignArch { path, arch, .. } => (path.clone(), format!("built for {arch}")),
        SymbolError::Malformed { path, reason } => (path.clone(), format!("malformed: {reason}")),
    }
}

/// Objects with nothing to list, and why.
fn skipped_objects(objects: &[ElfObject]) -> Vec<(std::path::PathBuf, String)> {
    objects
        .iter()
        .filter_map(|object| {
            let reason = if object.is_go {
                "a Go binary: flowtap does not trace Go (its moving stacks break return probes)"
            } else if object.functions.is_empty() {
                "stripped: no function symbols in .dynsym or .symtab"
            } else {
                return None;
            };
            Some((object.shown_path.clone(), reason.to_string()))
        })
        .collect()
}

pub(super) fn check() -> anyhow::Result<i32> {
    let findings = host::findings();
    let usable = findings.iter().all(|f| f.ok || !f.required);
    print(|out| {
        for finding in &findings {
            let verdict = match (finding.ok, finding.required) {
                (true, _) => "ok",
                (false, true) => "MISSING",
                (false, false) => "absent",
            };
            writeln!(
                out,
                "{:<15} {:<8} {}",
                finding.what, verdict, finding.detail
            )?;
        }
        if usable {
            writeln!(out, "flowtap can trace on this host.")
        } else {
            writeln!(
                out,
                "flowtap cannot trace on this host: fix the MISSING lines above."
            )
        }
    })?;
    Ok(if usable { 0 } else { 1 })
}
