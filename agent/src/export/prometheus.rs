//! `/metrics`: the kernel's exact counts and histograms, read at scrape time and exposed in the
//! Prometheus text format, with the workflow metrics and the agent's own health.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex, RwLock},
    time::Instant,
};

use prometheus::{
    Encoder, TextEncoder,
    proto::{Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType},
};

use crate::{
    export::{metrics_server::ServerCounts, otlp::SpanCounts},
    genai::metrics::LlmMetrics,
    kernel_counters::{FunctionStats, Snapshot},
    loader::{Probes, ProcessCount},
    plan::Plan,
    profile_metrics::{FAILURE, LabelCap, ProfileMetrics, SUCCESS, Series, UNWOUND},
    workloads::Workloads,
};

#[derive(Debug, thiserror::Error)]
#[error("cannot serve metrics on {addr}: {error}; choose another address with --metrics-addr")]
pub(crate) struct BindError {
    addr: SocketAddr,
    #[source]
    error: std::io::Error,
}

impl BindError {
    #[cfg(test)]
    pub(crate) fn new(addr: SocketAddr, error: std::io::Error) -> Self {
        Self { addr, error }
    }
}

/// Why a scrape failed; the scraper gets it as the body of a 500.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ScrapeError {
    #[error(transparent)]
    Map(#[from] aya::maps::MapError),
    #[error(transparent)]
    Encode(#[from] prometheus::Error),
    #[error(transparent)]
    Utf8(#[from] std::string::FromUtf8Error),
}

/// Binds early, before probes are attached, so a busy port fails fast.
pub(crate) fn bind(addr: SocketAddr) -> Result<std::net::TcpListener, BindError> {
    let listener = std::net::TcpListener::bind(addr).map_err(|error| BindError { addr, error })?;
    listener
        .set_nonblocking(true)
        .map_err(|error| BindError { addr, error })?;
    Ok(listener)
}

/// What a scrape reads.
pub(crate) struct Exporter {
    pub probes: Arc<Mutex<Probes>>,
    pub plan: Arc<RwLock<Plan>>,
    pub labels: Arc<Mutex<LabelCap>>,
    /// `service_name` label on every series.
    pub service: String,
    /// How `flowtap_processes_traced` is counted.
    pub processes: ProcessCount,
    /// The span stream's counts, when spans are exported.
    pub span_counts: Option<Arc<SpanCounts>>,
    /// Labels series with the workload (pod) of the cgroup the kernel counted them in.
    pub workloads: Arc<dyn Workloads>,
    last_scrape_seconds: Mutex<f64>,
    /// Per-function series kept; the rest fold into `function="other"`.
    max_function_series: usize,
    /// Clients the HTTP server turned away.
    pub server: ServerCounts,
    /// LLM calls decoded from captured bytes, when a profile captures them.
    llm: Option<Arc<Mutex<LlmMetrics>>>,
}

/// Per-function series kept by default: a scrape of a target with 20,000 called functions
/// would otherwise be hundreds of megabytes.
pub(crate) const DEFAULT_MAX_FUNCTION_SERIES: usize = 2000;

impl Exporter {
    pub(crate) fn new(
        probes: Arc<Mutex<Probes>>,
        plan: Arc<RwLock<Plan>>,
        labels: Arc<Mutex<LabelCap>>,
        service: String,
        processes: ProcessCount,
        span_counts: Option<Arc<SpanCounts>>,
        workloads: Arc<dyn Workloads>,
    ) -> Self {
        Self {
            probes,
            plan,
            labels,
            service,
            processes,
            span_counts,
            workloads,
            last_scrape_seconds: Mutex::new(0.0),
            max_function_series: DEFAULT_MAX_FUNCTION_SERIES,
            server: ServerCounts::default(),
            llm: None,
        }
    }

    /// Serves the LLM metrics too.
    pub(crate) fn with_llm(mut self, llm: Option<Arc<Mutex<LlmMetrics>>>) -> Self {
        self.llm = llm;
        self
    }

    /// Keeps at most `max` per-function series (`--max-function-series`).
    pub(crate) fn with_max_function_series(mut self, max: usize) -> Self {
        self.max_function_series = max;
        self
    }

    /// The whole exposition, as text.
    pub(crate) fn render(&self) -> Result<String, ScrapeError> {
        let started = Instant::now();
        // Probes before the plan: the order the library follower takes them in.
        let probes = self.probes.lock().expect("probes lock");
        let plan = self.plan.read().expect("plan lock");
        let (snapshot, processes, map_entries) = {
            let processes = probes.processes_traced(self.processes)?;
            let map_entries = probes.map_entries()?;
            (Snapshot::read(&probes, &plan)?, processes, map_entries)
        };
        drop(probes);
        let mut labels = self.labels.lock().expect("labels lock");
        let declared =
            ProfileMetrics::derive(&snapshot, &plan, &mut labels, self.workloads.as_ref());
        let attached = plan.probes.len();
        drop(plan);
        let mut families = self.function_families(&snapshot);
        families.extend(self.profile_families(&declared));
        families.extend(self.health_families(&snapshot, &labels, processes, attached));
        families.extend(super::llm::capture_families(&self.service, &snapshot));
        if let Some(llm) = &self.llm {
            let llm = llm.lock().expect("llm metrics lock");
            families.extend(super::llm::families(&self.service, &llm));
        }
        families.push(family(
            "flowtap_kernel_map_entries",
            "Entries of the kernel maps that grow with threads, processes, hand-offs and labels.",
            MetricType::GAUGE,
            map_entries
                .iter()
                .map(|(map, n)| gauge(&[("map", map)], *n as f64))
                .collect(),
        ));
        drop(labels);
        // The text format has no empty families (a series appears with its first value).
        families.retain(|family| !family.get_metric().is_empty());
        let families = merge_same_names(families);
        let mut text = Vec::new();
        TextEncoder::new().encode(&families, &mut text)?;
        *self.last_scrape_seconds.lock().expect("scrape lock") = started.elapsed().as_secs_f64();
        Ok(String::from_utf8(text)?)
    }

    fn labels<'a>(&'a self, pairs: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
        let mut labels = vec![("service_name", self.service.as_str())];
        labels.extend_from_slice(pairs);
        labels
    }

    fn function_families(&self, snapshot: &Snapshot) -> Vec<MetricFamily> {
        let mut calls = Vec::new();
        let mut durations = Vec::new();
        let (kept, other) = fold_functions(&snapshot.functions, self.max_function_series);
        let folded = snapshot.functions.len() - kept.len();
        for f in kept.iter().chain(other.as_ref()) {
            let Some(workload) = self.workloads.metric_labels(f.cgroup) else {
                continue;
            };
            let mut base = vec![
                ("function", f.function.as_str()),
                ("object", f.object.as_str()),
            ];
            base.extend(workload.iter().map(|(k, v)| (k.as_str(), v.as_str())));
            let with_status = |status| {
                let mut pairs = base.clone();
                pairs.push(("status", status));
                pairs
            };
            calls.push(counter_metric(
                &self.labels(&with_status(SUCCESS)),
                (f.calls - f.errors - f.unwound) as f64,
            ));
            calls.push(counter_metric(
                &self.labels(&with_status(FAILURE)),
                f.errors as f64,
            ));
            calls.push(counter_metric(
                &self.labels(&with_status(UNWOUND)),
                f.unwound as f64,
            ));
            durations.push(histogram(&self.labels(&base), f));
        }
        vec![
            family(
                "flowtap_function_series_folded",
                "Per-function series folded into function=\"other\" by --max-function-series.",
                MetricType::GAUGE,
                vec![gauge(&[], folded as f64)],
            ),
            family(
                "flowtap_function_calls_total",
                "Calls of each probed function, by outcome, counted in the kernel.",
                MetricType::COUNTER,
                calls,
            ),
            family(
                "flowtap_function_duration_seconds",
                "Duration of each probed function, from the kernel's histogram.",
                MetricType::HISTOGRAM,
                durations,
            ),
        ]
    }

    fn profile_families(&self, declared: &ProfileMetrics) -> Vec<MetricFamily> {
        declared
            .families
            .iter()
            .map(|(name, declared)| {
                let metrics = declared
                    .series
                    .iter()
                    .map(|(labels, series)| {
                        let pairs: Vec<(&str, &str)> = labels
                            .iter()
                            .map(|(k, v)| (k.as_str(), v.as_str()))
                            .collect();
                        match series {
                            Series::Counter(value) => counter_metric(&self.labels(&pairs), *value),
                            Series::Histogram(stats) => histogram(&self.labels(&pairs), stats),
                        }
                    })
                    .collect();
                let help = if declared.help.is_empty() {
                    "Declared by a flowtap profile."
                } else {
                    &declared.help
                };
                let kind = if declared.is_counter {
                    MetricType::COUNTER
                } else {
                    MetricType::HISTOGRAM
                };
                family(name, help, kind, metrics)
            })
            .collect()
    }

    fn health_families(
        &self,
        snapshot: &Snapshot,
        labels: &LabelCap,
        processes: u64,
        attached: usize,
    ) -> Vec<MetricFamily> {
        let lost = snapshot
            .losses
            .iter()
            .map(|(loss, n)| counter_metric(&[("reason", loss.name())], *n as f64))
            .collect();
        let capped = labels
            .refused()
            .map(|(metric, n)| counter_metric(&[("metric", metric)], n as f64))
            .collect();
        let last_scrape = *self.last_scrape_seconds.lock().expect("scrape lock");
        let mut families = self.span_families();
        families.extend([
            family(
                "flowtap_events_lost_total",
                "Calls the kernel could not fully record, by reason.",
                MetricType::COUNTER,
                lost,
            ),
            family(
                "flowtap_probes_attached",
                "Functions with probes attached.",
                MetricType::GAUGE,
                vec![gauge(&[], attached as f64)],
            ),
            family(
                "flowtap_processes_traced",
                "Processes whose calls are being counted.",
                MetricType::GAUGE,
                vec![gauge(&[], processes as f64)],
            ),
            family(
                "flowtap_label_values_capped_total",
                "Distinct label values folded into \"other\" by the per-metric cap.",
                MetricType::COUNTER,
                capped,
            ),
            family(
                "flowtap_metrics_clients_turned_away_total",
                "Metrics clients closed by the server's limits: evicted while idle, or refused.",
                MetricType::COUNTER,
                vec![
                    counter_metric(
                        &[("reason", "evicted")],
                        SpanCounts::get(&self.server.evicted) as f64,
                    ),
                    counter_metric(
                        &[("reason", "refused")],
                        SpanCounts::get(&self.server.refused) as f64,
                    ),
                ],
            ),
            family(
                "flowtap_scrape_duration_seconds",
                "Time the previous scrape took to read the kernel and encode.",
                MetricType::GAUGE,
                vec![gauge(&[], last_scrape)],
            ),
        ]);
        families
    }

    fn span_families(&self) -> Vec<MetricFamily> {
        let Some(counts) = &self.span_counts else {
            return Vec::new();
        };
        [
            (
                "flowtap_spans_received_total",
                "Spans read from the kernel.",
                &counts.received,
            ),
            (
                "flowtap_spans_exported_total",
                "Spans the OTLP collector accepted.",
                &counts.exported,
            ),
            (
                "flowtap_spans_dropped_total",
                "Spans dropped: export queue full, or unsent at exit.",
                &counts.dropped,
            ),
            (
                "flowtap_span_export_errors_total",
                "Failed OTLP export attempts (each retried).",
                &counts.export_errors,
            ),
            (
                "flowtap_spans_file_dropped_total",
                "Spans not written to the --spans-out file after a write error.",
                &counts.file_dropped,
            ),
        ]
        .into_iter()
        .map(|(name, help, counter)| {
            family(
                name,
                help,
                MetricType::COUNTER,
                vec![counter_metric(&[], SpanCounts::get(counter) as f64)],
            )
        })
        .collect()
    }
}

/// One family per name: a profile may declare a metric the LLM decoder also exports
/// (`llm_tokens_total` of a runtime that passes tokens as arguments), and the text format
/// allows a name once.
fn merge_same_names(families: Vec<MetricFamily>) -> Vec<MetricFamily> {
    let mut merged: Vec<MetricFamily> = Vec::with_capacity(families.len());
    for mut family in families {
        match merged.iter_mut().find(|f| f.name() == family.name()) {
            Some(first) => first.mut_metric().extend(family.take_metric()),
            None => merged.push(family),
        }
    }
    merged
}

/// The first `max` series (the snapshot lists the most total time first) and the rest summed
/// into one `function="other"` series.
fn fold_functions(
    functions: &[FunctionStats],
    max: usize,
) -> (&[FunctionStats], Option<FunctionStats>) {
    if functions.len() <= max {
        return (functions, None);
    }
    let (kept, rest) = functions.split_at(max);
    let mut other = FunctionStats {
        function: "other".into(),
        object: "other".into(),
        cgroup: 0,
        ..rest[0].clone()
    };
    for f in &rest[1..] {
        other.merge(f);
    }
    (kept, Some(other))
}

pub(super) fn family(
    name: &str,
    help: &str,
    kind: MetricType,
    metrics: Vec<Metric>,
) -> MetricFamily {
    let mut family = MetricFamily::default();
    family.set_name(name.to_string());
    family.set_help(help.to_string());
    family.set_field_type(kind);
    family.set_metric(metrics);
    family
}

pub(super) fn label_pairs(pairs: &[(&str, &str)]) -> Vec<LabelPair> {
    pairs
        .iter()
        .map(|(name, value)| {
            let mut pair = LabelPair::default();
            pair.set_name(name.to_string());
            pair.set_value(value.to_string());
            pair
        })
        .collect()
}

pub(super) fn counter_metric(labels: &[(&str, &str)], value: f64) -> Metric {
    let mut counter = Counter::default();
    counter.set_value(value);
    let mut metric = Metric::from_label(label_pairs(labels));
    metric.set_counter(counter);
    metric
}

pub(super) fn gauge(labels: &[(&str, &str)], value: f64) -> Metric {
    let mut gauge = Gauge::default();
    gauge.set_value(value);
    let mut metric = Metric::from_label(label_pairs(labels));
    metric.set_gauge(gauge);
    metric
}

/// Exposed bucket bounds: four per power of two (`16, 20, 24, 28 << k` ns, each a boundary of the
/// kernel's 16-per-octave buckets, so cumulative counts are exact), from about 1 µs to 69 s.
pub(crate) fn exposed_bounds_ns() -> Vec<u64> {
    let mut bounds: Vec<u64> = (6..32)
        .flat_map(|shift| [16u64, 20, 24, 28].map(|m| m << shift))
        .collect();
    bounds.push(32 << 31);
    bounds
}

fn histogram(labels: &[(&str, &str)], stats: &FunctionStats) -> Metric {
    let mut kernel = stats
        .buckets
        .iter()
        .enumerate()
        .map(|(index, count)| (flowtap_common::histogram::bucket_bounds(index).1, *count))
        .peekable();
    let mut cumulative = 0;
    let buckets = exposed_bounds_ns()
        .into_iter()
        .map(|bound| {
            while let Some((_, count)) = kernel.next_if(|(upper, _)| *upper <= bound) {
                cumulative += count;
            }
            let mut bucket = Bucket::default();
            bucket.set_upper_bound(bound as f64 / 1e9);
            bucket.set_cumulative_count(cumulative);
            bucket
        })
        .collect();
    let mut histogram = Histogram::default();
    histogram.set_sample_count(stats.calls);
    histogram.set_sample_sum(stats.total_ns as f64 / 1e9);
    histogram.set_bucket(buckets);
    let mut metric = Metric::from_label(label_pairs(labels));
    metric.set_histogram(histogram);
    metric
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowtap_common::histogram::{BUCKETS, bucket_bounds};

    #[test]
    fn functions_beyond_the_cap_fold_into_other() {
        let functions: Vec<_> = (1..=5u64)
            .map(|n| FunctionStats::from_durations(&vec![n * 1000; n as usize]))
            .collect();
        let (kept, other) = fold_functions(&functions, 2);
        assert_eq!(kept.len(), 2);
        let other = other.unwrap();
        assert_eq!(other.function, "other");
        assert_eq!(other.calls, 3 + 4 + 5);
        assert_eq!(other.total_ns, (9 + 16 + 25) * 1000);
        assert_eq!(other.buckets.iter().sum::<u64>(), 12);
        assert!(fold_functions(&functions, 5).1.is_none());
    }

    #[test]
    fn exposed_bounds_are_kernel_bucket_boundaries() {
        let boundaries: Vec<u64> = (0..BUCKETS).map(|i| bucket_bounds(i).1).collect();
        for bound in exposed_bounds_ns() {
            assert!(
                boundaries.contains(&bound),
                "{bound} is not a kernel boundary"
            );
        }
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_exact() {
        let durations = [500u64, 1_500, 20_000_000, 20_100_000, 90_000_000_000];
        let stats = FunctionStats::from_durations(&durations);
        let metric = histogram(&[], &stats);
        let h = metric.get_histogram();
        let count_at = |seconds: f64| {
            h.get_bucket()
                .iter()
                .find(|b| b.upper_bound() >= seconds)
                .map(|b| b.cumulative_count())
                .unwrap()
        };
        assert_eq!(count_at(1.024e-6), 1);
        assert_eq!(count_at(16.0e-3), 2); // le 16.78 ms
        assert_eq!(count_at(20.5e-3), 4); // le 20.97 ms
        assert_eq!(h.get_bucket().last().unwrap().cumulative_count(), 4);
        assert_eq!(h.get_sample_count(), 5);
    }
}
