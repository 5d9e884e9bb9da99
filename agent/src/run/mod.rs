//! `flowtap run`: four phases in data-flow order. *prepare* resolves the target, plans the
//! probes and opens the outputs; *attach* loads the kernel programs and sets up the sinks;
//! *serve* moves spans and answers scrapes until the run ends; *finish* reads the final
//! counts and writes the report.

mod wait;

use std::{
    fs::File,
    io::Write,
    net::{SocketAddr, TcpListener},
    path::PathBuf,
    sync::{Arc, Mutex, RwLock},
    time::Duration,
};

use anyhow::{Context, bail};
use opentelemetry_otlp::SpanExporter;
use tokio::runtime::Runtime;

use crate::{
    capture_ring::CaptureStream,
    console::{print, status},
    export::{
        metrics_server::MetricsServer,
        otlp::{self, OtlpProtocol, SpanCounts, SpanQueue},
        prometheus::{self, Exporter},
        spans_file::SpansFile,
    },
    genai::{LlmTap, metrics::LlmMetrics},
    host,
    kernel_counters::Snapshot,
    kubernetes::{Kubernetes, KubernetesConfig, PodWorkloads},
    library_loads::LoadFollower,
    loader::{KernelLogLevel, LoadOptions, Probes},
    output_file::{self, OutputFile},
    plan::{ExitPolicy, Plan, Selection, SymbolSelector},
    profile::{self, Profile},
    profile_metrics::{LabelCap, ProfileMetrics},
    report::{LoadsSummary, Report, ReportFormat, SpanSummary},
    span_ring::SpanStream,
    spans::{SpanFactory, SpanPump},
    symbols::ElfObject,
    targets::{Target, TargetSpec},
    workloads::{NoWorkloads, Workloads},
};

/// What a run does, in the agent's terms (the command line's flags are one way to fill it).
#[derive(Debug)]
pub(crate) struct RunConfig {
    /// What to trace; None only when a pod selector picks it.
    pub(crate) target: Option<TargetSpec>,
    /// Trace the processes the target forks; `None`: the mode's default.
    pub(crate) children: Option<bool>,
    /// Built-in profile names or profile files; none, with no `symbols` either: the default.
    pub(crate) profiles: Vec<String>,
    /// `GLOB` or `OBJECT:GLOB` selectors of functions to time without a profile.
    pub(crate) symbols: Vec<String>,
    /// How each object's returns are observed.
    pub(crate) exit_probes: ExitPolicy,
    /// Stop after this long.
    pub(crate) duration: Option<Duration>,
    pub(crate) report: ReportFormat,
    /// The report's file, else standard output.
    pub(crate) output: Option<PathBuf>,
    /// Where `/metrics` is served.
    pub(crate) metrics_addr: SocketAddr,
    pub(crate) service_name: Option<String>,
    /// The OTLP collector, else the one the environment names, if any.
    pub(crate) otlp_endpoint: Option<String>,
    pub(crate) otlp_protocol: OtlpProtocol,
    /// Fraction of traces whose spans are exported.
    pub(crate) sample_rate: f64,
    /// Spans as OTLP JSON lines.
    pub(crate) spans_out: Option<PathBuf>,
    /// Prompt and completion text on LLM spans.
    pub(crate) capture_content: bool,
    /// Bytes of the capture ring; `None`: the default.
    pub(crate) capture_ring_bytes: Option<u32>,
    /// Gets the ready line once the probes are attached, then is closed.
    pub(crate) ready: Option<File>,
    /// Attach programs that do nothing (the kernel's own cost, for benchmarks).
    pub(crate) empty_programs: bool,
    /// Print the kernel programs' diagnostics up to this level; off when None.
    pub(crate) kernel_log: Option<KernelLogLevel>,
    /// Where to write the verifier's log if the kernel refuses a program.
    pub(crate) verifier_log: Option<PathBuf>,
    pub(crate) kubernetes: KubernetesConfig,
    /// Per-function series on `/metrics` beyond which the rest fold into `other`.
    pub(crate) max_function_series: usize,
}

impl Default for RunConfig {
    fn default() -> Self {
        Self {
            target: None,
            children: None,
            profiles: Vec::new(),
            symbols: Vec::new(),
            exit_probes: ExitPolicy::default(),
            duration: None,
            report: ReportFormat::default(),
            output: None,
            metrics_addr: SocketAddr::from(([127, 0, 0, 1], 9464)),
            service_name: None,
            otlp_endpoint: None,
            otlp_protocol: OtlpProtocol::default(),
            sample_rate: 1.0,
            spans_out: None,
            capture_content: false,
            capture_ring_bytes: None,
            ready: None,
            empty_programs: false,
            kernel_log: None,
            verifier_log: None,
            kubernetes: KubernetesConfig::default(),
            max_function_series: prometheus::DEFAULT_MAX_FUNCTION_SERIES,
        }
    }
}

/// Runs to the end; returns the process exit code (the launched command's, in launch mode).
pub(crate) fn run(mut config: RunConfig) -> anyhow::Result<i32> {
    let ready = config.ready.take();
    let prepared = prepare(&config)?;
    let (mut attached, target) = attach(&config, prepared)?;
    let exit_code = serve(&config, &mut attached, target, ready)?;
    finish(&config, attached, exit_code)
}

/// The target resolved, its probes planned, the outputs open.
struct Prepared {
    target: Target,
    plan: Arc<RwLock<Plan>>,
    /// What the plan was made of: applied again to libraries loaded later.
    selection: Arc<Selection>,
    workloads: Arc<dyn Workloads>,
    report_file: Option<OutputFile>,
    spans_file: Option<OutputFile>,
    listener: TcpListener,
}

fn prepare(config: &RunConfig) -> anyhow::Result<Prepared> {
    let (spec, cluster) = target_spec(config)?;
    let selection = selection(config)?;
    host::check_privileges()?;
    // Fail now, not after a long run, if an output cannot be written; empty none yet.
    let outputs = [
        ("--output", &config.output),
        ("--spans-out", &config.spans_out),
        ("--verifier-log", &config.verifier_log),
    ];
    let named: Vec<_> = outputs
        .iter()
        .filter_map(|(flag, path)| Some((*flag, path.as_deref()?)))
        .collect();
    output_file::check_distinct(&named)?;
    let open = |path: &Option<PathBuf>, what| {
        path.as_deref()
            .map(|path| OutputFile::open(path, what))
            .transpose()
    };
    let report_file = open(&config.output, "the report")?;
    let spans_file = open(&config.spans_out, "spans")?;
    let listener = prometheus::bind(config.metrics_addr)?;
    // Launch mode forks here, so this comes before any thread is started.
    let mut target = Target::resolve(&spec)?;
    target.follow_children(children(config.children)?);
    // A launched command is planned at the exec of its program, once its wrappers are past.
    let (plan, installed) = if target.is_launch() {
        target.follow_exec(
            |name| selection.names_object(name),
            |target| plan_target(target, &selection),
            |(plan, _), own| probes_own_objects(plan, own),
        )?
    } else {
        plan_target(&mut target, &selection)?
    };
    if !installed.is_empty() {
        status(format_args!(
            "probing {} before it is loaded: selected by name, found in the dynamic loader's cache",
            installed.join(", ")
        ));
    }
    for note in plan.notes() {
        eprintln!("flowtap: note: {note}");
    }
    selector_notes(&plan, &selection, &target);
    let workloads: Arc<dyn Workloads> = match cluster {
        Some(cluster) => Arc::new(PodWorkloads::new(cluster, target.pid())),
        None => Arc::new(NoWorkloads),
    };
    Ok(Prepared {
        target,
        plan: Arc::new(RwLock::new(plan)),
        selection: Arc::new(selection),
        workloads,
        report_file,
        spans_file,
        listener,
    })
}

/// Whether `plan` probes a function of `own`, the objects a program loads at start.
fn probes_own_objects(plan: &Plan, own: &[ElfObject]) -> bool {
    plan.probes.iter().any(|probe| {
        let path = &plan.objects[probe.object].path;
        own.iter().any(|object| object.path == *path)
    })
}

/// Plans the probes of `target`, with the installed libraries that selectors name but it does
/// not load yet (their probes are in place before it loads them), which it names.
fn plan_target(target: &mut Target, selection: &Selection) -> anyhow::Result<(Plan, Vec<String>)> {
    let installed = target.add_installed(&selection.absent_objects(&target.objects));
    let plan = Plan::build(&target.objects, selection, &target.describe())?;
    Ok((plan, installed))
}

/// Says which selectors wait for libraries loaded later, and which match nothing (when others
/// do, the run goes on without them).
fn selector_notes(plan: &Plan, selection: &Selection, target: &Target) {
    let waiting = plan.waiting(selection, &target.objects);
    if !waiting.is_empty() {
        status(format_args!(
            "waiting for libraries loaded later: {} names objects not loaded yet",
            waiting.join(", ")
        ));
    }
    let unmatched: Vec<String> = plan
        .unmatched(selection)
        .into_iter()
        .filter(|text| !waiting.contains(text))
        .collect();
    if !unmatched.is_empty() && !selection.defaulted {
        eprintln!(
            "flowtap: note: {} matches no function of {} yet: probed if a library loaded later has one",
            unmatched.join(", "),
            target.describe()
        );
    }
}

/// What to trace, and the cluster when Kubernetes is asked for: a pod selector picks the
/// target, or narrows `--exe` to its pods.
fn target_spec(config: &RunConfig) -> anyhow::Result<(TargetSpec, Option<Kubernetes>)> {
    let mut cluster = config.kubernetes.connect()?;
    let selector = config.kubernetes.pod_selector();
    let spec = match (&mut cluster, selector, &config.target) {
        (Some(cluster), Some(selector), Some(TargetSpec::Binary(exe))) => {
            let binary = cluster.select_executable(&selector, exe)?;
            cluster.restrict_to(selector);
            TargetSpec::Binary(binary)
        }
        (Some(cluster), Some(selector), None) => TargetSpec::Pid(cluster.select_pid(&selector)?),
        (_, _, Some(spec)) => spec.clone(),
        (_, _, None) => {
            bail!("give exactly one target: --pid PID, --exe PATH, or -- CMD [ARGS...]")
        }
    };
    Ok((spec, cluster))
}

/// The profiles asked for (or the default one) and the plain selectors.
fn selection(config: &RunConfig) -> anyhow::Result<Selection> {
    let symbols = config
        .symbols
        .iter()
        .map(|text| text.parse::<SymbolSelector>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| anyhow::anyhow!("--symbols: {error}"))?;
    let defaulted = config.profiles.is_empty() && config.symbols.is_empty();
    let names = if defaulted {
        vec![profile::DEFAULT.to_string()]
    } else {
        config.profiles.clone()
    };
    let profiles = names
        .iter()
        .map(|name| Profile::load(name))
        .collect::<Result<Vec<_>, _>>()?;
    let texts = profiles
        .iter()
        .map(|p| format!("profile {}", p.name))
        .chain(config.symbols.iter().cloned())
        .collect();
    Ok(Selection {
        profiles,
        symbols,
        texts,
        defaulted,
        exit_probes: config.exit_probes.clone(),
    })
}

/// The probes attached and every sink ready: what serving and finishing use.
struct Attached {
    runtime: Runtime,
    plan: Arc<RwLock<Plan>>,
    selection: Arc<Selection>,
    /// Probes libraries loaded later; stopped before the final counts are read.
    follower: Option<LoadFollower>,
    workloads: Arc<dyn Workloads>,
    probes: Arc<Mutex<Probes>>,
    /// OTLP export: the exporter and the queue the pump fills.
    otlp: Option<(SpanExporter, Arc<SpanQueue>)>,
    pump: Option<SpanPump>,
    /// LLM calls decoded from captured bytes, when a profile captures them.
    tap: Option<LlmTap>,
    llm: Option<Arc<Mutex<LlmMetrics>>>,
    counts: Arc<SpanCounts>,
    labels: Arc<Mutex<LabelCap>>,
    metrics: Arc<Exporter>,
    listener: Option<TcpListener>,
    report_file: Option<File>,
}

fn attach(config: &RunConfig, mut prepared: Prepared) -> anyhow::Result<(Attached, Target)> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the event loop")?;
    let otlp = otlp_exporter(config, &runtime)?;
    let spans_wanted = otlp.is_some() || prepared.spans_file.is_some();
    let mut probes = load(config, &prepared, spans_wanted)?;
    // The run has started: only now are the outputs emptied.
    let spans_path = config.spans_out.clone().unwrap_or_default();
    let spans_file =
        start(prepared.spans_file.take())?.map(|file| SpansFile::new(file, spans_path));
    let report_file = start(prepared.report_file.take())?;
    let counts = Arc::new(SpanCounts::default());
    let otlp = otlp.map(|exporter| {
        (
            exporter,
            SpanQueue::new(counts.clone(), config.otlp_endpoint.as_deref()),
        )
    });
    let sinks = SpanSinks {
        queue: otlp.as_ref().map(|(_, queue)| queue.clone()),
        file: spans_file,
        counts: counts.clone(),
    };
    let stream = spans_wanted
        .then(|| SpanStream::take(&mut probes))
        .transpose()?;
    let tap = llm_tap(
        config,
        &prepared.plan.read().expect("plan lock"),
        &mut probes,
    )?;
    let llm = tap.as_ref().map(|tap| tap.metrics.clone());
    let probes = Arc::new(Mutex::new(probes));
    let pump = stream.map(|stream| span_pump(config, &prepared, stream, &probes, sinks));
    let labels = Arc::new(Mutex::new(LabelCap::default()));
    let span_counts = spans_wanted.then(|| counts.clone());
    let metrics = metrics_exporter(config, &prepared, &probes, &labels, span_counts, &llm);
    let follower = LoadFollower::start(
        &prepared.target,
        &probes,
        &prepared.plan,
        prepared.selection.clone(),
    )?;
    let Prepared {
        target,
        plan,
        selection,
        workloads,
        listener,
        ..
    } = prepared;
    let attached = Attached {
        runtime,
        plan,
        selection,
        follower,
        workloads,
        probes,
        otlp,
        pump,
        tap,
        llm,
        counts,
        labels,
        metrics,
        listener: Some(listener),
        report_file,
    };
    Ok((attached, target))
}

/// Loads the kernel programs and attaches the planned probes.
fn load(config: &RunConfig, prepared: &Prepared, spans_wanted: bool) -> anyhow::Result<Probes> {
    let sample_rate = if spans_wanted {
        config.sample_rate
    } else {
        0.0
    };
    let options = LoadOptions {
        sample_rate,
        by_cgroup: prepared.workloads.per_cgroup(),
        empty_programs: config.empty_programs,
        kernel_log: config.kernel_log,
        verifier_log: config.verifier_log.clone(),
        capture_ring_bytes: config.capture_ring_bytes,
    };
    let plan = prepared.plan.read().expect("plan lock");
    Ok(Probes::load(&plan, &prepared.target, &options)?)
}

/// The consumer of captured bytes, when a probe captures them.
fn llm_tap(config: &RunConfig, plan: &Plan, probes: &mut Probes) -> anyhow::Result<Option<LlmTap>> {
    if !plan.captures_bytes() {
        return Ok(None);
    }
    let (ring, quiet) = probes.take_capture()?;
    let metrics = Arc::new(Mutex::new(LlmMetrics::new(plan.prices.clone())));
    Ok(Some(LlmTap::new(
        CaptureStream::new(ring),
        quiet,
        metrics,
        config.capture_content,
    )))
}

/// Where the pump sends spans, and their counts.
struct SpanSinks {
    queue: Option<Arc<SpanQueue>>,
    file: Option<SpansFile>,
    counts: Arc<SpanCounts>,
}

/// The span pump, which owns the kernel's span ring from now on.
fn span_pump(
    config: &RunConfig,
    prepared: &Prepared,
    stream: SpanStream,
    probes: &Arc<Mutex<Probes>>,
    sinks: SpanSinks,
) -> SpanPump {
    let factory = SpanFactory::new(
        config.service_name.clone(),
        prepared.target.executable(),
        probes.clone(),
        prepared.workloads.clone(),
    );
    SpanPump::new(stream, factory, sinks.queue, sinks.file, sinks.counts)
}

/// What `/metrics` serves: the kernel's counts, read at each scrape.
fn metrics_exporter(
    config: &RunConfig,
    prepared: &Prepared,
    probes: &Arc<Mutex<Probes>>,
    labels: &Arc<Mutex<LabelCap>>,
    span_counts: Option<Arc<SpanCounts>>,
    llm: &Option<Arc<Mutex<LlmMetrics>>>,
) -> Arc<Exporter> {
    let target = &prepared.target;
    let service = config
        .service_name
        .clone()
        .unwrap_or_else(|| target.default_service_name());
    Arc::new(
        Exporter::new(
            probes.clone(),
            prepared.plan.clone(),
            labels.clone(),
            service,
            target.process_count(),
            span_counts,
            prepared.workloads.clone(),
        )
        .with_max_function_series(config.max_function_series)
        .with_llm(llm.clone()),
    )
}

/// The OTLP exporter, when a collector is configured.
fn otlp_exporter(config: &RunConfig, runtime: &Runtime) -> anyhow::Result<Option<SpanExporter>> {
    let endpoint = config.otlp_endpoint.as_deref();
    // The gRPC exporter needs the event loop to exist when it is built.
    Ok(otlp::endpoint_configured(endpoint)
        .then(|| runtime.block_on(async { otlp::exporter(endpoint, config.otlp_protocol) }))
        .transpose()?)
}

/// An output emptied for the run that now starts.
fn start(output: Option<OutputFile>) -> anyhow::Result<Option<File>> {
    output
        .map(|output| {
            let path = output.path().to_path_buf();
            output
                .start()
                .with_context(|| format!("cannot write {}", path.display()))
        })
        .transpose()
}

/// How long the end of a run waits for queued spans to reach the collector.
const SPAN_FLUSH_LIMIT: Duration = Duration::from_secs(5);

/// Serves `/metrics` and pumps spans until the target is done; then flushes the spans.
fn serve(
    config: &RunConfig,
    attached: &mut Attached,
    target: Target,
    ready: Option<File>,
) -> anyhow::Result<Option<i32>> {
    let listener = attached.listener.take().context("metrics listener")?;
    let address = listener.local_addr().context("metrics address")?;
    let plan = &attached.plan;
    status(format_args!("serving metrics on http://{address}/metrics"));
    {
        let plan = plan.read().expect("plan lock");
        status(format_args!(
            "attached {} probes in {} objects of {}; Ctrl-C to stop",
            plan.probes.len(),
            plan.objects.len(),
            target.describe()
        ));
    }
    let mut signals = {
        let _context = attached.runtime.enter();
        wait::StopSignals::listen().context("listening for SIGINT and SIGTERM")?
    };
    if let Some(ready) = ready {
        signal_ready(ready, address, &plan.read().expect("plan lock"));
    }
    let Attached {
        runtime,
        probes,
        otlp,
        pump,
        tap,
        metrics,
        ..
    } = attached;
    // Its own thread: a large or slow scrape must not hold up the span reader.
    let server = MetricsServer::start(metrics.clone(), listener).context("serving metrics")?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let result = runtime.block_on(async {
        let export = otlp
            .take()
            .map(|(exporter, queue)| tokio::spawn(queue.run(exporter, stopped, SPAN_FLUSH_LIMIT)));
        let exit_code = tokio::select! {
            result = pump_spans(pump.as_mut(), tap.as_mut(), plan) => {
                result.context("writing spans")?;
                unreachable!("the span pump runs until stopped")
            }
            result = wait::until_done(target, config.duration, probes, &mut signals) => result?,
        };
        pump_once(pump.as_mut(), tap.as_mut(), plan).context("writing spans")?;
        let _ = stop.send(true);
        if let Some(export) = export {
            export.await.context("exporting spans")?;
        }
        anyhow::Ok(exit_code)
    });
    server.stop();
    result
}

/// The line `--ready-fd` promises scripts, in a format kept stable for them.
fn signal_ready(mut ready: File, address: SocketAddr, plan: &Plan) {
    let line = format!(
        "ready metrics=http://{address}/metrics probes={} objects={}\n",
        plan.probes.len(),
        plan.objects.len()
    );
    if let Err(error) = ready.write_all(line.as_bytes()) {
        eprintln!("flowtap: warning: cannot write the ready line: {error}");
    }
}

/// How often the LLM tap and the span pump read the kernel's rings: the kernel never wakes
/// us, to keep the probes cheap.
const PUMP_INTERVAL: Duration = Duration::from_millis(100);

async fn pump_spans(
    mut pump: Option<&mut SpanPump>,
    mut tap: Option<&mut LlmTap>,
    plan: &RwLock<Plan>,
) -> std::io::Result<()> {
    if pump.is_none() && tap.is_none() {
        return std::future::pending().await;
    }
    let mut interval = tokio::time::interval(PUMP_INTERVAL);
    loop {
        interval.tick().await;
        pump_once(pump.as_deref_mut(), tap.as_deref_mut(), plan)?;
    }
}

/// Moves the kernel's spans, then the LLM calls' (metrics always, spans when exported). The
/// plan grows as libraries are loaded.
fn pump_once(
    mut pump: Option<&mut SpanPump>,
    tap: Option<&mut LlmTap>,
    plan: &RwLock<Plan>,
) -> std::io::Result<()> {
    if let Some(pump) = pump.as_deref_mut() {
        pump.pump(&plan.read().expect("plan lock"))?;
    }
    if let Some(tap) = tap {
        let spans = tap.pump();
        if let Some(pump) = pump {
            pump.push_made(spans);
        }
    }
    Ok(())
}

/// Whether to follow forked children, as asked or by the mode's default. Following them puts
/// probes on every process (the kernel then counts the traced ones), which needs CAP_SYS_ADMIN
/// and reaches beyond what a user holding capabilities may trace: without those, children are
/// not followed unless asked, and asking fails.
fn children(asked: Option<bool>) -> anyhow::Result<Option<bool>> {
    if crate::host::may_probe_every_process() && !crate::invoker::is_unprivileged_user() {
        return Ok(asked);
    }
    if asked == Some(true) {
        bail!(
            "--children needs root with CAP_SYS_ADMIN: following forked processes probes every process, which the kernel refuses without it; leave out --children to trace the process alone"
        );
    }
    Ok(Some(false))
}

/// Reads the final counts and writes the report.
fn finish(
    config: &RunConfig,
    mut attached: Attached,
    exit_code: Option<i32>,
) -> anyhow::Result<i32> {
    // No probes are added while the last counts are read.
    let loaded_later = attached.follower.take().map(LoadFollower::stop);
    let probes = attached.probes.lock().expect("probes lock");
    let plan = attached.plan.read().expect("plan lock");
    let loaded_later = loaded_later.unwrap_or_default();
    let loads = LoadsSummary {
        objects: loaded_later.objects,
        probes: loaded_later.probes,
        slowest_attach_ms: loaded_later.slowest.map(|d| d.as_secs_f64() * 1e3),
        failed: loaded_later.failed,
        not_probed_tables_full: plan.over_capacity,
        unmatched_selectors: plan.unmatched(&attached.selection),
    };
    let snapshot = Snapshot::read(&probes, &plan)
        .context("reading the kernel's counters")?
        .per_function(attached.workloads.as_ref());
    // Per function: the workloads' labels do not apply.
    let declared = ProfileMetrics::derive(
        &snapshot,
        &plan,
        &mut attached.labels.lock().expect("labels"),
        &NoWorkloads,
    );
    let spans = attached
        .pump
        .map(|pump| SpanSummary::new(&attached.counts, pump.slowest.slowest));
    let llm = attached
        .llm
        .as_ref()
        .map(|llm| llm.lock().expect("llm metrics lock"));
    let report = Report {
        snapshot: &snapshot,
        declared: &declared,
        spans: spans.as_ref(),
        llm: llm.as_deref(),
        exit_code,
        loads: &loads,
    };
    write_report(attached.report_file, config, &report)?;
    Ok(exit_code.unwrap_or(0))
}

fn write_report(file: Option<File>, config: &RunConfig, report: &Report) -> anyhow::Result<()> {
    match (file, &config.output) {
        (Some(mut file), Some(path)) => {
            report.write(&mut file, config.report)?;
            status(format_args!("report written to {}", path.display()));
        }
        // The launched command owns standard output; the report goes where strace's would.
        _ if matches!(config.target, Some(TargetSpec::Launch { .. })) => {
            report.write(&mut std::io::stderr().lock(), config.report)?
        }
        _ => print(|out| report.write(out, config.report))?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_without_a_target_says_how_to_give_one() {
        let error = run(RunConfig::default()).unwrap_err().to_string();
        assert_eq!(
            error,
            "give exactly one target: --pid PID, --exe PATH, or -- CMD [ARGS...]"
        );
    }
}
