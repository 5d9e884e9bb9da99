//! The end-of-run report: a table for people, JSON for programs.

use std::{collections::BTreeMap, io::Write};

use serde::Serialize;

use crate::{
    export::otlp::SpanCounts,
    genai::metrics::{LlmMetrics, ModelTotals},
    kernel_counters::{FunctionStats, Snapshot},
    profile_metrics::{ProfileMetrics, Series},
    spans::TreeSpan,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum ReportFormat {
    #[default]
    Table,
    Json,
}

/// Everything the end-of-run report shows.
pub(crate) struct Report<'a> {
    pub snapshot: &'a Snapshot,
    /// The metrics the profiles declare.
    pub declared: &'a ProfileMetrics,
    /// When spans were exported or written.
    pub spans: Option<&'a SpanSummary>,
    /// LLM calls decoded from captured bytes, when a profile captures them.
    pub llm: Option<&'a LlmMetrics>,
    /// The launched command's, in launch mode.
    pub exit_code: Option<i32>,
    pub loads: &'a LoadsSummary,
}

/// Libraries probed after the start, and the selectors that never selected a function.
#[derive(Debug, Default, Serialize)]
pub(crate) struct LoadsSummary {
    /// Objects loaded after the start that got probes, and how many.
    pub objects: usize,
    pub probes: usize,
    /// The longest time from the dynamic loader's hook to their probes being live.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slowest_attach_ms: Option<f64>,
    /// Objects loaded later whose probes could not be attached.
    pub failed: usize,
    /// Functions of objects loaded later not probed: the kernel's probe tables were full.
    pub not_probed_tables_full: usize,
    /// Selectors (as written) that selected no function in the whole run.
    pub unmatched_selectors: Vec<String>,
}

/// What became of the spans, and the slowest trace seen.
#[derive(Debug, Serialize)]
pub(crate) struct SpanSummary {
    pub received: u64,
    pub exported: u64,
    pub dropped: u64,
    pub export_errors: u64,
    /// Not written to the `--spans-out` file after a write error.
    pub file_dropped: u64,
    #[serde(skip)]
    pub slowest_trace: Option<Vec<TreeSpan>>,
}

impl SpanSummary {
    pub(crate) fn new(counts: &SpanCounts, slowest_trace: Option<Vec<TreeSpan>>) -> Self {
        Self {
            received: SpanCounts::get(&counts.received),
            exported: SpanCounts::get(&counts.exported),
            dropped: SpanCounts::get(&counts.dropped),
            export_errors: SpanCounts::get(&counts.export_errors),
            file_dropped: SpanCounts::get(&counts.file_dropped),
            slowest_trace,
        }
    }
}

#[derive(Serialize)]
struct JsonReport<'a> {
    functions: Vec<JsonFunction<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    metrics: Vec<JsonCounter<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    spans: Option<&'a SpanSummary>,
    lost_events: u64,
    losses: BTreeMap<&'static str, u64>,
    /// Calls still in progress when tracing stopped, by function.
    in_progress: BTreeMap<&'a str, u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    llm: Option<JsonLlm<'a>>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    capture: BTreeMap<&'static str, u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    exit_code: Option<i32>,
    libraries_loaded_later: &'a LoadsSummary,
}

#[derive(Serialize)]
struct JsonLlm<'a> {
    models: &'a BTreeMap<String, ModelTotals>,
    dropped: BTreeMap<&'static str, u64>,
    quiet_connections: u64,
}

/// The byte capture's counters, when anything was captured.
fn capture_counts(snapshot: &Snapshot) -> BTreeMap<&'static str, u64> {
    if snapshot.capture.iter().all(|(_, n)| *n == 0) {
        return BTreeMap::new();
    }
    snapshot
        .capture
        .iter()
        .map(|(count, n)| (count.name(), *n))
        .collect()
}

/// Per model: calls, errors, tokens, cost and latency; then what was not decoded.
fn write_llm(out: &mut dyn Write, llm: &LlmMetrics, snapshot: &Snapshot) -> std::io::Result<()> {
    writeln!(out, "\nLLM calls (decoded from TLS plaintext):")?;
    writeln!(
        out,
        "  {:<32} {:>7} {:>7} {:>10} {:>11} {:>10} {:>9}",
        "model", "calls", "errors", "prompt", "completion", "cost USD", "mean"
    )?;
    for (model, totals) in &llm.models {
        let calls: u64 = totals.requests.values().sum();
        let errors: u64 = totals
            .requests
            .iter()
            .filter(|(status, _)| **status >= 400)
            .map(|(_, n)| n)
            .sum();
        let mean = totals
            .duration
            .as_ref()
            .filter(|h| h.count > 0)
            .map_or(0, |h| (h.sum / h.count as f64 * 1e9) as u64);
        writeln!(
            out,
            "  {:<32} {:>7} {:>7} {:>10} {:>11} {:>10.6} {:>9}",
            printable(model),
            calls,
            errors,
            totals.prompt_tokens,
            totals.completion_tokens,
            totals.cost_usd,
            human_duration(mean)
        )?;
    }
    let dropped: Vec<String> = llm
        .dropped
        .iter()
        .map(|(reason, n)| format!("{} {n}", reason.name()))
        .collect();
    if !dropped.is_empty() {
        writeln!(out, "  not decoded: {}", dropped.join(", "))?;
    }
    let capture: Vec<String> = snapshot
        .capture
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(count, n)| format!("{} {n}", count.name()))
        .collect();
    if !capture.is_empty() {
        writeln!(out, "  capture: {}", capture.join(", "))?;
    }
    Ok(())
}

/// A series of a declared counter (histograms are in `functions`).
#[derive(Serialize)]
struct JsonCounter<'a> {
    name: &'a str,
    labels: BTreeMap<&'a str, &'a str>,
    value: f64,
}

/// The declared counters' series, in name and label order.
fn counters(declared: &ProfileMetrics) -> Vec<JsonCounter<'_>> {
    declared
        .families
        .iter()
        .flat_map(|(name, family)| {
            family
                .series
                .iter()
                .filter_map(move |(labels, series)| match series {
                    Series::Counter(value) => Some(JsonCounter {
                        name,
                        labels: labels
                            .iter()
                            .map(|(k, v)| (k.as_str(), v.as_str()))
                            .collect(),
                        value: *value,
                    }),
                    Series::Histogram(_) => None,
                })
        })
        .collect()
}

#[derive(Serialize)]
struct JsonFunction<'a> {
    function: &'a str,
    object: &'a str,
    /// Calls that ended: returned, unwound, or counted untimed.
    calls: u64,
    /// Calls that ended without returning (longjmp, exception, thread exit).
    unwound: u64,
    /// Calls counted but not timed (nested deeper than the kernel's bounds; see `losses`).
    untimed: u64,
    entered: u64,
    in_flight: u64,
    /// Returns of calls entered before the probes were attached (not in `calls`).
    returns_entered_before_attach: u64,
    errors: u64,
    total_ns: u64,
    mean_ns: u64,
    p50_ns: u64,
    p95_ns: u64,
    p99_ns: u64,
    max_ns: u64,
}

impl<'a> From<&'a FunctionStats> for JsonFunction<'a> {
    fn from(stats: &'a FunctionStats) -> Self {
        Self {
            function: &stats.function,
            object: &stats.object,
            calls: stats.calls,
            unwound: stats.unwound,
            untimed: stats.untimed,
            entered: stats.entered,
            in_flight: stats.in_flight,
            returns_entered_before_attach: stats.unentered_returns,
            errors: stats.errors,
            total_ns: stats.total_ns,
            mean_ns: stats.mean_ns(),
            p50_ns: stats.quantile_ns(0.50),
            p95_ns: stats.quantile_ns(0.95),
            p99_ns: stats.quantile_ns(0.99),
            max_ns: stats.max_ns,
        }
    }
}

impl Report<'_> {
    pub(crate) fn write(&self, out: &mut dyn Write, format: ReportFormat) -> std::io::Result<()> {
        let in_progress = self.snapshot.in_progress();
        match format {
            ReportFormat::Json => {
                let report = JsonReport {
                    functions: self
                        .snapshot
                        .functions
                        .iter()
                        .map(JsonFunction::from)
                        .collect(),
                    metrics: counters(self.declared),
                    spans: self.spans,
                    lost_events: self.snapshot.lost_events(),
                    losses: self
                        .snapshot
                        .losses
                        .iter()
                        .map(|(l, n)| (l.name(), *n))
                        .collect(),
                    in_progress: in_progress
                        .iter()
                        .map(|(function, n)| (function.as_str(), *n))
                        .collect(),
                    llm: self.llm.map(|llm| JsonLlm {
                        models: &llm.models,
                        dropped: llm
                            .dropped
                            .iter()
                            .map(|(reason, n)| (reason.name(), *n))
                            .collect(),
                        quiet_connections: llm.quiet_connections,
                    }),
                    capture: capture_counts(self.snapshot),
                    exit_code: self.exit_code,
                    libraries_loaded_later: self.loads,
                };
                serde_json::to_writer_pretty(&mut *out, &report)?;
                writeln!(out)
            }
            ReportFormat::Table => {
                let in_progress_total = in_progress.iter().map(|(_, n)| n).sum();
                write_table(out, self.snapshot, in_progress_total)?;
                write_unfinished(out, &in_progress)?;
                if !self.declared.is_empty() {
                    write_declared(out, self.declared)?;
                }
                if let Some(llm) = self.llm {
                    write_llm(out, llm, self.snapshot)?;
                }
                if let Some(spans) = self.spans {
                    write_spans(out, spans)?;
                }
                write_loads(out, self.loads)
            }
        }
    }
}

fn write_loads(out: &mut dyn Write, loads: &LoadsSummary) -> std::io::Result<()> {
    if loads.objects > 0 {
        writeln!(
            out,
            "\nlibraries loaded later: {} probes in {} objects, live at most {:.1} ms after the loader's hook",
            loads.probes,
            loads.objects,
            loads.slowest_attach_ms.unwrap_or_default()
        )?;
    }
    if loads.failed > 0 {
        writeln!(
            out,
            "libraries loaded later whose probes could not be attached: {}",
            loads.failed
        )?;
    }
    if loads.not_probed_tables_full > 0 {
        writeln!(
            out,
            "functions of libraries loaded later not probed (probe tables full): {}",
            loads.not_probed_tables_full
        )?;
    }
    if !loads.unmatched_selectors.is_empty() {
        writeln!(
            out,
            "never matched: {}",
            printable(&loads.unmatched_selectors.join(", "))
        )?;
    }
    Ok(())
}

fn write_spans(out: &mut dyn Write, spans: &SpanSummary) -> std::io::Result<()> {
    writeln!(
        out,
        "\nspans: {} received, {} exported, {} dropped, {} export errors",
        spans.received, spans.exported, spans.dropped, spans.export_errors
    )?;
    if spans.file_dropped > 0 {
        writeln!(
            out,
            "spans not written to the spans file after a write error: {}",
            spans.file_dropped
        )?;
    }
    let Some(trace) = &spans.slowest_trace else {
        return Ok(());
    };
    writeln!(out, "slowest trace:")?;
    let ids: std::collections::HashSet<u64> = trace.iter().map(|s| s.span_id).collect();
    // Roots: spans whose parent is not in the trace (0, or a parent outside what was kept).
    let mut roots: Vec<&TreeSpan> = trace
        .iter()
        .filter(|s| !ids.contains(&s.parent_span_id))
        .collect();
    roots.sort_by_key(|s| s.start_ns);
    for root in roots {
        write_tree(out, trace, root, 1)?;
    }
    Ok(())
}

fn write_tree(
    out: &mut dyn Write,
    trace: &[TreeSpan],
    span: &TreeSpan,
    depth: usize,
) -> std::io::Result<()> {
    writeln!(
        out,
        "{:indent$}{}  {}",
        "",
        printable(&span.name),
        human_duration(span.end_ns.saturating_sub(span.start_ns)),
        indent = depth * 2
    )?;
    let mut children: Vec<&TreeSpan> = trace
        .iter()
        .filter(|s| s.parent_span_id == span.span_id)
        .collect();
    children.sort_by_key(|s| s.start_ns);
    for child in children {
        write_tree(out, trace, child, depth + 1)?;
    }
    Ok(())
}

fn write_declared(out: &mut dyn Write, declared: &ProfileMetrics) -> std::io::Result<()> {
    writeln!(out, "\nPROFILE METRICS")?;
    let rows: Vec<(String, String)> = counters(declared)
        .iter()
        .map(|counter| {
            let help = declared
                .families
                .get(counter.name)
                .map_or("", |family| family.help.as_str());
            (
                series_name(counter),
                with_unit(counter.name, help, counter.value),
            )
        })
        .collect();
    let width = rows
        .iter()
        .map(|(name, _)| name.chars().count())
        .max()
        .unwrap_or(0);
    for (name, value) in rows {
        writeln!(out, "  {name:<width$}  {value}")?;
    }
    Ok(())
}

/// Text from the target (names, captured strings) as a terminal shows it safely: control
/// characters (ANSI escapes, CR, LF) escaped, so none can forge report lines or drive the
/// terminal.
fn printable(text: &str) -> String {
    if !text.chars().any(char::is_control) {
        return text.to_string();
    }
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// `name{k="v",...}`, as Prometheus writes a series.
fn series_name(counter: &JsonCounter) -> String {
    if counter.labels.is_empty() {
        return counter.name.to_string();
    }
    let labels: Vec<String> = counter
        .labels
        .iter()
        .map(|(k, v)| {
            // Control characters (ANSI escapes, CR, LF) from the target escaped too.
            let escaped = printable(&v.replace('\\', "\\\\").replace('"', "\\\""));
            format!("{k}=\"{escaped}\"")
        })
        .collect();
    format!("{}{{{}}}", counter.name, labels.join(","))
}

/// A counter's value with the unit its name (Prometheus's unit suffixes) or help text gives.
fn with_unit(name: &str, help: &str, value: f64) -> String {
    let says = |word: &str| name.contains(word) || help.to_lowercase().contains(word);
    if name.contains("_seconds") {
        human_duration((value * 1e9).round() as u64)
    } else if says("bytes") {
        human_bytes(value)
    } else if says("dollars") {
        format!("${value:.6}")
    } else if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{}", value as i64)
    } else {
        format!("{value}")
    }
}

/// 512 bytes, 12.3 KiB, 4.5 MiB, 1.2 GiB.
fn human_bytes(value: f64) -> String {
    const UNITS: [&str; 3] = ["KiB", "MiB", "GiB"];
    if value < 1024.0 {
        return format!("{value} bytes");
    }
    let mut scaled = value / 1024.0;
    let mut unit = 0;
    while scaled >= 1024.0 && unit < UNITS.len() - 1 {
        scaled /= 1024.0;
        unit += 1;
    }
    format!("{scaled:.1} {} ({value} bytes)", UNITS[unit])
}

/// Calls that were entered but not yet timed: on a thread's stack when tracing stopped. (Calls
/// lost on the way are in the loss counters' line.)
fn write_unfinished(out: &mut dyn Write, in_progress: &[(String, u64)]) -> std::io::Result<()> {
    let total: u64 = in_progress.iter().map(|(_, n)| n).sum();
    if total == 0 {
        return Ok(());
    }
    let detail: Vec<String> = in_progress
        .iter()
        .map(|(function, n)| format!("{} {n}", printable(function)))
        .collect();
    writeln!(
        out,
        "calls in progress when tracing stopped: {total} ({})",
        detail.join(", ")
    )
}

fn write_table(
    out: &mut dyn Write,
    snapshot: &Snapshot,
    in_progress_total: u64,
) -> std::io::Result<()> {
    let rows: Vec<[String; 10]> = snapshot
        .functions
        .iter()
        .map(|s| {
            [
                printable(&s.function),
                printable(&s.object),
                s.calls.to_string(),
                s.unwound.to_string(),
                s.errors.to_string(),
                human_duration(s.mean_ns()),
                human_duration(s.quantile_ns(0.50)),
                human_duration(s.quantile_ns(0.95)),
                human_duration(s.quantile_ns(0.99)),
                human_duration(s.max_ns),
            ]
        })
        .collect();
    let header = [
        "FUNCTION", "OBJECT", "CALLS", "UNWOUND", "ERRORS", "MEAN", "P50", "P95", "P99", "MAX",
    ];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: &[&str]| {
        cells
            .iter()
            .zip(widths)
            .enumerate()
            .map(|(i, (cell, width))| {
                if i < 2 {
                    format!("{cell:<width$}")
                } else {
                    format!("{cell:>width$}")
                }
            })
            .collect::<Vec<_>>()
            .join("  ")
    };
    writeln!(out, "{}", line(&header))?;
    for row in &rows {
        writeln!(out, "{}", line(&row.each_ref().map(String::as_str)))?;
    }
    if rows.is_empty() {
        // Only when nothing at all was seen: entered-but-lost calls are said below.
        let seen = snapshot.lost_events() > 0 || in_progress_total > 0;
        writeln!(
            out,
            "{}",
            if seen {
                "(no probed call returned and was timed: see the counts below)"
            } else {
                "(no probed function was called)"
            }
        )?;
    }
    write_losses(out, snapshot)
}

fn write_losses(out: &mut dyn Write, snapshot: &Snapshot) -> std::io::Result<()> {
    let lost = snapshot.lost_events();
    if lost > 0 {
        let detail: Vec<String> = snapshot
            .losses
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(loss, n)| format!("{} {n}", loss.name()))
            .collect();
        writeln!(out, "lost events: {lost} ({})", detail.join(", "))?;
    } else {
        writeln!(out, "lost events: 0")?;
    }
    Ok(())
}

/// 950ns, 12.3µs, 20.1ms, 1.50s.
pub(crate) fn human_duration(ns: u64) -> String {
    let value = ns as f64;
    match ns {
        0..1_000 => format!("{ns}ns"),
        1_000..1_000_000 => format!("{:.1}µs", value / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1}ms", value / 1e6),
        _ => format!("{:.2}s", value / 1e9),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(snapshot: &Snapshot) -> String {
        let declared = ProfileMetrics::default();
        let report = Report {
            snapshot,
            declared: &declared,
            spans: None,
            llm: None,
            exit_code: None,
            loads: &LoadsSummary::default(),
        };
        let mut out = Vec::new();
        report.write(&mut out, ReportFormat::Table).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn an_empty_report_says_whether_anything_was_seen() {
        let nothing = table(&Snapshot::default());
        assert!(
            nothing.contains("(no probed function was called)"),
            "{nothing}"
        );
        let lost = Snapshot {
            losses: vec![(flowtap_common::Loss::StackMapFull, 2)],
            ..Snapshot::default()
        };
        let text = table(&lost);
        assert!(!text.contains("no probed function was called"), "{text}");
        assert!(text.contains("lost events: 2 (stack_map_full 2)"), "{text}");
        let running = FunctionStats {
            function: "wf_run".into(),
            calls: 0,
            entered: 3,
            in_flight: 3,
            ..FunctionStats::from_durations(&[])
        };
        let in_progress = Snapshot {
            functions: vec![running],
            ..Snapshot::default()
        };
        let text = table(&in_progress);
        assert!(!text.contains("no probed function was called"), "{text}");
        assert!(
            text.contains("calls in progress when tracing stopped: 3 (wf_run 3)"),
            "{text}"
        );
    }

    #[test]
    fn declared_series_read_as_prometheus_writes_them_with_units() {
        let counter = |labels: &[(&'static str, &'static str)]| JsonCounter {
            name: "llm_cost_total",
            labels: labels.iter().copied().collect(),
            value: 0.5,
        };
        assert_eq!(
            series_name(&counter(&[("model", "gpt-4o"), ("kind", "a\"b")])),
            r#"llm_cost_total{kind="a\"b",model="gpt-4o"}"#
        );
        assert_eq!(series_name(&counter(&[])), "llm_cost_total");
        assert_eq!(
            with_unit("llm_cost_total", "LLM cost in dollars.", 0.583266),
            "$0.583266"
        );
        assert_eq!(with_unit("tls_bytes_total", "", 512.0), "512 bytes");
        assert_eq!(
            with_unit("tls_bytes_total", "", 2048.0),
            "2.0 KiB (2048 bytes)"
        );
        assert_eq!(with_unit("wait_seconds_total", "", 0.0201), "20.1ms");
        assert_eq!(with_unit("cache_hits_total", "", 62.0), "62");
    }

    #[test]
    fn strings_from_the_target_cannot_forge_lines_or_drive_the_terminal() {
        let mut stats = crate::kernel_counters::FunctionStats::from_durations(&[1000]);
        stats.function = "evil\x1b[2J\r\nFAKE  0  0".into();
        let snapshot = Snapshot {
            functions: vec![stats],
            ..Snapshot::default()
        };
        let text = table(&snapshot);
        assert!(!text.contains('\x1b') && !text.contains('\r'), "{text}");
        assert!(!text.lines().any(|line| line.starts_with("FAKE")), "{text}");
        assert!(text.contains("evil\\u{1b}[2J\\r\\nFAKE"), "{text}");
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(human_duration(950), "950ns");
        assert_eq!(human_duration(12_345), "12.3µs");
        assert_eq!(human_duration(20_100_000), "20.1ms");
        assert_eq!(human_duration(1_500_000_000), "1.50s");
    }
}
