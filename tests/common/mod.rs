//! Fixtures for the core's tests: a healthy source, preflight inputs, and a small synchronous
//! model of the world that answers the phase machine's actions the way AWS would.
//!
//! The model is deliberately simple (everything happens at once, metrics are derived from the
//! state); the simulator (`src/sim`) is the detailed one. Here it serves table and property
//! tests of the pure core.
#![allow(dead_code)]

#[path = "source_fixture.rs"]
mod source_fixture;
pub use source_fixture::healthy_source;

use std::collections::BTreeMap;

use aurora_migrator::core::action::{
    Action, ActionError, ActionKey, ActionOutput, ActionResult, ErrorKind,
};
use aurora_migrator::core::database::{
    ClientSession, Fingerprint, Lsn, SequenceState, SqlPreflight, TableFacts,
};
use aurora_migrator::core::machine::Decision;
use aurora_migrator::core::machine::results::feeds_back;
use aurora_migrator::core::migration::{Migration, MigrationId};
use aurora_migrator::core::needs::needs;
use aurora_migrator::core::observation::*;
use aurora_migrator::core::policy::{CutoverPolicy, Policy};
use aurora_migrator::core::router::{
    DnsRecord, PoolerEntry, RouteProgress, RouterChoice, RouterView,
};
use aurora_migrator::core::{Phase, invariants, step};
use jiff::{SignedDuration, Timestamp};

pub const ARN: &str = "arn:aws:rds:us-east-1:123456789012:db:orders-pg";
pub const RESOURCE_ID: &str = "db-ORDERS0123456789";

pub fn t0() -> Timestamp {
    "2026-11-25T10:00:00Z".parse().unwrap()
}

pub fn source() -> SourceInstance {
    let tags = [
        ("aurora-migration", "start"),
        ("aurora-migration:ack-unlogged-tables", "true"),
        ("team", "orders"),
    ]
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .into();
    SourceInstance {
        storage_encrypted: true,
        kms_key_id: Some("arn:aws:kms:us-east-1:123456789012:key/abcd".into()),
        tags,
        ..healthy_source("orders-pg", ARN, RESOURCE_ID)
    }
}

pub fn preflight_inputs() -> PreflightInputs {
    let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    PreflightInputs {
        aurora_versions: vec![
            EngineVersion {
                version: "15.3".into(),
                family: "aurora-postgresql15".into(),
            },
            EngineVersion {
                version: "15.4".into(),
                family: "aurora-postgresql15".into(),
            },
            EngineVersion {
                version: "15.6".into(),
                family: "aurora-postgresql15".into(),
            },
            EngineVersion {
                version: "16.2".into(),
                family: "aurora-postgresql16".into(),
            },
        ],
        source_parameters: vec![
            Parameter {
                name: "work_mem".into(),
                value: "65536".into(),
            },
            Parameter {
                name: "log_min_duration_statement".into(),
                value: "500".into(),
            },
            Parameter {
                name: "shared_preload_libraries".into(),
                value: "pg_stat_statements".into(),
            },
        ],
        aurora_cluster_parameters: names(&[
            "log_min_duration_statement",
            "shared_preload_libraries",
            "rds.logical_replication",
            "rds.force_ssl",
        ]),
        aurora_instance_parameters: names(&["work_mem", "log_min_duration_statement"]),
        aurora_static_parameters: names(&["shared_preload_libraries", "rds.logical_replication"]),
        pending_maintenance: vec![],
        quotas: vec![
            Quota {
                name: "DBClusters".into(),
                used: 3,
                max: 40,
            },
            Quota {
                name: "DBInstances".into(),
                used: 10,
                max: 40,
            },
            Quota {
                name: "ManualSnapshots".into(),
                used: 5,
                max: 100,
            },
        ],
        kms_key: aurora_migrator::core::observation::KeyCheck::Usable,
        free_storage_bytes: Some(150.0 * GIB),
        cdc_consumer_groups: None,
        database: None,
        aurora_extensions: Some(names(&[
            "plpgsql",
            "pg_stat_statements",
            "pg_cron",
            "pgcrypto",
            "citext",
            "postgis",
            "vector",
        ])),
        router_view: None,
    }
}

pub const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

pub fn policy() -> Policy {
    Policy {
        cutover: CutoverPolicy::Automatic,
        ..Policy::default()
    }
}

pub fn migration() -> Migration {
    Migration::new(
        MigrationId {
            resource_id: RESOURCE_ID.into(),
            attempt: 1,
        },
        "orders-pg",
        ARN,
        t0(),
    )
}

pub fn point(start: Timestamp, value: f64) -> Datapoint {
    Datapoint {
        start,
        period_s: 60,
        minimum: value,
        maximum: value,
        average: value,
    }
}

/// A membership in the group `id` that is in force.
pub fn active_group(id: &str) -> GroupMembership {
    GroupMembership {
        id: id.into(),
        status: "active".into(),
    }
}

/// A synchronous model of AWS that applies the machine's actions at once.
#[derive(Clone, Debug)]
pub struct Model {
    pub now: Timestamp,
    pub source: Option<SourceInstance>,
    pub target: Option<TargetCluster>,
    pub quarantine: Option<SecurityGroup>,
    pub parameter_groups: bool,
    pub snapshot: Option<Snapshot>,
    pub events: Vec<InstanceEvent>,
    /// Events of the Aurora writer (its fence's reboot).
    pub writer_events: Vec<InstanceEvent>,
    pub restarted_at: Option<Timestamp>,
    pub routed_to: Option<String>,
    pub fleet_paused: bool,
    /// The agent has no cutover turn for the migration (`agent::turns`).
    pub no_cutover_turn: bool,
    /// The agent has no preparation turn for the migration (`agent::turns`).
    pub no_preparation_turn: bool,
    /// Without a turn: how many wait ahead of it.
    pub turns_ahead: usize,
    /// A stale logical slot keeps the slot lag high.
    pub stale_slot: bool,
    /// A client outside the data access layer writes to the source after cutover.
    pub stray_writer: bool,
    pub clusters_created: u32,
    pub promotions: u32,
    pub reboots: u32,
    pub notifications: Vec<aurora_migrator::core::notification::Notification>,
    pub tags: BTreeMap<String, BTreeMap<String, String>>,
    /// Every phase mirrored to each ARN, in order.
    pub mirrored: BTreeMap<String, Vec<Phase>>,
    /// Outcomes of the last round's actions, heard with the next observation.
    pub pending: Vec<ActionResult>,
    /// Inside the databases, where the agent has access (`Model::with_database`).
    pub db: Option<ModelDb>,
    /// What RDS's `rds.allowed_extensions` of the Aurora family allows, as preflight reads it
    /// (`None`: RDS gave no list).
    pub aurora_extensions: Option<Vec<String>>,
    /// A Route 53 record the applications connect to (routes of the `route53` router).
    pub route53: Option<ModelRoute53>,
    /// A PgBouncer entry the applications connect to (routes of the `pgbouncer` router), as
    /// its companion reads it; whether its clients are held (paused) now; and each hold,
    /// release and route through it with whether the source was quarantined then.
    pub pooler: Option<PoolerEntry>,
    pub clients_held: bool,
    pub pooler_log: Vec<(ActionKey, bool)>,
}

/// Route 53 as the router sees it: every UPSERT is a change `PENDING` for `propagation` (`None`:
/// forever), then `INSYNC`; the record's value changes at once.
#[derive(Clone, Debug, Default)]
pub struct ModelRoute53 {
    pub propagation: Option<SignedDuration>,
    /// The record as preflight reads it (its value follows the routes).
    pub record: Option<DnsRecord>,
    /// The record's value.
    pub value: String,
    /// Every change: its id, when it is in sync (`None`: never), the value it set.
    pub changes: Vec<(String, Option<Timestamp>, String)>,
}

/// The source and replica as SQL shows them (database-aware cutover).
#[derive(Clone, Debug, Default)]
pub struct ModelDb {
    /// Client sessions on the source.
    pub sessions: Vec<ClientSession>,
    /// A client reconnects at once after its session is ended (a hole in the quarantine).
    pub reconnects: bool,
    /// Terminating does not end the sessions.
    pub stuck: bool,
    /// Reads fail (the route or the credentials are gone).
    pub unreachable: bool,
    /// Reads of the Aurora writer fail (no route from the agent to the cluster).
    pub target_unreachable: bool,
    /// The source's WAL position.
    pub wal: u64,
    /// The replica stops replaying at this position (`None`: it keeps up with `wal`).
    pub replay_stuck_at: Option<u64>,
    /// What the SQL preflight answers (`None`: as if nothing could be read).
    pub preflight: Option<Result<SqlPreflight, String>>,
    pub fences: u32,
    pub ended: u32,
    /// The source's fingerprint (`None`: an empty database's).
    pub fingerprint: Option<Result<Fingerprint, String>>,
    /// Aurora's fingerprint (`None`: the same as the source's).
    pub target_fingerprint: Option<Result<Fingerprint, String>>,
    /// Client sessions on the Aurora writer (the application's, once routed there).
    pub target_sessions: Vec<ClientSession>,
    /// Terminating does not end Aurora's sessions.
    pub target_stuck: bool,
    pub target_ended: u32,
}

/// A fingerprint of a small database: one sequence, one small and one large table.
pub fn fingerprint() -> Fingerprint {
    Fingerprint {
        database: "app".into(),
        sequences: [(
            "public.orders_id_seq".to_string(),
            SequenceState {
                last_value: Some(4242),
                increment_by: 1,
                cache_size: 1,
                readable: true,
            },
        )]
        .into(),
        tables: [
            ("public.orders".to_string(), TableFacts::Rows(4242)),
            (
                "public.events".to_string(),
                TableFacts::Newest("9b2f0c1e".into()),
            ),
        ]
        .into(),
        unread: 0,
    }
}

/// A client session of the application, connected since `at`.
pub fn app_session(pid: i32, at: Timestamp) -> ClientSession {
    ClientSession {
        pid,
        user: "app".into(),
        application: "orders".into(),
        client_addr: Some("10.0.1.7".into()),
        backend_start: Some(at),
    }
}

/// The deployment-wide opt-in to database access, with the agent's group.
pub fn database_policy() -> Policy {
    Policy {
        database_access: true,
        agent_security_group: Some("sg-agent".into()),
        ..policy()
    }
}

impl Model {
    pub fn new() -> Self {
        Model {
            now: t0(),
            source: Some(source()),
            target: None,
            quarantine: None,
            parameter_groups: false,
            snapshot: None,
            events: vec![],
            writer_events: vec![],
            restarted_at: None,
            routed_to: None,
            fleet_paused: false,
            no_cutover_turn: false,
            no_preparation_turn: false,
            turns_ahead: 0,
            stale_slot: false,
            stray_writer: false,
            clusters_created: 0,
            promotions: 0,
            reboots: 0,
            notifications: vec![],
            tags: BTreeMap::new(),
            mirrored: BTreeMap::new(),
            pending: vec![],
            db: None,
            aurora_extensions: preflight_inputs().aurora_extensions,
            route53: None,
            pooler: None,
            clients_held: false,
            pooler_log: Vec::new(),
        }
    }

    /// The source grants database access through its RDS-managed master secret, and has two
    /// application sessions open.
    pub fn with_database() -> Self {
        let mut model = Model::new();
        let s = model.source.as_mut().unwrap();
        s.master_user_secret_arn =
            Some("arn:aws:secretsmanager:us-east-1:123456789012:secret:rds!db-1".into());
        s.tags.remove("aurora-migration:ack-unlogged-tables");
        s.tags.insert(
            "aurora-migration:database-access".into(),
            "master-secret".into(),
        );
        model.db = Some(ModelDb {
            sessions: vec![app_session(101, t0()), app_session(102, t0())],
            wal: 0x1000,
            preflight: Some(Ok(SqlPreflight::default())),
            ..ModelDb::default()
        });
        model
    }

    pub fn db(&mut self) -> &mut ModelDb {
        self.db.as_mut().expect("the model has a database")
    }

    /// Tags the source, as its owners would (`aurora-migration:abort` = `true`, …).
    pub fn tag_source(&mut self, key: &str, value: &str) {
        self.source
            .as_mut()
            .expect("the source exists")
            .tags
            .insert(key.into(), value.into());
    }

    pub fn quarantined(&self) -> bool {
        self.source
            .as_ref()
            .is_some_and(|s| s.group_ids() == ["sg-q"])
    }

    /// What the driver would observe for `m` now.
    pub fn observe(&self, m: &Migration, policy: &Policy) -> Observation {
        let n = needs(m, self.now, policy);
        let mut obs = Observation::default();
        fn seen<T: Clone>(x: &Option<T>) -> Observed<T> {
            x.clone().into()
        }
        if n.source {
            obs.source = seen(&self.source);
        }
        if n.target {
            obs.target = seen(&self.target);
        }
        if n.quarantine_group {
            obs.quarantine_group = seen(&self.quarantine);
        }
        if n.parameter_groups {
            obs.parameter_groups = Some(ParameterGroupsPresent {
                cluster: self.parameter_groups,
                instance: self.parameter_groups,
            });
        }
        if n.preflight {
            let mut inputs = preflight_inputs();
            // Declared CDC consumers' groups exist in the source's VPC and account.
            if let Some(consumers) = self
                .source
                .as_ref()
                .and_then(|s| s.tags.get("aurora-migration:cdc-consumers"))
            {
                inputs.cdc_consumer_groups = Some(
                    consumers
                        .split_whitespace()
                        .map(|id| GroupLocation {
                            id: id.to_string(),
                            vpc_id: "vpc-1".into(),
                            owner_id: "123456789012".into(),
                        })
                        .collect(),
                );
            }
            inputs.aurora_extensions = self.aurora_extensions.clone();
            if let Some(r53) = &self.route53 {
                inputs.router_view = Some(Ok(r53.record.clone().map(RouterView::Dns)));
            }
            if let Some(entry) = &self.pooler {
                inputs.router_view = Some(Ok(Some(RouterView::Pooler(entry.clone()))));
            }
            obs.preflight = Some(inputs);
        }
        if n.quotas {
            obs.quotas = Some(preflight_inputs().quotas);
        }
        if n.final_snapshot {
            obs.final_snapshot = seen(&self.snapshot);
        }
        let since = |events: &[InstanceEvent], t: Timestamp| -> Vec<InstanceEvent> {
            events.iter().filter(|e| e.at >= t).cloned().collect()
        };
        if let Some(t) = n.writer_events_since {
            obs.writer_events = since(&self.writer_events, t);
        }
        if let Some(t) = n.events_since {
            obs.source_events = since(&self.events, t);
        }
        // One finished CloudWatch period, the one that ended a minute ago at the latest.
        let start = self.now - SignedDuration::from_secs(120);
        let finished_since = |t: Option<Timestamp>| t.is_none_or(|t| start >= t);
        for (key, since) in n.metrics {
            let value = match key {
                MetricKey::SourceSlotLag if self.stale_slot => 5.0 * GIB,
                MetricKey::SourceSlotLag if self.restarted_at.is_some() => 0.0,
                MetricKey::SourceSlotLag => 64.0 * 1024.0 * 1024.0,
                MetricKey::SourceConnections if self.quarantined() => 0.0,
                MetricKey::SourceConnections => 40.0,
                MetricKey::SourceFreeStorage => 150.0 * GIB,
                MetricKey::SourceWalGeneration if self.stray_writer => 5.0e6,
                MetricKey::SourceWalGeneration
                    if self.quarantined() || self.routed_to.is_some() =>
                {
                    1000.0
                }
                MetricKey::SourceWalGeneration => 5.0e6,
                MetricKey::TargetReplicaLag if self.restarted_at.is_some() => 0.0,
                MetricKey::TargetReplicaLag => 2.0,
                MetricKey::SourceCpu | MetricKey::TargetCpu => 30.0,
                MetricKey::SourceWriteLatency | MetricKey::TargetWriteLatency => 0.002,
                MetricKey::SourceReadLatency | MetricKey::TargetReadLatency => 0.001,
                MetricKey::TargetWriteIops => 100.0,
                // Sessions end with the writer's restart; the quarantine keeps new ones out.
                MetricKey::TargetConnections if !self.writer_events.is_empty() => 0.0,
                MetricKey::TargetConnections => 25.0,
            };
            let restart_gate = matches!(
                key,
                MetricKey::SourceSlotLag
                    | MetricKey::SourceConnections
                    | MetricKey::TargetReplicaLag
            ) && m.phase == Phase::Draining;
            if start >= since && (!restart_gate || finished_since(self.restarted_at)) {
                obs.metrics.insert(key, vec![point(start, value)]);
            } else {
                obs.metrics.insert(key, vec![]);
            }
        }
        obs.fleet_paused = n.fleet_pause && self.fleet_paused;
        obs.no_cutover_turn = m.phase == Phase::AwaitingCutover && self.no_cutover_turn;
        obs.no_preparation_turn = m.phase == Phase::Requested && self.no_preparation_turn;
        obs.turns_ahead = self.turns_ahead;
        if let Some((_, change)) = &n.route_change {
            let r53 = self
                .route53
                .as_ref()
                .expect("only the route53 router propagates");
            let (_, in_sync, _) = r53
                .changes
                .iter()
                .find(|(id, ..)| id == change)
                .expect("a change Route 53 issued");
            obs.route_status = Some(Ok(match in_sync {
                Some(t) if self.now >= *t => RouteProgress::InEffect,
                _ => RouteProgress::Propagating {
                    change: change.clone(),
                },
            }));
        }
        if let Some(db) = &self.db {
            if n.preflight
                && let (Some(inputs), Some(source)) = (obs.preflight.as_mut(), &self.source)
                && matches!(
                    aurora_migrator::core::database::access_for(source, policy),
                    Ok(Some(_))
                )
            {
                inputs.database = db.preflight.clone();
            }
            if n.source_sessions || n.target_replay || n.consistency || n.target_sessions {
                obs.database.read_at = Some(self.now);
            }
            if n.consistency {
                let source = db.fingerprint.clone().unwrap_or_else(|| Ok(fingerprint()));
                let target = db.target_fingerprint.clone().unwrap_or(source.clone());
                obs.database.source_fingerprint = Some(source);
                obs.database.target_fingerprint = Some(target);
            }
            if n.target_sessions {
                obs.database.target_sessions = Some(if db.unreachable {
                    Err("connection refused".to_string())
                } else {
                    Ok(db.target_sessions.clone())
                });
            }
            fn unreachable<T>() -> Result<T, String> {
                Err("connection refused".to_string())
            }
            if n.source_sessions {
                obs.database.source_sessions = Some(if db.unreachable {
                    unreachable()
                } else {
                    Ok(db.sessions.clone())
                });
            }
            if n.target_replay {
                let replica = self
                    .target
                    .as_ref()
                    .is_some_and(|t| t.replication_source.is_some());
                let replayed = db.replay_stuck_at.map_or(db.wal, |at| at.min(db.wal));
                obs.database.target_replay = Some(if db.unreachable || db.target_unreachable {
                    unreachable()
                } else {
                    Ok(replica.then_some(Lsn(replayed)))
                });
            }
        }
        obs
    }

    /// Applies one action as AWS would; `fail` makes it fail with that kind instead.
    pub fn apply(&mut self, action: &Action, fail: Option<ErrorKind>) -> Option<ActionResult> {
        let key = action.key();
        let id = match action {
            Action::Notify(n) => Some(n.id()),
            _ => None,
        };
        if let Some(kind) = fail {
            return feeds_back(key, false).then(|| ActionResult {
                key,
                id,
                outcome: Err(ActionError {
                    kind,
                    message: "injected".into(),
                }),
                output: None,
            });
        }
        let mut output = None;
        match action {
            Action::EndSourceSessions { .. } => {
                let now = self.now;
                let db = self.db();
                if !db.stuck {
                    db.ended += db.sessions.len() as u32;
                    output = Some(ActionOutput::SessionsEnded(db.sessions.len() as u32));
                    db.sessions.clear();
                    if db.reconnects {
                        db.sessions.push(app_session(900 + db.ended as i32, now));
                    }
                }
            }
            Action::EndTargetSessions { .. } => {
                let db = self.db();
                if !db.target_stuck {
                    db.target_ended += db.target_sessions.len() as u32;
                    output = Some(ActionOutput::SessionsEnded(db.target_sessions.len() as u32));
                    db.target_sessions.clear();
                }
            }
            Action::WriteFence { .. } => {
                let db = self.db();
                assert!(
                    db.sessions.is_empty(),
                    "a fence written with client sessions open"
                );
                db.wal += 0x100;
                db.fences += 1;
                output = Some(ActionOutput::Fence(Lsn(db.wal)));
            }
            Action::EnsureParameterGroups(_) => self.parameter_groups = true,
            Action::EnsureQuarantineGroup(spec) => {
                self.quarantine = Some(SecurityGroup {
                    id: "sg-q".into(),
                    name: spec.name.clone(),
                    ingress_sources: spec.allow_from.clone(),
                    egress_rules: 0,
                })
            }
            Action::CreateReplicaCluster(spec) if self.target.is_some() => {
                // Idempotent, like the adapter: the same name and source is ours already.
                let t = self.target.as_ref().unwrap();
                assert_eq!(
                    t.identifier, spec.cluster,
                    "a second replica cluster was created"
                );
            }
            Action::CreateReplicaCluster(spec) => {
                self.clusters_created += 1;
                self.target = Some(TargetCluster {
                    identifier: spec.cluster.clone(),
                    arn: format!(
                        "arn:aws:rds:us-east-1:123456789012:cluster:{}",
                        spec.cluster
                    ),
                    status: "available".into(),
                    replication_source: Some(spec.source_arn.clone()),
                    tags: spec.tags.clone(),
                    writer_endpoint: Some(Endpoint {
                        address: format!("{}.cluster-x.rds.amazonaws.com", spec.cluster),
                        port: 5432,
                    }),
                    security_groups: spec
                        .security_groups
                        .iter()
                        .map(|g| active_group(g))
                        .collect(),
                    members: vec![],
                });
                if let Some(s) = &mut self.source {
                    s.aurora_replica_clusters = vec![spec.cluster.clone()];
                }
            }
            Action::CreateWriterInstance(spec) => {
                if let Some(t) = &mut self.target {
                    t.members.push(ClusterMember {
                        identifier: spec.instance.clone(),
                        status: "available".into(),
                    });
                }
            }
            Action::QuarantineSource { group_id, .. } => {
                if let Some(s) = &mut self.source {
                    s.security_groups = vec![active_group(group_id)];
                }
            }
            Action::RebootTargetWriter { .. } => {
                if let Some(db) = &mut self.db {
                    db.target_sessions.clear(); // a restart ends every session
                }
                self.writer_events.push(InstanceEvent {
                    at: self.now,
                    kind: InstanceEventKind::Restarted,
                });
            }
            Action::RestoreSourceGroups { group_ids, .. } => {
                if let Some(s) = &mut self.source {
                    s.security_groups = group_ids.iter().map(|g| active_group(g)).collect();
                }
                self.restarted_at = None;
            }
            Action::RebootSource { .. } => {
                let now = self.now;
                if let Some(db) = &mut self.db {
                    // A restart ends every session; a client with a way in comes back.
                    db.sessions.clear();
                    if db.reconnects {
                        db.sessions.push(app_session(800, now));
                    }
                }
                self.reboots += 1;
                self.restarted_at = Some(self.now);
                self.events.push(InstanceEvent {
                    at: self.now,
                    kind: InstanceEventKind::Shutdown,
                });
                self.events.push(InstanceEvent {
                    at: self.now,
                    kind: InstanceEventKind::Restarted,
                });
            }
            Action::PromoteTarget { .. } => {
                assert!(self.quarantined(), "promoted while the source takes writes");
                self.promotions += 1;
                if let Some(t) = &mut self.target {
                    t.replication_source = None;
                }
                if let Some(s) = &mut self.source {
                    s.aurora_replica_clusters.clear();
                }
            }
            Action::HoldClients(_) => {
                self.clients_held = true;
                let q = self.quarantined();
                self.pooler_log.push((ActionKey::HoldClients, q));
            }
            Action::ReleaseClients(_) => {
                self.clients_held = false;
                let q = self.quarantined();
                self.pooler_log.push((ActionKey::ReleaseClients, q));
            }
            Action::RouteTraffic(r) => {
                let now = self.now;
                if let (RouterChoice::PgBouncer { .. }, Some(entry)) = (&r.router, &mut self.pooler)
                {
                    // The companion re-points the entry and resumes.
                    entry.host = r.endpoint.clone();
                    entry.port = r.port;
                    self.clients_held = false;
                    let q = self.quarantined();
                    self.pooler_log.push((ActionKey::RouteTraffic, q));
                }
                let to_aurora = self
                    .target
                    .as_ref()
                    .and_then(|t| t.writer_endpoint.as_ref())
                    .is_some_and(|e| e.address == r.endpoint);
                if let Some(db) = &mut self.db {
                    // The application follows the route.
                    if to_aurora {
                        db.target_sessions = vec![app_session(201, now)];
                    }
                }
                self.routed_to = Some(r.endpoint.clone());
                if let (RouterChoice::Route53 { .. }, Some(r53)) = (&r.router, &mut self.route53) {
                    let change = format!("C{}", r53.changes.len() + 1);
                    let in_sync = r53.propagation.map(|p| now + p);
                    r53.value = r.endpoint.clone();
                    r53.changes
                        .push((change.clone(), in_sync, r.endpoint.clone()));
                    output = Some(ActionOutput::Route(RouteProgress::Propagating { change }));
                }
            }
            Action::QuarantineTarget { group_id, .. } => {
                if let Some(t) = &mut self.target {
                    t.security_groups = vec![active_group(group_id)];
                }
            }
            Action::DeleteTarget { .. } => {
                self.target = None;
                if let Some(s) = &mut self.source {
                    s.aurora_replica_clusters.clear();
                }
            }
            Action::DisableDeletionProtection { .. } => {
                if let Some(s) = &mut self.source {
                    s.deletion_protection = false;
                }
            }
            Action::DeleteSource {
                instance,
                final_snapshot,
            } => {
                if self
                    .snapshot
                    .as_ref()
                    .is_some_and(|s| s.identifier == *final_snapshot)
                {
                    // RDS refuses the deletion, and deletes nothing.
                    return Some(ActionResult {
                        key,
                        id,
                        outcome: Err(ActionError {
                            kind: ErrorKind::Conflict,
                            message: format!(
                                "DBSnapshotAlreadyExists: Cannot create the snapshot because a snapshot with the identifier {final_snapshot} already exists."
                            ),
                        }),
                        output: None,
                    });
                }
                self.snapshot = Some(Snapshot {
                    identifier: final_snapshot.clone(),
                    status: "available".into(),
                    instance: instance.clone(),
                    created_at: Some(self.now),
                });
                self.source = None;
            }
            Action::DeleteQuarantineGroup { .. } => self.quarantine = None,
            Action::MirrorPhaseTag { arns, phase } => {
                for arn in arns {
                    self.mirrored.entry(arn.clone()).or_default().push(*phase);
                    self.tags
                        .entry(arn.clone())
                        .or_default()
                        .insert("aurora-migration:phase".into(), phase.as_str().into());
                }
            }
            Action::MarkSource {
                arn, value, phase, ..
            } => {
                if let Some(s) = &mut self.source {
                    s.tags
                        .insert("aurora-migration:marker".into(), value.clone());
                }
                if let Some(phase) = phase {
                    self.mirrored.entry(arn.clone()).or_default().push(*phase);
                    self.tags
                        .entry(arn.clone())
                        .or_default()
                        .insert("aurora-migration:phase".into(), phase.as_str().into());
                }
            }
            Action::SetTriggerTag { value, .. } => {
                if let Some(s) = &mut self.source {
                    s.tags.insert("aurora-migration".into(), value.clone());
                }
            }
            Action::Notify(n) => self.notifications.push(n.clone()),
            Action::RunSmokeTest(_)
            | Action::EnsureHeartbeatAlarm { .. }
            | Action::DeleteHeartbeatAlarm { .. }
            | Action::PutHeartbeat { .. } => {}
        }
        feeds_back(key, true).then_some(ActionResult {
            key,
            id,
            outcome: Ok(()),
            output,
        })
    }
}

/// One round: observe (with the previous round's action outcomes), step, act. Checks the
/// invariants and the repeat rule on the way. At most one phase change per round, so tests can
/// stop at any phase; the driver instead loops within one message.
pub fn round(
    model: &mut Model,
    m: &mut Migration,
    policy: &Policy,
    fail: &mut dyn FnMut(&Action) -> Option<ErrorKind>,
) -> Decision {
    let mut obs = model.observe(m, policy);
    obs.action_results = std::mem::take(&mut model.pending);
    let d = step(m, &obs, model.now, policy);
    invariants::check(m, &obs, &d).expect("invariant");
    let mut again_obs = obs.clone();
    again_obs.action_results.clear();
    let again = step(&d.next, &again_obs, model.now, policy);
    invariants::check_repeat(&d, &again).expect("repeat rule");
    *m = d.next.clone();
    for a in &d.actions {
        let f = fail(a);
        if let Some(r) = model.apply(a, f) {
            model.pending.push(r);
        }
    }
    d
}

/// A [`round`] in which every action succeeds.
pub fn quiet_round(model: &mut Model, m: &mut Migration, policy: &Policy) -> Decision {
    round(model, m, policy, &mut |_| None)
}

/// Drives `m` with a cooperating world until it is terminal (or `max_rounds` pass).
/// Returns the phases the migration went through.
pub fn run_to_end(
    model: &mut Model,
    m: &mut Migration,
    policy: &Policy,
    max_rounds: usize,
) -> Vec<Phase> {
    for _ in 0..max_rounds {
        let d = quiet_round(model, m, policy);
        match d.wake_after {
            None if m.next_wake.is_none() => break,
            Some(w) => model.now += w.max(SignedDuration::from_secs(1)),
            None => model.now += SignedDuration::from_secs(60),
        }
        if m.phase.is_terminal() && m.next_wake.is_none() {
            break;
        }
    }
    m.history.iter().map(|h| h.phase).collect()
}

/// The kinds of the mutating actions of a decision, in order.
pub fn keys(actions: &[Action]) -> Vec<ActionKey> {
    actions
        .iter()
        .filter(|a| a.is_mutating())
        .map(Action::key)
        .collect()
}

/// A migration of the metric path in Draining whose reboot request failed with `kind`: the
/// quarantine applied, then the round that asks for the reboot sees it fail (the model does
/// not reboot).
pub fn reboot_failed_with(policy: &Policy, kind: ErrorKind) -> (Model, Migration) {
    let (mut model, mut m) = advanced_to(policy, Phase::Quiescing);
    quiet_round(&mut model, &mut m, policy);
    round(&mut model, &mut m, policy, &mut |a| {
        (a.key() == ActionKey::RebootSource).then_some(kind)
    });
    assert_eq!(m.phase, Phase::Draining, "the reboot was asked for");
    (model, m)
}

/// A fresh model and migration, run until the migration reaches `phase`.
pub fn advanced_to(policy: &Policy, phase: Phase) -> (Model, Migration) {
    let mut model = Model::new();
    let mut m = migration();
    advance_to(&mut model, &mut m, policy, phase);
    (model, m)
}

/// Replaces the observed reading of `key` with `value`, in the same period.
pub fn set_reading(obs: &mut Observation, key: MetricKey, value: f64) {
    let start = obs.metric(key)[0].start;
    obs.metrics.insert(key, vec![point(start, value)]);
}

/// Runs the model until `m` reaches `phase` (panics if it ends elsewhere).
pub fn advance_to(model: &mut Model, m: &mut Migration, policy: &Policy, phase: Phase) {
    for _ in 0..400 {
        if m.phase == phase {
            return;
        }
        let d = quiet_round(model, m, policy);
        model.now += d
            .wake_after
            .unwrap_or(SignedDuration::from_secs(60))
            .max(SignedDuration::from_secs(1));
        assert!(
            !m.phase.is_terminal() || m.phase == phase,
            "ended in {} before reaching {phase}",
            m.phase
        );
    }
    panic!("did not reach {phase}; stuck in {}", m.phase);
}
