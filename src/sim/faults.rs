//! The seeded fault plan: what goes wrong, where and when.
//!
//! Every per-call fault is drawn from the run's own fault stream, so the same seed injects the
//! same faults at the same calls. A plan can also be written by hand (`ScriptedFault`) to
//! reproduce one case, e.g. a crash right after the promote call reached AWS.

use crate::core::ErrorKind;

use super::queue::Ms;

/// Probabilities of the transient faults, per call (or per event for deliveries).
#[derive(Clone, Debug, PartialEq)]
pub struct FaultIntensity {
    /// `ThrottlingException` after the SDK's own retries.
    pub throttle: f64,
    /// A 5xx or a timeout after the SDK's own retries.
    pub server_error: f64,
    /// An answer that takes seconds instead of milliseconds.
    pub slow: f64,
    /// A mutation that AWS performed but whose answer never arrived (a timeout to the caller).
    pub lost_answer: f64,
    /// The agent process dies inside this call (before or after AWS saw it).
    pub crash: f64,
    /// An RDS or scheduled event delivered to the queue never arrives / twice / late.
    pub event_lost: f64,
    pub event_duplicated: f64,
    pub event_late: f64,
    /// Per migration: an RDS operation fails for good (replica creation error, promotion stuck,
    /// a stale logical slot that keeps the lag high).
    pub permanent: f64,
    /// Database-aware sources (`world/database.rs`): a SQL connection dropped mid-call, per
    /// call (Retryable).
    pub db_connection_drop: f64,
    /// Per database-aware source: the master secret cannot be read (Fatal on every SQL call:
    /// the preflight plans the metric path).
    pub db_secret_unreadable: f64,
    /// Per database-aware source: one client reconnects once after its session was ended.
    pub db_reconnect_once: f64,
    /// Per database-aware source: a hole in the quarantine; a client keeps reconnecting.
    pub db_persistent_hole: f64,
    /// Per database-aware source: terminated sessions do not end.
    pub db_stuck_sessions: f64,
    /// Per source routed through Route 53: its changes never reach `INSYNC` (a permanent fault,
    /// `PermanentFault::RouteNeverInSync`; `world/route53.rs`).
    pub route53_never_in_sync: f64,
}

impl FaultIntensity {
    pub fn none() -> Self {
        FaultIntensity {
            throttle: 0.0,
            server_error: 0.0,
            slow: 0.0,
            lost_answer: 0.0,
            crash: 0.0,
            event_lost: 0.0,
            event_duplicated: 0.0,
            event_late: 0.0,
            permanent: 0.0,
            db_connection_drop: 0.0,
            db_secret_unreadable: 0.0,
            db_reconnect_once: 0.0,
            db_persistent_hole: 0.0,
            db_stuck_sessions: 0.0,
            route53_never_in_sync: 0.0,
        }
    }

    /// Agent crashes only, twice the default mix's rate (`simulate --crashes-only`).
    pub fn crashes_only() -> Self {
        FaultIntensity {
            crash: 0.004,
            ..FaultIntensity::none()
        }
    }

    /// The default mix, scaled by `x` (0: no faults; 1: the default; probabilities are capped).
    pub fn scaled(x: f64) -> Self {
        let cap = |p: f64| (p * x).clamp(0.0, 0.5);
        FaultIntensity {
            throttle: cap(0.02),
            server_error: cap(0.02),
            slow: cap(0.03),
            lost_answer: cap(0.02),
            crash: cap(0.002),
            event_lost: cap(0.15),
            event_duplicated: cap(0.15),
            event_late: cap(0.3),
            permanent: cap(0.15),
            db_connection_drop: cap(0.02),
            db_secret_unreadable: cap(0.05),
            db_reconnect_once: cap(0.1),
            db_persistent_hole: cap(0.02),
            db_stuck_sessions: cap(0.05),
            route53_never_in_sync: cap(0.03),
        }
    }
}

impl Default for FaultIntensity {
    fn default() -> Self {
        FaultIntensity::scaled(1.0)
    }
}

/// What happens to one call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallFault {
    None,
    Error(ErrorKind),
    /// Answered after this long.
    Slow(Ms),
    /// AWS did it; the answer was lost (the caller sees a retryable timeout).
    LostAnswer,
    /// The process dies before the request leaves.
    CrashBefore,
    /// The process dies after AWS performed the request, before the answer is read.
    CrashAfter,
    /// `sqs:SendMessage` only: the message is received this much later than its delay asks.
    /// SQS delivers it on time, but every message slot of the agent is taken (a fleet's steps
    /// waiting for the RDS rate limiter) and hundreds of other visible messages are sampled
    /// first: the simulator's 1,000-migration fleet (seed 9) received a cutover's retry tick,
    /// sent for a second later, six minutes late. Scripted only: the fleet makes it by itself.
    ReceivedLate(Ms),
}

/// A fault pinned to the `nth` call (1-based) of one operation, e.g. `rds:PromoteDBCluster`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScriptedFault {
    pub operation: String,
    pub nth: u32,
    /// Count the calls from the first call of this operation on (that call included, when it
    /// is `operation` itself), e.g. `rds:ModifyDBInstance` for "the nth once the quarantine was
    /// asked for"; `None`: from the start.
    pub after: Option<String>,
    pub fault: CallFault,
}

/// An RDS operation that fails for good for one migration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum PermanentFault {
    /// The replica cluster ends `failed` instead of `available`.
    ReplicaCreationFails,
    /// PromoteReadReplicaDBCluster never finishes.
    PromotionStuck,
    /// A forgotten logical slot keeps OldestReplicationSlotLag high: the lag never settles.
    StaleLogicalSlot,
    /// The source routes through Route 53 and its changes never reach `INSYNC`: the migration
    /// must end failed after Routing's timeout with the source still fenced and people told
    /// (Aurora is promoted; nothing is undone by itself). Drawn only for Route 53 sources,
    /// never from `ALL`.
    RouteNeverInSync,
}

impl PermanentFault {
    pub const ALL: [PermanentFault; 3] = [
        PermanentFault::ReplicaCreationFails,
        PermanentFault::PromotionStuck,
        PermanentFault::StaleLogicalSlot,
    ];
}

/// What goes wrong inside one database-aware source (see `world/database.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum DbFault {
    /// The master secret cannot be read: every SQL call is refused (Fatal).
    SecretUnreadable,
    /// One client reconnects once, a moment after its session was ended.
    ReconnectOnce,
    /// A hole in the quarantine: a client reconnects every time its session is ended.
    PersistentHole,
    /// `pg_terminate_backend` answers, but the sessions do not end.
    StuckSessions,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct FaultPlan {
    pub intensity: FaultIntensity,
    /// Faults at given calls, applied on top of (or, with `FaultIntensity::none()`, instead of)
    /// the random ones.
    pub scripted: Vec<ScriptedFault>,
    /// Permanent faults by source index; when `Some`, replaces the random choice.
    pub permanent: Option<Vec<(usize, PermanentFault)>>,
    /// Database faults by source index (database-aware sources only); when `Some`, replaces
    /// the random choice.
    pub database: Option<Vec<(usize, DbFault)>>,
}

impl FaultPlan {
    pub fn random(intensity: FaultIntensity) -> Self {
        FaultPlan {
            intensity,
            scripted: Vec::new(),
            permanent: None,
            database: None,
        }
    }

    /// No random faults at all; only what is scripted.
    pub fn scripted(scripted: Vec<ScriptedFault>) -> Self {
        FaultPlan {
            intensity: FaultIntensity::none(),
            scripted,
            permanent: Some(Vec::new()),
            database: Some(Vec::new()),
        }
    }
}
