//! The dashboards and rules under `deploy/` query only what flowtap exports: every metric name
//! in their PromQL is a series of a live scrape of the demo or of the genai profile watching curl
//! call a test LLM server (or a recording rule's output).

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

use flowtap_tests::{promql::metric_names, *};
use yaml_rust2::YamlLoader;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn files(dir: &Path, extension: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|error| panic!("{}: {error}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == extension))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no *.{extension} in {}", dir.display());
    files
}

/// Every `expr` string anywhere in a dashboard (panels, rows' nested panels), and the metric
/// argument of `label_values(METRIC, LABEL)` variable queries.
fn dashboard_queries(value: &serde_json::Value, found: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(object) => {
            for (key, value) in object {
                match (key.as_str(), value.as_str()) {
                    ("expr", Some(expr)) => found.push(expr.to_string()),
                    ("query" | "definition", Some(query)) => {
                        if let Some((metric, _label)) = query
                            .strip_prefix("label_values(")
                            .and_then(|args| args.rsplit_once(','))
                        {
                            found.push(metric.to_string());
                        }
                    }
                    _ => dashboard_queries(value, found),
                }
            }
        }
        serde_json::Value::Array(values) => {
            values.iter().for_each(|v| dashboard_queries(v, found));
        }
        _ => {}
    }
}

/// (every expression of every rule, the names recording rules define).
fn rule_queries() -> (Vec<String>, BTreeSet<String>) {
    let mut exprs = Vec::new();
    let mut recorded = BTreeSet::new();
    for file in files(&deploy_dir().join("prometheus/rules"), "yaml") {
        let docs = YamlLoader::load_from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        let groups = docs[0]["groups"].as_vec().expect("groups");
        for rule in groups
            .iter()
            .flat_map(|g| g["rules"].as_vec().expect("rules"))
        {
            exprs.push(rule["expr"].as_str().expect("expr").to_string());
            if let Some(record) = rule["record"].as_str() {
                recorded.insert(record.to_string());
            }
        }
    }
    (exprs, recorded)
}

/// A scrape of the genai profile after curl's LLM calls to the test server.
fn genai_exposition(dir: &Path) -> String {
    let server = llm::LlmServer::start(dir);
    let flowtap =
        Running::start(flowtap().args(["run", "--profile", "genai", "--exe", llm::LIBSSL]));
    let suffix = "-deploy";
    let output = Command::new("curl")
        .args(llm::curl_calls(&server, suffix))
        .output()
        .expect("running curl");
    assert!(output.status.success(), "{output:?}");
    let served: u64 = server.served(suffix).requests.values().sum();
    let mut exposition = String::new();
    for _ in 0..50 {
        exposition = flowtap.scrape();
        let seen: f64 = samples(&exposition)
            .into_iter()
            .filter(|(name, labels, _)| name == "llm_requests_total" && labels.contains(suffix))
            .map(|(_, _, n)| n)
            .sum();
        if seen as u64 == served {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    flowtap.interrupt();
    let (code, stderr) = flowtap.finish();
    assert_eq!(code, 0, "{stderr}");
    exposition
}

#[test]
fn dashboards_and_rules_use_only_exported_metrics() {
    let dir = scratch_dir("deploy");
    let (demo, _) = isolated_fixture(&dir);
    // Spans on, so the span pipeline's counters are exported.
    let flowtap = Running::start(flowtap().args([
        "run",
        "--exe",
        demo.to_str().unwrap(),
        "--spans-out",
        dir.join("spans.jsonl").to_str().unwrap(),
    ]));
    // Failures for the error series, and more routes than the label cap for the capped series.
    let output = Command::new(&demo)
        .args([
            "--runs",
            "400",
            "--error-rate",
            "0.2",
            "--distinct-routes",
            "300",
        ])
        .output()
        .expect("running wfdemo");
    assert!(output.status.success(), "{output:?}");
    let exposition = flowtap.scrape();
    flowtap.interrupt();
    let (code, stderr) = flowtap.finish();
    assert_eq!(code, 0, "{stderr}");
    let exported: BTreeSet<String> = samples(&exposition)
        .into_iter()
        .chain(samples(&genai_exposition(&dir)))
        .map(|(name, _, _)| name)
        .collect();

    let mut queries = Vec::new();
    for file in files(&deploy_dir().join("grafana/dashboards"), "json") {
        let dashboard: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        let before = queries.len();
        dashboard_queries(&dashboard, &mut queries);
        assert!(queries.len() > before, "{}: no queries", file.display());
    }
    let (rule_exprs, recorded) = rule_queries();
    queries.extend(rule_exprs);

    let used: BTreeSet<String> = queries.iter().flat_map(|q| metric_names(q)).collect();
    // Every family the demo exercises, from each of the agent's groups of metrics.
    for family in [
        "flowtap_function_duration_seconds_bucket",
        "primitive_execution_duration_seconds_bucket",
        "llm_cost_total",
        "llm_requests_total",
        "llm_request_duration_seconds_bucket",
        "gen_ai_client_token_usage_bucket",
        "flowtap_events_lost_total",
        "flowtap_spans_dropped_total",
        "up",
    ] {
        assert!(used.contains(family), "no dashboard or rule uses {family}");
    }
    // Prometheus adds `up` to every scrape target itself.
    let unknown: Vec<&String> = used
        .iter()
        .filter(|name| !exported.contains(*name) && !recorded.contains(*name) && *name != "up")
        .collect();
    assert!(
        unknown.is_empty(),
        "dashboards or rules query {unknown:?}, which flowtap does not export (exported: {exported:?})"
    );
    eprintln!(
        "{} metric names in {} queries, all exported or recorded",
        used.len(),
        queries.len()
    );
}

#[test]
fn the_configmap_is_a_config_flowtap_accepts() {
    let text =
        std::fs::read_to_string(deploy_dir().join("kubernetes/base/configmap.yaml")).unwrap();
    let configmap = &YamlLoader::load_from_str(&text).unwrap()[0];
    let toml = configmap["data"]["flowtap.toml"]
        .as_str()
        .expect("the ConfigMap carries flowtap.toml");
    let dir = scratch_dir("configmap");
    let path = dir.join("flowtap.toml");
    std::fs::write(&path, toml).unwrap();
    // Outside a pod the agent stops at locating the API server: every key and value before
    // that was accepted.
    let (code, _, stderr) = run_flowtap(&["run", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("KUBERNETES_SERVICE_HOST/KUBERNETES_SERVICE_PORT are not set"),
        "{stderr}"
    );
}
