//! The probe plan: which functions of which objects get probes, each with a probe id (the attach
//! cookie), the spec the kernel works by, and the profile rule that gives the calls meaning.

use std::{ops::Range, path::PathBuf, str::FromStr, sync::Arc};

use flowtap_common::{MAX_PROBES, ProbeSpec};
use glob::Pattern;

use crate::{
    instructions,
    profile::{FunctionRule, Profile},
    symbols::{ElfObject, Function, Refusal, SymbolError},
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
    /// Whether it selects the function `raw` (`demangled`) of an object known by `names`.
    fn matches(&self, names: &[String], raw: &str, demangled: &str) -> bool {
        self.object
            .as_ref()
            .is_none_or(|o| names.iter().any(|name| o.matches(name)))
            && crate::symbols::matches(&self.function, raw, demangled)
    }

    /// Whether it names objects none of `objects` is, which may be loaded later.
    fn names_other_objects(&self, objects: &[ElfObject]) -> bool {
        self.object
            .as_ref()
            .is_some_and(|glob| !objects.iter().any(|object| object.is_named(glob)))
    }
}

/// How a probe's returns are observed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ExitPoints {
    /// A uretprobe on the entry: it hijacks the return address, so only where nothing unwinds through it.
    ReturnProbe,
    /// Uprobes at these file offsets, each a return instruction of the function.
    // Filled by the planner's decoding of return instructions (issue 12, probe points); the
    // loader attaches by it already.
    #[allow(dead_code)]
    Instructions(Vec<u64>),
}

#[derive(Debug, Clone)]
pub(crate) struct PlannedProbe {
    pub id: u32,
    pub function: String,
    /// Index into [`Plan::objects`].
    pub object: usize,
    /// Where the entry probe goes (past an `endbr64`).
    pub file_offset: u64,
    pub exit: ExitPoints,
    /// The kernel single-steps the instruction at the entry probe.
    pub costly_entry: bool,
    pub spec: ProbeSpec,
    /// What a profile says the function means; `None` for plain timing (`--symbols`).
    pub rule: Option<Arc<FunctionRule>>,
}

/// `--exit-probes`: how returns are observed, per object.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum ExitProbes {
    /// Return-instruction probes in objects that unwind, return probes elsewhere.
    #[default]
    Auto,
    /// Return probes everywhere: cheapest, but exceptions and panics through a probed
    /// function abort the target.
    Return,
    /// Return-instruction probes everywhere.
    Instructions,
}

impl FromStr for ExitProbes {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "auto" => Ok(Self::Auto),
            "return" => Ok(Self::Return),
            "instructions" => Ok(Self::Instructions),
            _ => Err(format!(
                "`{text}` is not an exit probe mode: use auto, return or instructions"
            )),
        }
    }
}

/// One `--exit-probes` value: `MODE` for every object, or `OBJECT=MODE` for the objects whose
/// file name matches the glob (to mark, say, a C library that C++ exceptions cross).
#[derive(Clone, Debug)]
pub(crate) struct ExitChoice {
    object: Option<Pattern>,
    mode: ExitProbes,
}

impl FromStr for ExitChoice {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (object, mode) = match text.rsplit_once('=') {
            Some((object, mode)) => (Some(object), mode),
            None => (None, text),
        };
        let object = object
            .map(|glob| Pattern::new(glob).map_err(|error| format!("bad glob `{glob}`: {error}")))
            .transpose()?;
        Ok(Self {
            object,
            mode: mode.parse()?,
        })
    }
}

/// The `--exit-probes` values in order: the last one that applies to an object wins; `auto`
/// when none does.
#[derive(Clone, Debug, Default)]
pub(crate) struct ExitPolicy(pub Vec<ExitChoice>);

impl ExitPolicy {
    pub(crate) fn mode_for(&self, object: &ElfObject) -> ExitProbes {
        self.0
            .iter()
            .rev()
            .find(|choice| {
                choice
                    .object
                    .as_ref()
                    .is_none_or(|glob| object.is_named(glob))
            })
            .map_or(ExitProbes::Auto, |choice| choice.mode)
    }
}

impl ExitProbes {
    /// Whether `object`'s functions get probes on their return instructions.
    pub(crate) fn on_instructions(self, object: &ElfObject) -> bool {
        match self {
            Self::Auto => object.unwinds.is_some(),
            Self::Return => false,
            Self::Instructions => true,
        }
    }

    /// What `flowtap symbols` says of `object`'s exits.
    pub(crate) fn describe(self, object: &ElfObject) -> String {
        match (self.on_instructions(object), object.unwinds, self) {
            (true, Some(symbol), Self::Auto) => {
                format!("exits: return instructions (it unwinds: `{symbol}`)")
            }
            (true, _, _) => "exits: return instructions (as --exit-probes asks)".into(),
            (false, None, _) => "exits: return probes (nothing unwinds through it)".into(),
            (false, Some(symbol), _) => format!(
                "exits: return probes (as --exit-probes asks; it unwinds: `{symbol}`, exceptions through probed functions abort it)"
            ),
        }
    }

    /// How `function` of `object` (whose mode this is) returns are observed, or why it must
    /// not be probed at all.
    pub(crate) fn probe_points(
        self,
        object: &ElfObject,
        function: &Function,
    ) -> Result<Result<ExitPoints, Refusal>, SymbolError> {
        match function.refusal {
            Some(reason) => Ok(Err(reason)),
            None => self.exit_points(object, function),
        }
    }

    /// How `function` of `object` (whose mode this is) returns are observed, or why it
    /// cannot be probed. Leaves keep return probes in `auto`: nothing can unwind through a frame
    /// that calls nothing, and a return probe costs one trap where a `ret` costs two.
    fn exit_points(
        self,
        object: &ElfObject,
        function: &Function,
    ) -> Result<Result<ExitPoints, Refusal>, SymbolError> {
        if !self.on_instructions(object) {
            return Ok(Ok(ExitPoints::ReturnProbe));
        }
        let mut returns = Vec::new();
        let mut leaf = true;
        for part in std::iter::once(function).chain(object.fragments_of(function)) {
            let exits = match instructions::exits(&object.code(part)?) {
                Ok(exits) if part.size > 0 => exits,
                _ => return Ok(Err(Refusal::Undecodable)),
            };
            returns.extend(
                exits
                    .returns
                    .iter()
                    .map(|offset| part.file_offset.saturating_add(*offset)),
            );
            leaf &= exits.leaf;
        }
        // A function whose probed instruction is a return (`endbr64; ret`) is a leaf; an entry
        // and an exit probe on one instruction would run in no set order.
        let entry_returns = returns.contains(&function.probe_offset);
        Ok(Ok(if (leaf && self == Self::Auto) || entry_returns {
            ExitPoints::ReturnProbe
        } else {
            ExitPoints::Instructions(returns)
        }))
    }
}

#[derive(Debug, Clone)]
pub(crate) struct PlannedObject {
    /// Where probes attach (a process's objects: their `/proc/PID/map_files` entry).
    pub path: PathBuf,
    /// The path shown in messages.
    pub shown_path: PathBuf,
    pub name: String,
    /// The separate debug file its functions were found in (the object is stripped).
    pub debug_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct Plan {
    pub objects: Vec<PlannedObject>,
    pub probes: Vec<PlannedProbe>,
    /// Selected functions that must not be probed, and why.
    pub refused: Vec<RefusedFunction>,
    /// The profiles' LLM price tables, in order.
    pub prices: Vec<crate::profile::Price>,
    /// Whether a profile captures buffer bytes (its functions may be in libraries loaded
    /// later: the capture is set up from the start).
    captures: bool,
    /// Per selector ([`Selection::texts`] order): whether it selected a function yet.
    matched: Vec<bool>,
    /// Functions of objects loaded later not probed because the kernel's probe tables were
    /// full.
    pub over_capacity: usize,
}

/// A selected function flowtap will not probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RefusedFunction {
    pub function: String,
    pub object: String,
    pub reason: Refusal,
}

impl std::fmt::Display for RefusedFunction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "`{}` in {}: {}", self.function, self.object, self.reason)
    }
}

/// `a; b; c`, for messages.
fn listed<T: std::fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
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
        "no function of {target} matches {selectors}, and {objects} stripped: only exported functions are visible and no separate debug file was found (by build id in /usr/lib/debug/.build-id, or by .gnu_debuglink); install its debug symbols (Debian: the -dbgsym package) or pick exported functions with `flowtap symbols`"
    )]
    NoMatchStripped {
        target: String,
        selectors: String,
        /// "/usr/bin/app is", "a, b are".
        objects: String,
    },
    #[error(
        "`{symbol}` in {object} is data, not a function: flowtap times functions; pick one with `flowtap symbols`"
    )]
    DataNotCode { symbol: String, object: String },
    #[error(
        "flowtap will not probe the selected functions of {target}: {}; choose others (`flowtap symbols` lists the traceable ones)",
        listed(.refused)
    )]
    Refused {
        target: String,
        refused: Vec<RefusedFunction>,
    },
    #[error("{count} functions selected, more than flowtap's {MAX_PROBES}: narrow --symbols")]
    TooMany { count: usize },
    #[error(
        "{object} is a Go binary: return probes corrupt Go's moving stacks, so flowtap will not probe it; exclude it with OBJECT:GLOB"
    )]
    GoBinary { object: String },
    #[error("reading the code of the selected functions: {0}")]
    Code(#[from] SymbolError),
}

/// What to probe: functions the profiles give meaning to, and plain `--symbols` selections.
pub(crate) struct Selection {
    pub profiles: Vec<Profile>,
    pub symbols: Vec<SymbolSelector>,
    /// How the user wrote them, for messages.
    pub texts: Vec<String>,
    /// The profile was chosen by default, not asked for.
    pub defaulted: bool,
    pub exit_probes: ExitPolicy,
}

/// The stripped objects a selection could have found functions in: those an OBJECT part names,
/// and the program itself (what an unscoped selector is usually after).
fn stripped_candidates(objects: &[ElfObject], selection: &Selection) -> Vec<String> {
    objects
        .iter()
        .enumerate()
        .filter(|(index, object)| {
            object.stripped
                && (object.names.iter().any(|name| selection.names_object(name))
                    || (*index == 0 && object.is_executable))
        })
        .map(|(_, object)| object.shown_path.display().to_string())
        .collect()
}

impl Selection {
    /// Whether a selector or profile rule names the object `file_name` in its OBJECT part: a
    /// wrapper program (a shell) is traced only when asked by name.
    pub(crate) fn names_object(&self, file_name: &str) -> bool {
        let symbols = self.symbols.iter().filter_map(|s| s.object.as_ref());
        let rules = self
            .profiles
            .iter()
            .flat_map(|profile| &profile.functions)
            .filter_map(|rule| rule.object.as_ref());
        symbols.chain(rules).any(|glob| glob.matches(file_name))
    }

    /// The object names selectors give that none of `objects` has: libraries that may be
    /// loaded later.
    pub(crate) fn absent_objects(&self, objects: &[ElfObject]) -> Vec<Pattern> {
        let profiles = self
            .profiles
            .iter()
            .filter(|_| !self.defaulted)
            .flat_map(|profile| {
                profile
                    .functions
                    .iter()
                    .filter_map(|rule| rule.object.as_ref())
            });
        let symbols = self
            .symbols
            .iter()
            .filter_map(|selector| selector.object.as_ref());
        let mut absent: Vec<Pattern> = Vec::new();
        for glob in profiles.chain(symbols) {
            if !objects.iter().any(|object| object.is_named(glob)) && !absent.contains(glob) {
                absent.push(glob.clone());
            }
        }
        absent
    }
}

impl Plan {
    pub(crate) fn build(
        objects: &[ElfObject],
        selection: &Selection,
        target: &str,
    ) -> Result<Self, PlanError> {
        let mut plan = Plan {
            prices: selection
                .profiles
                .iter()
                .flat_map(|profile| profile.prices.iter().cloned())
                .collect(),
            captures: selection.profiles.iter().any(Profile::captures_bytes),
            matched: vec![false; selection.texts.len()],
            ..Plan::default()
        };
        for object in objects {
            plan.add_object(object, selection, usize::MAX)?;
        }
        // Selectors that may match objects loaded later keep the run going.
        if plan.probes.is_empty() && !plan.waiting(selection, objects).is_empty() {
            return Ok(plan);
        }
        if plan.probes.is_empty() && !plan.refused.is_empty() {
            return Err(PlanError::Refused {
                target: target.to_string(),
                refused: plan.refused,
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
            let target = target.to_string();
            let selectors = selection.texts.join(", ");
            let stripped = stripped_candidates(objects, selection);
            return Err(match stripped.as_slice() {
                [] => PlanError::NoMatch { target, selectors },
                [one] => PlanError::NoMatchStripped {
                    target,
                    selectors,
                    objects: format!("{one} is"),
                },
                many => PlanError::NoMatchStripped {
                    target,
                    selectors,
                    objects: format!("{} are", many.join(", ")),
                },
            });
        }
        if plan.probes.len() > MAX_PROBES as usize {
            return Err(PlanError::TooMany {
                count: plan.probes.len(),
            });
        }
        Ok(plan)
    }

    /// Plans the functions `selection` picks in `objects`, loaded after the plan was built, up
    /// to `capacity` probes in all; returns the indexes of the objects that got probes.
    pub(crate) fn extend(
        &mut self,
        objects: &[ElfObject],
        selection: &Selection,
        capacity: usize,
    ) -> Result<Range<usize>, PlanError> {
        let first = self.objects.len();
        for object in objects {
            self.add_object(object, selection, capacity)?;
        }
        Ok(first..self.objects.len())
    }

    /// Selectors that matched nothing in `objects` but name objects not among them: they may
    /// match libraries loaded later. How the user wrote them.
    pub(crate) fn waiting(&self, selection: &Selection, objects: &[ElfObject]) -> Vec<String> {
        let profiles = selection
            .profiles
            .iter()
            .map(|profile| !selection.defaulted && profile.names_other_objects(objects));
        let symbols = selection
            .symbols
            .iter()
            .map(|selector| selector.names_other_objects(objects));
        profiles
            .chain(symbols)
            .zip(&selection.texts)
            .zip(&self.matched)
            .filter(|((may_wait, _), matched)| *may_wait && !**matched)
            .map(|((_, text), _)| text.clone())
            .collect()
    }

    /// Selectors that have selected no function so far, as the user wrote them.
    pub(crate) fn unmatched(&self, selection: &Selection) -> Vec<String> {
        selection
            .texts
            .iter()
            .zip(&self.matched)
            .filter(|(_, matched)| !**matched)
            .map(|(text, _)| text.clone())
            .collect()
    }

    fn add_object(
        &mut self,
        object: &ElfObject,
        selection: &Selection,
        capacity: usize,
    ) -> Result<(), PlanError> {
        let name = object.file_name();
        let selected = selected_functions(object, selection, &mut self.matched);
        if selected.is_empty() {
            return Ok(());
        }
        if object.is_go {
            return Err(PlanError::GoBinary { object: name });
        }
        let index = self.objects.len();
        let exit_mode = selection.exit_probes.mode_for(object);
        for (function, _raw_name, demangled, rule) in selected {
            if self.probes.len() >= capacity {
                self.over_capacity += 1;
                continue;
            }
            let exit = match exit_mode.probe_points(object, function)? {
                Ok(exit) => exit,
                Err(reason) => {
                    self.refused.push(RefusedFunction {
                        function: demangled,
                        object: name.clone(),
                        reason,
                    });
                    continue;
                }
            };
            self.probes.push(PlannedProbe {
                id: self.probes.len() as u32,
                function: demangled,
                object: index,
                file_offset: function.probe_offset,
                exit,
                costly_entry: function.costly_entry,
                spec: rule.as_ref().map(|rule| rule.spec).unwrap_or_default(),
                rule,
            });
        }
        // An object whose selected functions were all refused gets no attach.
        if self
            .probes
            .last()
            .is_some_and(|probe| probe.object == index)
        {
            self.objects.push(PlannedObject {
                path: object.path.clone(),
                shown_path: object.shown_path.clone(),
                name,
                debug_file: object.debug_file.clone(),
            });
        }
        Ok(())
    }

    /// What a user should know before the run: functions skipped as unsafe to probe, and
    /// probes whose entry the kernel single-steps. One line each, a few names in it.
    pub(crate) fn notes(&self) -> Vec<String> {
        let mut notes = Vec::new();
        if !self.refused.is_empty() {
            notes.push(format!(
                "not probing {} selected function{} that must not be probed: {}",
                self.refused.len(),
                plural(self.refused.len()),
                first_few(&self.refused, |r| r.to_string(), "; ")
            ));
        }
        for object in &self.objects {
            if let Some(debug_file) = &object.debug_file {
                notes.push(format!(
                    "{} is stripped: its functions were read from its debug file {}",
                    object.name,
                    debug_file.display()
                ));
            }
        }
        let costly: Vec<&PlannedProbe> = self.probes.iter().filter(|p| p.costly_entry).collect();
        if !costly.is_empty() {
            notes.push(format!(
                "{} of {} probes have a costly entry (the kernel single-steps their first instruction: two traps per call instead of one): {}",
                costly.len(),
                self.probes.len(),
                first_few(&costly, |p| format!("`{}`", p.function), ", ")
            ));
        }
        notes
    }

    /// Whether a profile captures buffer bytes.
    pub(crate) fn captures_bytes(&self) -> bool {
        self.captures
    }

    /// The probes of one object, in id order.
    pub(crate) fn probes_of(&self, object: usize) -> impl Iterator<Item = &PlannedProbe> {
        self.probes
            .iter()
            .filter(move |probe| probe.object == object)
    }
}

fn plural(count: usize) -> &'static str {
    if count == 1 { "" } else { "s" }
}

/// The first few items, and how many more (`flowtap symbols` shows them all).
fn first_few<T>(items: &[T], show: impl Fn(&T) -> String, separator: &str) -> String {
    const FEW: usize = 5;
    let mut text = items
        .iter()
        .take(FEW)
        .map(show)
        .collect::<Vec<_>>()
        .join(separator);
    if items.len() > FEW {
        text.push_str(&format!(
            "{separator}and {} more (`flowtap symbols` lists each)",
            items.len() - FEW
        ));
    }
    text
}

/// What `flowtap symbols` shows of one object: how its exits are observed, the functions that
/// can be traced (and which of them have a costly entry), and those refused, with why.
pub(crate) struct Listing {
    path: PathBuf,
    exits: String,
    traceable: Vec<(String, bool)>,
    refused: Vec<(String, Refusal)>,
}

impl Listing {
    /// The functions of `object` that `wanted` keeps.
    pub(crate) fn of(
        object: &ElfObject,
        exit_probes: ExitProbes,
        wanted: impl Fn(&Function) -> bool,
    ) -> Result<Self, SymbolError> {
        let mut listing = Self {
            path: object.shown_path.clone(),
            exits: exit_probes.describe(object),
            traceable: Vec::new(),
            refused: Vec::new(),
        };
        for function in object.functions.iter().filter(|f| wanted(f)) {
            match exit_probes.probe_points(object, function)? {
                Ok(_) => listing
                    .traceable
                    .push((function.name.clone(), function.costly_entry)),
                Err(reason) => listing.refused.push((function.name.clone(), reason)),
            }
        }
        Ok(listing)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.traceable.is_empty() && self.refused.is_empty()
    }
}

impl std::fmt::Display for Listing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({} functions); {}",
            self.path.display(),
            self.traceable.len(),
            self.exits
        )?;
        match self.refused.len() {
            0 => writeln!(f)?,
            refused => writeln!(f, "; {refused} not traceable, below")?,
        }
        for (name, costly) in &self.traceable {
            let note = if *costly {
                "  (costly entry: the kernel single-steps its first instruction)"
            } else {
                ""
            };
            writeln!(f, "  {name}{note}")?;
        }
        if !self.refused.is_empty() {
            writeln!(f, "  not traceable:")?;
        }
        for (name, reason) in &self.refused {
            writeln!(f, "    {name}: {reason}")?;
        }
        Ok(())
    }
}

/// A function `selection` picks: by which of its names (raw and demangled), with its profile
/// rule, if any.
type Selected<'a> = (&'a Function, String, String, Option<Arc<FunctionRule>>);

/// The functions of `object` that `selection` picks. A function is named in reports by the first
/// of its names that was selected; a profile's rule takes precedence over a plain selector. The
/// selectors that picked one are marked in `matched` ([`Selection::texts`] order).
fn selected_functions<'a>(
    object: &'a ElfObject,
    selection: &Selection,
    matched: &mut [bool],
) -> Vec<Selected<'a>> {
    let names = &object.names;
    let profiles: Vec<(usize, &Profile)> = selection
        .profiles
        .iter()
        .enumerate()
        .filter(|(_, profile)| profile.applies_to(object))
        .collect();
    // A debug file also lists a library's internals (ld.so's, libc's), which a broad glob
    // would reach: they are selected only where the selection names their object.
    let internals = names.iter().any(|name| selection.names_object(name));
    let mut selected = Vec::new();
    for function in object
        .functions
        .iter()
        .filter(|f| !f.from_debug_file || internals)
    {
        for (raw, demangled) in function.names() {
            let rule = profiles.iter().find_map(|(index, profile)| {
                Some((*index, profile.rule_for(names, raw, &demangled)?))
            });
            let plain: Vec<usize> = (0..selection.symbols.len())
                .filter(|&index| selection.symbols[index].matches(names, raw, &demangled))
                .map(|index| selection.profiles.len() + index)
                .collect();
            if rule.is_none() && plain.is_empty() {
                continue;
            }
            for index in rule.iter().map(|(index, _)| *index).chain(plain) {
                matched[index] = true;
            }
            let rule = rule.map(|(_, rule)| rule.clone());
            selected.push((function, raw.to_string(), demangled.clone(), rule));
            break;
        }
    }
    selected
}

/// A data symbol some selector names, when no function matched: the likely mistake.
fn matching_data_symbol(
    objects: &[ElfObject],
    selectors: &[SymbolSelector],
) -> Option<(String, String)> {
    objects.iter().find_map(|object| {
        object
            .data_symbols
            .iter()
            .find(|symbol| {
                selectors
                    .iter()
                    .any(|s| s.matches(&object.names, symbol, symbol))
            })
            .map(|symbol| (symbol.clone(), object.file_name()))
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
        let named = |name: &str| vec![name.to_string()];
        let scoped = selector("libwfrt.so:wf_*");
        assert!(scoped.matches(&named("libwfrt.so"), "wf_run", "wf_run"));
        assert!(!scoped.matches(&named("libc.so.6"), "wf_run", "wf_run"));
        let cpp = selector("ns::Class::*");
        assert!(cpp.matches(&named("any"), "_ZN2ns5Class3runEv", "ns::Class::run()"));
        let both = selector("libx.so:ns::f*");
        assert!(both.matches(&named("libx.so"), "_ZN2ns3fooEv", "ns::foo()"));
        assert!(!both.matches(&named("liby.so"), "_ZN2ns3fooEv", "ns::foo()"));
        // Any of an object's names: its file name, soname, or the name it was loaded as.
        let aliases = vec!["libx.so.1.2.3".to_string(), "libx.so.1".to_string()];
        assert!(selector("libx.so.1:*").matches(&aliases, "f", "f"));
    }

    #[test]
    fn the_last_exit_probe_choice_for_an_object_wins() {
        let object = ElfObject::read(&std::env::current_exe().unwrap()).unwrap();
        let name = object.file_name();
        let policy = |texts: &[&str]| {
            ExitPolicy(texts.iter().map(|t| t.parse().unwrap()).collect()).mode_for(&object)
        };
        assert_eq!(policy(&[]), ExitProbes::Auto);
        assert_eq!(policy(&["return"]), ExitProbes::Return);
        assert_eq!(
            policy(&["return", &format!("{name}=instructions")]),
            ExitProbes::Instructions
        );
        assert_eq!(
            policy(&["return", "libc.so*=instructions"]),
            ExitProbes::Return
        );
        assert!("sometimes".parse::<ExitChoice>().is_err());
        assert!("lib[=auto".parse::<ExitChoice>().is_err());
        // The test binary unwinds (Rust): `auto` decodes its functions' returns.
        assert!(ExitProbes::Auto.on_instructions(&object));
        let this = object
            .functions
            .iter()
            .find(|f| {
                f.name
                    .ends_with("the_last_exit_probe_choice_for_an_object_wins")
            })
            .unwrap();
        let exit = ExitProbes::Auto
            .exit_points(&object, this)
            .unwrap()
            .unwrap();
        assert!(
            matches!(&exit, ExitPoints::Instructions(returns) if !returns.is_empty()
                && returns.iter().all(|&r| r > this.file_offset && r < this.file_offset + this.size)),
            "{exit:?}"
        );
    }

    /// A plain selection of `symbols`, as written.
    fn plain(symbols: &[&str]) -> Selection {
        Selection {
            profiles: Vec::new(),
            symbols: symbols.iter().map(|text| selector(text)).collect(),
            texts: symbols.iter().map(|text| text.to_string()).collect(),
            defaulted: false,
            exit_probes: ExitPolicy::default(),
        }
    }

    #[test]
    fn selectors_naming_objects_not_loaded_wait_and_later_objects_fill_the_room_left() {
        let object = ElfObject::read(&std::env::current_exe().unwrap()).unwrap();
        let name = object.file_name();
        let own = format!("{name}:*the_last_exit_probe_choice*");
        let waits = "libnot_loaded.so:*the_last_exit_probe_choice*";
        let selection = plain(&[waits, &own, "no_such_function_anywhere"]);
        let objects = std::slice::from_ref(&object);
        let mut plan = Plan::build(objects, &selection, "test").unwrap();
        let planned = plan.probes.len();
        assert!(planned > 0);
        assert_eq!(plan.waiting(&selection, objects), [waits]);
        assert_eq!(
            plan.unmatched(&selection),
            [waits, "no_such_function_anywhere"]
        );
        let absent = selection.absent_objects(objects);
        assert_eq!(absent.len(), 1);
        assert_eq!(absent[0].as_str(), "libnot_loaded.so");
        // The same object loaded again under the waited-for name: probes, if there is room.
        let mut later = object.clone();
        later.show_as("libnot_loaded.so".into());
        let full = plan.extend(std::slice::from_ref(&later), &selection, planned);
        assert!(full.unwrap().is_empty());
        assert!(plan.over_capacity >= planned);
        let added = plan.extend(&[later], &selection, usize::MAX).unwrap();
        assert_eq!(added, 1..2);
        assert!(plan.probes.len() > planned);
        assert_eq!(plan.unmatched(&selection), ["no_such_function_anywhere"]);
        // Nothing waits and nothing matches: one clear failure.
        let nothing = plain(&["no_such_function_anywhere"]);
        assert!(matches!(
            Plan::build(objects, &nothing, "test"),
            Err(PlanError::NoMatch { .. })
        ));
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
