//! Where measurements leave the agent.

mod llm;
pub(crate) mod metrics_server;
pub(crate) mod otlp;
pub(crate) mod otlp_tls;
pub(crate) mod prometheus;
pub(crate) mod spans_file;
