//! OTLP export of spans: a bounded queue, batches, retry with backoff while the collector is
//! down, and an account of every span (exported, dropped, still queued).

use std::{
    collections::VecDeque,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use opentelemetry_otlp::{
    Protocol, SpanExporter, WithExportConfig, WithHttpConfig, WithTonicConfig,
};
use opentelemetry_sdk::{Resource, trace::SpanData, trace::SpanExporter as _};
use tokio::sync::{Notify, watch};

use super::otlp_tls::{TlsError, TlsFiles};

/// Spans waiting for export; beyond this, new spans are dropped (and counted).
pub(crate) const QUEUE_CAPACITY: usize = 65_536;
const BATCH_SIZE: usize = 512;
/// Room the queue keeps when idle: after a burst, a full queue's buffer is given back.
const IDLE_CAPACITY: usize = 4 * BATCH_SIZE;
const MAX_BACKOFF: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum OtlpProtocol {
    #[default]
    Grpc,
    HttpProtobuf,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum OtlpError {
    #[error("cannot set up OTLP export: {0}")]
    Build(#[source] opentelemetry_otlp::ExporterBuildError),
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// Whether spans go to a collector: `endpoint`, or one the environment names.
pub(crate) fn endpoint_configured(endpoint: Option<&str>) -> bool {
    endpoint.is_some()
        || [
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        ]
        .iter()
        .any(|var| std::env::var_os(var).is_some_and(|v| !v.is_empty()))
}

/// Counts of the span stream, shown on /metrics and in the report.
#[derive(Debug, Default)]
pub(crate) struct SpanCounts {
    /// Read from the kernel.
    pub received: AtomicU64,
    pub exported: AtomicU64,
    pub dropped: AtomicU64,
    pub export_errors: AtomicU64,
    /// Not written to the `--spans-out` file after a write error.
    pub file_dropped: AtomicU64,
}

impl SpanCounts {
    pub(crate) fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// Builds the exporter: `endpoint` (else `OTEL_EXPORTER_OTLP_*`), headers from
/// `OTEL_EXPORTER_OTLP_HEADERS`.
pub(crate) fn exporter(
    endpoint: Option<&str>,
    protocol: OtlpProtocol,
) -> Result<SpanExporter, OtlpError> {
    let error = OtlpError::Build;
    let tls = TlsFiles::from_env()?;
    match protocol {
        OtlpProtocol::Grpc => {
            let mut builder = SpanExporter::builder().with_tonic();
            if let Some(endpoint) = endpoint {
                builder = builder.with_endpoint(endpoint);
            }
            if is_https(endpoint) {
                builder = builder.with_tls_config(tls.grpc());
            }
            builder.build().map_err(error)
        }
        OtlpProtocol::HttpProtobuf => {
            let mut builder = SpanExporter::builder()
                .with_http()
                .with_protocol(Protocol::HttpBinary);
            if let Some(endpoint) = endpoint {
                builder = builder.with_endpoint(http_traces_url(endpoint));
            }
            if let Some(client) = tls.http()? {
                builder = builder.with_http_client(client);
            }
            builder.build().map_err(error)
        }
    }
}

/// Whether the collector (given, else from the environment) is reached over TLS.
fn is_https(endpoint: Option<&str>) -> bool {
    collector_url(endpoint).is_some_and(|url| url.to_ascii_lowercase().starts_with("https://"))
}

/// The collector's URL: given, else from the environment.
fn collector_url(endpoint: Option<&str>) -> Option<String> {
    let from_env = || {
        [
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        ]
        .iter()
        .find_map(|var| std::env::var(var).ok().filter(|v| !v.is_empty()))
    };
    endpoint.map(str::to_string).or_else(from_env)
}

fn collector_name(endpoint: Option<&str>) -> String {
    collector_url(endpoint).unwrap_or_else(|| "(the exporter's default endpoint)".into())
}

/// A base URL gets the traces path, as `OTEL_EXPORTER_OTLP_ENDPOINT` does.
fn http_traces_url(endpoint: &str) -> String {
    let after_scheme = endpoint
        .split_once("://")
        .map_or(endpoint, |(_, rest)| rest);
    if after_scheme.trim_end_matches('/').contains('/') {
        endpoint.to_string()
    } else {
        format!("{}/v1/traces", endpoint.trim_end_matches('/'))
    }
}

/// Spans of one process, sharing its resource.
pub(crate) type ProcessSpans = (u32, Resource, SpanData);

/// The queue between the span reader and the export task.
pub(crate) struct SpanQueue {
    queue: Mutex<VecDeque<ProcessSpans>>,
    ready: Notify,
    pub counts: Arc<SpanCounts>,
    /// Spans taken from the queue and not yet accepted: counted as dropped if the run ends.
    in_flight: AtomicU64,
    /// The collector, as messages name it.
    collector: String,
    /// Whether a failed export was already reported on stderr.
    warned: std::sync::atomic::AtomicBool,
}

impl SpanQueue {
    pub(crate) fn new(counts: Arc<SpanCounts>, endpoint: Option<&str>) -> Arc<Self> {
        Arc::new(Self {
            queue: Mutex::new(VecDeque::new()),
            ready: Notify::new(),
            counts,
            in_flight: AtomicU64::new(0),
            collector: collector_name(endpoint),
            warned: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Queues spans; those that do not fit are dropped and counted.
    pub(crate) fn push(&self, spans: impl IntoIterator<Item = ProcessSpans>) {
        let mut queue = self.queue.lock().expect("span queue lock");
        for span in spans {
            if queue.len() < QUEUE_CAPACITY {
                queue.push_back(span);
            } else {
                self.counts.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        drop(queue);
        self.ready.notify_one();
    }

    /// The first failed export, on stderr: a collector that refuses or never answers is seen.
    fn warn_once(&self, error: &opentelemetry_sdk::error::OTelSdkError) {
        if !self.warned.swap(true, Ordering::Relaxed) {
            eprintln!(
                "flowtap: warning: OTLP export to {} failed: {error}; retrying (flowtap_span_export_errors_total counts failures)",
                self.collector
            );
        }
    }

    fn take_batch(&self) -> Vec<ProcessSpans> {
        let mut queue = self.queue.lock().expect("span queue lock");
        let n = queue.len().min(BATCH_SIZE);
        queue.drain(..n).collect()
    }

    fn len(&self) -> usize {
        self.queue.lock().expect("span queue lock").len()
    }

    /// With the queue drained after a burst, gives its buffer and the freed spans' memory back
    /// to the system: the allocator would otherwise keep them (tens of MiB after a million
    /// spans), and an agent's resident set should come back down when its target calms down.
    fn give_back_memory(&self) {
        let mut queue = self.queue.lock().expect("span queue lock");
        if queue.capacity() <= IDLE_CAPACITY {
            return;
        }
        queue.shrink_to(IDLE_CAPACITY);
        drop(queue);
        trim_heap();
    }

    /// Exports until `stop` turns true and the queue is empty, or `stop` turned true
    /// `flush_limit` ago; whatever is left then is counted as dropped.
    pub(crate) async fn run(
        self: Arc<Self>,
        mut exporter: SpanExporter,
        stop: watch::Receiver<bool>,
        flush_limit: Duration,
    ) {
        let mut deadline = stop.clone();
        let stopping = async {
            let _ = deadline.wait_for(|stop| *stop).await;
            tokio::time::sleep(flush_limit).await;
        };
        tokio::select! {
            _ = self.export_loop(&mut exporter, &stop) => {}
            _ = stopping => {}
        }
        // received = exported + dropped: what is queued or in flight now is dropped.
        let left = self.len() as u64 + self.in_flight.swap(0, Ordering::Relaxed);
        self.counts.dropped.fetch_add(left, Ordering::Relaxed);
        if left > 0 {
            eprintln!(
                "flowtap: warning: {left} spans not delivered to the OTLP collector {} at exit (counted as dropped)",
                self.collector
            );
        }
        let _ = exporter.shutdown();
    }

    async fn export_loop(&self, exporter: &mut SpanExporter, stop: &watch::Receiver<bool>) {
        loop {
            let batch = self.take_batch();
            if batch.is_empty() {
                if *stop.borrow() {
                    return;
                }
                self.give_back_memory();
                tokio::select! {
                    _ = self.ready.notified() => {}
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
                continue;
            }
            self.export_with_retry(exporter, batch).await;
        }
    }

    /// Retries with exponential backoff until the collector takes the batch.
    async fn export_with_retry(&self, exporter: &mut SpanExporter, batch: Vec<ProcessSpans>) {
        let mut groups: Vec<(u32, Resource, Vec<SpanData>)> = Vec::new();
        for (pid, resource, span) in batch {
            match groups.iter_mut().find(|(p, _, _)| *p == pid) {
                Some((_, _, spans)) => spans.push(span),
                None => groups.push((pid, resource, vec![span])),
            }
        }
        let total = groups.iter().map(|(_, _, spans)| spans.len() as u64).sum();
        self.in_flight.store(total, Ordering::Relaxed);
        for (_, resource, spans) in groups {
            exporter.set_resource(&resource);
            let mut backoff = Duration::from_millis(100);
            loop {
                match exporter.export(spans.clone()).await {
                    Ok(()) => {
                        // In flight first: at no moment is a span counted twice.
                        self.in_flight
                            .fetch_sub(spans.len() as u64, Ordering::Relaxed);
                        self.counts
                            .exported
                            .fetch_add(spans.len() as u64, Ordering::Relaxed);
                        break;
                    }
                    Err(error) => {
                        self.counts.export_errors.fetch_add(1, Ordering::Relaxed);
                        self.warn_once(&error);
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                }
            }
        }
    }
}

/// Returns the allocator's free memory to the system (glibc keeps freed memory in its arenas).
fn trim_heap() {
    // SAFETY: malloc_trim has no preconditions; it only walks the allocator's own free lists.
    unsafe { libc::malloc_trim(0) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_get_the_traces_path() {
        assert_eq!(http_traces_url("http://c:4318"), "http://c:4318/v1/traces");
        assert_eq!(http_traces_url("http://c:4318/"), "http://c:4318/v1/traces");
        assert_eq!(
            http_traces_url("http://c:4318/custom/path"),
            "http://c:4318/custom/path"
        );
    }
}
