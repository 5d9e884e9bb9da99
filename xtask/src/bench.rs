//! `cargo xtask bench`: what flowtap costs the application, measured in one run with the
//! configurations interleaved (this VM's timings swing between runs; ratios within a run hold).

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::{build_agent, fixture, workspace_root};

mod probe_points;
mod tls_capture;

const ROUNDS: usize = 3;
const CALLS: u64 = 200_000;

/// Issue 12's hot-path budget: the eBPF programs' own time per probed call, metrics only, at
/// most 150 ns on this machine, when bpftrace's funclatency script took 390 ns in the same run;
/// as this VM's timings swing with its load, the budget is also checked as that ratio.
const BUDGET_NS: f64 = 150.0;
const BUDGET_OVER_BPFTRACE: f64 = 150.0 / 390.0;

#[derive(Clone, Copy, PartialEq)]
enum Config {
    NoProbes,
    KernelFloor,
    MetricsOnly,
    /// Metrics only, with the kernel's diagnostics on (`--kernel-log debug`).
    KernelLog,
    /// Metrics with a profile: a capture, an error rule, a condition and a sum per call.
    Profiled,
    Spans100,
    Spans1,
    Bpftrace,
}

const CONFIGS: [Config; 8] = [
    Config::NoProbes,
    Config::KernelFloor,
    Config::MetricsOnly,
    Config::KernelLog,
    Config::Profiled,
    Config::Spans100,
    Config::Spans1,
    Config::Bpftrace,
];

impl Config {
    fn name(self) -> &'static str {
        match self {
            Config::NoProbes => "no probes",
            Config::KernelFloor => "kernel floor (empty programs)",
            Config::MetricsOnly => "flowtap, metrics only",
            Config::KernelLog => "flowtap, metrics only, --kernel-log debug",
            Config::Profiled => "flowtap, metrics with a profile",
            Config::Spans100 => "flowtap, spans 100%",
            Config::Spans1 => "flowtap, spans 1%",
            Config::Bpftrace => "bpftrace funclatency script",
        }
    }

    fn flowtap_flags(self) -> Option<&'static [&'static str]> {
        match self {
            Config::KernelFloor => Some(&["--empty-programs"]),
            Config::MetricsOnly => Some(&[]),
            Config::KernelLog => Some(&["--kernel-log", "debug"]),
            Config::Spans100 => Some(&["--spans-out", "/dev/null", "--sample-rate", "1"]),
            Config::Spans1 => Some(&["--spans-out", "/dev/null", "--sample-rate", "0.01"]),
            Config::Profiled | Config::NoProbes | Config::Bpftrace => None,
        }
    }
}

/// One measured run.
struct Sample {
    ns_per_call: f64,
    /// The eBPF programs' own time per call, from the kernel's bpf_stats.
    program_ns_per_call: Option<f64>,
    lost_events: u64,
    agent_cpu_seconds: f64,
    bench_seconds: f64,
}

pub(crate) fn run() -> anyhow::Result<()> {
    let agent = build_agent()?;
    let dir = fixture::build_bench()?;
    let bench = dir.join("bench");
    let _stats = BpfStats::enable()?;
    let mut samples: Vec<(Config, Sample)> = Vec::new();
    for round in 1..=ROUNDS {
        println!("== round {round} of {ROUNDS}");
        for config in CONFIGS {
            let sample = measure(config, &agent, &bench)
                .with_context(|| format!("measuring {}", config.name()))?;
            let program = sample.program_ns_per_call.map_or_else(String::new, |ns| {
                format!(", eBPF programs {ns:>6.1} ns/call")
            });
            println!(
                "   {:<42} {:>8.1} ns/call{program}",
                config.name(),
                sample.ns_per_call
            );
            samples.push((config, sample));
        }
    }
    let hot_path = hot_path(&samples);
    println!("{}", render_hot_path(&hot_path));
    let placement = probe_points::measure(&agent, &dir.join("probe_cost"))?;
    println!("{}", probe_points::render(&placement));
    let tls = tls_capture::measure(&agent, &dir)?;
    println!("{}", tls_capture::render(&tls));
    let flat_out = throughput(&agent, &bench, None)?;
    let paced = throughput(&agent, &bench, Some(PACED_CALLS_PER_SECOND))?;
    let attach_1k = attach_seconds(&agent, &dir.join("libsyms.so"), "sym_0*")?;
    let attach_10k = attach_seconds(&agent, &dir.join("libsyms.so"), "sym_*")?;
    let (rss_kib, exported) = rss_after_exporting(&agent, &bench, 1_000_000)?;
    let mut results = summarize(
        &samples,
        [flat_out, paced],
        (attach_1k, attach_10k),
        (rss_kib, exported),
    );
    results["probe_points"] = placement;
    results["hot_path"] = hot_path;
    results["tls_capture"] = tls;
    let out = workspace_root().join("target/bench");
    std::fs::write(
        out.join("results.json"),
        serde_json::to_string_pretty(&results)?,
    )?;
    let table = render(&results)
        + &render_hot_path(&results["hot_path"])
        + &probe_points::render(&results["probe_points"])
        + &tls_capture::render(&results["tls_capture"]);
    std::fs::write(out.join("results.md"), &table)?;
    println!("\n{table}");
    println!("written: target/bench/results.json, target/bench/results.md");
    Ok(())
}

/// The eBPF programs' own time per call (medians over the rounds) of flowtap with metrics
/// only, of bpftrace and of the empty programs, against the budget.
fn hot_path(samples: &[(Config, Sample)]) -> Value {
    let program_ns = |config: Config| {
        median(
            samples
                .iter()
                .filter(|(c, _)| *c == config)
                .filter_map(|(_, s)| s.program_ns_per_call)
                .collect(),
        )
    };
    let flowtap = program_ns(Config::MetricsOnly);
    let bpftrace = program_ns(Config::Bpftrace);
    json!({
        "flowtap_ns_per_call": flowtap,
        "bpftrace_ns_per_call": bpftrace,
        "kernel_floor_ns_per_call": program_ns(Config::KernelFloor),
        "flowtap_over_bpftrace": flowtap / bpftrace,
        "budget_ns": BUDGET_NS,
        "budget_over_bpftrace": BUDGET_OVER_BPFTRACE,
        "budget_met": flowtap <= BUDGET_NS,
        "budget_ratio_met": flowtap / bpftrace <= BUDGET_OVER_BPFTRACE,
    })
}

fn render_hot_path(r: &Value) -> String {
    let f = |key: &str| r[key].as_f64().unwrap_or(f64::NAN);
    let verdict = |key: &str| {
        if r[key].as_bool() == Some(true) {
            "met"
        } else {
            "NOT met"
        }
    };
    format!(
        "\n| hot-path budget: eBPF programs' own time per call (bpf_stats, metrics only) | value | target |\n\
         | --- | ---: | --- |\n\
         | flowtap | {:.0} ns | ≤ {:.0} ns: {} |\n\
         | bpftrace funclatency script, same run | {:.0} ns | |\n\
         | flowtap / bpftrace | {:.2}x | ≤ {:.2}x: {} |\n\
         | kernel floor (empty programs: bpf_stats and the program call) | {:.0} ns | |\n",
        f("flowtap_ns_per_call"),
        f("budget_ns"),
        verdict("budget_met"),
        f("bpftrace_ns_per_call"),
        f("flowtap_over_bpftrace"),
        f("budget_over_bpftrace"),
        verdict("budget_ratio_met"),
        f("kernel_floor_ns_per_call"),
    )
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn summarize(
    samples: &[(Config, Sample)],
    [
        (calls_per_second, lost),
        (paced_calls_per_second, paced_lost),
    ]: [(f64, u64); 2],
    (attach_1k, attach_10k): (f64, f64),
    (rss_kib, exported): (u64, u64),
) -> Value {
    let of = |config: Config| {
        samples
            .iter()
            .filter(move |(c, _)| *c == config)
            .map(|(_, s)| s)
    };
    let ns = |config: Config| median(of(config).map(|s| s.ns_per_call).collect());
    let program_ns = |config: Config| {
        let values: Vec<f64> = of(config).filter_map(|s| s.program_ns_per_call).collect();
        (!values.is_empty()).then(|| median(values))
    };
    let base = ns(Config::NoProbes);
    let added = |config: Config| ns(config) - base;
    let configs: Vec<Value> = CONFIGS
        .iter()
        .map(|&c| {
            json!({
                "config": c.name(),
                "ns_per_call": ns(c),
                "added_ns_per_call": added(c),
                "program_ns_per_call": program_ns(c),
            })
        })
        .collect();
    let spans = of(Config::Spans100).collect::<Vec<_>>();
    let spans_rate = 1e9 / ns(Config::Spans100);
    let cpu_share = median(
        spans
            .iter()
            .map(|s| s.agent_cpu_seconds / s.bench_seconds)
            .collect(),
    );
    json!({
        "rounds": ROUNDS,
        "calls_per_run": CALLS,
        "configs": configs,
        "metrics_only_over_floor": added(Config::MetricsOnly) / added(Config::KernelFloor),
        "flowtap_over_bpftrace": added(Config::MetricsOnly) / added(Config::Bpftrace),
        "profile_over_metrics_only": added(Config::Profiled) / added(Config::MetricsOnly),
        "program_kernel_log_over_metrics_only": program_ns(Config::KernelLog)
            .zip(program_ns(Config::MetricsOnly))
            .map(|(l, m)| l / m),
        "spans_100_calls_per_second": calls_per_second,
        "spans_100_lost_events": lost,
        "spans_100_paced_calls_per_second": paced_calls_per_second,
        "spans_100_paced_lost_events": paced_lost,
        "interleaved_runs_lost_events": samples.iter().map(|(_, s)| s.lost_events).sum::<u64>(),
        "agent_cpu_percent_per_100k_events_per_second": 100.0 * cpu_share / (spans_rate / 1e5),
        "agent_rss_mib_after_1m_spans": rss_kib as f64 / 1024.0,
        "spans_exported_in_rss_run": exported,
        "attach_seconds_1000_symbols": attach_1k,
        "attach_seconds_10000_symbols": attach_10k,
    })
}

fn render(r: &Value) -> String {
    let mut table = String::from(
        "| configuration | ns/call | added ns/call | eBPF programs ns/call |\n| --- | ---: | ---: | ---: |\n",
    );
    for c in r["configs"].as_array().into_iter().flatten() {
        let program = c["program_ns_per_call"]
            .as_f64()
            .map_or_else(|| "-".into(), |v| format!("{v:.0}"));
        table.push_str(&format!(
            "| {} | {:.0} | {:.0} | {program} |\n",
            c["config"].as_str().unwrap_or(""),
            c["ns_per_call"].as_f64().unwrap_or(0.0),
            c["added_ns_per_call"].as_f64().unwrap_or(0.0),
        ));
    }
    let f = |key: &str| r[key].as_f64().unwrap_or(f64::NAN);
    table.push_str(&format!(
        "\n| measure | value | target |\n| --- | ---: | --- |\n\
         | added cost, metrics only / kernel floor | {:.2}x | ≤ 1.15x |\n\
         | added cost, flowtap metrics only / bpftrace | {:.2}x | ≤ 1.0x |\n\
         | eBPF program time per call, --kernel-log debug / off | {:.2}x | 1.0x (rare paths only) |\n\
         | added cost, metrics with a profile / metrics only | {:.2}x | |\n\
         | calls/s taken with spans at 100% (a thread per core, flat out) | {:.0} with {} lost events | |\n\
         | spans at 100%, a thread per core paced to 100,000 calls/s in all | {:.0} calls/s with {} lost events | 100,000 with 0 lost |\n\
         | events lost over all interleaved flowtap runs | {} | 0 |\n\
         | agent CPU per 100k events/s | {:.1}% of a core | |\n\
         | agent RSS after exporting 1M spans over OTLP | {:.1} MiB ({} exported) | < 64 MiB |\n\
         | attach 1,000 symbols | {:.2} s | |\n\
         | attach 10,000 symbols | {:.2} s | |\n",
        f("metrics_only_over_floor"),
        f("flowtap_over_bpftrace"),
        f("program_kernel_log_over_metrics_only"),
        f("profile_over_metrics_only"),
        f("spans_100_calls_per_second"),
        r["spans_100_lost_events"],
        f("spans_100_paced_calls_per_second"),
        r["spans_100_paced_lost_events"],
        r["interleaved_runs_lost_events"],
        f("agent_cpu_percent_per_100k_events_per_second"),
        f("agent_rss_mib_after_1m_spans"),
        r["spans_exported_in_rss_run"],
        f("attach_seconds_1000_symbols"),
        f("attach_seconds_10000_symbols"),
    ));
    table
}

fn run_bench(bench: &Path, calls: u64) -> anyhow::Result<f64> {
    run_bench_threads(bench, calls, 1, None)
}

/// Nanoseconds per call of `calls` calls shared by `threads` threads (wall clock), as fast as
/// they can or at `rate` calls per second in all.
fn run_bench_threads(
    bench: &Path,
    calls: u64,
    threads: u32,
    rate: Option<u64>,
) -> anyhow::Result<f64> {
    let mut args = vec![calls.to_string(), threads.to_string()];
    args.extend(rate.map(|rate| rate.to_string()));
    let output = Command::new(bench).args(args).output()?;
    if !output.status.success() {
        bail!("bench failed: {output:?}");
    }
    let text = String::from_utf8_lossy(&output.stdout);
    text.split_whitespace()
        .next()
        .and_then(|ns| ns.parse().ok())
        .with_context(|| format!("bench printed {text:?}"))
}

fn measure(config: Config, agent: &Path, bench: &Path) -> anyhow::Result<Sample> {
    let mut tracer = match (config, config.flowtap_flags()) {
        (Config::NoProbes, _) => None,
        (Config::Bpftrace, _) => Some(Tracer::bpftrace(bench)?),
        (Config::Profiled, _) => {
            let profile = workspace_root().join("tests/fixture/bench-profile.toml");
            let profile = profile.to_str().context("a UTF-8 workspace path")?;
            Some(Tracer::flowtap(
                agent,
                bench,
                "bench_tiny",
                &["--profile", profile],
            )?)
        }
        (_, Some(flags)) => Some(Tracer::flowtap(agent, bench, "bench_tiny", flags)?),
        (_, None) => unreachable!("every flowtap configuration has flags"),
    };
    if tracer.is_some() {
        wait_until_probed(bench)?;
    }
    let pid = tracer.as_ref().map(|t| t.child.id());
    let cpu_before = pid.map_or(0.0, cpu_seconds);
    let programs_before = pid.map(BpfStats::run_time_ns).transpose()?;
    let started = Instant::now();
    let ns_per_call = run_bench(bench, CALLS)?;
    let bench_seconds = started.elapsed().as_secs_f64();
    let Some(tracer) = tracer.take() else {
        return Ok(Sample {
            ns_per_call,
            program_ns_per_call: None,
            lost_events: 0,
            agent_cpu_seconds: 0.0,
            bench_seconds,
        });
    };
    let program_ns = (BpfStats::run_time_ns(tracer.child.id())? - programs_before.unwrap_or(0))
        as f64
        / CALLS as f64;
    let agent_cpu_seconds = cpu_seconds(tracer.child.id()) - cpu_before;
    let report = tracer.stop()?;
    Ok(Sample {
        ns_per_call,
        program_ns_per_call: Some(program_ns),
        lost_events: report.map_or(0, |r| r["lost_events"].as_u64().unwrap_or(0)),
        agent_cpu_seconds,
        bench_seconds,
    })
}

/// Waits until calls are slowed by probes: the tracer's word for it is checked.
fn wait_until_probed(bench: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    // An unprobed call takes a few ns; a probed one at least a few hundred.
    while run_bench(bench, 1_000)? < 100.0 {
        if Instant::now() > deadline {
            bail!("the probes never took effect");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// A running flowtap or bpftrace with its probes attached.
struct Tracer {
    child: Child,
    report: Option<PathBuf>,
    /// flowtap stops on SIGINT as on Ctrl-C; bpftrace is stopped with SIGTERM, because a
    /// SIGINT ignored by a non-interactive parent shell stays ignored in it.
    stop_signal: i32,
}

impl Tracer {
    fn flowtap(agent: &Path, target: &Path, symbols: &str, flags: &[&str]) -> anyhow::Result<Self> {
        let report =
            std::env::temp_dir().join(format!("flowtap-bench-{}.json", std::process::id()));
        let child = crate::fixture::start_until_ready(
            Command::new(agent)
                .args(["run", "--exe"])
                .arg(target)
                .args(["--symbols", symbols, "--metrics-addr", "127.0.0.1:0"])
                .args(["--report", "json", "--output"])
                .arg(&report)
                .args(flags)
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )?;
        Ok(Self {
            child,
            report: Some(report),
            stop_signal: libc::SIGINT,
        })
    }

    fn bpftrace(target: &Path) -> anyhow::Result<Self> {
        let t = target.display();
        // BEGIN fires once every probe is attached; "Attaching" is printed before.
        let script = format!(
            "BEGIN {{ printf(\"ready\\n\"); }} uprobe:{t}:bench_tiny {{ @s[tid] = nsecs; }} \
             uretprobe:{t}:bench_tiny /@s[tid]/ {{ @h = hist(nsecs - @s[tid]); delete(@s[tid]); }}"
        );
        let mut child = Command::new("bpftrace")
            .args(["-B", "line", "-e", &script])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let stdout = child.stdout.take().context("bpftrace stdout")?;
        wait_for_line(stdout, "ready")?;
        Ok(Self {
            child,
            report: None,
            stop_signal: libc::SIGTERM,
        })
    }

    /// Stops it; returns flowtap's JSON report.
    fn stop(mut self) -> anyhow::Result<Option<Value>> {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, self.stop_signal) };
        // bpftrace sometimes misses its stop signal; its output is not needed.
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                self.child.kill()?;
                self.child.wait()?;
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.report
            .take()
            .map(|path| -> anyhow::Result<Value> {
                let text = std::fs::read_to_string(&path)?;
                let _ = std::fs::remove_file(&path);
                Ok(serde_json::from_str(&text)?)
            })
            .transpose()
    }
}

/// A tracer left running by an error is not left behind.
impl Drop for Tracer {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Reads `stream` on a thread until a line contains `marker` (60 s at most), then keeps
/// draining it so the child never blocks on a full pipe.
fn wait_for_line(stream: impl Read + Send + 'static, marker: &'static str) -> anyhow::Result<()> {
    let (found, seen) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            if line.contains(marker) {
                let _ = found.send(());
            }
        }
    });
    seen.recv_timeout(Duration::from_secs(60))
        .with_context(|| format!("no `{marker}` line within 60 s"))
}

/// User plus system CPU time of a process, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // After the command name: utime and stime are the 12th and 13th fields.
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<f64>().ok())
        .sum();
    // SAFETY: sysconf has no preconditions.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// The kernel's per-program run-time accounting, on for the benchmark's duration.
struct BpfStats;

impl BpfStats {
    const SYSCTL: &'static str = "/proc/sys/kernel/bpf_stats_enabled";

    fn enable() -> anyhow::Result<Self> {
        std::fs::write(Self::SYSCTL, "1").context("enabling kernel.bpf_stats_enabled")?;
        Ok(Self)
    }

    /// Total run time of the eBPF programs process `pid` holds, from their fdinfo (the
    /// kernel's own accounting, on while bpf_stats is enabled).
    fn run_time_ns(pid: u32) -> anyhow::Result<u64> {
        let mut by_program = std::collections::HashMap::new();
        for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
            let fd = entry?.file_name();
            let link = std::fs::read_link(format!("/proc/{pid}/fd/{}", fd.to_string_lossy()));
            if !link.is_ok_and(|target| target.to_string_lossy() == "anon_inode:bpf-prog") {
                continue;
            }
            let info =
                std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{}", fd.to_string_lossy()))?;
            let field = |name: &str| {
                info.lines()
                    .find_map(|line| line.strip_prefix(name))
                    .and_then(|value| value.trim().parse::<u64>().ok())
            };
            if let (Some(id), Some(run_time)) = (field("prog_id:"), field("run_time_ns:")) {
                by_program.insert(id, run_time);
            }
        }
        Ok(by_program.values().sum())
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write(Self::SYSCTL, "0");
    }
}

/// The rate at which spans at 100% must all be taken (issue 6's target).
const PACED_CALLS_PER_SECOND: u64 = 100_000;

/// Calls per second a thread per core makes with spans at 100%, as fast as they can or at
/// `rate` calls per second in all, and the events lost meanwhile.
fn throughput(agent: &Path, bench: &Path, rate: Option<u64>) -> anyhow::Result<(f64, u64)> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
    let flags = ["--spans-out", "/dev/null", "--sample-rate", "1"];
    let tracer = Tracer::flowtap(agent, bench, "bench_tiny", &flags)?;
    // Paced: five seconds' worth, enough for the agent to fall behind if it cannot keep up.
    let calls = rate.map_or(1_000_000, |rate| rate * 5);
    let ns = run_bench_threads(bench, calls, cores, rate)?;
    let report = tracer.stop()?.unwrap_or_default();
    let lost = report["lost_events"].as_u64().unwrap_or(u64::MAX);
    let pace = rate.map_or_else(|| "flat out".into(), |rate| format!("paced to {rate}/s"));
    println!(
        "   {cores} threads {pace}, spans 100%: {:.0} calls/s, {lost} lost",
        1e9 / ns
    );
    Ok((1e9 / ns, lost))
}

/// Seconds from starting flowtap to its probes being attached.
fn attach_seconds(agent: &Path, library: &Path, symbols: &str) -> anyhow::Result<f64> {
    let started = Instant::now();
    let tracer = Tracer::flowtap(agent, library, symbols, &[])?;
    let seconds = started.elapsed().as_secs_f64();
    tracer.stop()?;
    println!("   attach {symbols:<8} {seconds:.2} s");
    Ok(seconds)
}

/// Agent RSS (KiB) after `calls` spans were exported to a local OTLP/HTTP sink, and how many
/// the sink took.
fn rss_after_exporting(agent: &Path, bench: &Path, calls: u64) -> anyhow::Result<(u64, u64)> {
    let sink = TcpListener::bind("127.0.0.1:0")?;
    let endpoint = format!("http://{}", sink.local_addr()?);
    std::thread::spawn(move || serve_otlp_sink(sink));
    let flags = [
        "--otlp-endpoint",
        &endpoint,
        "--otlp-protocol",
        "http/protobuf",
    ];
    let tracer = Tracer::flowtap(agent, bench, "bench_tiny", &flags)?;
    run_bench(bench, calls)?;
    // Let the queue drain to the sink before reading the resident set.
    std::thread::sleep(Duration::from_secs(3));
    let rss = std::fs::read_to_string(format!("/proc/{}/status", tracer.child.id()))?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    let report = tracer.stop()?.unwrap_or_default();
    let exported = report["spans"]["exported"].as_u64().unwrap_or(0);
    println!(
        "   RSS after {calls} spans: {:.1} MiB ({exported} exported)",
        rss as f64 / 1024.0
    );
    Ok((rss, exported))
}

/// Accepts OTLP/HTTP requests and answers 200, discarding them.
fn serve_otlp_sink(listener: TcpListener) {
    for stream in listener.incoming().map_while(Result::ok) {
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stream.try_clone().expect("clone stream"));
            let mut writer = stream;
            loop {
                let mut length = 0;
                let mut line = String::new();
                loop {
                    line.clear();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    if line.trim_end().is_empty() {
                        break;
                    }
                    if let Some((name, value)) = line.split_once(':')
                        && name.eq_ignore_ascii_case("content-length")
                    {
                        length = value.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0; length];
                if reader.read_exact(&mut body).is_err()
                    || writer
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                        .is_err()
                {
                    return;
                }
            }
        });
    }
}
