//! flowtap: zero-code eBPF profiling of native workflow runtimes. One module per stage of the
//! data flow: target → symbols → (profile) plan → loader → (kernel) → events → spans, and
//! metrics → profile_metrics → export and report.

pub mod cli;
pub mod config;
pub mod console;
pub mod events;
pub mod export;
pub mod host;
pub mod kubernetes;
pub mod loader;
pub mod metrics;
pub mod plan;
pub mod profile;
pub mod profile_metrics;
pub mod report;
pub mod spans;
pub mod symbols;
pub mod target;
