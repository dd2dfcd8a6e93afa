//! Instance and cluster describes: the whole fleet through [`super::cache::FleetCache`] (every
//! page, following `Marker`), or one resource directly by name.
//!
//! Guarantees: a resource changed by this adapter since the cached snapshot started, or absent from
//! it (created since), is described directly, so a migration always sees its own mutations; a
//! direct describe answers `None` for a resource RDS does not know (NotFound), never an error.

use std::sync::Arc;

use aws_sdk_rds::types::{DbCluster, DbInstance};
use tokio::time::Instant;

use super::AwsRds;
use super::convert::{matches_instance, opt, target_from};
use crate::aws::call::all_pages;
use crate::aws::classify::found;
use crate::core::observation::{ClusterMember, TargetCluster};
use crate::ports::PortResult;

impl AwsRds {
    pub(super) async fn all_instances(&self) -> PortResult<(Instant, Arc<Vec<DbInstance>>)> {
        self.instances
            .get(|| {
                all_pages(|marker| {
                    let request = self.client.describe_db_instances().max_records(100);
                    async move {
                        let r = self
                            .call("rds:DescribeDBInstances", request.set_marker(marker).send())
                            .await?;
                        Ok((r.db_instances.unwrap_or_default(), r.marker))
                    }
                })
            })
            .await
    }

    pub(super) async fn all_clusters(&self) -> PortResult<(Instant, Arc<Vec<DbCluster>>)> {
        self.clusters
            .get(|| {
                all_pages(|marker| {
                    let request = self.client.describe_db_clusters().max_records(100);
                    async move {
                        let r = self
                            .call("rds:DescribeDBClusters", request.set_marker(marker).send())
                            .await?;
                        Ok((r.db_clusters.unwrap_or_default(), r.marker))
                    }
                })
            })
            .await
    }

    /// One instance, bypassing the cache.
    pub(super) async fn instance_direct(&self, name: &str) -> PortResult<Option<DbInstance>> {
        let request = self
            .client
            .describe_db_instances()
            .db_instance_identifier(name);
        let out = found(self.call("rds:DescribeDBInstances", request.send()).await)?;
        Ok(out.and_then(|out| out.db_instances.unwrap_or_default().into_iter().next()))
    }

    pub(super) async fn cluster_direct(&self, name: &str) -> PortResult<Option<DbCluster>> {
        let request = self
            .client
            .describe_db_clusters()
            .db_cluster_identifier(name);
        let out = found(self.call("rds:DescribeDBClusters", request.send()).await)?;
        Ok(out.and_then(|out| out.db_clusters.unwrap_or_default().into_iter().next()))
    }

    /// An instance from the fleet answer, or (not in it: created since?) asked for directly.
    pub(super) async fn instance(&self, name: &str) -> PortResult<Option<DbInstance>> {
        let (at, all) = self.all_instances().await?;
        if !self.instances.changed_since(name, at)
            && let Some(i) = all.iter().find(|i| matches_instance(i, name))
        {
            return Ok(Some(i.clone()));
        }
        self.instance_direct(name).await
    }

    pub(super) async fn target_of(&self, c: &DbCluster) -> PortResult<TargetCluster> {
        let mut members = Vec::new();
        for m in c.db_cluster_members() {
            let Some(id) = m.db_instance_identifier() else {
                continue;
            };
            let status = match self.instance(id).await? {
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
