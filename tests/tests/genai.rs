//! LLM calls decoded from TLS plaintext (profile `genai`): a local HTTPS server speaking the
//! OpenAI and Anthropic APIs (its own CA, given to clients the standard way), called by curl
//! (launch mode) and by the official Python SDKs (library mode on libssl, and launch mode, where
//! libssl is loaded later). Tokens per model and kind in flowtap's report and metrics must equal
//! what the server served, one GenAI span per call with its attributes, and the byte capture's
//! accounting must add up under a small ring.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    process::Command,
};

use flowtap_tests::{
    llm::{self, LlmServer, Served, curl_calls, genai_dir},
    spans::read_json_lines,
    *,
};

/// What flowtap's JSON report says of the models ending with `suffix`.
fn reported(report: &serde_json::Value, suffix: &str) -> Served {
    let mut seen = Served::default();
    let models = report["llm"]["models"]
        .as_object()
        .unwrap_or_else(|| panic!("no llm section in the report: {report}"));
    for (model, totals) in models.iter().filter(|(m, _)| m.ends_with(suffix)) {
        for (status, n) in totals["requests"].as_object().unwrap() {
            seen.requests.insert(
                (model.clone(), status.parse().unwrap()),
                n.as_u64().unwrap(),
            );
        }
        for (kind, key) in [
            ("prompt", "prompt_tokens"),
            ("completion", "completion_tokens"),
        ] {
            seen.tokens
                .insert((model.clone(), kind), totals[key].as_u64().unwrap());
        }
    }
    seen
}

/// What `/metrics` says of the models ending with `suffix`.
fn scraped(exposition: &str, suffix: &str) -> Served {
    let mut seen = Served::default();
    for (name, labels, value) in samples(exposition) {
        let label = |key: &str| {
            let start = labels.find(&format!("{key}=\""))? + key.len() + 2;
            let end = labels[start..].find('"')? + start;
            Some(labels[start..end].to_string())
        };
        let Some(model) = label("model").filter(|m| m.ends_with(suffix)) else {
            continue;
        };
        match name.as_str() {
            "llm_requests_total" => {
                let status = label("status").unwrap().parse().unwrap();
                seen.requests.insert((model, status), value as u64);
            }
            "llm_tokens_total" => {
                let kind = match label("kind").unwrap().as_str() {
                    "prompt" => "prompt",
                    _ => "completion",
                };
                seen.tokens.insert((model, kind), value as u64);
            }
            _ => {}
        }
    }
    seen
}

fn llm_spans(spans_file: &Path) -> Vec<flowtap_tests::spans::SpanRecord> {
    let text = std::fs::read_to_string(spans_file).unwrap_or_default();
    read_json_lines(&text)
}

/// Launches `program` under the genai profile with `symbols` probed too; its report and spans.
fn launch_genai(
    dir: &Path,
    symbols: &str,
    program: &Path,
    args: &[String],
) -> (serde_json::Value, Vec<flowtap_tests::spans::SpanRecord>) {
    let spans_file = dir.join("spans.jsonl");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let launched = launch_with_report(
        dir,
        &[
            "--profile",
            "genai",
            "--symbols",
            symbols,
            "--spans-out",
            spans_file.to_str().unwrap(),
        ],
        program,
        &args,
    );
    assert_eq!(launched.code, 0, "{}", launched.stderr);
    (read_report(&launched.report), llm_spans(&spans_file))
}

/// The spans of the calls of `function`: span id to trace id.
fn spans_of<'a>(
    spans: &'a [flowtap_tests::spans::SpanRecord],
    function: &str,
) -> BTreeMap<&'a str, &'a str> {
    spans
        .iter()
        .filter(|s| s.name == function)
        .map(|s| (s.span_id.as_str(), s.trace_id.as_str()))
        .collect()
}

/// Whether `span` is a child of one of `parents` (span id to trace id), in the same trace.
fn child_of(span: &flowtap_tests::spans::SpanRecord, parents: &BTreeMap<&str, &str>) -> bool {
    parents.get(span.parent_span_id.as_str()) == Some(&span.trace_id.as_str())
}

#[test]
fn curl_calls_are_counted_exactly_and_spanned_inside_the_probed_caller() {
    let dir = scratch_dir("genai-curl");
    let server = LlmServer::start(&dir);
    let (report, spans) = launch_genai(
        &dir,
        "libcurl.so*:curl_easy_perform",
        Path::new("/usr/bin/curl"),
        &curl_calls(&server, ""),
    );
    let served = server.served("");
    assert_eq!(served.requests.values().sum::<u64>(), 9, "{served:?}");
    assert_eq!(reported(&report, ""), served, "report vs ledger");
    assert_eq!(
        report["capture"]["ring_full_bytes"], 0,
        "{}",
        report["capture"]
    );

    assert!(
        spans.iter().all(|s| !s.name.starts_with("SSL_")),
        "spans = false keeps the libssl calls out"
    );
    let callers = spans_of(&spans, "curl_easy_perform");
    let llm: Vec<_> = spans
        .iter()
        .filter(|s| s.attribute("gen_ai.operation.name").is_some())
        .collect();
    assert_eq!(llm.len(), 9, "one span per call: {llm:#?}");
    for span in &llm {
        let model = span.attribute("gen_ai.request.model").unwrap();
        let operation = span.attribute("gen_ai.operation.name").unwrap();
        assert_eq!(span.name, format!("{operation} {model}"));
        assert_eq!(span.attribute("server.address"), Some("localhost"));
        assert_eq!(
            span.attribute("server.port"),
            Some(server.port.to_string().as_str())
        );
        // The parent: the probed call active on the thread when the request was written.
        assert!(
            child_of(span, &callers),
            "{span:?} is not inside a curl_easy_perform span"
        );
        let status: u64 = span
            .attribute("http.response.status_code")
            .unwrap()
            .parse()
            .unwrap();
        let tokens = |kind| served.tokens[&(model.to_string(), kind)].to_string();
        match status {
            200 => {
                assert!(!span.failed, "{span:?}");
                assert_eq!(
                    span.attribute("gen_ai.usage.input_tokens"),
                    Some(tokens("prompt").as_str())
                );
            }
            429 => assert_eq!(span.attribute("error.type"), Some("rate_limit_exceeded")),
            500 => assert_eq!(span.attribute("error.type"), Some("server_error")),
            other => panic!("status {other}: {span:?}"),
        }
    }
    let providers: Vec<_> = llm
        .iter()
        .filter_map(|s| s.attribute("gen_ai.provider.name"))
        .filter(|p| *p == "anthropic")
        .collect();
    assert_eq!(providers.len(), 2);
    let streamed = llm
        .iter()
        .filter(|s| s.attribute("gen_ai.response.time_to_first_chunk").is_some())
        .count();
    assert_eq!(streamed, 2, "time to first chunk on the two streamed calls");
}

/// Issue 15: a native workflow whose LLM primitive, `wf_llm_call`, calls the server through
/// libcurl: each call's LLM span is a child of that call's span, and the tokens add up.
#[test]
fn a_workflow_primitive_calling_through_libcurl_parents_its_llm_span() {
    let dir = scratch_dir("genai-llmflow");
    let server = LlmServer::start(&dir);
    let mut args = vec![server.ca.display().to_string()];
    args.extend(
        llm::calls(&server, "")
            .into_iter()
            .flat_map(|(url, body)| [url, body]),
    );
    let (report, spans) = launch_genai(&dir, "llmflow:wf_*", &fixture_dir().join("llmflow"), &args);
    let served = server.served("");
    assert_eq!(served.requests.values().sum::<u64>(), 9, "{served:?}");
    assert_eq!(reported(&report, ""), served, "report vs ledger");

    let runs = spans_of(&spans, "wf_workflow_run");
    let primitives = spans_of(&spans, "wf_llm_call");
    assert_eq!((runs.len(), primitives.len()), (1, 9), "{spans:#?}");
    let steps: Vec<_> = spans.iter().filter(|s| s.name == "wf_llm_call").collect();
    assert!(steps.iter().all(|s| child_of(s, &runs)), "{steps:#?}");
    let llm: Vec<_> = spans
        .iter()
        .filter(|s| s.attribute("gen_ai.operation.name").is_some())
        .collect();
    for span in &llm {
        assert!(
            child_of(span, &primitives),
            "{span:?} is not inside a wf_llm_call"
        );
    }
    let parents: BTreeSet<&str> = llm.iter().map(|s| s.parent_span_id.as_str()).collect();
    assert_eq!(
        (llm.len(), parents),
        (9, primitives.keys().copied().collect()),
        "one LLM span in each wf_llm_call"
    );
}

/// Runs the SDK script's 7 calls through `python` (a command ending in the interpreter, under
/// flowtap or not) against `server`, tagging their models with `suffix`; fails unless all 7 ran.
fn make_sdk_calls(python: &mut Command, server: &LlmServer, suffix: &str) {
    let output = python
        .arg(genai_dir().join("sdk_calls.py"))
        .arg(server.url(""))
        .arg(suffix)
        .env("SSL_CERT_FILE", &server.ca)
        .output()
        .expect("running the SDK client");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(stdout.lines().filter(|l| l.starts_with("call ")).count(), 7);
}

#[test]
fn python_sdk_calls_through_libssl_match_what_was_served() {
    let python = std::env::var("FLOWTAP_GENAI_PYTHON").unwrap_or_else(|_| {
        panic!("FLOWTAP_GENAI_PYTHON is not set: run with `cargo xtask test`, which installs the openai and anthropic SDKs")
    });
    let dir = scratch_dir("genai-sdk");
    let server = LlmServer::start(&dir);
    let report_path = dir.join("report.json");
    let spans_file = dir.join("spans.jsonl");
    let agent = Running::start(
        flowtap()
            .args(["run", "--profile", "genai", "--exe", llm::LIBSSL])
            .args(["--report", "json", "--output"])
            .arg(&report_path)
            .arg("--spans-out")
            .arg(&spans_file),
    );
    let suffix = "-sdk";
    make_sdk_calls(&mut Command::new(&python), &server, suffix);
    let served = server.served(suffix);
    // The last call's bytes are read from the kernel within a pump interval.
    let mut metrics = Served::default();
    for _ in 0..50 {
        metrics = scraped(&agent.scrape(), suffix);
        if metrics == served {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(metrics, served, "/metrics vs ledger");
    agent.interrupt();
    let (code, stderr) = agent.finish();
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        reported(&read_report(&report_path), suffix),
        served,
        "report vs ledger"
    );
    let spans = llm_spans(&spans_file);
    let mine: Vec<_> = spans
        .iter()
        .filter(|s| {
            s.attribute("gen_ai.request.model")
                .is_some_and(|m| m.ends_with(suffix))
        })
        .collect();
    assert_eq!(mine.len(), 7, "{mine:#?}");
    for span in &mine {
        let model = span.attribute("gen_ai.request.model").unwrap();
        let input = served.tokens[&(model.to_string(), "prompt")];
        if span.attribute("http.response.status_code") == Some("200") {
            assert_eq!(
                span.attribute("gen_ai.usage.input_tokens"),
                Some(input.to_string().as_str()),
                "{span:?}"
            );
            assert_eq!(
                span.attribute("gen_ai.response.model"),
                Some(model),
                "{span:?}"
            );
        } else {
            assert!(
                span.failed && span.attribute("error.type").is_some(),
                "{span:?}"
            );
        }
    }
}

#[test]
fn captured_bytes_are_delivered_or_counted_lost_under_a_small_ring() {
    let dir = scratch_dir("genai-ring");
    let server = LlmServer::start(&dir);
    // A prompt of 200,000 bytes: writes far larger than a 4 KiB ring holds.
    let prompt = "word ".repeat(40_000);
    let body =
        format!(r#"{{"model":"gpt-4o-mini","messages":[{{"role":"user","content":"{prompt}"}}]}}"#);
    std::fs::write(dir.join("body.json"), &body).unwrap();
    let body_arg = format!("@{}", dir.join("body.json").display());
    let ca = server.ca.display().to_string();
    let url = server.url("/v1/chat/completions");
    let launched = launch_with_report(
        &dir,
        &["--profile", "genai", "--capture-ring-bytes", "4096"],
        Path::new("/usr/bin/curl"),
        &[
            "--silent",
            "--cacert",
            &ca,
            "-o",
            "/dev/null",
            "--data-binary",
            &body_arg,
            &url,
        ],
    );
    assert_eq!(launched.code, 0, "{}", launched.stderr);
    let report = read_report(&launched.report);
    let capture = &report["capture"];
    let count = |key: &str| {
        capture[key]
            .as_u64()
            .unwrap_or_else(|| panic!("{key}: {capture}"))
    };
    let lost = count("ring_full_bytes") + count("over_cap_bytes") + count("unreadable_bytes");
    assert!(count("offered_bytes") > body.len() as u64, "{capture}");
    assert_eq!(
        count("offered_bytes"),
        count("delivered_bytes") + lost,
        "{capture}"
    );
    assert!(
        count("ring_full_bytes") > 0,
        "a 4 KiB ring cannot hold the request: {capture}"
    );
}

#[test]
fn python_sdk_calls_in_launch_mode_are_counted_once_libssl_is_loaded() {
    let python = std::env::var("FLOWTAP_GENAI_PYTHON").unwrap_or_else(|_| {
        panic!("FLOWTAP_GENAI_PYTHON is not set: run with `cargo xtask test`, which installs the openai and anthropic SDKs")
    });
    let dir = scratch_dir("genai-sdk-launch");
    let server = LlmServer::start(&dir);
    let suffix = "-launch";
    // CPython loads libssl with dlopen (its _ssl module): probed when it is loaded.
    let report = dir.join("report.json");
    make_sdk_calls(
        flowtap()
            .args(["run", "--profile", "genai", "--report", "json", "--output"])
            .arg(&report)
            .arg("--")
            .arg(&python),
        &server,
        suffix,
    );
    let served = server.served(suffix);
    assert_eq!(served.requests.values().sum::<u64>(), 7);
    assert_eq!(
        reported(&read_report(&report), suffix),
        served,
        "report vs ledger"
    );
}
