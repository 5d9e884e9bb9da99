use flowtap_common::{Compare, Condition, ContextRole, NO_ARG, RETURN_VALUE};

use super::*;

const HEADER: &str = "[profile]\nname = \"t\"\n";

fn compile(body: &str) -> Result<Profile, ProfileError> {
    Profile::parse(&format!("{HEADER}{body}"), "t.toml")
}

/// The error's line (counted from the body's first line, after the two-line header), column
/// and message.
fn error(body: &str) -> (usize, usize, String) {
    match compile(body) {
        Err(ProfileError::Invalid {
            origin,
            line,
            column,
            message,
        }) => {
            assert_eq!(origin, "t.toml");
            (line.saturating_sub(2), column, message)
        }
        Err(other) => panic!("expected a located error, got {other}"),
        Ok(_) => panic!("expected an error for:\n{body}"),
    }
}

fn assert_error(body: &str, line: usize, column: usize, expected: &str) {
    let (at_line, at_column, message) = error(body);
    assert!(
        message.contains(expected),
        "`{message}` does not say `{expected}`"
    );
    assert_eq!(
        (at_line, at_column),
        (line, column),
        "position of `{message}`"
    );
}

#[test]
fn every_builtin_profile_compiles() {
    for (name, _) in BUILTIN {
        let profile = Profile::builtin(name).unwrap();
        assert_eq!(profile.name, name);
        assert!(!profile.functions.is_empty());
    }
    assert!(matches!(
        Profile::builtin("nope"),
        Err(ProfileError::UnknownBuiltin { .. })
    ));
}

#[test]
fn the_workflow_profile_says_what_the_kernel_needs() {
    let workflow = Profile::builtin("workflow").unwrap();
    let rule = |name: &str| {
        workflow
            .rule_for(&["libwfrt.so".into()], name, name)
            .unwrap()
    };
    let llm = rule("wf_llm_call");
    assert_eq!(llm.spec.error, Condition::new(Compare::Lt, 0));
    assert_eq!((llm.spec.ret_bytes, llm.spec.ret_signed), (4, 1));
    assert_eq!(llm.spec.text.arg, 0);
    assert_eq!(llm.spec.aggregate, 1);
    assert_eq!(llm.spec.text_label, 1);
    assert_eq!(llm.spec.sums, [0, 1, 2]);
    let cache = rule("wf_cache_get");
    assert_eq!(
        cache.spec.conditions,
        [
            Condition::new(Compare::Eq, 1),
            Condition::new(Compare::Eq, 0)
        ]
    );
    assert_eq!(rule("wf_task_submit").spec.context, ContextRole::HandOff);
    assert_eq!(rule("wf_task_execute").spec.context, ContextRole::Adopt);
    // Steps capture their name for spans only: no per-call aggregate.
    let step = rule("wf_step_run");
    assert_eq!((step.spec.aggregate, step.spec.text_in_span), (0, 1));
    // The catch-all comes last: the first matching rule wins.
    assert!(rule("wf_cache_put").metrics.is_empty());
    assert!(
        workflow
            .rule_for(&["libwfrt.so".into()], "wfrt_set_seed", "")
            .is_none()
    );
}

#[test]
fn the_readme_example_is_a_valid_profile() {
    let readme = include_str!("../../../README.md");
    let start = readme
        .find("```toml\n[profile]")
        .expect("the README's example")
        + 8;
    let end = start + readme[start..].find("```").unwrap();
    let profile = Profile::parse(&readme[start..end], "README.md").unwrap();
    assert_eq!(profile.functions.len(), 3);
    assert_eq!(profile.functions[0].metrics.len(), 3);
}

#[test]
fn captures_behind_pointers_and_return_sums_compile() {
    let profile = compile(
        r#"
[[function]]
match = "f"
object = "libx.so*"
span_name = "f {name} #{id}"
returns = { type = "i64", error = -1, attribute = "f.result" }
capture.id = { arg = 0, type = "u16", offset = 8 }
capture.name = { arg = 0, type = "string", offset = 16, max_len = 8 }
[[function.metric]]
counter = "f_bytes_total"
add = "return"
when = "return > 0"
"#,
    )
    .unwrap();
    let rule = &profile.functions[0];
    assert_eq!(rule.spec.captures[0].deref, 1);
    assert_eq!(rule.spec.captures[0].width, 2);
    assert_eq!(rule.spec.captures[0].offset, 8);
    assert_eq!((rule.spec.text.deref, rule.spec.text.offset), (1, 16));
    assert_eq!(rule.spec.error, Condition::new(Compare::Eq, -1));
    assert_eq!(rule.spec.sums, [RETURN_VALUE, NO_ARG, NO_ARG]);
    assert_eq!(rule.spec.conditions[0], Condition::new(Compare::Gt, 0));
    assert_eq!(rule.spec.text_in_span, 1);
    assert_eq!(rule.spec.text_label, 0);
    assert!(rule.object.as_ref().unwrap().matches("libx.so.1"));
}

#[test]
fn values_take_their_declared_types() {
    let int = |signed, bytes| ValueType::Int { signed, bytes };
    assert_eq!(int(true, 4).value(0xdead_beef_ffff_fffe), (-2i64).into());
    assert_eq!(
        int(false, 4).value(0xdead_beef_ffff_fffe),
        0xffff_fffei64.into()
    );
    assert_eq!(int(false, 8).value(u64::MAX), u64::MAX.to_string().into());
    assert_eq!(ValueType::Bool.value(0x100), false.into());
    assert_eq!(ValueType::Pointer.value(0x1000), "0x1000".into());
    assert_eq!(
        ValueType::Text { max_len: 4 }.text("héllo"),
        "hél".into(),
        "cut at a character boundary"
    );
}

#[test]
fn malformed_toml_is_located() {
    assert_error(
        "[[function]]\nmatch = \"f\nreturns = 1\n",
        2,
        11,
        "invalid basic string",
    );
}

#[test]
fn unknown_keys_are_named_with_the_expected_ones() {
    assert_error(
        "[[function]]\nmatch = \"f\"\nspn_name = \"x\"\n",
        3,
        1,
        "unknown field `spn_name`, expected one of",
    );
}

#[test]
fn missing_and_mistyped_fields_are_explained() {
    assert_error(
        "[[function]]\nobject = \"libx.so\"\n",
        1,
        1,
        "missing field `match`",
    );
    assert_error(
        "[[function]]\nmatch = \"f\"\ncapture.x = { arg = \"one\", type = \"u32\", attribute = \"x\" }\n",
        3,
        21,
        "invalid type: string \"one\", expected i64",
    );
    let (_, _, message) = error("");
    assert!(message.contains("at least one [[function]]"), "{message}");
}

#[test]
fn bad_globs_types_and_registers_are_refused() {
    assert_error("[[function]]\nmatch = \"wf_[\"\n", 2, 9, "expected a glob");
    assert_error(
        "[[function]]\nmatch = \"f\"\ncapture.x = { arg = 0, type = \"int\", attribute = \"x\" }\n",
        3,
        31,
        "unknown type `int`: expected i8",
    );
    assert_error(
        "[[function]]\nmatch = \"f\"\ncapture.x = { arg = 9, type = \"u32\", attribute = \"x\" }\n",
        3,
        21,
        "not passed in a register",
    );
    assert_error(
        "[[function]]\nmatch = \"f\"\nreturns = { type = \"string\" }\n",
        3,
        20,
        "a string cannot be returned",
    );
    assert_error(
        "[[function]]\nmatch = \"f\"\ncapture.x = { arg = 0, type = \"u32\", max_len = 4, attribute = \"x\" }\n",
        3,
        48,
        "`max_len` applies to strings only",
    );
}

#[test]
fn kernel_limits_are_explained() {
    assert_error(
        "[[function]]\nmatch = \"f\"\ncapture.a = { arg = 0, type = \"string\", attribute = \"a\" }\ncapture.b = { arg = 1, type = \"string\", attribute = \"b\" }\n",
        4,
        13,
        "one string",
    );
    let five: String = (0..5)
        .map(|n| format!("capture.c{n} = {{ arg = {n}, type = \"u32\", attribute = \"c{n}\" }}\n"))
        .collect();
    assert_error(
        &format!("[[function]]\nmatch = \"f\"\n{five}"),
        7,
        14,
        "capture 4 integers",
    );
    let conditions: String = (0..3)
        .map(|n| {
            format!("[[function.metric]]\ncounter = \"c{n}_total\"\nwhen = \"return == {n}\"\n")
        })
        .collect();
    assert_error(
        &format!("[[function]]\nmatch = \"f\"\nreturns = {{ type = \"i32\" }}\n{conditions}"),
        12,
        8,
        "2 distinct return conditions",
    );
}

#[test]
fn templates_name_known_strings() {
    assert_error(
        "[[function]]\nmatch = \"f\"\nspan_name = \"{nope}\"\n",
        3,
        13,
        "unknown name `{nope}`: expected one of function",
    );
    assert_error(
        "[[function]]\nmatch = \"f\"\ncapture.n = { arg = 0, type = \"u32\" }\n[[function.metric]]\ncounter = \"c_total\"\nlabels = { n = \"{n}\" }\n",
        6,
        16,
        "which is not a string",
    );
    assert_error(
        "[[function]]\nmatch = \"f\"\nspan_name = \"{open\"\n",
        3,
        13,
        "expected `}`",
    );
}

#[test]
fn error_rules_and_conditions_are_checked() {
    assert_error(
        "[[function]]\nmatch = \"f\"\nreturns = { type = \"i32\", error = \"sometimes\" }\n",
        3,
        35,
        "expected an error rule",
    );
    assert_error(
        "[[function]]\nmatch = \"f\"\n[[function.metric]]\ncounter = \"c_total\"\nwhen = \"return == 1\"\n",
        5,
        8,
        "needs the return value",
    );
    assert_error(
        "[[function]]\nmatch = \"f\"\nreturns = { type = \"i32\" }\n[[function.metric]]\ncounter = \"c_total\"\nwhen = \"error\"\n",
        6,
        8,
        "need an error rule",
    );
}

#[test]
fn metrics_are_checked() {
    assert_error(
        "[[function]]\nmatch = \"f\"\n[[function.metric]]\ncounter = \"calls\"\n",
        4,
        11,
        "ending in _total",
    );
    assert_error(
        "[[function]]\nmatch = \"f\"\n[[function.metric]]\ncounter = \"a_total\"\nhistogram = \"a_seconds\"\n",
        3,
        1,
        "exactly one of",
    );
    assert_error(
        "[[function]]\nmatch = \"f\"\n[[function.metric]]\ncounter = \"a_total\"\nadd = \"bytes\"\n",
        5,
        7,
        "expected `return` or the name of an integer capture",
    );
    assert_error(
        "[[function]]\nmatch = \"f\"\nreturns = { type = \"i32\", error = \"negative\" }\n[[function.metric]]\nhistogram = \"a_seconds\"\nlabels = { status = \"{status}\" }\n",
        6,
        21,
        "histogram labels can be constants",
    );
    assert_error(
        "[[function]]\nmatch = \"f\"\n[[function.metric]]\ncounter = \"a_total\"\nscale = 2.0\n",
        5,
        9,
        "`scale` applies to counters with `add`",
    );
    assert_error(
        "[[function]]\nmatch = \"f\"\n[[function.metric]]\ncounter = \"flowtap_x_total\"\n",
        4,
        11,
        "the agent's own",
    );
}

#[test]
fn a_metric_keeps_one_shape() {
    assert_error(
        "[[function]]\nmatch = \"f\"\n[[function.metric]]\ncounter = \"a_total\"\nlabels = { op = \"f\" }\n[[function]]\nmatch = \"g\"\n[[function.metric]]\ncounter = \"a_total\"\nlabels = { kind = \"g\" }\n",
        9,
        11,
        "declared at line 5 as a counter with labels [op]",
    );
}

#[test]
fn captures_must_be_used_and_contexts_keyed_by_integers() {
    assert_error(
        "[[function]]\nmatch = \"f\"\ncapture.x = { arg = 0, type = \"u32\" }\n",
        3,
        13,
        "capture `x` is never used",
    );
    assert_error(
        "[[function]]\nmatch = \"f\"\ncapture.task = { arg = 0, type = \"string\" }\ncontext = { adopt = \"task\" }\n",
        4,
        21,
        "integer or pointer capture",
    );
    assert_error(
        "[[function]]\nmatch = \"f\"\ncontext = { adopt = \"a\", hand_off = \"b\" }\n",
        3,
        11,
        "exactly one of",
    );
}

#[test]
fn the_genai_profile_captures_what_each_call_moved() {
    use flowtap_common::capture::{BufferMode, DIRECTION_READ, DIRECTION_WRITE};
    let genai = Profile::builtin("genai").unwrap();
    let rule = |name: &str| genai.rule_for(&["libssl.so.3".into()], name, name).unwrap();
    let read = rule("SSL_read").spec.buffer;
    assert_eq!(
        (
            read.mode,
            read.data_arg,
            read.length_out_arg,
            read.connection_arg
        ),
        (BufferMode::Return, 1, NO_ARG, 0)
    );
    assert_eq!((read.direction, read.length_bytes), (DIRECTION_READ, 4));
    let write_ex = rule("SSL_write_ex").spec.buffer;
    assert_eq!(
        (
            write_ex.length_out_arg,
            write_ex.length_bytes,
            write_ex.direction
        ),
        (3, 8, DIRECTION_WRITE)
    );
    assert_eq!(rule("SSL_free").spec.buffer.mode, BufferMode::Close);
    assert!(genai.functions.iter().all(|f| !f.spans));
    let price = genai
        .prices
        .iter()
        .find(|p| p.model.matches("gpt-4o-mini-2024-07-18"))
        .unwrap();
    assert_eq!(price.input_per_million, 0.15, "the first match wins");
}

#[test]
fn buffers_and_prices_are_checked() {
    let function = "[[function]]\nmatch = \"f\"\n";
    assert_error(
        &format!("{function}buffer = {{ at = \"later\", data = 1 }}\n"),
        3,
        17,
        "expected \"entry\", \"return\" or \"close\"",
    );
    assert_error(
        &format!("{function}buffer = {{ at = \"return\", data = 1, direction = \"read\" }}\n"),
        3,
        10,
        "exactly one of `length = \"return\"` or `length_out = N`",
    );
    assert_error(
        &format!(
            "{function}buffer = {{ at = \"entry\", data = 1, length = 2, direction = \"in\" }}\n"
        ),
        3,
        60,
        "expected direction = \"write\" or \"read\"",
    );
    assert_error(
        &format!(
            "{function}buffer = {{ at = \"entry\", data = 1, length = 2, direction = \"write\", max_bytes = 70000 }}\n"
        ),
        3,
        81,
        "expected max_bytes from 1 to 65536",
    );
    assert_error(
        &format!("{function}[[price]]\nmodel = \"m\"\ninput = -1.0\noutput = 1.0\n"),
        5,
        9,
        "expected a price of 0 or more",
    );
}
