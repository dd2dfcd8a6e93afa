//! The fake AWS: RDS instances and Aurora clusters, EC2 security groups, CloudWatch, SNS, SQS,
//! DynamoDB and the data access layer, in virtual time, behind the same port traits the real
//! adapters implement.
//!
//! Virtual time is in milliseconds since the run's epoch. Every call takes a seeded latency
//! (the calling task really waits for it, so concurrent messages interleave), and long AWS
//! operations finish through scheduled world events. Writes are sequence numbers: a source
//! acknowledges writes at its write rate while clients can reach it, and its Aurora replica
//! applies them after a replication delay. Above the fake RDS sit the AWS adapter's real rate
//! limiter and fleet describe cache, as the agent process holds them (`adapter.rs`).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use jiff::{SignedDuration, Timestamp};

use crate::core::action::{
    ParameterGroupsSpec, QuarantineGroupSpec, ReplicaClusterSpec, RouteRequest, WriterInstanceSpec,
};
use crate::core::invariants::transition_allowed;
use crate::core::migration::{Migration, MigrationId};
use crate::core::notification::{Notification, Severity};
use crate::core::observation::{
    ClusterMember, Datapoint, Endpoint, EngineVersion, GroupLocation, GroupMembership,
    InstanceEvent, InstanceEventKind, KeyCheck, MetricKey, Observed, Parameter,
    ParameterGroupMembership, ParameterGroupsPresent, PreflightInputs, Quota, SecurityGroup,
    Snapshot, SourceInstance, TargetCluster,
};
use crate::core::router::{DnsRecord, RouteProgress, RouterChoice, RouterView};
use crate::core::{ErrorKind, Phase};
use crate::ports::{
    Clock, Lease, LeaseError, MetricQuery, Metrics, Network, Notifier, PortError, PortResult,
    Queue, QueueMessage, Rds, Router, StateStore, StoreError, World,
};

use super::faults::{CallFault, FaultPlan, PermanentFault};
use super::queue::{Ms, SqsQueue};
use super::rng::Rng;

// One file per service (and the port plumbing), each with its half of `State` and its port;
// `adapter.rs` is the RDS adapter's real limiter and caches the agent process holds.
mod adapter;
mod cloudwatch;
mod database;
mod ec2;
mod messaging;
mod pgbouncer;
mod port;
mod rds;
mod rds_proxy;
mod route53;
mod store;
mod time;

use adapter::RdsAdapter;
pub use database::SourceDb;
pub use port::{SimPort, SimWorld};

pub const SEC: Ms = 1000;
pub const MIN: Ms = 60 * SEC;
const MIB: u64 = 1024 * 1024;
const GIB: f64 = 1024.0 * 1024.0 * 1024.0;
const ACCOUNT: &str = "111122223333";
const REGION: &str = "us-east-1";
const DESCRIBE_INSTANCES: &str = "rds:DescribeDBInstances";
const DESCRIBE_CLUSTERS: &str = "rds:DescribeDBClusters";
/// Datapoints kept per series: enough for every window the agent reads (≤ 20 min).
const SERIES_KEPT: usize = 40;

/// Which store the world offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreMode {
    /// DynamoDB with a condition on the version and consistent reads.
    Conditional,
    /// Broken on purpose: reads may return the previous version and writes ignore the condition.
    IgnoresVersion,
}

#[derive(Clone, Debug)]
pub struct Source {
    pub index: usize,
    pub view: SourceInstance,
    /// The groups its clients (the application) reach it through.
    pub client_groups: Vec<String>,
    pub write_rate: u64,
    pub repl_delay_ms: Ms,
    pub apply_rate: u64,
    pub clients: u32,
    pub bytes_per_write: u64,
    pub permanent: Option<PermanentFault>,
    pub tagged_at: Ms,

    // Write model.
    pub acked: u64,
    writable_ms: u64,
    was_writable: bool,
    changed_at: Ms,
    sessions_open: bool,
    last_sync: Ms,
    pending_groups: Option<Vec<String>>,
    pub deleted_at: Option<Ms>,
    /// The promoted target's last write: the source must never acknowledge past it.
    pub promoted_seq: Option<u64>,
    /// When the sessions open now were opened (`backend_start`), and whether they are one
    /// client that got back in after its session was ended (`database.rs`).
    sessions_since: Ms,
    lone_client: bool,
    /// Database access granted by tag, and what goes wrong inside (`database.rs`).
    pub db: Option<SourceDb>,

    // This CloudWatch period.
    period_acked_start: u64,
    period_sessions_any: bool,

    // Figures (first occurrence).
    pub quarantine_requested_at: Option<Ms>,
    pub quarantine_applied_at: Option<Ms>,
    pub reboot_requested_at: Option<Ms>,
    pub restarted_at: Option<Ms>,
    pub first_metric_after_restart: Option<Ms>,
    pub promote_called_at: Option<Ms>,
    /// The first `pg_terminate_backend` of the cutover (database-aware path).
    pub sessions_end_called_at: Option<Ms>,
    /// The latest fence (database-aware path): when it was written, and when the replica had
    /// applied it (the replication's share of the outage, AWS's and not the agent's).
    pub fence_written_at: Option<Ms>,
    pub fence_replayable_at: Option<Ms>,
    pub promoted_at: Option<Ms>,
    pub route_called_at: Option<Ms>,
    pub routed_at: Option<Ms>,
    /// Routes through Route 53 (`route53.rs`): the record's name.
    pub route53_record: Option<String>,
    /// Routes through an RDS Proxy (`rds_proxy.rs`).
    pub rds_proxy: Option<rds_proxy::Proxy>,
    /// Routes through PgBouncer (`pgbouncer.rs`).
    pub pooler: Option<pgbouncer::Pooler>,
    /// The cutover's route was accepted by a router that propagates (Route 53's UPSERT, the
    /// proxy's new target): the router's share of the outage runs from here to when traffic
    /// moves (`INSYNC`, the target `AVAILABLE`).
    pub route_accepted_at: Option<Ms>,
}

impl Source {
    fn up(&self) -> bool {
        self.deleted_at.is_none() && matches!(self.view.status.as_str(), "available" | "modifying")
    }

    /// A client can open a connection: one of its groups is still attached.
    fn reachable(&self) -> bool {
        self.up()
            && self
                .view
                .security_groups
                .iter()
                .any(|g| self.client_groups.contains(&g.id) && g.status != "adding")
    }

    fn writable(&self) -> bool {
        self.write_rate > 0 && self.up() && (self.reachable() || self.sessions_open)
    }

    /// Writes acknowledged by the source that the replica has not received yet.
    fn backlog(&self, now: Ms) -> u64 {
        let d = self.repl_delay_ms;
        let since = now - self.changed_at;
        let ms = if self.was_writable {
            since.min(d)
        } else {
            (d - since).max(0)
        };
        self.write_rate * ms as u64 / 1000
    }
}

#[derive(Clone, Debug)]
pub struct Cluster {
    pub view: TargetCluster,
    pub source: String,
    /// Receiving WAL from the source.
    pub replicating: bool,
    pub applied: u64,
    pub snapshot_seq: u64,
    pub took_writes_at: Option<Ms>,
    pub fails: bool,
    pub stuck: bool,
}

#[derive(Clone, Debug)]
enum Ev {
    GroupsApplied(String),
    RebootDone(String),
    ClusterCreated(String),
    WriterCreated(String),
    PromoteDone(String),
    ClusterDeleted(String),
    SnapshotDone(String),
    SourceDeleted(String),
    Minute,
    TagSet(String),
    Resync,
    /// A client gets back in through a hole in the quarantine (`database.rs`).
    ClientReconnects(String),
    /// A Route 53 change reaches every server: traffic follows it (`route53.rs`).
    Route53InSync(String),
    /// The proxy's new target is available: traffic follows it (`rds_proxy.rs`).
    ProxyTargetAvailable(String),
}

#[derive(Clone, Debug)]
pub struct Group {
    pub view: SecurityGroup,
    pub vpc: String,
}

/// One row of the verbose timeline.
pub type Line = (Ms, String);

pub struct State {
    pub now: Ms,
    /// RDS requests per second the agent's adapter allows itself (`MIGRATOR_RDS_RATE_LIMIT`):
    /// each agent process's rate limiter and snapshot TTLs are built from it.
    pub rds_rate: f64,
    /// The agent's `MIGRATOR_MAX_CUTOVERS`, for the check that it keeps to it
    /// (`checks::turns`).
    pub max_cutovers: usize,
    /// The agent's `MIGRATOR_MAX_PREPARATIONS`, for the same check (times the agents).
    pub max_preparations: usize,
    /// The most migrations in Preflight or Preparing at once, counted as each entered.
    pub peak_preparations: usize,
    /// RDS requests made in the rate limiter's cutover lane (the rest: phases that can wait).
    pub rds_in_cutover_lane: u64,
    /// RDS requests by the phase of the migration that made them, and operation.
    pub rds_by_phase: BTreeMap<(&'static str, &'static str), u64>,
    /// RDS requests that served many migrations at once, by operation and kind (`snapshot`:
    /// a page of the fleet describe cache; `batch`: a batched direct describe): requests, and
    /// the migrations' looks they carried (a batch's names; a snapshot page: none counted).
    pub rds_shared: BTreeMap<(&'static str, &'static str), (u64, u64)>,
    /// Saves of a record refused because it had changed since it was read (the step then
    /// reads it again and looks afresh): with one agent and no crash, a step of a record this
    /// process had already moved on, and every look it made was for nothing.
    pub stale_saves: u64,
    pub epoch: Timestamp,
    pub seed: u64,
    fault_rng: Rng,
    latency_rng: Rng,
    world_rng: Rng,
    pub plan: FaultPlan,
    op_counts: BTreeMap<&'static str, u32>,
    /// Calls of each scripted fault's operation since its `after` operation was first called
    /// (indexed as `plan.scripted`; counted only once that was called).
    scripted_counts: Vec<Option<u32>>,
    /// Whether each scripted fault (indexed as `plan.scripted`) has been applied: a test's
    /// fault that never fired proves nothing.
    pub scripted_fired: Vec<bool>,
    pub crashed: bool,
    /// While a `sqs:SendMessage` scripted [`crate::sim::faults::CallFault::ReceivedLate`] is applied: how much
    /// later than its delay the message becomes visible.
    pub received_late_ms: Ms,
    pub current_task: usize,
    pub task_wakes: BTreeMap<usize, Ms>,
    pub sources: BTreeMap<String, Source>,
    pub clusters: BTreeMap<String, Cluster>,
    pub groups: BTreeMap<String, Group>,
    next_group: u64,
    pub parameter_groups: BTreeSet<String>,
    /// Snapshots by name: (instance id, status, created at).
    pub snapshots: BTreeMap<String, (String, String, Ms)>,
    /// DescribeEvents: (visible at, happened at, instance, message).
    pub events: Vec<(Ms, Ms, String, String)>,
    pub queue: SqsQueue,
    pub store: BTreeMap<MigrationId, Migration>,
    store_previous: BTreeMap<MigrationId, Migration>,
    /// Each record's lease, as the item's lease attributes hold it (`store.rs`).
    pub leases: BTreeMap<MigrationId, Lease>,
    /// The migrations in their cutover whose lease holder died: from when their step was due
    /// (the crash, or their wake-up if it was later), and who died. The next process to take the
    /// lease is the takeover `takeovers_ms` measures.
    pub orphans: BTreeMap<MigrationId, (Ms, String)>,
    /// Step due after the crash → lease taken by another process, for migrations in their
    /// cutover: what the death cost them (a second crash before the takeover leaves its orphans
    /// unmeasured).
    pub takeovers_ms: Vec<Ms>,
    pub store_mode: StoreMode,
    pub fleet_paused: bool,
    pub notes: Vec<(Ms, Notification)>,
    pub alarms: BTreeSet<String>,
    /// Instances for which an error-severity notification was published.
    pub error_notified: BTreeSet<String>,
    scheduled: BTreeMap<(Ms, u64), Ev>,
    seq: u64,
    pub metrics: BTreeMap<(String, MetricKey), VecDeque<(Ms, Datapoint)>>,
    pub calls: BTreeMap<&'static str, u64>,
    /// RDS requests per second of virtual time, counted when a request leaves (after the
    /// agent process's rate limiter).
    pub rds_per_second: BTreeMap<i64, u32>,
    pub violations: Vec<String>,
    /// Route 53 changes by id (`route53.rs`).
    pub route53_changes: BTreeMap<String, route53::Change>,
    /// Database faults injected, by kind (`database.rs`).
    pub db_faults: BTreeMap<&'static str, u64>,
    pub timeline: Option<Vec<Line>>,
    pub resync_every_ms: Ms,
    pub event_id: u64,
}

impl State {
    pub fn new(seed: u64, plan: FaultPlan, store_mode: StoreMode, verbose: bool) -> Self {
        let epoch: Timestamp = "2026-01-05T00:00:00Z".parse().expect("a valid timestamp");
        let mut s = State {
            now: 0,
            rds_rate: crate::aws::AwsSettings::new("", "", "").rds_requests_per_second,
            max_cutovers: crate::core::policy::DEFAULT_MAX_CUTOVERS,
            max_preparations: crate::core::policy::DEFAULT_MAX_PREPARATIONS,
            peak_preparations: 0,
            rds_in_cutover_lane: 0,
            rds_by_phase: BTreeMap::new(),
            rds_shared: BTreeMap::new(),
            stale_saves: 0,
            epoch,
            seed,
            fault_rng: Rng::fork(seed, 1),
            latency_rng: Rng::fork(seed, 2),
            world_rng: Rng::fork(seed, 3),
            plan,
            op_counts: BTreeMap::new(),
            scripted_counts: Vec::new(),
            scripted_fired: Vec::new(),
            crashed: false,
            received_late_ms: 0,
            current_task: 0,
            task_wakes: BTreeMap::new(),
            sources: BTreeMap::new(),
            clusters: BTreeMap::new(),
            groups: BTreeMap::new(),
            next_group: 1,
            parameter_groups: BTreeSet::new(),
            snapshots: BTreeMap::new(),
            events: Vec::new(),
            // MIGRATOR_MESSAGE_VISIBILITY's default, extended as the runtime does (a third of
            // it before it runs out: `VISIBILITY_MARGIN_MS`).
            queue: SqsQueue::new(15 * SEC, 8),
            store: BTreeMap::new(),
            store_previous: BTreeMap::new(),
            leases: BTreeMap::new(),
            orphans: BTreeMap::new(),
            takeovers_ms: Vec::new(),
            store_mode,
            fleet_paused: false,
            notes: Vec::new(),
            alarms: BTreeSet::new(),
            error_notified: BTreeSet::new(),
            scheduled: BTreeMap::new(),
            seq: 0,
            metrics: BTreeMap::new(),
            calls: BTreeMap::new(),
            rds_per_second: BTreeMap::new(),
            violations: Vec::new(),
            route53_changes: BTreeMap::new(),
            db_faults: BTreeMap::new(),
            timeline: verbose.then(Vec::new),
            resync_every_ms: 5 * MIN,
            event_id: 0,
        };
        s.schedule(MIN, Ev::Minute);
        s.schedule(s.resync_every_ms, Ev::Resync);
        s
    }

    pub fn ts(&self, ms: Ms) -> Timestamp {
        self.epoch + SignedDuration::from_millis(ms)
    }

    pub(super) fn ms(&self, t: Timestamp) -> Ms {
        t.as_millisecond() - self.epoch.as_millisecond()
    }

    pub fn log(&mut self, text: impl FnOnce() -> String) {
        let now = self.now;
        if let Some(t) = &mut self.timeline {
            t.push((now, text()));
        }
    }

    pub fn violation(&mut self, what: String) {
        let now = self.now;
        self.log(|| format!("VIOLATION {what}"));
        self.violations
            .push(format!("{what} (at +{})", crate::sim::fmt_ms(now)));
    }

    fn schedule(&mut self, after: Ms, ev: Ev) {
        self.seq += 1;
        self.scheduled
            .insert((self.now + after.max(0), self.seq), ev);
    }

    pub fn next_event_at(&self) -> Option<Ms> {
        self.scheduled.keys().next().map(|(t, _)| *t)
    }

    // ----- population --------------------------------------------------------------------

    /// Adds one tagged source. `size_gib`, write rate and the rest come from the world stream.
    /// Gives `id` a permanent fault drawn after it was added (a router's).
    pub fn make_permanent(&mut self, id: &str, fault: PermanentFault) {
        if let Some(s) = self.sources.get_mut(id) {
            s.permanent = Some(fault);
        }
    }

    pub fn add_source(&mut self, index: usize, permanent: Option<PermanentFault>) {
        let r = &mut self.world_rng;
        let id = format!("orders-db-{index:04}");
        let resource_id = format!("db-{:026X}", r.next_u64() as u128 * 7919 + index as u128);
        let size_gib = match r.range(0, 9) {
            0..=5 => r.range(20, 200),
            6..=8 => r.range(200, 800),
            _ => r.range(800, 2000),
        } as u32;
        let write_rate = if r.chance(0.1) {
            0
        } else {
            r.range(1, 200) as u64
        };
        let client_group = format!("sg-app{index:04}");
        let mut tags = BTreeMap::new();
        tags.insert("aurora-migration".to_string(), "start".to_string());
        tags.insert(
            "aurora-migration:ack-unlogged-tables".to_string(),
            "true".to_string(),
        );
        tags.insert("team".to_string(), "payments".to_string());
        let arn = format!("arn:aws:rds:{REGION}:{ACCOUNT}:db:{id}");
        let view = SourceInstance {
            identifier: id.clone(),
            arn,
            resource_id,
            engine: "postgres".to_string(),
            engine_version: format!("15.{}", r.range(4, 8)),
            status: "available".to_string(),
            instance_class: if r.chance(0.5) {
                "db.m6g.large".to_string()
            } else {
                "db.r6g.xlarge".to_string()
            },
            allocated_storage_gib: size_gib,
            has_pending_modifications: false,
            parameter_group: ParameterGroupMembership {
                name: "orders-pg15".to_string(),
                apply_status: "in-sync".to_string(),
            },
            backup_retention_days: 7,
            read_replicas: Vec::new(),
            aurora_replica_clusters: Vec::new(),
            storage_encrypted: true,
            kms_key_id: Some(format!("arn:aws:kms:{REGION}:{ACCOUNT}:key/k{index}")),
            iam_auth_enabled: false,
            master_user_secret_arn: None,
            db_name: None,
            deletion_protection: false,
            auto_minor_version_upgrade: false,
            security_groups: vec![GroupMembership {
                id: client_group.clone(),
                status: "active".to_string(),
            }],
            vpc_id: "vpc-1".to_string(),
            subnet_group: "db-subnets".to_string(),
            endpoint: Some(Endpoint {
                address: format!("{id}.abc.{REGION}.rds.amazonaws.com"),
                port: 5432,
            }),
            multi_az: r.chance(0.5),
            tags,
        };
        let tagged_at = r.range(0, 10 * MIN);
        let source = Source {
            index,
            view,
            client_groups: vec![client_group],
            write_rate,
            repl_delay_ms: r.range(200, 3000),
            apply_rate: write_rate * 3 + 500,
            clients: r.range(5, 60) as u32,
            bytes_per_write: r.range(200, 4000) as u64,
            permanent,
            tagged_at,
            acked: 0,
            writable_ms: 0,
            was_writable: write_rate > 0,
            changed_at: -(10 * MIN),
            sessions_open: true,
            last_sync: 0,
            pending_groups: None,
            deleted_at: None,
            promoted_seq: None,
            sessions_since: -(10 * MIN),
            lone_client: false,
            db: None,
            period_acked_start: 0,
            period_sessions_any: true,
            quarantine_requested_at: None,
            quarantine_applied_at: None,
            reboot_requested_at: None,
            restarted_at: None,
            first_metric_after_restart: None,
            promote_called_at: None,
            sessions_end_called_at: None,
            fence_written_at: None,
            fence_replayable_at: None,
            promoted_at: None,
            route_called_at: None,
            routed_at: None,
            route53_record: None,
            route_accepted_at: None,
            rds_proxy: None,
            pooler: None,
        };
        self.sources.insert(id.clone(), source);
        let now = self.now;
        self.seq += 1;
        self.scheduled
            .insert((now + tagged_at, self.seq), Ev::TagSet(id));
    }
}
