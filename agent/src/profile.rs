//! What symbols mean: which functions a known runtime exports and how their return values tell
//! failure. The built-in workflow semantics describe the fixture runtime's C ABI.

use flowtap_common::{ErrorRule, ProbeSpec};

/// A runtime flowtap recognises by an exported marker symbol.
pub struct Semantics {
    pub name: &'static str,
    /// An object exporting this symbol is this runtime.
    pub marker: &'static str,
    /// The functions probed by default in such an object.
    pub default_glob: &'static str,
    /// How every default function reports failure.
    pub spec: ProbeSpec,
}

/// The workflow runtime (`libwfrt`): every `wf_*` function returns a C `int`, negative on failure.
pub const WORKFLOW: Semantics = Semantics {
    name: "workflow",
    marker: "wf_workflow_run",
    default_glob: "wf_*",
    spec: ProbeSpec {
        error_rule: ErrorRule::Negative,
        ret_bytes: 4,
        _pad: [0; 6],
        error_value: 0,
    },
};

impl Semantics {
    pub fn recognises(&self, functions: &[crate::symbols::Function]) -> bool {
        functions
            .iter()
            .any(|function| function.raw_name == self.marker)
    }

    pub fn spec_for(&self, function: &str) -> Option<ProbeSpec> {
        glob::Pattern::new(self.default_glob)
            .is_ok_and(|pattern| pattern.matches(function))
            .then_some(self.spec)
    }
}
