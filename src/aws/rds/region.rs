//! Answers that are the Region's, not a migration's: Aurora PostgreSQL's engine versions
//! (`DescribeDBEngineVersions`) and a parameter group family's engine defaults
//! (`DescribeEngineDefaultClusterParameters`, `DescribeEngineDefaultParameters`). Every
//! preflight reads them, and they are the same for every migration of the Region: one fetch per
//! key serves every preflight for [`REGION_TTL`].
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
        Self::with_clock(REGION_TTL, TokioClock::default())
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
        self.answers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, (at, v.clone()));
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
}
