//! A function's `buffer` table (bytes to capture) and a profile's `[[price]]` tables (what
//! tokens of a model cost), checked like the rest of the profile.

use flowtap_common::{
    NO_ARG,
    capture::{BufferMode, BufferSpec, DIRECTION_READ, DIRECTION_WRITE, MAX_CAPTURE_BYTES},
};
use glob::Pattern;
use serde::Deserialize;
use toml::{Spanned, Value};

use super::format::{ProfileError, Source};

/// Bytes captured per call when the profile does not say.
const DEFAULT_MAX_BYTES: u32 = 16 << 10;

/// `buffer = { at = "entry" | "return" | "close", data = N, length = N | "return",
/// length_out = N, length_type = "i32" | "u64", connection = N, direction = "write" | "read",
/// max_bytes = N }`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBuffer {
    at: Spanned<String>,
    data: Option<Spanned<i64>>,
    length: Option<Spanned<Value>>,
    length_out: Option<Spanned<i64>>,
    length_type: Option<Spanned<String>>,
    connection: Option<Spanned<i64>>,
    direction: Option<Spanned<String>>,
    max_bytes: Option<Spanned<i64>>,
}

/// `[[price]]`: USD per million tokens of the models `model` (a glob) matches.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPrice {
    model: Spanned<String>,
    input: Spanned<f64>,
    output: Spanned<f64>,
}

/// What tokens of the models a glob matches cost, in USD per million.
#[derive(Debug, Clone)]
pub(crate) struct Price {
    pub model: Pattern,
    pub input_per_million: f64,
    pub output_per_million: f64,
}

type Result<T> = std::result::Result<T, ProfileError>;

fn argument(source: &Source, arg: &Spanned<i64>) -> Result<u8> {
    let n = *arg.get_ref();
    if !(0..6).contains(&n) {
        return Err(source.error(
            arg.span(),
            format!("argument {n} is not passed in a register: expected 0 to 5"),
        ));
    }
    Ok(n as u8)
}

fn optional_argument(source: &Source, arg: &Option<Spanned<i64>>) -> Result<u8> {
    arg.as_ref().map_or(Ok(NO_ARG), |arg| argument(source, arg))
}

pub(super) fn compile_buffer(source: &Source, raw: &Spanned<RawBuffer>) -> Result<BufferSpec> {
    let span = raw.span();
    let raw = raw.get_ref();
    let mode = match raw.at.get_ref().as_str() {
        "entry" => BufferMode::Entry,
        "return" => BufferMode::Return,
        "close" => BufferMode::Close,
        other => {
            return Err(source.error(
                raw.at.span(),
                format!("buffer at `{other}`: expected \"entry\", \"return\" or \"close\""),
            ));
        }
    };
    let mut spec = BufferSpec {
        mode,
        connection_arg: optional_argument(source, &raw.connection)?,
        ..BufferSpec::NONE
    };
    if mode == BufferMode::Close {
        return Ok(spec);
    }
    let Some(data) = &raw.data else {
        return Err(source.error(span, "expected `data = N`: the argument holding the buffer"));
    };
    spec.data_arg = argument(source, data)?;
    spec.length_out_arg = optional_argument(source, &raw.length_out)?;
    spec.length_arg = compile_length(source, span.clone(), raw, mode, spec.length_out_arg)?;
    spec.length_bytes = match raw.length_type.as_ref().map(|t| t.get_ref().as_str()) {
        None | Some("i32") => 4,
        Some("u64" | "i64") => 8,
        Some(other) => {
            let at = raw.length_type.as_ref().map_or(span.clone(), |t| t.span());
            return Err(source.error(
                at,
                format!("length_type `{other}`: expected \"i32\", \"i64\" or \"u64\""),
            ));
        }
    };
    spec.direction = match raw.direction.as_ref().map(|d| d.get_ref().as_str()) {
        Some("write") => DIRECTION_WRITE,
        Some("read") => DIRECTION_READ,
        _ => {
            let at = raw.direction.as_ref().map_or(span.clone(), |d| d.span());
            return Err(source.error(at, "expected direction = \"write\" or \"read\""));
        }
    };
    spec.max_bytes = match &raw.max_bytes {
        None => DEFAULT_MAX_BYTES,
        Some(max) => u32::try_from(*max.get_ref())
            .ok()
            .filter(|n| (1..=MAX_CAPTURE_BYTES).contains(n))
            .ok_or_else(|| {
                source.error(
                    max.span(),
                    format!("expected max_bytes from 1 to {MAX_CAPTURE_BYTES}"),
                )
            })?,
    };
    Ok(spec)
}

/// The length argument at entry; at return the length comes from the return value
/// (`length = "return"`) or through `length_out`.
fn compile_length(
    source: &Source,
    span: std::ops::Range<usize>,
    raw: &RawBuffer,
    mode: BufferMode,
    length_out: u8,
) -> Result<u8> {
    match (mode, &raw.length) {
        (BufferMode::Entry, Some(length)) => match length.get_ref() {
            Value::Integer(n) => argument(source, &Spanned::new(length.span(), *n)),
            _ => Err(source.error(
                length.span(),
                "at entry, expected `length = N`: the argument holding the length",
            )),
        },
        (BufferMode::Return, Some(length))
            if length.get_ref().as_str() == Some("return") && length_out == NO_ARG =>
        {
            Ok(NO_ARG)
        }
        (BufferMode::Return, None) if length_out != NO_ARG => Ok(NO_ARG),
        (BufferMode::Entry, None) => Err(source.error(span, "expected `length = N` at entry")),
        _ => Err(source.error(
            span,
            "at return, expected exactly one of `length = \"return\"` or `length_out = N`",
        )),
    }
}

pub(super) fn compile_price(source: &Source, raw: &Spanned<RawPrice>) -> Result<Price> {
    let raw = raw.get_ref();
    let model = Pattern::new(raw.model.get_ref())
        .map_err(|error| source.error(raw.model.span(), format!("expected a glob: {error}")))?;
    let price = |value: &Spanned<f64>| {
        let n = *value.get_ref();
        if n.is_finite() && n >= 0.0 {
            Ok(n)
        } else {
            Err(source.error(
                value.span(),
                "expected a price of 0 or more USD per million tokens",
            ))
        }
    };
    Ok(Price {
        model,
        input_per_million: price(&raw.input)?,
        output_per_million: price(&raw.output)?,
    })
}
