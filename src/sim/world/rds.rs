//! RDS as the world sees it: describes, the replica, the quarantine's group change, reboots,
//! promotion, deletions with their final snapshot, tags; and the `Rds` port over them.

use super::*;

impl State {
    /// The live source `id_or_arn` names, for the request `op`: NotFound as RDS answers for an
    /// instance it does not know (never created, or deleted).
    fn live_source(&self, op: &str, id_or_arn: &str) -> PortResult<String> {
        self.find_source_id(id_or_arn)
            .ok_or_else(|| PortError::new(ErrorKind::NotFound, op, "DBInstanceNotFound"))
    }

    pub(super) fn find_source_id(&self, id_or_arn: &str) -> Option<String> {
        let id = id_or_arn.rsplit(':').next().unwrap_or(id_or_arn);
        self.sources
            .get(id)
            .filter(|s| s.deleted_at.is_none())
            .map(|_| id.to_string())
    }

    pub(super) fn source_view(&mut self, id: &str) -> SourceInstance {
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

    pub(super) fn describe_source(
        &mut self,
        instance: &str,
    ) -> PortResult<Observed<SourceInstance>> {
        Ok(match self.find_source_id(instance) {
            Some(id) => Observed::Present(self.source_view(&id)),
            None => Observed::Absent,
        })
    }

    pub(super) fn preflight_inputs(&mut self, source: &SourceInstance) -> PreflightInputs {
        let versions = ["15.4", "15.5", "15.6", "15.7", "15.8", "16.1", "16.2"];
        let free = self
            .sources
            .get(&source.identifier)
            .map(|s| f64::from(s.view.allocated_storage_gib) * GIB * 0.6);
        PreflightInputs {
            database: None,
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
            // What `rds.allowed_extensions` of aurora-postgresql15/16 allows (a plausible part).
            aurora_extensions: Some(
                [
                    "plpgsql",
                    "pg_stat_statements",
                    "pg_cron",
                    "pg_hint_plan",
                    "pg_partman",
                    "pg_trgm",
                    "pgcrypto",
                    "hstore",
                    "citext",
                    "postgis",
                    "postgis_topology",
                    "vector",
                    "uuid-ossp",
                    "pglogical",
                    "aws_s3",
                ]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            ),
            router_view: None,
        }
    }

    pub(super) fn quotas(&self) -> Vec<Quota> {
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

    pub(super) fn describe_target(&mut self, name: &str) -> Observed<TargetCluster> {
        let name = name.rsplit(':').next().unwrap_or(name);
        if let Some(src) = self.clusters.get(name).map(|c| c.source.clone()) {
            self.sync(&src);
        }
        match self.clusters.get(name) {
            Some(c) => Observed::Present(c.view.clone()),
            None => Observed::Absent,
        }
    }

    pub(super) fn create_replica_cluster(&mut self, spec: &ReplicaClusterSpec) -> PortResult<()> {
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
        let id = self.live_source(op, &spec.source_arn)?;
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
                crate::sim::fmt_ms(took)
            )
        });
        self.schedule(took, Ev::ClusterCreated(spec.cluster.clone()));
        Ok(())
    }

    pub(super) fn create_writer(&mut self, spec: &WriterInstanceSpec) -> PortResult<()> {
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

    pub(super) fn set_source_groups(&mut self, instance: &str, ids: &[String]) -> PortResult<()> {
        let op = "rds:ModifyDBInstance";
        let id = self.live_source(op, instance)?;
        self.sync(&id);
        let now = self.now;
        let quarantine = self.quarantine_ids();
        let took = self.world_rng.range(5 * SEC, 40 * SEC);
        let s = self.sources.get_mut(&id).expect("found");
        if !matches!(s.view.status.as_str(), "available" | "modifying") {
            return Err(invalid_state(op, &s.view.status));
        }
        let mut have = s.view.group_ids();
        let mut want = ids.to_vec();
        have.sort();
        want.sort();
        if have == want && s.pending_groups.is_none() {
            return Ok(());
        }
        let fencing = ids.iter().all(|g| quarantine.contains(g));
        if fencing {
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
        if fencing {
            self.check_pooler_held(&id);
        }
        self.schedule(took, Ev::GroupsApplied(id));
        Ok(())
    }

    pub(super) fn reboot(&mut self, instance: &str) -> PortResult<()> {
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
        let id = self.live_source(op, instance)?;
        self.sync(&id);
        let now = self.now;
        let took = self.world_rng.range(MIN, 3 * MIN);
        let s = self.sources.get_mut(&id).expect("found");
        if s.view.status != "available" {
            return Err(invalid_state(op, &s.view.status));
        }
        s.view.status = "rebooting".to_string();
        s.sessions_open = false;
        s.reboot_requested_at.get_or_insert(now);
        let arn = s.view.arn.clone();
        self.refresh(&id);
        self.rds_event(&id, &arn, "DB instance shutdown", "RDS-EVENT-0004", true);
        self.schedule(took, Ev::RebootDone(id));
        Ok(())
    }

    pub(super) fn promote(&mut self, cluster: &str) -> PortResult<()> {
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
        if let Some(v) = crate::sim::checks::replayed_before_promotion::check(self, cluster) {
            self.violation(v);
        }
        let c = self.clusters.get_mut(cluster).expect("found");
        c.view.status = "promoting".to_string();
        c.replicating = false; // replication stops here: later source writes never arrive
        if let Some(s) = self.sources.get_mut(&src) {
            s.promote_called_at.get_or_insert(now);
        }
        self.schedule(took, Ev::PromoteDone(cluster.to_string()));
        Ok(())
    }

    pub(super) fn delete_target(&mut self, cluster: &str) -> PortResult<()> {
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
    pub(super) fn delete_source(&mut self, instance: &str, final_snapshot: &str) -> PortResult<()> {
        let op = "rds:DeleteDBInstance";
        let id = self.live_source(op, instance)?;
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

    pub(super) fn set_tags(
        &mut self,
        arn: &str,
        tags: &BTreeMap<String, String>,
    ) -> PortResult<()> {
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
}

impl Rds for SimPort {
    fn cutover_backlog(&self) -> std::time::Duration {
        self.rds.limiter.cutover_backlog()
    }

    async fn describe_source(&self, instance: &str) -> PortResult<Observed<SourceInstance>> {
        Ok(self.source(instance).await?.into())
    }

    async fn list_tagged_sources(&self, tag_key: &str) -> PortResult<Vec<SourceInstance>> {
        self.tagged_sources(tag_key).await
    }

    async fn source_identifier_of(&self, resource_id: &str) -> PortResult<Option<String>> {
        self.call("rds:DescribeDBInstances", false, |s| {
            Ok(s.sources
                .iter()
                .find(|(_, v)| v.deleted_at.is_none() && v.view.resource_id == resource_id)
                .map(|(id, _)| id.clone()))
        })
        .await
    }

    async fn list_sources(&self) -> PortResult<Vec<SourceInstance>> {
        self.postgres_sources().await
    }

    async fn describe_target(&self, cluster: &str) -> PortResult<Observed<TargetCluster>> {
        Ok(self.target(cluster).await?.into())
    }

    async fn describe_source_now(&self, instance: &str) -> PortResult<Observed<SourceInstance>> {
        Ok(self.source_direct(instance).await?.into())
    }

    async fn describe_target_now(&self, cluster: &str) -> PortResult<Observed<TargetCluster>> {
        Ok(self.target_direct(cluster).await?.into())
    }

    fn heard_of_change(&self, name: &str) {
        SimPort::heard_of_change(self, name);
    }

    fn heard_of_tag_change(&self, name: &str) {
        SimPort::heard_of_tag_change(self, name);
    }

    async fn parameter_groups_present(
        &self,
        cluster_group: &str,
        instance_group: &str,
    ) -> PortResult<ParameterGroupsPresent> {
        let key = (cluster_group.to_string(), instance_group.to_string());
        let present = self
            .rds
            .present_groups
            .get_keeping(
                key,
                || {
                    self.call("rds:DescribeDBClusterParameterGroups", false, |s| {
                        Ok(ParameterGroupsPresent {
                            cluster: s.parameter_groups.contains(cluster_group),
                            instance: s.parameter_groups.contains(instance_group),
                        })
                    })
                },
                |p| p.cluster && p.instance,
            )
            .await?;
        Ok(present.as_ref().clone())
    }

    async fn preflight_inputs(&self, source: &SourceInstance) -> PortResult<PreflightInputs> {
        // The Region's answers, once an hour through the adapter's cache (`aws::rds::region`).
        let call = |op: &'static str| self.call(op, false, |_| Ok(()));
        self.rds
            .engine_versions
            .get((), || call("rds:DescribeDBEngineVersions"))
            .await?;
        self.rds
            .source_parameters
            .get(source.parameter_group.name.clone(), || {
                call("rds:DescribeDBParameters")
            })
            .await?;
        let major = source.engine_version.split('.').next().unwrap_or_default();
        let family = format!("aurora-postgresql{major}");
        for (cluster, op) in [
            (true, "rds:DescribeEngineDefaultClusterParameters"),
            (false, "rds:DescribeEngineDefaultParameters"),
        ] {
            self.rds
                .family_defaults
                .get((family.clone(), cluster), || call(op))
                .await?;
        }
        self.rds
            .pending_maintenance
            .get((), || call("rds:DescribePendingMaintenanceActions"))
            .await?;
        for op in ["kms:DescribeKey", "cloudwatch:GetMetricData"] {
            call(op).await?;
        }
        let quotas = self.account_quotas().await?;
        // The rest of the answer is the world's as the calls above read it.
        let mut inputs = self.lock().preflight_inputs(source);
        inputs.quotas = quotas;
        Ok(inputs)
    }

    async fn account_quotas(&self) -> PortResult<Vec<Quota>> {
        let quotas = self
            .rds
            .quotas
            .get((), || {
                self.call("rds:DescribeAccountAttributes", false, |s| Ok(s.quotas()))
            })
            .await?;
        Ok(quotas.as_ref().clone())
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
        self.instance_events_batched(instance, since).await
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

    /// As the adapter's: the resource is not touched in the caches (the agent never reads
    /// these tags back).
    async fn mirror_tags(&self, arn: &str, tags: &BTreeMap<String, String>) -> PortResult<()> {
        self.call("rds:AddTagsToResource", true, |s| s.set_tags(arn, tags))
            .await
    }
}

/// RDS's refusal of a request the instance's status does not allow.
fn invalid_state(op: &str, status: &str) -> PortError {
    PortError::new(
        ErrorKind::Conflict,
        op,
        format!("InvalidDBInstanceState: {status}"),
    )
}
