//! Where measurements leave the agent.

pub mod prometheus;
