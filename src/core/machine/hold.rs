//! Holding the clients (routers that can, today PgBouncer): the one rule for when a router's
//! clients are held and released around the cutover.
//!
//! A PgBouncer can hold its clients instead of failing them: `PAUSE` waits for the pool's
//! transactions to finish and then keeps new queries waiting. The cutover asks for that before
//! the quarantine (`Action::HoldClients`), so that when the source is fenced and its sessions are
//! ended no client transaction is in flight, and nothing a client sent is refused: it waits. The
//! route then re-points PgBouncer and resumes it (one request to the companion), so the held
//! clients continue on Aurora. A rollback before cutover releases them to the source once it
//! has its groups back (`Action::ReleaseClients`).
//!
//! Contract:
//! - Nothing is quarantined until the hold is confirmed (`Progress::clients_held_at`): a hold
//!   that fails (a transaction longer than the companion's pause timeout, the console
//!   unreachable) is retried with the cutover's backoff and, after `max_action_retries`, rolls
//!   back: no write was stopped by the agent that a release does not give back.
//! - The write budget counts from the hold's request: held clients cannot write.
//! - A rollback after cutover holds the clients again before Aurora is fenced (its sessions
//!   are ended next), and the route back resumes them on the source; a companion that does not
//!   hold within 2 minutes is gone without (an approved rollback does not wait on it), with a
//!   warning.
//! - A release is confirmed before a rollback before cutover ends, once a hold was asked for
//!   (confirmed or not: its answer may be lost, and releasing what is not held changes
//!   nothing); a companion that does not answer for 15 minutes (its default maximum hold) is
//!   given up on with an error notification saying what a person must do; after promotion the
//!   route
//!   itself resumes (and the companion resumes by itself after its maximum hold, should the
//!   agent be gone).

use super::*;

impl Stepper<'_> {
    /// Whether this cutover's router holds clients.
    fn holds_clients(&self) -> bool {
        matches!(
            self.router(),
            super::super::router::RouterChoice::PgBouncer { .. }
        )
    }

    /// True when the clients are held (or the router holds none); asks for the hold otherwise.
    pub(super) fn clients_held(&mut self, source: &SourceInstance) -> bool {
        if !self.holds_clients() || self.m.progress.clients_held_at.is_some() {
            return true;
        }
        if self.answered_ok(ActionKey::HoldClients) {
            self.m.progress.clients_held_at = Some(self.now);
            return true;
        }
        if let Some(endpoint) = source.endpoint.clone()
            && self.request(Action::HoldClients(self.route_to(&endpoint)))
        {
            self.m
                .progress
                .clients_hold_requested_at
                .get_or_insert(self.now);
        }
        self.wake_within(HOLD_POLL);
        false
    }

    /// True when held clients were released (or no hold was ever asked for); asks for the
    /// release otherwise. A hold asked for but not confirmed is released too: its answer may
    /// have been lost, or the rollback may have begun before it was heard, and a release of
    /// clients that are not held changes nothing.
    pub(super) fn clients_released(&mut self) -> bool {
        if self.m.progress.clients_hold_requested_at.is_none()
            || self.m.progress.clients_released_at.is_some()
        {
            return true;
        }
        if self.answered_ok(ActionKey::ReleaseClients) {
            self.m.progress.clients_released_at = Some(self.now);
            return true;
        }
        let asked = *self
            .m
            .progress
            .clients_release_requested_at
            .get_or_insert(self.now);
        if self.since(asked) > RELEASE_GIVE_UP {
            // The source takes writes again; only PgBouncer's pause is left, and the companion
            // that could lift it does not answer. Say what a person must do, and end.
            let router = self.router();
            self.alert_once(
                "clients-not-released",
                Severity::Error,
                "PgBouncer's clients could not be released",
                &format!(
                    "the rollback could not reach the PgBouncer companion ({router}) for {}: its clients stay held until the companion resumes them by itself (its maximum hold) or a person runs RESUME on PgBouncer's admin console; the source takes writes again",
                    human(RELEASE_GIVE_UP)
                ),
            );
            return true;
        }
        if let Some(endpoint) = self.source().and_then(|s| s.endpoint.clone()) {
            self.request(Action::ReleaseClients(self.route_to(&endpoint)));
        }
        self.wake_within(HOLD_POLL);
        false
    }

    /// Rollback after cutover: true when the clients (now on Aurora) are held before Aurora is
    /// fenced, or the router holds none, or the hold was given up on; asks for it otherwise.
    /// The rollback was approved by a person and must not wait on a companion that does not
    /// answer: after `ROLLBACK_HOLD_GIVE_UP` it goes on without the hold (clients then see
    /// errors when Aurora's sessions end), and says so.
    pub(super) fn clients_held_on_target(&mut self, t: &TargetCluster) -> bool {
        let p = &self.m.progress;
        if !self.holds_clients() || p.rollback_clients_held_at.is_some() || p.rollback_hold_skipped
        {
            return true;
        }
        if self.answered_ok(ActionKey::HoldClients) {
            self.m.progress.rollback_clients_held_at = Some(self.now);
            return true;
        }
        if let Some(asked) = self.m.progress.rollback_hold_requested_at
            && self.since(asked) > ROLLBACK_HOLD_GIVE_UP
        {
            self.m.progress.rollback_hold_skipped = true;
            let router = self.router();
            self.alert_once(
                "rollback-without-hold",
                Severity::Warning,
                "rolling back without holding PgBouncer's clients",
                &format!(
                    "the PgBouncer companion ({router}) did not hold the clients within {}: the rollback fences Aurora without it, and clients in a transaction then see an error",
                    human(ROLLBACK_HOLD_GIVE_UP)
                ),
            );
            return true;
        }
        // The give-up counts from the first look, asked or not: a cluster without a writer
        // endpoint must not keep Aurora unfenced (the companion needs only the database name,
        // so the hold is asked with whatever endpoint is known).
        self.m
            .progress
            .rollback_hold_requested_at
            .get_or_insert(self.now);
        let endpoint = t
            .writer_endpoint
            .clone()
            .or_else(|| self.source().and_then(|s| s.endpoint.clone()));
        if let Some(endpoint) = endpoint {
            self.request(Action::HoldClients(self.route_to(&endpoint)));
        }
        self.wake_within(HOLD_POLL);
        false
    }

    /// This step's results include a success of `key`.
    fn answered_ok(&self, key: ActionKey) -> bool {
        self.obs
            .action_results
            .iter()
            .any(|r| r.key == key && r.outcome.is_ok())
    }
}

/// How long a rollback keeps asking a companion that does not answer to release the clients:
/// the companion's default maximum hold (`MIGRATOR_COMPANION_MAX_HOLD_S`, 900 s), after which a
/// companion that is alive has resumed them by itself.
const RELEASE_GIVE_UP: SignedDuration = SignedDuration::from_mins(15);

/// How long a rollback after cutover waits for a hold before it fences Aurora without one.
const ROLLBACK_HOLD_GIVE_UP: SignedDuration = SignedDuration::from_mins(2);

/// How soon a hold or release is looked for again: the companion answers within its pause
/// timeout (10 s by default), and the clients wait meanwhile.
const HOLD_POLL: SignedDuration = SignedDuration::from_secs(1);
