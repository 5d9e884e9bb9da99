//! The command line: parses what the user asked and wires the stages together.

use std::{
    ffi::OsString,
    io::Write,
    net::SocketAddr,
    os::fd::{FromRawFd, OwnedFd},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use tokio::io::unix::AsyncFd;

use crate::{
    console::{print, status},
    events::SpanStream,
    export::{
        otlp::{self, OtlpProtocol, SpanCounts, SpanQueue},
        prometheus::{self, Exporter},
        spans_file::SpansFile,
    },
    host,
    kubernetes::{Workload, resource_attributes_hook, span_filter},
    loader::Probes,
    metrics::{Snapshot, calls_in_progress},
    plan::{Plan, Selection, SymbolSelector},
    profile::{self, Profile},
    profile_metrics::{LabelCap, ProfileMetrics},
    report::{Report, ReportFormat, SpanSummary},
    spans::{SpanFactory, SpanPump},
    symbols::{ElfObject, Function, SymbolError},
    target::{
        Target, TargetKind, TargetSpec,
        launch::{self, HeldChild},
        process::{self, FileId},
    },
};

/// `flowtap -V`: the version and the commit it was built from (`--version` adds the kernel's
/// features).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("FLOWTAP_GIT_COMMIT"),
    ")"
);

/// Exact per-function timing of native workflow runtimes with eBPF, without touching the
/// application: no code change, rebuild, restart or library to link.
#[derive(Parser, Debug)]
#[command(name = "flowtap", version = VERSION, propagate_version = true)]
pub struct Cli {
    /// No status or progress lines on stderr (warnings and errors remain).
    #[arg(long, short, global = true)]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
#[allow(clippy::large_enum_variant, reason = "parsed once per run")]
pub enum Command {
    /// Trace a process, a binary or a command, and print a latency report at the end.
    ///
    /// The report goes to --output FILE if given; else, with --pid or --exe, to standard output;
    /// in launch mode (-- CMD), to standard error, so that the command's standard output stays
    /// its own (`flowtap run -- curl URL > page.html`).
    ///
    /// Examples:
    ///   flowtap run --pid 4242
    ///   flowtap run --exe /usr/bin/app --duration 60 --report json --output out.json
    ///   flowtap run --symbols 'libwfrt.so:wf_*' -- ./app --workers 4
    ///   flowtap run --profile sqlite --profile ./mylib.toml --exe /usr/bin/app
    #[command(verbatim_doc_comment)]
    Run(RunArgs),
    /// List the functions that can be traced, per ELF object.
    Symbols(SymbolsArgs),
    /// List, show and check profiles: what symbols mean (spans, attributes, errors, metrics).
    #[command(subcommand)]
    Profile(ProfileCommand),
    /// Tell what this host supports (privileges, uprobes, BTF, cookies, uprobe.multi, tracefs).
    Check,
}

#[derive(Subcommand, Debug)]
pub enum ProfileCommand {
    /// The built-in profiles, with what each covers.
    List,
    /// Print a built-in profile's TOML: a starting point for your own.
    Show {
        /// A built-in profile (see `flowtap profile list`).
        name: String,
    },
    /// Check profile files and summarise what they declare; errors give file:line:column.
    Check {
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
}

#[derive(Args, Debug)]
#[group(id = "target", required = true, multiple = false)]
pub struct TargetArgs {
    /// Trace this running process (its executable and every shared library it maps); stops
    /// when it exits.
    #[arg(long, value_name = "PID", group = "target")]
    pub pid: Option<u32>,
    /// Trace every process running this binary, now and started later, with the libraries it
    /// loads. A shared library traces every process mapping it.
    #[arg(long, value_name = "PATH", group = "target")]
    pub exe: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Trace this running process (its executable and every shared library it maps); stops
    /// when it exits.
    #[arg(long, value_name = "PID", conflicts_with_all = ["exe", "command"])]
    pub pid: Option<u32>,
    /// Trace every process running this binary, now and started later, with the libraries it
    /// loads. A shared library traces every process mapping it. With --k8s-namespace or
    /// --k8s-selector: the executable's path inside the container, or its file name, in the
    /// pods they pick.
    #[arg(long, value_name = "PATH", conflicts_with = "command")]
    pub exe: Option<PathBuf>,
    /// What the target's functions mean: a built-in profile (`flowtap profile list`) or a
    /// profile file (repeatable). Default, with no --symbols either: `workflow`.
    #[arg(long = "profile", value_name = "NAME|FILE")]
    pub profiles: Vec<String>,
    /// Functions to time without a profile: GLOB or OBJECT:GLOB on raw or demangled names
    /// (repeatable); beside --profile, adds plain timing of more functions.
    #[arg(long = "symbols", value_name = "GLOB")]
    pub symbols: Vec<String>,
    /// Stop after this long: seconds (30, 2.5) or with a unit (500ms, 90s, 5m, 1h).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Report format printed at the end.
    #[arg(long, value_enum, default_value = "table")]
    pub report: ReportFormat,
    /// Write the report to this file (default: standard output with --pid/--exe, standard
    /// error in launch mode, which leaves standard output to the command).
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Serve Prometheus metrics on this address while running (port 0: any free port).
    #[arg(
        long,
        value_name = "ADDR",
        env = "FLOWTAP_METRICS_ADDR",
        default_value = "127.0.0.1:9464"
    )]
    pub metrics_addr: SocketAddr,
    /// The service name of every span and series; default `unknown_service:<executable name>`.
    #[arg(long, value_name = "NAME", env = "OTEL_SERVICE_NAME")]
    pub service_name: Option<String>,
    /// Send spans over OTLP to this collector, e.g. http://localhost:4317 (default:
    /// OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT when set; headers from
    /// OTEL_EXPORTER_OTLP_HEADERS). For http/protobuf a base URL gets /v1/traces.
    #[arg(long, value_name = "URL", value_parser = parse_endpoint)]
    pub otlp_endpoint: Option<String>,
    /// OTLP transport.
    #[arg(
        long,
        value_enum,
        value_name = "PROTOCOL",
        env = "OTEL_EXPORTER_OTLP_PROTOCOL",
        default_value = "grpc"
    )]
    pub otlp_protocol: OtlpProtocol,
    /// Fraction of traces whose spans are exported, decided at each trace's root and inherited
    /// by every span below it. Metrics always count every call.
    #[arg(
        long,
        value_name = "RATE",
        env = "OTEL_TRACES_SAMPLER_ARG",
        default_value = "1.0",
        value_parser = parse_rate
    )]
    pub sample_rate: f64,
    /// Write spans to this file as OTLP JSON lines (no collector needed).
    #[arg(long, value_name = "FILE")]
    pub spans_out: Option<PathBuf>,
    /// Attach programs that do nothing: the kernel's own cost, for `cargo xtask bench`.
    #[arg(long, hide = true)]
    pub empty_programs: bool,
    /// Launch this command with probes in place before its first instruction.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<OsString>,
    // --- Config file and Kubernetes (issue 5) ---
    #[command(flatten)]
    pub config: Box<crate::config::ConfigArgs>,
    /// Pod metadata on spans, a pod selector as the target.
    #[command(flatten)]
    pub kubernetes: Box<crate::kubernetes::KubernetesArgs>,
}

#[derive(Args, Debug)]
pub struct SymbolsArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Only functions matching this glob (raw or demangled name).
    #[arg(long, value_name = "GLOB")]
    pub filter: Option<String>,
}

pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let invalid = || format!("`{text}` is not a positive duration: use e.g. 30, 2.5, 500ms or 5m");
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value = number.parse::<f64>().map_err(|_| invalid())?;
    let scale = match unit {
        "" | "s" => 1.0,
        "ms" => 1e-3,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return Err(invalid()),
    };
    Duration::try_from_secs_f64(value * scale)
        .ok()
        .filter(|duration| !duration.is_zero())
        .ok_or_else(invalid)
}

fn parse_endpoint(text: &str) -> Result<String, String> {
    let valid = text
        .split_once("://")
        .is_some_and(|(scheme, rest)| matches!(scheme, "http" | "https") && !rest.is_empty());
    if valid {
        Ok(text.to_string())
    } else {
        Err(format!(
            "`{text}` is not an http:// or https:// URL, e.g. http://localhost:4317"
        ))
    }
}

fn parse_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(rate) if (0.0..=1.0).contains(&rate) => Ok(rate),
        _ => Err(format!(
            "`{text}` is not a fraction between 0 and 1, e.g. 0.1"
        )),
    }
}

impl RunArgs {
    /// Whether spans go anywhere: a collector, from flags or the environment, or a file.
    fn otlp_wanted(&self) -> bool {
        self.otlp_endpoint.is_some()
            || [
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            ]
            .iter()
            .any(|var| std::env::var_os(var).is_some_and(|v| !v.is_empty()))
    }

    fn target_spec(&self) -> anyhow::Result<TargetSpec> {
        Ok(match (&self.pid, &self.exe, self.command.is_empty()) {
            (Some(pid), None, true) => TargetSpec::Pid(*pid),
            (None, Some(exe), true) => TargetSpec::Binary(exe.clone()),
            (None, None, false) => TargetSpec::Launch(self.command.clone()),
            _ => bail!("give exactly one target: --pid PID, --exe PATH, or -- CMD [ARGS...]"),
        })
    }
}

/// Runs the parsed command; returns the process exit code.
pub fn execute(cli: Cli) -> anyhow::Result<i32> {
    crate::console::set_quiet(cli.quiet);
    match cli.command {
        Command::Run(args) => run(args),
        Command::Symbols(args) => list_symbols(args),
        Command::Profile(command) => profile_command(command),
        Command::Check => check(),
    }
}

fn run(args: RunArgs) -> anyhow::Result<i32> {
    // --- Kubernetes (issue 5) ---
    let mut kubernetes = args.kubernetes.connect()?;
    let spec = match (&mut kubernetes, args.kubernetes.pod_selector(), &args.exe) {
        // Every process of an executable, in the pods the selector matches.
        (Some(cluster), Some(selector), Some(exe)) => {
            let binary = cluster.select_executable(&selector, exe)?;
            cluster.restrict_to(selector);
            TargetSpec::Binary(binary)
        }
        (Some(cluster), Some(selector), None) => TargetSpec::Pid(cluster.select_pid(&selector)?),
        _ => args.target_spec()?,
    };
    // --- end Kubernetes ---
    let selection = selection(&args)?;
    host::check_privileges()?;
    // Fail now, not after a long run, if the report cannot be written.
    let output = args
        .output
        .as_deref()
        .map(|path| {
            std::fs::File::create(path)
                .with_context(|| format!("cannot write the report to {}", path.display()))
        })
        .transpose()?;
    let listener = prometheus::bind(args.metrics_addr)?;
    // Launch mode forks here, so this comes before any thread is started.
    let target = Target::resolve(&spec)?;
    let plan = Arc::new(Plan::build(
        &target.objects,
        &selection,
        &target.describe(),
    )?);
    if !plan.unprobeable.is_empty() {
        eprintln!(
            "flowtap: warning: not tracing {} (uprobes refuse a first instruction with a LOCK prefix)",
            plan.unprobeable.join(", ")
        );
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the event loop")?;
    // The gRPC exporter needs the event loop to exist when it is built.
    let otlp = args
        .otlp_wanted()
        .then(|| {
            runtime.block_on(async {
                otlp::exporter(args.otlp_endpoint.as_deref(), args.otlp_protocol)
            })
        })
        .transpose()?;
    let spans_file = args
        .spans_out
        .as_deref()
        .map(|path| {
            SpansFile::create(path)
                .with_context(|| format!("cannot write spans to {}", path.display()))
        })
        .transpose()?;
    let spans_wanted = otlp.is_some() || spans_file.is_some();
    let sample_rate = if spans_wanted { args.sample_rate } else { 0.0 };
    // Per-pod metrics: the kernel keeps stats per cgroup, which the resolver maps to pods.
    let kubernetes = kubernetes.map(|cluster| Arc::new(Mutex::new(cluster)));
    let mut probes = Probes::load(
        &plan,
        &target,
        sample_rate,
        kubernetes.is_some(),
        args.empty_programs,
    )?;
    let counts = Arc::new(SpanCounts::default());
    let queue = otlp.is_some().then(|| SpanQueue::new(counts.clone()));
    let mut pump = spans_wanted
        .then(|| -> anyhow::Result<SpanPump> {
            let mut factory = SpanFactory::new(args.service_name.clone(), target.executable());
            if let Some(cluster) = &kubernetes {
                let attributes = resource_attributes_hook(cluster.clone(), target.pid());
                factory = factory
                    .with_resource_attributes(attributes)
                    .with_process_filter(span_filter(cluster.clone()));
            }
            let stream = SpanStream::take(&mut probes)?;
            Ok(SpanPump::new(
                stream,
                factory,
                queue.clone(),
                spans_file,
                counts.clone(),
            ))
        })
        .transpose()?;
    let probes = Arc::new(Mutex::new(probes));
    let labels = Arc::new(Mutex::new(LabelCap::default()));
    let exporter = Arc::new(Exporter::new(
        probes.clone(),
        plan.clone(),
        labels.clone(),
        args.service_name
            .clone()
            .unwrap_or_else(|| target.default_service_name()),
        (!target.filters_by_process()).then_some(1),
        spans_wanted.then(|| counts.clone()),
        kubernetes.clone(),
    ));
    let exit_code = runtime.block_on(async {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let export = otlp
            .zip(queue)
            .map(|(otlp, queue)| tokio::spawn(queue.run(otlp, stopped, SPAN_FLUSH_LIMIT)));
        let address = listener.local_addr().context("metrics address")?;
        status(format_args!("serving metrics on http://{address}/metrics"));
        let exit_code = tokio::select! {
            result = exporter.serve(listener) => {
                result.context("serving metrics")?;
                unreachable!("the metrics server runs until stopped")
            }
            result = pump_spans(pump.as_mut(), &plan) => {
                result.context("writing spans")?;
                unreachable!("the span pump runs until stopped")
            }
            result = trace(&args, target, &plan, &probes) => result?,
        };
        if let Some(pump) = &mut pump {
            pump.pump(&plan).context("writing spans")?;
        }
        let _ = stop.send(true);
        if let Some(export) = export {
            export.await.context("exporting spans")?;
        }
        anyhow::Ok(exit_code)
    })?;
    let probes = probes.lock().expect("probes lock");
    let mut snapshot = Snapshot::read(&probes, &plan).context("reading the kernel's counters")?;
    if let Some(cluster) = &kubernetes {
        let mut cluster = cluster.lock().expect("kubernetes lock");
        snapshot.retain_cgroups(|cgroup| cluster.workload_of_cgroup(cgroup) != Workload::Excluded);
    }
    let snapshot = snapshot.per_function();
    let declared = ProfileMetrics::derive(
        &snapshot,
        &plan,
        &mut labels.lock().expect("labels"),
        &mut |_| Some(Vec::new()),
    );
    let spans = pump.map(|pump| SpanSummary::new(&counts, pump.slowest.slowest));
    let in_progress = calls_in_progress(&probes, &plan).context("reading the threads' stacks")?;
    let report = Report {
        snapshot: &snapshot,
        declared: &declared,
        spans: spans.as_ref(),
        exit_code,
        in_progress: &in_progress,
    };
    write_report(output, &args, &report)?;
    Ok(exit_code.unwrap_or(0))
}

/// How long the end of a run waits for queued spans to reach the collector.
const SPAN_FLUSH_LIMIT: Duration = Duration::from_secs(5);

async fn pump_spans(pump: Option<&mut SpanPump>, plan: &Plan) -> std::io::Result<()> {
    match pump {
        Some(pump) => pump.run(plan).await,
        None => std::future::pending().await,
    }
}

/// Waits for the end of the run; returns the launched command's exit code, if any.
async fn trace(
    args: &RunArgs,
    target: Target,
    plan: &Plan,
    probes: &Mutex<Probes>,
) -> anyhow::Result<Option<i32>> {
    status(format_args!(
        "attached {} probes in {} objects of {}; Ctrl-C to stop",
        plan.probes.len(),
        plan.objects.len(),
        target.describe()
    ));
    let deadline = async {
        match args.duration {
            Some(duration) => tokio::time::sleep(duration).await,
            None => std::future::pending().await,
        }
    };
    let interrupted = interrupted();
    match target.kind {
        TargetKind::Process { pid } => {
            let exited = process_exit(pid.get())?;
            tokio::select! {
                _ = exited.readable() => {},
                _ = deadline => {},
                _ = interrupted => {},
            }
            Ok(None)
        }
        TargetKind::Binary {
            file, is_library, ..
        } => {
            tokio::select! {
                result = follow_binary(file, is_library, probes) => result?,
                _ = deadline => {},
                _ = interrupted => {},
            }
            Ok(None)
        }
        TargetKind::Launch { child, .. } => run_child(child, deadline).await.map(Some),
    }
}

async fn run_child(
    child: HeldChild,
    deadline: impl std::future::Future<Output = ()>,
) -> anyhow::Result<i32> {
    let pid = child.pid;
    child.release().context("starting the command")?;
    let mut exited = tokio::task::spawn_blocking(move || launch::wait_exit_code(pid));
    let mut interrupt = std::pin::pin!(interrupted());
    let mut deadline = std::pin::pin!(deadline);
    loop {
        tokio::select! {
            code = &mut exited => {
                let code = code.context("waiting for the command")?.context("waiting for the command")?;
                status(format_args!("command exited with code {code}"));
                return Ok(code);
            }
            // The command shares our terminal and gets Ctrl-C too; pass on other stops.
            _ = &mut interrupt => {
                // SAFETY: signalling our own child, which we have not reaped yet.
                unsafe { libc::kill(pid as i32, libc::SIGINT) };
                interrupt.set(interrupted());
            }
            _ = &mut deadline => {
                status(format_args!("duration reached; command {pid} keeps running untraced"));
                return Ok(0);
            }
        }
    }
}

/// Enrols processes of the binary that started before us or were forked without exec; those
/// that exec it later enrol themselves in the kernel at their entry point.
async fn follow_binary(
    file: FileId,
    is_library: bool,
    probes: &Mutex<Probes>,
) -> anyhow::Result<()> {
    if is_library {
        return std::future::pending().await;
    }
    loop {
        let running = process::processes_running(file);
        probes.lock().expect("probes lock").enrol(&running)?;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Completes on SIGINT or SIGTERM.
async fn interrupted() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => {},
        _ = term.recv() => {},
    }
}

/// A descriptor that becomes readable when process `pid` exits.
fn process_exit(pid: u32) -> anyhow::Result<AsyncFd<OwnedFd>> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        bail!("process {pid} exited before tracing started");
    }
    // SAFETY: the kernel just returned this descriptor to us.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // SAFETY: the AsyncFd owns the descriptor, so it stays open for as long as it is registered.
    unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
        .map_err(|error| anyhow::anyhow!("watching process {pid}: {error}"))
}

fn write_report(
    output: Option<std::fs::File>,
    args: &RunArgs,
    report: &Report,
) -> anyhow::Result<()> {
    match (output, &args.output) {
        (Some(mut file), Some(path)) => {
            report.write(&mut file, args.report)?;
            status(format_args!("report written to {}", path.display()));
        }
        // The launched command owns standard output; the report goes where strace's would.
        _ if !args.command.is_empty() => {
            report.write(&mut std::io::stderr().lock(), args.report)?
        }
        _ => print(|out| report.write(out, args.report))?,
    }
    Ok(())
}

/// The profiles asked for (or the default one) and the plain selectors.
fn selection(args: &RunArgs) -> anyhow::Result<Selection> {
    let symbols = args
        .symbols
        .iter()
        .map(|text| text.parse::<SymbolSelector>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| anyhow::anyhow!("--symbols: {error}"))?;
    let defaulted = args.profiles.is_empty() && args.symbols.is_empty();
    let names = if defaulted {
        vec![profile::DEFAULT.to_string()]
    } else {
        args.profiles.clone()
    };
    let profiles = names
        .iter()
        .map(|name| Profile::load(name))
        .collect::<Result<Vec<_>, _>>()?;
    let texts = profiles
        .iter()
        .map(|p| format!("profile {}", p.name))
        .chain(args.symbols.iter().cloned())
        .collect();
    Ok(Selection {
        profiles,
        symbols,
        texts,
        defaulted,
    })
}

fn profile_command(command: ProfileCommand) -> anyhow::Result<i32> {
    let mut text = Vec::new();
    let out = &mut text;
    match command {
        ProfileCommand::List => {
            for (name, _) in profile::BUILTIN {
                let profile = Profile::builtin(name)?;
                writeln!(out, "{name:<10} {}", profile.description)?;
            }
        }
        ProfileCommand::Show { name } => {
            let text = profile::builtin_source(&name).ok_or_else(|| {
                anyhow::anyhow!("no built-in profile `{name}`: see `flowtap profile list`")
            })?;
            out.write_all(text.as_bytes())?;
        }
        ProfileCommand::Check { files } => {
            for file in files {
                let profile = Profile::from_file(&file)?;
                let metrics: std::collections::BTreeSet<&str> = profile
                    .functions
                    .iter()
                    .flat_map(|rule| rule.metrics.iter().map(|m| m.name.as_str()))
                    .collect();
                writeln!(
                    out,
                    "{}: profile `{}` is valid: {} function rules, {} metrics ({})",
                    file.display(),
                    profile.name,
                    profile.functions.len(),
                    metrics.len(),
                    metrics.into_iter().collect::<Vec<_>>().join(", ")
                )?;
            }
        }
    }
    print(|out| out.write_all(&text))?;
    Ok(0)
}

fn list_symbols(args: SymbolsArgs) -> anyhow::Result<i32> {
    let filter = args
        .filter
        .as_deref()
        .map(glob::Pattern::new)
        .transpose()
        .context("--filter")?;
    let target = match (args.target.pid, args.target.exe) {
        (Some(pid), _) => Target::resolve(&TargetSpec::Pid(pid))?,
        (_, Some(exe)) => Target::resolve(&TargetSpec::Binary(exe))?,
        _ => unreachable!("clap requires exactly one target"),
    };
    let unreadable = target.skipped.iter().map(unreadable_object);
    for (path, reason) in unreadable.chain(skipped_objects(&target.objects)) {
        eprintln!("flowtap: skipped {}: {reason}", path.display());
    }
    let listed: Vec<(&ElfObject, Vec<&Function>)> = target
        .objects
        .iter()
        .filter(|object| !object.is_go)
        .map(|object| {
            let functions = object
                .functions
                .iter()
                .filter(|f| {
                    filter
                        .as_ref()
                        .is_none_or(|p| crate::symbols::matches(p, &f.raw_name, &f.name))
                })
                .collect();
            (object, functions)
        })
        .filter(|(_, functions): &(_, Vec<_>)| !functions.is_empty())
        .collect();
    if listed.is_empty() {
        let what = args.filter.map_or("no function".into(), |glob| {
            format!("no function matches `{glob}`")
        });
        bail!(
            "{what} in the {} objects of {}: try a broader glob, e.g. '*name*'",
            target.objects.len(),
            target.describe()
        );
    }
    print(|out| write_symbols(out, &listed))?;
    Ok(0)
}

/// A mapped file that is not an ELF object flowtap can read, and why, in a few words.
fn unreadable_object(error: &SymbolError) -> (std::path::PathBuf, String) {
    match error {
        SymbolError::Read { path, source } => (path.clone(), format!("cannot read it: {source}")),
        SymbolError::NotElf { path } => (path.clone(), "not an ELF file".into()),
        SymbolError::Not64Bit { path } => (path.clone(), "a 32-bit ELF file".into()),
        SymbolError::ForeignArch { path, arch, .. } => (path.clone(), format!("built for {arch}")),
        SymbolError::Malformed { path, reason } => (path.clone(), format!("malformed: {reason}")),
    }
}

/// Objects with nothing to list, and why.
fn skipped_objects(objects: &[ElfObject]) -> Vec<(std::path::PathBuf, String)> {
    objects
        .iter()
        .filter_map(|object| {
            let reason = if object.is_go {
                "a Go binary: flowtap does not trace Go (its moving stacks break return probes)"
            } else if object.functions.is_empty() {
                "stripped: no function symbols in .dynsym or .symtab"
            } else {
                return None;
            };
            Some((object.path.clone(), reason.to_string()))
        })
        .collect()
}

fn write_symbols(
    out: &mut dyn Write,
    listed: &[(&ElfObject, Vec<&Function>)],
) -> std::io::Result<()> {
    for (object, functions) in listed {
        writeln!(
            out,
            "{} ({} functions)",
            object.path.display(),
            functions.len()
        )?;
        for function in functions {
            let note = if function.probeable {
                ""
            } else {
                "  (not probeable: LOCK prefix)"
            };
            writeln!(out, "  {}{note}", function.name)?;
        }
    }
    Ok(())
}

fn check() -> anyhow::Result<i32> {
    let findings = host::findings();
    let usable = findings.iter().all(|f| f.ok || !f.required);
    print(|out| {
        for finding in &findings {
            let verdict = match (finding.ok, finding.required) {
                (true, _) => "ok",
                (false, true) => "MISSING",
                (false, false) => "absent",
            };
            writeln!(
                out,
                "{:<15} {:<8} {}",
                finding.what, verdict, finding.detail
            )?;
        }
        if usable {
            writeln!(out, "flowtap can trace on this host.")
        } else {
            writeln!(
                out,
                "flowtap cannot trace on this host: fix the MISSING lines above."
            )
        }
    })?;
    Ok(if usable { 0 } else { 1 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_and_without_units() {
        assert_eq!(parse_duration("30").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("2.5").unwrap(), Duration::from_millis(2500));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert!(parse_duration("0").is_err());
        assert!(parse_duration("-3").is_err());
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("3 days").is_err());
    }

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
