//! The SQS runtime around [`Agent::read`] and [`Agent::handle_read`].
//!
//! Long polling (20 s), batches of up to 10, messages handled concurrently up to a bound, one
//! migration never handled by two workers of this agent at once (a per-key async lock), the
//! message's visibility extended while its step runs, and a delete only after the handling said
//! so (otherwise the message comes back, and after the queue's `maxReceiveCount` goes to the DLQ).
//!
//! Shutdown: when the token is cancelled (SIGTERM) the loop stops receiving, lets in-flight
//! messages finish within the budget and abandons the rest (their messages reappear after the
//! visibility timeout; every step is safe to repeat), then returns.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::agent::{Agent, Disposition};
use crate::aws::AwsWorld;
use crate::inbound::Inbound;
use crate::ports::{Queue, QueueMessage, StateStore, World};
use crate::telemetry::MessageOutcome;

#[derive(Clone, Debug)]
pub struct RuntimeSettings {
    /// Messages handled at once.
    pub concurrency: usize,
    /// Long-poll wait (≤ 20 s).
    pub wait_s: u32,
    /// Messages per ReceiveMessage (≤ 10).
    pub batch: u32,
    /// Visibility timeout asked for at receive (whatever the queue's default): a running
    /// message is extended by this much every third of it, and a dead agent's message is seen
    /// again this long after its last extension.
    pub visibility_timeout_s: u32,
    /// Time allowed to in-flight messages after cancellation (Fargate kills 30 s after SIGTERM).
    pub shutdown_budget: Duration,
    /// Period of the agent's own heartbeat (metric and file).
    pub heartbeat_interval: Duration,
    /// File touched while the loop runs (the container health check reads its age).
    pub heartbeat_file: Option<PathBuf>,
}

impl Default for RuntimeSettings {
    fn default() -> Self {
        RuntimeSettings {
            concurrency: 64,
            wait_s: 20,
            batch: 10,
            visibility_timeout_s: 15,
            shutdown_budget: Duration::from_secs(25),
            heartbeat_interval: Duration::from_secs(60),
            heartbeat_file: None,
        }
    }
}

/// What one run did, for logs and the summary.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunSummary {
    pub received: u64,
    pub deleted: u64,
    /// Left for redelivery (malformed, or a step that failed).
    pub left: u64,
    /// Still running when the shutdown budget ran out.
    pub abandoned: u64,
}

#[derive(Default)]
struct Stats {
    received: AtomicU64,
    deleted: AtomicU64,
    left: AtomicU64,
}

/// Per-key async locks; an entry lives while someone holds or waits for it.
#[derive(Default)]
pub(crate) struct KeyedLocks {
    map: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

pub(crate) struct KeyGuard {
    locks: Arc<KeyedLocks>,
    key: String,
    mutex: Arc<tokio::sync::Mutex<()>>,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl KeyedLocks {
    pub(crate) async fn lock(self: &Arc<Self>, key: String) -> KeyGuard {
        let mutex = {
            let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(key.clone()).or_default().clone()
        };
        let guard = mutex.clone().lock_owned().await;
        KeyGuard {
            locks: self.clone(),
            key,
            mutex,
            guard: Some(guard),
        }
    }
}

impl Drop for KeyGuard {
    fn drop(&mut self) {
        self.guard.take();
        let mut map = self.locks.map.lock().unwrap_or_else(|p| p.into_inner());
        // Only the map's reference and ours: nobody waits.
        if Arc::strong_count(&self.mutex) == 2 {
            map.remove(&self.key);
        }
    }
}

/// Which migration a message is about, so that two messages about it never run at once.
/// Ticks name the record (resource id + attempt), events the source's identifier: the record
/// says which identifier a resource id had, remembered after the first look.
#[derive(Default)]
struct KeyResolver {
    identifiers: std::sync::Mutex<HashMap<String, String>>,
}

impl KeyResolver {
    async fn key<W: World>(&self, agent: &Agent<W>, inbound: &Inbound) -> String {
        match inbound {
            Inbound::Tick(t) => {
                let known = self
                    .identifiers
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&t.resource_id)
                    .cloned();
                let identifier = match known {
                    Some(i) => Some(i),
                    None => match agent.world.store().load(&t.migration()).await {
                        Ok(Some(m)) => {
                            let i = m.source_identifier.to_ascii_lowercase();
                            self.identifiers
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .insert(t.resource_id.clone(), i.clone());
                            Some(i)
                        }
                        _ => None,
                    },
                };
                match identifier {
                    Some(i) => format!("source:{i}"),
                    None => format!("resource:{}", t.resource_id),
                }
            }
            Inbound::InstanceEvent(e) => {
                format!("source:{}", e.source_identifier.to_ascii_lowercase())
            }
            Inbound::TagChange(t) | Inbound::TagsAdded(t) => {
                let id = t.arn.rsplit(':').next().unwrap_or_default();
                format!("source:{}", id.to_ascii_lowercase())
            }
            Inbound::ClusterEvent(e) => {
                format!("cluster:{}", e.source_identifier.to_ascii_lowercase())
            }
            Inbound::Resync { .. } => "resync".to_string(),
        }
    }
}

/// Runs the agent against AWS until `shutdown` is cancelled: the queue loop plus the agent's
/// heartbeat metric (`AgentHeartbeat`) every `heartbeat_interval`.
pub async fn run(
    agent: Arc<Agent<AwsWorld>>,
    settings: RuntimeSettings,
    shutdown: CancellationToken,
) -> RunSummary {
    let beat = {
        let agent = agent.clone();
        let stop = shutdown.clone();
        let every = settings.heartbeat_interval.max(Duration::from_secs(1));
        tokio::spawn(async move {
            loop {
                if let Err(e) = agent.world.metrics.put_agent_heartbeat().await {
                    tracing::warn!(error = %e, "agent heartbeat not published");
                }
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(every) => {}
                }
            }
        })
    };
    let summary = run_queue(agent.clone(), settings, shutdown).await;
    beat.abort();
    tracing::info!(
        received = summary.received,
        deleted = summary.deleted,
        left = summary.left,
        abandoned = summary.abandoned,
        aws_calls = agent.world.calls.total(),
        "agent stopped"
    );
    summary
}

fn touch(path: &Option<PathBuf>) {
    if let Some(p) = path
        && let Err(e) = std::fs::write(p, jiff::Timestamp::now().to_string())
    {
        tracing::warn!(path = %p.display(), error = %e, "heartbeat file not written");
    }
}

/// The queue loop, for any world (the AWS one, or a test's).
pub async fn run_queue<W: World + 'static>(
    agent: Arc<Agent<W>>,
    settings: RuntimeSettings,
    shutdown: CancellationToken,
) -> RunSummary {
    let concurrency = settings.concurrency.max(1);
    let slots = Arc::new(Semaphore::new(concurrency));
    let locks = Arc::new(KeyedLocks::default());
    let resolver = Arc::new(KeyResolver::default());
    let stats = Arc::new(Stats::default());
    let mut tasks: JoinSet<()> = JoinSet::new();
    // The cutovers and rollbacks a process before this one was following up in-process.
    let taken_over = agent.take_over_at_start().await;
    if taken_over > 0 {
        tracing::info!(
            taken_over,
            "cutovers and rollbacks under way taken over at start-up"
        );
    }
    spawn_follow_ups(&agent, &locks, &resolver, &shutdown);
    loop {
        touch(&settings.heartbeat_file);
        while tasks.try_join_next().is_some() {}
        let first = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let room = (1 + slots.available_permits()) as u32;
        let received = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = agent.world.queue().receive(room.min(settings.batch.clamp(1, 10)), settings.wait_s.min(20), settings.visibility_timeout_s.max(3)) => r,
        };
        let messages = match received {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, kind = e.kind.as_str(), "receive failed");
                drop(first);
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                continue;
            }
        };
        let mut first = Some(first);
        for message in messages {
            stats.received.fetch_add(1, Ordering::Relaxed);
            let permit = match first.take() {
                Some(p) => p,
                None => match slots.clone().acquire_owned().await {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            let agent = agent.clone();
            let locks = locks.clone();
            let resolver = resolver.clone();
            let stats = stats.clone();
            let visibility = settings.visibility_timeout_s.max(3);
            let span = tracing::info_span!("message", message_id = %message.id, receive_count = message.receive_count);
            let shutdown = shutdown.clone();
            tasks.spawn(
                async move {
                    handle_one(&agent, &locks, &resolver, &stats, message, visibility).await;
                    drop(permit);
                    spawn_follow_ups(&agent, &locks, &resolver, &shutdown);
                }
                .instrument(span),
            );
        }
    }
    // Stop receiving; give in-flight work the budget, then abandon it.
    let in_flight = tasks.len();
    tracing::info!(
        in_flight,
        budget_s = settings.shutdown_budget.as_secs_f64(),
        "shutting down"
    );
    let drained = tokio::time::timeout(settings.shutdown_budget, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    let abandoned = match drained {
        Ok(()) => 0,
        Err(_) => {
            let n = tasks.len() as u64;
            tracing::warn!(
                abandoned = n,
                "shutdown budget ran out: abandoning in-flight messages (they reappear after their visibility timeout)"
            );
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
            agent.instruments.messages(MessageOutcome::Abandoned, n);
            n
        }
    };
    RunSummary {
        received: stats.received.load(Ordering::Relaxed),
        deleted: stats.deleted.load(Ordering::Relaxed),
        left: stats.left.load(Ordering::Relaxed),
        abandoned,
    }
}

/// Runs the follow-ups the agent recorded (`agent::follow_up`): each waits for its wake-up,
/// then is handled as its tick would be, under the migration's lock (so never beside a message
/// about it), and may record the next. They take no worker slot (a migration in its cutover
/// waits for its next look here, seconds or minutes, and a rescue of a chain whose tick could
/// not be sent waits as long as that tick would have); at shutdown they are dropped, and their
/// ticks carry on in the next process (a rescue, which has no tick, is found overdue by the
/// resync).
fn spawn_follow_ups<W: World + 'static>(
    agent: &Arc<Agent<W>>,
    locks: &Arc<KeyedLocks>,
    resolver: &Arc<KeyResolver>,
    shutdown: &CancellationToken,
) {
    for follow_up in agent.take_follow_ups() {
        let (agent, locks, resolver, shutdown) = (
            agent.clone(),
            locks.clone(),
            resolver.clone(),
            shutdown.clone(),
        );
        let span = tracing::info_span!("follow-up", migration = %follow_up.tick.migration());
        tokio::spawn(
            async move {
                let handled = async {
                    agent.until_due(&follow_up).await;
                    let inbound = Inbound::Tick(follow_up.tick.clone());
                    let _guard = locks.lock(resolver.key(&agent, &inbound).await).await;
                    // Boxed: the driver's future is large, and a worker thread's stack is not.
                    Box::pin(agent.follow_up(&follow_up)).await
                };
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = handled => {}
                }
                spawn_follow_ups(&agent, &locks, &resolver, &shutdown);
            }
            .instrument(span),
        );
    }
}

async fn handle_one<W: World>(
    agent: &Agent<W>,
    locks: &Arc<KeyedLocks>,
    resolver: &KeyResolver,
    stats: &Stats,
    message: QueueMessage,
    visibility_s: u32,
) {
    let queue = agent.world.queue();
    let keep_hidden = async {
        let every = Duration::from_secs(u64::from(visibility_s / 3).max(1));
        loop {
            tokio::time::sleep(every).await;
            if let Err(e) = queue
                .extend_visibility(&message.receipt, visibility_s)
                .await
            {
                tracing::warn!(error = %e, "visibility not extended");
            }
        }
    };
    let work = async {
        // Parsed once: the message says which migration to lock, then the agent handles it.
        let inbound = match agent.read(&message) {
            Ok(i) => i,
            Err(d) => return d,
        };
        let _guard = locks.lock(resolver.key(agent, &inbound).await).await;
        // Boxed: the driver's future is large, and a worker thread's stack is not.
        Box::pin(agent.handle_read(&message, inbound)).await
    };
    let disposition = tokio::select! {
        d = work => d,
        _ = keep_hidden => unreachable!("the visibility loop never ends"),
    };
    agent.instruments.message(disposition.outcome());
    match disposition {
        Disposition::Delete
        | Disposition::DeleteUnknown(_)
        | Disposition::DeleteStale
        | Disposition::DeleteForeign(_) => match queue.delete(&message.receipt).await {
            Ok(()) => {
                stats.deleted.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                tracing::warn!(error = %e, "message handled but not deleted (it will be seen again, harmlessly)")
            }
        },
        Disposition::Leave(why) => {
            stats.left.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(why = %why, "message left for redelivery");
        }
    }
}
