//! Follow-ups: the looks a cutover asks for, taken by this process itself at the instant asked
//! for, instead of waiting for SQS.
//!
//! Why: SQS delays are whole seconds and a delayed message arrives up to about a second after
//! its delay, so a look asked for "in one second" came 1.5–2 s later, and a cutover is a chain of
//! such looks while writes are down (the simulator measured 13.5 s p50 of the agent's own share
//! of the database-aware outage, most of it this). In a busy fleet a tick also waits for a
//! message slot, minutes late (see [`FOLLOW_UP_WITHIN`]). A follow-up is kept in memory only.
//!
//! Contract:
//! - The tick for the same wake-up is always sent too, before the record's save
//!   (`Agent::save_with_backstop`), [`BACKSTOP_MARGIN_S`] later than the
//!   wake-up: it is the backstop. A crash loses the follow-ups, never the chain; the tick then
//!   steps it as before. (A rescue, below, has no tick: its backstop is the resync.)
//! - A follow-up steps the record as this process saved it ([`Agent::until_due`] waits for the
//!   wake-up, then [`Agent::follow_up`] steps), without reading the table: it is dropped as
//!   stale when this process saved a newer version since, and when another process did, the
//!   save's version condition fails and the record is read afresh. The tick that comes later
//!   finds the token changed and is dropped as stale without observing (one `GetItem`).
//! - Only the waits of the cutover and the rollback are followed up (at most
//!   [`FOLLOW_UP_WITHIN`], at most [`MAX_PENDING`] recorded and not yet taken by the runtime):
//!   elsewhere a minute more is nothing, and an unbounded list would be memory held for work
//!   the ticks do anyway.
//! - The exception is a rescue ([`Agent::rescue_chain`]): a step whose tick's send or whose
//!   record's save failed keeps its next look in-process, in any phase (at most SQS's 15
//!   minutes ahead), instead of leaving the chain to the resync. Its record is the one the step
//!   last knew, which this process may not have saved: it is stale only once this process saved
//!   a newer version. It carries the outcomes of the actions that step heard and could not save
//!   ([`FollowUp::heard`]): they are facts whatever the record says, and its look hears them.
//! - The runtime (and the simulator's executor) takes them with [`Agent::take_follow_ups`] after
//!   each handled message or follow-up, and runs each under the migration's lock, as a message.

use jiff::{SignedDuration, Timestamp};

use super::{Agent, Disposition, MAX_DELAY_S};
use crate::core::{ActionResult, Migration, MigrationId};
use crate::inbound::Tick;
use crate::ports::{Clock, StateStore, World};

/// The longest wait taken in-process: every wait of the cutover and the rollback (a longer one
/// is re-ticked anyway). Once it was 3 s, on the grounds that past it the tick's rounding is a
/// small part of the wait; but in a busy fleet a tick waits for a message slot behind the whole
/// fleet's messages (the simulator's 1,000-migration fleet: 500–770 visible, 63 of the 64
/// slots taken by steps waiting for the RDS rate limiter), and the metric path's 5 s polls and
/// CloudWatch-grid waits came 1–4 minutes late, with writes stopped. Taken in-process, seeds
/// 1–5 of that fleet went from a write-unavailability p99 of 809–847 s to 724–775 s, and from
/// 7 write-budget rollbacks to 4 (`8975a84`). What made it safe: the backstop tick is sent
/// before the record's save (`Agent::save_with_backstop`), so a process that dies after the
/// save leaves a tick for the new wake-up.
pub const FOLLOW_UP_WITHIN: SignedDuration = SignedDuration::from_secs(MAX_DELAY_S as i64);
/// At most this many follow-ups wait at once; more are left to their ticks.
pub const MAX_PENDING: usize = 256;
/// A followed-up wake-up's tick comes this much later than the wake-up: by then the follow-up's
/// look has saved (a look takes well under a second) and the tick is dropped as stale, instead
/// of stepping the migration beside it (two steps at once are safe, but both would tell people
/// the same news). After a crash, the chain goes on this much later.
pub const BACKSTOP_MARGIN_S: u32 = 2;

/// A look this process takes at `at`: the tick it backs up, delivered without SQS.
#[derive(Clone, Debug, PartialEq)]
pub struct FollowUp {
    pub tick: Tick,
    pub at: Timestamp,
    /// The record as this process saved it (a rescue: as its step last knew it), so the look
    /// needs no read of the table: if this process saved a newer version since, the follow-up
    /// is stale; if another process did, the conditional save fails and the record is read
    /// afresh (`Agent::reconcile`).
    pub record: Box<Migration>,
    /// Recorded by [`Agent::rescue_chain`], not for a wake-up whose tick was sent.
    pub rescue: bool,
    /// A rescue's: the outcomes of actions that its step heard and no saved record holds (the
    /// save failed, or the look after the actions did), heard by the rescue's first step.
    /// Dropped, a throttled reboot was recorded as asked for, and asked again only when
    /// `reboot_unconfirmed_after` (90 s) showed no restart, with writes stopped: the
    /// simulator's 1,000-migration fleet (seed 1) rolled a cutover back by the write budget.
    pub heard: Vec<ActionResult>,
}

impl<W: World> Agent<W> {
    /// Whether `m`'s wake-up is followed up in-process: a wait in the cutover or the rollback
    /// (at most [`FOLLOW_UP_WITHIN`]).
    pub(super) fn follows_up(&self, m: &Migration) -> bool {
        let Some(wake) = &m.next_wake else {
            return false;
        };
        let urgent = m.phase.is_followed_closely();
        urgent && wake.at.duration_since(self.world.clock().now()) <= FOLLOW_UP_WITHIN
    }

    /// Records the follow-up for `m`'s wake-up (see [`Agent::follows_up`]); called after the
    /// wake-up's tick was sent. False when none was recorded (no wake-up, or [`MAX_PENDING`]
    /// wait already).
    pub(super) fn record_follow_up(&self, m: &Migration) -> bool {
        match &m.next_wake {
            Some(wake) => self.push_follow_up(m, wake.at, false, Vec::new()),
            None => false,
        }
    }

    /// Keeps `m`'s chain of wake-ups in this process when its message could not be had: a look
    /// at `at` (at most [`MAX_DELAY_S`] ahead) at the record `m`, whatever its phase. For a tick
    /// whose send failed after the record was saved (its token is new, so every tick already
    /// queued is stale and dropped), or a save that failed (it may have landed: the look's own
    /// save then finds the newer version and reads it). Without it the chain waited for the
    /// resync to find the wake-up overdue, up to 6 minutes: the simulator's 1,000-migration
    /// fleet saw cutovers held that long and rolled back by the write budget. A crash loses it,
    /// as it loses any follow-up, and the resync is then the backstop (the step that recorded it
    /// ends as done: leaving its message for redelivery as well, tried, made each such failure
    /// a second look 15 s later, with no fewer budget rollbacks in the fleet). False when none
    /// was recorded (`m` has no wake-up, or [`MAX_PENDING`] wait already). `heard`: see
    /// [`FollowUp::heard`].
    pub(super) fn rescue_chain(
        &self,
        m: &Migration,
        at: Timestamp,
        heard: Vec<ActionResult>,
    ) -> bool {
        let latest = self.world.clock().now() + SignedDuration::from_secs(i64::from(MAX_DELAY_S));
        self.push_follow_up(m, at.min(latest), true, heard)
    }

    /// [`Agent::rescue_chain`] `delay_s` from now: the retry of a failed look or save.
    pub(super) fn rescue_after(
        &self,
        m: &Migration,
        delay_s: u32,
        heard: Vec<ActionResult>,
    ) -> bool {
        let at = self.world.clock().now() + SignedDuration::from_secs(i64::from(delay_s));
        self.rescue_chain(m, at, heard)
    }

    fn push_follow_up(
        &self,
        m: &Migration,
        at: Timestamp,
        rescue: bool,
        heard: Vec<ActionResult>,
    ) -> bool {
        let Some(wake) = &m.next_wake else {
            return false;
        };
        let mut pending = self.follow_ups.lock().unwrap_or_else(|p| p.into_inner());
        if pending.len() >= MAX_PENDING {
            return false;
        }
        pending.push(FollowUp {
            tick: Tick::new(&m.id, wake.token),
            at,
            record: Box::new(m.clone()),
            rescue,
            heard,
        });
        true
    }

    /// At start-up, once, before the first follow-ups are taken: a rescue at its wake-up for
    /// every migration in a phase followed closely (the cutover, the rollback). A process that
    /// died took those looks in-process, and their backstop ticks wait for a message slot behind
    /// everything the queue gathered while no agent ran: in the simulator's 1,000-migration
    /// fleet (seeds 5 and 10) a cutover went 4–5.5 minutes without a look after an agent
    /// crash, and the write budget rolled it back. A migration another agent is stepping is
    /// not stepped twice: its lease stops the rescue's look. A failed read of the table leaves
    /// them to their ticks and the resync, as before. Returns how many were taken over.
    ///
    /// The same read counts the migrations under way for both kinds of turn (`Turns::seed`),
    /// so the first turn asked for does not read the whole table a second time.
    pub async fn take_over_at_start(&self) -> usize {
        let all = match self.world.store().list().await {
            Ok(all) => all,
            Err(e) => {
                tracing::warn!(error = %e, "the migrations under way could not be read at start-up; their ticks and the resync carry them");
                return 0;
            }
        };
        let now = self.world.clock().now();
        [&self.cutover_turns, &self.preparation_turns]
            .into_iter()
            .filter(|t| !t.seeded())
            .for_each(|t| t.seed(&all, now));
        all.iter()
            .filter(|m| m.phase.is_followed_closely())
            .filter_map(|m| m.next_wake.as_ref().map(|wake| (m, wake.at)))
            .filter(|(m, at)| self.rescue_chain(m, *at, Vec::new()))
            .count()
    }

    /// The follow-ups recorded since the last call, for the runtime to run.
    pub fn take_follow_ups(&self) -> Vec<FollowUp> {
        std::mem::take(&mut *self.follow_ups.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Waits until the follow-up's wake-up (call it before taking the migration's lock).
    pub async fn until_due(&self, f: &FollowUp) {
        let ahead = f.at.duration_since(self.world.clock().now());
        if let Ok(d) = std::time::Duration::try_from(ahead)
            && !d.is_zero()
        {
            self.world.clock().sleep(d).await;
        }
    }

    /// Steps the migration from the follow-up's record, unless this process has saved it since
    /// (then the follow-up is stale and dropped). Call it when [`Agent::until_due`] returned.
    pub async fn follow_up(&self, f: &FollowUp) -> Disposition {
        // A rescue's record may be one this process never saved (read by the step, or saved by
        // another agent): it is stale only once this process saved a newer one. A follow-up's
        // record is this process's last save, and anything else means a newer step (or a final
        // record, which is forgotten).
        let saved = self.saved_version(&f.record.id);
        let stale = if f.rescue {
            saved.is_some_and(|v| v > f.record.version)
        } else {
            saved != Some(f.record.version)
        };
        if stale {
            tracing::debug!(migration = %f.record.id, "stale follow-up dropped");
            return Disposition::DeleteStale;
        }
        let look = self.reconcile_hearing((*f.record).clone(), f.heard.clone());
        match look.await {
            Ok(_) => Disposition::Delete,
            Err(e) => {
                // The tick sent beside it carries on (a rescue's: the resync).
                tracing::warn!(migration = %f.record.id, error = %e, "follow-up failed; its tick carries on");
                Disposition::Leave(e.to_string())
            }
        }
    }

    /// The version of `id`'s record this process saved last, if it saved one.
    pub(super) fn saved_version(&self, id: &MigrationId) -> Option<u64> {
        let saved = self.saved.lock().unwrap_or_else(|p| p.into_inner());
        saved.get(id).copied()
    }

    /// Notes a version of a record this process saved (forgotten once the record is final).
    pub(super) fn note_saved(&self, m: &Migration) {
        let mut saved = self.saved.lock().unwrap_or_else(|p| p.into_inner());
        if m.phase.is_terminal() {
            saved.remove(&m.id);
        } else {
            saved.insert(m.id.clone(), m.version);
        }
    }
}
