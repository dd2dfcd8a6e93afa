//! RDS: describes (served from a short-lived fleet-wide cache) and idempotent mutations, all
//! through the account budget's rate limiter.
//!
//! This file is the adapter: [`AwsRds`], its `call`/`mutate` plumbing and the [`Rds`] port. Every
//! RDS request goes through `call` (waits for the rate limiter, counts the call and its failure by
//! kind); every request that changes a resource goes through `mutate`, which also marks the
//! resource so its next describes go to RDS directly instead of the shared fleet snapshot.
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
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_runtime_api::http::Response;
use jiff::Timestamp;

use super::classify::{classify, code};
use super::cloudwatch::AwsMetrics;
use super::kms::AwsKeys;
use super::limit::RateLimiter;
use super::{AwsSettings, CallCounter, sdk_ts, ts};
use crate::core::action::{ParameterGroupsSpec, ReplicaClusterSpec, WriterInstanceSpec};
use crate::core::observation::{
    InstanceEvent, InstanceEventKind, Observed, ParameterGroupsPresent, PreflightInputs, Quota,
    Snapshot, SourceInstance, TargetCluster,
};
use crate::ports::{ErrorKind, PortError, PortResult, Rds};

pub(crate) mod cache;
mod convert;
mod describe;
mod parameter_groups;
mod preflight;

use cache::FleetCache;
pub use convert::source_of;
use convert::{opt, sdk_tags, tags_of};

pub struct AwsRds {
    client: Client,
    metrics: AwsMetrics,
    calls: CallCounter,
    limiter: RateLimiter,
    keys: AwsKeys,
    instances: FleetCache<DbInstance>,
    clusters: FleetCache<DbCluster>,
    /// Every resource the agent creates carries `<prefix>:source` in its create request: the
    /// task role's IAM policy allows creates only with it.
    tag_prefix: String,
}

type RdsResult<T, E> = Result<T, SdkError<E, Response>>;

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
            limiter: RateLimiter::new(s.rds_requests_per_second, s.rds_burst),
            instances: FleetCache::new(s.describe_cache_ttl),
            clusters: FleetCache::new(s.describe_cache_ttl),
            tag_prefix: s.tag_prefix.clone(),
        }
    }

    /// The creation tag for a resource made for `source` (shared groups: `shared`).
    fn source_tag(&self, source: &str) -> Vec<Tag> {
        let mut t = BTreeMap::new();
        t.insert(format!("{}:source", self.tag_prefix), source.to_string());
        sdk_tags(&t)
    }

    /// Waits for the rate limiter, counts the call, and counts its failure by kind.
    async fn call<T, E, Fut>(&self, op: &'static str, f: Fut) -> RdsResult<T, E>
    where
        Fut: Future<Output = RdsResult<T, E>>,
        E: aws_smithy_types::error::metadata::ProvideErrorMetadata
            + std::error::Error
            + Send
            + Sync
            + 'static,
    {
        self.limiter.acquire().await;
        self.calls.count(op);
        let r = f.await;
        if let Err(e) = &r {
            self.calls.error(op, classify(op, e).kind);
        }
        r
    }

    /// These resources were changed: their next describes go to RDS directly.
    fn touch(&self, names: &[&str]) {
        for name in names {
            self.instances.touch(name);
            self.clusters.touch(name);
        }
    }

    /// A call that changes `names`: until the next fleet snapshot they are described by name
    /// (whether or not the call succeeded: a failed answer may hide a change that happened).
    async fn mutate<T, E, Fut>(&self, op: &'static str, names: &[&str], f: Fut) -> RdsResult<T, E>
    where
        Fut: Future<Output = RdsResult<T, E>>,
        E: aws_smithy_types::error::metadata::ProvideErrorMetadata
            + std::error::Error
            + Send
            + Sync
            + 'static,
    {
        let r = self.call(op, f).await;
        self.touch(names);
        r
    }
}

impl Rds for AwsRds {
    fn describe_source(
        &self,
        instance: &str,
    ) -> impl std::future::Future<Output = PortResult<Observed<SourceInstance>>> + Send {
        Box::pin(async move {
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
    ) -> impl std::future::Future<Output = PortResult<Vec<SourceInstance>>> + Send {
        Box::pin(async move {
            let (_, all) = self.all_instances().await?;
            Ok(all
                .iter()
                .filter(|i| i.engine() == Some("postgres"))
                .filter(|i| i.tag_list().iter().any(|t| t.key() == Some(tag_key)))
                .map(source_of)
                .collect())
        })
    }

    fn describe_target(
        &self,
        cluster: &str,
    ) -> impl std::future::Future<Output = PortResult<Observed<TargetCluster>>> + Send {
        Box::pin(async move {
            match self.cluster(cluster).await? {
                Some(c) => Ok(Observed::Present(self.target_of(&c).await?)),
                None => Ok(Observed::Absent),
            }
        })
    }

    fn parameter_groups_present(
        &self,
        cluster_group: &str,
        instance_group: &str,
    ) -> impl std::future::Future<Output = PortResult<ParameterGroupsPresent>> + Send {
        Box::pin(self.read_parameter_groups(cluster_group, instance_group))
    }

    fn preflight_inputs(
        &self,
        source: &SourceInstance,
    ) -> impl std::future::Future<Output = PortResult<PreflightInputs>> + Send {
        Box::pin(self.read_preflight_inputs(source))
    }

    fn account_quotas(&self) -> impl std::future::Future<Output = PortResult<Vec<Quota>>> + Send {
        Box::pin(self.read_account_quotas())
    }

    fn describe_snapshot(
        &self,
        snapshot: &str,
    ) -> impl std::future::Future<Output = PortResult<Observed<Snapshot>>> + Send {
        Box::pin(async move {
            const OP: &str = "rds:DescribeDBSnapshots";
            match self
                .call(
                    OP,
                    self.client
                        .describe_db_snapshots()
                        .db_snapshot_identifier(snapshot)
                        .send(),
                )
                .await
            {
                Ok(r) => Ok(r
                    .db_snapshots()
                    .first()
                    .map(|s| Snapshot {
                        identifier: opt(s.db_snapshot_identifier()),
                        status: opt(s.status()),
                        instance: opt(s.db_instance_identifier()),
                        created_at: s.snapshot_create_time().map(super::ts),
                    })
                    .into()),
                Err(e) => match classify(OP, &e) {
                    err if err.kind == ErrorKind::NotFound => Ok(Observed::Absent),
                    err => Err(err),
                },
            }
        })
    }

    fn instance_events(
        &self,
        instance: &str,
        since: Timestamp,
    ) -> impl std::future::Future<Output = PortResult<Vec<InstanceEvent>>> + Send {
        Box::pin(async move {
            let mut out = Vec::new();
            let mut marker: Option<String> = None;
            loop {
                const OP: &str = "rds:DescribeEvents";
                let r = self
                    .call(
                        OP,
                        self.client
                            .describe_events()
                            .source_identifier(instance)
                            .source_type(SourceType::DbInstance)
                            .start_time(sdk_ts(since))
                            .set_marker(marker.clone())
                            .send(),
                    )
                    .await
                    .map_err(|e| classify(OP, &e))?;
                out.extend(r.events().iter().filter_map(|e| {
                    Some(InstanceEvent {
                        at: ts(e.date()?),
                        kind: InstanceEventKind::from_message(e.message().unwrap_or_default()),
                    })
                }));
                marker = r.marker().map(str::to_string);
                if marker.is_none() {
                    break;
                }
            }
            Ok(out)
        })
    }

    fn ensure_parameter_groups(
        &self,
        spec: &ParameterGroupsSpec,
    ) -> impl std::future::Future<Output = PortResult<()>> + Send {
        Box::pin(self.ensure_groups(spec))
    }

    fn create_replica_cluster(
        &self,
        spec: &ReplicaClusterSpec,
    ) -> impl std::future::Future<Output = PortResult<()>> + Send {
        Box::pin(async move {
            const OP: &str = "rds:CreateDBCluster";
            let r = self
                .mutate(
                    OP,
                    &[&spec.cluster],
                    self.client
                        .create_db_cluster()
                        .db_cluster_identifier(&spec.cluster)
                        .engine("aurora-postgresql")
                        .engine_version(&spec.engine_version)
                        .replication_source_identifier(&spec.source_arn)
                        .db_cluster_parameter_group_name(&spec.cluster_parameter_group)
                        .set_db_subnet_group_name(
                            Some(spec.subnet_group.clone()).filter(|s| !s.is_empty()),
                        )
                        .set_vpc_security_group_ids(Some(spec.security_groups.clone()))
                        .storage_encrypted(spec.storage_encrypted)
                        .set_kms_key_id(spec.kms_key_id.clone())
                        .set_tags(Some(sdk_tags(&spec.tags)))
                        .send(),
                )
                .await;
            match r {
                Ok(_) => Ok(()),
                // moto answers a repeat with DBClusterSnapshotAlreadyExistsFault, AWS with
                // DBClusterAlreadyExistsFault: any conflict is checked the same way.
                Err(e) if classify(OP, &e).kind == ErrorKind::Conflict => {
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
                Err(e) => Err(classify(OP, &e)),
            }
        })
    }

    fn create_writer_instance(
        &self,
        spec: &WriterInstanceSpec,
    ) -> impl std::future::Future<Output = PortResult<()>> + Send {
        Box::pin(async move {
            const OP: &str = "rds:CreateDBInstance";
            let r = self
                .mutate(
                    OP,
                    &[&spec.instance, &spec.cluster],
                    self.client
                        .create_db_instance()
                        .db_instance_identifier(&spec.instance)
                        .db_cluster_identifier(&spec.cluster)
                        .engine("aurora-postgresql")
                        .db_instance_class(&spec.instance_class)
                        .db_parameter_group_name(&spec.parameter_group)
                        .set_tags(Some(sdk_tags(&spec.tags)))
                        .send(),
                )
                .await;
            match r {
                Ok(_) => Ok(()),
                Err(e) if code(&e) == Some("DBInstanceAlreadyExists") => {
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
                }
                Err(e) => Err(classify(OP, &e)),
            }
        })
    }

    fn set_source_groups(
        &self,
        instance: &str,
        group_ids: &[String],
    ) -> impl std::future::Future<Output = PortResult<()>> + Send {
        Box::pin(async move {
            const OP: &str = "rds:ModifyDBInstance";
            let r = self
                .mutate(
                    OP,
                    &[instance],
                    self.client
                        .modify_db_instance()
                        .db_instance_identifier(instance)
                        .set_vpc_security_group_ids(Some(group_ids.to_vec()))
                        .apply_immediately(true)
                        .send(),
                )
                .await;
            r.map(|_| ()).map_err(|e| classify(OP, &e))
        })
    }

    fn reboot_instance(
        &self,
        instance: &str,
    ) -> impl std::future::Future<Output = PortResult<()>> + Send {
        Box::pin(async move {
            const OP: &str = "rds:RebootDBInstance";
            let r = self
                .mutate(
                    OP,
                    &[instance],
                    self.client
                        .reboot_db_instance()
                        .db_instance_identifier(instance)
                        .send(),
                )
                .await;
            r.map(|_| ()).map_err(|e| classify(OP, &e))
        })
    }

    fn promote_target(
        &self,
        cluster: &str,
    ) -> impl std::future::Future<Output = PortResult<()>> + Send {
        Box::pin(async move {
            const OP: &str = "rds:PromoteReadReplicaDBCluster";
            let r = self
                .mutate(
                    OP,
                    &[cluster],
                    self.client
                        .promote_read_replica_db_cluster()
                        .db_cluster_identifier(cluster)
                        .send(),
                )
                .await;
            match r {
                Ok(_) => Ok(()),
                Err(e) => {
                    let err = classify(OP, &e);
                    // A repeat after a lost answer: already promoted is what we asked for.
                    if err.kind == ErrorKind::Conflict
                        && let Some(c) = self.cluster_direct(cluster).await?
                        && c.replication_source_identifier().is_none_or(str::is_empty)
                    {
                        return Ok(());
                    }
                    Err(err)
                }
            }
        })
    }

    fn set_target_groups(
        &self,
        cluster: &str,
        group_ids: &[String],
    ) -> impl std::future::Future<Output = PortResult<()>> + Send {
        Box::pin(async move {
            const OP: &str = "rds:ModifyDBCluster";
            let r = self
                .mutate(
                    OP,
                    &[cluster],
                    self.client
                        .modify_db_cluster()
                        .db_cluster_identifier(cluster)
                        .set_vpc_security_group_ids(Some(group_ids.to_vec()))
                        .apply_immediately(true)
                        .send(),
                )
                .await;
            r.map(|_| ()).map_err(|e| classify(OP, &e))
        })
    }

    fn delete_target(
        &self,
        cluster: &str,
        writer: &str,
    ) -> impl std::future::Future<Output = PortResult<()>> + Send {
        Box::pin(async move {
            const DI: &str = "rds:DeleteDBInstance";
            let r = self
                .mutate(
                    DI,
                    &[writer],
                    self.client
                        .delete_db_instance()
                        .db_instance_identifier(writer)
                        .skip_final_snapshot(true)
                        .send(),
                )
                .await;
            if let Err(e) = r {
                let err = classify(DI, &e);
                // Gone already, or already being deleted: carry on with the cluster.
                if !matches!(err.kind, ErrorKind::NotFound | ErrorKind::Conflict) {
                    return Err(err);
                }
            }
            const DC: &str = "rds:DeleteDBCluster";
            let r = self
                .mutate(
                    DC,
                    &[cluster],
                    self.client
                        .delete_db_cluster()
                        .db_cluster_identifier(cluster)
                        .skip_final_snapshot(true)
                        .send(),
                )
                .await;
            r.map(|_| ()).map_err(|e| classify(DC, &e))
        })
    }

    fn disable_deletion_protection(
        &self,
        instance: &str,
    ) -> impl std::future::Future<Output = PortResult<()>> + Send {
        Box::pin(async move {
            const OP: &str = "rds:ModifyDBInstance";
            let r = self
                .mutate(
                    OP,
                    &[instance],
                    self.client
                        .modify_db_instance()
                        .db_instance_identifier(instance)
                        .deletion_protection(false)
                        .apply_immediately(true)
                        .send(),
                )
                .await;
            r.map(|_| ()).map_err(|e| classify(OP, &e))
        })
    }

    fn delete_source(
        &self,
        instance: &str,
        final_snapshot: &str,
    ) -> impl std::future::Future<Output = PortResult<()>> + Send {
        Box::pin(async move {
            const OP: &str = "rds:DeleteDBInstance";
            // The final snapshot is part of the deletion, so it holds the instance's last
            // state; automated backups stay for their own retention (the API's default deletes
            // them, and with them point-in-time recovery).
            let r = self
                .mutate(
                    OP,
                    &[instance],
                    self.client
                        .delete_db_instance()
                        .db_instance_identifier(instance)
                        .skip_final_snapshot(false)
                        .final_db_snapshot_identifier(final_snapshot)
                        .delete_automated_backups(false)
                        .send(),
                )
                .await;
            // A repeat after a lost answer finds the instance `deleting` (a conflict, retried
            // with backoff); the machine sees the status and stops asking.
            r.map(|_| ()).map_err(|e| classify(OP, &e))
        })
    }

    fn set_tags(
        &self,
        arn: &str,
        tags: &BTreeMap<String, String>,
    ) -> impl std::future::Future<Output = PortResult<()>> + Send {
        Box::pin(async move {
            const OP: &str = "rds:AddTagsToResource";
            let r = self
                .mutate(
                    OP,
                    &[arn],
                    self.client
                        .add_tags_to_resource()
                        .resource_name(arn)
                        .set_tags(Some(sdk_tags(tags)))
                        .send(),
                )
                .await;
            match r {
                Ok(_) => Ok(()),
                Err(e) => {
                    let err = classify(OP, &e);
                    // A resource that is gone (the deleted source) has nothing left to tag; the
                    // phase mirror goes on to the next ARN.
                    if err.kind == ErrorKind::NotFound {
                        tracing::debug!(arn, error = %err, "not tagged: the resource is gone");
                        Ok(())
                    } else {
                        Err(err)
                    }
                }
            }
        })
    }
}
