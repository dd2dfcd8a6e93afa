//! The preflight reads: what the core's preflight checks judge the source and the Region by
//! (Aurora engine versions, the source's user parameters, Aurora's default and static parameters
//! and the extensions its family allows, pending maintenance, account quotas, the KMS key, free
//! storage).
//!
//! Reads only; every paginated answer is read to its end. A default parameter group nobody changed
//! has no user parameters (not an error); free storage is `None` when CloudWatch fails or has no
//! point in the last 15 minutes: it never fails the read.

use aws_sdk_rds::types::Parameter as SdkParameter;
use jiff::Timestamp;

use super::AwsRds;
use super::convert::{allowed_extensions, opt};
use crate::aws::call::all_pages;
use crate::core::observation::{
    EngineVersion, KeyCheck, MetricKey, Parameter, PreflightInputs, Quota, SourceInstance,
};
use crate::ports::{ErrorKind, MetricQuery, Metrics, PortResult, Rds};

impl AwsRds {
    /// [`Rds::preflight_inputs`].
    pub(super) async fn read_preflight_inputs(
        &self,
        source: &SourceInstance,
    ) -> PortResult<PreflightInputs> {
        // Aurora PostgreSQL versions of the Region (the Region's, read once an hour).
        let aurora_versions = self.aurora_versions().await?;
        let aurora_versions = aurora_versions.as_ref().clone();
        let group = &source.parameter_group.name;
        let source_parameters = self
            .source_parameters
            .get(group.clone(), || self.source_user_parameters(group))
            .await?
            .as_ref()
            .clone();
        let major = source.engine_version.split('.').next().unwrap_or_default();
        let family = aurora_versions
            .iter()
            .find(|v| v.version.split('.').next() == Some(major))
            .map(|v| v.family.clone())
            .unwrap_or_else(|| format!("aurora-postgresql{major}"));
        let cluster_defaults = self.parameters_of_family(&family, true).await?;
        let instance_defaults = self.parameters_of_family(&family, false).await?;
        let names = |ps: &[SdkParameter]| -> Vec<String> {
            ps.iter()
                .filter_map(|p| p.parameter_name().map(str::to_string))
                .collect()
        };
        let mut aurora_static_parameters: Vec<String> = cluster_defaults
            .iter()
            .chain(instance_defaults.iter())
            .filter(|p| p.apply_type() == Some("static"))
            .filter_map(|p| p.parameter_name().map(str::to_string))
            .collect();
        aurora_static_parameters.sort();
        aurora_static_parameters.dedup();

        let pending_maintenance = self
            .pending_maintenance()
            .await?
            .iter()
            .filter(|(arn, _)| *arn == source.arn)
            .map(|(_, action)| action.clone())
            .collect();
        let quotas = self.account_quotas().await?;
        let kms_key = match (&source.storage_encrypted, &source.kms_key_id) {
            (true, Some(key)) => self.keys.check(key).await?,
            _ => KeyCheck::Unchecked,
        };
        Ok(PreflightInputs {
            // The SQL preflight is the driver's (`agent::observe`), through the database port.
            database: None,
            aurora_versions,
            source_parameters,
            aurora_cluster_parameters: names(&cluster_defaults),
            aurora_instance_parameters: names(&instance_defaults),
            aurora_static_parameters,
            pending_maintenance,
            quotas,
            kms_key,
            free_storage_bytes: self.latest_free_storage(&source.identifier).await,
            // Filled by the driver from EC2 when consumers are declared.
            cdc_consumer_groups: None,
            aurora_extensions: allowed_extensions(&cluster_defaults),
            // The router's record is read beside, by the router (`agent::observe`).
            router_view: None,
        })
    }

    /// Aurora PostgreSQL's versions in the Region, every page, read once an hour for every
    /// preflight (`region.rs`).
    async fn aurora_versions(&self) -> PortResult<std::sync::Arc<Vec<EngineVersion>>> {
        self.engine_versions
            .get((), || {
                all_pages(|marker| {
                    let request = self
                        .client
                        .describe_db_engine_versions()
                        .engine("aurora-postgresql")
                        .set_marker(marker);
                    async move {
                        let r = self
                            .call("rds:DescribeDBEngineVersions", request.send())
                            .await?;
                        let versions = r.db_engine_versions().iter().filter_map(|v| {
                            Some(EngineVersion {
                                version: v.engine_version()?.to_string(),
                                family: opt(v.db_parameter_group_family()),
                            })
                        });
                        Ok((versions.collect(), r.marker))
                    }
                })
            })
            .await
    }

    /// The Region's pending maintenance actions, every page, as (resource ARN, action and its
    /// description), read once every [`super::region::PENDING_MAINTENANCE_TTL`] for every
    /// preflight: the unfiltered read lists only resources that have an action pending, so a
    /// page serves many preflights where a read per source was a request each.
    async fn pending_maintenance(&self) -> PortResult<std::sync::Arc<Vec<(String, String)>>> {
        self.pending_maintenance
            .get((), || {
                all_pages(|marker| {
                    let request = self
                        .client
                        .describe_pending_maintenance_actions()
                        .max_records(100)
                        .set_marker(marker);
                    async move {
                        let r = self
                            .call("rds:DescribePendingMaintenanceActions", request.send())
                            .await?;
                        let actions = r.pending_maintenance_actions().iter().flat_map(|r| {
                            let arn = opt(r.resource_identifier());
                            r.pending_maintenance_action_details().iter().map(move |d| {
                                let action = match d.description() {
                                    Some(desc) => format!("{}: {desc}", opt(d.action())),
                                    None => opt(d.action()),
                                };
                                (arn.clone(), action)
                            })
                        });
                        Ok((actions.collect(), r.marker))
                    }
                })
            })
            .await
    }

    /// The account's quotas as RDS has them now (the port's answer is this, kept for
    /// [`super::region::QUOTA_TTL`]).
    pub(super) async fn read_account_quotas(&self) -> PortResult<Vec<Quota>> {
        let request = self.client.describe_account_attributes();
        let r = self
            .call("rds:DescribeAccountAttributes", request.send())
            .await?;
        Ok(r.account_quotas()
            .iter()
            .filter_map(|q| {
                Some(Quota {
                    name: q.account_quota_name()?.to_string(),
                    used: q.used().unwrap_or(0).max(0) as u64,
                    max: q.max().unwrap_or(0).max(0) as u64,
                })
            })
            .collect())
    }

    /// The engine's default parameters of `family`, for clusters or for instances: the Region's,
    /// read once an hour for every preflight (`region.rs`).
    async fn parameters_of_family(
        &self,
        family: &str,
        cluster: bool,
    ) -> PortResult<std::sync::Arc<Vec<SdkParameter>>> {
        self.family_defaults
            .get((family.to_string(), cluster), || {
                self.read_parameters_of_family(family, cluster)
            })
            .await
    }

    async fn read_parameters_of_family(
        &self,
        family: &str,
        cluster: bool,
    ) -> PortResult<Vec<SdkParameter>> {
        all_pages(|marker| async move {
            let defaults = if cluster {
                let request = self
                    .client
                    .describe_engine_default_cluster_parameters()
                    .db_parameter_group_family(family)
                    .set_marker(marker);
                self.call("rds:DescribeEngineDefaultClusterParameters", request.send())
                    .await?
                    .engine_defaults
            } else {
                let request = self
                    .client
                    .describe_engine_default_parameters()
                    .db_parameter_group_family(family)
                    .set_marker(marker);
                self.call("rds:DescribeEngineDefaultParameters", request.send())
                    .await?
                    .engine_defaults
            };
            Ok(defaults.map_or_else(Default::default, |d| {
                (d.parameters.unwrap_or_default(), d.marker)
            }))
        })
        .await
    }

    async fn source_user_parameters(&self, group: &str) -> PortResult<Vec<Parameter>> {
        if group.is_empty() {
            return Ok(Vec::new());
        }
        all_pages(|marker| {
            let request = self
                .client
                .describe_db_parameters()
                .db_parameter_group_name(group)
                .source("user")
                .set_marker(marker);
            async move {
                let r = match self.call("rds:DescribeDBParameters", request.send()).await {
                    Ok(r) => r,
                    // A default group nobody changed has no user parameters.
                    Err(e) if e.kind == ErrorKind::NotFound && group.starts_with("default.") => {
                        return Ok((Vec::new(), None));
                    }
                    Err(e) => return Err(e),
                };
                let parameters = r.parameters().iter().filter_map(|p| {
                    Some(Parameter {
                        name: p.parameter_name()?.to_string(),
                        value: p.parameter_value()?.to_string(),
                    })
                });
                Ok((parameters.collect(), r.marker))
            }
        })
        .await
    }

    /// Metrics reader used by preflight (FreeStorageSpace).
    async fn latest_free_storage(&self, instance: &str) -> Option<f64> {
        let now = Timestamp::now();
        let q = MetricQuery {
            key: MetricKey::SourceFreeStorage,
            instance: instance.to_string(),
            start: now - jiff::SignedDuration::from_mins(15),
            end: now,
            period_s: 60,
        };
        let series = self.metrics.fetch(std::slice::from_ref(&q)).await.ok()?;
        crate::core::observation::latest(series.first()?).map(|p| p.minimum)
    }
}
