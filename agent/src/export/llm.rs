//! The LLM metrics and the byte capture's counters in the Prometheus text format.

use prometheus::proto::{Bucket, Histogram as ProtoHistogram, Metric, MetricFamily, MetricType};

use super::prometheus::{counter_metric, family, label_pairs};
use crate::{
    genai::metrics::{Dropped, GenAiKey, Histogram, LlmMetrics},
    kernel_counters::Snapshot,
};

/// `flowtap_capture_bytes_total{outcome}` and `flowtap_capture_calls_skipped_total{reason}`,
/// when anything was captured.
pub(super) fn capture_families(service: &str, snapshot: &Snapshot) -> Vec<MetricFamily> {
    if snapshot.capture.iter().all(|(_, n)| *n == 0) {
        return Vec::new();
    }
    let mut bytes = Vec::new();
    let mut calls = Vec::new();
    for (count, n) in &snapshot.capture {
        let name = count.name();
        match name.strip_suffix("_bytes") {
            Some(outcome) => bytes.push(counter_metric(
                &[("service_name", service), ("outcome", outcome)],
                *n as f64,
            )),
            None => calls.push(counter_metric(
                &[
                    ("service_name", service),
                    ("reason", name.trim_end_matches("_calls")),
                ],
                *n as f64,
            )),
        }
    }
    vec![
        family(
            "flowtap_capture_bytes_total",
            "Bytes of captured buffers: offered = delivered + ring_full + over_cap + unreadable.",
            MetricType::COUNTER,
            bytes,
        ),
        family(
            "flowtap_capture_calls_skipped_total",
            "Calls not captured: connection marked quiet (not an LLM API), entry state lost, or a connection's end lost.",
            MetricType::COUNTER,
            calls,
        ),
    ]
}

/// Every LLM family, each series labelled with the service.
pub(super) fn families(service: &str, llm: &LlmMetrics) -> Vec<MetricFamily> {
    let mut families = model_families(service, llm);
    families.extend([
        family(
            "gen_ai_client_operation_duration_seconds",
            "GenAI operation duration (OpenTelemetry semantic conventions).",
            MetricType::HISTOGRAM,
            genai_series(service, &llm.operation_duration),
        ),
        family(
            "gen_ai_client_token_usage",
            "Tokens used per GenAI operation, by token type (OpenTelemetry semantic conventions).",
            MetricType::HISTOGRAM,
            genai_series(service, &llm.token_usage),
        ),
        health(service, llm),
        family(
            "flowtap_llm_content_truncated_total",
            "Prompt or completion texts cut to fit a span (--capture-content).",
            MetricType::COUNTER,
            vec![counter_metric(
                &[("service_name", service)],
                llm.content_truncated as f64,
            )],
        ),
    ]);
    families
}

/// The per-model families in-process APM users know.
fn model_families(service: &str, llm: &LlmMetrics) -> Vec<MetricFamily> {
    let mut requests = Vec::new();
    let mut tokens = Vec::new();
    let mut cost = Vec::new();
    let mut durations = Vec::new();
    let mut first_tokens = Vec::new();
    for (model, totals) in &llm.models {
        let base = [("service_name", service), ("model", model.as_str())];
        for (status, n) in &totals.requests {
            let status = status.to_string();
            let labels = [base[0], base[1], ("status", status.as_str())];
            requests.push(counter_metric(&labels, *n as f64));
        }
        for (kind, n) in [
            ("prompt", totals.prompt_tokens),
            ("completion", totals.completion_tokens),
        ] {
            tokens.push(counter_metric(
                &[base[0], base[1], ("kind", kind)],
                n as f64,
            ));
        }
        cost.push(counter_metric(&base, totals.cost_usd));
        durations.extend(totals.duration.as_ref().map(|h| histogram(&base, h)));
        first_tokens.extend(
            totals
                .time_to_first_token
                .as_ref()
                .map(|h| histogram(&base, h)),
        );
    }
    vec![
        family(
            "llm_requests_total",
            "LLM API calls, by model and HTTP status.",
            MetricType::COUNTER,
            requests,
        ),
        family(
            "llm_tokens_total",
            "Tokens the LLM API reported, by model and kind (prompt, completion).",
            MetricType::COUNTER,
            tokens,
        ),
        family(
            "llm_cost_total",
            "Cost of LLM calls in USD, by model, from the profile's price table.",
            MetricType::COUNTER,
            cost,
        ),
        family(
            "llm_request_duration_seconds",
            "Duration of LLM calls from the request's first byte written to the response's last byte read.",
            MetricType::HISTOGRAM,
            durations,
        ),
        family(
            "llm_time_to_first_token_seconds",
            "Streamed LLM calls: from the request to the first chunk of the answer.",
            MetricType::HISTOGRAM,
            first_tokens,
        ),
    ]
}

fn genai_series(
    service: &str,
    series: &std::collections::BTreeMap<GenAiKey, Histogram>,
) -> Vec<Metric> {
    series
        .iter()
        .map(|(key, h)| {
            let mut labels = vec![
                ("service_name", service),
                ("gen_ai_operation_name", key.operation),
                ("gen_ai_provider_name", key.provider),
                ("gen_ai_request_model", key.request_model.as_str()),
                ("gen_ai_response_model", key.response_model.as_str()),
            ];
            if !key.token_type.is_empty() {
                labels.push(("gen_ai_token_type", key.token_type));
            }
            histogram(&labels, h)
        })
        .collect()
}

/// What the decoder could not use, and its caps.
fn health(service: &str, llm: &LlmMetrics) -> MetricFamily {
    let mut metrics: Vec<Metric> = Dropped::ALL
        .iter()
        .map(|reason| {
            let n = llm.dropped.get(reason).copied().unwrap_or(0);
            counter_metric(
                &[("service_name", service), ("reason", reason.name())],
                n as f64,
            )
        })
        .collect();
    metrics.push(counter_metric(
        &[("service_name", service), ("reason", "model_label_capped")],
        llm.models_capped as f64,
    ));
    family(
        "flowtap_llm_dropped_total",
        "Captured HTTP messages not decoded as LLM calls, by reason (gap: bytes lost in the kernel or past the per-call cap).",
        MetricType::COUNTER,
        metrics,
    )
}

fn histogram(labels: &[(&str, &str)], h: &Histogram) -> Metric {
    let mut cumulative = 0;
    let buckets = h
        .bounds
        .iter()
        .zip(&h.counts)
        .map(|(bound, count)| {
            cumulative += count;
            let mut bucket = Bucket::default();
            bucket.set_upper_bound(*bound);
            bucket.set_cumulative_count(cumulative);
            bucket
        })
        .collect();
    let mut histogram = ProtoHistogram::default();
    histogram.set_sample_count(h.count);
    histogram.set_sample_sum(h.sum);
    histogram.set_bucket(buckets);
    let mut metric = Metric::from_label(label_pairs(labels));
    metric.set_histogram(histogram);
    metric
}
