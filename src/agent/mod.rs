//! The driver: for one inbound message, observe, step, persist, act and schedule.
//!
//! The order per message is the crash-safety rule (DESIGN principle 6): receive → parse → load
//! record → observe → step → persist (conditional on the version) → execute actions → schedule
//! wake-up → delete message. A crash between any two of these converges on redelivery or on the
//! next tick: the record is written before anything it asks for is done, every action is
//! idempotent, and the in-flight markers in the record stop a repeat from doubling a mutation.

pub mod execute;
pub mod follow_up;
pub mod lease;
pub mod observe;
pub mod turns;

pub use follow_up::FollowUp;
pub use turns::{Turn, TurnKind, Turns};

use jiff::SignedDuration;
use tracing::Instrument;

use crate::aws::limit::in_lane;
use crate::core::admission::{Admission, admit};
use crate::core::observation::{Observed, SourceInstance};
use crate::core::{ActionResult, ErrorKind, Migration, MigrationId, Policy, step};
use crate::inbound::{self, Home, Inbound, ParseError, Received, Tick};
use crate::ports::{
    Clock, LeaseError, PortError, Queue, QueueMessage, Rds, StateStore, StoreError, World,
};
use crate::telemetry::{Instruments, MessageOutcome};

/// Longest SQS delay: a longer wait is re-ticked.
pub const MAX_DELAY_S: u32 = 900;
/// Steps taken for one message before yielding to the queue ("put a limit on everything").
pub const MAX_STEPS_PER_MESSAGE: usize = 8;
/// A record whose wake-up is this late is stepped by the resync (its tick was lost).
pub const RESYNC_GRACE: SignedDuration = SignedDuration::from_secs(60);
/// A migration under way whose next wake-up is further away than this (the retention's days)
/// is stepped by the resync's sweep: the backstop for a person's tag event lost on its way
/// (EventBridge delivers best effort), such as a rollback approval, which it then sees within
/// one resync period (5 minutes, the template's schedule), as before the sweep left the other
/// migrations to their own wake-ups. Twice the resync's period, so that no wait it outlasts is
/// looked at by both.
pub const RESYNC_STEPS_WAITS_OVER: SignedDuration = SignedDuration::from_mins(10);
/// Sources a resync admits at once, and overdue migrations it steps at once. An admission's
/// first message is a few looks and steps, a dozen RDS calls or so, each waiting its turn at the
/// RDS rate limiter (`aws::limit`, 5 requests/s by default, first come first served in a lane):
/// a handful at once already keeps the limiter busy, and more would only queue their calls
/// ahead of the ticks of migrations already under way. 16 keeps it busy with room to spare
/// (other calls, DynamoDB's and EC2's, are not limited; the README's 200-migration benchmark,
/// started by one resync, saw the limiter let out its 5 requests/s for the whole run) while a
/// tick waits behind at most 16 admissions' calls; it is a quarter of the runtime's default `MIGRATOR_CONCURRENCY` (64), of
/// which the resync message itself takes one slot.
pub const RESYNC_CONCURRENCY: usize = 16;
/// A stale tick adopts the chain when the record's wake-up is this late (SQS delivers a delayed
/// message within about a second of its delay).
pub const TICK_ADOPT_GRACE: SignedDuration = SignedDuration::from_secs(15);

/// What to do with the message after handling it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Disposition {
    /// Handled (or nothing to do): delete it.
    Delete,
    /// Unknown kind: logged, delete it.
    DeleteUnknown(String),
    /// Stale tick: delete it without observing.
    DeleteStale,
    /// An event from another account or Region than the agent's own ([`Home`]): logged, delete
    /// it unhandled.
    DeleteForeign(String),
    /// Malformed, or failed in a way a retry may fix: leave it for redelivery (and in the end
    /// the DLQ).
    Leave(String),
}

impl Disposition {
    /// What the runtime counts it as (`aurora_migrator.messages`).
    pub fn outcome(&self) -> MessageOutcome {
        match self {
            Disposition::Delete => MessageOutcome::Handled,
            Disposition::DeleteUnknown(_) => MessageOutcome::Unknown,
            Disposition::DeleteStale => MessageOutcome::Stale,
            Disposition::DeleteForeign(_) => MessageOutcome::Foreign,
            Disposition::Leave(_) => MessageOutcome::Left,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error(transparent)]
    Port(#[from] PortError),
    #[error("the record kept changing under this agent (another worker is handling it)")]
    Contended,
    #[error("the migration's record is gone")]
    NoRecord,
    /// Another agent holds the lease of a record that has no wake-up yet (its first step is
    /// under way there, or its creator died): the message is left to come back after its
    /// visibility timeout, by when the lease has been used or has lapsed.
    #[error("another agent is stepping the migration (lease held by {holder})")]
    Held { holder: String },
}

impl From<StoreError> for DriverError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::VersionConflict { .. } | StoreError::LeaseLost => DriverError::Contended,
            StoreError::Port(p) => DriverError::Port(p),
        }
    }
}

/// Runs `f` on every item, at most `limit` at once, and waits until all are done.
///
/// Every future in flight is polled whenever the whole is (not only those whose waker fired, as
/// `futures::stream::FuturesUnordered` would): the simulator's executor resumes a task when a
/// virtual-time timer of its own is due without waking any waker (`sim::world::port::Delay`),
/// so futures joined inside one task must each be polled to see that time. For the few dozen
/// futures of a resync, polling them all is no cost that matters. Each is boxed: a step's
/// future is large (see [`as_step_of`]).
async fn for_each_at_most<T, F, Fut>(limit: usize, items: impl IntoIterator<Item = T>, mut f: F)
where
    F: FnMut(T) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut items = items.into_iter();
    let mut running: Vec<std::pin::Pin<Box<Fut>>> = Vec::new();
    std::future::poll_fn(|cx| {
        loop {
            while running.len() < limit.max(1) {
                let Some(item) = items.next() else { break };
                running.push(Box::pin(f(item)));
            }
            if running.is_empty() {
                return std::task::Poll::Ready(());
            }
            let before = running.len();
            running.retain_mut(|fut| fut.as_mut().poll(cx).is_pending());
            // None ended: each waits on something that will wake the task. Some ended: their
            // places go to the next items, polled at once.
            if running.len() == before {
                return std::task::Poll::Pending;
            }
        }
    })
    .await
}

/// The phase machine's signature. The agent always runs [`crate::core::step`]; the simulator's
/// teeth tests swap in deliberately broken variants to prove that it catches them.
pub type StepFn =
    fn(&Migration, &crate::core::Observation, jiff::Timestamp, &Policy) -> crate::core::Decision;

pub struct Agent<W: World> {
    pub world: W,
    pub policy: Policy,
    pub step: StepFn,
    /// OTel instruments (step durations, migrations by phase, message outcomes); off unless
    /// given.
    pub instruments: Instruments,
    /// The agent's own account and Region: events from elsewhere are dropped. Unknown (no
    /// filter) unless given.
    pub home: Home,
    /// Short cutover waits this process takes itself (`follow_up.rs`); memory only.
    follow_ups: std::sync::Mutex<Vec<FollowUp>>,
    /// The version of each unfinished record this process saved last: a follow-up whose record
    /// is older is stale.
    saved: std::sync::Mutex<std::collections::HashMap<MigrationId, u64>>,
    /// Admission to the cutover and to the preparation (`turns.rs`); memory only.
    pub cutover_turns: Turns,
    pub preparation_turns: Turns,
    /// This process's name on the leases it holds (`lease.rs`): unique per process.
    pub holder: String,
    /// How long a lease lasts unless renewed (`MIGRATOR_LEASE`).
    pub lease_ttl: SignedDuration,
    /// The leases this process holds; memory only.
    leases: std::sync::Arc<lease::Leases>,
    /// One step of a migration at a time in this process, whoever asked for it (the runtime
    /// also locks per message; the simulator's executor does not): a lease is the process's,
    /// so two of its own steps would renew it out of order.
    stepping: std::sync::Arc<crate::runtime::KeyedLocks>,
}

tokio::task_local! {
    /// The migration whose step is running on this task, and its phase: what its calls are
    /// counted against (the simulator's report of RDS calls by phase, its lease check).
    static STEPPING: (MigrationId, crate::core::Phase);
}

/// The phase of the migration this task is stepping, if it is stepping one.
pub fn stepping_phase() -> Option<crate::core::Phase> {
    STEPPING.try_with(|(_, p)| *p).ok()
}

/// The migration this task is stepping, if it is stepping one.
pub fn stepping_migration() -> Option<MigrationId> {
    STEPPING.try_with(|(id, _)| id.clone()).ok()
}

/// `f` with `id` (in `phase`) as the migration this task is stepping.
pub fn stepping_scope<F: std::future::Future>(
    id: MigrationId,
    phase: crate::core::Phase,
    f: F,
) -> impl std::future::Future<Output = F::Output> {
    STEPPING.scope((id, phase), f)
}

/// `f`, a part of `m`'s step, with its calls counted against `m`'s phase and in `m`'s lane at
/// the rate limiter. Boxed: the look's future (every describe, the batches and the lanes
/// inside) is large, and moved inline through the scopes it overflowed a 2 MiB worker stack in
/// debug builds.
fn as_step_of<F: std::future::Future>(
    m: &Migration,
    f: F,
) -> std::pin::Pin<Box<impl std::future::Future<Output = F::Output>>> {
    Box::pin(stepping_scope(
        m.id.clone(),
        m.phase,
        in_lane(cutover_lane(m), f),
    ))
}

/// Whether `m`'s RDS calls go in the rate limiter's cutover lane (`aws::limit`), before the
/// calls of migrations that can wait: its writes are stopped ([`Migration::writes_stopped`]).
/// Once the source has its groups back, what is left of a rollback (the replica's deletion)
/// can wait like any other phase.
pub fn cutover_lane(m: &Migration) -> bool {
    m.writes_stopped()
}

/// Whether `m` holds a cutover turn (`turns.rs`): its writes are stopped
/// ([`Migration::writes_stopped`]), the same migrations as [`cutover_lane`]'s.
pub fn holds_cutover_turn(m: &Migration) -> bool {
    m.writes_stopped()
}

/// Whether `m` holds a preparation turn (`turns.rs`): Preflight or Preparing, the start's
/// stretch of describes and creations with a 30-minute limit each.
pub fn holds_preparation_turn(m: &Migration) -> bool {
    matches!(
        m.phase,
        crate::core::Phase::Preflight | crate::core::Phase::Preparing
    )
}

/// Seconds before a migration whose observation failed is looked at again. During the cutover
/// (Quiescing … Routing) every second is write downtime, so transient failures are retried
/// within seconds (the simulator measured a p50 of 58 s for the database path's proof under
/// faults with the 10 s/30 s delays of the other phases); a throttled account still gets a
/// few seconds, and a failure a person must fix is not hammered.
pub fn observation_retry_delay_s(kind: ErrorKind, cutover: bool) -> u32 {
    match (kind, cutover) {
        (ErrorKind::Retryable, true) => 1,
        (ErrorKind::Throttled, true) => 5,
        (ErrorKind::NotFound | ErrorKind::Conflict, true) => 5,
        (ErrorKind::Throttled, false) => 30,
        (ErrorKind::Retryable, false) => 10,
        (ErrorKind::NotFound | ErrorKind::Conflict, false) => 15,
        (ErrorKind::Fatal, _) => 300,
    }
}

impl<W: World> Agent<W> {
    pub fn new(world: W, policy: Policy) -> Self {
        Agent {
            world,
            step,
            instruments: Instruments::default(),
            home: Home::default(),
            follow_ups: std::sync::Mutex::default(),
            saved: std::sync::Mutex::default(),
            cutover_turns: Turns::new(TurnKind::Cutover, policy.max_cutovers),
            preparation_turns: Turns::new(TurnKind::Preparation, policy.max_preparations),
            holder: lease::process_holder(),
            lease_ttl: lease::DEFAULT_LEASE_TTL,
            leases: std::sync::Arc::default(),
            stepping: std::sync::Arc::default(),
            policy,
        }
    }

    /// Holds its leases as `holder` (the simulator names its agents), for `ttl`.
    pub fn with_lease(mut self, holder: impl Into<String>, ttl: SignedDuration) -> Self {
        self.holder = holder.into();
        self.lease_ttl = ttl;
        self
    }

    /// Drops events from other accounts and Regions than `home`'s.
    pub fn with_home(mut self, home: Home) -> Self {
        self.home = home;
        self
    }

    /// Records into `instruments`.
    pub fn with_instruments(mut self, instruments: Instruments) -> Self {
        self.instruments = instruments;
        self
    }

    /// Handles one queue message; the caller deletes or leaves it as told.
    pub async fn handle_message(&self, message: &QueueMessage) -> Disposition {
        match self.read(message) {
            Ok(inbound) => self.handle_read(message, inbound).await,
            Err(d) => d,
        }
    }

    /// Reads a queue message, once: what it says, or (unknown, malformed, too large, foreign)
    /// what to do with it without looking further, logged. The runtime reads first (the parsed
    /// message tells it which migration to lock), then hands the result to
    /// [`Agent::handle_read`].
    pub fn read(&self, message: &QueueMessage) -> Result<Inbound, Disposition> {
        match inbound::read(&message.body) {
            Ok(Received { inbound, origin }) => {
                let foreign = origin
                    .as_ref()
                    .and_then(|o| Some((o, self.home.foreign(o)?)));
                match foreign {
                    Some((o, why)) => {
                        // Not an error of this agent's, but someone's routing is wrong.
                        tracing::warn!(message_id = %message.id, account = %o.account, region = %o.region, why = %why, "event from another account or Region, deleted unhandled");
                        Err(Disposition::DeleteForeign(why))
                    }
                    None => Ok(inbound),
                }
            }
            Err(ParseError::Unknown(kind)) => {
                tracing::info!(message_id = %message.id, kind = %kind, "unknown message kind, deleted");
                Err(Disposition::DeleteUnknown(kind))
            }
            // Neither the body nor a piece of it is logged: the error says what was wrong.
            Err(e @ (ParseError::Malformed { .. } | ParseError::TooLarge { .. })) => {
                tracing::error!(message_id = %message.id, error = %e, receive_count = message.receive_count, "malformed message left for the DLQ");
                Err(Disposition::Leave(e.to_string()))
            }
        }
    }

    /// Handles a message [`Agent::read`] has parsed.
    pub async fn handle_read(&self, message: &QueueMessage, inbound: Inbound) -> Disposition {
        match self.handle(inbound, message.receive_count).await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(message_id = %message.id, error = %e, "message left for redelivery");
                Disposition::Leave(e.to_string())
            }
        }
    }

    /// `receive_count`: how many times the queue has handed out this message (1 = first).
    pub async fn handle(
        &self,
        inbound: Inbound,
        receive_count: u32,
    ) -> Result<Disposition, DriverError> {
        match inbound {
            Inbound::Tick(tick) => self.on_tick(&tick, receive_count).await,
            Inbound::InstanceEvent(e) => self.on_instance_event(&e.source_identifier).await,
            Inbound::TagChange(t) | Inbound::TagsAdded(t) => {
                // The agent's own writes of the phase mirror and of the marker (which nobody
                // else may write or remove: the shipped operator policy denies it) come back as
                // tag events: not news. Stepped as news, the marker's (with Preparing's mirror)
                // was a direct describe and a step of every migration on AWS.
                let phase_key = crate::core::tags::phase_key(&self.policy.tag_prefix);
                let marker_key = crate::core::tags::marker_key(&self.policy.tag_prefix);
                let news = t.changed_keys.iter().any(|k| {
                    k.starts_with(&self.policy.tag_prefix) && *k != phase_key && *k != marker_key
                });
                if !news {
                    return Ok(Disposition::Delete);
                }
                let identifier = t.arn.rsplit(':').next().unwrap_or_default().to_string();
                if !t.arn.contains(":db:") {
                    return Ok(Disposition::Delete); // only instances are sources
                }
                // News about this instance's tags (an approval, an abort, a consumer's
                // acknowledgement): described as it is now. From the fleet snapshot, taken up
                // to its TTL before the tag was set, the step would not see the tag and the
                // migration would wait for its next look (a minute or more in the phases that
                // wait on people).
                self.world.rds().heard_of_tag_change(&identifier);
                self.on_source(&identifier).await
            }
            Inbound::ClusterEvent(e) => self.on_cluster(&e.source_identifier).await,
            Inbound::Resync { .. } => self.resync().await.map(|_| Disposition::Delete),
        }
    }

    async fn on_tick(&self, tick: &Tick, receive_count: u32) -> Result<Disposition, DriverError> {
        let Some(m) = self.world.store().load(&tick.migration()).await? else {
            return Ok(Disposition::DeleteStale);
        };
        // A finished migration has no chain to keep alive.
        let Some(wake) = &m.next_wake else {
            return Ok(Disposition::DeleteStale);
        };
        let current = wake.token == tick.token;
        // A stale tick is dropped, unless the record's chain may be lost, and then stepping now
        // adopts it (every step issues a new token, so adopting never leaves two live chains):
        // - the record's wake-up is overdue: its tick was lost (a failed send, or a crash after
        //   the record was saved);
        // - the message was received before and not deleted: whoever had it died or failed, and
        //   may have saved the record (a new token) without sending its tick. This is the dead
        //   agent's own message, back after its visibility timeout, well before any overdue.
        // In the cutover and the rollback a late wake-up is adopted at once: their waits are
        // followed up in-process (`follow_up.rs`) with no message of their own, so a process
        // that died in a followed-up step after saving the record, its backstop tick not sent
        // (it is sent before the save, but the send can fail), left no tick and no message to
        // come back; the previous wake-up's backstop tick, arriving after the new wake-up, is
        // then the only news of it. An agent that is alive and stepping holds the lease, and the
        // adopting step then waits for its lapse instead (`lease.rs`).
        // Not when this process holds the lease: it is alive and stepping the migration (a
        // look waiting at the rate limiter makes a wake-up late in a busy fleet, and adopting
        // then would only add looks to the cutover lane).
        let urgent = m.phase.is_followed_closely();
        let grace = if urgent && !self.holds_lease(&m.id) {
            SignedDuration::ZERO
        } else {
            TICK_ADOPT_GRACE
        };
        let overdue = wake.at + grace < self.world.clock().now();
        let redelivered = receive_count > 1;
        if !current {
            if !overdue && !redelivered {
                tracing::debug!(migration = %m.id, token = tick.token, "stale tick dropped");
                return Ok(Disposition::DeleteStale);
            }
            tracing::info!(migration = %m.id, token = tick.token, overdue, redelivered, "stale tick adopts the chain");
        }
        self.reconcile_scheduled(m).await?;
        Ok(Disposition::Delete)
    }

    /// Something happened to a source instance (event, tag): start or continue its migration.
    /// An instance that does not carry the trigger and has no migration is never touched.
    pub async fn on_source(&self, identifier: &str) -> Result<Disposition, DriverError> {
        let source = match self.world.rds().describe_source(identifier).await? {
            Observed::Present(s) => s,
            _ => return Ok(Disposition::Delete),
        };
        self.on_source_as(source, Asked::News).await
    }

    /// [`Agent::on_source`] of `source` as already read; `asked`: [`Asked::Schedule`] for the
    /// resync's sweep, which starts a migration the trigger asks for and leaves one under way to
    /// its own wake-ups (the resync steps those that are overdue), and reads the source from
    /// the fleet snapshot it listed the tagged sources from. News steps it whatever it was
    /// waiting for.
    async fn on_source_as(
        &self,
        source: SourceInstance,
        asked: Asked,
    ) -> Result<Disposition, DriverError> {
        let identifier = source.identifier.as_str();
        let latest = self.world.store().latest(&source.resource_id).await?;
        let now = self.world.clock().now();
        let mut admission = admit(&source, latest.as_ref(), &self.policy.tag_prefix, now);
        if let (Admission::Start(_), Some(ended)) = (&admission, &latest) {
            // A new attempt after one that ended: its `start` must be one the agent has not
            // reset. The look above was taken before the record was read, and a slow read
            // spans the ended attempt's own last step (which resets the trigger, then saves
            // the record as done): that `start` paired with the record saved after its reset
            // would begin an attempt nobody asked for (the simulator's fleet, seed 2). So the
            // source is described again, as RDS has it now, after the read, and only a trigger
            // that still says `start` begins attempt N+1: one request per attempt after the
            // first.
            debug_assert!(ended.phase.is_terminal() && ended.next_wake.is_none());
            admission = match self.world.rds().describe_source_now(identifier).await? {
                Observed::Present(now_source) if now_source.resource_id == source.resource_id => {
                    admit(&now_source, latest.as_ref(), &self.policy.tag_prefix, now)
                }
                _ => Admission::Ignore("the instance changed while its record was read"),
            };
        }
        match admission {
            Admission::Ignore(why) => {
                tracing::debug!(instance = identifier, why, "no migration");
            }
            Admission::Continue(_)
                if asked == Asked::Schedule
                    && latest.as_ref().is_some_and(|m| !sweep_steps(m, now)) =>
            {
                // Nothing new about it: its wake-up chain looks within minutes, when its phase
                // asked to (a person's tag change is news of its own, and that look reads the
                // tags from a snapshot as recent as this sweep's).
            }
            Admission::Continue(_) => {
                if let Some(m) = latest {
                    self.reconcile(m).await?;
                }
            }
            Admission::Start(m) => {
                tracing::info!(migration = %m.id, instance = identifier, "migration requested");
                match self.world.store().create(&m).await {
                    Ok(version) => {
                        let mut m = *m;
                        m.version = version;
                        self.reconcile(m).await?;
                    }
                    // Another message (or agent) started it first: that one carries it.
                    Err(StoreError::VersionConflict { .. } | StoreError::LeaseLost) => {}
                    Err(StoreError::Port(e)) => return Err(e.into()),
                }
            }
        }
        Ok(Disposition::Delete)
    }

    /// An RDS event about an instance (a restart, a modification): news about it, so the look
    /// of its migration describes it as it is now (`Rds::heard_of_change`). Which migration it
    /// belongs to comes from the fleet snapshot, even one taken before the agent's own last
    /// change to it (`aws::rds::cache::snapshot_will_do`; a restart's event follows the agent's
    /// reboot): an instance's resource id does not change with the news. Described directly
    /// here, and then again by the look, it was 2.5 requests a migration in the simulator's
    /// 1,000-migration fleet. An instance with no migration under way (one the event might
    /// start) goes the way of any other news ([`Self::on_source`], described as it is now).
    async fn on_instance_event(&self, identifier: &str) -> Result<Disposition, DriverError> {
        let rds = self.world.rds();
        let known =
            crate::aws::rds::cache::snapshot_will_do(rds.describe_source(identifier)).await?;
        rds.heard_of_change(identifier);
        if let Observed::Present(source) = known
            && let Some(m) = self.world.store().latest(&source.resource_id).await?
            && matches!(
                admit(
                    &source,
                    Some(&m),
                    &self.policy.tag_prefix,
                    self.world.clock().now()
                ),
                Admission::Continue(_)
            )
        {
            self.reconcile(m).await?;
            return Ok(Disposition::Delete);
        }
        self.on_source(identifier).await
    }

    /// A cluster event: the cluster's tag names its migration.
    async fn on_cluster(&self, cluster: &str) -> Result<Disposition, DriverError> {
        // Its migration's tag, from the fleet snapshot (it never changes; see
        // `on_instance_event`); then the event is news about the cluster: the look describes it
        // as it is now (a promotion's event answered from an older snapshot would read
        // "promoting" for the snapshot's age).
        let rds = self.world.rds();
        let known = crate::aws::rds::cache::snapshot_will_do(rds.describe_target(cluster)).await;
        rds.heard_of_change(cluster);
        let Observed::Present(t) = known? else {
            return Ok(Disposition::Delete);
        };
        let key = crate::core::tags::key(&self.policy.tag_prefix, "migration");
        let Some(id) = t.tags.get(&key).and_then(|v| parse_migration_id(v)) else {
            return Ok(Disposition::Delete);
        };
        if let Some(m) = self.world.store().load(&id).await? {
            self.reconcile(m).await?;
        }
        Ok(Disposition::Delete)
    }

    /// The fleet-wide resync: admit tagged instances nobody has seen, and step migrations whose
    /// wake-up is overdue (their tick was lost). A migration whose wake-up is not overdue is
    /// left to it.
    ///
    /// Both are done [`RESYNC_CONCURRENCY`] at a time: a fleet tagged at once and picked up by
    /// one scheduled resync is admitted together, not one source's first steps after another's
    /// (200 sources admitted serially took 55 minutes to start 124 of them against the
    /// emulator). Each step still holds its migration's keyed lock and lease (`lease.rs`), so
    /// two steps of one migration never overlap, whoever asked for them.
    pub async fn resync(&self) -> Result<(), DriverError> {
        let tagged = self
            .world
            .rds()
            .list_tagged_sources(&self.policy.tag_prefix)
            .await?;
        // Each source as the snapshot listed it: what the sweep reads of it (its resource id,
        // its trigger) decides only whether an attempt begins, and the one case where a view
        // seconds old could mislead (a `start` the agent has since reset) is described again
        // before it acts (`on_source_as`). Described one by one, a source the agent had changed
        // since the snapshot started was a direct request: 1.9 DescribeDBInstances a completed
        // migration in the simulator's 1,000-migration fleet (seed 1), for looks that mostly
        // found a migration under way and did nothing.
        for_each_at_most(RESYNC_CONCURRENCY, tagged, |source| async move {
            let name = source.identifier.clone();
            if let Err(e) = self.on_source_as(source, Asked::Schedule).await {
                tracing::warn!(instance = %name, error = %e, "resync of a source failed");
            }
        })
        .await;
        let now = self.world.clock().now();
        let all = self.world.store().list().await?;
        self.instruments
            .migrations_listed(all.iter().map(|m| (&m.id, m.phase)));
        // Turns held for migrations the other agent has moved out of their stretch.
        for turns in [&self.cutover_turns, &self.preparation_turns] {
            turns.reconcile_with_table(&all, now);
        }
        let overdue = all.into_iter().filter(|m| {
            m.next_wake
                .as_ref()
                .is_some_and(|w| w.at + RESYNC_GRACE < now)
        });
        for_each_at_most(RESYNC_CONCURRENCY, overdue, |m| async move {
            tracing::info!(migration = %m.id, "wake-up overdue, stepping");
            if let Err(e) = self.reconcile_scheduled(m).await {
                tracing::warn!(error = %e, "resync step failed");
            }
        })
        .await;
        Ok(())
    }

    /// Observe → step → persist → act, repeated while the machine asks to look again at once
    /// (a phase change: look afresh) or has action outcomes to hear (against the same look);
    /// then schedule the wake-up.
    ///
    /// For news (an event, a tag, a new migration): the step is taken whatever this process
    /// did meanwhile. A scheduled look is [`Agent::reconcile_scheduled`].
    pub async fn reconcile(&self, m: Migration) -> Result<Migration, DriverError> {
        self.reconcile_as(m, Asked::News, Vec::new()).await
    }

    /// [`Agent::reconcile`] for a scheduled look (a tick, a follow-up, an overdue wake-up):
    /// dropped when this process saved a newer version of the record than `m` while the look
    /// waited for the migration's lock. That save's step looked later than this one would have
    /// asked for, and scheduled its own wake-up.
    pub async fn reconcile_scheduled(&self, m: Migration) -> Result<Migration, DriverError> {
        self.reconcile_as(m, Asked::Schedule, Vec::new()).await
    }

    /// [`Agent::reconcile_scheduled`] whose first step also hears `heard`: outcomes of actions
    /// an earlier step ran and could not save (a rescue, `follow_up.rs`).
    async fn reconcile_hearing(
        &self,
        m: Migration,
        heard: Vec<ActionResult>,
    ) -> Result<Migration, DriverError> {
        self.reconcile_as(m, Asked::Schedule, heard).await
    }

    async fn reconcile_as(
        &self,
        m: Migration,
        asked: Asked,
        heard: Vec<ActionResult>,
    ) -> Result<Migration, DriverError> {
        // Every log line of this migration's steps carries its id (JSON logs: the span's field).
        let span =
            tracing::info_span!("reconcile", migration = %m.id, source = %m.source_identifier);
        self.reconcile_leased(m, asked, heard)
            .instrument(span)
            .await
    }

    /// [`Agent::reconcile`] under the record's lease (`lease.rs`), renewed while it runs.
    async fn reconcile_leased(
        &self,
        mut m: Migration,
        asked: Asked,
        heard: Vec<ActionResult>,
    ) -> Result<Migration, DriverError> {
        let _one_step = self.stepping.lock(m.id.to_string()).await;
        // `m` was read before the lock: a step of this process may have saved a newer version
        // meanwhile (a tick read while the follow-up it backs up was stepping, or an event's
        // read beside a tick). Stepping the old one would observe (RDS describes, the cutover
        // lane's among them) only for the save to fail on its version and the look to start
        // over: the simulator's database-path fleet saw a quarter of Promoting's looks do that.
        if self.saved_version(&m.id).is_some_and(|v| v > m.version) {
            match asked {
                Asked::Schedule => {
                    tracing::debug!(migration = %m.id, "scheduled look already taken by a newer step");
                    return Ok(m);
                }
                Asked::News => match self.world.store().load(&m.id).await? {
                    Some(fresh) => m = fresh,
                    None => return Err(DriverError::NoRecord),
                },
            }
        }
        let mut lease = self.lease_for(&m).await;
        if let Err(LeaseError::Held { until, .. }) = &lease
            && m.next_wake.is_none()
        {
            // A record with no wake-up yet has no tick to send for the lapse: its first step is
            // under way in the holder, or the holder died (or stopped) before it saved one.
            // Wait for the lapse here (at most one lease) and ask once more.
            let ahead = until.duration_since(self.world.clock().now());
            if let Ok(d) = std::time::Duration::try_from(ahead + SignedDuration::from_millis(100))
                && d <= std::time::Duration::try_from(self.lease_ttl).unwrap_or_default() * 2
            {
                self.world.clock().sleep(d).await;
                lease = self.lease_for(&m).await;
            }
        }
        let lease = match lease {
            Ok(lease) => lease,
            Err(LeaseError::Held { holder, until }) => {
                if m.next_wake.is_none() {
                    return Err(DriverError::Held { holder });
                }
                self.defer_to_holder(&m, &holder, until).await?;
                return Ok(m);
            }
            // Lost between a renewal and the taking that followed it: someone else steps it.
            Err(LeaseError::Lost) => return Err(DriverError::Contended),
            Err(LeaseError::NoRecord) => return Err(DriverError::NoRecord),
            Err(LeaseError::Port(e)) => return self.retry_later(m, e, heard).await,
        };
        let id = m.id.clone();
        // `biased`: the step is polled first, so a step that needs no wait ends before the
        // renewal's timer is even set.
        // Boxed: the step's future inside `select!` overflowed a 2 MiB worker stack in debug
        // builds on the resync path (a resync that admits and steps a migration).
        tokio::select! {
            biased;
            r = Box::pin(self.reconcile_in_span(m, &lease, asked, heard)) => r,
            never = self.keep_lease(&id) => match never {},
        }
    }

    async fn reconcile_in_span(
        &self,
        mut m: Migration,
        lease: &crate::ports::Lease,
        asked: Asked,
        heard: Vec<ActionResult>,
    ) -> Result<Migration, DriverError> {
        let world = &self.world;
        // Outcomes of the actions run and not yet heard by a saved step: the first step hears
        // what an earlier one could not save (`heard`), every later one its predecessor's.
        let mut pending = heard;
        let mut last_look: Option<crate::core::Observation> = None;
        let mut contended = 0;
        // The first look after taking the lease from another process asks again at once for
        // what that process recorded as in flight (`Observation::taken_over`).
        let mut taken_over = lease.taken_from.is_some();
        if let Some(from) = &lease.taken_from {
            tracing::info!(migration = %m.id, from = %from, token = lease.token, "lease taken over from another agent process");
        }
        // The scheduled look of a wait that an RDS event ends may wait a moment for the other
        // migrations' looks of the same grid time to share its describes (`Needs::gathers`);
        // news, and the looks a step asks for at once, never wait.
        let mut may_gather = asked == Asked::Schedule;
        // The backstop tick sent before the last save that will be followed up, if any
        // ([`Agent::save_with_backstop`]): [`Agent::schedule`] does not send it again.
        let mut backstop: Option<Backstop> = None;
        for _ in 0..MAX_STEPS_PER_MESSAGE {
            let started = self.instruments.step_started();
            let mut obs = match last_look.take() {
                Some(o) => o,
                None => match as_step_of(
                    &m,
                    observe::observe(world, &m, &self.policy, std::mem::take(&mut may_gather)),
                )
                .await
                {
                    Ok(o) => o,
                    Err(e) => return self.retry_later(m, e, pending).await,
                },
            };
            obs.action_results = std::mem::take(&mut pending);
            obs.taken_over = std::mem::take(&mut taken_over);
            let now = world.clock().now();
            let both = [&self.cutover_turns, &self.preparation_turns];
            let waits = both.iter().any(|t| m.phase == t.kind().waits_in());
            if waits && both.iter().any(|t| !t.seeded()) {
                // Once per process: the migrations under way count before a turn is given, both
                // kinds from one read of the table.
                match world.store().list().await {
                    Ok(all) => both
                        .iter()
                        .filter(|t| !t.seeded())
                        .for_each(|t| t.seed(&all, now)),
                    Err(e) => return self.retry_later(m, e, obs.action_results).await,
                }
            }
            for turns in both {
                if m.phase != turns.kind().waits_in() {
                    continue;
                }
                let backlog = world.rds().cutover_backlog();
                let Turn::Refused { ahead } = turns.ask(&m, now, backlog) else {
                    continue;
                };
                obs.turns_ahead = ahead;
                match turns.kind() {
                    TurnKind::Cutover => obs.no_cutover_turn = true,
                    TurnKind::Preparation => obs.no_preparation_turn = true,
                }
            }
            let decision = (self.step)(&m, &obs, now, &self.policy);
            let before = m.phase;
            let look_again = decision.wake_after == Some(SignedDuration::ZERO);
            let (saved, sent) = self
                .save_with_backstop(&decision.next, lease, look_again)
                .await;
            let saved = match saved {
                Err(StoreError::Port(e)) if e.kind == ErrorKind::Retryable => {
                    match self.landed(&decision.next).await {
                        Some(version) => Ok(version),
                        None => Err(StoreError::Port(e)),
                    }
                }
                other => other,
            };
            if sent.is_some() {
                backstop = sent;
            }
            match saved {
                Ok(version) => {
                    m = decision.next;
                    m.version = version;
                    self.note_saved(&m);
                }
                Err(StoreError::VersionConflict { .. }) if contended < 2 => {
                    // Someone else moved it: re-read and decide again from a fresh look. The
                    // outcomes of the actions this process ran are facts whatever the record
                    // says now: they go into that step too. Dropped, a route that was made is
                    // never recorded and is asked for again when its request expires (the
                    // simulator saw every third webhook sent twice, 30 s apart, when an RDS
                    // event's step and a follow-up met).
                    pending = std::mem::take(&mut obs.action_results);
                    contended += 1;
                    match world.store().load(&m.id).await? {
                        Some(fresh) => m = fresh,
                        None => return Err(DriverError::Contended),
                    }
                    continue;
                }
                Err(StoreError::LeaseLost) => {
                    // Another agent took the lease (this one's lapsed while it looked): the
                    // migration is that agent's now, wake-ups included.
                    tracing::info!(migration = %m.id, "lease taken by another agent; its step carries on there");
                    self.leases.forget(&m.id);
                    return Ok(m);
                }
                Err(StoreError::Port(e)) => {
                    // The outcomes this step heard are not in any saved record: the retry's
                    // look hears them.
                    let heard = std::mem::take(&mut obs.action_results);
                    if self.retry_in_process(&m, &e, heard) {
                        return Ok(m);
                    }
                    return Err(StoreError::Port(e).into());
                }
                Err(e) => return Err(e.into()),
            }
            if m.phase != before {
                tracing::info!(migration = %m.id, from = %before, phase = %m.phase, "phase changed");
            }
            self.cutover_turns.settle(&m, now);
            self.preparation_turns.settle(&m, now);
            self.instruments.migration_in(&m.id, m.phase);
            // A lease that lapsed while the step saved is renewed (the same taking) before its
            // actions, rather than the actions skipped while the record says they were asked.
            if !decision.actions.is_empty() {
                self.renew_if_lapsed(&m.id).await;
            }
            let leased = || self.holds_lease(&m.id);
            let actions = execute::execute_all(world, &m, &self.policy, &decision.actions, &leased);
            pending = as_step_of(
                &m,
                lease::acting_under(self.leases.clone(), m.id.clone(), actions),
            )
            .await;
            self.instruments.step_done(started, before);
            if !look_again && pending.is_empty() {
                break;
            }
            if !look_again {
                obs.action_results.clear();
                last_look = Some(obs);
            }
        }
        self.schedule(&m, backstop).await?;
        Ok(m)
    }

    /// Saves a step's record; when its wake-up will be followed up in-process
    /// ([`Agent::follows_up`]), sends the wake-up's backstop tick first. Sent after the step's
    /// actions (as other ticks are), a process that died after the save and before the send
    /// (the record saved with a new token, no tick for it) left only the previous wake-up's
    /// backstop, stale when it comes before the new wake-up: the chain waited for the resync
    /// (the simulator's two agents with crashes: a takeover 90 s after the step was due). Sent
    /// beside the save, the save could land and the process die before the send did: the same.
    /// Sent first, a save that then fails leaves a tick for a token never saved, dropped as
    /// stale when it comes (one `GetItem`); so does a step whose actions' outcomes make the
    /// message step again. It costs no time: the look it backs up is due after the save and the
    /// actions anyway. A look asked for at once (the loop steps again) needs none.
    async fn save_with_backstop(
        &self,
        next: &Migration,
        lease: &crate::ports::Lease,
        look_again: bool,
    ) -> (Result<u64, StoreError>, Option<Backstop>) {
        let followed_up = next
            .next_wake
            .as_ref()
            .filter(|_| !look_again && self.follows_up(next));
        let backstop = match followed_up {
            Some(wake) => Some(Backstop {
                token: wake.token,
                sent: self.send_tick(next, wake, true).await,
            }),
            None => None,
        };
        (self.world.store().save(next, lease).await, backstop)
    }

    /// An observation failed: leave the record as it is and look again later, sooner for a
    /// transient error than for one a person must fix. `heard`: outcomes of actions run and not
    /// yet in a saved record (the look after a step's actions failed); the retry's look hears
    /// them, taken in-process ([`Agent::rescue_chain`]) with the tick as its backstop,
    /// [`follow_up::BACKSTOP_MARGIN_S`] later: a tick cannot carry them. So is the retry of a
    /// migration whose waits are followed up in-process (the cutover, the rollback): its tick
    /// waits for a message slot behind the whole fleet's messages. The simulator's
    /// 1,000-migration fleet (seed 9) received a quiescing cutover's retry tick, sent for a
    /// second later after a failed describe of the quarantine group, six minutes late, and the
    /// write budget rolled the cutover back.
    async fn retry_later(
        &self,
        m: Migration,
        e: PortError,
        heard: Vec<ActionResult>,
    ) -> Result<Migration, DriverError> {
        let delay_s = observation_retry_delay_s(e.kind, m.phase.is_cutover());
        tracing::warn!(migration = %m.id, error = %e, kind = e.kind.as_str(), delay_s, "observation failed, retrying later");
        let Some(wake) = &m.next_wake else {
            return Err(e.into());
        };
        let in_process = !heard.is_empty() || m.phase.is_followed_closely();
        let carried = in_process && self.rescue_after(&m, delay_s, heard);
        let tick_delay_s = match carried {
            true => delay_s + follow_up::BACKSTOP_MARGIN_S,
            false => delay_s,
        };
        let tick = Tick::new(&m.id, wake.token);
        if let Err(sent) = self.world.queue().send(&tick.to_json(), tick_delay_s).await {
            if !carried && !self.rescue_after(&m, delay_s, Vec::new()) {
                return Err(sent.into());
            }
            tracing::warn!(migration = %m.id, error = %sent, "retry's tick not sent; this process looks again itself");
        }
        Ok(m)
    }

    /// Whether the save of `next`, answered with a retryable error (a timeout, a 5xx), landed
    /// all the same: DynamoDB may perform a write whose answer is lost. Read back (a consistent
    /// read); landed when the stored record is `next` as that save wrote it (the version after
    /// `next`'s, every other field equal), and then the step carries on as saved: its actions
    /// run. Taken as failed, they did not, while the stored record said they were asked for: in
    /// the simulator's 1,000-migration fleet a fallen-back cutover's reboot was never sent while
    /// its record said it was, asked again only `reboot_reissue_after` later, and the write
    /// budget ran out. Any doubt (the read fails, another record is stored) is "not landed":
    /// the in-process retry then looks again ([`Agent::retry_in_process`]), as before. A
    /// throttled write was refused and is not read back.
    async fn landed(&self, next: &Migration) -> Option<u64> {
        let stored = match self.world.store().load(&next.id).await {
            Ok(Some(stored)) => stored,
            Ok(None) | Err(_) => return None,
        };
        let mut written = next.clone();
        written.version = next.version + 1;
        if stored != written {
            return None;
        }
        tracing::info!(migration = %next.id, version = stored.version, "the save's answer was lost, but it landed: the step carries on");
        Some(stored.version)
    }

    /// The step's record could not be saved for a transient DynamoDB error (the save may still
    /// have landed): look again from the record as last known, in-process, as soon as an
    /// observation that failed the same way would ([`Agent::rescue_chain`]), hearing the
    /// outcomes the step heard (`heard`). If the save did land (its answer lost), the look's
    /// save meets it, reads it, and hears them again: a failure then counts twice towards
    /// `Policy::max_action_retries`, which is rarer and cheaper than a fact dropped. Without
    /// it the chain of a step that came from a follow-up or the resync had no message left to
    /// carry it, and a landed save made the message that did stale. True when the look was
    /// recorded: the step then ends as done (a message being handled is deleted; if this process
    /// dies before the look, the resync finds the wake-up overdue). An error a person must fix
    /// (access, a missing table) is not retried here: the step fails, and its message goes the
    /// way of any failing message (redelivered, then to the DLQ).
    fn retry_in_process(&self, m: &Migration, e: &PortError, heard: Vec<ActionResult>) -> bool {
        if !e.kind.is_transient() {
            return false;
        }
        let delay_s = observation_retry_delay_s(e.kind, m.phase.is_cutover());
        if !self.rescue_after(m, delay_s, heard) {
            return false;
        }
        tracing::warn!(migration = %m.id, error = %e, kind = e.kind.as_str(), delay_s, "record not saved, looking again");
        true
    }

    /// Sends the tick for the record's wake-up, clamped to SQS's 15 minutes, unless its step
    /// sent it before the save (`backstop`, [`Agent::save_with_backstop`]).
    async fn schedule(&self, m: &Migration, backstop: Option<Backstop>) -> Result<(), DriverError> {
        let Some(wake) = &m.next_wake else {
            return Ok(());
        };
        let followed_up = self.follows_up(m);
        let sent = match backstop.filter(|b| b.token == wake.token) {
            Some(b) => b.sent,
            None => self.send_tick(m, wake, followed_up).await,
        };
        if let Err(e) = sent {
            // The record was saved with a new token: every tick already queued is stale, so
            // without this one the chain waited for the resync (`rescue_chain`).
            if !self.rescue_chain(m, wake.at, Vec::new()) {
                return Err(e.into());
            }
            tracing::warn!(migration = %m.id, error = %e, "tick not sent; this process takes the look itself");
            return Ok(());
        }
        // The tick is the backstop; a short cutover wait is taken in-process, on time.
        if followed_up {
            self.record_follow_up(m);
        } else {
            // The next step may be the other agent's (its tick goes to whichever receives it):
            // it should not wait for this lease to lapse.
            self.release_lease(&m.id).await;
        }
        Ok(())
    }

    /// Sends the tick for `m`'s wake-up `wake`, clamped to SQS's 15 minutes; a `backstop` (a
    /// followed-up wake-up's) [`follow_up::BACKSTOP_MARGIN_S`] later: only a crash needs it,
    /// and after the follow-up's look has saved it is stale.
    async fn send_tick(
        &self,
        m: &Migration,
        wake: &crate::core::migration::Wake,
        backstop: bool,
    ) -> Result<(), PortError> {
        let mut delay = whole_seconds_until(self.world.clock().now(), wake.at);
        if backstop {
            delay += follow_up::BACKSTOP_MARGIN_S;
        }
        let tick = Tick::new(&m.id, wake.token);
        self.world.queue().send(&tick.to_json(), delay).await
    }
}

/// A wake-up's backstop tick, sent before its record's save ([`Agent::save_with_backstop`]).
struct Backstop {
    /// The wake-up's token: the tick is the record's only if the save landed.
    token: u64,
    sent: Result<(), PortError>,
}

/// An SQS delay reaching `at`: rounded up, because a tick must not arrive before its wake-up (it
/// would step early, and sub-second remainders would turn into a loop of observations); clamped
/// to SQS's 15 minutes (a longer wait is re-ticked).
fn whole_seconds_until(now: jiff::Timestamp, at: jiff::Timestamp) -> u32 {
    let ahead = at.duration_since(now);
    let whole = ahead.as_secs() + i64::from(ahead.subsec_nanos() > 0);
    whole.clamp(0, i64::from(MAX_DELAY_S)) as u32
}

/// Whether the resync's sweep steps `m`, a migration under way, as news: only one whose next
/// wake-up is further away than [`RESYNC_STEPS_WAITS_OVER`] (the retention's days), the
/// backstop for a person's tag event lost on its way, such as a rollback approval. Stepping
/// every one at each resync (every 5 minutes) was a look and a record save of each: leaving
/// them, the simulator's 1,000-migration fleet went from 62.6 to 61.7 RDS requests per
/// completed migration, and DynamoDB's UpdateItem from 818 to 718 a migration.
///
/// Until `8975a84` the migrations in the cutover or rolling back were stepped too: the ticks
/// of the cutover's waits longer than 3 s (the metric path's 5 s polls, its CloudWatch grid)
/// waited for a message slot behind the whole fleet's (500–770 messages visible, 63 of 64
/// slots taken by steps waiting for the rate limiter) and came 1–4 minutes late; the sweep
/// stepped them in-process, and leaving them out took the fleet's write-budget rollbacks from
/// 0 to 6 (seed 1) and from 1 to 4 (seed 2). Now every wait of theirs is taken in-process
/// (`follow_up.rs`), and leaving them out took the rollbacks from 0, 1, 0, 1, 2 to 1, 0, 0,
/// 1, 0 (seeds 1–5) and the RDS requests per completed migration from a mean of 64.1 to 62.6
/// (59.6–64.6), the write unavailability's p99 staying within the seeds' spread (740–801 s
/// against 724–775 s).
fn sweep_steps(m: &Migration, now: jiff::Timestamp) -> bool {
    m.next_wake
        .as_ref()
        .is_none_or(|w| w.at > now + RESYNC_STEPS_WAITS_OVER)
}

/// Why a step is asked for: what [`Agent::reconcile_leased`] does with a record older than
/// this process's last save of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Asked {
    /// News (an event, a tag, an admission): step the record as it is now.
    News,
    /// A scheduled look: already taken by the newer step, which scheduled its own.
    Schedule,
}

/// `<resource id>/<attempt>`, as written in the `<prefix>:migration` tag.
pub fn parse_migration_id(v: &str) -> Option<MigrationId> {
    let (resource_id, attempt) = v.rsplit_once('/')?;
    Some(MigrationId {
        resource_id: resource_id.to_string(),
        attempt: attempt.parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inbound::TagChange;
    use crate::sim::faults::FaultPlan;
    use crate::sim::world::{SimPort, SimWorld, State, StoreMode};

    fn agent() -> Agent<SimWorld> {
        let state = State::new(
            1,
            FaultPlan::scripted(Vec::new()),
            StoreMode::Conditional,
            false,
        );
        Agent::new(
            SimWorld {
                port: SimPort::new(state),
            },
            Policy::default(),
        )
    }

    #[test]
    fn a_failed_look_during_the_cutover_is_retried_within_seconds() {
        for kind in [
            ErrorKind::Retryable,
            ErrorKind::Throttled,
            ErrorKind::NotFound,
            ErrorKind::Conflict,
        ] {
            let cutover = observation_retry_delay_s(kind, true);
            let elsewhere = observation_retry_delay_s(kind, false);
            assert!(cutover <= 5 && cutover < elsewhere, "{kind:?}");
        }
        assert_eq!(observation_retry_delay_s(ErrorKind::Retryable, true), 1);
        assert_eq!(observation_retry_delay_s(ErrorKind::Fatal, true), 300);
    }

    fn message(body: &str) -> QueueMessage {
        QueueMessage {
            id: "m-1".into(),
            receipt: "r-1".into(),
            body: body.into(),
            receive_count: 1,
        }
    }

    const OWN_TAG_EVENT: &str = r#"{"version": "0", "id": "1", "detail-type": "Tag Change on Resource", "source": "aws.tag", "account": "123456789012", "time": "2026-04-08T12:35:42Z", "region": "us-east-1", "resources": ["arn:aws:rds:us-east-1:123456789012:db:orders-pg"], "detail": {"changed-tag-keys": ["aurora-migration"], "service": "rds"}}"#;

    fn home() -> Home {
        Home {
            account: Some("123456789012".into()),
            region: Some("us-east-1".into()),
        }
    }

    #[test]
    fn events_from_another_account_or_region_are_deleted_as_foreign() {
        let a = agent().with_home(home());
        assert!(a.read(&message(OWN_TAG_EVENT)).is_ok());
        let other_account = OWN_TAG_EVENT.replace(
            r#""account": "123456789012""#,
            r#""account": "210987654321""#,
        );
        let other_region =
            OWN_TAG_EVENT.replace(r#""region": "us-east-1""#, r#""region": "eu-west-1""#);
        for body in [other_account, other_region] {
            let d = a.read(&message(&body)).unwrap_err();
            assert!(matches!(d, Disposition::DeleteForeign(_)), "{d:?}");
            // Counted as `foreign` and deleted (not left for the DLQ: it is not malformed).
            assert_eq!(d.outcome(), MessageOutcome::Foreign);
            assert_eq!(d.outcome().as_str(), "foreign");
            // An agent that does not know its home does not filter.
            assert!(agent().read(&message(&body)).is_ok());
        }
        // Ticks carry no account: never foreign.
        let tick = Tick::new(
            &MigrationId {
                resource_id: "db-1".into(),
                attempt: 1,
            },
            7,
        );
        assert!(a.read(&message(&tick.to_json())).is_ok());
    }

    #[test]
    fn an_oversized_body_is_left_for_the_dlq_like_a_malformed_one() {
        let a = agent();
        let big = format!("{OWN_TAG_EVENT}{}", " ".repeat(inbound::MAX_BODY_BYTES));
        let d = a.read(&message(&big)).unwrap_err();
        assert!(
            matches!(&d, Disposition::Leave(why) if why.contains("over the 65536-byte limit") && !why.contains("orders-pg")),
            "{d:?}"
        );
        assert_eq!(d.outcome(), MessageOutcome::Left);
        let malformed = a.read(&message("{")).unwrap_err();
        assert_eq!(malformed.outcome(), MessageOutcome::Left);
    }

    #[test]
    fn the_resync_sweep_steps_long_waits_and_leaves_the_rest_to_their_wake_ups() {
        let now: jiff::Timestamp = "2026-04-08T12:00:00Z".parse().unwrap();
        let id = MigrationId {
            resource_id: "db-1".into(),
            attempt: 1,
        };
        let at = |phase: crate::core::Phase, wait: SignedDuration| {
            let mut m = Migration::new(id.clone(), "orders-pg", "arn", now);
            m.phase = phase;
            m.next_wake = Some(crate::core::migration::Wake {
                at: now + wait,
                token: 1,
            });
            m
        };
        use crate::core::Phase::{self, *};
        let minute = SignedDuration::from_mins(1);
        for phase in Phase::ALL.into_iter().filter(|p| !p.is_terminal()) {
            assert!(!sweep_steps(&at(phase, minute), now), "{phase}");
        }
        let retention = at(Decommissioning, SignedDuration::from_hours(24 * 6));
        assert!(
            sweep_steps(&retention, now),
            "a long wait: a lost tag event's backstop"
        );
        assert!(!sweep_steps(
            &at(Decommissioning, RESYNC_STEPS_WAITS_OVER),
            now
        ));
    }

    /// The agent's own tag writes (the phase mirror, the marker with Preparing's mirror) come
    /// back as tag events: deleted without a describe or a step. A control tag in the same
    /// event is news.
    #[tokio::test]
    async fn the_agent_s_own_marker_and_mirror_writes_are_not_news() {
        let a = agent();
        let own = Inbound::TagChange(TagChange {
            arn: "arn:aws:rds:us-east-1:123456789012:db:orders-pg".into(),
            changed_keys: vec![
                "aurora-migration:marker".into(),
                "aurora-migration:phase".into(),
            ],
        });
        // A describe in this world waits for the simulator's virtual time, which nothing
        // drives here: an event stepped as news would never finish.
        let handled = tokio::time::timeout(std::time::Duration::from_secs(2), a.handle(own, 1))
            .await
            .expect("handled without a describe");
        assert_eq!(handled.unwrap(), Disposition::Delete);
    }

    /// The runtime parses a message once and hands the result over: the agent acts on what it
    /// is given and never reads the body again (here a body that would not even parse).
    #[tokio::test]
    async fn a_read_message_is_handled_without_parsing_its_body_again() {
        let a = agent();
        let unrelated_tag = Inbound::TagChange(TagChange {
            arn: "arn:aws:rds:us-east-1:123456789012:db:orders-pg".into(),
            changed_keys: vec!["team".into()],
        });
        assert_eq!(
            a.handle_read(&message("not json"), unrelated_tag).await,
            Disposition::Delete
        );
        assert!(matches!(
            a.handle_message(&message("not json")).await,
            Disposition::Leave(_)
        ));
    }
}
