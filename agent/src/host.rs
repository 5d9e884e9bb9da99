//! What this host offers flowtap: privileges and kernel features, in plain words.

use std::path::Path;

const CAP_SYS_ADMIN: u32 = 21;
const CAP_SYS_PTRACE: u32 = 19;
const CAP_DAC_READ_SEARCH: u32 = 2;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Capabilities flowtap needs when not running with CAP_SYS_ADMIN.
const NEEDED: [(u32, &str); 4] = [
    (CAP_BPF, "CAP_BPF"),
    (CAP_PERFMON, "CAP_PERFMON"),
    (CAP_SYS_PTRACE, "CAP_SYS_PTRACE"),
    (CAP_DAC_READ_SEARCH, "CAP_DAC_READ_SEARCH"),
];

#[derive(Debug, thiserror::Error)]
#[error(
    "flowtap needs root or the capabilities {}: missing {}; run it with sudo or grant them",
    NEEDED.map(|(_, name)| name).join(", "),
    missing.join(", ")
)]
pub(crate) struct PrivilegeError {
    missing: Vec<&'static str>,
}

/// A field of /proc/self/status.
fn status_field(name: &str) -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
        .map(|value| value.trim().to_string())
}

fn effective_capabilities() -> u64 {
    status_field("CapEff")
        .and_then(|hex| u64::from_str_radix(&hex, 16).ok())
        .unwrap_or(0)
}

/// Whether a seccomp filter confines this process, as container runtimes' default profiles
/// do: those refuse bpf(2) without CAP_SYS_ADMIN whatever other capabilities are held (seen
/// with podman 4.3's).
pub(crate) fn seccomp_filtered() -> bool {
    status_field("Seccomp").as_deref() == Some("2")
}

/// Whether this process may put probes on every process (what following children and `--exe`
/// do): the kernel refuses system-wide uprobes without CAP_SYS_ADMIN, even with CAP_PERFMON.
pub(crate) fn may_probe_every_process() -> bool {
    effective_capabilities() & (1 << CAP_SYS_ADMIN) != 0
}

/// Fails with the list of missing capabilities unless this process may load and attach probes.
pub(crate) fn check_privileges() -> Result<(), PrivilegeError> {
    let capabilities = effective_capabilities();
    let has = |cap: u32| capabilities & (1 << cap) != 0;
    let missing: Vec<_> = NEEDED
        .iter()
        // Before CAP_BPF and CAP_PERFMON existed (Linux 5.8), CAP_SYS_ADMIN granted both.
        .filter(|(cap, _)| {
            let via_admin = has(CAP_SYS_ADMIN) && (*cap == CAP_BPF || *cap == CAP_PERFMON);
            !has(*cap) && !via_admin
        })
        .map(|&(_, name)| name)
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(PrivilegeError { missing })
    }
}

/// One line of `flowtap check`.
pub(crate) struct Finding {
    pub what: &'static str,
    pub ok: bool,
    /// Whether flowtap cannot work without it.
    pub required: bool,
    pub detail: String,
}

pub(crate) fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|release| release.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

fn kernel_at_least(major: u32, minor: u32) -> bool {
    let release = kernel_release();
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|part| part.parse::<u32>().ok());
    let found = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    found >= (major, minor)
}

/// One line for `flowtap --version`: the kernel and which of its features flowtap found.
pub(crate) fn features_line() -> String {
    let features: Vec<String> = findings()
        .iter()
        .filter(|finding| finding.what != "privileges")
        .map(|finding| format!("{} {}", finding.what, if finding.ok { "yes" } else { "no" }))
        .collect();
    format!("kernel {}: {}", kernel_release(), features.join(", "))
}

pub(crate) fn findings() -> Vec<Finding> {
    let privileges = check_privileges();
    let pmu = std::fs::read_to_string("/sys/bus/event_source/devices/uprobe/type");
    let multi =
        aya::sys::is_uprobe_multi_supported(aya::sys::UProbeMultiFeature::ProcessScopedPidFilter);
    let tracefs = Path::new("/sys/kernel/tracing/uprobe_events").exists()
        || Path::new("/sys/kernel/debug/tracing/uprobe_events").exists();
    vec![
        Finding {
            what: "privileges",
            ok: privileges.is_ok(),
            required: true,
            detail: match privileges {
                Ok(()) => "may load eBPF programs and attach uprobes".into(),
                Err(error) => error.to_string(),
            },
        },
        Finding {
            what: "uprobe PMU",
            ok: pmu.is_ok(),
            required: true,
            detail: match pmu {
                Ok(kind) => format!("perf event type {}", kind.trim()),
                Err(_) => "no /sys/bus/event_source/devices/uprobe: kernel built without CONFIG_UPROBE_EVENTS".into(),
            },
        },
        Finding {
            what: "kernel BTF",
            ok: Path::new("/sys/kernel/btf/vmlinux").exists(),
            required: true,
            detail: "/sys/kernel/btf/vmlinux (needed for thread-exit cleanup; CONFIG_DEBUG_INFO_BTF)".into(),
        },
        Finding {
            what: "attach cookies",
            ok: kernel_at_least(5, 15),
            required: true,
            detail: format!("kernel {} (cookies need 5.15 or newer)", kernel_release()),
        },
        Finding {
            what: "uprobe.multi",
            ok: matches!(multi, Ok(true)),
            required: false,
            detail: match multi {
                Ok(true) => "one link per object: fast attach of thousands of functions".into(),
                Ok(false) => "absent (kernel < 6.6): one perf event per function, slower attach".into(),
                Err(error) => format!("could not probe: {error}"),
            },
        },
        Finding {
            what: "tracefs",
            ok: tracefs,
            required: false,
            detail: if tracefs {
                "mounted".into()
            } else {
                "not mounted; flowtap does not need it (bpftrace does: mount -t tracefs tracefs /sys/kernel/tracing)".into()
            },
        },
    ]
}
