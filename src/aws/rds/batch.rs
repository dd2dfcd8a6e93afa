//! Direct describes batched across migrations: every migration that needs an instance (or a
//! cluster) as RDS has it *now* joins the one request that is waiting for its turn at the rate
//! limiter, and that request asks for all of them at once (`Filters: db-instance-id` /
//! `db-cluster-id`), as a database's group commit does with its log writes.
//!
//! Why: the fleet snapshot (`cache.rs`) serves the looks that can be 5 s old, but the cutover's
//! looks cannot (the phase waits, writes down, on a change RDS applies and announces with no
//! event), and a resource a migration just changed is described directly until the next
//! snapshot. Described one by one, N concurrent cutovers cost N requests a look, so the
//! account's budget (the adapter allows itself 5 requests/s) carries two or three cutovers at
//! once; batched, they cost one request a look whatever N (up to [`MAX_BATCH`]).
//!
//! Guarantees:
//! - A batch closes when its request leaves (its leader has its turn at the limiter), so every
//!   caller that asked before that is in it, and none that asked after: a caller never gets an
//!   answer from a request that left before it asked (the answer is at least as fresh as a
//!   direct describe made when it asked).
//! - A resource RDS does not know is absent from the answer: `Ok(None)`, never an error.
//! - A failed request fails every caller in its batch with the same classified error (each is
//!   retried by its own migration, as a failed direct describe was).
//! - A leader dropped before its request answered (its message handler cancelled) leaves no
//!   caller waiting for ever: the others get a retryable error, and the next caller opens a
//!   new batch.
//!
//! It knows nothing of the SDK: the caller gives the turn (`gate`, the rate limiter), the
//! request for a list of names (`fetch`, which must not wait for the limiter again) and the
//! match of an answer to a name. The simulator runs this very code over its fake RDS.

use std::future::Future;
use std::sync::{Arc, Mutex};

use jiff::Timestamp;
use tokio::sync::watch;

use crate::core::ErrorKind;
use crate::core::observation::InstanceEvent;
use crate::ports::{PortError, PortResult};

/// Most names one request asks for: a page (`MaxRecords` defaults to 100), so one answer never
/// needs a second page. A batch that is full is closed to newcomers, who open the next one.
pub(crate) const MAX_BATCH: usize = 100;

/// The answer of one batch's request, once it has one.
type Answer<T> = Option<PortResult<Arc<Vec<T>>>>;

/// The batch that is waiting for its turn: who is in it, and where its answer will be.
struct Open<K, T> {
    /// Tells a leader whether the open batch is still its own.
    id: u64,
    /// Shared with the leader, which takes them when its request leaves (`None` from then on:
    /// closed). The slot may meanwhile hold the next batch (this one full), so the leader
    /// reads its own keys here, not from the slot.
    keys: Arc<Mutex<Option<Vec<K>>>>,
    answer: watch::Receiver<Answer<T>>,
}

pub(crate) struct DescribeBatcher<K, T> {
    /// The operation, for the error of an abandoned batch.
    op: &'static str,
    open: Mutex<Option<Open<K, T>>>,
    next_id: Mutex<u64>,
}

/// Closes the leader's batch if it is still open when the leader goes away (dropped before its
/// turn), so that nobody joins a batch whose request will never leave.
struct CloseOnDrop<'a, K, T> {
    batcher: &'a DescribeBatcher<K, T>,
    id: u64,
}

impl<K, T> Drop for CloseOnDrop<'_, K, T> {
    fn drop(&mut self) {
        let mut open = self.batcher.lock();
        if open.as_ref().is_some_and(|o| o.id == self.id) {
            *open = None;
        }
    }
}

impl<K, T> DescribeBatcher<K, T> {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Open<K, T>>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl<K: Clone + PartialEq, T: Clone> DescribeBatcher<K, T> {
    pub(crate) fn new(op: &'static str) -> Self {
        DescribeBatcher {
            op,
            open: Mutex::new(None),
            next_id: Mutex::new(0),
        }
    }

    /// The resource named `name` as RDS has it now (`matches` tells it in the batch's answer).
    pub(crate) async fn describe<G, F, Fut>(
        &self,
        name: K,
        gate: G,
        fetch: F,
        matches: impl Fn(&T, &K) -> bool,
    ) -> PortResult<Option<T>>
    where
        G: Future<Output = ()>,
        F: FnOnce(Vec<K>) -> Fut,
        Fut: Future<Output = PortResult<Vec<T>>>,
    {
        let answer = self.ask(name.clone(), gate, fetch).await?;
        Ok(answer.iter().find(|item| matches(item, &name)).cloned())
    }

    /// The whole answer of the batch `key` is in: joins the open batch, or opens one, waits for
    /// its `gate` and asks `fetch` for every key in it. The caller picks its part.
    pub(crate) async fn ask<G, F, Fut>(&self, key: K, gate: G, fetch: F) -> PortResult<Arc<Vec<T>>>
    where
        G: Future<Output = ()>,
        F: FnOnce(Vec<K>) -> Fut,
        Fut: Future<Output = PortResult<Vec<T>>>,
    {
        let joined = {
            let mut open = self.lock();
            match open.as_mut() {
                // A batch whose leader went away without closing it cannot happen (the guard
                // closes it), but a sender dropped is checked anyway: joining it would wait
                // for ever.
                Some(o) if o.answer.has_changed().is_ok() => {
                    let mut keys = o.keys.lock().unwrap_or_else(|p| p.into_inner());
                    match keys.as_mut() {
                        Some(keys) if keys.contains(&key) => Some(o.answer.clone()),
                        Some(keys) if keys.len() < MAX_BATCH => {
                            keys.push(key.clone());
                            Some(o.answer.clone())
                        }
                        // Full, or closed (its leader's request is leaving).
                        _ => None,
                    }
                }
                _ => None,
            }
        };
        match joined {
            Some(mut answer) => match answer.wait_for(Option::is_some).await {
                Ok(a) => a.clone().expect("waited for an answer"),
                Err(_) => Err(PortError::new(
                    ErrorKind::Retryable,
                    self.op,
                    "the batched describe this look joined was abandoned before it answered",
                )),
            },
            None => self.lead(key, gate, fetch).await,
        }
    }

    /// Opens a batch with `key`, waits for the turn, closes the batch and asks for it.
    async fn lead<G, F, Fut>(&self, key: K, gate: G, fetch: F) -> PortResult<Arc<Vec<T>>>
    where
        G: Future<Output = ()>,
        F: FnOnce(Vec<K>) -> Fut,
        Fut: Future<Output = PortResult<Vec<T>>>,
    {
        let (tx, rx) = watch::channel(None);
        let id = {
            let mut next = self.next_id.lock().unwrap_or_else(|p| p.into_inner());
            *next += 1;
            *next
        };
        let mine = Arc::new(Mutex::new(Some(vec![key.clone()])));
        *self.lock() = Some(Open {
            id,
            keys: mine.clone(),
            answer: rx,
        });
        let guard = CloseOnDrop { batcher: self, id };
        gate.await;
        // The request leaves now: whoever asked before is in it, whoever asks after opens the
        // next batch.
        drop(guard);
        let keys = mine
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .expect("only the leader closes its batch");
        debug_assert!(keys.len() <= MAX_BATCH);
        let answer = fetch(keys).await.map(Arc::new);
        // Followers that went away have dropped their receivers: nobody to tell is fine.
        tx.send_replace(Some(answer.clone()));
        answer
    }
}

/// How long a batch of looks that can wait a moment ([`gathered`]) stays open before its
/// request goes to the rate limiter. 2 s: such looks are taken on a shared grid of times
/// (`Policy::event_poll`'s multiples) and wait for an event, which steps the migration as it
/// arrives: the window costs only a look for an event lost or late. Their ticks came through
/// SQS (whole-second delays, up to about a second late); in-process follow-ups start them on
/// time, and what spreads them is the lease's and the record's DynamoDB calls. 200 ms was
/// tried (`simulate --seeds 0 --fleet 1000 --seed 2`): Promoting's gathered DescribeDBClusters
/// served 3.07 looks a request with 2 s and 2.35 with 200 ms.
pub(crate) const GATHER_WINDOW: std::time::Duration = std::time::Duration::from_secs(2);

/// The window of looks that poll a wait no event ends ([`gathered_quickly`]): the database
/// path's look for the quarantine's group change comes every half second, and the window is
/// outage on the look that finds it applied, so it is a fraction of that. 200 ms: these
/// looks start on their grid time in-process, and the DynamoDB calls before their describes
/// take single-digit to tens of milliseconds.
pub(crate) const QUICK_GATHER_WINDOW: std::time::Duration = std::time::Duration::from_millis(200);

tokio::task_local! {
    /// Set while a look that can wait this long for others to share its describes runs.
    static GATHER: std::time::Duration;
}

/// Runs `f` with its direct describes in the cutover lane gathered: a batch it opens waits
/// [`GATHER_WINDOW`] for other such looks before its request leaves, and it joins only batches
/// of such looks (a look that cannot wait never waits for one that can). For the scheduled
/// looks of a cutover wait that an RDS event ends (the metric path's reboot, AWS's promotion):
/// the event steps the migration as it arrives, and these looks, for an event lost or late,
/// come on the same grid of times for every migration, so one request serves all of them.
pub async fn gathered<F: std::future::Future>(f: F) -> F::Output {
    GATHER.scope(GATHER_WINDOW, f).await
}

/// As [`gathered`], with [`QUICK_GATHER_WINDOW`], and only with looks that gather as quickly
/// (one never waits for a batch that waits longer): for the looks of a cutover wait that no
/// event ends, polled on a shared grid (the quarantine's group change).
pub async fn gathered_quickly<F: std::future::Future>(f: F) -> F::Output {
    GATHER.scope(QUICK_GATHER_WINDOW, f).await
}

/// How long the calling task's look may wait for others ([`gathered`], [`gathered_quickly`]);
/// `None` when it does not gather.
fn window_here() -> Option<std::time::Duration> {
    GATHER.try_with(|w| *w).ok()
}

/// Whether the calling task's look gathers ([`gathered`], [`gathered_quickly`]).
pub(crate) fn gathering_here() -> bool {
    window_here().is_some()
}

/// One batcher per rate-limiter lane (`aws::limit`): a cutover's describe joins a batch that
/// waits in the cutover lane, never one queued behind the calls that can wait; and in the
/// cutover lane the looks that gather have their own, one per window ([`gathered`],
/// [`gathered_quickly`]).
pub(crate) struct LaneBatchers<K, T> {
    cutover: DescribeBatcher<K, T>,
    gathering: DescribeBatcher<K, T>,
    gathering_quickly: DescribeBatcher<K, T>,
    other: DescribeBatcher<K, T>,
}

impl<K: Clone + PartialEq, T: Clone> LaneBatchers<K, T> {
    pub(crate) fn new(op: &'static str) -> Self {
        LaneBatchers {
            cutover: DescribeBatcher::new(op),
            gathering: DescribeBatcher::new(op),
            gathering_quickly: DescribeBatcher::new(op),
            other: DescribeBatcher::new(op),
        }
    }

    /// The calling task's lane's batcher.
    pub(crate) fn here(&self) -> &DescribeBatcher<K, T> {
        match (crate::aws::limit::cutover_lane(), window_here()) {
            (true, Some(GATHER_WINDOW)) => &self.gathering,
            (true, Some(_)) => &self.gathering_quickly,
            (true, None) => &self.cutover,
            (false, _) => &self.other,
        }
    }

    /// How long a batch the calling task opens waits before its request goes to the rate
    /// limiter: its window for a gathering look in the cutover lane, else nothing (the batch
    /// closes when its turn comes).
    pub(crate) fn gather_window(&self) -> std::time::Duration {
        match window_here() {
            Some(w) if crate::aws::limit::cutover_lane() => w,
            _ => std::time::Duration::ZERO,
        }
    }
}

impl LaneBatchers<(String, Timestamp), (String, InstanceEvent)> {
    /// DescribeEvents of `instance` since `since`, batched: one request (`region_events`, asked
    /// from the earliest time of every migration in the batch, with no identifier: the Region's
    /// instance events, by instance in lower case) serves every migration waiting for the same
    /// turn, and each keeps its own instance's events from its own time on.
    pub(crate) async fn instance_events<G, F, Fut>(
        &self,
        instance: &str,
        since: Timestamp,
        gate: G,
        region_events: F,
    ) -> PortResult<Vec<InstanceEvent>>
    where
        G: Future<Output = ()>,
        F: FnOnce(Timestamp) -> Fut,
        Fut: Future<Output = PortResult<Vec<(String, InstanceEvent)>>>,
    {
        let key = (instance.to_ascii_lowercase(), since);
        let all = self
            .here()
            .ask(key.clone(), gate, |keys| {
                let earliest = keys.iter().map(|(_, t)| *t).min().unwrap_or(since);
                region_events(earliest)
            })
            .await?;
        Ok(all
            .iter()
            .filter(|(id, e)| *id == key.0 && e.at >= since)
            .map(|(_, e)| e.clone())
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[allow(clippy::ptr_arg)] // the batcher's `matches` takes its keys by reference
    fn same(a: &String, b: &String) -> bool {
        a.eq_ignore_ascii_case(b)
    }

    #[tokio::test]
    async fn callers_waiting_for_the_turn_share_one_request() {
        let b = DescribeBatcher::<String, String>::new("rds:DescribeDBInstances");
        let requests = AtomicUsize::new(0);
        let asked = Mutex::new(Vec::new());
        let one = |name: &'static str| {
            let (b, requests, asked) = (&b, &requests, &asked);
            async move {
                b.describe(
                    name.to_string(),
                    tokio::time::sleep(std::time::Duration::from_millis(50)),
                    |names: Vec<String>| async move {
                        requests.fetch_add(1, Ordering::SeqCst);
                        asked.lock().unwrap().push(names.clone());
                        // "gone" is not known to RDS: absent from the answer.
                        Ok(names.into_iter().filter(|n| n != "gone").collect())
                    },
                    same,
                )
                .await
            }
        };
        let (a, c, gone) = tokio::join!(one("a"), one("c"), one("gone"));
        assert_eq!(a.unwrap().as_deref(), Some("a"));
        assert_eq!(c.unwrap().as_deref(), Some("c"));
        assert_eq!(
            gone.unwrap(),
            None,
            "unknown to RDS is absent, not an error"
        );
        assert_eq!(requests.load(Ordering::SeqCst), 1);
        assert_eq!(asked.lock().unwrap()[0], vec!["a", "c", "gone"]);
    }

    #[tokio::test]
    async fn a_caller_after_the_request_left_gets_a_request_of_its_own() {
        let b = DescribeBatcher::<String, String>::new("rds:DescribeDBInstances");
        let requests = AtomicUsize::new(0);
        let fetch = |names: Vec<String>| {
            let requests = &requests;
            async move {
                requests.fetch_add(1, Ordering::SeqCst);
                // The request takes 100 ms on the wire: a caller asking meanwhile must not get
                // this answer (it left before they asked).
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                Ok(names)
            }
        };
        let first = b.describe("a".to_string(), async {}, fetch, same);
        let later = async {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            b.describe("b".to_string(), async {}, fetch, same).await
        };
        let (first, later) = tokio::join!(first, later);
        assert_eq!(first.unwrap().as_deref(), Some("a"));
        assert_eq!(later.unwrap().as_deref(), Some("b"));
        assert_eq!(requests.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_failed_request_fails_each_caller_with_its_error() {
        let b = DescribeBatcher::<String, String>::new("rds:DescribeDBInstances");
        let one = |name: &'static str| {
            b.describe(
                name.to_string(),
                tokio::time::sleep(std::time::Duration::from_millis(5)),
                |_names: Vec<String>| async {
                    Err(PortError::new(
                        ErrorKind::Throttled,
                        "rds:DescribeDBInstances",
                        "Rate exceeded",
                    ))
                },
                same,
            )
        };
        let (a, c) = tokio::join!(one("a"), one("c"));
        assert_eq!(a.unwrap_err().kind, ErrorKind::Throttled);
        assert_eq!(c.unwrap_err().kind, ErrorKind::Throttled);
    }

    #[tokio::test]
    async fn a_leader_dropped_before_its_turn_leaves_nobody_waiting() {
        let b = DescribeBatcher::<String, String>::new("rds:DescribeDBInstances");
        let fetch = |names: Vec<String>| async move { Ok(names) };
        // The leader waits for a turn that never comes, and is dropped after 50 ms; a follower
        // joined it meanwhile.
        let leader = tokio::time::timeout(
            std::time::Duration::from_millis(50),
            b.describe("a".to_string(), std::future::pending::<()>(), fetch, same),
        );
        let follower = async {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            b.describe("b".to_string(), async {}, fetch, same).await
        };
        let (leader, follower) = tokio::join!(leader, follower);
        assert!(leader.is_err(), "the leader timed out");
        assert_eq!(follower.unwrap_err().kind, ErrorKind::Retryable);
        // The next caller is not stuck behind the abandoned batch.
        assert_eq!(
            b.describe("c".to_string(), async {}, fetch, same)
                .await
                .unwrap()
                .as_deref(),
            Some("c")
        );
    }

    #[tokio::test]
    async fn a_full_batch_is_closed_to_newcomers() {
        let b = DescribeBatcher::<String, String>::new("rds:DescribeDBInstances");
        let sizes = Mutex::new(Vec::new());
        let names: Vec<String> = (0..MAX_BATCH + 1).map(|i| format!("db-{i:03}")).collect();
        let calls = names.iter().map(|n| {
            let (b, sizes) = (&b, &sizes);
            async move {
                b.describe(
                    n.clone(),
                    tokio::time::sleep(std::time::Duration::from_millis(100)),
                    |names: Vec<String>| async move {
                        sizes.lock().unwrap().push(names.len());
                        Ok(names)
                    },
                    same,
                )
                .await
            }
        });
        let answers = futures_join_all(calls).await;
        assert!(answers.iter().all(|a| a.as_ref().unwrap().is_some()));
        let mut sizes = sizes.lock().unwrap().clone();
        sizes.sort();
        assert_eq!(sizes, vec![1, MAX_BATCH]);
    }

    /// How a test's look waits: [`gathered`], [`gathered_quickly`], or not at all.
    #[derive(Clone, Copy)]
    enum Waits {
        Never,
        ForAnEvent,
        Quickly,
    }

    /// One look in the cutover lane for `name`, `after_ms` into the test, through `b` (whose
    /// requests are recorded in `asked`): how long it waited for its answer.
    async fn timed_look(
        b: &LaneBatchers<String, String>,
        asked: &Mutex<Vec<Vec<String>>>,
        name: &'static str,
        waits: Waits,
        after_ms: u64,
    ) -> std::time::Duration {
        use crate::aws::limit::in_lane;
        use std::time::{Duration, Instant};
        tokio::time::sleep(Duration::from_millis(after_ms)).await;
        let look = async {
            b.here()
                .describe(
                    name.to_string(),
                    tokio::time::sleep(b.gather_window()),
                    |names: Vec<String>| async move {
                        asked.lock().unwrap().push(names.clone());
                        Ok(names)
                    },
                    same,
                )
                .await
        };
        let started = Instant::now();
        let found = match waits {
            Waits::Never => in_lane(true, look).await,
            Waits::ForAnEvent => in_lane(true, gathered(look)).await,
            Waits::Quickly => in_lane(true, gathered_quickly(look)).await,
        };
        assert_eq!(found.unwrap().as_deref(), Some(name));
        started.elapsed()
    }

    /// Scheduled looks of an event wait (`gathered`) in the cutover lane share one request when
    /// they come within the window of each other; a look that cannot wait neither joins their
    /// batch nor waits for it; outside the cutover lane nothing gathers.
    #[tokio::test]
    async fn gathered_looks_share_a_request_and_a_look_that_cannot_wait_does_not_wait_for_them() {
        use std::time::Duration;
        let b = LaneBatchers::<String, String>::new("rds:DescribeDBClusters");
        let asked = Mutex::new(Vec::new());
        let (a, later, urgent) = tokio::join!(
            timed_look(&b, &asked, "a", Waits::ForAnEvent, 0),
            timed_look(&b, &asked, "b", Waits::ForAnEvent, 500),
            timed_look(&b, &asked, "c", Waits::Never, 100)
        );
        let mut asked = asked.lock().unwrap().clone();
        asked.sort();
        assert_eq!(asked, vec![vec!["a", "b"], vec!["c"]]);
        assert!(a >= GATHER_WINDOW, "the batch stayed open: {a:?}");
        // Answered with the batch it joined half a second in: after most of its window (not
        // at once), and with `a` (sooner from its own later start). Not an exact 1.5 s: the
        // timers fire a millisecond or so late, more on a busy machine.
        assert!(
            later >= GATHER_WINDOW / 2 && later < a,
            "answered with the batch it joined: {later:?} ({a:?})"
        );
        assert!(urgent < GATHER_WINDOW / 2, "{urgent:?}");
        assert_eq!(gathered(async { b.gather_window() }).await, Duration::ZERO);
    }

    /// Looks that gather quickly (the group change's poll) share a request among themselves
    /// and wait their own short window, never a batch of looks that wait for an event.
    #[tokio::test]
    async fn quickly_gathered_looks_share_a_request_and_never_wait_for_a_slow_batch() {
        use std::time::Duration;
        let b = LaneBatchers::<String, String>::new("rds:DescribeDBInstances");
        let asked = Mutex::new(Vec::new());
        let (slow, first, second) = tokio::join!(
            timed_look(&b, &asked, "a", Waits::ForAnEvent, 0),
            timed_look(&b, &asked, "q1", Waits::Quickly, 50),
            timed_look(&b, &asked, "q2", Waits::Quickly, 100)
        );
        let mut asked = asked.lock().unwrap().clone();
        asked.sort();
        assert_eq!(asked, vec![vec!["a"], vec!["q1", "q2"]]);
        assert!(slow >= GATHER_WINDOW, "{slow:?}");
        assert!(
            first >= QUICK_GATHER_WINDOW,
            "the batch stayed open: {first:?}"
        );
        assert!(
            first < GATHER_WINDOW / 2,
            "never the slow batch's wait: {first:?}"
        );
        // Answered with q1's batch, from its own later start (timers fire a little late on a
        // busy machine, so no exact bound).
        assert!(
            second < first,
            "answered with the batch it joined: {second:?} ({first:?})"
        );
        assert_eq!(
            gathered_quickly(async { b.gather_window() }).await,
            Duration::ZERO,
            "outside the cutover lane nothing gathers"
        );
    }

    /// Polls every future to completion on this task (no `futures` crate here).
    async fn futures_join_all<F: Future>(fs: impl Iterator<Item = F>) -> Vec<F::Output> {
        let mut set = Vec::new();
        for f in fs {
            set.push(Box::pin(f));
        }
        let mut out: Vec<Option<F::Output>> = (0..set.len()).map(|_| None).collect();
        std::future::poll_fn(|cx| {
            let mut pending = false;
            for (i, f) in set.iter_mut().enumerate() {
                if out[i].is_none() {
                    match f.as_mut().poll(cx) {
                        std::task::Poll::Ready(v) => out[i] = Some(v),
                        std::task::Poll::Pending => pending = true,
                    }
                }
            }
            if pending {
                std::task::Poll::Pending
            } else {
                std::task::Poll::Ready(())
            }
        })
        .await;
        out.into_iter().map(|o| o.expect("completed")).collect()
    }
}
