//! From the kernel's span events to OpenTelemetry spans: names and attributes from the plan,
//! wall-clock times, one resource per traced process, and the slowest trace for the report.
//! Parentage is not decided here: the kernel already did, from the thread's call stack.

use std::{
    borrow::Cow,
    collections::HashMap,
    path::PathBuf,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use flowtap_common::{SPAN_FAILED, SPAN_UNWOUND, SpanEvent};
use opentelemetry::{
    InstrumentationScope, KeyValue,
    trace::{SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState},
};
use opentelemetry_sdk::{
    Resource,
    resource::EnvResourceDetector,
    trace::{SpanData, SpanEvents, SpanLinks},
};

use crate::{
    plan::{Plan, PlannedProbe},
    processes::{self, ProcessIdentity, ProcessTable, ResourceCache},
    profile::{Part, Slot},
    span_ring::SpanRecord,
    workloads::Workloads,
};

/// Converts the kernel's CLOCK_MONOTONIC timestamps to wall-clock time, with an offset measured
/// once at start.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WallClock {
    realtime_minus_monotonic_ns: i128,
}

pub(crate) fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid out-pointer; the clocks asked for always exist on Linux.
    unsafe { libc::clock_gettime(clock, &mut now) };
    i128::from(now.tv_sec) * 1_000_000_000 + i128::from(now.tv_nsec)
}

impl WallClock {
    pub(crate) fn measure() -> Self {
        let monotonic = clock_ns(libc::CLOCK_MONOTONIC);
        let realtime = clock_ns(libc::CLOCK_REALTIME);
        Self {
            realtime_minus_monotonic_ns: realtime - monotonic,
        }
    }

    pub(crate) fn wall(&self, monotonic_ns: u64) -> SystemTime {
        let ns = (i128::from(monotonic_ns) + self.realtime_minus_monotonic_ns).max(0);
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    }
}

/// The profile's span name, or the function's name.
fn span_name(probe: &PlannedProbe, record: &SpanRecord) -> String {
    let Some(template) = probe.rule.as_ref().and_then(|rule| rule.span_name.as_ref()) else {
        return probe.function.clone();
    };
    template.render(|part| match part {
        Part::Capture(n) => captured(probe, record, *n).to_string(),
        _ => probe.function.clone(),
    })
}

/// The profile's constant attributes, exported captures and return value.
fn declared_attributes(probe: &PlannedProbe, record: &SpanRecord) -> Vec<KeyValue> {
    let Some(rule) = &probe.rule else {
        return Vec::new();
    };
    let mut attributes: Vec<KeyValue> = rule
        .attributes
        .iter()
        .map(|(key, value)| KeyValue::new(key.clone(), value.clone()))
        .collect();
    for (n, capture) in rule.captures.iter().enumerate() {
        if let Some(name) = &capture.attribute {
            attributes.push(KeyValue::new(name.clone(), captured(probe, record, n)));
        }
    }
    if let Some(returns) = &rule.returns
        && let Some(name) = &returns.attribute
    {
        attributes.push(KeyValue::new(
            name.clone(),
            returns.kind.value(record.event.ret),
        ));
    }
    attributes
}

/// Capture `n` of the probe's rule, as its declared type.
fn captured(probe: &PlannedProbe, record: &SpanRecord, n: usize) -> opentelemetry::Value {
    let Some(capture) = probe.rule.as_ref().and_then(|rule| rule.captures.get(n)) else {
        return opentelemetry::Value::from("");
    };
    match capture.slot {
        Slot::Value(slot) => capture.kind.value(record.event.values[slot]),
        Slot::Text => capture.kind.text(record.text.as_deref().unwrap_or("")),
    }
}

pub(crate) fn trace_id(event: &SpanEvent) -> TraceId {
    TraceId::from((u128::from(event.trace_id[0]) << 64) | u128::from(event.trace_id[1]))
}

/// Builds spans and their processes' resources.
pub(crate) struct SpanFactory {
    clock: WallClock,
    scope: InstrumentationScope,
    service_name: Option<String>,
    /// The target's program, for processes that exited before their spans were read.
    executable: Option<PathBuf>,
    /// The kernel's record of traced processes.
    processes: Arc<dyn ProcessTable>,
    /// By (PID, start): a reused PID is another process.
    resources: ResourceCache<Resource>,
    /// Extra resource attributes per process (pod metadata), and which cgroups are reported.
    workloads: Arc<dyn Workloads>,
    /// Whether each cgroup's spans are reported, decided once per cgroup.
    reported: HashMap<u64, bool>,
}

impl SpanFactory {
    /// `service_name` overrides `unknown_service:<executable name>` for every process.
    pub(crate) fn new(
        service_name: Option<String>,
        executable: Option<PathBuf>,
        processes: Arc<dyn ProcessTable>,
        workloads: Arc<dyn Workloads>,
    ) -> Self {
        Self {
            clock: WallClock::measure(),
            scope: InstrumentationScope::builder("flowtap")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
            service_name,
            executable,
            processes,
            resources: ResourceCache::new(processes::CACHE_CAPACITY),
            workloads,
            reported: HashMap::new(),
        }
    }

    fn reports(&mut self, cgroup: u64) -> bool {
        let workloads = &self.workloads;
        *self
            .reported
            .entry(cgroup)
            .or_insert_with(|| workloads.reports(cgroup))
    }

    pub(crate) fn span(&self, record: &SpanRecord, plan: &Plan) -> Option<SpanData> {
        let event = &record.event;
        let probe = plan.probes.get(event.probe_id as usize)?;
        let object = &plan.objects[probe.object].name;
        let mut attributes = vec![
            KeyValue::new("code.function.name", probe.function.clone()),
            KeyValue::new("thread.id", i64::from(event.tid)),
            KeyValue::new("flowtap.object", object.clone()),
        ];
        let unwound = event.flags & SPAN_UNWOUND != 0;
        if unwound {
            attributes.push(KeyValue::new("flowtap.unwound", true));
        }
        attributes.extend(declared_attributes(probe, record));
        Some(SpanData {
            span_context: SpanContext::new(
                trace_id(event),
                SpanId::from(event.span_id),
                TraceFlags::SAMPLED,
                false,
                TraceState::default(),
            ),
            parent_span_id: SpanId::from(event.parent_span_id),
            parent_span_is_remote: false,
            span_kind: SpanKind::Internal,
            name: Cow::Owned(span_name(probe, record)),
            start_time: self.clock.wall(event.start_ns),
            end_time: self.clock.wall(event.end_ns),
            attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: if unwound {
                Status::error("ended without returning (longjmp, exception or thread exit)")
            } else if event.flags & SPAN_FAILED != 0 {
                Status::error(format!(
                    "returned {}: failure by the profile's error rule",
                    probe.spec.return_value(event.ret)
                ))
            } else {
                Status::Unset
            },
            instrumentation_scope: self.scope.clone(),
        })
    }

    /// When the process now holding `pid` started, as the kernel recorded it (0: unknown). Read
    /// as its spans are pumped, every 100 ms: a PID reused within that time is not told apart.
    pub(crate) fn started(&self, pid: u32) -> u64 {
        self.processes.process(pid).map_or(0, |info| info.start_ns)
    }

    /// The resource of process `pid` that started at `start`: semantic-convention process
    /// attributes, the service name, the host, and `OTEL_RESOURCE_ATTRIBUTES`.
    pub(crate) fn resource(&mut self, pid: u32, start: u64, cgroup: u64) -> Resource {
        let service_name = self.service_name.clone();
        let fallback = self.executable.clone();
        let workloads = &self.workloads;
        let table = self.processes.as_ref();
        self.resources.get_or_insert(
            (pid, start),
            || {
                let identity = ProcessIdentity::of(pid, start, table);
                let extra = workloads.resource_attributes(pid, cgroup);
                process_resource(pid, identity, service_name, fallback, extra)
            },
            |key| processes::alive(table, key),
        )
    }
}

/// `process.executable.name` is the kernel's name for the process (`comm`, as semantic
/// conventions allow on Linux), else its executable's file name; the target's program stands in
/// for a process gone before anything was known of it.
fn process_resource(
    pid: u32,
    identity: ProcessIdentity,
    service_name: Option<String>,
    fallback: Option<PathBuf>,
    extra: Vec<KeyValue>,
) -> Resource {
    let name = identity.name;
    let fallback = fallback.filter(|path| {
        name.as_deref()
            .is_none_or(|name| crate::symbols::file_name(path).starts_with(name))
    });
    let executable = identity.executable.or(fallback);
    let executable_name = name
        .or_else(|| executable.as_deref().map(crate::symbols::file_name))
        .unwrap_or_else(|| "unknown".into());
    let mut attributes = vec![KeyValue::new("process.pid", i64::from(pid))];
    if let Some(path) = &executable {
        attributes.push(KeyValue::new(
            "process.executable.path",
            path.display().to_string(),
        ));
    }
    attributes.push(KeyValue::new(
        "process.executable.name",
        executable_name.clone(),
    ));
    if let Ok(host) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        attributes.push(KeyValue::new("host.name", host.trim().to_string()));
    }
    attributes.extend(extra);
    Resource::builder_empty()
        .with_detector(Box::new(EnvResourceDetector::new()))
        .with_attributes(attributes)
        .with_service_name(
            service_name.unwrap_or_else(|| format!("unknown_service:{executable_name}")),
        )
        .build()
}

/// One span of the slowest trace, for the report's tree.
#[derive(Debug, Clone)]
pub(crate) struct TreeSpan {
    pub span_id: u64,
    pub parent_span_id: u64,
    pub name: String,
    pub start_ns: u64,
    pub end_ns: u64,
}

/// Keeps the spans of traces still in progress (bounded) and the slowest finished one.
#[derive(Debug, Default)]
pub(crate) struct SlowestTrace {
    open: HashMap<[u64; 2], Vec<TreeSpan>>,
    open_spans: usize,
    pub slowest: Option<Vec<TreeSpan>>,
}

/// Spans held for traces not yet finished; past this, the oldest partial traces are dropped from
/// the report (never from the export).
const MAX_OPEN_SPANS: usize = 100_000;

impl SlowestTrace {
    pub(crate) fn add(&mut self, record: &SpanRecord, plan: &Plan) {
        let event = &record.event;
        let name = plan
            .probes
            .get(event.probe_id as usize)
            .map_or_else(|| "?".to_string(), |probe| span_name(probe, record));
        let span = TreeSpan {
            span_id: event.span_id,
            parent_span_id: event.parent_span_id,
            name,
            start_ns: event.start_ns,
            end_ns: event.end_ns,
        };
        if self.open_spans >= MAX_OPEN_SPANS {
            self.open.clear();
            self.open_spans = 0;
        }
        let spans = self.open.entry(event.trace_id).or_default();
        spans.push(span.clone());
        self.open_spans += 1;
        // The root ends last: the trace is complete.
        if span.parent_span_id == 0 {
            let spans = self.open.remove(&event.trace_id).unwrap_or_default();
            self.open_spans -= spans.len();
            let duration = span.end_ns - span.start_ns;
            let slowest = self.slowest.as_ref().and_then(|s| s.last());
            if slowest.is_none_or(|root| root.end_ns - root.start_ns < duration) {
                self.slowest = Some(spans);
            }
        }
    }
}

/// Moves spans from the kernel to their sinks every few milliseconds: the OTLP queue, the
/// `--spans-out` file, and the report's slowest trace.
pub(crate) struct SpanPump {
    pub stream: crate::span_ring::SpanStream,
    pub factory: SpanFactory,
    pub queue: Option<std::sync::Arc<crate::export::otlp::SpanQueue>>,
    pub file: Option<crate::export::spans_file::SpansFile>,
    pub counts: std::sync::Arc<crate::export::otlp::SpanCounts>,
    pub slowest: SlowestTrace,
    events: Vec<SpanRecord>,
}

impl SpanPump {
    pub(crate) fn new(
        stream: crate::span_ring::SpanStream,
        factory: SpanFactory,
        queue: Option<std::sync::Arc<crate::export::otlp::SpanQueue>>,
        file: Option<crate::export::spans_file::SpansFile>,
        counts: std::sync::Arc<crate::export::otlp::SpanCounts>,
    ) -> Self {
        Self {
            stream,
            factory,
            queue,
            file,
            counts,
            slowest: SlowestTrace::default(),
            events: Vec::new(),
        }
    }

    /// Moves every span available now.
    pub(crate) fn pump(&mut self, plan: &Plan) -> std::io::Result<()> {
        self.events.clear();
        self.stream.drain(&mut self.events);
        if self.events.is_empty() {
            return Ok(());
        }
        self.counts.received.fetch_add(
            self.events.len() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        let mut by_process: HashMap<(u32, u64), Vec<SpanData>> = HashMap::new();
        for record in &self.events {
            let hidden = plan
                .probes
                .get(record.event.probe_id as usize)
                .and_then(|probe| probe.rule.as_ref())
                .is_some_and(|rule| !rule.spans);
            if hidden {
                continue;
            }
            self.slowest.add(record, plan);
            if let Some(span) = self.factory.span(record, plan) {
                let event = &record.event;
                by_process
                    .entry((event.tgid, event.cgroup))
                    .or_default()
                    .push(span);
            }
        }
        self.send(by_process);
        Ok(())
    }

    /// Sends spans made outside the kernel's stream (LLM calls), by process.
    pub(crate) fn push_made(&mut self, spans: Vec<(u32, SpanData)>) {
        if spans.is_empty() {
            return;
        }
        self.counts
            .received
            .fetch_add(spans.len() as u64, std::sync::atomic::Ordering::Relaxed);
        let mut by_process: HashMap<(u32, u64), Vec<SpanData>> = HashMap::new();
        for (pid, span) in spans {
            by_process.entry((pid, 0)).or_default().push(span);
        }
        self.send(by_process);
    }

    fn send(&mut self, by_process: HashMap<(u32, u64), Vec<SpanData>>) {
        for ((pid, cgroup), spans) in by_process {
            if !self.factory.reports(cgroup) {
                continue;
            }
            let start = self.factory.started(pid);
            let resource = self.factory.resource(pid, start, cgroup);
            if let Some(file) = &mut self.file {
                let dropped = file.write_or_count(&resource, spans.clone());
                self.counts
                    .file_dropped
                    .fetch_add(dropped, std::sync::atomic::Ordering::Relaxed);
            }
            if let Some(queue) = &self.queue {
                queue.push(spans.into_iter().map(|span| (pid, resource.clone(), span)));
            }
        }
    }
}
