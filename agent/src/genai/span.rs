//! An LLM call as an OpenTelemetry GenAI client span: `{operation} {model}`, kind CLIENT, the
//! `gen_ai.*` attributes, `server.*`, `error.type`; its parent is the probed call that was
//! active on the thread when the request was written (from the kernel's shadow stack). Prompt
//! and completion go on it only with `--capture-content`, cut to [`MAX_CONTENT_BYTES`].

use std::borrow::Cow;

use opentelemetry::{
    Array, InstrumentationScope, KeyValue, StringValue, Value,
    trace::{SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState},
};
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator, SpanData, SpanEvents, SpanLinks};

use super::{LlmCall, metrics::LlmMetrics};
use crate::spans::WallClock;

/// Bytes of prompt or completion text kept on a span.
pub(crate) const MAX_CONTENT_BYTES: usize = 8 << 10;

pub(crate) struct LlmSpans {
    clock: WallClock,
    scope: InstrumentationScope,
    ids: RandomIdGenerator,
    capture_content: bool,
}

impl LlmSpans {
    pub(crate) fn new(capture_content: bool) -> Self {
        Self {
            clock: WallClock::measure(),
            scope: InstrumentationScope::builder("flowtap")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
            ids: RandomIdGenerator::default(),
            capture_content,
        }
    }

    /// The call's span; texts cut to fit are counted in `metrics`.
    pub(crate) fn span(&self, call: &LlmCall, metrics: &mut LlmMetrics) -> SpanData {
        let context = &call.context;
        // Inside a probed call: that call's trace. Outermost: a trace of its own.
        let (trace_id, parent) = if context.parent_span_id != 0 {
            let id = (u128::from(context.trace_id[0]) << 64) | u128::from(context.trace_id[1]);
            (TraceId::from(id), SpanId::from(context.parent_span_id))
        } else {
            (self.ids.new_trace_id(), SpanId::INVALID)
        };
        let operation = call.api.operation();
        let model = call.request_model.as_deref().unwrap_or(call.model());
        let error = call.error_type();
        SpanData {
            span_context: SpanContext::new(
                trace_id,
                self.ids.new_span_id(),
                TraceFlags::SAMPLED,
                false,
                TraceState::default(),
            ),
            parent_span_id: parent,
            parent_span_is_remote: false,
            span_kind: SpanKind::Client,
            name: Cow::Owned(format!("{operation} {model}")),
            start_time: self.clock.wall(call.start_ns),
            end_time: self.clock.wall(call.end_ns.max(call.start_ns)),
            attributes: self.attributes(call, metrics),
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: match error {
                Some(error) => Status::error(error),
                None => Status::Unset,
            },
            instrumentation_scope: self.scope.clone(),
        }
    }

    fn attributes(&self, call: &LlmCall, metrics: &mut LlmMetrics) -> Vec<KeyValue> {
        let response = &call.response;
        let mut attributes = vec![
            KeyValue::new("gen_ai.operation.name", call.api.operation()),
            KeyValue::new("gen_ai.provider.name", call.api.provider()),
            KeyValue::new("http.response.status_code", i64::from(call.status)),
            KeyValue::new("server.port", i64::from(call.server_port)),
            KeyValue::new("thread.id", i64::from(call.context.tid)),
        ];
        let optional = [
            ("gen_ai.request.model", call.request_model.clone()),
            ("gen_ai.response.model", response.model.clone()),
            ("gen_ai.response.id", response.id.clone()),
            ("server.address", call.server_address.clone()),
            ("error.type", call.error_type()),
        ];
        for (key, value) in optional {
            if let Some(value) = value {
                attributes.push(KeyValue::new(key, value));
            }
        }
        for (key, tokens) in [
            ("gen_ai.usage.input_tokens", response.input_tokens),
            ("gen_ai.usage.output_tokens", response.output_tokens),
        ] {
            if let Some(tokens) = tokens {
                attributes.push(KeyValue::new(key, tokens as i64));
            }
        }
        if !response.finish_reasons.is_empty() {
            let reasons: Vec<StringValue> = response
                .finish_reasons
                .iter()
                .map(|r| StringValue::from(r.clone()))
                .collect();
            attributes.push(KeyValue::new(
                "gen_ai.response.finish_reasons",
                Value::Array(Array::String(reasons)),
            ));
        }
        if let Some(first) = call.time_to_first_chunk_ns() {
            attributes.push(KeyValue::new(
                "gen_ai.response.time_to_first_chunk",
                first as f64 / 1e9,
            ));
        }
        if self.capture_content {
            if let Some(prompt) = &call.prompt {
                attributes.push(KeyValue::new("gen_ai.input.messages", cut(prompt, metrics)));
            }
            if !response.content.is_empty() {
                attributes.push(KeyValue::new(
                    "gen_ai.output.messages",
                    cut(&response.content, metrics),
                ));
            }
        }
        attributes
    }
}

/// At most [`MAX_CONTENT_BYTES`], not splitting a character; a text cut is counted.
fn cut(text: &str, metrics: &mut LlmMetrics) -> String {
    if text.len() > MAX_CONTENT_BYTES {
        metrics.content_truncated += 1;
    }
    let mut end = text.len().min(MAX_CONTENT_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}
