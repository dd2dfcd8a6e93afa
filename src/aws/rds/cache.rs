//! The fleet describe cache: one describe-everything answer (`DescribeDBInstances`,
//! `DescribeDBClusters`) shared by every migration the agent runs, for a TTL.
//!
//! Guarantees: at most one refresh runs at a time (single flight: concurrent callers wait for it
//! and take its answer); a snapshot is never served past its TTL; a resource this adapter changed
//! (`touch`) reports `changed_since` a snapshot that started before the change, so its migration
//! describes it directly and sees its own mutation at once. Why: the account's RDS request
//! budget (~12/s) is shared by the whole fleet, and per-migration describes would spend it. The
//! cache knows nothing of the SDK: it holds any `T` and is filled by the caller's `fetch`.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::ports::PortResult;

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
pub(super) struct FleetCache<T> {
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
    pub(super) fn new(ttl: Duration) -> Self {
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

    pub(super) fn touch(&self, name: &str) {
        let mut touched = self.touched.lock().unwrap_or_else(|p| p.into_inner());
        touched.insert(resource_key(name), Instant::now());
    }

    /// Whether `name` changed after the snapshot taken at `at` started.
    pub(super) fn changed_since(&self, name: &str, at: Instant) -> bool {
        let touched = self.touched.lock().unwrap_or_else(|p| p.into_inner());
        touched.get(&resource_key(name)).is_some_and(|t| *t >= at)
    }

    /// The snapshot and when its fetch started.
    pub(super) async fn get<F, Fut>(&self, fetch: F) -> PortResult<(Instant, Arc<Vec<T>>)>
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
