//! The end-of-run report: a table for people, JSON for programs.

use std::{collections::BTreeMap, io::Write};

use serde::Serialize;

use crate::{
    export::otlp::SpanCounts,
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
    /// The launched command's, in launch mode.
    pub exit_code: Option<i32>,
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
    #[serde(skip_serializing_if = "Option::is_none")]
    exit_code: Option<i32>,
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
    calls: u64,
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
                    exit_code: self.exit_code,
                };
                serde_json::to_writer_pretty(&mut *out, &report)?;
                writeln!(out)
            }
            ReportFormat::Table => {
                write_table(out, self.snapshot)?;
                if !self.declared.is_empty() {
                    write_declared(out, self.declared)?;
                }
                if let Some(spans) = self.spans {
                    write_spans(out, spans)?;
                }
                Ok(())
            }
        }
    }
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
    for counter in counters(declared) {
        let labels: Vec<String> = counter
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={}", printable(v)))
            .collect();
        writeln!(
            out,
            "  {}{{{}}}  {}",
            counter.name,
            labels.join(","),
            counter.value
        )?;
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

fn write_table(out: &mut dyn Write, snapshot: &Snapshot) -> std::io::Result<()> {
    let rows: Vec<[String; 9]> = snapshot
        .functions
        .iter()
        .map(|s| {
            [
                printable(&s.function),
                printable(&s.object),
                s.calls.to_string(),
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
        "FUNCTION", "OBJECT", "CALLS", "ERRORS", "MEAN", "P50", "P95", "P99", "MAX",
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
        writeln!(out, "(no probed function was called)")?;
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

    #[test]
    fn strings_from_the_target_cannot_forge_lines_or_drive_the_terminal() {
        let mut stats = crate::kernel_counters::FunctionStats::from_durations(&[1000]);
        stats.function = "evil\x1b[2J\r\nFAKE  0  0".into();
        let snapshot = Snapshot {
            functions: vec![stats],
            aggregates: Vec::new(),
            losses: Vec::new(),
        };
        let mut out = Vec::new();
        write_table(&mut out, &snapshot).unwrap();
        let text = String::from_utf8(out).unwrap();
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
