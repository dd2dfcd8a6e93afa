//! aurora-migrator: moves Amazon RDS for PostgreSQL instances to Amazon Aurora PostgreSQL.
//!
//! # Layout
//! Where a new rule goes, and where its I/O goes: a rule (a preflight check, a proof, a phase's
//! guard) in [`core`], the phase's rules in its file under `core/machine/`; the I/O it needs in a
//! port ([`ports`]) implemented once for AWS ([`aws`]) and once for the simulator ([`sim`]).
//!
//! - [`core`]: the pure phase machine. `core/machine/` holds `step` and one file per group of
//!   phases with everything about them (what they need observed, guards, proof, actions):
//!   `preparation.rs`, `cutover.rs`, `soak.rs`, `rollback.rs`; `fence.rs` the one fence check;
//!   `results.rs` which action results feed back. Beside it: the record, observation, actions,
//!   policy, preflight checks, parameter translation, naming, notifications' words, invariants.
//! - [`inbound`]: parsing of every message the agent reads from its queue.
//! - [`ports`]: the small per-capability traits the driver talks to the world through.
//! - [`agent`]: the driver: observe, step, persist, act, schedule, for one message at a time.
//! - [`aws`]: the ports on the AWS SDK, one file per service; every request goes through the one
//!   counted, classified call of [`aws::call`] (RDS's after its rate limiter, [`aws::rds`], whose
//!   fleet describe cache serves the fleet's describes).
//! - [`runtime`]: the SQS loop: long polling, concurrency, per-migration locks, visibility,
//!   SIGTERM.
//! - [`database`]: the [`ports::Database`] port on PostgreSQL (TLS verified against the RDS CA
//!   bundle, credentials from Secrets Manager, every statement in `database::sql`).
//! - [`sim`]: the deterministic simulator: the real agent against a fake AWS in virtual time,
//!   seeded faults, checks, report.
//! - [`telemetry`]: logs, and the optional OpenTelemetry export and its instruments.
//! - [`config`]: settings from flags and environment variables, validated; [`commands`]: the
//!   operator commands (`status`, `pause`, …).

pub mod agent;
pub mod aws;
pub mod commands;
pub mod config;
pub mod core;
pub mod database;
pub mod inbound;
pub mod pgbouncer;
pub mod ports;
pub mod runtime;
pub mod sim;
pub mod telemetry;
