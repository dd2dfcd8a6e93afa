//! The fake AWS: RDS instances and Aurora clusters, EC2 security groups, CloudWatch, SNS, SQS,
//! DynamoDB and the data access layer, in virtual time, behind the same port traits the real
//! adapters implement.
//!
//! Virtual time is in milliseconds since the run's epoch. Every call takes a seeded latency
//! (the calling task really waits for it, so concurrent messages interleave), and long AWS
//! operations finish through scheduled world events. Writes are sequence numbers: a source
//! acknowledges writes at its write rate while clients can reach it, and its Aurora replica
//! applies them after a replication delay.

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
use crate::core::{ErrorKind, Phase};
use crate::ports::{
    Clock, MetricQuery, Metrics, Network, Notifier, PortError, PortResult, Queue, QueueMessage,
    Rds, Router, StateStore, StoreError, World,
};

use super::faults::{CallFault, FaultPlan, PermanentFault};
use super::queue::{Ms, SqsQueue};
use super::rng::Rng;

pub const SEC: Ms = 1000;
pub const MIN: Ms = 60 * SEC;
const MIB: u64 = 1024 * 1024;
const GIB: f64 = 1024.0 * 1024.0 * 1024.0;
const ACCOUNT: &str = "111122223333";
const REGION: &str = "us-east-1";
/// Datapoints kept per series: enough for every window the agent reads (≤ 20 min).
/// The AWS adapter's defaults (`AwsSettings`): RDS rate limiter and describe cache.
const RDS_REQUESTS_PER_SECOND: Ms = 5;
const RDS_BURST: Ms = 5;
const DESCRIBE_TTL: Ms = 5 * SEC;
const DESCRIBE_INSTANCES: &str = "rds:DescribeDBInstances";
const DESCRIBE_CLUSTERS: &str = "rds:DescribeDBClusters";
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
    pub promoted_at: Option<Ms>,
    pub route_called_at: Option<Ms>,
    pub routed_at: Option<Ms>,
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
    pub epoch: Timestamp,
    pub seed: u64,
    fault_rng: Rng,
    latency_rng: Rng,
    world_rng: Rng,
    pub plan: FaultPlan,
    op_counts: BTreeMap<&'static str, u32>,
    pub crashed: bool,
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
    /// RDS requests per second of virtual time.
    pub rds_per_second: BTreeMap<i64, u32>,
    /// The AWS adapter's RDS rate limiter (a token bucket): the theoretical arrival time of
    /// the next call.
    rds_tat: Ms,
    /// The adapter's fleet describe snapshots (`FleetCache`): when each operation's last
    /// snapshot was fetched. Answers are read at the time of the describe (a real snapshot
    /// can be up to its TTL older; the property tests cover stale observations).
    fleet_snapshot_at: BTreeMap<&'static str, Ms>,
    /// (describe operation, identifier in lower case) the agent changed, and when: described
    /// directly until a snapshot started after the change, as the adapter does.
    touched: BTreeMap<(&'static str, String), Ms>,
    /// Snapshots being fetched: one refresh at a time, the others wait for it.
    fleet_refreshing: BTreeSet<&'static str>,
    pub violations: Vec<String>,
    pub timeline: Option<Vec<Line>>,
    pub resync_every_ms: Ms,
    pub event_id: u64,
}

impl State {
    pub fn new(seed: u64, plan: FaultPlan, store_mode: StoreMode, verbose: bool) -> Self {
        let epoch: Timestamp = "2026-01-05T00:00:00Z".parse().expect("a valid timestamp");
        let mut s = State {
            now: 0,
            epoch,
            seed,
            fault_rng: Rng::fork(seed, 1),
            latency_rng: Rng::fork(seed, 2),
            world_rng: Rng::fork(seed, 3),
            plan,
            op_counts: BTreeMap::new(),
            crashed: false,
            current_task: 0,
            task_wakes: BTreeMap::new(),
            sources: BTreeMap::new(),
            clusters: BTreeMap::new(),
            groups: BTreeMap::new(),
            next_group: 1,
            parameter_groups: BTreeSet::new(),
            snapshots: BTreeMap::new(),
            events: Vec::new(),
            queue: SqsQueue::new(60 * SEC, 8),
            store: BTreeMap::new(),
            store_previous: BTreeMap::new(),
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
            rds_tat: 0,
            fleet_snapshot_at: BTreeMap::new(),
            touched: BTreeMap::new(),
            fleet_refreshing: BTreeSet::new(),
            violations: Vec::new(),
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

    fn ms(&self, t: Timestamp) -> Ms {
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
            .push(format!("{what} (at +{})", super::fmt_ms(now)));
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
            period_acked_start: 0,
            period_sessions_any: true,
            quarantine_requested_at: None,
            quarantine_applied_at: None,
            reboot_requested_at: None,
            restarted_at: None,
            first_metric_after_restart: None,
            promote_called_at: None,
            promoted_at: None,
            route_called_at: None,
            routed_at: None,
        };
        self.sources.insert(id.clone(), source);
        let now = self.now;
        self.seq += 1;
        self.scheduled
            .insert((now + tagged_at, self.seq), Ev::TagSet(id));
    }

    // ----- time --------------------------------------------------------------------------

    /// Processes every world event due at or before `to`, in order, then moves time to `to`.
    pub fn advance(&mut self, to: Ms) {
        while let Some((&(t, s), _)) = self.scheduled.iter().next() {
            if t > to {
                break;
            }
            let ev = self.scheduled.remove(&(t, s)).expect("just seen");
            self.now = self.now.max(t);
            self.apply(ev);
        }
        self.now = self.now.max(to);
    }

    /// Integrates writes and replication of one source up to now, and checks that no write is
    /// acknowledged after its target was promoted.
    fn sync(&mut self, id: &str) {
        let now = self.now;
        let Some(s) = self.sources.get_mut(id) else {
            return;
        };
        let dt = now - s.last_sync;
        if dt > 0 {
            if s.was_writable {
                s.writable_ms += dt as u64;
                s.acked = s.writable_ms * s.write_rate / 1000;
            }
            s.last_sync = now;
        }
        let acked = s.acked;
        let target = acked.saturating_sub(s.backlog(now));
        let apply = s.apply_rate * dt.max(0) as u64 / 1000;
        let arn = s.view.arn.clone();
        let promoted = s.promoted_seq;
        for c in self.clusters.values_mut() {
            if c.replicating && c.view.replication_source.as_deref() == Some(arn.as_str()) {
                if c.view.status == "creating" {
                    continue;
                }
                c.applied = c.applied.max(target.min(c.applied + apply));
            }
        }
        // Once traffic is on the promoted target, the source must never acknowledge another
        // write: it would exist on neither side after the move (split brain).
        let routed = self.sources.get(id).is_some_and(|s| s.routed_at.is_some());
        if let (Some(p), true) = (promoted, routed)
            && acked > p
        {
            let id = id.to_string();
            if let Some(s) = self.sources.get_mut(&id) {
                s.promoted_seq = Some(acked); // report once per burst
            }
            self.violation(format!(
                    "the source took writes after the target did: {id} acknowledged writes up to #{acked} after its traffic moved to a target holding up to #{p}"
                ));
        }
    }

    /// Re-reads the writability of a source after a change (the caller synced it first).
    fn refresh(&mut self, id: &str) {
        let now = self.now;
        let Some(s) = self.sources.get_mut(id) else {
            return;
        };
        if s.reachable() {
            s.sessions_open = true;
        }
        s.period_sessions_any |= s.sessions_open && s.up();
        let w = s.writable();
        if w != s.was_writable {
            // Keep the backlog continuous across the change.
            let b = s.backlog(now);
            let d = s.repl_delay_ms;
            let ms = (b * 1000).checked_div(s.write_rate).unwrap_or(0) as Ms;
            s.changed_at = if w { now - ms } else { now - (d - ms) };
            s.was_writable = w;
        }
    }

    fn apply(&mut self, ev: Ev) {
        match ev {
            Ev::Minute => {
                self.close_period();
                self.schedule(MIN, Ev::Minute);
            }
            Ev::Resync => {
                let body = format!(
                    r#"{{"version":"0","id":"resync-{}","detail-type":"Scheduled Event","source":"aws.events","account":"{ACCOUNT}","time":"{}","region":"{REGION}","resources":[],"detail":{{}}}}"#,
                    self.now,
                    self.ts(self.now)
                );
                let now = self.now;
                self.queue.send(&body, now, 0);
                let every = self.resync_every_ms;
                self.schedule(every, Ev::Resync);
            }
            Ev::TagSet(id) => {
                let Some(s) = self.sources.get(&id) else {
                    return;
                };
                let arn = s.view.arn.clone();
                self.log(|| format!("{id}: tagged aurora-migration=start"));
                let body = format!(
                    r#"{{"version":"0","id":"tag-{id}","detail-type":"Tag Change on Resource","source":"aws.tag","account":"{ACCOUNT}","time":"{}","region":"{REGION}","resources":["{arn}"],"detail":{{"changed-tag-keys":["aurora-migration"],"service":"rds","resource-type":"db","version":1,"tags":{{"aurora-migration":"start"}}}}}}"#,
                    self.ts(self.now)
                );
                self.deliver(&body);
            }
            Ev::GroupsApplied(id) => {
                self.sync(&id);
                let now = self.now;
                let quarantine: BTreeSet<String> = self.quarantine_ids();
                if let Some(s) = self.sources.get_mut(&id)
                    && let Some(new) = s.pending_groups.take()
                {
                    s.view.security_groups = new
                        .iter()
                        .map(|g| GroupMembership {
                            id: g.clone(),
                            status: "active".to_string(),
                        })
                        .collect();
                    if s.view.status == "modifying" {
                        s.view.status = "available".to_string();
                    }
                    if new.iter().all(|g| quarantine.contains(g)) {
                        s.quarantine_applied_at.get_or_insert(now);
                    }
                }
                self.refresh(&id);
                self.log(|| format!("{id}: security group change applied"));
            }
            Ev::RebootDone(id) => {
                self.sync(&id);
                let now = self.now;
                let arn = match self.sources.get_mut(&id) {
                    Some(s) if s.deleted_at.is_none() => {
                        s.view.status = "available".to_string();
                        s.restarted_at.get_or_insert(now);
                        s.view.arn.clone()
                    }
                    _ => return,
                };
                self.refresh(&id);
                self.rds_event(&id, &arn, "DB instance restarted", "RDS-EVENT-0004", true);
            }
            Ev::ClusterCreated(name) => {
                let Some(c) = self.clusters.get_mut(&name) else {
                    return;
                };
                if c.view.status != "creating" {
                    return;
                }
                c.view.status = if c.fails { "failed" } else { "available" }.to_string();
                c.applied = c.snapshot_seq;
                let arn = c.view.arn.clone();
                let status = c.view.status.clone();
                self.log(|| format!("{name}: cluster {status}"));
                self.rds_event(&name, &arn, "DB cluster created", "RDS-EVENT-0170", false);
            }
            Ev::WriterCreated(name) => {
                let Some(c) = self.clusters.get_mut(&name) else {
                    return;
                };
                for m in &mut c.view.members {
                    m.status = "available".to_string();
                }
                c.view.writer_endpoint = Some(Endpoint {
                    address: format!("{name}.cluster-abc.{REGION}.rds.amazonaws.com"),
                    port: 5432,
                });
                self.log(|| format!("{name}: writer instance available"));
            }
            Ev::PromoteDone(name) => {
                let Some(c) = self.clusters.get(&name) else {
                    return;
                };
                if c.stuck || c.view.status != "promoting" {
                    return;
                }
                let src = c.source.clone();
                self.sync(&src);
                let now = self.now;
                let c = self.clusters.get_mut(&name).expect("seen above");
                c.view.status = "available".to_string();
                c.view.replication_source = None;
                let applied = c.applied;
                let arn = c.view.arn.clone();
                let acked = self.sources.get(&src).map_or(0, |s| s.acked);
                if let Some(s) = self.sources.get_mut(&src) {
                    s.promoted_seq = Some(applied);
                    s.promoted_at.get_or_insert(now);
                }
                self.log(|| format!("{name}: promoted (target holds writes up to #{applied}, source acknowledged #{acked})"));
                self.rds_event(
                    &name,
                    &arn,
                    "Promoted Read Replica cluster to a stand-alone database cluster",
                    "RDS-EVENT-0172",
                    false,
                );
            }
            Ev::ClusterDeleted(name) => {
                self.clusters.remove(&name);
                self.log(|| format!("{name}: cluster deleted"));
            }
            Ev::SnapshotDone(name) => {
                if let Some(s) = self.snapshots.get_mut(&name) {
                    s.1 = "available".to_string();
                }
                self.log(|| format!("{name}: snapshot available"));
            }
            Ev::SourceDeleted(id) => {
                self.sync(&id);
                let now = self.now;
                if let Some(s) = self.sources.get_mut(&id) {
                    s.deleted_at = Some(now);
                }
                self.refresh(&id);
                self.log(|| format!("{id}: source deleted"));
            }
        }
    }

    fn quarantine_ids(&self) -> BTreeSet<String> {
        self.groups
            .values()
            .filter(|g| g.view.name.starts_with("aurora-migrator-quarantine"))
            .map(|g| g.view.id.clone())
            .collect()
    }

    /// Puts an EventBridge message on the queue, late, twice or never as the seed says.
    fn deliver(&mut self, body: &str) {
        let i = self.plan.intensity.clone();
        let r = &mut self.fault_rng;
        if r.chance(i.event_lost) {
            self.log(|| "fault: event lost".to_string());
            return;
        }
        let late = if r.chance(i.event_late) {
            r.range(5 * SEC, 3 * MIN)
        } else {
            r.range(200, 2 * SEC)
        };
        let twice = r.chance(i.event_duplicated);
        let again = r.range(SEC, 2 * MIN);
        let now = self.now;
        self.queue.send(body, now, late);
        if twice {
            self.queue.send(body, now, again);
        }
    }

    fn rds_event(&mut self, id: &str, arn: &str, message: &str, event_id: &str, instance: bool) {
        let now = self.now;
        let visible = now + self.world_rng.range(0, 20 * SEC);
        if instance {
            self.events
                .push((visible, now, id.to_string(), message.to_string()));
        }
        self.log(|| format!("{id}: event \"{message}\""));
        self.event_id += 1;
        let kind = if instance {
            "RDS DB Instance Event"
        } else {
            "RDS DB Cluster Event"
        };
        let body = format!(
            r#"{{"version":"0","id":"ev-{}","detail-type":"{kind}","source":"aws.rds","account":"{ACCOUNT}","time":"{t}","region":"{REGION}","resources":["{arn}"],"detail":{{"EventCategories":["notification"],"SourceType":"DB_INSTANCE","SourceArn":"{arn}","Date":"{t}","Message":"{message}","SourceIdentifier":"{id}","EventID":"{event_id}"}}}}"#,
            self.event_id,
            t = self.ts(now)
        );
        self.deliver(&body);
    }

    // ----- CloudWatch ----------------------------------------------------------------------

    fn close_period(&mut self) {
        let end = self.now;
        let start = end - MIN;
        let ids: Vec<String> = self
            .sources
            .iter()
            .filter(|(_, s)| s.deleted_at.is_none())
            .map(|(k, _)| k.clone())
            .collect();
        for id in ids {
            self.sync(&id);
            self.refresh(&id);
            let delay = self.world_rng.range(20 * SEC, 2 * MIN);
            let coin = self.world_rng.chance(0.5);
            let noise = self.world_rng.unit();
            let s = self.sources.get(&id).expect("listed");
            let writes = s.acked - s.period_acked_start;
            let replica = self.clusters.values().find(|c| {
                c.replicating && c.view.replication_source.as_deref() == Some(&s.view.arn)
            });
            let lag_writes = replica.map_or(0, |c| s.acked.saturating_sub(c.applied));
            let (slot_min, slot_max) = if s.permanent == Some(PermanentFault::StaleLogicalSlot) {
                let stale = 3.0 * GIB + (end / MIN) as f64 * 1e6;
                (stale, stale)
            } else if replica.is_none() {
                (0.0, 0.0)
            } else if writes == 0 && lag_writes == 0 {
                (0.0, if coin { 64.0 * MIB as f64 } else { 0.0 })
            } else {
                let b = (lag_writes.max(1) * s.bytes_per_write) as f64;
                (b, b + 64.0 * MIB as f64)
            };
            let conns = if s.period_sessions_any {
                f64::from(s.clients)
            } else {
                0.0
            };
            let free = f64::from(s.view.allocated_storage_gib) * GIB * 0.6 - slot_max;
            let wal = (writes * s.bytes_per_write) as f64 / 60.0;
            let rate = s.write_rate.max(1) as f64;
            let lag_s = lag_writes as f64 / rate;
            let cpu = 20.0 + 10.0 * noise;
            let restarted = s.restarted_at;
            let mut points: Vec<(String, MetricKey, f64, f64)> = vec![
                (id.clone(), MetricKey::SourceSlotLag, slot_min, slot_max),
                (id.clone(), MetricKey::SourceConnections, conns, conns),
                (id.clone(), MetricKey::SourceFreeStorage, free, free),
                (id.clone(), MetricKey::SourceWalGeneration, wal, wal),
                (id.clone(), MetricKey::SourceCpu, cpu, cpu),
                (id.clone(), MetricKey::SourceWriteLatency, 0.002, 0.002),
                (id.clone(), MetricKey::SourceReadLatency, 0.001, 0.001),
            ];
            for c in self.clusters.values().filter(|c| c.source == id) {
                let Some(w) = c.view.members.first() else {
                    continue;
                };
                if w.status != "available" || c.view.status == "deleting" {
                    continue;
                }
                let name = w.identifier.clone();
                if c.replicating {
                    points.push((name.clone(), MetricKey::TargetReplicaLag, lag_s, lag_s));
                }
                let iops = if c.took_writes_at.is_some() {
                    rate
                } else {
                    0.0
                };
                points.push((name.clone(), MetricKey::TargetCpu, cpu * 0.9, cpu * 0.9));
                points.push((name.clone(), MetricKey::TargetWriteLatency, 0.002, 0.002));
                points.push((name.clone(), MetricKey::TargetReadLatency, 0.001, 0.001));
                // Clients reach Aurora only while it is not fenced by the quarantine group.
                let fenced = c
                    .view
                    .security_groups
                    .iter()
                    .all(|g| g.id.starts_with("sg-q"));
                let target_conns = if c.took_writes_at.is_some() && !fenced {
                    20.0
                } else {
                    0.0
                };
                points.push((name.clone(), MetricKey::TargetWriteIops, iops, iops));
                points.push((
                    name,
                    MetricKey::TargetConnections,
                    target_conns,
                    target_conns,
                ));
            }
            for (inst, key, lo, hi) in points {
                let series = self.metrics.entry((inst, key)).or_default();
                series.push_back((
                    end + delay,
                    Datapoint {
                        start: self.epoch + SignedDuration::from_millis(start),
                        period_s: 60,
                        minimum: lo,
                        maximum: hi,
                        average: (lo + hi) / 2.0,
                    },
                ));
                if series.len() > SERIES_KEPT {
                    series.pop_front();
                }
            }
            let s = self.sources.get_mut(&id).expect("listed");
            if restarted.is_some_and(|r| start >= r) && s.first_metric_after_restart.is_none() {
                s.first_metric_after_restart = Some(end + delay);
            }
            s.period_acked_start = s.acked;
            s.period_sessions_any = s.sessions_open && s.up();
        }
    }

    // ----- calls -------------------------------------------------------------------------

    /// Counts a call and draws its latency and fault.
    fn begin_call(&mut self, op: &'static str, mutating: bool) -> (Ms, CallFault) {
        *self.calls.entry(op).or_default() += 1;
        // RDS calls wait for the adapter's rate limiter before they leave.
        let queued = if op.starts_with("rds:") {
            let interval = SEC / RDS_REQUESTS_PER_SECOND;
            let start = self.now.max(self.rds_tat - (RDS_BURST - 1) * interval);
            self.rds_tat = self.rds_tat.max(start) + interval;
            *self.rds_per_second.entry(start / SEC).or_default() += 1;
            start - self.now
        } else {
            0
        };
        let n = {
            let c = self.op_counts.entry(op).or_default();
            *c += 1;
            *c
        };
        let scripted = self
            .plan
            .scripted
            .iter()
            .find(|f| f.operation == op && f.nth == n)
            .map(|f| f.fault.clone());
        let i = &self.plan.intensity;
        let r = &mut self.fault_rng;
        let fault = if let Some(f) = scripted {
            f
        } else if r.chance(i.crash) {
            if r.chance(0.5) {
                CallFault::CrashBefore
            } else {
                CallFault::CrashAfter
            }
        } else if r.chance(i.throttle) {
            CallFault::Error(ErrorKind::Throttled)
        } else if r.chance(i.server_error) {
            CallFault::Error(ErrorKind::Retryable)
        } else if mutating && r.chance(i.lost_answer) {
            CallFault::LostAnswer
        } else if r.chance(i.slow) {
            CallFault::Slow(r.range(2 * SEC, 25 * SEC))
        } else {
            CallFault::None
        };
        let latency = match fault {
            CallFault::Slow(ms) => ms,
            CallFault::LostAnswer => 30 * SEC,
            _ => self.latency_rng.range(15, 250),
        };
        if fault != CallFault::None {
            self.log(|| format!("fault: {op} → {fault:?}"));
        }
        (queued + latency, fault)
    }

    /// The agent process restarted: what its AWS adapter held in memory is gone.
    pub fn agent_restarted(&mut self) {
        self.fleet_snapshot_at.clear();
        self.touched.clear();
        self.fleet_refreshing.clear();
    }

    fn find_source_id(&self, id_or_arn: &str) -> Option<String> {
        let id = id_or_arn.rsplit(':').next().unwrap_or(id_or_arn);
        self.sources
            .get(id)
            .filter(|s| s.deleted_at.is_none())
            .map(|_| id.to_string())
    }

    fn source_view(&mut self, id: &str) -> SourceInstance {
        self.sync(id);
        let s = &self.sources[id];
        let mut v = s.view.clone();
        v.aurora_replica_clusters = self
            .clusters
            .values()
            .filter(|c| c.view.replication_source.as_deref() == Some(v.arn.as_str()))
            .map(|c| c.view.identifier.clone())
            .collect();
        v
    }

    fn describe_source(&mut self, instance: &str) -> PortResult<Observed<SourceInstance>> {
        Ok(match self.find_source_id(instance) {
            Some(id) => Observed::Present(self.source_view(&id)),
            None => Observed::Absent,
        })
    }

    fn list_tagged(&mut self, key: &str) -> Vec<SourceInstance> {
        let ids: Vec<String> = self
            .sources
            .iter()
            .filter(|(_, s)| s.deleted_at.is_none() && s.view.tags.contains_key(key))
            .map(|(k, _)| k.clone())
            .collect();
        ids.iter().map(|id| self.source_view(id)).collect()
    }

    fn preflight_inputs(&mut self, source: &SourceInstance) -> PreflightInputs {
        let versions = ["15.4", "15.5", "15.6", "15.7", "15.8", "16.1", "16.2"];
        let free = self
            .sources
            .get(&source.identifier)
            .map(|s| f64::from(s.view.allocated_storage_gib) * GIB * 0.6);
        PreflightInputs {
            aurora_versions: versions
                .iter()
                .map(|v| EngineVersion {
                    version: v.to_string(),
                    family: format!("aurora-postgresql{}", &v[..2]),
                })
                .collect(),
            source_parameters: vec![
                Parameter {
                    name: "work_mem".to_string(),
                    value: "65536".to_string(),
                },
                Parameter {
                    name: "log_min_duration_statement".to_string(),
                    value: "500".to_string(),
                },
            ],
            aurora_cluster_parameters: vec!["log_min_duration_statement".to_string()],
            aurora_instance_parameters: vec!["work_mem".to_string()],
            aurora_static_parameters: vec!["shared_preload_libraries".to_string()],
            pending_maintenance: Vec::new(),
            quotas: self.quotas(),
            kms_key: KeyCheck::Usable,
            free_storage_bytes: free,
            cdc_consumer_groups: None,
        }
    }

    fn quotas(&self) -> Vec<Quota> {
        let q = |name: &str, used: usize, max: u64| Quota {
            name: name.to_string(),
            used: used as u64,
            max,
        };
        vec![
            q("DBClusters", self.clusters.len(), 40_000),
            q(
                "DBInstances",
                self.sources.len() + self.clusters.len(),
                40_000,
            ),
            q("DBClusterParameterGroups", self.parameter_groups.len(), 50),
            q("DBParameterGroups", self.parameter_groups.len(), 100),
            q("ManualSnapshots", self.snapshots.len(), 100_000),
        ]
    }

    fn describe_target(&mut self, name: &str) -> Observed<TargetCluster> {
        let name = name.rsplit(':').next().unwrap_or(name);
        if let Some(src) = self.clusters.get(name).map(|c| c.source.clone()) {
            self.sync(&src);
        }
        match self.clusters.get(name) {
            Some(c) => Observed::Present(c.view.clone()),
            None => Observed::Absent,
        }
    }

    fn create_replica_cluster(&mut self, spec: &ReplicaClusterSpec) -> PortResult<()> {
        let op = "rds:CreateDBCluster";
        if let Some(c) = self.clusters.get(&spec.cluster) {
            let ours = c.view.replication_source.as_deref() == Some(spec.source_arn.as_str())
                || c.view.tags.get("aurora-migration:migration")
                    == spec.tags.get("aurora-migration:migration");
            return if ours {
                Ok(())
            } else {
                Err(PortError::new(
                    ErrorKind::Conflict,
                    op,
                    "DBClusterAlreadyExistsFault",
                ))
            };
        }
        let Some(id) = self.find_source_id(&spec.source_arn) else {
            return Err(PortError::new(
                ErrorKind::NotFound,
                op,
                "DBInstanceNotFound",
            ));
        };
        self.sync(&id);
        let others: Vec<String> = self
            .clusters
            .values()
            .filter(|c| c.source == id && c.view.replication_source.is_some())
            .map(|c| c.view.identifier.clone())
            .collect();
        if !others.is_empty() {
            self.violation(format!(
                "two replica clusters for one source: {} asked for while {} replicates from {id}",
                spec.cluster,
                others.join(", ")
            ));
            return Err(PortError::new(
                ErrorKind::Conflict,
                op,
                "InvalidDBInstanceState: the instance already has an Aurora read replica",
            ));
        }
        let s = &self.sources[&id];
        let size = i64::from(s.view.allocated_storage_gib);
        let fails = s.permanent == Some(PermanentFault::ReplicaCreationFails);
        let stuck = s.permanent == Some(PermanentFault::PromotionStuck);
        let snapshot_seq = s.acked;
        // "Several hours per TiB": ~6–12 s per GiB, plus setup.
        let per_gib = self.world_rng.range(6, 12);
        let took = 8 * MIN + size * per_gib * SEC;
        let cluster = Cluster {
            view: TargetCluster {
                identifier: spec.cluster.clone(),
                arn: format!("arn:aws:rds:{REGION}:{ACCOUNT}:cluster:{}", spec.cluster),
                status: "creating".to_string(),
                replication_source: Some(spec.source_arn.clone()),
                tags: spec.tags.clone(),
                writer_endpoint: None,
                security_groups: spec
                    .security_groups
                    .iter()
                    .map(|g| GroupMembership {
                        id: g.clone(),
                        status: "active".to_string(),
                    })
                    .collect(),
                members: Vec::new(),
            },
            source: id.clone(),
            replicating: true,
            applied: 0,
            snapshot_seq,
            took_writes_at: None,
            fails,
            stuck,
        };
        self.clusters.insert(spec.cluster.clone(), cluster);
        self.log(|| {
            format!(
                "{}: replica cluster creating ({size} GiB, {})",
                spec.cluster,
                super::fmt_ms(took)
            )
        });
        self.schedule(took, Ev::ClusterCreated(spec.cluster.clone()));
        Ok(())
    }

    fn create_writer(&mut self, spec: &WriterInstanceSpec) -> PortResult<()> {
        let took = self.world_rng.range(5 * MIN, 15 * MIN);
        let Some(c) = self.clusters.get_mut(&spec.cluster) else {
            return Err(PortError::new(
                ErrorKind::NotFound,
                "rds:CreateDBInstance",
                "DBClusterNotFoundFault",
            ));
        };
        if c.view.members.iter().any(|m| m.identifier == spec.instance) {
            return Ok(());
        }
        c.view.members.push(ClusterMember {
            identifier: spec.instance.clone(),
            status: "creating".to_string(),
        });
        self.schedule(took, Ev::WriterCreated(spec.cluster.clone()));
        Ok(())
    }

    fn set_source_groups(&mut self, instance: &str, ids: &[String]) -> PortResult<()> {
        let op = "rds:ModifyDBInstance";
        let Some(id) = self.find_source_id(instance) else {
            return Err(PortError::new(
                ErrorKind::NotFound,
                op,
                "DBInstanceNotFound",
            ));
        };
        self.sync(&id);
        let now = self.now;
        let quarantine = self.quarantine_ids();
        let took = self.world_rng.range(5 * SEC, 40 * SEC);
        let s = self.sources.get_mut(&id).expect("found");
        if !matches!(s.view.status.as_str(), "available" | "modifying") {
            return Err(PortError::new(
                ErrorKind::Conflict,
                op,
                format!("InvalidDBInstanceState: {}", s.view.status),
            ));
        }
        let mut have = s.view.group_ids();
        let mut want = ids.to_vec();
        have.sort();
        want.sort();
        if have == want && s.pending_groups.is_none() {
            return Ok(());
        }
        if ids.iter().all(|g| quarantine.contains(g)) {
            s.quarantine_requested_at.get_or_insert(now);
        }
        let mut memberships: Vec<GroupMembership> = s
            .view
            .security_groups
            .iter()
            .filter(|g| !ids.contains(&g.id))
            .map(|g| GroupMembership {
                id: g.id.clone(),
                status: "removing".to_string(),
            })
            .collect();
        for g in ids {
            let status = if have.contains(g) { "active" } else { "adding" };
            memberships.push(GroupMembership {
                id: g.clone(),
                status: status.to_string(),
            });
        }
        s.view.security_groups = memberships;
        s.view.status = "modifying".to_string();
        s.pending_groups = Some(ids.to_vec());
        self.refresh(&id);
        self.schedule(took, Ev::GroupsApplied(id));
        Ok(())
    }

    fn reboot(&mut self, instance: &str) -> PortResult<()> {
        let op = "rds:RebootDBInstance";
        if let Some(c) = self
            .clusters
            .values()
            .find(|c| c.view.writer(instance).is_some())
        {
            // An Aurora writer (the rollback's fence): its sessions end; restarted at once
            // (the simulated faults live on the source's reboot).
            let arn = c.view.arn.clone();
            self.rds_event(
                instance,
                &arn,
                "DB instance restarted",
                "RDS-EVENT-0006",
                true,
            );
            return Ok(());
        }
        let Some(id) = self.find_source_id(instance) else {
            return Err(PortError::new(
                ErrorKind::NotFound,
                op,
                "DBInstanceNotFound",
            ));
        };
        self.sync(&id);
        let now = self.now;
        let took = self.world_rng.range(MIN, 3 * MIN);
        let s = self.sources.get_mut(&id).expect("found");
        if s.view.status != "available" {
            return Err(PortError::new(
                ErrorKind::Conflict,
                op,
                format!("InvalidDBInstanceState: {}", s.view.status),
            ));
        }
        s.view.status = "rebooting".to_string();
        s.sessions_open = false;
        s.reboot_requested_at.get_or_insert(now);
        let arn = s.view.arn.clone();
        self.refresh(&id);
        self.rds_event(&id, &arn, "DB instance shutdown", "RDS-EVENT-0006", true);
        self.schedule(took, Ev::RebootDone(id));
        Ok(())
    }

    fn promote(&mut self, cluster: &str) -> PortResult<()> {
        let op = "rds:PromoteReadReplicaDBCluster";
        let Some(src) = self.clusters.get(cluster).map(|c| c.source.clone()) else {
            return Err(PortError::new(
                ErrorKind::NotFound,
                op,
                "DBClusterNotFoundFault",
            ));
        };
        self.sync(&src);
        let now = self.now;
        let took = self.world_rng.range(MIN, 5 * MIN);
        let c = self.clusters.get_mut(cluster).expect("found");
        if !c.replicating || c.view.status == "promoting" {
            return Ok(());
        }
        if c.view.status != "available" {
            return Err(PortError::new(
                ErrorKind::Conflict,
                op,
                format!("InvalidDBClusterStateFault: {}", c.view.status),
            ));
        }
        c.view.status = "promoting".to_string();
        c.replicating = false; // replication stops here: later source writes never arrive
        if let Some(s) = self.sources.get_mut(&src) {
            s.promote_called_at.get_or_insert(now);
        }
        self.schedule(took, Ev::PromoteDone(cluster.to_string()));
        Ok(())
    }

    fn delete_target(&mut self, cluster: &str) -> PortResult<()> {
        let took = self.world_rng.range(3 * MIN, 10 * MIN);
        let Some(c) = self.clusters.get_mut(cluster) else {
            return Err(PortError::new(
                ErrorKind::NotFound,
                "rds:DeleteDBCluster",
                "DBClusterNotFoundFault",
            ));
        };
        if c.view.status == "deleting" {
            return Ok(());
        }
        let took_writes = c.took_writes_at.is_some();
        c.view.status = "deleting".to_string();
        c.replicating = false;
        c.view.replication_source = None;
        for m in &mut c.view.members {
            m.status = "deleting".to_string();
        }
        if took_writes {
            self.violation(format!(
                "the target {cluster} was deleted after it took writes"
            ));
        }
        self.schedule(took, Ev::ClusterDeleted(cluster.to_string()));
        Ok(())
    }

    /// DeleteDBInstance with a final snapshot: RDS snapshots the last state, then removes the
    /// instance; a snapshot name that is taken refuses the whole call, as AWS does.
    fn delete_source(&mut self, instance: &str, final_snapshot: &str) -> PortResult<()> {
        let op = "rds:DeleteDBInstance";
        let Some(id) = self.find_source_id(instance) else {
            return Err(PortError::new(
                ErrorKind::NotFound,
                op,
                "DBInstanceNotFound",
            ));
        };
        let now = self.now;
        let s = &self.sources[&id];
        if s.view.status == "deleting" {
            return Err(PortError::new(
                ErrorKind::Conflict,
                op,
                "InvalidDBInstanceState: already being deleted",
            ));
        }
        if s.view.deletion_protection {
            return Err(PortError::new(
                ErrorKind::Fatal,
                op,
                "DeletionProtection is on",
            ));
        }
        if self.snapshots.contains_key(final_snapshot) {
            return Err(PortError::new(
                ErrorKind::Conflict,
                op,
                "DBSnapshotAlreadyExists",
            ));
        }
        // The world's own view of "safe to delete": a target that took the traffic and passed
        // the agent's verification.
        let resource = s.view.resource_id.clone();
        let verified = self
            .store
            .iter()
            .filter(|(k, _)| k.resource_id == resource)
            .any(|(_, m)| m.progress.verification_passed_at.is_some());
        let routed = s.routed_at;
        let size = i64::from(s.view.allocated_storage_gib);
        if final_snapshot.is_empty() {
            self.violation(format!("{id} deleted without a final snapshot"));
        }
        if !verified || routed.is_none() {
            self.violation(format!(
                "{id} deleted without a passed verification of a target that took its traffic"
            ));
        }
        let snapshot_took = 2 * MIN + size * self.world_rng.range(200, 900);
        self.snapshots.insert(
            final_snapshot.to_string(),
            (id.clone(), "creating".to_string(), now),
        );
        self.schedule(snapshot_took, Ev::SnapshotDone(final_snapshot.to_string()));
        self.sync(&id);
        let s = self.sources.get_mut(&id).expect("found");
        s.view.status = "deleting".to_string();
        self.refresh(&id);
        let took = snapshot_took + self.world_rng.range(MIN, 3 * MIN);
        self.schedule(took, Ev::SourceDeleted(id));
        Ok(())
    }

    fn set_tags(&mut self, arn: &str, tags: &BTreeMap<String, String>) -> PortResult<()> {
        let name = arn.rsplit(':').next().unwrap_or(arn).to_string();
        if arn.contains(":cluster:") {
            if let Some(c) = self.clusters.get_mut(&name) {
                c.view.tags.extend(tags.clone());
                return Ok(());
            }
        } else if let Some(s) = self
            .sources
            .get_mut(&name)
            .filter(|s| s.deleted_at.is_none())
        {
            s.view.tags.extend(tags.clone());
            return Ok(());
        }
        Err(PortError::new(
            ErrorKind::NotFound,
            "rds:AddTagsToResource",
            "no such resource",
        ))
    }

    fn route(&mut self, request: &RouteRequest) -> PortResult<()> {
        let now = self.now;
        let Some(id) = self.find_source_id(&request.source) else {
            return Ok(());
        };
        self.sync(&id);
        let target = self
            .clusters
            .iter()
            .find(|(_, c)| {
                c.view
                    .writer_endpoint
                    .as_ref()
                    .is_some_and(|e| e.address == request.endpoint)
            })
            .map(|(n, c)| {
                (
                    n.clone(),
                    c.view.replication_source.is_some() || c.view.status != "available",
                    c.took_writes_at.is_some(),
                )
            });
        match target {
            Some((name, unpromoted, took_writes)) => {
                if unpromoted {
                    self.violation(format!(
                        "traffic of {id} routed to {name}, which is not a promoted cluster"
                    ));
                }
                // Every write the source acknowledged must be on the target that now takes the
                // traffic (a promoted target that is rolled back instead loses nothing).
                let acked = self.sources[&id].acked;
                if let Some(p) = self.sources[&id].promoted_seq
                    && acked > p
                    && !took_writes
                {
                    self.violation(format!(
                            "acknowledged write lost: {id} acknowledged writes up to #{acked}, the promoted target {name} that now takes its traffic holds only up to #{p}"
                        ));
                }
                let c = self.clusters.get_mut(&name).expect("found");
                c.took_writes_at.get_or_insert(now);
                let s = self.sources.get_mut(&id).expect("found");
                s.route_called_at.get_or_insert(now);
                s.routed_at.get_or_insert(now);
                self.log(|| format!("{id}: traffic routed to {name}"));
            }
            None => self.log(|| format!("{id}: traffic routed to {}", request.endpoint)),
        }
        Ok(())
    }

    // ----- store -------------------------------------------------------------------------

    fn load(&mut self, id: &MigrationId) -> Option<Migration> {
        if self.store_mode == StoreMode::IgnoresVersion
            && self.world_rng.chance(0.3)
            && let Some(old) = self.store_previous.get(id)
        {
            return Some(old.clone());
        }
        self.store.get(id).cloned()
    }

    fn latest(&mut self, resource_id: &str) -> Option<Migration> {
        let newest = self
            .store
            .keys()
            .filter(|k| k.resource_id == resource_id)
            .max_by_key(|k| k.attempt)
            .cloned()?;
        self.load(&newest)
    }

    fn save(&mut self, m: &Migration) -> Result<u64, StoreError> {
        let stored = self.store.get(&m.id).cloned();
        let current = stored.as_ref().map_or(0, |s| s.version);
        if self.store_mode == StoreMode::Conditional && current != m.version {
            return Err(StoreError::VersionConflict {
                expected: m.version,
            });
        }
        // World check: a write must never undo what a newer write recorded (a lost update).
        if let Some(prev) = &stored {
            let p = &prev.progress;
            let n = &m.progress;
            let lost = [
                (
                    "quarantined_at",
                    p.quarantined_at.is_some() && n.quarantined_at.is_none(),
                ),
                (
                    "promote_requested_at",
                    p.promote_requested_at.is_some() && n.promote_requested_at.is_none(),
                ),
                (
                    "route_requested_at",
                    p.route_requested_at.is_some() && n.route_requested_at.is_none(),
                ),
                (
                    "verification_passed_at",
                    p.verification_passed_at.is_some() && n.verification_passed_at.is_none(),
                ),
                (
                    "source_delete_requested_at",
                    p.source_delete_requested_at.is_some()
                        && n.source_delete_requested_at.is_none(),
                ),
            ];
            // Backwards along the happy path (exits to RollingBack, Paused and the terminal
            // phases aside): the write was decided from an older record.
            let on_path = |p: Phase| p <= Phase::Completed;
            let regress = on_path(prev.phase) && on_path(m.phase) && m.phase < prev.phase
                || (prev.phase.is_terminal() && !transition_allowed(prev.phase, m.phase));
            if let Some((field, _)) = lost.iter().find(|(_, l)| *l) {
                self.violation(format!(
                    "lost update on {}: a write from version {} erased {field} recorded by version {current}",
                    m.id, m.version
                ));
            } else if regress {
                self.violation(format!(
                    "lost update on {}: a write from version {} moved the record back from {} to {}",
                    m.id, m.version, prev.phase, m.phase
                ));
            }
        }
        let phase_before = stored.as_ref().map(|s| s.phase);
        let version = current + 1;
        let mut new = m.clone();
        new.version = version;
        if phase_before != Some(new.phase) {
            let label = format!("{} {}", new.source_identifier, new.id.attempt);
            let phase = new.phase;
            let err = new.last_error.clone();
            self.log(|| match (phase, err) {
                (Phase::Failed | Phase::RolledBack | Phase::RollingBack, Some(e)) => {
                    format!("{label}: phase → {phase} ({e})")
                }
                _ => format!("{label}: phase → {phase}"),
            });
        }
        if let Some(old) = self.store.insert(m.id.clone(), new) {
            self.store_previous.insert(m.id.clone(), old);
        }
        Ok(version)
    }
}

// ----- the ports ---------------------------------------------------------------------------

/// A handle on the shared world state; it implements every port trait.
#[derive(Clone)]
pub struct SimPort {
    pub state: Arc<Mutex<State>>,
}

impl SimPort {
    pub fn new(state: State) -> Self {
        SimPort {
            state: Arc::new(Mutex::new(state)),
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One call to the fake AWS: counts it, waits its latency in virtual time, applies the
    /// fault the plan draws for it, and runs `f` against the world when the request lands.
    async fn call<T>(
        &self,
        op: &'static str,
        mutating: bool,
        f: impl FnOnce(&mut State) -> PortResult<T>,
    ) -> PortResult<T> {
        let (latency, fault, start) = {
            let mut s = self.lock();
            let (l, f) = s.begin_call(op, mutating);
            (l, f, s.now)
        };
        if fault == CallFault::CrashBefore {
            return self.crash(op).await;
        }
        Delay {
            port: self,
            until: start + latency,
        }
        .await;
        let answer = {
            let mut s = self.lock();
            match fault {
                CallFault::Error(kind) => Some(Err(PortError::new(kind, op, "injected fault"))),
                CallFault::LostAnswer => {
                    let _ = f(&mut s);
                    Some(Err(PortError::new(
                        ErrorKind::Retryable,
                        op,
                        "timed out waiting for the answer (the request was performed)",
                    )))
                }
                CallFault::CrashAfter => {
                    let _ = f(&mut s);
                    None
                }
                CallFault::None | CallFault::Slow(_) | CallFault::CrashBefore => Some(f(&mut s)),
            }
        };
        match answer {
            Some(a) => a,
            None => self.crash(op).await,
        }
    }

    /// The process dies: this future never completes; the executor drops every in-flight
    /// message handler and restarts the agent.
    async fn crash<T>(&self, op: &'static str) -> T {
        {
            let mut s = self.lock();
            s.crashed = true;
            s.log(|| format!("CRASH of the agent process during {op}"));
        }
        std::future::pending().await
    }
}

/// Waits until virtual time reaches `until`; registers the wake-up with the executor.
struct Delay<'a> {
    port: &'a SimPort,
    until: Ms,
}

impl Future for Delay<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
        let mut s = self.port.lock();
        if s.now >= self.until {
            Poll::Ready(())
        } else {
            let task = s.current_task;
            let until = self.until;
            s.task_wakes.insert(task, until);
            Poll::Pending
        }
    }
}

impl SimPort {
    /// The adapter's shared describe (`FleetCache`): refreshes the fleet snapshot (every page
    /// of 100) when it is older than its TTL, then says whether it can answer for `name`: not
    /// when the agent changed `name` after the snapshot started.
    async fn served_by_snapshot(&self, op: &'static str, name: &str) -> PortResult<bool> {
        loop {
            let (expired, refreshing, pages, now) = {
                let s = self.lock();
                let expired = s
                    .fleet_snapshot_at
                    .get(op)
                    .is_none_or(|at| s.now - at >= DESCRIBE_TTL);
                let items = if op == DESCRIBE_INSTANCES {
                    s.sources.len() + s.clusters.len()
                } else {
                    s.clusters.len()
                };
                let refreshing = s.fleet_refreshing.contains(op);
                (expired, refreshing, items.div_ceil(100).max(1), s.now)
            };
            if !expired {
                break;
            }
            if refreshing {
                Delay {
                    port: self,
                    until: now + 100,
                }
                .await;
                continue;
            }
            self.lock().fleet_refreshing.insert(op);
            let mut fetched = Ok(());
            for _ in 0..pages {
                fetched = self.call(op, false, |_| Ok(())).await;
                if fetched.is_err() {
                    break;
                }
            }
            let mut s = self.lock();
            s.fleet_refreshing.remove(op);
            fetched?;
            s.fleet_snapshot_at.insert(op, now);
            s.touched.retain(|(o, _), t| *o != op || *t >= now);
            break;
        }
        let s = self.lock();
        let at = s.fleet_snapshot_at.get(op).copied().unwrap_or(Ms::MAX);
        Ok(s.touched
            .get(&(op, resource_key(name)))
            .is_none_or(|t| *t < at))
    }

    /// A mutating RDS call; its resources are then described directly until the next snapshot.
    async fn mutate<T>(
        &self,
        op: &'static str,
        names: &[&str],
        f: impl FnOnce(&mut State) -> PortResult<T>,
    ) -> PortResult<T> {
        let r = self.call(op, true, f).await;
        let mut s = self.lock();
        let now = s.now;
        for name in names {
            for describe in [DESCRIBE_INSTANCES, DESCRIBE_CLUSTERS] {
                s.touched.insert((describe, resource_key(name)), now);
            }
        }
        r
    }
}

/// `arn:…:db:orders-pg` and `orders-pg` name the same resource; RDS ignores case.
fn resource_key(name: &str) -> String {
    name.rsplit(':').next().unwrap_or(name).to_ascii_lowercase()
}

impl Rds for SimPort {
    async fn describe_source(&self, instance: &str) -> PortResult<Observed<SourceInstance>> {
        if self
            .served_by_snapshot(DESCRIBE_INSTANCES, instance)
            .await?
        {
            let r = self.lock().describe_source(instance)?;
            // Not in the snapshot: the adapter asks for it by name.
            if !matches!(r, Observed::Absent) {
                return Ok(r);
            }
        }
        self.call(DESCRIBE_INSTANCES, false, |s| s.describe_source(instance))
            .await
    }

    async fn list_tagged_sources(&self, tag_key: &str) -> PortResult<Vec<SourceInstance>> {
        self.served_by_snapshot(DESCRIBE_INSTANCES, "").await?;
        Ok(self.lock().list_tagged(tag_key))
    }

    async fn describe_target(&self, cluster: &str) -> PortResult<Observed<TargetCluster>> {
        if self.served_by_snapshot(DESCRIBE_CLUSTERS, cluster).await? {
            let r = self.lock().describe_target(cluster);
            if !matches!(r, Observed::Absent) {
                return Ok(r);
            }
        }
        self.call(DESCRIBE_CLUSTERS, false, |s| Ok(s.describe_target(cluster)))
            .await
    }

    async fn parameter_groups_present(
        &self,
        cluster_group: &str,
        instance_group: &str,
    ) -> PortResult<ParameterGroupsPresent> {
        self.call("rds:DescribeDBClusterParameterGroups", false, |s| {
            Ok(ParameterGroupsPresent {
                cluster: s.parameter_groups.contains(cluster_group),
                instance: s.parameter_groups.contains(instance_group),
            })
        })
        .await
    }

    async fn preflight_inputs(&self, source: &SourceInstance) -> PortResult<PreflightInputs> {
        for op in [
            "rds:DescribeDBEngineVersions",
            "rds:DescribeDBParameters",
            "rds:DescribeEngineDefaultClusterParameters",
            "rds:DescribeEngineDefaultParameters",
            "rds:DescribePendingMaintenanceActions",
            "kms:DescribeKey",
            "cloudwatch:GetMetricData",
        ] {
            self.call(op, false, |_| Ok(())).await?;
        }
        self.call("rds:DescribeAccountAttributes", false, |s| {
            Ok(s.preflight_inputs(source))
        })
        .await
    }

    async fn account_quotas(&self) -> PortResult<Vec<Quota>> {
        self.call("rds:DescribeAccountAttributes", false, |s| Ok(s.quotas()))
            .await
    }

    async fn describe_snapshot(&self, snapshot: &str) -> PortResult<Observed<Snapshot>> {
        self.call("rds:DescribeDBSnapshots", false, |s| {
            Ok(match s.snapshots.get(snapshot) {
                Some((instance, status, at)) => Observed::Present(Snapshot {
                    identifier: snapshot.to_string(),
                    status: status.clone(),
                    instance: instance.clone(),
                    created_at: Some(s.ts(*at)),
                }),
                None => Observed::Absent,
            })
        })
        .await
    }

    async fn instance_events(
        &self,
        instance: &str,
        since: Timestamp,
    ) -> PortResult<Vec<InstanceEvent>> {
        self.call("rds:DescribeEvents", false, |s| {
            let since = s.ms(since);
            let now = s.now;
            Ok(s.events
                .iter()
                .filter(|(vis, at, id, _)| id == instance && *at >= since && *vis <= now)
                .map(|(_, at, _, msg)| InstanceEvent {
                    at: s.ts(*at),
                    kind: InstanceEventKind::from_message(msg),
                })
                .collect())
        })
        .await
    }

    async fn ensure_parameter_groups(&self, spec: &ParameterGroupsSpec) -> PortResult<()> {
        self.call("rds:CreateDBClusterParameterGroup", true, |s| {
            s.parameter_groups.insert(spec.cluster_group.clone());
            Ok(())
        })
        .await?;
        self.call("rds:CreateDBParameterGroup", true, |s| {
            s.parameter_groups.insert(spec.instance_group.clone());
            Ok(())
        })
        .await
    }

    async fn create_replica_cluster(&self, spec: &ReplicaClusterSpec) -> PortResult<()> {
        self.mutate("rds:CreateDBCluster", &[&spec.cluster], |s| {
            s.create_replica_cluster(spec)
        })
        .await
    }

    async fn create_writer_instance(&self, spec: &WriterInstanceSpec) -> PortResult<()> {
        self.mutate(
            "rds:CreateDBInstance",
            &[&spec.instance, &spec.cluster],
            |s| s.create_writer(spec),
        )
        .await
    }

    async fn set_source_groups(&self, instance: &str, group_ids: &[String]) -> PortResult<()> {
        self.mutate("rds:ModifyDBInstance", &[instance], |s| {
            s.set_source_groups(instance, group_ids)
        })
        .await
    }

    async fn reboot_instance(&self, instance: &str) -> PortResult<()> {
        self.mutate("rds:RebootDBInstance", &[instance], |s| s.reboot(instance))
            .await
    }

    async fn promote_target(&self, cluster: &str) -> PortResult<()> {
        self.mutate("rds:PromoteReadReplicaDBCluster", &[cluster], |s| {
            s.promote(cluster)
        })
        .await
    }

    async fn set_target_groups(&self, cluster: &str, group_ids: &[String]) -> PortResult<()> {
        self.mutate("rds:ModifyDBCluster", &[cluster], |s| {
            match s.clusters.get_mut(cluster) {
                Some(c) => {
                    c.view.security_groups = group_ids
                        .iter()
                        .map(|g| GroupMembership {
                            id: g.clone(),
                            status: "active".to_string(),
                        })
                        .collect();
                    Ok(())
                }
                None => Err(PortError::new(
                    ErrorKind::NotFound,
                    "rds:ModifyDBCluster",
                    "DBClusterNotFoundFault",
                )),
            }
        })
        .await
    }

    async fn delete_target(&self, cluster: &str, _writer: &str) -> PortResult<()> {
        self.mutate("rds:DeleteDBCluster", &[cluster], |s| {
            s.delete_target(cluster)
        })
        .await
    }

    async fn disable_deletion_protection(&self, instance: &str) -> PortResult<()> {
        self.mutate("rds:ModifyDBInstance", &[instance], |s| {
            if let Some(src) = s.sources.get_mut(instance) {
                src.view.deletion_protection = false;
            }
            Ok(())
        })
        .await
    }

    async fn delete_source(&self, instance: &str, final_snapshot: &str) -> PortResult<()> {
        self.mutate("rds:DeleteDBInstance", &[instance], |s| {
            s.delete_source(instance, final_snapshot)
        })
        .await
    }

    async fn set_tags(&self, arn: &str, tags: &BTreeMap<String, String>) -> PortResult<()> {
        self.mutate("rds:AddTagsToResource", &[arn], |s| s.set_tags(arn, tags))
            .await
    }
}

impl Network for SimPort {
    /// The simulated fleet declares no CDC consumers: nothing to locate.
    async fn locate_groups(&self, _ids: &[String]) -> PortResult<Vec<GroupLocation>> {
        self.call("ec2:DescribeSecurityGroups", false, |_| Ok(Vec::new()))
            .await
    }

    async fn describe_group(
        &self,
        vpc_id: &str,
        name: &str,
    ) -> PortResult<Observed<SecurityGroup>> {
        self.call("ec2:DescribeSecurityGroups", false, |s| {
            Ok(s.groups
                .values()
                .find(|g| g.vpc == vpc_id && g.view.name == name)
                .map_or(Observed::Absent, |g| Observed::Present(g.view.clone())))
        })
        .await
    }

    async fn ensure_quarantine_group(&self, spec: &QuarantineGroupSpec) -> PortResult<String> {
        let existing = self
            .call("ec2:CreateSecurityGroup", true, |s| {
                if let Some(g) = s
                    .groups
                    .values()
                    .find(|g| g.vpc == spec.vpc_id && g.view.name == spec.name)
                {
                    return Ok(g.view.id.clone());
                }
                let id = format!("sg-q{:05}", s.next_group);
                s.next_group += 1;
                s.groups.insert(
                    id.clone(),
                    Group {
                        view: SecurityGroup {
                            id: id.clone(),
                            name: spec.name.clone(),
                            ingress_sources: Vec::new(),
                            // A new group allows all egress until it is revoked.
                            egress_rules: 1,
                        },
                        vpc: spec.vpc_id.clone(),
                    },
                );
                Ok(id)
            })
            .await?;
        self.call("ec2:RevokeSecurityGroupEgress", true, |s| {
            if let Some(g) = s.groups.get_mut(&existing) {
                g.view.egress_rules = 0;
                g.view.ingress_sources = spec.allow_from.clone();
            }
            Ok(existing.clone())
        })
        .await
    }

    async fn delete_group(&self, group_id: &str) -> PortResult<()> {
        self.call("ec2:DeleteSecurityGroup", true, |s| {
            let in_use = s.sources.values().any(|src| {
                src.deleted_at.is_none()
                    && src.view.security_groups.iter().any(|g| g.id == group_id)
            }) || s
                .clusters
                .values()
                .any(|c| c.view.security_groups.iter().any(|g| g.id == group_id));
            if in_use {
                return Err(PortError::new(
                    ErrorKind::Conflict,
                    "ec2:DeleteSecurityGroup",
                    "DependencyViolation",
                ));
            }
            match s.groups.remove(group_id) {
                Some(_) => Ok(()),
                None => Err(PortError::new(
                    ErrorKind::NotFound,
                    "ec2:DeleteSecurityGroup",
                    "InvalidGroup.NotFound",
                )),
            }
        })
        .await
    }
}

impl Metrics for SimPort {
    async fn fetch(&self, queries: &[MetricQuery]) -> PortResult<Vec<Vec<Datapoint>>> {
        for _ in 1..queries.len().div_ceil(500) {
            self.call("cloudwatch:GetMetricData", false, |_| Ok(()))
                .await?;
        }
        self.call("cloudwatch:GetMetricData", false, |s| {
            let now = s.now;
            Ok(queries
                .iter()
                .map(|q| {
                    s.metrics
                        .get(&(q.instance.clone(), q.key))
                        .map(|series| {
                            series
                                .iter()
                                .filter(|(vis, p)| {
                                    *vis <= now && p.start >= q.start && p.start < q.end
                                })
                                .map(|(_, p)| *p)
                                .collect()
                        })
                        .unwrap_or_default()
                })
                .collect())
        })
        .await
    }

    async fn put_heartbeat(&self, _migration: &str) -> PortResult<()> {
        self.call("cloudwatch:PutMetricData", true, |_| Ok(()))
            .await
    }

    async fn ensure_heartbeat_alarm(&self, alarm: &str, _migration: &str) -> PortResult<()> {
        self.call("cloudwatch:PutMetricAlarm", true, |s| {
            s.alarms.insert(alarm.to_string());
            Ok(())
        })
        .await
    }

    async fn delete_alarm(&self, alarm: &str) -> PortResult<()> {
        self.call("cloudwatch:DeleteAlarms", true, |s| {
            s.alarms.remove(alarm);
            Ok(())
        })
        .await
    }
}

impl Notifier for SimPort {
    async fn publish(&self, note: &Notification) -> PortResult<()> {
        // The execution guard refused an irreversible action: the machine asked for something
        // unsafe. Nothing happened in the world, but it is a bug all the same.
        if note.event == "safety-refusal" {
            self.lock().violation(format!(
                "{}: refused at execution: {}",
                note.db_instance, note.description
            ));
        }
        self.call("sns:Publish", true, |s| {
            let now = s.now;
            if note.severity >= Severity::Warning || note.event != "phase-change" {
                let (sev, db, title) =
                    (note.severity, note.db_instance.clone(), note.title.clone());
                s.log(|| format!("{db}: notification [{}] {title}", sev.as_str()));
            }
            if note.severity == Severity::Error {
                s.error_notified.insert(note.db_instance.clone());
            }
            s.notes.push((now, note.clone()));
            Ok(())
        })
        .await
    }
}

impl Queue for SimPort {
    async fn receive(
        &self,
        _max: u32,
        _wait_s: u32,
        _visibility_s: u32,
    ) -> PortResult<Vec<QueueMessage>> {
        // The executor plays the agent's receive loop; the agent itself never receives.
        Ok(Vec::new())
    }

    async fn delete(&self, receipt: &str) -> PortResult<()> {
        self.call("sqs:DeleteMessage", true, |s| {
            s.queue.delete(receipt);
            Ok(())
        })
        .await
    }

    async fn extend_visibility(&self, receipt: &str, seconds: u32) -> PortResult<()> {
        self.call("sqs:ChangeMessageVisibility", true, |s| {
            let now = s.now;
            s.queue.extend(receipt, now, seconds);
            Ok(())
        })
        .await
    }

    async fn send(&self, body: &str, delay_s: u32) -> PortResult<()> {
        self.call("sqs:SendMessage", true, |s| {
            let now = s.now;
            s.queue.send(body, now, i64::from(delay_s.min(900)) * SEC);
            Ok(())
        })
        .await
    }
}

impl StateStore for SimPort {
    async fn load(&self, id: &MigrationId) -> PortResult<Option<Migration>> {
        self.call("dynamodb:GetItem", false, |s| Ok(s.load(id)))
            .await
    }

    async fn latest(&self, resource_id: &str) -> PortResult<Option<Migration>> {
        self.call("dynamodb:Query", false, |s| Ok(s.latest(resource_id)))
            .await
    }

    async fn save(&self, m: &Migration) -> Result<u64, StoreError> {
        let mut outcome = None;
        let r = self
            .call("dynamodb:PutItem", true, |s| {
                outcome = Some(s.save(m));
                Ok(())
            })
            .await;
        match (r, outcome) {
            (Ok(()), Some(o)) => o,
            (Err(e), _) => Err(StoreError::Port(e)),
            (Ok(()), None) => unreachable!("the call ran its closure"),
        }
    }

    async fn list(&self) -> PortResult<Vec<Migration>> {
        self.call("dynamodb:Scan", false, |s| {
            let ids: Vec<MigrationId> = s.store.keys().cloned().collect();
            Ok(ids.iter().filter_map(|id| s.load(id)).collect())
        })
        .await
    }

    async fn fleet_paused(&self) -> PortResult<bool> {
        self.call("dynamodb:GetItem", false, |s| Ok(s.fleet_paused))
            .await
    }

    async fn set_fleet_paused(&self, paused: bool) -> PortResult<()> {
        self.call("dynamodb:PutItem", true, |s| {
            s.fleet_paused = paused;
            Ok(())
        })
        .await
    }
}

impl Router for SimPort {
    async fn route(&self, request: &RouteRequest) -> PortResult<()> {
        self.call("router:Webhook", true, |s| s.route(request))
            .await
    }

    async fn smoke_test(&self, _request: &RouteRequest) -> PortResult<()> {
        self.call("router:SmokeTest", false, |_| Ok(())).await
    }
}

impl Clock for SimPort {
    fn now(&self) -> Timestamp {
        let s = self.lock();
        s.ts(s.now)
    }

    async fn sleep(&self, d: std::time::Duration) {
        let until = self.lock().now + d.as_millis() as Ms;
        Delay { port: self, until }.await;
    }
}

/// The bundle the agent is generic over.
pub struct SimWorld {
    pub port: SimPort,
}

impl World for SimWorld {
    type Rds = SimPort;
    type Network = SimPort;
    type Metrics = SimPort;
    type Notifier = SimPort;
    type Queue = SimPort;
    type Store = SimPort;
    type Router = SimPort;
    type Clock = SimPort;
    fn rds(&self) -> &SimPort {
        &self.port
    }
    fn network(&self) -> &SimPort {
        &self.port
    }
    fn metrics(&self) -> &SimPort {
        &self.port
    }
    fn notifier(&self) -> &SimPort {
        &self.port
    }
    fn queue(&self) -> &SimPort {
        &self.port
    }
    fn store(&self) -> &SimPort {
        &self.port
    }
    fn router(&self) -> &SimPort {
        &self.port
    }
    fn clock(&self) -> &SimPort {
        &self.port
    }
}
