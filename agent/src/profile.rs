//! What symbols mean: which functions a known runtime exports, how their return values tell
//! failure, which arguments label and measure their calls, and which workflow primitive each is.
//! The built-in workflow semantics describe the fixture runtime's C ABI.

use flowtap_common::{Aggregate, ContextRole, ErrorRule, NO_ARG, ProbeSpec};

/// What one function of a runtime means.
#[derive(Debug, Clone, Copy)]
pub struct FunctionSemantics {
    pub function: &'static str,
    /// The workflow primitive it implements, for `primitive_*` metrics.
    pub primitive: Option<&'static str>,
    pub spec: ProbeSpec,
}

/// A runtime flowtap recognises by an exported marker symbol.
pub struct Semantics {
    pub name: &'static str,
    /// An object exporting this symbol is this runtime.
    pub marker: &'static str,
    /// The functions probed by default in such an object.
    pub default_glob: &'static str,
    pub functions: &'static [FunctionSemantics],
}

/// Every `wf_*` function returns a C `int`, negative on failure.
const fn workflow_spec(aggregate: Aggregate, label_arg: u8, value_args: [u8; 3]) -> ProbeSpec {
    ProbeSpec {
        error_rule: ErrorRule::Negative,
        ret_bytes: 4,
        aggregate,
        label_arg,
        value_args,
        context: ContextRole::None,
        context_arg: NO_ARG,
        _pad: [0; 7],
        error_value: 0,
    }
}

/// A function that carries trace context across threads under its first argument.
const fn context_spec(context: ContextRole) -> ProbeSpec {
    ProbeSpec {
        context,
        context_arg: 0,
        ..PLAIN
    }
}

const PLAIN: ProbeSpec = workflow_spec(Aggregate::None, NO_ARG, [NO_ARG; 3]);

const fn function(
    function: &'static str,
    primitive: Option<&'static str>,
    spec: ProbeSpec,
) -> FunctionSemantics {
    FunctionSemantics {
        function,
        primitive,
        spec,
    }
}

/// The workflow runtime (`libwfrt`).
pub const WORKFLOW: Semantics = Semantics {
    name: "workflow",
    marker: "wf_workflow_run",
    default_glob: "wf_*",
    functions: &[
        // wf_workflow_run(const char *workflow, uint64_t run_id)
        function(
            "wf_workflow_run",
            None,
            workflow_spec(Aggregate::ByStatus, 0, [NO_ARG; 3]),
        ),
        function("wf_sequential", Some("sequential"), PLAIN),
        function("wf_step_run", Some("step"), PLAIN),
        function("wf_parallel", Some("parallel"), PLAIN),
        // wf_task_submit(task) on the caller's thread hands its context to the worker thread
        // that calls wf_task_execute(task): branches are children of the parallel span.
        function("wf_task_submit", None, context_spec(ContextRole::HandOff)),
        function(
            "wf_task_execute",
            Some("task"),
            context_spec(ContextRole::Adopt),
        ),
        // wf_router_route(const char *route)
        function(
            "wf_router_route",
            Some("router"),
            workflow_spec(Aggregate::ByStatus, 0, [NO_ARG; 3]),
        ),
        // wf_cache_get(key): 1 hit, 0 miss
        function(
            "wf_cache_get",
            Some("cache"),
            workflow_spec(Aggregate::ByReturn, NO_ARG, [NO_ARG; 3]),
        ),
        function("wf_timeout_run", Some("timeout"), PLAIN),
        function("wf_retry_run", Some("retry"), PLAIN),
        // wf_llm_call(model, prompt_tokens, completion_tokens, cost_micros)
        function(
            "wf_llm_call",
            Some("llm"),
            workflow_spec(Aggregate::ByStatus, 0, [1, 2, 3]),
        ),
    ],
};

impl Semantics {
    pub fn recognises(&self, functions: &[crate::symbols::Function]) -> bool {
        functions
            .iter()
            .any(|function| function.raw_name == self.marker)
    }

    /// The spec of a function of this runtime: its declared one, else the runtime's default.
    pub fn spec_for(&self, function: &str) -> Option<ProbeSpec> {
        if let Some(known) = self.function(function) {
            return Some(known.spec);
        }
        glob::Pattern::new(self.default_glob)
            .is_ok_and(|pattern| pattern.matches(function))
            .then_some(PLAIN)
    }

    pub fn function(&self, function: &str) -> Option<&FunctionSemantics> {
        self.functions
            .iter()
            .find(|known| known.function == function)
    }
}
