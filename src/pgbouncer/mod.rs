//! The PgBouncer companion, and the agent's client of it.
//!
//! The agent runs on ECS Fargate and cannot edit a PgBouncer's configuration. For applications
//! that connect through PgBouncer, the companion (`aurora-migrator pgbouncer-companion`) runs
//! beside PgBouncer (same host or pod), owns its `pgbouncer.ini`, and reaches its admin console
//! on loopback. At cutover the agent asks it to hold the clients and re-point one
//! `[databases]` entry at the Aurora writer. Clients are held (PAUSE), never failed.
//!
//! # Contract
//! Every request is `POST` with a JSON body, signed like the webhook router's
//! ([`crate::aws::router::signature`], header [`crate::aws::router::SIGNATURE_HEADER`],
//! `MIGRATOR_WEBHOOK_SECRET`); an unsigned, wrongly signed or stale (more than 300 s away)
//! request is refused with 401. Answers are JSON; an error is `{"error": "..."}`: 400 for a
//! malformed request, 401 unsigned, 404 when the ini file has no entry for the database, 502
//! when PgBouncer's console or the ini file fails, 503 when PAUSE does not complete within the
//! pause timeout (a transaction stayed open; the database was resumed).
//!
//! - `POST /v1/entry` `{"database"}` → [`EntryInfo`].
//! - `POST /v1/hold` `{"database","migration"}` → PAUSE (bounded by the pause timeout) →
//!   `{"held":true}`. A RESUME follows by itself after the maximum hold unless the database is
//!   routed or released first: a dead agent never leaves clients held. Idempotent (a new hold
//!   restarts the maximum hold).
//! - `POST /v1/route` `{"database","host","port","migration"}` → PAUSE (at once when held) → rewrite the
//!   entry's `host`/`port` atomically → RELOAD → check SHOW DATABASES shows the new address
//!   (else restore the file, RELOAD) → RESUME → [`Routed`]. Idempotent: an entry already there
//!   is only resumed. Whatever fails after the PAUSE, RESUME comes before the answer.
//! - `POST /v1/release` `{"database"}` → RESUME (idempotent), and the automatic one is
//!   cancelled → `{"released":true}`.
//!
//! Operations on one database are serialized. The companion never logs or answers its admin
//! password or signing secret. When it stops (SIGTERM), it resumes the databases it holds.

pub mod client;
pub mod companion;
pub mod console;
pub mod ini;
pub mod router;

use serde::{Deserialize, Serialize};

/// `/v1/entry`'s answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryInfo {
    pub database: String,
    /// From the ini file; `null` when the entry has no `host=` (PgBouncer's Unix socket).
    pub host: Option<String>,
    pub port: u16,
    /// From SHOW DATABASES.
    pub paused: bool,
    /// PgBouncer's `query_wait_timeout`, whole seconds (0: none): a hold longer than this
    /// fails the held clients' queries.
    pub query_wait_timeout_s: Option<u64>,
}

/// `/v1/hold`'s answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Held {
    pub held: bool,
}

/// `/v1/route`'s answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Routed {
    pub database: String,
    pub host: String,
    pub port: u16,
    /// How long the clients were held, from the PAUSE (or the hold) to the RESUME.
    pub held_ms: u64,
}

/// `/v1/release`'s answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Released {
    pub released: bool,
}

/// A request's body (the fields each endpoint reads).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Request {
    /// The endpoint the request is for (`/v1/route`, …), inside the signed body: a request
    /// signed for one operation cannot be replayed to another (an entry read as a release).
    #[serde(default)]
    pub op: String,
    /// The companion the request is addressed to, as the instance's router tag names it
    /// (`<host>:<port>`), inside the signed body: a companion that knows its name
    /// (`MIGRATOR_COMPANION_NAME`) refuses a request addressed to another.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub companion: Option<String>,
    pub database: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}
