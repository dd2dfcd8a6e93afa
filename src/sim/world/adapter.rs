//! What the agent process's RDS adapter holds in memory, run for real on virtual time: the
//! account budget's [`RateLimiter`] every `rds:` request waits for, and the fleet describe caches
//! ([`FleetCache`]) with their rule for when one resource is served from the fleet snapshot
//! (`FleetCache::lookup`) and their `touch` after a mutation. The simulator fakes only the I/O
//! below them: a cache's fetch is the paged describe-all (one `rds:` call per page of 100, in
//! identifier order after the marker, each page read when its request lands), so an answer served
//! from a snapshot is up to the TTL old, as the real adapter's is.
//!
//! One `RdsAdapter` per agent process (`SimPort::new_process`): a crash loses the snapshots, the
//! touched marks and the bucket's state, as a real restart does. The settings are the adapter's
//! own defaults (`AwsSettings`: 5 requests/s, burst 5, TTL 5 s, longer for a large fleet), the rate
//! as the run sets it (`SimOptions::rds_rate_limit`).

use std::time::Duration;

use super::port::Delay;
use super::*;
use crate::aws::AwsSettings;
use crate::aws::limit::{MonotonicClock, RateLimiter};
use crate::aws::rds::batch::LaneBatchers;
use crate::aws::rds::cache::{FleetCache, ttl_per_item};
use crate::aws::rds::region::{
    PENDING_MAINTENANCE_TTL, PRESENT_GROUPS_TTL, QUOTA_TTL, REGION_TTL, RegionCache,
    SOURCE_PARAMETERS_TTL,
};

/// Items per page of a describe-all (`MaxRecords`).
const PAGE: usize = 100;

/// The world's virtual time as the adapter's monotonic clock.
pub(super) struct VirtualClock {
    state: Arc<Mutex<State>>,
}

impl VirtualClock {
    fn now_ms(&self) -> Ms {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).now
    }
}

impl MonotonicClock for VirtualClock {
    fn now(&self) -> Duration {
        Duration::from_millis(self.now_ms().max(0) as u64)
    }

    /// Rounds up to the next millisecond: a wait never ends early.
    fn sleep(&self, d: Duration) -> impl Future<Output = ()> + Send {
        let until = self.now_ms() + d.as_nanos().div_ceil(1_000_000) as Ms;
        Delay::until(&self.state, until)
    }
}

/// The RDS adapter's memory in one agent process.
pub(crate) struct RdsAdapter {
    pub(super) limiter: RateLimiter<VirtualClock>,
    instances: FleetCache<SourceInstance, VirtualClock>,
    clusters: FleetCache<TargetCluster, VirtualClock>,
    /// Direct describes batched across migrations, as the adapter's (`aws::rds::batch`).
    instance_batch: LaneBatchers<String, SourceInstance>,
    cluster_batch: LaneBatchers<String, TargetCluster>,
    event_batch: LaneBatchers<(String, Timestamp), (String, InstanceEvent)>,
    /// The Region's answers every preflight reads, once an hour, as the adapter's
    /// (`aws::rds::region`): Aurora's engine versions, and each family's engine defaults
    /// (cluster: `true`). The simulator's preflight answer is the world's; these hold when the
    /// calls were made.
    pub(super) engine_versions: RegionCache<(), (), VirtualClock>,
    pub(super) family_defaults: RegionCache<(String, bool), (), VirtualClock>,
    /// As the adapter's: the Region's pending maintenance for 10 minutes, the account's quotas
    /// for a minute, a source group's parameters for a minute (every simulated source is in
    /// `orders-pg15`), parameter groups seen to exist for 10 minutes.
    pub(super) pending_maintenance: RegionCache<(), (), VirtualClock>,
    pub(super) quotas: RegionCache<(), Vec<Quota>, VirtualClock>,
    pub(super) source_parameters: RegionCache<String, (), VirtualClock>,
    pub(super) present_groups: RegionCache<(String, String), ParameterGroupsPresent, VirtualClock>,
}

impl RdsAdapter {
    pub(super) fn new(state: &Arc<Mutex<State>>) -> Self {
        let mut settings = AwsSettings::new("", "", "");
        settings.rds_requests_per_second = state.lock().unwrap_or_else(|e| e.into_inner()).rds_rate;
        let clock = || VirtualClock {
            state: state.clone(),
        };
        RdsAdapter {
            limiter: RateLimiter::with_clock(
                settings.rds_requests_per_second,
                settings.rds_burst,
                clock(),
            ),
            instances: FleetCache::with_clock(settings.describe_cache_ttl, clock())
                .scaled(ttl_per_item(settings.rds_requests_per_second)),
            clusters: FleetCache::with_clock(settings.describe_cache_ttl, clock())
                .scaled(ttl_per_item(settings.rds_requests_per_second)),
            instance_batch: LaneBatchers::new(DESCRIBE_INSTANCES),
            cluster_batch: LaneBatchers::new(DESCRIBE_CLUSTERS),
            event_batch: LaneBatchers::new("rds:DescribeEvents"),
            engine_versions: RegionCache::with_clock(REGION_TTL, clock()),
            family_defaults: RegionCache::with_clock(REGION_TTL, clock()),
            pending_maintenance: RegionCache::with_clock(PENDING_MAINTENANCE_TTL, clock()),
            quotas: RegionCache::with_clock(QUOTA_TTL, clock()),
            source_parameters: RegionCache::with_clock(SOURCE_PARAMETERS_TTL, clock()),
            present_groups: RegionCache::with_clock(PRESENT_GROUPS_TTL, clock()),
        }
    }
}

/// `name` (identifier, any case, or ARN) names the resource `identifier`/`arn`.
fn names(identifier: &str, arn: &str, name: &str) -> bool {
    identifier.eq_ignore_ascii_case(name) || arn == name
}

/// The page after `marker` of the sorted identifiers `ids`, and the next marker.
fn page_of(ids: &[String], marker: Option<&str>) -> (Vec<String>, Option<String>) {
    let after: Vec<String> = ids
        .iter()
        .filter(|id| marker.is_none_or(|m| id.as_str() > m))
        .take(PAGE + 1)
        .cloned()
        .collect();
    let next = (after.len() > PAGE).then(|| after[PAGE - 1].clone());
    (after.into_iter().take(PAGE).collect(), next)
}

impl State {
    /// One page of DescribeDBInstances as RDS would answer it now: the sources' views, and the
    /// Aurora writer instances by name and engine only (the simulator describes them with their
    /// cluster): they take room in the pages and count in the snapshot's size, whose TTL grows
    /// with it (`FleetCache::scaled`), as the adapter's snapshot holds them. Left out, a fleet
    /// past its decommissions (few sources, many writers) had a one-page TTL on a many-page
    /// snapshot: 19 page requests a migration in the 300-migration fleet.
    fn instance_page(&mut self, marker: Option<&str>) -> (Vec<SourceInstance>, Option<String>) {
        let mut ids: Vec<String> = self
            .sources
            .iter()
            .filter(|(_, s)| s.deleted_at.is_none())
            .map(|(id, _)| id.clone())
            .chain(
                self.clusters
                    .values()
                    .flat_map(|c| c.view.members.iter().map(|m| m.identifier.clone())),
            )
            .collect();
        ids.sort();
        let (page, next) = page_of(&ids, marker);
        let views = page
            .iter()
            .map(|id| {
                if self.sources.contains_key(id) {
                    self.source_view(id)
                } else {
                    SourceInstance {
                        identifier: id.clone(),
                        engine: "aurora-postgresql".to_string(),
                        ..SourceInstance::default()
                    }
                }
            })
            .collect();
        (views, next)
    }

    /// One page of DescribeDBClusters as RDS would answer it now.
    fn cluster_page(&mut self, marker: Option<&str>) -> (Vec<TargetCluster>, Option<String>) {
        let ids: Vec<String> = self.clusters.keys().cloned().collect();
        let (page, next) = page_of(&ids, marker);
        let views = page
            .iter()
            .filter_map(|id| match self.describe_target(id) {
                Observed::Present(c) => Some(c),
                _ => None,
            })
            .collect();
        (views, next)
    }
}

impl SimPort {
    /// A cache's fetch: every page of a describe-all, one `rds:` call each, following the marker
    /// (the adapter's own page loop, `aws::call::all_pages`).
    async fn all_pages<T>(
        &self,
        op: &'static str,
        page: impl Fn(&mut State, Option<&str>) -> (Vec<T>, Option<String>),
    ) -> PortResult<Vec<T>> {
        let page = &page;
        crate::aws::call::all_pages(|marker: Option<String>| async move {
            self.shared(op, "snapshot", 0);
            self.call(op, false, |s| Ok(page(s, marker.as_deref())))
                .await
        })
        .await
    }

    async fn fetch_sources(&self) -> PortResult<Vec<SourceInstance>> {
        self.all_pages(DESCRIBE_INSTANCES, State::instance_page)
            .await
    }

    async fn fetch_clusters(&self) -> PortResult<Vec<TargetCluster>> {
        self.all_pages(DESCRIBE_CLUSTERS, State::cluster_page).await
    }

    /// DescribeDBInstances of one source, through the process's fleet cache as the adapter's
    /// `instance` does.
    pub(super) async fn source(&self, name: &str) -> PortResult<Option<SourceInstance>> {
        self.rds
            .instances
            .lookup(
                name,
                || self.fetch_sources(),
                |v| names(&v.identifier, &v.arn, name),
                || self.source_direct(name),
            )
            .await
    }

    /// DescribeDBInstances of one source by name, past the fleet cache: batched with the other
    /// migrations' direct describes waiting for the same turn, as the adapter's
    /// `instance_direct` (one request with `Filters: db-instance-id`).
    pub(super) async fn source_direct(&self, name: &str) -> PortResult<Option<SourceInstance>> {
        self.rds
            .instance_batch
            .here()
            .describe(
                name.to_string(),
                self.rds
                    .limiter
                    .acquire_after(self.rds.instance_batch.gather_window()),
                |names| {
                    self.shared(DESCRIBE_INSTANCES, "batch", names.len());
                    self.call_past_limiter(DESCRIBE_INSTANCES, move |s| {
                        let mut found = Vec::new();
                        for name in &names {
                            if let Some(v) = s.describe_source(name)?.present() {
                                found.push(v.clone());
                            }
                        }
                        Ok(found)
                    })
                },
                |v, name: &String| names(&v.identifier, &v.arn, name),
            )
            .await
    }

    /// The tagged PostgreSQL sources in the fleet snapshot.
    pub(super) async fn tagged_sources(&self, key: &str) -> PortResult<Vec<SourceInstance>> {
        let (_, all) = self.rds.instances.get(|| self.fetch_sources()).await?;
        Ok(all
            .iter()
            .filter(|v| v.engine == "postgres" && v.tags.contains_key(key))
            .cloned()
            .collect())
    }

    /// Every PostgreSQL source in the fleet snapshot (the adapter's `list_sources`).
    pub(super) async fn postgres_sources(&self) -> PortResult<Vec<SourceInstance>> {
        let (_, all) = self.rds.instances.get(|| self.fetch_sources()).await?;
        Ok(all
            .iter()
            .filter(|v| v.engine == "postgres")
            .cloned()
            .collect())
    }

    /// DescribeDBClusters of one cluster, through the process's fleet cache as the adapter's
    /// `cluster` does.
    pub(super) async fn target(&self, name: &str) -> PortResult<Option<TargetCluster>> {
        self.rds
            .clusters
            .lookup(
                name,
                || self.fetch_clusters(),
                |c| names(&c.identifier, &c.arn, name),
                || self.target_direct(name),
            )
            .await
    }

    /// DescribeDBClusters of one cluster by name, past the fleet cache, batched as
    /// [`Self::source_direct`].
    pub(super) async fn target_direct(&self, name: &str) -> PortResult<Option<TargetCluster>> {
        self.rds
            .cluster_batch
            .here()
            .describe(
                name.to_string(),
                self.rds
                    .limiter
                    .acquire_after(self.rds.cluster_batch.gather_window()),
                |names| {
                    self.shared(DESCRIBE_CLUSTERS, "batch", names.len());
                    self.call_past_limiter(DESCRIBE_CLUSTERS, move |s| {
                        Ok(names
                            .iter()
                            .filter_map(|name| s.describe_target(name).present().cloned())
                            .collect())
                    })
                },
                |c, name: &String| names(&c.identifier, &c.arn, name),
            )
            .await
    }

    /// DescribeEvents of one instance since `since`, as the adapter's `instance_events`: one
    /// request of the Region's instance events since the earliest time of every migration
    /// waiting for the same turn (pages of 100 events, the first on the leader's turn).
    pub(super) async fn instance_events_batched(
        &self,
        instance: &str,
        since: Timestamp,
    ) -> PortResult<Vec<InstanceEvent>> {
        self.rds
            .event_batch
            .instance_events(
                instance,
                since,
                self.rds
                    .limiter
                    .acquire_after(self.rds.event_batch.gather_window()),
                |earliest| self.region_events(earliest),
            )
            .await
    }

    /// Every instance event of the Region since `since`, pages of 100 following the marker (the
    /// adapter's page loop, `aws::call::all_pages`), as RDS would answer each page when its
    /// request lands; the first page on the batch leader's turn, the next ones wait for theirs.
    async fn region_events(&self, since: Timestamp) -> PortResult<Vec<(String, InstanceEvent)>> {
        let first = std::sync::atomic::AtomicBool::new(true);
        let first = &first;
        crate::aws::call::all_pages(|marker: Option<String>| async move {
            let start: usize = marker.as_deref().map_or(0, |m| m.parse().unwrap_or(0));
            let page = move |s: &mut State| {
                let from = s.ms(since);
                let now = s.now;
                let all: Vec<(String, InstanceEvent)> = s
                    .events
                    .iter()
                    .filter(|(vis, at, _, _)| *at >= from && *vis <= now)
                    .map(|(_, at, id, msg)| {
                        (
                            id.to_ascii_lowercase(),
                            InstanceEvent {
                                at: s.ts(*at),
                                kind: InstanceEventKind::from_message(msg),
                            },
                        )
                    })
                    .collect();
                let start = start.min(all.len());
                let end = (start + PAGE).min(all.len());
                let next = (end < all.len()).then(|| end.to_string());
                Ok((all[start..end].to_vec(), next))
            };
            if first.swap(false, std::sync::atomic::Ordering::SeqCst) {
                self.call_past_limiter("rds:DescribeEvents", page).await
            } else {
                self.call("rds:DescribeEvents", false, page).await
            }
        })
        .await
    }

    /// Counts one request that serves many migrations (`State::rds_shared`).
    fn shared(&self, op: &'static str, kind: &'static str, looks: usize) {
        let kind = match (
            kind,
            crate::aws::limit::cutover_lane(),
            crate::aws::rds::batch::gathering_here(),
        ) {
            ("batch", true, true) => "gathered batch in the cutover lane",
            ("batch", true, false) => "batch in the cutover lane",
            _ => kind,
        };
        let mut s = self.lock();
        let e = s.rds_shared.entry((op, kind)).or_default();
        e.0 += 1;
        e.1 += looks as u64;
    }

    /// RDS announced a change to `name`: as the adapter's `heard_of_change`.
    pub(super) fn heard_of_change(&self, name: &str) {
        self.rds.instances.touch(name);
        self.rds.clusters.touch(name);
    }

    /// A person changed `name`'s tags: as the adapter's `heard_of_tag_change`.
    pub(super) fn heard_of_tag_change(&self, name: &str) {
        self.rds.instances.hear(name);
        self.rds.clusters.hear(name);
    }

    /// A mutating RDS call; then, as the adapter's `mutate` does (whether or not it succeeded),
    /// its resources are touched in both caches: described directly until the next snapshot.
    pub(super) async fn mutate<T>(
        &self,
        op: &'static str,
        names: &[&str],
        f: impl FnOnce(&mut State) -> PortResult<T>,
    ) -> PortResult<T> {
        let r = self.call(op, true, f).await;
        for name in names {
            self.heard_of_change(name);
        }
        r
    }
}
