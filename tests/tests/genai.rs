//! LLM calls decoded from TLS plaintext (profile `genai`): a local HTTPS server speaking the
//! OpenAI and Anthropic APIs (its own CA, given to clients the standard way), called by curl
//! (launch mode) and by the official Python SDKs (library mode on libssl). Tokens per model and
//! kind in flowtap's report and metrics must equal what the server served, one GenAI span per
//! call with its attributes, and the byte capture's accounting must add up under a small ring.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use flowtap_tests::{spans::read_json_lines, *};

const LIBSSL: &str = "/usr/lib/x86_64-linux-gnu/libssl.so.3";

fn genai_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("genai")
}

/// The test server and its ledger of the calls it served.
struct LlmServer {
    child: Child,
    port: u16,
    ca: PathBuf,
    ledger: PathBuf,
}

/// What the server served, from its ledger.
#[derive(Debug, Default, PartialEq)]
struct Served {
    /// (model, status) → calls.
    requests: BTreeMap<(String, u64), u64>,
    /// (model, kind) → tokens.
    tokens: BTreeMap<(String, &'static str), u64>,
}

impl LlmServer {
    fn start(dir: &Path) -> Self {
        let ca = make_certificates(dir);
        let ledger = dir.join("ledger.jsonl");
        let mut child = Command::new("/usr/bin/python3.11")
            .arg(genai_dir().join("llm_server.py"))
            .arg(dir.join("server.pem"))
            .arg(dir.join("server.key"))
            .arg(&ledger)
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting the test LLM server (python3.11)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .strip_prefix("port ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("the server's first line is its port: {line:?}"));
        Self {
            child,
            port,
            ca,
            ledger,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.port)
    }

    /// The ledger's calls of models ending with `suffix`.
    fn served(&self, suffix: &str) -> Served {
        let text = std::fs::read_to_string(&self.ledger).unwrap_or_default();
        let mut served = Served::default();
        for line in text.lines() {
            let call: serde_json::Value = serde_json::from_str(line).unwrap();
            let model = call["model"].as_str().unwrap().to_string();
            if !model.ends_with(suffix) {
                continue;
            }
            let status = call["status"].as_u64().unwrap();
            *served.requests.entry((model.clone(), status)).or_default() += 1;
            for kind in ["prompt", "completion"] {
                *served.tokens.entry((model.clone(), kind)).or_default() +=
                    call[kind].as_u64().unwrap();
            }
        }
        served
    }
}

impl Drop for LlmServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A CA and a server certificate for localhost it signed, made with the openssl tool.
fn make_certificates(dir: &Path) -> PathBuf {
    let openssl = |args: &[&str]| {
        let status = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stderr(Stdio::null())
            .status()
            .expect("running openssl");
        assert!(status.success(), "openssl {args:?}");
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=flowtap test CA",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ]);
    std::fs::write(
        dir.join("ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "ext",
    ]);
    dir.join("ca.pem")
}

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

/// One curl process making every kind of call over one kept-alive connection (`--next`).
fn curl_calls(server: &LlmServer, suffix: &str) -> Vec<String> {
    let chat = server.url("/v1/chat/completions");
    let messages = r#"[{"role":"user","content":"say something short please"}]"#;
    let calls = [
        (
            chat.clone(),
            format!(r#"{{"model":"gpt-4o-mini{suffix}","messages":{messages},"max_tokens":1}}"#),
        ),
        (
            chat.clone(),
            format!(
                r#"{{"model":"gpt-4o{suffix}","messages":{messages},"max_tokens":2,"stream":true,"stream_options":{{"include_usage":true}}}}"#
            ),
        ),
        (
            chat.clone(),
            format!(r#"{{"model":"rate-limited{suffix}","messages":{messages}}}"#),
        ),
        (
            chat,
            format!(r#"{{"model":"broken{suffix}","messages":{messages}}}"#),
        ),
        (
            server.url("/v1/messages"),
            format!(
                r#"{{"model":"claude-sonnet-4{suffix}","max_tokens":3,"messages":{messages}}}"#
            ),
        ),
        (
            server.url("/v1/messages"),
            format!(
                r#"{{"model":"claude-3-5-haiku{suffix}","max_tokens":4,"stream":true,"messages":{messages}}}"#
            ),
        ),
        (
            server.url("/v1/embeddings"),
            format!(
                r#"{{"model":"text-embedding-3-small{suffix}","input":"four words of input"}}"#
            ),
        ),
        (
            server.url("/v1/completions"),
            format!(r#"{{"model":"davinci-002{suffix}","prompt":"once upon a time"}}"#),
        ),
        (
            server.url("/v1/responses"),
            format!(r#"{{"model":"gpt-4.1{suffix}","input":"two words"}}"#),
        ),
    ];
    let mut args = vec!["--silent".to_string(), "--show-error".to_string()];
    for (n, (url, body)) in calls.into_iter().enumerate() {
        if n > 0 {
            args.push("--next".into());
        }
        args.extend([
            "--cacert".into(),
            server.ca.display().to_string(),
            "--compressed".into(),
            "-H".into(),
            "content-type: application/json".into(),
            "-o".into(),
            "/dev/null".into(),
            "-d".into(),
            body,
            url,
        ]);
    }
    args
}

fn llm_spans(spans_file: &Path) -> Vec<flowtap_tests::spans::SpanRecord> {
    let text = std::fs::read_to_string(spans_file).unwrap_or_default();
    read_json_lines(&text)
}

#[test]
fn curl_calls_are_counted_exactly_and_spanned_inside_the_probed_caller() {
    let dir = scratch_dir("genai-curl");
    let server = LlmServer::start(&dir);
    let spans_file = dir.join("spans.jsonl");
    let args = curl_calls(&server, "");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let launched = launch_with_report(
        &dir,
        &[
            "--profile",
            "genai",
            "--symbols",
            "libcurl.so*:curl_easy_perform",
            "--spans-out",
            spans_file.to_str().unwrap(),
        ],
        Path::new("/usr/bin/curl"),
        &args,
    );
    assert_eq!(launched.code, 0, "{}", launched.stderr);
    let report = read_report(&launched.report);
    let served = server.served("");
    assert_eq!(served.requests.values().sum::<u64>(), 9, "{served:?}");
    assert_eq!(reported(&report, ""), served, "report vs ledger");
    assert_eq!(
        report["capture"]["ring_full_bytes"], 0,
        "{}",
        report["capture"]
    );

    let spans = llm_spans(&spans_file);
    assert!(
        spans.iter().all(|s| !s.name.starts_with("SSL_")),
        "spans = false keeps the libssl calls out"
    );
    let callers: BTreeMap<&str, &str> = spans
        .iter()
        .filter(|s| s.name == "curl_easy_perform")
        .map(|s| (s.span_id.as_str(), s.trace_id.as_str()))
        .collect();
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
        assert_eq!(
            callers.get(span.parent_span_id.as_str()),
            Some(&span.trace_id.as_str()),
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
            .args(["run", "--profile", "genai", "--exe", LIBSSL])
            .args(["--report", "json", "--output"])
            .arg(&report_path)
            .arg("--spans-out")
            .arg(&spans_file),
    );
    let suffix = "-sdk";
    let output = Command::new(&python)
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
