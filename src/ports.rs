//! The seams: one small trait per capability the driver needs from the world.
//!
//! Real adapters implement them with the AWS SDK; the simulator and tests implement them with an
//! in-process world. They take and return the core's own types, never SDK builders, and every
//! failure is a [`PortError`] already classified by [`ErrorKind`].

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use jiff::Timestamp;

use crate::core::action::{
    ParameterGroupsSpec, QuarantineGroupSpec, ReplicaClusterSpec, RouteRequest, WriterInstanceSpec,
};
use crate::core::database::{ClientSession, DbTarget, Fingerprint, Lsn, SqlPreflight};
use crate::core::migration::{Migration, MigrationId};
use crate::core::notification::Notification;
use crate::core::observation::{
    Datapoint, GroupLocation, InstanceEvent, MetricKey, Observed, ParameterGroupsPresent,
    PreflightInputs, Quota, SecurityGroup, Snapshot, SourceInstance, TargetCluster,
};

pub use crate::core::action::ErrorKind;

/// A failed call to the world, classified at the adapter boundary.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{operation} failed ({}): {message}", kind.as_str())]
pub struct PortError {
    pub kind: ErrorKind,
    /// The operation, e.g. `rds:CreateDBCluster`.
    pub operation: String,
    pub message: String,
}

impl PortError {
    pub fn new(kind: ErrorKind, operation: impl Into<String>, message: impl Into<String>) -> Self {
        PortError {
            kind,
            operation: operation.into(),
            message: message.into(),
        }
    }
}

pub type PortResult<T> = Result<T, PortError>;

/// RDS: describe what the phase machine reads, and perform its mutations idempotently.
pub trait Rds: Send + Sync {
    /// By identifier or ARN; `Absent` when RDS says it does not exist.
    fn describe_source(
        &self,
        instance: &str,
    ) -> impl Future<Output = PortResult<Observed<SourceInstance>>> + Send;
    /// Every RDS PostgreSQL instance carrying `tag_key` (the resync scan).
    fn list_tagged_sources(
        &self,
        tag_key: &str,
    ) -> impl Future<Output = PortResult<Vec<SourceInstance>>> + Send;
    /// The identifier the instance with this resource id has now, whatever it was named, as
    /// RDS has it now (DescribeDBInstances, `dbi-resource-id`); `None` when RDS has no such
    /// instance. Asked only when a migration's source is not found under its name where it
    /// should exist: a person may have renamed it (`Observation::source_renamed_to`).
    fn source_identifier_of(
        &self,
        resource_id: &str,
    ) -> impl Future<Output = PortResult<Option<String>>> + Send;
    /// Every RDS for PostgreSQL instance of the Region (engine `postgres`, every page of
    /// DescribeDBInstances; Aurora cluster members, engine `aurora-postgresql`, and other engines
    /// are left out): the fleet readiness report (`plan --all`). Served from the same fleet
    /// snapshot as [`Rds::list_tagged_sources`], so it costs the RDS budget one paged describe.
    fn list_sources(&self) -> impl Future<Output = PortResult<Vec<SourceInstance>>> + Send;
    fn describe_target(
        &self,
        cluster: &str,
    ) -> impl Future<Output = PortResult<Observed<TargetCluster>>> + Send;
    /// As [`Rds::describe_source`], asked of RDS now, never answered from a fleet snapshot
    /// taken earlier: for a look that waits, with writes down, on a change RDS applies by
    /// itself and announces with no event (the quarantine's group change). An adapter that
    /// keeps no snapshot need not override it.
    fn describe_source_now(
        &self,
        instance: &str,
    ) -> impl Future<Output = PortResult<Observed<SourceInstance>>> + Send {
        self.describe_source(instance)
    }
    /// As [`Rds::describe_target`], asked of RDS now (see [`Rds::describe_source_now`]).
    fn describe_target_now(
        &self,
        cluster: &str,
    ) -> impl Future<Output = PortResult<Observed<TargetCluster>>> + Send {
        self.describe_target(cluster)
    }
    /// RDS announced a change to `name` (an event): its next describe must not come from a
    /// snapshot taken before the change. Why: the event is what a waiting cutover reacts to
    /// (the promotion's `RDS-EVENT-0172`); answered from an older snapshot, it would see the
    /// old state and wait for the snapshot to expire. An adapter that keeps no snapshot need
    /// not override it.
    fn heard_of_change(&self, name: &str) {
        let _ = name;
    }
    /// A person changed `name`'s tags (a tag event: an approval, an abort, a pause, a
    /// consumer's acknowledgement): as [`Rds::heard_of_change`], and even a look that said a
    /// snapshot will do (`aws::rds::cache::snapshot_will_do`, which reads from it only the
    /// guards' tags) describes it directly until a snapshot taken after now. RDS's own events
    /// (a restart, a promotion) do not count here: such looks judge nothing on the statuses
    /// they announce, and they are news for the look they start, which describes directly.
    fn heard_of_tag_change(&self, name: &str) {
        self.heard_of_change(name);
    }
    /// How long a cutover's RDS call would wait for the account budget now (the rate
    /// limiter's cutover lane, `aws::limit`): the agent admits no new cutover while it is
    /// long (`agent::turns`). An adapter without a limiter never makes one wait.
    fn cutover_backlog(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }
    /// Whether each translated group exists. A pair seen to exist may be answered without a
    /// describe for a while (`aws::rds::region`): they are named by their content's hash.
    fn parameter_groups_present(
        &self,
        cluster_group: &str,
        instance_group: &str,
    ) -> impl Future<Output = PortResult<ParameterGroupsPresent>> + Send;
    fn preflight_inputs(
        &self,
        source: &SourceInstance,
    ) -> impl Future<Output = PortResult<PreflightInputs>> + Send;
    /// The account's quotas, up to a minute old (`aws::rds::region::QUOTA_TTL`).
    fn account_quotas(&self) -> impl Future<Output = PortResult<Vec<Quota>>> + Send;
    fn describe_snapshot(
        &self,
        snapshot: &str,
    ) -> impl Future<Output = PortResult<Observed<Snapshot>>> + Send;
    /// Events of the instance since `since` (DescribeEvents).
    fn instance_events(
        &self,
        instance: &str,
        since: Timestamp,
    ) -> impl Future<Output = PortResult<Vec<InstanceEvent>>> + Send;

    fn ensure_parameter_groups(
        &self,
        spec: &ParameterGroupsSpec,
    ) -> impl Future<Output = PortResult<()>> + Send;
    fn create_replica_cluster(
        &self,
        spec: &ReplicaClusterSpec,
    ) -> impl Future<Output = PortResult<()>> + Send;
    fn create_writer_instance(
        &self,
        spec: &WriterInstanceSpec,
    ) -> impl Future<Output = PortResult<()>> + Send;
    /// ModifyDBInstance VpcSecurityGroupIds, applied immediately.
    fn set_source_groups(
        &self,
        instance: &str,
        group_ids: &[String],
    ) -> impl Future<Output = PortResult<()>> + Send;
    fn reboot_instance(&self, instance: &str) -> impl Future<Output = PortResult<()>> + Send;
    fn promote_target(&self, cluster: &str) -> impl Future<Output = PortResult<()>> + Send;
    fn set_target_groups(
        &self,
        cluster: &str,
        group_ids: &[String],
    ) -> impl Future<Output = PortResult<()>> + Send;
    fn delete_target(
        &self,
        cluster: &str,
        writer: &str,
    ) -> impl Future<Output = PortResult<()>> + Send;
    fn disable_deletion_protection(
        &self,
        instance: &str,
    ) -> impl Future<Output = PortResult<()>> + Send;
    /// DeleteDBInstance with `FinalDBSnapshotIdentifier` = `final_snapshot` and
    /// `DeleteAutomatedBackups=false`; never `SkipFinalSnapshot`. Already deleting is success.
    fn delete_source(
        &self,
        instance: &str,
        final_snapshot: &str,
    ) -> impl Future<Output = PortResult<()>> + Send;
    fn set_tags(
        &self,
        arn: &str,
        tags: &BTreeMap<String, String>,
    ) -> impl Future<Output = PortResult<()>> + Send;
    /// [`Rds::set_tags`] for tags the agent writes for people and never reads back (the phase
    /// mirror): the resource's next describe may still come from the fleet snapshot. A
    /// `set_tags` makes it be described directly until the next snapshot, so that the agent
    /// sees its own change; after every phase change that was a direct describe of the source
    /// and of the cluster for nothing the machine reads.
    fn mirror_tags(
        &self,
        arn: &str,
        tags: &BTreeMap<String, String>,
    ) -> impl Future<Output = PortResult<()>> + Send {
        self.set_tags(arn, tags)
    }
}

/// EC2: the quarantine security group.
pub trait Network: Send + Sync {
    fn describe_group(
        &self,
        vpc_id: &str,
        name: &str,
    ) -> impl Future<Output = PortResult<Observed<SecurityGroup>>> + Send;
    /// Creates the group if missing and makes its rules exactly the spec.
    fn ensure_quarantine_group(
        &self,
        spec: &QuarantineGroupSpec,
    ) -> impl Future<Output = PortResult<String>> + Send;
    fn delete_group(&self, group_id: &str) -> impl Future<Output = PortResult<()>> + Send;
    /// The groups among `ids` that exist, with their VPC and owner (missing ones are left out).
    fn locate_groups(
        &self,
        ids: &[String],
    ) -> impl Future<Output = PortResult<Vec<GroupLocation>>> + Send;
}

/// One CloudWatch series to read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetricQuery {
    pub key: MetricKey,
    /// The DBInstanceIdentifier dimension.
    pub instance: String,
    pub start: Timestamp,
    pub end: Timestamp,
    pub period_s: u32,
}

/// CloudWatch: metrics in, heartbeat out, and the per-migration heartbeat alarm.
pub trait Metrics: Send + Sync {
    /// Reads many series in as few calls as possible (GetMetricData takes 500 queries).
    fn fetch(
        &self,
        queries: &[MetricQuery],
    ) -> impl Future<Output = PortResult<Vec<Vec<Datapoint>>>> + Send;
    fn put_heartbeat(&self, migration: &str) -> impl Future<Output = PortResult<()>> + Send;
    fn ensure_heartbeat_alarm(
        &self,
        alarm: &str,
        migration: &str,
    ) -> impl Future<Output = PortResult<()>> + Send;
    fn delete_alarm(&self, alarm: &str) -> impl Future<Output = PortResult<()>> + Send;
}

/// SNS.
pub trait Notifier: Send + Sync {
    fn publish(&self, note: &Notification) -> impl Future<Output = PortResult<()>> + Send;
}

/// PostgreSQL, where an instance opted in to database access (the database-aware cutover).
///
/// Every call opens its own connection (TLS, verified against the configured RDS CA bundle) and
/// closes it, so the agent's own session is never one it has to account for between calls. Apart
/// from [`Database::end_client_sessions`] and [`Database::write_fence`] everything is read-only;
/// the README lists the SQL. Errors: a refused or timed-out connection is `Retryable`, failed
/// authentication or a missing privilege `Fatal`, a missing secret `NotFound`; the message never
/// carries a credential.
pub trait Database: Send + Sync {
    /// Client sessions on the server, other than this call's own and RDS's (`rdsadmin`);
    /// replication connections excluded.
    fn client_sessions(
        &self,
        at: &DbTarget,
    ) -> impl Future<Output = PortResult<Vec<ClientSession>>> + Send;
    /// `pg_terminate_backend` on every client session (as [`Database::client_sessions`] counts
    /// them); returns how many were ended.
    fn end_client_sessions(&self, at: &DbTarget) -> impl Future<Output = PortResult<u32>> + Send;
    /// The fence: a transaction that writes one WAL record
    /// (`pg_logical_emit_message(true, …)`) and commits with `synchronous_commit = on`, so that
    /// its commit record, and with it every WAL record inserted before it (each acknowledged
    /// write, asynchronous commits included), is flushed; then `pg_current_wal_flush_lsn()`.
    /// Every write acknowledged before the call is at or before the returned position. Writes
    /// nothing to any table. (A transaction that only took an xid, `txid_current()`, writes no
    /// WAL, so PostgreSQL commits it asynchronously whatever `synchronous_commit` says: measured,
    /// such a fence fell short of an acknowledged asynchronous commit.)
    fn write_fence(&self, at: &DbTarget) -> impl Future<Output = PortResult<Lsn>> + Send;
    /// `pg_last_wal_replay_lsn()` on a replica; `None` when the server is not in recovery.
    fn replay_lsn(&self, at: &DbTarget) -> impl Future<Output = PortResult<Option<Lsn>>> + Send;
    /// The SQL preflight (read-only); `old_after_s` is the age from which an open transaction is
    /// reported as old.
    fn preflight(
        &self,
        at: &DbTarget,
        old_after_s: u64,
    ) -> impl Future<Output = PortResult<SqlPreflight>> + Send;
    /// The consistency check's facts of the connected database (`at.access.database`): every
    /// sequence's last value, exact row counts of small tables, a digest of the newest rows by
    /// primary key of large ones (see [`Fingerprint`]). Read-only, and done within `budget`
    /// (connecting included): each statement is bounded by it, and what it leaves unread is
    /// counted in [`Fingerprint::unread`], not an error.
    fn fingerprint(
        &self,
        at: &DbTarget,
        budget: Duration,
    ) -> impl Future<Output = PortResult<Fingerprint>> + Send;
}

/// The database of a deployment that does not allow database access
/// (`MIGRATOR_DATABASE_ACCESS` unset): the preflight never plans access there, so nothing calls
/// it; if something did, every call refuses with `Fatal`.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoDatabase;

impl NoDatabase {
    fn refuse<T>(op: &str) -> PortResult<T> {
        Err(PortError::new(
            ErrorKind::Fatal,
            format!("postgres:{op}"),
            "database access is not enabled in this deployment (MIGRATOR_DATABASE_ACCESS)",
        ))
    }
}

impl Database for NoDatabase {
    async fn client_sessions(&self, _: &DbTarget) -> PortResult<Vec<ClientSession>> {
        Self::refuse("client_sessions")
    }
    async fn end_client_sessions(&self, _: &DbTarget) -> PortResult<u32> {
        Self::refuse("end_client_sessions")
    }
    async fn write_fence(&self, _: &DbTarget) -> PortResult<Lsn> {
        Self::refuse("write_fence")
    }
    async fn replay_lsn(&self, _: &DbTarget) -> PortResult<Option<Lsn>> {
        Self::refuse("replay_lsn")
    }
    async fn preflight(&self, _: &DbTarget, _: u64) -> PortResult<SqlPreflight> {
        Self::refuse("preflight")
    }
    async fn fingerprint(&self, _: &DbTarget, _: Duration) -> PortResult<Fingerprint> {
        Self::refuse("fingerprint")
    }
}

/// A message received from the queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueMessage {
    pub id: String,
    pub receipt: String,
    pub body: String,
    pub receive_count: u32,
}

/// SQS.
pub trait Queue: Send + Sync {
    /// Up to `max` messages, long-polling `wait_s`; each stays hidden for `visibility_s`.
    fn receive(
        &self,
        max: u32,
        wait_s: u32,
        visibility_s: u32,
    ) -> impl Future<Output = PortResult<Vec<QueueMessage>>> + Send;
    fn delete(&self, receipt: &str) -> impl Future<Output = PortResult<()>> + Send;
    /// Keeps a message hidden for `seconds` more while its step runs.
    fn extend_visibility(
        &self,
        receipt: &str,
        seconds: u32,
    ) -> impl Future<Output = PortResult<()>> + Send;
    /// Sends a message that becomes visible after `delay_s` (≤ 900).
    fn send(&self, body: &str, delay_s: u32) -> impl Future<Output = PortResult<()>> + Send;
}

/// A store write lost its condition: someone else moved the record.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("the record changed since it was read (expected version {expected})")]
    VersionConflict { expected: u64 },
    /// The saving process no longer holds the record's lease: another agent steps it now.
    #[error("another agent took the migration's lease")]
    LeaseLost,
    #[error(transparent)]
    Port(#[from] PortError),
}

/// The right to step one migration, held by one agent process at a time (`agent::lease`).
///
/// Stored on the migration's own record item, beside the record and outside it: `holder`,
/// `token` and `expires_at`. Taking it (free, expired, or already this holder's) adds one to
/// the token; renewing it moves `expires_at` on and keeps the token; releasing it sets
/// `expires_at` to the Unix epoch and keeps holder and token; a save is fenced by it (the
/// holder and token must still be the item's). The rule itself is [`Lease::take`],
/// [`Lease::is_same_taking`] and [`Lease::set_expiry`]: the in-memory stores run it, and
/// DynamoDB's conditional writes (`aws::dynamodb`) state it as condition expressions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub id: MigrationId,
    /// The agent process that holds it (`Agent::holder`).
    pub holder: String,
    /// The fencing token: one more at every taking, never reused.
    pub token: u64,
    /// When it lapses, as written in the table (the taker's clock).
    pub expires_at: Timestamp,
    /// Taken (not renewed) from another holder than this one: the process it names died or
    /// lost it. `None` when renewed, or taken when free or this holder's.
    pub taken_from: Option<String>,
}

impl Lease {
    /// Takes `id`'s lease for `holder` until `now + ttl`, given the item's lease `existing`:
    /// taken when there is none, when it lapsed (`expires_at < now`) or when it is `holder`'s
    /// already; [`LeaseError::Held`] while another holder's is valid. The token is one more than
    /// the last taking's (1 for the first), so a save fenced by an older taking fails even when
    /// the same holder took it again; `taken_from` names the previous holder when it was
    /// another.
    pub fn take(
        id: &MigrationId,
        existing: Option<&Lease>,
        holder: &str,
        now: Timestamp,
        ttl: jiff::SignedDuration,
    ) -> Result<Lease, LeaseError> {
        let (last_token, taken_from) = match existing {
            // Valid up to and including its expiry: lapsed only strictly after.
            Some(l) if l.holder != holder && l.expires_at >= now => {
                return Err(LeaseError::Held {
                    holder: l.holder.clone(),
                    until: l.expires_at,
                });
            }
            Some(l) => (l.token, (l.holder != holder).then(|| l.holder.clone())),
            None => (0, None),
        };
        Ok(Lease {
            id: id.clone(),
            holder: holder.to_string(),
            token: last_token + 1,
            expires_at: now + ttl,
            taken_from,
        })
    }

    /// Whether `self` (the item's lease) is still `lease`'s taking: the same holder and token.
    /// A save's fence, renewing and releasing ask it; a lapsed lease nobody took since still is.
    pub fn is_same_taking(&self, lease: &Lease) -> bool {
        self.holder == lease.holder && self.token == lease.token
    }

    /// Renewing (`expires_at` later) or releasing (the Unix epoch): moves the item's lease
    /// `item` to `expires_at` if it is still `lease`'s taking, and returns it as renewed (no
    /// `taken_from`); [`LeaseError::Lost`] when another taking replaced it (or there is none).
    pub fn set_expiry(
        item: Option<&mut Lease>,
        lease: &Lease,
        expires_at: Timestamp,
    ) -> Result<Lease, LeaseError> {
        match item {
            Some(l) if l.is_same_taking(lease) => {
                l.expires_at = expires_at;
                l.taken_from = None;
                Ok(l.clone())
            }
            _ => Err(LeaseError::Lost),
        }
    }
}

/// Taking or renewing a lease failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LeaseError {
    #[error("the migration is being stepped by {holder} until {until}")]
    Held { holder: String, until: Timestamp },
    #[error("the lease was taken by another agent")]
    Lost,
    #[error("the migration has no record")]
    NoRecord,
    #[error(transparent)]
    Port(#[from] PortError),
}

/// DynamoDB: migration records, written only with a condition on their version and, once
/// created, on the writer's lease.
pub trait StateStore: Send + Sync {
    fn load(&self, id: &MigrationId) -> impl Future<Output = PortResult<Option<Migration>>> + Send;
    /// The newest attempt for a source, if any.
    fn latest(
        &self,
        resource_id: &str,
    ) -> impl Future<Output = PortResult<Option<Migration>>> + Send;
    /// Writes the new record `m` (version 0) if there is none for its id; returns its version
    /// (1).
    fn create(&self, m: &Migration) -> impl Future<Output = Result<u64, StoreError>> + Send;
    /// Writes `m` if the stored version is `m.version` and `lease` (this process's) is still
    /// the item's (holder and token; lapsed but not taken is still the item's); returns the new
    /// version. The lease's own attributes are left as they are.
    fn save(
        &self,
        m: &Migration,
        lease: &Lease,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;
    /// Takes the lease on `id`'s record for `holder` until `now + ttl`, if it is free, lapsed
    /// (`expires_at < now`) or `holder`'s already.
    fn acquire_lease(
        &self,
        id: &MigrationId,
        holder: &str,
        now: Timestamp,
        ttl: jiff::SignedDuration,
    ) -> impl Future<Output = Result<Lease, LeaseError>> + Send;
    /// Moves `lease` on to `now + ttl` if it is still the item's; the same token.
    fn renew_lease(
        &self,
        lease: &Lease,
        now: Timestamp,
        ttl: jiff::SignedDuration,
    ) -> impl Future<Output = Result<Lease, LeaseError>> + Send;
    /// Lets `lease` lapse now (its expiry set to the Unix epoch) if it is still the item's;
    /// holder and token stay, so the next taking still counts on from them.
    fn release_lease(&self, lease: &Lease) -> impl Future<Output = Result<(), LeaseError>> + Send;
    fn list(&self) -> impl Future<Output = PortResult<Vec<Migration>>> + Send;
    fn fleet_paused(&self) -> impl Future<Output = PortResult<bool>> + Send;
    fn set_fleet_paused(&self, paused: bool) -> impl Future<Output = PortResult<()>> + Send;
}

/// The routers (`core::router`) and the optional smoke test.
pub trait Router: Send + Sync {
    /// Sends traffic to `request.endpoint` through `request.router`: in effect at once, or
    /// accepted and propagating with a change to ask after.
    fn route(
        &self,
        request: &RouteRequest,
    ) -> impl Future<Output = PortResult<crate::core::router::RouteProgress>> + Send;
    /// What `router` sends where now (preflight checks it before writes stop): Route 53's
    /// record, the RDS Proxy with its targets, the PgBouncer entry. `None` for the webhook, or
    /// when there is no such record, proxy or entry.
    fn view(
        &self,
        router: &crate::core::router::RouterChoice,
    ) -> impl Future<Output = PortResult<Option<crate::core::router::RouterView>>> + Send;
    /// How far the propagating `change` of `router` has got.
    fn route_status(
        &self,
        router: &crate::core::router::RouterChoice,
        change: &str,
    ) -> impl Future<Output = PortResult<crate::core::router::RouteProgress>> + Send;
    fn smoke_test(&self, request: &RouteRequest) -> impl Future<Output = PortResult<()>> + Send;
    /// Holds the clients of `request.router` (PgBouncer: `PAUSE`), for routers that can; the
    /// others are never asked.
    fn hold(&self, request: &RouteRequest) -> impl Future<Output = PortResult<()>> + Send;
    /// Releases held clients where they were (PgBouncer: `RESUME`).
    fn release(&self, request: &RouteRequest) -> impl Future<Output = PortResult<()>> + Send;
}

/// Time, so that the simulator can run the driver in virtual time.
pub trait Clock: Send + Sync {
    fn now(&self) -> Timestamp;
    fn sleep(&self, d: std::time::Duration) -> impl Future<Output = ()> + Send;
}

/// Everything the driver talks to, bundled so that it has one type parameter.
pub trait World: Send + Sync {
    type Rds: Rds;
    type Network: Network;
    type Metrics: Metrics;
    type Notifier: Notifier;
    type Queue: Queue;
    type Store: StateStore;
    type Router: Router;
    type Database: Database;
    type Clock: Clock;
    fn rds(&self) -> &Self::Rds;
    fn network(&self) -> &Self::Network;
    fn metrics(&self) -> &Self::Metrics;
    fn notifier(&self) -> &Self::Notifier;
    fn queue(&self) -> &Self::Queue;
    fn store(&self) -> &Self::Store;
    fn router(&self) -> &Self::Router;
    fn database(&self) -> &Self::Database;
    fn clock(&self) -> &Self::Clock;
}

#[cfg(test)]
mod tests {
    use jiff::SignedDuration;

    use super::*;

    const TTL: SignedDuration = SignedDuration::from_secs(15);

    fn id() -> MigrationId {
        MigrationId {
            resource_id: "db-ABC".into(),
            attempt: 1,
        }
    }

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + secs).unwrap()
    }

    fn taken(holder: &str, token: u64, expires_at: Timestamp) -> Lease {
        Lease {
            id: id(),
            holder: holder.into(),
            token,
            expires_at,
            taken_from: None,
        }
    }

    #[test]
    fn a_free_lease_is_taken_with_the_first_token() {
        let l = Lease::take(&id(), None, "a", at(0), TTL).unwrap();
        assert_eq!(l, taken("a", 1, at(15)));
    }

    #[test]
    fn a_lapsed_lease_is_taken_from_its_holder_with_the_next_token() {
        let old = taken("a", 4, at(10));
        let l = Lease::take(&id(), Some(&old), "b", at(11), TTL).unwrap();
        assert_eq!(l.token, 5);
        assert_eq!(l.expires_at, at(26));
        assert_eq!(l.taken_from.as_deref(), Some("a"));
    }

    #[test]
    fn a_released_lease_is_lapsed() {
        let mut item = taken("a", 4, at(10));
        let lease = item.clone();
        Lease::set_expiry(Some(&mut item), &lease, Timestamp::UNIX_EPOCH).unwrap();
        let l = Lease::take(&id(), Some(&item), "b", at(0), TTL).unwrap();
        assert_eq!((l.token, l.taken_from.as_deref()), (5, Some("a")));
    }

    #[test]
    fn the_holder_takes_its_own_valid_lease_again_with_a_new_token() {
        let own = taken("a", 4, at(10));
        let l = Lease::take(&id(), Some(&own), "a", at(5), TTL).unwrap();
        assert_eq!(l, taken("a", 5, at(20)));
        // The earlier taking no longer fences a save.
        assert!(!l.is_same_taking(&own));
    }

    #[test]
    fn a_lease_another_holds_is_refused_until_after_its_expiry() {
        let other = taken("a", 4, at(10));
        for now in [at(0), at(10)] {
            assert_eq!(
                Lease::take(&id(), Some(&other), "b", now, TTL),
                Err(LeaseError::Held {
                    holder: "a".into(),
                    until: at(10)
                })
            );
        }
    }

    #[test]
    fn renewing_moves_the_expiry_and_keeps_the_token() {
        let mut item = taken("a", 4, at(10));
        let lease = Lease {
            taken_from: Some("z".into()),
            ..item.clone()
        };
        let renewed = Lease::set_expiry(Some(&mut item), &lease, at(25)).unwrap();
        assert_eq!(renewed, taken("a", 4, at(25)));
        assert_eq!(item, renewed);
    }

    #[test]
    fn renewing_or_releasing_by_another_taking_is_refused_and_changes_nothing() {
        let item = taken("b", 5, at(30));
        let stale = [
            taken("a", 4, at(10)),
            taken("a", 5, at(10)),
            taken("b", 4, at(10)),
        ];
        for lease in &stale {
            for expires_at in [at(40), Timestamp::UNIX_EPOCH] {
                let mut copy = item.clone();
                assert_eq!(
                    Lease::set_expiry(Some(&mut copy), lease, expires_at),
                    Err(LeaseError::Lost)
                );
                assert_eq!(copy, item);
            }
        }
        let lease = &stale[0];
        assert_eq!(
            Lease::set_expiry(None, lease, at(40)),
            Err(LeaseError::Lost)
        );
    }
}
