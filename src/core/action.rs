//! What the phase machine asks the shell to do.
//!
//! Actions are shaped by capability ("quarantine the source"), not by SDK call, and each is
//! idempotent: the adapters turn "already exists" into success after checking that the resource
//! is ours, so a repeat after a crash or a lost answer is harmless. The record remembers which
//! mutating actions are in flight (`Migration::requested`), so a repeated observation never
//! produces a second one.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::database::{DbTarget, Lsn};
use super::notification::Notification;
use super::phase::Phase;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Action {
    /// Create the Aurora cluster and instance parameter groups (shared by content hash) and set
    /// their parameters.
    EnsureParameterGroups(ParameterGroupsSpec),
    /// Create the quarantine security group and make its rules exactly the spec: no egress,
    /// ingress only from the declared CDC consumers' groups.
    EnsureQuarantineGroup(QuarantineGroupSpec),
    CreateReplicaCluster(ReplicaClusterSpec),
    CreateWriterInstance(WriterInstanceSpec),
    /// ModifyDBInstance with exactly the quarantine group, applied immediately.
    QuarantineSource {
        instance: String,
        group_id: String,
    },
    RebootSource {
        instance: String,
    },
    /// Database-aware Quiescing, once the quarantine is active: end every client session on
    /// the source (the quarantine keeps new ones out; existing ones survive a group change).
    EndSourceSessions {
        instance: String,
        on: DbTarget,
    },
    /// Database-aware Draining, once no client session is left: the durable barrier whose WAL
    /// position the replica must replay before promotion (see `ports::Database::write_fence`).
    WriteFence {
        instance: String,
        on: DbTarget,
    },
    PromoteTarget {
        cluster: String,
    },
    RouteTraffic(RouteRequest),
    /// Before the quarantine, for routers that can (PgBouncer): hold the clients (`PAUSE`).
    HoldClients(RouteRequest),
    /// A rollback before cutover, once the source has its groups back: release held clients to
    /// the source (`RESUME`).
    ReleaseClients(RouteRequest),
    RunSmokeTest(RouteRequest),
    /// After cutover, on an approved rollback: fence the Aurora cluster with the quarantine group.
    QuarantineTarget {
        cluster: String,
        group_id: String,
    },
    /// After cutover, on an approved rollback, once Aurora has exactly the quarantine group:
    /// reboot its writer, because sessions that were open survive a security group change.
    RebootTargetWriter {
        writer: String,
    },
    /// After cutover, on an approved rollback with database access, once Aurora has exactly the
    /// quarantine group: end every client session on its writer (`on`, the writer endpoint),
    /// instead of rebooting it; the reboot stays the fallback.
    EndTargetSessions {
        writer: String,
        on: DbTarget,
    },
    RestoreSourceGroups {
        instance: String,
        group_ids: Vec<String>,
    },
    /// Delete the writer instance and the replica cluster, without a final snapshot (it never
    /// took writes).
    DeleteTarget {
        cluster: String,
        writer: String,
    },
    DisableDeletionProtection {
        instance: String,
    },
    /// DeleteDBInstance with `FinalDBSnapshotIdentifier` = `final_snapshot` (RDS snapshots the
    /// instance's last state as part of the deletion, so no write can fall between the snapshot
    /// and the deletion) and `DeleteAutomatedBackups=false` (point-in-time recovery stays until
    /// its own retention ends). Never `SkipFinalSnapshot`.
    DeleteSource {
        instance: String,
        final_snapshot: String,
    },
    DeleteQuarantineGroup {
        group_id: String,
    },
    /// Create or update the per-migration heartbeat alarm (missing data is breaching).
    EnsureHeartbeatAlarm {
        alarm: String,
        migration: String,
    },
    DeleteHeartbeatAlarm {
        alarm: String,
    },
    /// Mirror the phase to the `<prefix>:phase` tag of these resources (ARNs).
    MirrorPhaseTag {
        arns: Vec<String>,
        phase: Phase,
    },
    /// Set the trigger tag's value (to `stopped` when an attempt ends without completing, so
    /// that only a new `start` begins another attempt).
    SetTriggerTag {
        arn: String,
        value: String,
    },
    /// Tag the source `<prefix>:marker` = `value` (its `DbiResourceId`): the key only the agent
    /// may write (the shipped operator policies deny it), through which the task role keeps its
    /// permissions on the source even if a person or an IaC apply removes the trigger.
    MarkSource {
        arn: String,
        value: String,
        /// The phase mirror (`<prefix>:phase`) written in the same request: the step that
        /// marks the source (Preparing's first) also mirrors the phase to it, and one
        /// AddTagsToResource carries both (the shipped policy allows the two keys together on an
        /// opted-in source). A separate mirror write was one more request a migration.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        phase: Option<Phase>,
    },
    /// Publish the per-migration heartbeat metric (telemetry, not a mutation).
    PutHeartbeat {
        migration: String,
    },
    Notify(Notification),
}

/// Names one kind of mutating action, to remember that it is in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ActionKey {
    EnsureParameterGroups,
    EnsureQuarantineGroup,
    CreateReplicaCluster,
    CreateWriterInstance,
    QuarantineSource,
    RebootSource,
    EndSourceSessions,
    WriteFence,
    PromoteTarget,
    RouteTraffic,
    HoldClients,
    ReleaseClients,
    RunSmokeTest,
    QuarantineTarget,
    RebootTargetWriter,
    RestoreSourceGroups,
    DeleteTarget,
    /// No longer asked for (the final snapshot is part of `DeleteSource`); kept so that records
    /// written by earlier versions, which may name it as in flight, still load.
    CreateFinalSnapshot,
    DisableDeletionProtection,
    DeleteSource,
    DeleteQuarantineGroup,
    EnsureHeartbeatAlarm,
    DeleteHeartbeatAlarm,
    MirrorPhaseTag,
    SetTriggerTag,
    PutHeartbeat,
    MarkSource,
    Notify,
    EndTargetSessions,
}

impl fmt::Display for ActionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl ActionKey {
    /// The deletions: for them, "not found" is the outcome asked for (already gone, e.g. a
    /// second request after a look that predates the first one's effect), not a failure.
    pub fn is_deletion(self) -> bool {
        matches!(
            self,
            ActionKey::DeleteTarget
                | ActionKey::DeleteSource
                | ActionKey::DeleteQuarantineGroup
                | ActionKey::DeleteHeartbeatAlarm
        )
    }

    /// Whether an action's error means it is done all the same (a deletion of what is gone).
    pub fn done_despite(self, kind: ErrorKind) -> bool {
        self.is_deletion() && kind == ErrorKind::NotFound
    }
}

impl Action {
    pub fn key(&self) -> ActionKey {
        match self {
            Action::EnsureParameterGroups(_) => ActionKey::EnsureParameterGroups,
            Action::EnsureQuarantineGroup(_) => ActionKey::EnsureQuarantineGroup,
            Action::CreateReplicaCluster(_) => ActionKey::CreateReplicaCluster,
            Action::CreateWriterInstance(_) => ActionKey::CreateWriterInstance,
            Action::QuarantineSource { .. } => ActionKey::QuarantineSource,
            Action::RebootSource { .. } => ActionKey::RebootSource,
            Action::EndSourceSessions { .. } => ActionKey::EndSourceSessions,
            Action::WriteFence { .. } => ActionKey::WriteFence,
            Action::PromoteTarget { .. } => ActionKey::PromoteTarget,
            Action::RouteTraffic(_) => ActionKey::RouteTraffic,
            Action::HoldClients(_) => ActionKey::HoldClients,
            Action::ReleaseClients(_) => ActionKey::ReleaseClients,
            Action::RunSmokeTest(_) => ActionKey::RunSmokeTest,
            Action::QuarantineTarget { .. } => ActionKey::QuarantineTarget,
            Action::RebootTargetWriter { .. } => ActionKey::RebootTargetWriter,
            Action::EndTargetSessions { .. } => ActionKey::EndTargetSessions,
            Action::RestoreSourceGroups { .. } => ActionKey::RestoreSourceGroups,
            Action::DeleteTarget { .. } => ActionKey::DeleteTarget,
            Action::DisableDeletionProtection { .. } => ActionKey::DisableDeletionProtection,
            Action::DeleteSource { .. } => ActionKey::DeleteSource,
            Action::DeleteQuarantineGroup { .. } => ActionKey::DeleteQuarantineGroup,
            Action::EnsureHeartbeatAlarm { .. } => ActionKey::EnsureHeartbeatAlarm,
            Action::DeleteHeartbeatAlarm { .. } => ActionKey::DeleteHeartbeatAlarm,
            Action::MirrorPhaseTag { .. } => ActionKey::MirrorPhaseTag,
            Action::SetTriggerTag { .. } => ActionKey::SetTriggerTag,
            Action::PutHeartbeat { .. } => ActionKey::PutHeartbeat,
            Action::MarkSource { .. } => ActionKey::MarkSource,
            Action::Notify(_) => ActionKey::Notify,
        }
    }

    /// Changes AWS resources or the traffic route (as opposed to telling people, tagging the
    /// phase or publishing a heartbeat).
    pub fn is_mutating(&self) -> bool {
        !matches!(
            self,
            Action::Notify(_)
                | Action::PutHeartbeat { .. }
                | Action::MirrorPhaseTag { .. }
                | Action::RunSmokeTest(_)
        )
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParameterGroupsSpec {
    pub family: String,
    pub cluster_group: String,
    pub instance_group: String,
    pub cluster_parameters: Vec<TranslatedParameter>,
    pub instance_parameters: Vec<TranslatedParameter>,
    pub description: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TranslatedParameter {
    pub name: String,
    pub value: String,
    /// `immediate` or `pending-reboot` (static parameters).
    pub apply_method: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuarantineGroupSpec {
    pub name: String,
    pub vpc_id: String,
    /// Security groups of declared CDC consumers, admitted on the database port.
    pub allow_from: Vec<String>,
    pub port: u16,
    pub tags: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaClusterSpec {
    pub cluster: String,
    pub source_arn: String,
    pub engine_version: String,
    pub cluster_parameter_group: String,
    pub subnet_group: String,
    /// The source's own groups, so the replica is reachable by the same clients after cutover.
    pub security_groups: Vec<String>,
    pub storage_encrypted: bool,
    pub kms_key_id: Option<String>,
    pub tags: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriterInstanceSpec {
    pub instance: String,
    pub cluster: String,
    pub instance_class: String,
    pub parameter_group: String,
    pub tags: BTreeMap<String, String>,
}

/// What the data access layer is told (and what a smoke test is pointed at).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteRequest {
    pub migration: String,
    pub source: String,
    /// The endpoint traffic should go to now.
    pub endpoint: String,
    pub port: u16,
    pub phase: Phase,
    /// Which router carries it (`core::router`; records from before routers: the webhook).
    #[serde(default)]
    pub router: crate::core::router::RouterChoice,
    /// The Aurora cluster (RDS Proxy registers it as the target).
    #[serde(default)]
    pub cluster: String,
    /// Traffic goes back to the source (a rollback after cutover), not to Aurora.
    #[serde(default)]
    pub back_to_source: bool,
}

/// How the shell classifies any failure of an action (and of an AWS call in general).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// A transient failure the SDK's own retries did not absorb (5xx, timeouts).
    Retryable,
    Throttled,
    NotFound,
    /// Already exists but is not ours, or the resource is in a state that refuses the call.
    Conflict,
    /// Will not succeed by trying again (permissions, invalid parameters).
    Fatal,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Retryable => "retryable",
            ErrorKind::Throttled => "throttled",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Conflict => "conflict",
            ErrorKind::Fatal => "fatal",
        }
    }

    /// A failure that passes by itself (a 5xx, a timeout, throttling): asking again may work.
    pub fn is_transient(self) -> bool {
        matches!(self, ErrorKind::Retryable | ErrorKind::Throttled)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionResult {
    pub key: ActionKey,
    /// For `Notify`: the notification's id, so the outbox can let go of it.
    pub id: Option<String>,
    pub outcome: Result<(), ActionError>,
    /// What a successful action answered, where the machine needs it.
    #[serde(default)]
    pub output: Option<ActionOutput>,
}

/// The answers of the actions that return one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ActionOutput {
    /// `WriteFence`: the barrier's WAL position.
    Fence(Lsn),
    /// `EndSourceSessions`, `EndTargetSessions`: how many sessions were ended.
    SessionsEnded(u32),
    /// `RouteTraffic`: in effect, or accepted and propagating.
    Route(crate::core::router::RouteProgress),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionError {
    pub kind: ErrorKind,
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_deletion_of_what_is_gone_is_done_despite_its_error() {
        for key in [
            ActionKey::DeleteTarget,
            ActionKey::DeleteSource,
            ActionKey::DeleteQuarantineGroup,
            ActionKey::DeleteHeartbeatAlarm,
        ] {
            assert!(key.done_despite(ErrorKind::NotFound), "{key}");
            assert!(!key.done_despite(ErrorKind::Throttled), "{key}");
            assert!(!key.done_despite(ErrorKind::Conflict), "{key}");
        }
        for key in [
            ActionKey::RebootSource,
            ActionKey::PromoteTarget,
            ActionKey::RouteTraffic,
            ActionKey::RestoreSourceGroups,
        ] {
            assert!(!key.done_despite(ErrorKind::NotFound), "{key}");
        }
    }
}
