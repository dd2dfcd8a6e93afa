//! Follow-ups: the looks a cutover asks for within seconds, taken by this process itself at
//! the instant asked for, instead of waiting for SQS.
//!
//! Why: SQS delays are whole seconds and a delayed message arrives up to about a second after
//! its delay, so a look asked for "in one second" came 1.5–2 s later, and a cutover is a chain of
//! such looks while writes are down (the simulator measured 13.5 s p50 of the agent's own share
//! of the database-aware outage, most of it this). A follow-up is kept in memory only.
//!
//! Contract:
//! - The tick for the same wake-up is always sent too ([`Agent::reconcile`] sends it before the
//!   follow-up is recorded), [`BACKSTOP_MARGIN_S`] later than the wake-up: it is the backstop.
//!   A crash loses the follow-ups, never the chain; the tick then steps it as before.
//! - A follow-up is a tick delivered in-process: [`Agent::until_due`] waits for its wake-up,
//!   then [`Agent::follow_up`] handles it as a tick received once. Whichever of the two comes second finds the
//!   record's token changed and is dropped as stale without observing (one `GetItem`).
//! - Only short waits in the cutover and the rollback are followed up (at most
//!   [`FOLLOW_UP_WITHIN`], at most [`MAX_PENDING`] waiting): elsewhere a second more is nothing,
//!   and an unbounded list would be memory held for work the ticks do anyway.
//! - The runtime (and the simulator's executor) takes them with [`Agent::take_follow_ups`] after
//!   each handled message or follow-up, and runs each under the migration's lock, as a message.

use jiff::{SignedDuration, Timestamp};

use super::{Agent, Disposition};
use crate::core::Migration;
use crate::inbound::Tick;
use crate::ports::{Clock, World};

/// The longest wait taken in-process: past it, the tick's rounding is a small part of the wait.
pub const FOLLOW_UP_WITHIN: SignedDuration = SignedDuration::from_secs(3);
/// At most this many follow-ups wait at once; more are left to their ticks.
pub const MAX_PENDING: usize = 256;
/// A followed-up wake-up's tick comes this much later than the wake-up: by then the follow-up's
/// look has saved (a look takes well under a second) and the tick is dropped as stale, instead
/// of stepping the migration beside it (two steps at once are safe, but both would tell people
/// the same news). After a crash, the chain goes on this much later.
pub const BACKSTOP_MARGIN_S: u32 = 2;

/// A look this process takes at `at`: the tick it backs up, delivered without SQS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FollowUp {
    pub tick: Tick,
    pub at: Timestamp,
}

impl<W: World> Agent<W> {
    /// Whether `m`'s wake-up is followed up in-process: a short wait in the cutover or the
    /// rollback.
    pub(super) fn follows_up(&self, m: &Migration) -> bool {
        let Some(wake) = &m.next_wake else {
            return false;
        };
        let urgent = m.phase.is_cutover() || m.phase == crate::core::Phase::RollingBack;
        urgent && wake.at.duration_since(self.world.clock().now()) <= FOLLOW_UP_WITHIN
    }

    /// Records the follow-up for `m`'s wake-up (see [`Agent::follows_up`]); called after the
    /// wake-up's tick was sent.
    pub(super) fn record_follow_up(&self, m: &Migration) {
        let Some(wake) = &m.next_wake else {
            return;
        };
        let mut pending = self.follow_ups.lock().unwrap_or_else(|p| p.into_inner());
        if pending.len() < MAX_PENDING {
            pending.push(FollowUp {
                tick: Tick::new(&m.id, wake.token),
                at: wake.at,
            });
        }
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

    /// Handles the follow-up's tick as one received once (a stale one, the record having moved
    /// on, is dropped without observing). Call it when [`Agent::until_due`] returned.
    pub async fn follow_up(&self, f: &FollowUp) -> Disposition {
        match self.on_tick(&f.tick, 1).await {
            Ok(d) => d,
            Err(e) => {
                // The tick sent beside it carries on.
                tracing::warn!(migration = %f.tick.migration(), error = %e, "follow-up failed; its tick carries on");
                Disposition::Leave(e.to_string())
            }
        }
    }
}
