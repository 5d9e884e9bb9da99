//! The LLM metrics, exact for every decoded call whatever the span sampling: the names users
//! know from in-process APM (`llm_requests_total{model,status}`, `llm_tokens_total{model,kind}`,
//! `llm_cost_total{model}`, `llm_request_duration_seconds{model}`,
//! `llm_time_to_first_token_seconds{model}`) and OpenTelemetry's GenAI client histograms
//! (`gen_ai_client_token_usage`, `gen_ai_client_operation_duration_seconds`). Label values
//! come from the target's traffic, so their number is capped (the rest fold into `other`).

use std::collections::{BTreeMap, HashSet};

use serde::Serialize;

use super::LlmCall;
use crate::profile::Price;

/// Distinct models kept as label values; further ones are `other`.
const MAX_MODELS: usize = 100;

/// Seconds: LLM calls take from tens of milliseconds to minutes (OTel's advice for GenAI).
const DURATION_BOUNDS: [f64; 14] = [
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
];

/// Tokens (OTel's advice for `gen_ai.client.token.usage`).
const TOKEN_BOUNDS: [f64; 14] = [
    1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0,
    16777216.0, 67108864.0,
];

/// A histogram with fixed bounds.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Histogram {
    /// Per bound, not cumulative; one more for +Inf.
    pub counts: Vec<u64>,
    pub sum: f64,
    pub count: u64,
    #[serde(skip)]
    pub bounds: &'static [f64],
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
            count: 0,
            bounds,
        }
    }

    fn observe(&mut self, value: f64) {
        let at = self
            .bounds
            .iter()
            .position(|bound| value <= *bound)
            .unwrap_or(self.bounds.len());
        self.counts[at] += 1;
        self.sum += value;
        self.count += 1;
    }
}

/// The OTel GenAI attributes a histogram series is split by.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub(crate) struct GenAiKey {
    pub operation: &'static str,
    pub provider: &'static str,
    pub request_model: String,
    pub response_model: String,
    /// `input` or `output` for token usage; empty for durations.
    pub token_type: &'static str,
}

/// Per model.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct ModelTotals {
    /// By HTTP status code.
    pub requests: BTreeMap<u16, u64>,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cost_usd: f64,
    pub duration: Option<Histogram>,
    pub time_to_first_token: Option<Histogram>,
}

/// Why captured traffic could not become LLM calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Dropped {
    /// Bytes missing in a connection's stream (lost in the kernel or past the per-call cap):
    /// its message in progress is dropped.
    Gap,
    /// A message larger than the per-message bound.
    TooLarge,
    /// Bytes that are not HTTP/1.x (or came mid-message).
    NotHttp,
    /// HTTP/2: not decoded.
    Http2,
    /// A body whose content coding could not be decoded.
    BadEncoding,
    /// Connection state evicted to bound memory.
    Evicted,
    /// A response without a request to answer.
    Unmatched,
}

impl Dropped {
    pub(crate) const ALL: [Dropped; 7] = [
        Dropped::Gap,
        Dropped::TooLarge,
        Dropped::NotHttp,
        Dropped::Http2,
        Dropped::BadEncoding,
        Dropped::Evicted,
        Dropped::Unmatched,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Dropped::Gap => "gap",
            Dropped::TooLarge => "too_large",
            Dropped::NotHttp => "not_http",
            Dropped::Http2 => "http2",
            Dropped::BadEncoding => "bad_encoding",
            Dropped::Evicted => "evicted",
            Dropped::Unmatched => "unmatched",
        }
    }
}

/// Everything counted so far.
#[derive(Debug, Default)]
pub(crate) struct LlmMetrics {
    prices: Vec<Price>,
    pub models: BTreeMap<String, ModelTotals>,
    pub token_usage: BTreeMap<GenAiKey, Histogram>,
    pub operation_duration: BTreeMap<GenAiKey, Histogram>,
    pub dropped: BTreeMap<Dropped, u64>,
    /// Connections marked quiet (not an LLM API).
    pub quiet_connections: u64,
    /// Model names folded into `other` by the cap.
    pub models_capped: u64,
    /// Prompt or completion texts cut to fit a span (`--capture-content`).
    pub content_truncated: u64,
    seen_models: HashSet<String>,
}

impl LlmMetrics {
    pub(crate) fn new(prices: Vec<Price>) -> Self {
        Self {
            prices,
            ..Self::default()
        }
    }

    pub(crate) fn count_drop(&mut self, reason: Dropped) {
        *self.dropped.entry(reason).or_default() += 1;
    }

    /// A label value for `model`, capped.
    fn label(&mut self, model: &str) -> String {
        if model.is_empty() || self.seen_models.contains(model) {
            return model.to_string();
        }
        if self.seen_models.len() >= MAX_MODELS {
            self.models_capped += 1;
            return "other".to_string();
        }
        self.seen_models.insert(model.to_string());
        model.to_string()
    }

    /// USD for the call's tokens by the first price whose glob matches its model.
    pub(crate) fn cost(&self, model: &str, input: u64, output: u64) -> f64 {
        self.prices
            .iter()
            .find(|price| price.model.matches(model))
            .map_or(0.0, |price| {
                (input as f64 * price.input_per_million + output as f64 * price.output_per_million)
                    / 1e6
            })
    }

    pub(crate) fn record(&mut self, call: &LlmCall) {
        let model = self.label(call.model());
        let request_model = self.label(call.request_model.as_deref().unwrap_or(""));
        let response_model = self.label(call.response.model.as_deref().unwrap_or(""));
        let (input, output) = (
            call.response.input_tokens.unwrap_or(0),
            call.response.output_tokens.unwrap_or(0),
        );
        let cost = self.cost(call.model(), input, output);
        let seconds = call.duration_ns() as f64 / 1e9;
        let totals = self.models.entry(model).or_default();
        *totals.requests.entry(call.status).or_default() += 1;
        totals.prompt_tokens += input;
        totals.completion_tokens += output;
        totals.cost_usd += cost;
        totals
            .duration
            .get_or_insert_with(|| Histogram::new(&DURATION_BOUNDS))
            .observe(seconds);
        if let Some(first) = call.time_to_first_chunk_ns() {
            totals
                .time_to_first_token
                .get_or_insert_with(|| Histogram::new(&DURATION_BOUNDS))
                .observe(first as f64 / 1e9);
        }
        let key = GenAiKey {
            operation: call.api.operation(),
            provider: call.api.provider(),
            request_model,
            response_model,
            token_type: "",
        };
        self.operation_duration
            .entry(key.clone())
            .or_insert_with(|| Histogram::new(&DURATION_BOUNDS))
            .observe(seconds);
        for (token_type, tokens) in [
            ("input", call.response.input_tokens),
            ("output", call.response.output_tokens),
        ] {
            let Some(tokens) = tokens else { continue };
            self.token_usage
                .entry(GenAiKey {
                    token_type,
                    ..key.clone()
                })
                .or_insert_with(|| Histogram::new(&TOKEN_BOUNDS))
                .observe(tokens as f64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::genai::{
        CallContext,
        decode::{Api, ResponseFacts},
    };

    fn call(model: &str, status: u16, input: u64, output: u64, streamed: bool) -> LlmCall {
        LlmCall {
            api: Api::ChatCompletions,
            pid: 1,
            context: CallContext::default(),
            request_model: Some(model.to_string()),
            streamed,
            status,
            response: ResponseFacts {
                input_tokens: Some(input),
                output_tokens: Some(output),
                ..ResponseFacts::default()
            },
            start_ns: 1_000_000_000,
            first_body_ns: Some(1_200_000_000),
            end_ns: 3_000_000_000,
            server_address: None,
            server_port: 443,
            prompt: None,
        }
    }

    #[test]
    fn calls_add_up_per_model_with_cost_from_the_first_matching_price() {
        let prices = vec![
            Price {
                model: glob::Pattern::new("gpt-4o-mini*").unwrap(),
                input_per_million: 0.15,
                output_per_million: 0.60,
            },
            Price {
                model: glob::Pattern::new("gpt-4o*").unwrap(),
                input_per_million: 2.5,
                output_per_million: 10.0,
            },
        ];
        let mut metrics = LlmMetrics::new(prices);
        metrics.record(&call("gpt-4o-mini", 200, 1_000_000, 1_000_000, false));
        metrics.record(&call("gpt-4o", 200, 1000, 100, true));
        metrics.record(&call("gpt-4o", 429, 0, 0, false));
        let mini = &metrics.models["gpt-4o-mini"];
        assert!((mini.cost_usd - 0.75).abs() < 1e-9);
        let big = &metrics.models["gpt-4o"];
        assert_eq!(big.requests, BTreeMap::from([(200, 1), (429, 1)]));
        assert_eq!((big.prompt_tokens, big.completion_tokens), (1000, 100));
        assert!((big.cost_usd - 0.0035).abs() < 1e-9);
        let duration = big.duration.as_ref().unwrap();
        assert_eq!((duration.count, duration.sum), (2, 4.0));
        let first = big.time_to_first_token.as_ref().unwrap();
        assert_eq!(first.count, 1, "only the streamed call has a first token");
        assert!((first.sum - 0.2).abs() < 1e-9);
        let input_usage: u64 = metrics
            .token_usage
            .iter()
            .filter(|(key, _)| key.token_type == "input")
            .map(|(_, h)| h.count)
            .sum();
        assert_eq!(input_usage, 3);
    }

    #[test]
    fn models_past_the_cap_are_other_and_counted() {
        let mut metrics = LlmMetrics::new(Vec::new());
        for n in 0..MAX_MODELS + 5 {
            metrics.record(&call(&format!("m{n}"), 200, 1, 1, false));
        }
        assert_eq!(metrics.models["other"].requests[&200], 5);
        assert!(metrics.models_capped >= 5);
    }
}
