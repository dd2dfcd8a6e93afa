//! The deterministic simulator: the real agent and phase machine against an in-process fake AWS,
//! in virtual time, under seeded faults, with safety checked at every step.
//!
//! In the spirit of FoundationDB's simulation and TigerBeetle's VOPR: one `u64` seed decides
//! every latency, every fault and every delivery order, so a failing seed replays exactly.
//! Futures are driven by a tiny executor of our own (`drive`): a port call waits its latency in
//! virtual time (a timer the executor reads), a task blocked on the AWS adapter's real fleet cache
//! or rate limiter (tokio mutexes) is woken through its `Waker`, and the executor polls what is
//! due or woken, in task order, then jumps time to the next thing that happens.
//!
//! # Layout
//! - `world`: the fake AWS behind every port trait (RDS, EC2, CloudWatch, SNS, SQS, DynamoDB, the
//!   router, the clock) and its data model (writes as sequence numbers, replication, metrics);
//!   RDS requests go through the AWS adapter's own rate limiter and fleet describe cache, run on
//!   virtual time, one set per agent process (`world/adapter.rs`).
//! - `queue`: SQS semantics (at-least-once, visibility timeout, delays, redrive to a DLQ).
//! - `faults`: the seeded fault plan, or one written by hand.
//! - `checks`: decision checks (the step wrapper), the quarantine rule, liveness.
//! - here: options, the executor, the runs and the report.

pub mod checks;
pub mod faults;
pub mod queue;
mod report;
pub mod rng;
pub mod world;

pub use report::{FleetFigures, PathFigures, SimReport, percentile};

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use jiff::SignedDuration;

use crate::agent::{Agent, Disposition};
use crate::core::policy::{CutoverPolicy, Timeouts};
use crate::core::{Phase, Policy};
use crate::ports::{Queue, QueueMessage, World};

pub use checks::Variant;
pub use faults::{CallFault, DbFault, FaultIntensity, FaultPlan, PermanentFault, ScriptedFault};
use queue::Ms;
use rng::Rng;
use world::{MIN, SEC, SimPort, SimWorld, State, StoreMode};

/// What to run. `Default` is what CI runs: 500 seeds with the default fault mix.
#[derive(Clone, Debug, PartialEq)]
pub struct SimOptions {
    /// How many seeds, starting at `start_seed`.
    pub seeds: u64,
    pub start_seed: u64,
    /// Print the timeline of the first seed (phase changes, faults, notifications).
    pub verbose: bool,
    /// Migrations per seed: drawn in `[min, max]` by the seed.
    pub migrations_min: usize,
    pub migrations_max: usize,
    /// If > 0, also run one seed with this many concurrent migrations in one agent.
    pub fleet: usize,
    /// Scales the default fault mix (0: no faults).
    pub fault_intensity: f64,
    /// A hand-written plan; replaces the random one when given.
    pub plan: Option<FaultPlan>,
    /// Messages the agent handles at once.
    pub workers: usize,
    pub variant: Variant,
    /// Check every decision against `core::invariants` (off: world checks only).
    pub check_decisions: bool,
    /// Virtual time after which an unsettled migration is a liveness violation.
    pub bound_hours: i64,
    /// The share of sources whose owners grant database access (tag
    /// `aurora-migration:database-access=master-secret`): the database-aware cutover. 0: every
    /// source takes the metric path (the reboot), as before the database-aware path existed.
    pub database_share: f64,
    /// The share of sources that route through Route 53 (tag `aurora-migration:router`; the
    /// rest use the webhook), with its faults (`world/route53.rs`). 0: every source uses the
    /// webhook, and the run is drawn exactly as before routers existed.
    pub route53_share: f64,
    /// The share of sources routing through an RDS Proxy (of those not on Route 53), with its
    /// faults (`world/rds_proxy.rs`). 0: none, and nothing is drawn for it.
    pub rds_proxy_share: f64,
    /// The share of the remaining sources routing through PgBouncer (`world/pgbouncer.rs`).
    /// 0: none, and nothing is drawn for it.
    pub pgbouncer_share: f64,
    /// RDS requests per second the agent allows itself (`MIGRATOR_RDS_RATE_LIMIT`, default 5);
    /// a large value is the unlimited budget the fleet's figures are compared with.
    pub rds_rate_limit: f64,
    /// Most migrations in their cutover at once (`MIGRATOR_MAX_CUTOVERS`), per agent.
    pub max_cutovers: usize,
    /// Most migrations in Preflight or Preparing at once (`MIGRATOR_MAX_PREPARATIONS`), per
    /// agent.
    pub max_preparations: usize,
    /// Agent processes on the one table and queue (two: the deployment's high availability,
    /// `agent::lease`); each gets its share of the RDS rate, as the template gives each task.
    /// Crashes kill one process at a time.
    pub agents: usize,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            seeds: 500,
            start_seed: 1,
            verbose: false,
            migrations_min: 1,
            migrations_max: 3,
            fleet: 0,
            fault_intensity: 1.0,
            plan: None,
            workers: 4,
            variant: Variant::Correct,
            check_decisions: true,
            bound_hours: 30,
            database_share: 0.5,
            route53_share: 0.0,
            rds_proxy_share: 0.0,
            pgbouncer_share: 0.0,
            rds_rate_limit: crate::aws::AwsSettings::new("", "", "").rds_requests_per_second,
            max_cutovers: crate::core::policy::DEFAULT_MAX_CUTOVERS,
            max_preparations: crate::core::policy::DEFAULT_MAX_PREPARATIONS,
            agents: 1,
        }
    }
}

/// The policy every simulated agent runs: automatic cutover, short soak and retention so a run
/// ends in bounded virtual time, and a replicating limit that a stale slot reaches. Database
/// access is allowed (each source still opts in by tag), with the agent's own group admitted
/// by the quarantine.
pub fn sim_policy() -> Policy {
    Policy {
        database_access: true,
        agent_security_group: Some(AGENT_GROUP.to_string()),
        cutover: CutoverPolicy::Automatic,
        soak: SignedDuration::from_mins(10),
        retention: SignedDuration::from_hours(1),
        timeouts: Timeouts {
            replicating: SignedDuration::from_hours(3),
            decommissioning: SignedDuration::from_hours(6),
            ..Timeouts::default()
        },
        ..Policy::default()
    }
}

/// The simulated agent's security group.
pub const AGENT_GROUP: &str = "sg-agent";

pub fn fmt_ms(ms: Ms) -> String {
    let s = ms / SEC;
    format!("{}h{:02}m{:02}s", s / 3600, (s / 60) % 60, s % 60)
}

/// One seed's result.
#[derive(Clone, Debug)]
pub struct SeedOutcome {
    pub seed: u64,
    pub endings: Vec<checks::Ending>,
    pub violations: Vec<String>,
    pub calls: BTreeMap<&'static str, u64>,
    pub rds_peak_1s: u32,
    pub rds_peak_60s: f64,
    /// The most migrations in Preflight or Preparing at once, and the limit (the agents' sum).
    pub peak_preparations: (usize, usize),
    /// RDS requests made in the rate limiter's cutover lane (`aws::limit`).
    pub rds_in_cutover_lane: u64,
    /// RDS requests by the phase of the migration that made them, and operation.
    pub rds_by_phase: BTreeMap<(&'static str, &'static str), u64>,
    /// RDS requests shared across migrations: (operation, `snapshot` | `batch`) → (requests,
    /// looks carried).
    pub rds_shared: BTreeMap<(&'static str, &'static str), (u64, u64)>,
    pub timeline: Vec<String>,
    pub end_ms: Ms,
    pub decisions: u64,
    /// Saves refused on the record's version (`State::stale_saves`).
    pub stale_saves: u64,
    pub crashes: u32,
    /// Whether each scripted fault (indexed as `FaultPlan::scripted`) was applied.
    pub scripted_fired: Vec<bool>,
    pub dlq: usize,
    /// Agent crash → another process took the lease, for migrations in their cutover.
    pub takeovers_ms: Vec<Ms>,
    pub db_faults: BTreeMap<&'static str, u64>,
}

struct Task {
    fut: Pin<Box<dyn Future<Output = Disposition>>>,
    /// The agent process it runs in (an index into the executor's agents).
    agent: usize,
    /// The SQS message it handles (id, receipt): the loop keeps it hidden while the handler
    /// runs. None for a follow-up, which holds no message.
    message: Option<(u64, String)>,
    /// Its waker (and the `Arc` behind it, whose count shows whether anything holds a clone).
    wake: Arc<TaskWake>,
    waker: Waker,
}

/// Tasks woken through their `Waker` (a tokio mutex released), polled next at the same instant.
type Woken = Arc<std::sync::Mutex<BTreeSet<usize>>>;

/// A task's waker: waking it marks the task for polling.
struct TaskWake {
    id: usize,
    woken: Woken,
}

impl Wake for TaskWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(self.id);
    }
}

impl Task {
    /// Something besides the task holds its waker (a tokio mutex's wait list): it will be woken.
    fn waker_registered(&self) -> bool {
        // The task's own two references: `wake` and the one inside `waker`.
        Arc::strong_count(&self.wake) > 2
    }
}

fn lock_woken(w: &Woken) -> std::sync::MutexGuard<'_, BTreeSet<usize>> {
    w.lock().unwrap_or_else(|e| e.into_inner())
}

/// Extend a handled message's visibility this long before it would reappear.
const VISIBILITY_MARGIN_MS: Ms = 10 * SEC;

/// A new agent process on the world: its AWS adapter starts with empty caches and a full
/// rate limiter; it holds leases as `holder` (`agent-<index>.<start>`).
fn agent(port: &SimPort, o: &SimOptions, holder: String) -> Arc<Agent<SimWorld>> {
    let mut agent = Agent::new(
        SimWorld {
            port: port.new_process(&holder),
        },
        Policy {
            max_cutovers: o.max_cutovers,
            max_preparations: o.max_preparations,
            ..sim_policy()
        },
    )
    .with_lease(holder, crate::agent::lease::DEFAULT_LEASE_TTL);
    agent.step = checks::checked_step;
    Arc::new(agent)
}

/// One agent process of the executor, and when it is up.
struct Process {
    agent: Arc<Agent<SimWorld>>,
    /// Virtual time at which it (re)started: it receives nothing before.
    up_at: Ms,
    /// Starts so far (its holder name's second part).
    starts: u32,
    /// This start's take-over of the cutovers under way (`Agent::take_over_at_start`) was
    /// spawned, as the runtime does before it receives anything.
    took_over: std::cell::Cell<bool>,
}

/// Runs one seed with `migrations` sources and returns what happened.
pub fn run_seed(seed: u64, migrations: usize, o: &SimOptions) -> SeedOutcome {
    let plan = o
        .plan
        .clone()
        .unwrap_or_else(|| FaultPlan::random(FaultIntensity::scaled(o.fault_intensity)));
    let store_mode = if o.variant == Variant::StaleRecord {
        StoreMode::IgnoresVersion
    } else {
        StoreMode::Conditional
    };
    let mut state = State::new(seed, plan.clone(), store_mode, o.verbose);
    let agents = o.agents.max(1);
    state.rds_rate = o.rds_rate_limit / agents as f64;
    state.max_cutovers = o.max_cutovers * agents;
    state.max_preparations = o.max_preparations * agents;
    let mut pick = Rng::fork(seed, 4);
    for i in 0..migrations {
        let permanent = match &plan.permanent {
            Some(list) => list.iter().find(|(k, _)| *k == i).map(|(_, f)| *f),
            None if pick.chance(plan.intensity.permanent) => {
                Some(PermanentFault::ALL[pick.range(0, 2) as usize])
            }
            None => None,
        };
        state.add_source(i, permanent);
    }
    // Database access, from a stream of its own: with a share of 0 the rest of the run is
    // drawn exactly as before the database-aware path existed.
    let mut db_pick = Rng::fork(seed, 7);
    let ids: Vec<(usize, String)> = state
        .sources
        .iter()
        .map(|(id, s)| (s.index, id.clone()))
        .collect();
    for (i, id) in &ids {
        let i = *i;
        if !db_pick.chance(o.database_share) {
            continue;
        }
        let i_ = &plan.intensity;
        let fault = match &plan.database {
            Some(list) => list.iter().find(|(k, _)| *k == i).map(|(_, f)| *f),
            None if db_pick.chance(i_.db_secret_unreadable) => Some(DbFault::SecretUnreadable),
            None if db_pick.chance(i_.db_persistent_hole) => Some(DbFault::PersistentHole),
            None if db_pick.chance(i_.db_stuck_sessions) => Some(DbFault::StuckSessions),
            None if db_pick.chance(i_.db_reconnect_once) => Some(DbFault::ReconnectOnce),
            None => None,
        };
        state.grant_database_access(id, fault);
    }
    // Routers, from a stream of their own (a share of 0 draws nothing): a share of the sources
    // route through Route 53, and some of those changes never sync (a permanent fault). A
    // scripted `RouteNeverInSync` routes through Route 53 whatever the share.
    let mut route_pick = Rng::fork(seed, 8);
    let mut proxy_pick = Rng::fork(seed, 9);
    let mut pooler_pick = Rng::fork(seed, 10);
    for (_, id) in &ids {
        let scripted = state.sources[id].permanent == Some(PermanentFault::RouteNeverInSync);
        if scripted || route_pick.chance(o.route53_share) {
            state.route_through_route53(id);
        } else if proxy_pick.chance(o.rds_proxy_share) {
            state.route_through_rds_proxy(id);
        } else if pooler_pick.chance(o.pgbouncer_share) {
            state.route_through_pgbouncer(id);
        } else {
            continue;
        }
        if state.sources[id].permanent.is_none()
            && plan.permanent.is_none()
            && route_pick.chance(plan.intensity.route53_never_in_sync)
        {
            state.make_permanent(id, PermanentFault::RouteNeverInSync);
        }
    }
    let port = SimPort::new(state);
    checks::arm(o.variant, o.check_decisions);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drive(seed, &port, o)));
    let (decision_violations, decisions) = checks::disarm();
    let (settled, crashes, mut extra) = match result {
        Ok((settled, crashes)) => (settled, crashes, Vec::new()),
        Err(p) => {
            let what = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            (true, 0, vec![format!("panic: {what}")])
        }
    };
    let s = port.lock();
    let (endings, mut violations) = checks::endings(&s, settled);
    violations.splice(0..0, s.violations.iter().cloned());
    violations.extend(decision_violations);
    violations.append(&mut extra);
    let rds_peak_1s = s.rds_per_second.values().copied().max().unwrap_or(0);
    let rds_in_cutover_lane = s.rds_in_cutover_lane;
    let rds_by_phase = s.rds_by_phase.clone();
    let rds_shared = s.rds_shared.clone();
    let rds_peak_60s = peak_window(&s.rds_per_second, 60);
    let timeline = s
        .timeline
        .as_ref()
        .map(|t| {
            t.iter()
                .map(|(at, line)| format!("+{} {line}", fmt_ms(*at)))
                .collect()
        })
        .unwrap_or_default();
    SeedOutcome {
        seed,
        endings,
        violations,
        calls: s.calls.clone(),
        rds_peak_1s,
        rds_peak_60s,
        peak_preparations: (s.peak_preparations, s.max_preparations),
        rds_in_cutover_lane,
        rds_by_phase,
        rds_shared,
        timeline,
        end_ms: s.now,
        decisions,
        stale_saves: s.stale_saves,
        crashes,
        scripted_fired: s.scripted_fired.clone(),
        dlq: s.queue.dlq.len(),
        takeovers_ms: s.takeovers_ms.clone(),
        db_faults: s.db_faults.clone(),
    }
}

/// Highest average rate over any `window`-second span.
fn peak_window(per_second: &BTreeMap<i64, u32>, window: i64) -> f64 {
    let mut best = 0u64;
    let mut sum = 0u64;
    let mut span: std::collections::VecDeque<(i64, u32)> = std::collections::VecDeque::new();
    for (&t, &n) in per_second {
        span.push_back((t, n));
        sum += u64::from(n);
        while span.front().is_some_and(|(s, _)| *s <= t - window) {
            sum -= u64::from(span.pop_front().expect("non-empty").1);
        }
        best = best.max(sum);
    }
    best as f64 / window as f64
}

/// The executor: receives messages like the agent's loop would, polls the handlers, moves
/// virtual time to the next thing that happens, crashes and restarts the agent.
/// Returns (every migration settled, crashes).
fn drive(seed: u64, port: &SimPort, o: &SimOptions) -> (bool, u32) {
    let bound = o.bound_hours * 60 * MIN;
    let mut rng = Rng::fork(seed, 5);
    let mut processes: Vec<Process> = (0..o.agents.max(1))
        .map(|i| Process {
            agent: agent(port, o, format!("agent-{i}.0")),
            up_at: 0,
            starts: 0,
            took_over: std::cell::Cell::new(false),
        })
        .collect();
    let mut tasks: BTreeMap<usize, Task> = BTreeMap::new();
    let mut next_task = 0usize;
    let mut crashes = 0u32;
    let mut last_check_minute = -1;
    let woken: Woken = Arc::default();
    loop {
        let now = port.lock().now;
        // Poll the handlers whose timer is due or that were woken (new ones are), in id order.
        let due: Vec<usize> = {
            let s = port.lock();
            let woken = lock_woken(&woken);
            tasks
                .keys()
                .copied()
                .filter(|id| woken.contains(id) || s.task_wakes.get(id).is_some_and(|w| *w <= now))
                .collect()
        };
        let mut crashed: Option<usize> = None;
        for id in due {
            {
                let mut s = port.lock();
                s.current_task = id;
                s.task_wakes.remove(&id);
            }
            lock_woken(&woken).remove(&id);
            let task = tasks.get_mut(&id).expect("listed");
            let mut cx = Context::from_waker(&task.waker);
            let ready = matches!(task.fut.as_mut().poll(&mut cx), Poll::Ready(_));
            let s = port.lock();
            if s.crashed {
                crashed = Some(task.agent);
                break;
            }
            if ready {
                tasks.remove(&id);
                lock_woken(&woken).remove(&id);
            } else {
                // Pending must mean a wake-up is coming: a virtual-time timer, or a waker held
                // by what it waits on (or already woken).
                assert!(
                    s.task_wakes.contains_key(&id)
                        || task.waker_registered()
                        || lock_woken(&woken).contains(&id),
                    "a handler is pending with neither a timer nor a waker registered (seed {seed})"
                );
            }
        }
        if let Some(dead) = crashed {
            // Everything the process held in memory is gone (its handlers, and its adapter's
            // caches and limiter: the new agent is a new process); in-flight messages come back
            // after their visibility timeout. The other processes run on.
            let gone: Vec<usize> = tasks
                .iter()
                .filter(|(_, t)| t.agent == dead)
                .map(|(id, _)| *id)
                .collect();
            let mut s = port.lock();
            for id in &gone {
                tasks.remove(id);
                lock_woken(&woken).remove(id);
                s.task_wakes.remove(id);
            }
            crashes += 1;
            s.crashed = false;
            // Measured only when another process is up to take over (or there is one process
            // only: its restart takes over).
            let others_up = (0..processes.len()).all(|i| i == dead || now >= processes[i].up_at);
            let p = &mut processes[dead];
            s.orphan_leases_of(&p.agent.holder, others_up);
            p.up_at = now + rng.range(20 * SEC, 90 * SEC);
            p.starts += 1;
            if o.agents > 1 {
                s.log(|| format!("agent-{dead} restarting"));
            } else {
                s.log(|| "agent restarting".to_string());
            }
            drop(s);
            p.agent = self::agent(port, o, format!("agent-{dead}.{}", p.starts));
            p.took_over.set(false);
            continue;
        }
        for (index, process) in processes.iter().enumerate() {
            // Receive while there is room, as the agent's loop does.
            // Follow-ups take no worker's place (the runtime spawns them beside its workers).
            let busy = tasks
                .values()
                .filter(|t| t.agent == index && t.message.is_some())
                .count();
            let agent = &process.agent;
            // A new task of this process: polled at once (next iteration, same instant).
            let mut spawn = |fut: Pin<Box<dyn Future<Output = Disposition>>>,
                             message: Option<(u64, String)>| {
                let id = next_task;
                next_task += 1;
                let wake = Arc::new(TaskWake {
                    id,
                    woken: woken.clone(),
                });
                tasks.insert(
                    id,
                    Task {
                        fut,
                        agent: index,
                        message,
                        waker: Waker::from(wake.clone()),
                        wake,
                    },
                );
                lock_woken(&woken).insert(id);
            };
            if now >= process.up_at && !process.took_over.replace(true) {
                let a = agent.clone();
                let take_over = async move {
                    a.take_over_at_start().await;
                    Disposition::Delete
                };
                spawn(Box::pin(take_over), None);
            }
            if now >= process.up_at && busy < o.workers {
                let messages = {
                    let mut s = port.lock();
                    let room = o.workers - busy;
                    let got = s.queue.receive(now, room, &mut rng);
                    if !got.is_empty() {
                        *s.calls.entry("sqs:ReceiveMessage").or_default() += 1;
                    }
                    got
                };
                for m in messages {
                    let receipt = m.receipt.clone().unwrap_or_default();
                    let message = QueueMessage {
                        id: m.id.to_string(),
                        receipt: receipt.clone(),
                        body: m.body.clone(),
                        receive_count: m.receive_count,
                    };
                    let a = agent.clone();
                    let handler = async move {
                        let d = a.handle_message(&message).await;
                        if !matches!(d, Disposition::Leave(_)) {
                            let _ = a.world.queue().delete(&message.receipt).await;
                        }
                        d
                    };
                    spawn(Box::pin(handler), Some((m.id, receipt)));
                }
            }
            // The follow-ups the handlers recorded: tasks of this process, as the runtime spawns
            // them (a crash above dropped them with the process). They hold no message.
            for f in agent.take_follow_ups() {
                let a = agent.clone();
                let follow_up = async move {
                    a.until_due(&f).await;
                    a.follow_up(&f).await
                };
                spawn(Box::pin(follow_up), None);
            }
        }
        if !lock_woken(&woken).is_empty() {
            // Woken and new handlers run at once, before time moves.
            continue;
        }
        // The loop's visibility heartbeat: a handler that runs long keeps its message hidden
        // (ChangeMessageVisibility), as long as the process lives.
        {
            let mut s = port.lock();
            for (message_id, receipt) in tasks.values().filter_map(|t| t.message.as_ref()) {
                let due = s
                    .queue
                    .messages
                    .get(message_id)
                    .is_some_and(|m| m.visible_at - now <= VISIBILITY_MARGIN_MS);
                if due {
                    s.queue.extend(receipt, now, 15);
                    *s.calls.entry("sqs:ChangeMessageVisibility").or_default() += 1;
                }
            }
        }
        // Checks that need the whole world, once per virtual minute.
        let minute = now / MIN;
        let settled = {
            let mut s = port.lock();
            if minute != last_check_minute {
                last_check_minute = minute;
                for v in checks::quarantine_has_a_path(&s) {
                    if !s.violations.iter().any(|x| x.starts_with(&v)) {
                        s.violation(v);
                    }
                }
                settled(&s)
            } else {
                false
            }
        };
        if settled && tasks.is_empty() {
            return (true, crashes);
        }
        if now > bound {
            return (false, crashes);
        }
        // Jump to the next thing that happens.
        let next = {
            let s = port.lock();
            let mut next = s.next_event_at().unwrap_or(Ms::MAX);
            if let Some(w) = tasks.keys().filter_map(|id| s.task_wakes.get(id)).min() {
                next = next.min(*w);
            }
            for (message_id, _) in tasks.values().filter_map(|t| t.message.as_ref()) {
                if let Some(m) = s.queue.messages.get(message_id) {
                    next = next.min((m.visible_at - VISIBILITY_MARGIN_MS).max(now + 1));
                }
            }
            for (index, p) in processes.iter().enumerate() {
                let busy = tasks
                    .values()
                    .filter(|t| t.agent == index && t.message.is_some())
                    .count();
                if now < p.up_at {
                    next = next.min(p.up_at);
                } else if busy < o.workers
                    && let Some(v) = s.queue.next_visible()
                {
                    next = next.min(v.max(now));
                }
            }
            next
        };
        assert!(next != Ms::MAX, "nothing left to happen (seed {seed})");
        port.lock().advance(next.max(now));
    }
}

/// Every source's latest attempt is terminal and asks for no more wake-ups, or failed after
/// its route was asked for (a route that never took effect): such a record stays looked at,
/// waiting for a person's rollback approval, and nothing else will happen to it.
fn settled(s: &State) -> bool {
    let mut latest: BTreeMap<&str, &crate::core::Migration> = BTreeMap::new();
    for m in s.store.values() {
        let e = latest.entry(m.id.resource_id.as_str()).or_insert(m);
        if m.id.attempt > e.id.attempt {
            *e = m;
        }
    }
    s.sources.values().all(|src| {
        latest.get(src.view.resource_id.as_str()).is_some_and(|m| {
            let awaits_a_person = m.phase == crate::core::Phase::Failed
                && m.progress.route_requested_at.is_some()
                && m.rollback.is_none()
                && m.outbox.is_empty();
            m.phase.is_terminal() && (m.next_wake.is_none() || awaits_a_person)
        })
    })
}

/// The number of migrations a seed runs (drawn from the seed).
pub fn migrations_for(seed: u64, o: &SimOptions) -> usize {
    let mut r = Rng::fork(seed, 6);
    r.range(
        o.migrations_min as i64,
        o.migrations_max.max(o.migrations_min) as i64,
    ) as usize
}

pub fn run(o: &SimOptions) -> SimReport {
    let mut report = SimReport {
        options: o.clone(),
        seeds_run: 0,
        migrations: 0,
        violations: Vec::new(),
        phases: BTreeMap::new(),
        permanent_faults: 0,
        budget_rollbacks: Vec::new(),
        windows_ms: Vec::new(),
        agent_ms: Vec::new(),
        by_path: BTreeMap::new(),
        fallbacks: BTreeMap::new(),
        refused_by_router_ms: Default::default(),
        propagation_by_router_ms: Default::default(),
        db_faults: BTreeMap::new(),
        calls: BTreeMap::new(),
        rds_peak_1s: 0,
        rds_peak_60s: 0.0,
        crashes: 0,
        scripted_fired: Vec::new(),
        decisions: 0,
        stale_saves: 0,
        dlq: 0,
        takeovers_ms: Vec::new(),
        virtual_ms: 0,
        timeline: Vec::new(),
        fleet: None,
    };
    for i in 0..o.seeds {
        let seed = o.start_seed + i;
        let mut opts = o.clone();
        opts.verbose = o.verbose && i == 0;
        let out = run_seed(seed, migrations_for(seed, o), &opts);
        report.absorb(&out);
        if opts.verbose {
            report.timeline = out.timeline.clone();
        }
    }
    if o.fleet > 0 {
        let started = std::time::Instant::now();
        // A process crash is a per-process event: keep the crash rate per unit of time that
        // of a 2-migration seed, rather than per call (which would crash a busy agent often).
        let mut intensity = FaultIntensity::scaled(o.fault_intensity);
        intensity.crash *= 2.0 / o.fleet.max(2) as f64;
        let opts = SimOptions {
            // With `--seeds 0`, `--verbose` prints the fleet's timeline instead of a seed's.
            verbose: o.verbose && o.seeds == 0,
            workers: o.workers.max(64),
            plan: Some(
                o.plan
                    .clone()
                    .unwrap_or_else(|| FaultPlan::random(intensity)),
            ),
            ..o.clone()
        };
        let out = run_seed(o.start_seed, o.fleet, &opts);
        let wall_ms = started.elapsed().as_millis();
        if opts.verbose {
            report.timeline = out.timeline.clone();
        }
        for v in &out.violations {
            report.violations.push((out.seed, format!("fleet: {v}")));
        }
        report.fleet = Some(FleetFigures {
            migrations: o.fleet,
            wall_ms,
            peak_memory_kib: peak_memory_kib(),
            outcome: out,
        });
    }
    report
}

/// VmHWM of this process, from /proc (Linux only).
fn peak_memory_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}
