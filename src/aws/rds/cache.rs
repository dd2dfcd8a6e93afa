//! The fleet describe cache: one describe-everything answer (`DescribeDBInstances`,
//! `DescribeDBClusters`) shared by every migration the agent runs, for a TTL, and the one rule
//! for when a describe of one resource may be served from it ([`FleetCache::lookup`]).
//!
//! Guarantees: at most one refresh runs at a time (single flight: concurrent callers wait for it
//! and take its answer, even one that took longer than the TTL, since it started after they
//! asked); past its TTL a snapshot is served to no caller that asked after its fetch started; a
//! resource this adapter changed
//! (`touch`) reports `changed_since` a snapshot that started before the change, so its migration
//! describes it directly and sees its own mutation at once. Why: the account's RDS request
//! budget (~12/s) is shared by the whole fleet, and per-migration describes would spend it. The
//! cache knows nothing of the SDK: it holds any `T`, is filled by the caller's `fetch`, and runs
//! on any [`MonotonicClock`] (tokio's in the agent, virtual time in the simulator, which runs
//! this very cache over its fake RDS).

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::aws::limit::{MonotonicClock, TokioClock};
use crate::ports::PortResult;

/// One fleet-wide answer, valid for a TTL.
struct Cached<T> {
    /// When the fetch started: a change after it may be missing from `items`.
    at: Duration,
    /// How long it serves: longer for a larger fleet (`FleetCache::per_item`).
    ttl: Duration,
    items: Arc<Vec<T>>,
}

/// Items a describe-all returns per page (`MaxRecords` 100).
const ONE_PAGE: usize = 100;

/// The share of the RDS budget the fleet snapshots may spend refreshing: the rest is the
/// migrations' own (their mutations, the cutovers' direct describes).
pub(crate) const SNAPSHOT_BUDGET_SHARE: f64 = 0.05;

/// How much each item of a snapshot adds to its TTL so that refreshing it every TTL costs at
/// most [`SNAPSHOT_BUDGET_SHARE`] of `requests_per_second` (pages of 100): at 5 requests/s a
/// 1,000-instance Region's 10 pages serve for 40 s, not 5 s (at 5 s the two snapshots' refreshes
/// took three requests a second in the simulator's 500-migration fleet, most of its RDS calls).
/// The looks that can wait poll every minute or so; a cutover's look does not read a snapshot
/// older than the base TTL (`FleetCache::lookup`).
pub(crate) fn ttl_per_item(requests_per_second: f64) -> Duration {
    let rate = if requests_per_second.is_finite() && requests_per_second > 0.0 {
        requests_per_second
    } else {
        1.0
    };
    Duration::from_secs_f64(1.0 / (100.0 * SNAPSHOT_BUDGET_SHARE * rate))
}

/// The shortest TTL of a snapshot of more than one page, in a cache whose TTL grows with its
/// size ([`FleetCache::scaled`]): a large fleet's looks that read it (the phases that wait on
/// AWS for minutes: the replica's creation, replication, the soak, the retention, a turn) poll
/// once a minute, and a refresh costs every page, so refreshing it every few seconds bought
/// nothing they use. Measured in the simulator's fleets, the two snapshots' pages were the
/// largest share of the RDS calls: 29.6 a migration with 1,000 migrations, 60 with 300 (whose
/// run is as long: the retention's hour). A cutover's look never reads a snapshot older than
/// the base TTL (it describes directly, batched); a migration's own changes are described
/// directly until the next snapshot; a fleet of one page (a refresh is one request) keeps the
/// base TTL.
pub(crate) const MANY_PAGES_TTL: Duration = Duration::from_secs(120);

/// How old a snapshot a look that said it can wait on it ([`snapshot_will_do`]) may read, past
/// the cutover lane's base TTL: a large fleet's snapshot is refreshed every [`MANY_PAGES_TTL`]
/// at most (and every [`ttl_per_item`] × its size beyond), so such a look costs no request.
pub(crate) const SNAPSHOT_WILL_DO_AGE: Duration =
    Duration::from_secs(MANY_PAGES_TTL.as_secs() + 60);

tokio::task_local! {
    /// Set while a look whose describes only carry what does not change while it waits (an
    /// endpoint, the guards' tags) runs: see [`snapshot_will_do`].
    static SNAPSHOT_WILL_DO: ();
}

/// Runs `f` with its describes served from the fleet snapshot up to [`SNAPSHOT_WILL_DO_AGE`] old,
/// in the cutover lane too, and even when this adapter changed the resource since the snapshot
/// was taken; not when a person changed its tags since (a tag event: `FleetCache::hear`),
/// which may be an abort or a pause that the look must act on at once. For the looks that wait on something else (Promoting: the database path's writer
/// says by SQL when it has left recovery; the metric path describes the cluster directly) and
/// read from these describes only what the agent never changes: the endpoints, the guards' tags
/// that people set, whether the resource exists. Its changes (the source's groups and restart,
/// the promotion) are read by the looks that decide on them, which describe directly: the one
/// that asks for the promotion (the fence re-check), the one that sees it done. Without reading
/// past its own changes, each waiting look described the promoted cluster and the fenced source
/// directly until the next snapshot (the promotion request and the quarantine are seconds old):
/// 25 requests a migration promoting in the simulator's 1,000-migration fleet.
pub async fn snapshot_will_do<F: Future>(f: F) -> F::Output {
    SNAPSHOT_WILL_DO.scope((), f).await
}

fn snapshot_will_do_here() -> bool {
    SNAPSHOT_WILL_DO.try_with(|()| ()).is_ok()
}

tokio::task_local! {
    /// Set while a look that takes a resource's absence from the snapshot runs: see
    /// [`absence_will_do`].
    static ABSENCE_WILL_DO: ();
}

/// Runs `f` with a resource absent from the fleet snapshot taken as absent, when neither this
/// adapter nor an event changed it since the snapshot started, instead of described directly
/// (as "created since?"). For the look before the agent creates the replica's cluster
/// (CreatingReplica, nothing asked yet): it looks only to know whether to create, and a
/// cluster someone created since the snapshot is met by the creation itself, which answers
/// that the name is taken, is checked the same way (ours or not) and never touches one that is
/// not ours (`AwsRds::create_replica_cluster`). That direct describe was one request a
/// migration in the simulator's 1,000-migration fleet.
pub async fn absence_will_do<F: Future>(f: F) -> F::Output {
    ABSENCE_WILL_DO.scope((), f).await
}

fn absence_will_do_here() -> bool {
    ABSENCE_WILL_DO.try_with(|()| ()).is_ok()
}

/// A describe-everything answer shared by every migration within its TTL: one page of 100
/// serves 100 migrations. A resource this adapter changed is described on its own until a
/// snapshot started after the change, so its migration sees its own mutation at once while
/// the others keep sharing the snapshot (invalidating the whole snapshot on every mutation
/// would re-read every page after each of a fleet's many tag and state changes).
pub(crate) struct FleetCache<T, C: MonotonicClock = TokioClock> {
    /// The shortest TTL, whatever the snapshot's size.
    ttl: Duration,
    /// Added to the TTL per item of the snapshot ([`ttl_per_item`]); zero: a fixed TTL.
    per_item: Duration,
    clock: C,
    current: std::sync::Mutex<Option<Cached<T>>>,
    refresh: tokio::sync::Mutex<()>,
    /// Identifier (lower case, ARNs reduced to it) → when this adapter last changed it.
    touched: std::sync::Mutex<HashMap<String, Duration>>,
    /// Identifier → when a person last changed its tags (a tag event): unlike
    /// the agent's own changes, this is something a look that waits on the snapshot
    /// ([`snapshot_will_do`]) has not seen and may have to act on (an abort, a pause).
    heard: std::sync::Mutex<HashMap<String, Duration>>,
}

/// What the cache reads of an item to keep describing a resource the agent changed directly
/// while RDS is still applying the change.
///
/// Why: a resource this adapter changed is described directly until a snapshot that started
/// after the change (`FleetCache::touch`); but RDS applies some changes over seconds to minutes
/// (a security group change 5–40 s, a reboot, a promotion), and a snapshot taken meanwhile
/// shows the change half done. Served to a later look as if current, it showed the quarantine
/// group still `adding` after RDS had applied it, and Promoting's fence re-check judged the
/// fence broken (a fault-free run's catch-up proof taken twice: the simulator's database path,
/// `--seeds 100 --faults 0 --database-share 1`, seed 23). A snapshot that shows a touched
/// resource still settling keeps it touched.
pub(crate) trait Settles {
    /// Whether this item is the resource `key` (`resource_key`: lower case, no ARN prefix).
    fn is_named(&self, key: &str) -> bool;
    /// Whether RDS is still applying a change to it (a group membership not `active`, the
    /// instance `modifying` or `rebooting`, the cluster `modifying` or `promoting`).
    fn settling(&self) -> bool;
}

/// The statuses of an instance while RDS applies a change the agent asked for.
pub(crate) const INSTANCE_SETTLING: [&str; 2] = ["modifying", "rebooting"];
/// The statuses of a cluster while RDS applies a change the agent asked for.
pub(crate) const CLUSTER_SETTLING: [&str; 2] = ["modifying", "promoting"];

/// Whether a resource with `status` (one of `settling_statuses` while RDS applies a change) and
/// these security group memberships' statuses (`active` once applied; `adding`, `removing`
/// before) is still settling. The one rule every [`Settles`] implementation applies.
pub(crate) fn settling<'a>(
    status: &str,
    settling_statuses: &[&str],
    memberships: impl IntoIterator<Item = &'a str>,
) -> bool {
    settling_statuses.contains(&status)
        || memberships
            .into_iter()
            .any(|m| !m.eq_ignore_ascii_case("active"))
}

impl Settles for crate::core::observation::SourceInstance {
    fn is_named(&self, key: &str) -> bool {
        self.identifier.eq_ignore_ascii_case(key)
    }
    fn settling(&self) -> bool {
        let groups = self.security_groups.iter().map(|g| g.status.as_str());
        settling(&self.status, &INSTANCE_SETTLING, groups)
    }
}

impl Settles for crate::core::observation::TargetCluster {
    fn is_named(&self, key: &str) -> bool {
        self.identifier.eq_ignore_ascii_case(key)
    }
    fn settling(&self) -> bool {
        let groups = self.security_groups.iter().map(|g| g.status.as_str());
        settling(&self.status, &CLUSTER_SETTLING, groups)
    }
}

/// `arn:aws:rds:…:db:orders-pg` and `orders-pg` name the same thing; RDS ignores case.
fn resource_key(name: &str) -> String {
    name.rsplit(':').next().unwrap_or(name).to_ascii_lowercase()
}

impl<T> FleetCache<T> {
    /// A cache on tokio's clock.
    pub(crate) fn new(ttl: Duration) -> Self {
        Self::with_clock(ttl, TokioClock::default())
    }
}

impl<T, C: MonotonicClock> FleetCache<T, C> {
    pub(crate) fn with_clock(ttl: Duration, clock: C) -> Self {
        FleetCache {
            ttl,
            per_item: Duration::ZERO,
            clock,
            current: std::sync::Mutex::new(None),
            refresh: tokio::sync::Mutex::new(()),
            touched: std::sync::Mutex::new(HashMap::new()),
            heard: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// Whether a cutover's look may read the snapshot: it is younger than the base TTL, or
    /// there is none yet or it holds one page at most (refreshing it costs one request, as the
    /// look's own direct describe would).
    fn young_or_small(&self) -> bool {
        let current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        match current.as_ref() {
            None => true,
            Some(c) => {
                c.items.len() <= ONE_PAGE || self.clock.now().saturating_sub(c.at) < self.ttl
            }
        }
    }

    /// The TTL grows with the snapshot: each of its items adds `per_item` (see [`ttl_per_item`]).
    pub(crate) fn scaled(mut self, per_item: Duration) -> Self {
        self.per_item = per_item;
        self
    }

    /// The TTL of a snapshot of `items`: the base, longer by `per_item` each, and at least
    /// [`MANY_PAGES_TTL`] past one page in a scaled cache.
    fn ttl_of(&self, items: usize) -> Duration {
        let scaled = self
            .per_item
            .saturating_mul(items.try_into().unwrap_or(u32::MAX));
        let floor = if !self.per_item.is_zero() && items > ONE_PAGE {
            MANY_PAGES_TTL
        } else {
            Duration::ZERO
        };
        self.ttl.max(scaled).max(floor)
    }

    fn fresh(&self) -> Option<(Duration, Arc<Vec<T>>)> {
        let current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let c = current.as_ref()?;
        (self.clock.now().saturating_sub(c.at) < c.ttl).then(|| (c.at, c.items.clone()))
    }

    /// The snapshot if it is younger than `age`, whatever its TTL.
    fn younger_than(&self, age: Duration) -> Option<(Duration, Arc<Vec<T>>)> {
        let current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let c = current.as_ref()?;
        (self.clock.now().saturating_sub(c.at) < age).then(|| (c.at, c.items.clone()))
    }

    /// The snapshot if it is within its TTL or its fetch started at or after `asked`.
    fn fresh_or_started_since(&self, asked: Duration) -> Option<(Duration, Arc<Vec<T>>)> {
        let current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let c = current.as_ref()?;
        (c.at >= asked || self.clock.now().saturating_sub(c.at) < c.ttl)
            .then(|| (c.at, c.items.clone()))
    }

    /// `name` was changed (or may have been: a failed mutation may hide a change) by this
    /// adapter: it is described directly until a snapshot started after now.
    pub(crate) fn touch(&self, name: &str) {
        let now = self.clock.now();
        let mut touched = self.touched.lock().unwrap_or_else(|p| p.into_inner());
        touched.insert(resource_key(name), now);
    }

    /// A person changed `name`'s tags (a tag event): it is described directly until a snapshot
    /// started after now, by every look, even one that said the snapshot will do (the change
    /// may be an abort or a pause, which such a look reads from it).
    pub(crate) fn hear(&self, name: &str) {
        self.touch(name);
        let now = self.clock.now();
        let mut heard = self.heard.lock().unwrap_or_else(|p| p.into_inner());
        heard.insert(resource_key(name), now);
    }

    /// Whether `name` changed after the snapshot taken at `at` started.
    fn changed_since(&self, name: &str, at: Duration) -> bool {
        let touched = self.touched.lock().unwrap_or_else(|p| p.into_inner());
        touched.get(&resource_key(name)).is_some_and(|t| *t >= at)
    }

    /// Whether a person changed `name`'s tags after the snapshot taken at `at` started.
    fn heard_since(&self, name: &str, at: Duration) -> bool {
        let heard = self.heard.lock().unwrap_or_else(|p| p.into_inner());
        heard.get(&resource_key(name)).is_some_and(|t| *t >= at)
    }

    /// The snapshot (refreshed by `fetch` when it is older than the TTL), and when its fetch
    /// started.
    pub(crate) async fn get<F, Fut>(&self, fetch: F) -> PortResult<(Duration, Arc<Vec<T>>)>
    where
        T: Settles,
        F: FnOnce() -> Fut,
        Fut: Future<Output = PortResult<Vec<T>>>,
    {
        if let Some(fresh) = self.fresh() {
            return Ok(fresh);
        }
        let asked = self.clock.now();
        // One refresh at a time: the others wait and take its answer, even when it took longer
        // than the TTL (a fetch of many pages behind a busy rate limiter can): it started after
        // they asked. Refetching instead made every waiter fetch every page again, one after
        // the other (a third of the fetches of the simulator's 500-migration fleet).
        let _one = self.refresh.lock().await;
        if let Some(answer) = self.fresh_or_started_since(asked) {
            return Ok(answer);
        }
        let at = self.clock.now();
        let items = Arc::new(fetch().await?);
        let ttl = self.ttl_of(items.len());
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Some(Cached {
            at,
            ttl,
            items: items.clone(),
        });
        // Changes and tag changes older than this snapshot are in it, unless it shows RDS
        // still applying one: that resource stays touched, as if changed when it started.
        self.touched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|key, t| {
                if *t < at && items.iter().any(|i| i.is_named(key) && i.settling()) {
                    *t = at;
                }
                *t >= at
            });
        self.heard
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, t| *t >= at);
        Ok((at, items))
    }

    /// One resource, `name`: from the fleet snapshot (`fetch` refreshes it; `is` picks the
    /// resource out of it) unless this adapter changed it since the snapshot started or the
    /// snapshot does not hold it (created since?, unless [`absence_will_do`]); then `direct`
    /// describes it by name. A
    /// cutover's look (`aws::limit::cutover_lane`) reads no snapshot older than the base TTL
    /// (a large fleet's is up to [`ttl_per_item`] older): it describes directly instead,
    /// batched with the other cutovers' looks (`batch.rs`).
    pub(crate) async fn lookup<F, Fut, D, DFut>(
        &self,
        name: &str,
        fetch: F,
        is: impl Fn(&T) -> bool,
        direct: D,
    ) -> PortResult<Option<T>>
    where
        T: Clone + Settles,
        F: FnOnce() -> Fut,
        Fut: Future<Output = PortResult<Vec<T>>>,
        D: FnOnce() -> DFut,
        DFut: Future<Output = PortResult<Option<T>>>,
    {
        if snapshot_will_do_here()
            && let Some((at, all)) = self.younger_than(SNAPSHOT_WILL_DO_AGE)
            && !self.heard_since(name, at)
            && let Some(found) = all.iter().find(|i| is(i))
        {
            return Ok(Some(found.clone()));
        }
        if crate::aws::limit::cutover_lane() && !self.young_or_small() {
            // A snapshot older than the base TTL, of more than a page: refreshing it for one
            // cutover's look would cost every page; the direct describe is batched with the
            // other cutovers' and costs one request for all of them.
            return direct().await;
        }
        let (at, all) = self.get(fetch).await?;
        if !self.changed_since(name, at) {
            match all.iter().find(|i| is(i)) {
                Some(found) => return Ok(Some(found.clone())),
                None if absence_will_do_here() && !self.heard_since(name, at) => return Ok(None),
                None => {}
            }
        }
        direct().await
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

    use super::*;

    /// The tests' items: a name, settling when it ends in `:settling`.
    impl Settles for String {
        fn is_named(&self, key: &str) -> bool {
            self.split(':').next() == Some(key)
        }
        fn settling(&self) -> bool {
            self.ends_with(":settling")
        }
    }

    /// A clock the test moves by hand (the Region cache's tests use it too).
    #[derive(Clone, Default)]
    pub(crate) struct Manual(Arc<AtomicU64>);

    impl MonotonicClock for Manual {
        fn now(&self) -> Duration {
            Duration::from_millis(self.0.load(Ordering::SeqCst))
        }
        async fn sleep(&self, d: Duration) {
            self.0.fetch_add(d.as_millis() as u64, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn a_touched_or_missing_resource_is_described_directly_until_the_next_snapshot() {
        let clock = Manual::default();
        let cache = FleetCache::with_clock(Duration::from_secs(5), clock.clone());
        let fetches = AtomicUsize::new(0);
        let lookup = |name: &'static str| {
            let (cache, fetches) = (&cache, &fetches);
            async move {
                cache
                    .lookup(
                        name,
                        || async {
                            fetches.fetch_add(1, Ordering::SeqCst);
                            Ok(vec!["a".to_string(), "b".to_string()])
                        },
                        |n| n == name,
                        || async { Ok(Some(format!("{name} direct"))) },
                    )
                    .await
                    .unwrap()
                    .unwrap()
            }
        };
        assert_eq!(lookup("a").await, "a");
        assert_eq!(lookup("c").await, "c direct", "absent from the snapshot");
        clock.sleep(Duration::from_secs(1)).await;
        cache.touch("arn:aws:rds:us-east-1:1:db:A");
        assert_eq!(lookup("a").await, "a direct", "changed since the snapshot");
        assert_eq!(lookup("b").await, "b");
        assert_eq!(
            fetches.load(Ordering::SeqCst),
            1,
            "one snapshot within the TTL"
        );
        clock.sleep(Duration::from_secs(4)).await;
        assert_eq!(
            lookup("a").await,
            "a",
            "a snapshot started after the change"
        );
        assert_eq!(fetches.load(Ordering::SeqCst), 2);
    }

    /// A snapshot taken while RDS still applies the agent's change (here the resource shows
    /// `:settling`) does not end its direct describes: only one that shows it settled does.
    #[tokio::test]
    async fn a_snapshot_showing_the_agent_s_change_still_applied_keeps_it_described_directly() {
        let clock = Manual::default();
        let cache = FleetCache::with_clock(Duration::from_secs(5), clock.clone());
        let applied = std::sync::atomic::AtomicBool::new(false);
        let lookup = || {
            let (cache, applied) = (&cache, &applied);
            async move {
                cache
                    .lookup(
                        "a",
                        || async {
                            let a = if applied.load(Ordering::SeqCst) {
                                "a"
                            } else {
                                "a:settling"
                            };
                            Ok(vec![a.to_string(), "b".to_string()])
                        },
                        |n| n.is_named("a"),
                        || async { Ok(Some("a direct".to_string())) },
                    )
                    .await
                    .unwrap()
                    .unwrap()
            }
        };
        assert_eq!(lookup().await, "a:settling", "not changed by us yet");
        cache.touch("a");
        assert_eq!(lookup().await, "a direct", "changed since the snapshot");
        clock.sleep(Duration::from_secs(6)).await;
        assert_eq!(
            lookup().await,
            "a direct",
            "a snapshot after the change that shows it half applied"
        );
        applied.store(true, Ordering::SeqCst);
        assert_eq!(lookup().await, "a direct", "that snapshot still serves");
        clock.sleep(Duration::from_secs(6)).await;
        assert_eq!(lookup().await, "a", "a snapshot that shows it applied");
    }

    /// `name` looked up in `cache`, whose snapshot is `all` (more than a page): its item from
    /// the snapshot, or `"<name> direct"` when it is described directly.
    async fn lookup_in(
        cache: &FleetCache<String, Manual>,
        all: &[String],
        name: &'static str,
    ) -> String {
        cache
            .lookup(
                name,
                || async { Ok(all.to_vec()) },
                |n| n == name,
                || async { Ok(Some(format!("{name} direct"))) },
            )
            .await
            .unwrap()
            .unwrap()
    }

    /// A look that takes absence from the snapshot (`absence_will_do`) gets `None` for a
    /// resource the snapshot does not hold, without a direct describe; not for one this
    /// adapter (or an event) changed since the snapshot started, nor without the scope.
    #[tokio::test]
    async fn a_look_that_takes_absence_from_the_snapshot_describes_nothing_for_a_missing_resource()
    {
        let clock = Manual::default();
        let cache = FleetCache::with_clock(Duration::from_secs(5), clock.clone());
        let all = vec!["db-1".to_string()];
        let direct = std::sync::atomic::AtomicUsize::new(0);
        let lookup = |name: &'static str| {
            let (all, direct, cache) = (&all, &direct, &cache);
            async move {
                cache
                    .lookup(
                        name,
                        || async { Ok(all.clone()) },
                        |n| n == name,
                        || async {
                            direct.fetch_add(1, Ordering::SeqCst);
                            Ok(None)
                        },
                    )
                    .await
                    .unwrap()
            }
        };
        assert_eq!(
            absence_will_do(lookup("db-1")).await.as_deref(),
            Some("db-1")
        );
        assert_eq!(absence_will_do(lookup("cluster-9")).await, None);
        assert_eq!(
            direct.load(Ordering::SeqCst),
            0,
            "absent: no direct describe"
        );
        assert_eq!(lookup("cluster-9").await, None);
        assert_eq!(
            direct.load(Ordering::SeqCst),
            1,
            "without the scope: created since?"
        );
        cache.touch("cluster-9");
        assert_eq!(absence_will_do(lookup("cluster-9")).await, None);
        assert_eq!(
            direct.load(Ordering::SeqCst),
            2,
            "changed since the snapshot: described"
        );
    }

    #[tokio::test]
    async fn a_look_that_says_a_snapshot_will_do_reads_an_older_one_in_the_cutover_lane() {
        let clock = Manual::default();
        let cache = FleetCache::with_clock(Duration::from_secs(5), clock.clone())
            .scaled(Duration::from_secs(1));
        let big: Vec<String> = (0..=ONE_PAGE).map(|i| format!("db-{i}")).collect();
        let lookup = |name: &'static str| lookup_in(&cache, &big, name);
        assert_eq!(lookup("db-1").await, "db-1");
        clock.sleep(Duration::from_secs(30)).await;
        use crate::aws::limit::in_lane;
        assert_eq!(
            in_lane(true, lookup("db-1")).await,
            "db-1 direct",
            "a cutover's look reads no snapshot older than the base TTL"
        );
        assert_eq!(
            in_lane(true, snapshot_will_do(lookup("db-1"))).await,
            "db-1"
        );
        cache.touch("db-2");
        assert_eq!(
            in_lane(true, snapshot_will_do(lookup("db-2"))).await,
            "db-2",
            "changed since the snapshot: what the look reads did not change"
        );
        assert_eq!(
            in_lane(false, lookup("db-2")).await,
            "db-2 direct",
            "any other look sees the change"
        );
        clock
            .sleep(SNAPSHOT_WILL_DO_AGE - Duration::from_secs(30))
            .await;
        assert_eq!(
            in_lane(true, snapshot_will_do(lookup("db-1"))).await,
            "db-1 direct",
            "as old as SNAPSHOT_WILL_DO_AGE"
        );
    }

    /// A look that waits on the snapshot reads from it the guards' tags (an abort, a pause):
    /// a person's change to the resource's tags (a tag event) must reach it at once, not when the
    /// snapshot is next refreshed (up to [`SNAPSHOT_WILL_DO_AGE`] later).
    #[tokio::test]
    async fn a_tag_change_is_described_directly_even_by_a_look_that_says_a_snapshot_will_do() {
        let clock = Manual::default();
        let cache = FleetCache::with_clock(Duration::from_secs(5), clock.clone())
            .scaled(Duration::from_secs(1));
        let big: Vec<String> = (0..=ONE_PAGE).map(|i| format!("db-{i}")).collect();
        let lookup = |name: &'static str| lookup_in(&cache, &big, name);
        use crate::aws::limit::in_lane;
        assert_eq!(lookup("db-1").await, "db-1");
        clock.sleep(Duration::from_secs(30)).await;
        cache.hear("arn:aws:rds:eu-west-1:123456789012:db:DB-1");
        assert_eq!(
            in_lane(true, snapshot_will_do(lookup("db-1"))).await,
            "db-1 direct",
            "tags changed after the snapshot started: described as RDS has it now"
        );
        assert_eq!(
            in_lane(true, snapshot_will_do(lookup("db-2"))).await,
            "db-2",
            "the others still wait on the snapshot"
        );
        assert_eq!(
            in_lane(false, lookup("db-1")).await,
            "db-1 direct",
            "a tag change is a change for every look"
        );
    }

    #[tokio::test]
    async fn a_snapshot_of_many_pages_serves_the_looks_that_can_wait_for_two_minutes() {
        let clock = Manual::default();
        let fetches = AtomicUsize::new(0);
        // A fleet of two pages and one of one page, each in a cache scaled as the adapter's.
        let per_item = ttl_per_item(5.0);
        let many = FleetCache::with_clock(Duration::from_secs(5), clock.clone()).scaled(per_item);
        let one = FleetCache::with_clock(Duration::from_secs(5), clock.clone()).scaled(per_item);
        let lookup = |cache: &'static str, items: usize| {
            let (cache, fetches) = (if cache == "many" { &many } else { &one }, &fetches);
            async move {
                cache
                    .lookup(
                        "db-1",
                        || async {
                            fetches.fetch_add(1, Ordering::SeqCst);
                            Ok((0..items).map(|i| format!("db-{i}")).collect())
                        },
                        |n| n == "db-1",
                        || async { Ok(Some("direct".to_string())) },
                    )
                    .await
                    .unwrap()
                    .unwrap()
            }
        };
        assert_eq!(lookup("many", 2 * ONE_PAGE).await, "db-1");
        assert_eq!(lookup("one", ONE_PAGE).await, "db-1");
        assert_eq!(fetches.load(Ordering::SeqCst), 2);
        // Past the per-item TTL of both (200 × 40 ms = 8 s), short of two minutes.
        clock.sleep(Duration::from_secs(60)).await;
        assert_eq!(lookup("many", 2 * ONE_PAGE).await, "db-1");
        assert_eq!(
            fetches.load(Ordering::SeqCst),
            2,
            "many pages: not refreshed"
        );
        assert_eq!(lookup("one", ONE_PAGE).await, "db-1");
        assert_eq!(fetches.load(Ordering::SeqCst), 3, "one page: refreshed");
        clock.sleep(MANY_PAGES_TTL - Duration::from_secs(60)).await;
        assert_eq!(lookup("many", 2 * ONE_PAGE).await, "db-1");
        assert_eq!(
            fetches.load(Ordering::SeqCst),
            4,
            "many pages: refreshed at two minutes"
        );
    }

    #[tokio::test]
    async fn callers_waiting_for_a_refresh_take_its_answer_even_when_it_outlasted_the_ttl() {
        let clock = Manual::default();
        let cache = FleetCache::with_clock(Duration::from_secs(5), clock.clone());
        let fetches = AtomicUsize::new(0);
        let get = || async {
            cache
                .get(|| async {
                    fetches.fetch_add(1, Ordering::SeqCst);
                    // The other caller asks meanwhile; the pages take 6 s.
                    tokio::task::yield_now().await;
                    clock.sleep(Duration::from_secs(6)).await;
                    Ok(vec!["a".to_string()])
                })
                .await
                .unwrap()
        };
        let (a, b) = tokio::join!(get(), get());
        assert_eq!((a.0, b.0), (Duration::ZERO, Duration::ZERO));
        assert_eq!(fetches.load(Ordering::SeqCst), 1, "one fetch for both");
        get().await;
        assert_eq!(
            fetches.load(Ordering::SeqCst),
            2,
            "a later caller gets a fresh snapshot"
        );
    }
}
