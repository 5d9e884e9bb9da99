//! flowtap: zero-code eBPF profiling of native workflow runtimes. One module per stage of the
//! data flow: targets → symbols → (profile) plan → loader → (kernel) → span_ring → spans, and
//! kernel_counters → profile_metrics → export and report; `run` drives the stages through its
//! phases, `cli` turns the command line into a run, `workloads` adds where processes run.

/// `eprintln!` that never panics: a closed stderr (`2>&1 | head`) must not crash a run that
/// is tracing a production process. Defined before the modules, it shadows the standard macro
/// in all of them.
macro_rules! eprintln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// `eprint!` likewise (progress lines).
macro_rules! eprint {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stderr(), $($arg)*);
    }};
}

mod capture_ring;
pub mod cli;
mod console;
mod debug_file;
mod export;
mod genai;
mod host;
mod instructions;
mod invoker;
mod kernel_counters;
mod kernel_log;
#[cfg(test)]
mod kernel_tests;
mod kubernetes;
mod library_loads;
mod loader;
mod mapped_file;
mod output_file;
mod plan;
mod processes;
mod profile;
mod profile_metrics;
mod report;
mod run;
mod span_ring;
mod spans;
mod symbols;
mod targets;
mod workloads;

// What the fuzz targets (fuzz/, a crate of their own) drive.
pub use plan::SymbolSelector;
pub use profile::Profile;
pub use symbols::ElfObject;
