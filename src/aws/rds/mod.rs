//! RDS: describes (served from a short-lived fleet-wide cache) and idempotent mutations, all
//! through the account budget's rate limiter.
//!
//! This file is the adapter: [`AwsRds`], its `call`/`mutate` plumbing and the [`Rds`] port. Every
//! RDS request goes through `call` (or `call_unless`): it waits for the rate limiter, then makes
//! the shared counted, classified call of [`super::call`]; every request that changes a resource
//! is wrapped in `mutate` (`change`, when the port needs no answer but success), which also marks
//! the resource so its next describes go to RDS directly instead of the shared fleet snapshot.
//! Mutations are idempotent: a repeat after a lost answer does the same again or, for creates and
//! promotion, meets a conflict that is checked against what exists (ours: success). The rest is
//! by subject (those that call RDS as `impl AwsRds` blocks, used from here):
//!
//! - `cache.rs`: `FleetCache`, the fleet-wide describe snapshot (single-flight refresh, touched
//!   resources) and the rule for serving one resource from it (`lookup`); the simulator runs it
//!   too, on virtual time;
//! - `describe.rs`: instance and cluster describes, through the cache or directly;
//! - `convert.rs`: SDK types to the core's (`source_of`, `target_from`), tags, name matching;
//! - `parameter_groups.rs`: whether the migration's parameter groups exist; creating and
//!   filling them;
//! - `preflight.rs`: the preflight reads (engine versions, parameters and defaults, pending
//!   maintenance, quotas, KMS key, free storage).

use std::collections::BTreeMap;
use std::future::Future;

use aws_sdk_rds::Client;
use aws_sdk_rds::types::{DbCluster, DbInstance, SourceType, Tag};
use jiff::Timestamp;

use super::call::{self, SdkResult, all_pages, boxed};
use super::classify::{ServiceError, found};
use super::cloudwatch::AwsMetrics;
use super::kms::AwsKeys;
use super::limit::RateLimiter;
use super::{AwsSettings, CallCounter, sdk_ts, ts};
use crate::core::action::{ParameterGroupsSpec, ReplicaClusterSpec, WriterInstanceSpec};
use crate::core::observation::{
    EngineVersion, InstanceEvent, InstanceEventKind, Observed, ParameterGroupsPresent,
    PreflightInputs, Quota, Snapshot, SourceInstance, TargetCluster,
};
use crate::ports::{ErrorKind, PortError, PortResult, Rds};

pub(crate) mod batch;
pub(crate) mod cache;
mod convert;
mod describe;
mod parameter_groups;
mod preflight;
pub(crate) mod region;

use batch::LaneBatchers;
use cache::FleetCache;
pub use convert::source_of;
use convert::{opt, sdk_tags, tags_of};

pub struct AwsRds {
    client: Client,
    metrics: AwsMetrics,
    calls: CallCounter,
    /// Shared with the RDS Proxy router (`aws::rds_proxy`): one budget for every RDS call.
    limiter: std::sync::Arc<RateLimiter>,
    keys: AwsKeys,
    instances: FleetCache<DbInstance>,
    clusters: FleetCache<DbCluster>,
    /// Direct describes (a resource as RDS has it now) batched across migrations: one request
    /// a look for every cutover waiting on RDS, not one each.
    instance_batch: LaneBatchers<String, DbInstance>,
    cluster_batch: LaneBatchers<String, DbCluster>,
    /// DescribeEvents batched across migrations: (instance, since) → the Region's instance
    /// events since the earliest, by instance (lower case).
    event_batch: LaneBatchers<(String, Timestamp), (String, InstanceEvent)>,
    /// The Region's Aurora PostgreSQL versions, and each family's engine defaults (cluster:
    /// `true`), read once an hour for every preflight (`region.rs`).
    engine_versions: region::RegionCache<(), Vec<EngineVersion>>,
    family_defaults: region::RegionCache<(String, bool), Vec<aws_sdk_rds::types::Parameter>>,
    /// The Region's pending maintenance actions (resource ARN, description), for 10 minutes.
    pending_maintenance: region::RegionCache<(), Vec<(String, String)>>,
    /// The account's quotas, for a minute.
    quotas: region::RegionCache<(), Vec<Quota>>,
    /// A source parameter group's user parameters, by its name, for a minute.
    source_parameters: region::RegionCache<String, Vec<crate::core::observation::Parameter>>,
    /// (cluster group, instance group) → both exist: kept for 10 minutes once seen.
    present_groups: region::RegionCache<(String, String), ParameterGroupsPresent>,
    /// Every resource the agent creates carries `<prefix>:source` in its create request: the
    /// task role's IAM policy allows creates only with it.
    tag_prefix: String,
}

impl AwsRds {
    pub fn new(
        client: Client,
        keys: AwsKeys,
        metrics: AwsMetrics,
        calls: CallCounter,
        s: &AwsSettings,
    ) -> Self {
        AwsRds {
            client,
            keys,
            metrics,
            calls,
            limiter: std::sync::Arc::new(RateLimiter::new(s.rds_requests_per_second, s.rds_burst)),
            instances: FleetCache::new(s.describe_cache_ttl)
                .scaled(cache::ttl_per_item(s.rds_requests_per_second)),
            clusters: FleetCache::new(s.describe_cache_ttl)
                .scaled(cache::ttl_per_item(s.rds_requests_per_second)),
            instance_batch: LaneBatchers::new("rds:DescribeDBInstances"),
            cluster_batch: LaneBatchers::new("rds:DescribeDBClusters"),
            event_batch: LaneBatchers::new("rds:DescribeEvents"),
            engine_versions: region::RegionCache::new(),
            family_defaults: region::RegionCache::new(),
            pending_maintenance: region::RegionCache::with_ttl(region::PENDING_MAINTENANCE_TTL),
            quotas: region::RegionCache::with_ttl(region::QUOTA_TTL),
            source_parameters: region::RegionCache::with_ttl(region::SOURCE_PARAMETERS_TTL),
            present_groups: region::RegionCache::with_ttl(region::PRESENT_GROUPS_TTL),
            tag_prefix: s.tag_prefix.clone(),
        }
    }

    /// The RDS budget's rate limiter, for the other RDS callers (`aws::rds_proxy`).
    pub fn limiter(&self) -> std::sync::Arc<RateLimiter> {
        self.limiter.clone()
    }

    /// The creation tag for a resource made for `source` (shared groups: `shared`).
    fn source_tag(&self, source: &str) -> Vec<Tag> {
        let mut t = BTreeMap::new();
        t.insert(format!("{}:source", self.tag_prefix), source.to_string());
        sdk_tags(&t)
    }

    /// Waits for the rate limiter, then makes the counted, classified [`call::call`].
    async fn call<T, E: ServiceError>(
        &self,
        op: &str,
        request: impl Future<Output = SdkResult<T, E>>,
    ) -> PortResult<T> {
        self.limiter.acquire().await;
        call::call(&self.calls, op, request).await
    }

    /// The counted, classified [`call::call`] of a request that already had its turn at the
    /// rate limiter (a batch's leader waited for it: `batch.rs`).
    async fn call_past_limiter<T, E: ServiceError>(
        &self,
        op: &str,
        request: impl Future<Output = SdkResult<T, E>>,
    ) -> PortResult<T> {
        call::call(&self.calls, op, request).await
    }

    /// Waits for the rate limiter, then makes the [`call::call_unless`] (`Ok(None)`: refused
    /// with `answer`).
    async fn call_unless<T, E: ServiceError>(
        &self,
        op: &str,
        answer: &str,
        request: impl Future<Output = SdkResult<T, E>>,
    ) -> PortResult<Option<T>> {
        self.limiter.acquire().await;
        call::call_unless(&self.calls, op, answer, request).await
    }

    /// Every instance event of the Region since `since`, every page (DescribeEvents with no
    /// identifier: the Region's events of that source type), for a batch whose leader had its
    /// turn at the rate limiter; the first page's turn is the leader's, the next pages wait.
    async fn region_events(&self, since: Timestamp) -> PortResult<Vec<(String, InstanceEvent)>> {
        let first = std::sync::atomic::AtomicBool::new(true);
        let first = &first;
        all_pages(move |marker| {
            let request = self
                .client
                .describe_events()
                .source_type(SourceType::DbInstance)
                .start_time(sdk_ts(since))
                .max_records(100)
                .set_marker(marker);
            async move {
                const OP: &str = "rds:DescribeEvents";
                let r = if first.swap(false, std::sync::atomic::Ordering::SeqCst) {
                    self.call_past_limiter(OP, request.send()).await?
                } else {
                    self.call(OP, request.send()).await?
                };
                let events = r.events().iter().filter_map(|e| {
                    Some((
                        e.source_identifier()?.to_ascii_lowercase(),
                        InstanceEvent {
                            at: ts(e.date()?),
                            kind: InstanceEventKind::from_message(e.message().unwrap_or_default()),
                        },
                    ))
                });
                Ok((events.collect(), r.marker))
            }
        })
        .await
    }

    /// These resources were changed: their next describes go to RDS directly.
    fn touch(&self, names: &[&str]) {
        for name in names {
            self.instances.touch(name);
            self.clusters.touch(name);
        }
    }

    /// A mutation whose answer the port does not need: [`Self::mutate`] with [`Self::call`].
    async fn change<T, E: ServiceError>(
        &self,
        op: &str,
        names: &[&str],
        request: impl Future<Output = SdkResult<T, E>>,
    ) -> PortResult<()> {
        self.mutate(names, self.call(op, request)).await.map(drop)
    }

    /// A call (`self.call…`) that changes `names`: until the next fleet snapshot they are
    /// described by name (whether or not the call succeeded: a failed answer may hide a change
    /// that happened).
    async fn mutate<T>(
        &self,
        names: &[&str],
        call: impl Future<Output = PortResult<T>>,
    ) -> PortResult<T> {
        let r = call.await;
        self.touch(names);
        r
    }
}

impl Rds for AwsRds {
    fn cutover_backlog(&self) -> std::time::Duration {
        self.limiter.cutover_backlog()
    }

    fn describe_source(
        &self,
        instance: &str,
    ) -> impl Future<Output = PortResult<Observed<SourceInstance>>> + Send {
        boxed(async move {
            Ok(self
                .instance(instance)
                .await?
                .as_ref()
                .map(source_of)
                .into())
        })
    }

    fn list_tagged_sources(
        &self,
        tag_key: &str,
    ) -> impl Future<Output = PortResult<Vec<SourceInstance>>> + Send {
        boxed(async move {
            let (_, all) = self.all_instances().await?;
            Ok(all
                .iter()
                .filter(|i| i.engine() == Some("postgres"))
                .filter(|i| i.tag_list().iter().any(|t| t.key() == Some(tag_key)))
                .map(source_of)
                .collect())
        })
    }

    fn source_identifier_of(
        &self,
        resource_id: &str,
    ) -> impl Future<Output = PortResult<Option<String>>> + Send {
        boxed(async move {
            Ok(self
                .instance_with_resource_id(resource_id)
                .await?
                .and_then(|i| i.db_instance_identifier))
        })
    }

    fn list_sources(&self) -> impl Future<Output = PortResult<Vec<SourceInstance>>> + Send {
        boxed(async move {
            let (_, all) = self.all_instances().await?;
            Ok(all
                .iter()
                .filter(|i| i.engine() == Some("postgres"))
                .map(source_of)
                .collect())
        })
    }

    fn describe_target(
        &self,
        cluster: &str,
    ) -> impl Future<Output = PortResult<Observed<TargetCluster>>> + Send {
        boxed(async move {
            match self.cluster(cluster).await? {
                Some(c) => Ok(Observed::Present(self.target_of(&c).await?)),
                None => Ok(Observed::Absent),
            }
        })
    }

    fn describe_source_now(
        &self,
        instance: &str,
    ) -> impl Future<Output = PortResult<Observed<SourceInstance>>> + Send {
        boxed(async move {
            Ok(self
                .instance_direct(instance)
                .await?
                .as_ref()
                .map(source_of)
                .into())
        })
    }

    fn describe_target_now(
        &self,
        cluster: &str,
    ) -> impl Future<Output = PortResult<Observed<TargetCluster>>> + Send {
        boxed(async move {
            match self.cluster_direct(cluster).await? {
                Some(c) => Ok(Observed::Present(self.target_of(&c).await?)),
                None => Ok(Observed::Absent),
            }
        })
    }

    fn heard_of_change(&self, name: &str) {
        self.touch(&[name]);
    }

    fn heard_of_tag_change(&self, name: &str) {
        self.instances.hear(name);
        self.clusters.hear(name);
    }

    fn parameter_groups_present(
        &self,
        cluster_group: &str,
        instance_group: &str,
    ) -> impl Future<Output = PortResult<ParameterGroupsPresent>> + Send {
        boxed(async move {
            let key = (cluster_group.to_string(), instance_group.to_string());
            let present = self
                .present_groups
                .get_keeping(
                    key,
                    || self.read_parameter_groups(cluster_group, instance_group),
                    |p| p.cluster && p.instance,
                )
                .await?;
            Ok(present.as_ref().clone())
        })
    }

    fn preflight_inputs(
        &self,
        source: &SourceInstance,
    ) -> impl Future<Output = PortResult<PreflightInputs>> + Send {
        boxed(self.read_preflight_inputs(source))
    }

    fn account_quotas(&self) -> impl Future<Output = PortResult<Vec<Quota>>> + Send {
        boxed(async move {
            let quotas = self.quotas.get((), || self.read_account_quotas()).await?;
            Ok(quotas.as_ref().clone())
        })
    }

    fn describe_snapshot(
        &self,
        snapshot: &str,
    ) -> impl Future<Output = PortResult<Observed<Snapshot>>> + Send {
        boxed(async move {
            let request = self
                .client
                .describe_db_snapshots()
                .db_snapshot_identifier(snapshot);
            let r = found(self.call("rds:DescribeDBSnapshots", request.send()).await)?;
            let snapshot = r.as_ref().and_then(|r| r.db_snapshots().first());
            Ok(snapshot
                .map(|s| Snapshot {
                    identifier: opt(s.db_snapshot_identifier()),
                    status: opt(s.status()),
                    instance: opt(s.db_instance_identifier()),
                    created_at: s.snapshot_create_time().map(super::ts),
                })
                .into())
        })
    }

    fn instance_events(
        &self,
        instance: &str,
        since: Timestamp,
    ) -> impl Future<Output = PortResult<Vec<InstanceEvent>>> + Send {
        // A look that gathers (the reboot's wait) lets its DescribeEvents wait for the other
        // migrations' looks of the same grid time, as its describes do.
        boxed(self.event_batch.instance_events(
            instance,
            since,
            self.limiter.acquire_after(self.event_batch.gather_window()),
            |earliest| self.region_events(earliest),
        ))
    }

    fn ensure_parameter_groups(
        &self,
        spec: &ParameterGroupsSpec,
    ) -> impl Future<Output = PortResult<()>> + Send {
        boxed(self.ensure_groups(spec))
    }

    fn create_replica_cluster(
        &self,
        spec: &ReplicaClusterSpec,
    ) -> impl Future<Output = PortResult<()>> + Send {
        boxed(async move {
            const OP: &str = "rds:CreateDBCluster";
            let request = self
                .client
                .create_db_cluster()
                .db_cluster_identifier(&spec.cluster)
                .engine("aurora-postgresql")
                .engine_version(&spec.engine_version)
                .replication_source_identifier(&spec.source_arn)
                .db_cluster_parameter_group_name(&spec.cluster_parameter_group)
                .set_db_subnet_group_name(Some(spec.subnet_group.clone()).filter(|s| !s.is_empty()))
                .set_vpc_security_group_ids(Some(spec.security_groups.clone()))
                .storage_encrypted(spec.storage_encrypted)
                .set_kms_key_id(spec.kms_key_id.clone())
                .set_tags(Some(sdk_tags(&spec.tags)));
            match self.change(OP, &[&spec.cluster], request.send()).await {
                Ok(_) => Ok(()),
                // moto answers a repeat with DBClusterSnapshotAlreadyExistsFault, AWS with
                // DBClusterAlreadyExistsFault: any conflict is checked the same way.
                Err(e) if e.kind == ErrorKind::Conflict => {
                    // Ours only if it replicates from our source or carries our migration tag.
                    let existing = self.cluster_direct(&spec.cluster).await?;
                    let ours = existing.is_some_and(|c| {
                        c.replication_source_identifier() == Some(spec.source_arn.as_str())
                            || spec.tags.iter().any(|(k, v)| {
                                k.ends_with(":migration") && tags_of(c.tag_list()).get(k) == Some(v)
                            })
                    });
                    if ours {
                        Ok(())
                    } else {
                        Err(PortError::new(
                            ErrorKind::Conflict,
                            OP,
                            format!(
                                "a cluster named {} exists and is not the replica of {}",
                                spec.cluster, spec.source_arn
                            ),
                        ))
                    }
                }
                Err(e) => Err(e),
            }
        })
    }

    fn create_writer_instance(
        &self,
        spec: &WriterInstanceSpec,
    ) -> impl Future<Output = PortResult<()>> + Send {
        boxed(async move {
            const OP: &str = "rds:CreateDBInstance";
            let request = self
                .client
                .create_db_instance()
                .db_instance_identifier(&spec.instance)
                .db_cluster_identifier(&spec.cluster)
                .engine("aurora-postgresql")
                .db_instance_class(&spec.instance_class)
                .db_parameter_group_name(&spec.parameter_group)
                .set_tags(Some(sdk_tags(&spec.tags)));
            let exists = "DBInstanceAlreadyExists";
            let created = self.call_unless(OP, exists, request.send());
            if self
                .mutate(&[&spec.instance, &spec.cluster], created)
                .await?
                .is_some()
            {
                return Ok(());
            }
            let existing = self.instance_direct(&spec.instance).await?;
            if existing.is_some_and(|i| i.db_cluster_identifier() == Some(&spec.cluster)) {
                Ok(())
            } else {
                Err(PortError::new(
                    ErrorKind::Conflict,
                    OP,
                    format!(
                        "an instance named {} exists and is not a member of {}",
                        spec.instance, spec.cluster
                    ),
                ))
            }
        })
    }

    fn set_source_groups(
        &self,
        instance: &str,
        group_ids: &[String],
    ) -> impl Future<Output = PortResult<()>> + Send {
        boxed(async move {
            let request = self
                .client
                .modify_db_instance()
                .db_instance_identifier(instance)
                .set_vpc_security_group_ids(Some(group_ids.to_vec()))
                .apply_immediately(true);
            self.change("rds:ModifyDBInstance", &[instance], request.send())
                .await
        })
    }

    fn reboot_instance(&self, instance: &str) -> impl Future<Output = PortResult<()>> + Send {
        boxed(async move {
            let request = self
                .client
                .reboot_db_instance()
                .db_instance_identifier(instance);
            self.change("rds:RebootDBInstance", &[instance], request.send())
                .await
        })
    }

    fn promote_target(&self, cluster: &str) -> impl Future<Output = PortResult<()>> + Send {
        boxed(async move {
            let request = self
                .client
                .promote_read_replica_db_cluster()
                .db_cluster_identifier(cluster);
            let Err(err) = self
                .change(
                    "rds:PromoteReadReplicaDBCluster",
                    &[cluster],
                    request.send(),
                )
                .await
            else {
                return Ok(());
            };
            // A repeat after a lost answer: already promoted is what we asked for.
            if err.kind == ErrorKind::Conflict
                && let Some(c) = self.cluster_direct(cluster).await?
                && c.replication_source_identifier().is_none_or(str::is_empty)
            {
                return Ok(());
            }
            Err(err)
        })
    }

    fn set_target_groups(
        &self,
        cluster: &str,
        group_ids: &[String],
    ) -> impl Future<Output = PortResult<()>> + Send {
        boxed(async move {
            let request = self
                .client
                .modify_db_cluster()
                .db_cluster_identifier(cluster)
                .set_vpc_security_group_ids(Some(group_ids.to_vec()))
                .apply_immediately(true);
            self.change("rds:ModifyDBCluster", &[cluster], request.send())
                .await
        })
    }

    fn delete_target(
        &self,
        cluster: &str,
        writer: &str,
    ) -> impl Future<Output = PortResult<()>> + Send {
        boxed(async move {
            let request = self
                .client
                .delete_db_instance()
                .db_instance_identifier(writer)
                .skip_final_snapshot(true);
            // Gone already, or already being deleted: carry on with the cluster.
            if let Err(err) = self
                .change("rds:DeleteDBInstance", &[writer], request.send())
                .await
                && !matches!(err.kind, ErrorKind::NotFound | ErrorKind::Conflict)
            {
                return Err(err);
            }
            let request = self
                .client
                .delete_db_cluster()
                .db_cluster_identifier(cluster)
                .skip_final_snapshot(true);
            self.change("rds:DeleteDBCluster", &[cluster], request.send())
                .await
        })
    }

    fn disable_deletion_protection(
        &self,
        instance: &str,
    ) -> impl Future<Output = PortResult<()>> + Send {
        boxed(async move {
            let request = self
                .client
                .modify_db_instance()
                .db_instance_identifier(instance)
                .deletion_protection(false)
                .apply_immediately(true);
            self.change("rds:ModifyDBInstance", &[instance], request.send())
                .await
        })
    }

    fn delete_source(
        &self,
        instance: &str,
        final_snapshot: &str,
    ) -> impl Future<Output = PortResult<()>> + Send {
        boxed(async move {
            // The final snapshot is part of the deletion, so it holds the instance's last
            // state; automated backups stay for their own retention (the API's default deletes
            // them, and with them point-in-time recovery).
            let request = self
                .client
                .delete_db_instance()
                .db_instance_identifier(instance)
                .skip_final_snapshot(false)
                .final_db_snapshot_identifier(final_snapshot)
                .delete_automated_backups(false);
            // A repeat after a lost answer finds the instance `deleting` (a conflict, retried
            // with backoff); the machine sees the status and stops asking.
            self.change("rds:DeleteDBInstance", &[instance], request.send())
                .await
        })
    }

    fn set_tags(
        &self,
        arn: &str,
        tags: &BTreeMap<String, String>,
    ) -> impl Future<Output = PortResult<()>> + Send {
        boxed(self.add_tags(arn, tags, true))
    }

    fn mirror_tags(
        &self,
        arn: &str,
        tags: &BTreeMap<String, String>,
    ) -> impl Future<Output = PortResult<()>> + Send {
        boxed(self.add_tags(arn, tags, false))
    }
}

impl AwsRds {
    /// AddTagsToResource; `read_back`: the agent reads these tags (the trigger, the marker), so
    /// the resource is described directly until the next snapshot ([`Self::mutate`]).
    async fn add_tags(
        &self,
        arn: &str,
        tags: &BTreeMap<String, String>,
        read_back: bool,
    ) -> PortResult<()> {
        let request = self
            .client
            .add_tags_to_resource()
            .resource_name(arn)
            .set_tags(Some(sdk_tags(tags)));
        let r = if read_back {
            self.change("rds:AddTagsToResource", &[arn], request.send())
                .await
        } else {
            self.call("rds:AddTagsToResource", request.send())
                .await
                .map(drop)
        };
        match r {
            Ok(()) => Ok(()),
            // A resource that is gone (the deleted source) has nothing left to tag; the
            // phase mirror goes on to the next ARN.
            Err(err) if err.kind == ErrorKind::NotFound => {
                tracing::debug!(arn, error = %err, "not tagged: the resource is gone");
                Ok(())
            }
            Err(err) => Err(err),
        }
    }
}
