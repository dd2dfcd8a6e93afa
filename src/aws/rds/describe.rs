//! Instance and cluster describes: the whole fleet through [`super::cache::FleetCache`] (every
//! page, following `Marker`), or one resource directly by name.
//!
//! Guarantees (the judgement is `FleetCache::lookup`'s, which the simulator runs too): a resource
//! changed by this adapter since the cached snapshot started, or absent from it (created since),
//! is described directly, so a migration always sees its own mutations; a direct describe answers
//! `None` for a resource RDS does not know (NotFound), never an error.

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_rds::types::{DbCluster, DbInstance, Filter};

use super::AwsRds;
use super::convert::{matches_cluster, matches_instance, opt, target_from};
use crate::aws::call::all_pages;
use crate::core::observation::{ClusterMember, TargetCluster};
use crate::ports::PortResult;

impl AwsRds {
    /// The fleet snapshot of instances (refreshed when older than its TTL).
    pub(super) async fn all_instances(&self) -> PortResult<(Duration, Arc<Vec<DbInstance>>)> {
        self.instances.get(|| self.fetch_instances()).await
    }

    /// Every instance, every page: the instance cache's fetch.
    async fn fetch_instances(&self) -> PortResult<Vec<DbInstance>> {
        all_pages(|marker| {
            let request = self.client.describe_db_instances().max_records(100);
            async move {
                let r = self
                    .call("rds:DescribeDBInstances", request.set_marker(marker).send())
                    .await?;
                Ok((r.db_instances.unwrap_or_default(), r.marker))
            }
        })
        .await
    }

    /// Every cluster, every page: the cluster cache's fetch.
    async fn fetch_clusters(&self) -> PortResult<Vec<DbCluster>> {
        all_pages(|marker| {
            let request = self.client.describe_db_clusters().max_records(100);
            async move {
                let r = self
                    .call("rds:DescribeDBClusters", request.set_marker(marker).send())
                    .await?;
                Ok((r.db_clusters.unwrap_or_default(), r.marker))
            }
        })
        .await
    }

    /// One instance as RDS has it now, bypassing the cache: in one request with every other
    /// migration's direct describe waiting for the same turn at the rate limiter (`batch.rs`).
    pub(super) async fn instance_direct(&self, name: &str) -> PortResult<Option<DbInstance>> {
        // Boxed: a batch's future holds its leader's whole request.
        Box::pin(
            self.instance_batch.here().describe(
                name.to_string(),
                self.limiter
                    .acquire_after(self.instance_batch.gather_window()),
                |names| self.instances_named(names),
                |i, name: &String| matches_instance(i, name),
            ),
        )
        .await
    }

    /// One cluster as RDS has it now, batched as [`Self::instance_direct`].
    pub(super) async fn cluster_direct(&self, name: &str) -> PortResult<Option<DbCluster>> {
        Box::pin(
            self.cluster_batch.here().describe(
                name.to_string(),
                self.limiter
                    .acquire_after(self.cluster_batch.gather_window()),
                |names| self.clusters_named(names),
                |c, name: &String| matches_cluster(c, name),
            ),
        )
        .await
    }

    /// The instances of `names` (identifiers or ARNs), in one request (`db-instance-id`
    /// accepts both); one that RDS does not know is absent. The batch's leader had the turn.
    async fn instances_named(&self, names: Vec<String>) -> PortResult<Vec<DbInstance>> {
        let filter = Filter::builder()
            .name("db-instance-id")
            .set_values(Some(names))
            .build();
        let request = self.client.describe_db_instances().filters(filter);
        let out = self
            .call_past_limiter("rds:DescribeDBInstances", request.send())
            .await?;
        Ok(out.db_instances.unwrap_or_default())
    }

    /// The instance whose resource id is `resource_id`, whatever its name, as RDS has it now
    /// (`dbi-resource-id`): one request, asked only when a source's name no longer finds it.
    pub(super) async fn instance_with_resource_id(
        &self,
        resource_id: &str,
    ) -> PortResult<Option<DbInstance>> {
        let filter = Filter::builder()
            .name("dbi-resource-id")
            .values(resource_id)
            .build();
        let request = self.client.describe_db_instances().filters(filter);
        let out = self.call("rds:DescribeDBInstances", request.send()).await?;
        Ok(out
            .db_instances
            .unwrap_or_default()
            .into_iter()
            .find(|i| i.dbi_resource_id() == Some(resource_id)))
    }

    /// The clusters of `names`, as [`Self::instances_named`].
    async fn clusters_named(&self, names: Vec<String>) -> PortResult<Vec<DbCluster>> {
        let filter = Filter::builder()
            .name("db-cluster-id")
            .set_values(Some(names))
            .build();
        let request = self.client.describe_db_clusters().filters(filter);
        let out = self
            .call_past_limiter("rds:DescribeDBClusters", request.send())
            .await?;
        Ok(out.db_clusters.unwrap_or_default())
    }

    /// An instance from the fleet answer, or (not in it: created since?) asked for directly.
    pub(super) async fn instance(&self, name: &str) -> PortResult<Option<DbInstance>> {
        self.instances
            .lookup(
                name,
                || self.fetch_instances(),
                |i| matches_instance(i, name),
                || self.instance_direct(name),
            )
            .await
    }

    /// A cluster from the fleet answer, or (changed since, or not in it) asked for directly.
    pub(super) async fn cluster(&self, name: &str) -> PortResult<Option<DbCluster>> {
        self.clusters
            .lookup(
                name,
                || self.fetch_clusters(),
                |c| matches_cluster(c, name),
                || self.cluster_direct(name),
            )
            .await
    }

    /// The cluster as the core's target, with its members' statuses from the instances they
    /// are. Only CreatingReplica reads a member's status (the writer being created); in the
    /// cutover lane, where no rule reads it, a member comes from the fleet snapshot even when it
    /// is older than the lane's base TTL ([`super::cache::snapshot_will_do`]): otherwise every
    /// cluster describe of a cutover look was followed by a direct describe of its writer.
    pub(super) async fn target_of(&self, c: &DbCluster) -> PortResult<TargetCluster> {
        let mut members = Vec::new();
        for m in c.db_cluster_members() {
            let Some(id) = m.db_instance_identifier() else {
                continue;
            };
            let member = if crate::aws::limit::cutover_lane() {
                Box::pin(super::cache::snapshot_will_do(self.instance(id))).await?
            } else {
                self.instance(id).await?
            };
            let status = match member {
                Some(i) => opt(i.db_instance_status()),
                None => "deleting".to_string(),
            };
            members.push(ClusterMember {
                identifier: id.to_string(),
                status,
            });
        }
        Ok(target_from(c, members))
    }
}
