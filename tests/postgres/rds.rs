//! RDS over the real servers: the primary is the source instance, the streaming standby the
//! Aurora cluster and its writer (see the table in `world.rs`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use aurora_migrator::core::action::{ParameterGroupsSpec, ReplicaClusterSpec, WriterInstanceSpec};
use aurora_migrator::core::observation::*;
use aurora_migrator::ports::{ErrorKind, PortResult, Rds};
use jiff::Timestamp;

use super::server::{HbaMode, PgServer, connect};
use super::source_fixture::healthy_source;
use super::world::{
    GIB, RESOURCE_ID, SOURCE_ARN, SOURCE_ID, Shared, TargetState, blocking, err, query_f64,
};

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
            engine_version: s.engine_version.clone(),
            status: s.source_status.clone(),
            aurora_replica_clusters: aurora,
            security_groups: s
                .source_groups
                .iter()
                .map(|g| GroupMembership {
                    id: g.clone(),
                    status: "active".into(),
                })
                .collect(),
            vpc_id: "vpc-test".into(),
            endpoint: Some(Endpoint {
                address: "127.0.0.1".into(),
                port: self.0.primary.port,
            }),
            tags: s.source_tags.clone(),
            ..healthy_source(SOURCE_ID, SOURCE_ARN, RESOURCE_ID)
        })
    }
}

/// Quarantine groups are the ones the fake network creates.
pub(super) fn is_quarantine_group(id: &str) -> bool {
    id.starts_with("sg-quarantine-")
}

impl PgRds {
    /// The standby (the Aurora writer), for the call `op`: NotFound before it is laid out.
    fn standby(&self, op: &str) -> PortResult<Arc<PgServer>> {
        self.0
            .standby()
            .ok_or_else(|| err(ErrorKind::NotFound, op, "no standby"))
    }

    /// Runs `work` (a `pg_ctl` call) off the async threads in the background, as RDS answers
    /// before the change is done, then `done` with the world and the outcome.
    fn in_background(
        &self,
        work: impl FnOnce() -> Result<(), String> + Send + 'static,
        done: impl FnOnce(&Arc<Shared>, Result<(), String>) + Send + 'static,
    ) {
        let shared = self.0.clone();
        tokio::spawn(async move {
            let result = blocking(work).await;
            done(&shared, result);
        });
    }

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
        let standby = self.standby(OP)?;
        self.in_background(
            move || standby.restart_fast(),
            |shared, result| {
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
            },
        );
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

    async fn source_identifier_of(&self, resource_id: &str) -> PortResult<Option<String>> {
        Ok(self
            .source()
            .filter(|s| s.resource_id == resource_id)
            .map(|s| s.identifier))
    }

    async fn list_sources(&self) -> PortResult<Vec<SourceInstance>> {
        Ok(self.source().into_iter().collect())
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
            database: None,
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
            aurora_extensions: Some(names(&[
                "plpgsql",
                "pg_stat_statements",
                "pg_cron",
                "pgcrypto",
                "citext",
                "hstore",
                "postgis",
                "vector",
            ])),
            router_view: None,
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
        let standby = self.standby(OP)?;
        self.in_background(
            move || standby.start(),
            |shared, result| {
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
            },
        );
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
            HbaMode::Quarantined {
                leaks,
                admitted: self.0.admitted_by(group_ids),
            }
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
        let standby = self.standby(OP)?;
        self.in_background(
            move || standby.promote(),
            |shared, result| {
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
            },
        );
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
            HbaMode::Quarantined {
                leaks: vec![],
                admitted: self.0.admitted_by(group_ids),
            }
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

pub(super) const FREE_STORAGE: f64 = 150.0 * GIB;

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
