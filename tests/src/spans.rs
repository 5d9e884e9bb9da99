//! Checking span trees against the fixture's own record of its calls.

use std::collections::{BTreeMap, HashMap};

/// A span reduced to what the checks need; ids as hex strings, "" for no parent.
#[derive(Debug, Clone)]
pub struct SpanRecord {
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: String,
    pub name: String,
    pub start_ns: u64,
    pub end_ns: u64,
    /// Attribute values as text (OTLP JSON carries integers as strings too).
    pub attributes: BTreeMap<String, String>,
    /// Status code 2.
    pub failed: bool,
}

impl SpanRecord {
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }

    fn is_root(&self) -> bool {
        self.parent_span_id.is_empty() || self.parent_span_id.chars().all(|c| c == '0')
    }
}

/// (parent function or "", child function) → occurrences.
pub type Edges = BTreeMap<(String, String), u64>;

/// The caller → callee edges of the fixture's `--trace` file. A worker thread's first call was
/// handed off by the parallel primitive, so its parent is `wf_parallel`.
pub fn expected_edges(call_trace: &str) -> Edges {
    let mut stacks: HashMap<&str, Vec<&str>> = HashMap::new();
    let mut edges = Edges::new();
    for line in call_trace.lines() {
        let mut words = line.split_whitespace();
        let (Some(thread), Some(event), Some(function)) =
            (words.next(), words.next(), words.next())
        else {
            continue;
        };
        let stack = stacks.entry(thread).or_default();
        if event == "enter" {
            let parent = match stack.last() {
                Some(caller) => caller,
                None if thread != "main" => "wf_parallel",
                None => "",
            };
            *edges
                .entry((parent.to_string(), function.to_string()))
                .or_default() += 1;
            stack.push(function);
        } else {
            stack.pop();
        }
    }
    edges
}

/// The parent → child edges of spans, each parent looked up in its own trace.
pub fn span_edges(spans: &[SpanRecord]) -> Edges {
    let names: HashMap<(&str, &str), &str> = spans
        .iter()
        .map(|s| ((s.trace_id.as_str(), s.span_id.as_str()), s.name.as_str()))
        .collect();
    let mut edges = Edges::new();
    for span in spans {
        let parent = if span.is_root() {
            ""
        } else {
            names
                .get(&(span.trace_id.as_str(), span.parent_span_id.as_str()))
                .copied()
                .unwrap_or("<missing parent>")
        };
        *edges
            .entry((parent.to_string(), span.name.clone()))
            .or_default() += 1;
    }
    edges
}

/// Per trace: exactly one root, every parent present, every child inside its parent's interval.
/// Returns the number of traces.
pub fn assert_complete_traces(spans: &[SpanRecord]) -> usize {
    let mut traces: HashMap<&str, Vec<&SpanRecord>> = HashMap::new();
    for span in spans {
        traces.entry(&span.trace_id).or_default().push(span);
    }
    for (trace, spans) in &traces {
        let by_id: HashMap<&str, &SpanRecord> =
            spans.iter().map(|s| (s.span_id.as_str(), *s)).collect();
        let roots = spans.iter().filter(|s| s.is_root()).count();
        assert_eq!(roots, 1, "trace {trace} has {roots} roots");
        for span in spans.iter().filter(|s| !s.is_root()) {
            let parent = by_id
                .get(span.parent_span_id.as_str())
                .unwrap_or_else(|| panic!("trace {trace}: parent of {} missing", span.name));
            assert!(
                parent.start_ns <= span.start_ns && span.end_ns <= parent.end_ns,
                "{} [{}, {}] is not inside its parent {} [{}, {}]",
                span.name,
                span.start_ns,
                span.end_ns,
                parent.name,
                parent.start_ns,
                parent.end_ns
            );
        }
    }
    traces.len()
}

/// Spans from `--spans-out` OTLP JSON lines.
pub fn read_json_lines(text: &str) -> Vec<SpanRecord> {
    let mut spans = Vec::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        let request: serde_json::Value = serde_json::from_str(line).expect("OTLP JSON line");
        for resource in request["resourceSpans"].as_array().unwrap() {
            for scope in resource["scopeSpans"].as_array().unwrap() {
                for span in scope["spans"].as_array().unwrap() {
                    let text = |key: &str| span[key].as_str().unwrap_or_default().to_string();
                    let nanos = |key: &str| text(key).parse::<u64>().expect("unix nanos");
                    spans.push(SpanRecord {
                        trace_id: text("traceId"),
                        span_id: text("spanId"),
                        parent_span_id: text("parentSpanId"),
                        name: text("name"),
                        start_ns: nanos("startTimeUnixNano"),
                        end_ns: nanos("endTimeUnixNano"),
                        attributes: attributes(&span["attributes"]),
                        failed: span["status"]["code"] == 2,
                    });
                }
            }
        }
    }
    spans
}

fn attributes(list: &serde_json::Value) -> BTreeMap<String, String> {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|attribute| {
            let value = attribute["value"].as_object()?.values().next()?;
            let text = match value {
                serde_json::Value::String(text) => text.clone(),
                other => other.to_string(),
            };
            Some((attribute["key"].as_str()?.to_string(), text))
        })
        .collect()
}
