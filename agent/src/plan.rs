//! The probe plan: which functions of which objects get probes, each with a probe id (the attach
//! cookie), the spec the kernel works by, and the profile rule that gives the calls meaning.

use std::{path::PathBuf, str::FromStr, sync::Arc};

use flowtap_common::{MAX_PROBES, ProbeSpec};
use glob::Pattern;

use crate::{
    profile::{FunctionRule, Profile},
    symbols::ElfObject,
};

/// `GLOB` or `OBJECT:GLOB`, matched on raw and demangled names.
#[derive(Debug, Clone)]
pub struct SymbolSelector {
    object: Option<Pattern>,
    function: Pattern,
}

impl FromStr for SymbolSelector {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        // A ':' that is not part of "::" (C++/Rust paths) separates an object scope.
        let scope_at = text
            .char_indices()
            .find(|&(i, c)| c == ':' && !text[i..].starts_with("::") && !text[..i].ends_with(':'))
            .map(|(i, _)| i);
        let (object, function) = match scope_at {
            Some(i) if i > 0 => (Some(&text[..i]), &text[i + 1..]),
            _ => (None, text),
        };
        if function.is_empty() {
            return Err(format!(
                "`{text}` names no function: use GLOB or OBJECT:GLOB"
            ));
        }
        let pattern =
            |glob: &str| Pattern::new(glob).map_err(|error| format!("bad glob `{glob}`: {error}"));
        Ok(Self {
            object: object.map(pattern).transpose()?,
            function: pattern(function)?,
        })
    }
}

impl SymbolSelector {
    fn matches(&self, object_name: &str, raw: &str, demangled: &str) -> bool {
        self.object.as_ref().is_none_or(|o| o.matches(object_name))
            && crate::symbols::matches(&self.function, raw, demangled)
    }
}

#[derive(Debug, Clone)]
pub(crate) struct PlannedProbe {
    pub id: u32,
    pub function: String,
    /// Index into [`Plan::objects`].
    pub object: usize,
    pub file_offset: u64,
    pub spec: ProbeSpec,
    /// What a profile says the function means; `None` for plain timing (`--symbols`).
    pub rule: Option<Arc<FunctionRule>>,
}

#[derive(Debug, Clone)]
pub(crate) struct PlannedObject {
    pub path: PathBuf,
    pub name: String,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct Plan {
    pub objects: Vec<PlannedObject>,
    pub probes: Vec<PlannedProbe>,
    /// Selected functions the kernel cannot probe (see [`crate::symbols::Function::probeable`]).
    pub unprobeable: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum PlanError {
    #[error(
        "{target} does not export the workflow runtime's functions: choose functions with --symbols GLOB (list them with `flowtap symbols`) or --profile (`flowtap profile list`)"
    )]
    NoKnownRuntime { target: String },
    #[error(
        "no function of {target} matches {selectors}: list the traceable ones with `flowtap symbols`"
    )]
    NoMatch { target: String, selectors: String },
    #[error(
        "`{symbol}` in {object} is data, not a function: flowtap times functions; pick one with `flowtap symbols`"
    )]
    DataNotCode { symbol: String, object: String },
    #[error(
        "uprobes cannot attach to the selected functions of {target} (their first instruction has a LOCK prefix): {functions}"
    )]
    NoneProbeable { target: String, functions: String },
    #[error("{count} functions selected, more than flowtap's {MAX_PROBES}: narrow --symbols")]
    TooMany { count: usize },
    #[error(
        "{object} is a Go binary: return probes corrupt Go's moving stacks, so flowtap will not probe it; exclude it with OBJECT:GLOB"
    )]
    GoBinary { object: String },
}

/// What to probe: functions the profiles give meaning to, and plain `--symbols` selections.
pub(crate) struct Selection {
    pub profiles: Vec<Profile>,
    pub symbols: Vec<SymbolSelector>,
    /// How the user wrote them, for messages.
    pub texts: Vec<String>,
    /// The profile was chosen by default, not asked for.
    pub defaulted: bool,
}

impl Plan {
    pub(crate) fn build(
        objects: &[ElfObject],
        selection: &Selection,
        target: &str,
    ) -> Result<Self, PlanError> {
        let mut plan = Plan::default();
        for object in objects {
            plan.add_object(object, selection)?;
        }
        if plan.probes.is_empty() && !plan.unprobeable.is_empty() {
            return Err(PlanError::NoneProbeable {
                target: target.to_string(),
                functions: plan.unprobeable.join(", "),
            });
        }
        if plan.probes.is_empty() && selection.defaulted {
            return Err(PlanError::NoKnownRuntime {
                target: target.to_string(),
            });
        }
        if plan.probes.is_empty()
            && let Some((symbol, object)) = matching_data_symbol(objects, &selection.symbols)
        {
            return Err(PlanError::DataNotCode { symbol, object });
        }
        if plan.probes.is_empty() {
            return Err(PlanError::NoMatch {
                target: target.to_string(),
                selectors: selection.texts.join(", "),
            });
        }
        if plan.probes.len() > MAX_PROBES as usize {
            return Err(PlanError::TooMany {
                count: plan.probes.len(),
            });
        }
        Ok(plan)
    }

    fn add_object(&mut self, object: &ElfObject, selection: &Selection) -> Result<(), PlanError> {
        let name = object.file_name();
        let profiles: Vec<&Profile> = selection
            .profiles
            .iter()
            .filter(|profile| profile.applies_to(object))
            .collect();
        // A function is named in reports by the first of its names that was selected; a
        // profile's rule takes precedence over a plain selector.
        let selected: Vec<_> = object
            .functions
            .iter()
            .filter_map(|f| {
                f.names().find_map(|(raw, demangled)| {
                    let rule = profiles
                        .iter()
                        .find_map(|profile| profile.rule_for(&name, raw, &demangled));
                    let plain = || {
                        selection
                            .symbols
                            .iter()
                            .any(|s| s.matches(&name, raw, &demangled))
                    };
                    (rule.is_some() || plain())
                        .then(|| (f, raw.to_string(), demangled.clone(), rule.cloned()))
                })
            })
            .collect();
        if selected.is_empty() {
            return Ok(());
        }
        if object.is_go {
            return Err(PlanError::GoBinary { object: name });
        }
        let index = self.objects.len();
        for (function, _raw_name, demangled, rule) in selected {
            if !function.probeable {
                self.unprobeable.push(demangled);
                continue;
            }
            self.probes.push(PlannedProbe {
                id: self.probes.len() as u32,
                function: demangled,
                object: index,
                file_offset: function.file_offset,
                spec: rule.as_ref().map(|rule| rule.spec).unwrap_or_default(),
                rule,
            });
        }
        self.objects.push(PlannedObject {
            path: object.path.clone(),
            name,
        });
        Ok(())
    }

    /// The probes of one object, in id order.
    pub(crate) fn probes_of(&self, object: usize) -> impl Iterator<Item = &PlannedProbe> {
        self.probes
            .iter()
            .filter(move |probe| probe.object == object)
    }
}

/// A data symbol some selector names, when no function matched: the likely mistake.
fn matching_data_symbol(
    objects: &[ElfObject],
    selectors: &[SymbolSelector],
) -> Option<(String, String)> {
    objects.iter().find_map(|object| {
        let name = object.file_name();
        object
            .data_symbols
            .iter()
            .find(|symbol| selectors.iter().any(|s| s.matches(&name, symbol, symbol)))
            .map(|symbol| (symbol.clone(), name.clone()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn selector(text: &str) -> SymbolSelector {
        text.parse().unwrap()
    }

    #[test]
    fn scope_splits_on_a_single_colon_only() {
        let scoped = selector("libwfrt.so:wf_*");
        assert!(scoped.matches("libwfrt.so", "wf_run", "wf_run"));
        assert!(!scoped.matches("libc.so.6", "wf_run", "wf_run"));
        let cpp = selector("ns::Class::*");
        assert!(cpp.matches("any", "_ZN2ns5Class3runEv", "ns::Class::run()"));
        let both = selector("libx.so:ns::f*");
        assert!(both.matches("libx.so", "_ZN2ns3fooEv", "ns::foo()"));
        assert!(!both.matches("liby.so", "_ZN2ns3fooEv", "ns::foo()"));
    }

    #[test]
    fn bad_selectors_are_explained() {
        assert!("libx.so:".parse::<SymbolSelector>().is_err());
        assert!(
            "wf_["
                .parse::<SymbolSelector>()
                .unwrap_err()
                .contains("bad glob")
        );
    }
}
