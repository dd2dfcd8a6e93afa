//! A `World` whose RDS is a real PostgreSQL primary (the RDS instance) and a real streaming
//! standby (the Aurora replica), and whose other ports are small in-memory fakes.
//!
//! | RDS / AWS                         | here                                                   |
//! |-----------------------------------|--------------------------------------------------------|
//! | DescribeDBInstances (source)      | the primary: `SHOW server_version`, modelled groups    |
//! | CreateDBCluster (replica)         | a physical slot + `pg_basebackup -R -S <slot>`         |
//! | CreateDBInstance (writer)         | `pg_ctl start` of the standby                          |
//! | ModifyDBInstance groups           | pg_hba.conf rewritten + `pg_reload_conf()`             |
//! | ModifyDBCluster groups (Aurora)   | the same on the standby (open sessions survive)        |
//! | RebootDBInstance (source)         | `pg_ctl restart -m fast` + a "restarted" event         |
//! | RebootDBInstance (Aurora writer)  | the same on the standby; its events kept apart         |
//! | PromoteReadReplicaDBCluster       | `pg_ctl promote`                                       |
//! | DeleteDBCluster (rollback)        | stop the standby, drop its slot on the primary         |
//! | CreateDBSnapshot (final)          | `pg_dump --data-only` of the writes table              |
//! | DeleteDBInstance (source)         | `pg_ctl stop` of the primary                           |
//! | CloudWatch                        | sampled from the servers at the time of the read       |
//!
//! Metrics simplification: CloudWatch returns minute periods; this world samples the servers
//! when the agent reads and returns one datapoint with `start` = the sampling time and
//! `period_s` = 1, so "a period that starts after the restart" means "a sample taken after the
//! restart event was recorded" (the event is recorded once `pg_ctl restart` has returned).
//! `WriteIOPS` of the Aurora writer is the exception: it is read from history (see
//! `PgMetrics::target_writes`), one datapoint per `period_s` from the query's start.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aurora_migrator::core::action::{
    ParameterGroupsSpec, QuarantineGroupSpec, ReplicaClusterSpec, RouteRequest, WriterInstanceSpec,
};
use aurora_migrator::core::migration::{Migration, MigrationId};
use aurora_migrator::core::notification::Notification;
use aurora_migrator::core::observation::*;
use aurora_migrator::ports::{
    Clock, ErrorKind, MetricQuery, Metrics, Network, Notifier, PortError, PortResult, Queue,
    QueueMessage, Rds, Router, StateStore, StoreError, World,
};
use jiff::Timestamp;

use super::server::{Bins, HbaMode, PgServer, RunAs, TempRoot, connect};

pub const SOURCE_ID: &str = "orders-pg";
pub const SOURCE_ARN: &str = "arn:aws:rds:us-east-1:123456789012:db:orders-pg";
pub const RESOURCE_ID: &str = "db-ORDERSPG0123456789";
pub const APP_GROUP: &str = "sg-app";
const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// What the agent did, in order, for the assertions.
#[derive(Clone, Debug, PartialEq)]
pub struct Mutation {
    pub at: Timestamp,
    pub what: String,
}

#[derive(Clone, Debug)]
pub struct TargetState {
    pub spec: ReplicaClusterSpec,
    pub status: String,
    pub writer: Option<(String, String)>,
    pub tags: BTreeMap<String, String>,
    pub groups: Vec<String>,
    pub promoted: bool,
    pub slot: String,
}

#[derive(Debug)]
pub struct RdsState {
    pub source_status: String,
    pub source_deleted: bool,
    pub source_groups: Vec<String>,
    pub source_tags: BTreeMap<String, String>,
    pub engine_version: String,
    /// Events of the source instance.
    pub events: Vec<InstanceEvent>,
    /// Events of the Aurora writer (the standby), kept apart from the source's.
    pub writer_events: Vec<InstanceEvent>,
    pub target: Option<TargetState>,
    pub parameter_groups: BTreeSet<String>,
    pub snapshots: BTreeMap<String, (String, PathBuf, Timestamp)>,
    pub log: Vec<Mutation>,
    /// Roles that still reach the quarantined source over TCP (the negative test's leak).
    pub leaks: Vec<String>,
}

/// Everything the PostgreSQL-backed adapters share. Fields are public for the assertions.
pub struct Shared {
    pub bins: Bins,
    pub run_as: RunAs,
    pub primary: PgServer,
    pub standby: Mutex<Option<Arc<PgServer>>>,
    pub state: Mutex<RdsState>,
    /// The previous WAL position sample of the source, for TransactionLogsGeneration.
    wal_sample: Mutex<Option<(Instant, f64)>>,
    /// A broken world for the negative test: RebootDBInstance of the Aurora writer answers
    /// success but does nothing (no restart, no event).
    pub skip_writer_reboot: std::sync::atomic::AtomicBool,
    // Declared last: dropped after the servers, so their directories still exist when killed.
    pub root: TempRoot,
}

impl Shared {
    pub fn log(&self, what: impl Into<String>) {
        self.state.lock().unwrap().log.push(Mutation {
            at: Timestamp::now(),
            what: what.into(),
        });
    }

    pub fn standby(&self) -> Option<Arc<PgServer>> {
        self.standby.lock().unwrap().clone()
    }

    pub fn mutations(&self, prefix: &str) -> Vec<Mutation> {
        self.state
            .lock()
            .unwrap()
            .log
            .iter()
            .filter(|m| m.what.starts_with(prefix))
            .cloned()
            .collect()
    }

    /// The Aurora writer's instance name, once it was asked for.
    pub fn writer_name(&self) -> Option<String> {
        let s = self.state.lock().unwrap();
        s.target.as_ref()?.writer.as_ref().map(|(id, _)| id.clone())
    }

    /// Rewrites a server's pg_hba.conf for its security groups and reloads it: new TCP
    /// connections follow the file, sessions already open are not touched (as with a security
    /// group change).
    async fn apply_groups(&self, server: &PgServer, mode: &HbaMode, op: &str) -> PortResult<()> {
        server.write_hba(mode);
        // While the server restarts, the file is read at start anyway.
        if server.pid().is_some()
            && let Ok(client) = connect(&server.local()).await
        {
            client
                .execute("SELECT pg_reload_conf()", &[])
                .await
                .map_err(|e| err(ErrorKind::Retryable, op, e.to_string()))?;
        }
        Ok(())
    }

    fn target_arn(cluster: &str) -> String {
        format!("arn:aws:rds:us-east-1:123456789012:cluster:{cluster}")
    }
}

fn err(kind: ErrorKind, op: &str, msg: impl Into<String>) -> PortError {
    PortError::new(kind, op, msg)
}

/// Runs blocking server commands off the async workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .expect("blocking task panicked")
}

async fn query_f64(server: &PgServer, sql: &str) -> Result<Option<f64>, String> {
    let client = connect(&server.local()).await?;
    let row = client
        .query_one(sql, &[])
        .await
        .map_err(|e| e.to_string())?;
    row.try_get::<_, Option<f64>>(0).map_err(|e| e.to_string())
}

// ----- RDS ---------------------------------------------------------------------------------

#[derive(Clone)]
pub struct PgRds(pub Arc<Shared>);

impl PgRds {
    fn source(&self) -> Option<SourceInstance> {
        let s = self.0.state.lock().unwrap();
        if s.source_deleted {
            return None;
        }
        let aurora = s
            .target
            .as_ref()
            .filter(|t| !t.promoted)
            .map(|t| vec![t.spec.cluster.clone()])
            .unwrap_or_default();
        Some(SourceInstance {
            identifier: SOURCE_ID.into(),
            arn: SOURCE_ARN.into(),
            resource_id: RESOURCE_ID.into(),
            engine: "postgres".into(),
            engine_version: s.engine_version.clone(),
            status: s.source_status.clone(),
            instance_class: "db.r6g.large".into(),
            allocated_storage_gib: 200,
            has_pending_modifications: false,
            parameter_group: ParameterGroupMembership {
                name: "orders-pg15".into(),
                apply_status: "in-sync".into(),
            },
            backup_retention_days: 7,
            read_replicas: vec![],
            aurora_replica_clusters: aurora,
            storage_encrypted: false,
            kms_key_id: None,
            iam_auth_enabled: false,
            deletion_protection: false,
            auto_minor_version_upgrade: false,
            security_groups: s
                .source_groups
                .iter()
                .map(|g| GroupMembership {
                    id: g.clone(),
                    status: "active".into(),
                })
                .collect(),
            vpc_id: "vpc-test".into(),
            subnet_group: "db-subnets".into(),
            endpoint: Some(Endpoint {
                address: "127.0.0.1".into(),
                port: self.0.primary.port,
            }),
            multi_az: false,
            tags: s.source_tags.clone(),
        })
    }
}

/// Quarantine groups are the ones the fake network creates.
fn is_quarantine_group(id: &str) -> bool {
    id.starts_with("sg-quarantine-")
}

impl PgRds {
    /// RebootDBInstance of the source: a fast restart of the primary.
    async fn reboot_source(&self) -> PortResult<()> {
        const OP: &str = "rds:RebootDBInstance";
        self.0.log(format!("reboot_instance {SOURCE_ID}"));
        {
            let mut s = self.0.state.lock().unwrap();
            if s.source_status != "available" {
                return Err(err(
                    ErrorKind::Conflict,
                    OP,
                    "the instance is not available",
                ));
            }
            s.source_status = "rebooting".into();
            s.events.push(InstanceEvent {
                at: Timestamp::now(),
                kind: InstanceEventKind::Shutdown,
            });
        }
        let shared = self.0.clone();
        tokio::spawn(async move {
            let s2 = shared.clone();
            let result = blocking(move || s2.primary.restart_fast()).await;
            let mut s = shared.state.lock().unwrap();
            match result {
                Ok(()) => {
                    s.events.push(InstanceEvent {
                        at: Timestamp::now(),
                        kind: InstanceEventKind::Restarted,
                    });
                    s.source_status = "available".into();
                }
                Err(e) => {
                    eprintln!("restart failed: {e}");
                    s.source_status = "failed".into();
                }
            }
        });
        Ok(())
    }

    /// RebootDBInstance of the Aurora writer: a fast shutdown and start of the promoted standby,
    /// which ends every session; "shutdown" and "restarted" events of the writer.
    async fn reboot_writer(&self, writer: &str) -> PortResult<()> {
        const OP: &str = "rds:RebootDBInstance";
        let skip = self
            .0
            .skip_writer_reboot
            .load(std::sync::atomic::Ordering::Relaxed);
        self.0.log(format!(
            "reboot_instance {writer}{}",
            if skip { " (skipped by the test)" } else { "" }
        ));
        if skip {
            return Ok(());
        }
        {
            let mut s = self.0.state.lock().unwrap();
            let Some(w) = s.target.as_mut().and_then(|t| t.writer.as_mut()) else {
                return Err(err(ErrorKind::NotFound, OP, "DBInstanceNotFound"));
            };
            if w.1 != "available" {
                return Err(err(
                    ErrorKind::Conflict,
                    OP,
                    "the instance is not available",
                ));
            }
            w.1 = "rebooting".into();
            s.writer_events.push(InstanceEvent {
                at: Timestamp::now(),
                kind: InstanceEventKind::Shutdown,
            });
        }
        let standby = self
            .0
            .standby()
            .ok_or_else(|| err(ErrorKind::NotFound, OP, "no standby"))?;
        let shared = self.0.clone();
        tokio::spawn(async move {
            let result = blocking(move || standby.restart_fast()).await;
            let mut s = shared.state.lock().unwrap();
            let ok = result.is_ok();
            match result {
                Ok(()) => s.writer_events.push(InstanceEvent {
                    at: Timestamp::now(),
                    kind: InstanceEventKind::Restarted,
                }),
                Err(e) => eprintln!("writer restart failed: {e}"),
            }
            if let Some(w) = s.target.as_mut().and_then(|t| t.writer.as_mut()) {
                w.1 = if ok { "available" } else { "failed" }.into();
            }
        });
        Ok(())
    }
}

impl Rds for PgRds {
    async fn describe_source(&self, instance: &str) -> PortResult<Observed<SourceInstance>> {
        if instance != SOURCE_ID && instance != SOURCE_ARN {
            return Ok(Observed::Absent);
        }
        Ok(self.source().into())
    }

    async fn list_tagged_sources(&self, tag_key: &str) -> PortResult<Vec<SourceInstance>> {
        Ok(self
            .source()
            .filter(|s| s.tags.contains_key(tag_key))
            .into_iter()
            .collect())
    }

    async fn describe_target(&self, cluster: &str) -> PortResult<Observed<TargetCluster>> {
        let (t, standby) = {
            let s = self.0.state.lock().unwrap();
            match &s.target {
                Some(t) if t.spec.cluster == cluster => (t.clone(), self.0.standby()),
                _ => return Ok(Observed::Absent),
            }
        };
        let writer_up = t
            .writer
            .as_ref()
            .is_some_and(|(_, status)| status == "available");
        // A replica while the standby is in recovery; after promotion, no longer.
        let in_recovery = match (&standby, writer_up) {
            (Some(server), true) => {
                query_f64(
                    server,
                    "SELECT CASE WHEN pg_is_in_recovery() THEN 1.0 ELSE 0.0 END::float8",
                )
                .await
                .map_err(|e| err(ErrorKind::Retryable, "rds:DescribeDBClusters", e))?
                    == Some(1.0)
            }
            _ => !t.promoted,
        };
        Ok(Observed::Present(TargetCluster {
            identifier: t.spec.cluster.clone(),
            arn: Shared::target_arn(&t.spec.cluster),
            status: t.status.clone(),
            replication_source: in_recovery.then(|| t.spec.source_arn.clone()),
            tags: t.tags.clone(),
            writer_endpoint: standby.as_ref().map(|s| Endpoint {
                address: "127.0.0.1".into(),
                port: s.port,
            }),
            security_groups: t
                .groups
                .iter()
                .map(|g| GroupMembership {
                    id: g.clone(),
                    status: "active".into(),
                })
                .collect(),
            members: t
                .writer
                .iter()
                .map(|(id, status)| ClusterMember {
                    identifier: id.clone(),
                    status: status.clone(),
                })
                .collect(),
        }))
    }

    async fn parameter_groups_present(
        &self,
        cluster_group: &str,
        instance_group: &str,
    ) -> PortResult<ParameterGroupsPresent> {
        let s = self.0.state.lock().unwrap();
        Ok(ParameterGroupsPresent {
            cluster: s.parameter_groups.contains(cluster_group),
            instance: s.parameter_groups.contains(instance_group),
        })
    }

    async fn preflight_inputs(&self, _source: &SourceInstance) -> PortResult<PreflightInputs> {
        let version = self.0.state.lock().unwrap().engine_version.clone();
        let major = version.split('.').next().unwrap_or("15").to_string();
        let settings = async {
            let client = connect(&self.0.primary.local()).await?;
            let rows = client
                .query(
                    "SELECT name, setting FROM pg_settings WHERE name IN ('work_mem', 'log_min_duration_statement') ORDER BY name",
                    &[],
                )
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(
                rows.iter()
                    .map(|r| Parameter {
                        name: r.get(0),
                        value: r.get(1),
                    })
                    .collect::<Vec<_>>(),
            )
        }
        .await
        .map_err(|e| err(ErrorKind::Retryable, "rds:DescribeDBParameters", e))?;
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        Ok(PreflightInputs {
            aurora_versions: vec![EngineVersion {
                version: version.clone(),
                family: format!("aurora-postgresql{major}"),
            }],
            source_parameters: settings,
            aurora_cluster_parameters: names(&[
                "log_min_duration_statement",
                "shared_preload_libraries",
                "rds.logical_replication",
            ]),
            aurora_instance_parameters: names(&["work_mem", "log_min_duration_statement"]),
            aurora_static_parameters: names(&[
                "shared_preload_libraries",
                "rds.logical_replication",
            ]),
            pending_maintenance: vec![],
            quotas: quotas(),
            kms_key: Default::default(),
            free_storage_bytes: Some(FREE_STORAGE),
            cdc_consumer_groups: None,
        })
    }

    async fn account_quotas(&self) -> PortResult<Vec<Quota>> {
        Ok(quotas())
    }

    async fn describe_snapshot(&self, snapshot: &str) -> PortResult<Observed<Snapshot>> {
        let s = self.0.state.lock().unwrap();
        Ok(s.snapshots
            .get(snapshot)
            .map(|(status, _, at)| Snapshot {
                identifier: snapshot.to_string(),
                status: status.clone(),
                instance: SOURCE_ID.to_string(),
                created_at: Some(*at),
            })
            .into())
    }

    /// DescribeEvents of one instance: the source's or the Aurora writer's; none for a name
    /// that is neither.
    async fn instance_events(
        &self,
        instance: &str,
        since: Timestamp,
    ) -> PortResult<Vec<InstanceEvent>> {
        let writer = self.0.writer_name();
        let s = self.0.state.lock().unwrap();
        let events = if instance == SOURCE_ID || instance == SOURCE_ARN {
            &s.events
        } else if writer.as_deref() == Some(instance) {
            &s.writer_events
        } else {
            return Ok(Vec::new());
        };
        Ok(events.iter().filter(|e| e.at >= since).cloned().collect())
    }

    async fn ensure_parameter_groups(&self, spec: &ParameterGroupsSpec) -> PortResult<()> {
        self.0.log("ensure_parameter_groups");
        let mut s = self.0.state.lock().unwrap();
        s.parameter_groups.insert(spec.cluster_group.clone());
        s.parameter_groups.insert(spec.instance_group.clone());
        Ok(())
    }

    async fn create_replica_cluster(&self, spec: &ReplicaClusterSpec) -> PortResult<()> {
        const OP: &str = "rds:CreateDBCluster";
        self.0
            .log(format!("create_replica_cluster {}", spec.cluster));
        let slot = spec.cluster.replace('-', "_");
        {
            let mut s = self.0.state.lock().unwrap();
            if let Some(t) = &s.target {
                return if t.spec.cluster == spec.cluster {
                    Ok(()) // ours already: a repeat
                } else {
                    Err(err(ErrorKind::Conflict, OP, "another replica exists"))
                };
            }
            s.target = Some(TargetState {
                spec: spec.clone(),
                status: "creating".into(),
                writer: None,
                tags: spec.tags.clone(),
                groups: spec.security_groups.clone(),
                promoted: false,
                slot: slot.clone(),
            });
        }
        // The slot first, so the source keeps every WAL segment the copy needs.
        let client = connect(&self.0.primary.local())
            .await
            .map_err(|e| err(ErrorKind::Retryable, OP, e))?;
        client
            .execute(
                "SELECT pg_create_physical_replication_slot($1) WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)",
                &[&slot],
            )
            .await
            .map_err(|e| err(ErrorKind::Retryable, OP, e.to_string()))?;
        let standby = Arc::new(PgServer::standby_layout(
            &self.0.root.path,
            "standby",
            &self.0.bins,
            self.0.run_as,
        ));
        *self.0.standby.lock().unwrap() = Some(standby.clone());
        // The copy runs in the background: the cluster is `creating` until it is done.
        let shared = self.0.clone();
        tokio::spawn(async move {
            let from = shared.clone();
            let result = blocking(move || standby.base_backup_from(&from.primary, &slot)).await;
            let mut s = shared.state.lock().unwrap();
            if let Some(t) = s.target.as_mut() {
                t.status = match &result {
                    Ok(()) => "available".into(),
                    Err(e) => {
                        eprintln!("pg_basebackup failed: {e}");
                        "failed".into()
                    }
                };
            }
        });
        Ok(())
    }

    async fn create_writer_instance(&self, spec: &WriterInstanceSpec) -> PortResult<()> {
        const OP: &str = "rds:CreateDBInstance";
        self.0
            .log(format!("create_writer_instance {}", spec.instance));
        {
            let mut s = self.0.state.lock().unwrap();
            let Some(t) = s.target.as_mut().filter(|t| t.spec.cluster == spec.cluster) else {
                return Err(err(ErrorKind::NotFound, OP, "no such cluster"));
            };
            if t.writer.is_some() {
                return Ok(());
            }
            if t.status != "available" {
                return Err(err(ErrorKind::Conflict, OP, "the cluster is not available"));
            }
            t.writer = Some((spec.instance.clone(), "creating".into()));
        }
        let standby = self
            .0
            .standby()
            .ok_or_else(|| err(ErrorKind::NotFound, OP, "no standby"))?;
        let shared = self.0.clone();
        tokio::spawn(async move {
            let result = blocking(move || standby.start()).await;
            let mut s = shared.state.lock().unwrap();
            if let Some(t) = s.target.as_mut()
                && let Some(w) = t.writer.as_mut()
            {
                w.1 = match &result {
                    Ok(()) => "available".into(),
                    Err(e) => {
                        eprintln!("standby start failed: {e}");
                        "failed".into()
                    }
                };
            }
        });
        Ok(())
    }

    async fn set_source_groups(&self, _instance: &str, group_ids: &[String]) -> PortResult<()> {
        const OP: &str = "rds:ModifyDBInstance";
        self.0
            .log(format!("set_source_groups {}", group_ids.join(",")));
        let quarantined = group_ids.iter().all(|g| is_quarantine_group(g));
        let leaks = {
            let mut s = self.0.state.lock().unwrap();
            if s.source_deleted {
                return Err(err(ErrorKind::NotFound, OP, "no such instance"));
            }
            s.source_groups = group_ids.to_vec();
            s.leaks.clone()
        };
        let mode = if quarantined {
            HbaMode::Quarantined { leaks }
        } else {
            HbaMode::Open
        };
        self.0.apply_groups(&self.0.primary, &mode, OP).await
    }

    /// The source's identifier reboots the primary, the Aurora writer's name the promoted
    /// standby; anything else is not found.
    async fn reboot_instance(&self, instance: &str) -> PortResult<()> {
        const OP: &str = "rds:RebootDBInstance";
        if instance == SOURCE_ID || instance == SOURCE_ARN {
            self.reboot_source().await
        } else if self.0.writer_name().as_deref() == Some(instance) {
            self.reboot_writer(instance).await
        } else {
            self.0
                .log(format!("reboot_instance {instance} (not found)"));
            Err(err(ErrorKind::NotFound, OP, "DBInstanceNotFound"))
        }
    }
    async fn promote_target(&self, cluster: &str) -> PortResult<()> {
        const OP: &str = "rds:PromoteReadReplicaDBCluster";
        self.0.log(format!("promote_target {cluster}"));
        {
            let mut s = self.0.state.lock().unwrap();
            let Some(t) = s.target.as_mut().filter(|t| t.spec.cluster == cluster) else {
                return Err(err(ErrorKind::NotFound, OP, "no such cluster"));
            };
            if t.promoted || t.status == "promoting" {
                return Ok(());
            }
            t.status = "promoting".into();
        }
        let standby = self
            .0
            .standby()
            .ok_or_else(|| err(ErrorKind::NotFound, OP, "no standby"))?;
        let shared = self.0.clone();
        tokio::spawn(async move {
            let result = blocking(move || standby.promote()).await;
            shared.log("pg_ctl promote done");
            let mut s = shared.state.lock().unwrap();
            if let Some(t) = s.target.as_mut() {
                match result {
                    Ok(()) => {
                        t.promoted = true;
                        t.status = "available".into();
                    }
                    Err(e) => {
                        eprintln!("promote failed: {e}");
                        t.status = "failed".into();
                    }
                }
            }
        });
        Ok(())
    }

    /// ModifyDBCluster groups: the standby's pg_hba.conf follows them like the primary's does
    /// (exactly quarantine groups: TCP clients rejected; open sessions survive).
    async fn set_target_groups(&self, cluster: &str, group_ids: &[String]) -> PortResult<()> {
        const OP: &str = "rds:ModifyDBCluster";
        self.0.log(format!(
            "set_target_groups {cluster} {}",
            group_ids.join(",")
        ));
        {
            let mut s = self.0.state.lock().unwrap();
            let Some(t) = s.target.as_mut().filter(|t| t.spec.cluster == cluster) else {
                return Err(err(ErrorKind::NotFound, OP, "DBClusterNotFound"));
            };
            t.groups = group_ids.to_vec();
        }
        let quarantined = !group_ids.is_empty() && group_ids.iter().all(|g| is_quarantine_group(g));
        let mode = if quarantined {
            HbaMode::Quarantined { leaks: vec![] }
        } else {
            HbaMode::Open
        };
        match self.0.standby() {
            Some(standby) => self.0.apply_groups(&standby, &mode, OP).await,
            None => Ok(()),
        }
    }

    async fn delete_target(&self, cluster: &str, _writer: &str) -> PortResult<()> {
        const OP: &str = "rds:DeleteDBCluster";
        self.0.log(format!("delete_target {cluster}"));
        let slot = {
            let s = self.0.state.lock().unwrap();
            match &s.target {
                Some(t) if t.spec.cluster == cluster => t.slot.clone(),
                _ => return Err(err(ErrorKind::NotFound, OP, "no such cluster")),
            }
        };
        let standby = self.0.standby.lock().unwrap().take();
        if let Some(standby) = standby {
            blocking(move || {
                if standby.stop_fast().is_err() {
                    standby.kill();
                }
                let _ = std::fs::remove_dir_all(&standby.data);
            })
            .await;
        }
        // Deleting the Aurora replica releases the source's slot (and the WAL it holds).
        let client = connect(&self.0.primary.local())
            .await
            .map_err(|e| err(ErrorKind::Retryable, OP, e))?;
        for _ in 0..50 {
            let r = client
                .execute(
                    "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1 AND NOT active",
                    &[&slot],
                )
                .await;
            let gone = client
                .query_opt(
                    "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1",
                    &[&slot],
                )
                .await
                .map(|r| r.is_none())
                .unwrap_or(false);
            if r.is_ok() && gone {
                self.0.state.lock().unwrap().target = None;
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(err(
            ErrorKind::Retryable,
            OP,
            "the replication slot is still active",
        ))
    }

    async fn disable_deletion_protection(&self, _instance: &str) -> PortResult<()> {
        self.0.log("disable_deletion_protection");
        Ok(())
    }

    /// DeleteDBInstance with a final snapshot, as RDS does it: the snapshot (a dump of the
    /// table the writer fills) is of the last state, taken after the agent's last look and as
    /// part of the deletion, then the server stops.
    async fn delete_source(&self, _instance: &str, final_snapshot: &str) -> PortResult<()> {
        const OP: &str = "rds:DeleteDBInstance";
        self.0
            .log(format!("delete_source final_snapshot={final_snapshot}"));
        let file = self.0.root.path.join(format!("{final_snapshot}.sql"));
        {
            let mut s = self.0.state.lock().unwrap();
            if s.source_deleted {
                return Err(err(ErrorKind::NotFound, OP, "already deleted"));
            }
            if s.snapshots.contains_key(final_snapshot) {
                return Err(err(ErrorKind::Conflict, OP, "DBSnapshotAlreadyExists"));
            }
            s.source_status = "deleting".into();
            s.snapshots.insert(
                final_snapshot.to_string(),
                ("creating".into(), file.clone(), Timestamp::now()),
            );
        }
        let shared = self.0.clone();
        let f = file.clone();
        let result = blocking(move || {
            shared.primary.dump_writes(&f)?;
            shared.primary.stop_fast()
        })
        .await;
        let mut s = self.0.state.lock().unwrap();
        match result {
            Ok(()) => {
                if let Some(snap) = s.snapshots.get_mut(final_snapshot) {
                    snap.0 = "available".into();
                }
                s.source_deleted = true;
                Ok(())
            }
            Err(e) => Err(err(ErrorKind::Retryable, OP, e)),
        }
    }

    async fn set_tags(&self, arn: &str, tags: &BTreeMap<String, String>) -> PortResult<()> {
        let mut s = self.0.state.lock().unwrap();
        if arn == SOURCE_ARN {
            s.source_tags
                .extend(tags.iter().map(|(k, v)| (k.clone(), v.clone())));
        } else if let Some(t) = s
            .target
            .as_mut()
            .filter(|t| Shared::target_arn(&t.spec.cluster) == arn)
        {
            t.tags
                .extend(tags.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        Ok(())
    }
}

const FREE_STORAGE: f64 = 150.0 * GIB;

fn quotas() -> Vec<Quota> {
    [
        ("DBClusters", 1, 40),
        ("DBInstances", 1, 40),
        ("ManualSnapshots", 0, 100),
    ]
    .into_iter()
    .map(|(n, used, max)| Quota {
        name: n.into(),
        used,
        max,
    })
    .collect()
}

// ----- CloudWatch --------------------------------------------------------------------------

#[derive(Clone)]
pub struct PgMetrics {
    pub shared: Arc<Shared>,
    pub heartbeats: Arc<Mutex<u32>>,
}

impl PgMetrics {
    async fn sample(&self, key: MetricKey) -> Result<Option<f64>, String> {
        let (source_up, standby, writer_up) = {
            let s = self.shared.state.lock().unwrap();
            let up = !s.source_deleted && s.source_status == "available";
            let writer_up = s
                .target
                .as_ref()
                .and_then(|t| t.writer.as_ref())
                .is_some_and(|(_, status)| status == "available");
            (up, self.shared.standby(), writer_up)
        };
        let primary = &self.shared.primary;
        match key {
            // The oldest (only) slot's distance to the current WAL position. No slot, no data.
            MetricKey::SourceSlotLag if source_up => {
                query_f64(
                    primary,
                    "SELECT max(greatest(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn), 0))::float8 FROM pg_replication_slots",
                )
                .await
            }
            // Client sessions, without walsenders, background workers and the agent's own samples
            // (CloudWatch does not connect; a closing monitoring session must not count).
            MetricKey::SourceConnections if source_up => {
                query_f64(
                    primary,
                    "SELECT count(*)::float8 FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() AND application_name <> 'aurora-migrator-monitor'",
                )
                .await
            }
            MetricKey::SourceWalGeneration if source_up => {
                let lsn = query_f64(
                    primary,
                    "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::float8",
                )
                .await?
                .unwrap_or(0.0);
                let now = Instant::now();
                let prev = self.shared.wal_sample.lock().unwrap().replace((now, lsn));
                Ok(prev.and_then(|(at, before)| {
                    let secs = now.duration_since(at).as_secs_f64();
                    (secs > 0.0).then(|| ((lsn - before) / secs).max(0.0))
                }))
            }
            MetricKey::SourceFreeStorage if source_up => Ok(Some(FREE_STORAGE)),
            MetricKey::SourceCpu | MetricKey::TargetCpu => Ok(Some(5.0)),
            MetricKey::SourceWriteLatency
            | MetricKey::SourceReadLatency
            | MetricKey::TargetWriteLatency
            | MetricKey::TargetReadLatency => Ok(Some(0.001)),
            // DatabaseConnections of the Aurora writer: its client sessions, counted like the
            // source's.
            MetricKey::TargetConnections if writer_up => {
                let Some(standby) = standby else {
                    return Ok(None);
                };
                query_f64(
                    &standby,
                    "SELECT count(*)::float8 FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() AND application_name <> 'aurora-migrator-monitor'",
                )
                .await
            }
            // Seconds behind: 0 when the standby has replayed everything the primary flushed,
            // else the age of its last replayed transaction. Only while it replicates.
            MetricKey::TargetReplicaLag if source_up => {
                let Some(standby) = standby else {
                    return Ok(None);
                };
                let flushed = query_f64(
                    primary,
                    "SELECT pg_wal_lsn_diff(pg_current_wal_flush_lsn(), '0/0')::float8",
                )
                .await?;
                let client = connect(&standby.local()).await?;
                let row = client
                    .query_one(
                        "SELECT pg_is_in_recovery(), pg_wal_lsn_diff(pg_last_wal_replay_lsn(), '0/0')::float8, \
                         extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8",
                        &[],
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                let in_recovery: bool = row.get(0);
                let replayed: Option<f64> = row.get(1);
                let age: Option<f64> = row.get(2);
                if !in_recovery {
                    return Ok(None);
                }
                Ok(Some(match (flushed, replayed) {
                    (Some(f), Some(r)) if r >= f => 0.0,
                    _ => age.unwrap_or(60.0).max(0.001),
                }))
            }
            _ => Ok(None),
        }
    }
}

impl PgMetrics {
    /// WriteIOPS of the Aurora writer over `[q.start, q.end)`, one datapoint per `q.period_s`
    /// starting at `q.start` (periods without a write are 0, as CloudWatch reports an idle
    /// writer): the rows of the writes table the writer itself committed (`server_port` is the
    /// port a client's insert came in on: the writer's own; replicated rows carry the source's), bucketed by their `at` (`clock_timestamp()`
    /// of the insert), averaged per second. The writer's only writes are these inserts, so one
    /// committed row stands for one write operation: a real WriteIOPS counts storage
    /// operations instead, which makes this a lower bound of the real figure, never an
    /// invention. Read over the local socket, which the quarantine does not close (CloudWatch
    /// does not go through the security groups). While the writer restarts: no datapoints.
    async fn target_writes(&self, q: &MetricQuery) -> Result<Vec<Datapoint>, String> {
        let Some(standby) = self.shared.standby() else {
            return Ok(vec![]);
        };
        let period = i64::from(q.period_s.max(1));
        let client = connect(&standby.local()).await?;
        // Exact times: microseconds since the epoch, as PostgreSQL stores `at`.
        let (from, to) = (q.start.as_microsecond(), q.end.as_microsecond());
        let rows = client
            .query(
                &format!(
                    "WITH w AS (SELECT 'epoch'::timestamptz + $1::int8 * interval '1 microsecond' AS s, \
                                       'epoch'::timestamptz + $2::int8 * interval '1 microsecond' AS e) \
                     SELECT floor(extract(epoch FROM t.at - w.s) / $3::int8)::int8, count(*)::int8 \
                     FROM {} t, w WHERE t.server_port = $4::int4 AND t.at >= w.s AND t.at < w.e \
                     GROUP BY 1",
                    super::server::TABLE
                ),
                &[&from, &to, &period, &i32::from(standby.port)],
            )
            .await
            .map_err(|e| e.to_string())?;
        let counts: BTreeMap<i64, i64> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        let span = period * 1_000_000;
        let periods = ((to - from).max(0) + span - 1) / span;
        Ok((0..periods)
            .map(|k| {
                let avg = *counts.get(&k).unwrap_or(&0) as f64 / period as f64;
                Datapoint {
                    start: q.start + jiff::SignedDuration::from_secs(k * period),
                    period_s: q.period_s.max(1),
                    minimum: avg,
                    maximum: avg,
                    average: avg,
                }
            })
            .collect())
    }
}

impl Metrics for PgMetrics {
    async fn fetch(&self, queries: &[MetricQuery]) -> PortResult<Vec<Vec<Datapoint>>> {
        let mut out = Vec::with_capacity(queries.len());
        for q in queries {
            if q.key == MetricKey::TargetWriteIops {
                // Unreadable right now (restarting): no datapoints, as a CloudWatch gap.
                out.push(self.target_writes(q).await.unwrap_or_else(|e| {
                    eprintln!("[metrics] WriteIOPS of the writer: {e}");
                    vec![]
                }));
                continue;
            }
            let start = Timestamp::now();
            // A server that cannot be read right now has no datapoint (CloudWatch shows a gap).
            let value = self.sample(q.key).await.unwrap_or(None);
            out.push(
                value
                    .map(|v| Datapoint {
                        start,
                        period_s: 1,
                        minimum: v,
                        maximum: v,
                        average: v,
                    })
                    .into_iter()
                    .collect(),
            );
        }
        Ok(out)
    }

    async fn put_heartbeat(&self, _migration: &str) -> PortResult<()> {
        *self.heartbeats.lock().unwrap() += 1;
        Ok(())
    }

    async fn ensure_heartbeat_alarm(&self, _alarm: &str, _migration: &str) -> PortResult<()> {
        Ok(())
    }

    async fn delete_alarm(&self, _alarm: &str) -> PortResult<()> {
        Ok(())
    }
}

// ----- EC2 ---------------------------------------------------------------------------------

#[derive(Clone, Default)]
pub struct MemNetwork {
    pub groups: Arc<Mutex<BTreeMap<String, SecurityGroup>>>,
}

impl Network for MemNetwork {
    async fn describe_group(
        &self,
        _vpc_id: &str,
        name: &str,
    ) -> PortResult<Observed<SecurityGroup>> {
        Ok(self.groups.lock().unwrap().get(name).cloned().into())
    }

    async fn ensure_quarantine_group(&self, spec: &QuarantineGroupSpec) -> PortResult<String> {
        let mut g = self.groups.lock().unwrap();
        let group = g.entry(spec.name.clone()).or_insert_with(|| SecurityGroup {
            id: format!("sg-quarantine-{}", spec.name.len()),
            name: spec.name.clone(),
            ingress_sources: vec![],
            egress_rules: 0,
        });
        group.ingress_sources = spec.allow_from.clone();
        group.egress_rules = 0;
        Ok(group.id.clone())
    }

    async fn delete_group(&self, group_id: &str) -> PortResult<()> {
        self.groups.lock().unwrap().retain(|_, g| g.id != group_id);
        Ok(())
    }

    /// This test declares no CDC consumers.
    async fn locate_groups(&self, _ids: &[String]) -> PortResult<Vec<GroupLocation>> {
        Ok(Vec::new())
    }
}

// ----- SNS, SQS, DynamoDB, the data access layer, the clock --------------------------------

#[derive(Clone, Default)]
pub struct MemNotifier {
    pub sent: Arc<Mutex<Vec<Notification>>>,
}

impl Notifier for MemNotifier {
    async fn publish(&self, note: &Notification) -> PortResult<()> {
        eprintln!("[sns] {}", note.subject());
        self.sent.lock().unwrap().push(note.clone());
        Ok(())
    }
}

#[derive(Debug)]
struct Queued {
    id: u64,
    body: String,
    visible_at: Instant,
    receive_count: u32,
}

/// A queue with SQS's delays; the test's loop takes messages in the order they become visible.
#[derive(Clone, Default)]
pub struct MemQueue {
    inner: Arc<Mutex<(u64, VecDeque<Queued>)>>,
}

impl MemQueue {
    fn push(&self, body: String, delay: Duration, receive_count: u32) {
        let mut q = self.inner.lock().unwrap();
        q.0 += 1;
        let id = q.0;
        q.1.push_back(Queued {
            id,
            body,
            visible_at: Instant::now() + delay,
            receive_count,
        });
    }

    /// Removes the message that becomes visible first and says when.
    pub fn take_next(&self) -> Option<(QueueMessage, Instant)> {
        let mut q = self.inner.lock().unwrap();
        let i = (0..q.1.len()).min_by_key(|i| q.1[*i].visible_at)?;
        let m = q.1.remove(i)?;
        Some((
            QueueMessage {
                id: m.id.to_string(),
                receipt: m.id.to_string(),
                body: m.body,
                receive_count: m.receive_count + 1,
            },
            m.visible_at,
        ))
    }

    /// A message the agent left: visible again after the visibility timeout.
    pub fn put_back(&self, m: &QueueMessage, after: Duration) {
        self.push(m.body.clone(), after, m.receive_count);
    }
}

impl Queue for MemQueue {
    async fn receive(
        &self,
        max: u32,
        _wait_s: u32,
        _visibility_s: u32,
    ) -> PortResult<Vec<QueueMessage>> {
        let now = Instant::now();
        let mut out = Vec::new();
        while out.len() < max as usize {
            match self.take_next() {
                Some((m, at)) if at <= now => out.push(m),
                Some((m, at)) => {
                    self.push(m.body, at - now, m.receive_count - 1);
                    break;
                }
                None => break,
            }
        }
        Ok(out)
    }

    async fn delete(&self, _receipt: &str) -> PortResult<()> {
        Ok(())
    }

    async fn extend_visibility(&self, _receipt: &str, _seconds: u32) -> PortResult<()> {
        Ok(())
    }

    async fn send(&self, body: &str, delay_s: u32) -> PortResult<()> {
        self.push(body.to_string(), Duration::from_secs(u64::from(delay_s)), 0);
        Ok(())
    }
}

/// Migration records with DynamoDB's conditional write on the version.
#[derive(Clone, Default)]
pub struct MemStore {
    pub records: Arc<Mutex<HashMap<MigrationId, Migration>>>,
}

impl MemStore {
    pub fn latest_now(&self, resource_id: &str) -> Option<Migration> {
        self.records
            .lock()
            .unwrap()
            .values()
            .filter(|m| m.id.resource_id == resource_id)
            .max_by_key(|m| m.id.attempt)
            .cloned()
    }
}

impl StateStore for MemStore {
    async fn load(&self, id: &MigrationId) -> PortResult<Option<Migration>> {
        Ok(self.records.lock().unwrap().get(id).cloned())
    }

    async fn latest(&self, resource_id: &str) -> PortResult<Option<Migration>> {
        Ok(self.latest_now(resource_id))
    }

    async fn save(&self, m: &Migration) -> Result<u64, StoreError> {
        let mut r = self.records.lock().unwrap();
        let stored = r.get(&m.id).map_or(0, |x| x.version);
        if stored != m.version {
            return Err(StoreError::VersionConflict {
                expected: m.version,
            });
        }
        let mut next = m.clone();
        next.version = m.version + 1;
        r.insert(m.id.clone(), next);
        Ok(m.version + 1)
    }

    async fn list(&self) -> PortResult<Vec<Migration>> {
        Ok(self.records.lock().unwrap().values().cloned().collect())
    }

    async fn fleet_paused(&self) -> PortResult<bool> {
        Ok(false)
    }

    async fn set_fleet_paused(&self, _paused: bool) -> PortResult<()> {
        Ok(())
    }
}

/// The data access layer: where applications send their writes.
#[derive(Clone)]
pub struct MemRouter {
    /// Where each route is also written down, in order with the RDS mutations.
    pub shared: Arc<Shared>,
    pub endpoint: Arc<Mutex<(String, u16)>>,
    pub routes: Arc<Mutex<Vec<(Timestamp, RouteRequest)>>>,
}

impl Router for MemRouter {
    async fn route(&self, request: &RouteRequest) -> PortResult<()> {
        eprintln!("[router] {}:{}", request.endpoint, request.port);
        self.shared.log(format!(
            "route_traffic {}:{}",
            request.endpoint, request.port
        ));
        *self.endpoint.lock().unwrap() = (request.endpoint.clone(), request.port);
        self.routes
            .lock()
            .unwrap()
            .push((Timestamp::now(), request.clone()));
        Ok(())
    }

    async fn smoke_test(&self, _request: &RouteRequest) -> PortResult<()> {
        Ok(())
    }
}

pub struct RealClock;

impl Clock for RealClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }

    async fn sleep(&self, d: Duration) {
        tokio::time::sleep(d).await
    }
}

pub struct PgWorld {
    pub shared: Arc<Shared>,
    pub rds: PgRds,
    pub network: MemNetwork,
    pub metrics: PgMetrics,
    pub notifier: MemNotifier,
    pub queue: MemQueue,
    pub store: MemStore,
    pub router: MemRouter,
    pub clock: RealClock,
}

impl PgWorld {
    /// Starts a primary with the writes table, tagged for migration. `leaks` are roles that the
    /// quarantine will not stop (created on the primary).
    pub async fn start(label: &str, leaks: &[&str]) -> PgWorld {
        let bins = Bins::locate();
        let run_as = RunAs::get();
        let root = TempRoot::new(label, run_as);
        let primary = blocking({
            let (dir, bins) = (root.path.clone(), bins.clone());
            move || {
                let primary = PgServer::init_primary(&dir, "primary", &bins, run_as);
                if let Err(e) = primary.start() {
                    panic!("the primary did not start: {e}\n{}", primary.log_tail());
                }
                primary
            }
        })
        .await;
        let client = connect(&primary.local()).await.expect("connect to primary");
        let version: String = client
            .query_one("SHOW server_version", &[])
            .await
            .expect("server_version")
            .get(0);
        // `15.18 (Debian 15.18-0+deb12u1)` → `15.18`
        let version = version
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string();
        client
            .batch_execute(&format!(
                "CREATE TABLE {} (seq bigint PRIMARY KEY, writer text NOT NULL, \
                 server_port int DEFAULT inet_server_port(), at timestamptz DEFAULT clock_timestamp())",
                super::server::TABLE
            ))
            .await
            .expect("create table");
        for role in leaks {
            client
                .batch_execute(&format!("CREATE ROLE {role} LOGIN SUPERUSER"))
                .await
                .expect("create role");
        }
        let mut tags = BTreeMap::new();
        tags.insert("aurora-migration".to_string(), "start".to_string());
        tags.insert(
            "aurora-migration:ack-unlogged-tables".to_string(),
            "true".to_string(),
        );
        let port = primary.port;
        let shared = Arc::new(Shared {
            bins,
            run_as,
            primary,
            standby: Mutex::new(None),
            state: Mutex::new(RdsState {
                source_status: "available".into(),
                source_deleted: false,
                source_groups: vec![APP_GROUP.to_string()],
                source_tags: tags,
                engine_version: version,
                events: vec![],
                writer_events: vec![],
                target: None,
                parameter_groups: BTreeSet::new(),
                snapshots: BTreeMap::new(),
                log: vec![],
                leaks: leaks.iter().map(|s| s.to_string()).collect(),
            }),
            wal_sample: Mutex::new(None),
            skip_writer_reboot: Default::default(),
            root,
        });
        PgWorld {
            rds: PgRds(shared.clone()),
            metrics: PgMetrics {
                shared: shared.clone(),
                heartbeats: Arc::default(),
            },
            router: MemRouter {
                shared: shared.clone(),
                endpoint: Arc::new(Mutex::new(("127.0.0.1".to_string(), port))),
                routes: Arc::default(),
            },
            shared,
            network: MemNetwork::default(),
            notifier: MemNotifier::default(),
            queue: MemQueue::default(),
            store: MemStore::default(),
            clock: RealClock,
        }
    }
}

impl World for PgWorld {
    type Rds = PgRds;
    type Network = MemNetwork;
    type Metrics = PgMetrics;
    type Notifier = MemNotifier;
    type Queue = MemQueue;
    type Store = MemStore;
    type Router = MemRouter;
    type Clock = RealClock;
    fn rds(&self) -> &PgRds {
        &self.rds
    }
    fn network(&self) -> &MemNetwork {
        &self.network
    }
    fn metrics(&self) -> &PgMetrics {
        &self.metrics
    }
    fn notifier(&self) -> &MemNotifier {
        &self.notifier
    }
    fn queue(&self) -> &MemQueue {
        &self.queue
    }
    fn store(&self) -> &MemStore {
        &self.store
    }
    fn router(&self) -> &MemRouter {
        &self.router
    }
    fn clock(&self) -> &RealClock {
        &self.clock
    }
}
