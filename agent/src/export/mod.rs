//! Where measurements leave the agent.

pub mod otlp;
pub mod prometheus;
pub mod spans_file;
