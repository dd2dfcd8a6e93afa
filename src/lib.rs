//! aurora-migrator: moves Amazon RDS for PostgreSQL instances to Amazon Aurora PostgreSQL.
//!
//! # Layout
//! - [`core`]: the pure phase machine (record, observation, decision, invariants, preflight).
//! - [`inbound`]: parsing of every message the agent reads from its queue.
//! - [`ports`]: the small per-capability traits the driver talks to AWS through.
//! - [`agent`]: the driver: observe, step, persist, act, schedule, for one message at a time.
//! - [`aws`]: the ports on the AWS SDK, one file per service; every request goes through the one
//!   counted, classified call of [`aws::call`] (RDS's after its rate limiter, [`aws::rds`]).
//! - [`config`]: settings from flags and environment variables, validated.

pub mod agent;
pub mod aws;
pub mod commands;
pub mod config;
pub mod core;
pub mod inbound;
pub mod ports;
pub mod runtime;
pub mod sim;
pub mod telemetry;
