//! The command line's types: what clap parses, turned into the plain configurations the rest
//! of the agent takes.

use std::{
    ffi::OsString,
    fs::File,
    net::SocketAddr,
    os::fd::{FromRawFd, RawFd},
    path::PathBuf,
    time::Duration,
};

use clap::{Args, Parser, Subcommand, ValueEnum, builder::PossibleValue};

use crate::{
    export::otlp::OtlpProtocol,
    kubernetes::{KubernetesConfig, LabelSelector},
    loader::KernelLogLevel,
    plan::{ExitChoice, ExitPolicy},
    report::ReportFormat,
    run::RunConfig,
    targets::TargetSpec,
};

/// `flowtap -V`: the version and the commit it was built from (`--version` adds the kernel's
/// features).
pub(crate) const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("FLOWTAP_GIT_COMMIT"),
    ")"
);

/// Exact per-function timing of native workflow runtimes with eBPF, without touching the
/// application: no code change, rebuild, restart or library to link.
#[derive(Parser, Debug)]
#[command(name = "flowtap", version = VERSION, propagate_version = true)]
pub(crate) struct Cli {
    /// No status or progress lines on stderr (warnings and errors remain).
    #[arg(long, short, global = true)]
    pub(crate) quiet: bool,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand, Debug)]
#[allow(clippy::large_enum_variant, reason = "parsed once per run")]
pub(crate) enum Command {
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
pub(crate) enum ProfileCommand {
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
pub(crate) struct TargetArgs {
    /// Trace this running process (its executable and every shared library it maps); stops
    /// when it exits.
    #[arg(long, value_name = "PID", group = "target")]
    pub(crate) pid: Option<u32>,
    /// Trace every process running this binary, now and started later, with the libraries it
    /// loads. A shared library traces every process mapping it.
    #[arg(long, value_name = "PATH", group = "target")]
    pub(crate) exe: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub(crate) struct SymbolsArgs {
    #[command(flatten)]
    pub(crate) target: TargetArgs,
    /// Only functions matching this glob (raw or demangled name).
    #[arg(long, value_name = "GLOB")]
    pub(crate) filter: Option<String>,
    /// The exit probe modes to show, as `flowtap run --exit-probes` takes them.
    #[arg(long, value_name = "[OBJECT=]MODE")]
    pub(crate) exit_probes: Vec<ExitChoice>,
}

#[derive(Args, Debug)]
pub(crate) struct RunArgs {
    /// Trace this running process (its executable and every shared library it maps); stops
    /// when it exits.
    #[arg(long, value_name = "PID", conflicts_with_all = ["exe", "command"])]
    pid: Option<u32>,
    /// Trace every process running this binary, now and started later, with the libraries it
    /// loads. A shared library traces every process mapping it. With --k8s-namespace or
    /// --k8s-selector: the executable's path inside the container, or its file name, in the
    /// pods they pick.
    #[arg(long, value_name = "PATH", conflicts_with = "command")]
    exe: Option<PathBuf>,
    /// Trace the processes the target forks too, from their first instruction (and theirs,
    /// and so on; one that execs another program stops being traced): default true for a
    /// launched command, false with --pid; --exe always traces every process of its binary.
    /// Needs root with CAP_SYS_ADMIN, since it probes every process (without it: false).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    children: Option<bool>,
    /// What the target's functions mean: a built-in profile (`flowtap profile list`) or a
    /// profile file (repeatable). Default, with no --symbols either: `workflow`.
    #[arg(long = "profile", value_name = "NAME|FILE")]
    profiles: Vec<String>,
    /// Functions to time without a profile: GLOB or OBJECT:GLOB on raw or demangled names
    /// (repeatable); beside --profile, adds plain timing of more functions.
    #[arg(long = "symbols", value_name = "GLOB")]
    symbols: Vec<String>,
    /// Stop after this long: seconds (30, 2.5) or with a unit (500ms, 90s, 5m, 1h).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Report format printed at the end.
    #[arg(long, value_enum, default_value = "table")]
    report: ReportFormat,
    /// Write the report to this file (default: standard output with --pid/--exe, standard
    /// error in launch mode, which leaves standard output to the command).
    #[arg(long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Serve Prometheus metrics on this address while running (port 0: any free port).
    #[arg(
        long,
        value_name = "ADDR",
        env = "FLOWTAP_METRICS_ADDR",
        default_value = "127.0.0.1:9464"
    )]
    metrics_addr: SocketAddr,
    /// The service name of every span and series; default `unknown_service:<executable name>`.
    #[arg(long, value_name = "NAME", env = "OTEL_SERVICE_NAME")]
    service_name: Option<String>,
    /// Send spans over OTLP to this collector, e.g. http://localhost:4317 (default:
    /// OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT when set; headers from
    /// OTEL_EXPORTER_OTLP_HEADERS). For http/protobuf a base URL gets /v1/traces.
    #[arg(long, value_name = "URL", value_parser = parse_endpoint)]
    otlp_endpoint: Option<String>,
    /// OTLP transport.
    #[arg(
        long,
        value_enum,
        value_name = "PROTOCOL",
        env = "OTEL_EXPORTER_OTLP_PROTOCOL",
        default_value = "grpc"
    )]
    otlp_protocol: OtlpProtocol,
    /// Fraction of traces whose spans are exported, decided at each trace's root and inherited
    /// by every span below it. Metrics always count every call.
    #[arg(
        long,
        value_name = "RATE",
        env = "OTEL_TRACES_SAMPLER_ARG",
        default_value = "1.0",
        value_parser = parse_rate
    )]
    sample_rate: f64,
    /// Write spans to this file as OTLP JSON lines (no collector needed).
    #[arg(long, value_name = "FILE")]
    spans_out: Option<PathBuf>,
    /// Put prompt and completion text on LLM spans (`gen_ai.input.messages`,
    /// `gen_ai.output.messages`, 8 KiB each at most). Off by default: they may hold secrets.
    #[arg(long)]
    capture_content: bool,
    /// Bytes of the kernel's ring buffer of captured bytes (profiles with a `buffer`, such as
    /// genai), rounded up to a power of two; bytes it has no room for are counted as lost.
    #[arg(long, value_name = "BYTES")]
    capture_ring_bytes: Option<u32>,
    /// For scripts: once the probes are attached, write one line to this open descriptor and
    /// close it: `ready metrics=http://ADDR/metrics probes=N objects=M`.
    #[arg(long, value_name = "FD", env = "FLOWTAP_READY_FD")]
    ready_fd: Option<RawFd>,
    /// How returns are observed: `return` probes (cheapest; exceptions and panics through them
    /// abort the target), probes on each return `instructions`, or `auto` (default):
    /// instructions in objects that unwind (C++, Rust), return probes elsewhere. OBJECT=MODE
    /// (repeatable) sets one object's, e.g. a C library that exceptions cross. `flowtap
    /// symbols` shows which each object gets.
    #[arg(long, value_name = "[OBJECT=]MODE")]
    exit_probes: Vec<ExitChoice>,
    /// Attach programs that do nothing: the kernel's own cost, for `cargo xtask bench`.
    #[arg(long, hide = true)]
    empty_programs: bool,
    /// Per-function series on /metrics; beyond it, the functions with the least total time fold
    /// into one `function="other"` series (counted in flowtap_function_series_folded).
    #[arg(long, value_name = "N", default_value_t = crate::export::prometheus::DEFAULT_MAX_FUNCTION_SERIES)]
    max_function_series: usize,
    /// Under sudo, launch the command as root rather than as the user who ran sudo
    /// (`SUDO_UID`/`SUDO_GID`).
    #[arg(long)]
    as_root: bool,
    /// Print the kernel programs' diagnostics of rare events (a shadow stack resynchronised,
    /// calls nested too deep to time) on stderr, up to this level. Off by default.
    #[arg(long, value_enum, value_name = "LEVEL")]
    kernel_log: Option<KernelLog>,
    /// When the kernel refuses a program, write the verifier's log to this new file.
    #[arg(long, value_name = "FILE")]
    verifier_log: Option<PathBuf>,
    /// Launch this command with probes in place before its first instruction.
    #[arg(last = true, value_name = "CMD")]
    command: Vec<OsString>,
    #[command(flatten)]
    config: ConfigArgs,
    /// Pod metadata on spans, a pod selector as the target.
    #[command(flatten)]
    kubernetes: KubernetesArgs,
}

/// The `--config` flag of `flowtap run`. It is read by [`super::config::apply`], before clap
/// parses the command line; this declares it for `--help` and so that clap accepts it.
#[derive(Args, Debug, Clone, Default)]
pub(crate) struct ConfigArgs {
    /// Read settings from this TOML file: keys are these long flags (`report = "json"`,
    /// `symbols = ["wf_*"]`, `command = ["./app", "--x"]`); flags given here win. Default:
    /// ./flowtap.toml when it exists.
    #[arg(long, value_name = "FILE")]
    #[expect(dead_code, reason = "read from the raw arguments by config::apply")]
    config: Option<PathBuf>,
}

/// The `flowtap run` flags for Kubernetes.
#[derive(Args, Debug, Clone, Default)]
#[command(next_help_heading = "Kubernetes")]
pub(crate) struct KubernetesArgs {
    /// Trace pods of this namespace on this node (with --k8s-selector, those it matches too):
    /// alone, the one matching container; with --exe PATH|NAME, every process of that
    /// executable in the matching pods, other pods left out. Needs the node's processes
    /// (hostPID).
    #[arg(
        long = "k8s-namespace",
        value_name = "NAMESPACE",
        conflicts_with_all = ["pid", "command"]
    )]
    namespace: Option<String>,
    /// Pick the pods to trace by labels: key=value,key2!=value2 (all must hold); see
    /// --k8s-namespace for what is traced.
    #[arg(
        long = "k8s-selector",
        value_name = "LABELS",
        value_parser = parse_labels,
        conflicts_with_all = ["pid", "command"]
    )]
    selector: Option<LabelSelector>,
    /// This node's name, to list only its pods; set it from the downward API (spec.nodeName)
    /// in a DaemonSet. Turns on k8s.* span resource attributes.
    #[arg(long = "k8s-node", value_name = "NODE", env = "FLOWTAP_NODE_NAME")]
    node: Option<String>,
    /// The API server (e.g. http://127.0.0.1:8001 from `kubectl proxy`); default: the in-cluster
    /// address, with the pod's service account token and CA.
    #[arg(long = "k8s-api", value_name = "URL")]
    api: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadyFdError {
    #[error(
        "--ready-fd {0} is not an open file descriptor: open one for writing, e.g. `--ready-fd 3 3>ready.txt`"
    )]
    NotOpen(RawFd),
    #[error(
        "--ready-fd {0} is a standard stream, which flowtap keeps for its report and messages: give a descriptor from 3 up"
    )]
    Standard(RawFd),
}

/// `--kernel-log` levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum KernelLog {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl KernelLog {
    fn level(self) -> KernelLogLevel {
        match self {
            KernelLog::Error => KernelLogLevel::Error,
            KernelLog::Warn => KernelLogLevel::Warn,
            KernelLog::Info => KernelLogLevel::Info,
            KernelLog::Debug => KernelLogLevel::Debug,
            KernelLog::Trace => KernelLogLevel::Trace,
        }
    }
}

impl RunArgs {
    /// The run as the agent takes it: no flags, only what they mean.
    pub(crate) fn into_config(self) -> Result<RunConfig, ReadyFdError> {
        let target = match (self.pid, self.exe, self.command.is_empty()) {
            (Some(pid), None, true) => Some(TargetSpec::Pid(pid)),
            (None, Some(exe), true) => Some(TargetSpec::Binary(exe)),
            (None, None, false) => Some(TargetSpec::Launch {
                command: self.command,
                as_root: self.as_root,
            }),
            // clap's conflicts leave only "no target at all" here, which `run` reports.
            _ => None,
        };
        Ok(RunConfig {
            target,
            children: self.children,
            profiles: self.profiles,
            symbols: self.symbols,
            exit_probes: ExitPolicy(self.exit_probes),
            duration: self.duration,
            report: self.report,
            output: self.output,
            metrics_addr: self.metrics_addr,
            service_name: self.service_name,
            otlp_endpoint: self.otlp_endpoint,
            otlp_protocol: self.otlp_protocol,
            sample_rate: self.sample_rate,
            spans_out: self.spans_out,
            capture_content: self.capture_content,
            capture_ring_bytes: self.capture_ring_bytes,
            ready: self.ready_fd.map(ready_file).transpose()?,
            empty_programs: self.empty_programs,
            max_function_series: self.max_function_series,
            kernel_log: self.kernel_log.map(KernelLog::level),
            verifier_log: self.verifier_log,
            kubernetes: KubernetesConfig {
                namespace: self.kubernetes.namespace,
                selector: self.kubernetes.selector,
                node: self.kubernetes.node,
                api: self.kubernetes.api,
            },
        })
    }
}

/// Takes ownership of the descriptor the caller passed for the ready line.
fn ready_file(fd: RawFd) -> Result<File, ReadyFdError> {
    if (0..=libc::STDERR_FILENO).contains(&fd) {
        return Err(ReadyFdError::Standard(fd));
    }
    // SAFETY: F_GETFD only reads the descriptor's flags; it fails on a closed descriptor.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(ReadyFdError::NotOpen(fd));
    }
    // SAFETY: the descriptor is open (checked above), was handed to flowtap for this line only,
    // and nothing else in the process uses it, so the File may own and close it.
    let file = unsafe { File::from_raw_fd(fd) };
    // A launched command must not inherit it: the reader would wait for its end too.
    // SAFETY: setting FD_CLOEXEC on a descriptor this process owns.
    unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    Ok(file)
}

impl ValueEnum for ReportFormat {
    fn value_variants<'a>() -> &'a [Self] {
        &[Self::Table, Self::Json]
    }

    fn to_possible_value(&self) -> Option<PossibleValue> {
        Some(PossibleValue::new(match self {
            Self::Table => "table",
            Self::Json => "json",
        }))
    }
}

impl ValueEnum for OtlpProtocol {
    fn value_variants<'a>() -> &'a [Self] {
        &[Self::Grpc, Self::HttpProtobuf]
    }

    fn to_possible_value(&self) -> Option<PossibleValue> {
        Some(PossibleValue::new(match self {
            Self::Grpc => "grpc",
            Self::HttpProtobuf => "http/protobuf",
        }))
    }
}

pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
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

fn parse_labels(text: &str) -> Result<LabelSelector, String> {
    text.parse()
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

    #[test]
    fn the_defaults_of_the_flags_are_those_of_the_run() {
        // The flags' environment variables would stand in for their defaults.
        let variables = [
            "FLOWTAP_METRICS_ADDR",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
            "OTEL_TRACES_SAMPLER_ARG",
        ];
        if variables.iter().any(|v| std::env::var_os(v).is_some()) {
            eprintln!("skipped: a flag's environment variable is set");
            return;
        }
        let Command::Run(args) = Cli::parse_from(["flowtap", "run"]).command else {
            panic!("not a run");
        };
        let parsed = args.into_config().unwrap();
        let default = RunConfig::default();
        assert_eq!(parsed.report, default.report);
        assert_eq!(parsed.otlp_protocol, default.otlp_protocol);
        assert_eq!(parsed.sample_rate, default.sample_rate);
        assert_eq!(parsed.metrics_addr, default.metrics_addr);
    }
}
