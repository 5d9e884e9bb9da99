//! The profile file format: TOML read with positions, then checked against what the kernel
//! programs can do, so that every mistake is reported at its `file:line:column`.

use std::{collections::BTreeMap, ops::Range, path::PathBuf, sync::Arc};

use flowtap_common::{
    CAPTURES, Capture, Compare, Condition, ContextRole, MAX_CONDITIONS, MAX_SUMS, NO_ARG,
    ProbeSpec, RETURN_VALUE, TEXT_LEN,
};
use glob::Pattern;
use serde::Deserialize;
use toml::{Spanned, Value};

use super::{
    CaptureDef, FunctionRule, MetricDef, MetricKind, Part, Profile, ReturnDef, Slot, Template,
    ValueType, When,
};

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("{origin}:{line}:{column}: {message}")]
    Invalid {
        origin: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("cannot read profile {path}: {error}")]
    Read {
        path: PathBuf,
        #[source]
        error: std::io::Error,
    },
    #[error("no built-in profile `{name}` (built in: {known}); give a path to use a profile file")]
    UnknownBuiltin { name: String, known: String },
}

/// Integer arguments the kernel programs read: the six passed in registers on both x86-64
/// (rdi, rsi, rdx, rcx, r8, r9) and aarch64 (x0..x5).
const ARGUMENT_REGISTERS: i64 = 6;

/// Names a template may use besides the function's captures.
const BUILTIN_NAMES: [&str; 2] = ["function", "status"];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProfile {
    profile: RawHeader,
    #[serde(default, rename = "function")]
    functions: Vec<Spanned<RawFunction>>,
    #[serde(default, rename = "price")]
    prices: Vec<Spanned<super::buffer::RawPrice>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHeader {
    name: Spanned<String>,
    #[serde(default)]
    description: String,
    marker: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFunction {
    #[serde(rename = "match")]
    pattern: Spanned<String>,
    object: Option<Spanned<String>>,
    span_name: Option<Spanned<String>>,
    returns: Option<Spanned<RawReturns>>,
    #[serde(default)]
    capture: BTreeMap<String, Spanned<RawCapture>>,
    #[serde(default)]
    attributes: BTreeMap<String, String>,
    context: Option<Spanned<RawContext>>,
    #[serde(default, rename = "metric")]
    metrics: Vec<Spanned<RawMetric>>,
    buffer: Option<Spanned<super::buffer::RawBuffer>>,
    #[serde(default = "yes")]
    spans: bool,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCapture {
    arg: Spanned<i64>,
    #[serde(rename = "type")]
    kind: Spanned<String>,
    offset: Option<Spanned<i64>>,
    max_len: Option<Spanned<i64>>,
    attribute: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReturns {
    #[serde(rename = "type")]
    kind: Spanned<String>,
    error: Option<Spanned<Value>>,
    attribute: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawContext {
    hand_off: Option<Spanned<String>>,
    adopt: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetric {
    counter: Option<Spanned<String>>,
    histogram: Option<Spanned<String>>,
    #[serde(default)]
    help: String,
    add: Option<Spanned<String>>,
    scale: Option<Spanned<f64>>,
    when: Option<Spanned<String>>,
    #[serde(default)]
    labels: BTreeMap<String, Spanned<String>>,
}

/// Turns byte spans into `origin:line:column` errors.
pub(super) struct Source<'a> {
    text: &'a str,
    origin: &'a str,
}

impl Source<'_> {
    pub(super) fn error(&self, span: Range<usize>, message: impl Into<String>) -> ProfileError {
        let before = &self.text[..span.start.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        ProfileError::Invalid {
            origin: self.origin.to_string(),
            line,
            column,
            message: message.into(),
        }
    }

    fn line(&self, offset: usize) -> usize {
        self.text[..offset.min(self.text.len())]
            .matches('\n')
            .count()
            + 1
    }
}

type Result<T> = std::result::Result<T, ProfileError>;

pub(super) fn compile(text: &str, origin: &str) -> Result<Profile> {
    let source = Source { text, origin };
    let raw: RawProfile = toml::from_str(text).map_err(|error| {
        let span = error.span().unwrap_or(0..0);
        source.error(span, error.message().trim_end().replace('\n', "; "))
    })?;
    let name = raw.profile.name.get_ref();
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(source.error(
            raw.profile.name.span(),
            "expected a profile name of letters, digits, `-` and `_`",
        ));
    }
    if raw.functions.is_empty() {
        return Err(source.error(
            0..0,
            "expected at least one [[function]] table: a profile says what functions mean",
        ));
    }
    let functions = raw
        .functions
        .iter()
        .map(|function| compile_function(&source, function).map(Arc::new))
        .collect::<Result<Vec<_>>>()?;
    check_metric_consistency(&source, &raw.functions)?;
    let prices = raw
        .prices
        .iter()
        .map(|price| super::buffer::compile_price(&source, price))
        .collect::<Result<Vec<_>>>()?;
    Ok(Profile {
        name: name.clone(),
        description: raw.profile.description,
        marker: raw.profile.marker,
        functions,
        prices,
    })
}

fn compile_function(source: &Source, raw: &Spanned<RawFunction>) -> Result<FunctionRule> {
    let raw = raw.get_ref();
    let glob = |text: &Spanned<String>| {
        Pattern::new(text.get_ref())
            .map_err(|error| source.error(text.span(), format!("expected a glob: {error}")))
    };
    let mut spec = ProbeSpec::default();
    let captures = compile_captures(source, &raw.capture, &mut spec)?;
    let returns = raw
        .returns
        .as_ref()
        .map(|returns| compile_returns(source, returns, &mut spec))
        .transpose()?;
    if let Some(context) = &raw.context {
        compile_context(source, context, &captures, &mut spec)?;
    }
    if let Some(buffer) = &raw.buffer {
        spec.buffer = super::buffer::compile_buffer(source, buffer)?;
    }
    let span_name = raw
        .span_name
        .as_ref()
        .map(|name| parse_template(source, name, &captures, false))
        .transpose()?;
    let mut metrics = Vec::new();
    for metric in &raw.metrics {
        metrics.push(compile_metric(
            source,
            metric,
            &captures,
            &mut spec,
            returns.is_some(),
        )?);
    }
    spec.aggregate = u8::from(metrics.iter().any(|m| m.needs_aggregates(&captures)));
    spec.text_label = u8::from(metrics.iter().any(|m| {
        matches!(m.kind, MetricKind::Counter { .. })
            && m.labels.iter().any(|(_, t)| t.uses_text(&captures))
    }));
    let text = captures.iter().position(|c| c.slot == Slot::Text);
    spec.text_in_span = u8::from(text.is_some_and(|n| {
        captures[n].attribute.is_some()
            || span_name
                .as_ref()
                .is_some_and(|t| t.parts.contains(&Part::Capture(n)))
    }));
    check_captures_used(source, raw, &captures, &span_name, &metrics, &spec)?;
    Ok(FunctionRule {
        pattern: glob(&raw.pattern)?,
        object: raw.object.as_ref().map(glob).transpose()?,
        span_name,
        spec,
        captures,
        returns,
        attributes: raw
            .attributes
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        metrics,
        spans: raw.spans,
    })
}

fn parse_type(source: &Source, kind: &Spanned<String>, allow_text: bool) -> Result<ValueType> {
    let int = |signed, bytes| ValueType::Int { signed, bytes };
    Ok(match kind.get_ref().as_str() {
        "i8" => int(true, 1),
        "i16" => int(true, 2),
        "i32" => int(true, 4),
        "i64" => int(true, 8),
        "u8" => int(false, 1),
        "u16" => int(false, 2),
        "u32" => int(false, 4),
        "u64" => int(false, 8),
        "bool" => ValueType::Bool,
        "pointer" => ValueType::Pointer,
        "string" if allow_text => ValueType::Text {
            max_len: TEXT_LEN - 1,
        },
        other => {
            let expected = if allow_text {
                "i8, i16, i32, i64, u8, u16, u32, u64, bool, pointer or string"
            } else {
                "i8, i16, i32, i64, u8, u16, u32, u64, bool or pointer (a string cannot be returned)"
            };
            return Err(source.error(
                kind.span(),
                format!("unknown type `{other}`: expected {expected}"),
            ));
        }
    })
}

impl ValueType {
    fn bytes(self) -> u8 {
        match self {
            ValueType::Int { bytes, .. } => bytes,
            ValueType::Bool => 1,
            ValueType::Pointer | ValueType::Text { .. } => 8,
        }
    }
}

fn compile_captures(
    source: &Source,
    raw: &BTreeMap<String, Spanned<RawCapture>>,
    spec: &mut ProbeSpec,
) -> Result<Vec<CaptureDef>> {
    let mut captures = Vec::new();
    let mut values = 0;
    // Declared order, not alphabetical: slots follow the file.
    let mut ordered: Vec<_> = raw.iter().collect();
    ordered.sort_by_key(|(_, capture)| capture.span().start);
    for (name, capture) in ordered {
        let span = capture.span();
        let capture = capture.get_ref();
        if !is_identifier(name) || BUILTIN_NAMES.contains(&&**name) || name == "return" {
            return Err(source.error(
                span,
                format!(
                    "capture name `{name}`: expected lower-case letters, digits and `_`, other than function, status and return"
                ),
            ));
        }
        let (register, kind) = capture_register(source, capture)?;
        let slot = assign_slot(source, span, spec, register, &kind, &mut values)?;
        let attribute = capture
            .attribute
            .as_ref()
            .map(|a| attribute_name(source, a))
            .transpose()?;
        captures.push(CaptureDef {
            name: name.clone(),
            kind,
            slot,
            attribute,
        });
    }
    Ok(captures)
}

/// What the kernel reads for a capture (argument register, optional dereference, width), and
/// its type.
fn capture_register(source: &Source, capture: &RawCapture) -> Result<(Capture, ValueType)> {
    let arg = *capture.arg.get_ref();
    if !(0..ARGUMENT_REGISTERS).contains(&arg) {
        return Err(source.error(
            capture.arg.span(),
            format!(
                "argument {arg} is not passed in a register: expected 0 to {} (the first integer arguments)",
                ARGUMENT_REGISTERS - 1
            ),
        ));
    }
    let kind = parse_type(source, &capture.kind, true)?;
    let offset = capture
        .offset
        .as_ref()
        .map(|offset| {
            u32::try_from(*offset.get_ref()).map_err(|_| {
                source.error(
                    offset.span(),
                    "expected an offset from 0 to 4294967295 bytes",
                )
            })
        })
        .transpose()?;
    let kind = match &capture.max_len {
        Some(max_len) => text_with_max_len(source, kind, max_len)?,
        None => kind,
    };
    let register = Capture {
        arg: arg as u8,
        deref: u8::from(offset.is_some()),
        width: kind.bytes(),
        _pad: 0,
        offset: offset.unwrap_or(0),
    };
    Ok((register, kind))
}

fn text_with_max_len(
    source: &Source,
    kind: ValueType,
    max_len: &Spanned<i64>,
) -> Result<ValueType> {
    let ValueType::Text { .. } = kind else {
        return Err(source.error(max_len.span(), "`max_len` applies to strings only"));
    };
    let n = *max_len.get_ref();
    if !(1..TEXT_LEN as i64).contains(&n) {
        return Err(source.error(
            max_len.span(),
            format!("expected a max_len from 1 to {}", TEXT_LEN - 1),
        ));
    }
    Ok(ValueType::Text {
        max_len: n as usize,
    })
}

/// Puts the capture in the probe's one string slot, or its next integer slot.
fn assign_slot(
    source: &Source,
    span: Range<usize>,
    spec: &mut ProbeSpec,
    register: Capture,
    kind: &ValueType,
    values: &mut usize,
) -> Result<Slot> {
    if let ValueType::Text { .. } = kind {
        if spec.text.arg != NO_ARG {
            return Err(source.error(
                span,
                "a function can capture one string: this is the second",
            ));
        }
        spec.text = register;
        return Ok(Slot::Text);
    }
    if *values == CAPTURES {
        return Err(source.error(
            span,
            format!("a function can capture {CAPTURES} integers: this is one more"),
        ));
    }
    spec.captures[*values] = register;
    *values += 1;
    Ok(Slot::Value(*values - 1))
}

fn attribute_name(source: &Source, name: &Spanned<String>) -> Result<String> {
    let valid = !name.get_ref().is_empty()
        && name
            .get_ref()
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
    if !valid {
        return Err(source.error(
            name.span(),
            "expected an attribute name of letters, digits, `_` and `.` (e.g. db.query.text)",
        ));
    }
    Ok(name.get_ref().clone())
}

fn compile_returns(
    source: &Source,
    raw: &Spanned<RawReturns>,
    spec: &mut ProbeSpec,
) -> Result<ReturnDef> {
    let raw = raw.get_ref();
    let kind = parse_type(source, &raw.kind, false)?;
    spec.ret_bytes = kind.bytes();
    spec.ret_signed = u8::from(matches!(kind, ValueType::Int { signed: true, .. }));
    if let Some(error) = &raw.error {
        spec.error = match error.get_ref() {
            Value::String(rule) => match rule.as_str() {
                "negative" => Condition::new(Compare::Lt, 0),
                "zero" => Condition::new(Compare::Eq, 0),
                "nonzero" => Condition::new(Compare::Ne, 0),
                _ => parse_condition(source, error.span(), rule)?,
            },
            Value::Integer(n) => Condition::new(Compare::Eq, *n),
            _ => return Err(error_rule_expected(source, error.span())),
        };
    }
    Ok(ReturnDef {
        kind,
        attribute: raw
            .attribute
            .as_ref()
            .map(|a| attribute_name(source, a))
            .transpose()?,
    })
}

fn error_rule_expected(source: &Source, span: Range<usize>) -> ProfileError {
    source.error(
        span,
        "expected an error rule: \"negative\", \"zero\", \"nonzero\", an integer N (equals N), or \"return OP N\" with OP one of == != < <= > >=",
    )
}

/// `return OP N`.
fn parse_condition(source: &Source, span: Range<usize>, text: &str) -> Result<Condition> {
    let mut words = text.split_whitespace();
    let (Some("return"), Some(op), Some(value), None) =
        (words.next(), words.next(), words.next(), words.next())
    else {
        return Err(error_rule_expected(source, span));
    };
    let compare = match op {
        "==" => Compare::Eq,
        "!=" => Compare::Ne,
        "<" => Compare::Lt,
        "<=" => Compare::Le,
        ">" => Compare::Gt,
        ">=" => Compare::Ge,
        _ => return Err(error_rule_expected(source, span)),
    };
    let value = value
        .parse::<i64>()
        .map_err(|_| error_rule_expected(source, span.clone()))?;
    Ok(Condition::new(compare, value))
}

fn compile_context(
    source: &Source,
    raw: &Spanned<RawContext>,
    captures: &[CaptureDef],
    spec: &mut ProbeSpec,
) -> Result<()> {
    let (role, key) = match (&raw.get_ref().hand_off, &raw.get_ref().adopt) {
        (Some(key), None) => (ContextRole::HandOff, key),
        (None, Some(key)) => (ContextRole::Adopt, key),
        _ => {
            return Err(source.error(
                raw.span(),
                "expected exactly one of `hand_off = \"capture\"` or `adopt = \"capture\"`",
            ));
        }
    };
    let slot = captures
        .iter()
        .find(|c| &c.name == key.get_ref())
        .and_then(|c| match c.slot {
            Slot::Value(n) => Some(n),
            Slot::Text => None,
        })
        .ok_or_else(|| {
            source.error(
                key.span(),
                format!(
                    "expected the name of an integer or pointer capture of this function to key the context, not `{}`",
                    key.get_ref()
                ),
            )
        })?;
    spec.context = role;
    spec.context_capture = slot as u8;
    Ok(())
}

fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// Parses `literal {name} literal`. Labels may refer to strings only (integers would make
/// unbounded label sets), and `{status}` only where the metric can tell it.
fn parse_template(
    source: &Source,
    text: &Spanned<String>,
    captures: &[CaptureDef],
    for_label: bool,
) -> Result<Template> {
    let mut parts = Vec::new();
    let mut rest = text.get_ref().as_str();
    while let Some(open) = rest.find('{') {
        if open > 0 {
            parts.push(Part::Literal(rest[..open].to_string()));
        }
        let Some(close) = rest[open..].find('}') else {
            return Err(source.error(text.span(), "expected `}` closing a `{name}` reference"));
        };
        let name = &rest[open + 1..open + close];
        parts.push(reference(source, text, name, captures, for_label)?);
        rest = &rest[open + close + 1..];
    }
    if !rest.is_empty() {
        parts.push(Part::Literal(rest.to_string()));
    }
    Ok(Template { parts })
}

fn reference(
    source: &Source,
    text: &Spanned<String>,
    name: &str,
    captures: &[CaptureDef],
    for_label: bool,
) -> Result<Part> {
    match name {
        "function" => return Ok(Part::Function),
        "status" if for_label => return Ok(Part::Status),
        _ => {}
    }
    let Some(n) = captures.iter().position(|c| c.name == name) else {
        let known: Vec<&str> = captures
            .iter()
            .map(|c| c.name.as_str())
            .chain(
                BUILTIN_NAMES
                    .iter()
                    .copied()
                    .filter(|b| for_label || *b != "status"),
            )
            .collect();
        return Err(source.error(
            text.span(),
            format!(
                "unknown name `{{{name}}}`: expected one of {}",
                known.join(", ")
            ),
        ));
    };
    if for_label && !matches!(captures[n].kind, ValueType::Text { .. }) {
        return Err(source.error(
            text.span(),
            format!(
                "label from `{name}`, which is not a string: labels take captured strings (keep integers on spans with `attribute`, or sum them with `add`)"
            ),
        ));
    }
    Ok(Part::Capture(n))
}

fn metric_labels(
    source: &Source,
    raw: &RawMetric,
    captures: &[CaptureDef],
    is_counter: bool,
) -> Result<Vec<(String, Template)>> {
    let mut labels = Vec::new();
    for (label, value) in &raw.labels {
        if !is_label_name(label) {
            return Err(source.error(
                value.span(),
                format!("label name `{label}`: expected letters, digits and `_`, not starting with `__`, and not service_name or le"),
            ));
        }
        let template = parse_template(source, value, captures, true)?;
        if !is_counter
            && template
                .parts
                .iter()
                .any(|p| matches!(p, Part::Capture(_) | Part::Status))
        {
            return Err(source.error(
                value.span(),
                "histogram labels can be constants and {function} only: the kernel keeps one histogram per function",
            ));
        }
        labels.push((label.clone(), template));
    }
    Ok(labels)
}

fn histogram_has_no_counter_fields(source: &Source, raw: &RawMetric) -> Result<()> {
    for (field, present) in [
        ("add", raw.add.as_ref().map(Spanned::span)),
        ("when", raw.when.as_ref().map(Spanned::span)),
        ("scale", raw.scale.as_ref().map(Spanned::span)),
    ] {
        if let Some(span) = present {
            return Err(source.error(
                span,
                format!("`{field}` applies to counters: a histogram records every call's duration"),
            ));
        }
    }
    Ok(())
}

fn compile_metric(
    source: &Source,
    raw: &Spanned<RawMetric>,
    captures: &[CaptureDef],
    spec: &mut ProbeSpec,
    returns_declared: bool,
) -> Result<MetricDef> {
    let span = raw.span();
    let raw = raw.get_ref();
    let (name, is_counter) = match (&raw.counter, &raw.histogram) {
        (Some(name), None) => (name, true),
        (None, Some(name)) => (name, false),
        _ => {
            return Err(source.error(
                span,
                "expected exactly one of `counter = \"name_total\"` or `histogram = \"name_seconds\"`",
            ));
        }
    };
    check_metric_name(source, name, is_counter)?;
    let labels = metric_labels(source, raw, captures, is_counter)?;
    let kind = if is_counter {
        counter_kind(source, raw, captures, spec, returns_declared)?
    } else {
        histogram_has_no_counter_fields(source, raw)?;
        MetricKind::Histogram
    };
    Ok(MetricDef {
        name: name.get_ref().clone(),
        help: raw.help.clone(),
        kind,
        labels,
    })
}

fn check_metric_name(source: &Source, name: &Spanned<String>, is_counter: bool) -> Result<()> {
    let text = name.get_ref();
    let valid = text
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && text.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    let message = if !valid {
        "expected a metric name of letters, digits and `_`"
    } else if text.starts_with("flowtap_") {
        "metric names starting with flowtap_ are the agent's own"
    } else if is_counter && !text.ends_with("_total") {
        "expected a counter name ending in _total (Prometheus convention)"
    } else if !is_counter && !text.ends_with("_seconds") {
        "expected a histogram name ending in _seconds: histograms record durations"
    } else {
        return Ok(());
    };
    Err(source.error(name.span(), message))
}

fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with("__")
        && name != "service_name"
        && name != "le"
}

fn needs_returns(source: &Source, span: Range<usize>) -> ProfileError {
    source.error(
        span,
        "this needs the return value: declare `returns = { type = \"i32\", ... }` on the function",
    )
}

fn counter_kind(
    source: &Source,
    raw: &RawMetric,
    captures: &[CaptureDef],
    spec: &mut ProbeSpec,
    returns_declared: bool,
) -> Result<MetricKind> {
    let sum = raw
        .add
        .as_ref()
        .map(|add| sum_slot(source, add, captures, spec, returns_declared))
        .transpose()?;
    let scale = match &raw.scale {
        None => 1.0,
        Some(scale) if raw.add.is_none() => {
            return Err(source.error(scale.span(), "`scale` applies to counters with `add`"));
        }
        Some(scale) if scale.get_ref().is_finite() && *scale.get_ref() > 0.0 => *scale.get_ref(),
        Some(scale) => {
            return Err(source.error(scale.span(), "expected a positive scale, e.g. 0.000001"));
        }
    };
    let when = match &raw.when {
        None => When::Always,
        Some(when) if !returns_declared => return Err(needs_returns(source, when.span())),
        Some(when) => match when.get_ref().as_str() {
            "ok" | "error" if spec.error == Condition::NEVER => {
                return Err(source.error(
                    when.span(),
                    "`ok` and `error` need an error rule: declare `error` in the function's `returns`",
                ));
            }
            "ok" => When::Ok,
            "error" => When::Error,
            text => {
                let condition = parse_condition(source, when.span(), text).map_err(|_| {
                    source.error(
                        when.span(),
                        "expected \"ok\", \"error\" or \"return OP N\" with OP one of == != < <= > >=",
                    )
                })?;
                When::Condition(condition_slot(source, when.span(), condition, spec)?)
            }
        },
    };
    Ok(MetricKind::Counter { sum, scale, when })
}

fn sum_slot(
    source: &Source,
    add: &Spanned<String>,
    captures: &[CaptureDef],
    spec: &mut ProbeSpec,
    returns_declared: bool,
) -> Result<usize> {
    let value = if add.get_ref() == "return" {
        if !returns_declared {
            return Err(needs_returns(source, add.span()));
        }
        RETURN_VALUE
    } else {
        match captures.iter().find(|c| &c.name == add.get_ref()) {
            Some(CaptureDef {
                slot: Slot::Value(n),
                kind: ValueType::Int { .. } | ValueType::Bool,
                ..
            }) => *n as u8,
            _ => {
                return Err(source.error(
                    add.span(),
                    format!(
                        "expected `return` or the name of an integer capture to add, not `{}`",
                        add.get_ref()
                    ),
                ));
            }
        }
    };
    if let Some(n) = spec.sums.iter().position(|&s| s == value) {
        return Ok(n);
    }
    let Some(n) = spec.sums.iter().position(|&s| s == NO_ARG) else {
        return Err(source.error(
            add.span(),
            format!("a function's counters can add {MAX_SUMS} distinct values: this is one more"),
        ));
    };
    spec.sums[n] = value;
    Ok(n)
}

fn condition_slot(
    source: &Source,
    span: Range<usize>,
    condition: Condition,
    spec: &mut ProbeSpec,
) -> Result<usize> {
    if let Some(n) = spec.conditions.iter().position(|&c| c == condition) {
        return Ok(n);
    }
    let Some(n) = spec
        .conditions
        .iter()
        .position(|&c| c.compare == Compare::Never)
    else {
        return Err(source.error(
            span,
            format!(
                "a function's counters can test {MAX_CONDITIONS} distinct return conditions: this is one more"
            ),
        ));
    };
    spec.conditions[n] = condition;
    Ok(n)
}

/// A capture nobody uses is memory read from the target for nothing: likely a mistake.
fn check_captures_used(
    source: &Source,
    raw: &RawFunction,
    captures: &[CaptureDef],
    span_name: &Option<Template>,
    metrics: &[MetricDef],
    spec: &ProbeSpec,
) -> Result<()> {
    for (n, capture) in captures.iter().enumerate() {
        let part = Part::Capture(n);
        let used = capture.attribute.is_some()
            || span_name.as_ref().is_some_and(|t| t.parts.contains(&part))
            || metrics
                .iter()
                .any(|m| m.labels.iter().any(|(_, t)| t.parts.contains(&part)))
            || match capture.slot {
                Slot::Value(slot) => {
                    spec.sums.contains(&(slot as u8))
                        || (spec.context != ContextRole::None
                            && usize::from(spec.context_capture) == slot)
                }
                Slot::Text => false,
            };
        if !used {
            return Err(source.error(
                raw.capture[&capture.name].span(),
                format!(
                    "capture `{}` is never used: give it an `attribute`, or use it in span_name, a metric or the context",
                    capture.name
                ),
            ));
        }
    }
    Ok(())
}

/// One metric name, one meaning: the same kind and label names wherever it is declared.
fn check_metric_consistency(source: &Source, functions: &[Spanned<RawFunction>]) -> Result<()> {
    // Per metric name: kind, label names, and the byte offset of its first declaration.
    let mut seen: BTreeMap<String, (bool, Vec<String>, usize)> = BTreeMap::new();
    for function in functions {
        for metric in &function.get_ref().metrics {
            let raw = metric.get_ref();
            let (name, is_counter) = match (&raw.counter, &raw.histogram) {
                (Some(name), _) => (name, true),
                (_, Some(name)) => (name, false),
                _ => continue,
            };
            let labels: Vec<String> = raw.labels.keys().cloned().collect();
            // The offset, not the line: counting lines for every metric was quadratic.
            let here = (is_counter, labels, metric.span().start);
            match seen.get(name.get_ref()) {
                Some((kind, labels, offset)) if *kind != here.0 || *labels != here.1 => {
                    let line = source.line(*offset);
                    return Err(source.error(
                        name.span(),
                        format!(
                            "metric `{}` was declared at line {line} as a {} with labels [{}]: expected the same kind and labels here",
                            name.get_ref(),
                            if *kind { "counter" } else { "histogram" },
                            labels.join(", ")
                        ),
                    ));
                }
                Some(_) => {}
                None => {
                    seen.insert(name.get_ref().clone(), here);
                }
            }
        }
    }
    Ok(())
}
