//! Profiles: every field of the format against the fixture runtime, the shipped profiles
//! against real Debian libraries (SQLite, the C library, OpenSSL), and malformed profiles.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use flowtap_tests::{spans::*, *};

fn test_profile(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("profiles")
        .join(name)
}

/// One call as the fixture recorded it: its detail words at entry and its return value.
#[derive(Debug)]
struct Call {
    detail: Vec<String>,
    result: i64,
}

/// The fixture's `--trace` record, per function, calls in order of return per thread.
fn recorded_calls(trace: &str) -> BTreeMap<String, Vec<Call>> {
    let mut open: BTreeMap<(String, String), Vec<Vec<String>>> = BTreeMap::new();
    let mut calls: BTreeMap<String, Vec<Call>> = BTreeMap::new();
    for line in trace.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let [thread, event, function, rest @ ..] = words.as_slice() else {
            continue;
        };
        let key = (thread.to_string(), function.to_string());
        if *event == "enter" {
            let detail = rest.iter().map(|w| w.to_string()).collect();
            open.entry(key).or_default().push(detail);
        } else {
            let detail = open.get_mut(&key).and_then(Vec::pop).unwrap_or_default();
            let result = rest[0].parse().expect("the fixture records return values");
            calls
                .entry(function.to_string())
                .or_default()
                .push(Call { detail, result });
        }
    }
    calls
}

fn count(calls: &[Call], predicate: impl Fn(&Call) -> bool) -> usize {
    calls.iter().filter(|call| predicate(call)).count()
}

fn spans_named<'a>(spans: &'a [SpanRecord], prefix: &str) -> Vec<&'a SpanRecord> {
    spans
        .iter()
        .filter(|s| s.name.starts_with(prefix))
        .collect()
}

fn attribute_values(spans: &[&SpanRecord], key: &str) -> BTreeSet<String> {
    spans
        .iter()
        .map(|s| {
            s.attribute(key)
                .unwrap_or_else(|| panic!("{} has no {key}: {:?}", s.name, s.attributes))
                .to_string()
        })
        .collect()
}

#[test]
fn every_field_of_a_profile_reaches_spans_and_metrics() {
    let dir = scratch_dir("profile-fields");
    let (demo, _) = isolated_fixture(&dir);
    let spans_out = dir.join("spans.jsonl");
    let trace_file = dir.join("calls.txt");
    let profile = test_profile("every-field.toml");
    let flowtap = Running::start(flowtap().args([
        "run",
        "--exe",
        demo.to_str().unwrap(),
        "--profile",
        profile.to_str().unwrap(),
        "--spans-out",
        spans_out.to_str().unwrap(),
    ]));
    let runs = 40;
    let output = Command::new(&demo)
        .args(["--runs", &runs.to_string(), "--seed", "5"])
        .args([
            "--error-rate",
            "0.3",
            "--trace",
            trace_file.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let exposition = flowtap.scrape();
    flowtap.interrupt();
    let (code, stderr) = flowtap.finish();
    assert_eq!(code, 0, "{stderr}");
    let calls = recorded_calls(&std::fs::read_to_string(&trace_file).unwrap());
    let spans = read_json_lines(&std::fs::read_to_string(&spans_out).unwrap());
    assert!(
        spans
            .iter()
            .all(|s| s.attribute("code.function.name").is_some()),
        "every span carries code.function.name"
    );
    let metric = |name: &str, with: &[&str]| sample(&exposition, name, with);

    // span_name from a string cut by max_len; u64 and return attributes; labels from a string,
    // {status} and {function}.
    let runs_spans = spans_named(&spans, "run ");
    assert_eq!(runs_spans.len(), runs);
    assert!(runs_spans.iter().all(|s| s.name == "run support"));
    assert_eq!(
        attribute_values(&runs_spans, "fx.workflow"),
        BTreeSet::from(["support".to_string()])
    );
    let run_ids: BTreeSet<String> = (0..runs).map(|n| n.to_string()).collect();
    assert_eq!(attribute_values(&runs_spans, "fx.run_id"), run_ids);
    let run_calls = &calls["wf_workflow_run"];
    let failed_runs = count(run_calls, |c| c.result < 0);
    assert_eq!(runs_spans.iter().filter(|s| s.failed).count(), failed_runs);
    assert_eq!(
        metric(
            "fx_runs_total",
            &[
                r#"workflow="support""#,
                r#"status="failure""#,
                r#"function="wf_workflow_run""#
            ]
        ) as usize,
        failed_runs
    );
    assert_eq!(
        metric("fx_runs_total", &[r#"status="success""#]) as usize,
        runs - failed_runs
    );

    // Fixed span name, error = "zero", bool return, conditions; the key labels a metric but
    // never reaches a span.
    let lookups = &calls["wf_cache_get"];
    let lookup_spans = spans_named(&spans, "cache lookup");
    assert_eq!(lookup_spans.len(), lookups.len());
    let hits = count(lookups, |c| c.result == 1);
    assert_eq!(
        lookup_spans
            .iter()
            .filter(|s| s.attribute("fx.hit") == Some("true"))
            .count(),
        hits
    );
    assert_eq!(
        lookup_spans.iter().filter(|s| s.failed).count(),
        lookups.len() - hits
    );
    assert_eq!(metric("fx_cache_hits_total", &[]) as usize, hits);
    assert_eq!(
        metric("fx_cache_errors_total", &[]) as usize,
        lookups.len() - hits
    );
    let mut by_key: BTreeMap<&str, usize> = BTreeMap::new();
    for call in lookups {
        *by_key.entry(&call.detail[0]).or_default() += 1;
    }
    for (key, n) in &by_key {
        let label = format!(r#"key="{key}""#);
        assert_eq!(metric("fx_cache_lookups_total", &[&label]) as usize, *n);
        assert!(
            spans
                .iter()
                .all(|s| s.attributes.values().all(|v| !v.contains(key))),
            "the key {key} is captured but never exported"
        );
    }

    // error = "nonzero" and error = -1.
    let puts = &calls["wf_cache_put"];
    assert_eq!(
        metric("fx_cache_puts_total", &[r#"status="failure""#]) as usize,
        count(puts, |c| c.result != 0)
    );
    let timeouts = &calls["wf_timeout_run"];
    let timeout_spans = spans_named(&spans, "wf_timeout_run");
    assert_eq!(
        timeout_spans.iter().filter(|s| s.failed).count(),
        count(timeouts, |c| c.result == -1)
    );
    assert_eq!(
        attribute_values(&timeout_spans, "fx.timeout_us"),
        BTreeSet::from(["50000".to_string()])
    );
    assert_eq!(
        attribute_values(&timeout_spans, "fx.work_us"),
        BTreeSet::from(["1000".to_string(), "80000".to_string()])
    );
    assert_eq!(
        metric(
            "fx_timeout_duration_seconds_count",
            &[r#"function="wf_timeout_run""#]
        ) as usize,
        timeouts.len()
    );

    // Hand-off and adoption by a pointer; fields behind it: an i32, a u64 and a string.
    let submits = spans_named(&spans, "wf_task_submit");
    let branches = spans_named(&spans, "branch ");
    assert_eq!(branches.len(), calls["wf_task_execute"].len());
    assert_eq!(
        attribute_values(&submits, "fx.branch"),
        BTreeSet::from(["0", "1", "2"].map(String::from))
    );
    assert!(
        attribute_values(&submits, "fx.task")
            .iter()
            .all(|task| task.starts_with("0x"))
    );
    let tags: BTreeSet<String> = calls["wf_task_execute"]
        .iter()
        .map(|c| c.detail[0].clone())
        .collect();
    assert_eq!(attribute_values(&branches, "fx.tag"), tags);
    assert!(
        branches
            .iter()
            .all(|s| s.name == format!("branch {}", s.attributes["fx.tag"]))
    );
    assert_eq!(attribute_values(&branches, "fx.seed").len(), branches.len());
    let submit_parents: BTreeSet<(&str, &str)> = submits
        .iter()
        .map(|s| (s.trace_id.as_str(), s.parent_span_id.as_str()))
        .collect();
    assert!(
        branches
            .iter()
            .all(|b| submit_parents.contains(&(b.trace_id.as_str(), b.parent_span_id.as_str()))),
        "each branch is a child of the span that submitted it"
    );

    // Constant attributes, captures never exported, sums with a scale and a condition.
    let llm = &calls["wf_llm_call"];
    let llm_spans: Vec<&SpanRecord> = spans.iter().filter(|s| s.name.ends_with(" call")).collect();
    assert_eq!(llm_spans.len(), llm.len());
    for span in &llm_spans {
        assert_eq!(span.attribute("fx.constant"), Some("yes"));
        assert_eq!(
            span.name,
            format!("{} call", span.attributes["gen_ai.request.model"])
        );
        assert!(
            !span
                .attributes
                .keys()
                .any(|k| k.contains("prompt") || k.contains("cost"))
        );
    }
    let mut prompt_by_model: BTreeMap<&str, u64> = BTreeMap::new();
    let mut cost_ok = 0u64;
    for call in llm {
        *prompt_by_model.entry(&call.detail[0]).or_default() +=
            call.detail[1].parse::<u64>().unwrap();
        if call.result >= 0 {
            cost_ok += call.detail[3].parse::<u64>().unwrap();
        }
    }
    for (model, prompt) in prompt_by_model {
        let label = format!(r#"model="{model}""#);
        assert_eq!(metric("fx_prompt_tokens_total", &[&label]) as u64, prompt);
    }
    assert!((metric("fx_cost_total", &[]) - cost_ok as f64 * 0.001).abs() < 1e-6);
    let retries = &calls["wf_retry_run"];
    let used: i64 = retries.iter().map(|c| c.result).filter(|&r| r >= 0).sum();
    assert_eq!(metric("fx_retry_attempts_used_total", &[]) as i64, used);
    assert_eq!(
        attribute_values(&spans_named(&spans, "wf_retry_run"), "fx.max_attempts"),
        BTreeSet::from(["3".to_string()])
    );

    // A bool and an i16 from one register.
    let sequences = spans_named(&spans, "wf_sequential");
    assert_eq!(
        attribute_values(&sequences, "fx.has_steps"),
        BTreeSet::from(["true".to_string()])
    );
    assert_eq!(
        attribute_values(&sequences, "fx.steps"),
        BTreeSet::from(["3".to_string()])
    );

    // Functions no rule matches are not probed.
    assert!(
        spans
            .iter()
            .all(|s| s.attribute("code.function.name") != Some("wf_step_run"))
    );
}

/// Counts calls of `function` in `library` made by `command`, with bpftrace.
fn bpftrace_count(library: &str, function: &str, command: &str) -> u64 {
    let script = format!("uprobe:{library}:{function} /pid == cpid/ {{ @calls = count(); }}");
    let output = Command::new("bpftrace")
        .args(["-e", &script, "-c", command])
        .output()
        .expect("bpftrace is installed by `cargo xtask setup`");
    assert!(output.status.success(), "bpftrace failed: {output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    stdout
        .lines()
        .find_map(|line| line.strip_prefix("@calls: "))
        .map_or(0, |n| n.trim().parse().unwrap())
}

/// The shared library `program` loads whose file name starts with `prefix`.
fn library_of(program: &str, prefix: &str) -> String {
    let output = Command::new("ldd").arg(program).output().unwrap();
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|line| {
            let (name, rest) = line.trim().split_once(" => ")?;
            name.starts_with(prefix)
                .then(|| rest.split_whitespace().next().unwrap().to_string())
        })
        .unwrap_or_else(|| panic!("{program} does not load {prefix}"))
}

const SQL_SCRIPT: &[&str] = &[
    "CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT);",
    "INSERT INTO t(name) VALUES ('a'), ('b'), ('c');",
    "SELECT name FROM t ORDER BY id;",
    "SELECT count(*) FROM t WHERE name > 'a';",
];

#[test]
fn sqlite_statements_are_traced_with_their_sql() {
    let dir = scratch_dir("sqlite");
    let sqlite = "/usr/bin/sqlite3";
    let library = library_of(sqlite, "libsqlite3.so");
    let script = dir.join("script.sql");
    std::fs::write(&script, SQL_SCRIPT.join("\n") + "\nSELEC oops;\n").unwrap();
    // -init runs the script, then the shell reads its (empty) standard input and exits.
    let args = ["-init", script.to_str().unwrap(), ":memory:"];
    let expected = bpftrace_count(
        &library,
        "sqlite3_prepare_v2",
        &format!("{sqlite} {}", args.join(" ")),
    );
    assert!(
        expected >= SQL_SCRIPT.len() as u64,
        "bpftrace saw {expected}"
    );

    let spans_out = dir.join("spans.jsonl");
    let run = launch_with_report(
        &dir,
        &[
            "--profile",
            "sqlite",
            "--spans-out",
            spans_out.to_str().unwrap(),
        ],
        Path::new(sqlite),
        &args,
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let spans = read_json_lines(&std::fs::read_to_string(&spans_out).unwrap());
    let prepares = spans_named(&spans, "sqlite3_prepare_v2");
    assert_eq!(
        prepares.len() as u64,
        expected,
        "flowtap and bpftrace count the same calls"
    );
    let texts = attribute_values(&prepares, "db.query.text");
    for statement in SQL_SCRIPT {
        assert!(
            texts.iter().any(|text| text.starts_with(statement)),
            "no span carries `{statement}`: {texts:?}"
        );
    }
    let failed: Vec<_> = prepares.iter().filter(|s| s.failed).collect();
    assert_eq!(failed.len(), 1, "the misspelt statement fails to prepare");
    assert!(failed[0].attributes["db.query.text"].starts_with("SELEC oops"));
    assert_eq!(failed[0].attribute("db.response.status_code"), Some("1"));
    assert!(
        prepares
            .iter()
            .all(|s| s.attribute("db.system.name") == Some("sqlite"))
    );
    let steps = spans_named(&spans, "sqlite3_step");
    assert!(
        steps
            .iter()
            .filter(|s| s.attribute("db.response.status_code") == Some("100"))
            .count()
            >= 4,
        "rows: 3 names and a count"
    );
    let report = read_report(&run.report);
    let counter = |name: &str, labels: &[(&str, &str)]| -> f64 {
        report["metrics"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["name"] == name && labels.iter().all(|(k, v)| m["labels"][k] == *v))
            .map(|m| m["value"].as_f64().unwrap())
            .sum()
    };
    assert_eq!(
        counter("sqlite_operations_total", &[("operation", "prepare")]) as u64,
        expected
    );
    assert_eq!(
        counter(
            "sqlite_operations_total",
            &[("operation", "prepare"), ("status", "failure")]
        ),
        1.0
    );
    assert_eq!(
        counter("sqlite_rows_total", &[]) as usize,
        steps
            .iter()
            .filter(|s| s.attribute("db.response.status_code") == Some("100"))
            .count()
    );
}

#[test]
fn getaddrinfo_is_traced_with_the_host_name() {
    let dir = scratch_dir("getaddrinfo");
    let spans_out = dir.join("spans.jsonl");
    let script = "import socket\n\
        socket.getaddrinfo('localhost', 80)\n\
        try:\n    socket.getaddrinfo(None, None)\nexcept socket.gaierror:\n    pass\n";
    let run = launch_with_report(
        &dir,
        &[
            "--profile",
            "libc",
            "--spans-out",
            spans_out.to_str().unwrap(),
        ],
        Path::new("/usr/bin/python3"),
        &["-c", script],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let spans = read_json_lines(&std::fs::read_to_string(&spans_out).unwrap());
    let lookups = spans_named(&spans, "getaddrinfo");
    let localhost: Vec<_> = lookups
        .iter()
        .filter(|s| s.attribute("dns.question.name") == Some("localhost"))
        .collect();
    assert_eq!(localhost.len(), 1, "{lookups:?}");
    assert_eq!(localhost[0].name, "getaddrinfo localhost");
    assert!(!localhost[0].failed);
    assert_eq!(localhost[0].attribute("getaddrinfo.result"), Some("0"));
    assert_eq!(
        localhost[0].attribute("code.function.name"),
        Some("getaddrinfo")
    );
    let failed: Vec<_> = lookups.iter().filter(|s| s.failed).collect();
    assert_eq!(
        failed.len(),
        1,
        "getaddrinfo(NULL, NULL) fails: {lookups:?}"
    );
    // EAI_NONAME is -2 in glibc.
    assert_eq!(failed[0].attribute("getaddrinfo.result"), Some("-2"));
    let report = read_report(&run.report);
    let series = report["metrics"].as_array().unwrap();
    assert!(series.iter().any(|m| m["name"] == "dns_lookups_total"
        && m["labels"]["host"] == "localhost"
        && m["labels"]["status"] == "success"
        && m["value"] == 1.0));
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn a_tls_exchange_is_traced_with_byte_counts() {
    let dir = scratch_dir("openssl");
    let (key, cert) = (dir.join("key.pem"), dir.join("cert.pem"));
    let status = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=localhost", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let openssl = std::fs::canonicalize("/usr/bin/openssl").unwrap();
    let spans_out = dir.join("spans.jsonl");
    // Both ends: every process running the openssl binary, with the libssl it loads.
    let flowtap = Running::start(flowtap().args([
        "run",
        "--exe",
        openssl.to_str().unwrap(),
        "--profile",
        "openssl",
        "--spans-out",
        spans_out.to_str().unwrap(),
    ]));
    let port = free_port().to_string();
    let mut server = Command::new(&openssl)
        .args(["s_server", "-quiet", "-rev", "-accept", &port])
        .arg("-cert")
        .arg(&cert)
        .arg("-key")
        .arg(&key)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port.parse::<u16>().unwrap())).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "s_server did not listen"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut client = Command::new(&openssl)
        .args([
            "s_client",
            "-quiet",
            "-no_ign_eof",
            "-connect",
            &format!("127.0.0.1:{port}"),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let payload = "hello flowtap\n";
    client
        .stdin
        .as_mut()
        .unwrap()
        .write_all(payload.as_bytes())
        .unwrap();
    // The server answers the line reversed; wait for it before hanging up.
    let mut reply = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(client.stdout.as_mut().unwrap()),
        &mut reply,
    )
    .unwrap();
    assert_eq!(reply.trim(), "patwolf olleh");
    drop(client.stdin.take());
    client.wait().unwrap();
    let _ = server.kill();
    server.wait().unwrap();
    let exposition = flowtap.scrape();
    flowtap.interrupt();
    let (code, stderr) = flowtap.finish();
    assert_eq!(code, 0, "{stderr}");

    let spans = read_json_lines(&std::fs::read_to_string(&spans_out).unwrap());
    let handshakes = spans_named(&spans, "SSL_do_handshake");
    assert!(
        handshakes.iter().any(|s| !s.failed),
        "a handshake completed: {handshakes:?}"
    );
    // s_server -rev moves its bytes through an SSL BIO, which calls libssl's internals, not
    // the exported calls: the byte counts are the client's.
    let writes: Vec<_> = spans.iter().filter(|s| s.name == "SSL_write").collect();
    let reads: Vec<_> = spans.iter().filter(|s| s.name == "SSL_read").collect();
    let bytes = payload.len().to_string();
    for (direction, spans, key) in [
        ("write", &writes, "tls.write.bytes"),
        ("read", &reads, "tls.read.bytes"),
    ] {
        assert!(
            spans
                .iter()
                .filter(|s| s.attribute(key) == Some(&bytes))
                .count()
                >= 1,
            "the client {direction}s the {bytes}-byte line: {spans:?}"
        );
        let label = format!(r#"direction="{direction}""#);
        let total = sample(&exposition, "tls_bytes_total", &[&label]);
        let expected: f64 = spans
            .iter()
            .filter(|s| !s.failed)
            .map(|s| s.attributes[key].parse::<f64>().unwrap())
            .sum();
        assert_eq!(total, expected, "{direction} bytes from metrics and spans");
    }
}

#[test]
fn profile_commands_list_show_and_check() {
    let (code, stdout, _) = run_flowtap(&["profile", "list"]);
    assert_eq!(code, 0);
    for name in ["workflow", "sqlite", "libc", "openssl"] {
        assert!(stdout.lines().any(|l| l.starts_with(name)), "{stdout}");
    }
    let (code, shown, _) = run_flowtap(&["profile", "show", "workflow"]);
    assert_eq!(code, 0);
    let dir = scratch_dir("profile-show");
    let copy = dir.join("workflow.toml");
    std::fs::write(&copy, &shown).unwrap();
    let (code, stdout, stderr) = run_flowtap(&["profile", "check", copy.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("profile `workflow` is valid"), "{stdout}");
    assert!(stdout.contains("workflow_executions_total"), "{stdout}");
}

#[test]
fn malformed_profiles_get_located_one_line_errors() {
    let dir = scratch_dir("bad-profiles");
    let cases = [
        (
            "syntax.toml",
            "[profile]\nname = \"x\n",
            "syntax.toml:2:10: invalid basic string",
        ),
        (
            "unknown-key.toml",
            "[profile]\nname = \"x\"\n[[function]]\nmatch = \"f\"\nerrors = \"zero\"\n",
            "unknown-key.toml:5:1: unknown field `errors`",
        ),
        (
            "bad-type.toml",
            "[profile]\nname = \"x\"\n[[function]]\nmatch = \"f\"\nreturns = { type = \"float\" }\n",
            "bad-type.toml:5:20: unknown type `float`",
        ),
        (
            "bad-label.toml",
            "[profile]\nname = \"x\"\n[[function]]\nmatch = \"f\"\n[[function.metric]]\ncounter = \"f_total\"\nlabels = { x = \"{y}\" }\n",
            "bad-label.toml:7:16: unknown name `{y}`",
        ),
    ];
    for (file, text, expected) in cases {
        let path = dir.join(file);
        std::fs::write(&path, text).unwrap();
        for args in [
            vec!["profile", "check", path.to_str().unwrap()],
            vec!["run", "--profile", path.to_str().unwrap(), "--pid", "1"],
        ] {
            let (code, stdout, stderr) = run_flowtap(&args);
            assert_eq!(code, 2, "{args:?}: {stdout}{stderr}");
            assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
            assert!(
                stderr.contains(&format!("{}/{expected}", dir.display())),
                "{stderr}"
            );
        }
    }
    let (code, _, stderr) = run_flowtap(&["run", "--profile", "nosuch", "--pid", "1"]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains(
            "no built-in profile `nosuch` (built in: workflow, sqlite, libc, openssl, genai)"
        ),
        "{stderr}"
    );
    let (code, _, stderr) = run_flowtap(&["profile", "check", "/nonexistent/p.toml"]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("cannot read profile /nonexistent/p.toml"),
        "{stderr}"
    );
}

#[test]
fn symbols_beside_a_profile_add_plain_timing() {
    let dir = scratch_dir("profile-and-symbols");
    let profile = test_profile("every-field.toml");
    let run = launch_with_report(
        &dir,
        &[
            "--profile",
            profile.to_str().unwrap(),
            "--symbols",
            "wf_step_run",
        ],
        &demo_path(),
        &["--runs", "20"],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let demo = demo_counts(&run.stdout);
    let report = read_report(&run.report);
    let counts = report_counts(&report);
    // The profile's functions and the plain selection, each counted exactly.
    for function in [
        "wf_step_run",
        "wf_workflow_run",
        "wf_cache_get",
        "wf_llm_call",
    ] {
        assert_eq!(counts.get(function), demo.get(function), "{function}");
    }
    // A function neither names is not probed.
    assert!(!counts.contains_key("wf_router_route"), "{counts:?}");
    let metrics = report["metrics"].as_array().unwrap();
    assert!(metrics.iter().any(|m| m["name"] == "fx_runs_total"));
}
