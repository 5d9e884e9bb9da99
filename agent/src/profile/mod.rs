//! What symbols mean, declared in profiles: which functions to probe, what their arguments and
//! return values are, which become span attributes, when a call failed, which metrics count it,
//! and how trace context crosses threads. A profile is TOML ([`format`]); the built-in ones are
//! compiled into the binary and loaded by name.

mod buffer;
mod format;

use std::{path::Path, sync::Arc};

use flowtap_common::ProbeSpec;
use glob::Pattern;

pub(crate) use buffer::Price;
pub(crate) use format::ProfileError;

use crate::symbols::ElfObject;

/// The profiles shipped in the binary: (name, TOML source).
pub(crate) const BUILTIN: [(&str, &str); 5] = [
    ("workflow", include_str!("builtin/workflow.toml")),
    ("sqlite", include_str!("builtin/sqlite.toml")),
    ("libc", include_str!("builtin/libc.toml")),
    ("openssl", include_str!("builtin/openssl.toml")),
    ("genai", include_str!("builtin/genai.toml")),
];

/// The profile applied when neither `--profile` nor `--symbols` is given.
pub(crate) const DEFAULT: &str = "workflow";

/// A compiled profile.
#[derive(Debug)]
pub struct Profile {
    pub(crate) name: String,
    pub(crate) description: String,
    /// Only objects exporting this symbol are probed (the runtime's signature).
    pub(crate) marker: Option<String>,
    /// In order: the first rule matching a function gives it its meaning.
    pub(crate) functions: Vec<Arc<FunctionRule>>,
    /// What tokens of LLM models cost (`[[price]]`), first match wins.
    pub(crate) prices: Vec<Price>,
}

/// What the functions one `[[function]]` table matches mean.
#[derive(Debug)]
pub(crate) struct FunctionRule {
    pub pattern: Pattern,
    pub object: Option<Pattern>,
    /// Default: the function's name.
    pub span_name: Option<Template>,
    /// The kernel's part: captures, error rule, aggregation, context.
    pub spec: ProbeSpec,
    pub captures: Vec<CaptureDef>,
    pub returns: Option<ReturnDef>,
    /// Constant span attributes.
    pub attributes: Vec<(String, String)>,
    pub metrics: Vec<MetricDef>,
    /// Whether its calls are exported as spans (`spans = false`: a function probed for its
    /// bytes or metrics only, such as `SSL_read`, still parents nothing).
    pub spans: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ValueType {
    Int { signed: bool, bytes: u8 },
    Bool,
    Pointer,
    Text { max_len: usize },
}

/// Where a captured value is kept between entry and exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Slot {
    /// An integer slot of the frame, `ProbeSpec::captures[n]`.
    Value(usize),
    /// The one string a probe may capture.
    Text,
}

#[derive(Debug, Clone)]
pub(crate) struct CaptureDef {
    pub name: String,
    pub kind: ValueType,
    pub slot: Slot,
    /// The span attribute it becomes; `None`: never exported on spans.
    pub attribute: Option<String>,
}

#[derive(Debug, Clone)]
pub(crate) struct ReturnDef {
    pub kind: ValueType,
    pub attribute: Option<String>,
}

/// A span name or label value: literal text and `{name}` references.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Template {
    pub parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Part {
    Literal(String),
    Capture(usize),
    /// `success` or `failure`.
    Status,
    Function,
}

#[derive(Debug, Clone)]
pub(crate) struct MetricDef {
    pub name: String,
    pub help: String,
    pub kind: MetricKind,
    pub labels: Vec<(String, Template)>,
}

#[derive(Debug, Clone)]
pub(crate) enum MetricKind {
    /// Counts calls, or adds a value (`add`, by `ProbeSpec::sums[sum]`), when `when` holds.
    Counter {
        sum: Option<usize>,
        scale: f64,
        when: When,
    },
    /// The calls' durations.
    Histogram,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum When {
    Always,
    Ok,
    Error,
    /// `ProbeSpec::conditions[n]` held.
    Condition(usize),
}

impl ValueType {
    /// A captured register or field as this type, for spans.
    pub(crate) fn value(self, raw: u64) -> opentelemetry::Value {
        match self {
            ValueType::Int { signed, bytes } => {
                let value = flowtap_common::widen(raw, bytes, signed);
                if signed {
                    opentelemetry::Value::I64(value as i64)
                } else {
                    // OTLP integers are signed 64-bit: larger values keep their digits as text.
                    i64::try_from(value).map_or_else(
                        |_| opentelemetry::Value::from(value.to_string()),
                        opentelemetry::Value::I64,
                    )
                }
            }
            ValueType::Bool => opentelemetry::Value::Bool(raw & 0xff != 0),
            ValueType::Pointer => opentelemetry::Value::from(format!("{raw:#x}")),
            ValueType::Text { .. } => opentelemetry::Value::from(raw.to_string()),
        }
    }

    /// A captured string, cut to the declared length.
    pub(crate) fn text(self, text: &str) -> opentelemetry::Value {
        opentelemetry::Value::from(self.cut(text).to_string())
    }

    /// `text` without the bytes past the declared length (and no split character).
    pub(crate) fn cut(self, text: &str) -> &str {
        let ValueType::Text { max_len } = self else {
            return text;
        };
        let mut end = text.len().min(max_len);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        &text[..end]
    }
}

impl MetricDef {
    /// Whether the probe's per-call stats cannot answer it, so the kernel must aggregate.
    pub(crate) fn needs_aggregates(&self, captures: &[CaptureDef]) -> bool {
        match &self.kind {
            MetricKind::Histogram => false,
            MetricKind::Counter { sum, when, .. } => {
                sum.is_some()
                    || matches!(when, When::Condition(_))
                    || self
                        .labels
                        .iter()
                        .any(|(_, template)| template.uses_text(captures))
            }
        }
    }
}

impl Template {
    /// Whether it refers to the captured string.
    pub(crate) fn uses_text(&self, captures: &[CaptureDef]) -> bool {
        self.parts
            .iter()
            .any(|part| matches!(part, Part::Capture(n) if matches!(captures[*n].slot, Slot::Text)))
    }

    /// The text, with each reference replaced by `resolve(part)`.
    pub(crate) fn render(&self, mut resolve: impl FnMut(&Part) -> String) -> String {
        self.parts
            .iter()
            .map(|part| match part {
                Part::Literal(text) => text.clone(),
                reference => resolve(reference),
            })
            .collect()
    }
}

impl Profile {
    /// Parses and checks a profile's TOML; `origin` names it in errors (a path, `builtin:x`).
    pub fn parse(text: &str, origin: &str) -> Result<Self, ProfileError> {
        format::compile(text, origin)
    }

    pub(crate) fn builtin(name: &str) -> Result<Self, ProfileError> {
        let (_, text) = BUILTIN
            .iter()
            .find(|(builtin, _)| *builtin == name)
            .ok_or_else(|| ProfileError::UnknownBuiltin {
                name: name.to_string(),
                known: BUILTIN.map(|(name, _)| name).join(", "),
            })?;
        Self::parse(text, &format!("builtin:{name}"))
    }

    pub(crate) fn from_file(path: &Path) -> Result<Self, ProfileError> {
        // With capabilities flowtap could read what its user cannot; an error would show it.
        if path.exists() && !crate::invoker::may_read(path) {
            return Err(ProfileError::Read {
                path: path.to_path_buf(),
                error: std::io::ErrorKind::PermissionDenied.into(),
            });
        }
        let text = std::fs::read_to_string(path).map_err(|error| ProfileError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// `--profile NAME|FILE`: a path when it looks like one, else a built-in name.
    pub(crate) fn load(name_or_path: &str) -> Result<Self, ProfileError> {
        let path = Path::new(name_or_path);
        if name_or_path.contains('/') || name_or_path.ends_with(".toml") || path.is_file() {
            Self::from_file(path)
        } else {
            Self::builtin(name_or_path)
        }
    }

    /// Whether the profile names objects none of `objects` is, which may be loaded later.
    pub(crate) fn names_other_objects(&self, objects: &[ElfObject]) -> bool {
        self.functions.iter().any(|rule| {
            rule.object
                .as_ref()
                .is_some_and(|glob| !objects.iter().any(|object| object.is_named(glob)))
        })
    }

    /// Whether a function of it captures buffer bytes.
    pub(crate) fn captures_bytes(&self) -> bool {
        self.functions
            .iter()
            .any(|f| f.spec.buffer.mode != flowtap_common::capture::BufferMode::None)
    }

    /// Whether the profile's functions are looked for in `object`.
    pub(crate) fn applies_to(&self, object: &ElfObject) -> bool {
        self.marker.as_ref().is_none_or(|marker| {
            object
                .functions
                .iter()
                .any(|function| &function.raw_name == marker)
        })
    }

    /// The rule giving a function of an object (known by `object_names`) its meaning, if any.
    pub(crate) fn rule_for(
        &self,
        object_names: &[String],
        raw: &str,
        demangled: &str,
    ) -> Option<&Arc<FunctionRule>> {
        self.functions.iter().find(|rule| {
            rule.object
                .as_ref()
                .is_none_or(|o| object_names.iter().any(|name| o.matches(name)))
                && crate::symbols::matches(&rule.pattern, raw, demangled)
        })
    }
}

/// The TOML of a built-in profile, for `flowtap profile show`.
pub(crate) fn builtin_source(name: &str) -> Option<&'static str> {
    BUILTIN
        .iter()
        .find(|(builtin, _)| *builtin == name)
        .map(|(_, text)| *text)
}

#[cfg(test)]
mod tests;
