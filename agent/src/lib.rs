//! flowtap: zero-code eBPF profiling of native workflow runtimes. One module per stage of the
//! data flow: target → symbols → plan → loader → (kernel) → metrics → report.

pub mod cli;
pub mod config;
pub mod events;
pub mod export;
pub mod host;
pub mod kubernetes;
pub mod loader;
pub mod metrics;
pub mod plan;
pub mod profile;
pub mod report;
pub mod spans;
pub mod symbols;
pub mod target;
pub mod workflow;
