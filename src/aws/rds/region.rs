//! Answers that are the Region's, not a migration's: Aurora PostgreSQL's engine versions
//! (`DescribeDBEngineVersions`) and a parameter group family's engine defaults
//! (`DescribeEngineDefaultClusterParameters`, `DescribeEngineDefaultParameters`), read once an
//! hour ([`REGION_TTL`]); the Region's pending maintenance actions, read for 10 minutes
//! ([`PENDING_MAINTENANCE_TTL`]); the account's quotas, read for a minute ([`QUOTA_TTL`]); a
//! source parameter group's user parameters, read for a minute ([`SOURCE_PARAMETERS_TTL`]); and
//! which translated parameter groups exist, kept once seen for 10 minutes
//! ([`PRESENT_GROUPS_TTL`]). Every preflight (and every Preparing and Decommissioning look) reads
//! them, and they are the same for every migration of the Region: one fetch per key serves every
//! caller for its TTL.
//!
//! Guarantees: one fetch per key at a time (single flight: a caller that asks while a fetch of
//! its key runs waits for it and takes its answer); a failed fetch is not kept (the next caller
//! fetches again); an answer older than the TTL is never served. Why: in the simulator's
//! 500-migration fleet the three reads were four RDS requests a migration of the account's
//! ~12/s, all for answers AWS changes a few times a year (a new minor version, a new default).
//! It knows nothing of the SDK and runs on any [`MonotonicClock`]: the simulator runs it over its
//! fake RDS.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use crate::aws::limit::{MonotonicClock, TokioClock};
use crate::ports::PortResult;

/// How long a Region-wide answer serves. 1 h: a version AWS releases or deprecates meanwhile
/// is seen within the hour; preflight runs again on every new attempt.
pub(crate) const REGION_TTL: Duration = Duration::from_secs(3600);

/// How long the Region's pending maintenance actions (DescribePendingMaintenanceActions with no
/// filter, every page) serve every preflight. 10 minutes: preflight only reports them (a
/// warning), and one read of the Region's was 1.2 requests a migration read one source at a
/// time in the simulator's 1,000-migration fleet.
pub(crate) const PENDING_MAINTENANCE_TTL: Duration = Duration::from_secs(600);

/// How long the account's quotas (DescribeAccountAttributes: used and max) serve every reader
/// (the preflight's check, Decommissioning's room for the final snapshot). A minute: the
/// counts move as the fleet creates and deletes, and what they guard fails safe when they are
/// a minute old (a create over the quota is refused by RDS, the deletion with its snapshot
/// too). Read per migration they were 2 requests a migration in the simulator's
/// 1,000-migration fleet.
pub(crate) const QUOTA_TTL: Duration = Duration::from_secs(60);

/// How long a source parameter group's user parameters (DescribeDBParameters, `Source=user`,
/// every page) serve every preflight of a source in that group. A minute: a fleet's sources
/// share a few groups (one per team or tier), and a fleet tagged at once runs a hundred
/// preflights together; a person who changes a parameter and tags the source again within the
/// minute gets the old answer once.
pub(crate) const SOURCE_PARAMETERS_TTL: Duration = Duration::from_secs(60);

/// How long translated parameter groups seen to exist are taken to exist without a describe.
/// They are named by their content's hash, so the fleet's migrations share a few; Preparing
/// describes them on every look until they exist (2.6 requests a migration in the simulator's
/// 1,000-migration fleet). 10 minutes: a group deleted by a person meanwhile makes the
/// replica's creation fail, before any write stops (a lossless rollback).
pub(crate) const PRESENT_GROUPS_TTL: Duration = Duration::from_secs(600);

pub(crate) struct RegionCache<K, V, C: MonotonicClock = TokioClock> {
    ttl: Duration,
    clock: C,
    /// Key → when its fetch started and its answer.
    answers: std::sync::Mutex<HashMap<K, (Duration, Arc<V>)>>,
    /// One fetch at a time (preflight reads are not in a hurry; the keys are few).
    fetching: tokio::sync::Mutex<()>,
}

impl<K: Eq + Hash + Clone, V> RegionCache<K, V> {
    /// A cache on tokio's clock, serving for [`REGION_TTL`].
    pub(crate) fn new() -> Self {
        Self::with_ttl(REGION_TTL)
    }

    /// A cache on tokio's clock, serving for `ttl`.
    pub(crate) fn with_ttl(ttl: Duration) -> Self {
        Self::with_clock(ttl, TokioClock::default())
    }
}

impl<K: Eq + Hash + Clone, V, C: MonotonicClock> RegionCache<K, V, C> {
    pub(crate) fn with_clock(ttl: Duration, clock: C) -> Self {
        RegionCache {
            ttl,
            clock,
            answers: std::sync::Mutex::new(HashMap::new()),
            fetching: tokio::sync::Mutex::new(()),
        }
    }

    fn fresh(&self, key: &K) -> Option<Arc<V>> {
        let answers = self.answers.lock().unwrap_or_else(|p| p.into_inner());
        let (at, v) = answers.get(key)?;
        (self.clock.now().saturating_sub(*at) < self.ttl).then(|| v.clone())
    }

    /// The answer for `key`: kept if younger than the TTL, else fetched by `fetch` (once, for
    /// every caller waiting meanwhile).
    pub(crate) async fn get<F, Fut>(&self, key: K, fetch: F) -> PortResult<Arc<V>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = PortResult<V>>,
    {
        self.get_keeping(key, fetch, |_| true).await
    }

    /// As [`Self::get`], but a fetched answer is kept only if `keep` says so: one that the
    /// caller's next step changes (parameter groups found missing are created) is fetched
    /// again by the next caller.
    pub(crate) async fn get_keeping<F, Fut>(
        &self,
        key: K,
        fetch: F,
        keep: impl FnOnce(&V) -> bool,
    ) -> PortResult<Arc<V>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = PortResult<V>>,
    {
        if let Some(v) = self.fresh(&key) {
            return Ok(v);
        }
        let _one = self.fetching.lock().await;
        // Fetched by the caller this one waited for?
        if let Some(v) = self.fresh(&key) {
            return Ok(v);
        }
        let at = self.clock.now();
        let v = Arc::new(fetch().await?);
        if keep(&v) {
            self.answers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(key, (at, v.clone()));
        }
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::aws::rds::cache::tests::Manual;
    use crate::ports::{ErrorKind, PortError};

    #[tokio::test]
    async fn one_fetch_per_key_serves_every_caller_until_the_ttl_and_a_failure_is_not_kept() {
        let clock = Manual::default();
        let cache: RegionCache<&str, String, Manual> =
            RegionCache::with_clock(Duration::from_secs(3600), clock.clone());
        let fetches = AtomicUsize::new(0);
        let get = |key: &'static str, fail: bool| {
            let (cache, fetches) = (&cache, &fetches);
            async move {
                cache
                    .get(key, || async move {
                        fetches.fetch_add(1, Ordering::SeqCst);
                        tokio::task::yield_now().await;
                        if fail {
                            Err(PortError::new(ErrorKind::Throttled, "rds:X", "slow down"))
                        } else {
                            Ok(format!("{key} defaults"))
                        }
                    })
                    .await
            }
        };
        let (a, b) = tokio::join!(
            get("aurora-postgresql16", false),
            get("aurora-postgresql16", false)
        );
        assert_eq!(*a.unwrap(), "aurora-postgresql16 defaults");
        assert_eq!(*b.unwrap(), "aurora-postgresql16 defaults");
        assert_eq!(
            fetches.load(Ordering::SeqCst),
            1,
            "one fetch for both callers"
        );
        assert!(get("aurora-postgresql15", true).await.is_err());
        assert!(
            get("aurora-postgresql15", false).await.is_ok(),
            "a failure is fetched again"
        );
        assert_eq!(fetches.load(Ordering::SeqCst), 3);
        clock.sleep(Duration::from_secs(3599)).await;
        get("aurora-postgresql16", false).await.unwrap();
        assert_eq!(fetches.load(Ordering::SeqCst), 3, "within the TTL");
        clock.sleep(Duration::from_secs(1)).await;
        get("aurora-postgresql16", false).await.unwrap();
        assert_eq!(
            fetches.load(Ordering::SeqCst),
            4,
            "past the TTL: fetched again"
        );
    }

    /// Parameter groups found missing are created by the step that asked: that answer is not
    /// kept, the one that finds them present is, until its TTL.
    #[tokio::test]
    async fn an_answer_keep_refuses_is_fetched_again_and_one_it_keeps_serves_until_the_ttl() {
        let clock = Manual::default();
        let cache: RegionCache<&str, bool, Manual> =
            RegionCache::with_clock(PRESENT_GROUPS_TTL, clock.clone());
        let fetches = AtomicUsize::new(0);
        let present = |exists: bool| {
            let (cache, fetches) = (&cache, &fetches);
            async move {
                *cache
                    .get_keeping(
                        "pg-3f2a",
                        || async move {
                            fetches.fetch_add(1, Ordering::SeqCst);
                            Ok(exists)
                        },
                        |p| *p,
                    )
                    .await
                    .unwrap()
            }
        };
        assert!(!present(false).await);
        assert!(!present(false).await, "missing: described again");
        assert_eq!(fetches.load(Ordering::SeqCst), 2);
        assert!(present(true).await);
        assert!(present(false).await, "seen present: kept");
        assert_eq!(fetches.load(Ordering::SeqCst), 3);
        clock.sleep(PRESENT_GROUPS_TTL).await;
        assert!(!present(false).await, "past the TTL: described again");
        assert_eq!(fetches.load(Ordering::SeqCst), 4);
    }
}
