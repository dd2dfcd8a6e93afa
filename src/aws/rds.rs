//! RDS: describes (served from a short-lived fleet-wide cache) and idempotent mutations, all
//! through the account budget's rate limiter.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_rds::Client;
use aws_sdk_rds::types::{DbCluster, DbInstance, Parameter as SdkParameter, SourceType, Tag};
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_runtime_api::http::Response;
use jiff::Timestamp;
use tokio::time::Instant;

use super::classify::{absent_if_not_found, classify, code};
use super::cloudwatch::AwsMetrics;
use super::kms::AwsKeys;
use super::limit::RateLimiter;
use super::{AwsSettings, CallCounter, sdk_ts, ts};
use crate::core::action::{
    ParameterGroupsSpec, ReplicaClusterSpec, TranslatedParameter, WriterInstanceSpec,
};
use crate::core::observation::{
    ClusterMember, Endpoint, EngineVersion, GroupMembership, InstanceEvent, InstanceEventKind,
    KeyCheck, MetricKey, Observed, Parameter, ParameterGroupMembership, ParameterGroupsPresent,
    PreflightInputs, Quota, Snapshot, SourceInstance, TargetCluster,
};
use crate::ports::{ErrorKind, MetricQuery, Metrics, PortError, PortResult, Rds};

/// One fleet-wide answer, valid for a TTL.
struct Cached<T> {
    /// When the fetch started: a change after it may be missing from `items`.
    at: Instant,
    items: Arc<Vec<T>>,
}

/// A describe-everything answer shared by every migration within its TTL: one page of 100
/// serves 100 migrations. A resource this adapter changed is described on its own until a
/// snapshot started after the change, so its migration sees its own mutation at once while
/// the others keep sharing the snapshot (invalidating the whole snapshot on every mutation
/// would re-read every page after each of a fleet's many tag and state changes).
struct FleetCache<T> {
    ttl: Duration,
    current: std::sync::Mutex<Option<Cached<T>>>,
    refresh: tokio::sync::Mutex<()>,
    /// Identifier (lower case, ARNs reduced to it) → when this adapter last changed it.
    touched: std::sync::Mutex<HashMap<String, Instant>>,
}

/// `arn:aws:rds:…:db:orders-pg` and `orders-pg` name the same thing; RDS ignores case.
fn resource_key(name: &str) -> String {
    name.rsplit(':').next().unwrap_or(name).to_ascii_lowercase()
}

impl<T> FleetCache<T> {
    fn new(ttl: Duration) -> Self {
        FleetCache {
            ttl,
            current: std::sync::Mutex::new(None),
            refresh: tokio::sync::Mutex::new(()),
            touched: std::sync::Mutex::new(HashMap::new()),
        }
    }

    fn fresh(&self) -> Option<(Instant, Arc<Vec<T>>)> {
        let current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let c = current.as_ref()?;
        (c.at.elapsed() < self.ttl).then(|| (c.at, c.items.clone()))
    }

    fn touch(&self, name: &str) {
        let mut touched = self.touched.lock().unwrap_or_else(|p| p.into_inner());
        touched.insert(resource_key(name), Instant::now());
    }

    /// Whether `name` changed after the snapshot taken at `at` started.
    fn changed_since(&self, name: &str, at: Instant) -> bool {
        let touched = self.touched.lock().unwrap_or_else(|p| p.into_inner());
        touched.get(&resource_key(name)).is_some_and(|t| *t >= at)
    }

    /// The snapshot and when its fetch started.
    async fn get<F, Fut>(&self, fetch: F) -> PortResult<(Instant, Arc<Vec<T>>)>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = PortResult<Vec<T>>>,
    {
        if let Some(fresh) = self.fresh() {
            return Ok(fresh);
        }
        // One refresh at a time: the others wait and take its answer.
        let _one = self.refresh.lock().await;
        if let Some(fresh) = self.fresh() {
            return Ok(fresh);
        }
        let at = Instant::now();
        let items = Arc::new(fetch().await?);
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Some(Cached {
            at,
            items: items.clone(),
        });
        // Changes older than this snapshot are in it.
        self.touched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, t| *t >= at);
        Ok((at, items))
    }
}

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

fn opt(s: Option<&str>) -> String {
    s.unwrap_or_default().to_string()
}

fn tags_of(list: &[Tag]) -> BTreeMap<String, String> {
    list.iter()
        .filter_map(|t| Some((t.key()?.to_string(), opt(t.value()))))
        .collect()
}

fn sdk_tags(tags: &BTreeMap<String, String>) -> Vec<Tag> {
    tags.iter()
        .map(|(k, v)| Tag::builder().key(k).value(v).build())
        .collect()
}

/// The SDK's instance as the core's source.
pub fn source_of(i: &DbInstance) -> SourceInstance {
    let pending = i
        .pending_modified_values()
        .is_some_and(|p| *p != aws_sdk_rds::types::PendingModifiedValues::builder().build());
    let pg = i.db_parameter_groups().first();
    SourceInstance {
        identifier: opt(i.db_instance_identifier()),
        arn: opt(i.db_instance_arn()),
        resource_id: opt(i.dbi_resource_id()),
        engine: opt(i.engine()),
        engine_version: opt(i.engine_version()),
        status: opt(i.db_instance_status()),
        instance_class: opt(i.db_instance_class()),
        allocated_storage_gib: i.allocated_storage().unwrap_or(0).max(0) as u32,
        has_pending_modifications: pending,
        parameter_group: ParameterGroupMembership {
            name: opt(pg.and_then(|g| g.db_parameter_group_name())),
            apply_status: opt(pg.and_then(|g| g.parameter_apply_status())),
        },
        backup_retention_days: i.backup_retention_period().unwrap_or(0).max(0) as u32,
        read_replicas: i.read_replica_db_instance_identifiers().to_vec(),
        aurora_replica_clusters: i.read_replica_db_cluster_identifiers().to_vec(),
        storage_encrypted: i.storage_encrypted().unwrap_or(false),
        kms_key_id: i.kms_key_id().map(str::to_string),
        iam_auth_enabled: i.iam_database_authentication_enabled().unwrap_or(false),
        deletion_protection: i.deletion_protection().unwrap_or(false),
        auto_minor_version_upgrade: i.auto_minor_version_upgrade().unwrap_or(false),
        security_groups: i
            .vpc_security_groups()
            .iter()
            .map(|g| GroupMembership {
                id: opt(g.vpc_security_group_id()),
                status: opt(g.status()),
            })
            .collect(),
        vpc_id: opt(i.db_subnet_group().and_then(|g| g.vpc_id())),
        subnet_group: opt(i.db_subnet_group().and_then(|g| g.db_subnet_group_name())),
        endpoint: i.endpoint().and_then(|e| {
            Some(Endpoint {
                address: e.address()?.to_string(),
                port: e.port().unwrap_or(5432) as u16,
            })
        }),
        multi_az: i.multi_az().unwrap_or(false),
        tags: tags_of(i.tag_list()),
    }
}

fn matches_instance(i: &DbInstance, name: &str) -> bool {
    i.db_instance_identifier()
        .is_some_and(|id| id.eq_ignore_ascii_case(name))
        || i.db_instance_arn() == Some(name)
}

fn matches_cluster(c: &DbCluster, name: &str) -> bool {
    c.db_cluster_identifier()
        .is_some_and(|id| id.eq_ignore_ascii_case(name))
        || c.db_cluster_arn() == Some(name)
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

    /// Every page of a describe (100 items each), following `Marker`: `page(marker)` asks for
    /// one and answers its items and the next marker.
    async fn all_pages<T, Fut>(&self, page: impl Fn(Option<String>) -> Fut) -> PortResult<Vec<T>>
    where
        Fut: Future<Output = PortResult<(Vec<T>, Option<String>)>>,
    {
        let mut out = Vec::new();
        let mut marker = None;
        loop {
            let (items, next) = page(marker).await?;
            out.extend(items);
            match next {
                Some(m) => marker = Some(m),
                None => return Ok(out),
            }
        }
    }

    async fn all_instances(&self) -> PortResult<(Instant, Arc<Vec<DbInstance>>)> {
        const OP: &str = "rds:DescribeDBInstances";
        self.instances
            .get(|| {
                self.all_pages(|marker| async {
                    let r = self
                        .call(
                            OP,
                            self.client
                                .describe_db_instances()
                                .max_records(100)
                                .set_marker(marker)
                                .send(),
                        )
                        .await
                        .map_err(|e| classify(OP, &e))?;
                    Ok((r.db_instances().to_vec(), r.marker().map(str::to_string)))
                })
            })
            .await
    }

    async fn all_clusters(&self) -> PortResult<(Instant, Arc<Vec<DbCluster>>)> {
        const OP: &str = "rds:DescribeDBClusters";
        self.clusters
            .get(|| {
                self.all_pages(|marker| async {
                    let r = self
                        .call(
                            OP,
                            self.client
                                .describe_db_clusters()
                                .max_records(100)
                                .set_marker(marker)
                                .send(),
                        )
                        .await
                        .map_err(|e| classify(OP, &e))?;
                    Ok((r.db_clusters().to_vec(), r.marker().map(str::to_string)))
                })
            })
            .await
    }

    /// One instance, bypassing the cache.
    async fn instance_direct(&self, name: &str) -> PortResult<Option<DbInstance>> {
        const OP: &str = "rds:DescribeDBInstances";
        match self
            .call(
                OP,
                self.client
                    .describe_db_instances()
                    .db_instance_identifier(name)
                    .send(),
            )
            .await
        {
            Ok(out) => Ok(out.db_instances().first().cloned()),
            Err(e) => absent_if_not_found(classify(OP, &e)),
        }
    }

    async fn cluster_direct(&self, name: &str) -> PortResult<Option<DbCluster>> {
        const OP: &str = "rds:DescribeDBClusters";
        match self
            .call(
                OP,
                self.client
                    .describe_db_clusters()
                    .db_cluster_identifier(name)
                    .send(),
            )
            .await
        {
            Ok(out) => Ok(out.db_clusters().first().cloned()),
            Err(e) => absent_if_not_found(classify(OP, &e)),
        }
    }

    /// An instance from the fleet answer, or (not in it: created since?) asked for directly.
    async fn instance(&self, name: &str) -> PortResult<Option<DbInstance>> {
        let (at, all) = self.all_instances().await?;
        if !self.instances.changed_since(name, at)
            && let Some(i) = all.iter().find(|i| matches_instance(i, name))
        {
            return Ok(Some(i.clone()));
        }
        self.instance_direct(name).await
    }

    async fn target_of(&self, c: &DbCluster) -> PortResult<TargetCluster> {
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
        Ok(TargetCluster {
            identifier: opt(c.db_cluster_identifier()),
            arn: opt(c.db_cluster_arn()),
            status: opt(c.status()),
            replication_source: c
                .replication_source_identifier()
                .filter(|s| !s.is_empty())
                .map(str::to_string),
            tags: tags_of(c.tag_list()),
            writer_endpoint: c.endpoint().map(|a| Endpoint {
                address: a.to_string(),
                port: c.port().unwrap_or(5432) as u16,
            }),
            security_groups: c
                .vpc_security_groups()
                .iter()
                .map(|g| GroupMembership {
                    id: opt(g.vpc_security_group_id()),
                    status: opt(g.status()),
                })
                .collect(),
            members,
        })
    }

    async fn parameters_of_family(
        &self,
        family: &str,
        cluster: bool,
    ) -> PortResult<Vec<SdkParameter>> {
        let mut out = Vec::new();
        let mut marker: Option<String> = None;
        loop {
            let (params, next) = if cluster {
                const OP: &str = "rds:DescribeEngineDefaultClusterParameters";
                let r = self
                    .call(
                        OP,
                        self.client
                            .describe_engine_default_cluster_parameters()
                            .db_parameter_group_family(family)
                            .set_marker(marker.clone())
                            .send(),
                    )
                    .await
                    .map_err(|e| classify(OP, &e))?;
                let d = r.engine_defaults();
                (
                    d.map(|d| d.parameters().to_vec()).unwrap_or_default(),
                    d.and_then(|d| d.marker()).map(str::to_string),
                )
            } else {
                const OP: &str = "rds:DescribeEngineDefaultParameters";
                let r = self
                    .call(
                        OP,
                        self.client
                            .describe_engine_default_parameters()
                            .db_parameter_group_family(family)
                            .set_marker(marker.clone())
                            .send(),
                    )
                    .await
                    .map_err(|e| classify(OP, &e))?;
                let d = r.engine_defaults();
                (
                    d.map(|d| d.parameters().to_vec()).unwrap_or_default(),
                    d.and_then(|d| d.marker()).map(str::to_string),
                )
            };
            out.extend(params);
            marker = next;
            if marker.is_none() {
                break;
            }
        }
        Ok(out)
    }

    async fn source_user_parameters(&self, group: &str) -> PortResult<Vec<Parameter>> {
        let mut out = Vec::new();
        if group.is_empty() {
            return Ok(out);
        }
        let mut marker: Option<String> = None;
        loop {
            const OP: &str = "rds:DescribeDBParameters";
            let r = match self
                .call(
                    OP,
                    self.client
                        .describe_db_parameters()
                        .db_parameter_group_name(group)
                        .source("user")
                        .set_marker(marker.clone())
                        .send(),
                )
                .await
            {
                Ok(r) => r,
                Err(e) => {
                    let err = classify(OP, &e);
                    // A default group nobody changed has no user parameters.
                    if err.kind == ErrorKind::NotFound && group.starts_with("default.") {
                        return Ok(out);
                    }
                    return Err(err);
                }
            };
            out.extend(r.parameters().iter().filter_map(|p| {
                Some(Parameter {
                    name: p.parameter_name()?.to_string(),
                    value: p.parameter_value()?.to_string(),
                })
            }));
            marker = r.marker().map(str::to_string);
            if marker.is_none() {
                break;
            }
        }
        Ok(out)
    }

    async fn modify_parameters(
        &self,
        group: &str,
        cluster: bool,
        params: &[TranslatedParameter],
    ) -> PortResult<()> {
        // ModifyDB(Cluster)ParameterGroup takes at most 20 parameters per call.
        for chunk in params.chunks(20) {
            let list: Vec<SdkParameter> = chunk
                .iter()
                .map(|p| {
                    SdkParameter::builder()
                        .parameter_name(&p.name)
                        .parameter_value(&p.value)
                        .apply_method(aws_sdk_rds::types::ApplyMethod::from(
                            p.apply_method.as_str(),
                        ))
                        .build()
                })
                .collect();
            if cluster {
                const OP: &str = "rds:ModifyDBClusterParameterGroup";
                self.call(
                    OP,
                    self.client
                        .modify_db_cluster_parameter_group()
                        .db_cluster_parameter_group_name(group)
                        .set_parameters(Some(list))
                        .send(),
                )
                .await
                .map_err(|e| classify(OP, &e))?;
            } else {
                const OP: &str = "rds:ModifyDBParameterGroup";
                self.call(
                    OP,
                    self.client
                        .modify_db_parameter_group()
                        .db_parameter_group_name(group)
                        .set_parameters(Some(list))
                        .send(),
                )
                .await
                .map_err(|e| classify(OP, &e))?;
            }
        }
        Ok(())
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
            let (at, all) = self.all_clusters().await?;
            let cached = all.iter().find(|c| matches_cluster(c, cluster));
            let found = match cached {
                Some(c) if !self.clusters.changed_since(cluster, at) => Some(c.clone()),
                _ => self.cluster_direct(cluster).await?,
            };
            match found {
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
        Box::pin(async move {
            const C: &str = "rds:DescribeDBClusterParameterGroups";
            let cluster = match self
                .call(
                    C,
                    self.client
                        .describe_db_cluster_parameter_groups()
                        .db_cluster_parameter_group_name(cluster_group)
                        .send(),
                )
                .await
            {
                Ok(r) => !r.db_cluster_parameter_groups().is_empty(),
                Err(e) => match classify(C, &e) {
                    err if err.kind == ErrorKind::NotFound => false,
                    err => return Err(err),
                },
            };
            const I: &str = "rds:DescribeDBParameterGroups";
            let instance = match self
                .call(
                    I,
                    self.client
                        .describe_db_parameter_groups()
                        .db_parameter_group_name(instance_group)
                        .send(),
                )
                .await
            {
                Ok(r) => !r.db_parameter_groups().is_empty(),
                Err(e) => match classify(I, &e) {
                    err if err.kind == ErrorKind::NotFound => false,
                    err => return Err(err),
                },
            };
            Ok(ParameterGroupsPresent { cluster, instance })
        })
    }

    fn preflight_inputs(
        &self,
        source: &SourceInstance,
    ) -> impl std::future::Future<Output = PortResult<PreflightInputs>> + Send {
        Box::pin(async move {
            // Aurora PostgreSQL versions of the Region.
            let mut aurora_versions = Vec::new();
            let mut marker: Option<String> = None;
            loop {
                const OP: &str = "rds:DescribeDBEngineVersions";
                let r = self
                    .call(
                        OP,
                        self.client
                            .describe_db_engine_versions()
                            .engine("aurora-postgresql")
                            .set_marker(marker.clone())
                            .send(),
                    )
                    .await
                    .map_err(|e| classify(OP, &e))?;
                aurora_versions.extend(r.db_engine_versions().iter().filter_map(|v| {
                    Some(EngineVersion {
                        version: v.engine_version()?.to_string(),
                        family: opt(v.db_parameter_group_family()),
                    })
                }));
                marker = r.marker().map(str::to_string);
                if marker.is_none() {
                    break;
                }
            }
            let source_parameters = self
                .source_user_parameters(&source.parameter_group.name)
                .await?;
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

            const PM: &str = "rds:DescribePendingMaintenanceActions";
            let pending = self
                .call(
                    PM,
                    self.client
                        .describe_pending_maintenance_actions()
                        .resource_identifier(&source.arn)
                        .send(),
                )
                .await
                .map_err(|e| classify(PM, &e))?;
            let pending_maintenance = pending
                .pending_maintenance_actions()
                .iter()
                .flat_map(|r| r.pending_maintenance_action_details())
                .map(|d| match d.description() {
                    Some(desc) => format!("{}: {desc}", opt(d.action())),
                    None => opt(d.action()),
                })
                .collect();
            let quotas = self.account_quotas().await?;
            let kms_key = match (&source.storage_encrypted, &source.kms_key_id) {
                (true, Some(key)) => self.keys.check(key).await?,
                _ => KeyCheck::Unchecked,
            };
            Ok(PreflightInputs {
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
            })
        })
    }

    fn account_quotas(&self) -> impl std::future::Future<Output = PortResult<Vec<Quota>>> + Send {
        Box::pin(async move {
            const OP: &str = "rds:DescribeAccountAttributes";
            let r = self
                .call(OP, self.client.describe_account_attributes().send())
                .await
                .map_err(|e| classify(OP, &e))?;
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
        })
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
        Box::pin(async move {
            // Groups are named by content hash: an existing group of that name has this content.
            const CC: &str = "rds:CreateDBClusterParameterGroup";
            let created = self
                .call(
                    CC,
                    self.client
                        .create_db_cluster_parameter_group()
                        .db_cluster_parameter_group_name(&spec.cluster_group)
                        .db_parameter_group_family(&spec.family)
                        .description(&spec.description)
                        .set_tags(Some(self.source_tag("shared")))
                        .send(),
                )
                .await;
            if let Err(e) = created {
                let err = classify(CC, &e);
                if err.kind != ErrorKind::Conflict {
                    return Err(err);
                }
            }
            self.modify_parameters(&spec.cluster_group, true, &spec.cluster_parameters)
                .await?;
            const CI: &str = "rds:CreateDBParameterGroup";
            let created = self
                .call(
                    CI,
                    self.client
                        .create_db_parameter_group()
                        .db_parameter_group_name(&spec.instance_group)
                        .db_parameter_group_family(&spec.family)
                        .description(&spec.description)
                        .set_tags(Some(self.source_tag("shared")))
                        .send(),
                )
                .await;
            if let Err(e) = created {
                let err = classify(CI, &e);
                if err.kind != ErrorKind::Conflict {
                    return Err(err);
                }
            }
            self.modify_parameters(&spec.instance_group, false, &spec.instance_parameters)
                .await
        })
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
