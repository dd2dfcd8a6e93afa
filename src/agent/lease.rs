//! Leases: one agent process steps a migration at a time, so that two tasks can run for
//! availability.
//!
//! Why: every action is idempotent and every save is conditional on the version, so two agents
//! stepping one migration could not lose a record; but both would call AWS for the same step
//! (two promotion requests, two notifications, twice the RDS budget) and the one whose save lost
//! would have acted on a record that was no longer the latest. The lease makes one of them wait.
//!
//! Contract:
//! - A step ([`Agent::reconcile`]) starts by holding the record's lease ([`Agent::lease_for`]):
//!   one this process already holds with at least half its time left is used as it is (no
//!   call); one with less is renewed; otherwise it is taken (`StateStore::acquire_lease`: free,
//!   lapsed, or this holder's). Taking adds one to the token.
//! - Every save of the step is fenced by it (`StateStore::save`): once another agent has taken
//!   it, this process can no longer write the record ([`StoreError::LeaseLost`]).
//! - While the step runs, the lease is renewed every third of its time ([`Agent::keep_lease`]);
//!   an action runs only while the lease is valid by this process's own clock, counted from
//!   when the request that took or renewed it was sent, less [`CLOCK_MARGIN`] for the two
//!   tasks' clocks and the call's own time ([`Agent::holds_lease`]). A lease lost mid-step stops
//!   the step's remaining actions; what ran is idempotent and the next holder looks afresh.
//! - A step whose next look this process takes itself (the cutover's follow-ups, every 200 ms
//!   to 3 s) keeps its lease, and that look needs no call for it. Any other step releases it at
//!   its end ([`Agent::release_lease`]): its next tick goes to whichever agent receives it, and
//!   that agent should not wait for a lapse (a two-agent measurement saw cutover polls wait
//!   ~5 s each for it when leases were only left to lapse).
//! - A step that finds the lease held by another agent does not step: it sends the record's
//!   current tick to arrive when the lease lapses ([`Agent::defer_to_holder`]). If the holder
//!   is alive it will have stepped by then (a new wake-up token), and the tick is dropped as
//!   stale; if it died, this agent takes the lease and goes on. So killing an agent mid-cutover
//!   costs at most one lease time (plus SQS's delivery second). A record with no wake-up yet
//!   (its first step) has no tick to send: the message is left for redelivery instead.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use jiff::{SignedDuration, Timestamp};

use super::{Agent, DriverError};
use crate::core::{Migration, MigrationId};
use crate::inbound::Tick;
use crate::ports::{Clock, Lease, LeaseError, Queue, StateStore, World};

/// How long a lease lasts unless renewed, by default (`MIGRATOR_LEASE`). 15 s: what killing an
/// agent mid-cutover costs in write outage (the same as `MIGRATOR_MESSAGE_VISIBILITY`, after
/// which the dead agent's message is seen again), against a renewal every 5 s while a step runs
/// (a step takes well under a second, except the actions that wait on a database).
pub const DEFAULT_LEASE_TTL: SignedDuration = SignedDuration::from_secs(15);
/// The shortest and longest lease accepted: under 5 s the renewals and the clock margin are
/// most of it; over 2 min a dead agent's cutover waits that long for its successor.
pub const LEASE_TTL_RANGE: (SignedDuration, SignedDuration) =
    (SignedDuration::from_secs(5), SignedDuration::from_secs(120));
/// Taken off the lease's time by its holder: the two tasks' clocks may differ (Fargate tasks
/// keep time with the Amazon Time Sync Service, well under a millisecond apart, so this is
/// mostly the call that took the lease, counted from before it was sent).
pub const CLOCK_MARGIN: SignedDuration = SignedDuration::from_secs(2);

/// A lease this process holds, and until when it may act on it by its own clock.
#[derive(Clone, Debug)]
pub(super) struct Held {
    pub lease: Lease,
    /// The send time of the request that took or renewed it, plus the lease time, less
    /// [`CLOCK_MARGIN`].
    pub valid_until: Timestamp,
}

/// The leases this process holds, by migration; memory only (a restarted process holds none).
#[derive(Debug, Default)]
pub struct Leases(Mutex<HashMap<MigrationId, Held>>);

tokio::task_local! {
    /// The lease a step's actions run under: every request they send checks it first
    /// ([`lapsed_for_this_step`]), after any wait at the rate limiter or between retries.
    static ACTING_UNDER: (Arc<Leases>, MigrationId);
}

/// `f` (a step's actions) under this process's lease on `id`.
pub(super) async fn acting_under<F: std::future::Future>(
    leases: Arc<Leases>,
    id: MigrationId,
    f: F,
) -> F::Output {
    ACTING_UNDER.scope((leases, id), f).await
}

/// Whether the calling task runs a step's actions whose lease is no longer valid at `now` by
/// this process's clock: a request that changes something must then not be sent (the adapters'
/// one call path asks, `aws::call` and the simulator's port). False outside a step's actions.
pub fn lapsed_for_this_step(now: Timestamp) -> bool {
    ACTING_UNDER
        .try_with(|(leases, id)| leases.get(id).is_none_or(|h| h.valid_until <= now))
        .unwrap_or(false)
}

impl Leases {
    fn get(&self, id: &MigrationId) -> Option<Held> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    fn put(&self, held: Held) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        // A lapsed lease is no use to anyone: forget those (the map stays the size of the
        // migrations this process is stepping).
        let now = held.valid_until - SignedDuration::from_hours(1);
        map.retain(|_, h| h.valid_until > now);
        map.insert(held.lease.id.clone(), held);
    }

    /// Keeps a renewal of a lease this process still holds (the same taking), and says whether
    /// it did: one released or lost meanwhile stays forgotten. A renewal beside a step answers
    /// after the step may have ended and released the lease (`Agent::schedule`); kept then, it
    /// brought the lease back to life here only: the next step used it without a call and acted
    /// while the table said it was free and another agent had taken it (the simulator's
    /// 1,000-migration fleet with two agents: a phase tag and its notification sent by both).
    fn renewed(&self, held: Held) -> bool {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(&held.lease.id) {
            Some(h) if h.lease.is_same_taking(&held.lease) => {
                map.insert(held.lease.id.clone(), held);
                true
            }
            _ => false,
        }
    }

    pub(super) fn forget(&self, id: &MigrationId) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
    }
}

impl<W: World> Agent<W> {
    /// The lease to step `m` under: held already (half its time left or more), renewed, or
    /// taken. [`LeaseError::Held`] when another agent holds it.
    pub(super) async fn lease_for(&self, m: &Migration) -> Result<Lease, LeaseError> {
        let sent = self.world.clock().now();
        if let Some(held) = self.leases.get(&m.id) {
            if held.valid_until - sent >= self.lease_ttl / 2 - CLOCK_MARGIN {
                return Ok(held.lease);
            }
            match self
                .world
                .store()
                .renew_lease(&held.lease, sent, self.lease_ttl)
                .await
            {
                Ok(lease) => return Ok(self.hold(lease, sent)),
                // Lapsed and taken by another agent (or lost with the item): ask afresh.
                Err(LeaseError::Lost) => self.leases.forget(&m.id),
                Err(e) => return Err(e),
            }
        }
        let lease = self
            .world
            .store()
            .acquire_lease(&m.id, &self.holder, sent, self.lease_ttl)
            .await?;
        Ok(self.hold(lease, sent))
    }

    /// Lets this process's lease on `id` lapse now (at the end of a step whose next look is not
    /// taken in-process). Best effort: a failed release lapses by itself.
    pub(super) async fn release_lease(&self, id: &MigrationId) {
        let Some(held) = self.leases.get(id) else {
            return;
        };
        self.leases.forget(id);
        if let Err(e) = self.world.store().release_lease(&held.lease).await {
            tracing::debug!(migration = %id, error = %e, "lease not released; it lapses by itself");
        }
    }

    /// Keeps `lease` (taken or renewed by a request sent at `sent`) and returns it. The kept
    /// copy forgets whom it was taken from: that is news for the step that took it only.
    fn hold(&self, lease: Lease, sent: Timestamp) -> Lease {
        self.leases.put(self.held(lease.clone(), sent));
        lease
    }

    /// `lease`, taken or renewed by a request sent at `sent`, as this process keeps it: valid by
    /// its clock until the lease time less [`CLOCK_MARGIN`], forgetting whom it was taken from.
    fn held(&self, lease: Lease, sent: Timestamp) -> Held {
        Held {
            lease: Lease {
                taken_from: None,
                ..lease
            },
            valid_until: sent + self.lease_ttl - CLOCK_MARGIN,
        }
    }

    /// Whether this process may still act under the lease on `id`, by its own clock.
    pub(super) fn holds_lease(&self, id: &MigrationId) -> bool {
        let now = self.world.clock().now();
        self.leases.get(id).is_some_and(|h| h.valid_until > now)
    }

    /// Before a step's actions: when the lease on `id` lapsed by this process's clock while the
    /// step looked and saved (a slow save, its backstop tick's send, a renewal that answered
    /// late), renews the same taking once, so that the actions the saved record asked for are
    /// run rather than skipped. Without it the record said they were asked for while none had
    /// left: the simulator's 1,000-migration fleet (seed 1) skipped a fallen-back cutover's
    /// reboot that way, asked again only when `reboot_unconfirmed_after` showed no restart
    /// (2 min 25 s later), and the write budget ran out. Safe: the renewal is conditional on
    /// this taking, so it succeeds only when no other agent took the lease since, and nothing
    /// was stepped elsewhere in between; a new taking would not do (another agent may have
    /// stepped the migration past the record just saved). Lost: forgotten, and the actions are
    /// not run (`execute::execute_all`); failed: not run either, as before.
    pub(super) async fn renew_if_lapsed(&self, id: &MigrationId) {
        if self.holds_lease(id) {
            return;
        }
        let Some(held) = self.leases.get(id) else {
            return;
        };
        match self.renew_held(&held).await {
            Ok(true) => {
                tracing::info!(migration = %id, "lease lapsed while the step saved; renewed before its actions");
            }
            Ok(false) | Err(LeaseError::Lost) => {}
            Err(e) => {
                tracing::warn!(migration = %id, error = %e, "lapsed lease not renewed; the step's actions are not run");
            }
        }
    }

    /// Renews `held` (the same taking), sent now. `Ok(true)`: kept; `Ok(false)`: renewed in the
    /// table but released or lost here while the request was on its way ([`Leases::renewed`]);
    /// [`LeaseError::Lost`]: another agent took it, and it is forgotten here.
    async fn renew_held(&self, held: &Held) -> Result<bool, LeaseError> {
        let sent = self.world.clock().now();
        match self
            .world
            .store()
            .renew_lease(&held.lease, sent, self.lease_ttl)
            .await
        {
            Ok(lease) => Ok(self.leases.renewed(self.held(lease, sent))),
            Err(LeaseError::Lost) => {
                self.leases.forget(&held.lease.id);
                Err(LeaseError::Lost)
            }
            Err(e) => Err(e),
        }
    }

    /// Renews the lease on `id` every third of its time, for as long as it is polled (beside a
    /// step, which it never ends: it waits forever once the lease is lost or cannot be renewed,
    /// and [`Agent::holds_lease`] then turns false by itself).
    pub(super) async fn keep_lease(&self, id: &MigrationId) -> std::convert::Infallible {
        loop {
            let Some(held) = self.leases.get(id) else {
                return std::future::pending().await;
            };
            let renew_at = held.valid_until + CLOCK_MARGIN - self.lease_ttl * 2 / 3;
            let ahead = renew_at.duration_since(self.world.clock().now());
            if let Ok(d) = std::time::Duration::try_from(ahead)
                && !d.is_zero()
            {
                self.world.clock().sleep(d).await;
            }
            match self.renew_held(&held).await {
                Ok(true) => {}
                // Released (the step ended) or lost while the renewal was on its way.
                Ok(false) => return std::future::pending().await,
                Err(LeaseError::Lost) => {
                    tracing::warn!(migration = %id, "lease taken by another agent mid-step; its remaining actions are not run");
                    return std::future::pending().await;
                }
                Err(e) => {
                    // Tried again at once would hammer a failing table; the next third of the
                    // lease is still ahead (renewed at two thirds left), so try once more in a
                    // second, and let `holds_lease` turn false if that fails too.
                    tracing::warn!(migration = %id, error = %e, "lease renewal failed");
                    self.world
                        .clock()
                        .sleep(std::time::Duration::from_secs(1))
                        .await;
                }
            }
        }
    }

    /// Another agent holds `m`'s lease until `until`: send `m`'s current tick to arrive when
    /// it lapses, so that `m` is stepped then if its holder has not stepped it (died).
    pub(super) async fn defer_to_holder(
        &self,
        m: &Migration,
        holder: &str,
        until: Timestamp,
    ) -> Result<(), DriverError> {
        let Some(wake) = &m.next_wake else {
            return Ok(());
        };
        // One second past the lapse: SQS delays are whole seconds, rounded up.
        let delay = super::whole_seconds_until(self.world.clock().now(), until).max(1) + 1;
        tracing::debug!(migration = %m.id, holder, delay_s = delay, "stepped by another agent; looking again when its lease lapses");
        let tick = Tick::new(&m.id, wake.token);
        self.world.queue().send(&tick.to_json(), delay).await?;
        Ok(())
    }
}

/// The holder name of this process: the host (a Fargate task's own), the process id and the
/// start time, so that a restarted task never takes its predecessor's leases for its own.
pub fn process_holder() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.trim().is_empty())
        .unwrap_or_else(|| "agent".into());
    format!(
        "{host}/{}/{}",
        std::process::id(),
        Timestamp::now().as_millisecond()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(token: u64, until_s: i64) -> Held {
        Held {
            lease: Lease {
                id: MigrationId {
                    resource_id: "db-1".into(),
                    attempt: 1,
                },
                holder: "agent-a".into(),
                token,
                expires_at: Timestamp::from_second(until_s + 2).unwrap(),
                taken_from: None,
            },
            valid_until: Timestamp::from_second(until_s).unwrap(),
        }
    }

    #[test]
    fn a_renewal_that_answers_after_the_lease_was_released_does_not_hold_it_again() {
        let leases = Leases::default();
        let id = held(1, 100).lease.id;
        leases.put(held(1, 100));
        assert!(
            leases.renewed(held(1, 110)),
            "still held: the renewal is kept"
        );
        assert_eq!(leases.get(&id).unwrap().valid_until.as_second(), 110);
        leases.forget(&id); // the step ended and released it
        assert!(!leases.renewed(held(1, 120)));
        assert!(leases.get(&id).is_none(), "released stays released");
        leases.put(held(2, 130)); // taken again: a renewal of the old taking is not this one
        assert!(!leases.renewed(held(1, 140)));
        assert_eq!(leases.get(&id).unwrap().lease.token, 2);
    }
}
