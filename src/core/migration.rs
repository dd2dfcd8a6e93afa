//! The migration record: everything the agent must remember about one attempt.
//!
//! It is persisted (DynamoDB) before any action runs, with a condition on `version`, so it is
//! the single source of truth; tags only mirror the phase.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::action::{ActionKey, TranslatedParameter};
use super::database::{DatabaseAccess, Lsn};
use super::naming::TargetNames;
use super::notification::Notification;
use super::phase::Phase;
use super::preflight::PreflightReport;

/// A migration is one attempt at one source, keyed by the source's `DbiResourceId` (identifiers
/// can be renamed and reused) and the attempt number.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct MigrationId {
    pub resource_id: String,
    pub attempt: u32,
}

impl fmt::Display for MigrationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `/` rather than `#`: the id is also a tag value, and RDS tags do not allow `#`.
        write!(f, "{}/{}", self.resource_id, self.attempt)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Migration {
    pub id: MigrationId,
    /// The source's identifier and ARN when the attempt started.
    pub source_identifier: String,
    pub source_arn: String,
    /// Incremented by the store on every successful conditional write.
    pub version: u64,
    pub phase: Phase,
    pub created_at: Timestamp,
    pub phase_entered_at: Timestamp,
    pub names: TargetNames,
    /// Decided in Preflight.
    pub plan: Option<Plan>,
    pub preflight: Option<PreflightReport>,
    pub progress: Progress,
    /// Mutating actions in flight (issued, not yet confirmed by observation, or failed and
    /// backing off), each with the time from which it may be issued again.
    pub requested: BTreeMap<ActionKey, Timestamp>,
    /// Failed tries of actions in this phase (reset on every phase change).
    pub action_failures: u32,
    /// Alerts already raised, so each is raised once per attempt.
    pub alerts_sent: BTreeSet<String>,
    /// Notifications decided and not yet confirmed sent. They are persisted with the record and
    /// offered again on every step until SNS takes them, so a crash or an SNS outage loses none
    /// (at least once: a person may see one twice).
    pub outbox: Vec<Notification>,
    pub rollback: Option<Rollback>,
    /// Why the attempt failed, rolled back or is stuck: for `status` and notifications.
    pub last_error: Option<String>,
    /// When the agent set the trigger tag to `stopped` after an unsuccessful end: only then may
    /// a new `start` begin the next attempt.
    pub trigger_reset_at: Option<Timestamp>,
    /// The pending wake-up; a tick carrying another token is stale.
    pub next_wake: Option<Wake>,
    /// Counter behind wake tokens (deterministic: no randomness in the core).
    pub wake_seq: u64,
    pub history: Vec<PhaseChange>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Wake {
    pub at: Timestamp,
    pub token: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhaseChange {
    pub phase: Phase,
    pub at: Timestamp,
}

/// What Preflight decided about the target.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub engine_version: String,
    pub family: String,
    pub instance_class: String,
    pub cluster_parameter_group: String,
    pub instance_parameter_group: String,
    pub cluster_parameters: Vec<TranslatedParameter>,
    pub instance_parameters: Vec<TranslatedParameter>,
    pub subnet_group: String,
    pub vpc_id: String,
    pub port: u16,
    pub source_groups: Vec<String>,
    pub storage_encrypted: bool,
    pub kms_key_id: Option<String>,
    /// Security groups of the declared CDC consumers (empty: no CDC).
    pub cdc_consumers: Vec<String>,
    /// The database access the preflight proved (it connected and read): the cutover ends
    /// sessions and proves catch-up by WAL position. `None`: the metric path.
    #[serde(default)]
    pub database: Option<DatabaseAccess>,
    /// The agent's own security group, admitted through the quarantine on the database port
    /// (only with `database`).
    #[serde(default)]
    pub agent_group: Option<String>,
    /// The router chosen at preflight (`core::router`): the cutover and a rollback after it
    /// route through it.
    #[serde(default)]
    pub router: crate::core::router::RouterChoice,
}

impl Plan {
    /// The groups the quarantine admits on the database port: the declared CDC consumers' and,
    /// with database access, the agent's own. Nothing else, and no egress.
    pub fn quarantine_admits(&self) -> Vec<String> {
        let mut groups = self.cdc_consumers.clone();
        if self.database.is_some() {
            groups.extend(self.agent_group.iter().cloned());
        }
        groups.sort();
        groups.dedup();
        groups
    }
}

/// Facts established along the way. Each is set once, when first observed or first requested.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    pub quarantine_group_id: Option<String>,
    pub replica_ready_at: Option<Timestamp>,
    /// Since when the lag has been within the policy (reset when it is not).
    pub lag_ok_since: Option<Timestamp>,
    pub baseline: Option<Baseline>,
    /// The source's groups before the quarantine: what a rollback restores.
    pub original_groups: Option<Vec<String>>,
    /// The quarantine was requested: writes may have stopped from here on.
    pub quarantined_at: Option<Timestamp>,
    /// The quarantine was confirmed (exactly the group, active).
    pub quarantine_active_at: Option<Timestamp>,
    pub reboot_requested_at: Option<Timestamp>,
    /// The metric path: the source's "DB instance shutdown" event after the reboot request,
    /// seen among its events: RDS took the reboot up. From here until the restart event, the
    /// looks read the source's events, and the source only from the fleet snapshot
    /// (`machine::cutover::reads_catch_up_only`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reboot_began_at: Option<Timestamp>,
    pub restarted_at: Option<Timestamp>,
    /// The metric path: CloudWatch showed the catch-up after the restart, on a look that read
    /// the source from the fleet snapshot. The looks from here on describe it from RDS (the
    /// fence, the CDC consumers' tag) to prove the rest (`machine::cutover`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caught_up_in_metrics_at: Option<Timestamp>,
    /// Promoting found the fence broken before it asked for the promotion (or, on the metric
    /// path, a look in Draining after the reboot request did). On the database path, from here on this attempt's Draining reads the source from RDS on every look (to judge
    /// and repair the fence), not from the fleet snapshot (`machine::cutover`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fence_broke_at: Option<Timestamp>,
    /// The Draining proof held.
    pub drain_proven_at: Option<Timestamp>,
    pub promote_requested_at: Option<Timestamp>,
    /// The route to the target was requested. From here on the target may take writes, so an
    /// automatic rollback would no longer be lossless.
    pub route_requested_at: Option<Timestamp>,
    pub promoted_at: Option<Timestamp>,
    /// The route to the target was confirmed: from here on the target takes writes, and a
    /// rollback needs a person's approval.
    pub routed_at: Option<Timestamp>,
    pub smoke_test_passed: Option<bool>,
    pub verification_passed_at: Option<Timestamp>,
    pub final_snapshot_at: Option<Timestamp>,
    /// Decommissioning: a look that read the source from the fleet snapshot found nothing
    /// holding its deletion back; the next look reads it as RDS has it now and acts on that
    /// (`machine::soak`). Cleared by a look that finds a hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_ready_at: Option<Timestamp>,
    pub source_delete_requested_at: Option<Timestamp>,
    /// Rollback after cutover: Aurora's writer was asked to reboot (its fence) ...
    pub target_reboot_requested_at: Option<Timestamp>,
    /// ... and restarted: no session that was open before can write after this.
    pub target_restarted_at: Option<Timestamp>,
    /// The source got its groups back (rollback), or is gone: the quarantine is over.
    pub source_released_at: Option<Timestamp>,
    /// A rollback asked RDS to give the source its groups back (`RestoreSourceGroups`), and no
    /// failure of that request came back since: only then do the original groups on a look
    /// release the source. A describe that lags (or a snapshot from before the quarantine)
    /// shows them too, and ended the rollback with the source still fenced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_restore_requested_at: Option<Timestamp>,
    /// Database-aware cutover: why this attempt uses the metric path after all (the Aurora
    /// cluster is unreachable, the source's sessions would not end, access was lost). Set once.
    #[serde(default)]
    pub database_fallback: Option<String>,
    /// The Aurora writer answered by SQL (Replicating checks the route before the cutover).
    #[serde(default)]
    pub target_reached_at: Option<Timestamp>,
    /// The source's client sessions were first asked to end in this cutover.
    #[serde(default)]
    pub sessions_end_requested_at: Option<Timestamp>,
    /// Since when the source has shown no client session (reset when one appears).
    #[serde(default)]
    pub sessions_clear_since: Option<Timestamp>,
    /// The fence: the WAL position of the durable barrier written with no client session left,
    /// and when the agent heard it. Reset when a client session appears after it.
    #[serde(default)]
    pub fence_lsn: Option<Lsn>,
    #[serde(default)]
    pub fence_written_at: Option<Timestamp>,
    /// The Aurora writer's replay position that passed the fence.
    #[serde(default)]
    pub fence_replayed_lsn: Option<Lsn>,
    /// When a reading of the Aurora writer (database-aware path, promotion asked for) first
    /// said it is out of recovery: the promotion has reached the database, and RDS's describe
    /// is read directly from then on, not from a fleet snapshot taken before.
    #[serde(default)]
    pub writer_out_of_recovery_at: Option<Timestamp>,
    /// Since when the agent has failed to read the databases during the cutover.
    #[serde(default)]
    pub database_unreachable_since: Option<Timestamp>,
    /// When the last heartbeat was asked for (`machine::HEARTBEAT_EVERY`).
    #[serde(default)]
    pub heartbeat_at: Option<Timestamp>,
    /// The last phase written to the phase mirror tag (`machine::PHASE_MIRROR_AFTER`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirrored_phase: Option<Phase>,
    /// Ready for its cutover (allowed, lag within the policy) and waiting since then for a turn
    /// the account's RDS budget can carry (`agent::turns`): writes still flow. Cleared
    /// when it enters Quiescing; the agent serves turns in the order of this time.
    #[serde(default)]
    pub cutover_turn_asked_at: Option<Timestamp>,
    /// The consistency check before routing (database-aware cutover): what it found.
    #[serde(default)]
    pub consistency: Option<Consistency>,
    /// Rollback after cutover with database access: Aurora's client sessions were first asked
    /// to end ...
    #[serde(default)]
    pub target_sessions_end_requested_at: Option<Timestamp>,
    /// ... and none was left in a reading taken at this time: Aurora's fence holds without a
    /// reboot.
    #[serde(default)]
    pub target_sessions_ended_at: Option<Timestamp>,
    /// Why Aurora's fence fell back to the writer's reboot (no access, sessions stuck, errors).
    #[serde(default)]
    pub target_fence_fallback: Option<String>,
    /// The route this phase asked for was accepted and is propagating: the router's change,
    /// asked after until it is in effect (`core::router`). Cleared when a new route is asked.
    #[serde(default)]
    pub route_change: Option<String>,
    /// Rollback after cutover: the route back to the source is in effect.
    #[serde(default)]
    pub routed_back_at: Option<Timestamp>,
    /// The hold was asked for: from here a rollback releases, whether or not the answer was
    /// heard (a hold whose answer was lost may have taken effect).
    #[serde(default)]
    pub clients_hold_requested_at: Option<Timestamp>,
    /// The router holds the clients (PgBouncer paused) from here (`machine/hold.rs`).
    #[serde(default)]
    pub clients_held_at: Option<Timestamp>,
    /// A rollback before cutover released the held clients to the source.
    #[serde(default)]
    pub clients_released_at: Option<Timestamp>,
    /// The rollback first asked for the release (bounds how long it keeps asking).
    #[serde(default)]
    pub clients_release_requested_at: Option<Timestamp>,
    /// Rollback after cutover: the hold of the clients (now on Aurora) was asked for, and
    /// confirmed, before Aurora is fenced; or given up on (`rollback_hold_skipped`).
    #[serde(default)]
    pub rollback_hold_requested_at: Option<Timestamp>,
    #[serde(default)]
    pub rollback_clients_held_at: Option<Timestamp>,
    #[serde(default)]
    pub rollback_hold_skipped: bool,
}

impl Progress {
    /// Drops what the catch-up proof gathered on this attempt (the reboot and its restart,
    /// CloudWatch's catch-up; the sessions' quiet period and the WAL fence), so that it is
    /// proven again from the start: after the fence broke, or when the database path falls back
    /// to the reboot. The proof's conclusion (`drain_proven_at`) is the caller's.
    pub fn forget_the_catch_up_proof(&mut self) {
        self.reboot_requested_at = None;
        self.reboot_began_at = None;
        self.restarted_at = None;
        self.caught_up_in_metrics_at = None;
        self.sessions_clear_since = None;
        self.fence_lsn = None;
        self.fence_written_at = None;
        self.fence_replayed_lsn = None;
    }
}

/// The outcome of the consistency check before routing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Consistency {
    /// Nothing differed in what both sides read.
    Equal { compared: u32, not_compared: u32 },
    /// These differed: the migration rolled back without routing.
    Differs(Vec<String>),
    /// The check could not read a side: routed anyway (the WAL proof held), with a warning.
    Unreadable(String),
}

impl fmt::Display for Consistency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Consistency::Equal {
                compared,
                not_compared: 0,
            } => write!(
                f,
                "the consistency check found Aurora equal to the source ({compared} sequences and tables compared)"
            ),
            Consistency::Equal {
                compared,
                not_compared,
            } => write!(
                f,
                "the consistency check found Aurora equal to the source ({compared} sequences and tables compared, {not_compared} not compared)"
            ),
            Consistency::Differs(d) => write!(
                f,
                "the consistency check found Aurora different from the source: {}",
                d.join("; ")
            ),
            Consistency::Unreadable(why) => {
                write!(
                    f,
                    "the consistency check could not read the databases: {why}"
                )
            }
        }
    }
}

/// The source's KPIs while replicating, to judge the target by.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Baseline {
    pub cpu_percent: Option<f64>,
    pub write_latency_s: Option<f64>,
    pub read_latency_s: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Rollback {
    pub cause: RollbackCause,
    pub started_at: Timestamp,
    /// After the route to the target was confirmed: fence the target, report, route back.
    pub after_cutover: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RollbackCause {
    /// The owners' abort tag.
    Aborted,
    /// The owners' rollback approval after cutover.
    Approved,
    /// Something failed; the text says what.
    Failure(String),
}

impl Migration {
    /// This attempt's cutover runs on database access: planned in Preflight, and not fallen
    /// back from (`Progress::database_fallback`).
    pub fn database_path(&self) -> bool {
        self.plan.as_ref().is_some_and(|p| p.database.is_some())
            && self.progress.database_fallback.is_none()
    }

    /// A new attempt, in Requested.
    pub fn new(id: MigrationId, source_identifier: &str, source_arn: &str, now: Timestamp) -> Self {
        let names = super::naming::target_names(source_identifier, &id.resource_id, id.attempt);
        Migration {
            id,
            source_identifier: source_identifier.to_string(),
            source_arn: source_arn.to_string(),
            version: 0,
            phase: Phase::Requested,
            created_at: now,
            phase_entered_at: now,
            names,
            plan: None,
            preflight: None,
            progress: Progress::default(),
            requested: BTreeMap::new(),
            action_failures: 0,
            alerts_sent: BTreeSet::new(),
            outbox: Vec::new(),
            rollback: None,
            last_error: None,
            trigger_reset_at: None,
            next_wake: None,
            wake_seq: 0,
            history: vec![PhaseChange {
                phase: Phase::Requested,
                at: now,
            }],
        }
    }

    /// The source is fenced off by the quarantine group and has not been released.
    pub fn source_quarantined(&self) -> bool {
        self.progress.quarantined_at.is_some() && self.progress.source_released_at.is_none()
    }

    /// The source's writes are stopped by the agent: a cutover phase (Quiescing … Routing), or
    /// rolling back with the source still fenced. A rollback before the quarantine, or one
    /// whose source has its groups back, stops no write.
    pub fn writes_stopped(&self) -> bool {
        self.phase.is_cutover() || (self.phase == Phase::RollingBack && self.source_quarantined())
    }

    /// The agent deleted the source and saw it gone with its final snapshot ours
    /// (`machine::soak`): nothing is left on the source to read or to change, and an
    /// identifier RDS has freed may be taken by a new instance that is not the source.
    pub fn source_deleted(&self) -> bool {
        self.progress.final_snapshot_at.is_some()
    }

    /// Human-readable migration id used in notifications and logs.
    pub fn label(&self) -> String {
        format!("{}#{}", self.source_identifier, self.id.attempt)
    }
}
