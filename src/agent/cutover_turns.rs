//! Admission to the cutover: how many migrations this agent lets stop writes at once, and who
//! goes next.
//!
//! Why: the account's RDS budget (the adapter allows itself `MIGRATOR_RDS_RATE_LIMIT`, 5
//! requests/s by default) is shared by every migration, and a cutover's looks are write
//! downtime. Let every ready migration in, and a fleet's cutovers queue behind each other at
//! the rate limiter with their writes down: the simulator's 500-migration fleet stretched the
//! outage's p99 from 849 s to 1,683 s and rolled back cutovers whose write budget ran out in
//! that queue. A migration without a turn waits in AwaitingCutover, its writes flowing
//! (`core::machine::preparation`, `Observation::no_cutover_turn`), and its RDS calls go in the
//! rate limiter's other lane while the cutovers' go first (`aws::limit`).
//!
//! Contract (the driver calls, per step of a migration):
//! 1. before the step, for a migration in AwaitingCutover: once per process, [`CutoverTurns::seed`]
//!    with the table's records; then [`CutoverTurns::has_turn`], which the observation carries
//!    to the core;
//! 2. after the step is saved: [`CutoverTurns::settle`] with the record as saved: a migration
//!    in the cutover lane holds a turn, one that asked for a turn and did not get it waits in
//!    line (in the order it first asked: `Progress::cutover_turn_asked_at`, which survives a
//!    restart), any other gives up what it had.
//!
//! Turns live in this process's memory: a restart forgets them, so the first turn a new process
//! gives waits for the table's cutovers under way to be counted (`seed`); a cutover under way
//! is never refused or held up, even beyond the limit. An entry not refreshed
//! for [`FORGET_AFTER`] is dropped (its migration moved to another agent or its record went).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

use crate::core::{Migration, MigrationId, Phase};

/// An entry whose migration has not been stepped here for this long is forgotten (its
/// migration moved to another agent, or its record went). Longer than any phase that holds a
/// turn may last (Rolling back: 1 h; Promoting: 30 min): a cutover can go many minutes without
/// a step while AWS promotes or a router propagates, and forgetting it early gave its turn to a
/// second migration (the simulator's 500-migration fleet saw 38 cutovers over the limit with
/// 15 minutes).
pub const FORGET_AFTER: SignedDuration = SignedDuration::from_hours(2);

/// The longest a cutover's RDS call may be waiting for the budget when a new cutover is
/// admitted: a second is a few looks' worth of the cutover lane's queue; beyond, another
/// cutover's looks would lengthen every cutover's outage.
pub const MAX_BACKLOG: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct CutoverTurns {
    /// Most migrations in their cutover at once in this agent (`MIGRATOR_MAX_CUTOVERS`).
    max: usize,
    state: Mutex<Turns>,
}

#[derive(Debug, Default)]
struct Turns {
    /// The cutovers under way when this process started were counted (`seed`): until then no
    /// turn is given, since one of them not stepped yet would not be counted.
    seeded: bool,
    /// In their cutover (`agent::holds_cutover_turn`): when last stepped.
    holding: HashMap<MigrationId, Timestamp>,
    /// Ready and waiting: (when it first asked, when last stepped).
    waiting: HashMap<MigrationId, (Timestamp, Timestamp)>,
}

impl CutoverTurns {
    pub fn new(max: usize) -> Self {
        CutoverTurns {
            max: max.max(1),
            state: Mutex::new(Turns::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Turns> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the cutovers under way have been counted since this process started.
    pub fn seeded(&self) -> bool {
        self.lock().seeded
    }

    /// Counts the records in their cutover (read from the table once per process, before the
    /// first turn is given): each holds a turn until its own steps settle it.
    pub fn seed<'a>(&self, records: impl IntoIterator<Item = &'a Migration>, now: Timestamp) {
        let mut t = self.lock();
        for m in records {
            if super::holds_cutover_turn(m) {
                t.holding.entry(m.id.clone()).or_insert(now);
            }
        }
        t.seeded = true;
    }

    /// Whether `m` (in AwaitingCutover) may enter its cutover now: a turn is free for it and
    /// for every migration that asked before it. A turn given is taken until [`Self::settle`].
    ///
    /// `backlog` is how long a cutover's RDS call would wait now (`Rds::cutover_backlog`): past
    /// [`MAX_BACKLOG`] the budget is carrying all the cutovers it can, and no new one starts
    /// whatever the limit (the limit caps a budget with room to spare).
    pub fn has_turn(&self, m: &Migration, now: Timestamp, backlog: Duration) -> bool {
        let mut t = self.lock();
        debug_assert!(t.seeded, "the driver seeds the turns before asking for one");
        t.forget_stale(now);
        if t.holding.contains_key(&m.id) {
            return true;
        }
        let asked = m.progress.cutover_turn_asked_at.unwrap_or(now);
        let ahead = t
            .waiting
            .iter()
            .filter(|(id, (a, _))| **id != m.id && (*a, *id) < (asked, &m.id))
            .count();
        // Taken at once, not at `settle`: two handlers stepping two migrations at the same
        // time must not both get the last turn. A step that then does not enter the cutover
        // gives it back at `settle`.
        let free = t.holding.len() + ahead < self.max && backlog <= MAX_BACKLOG;
        if free {
            t.holding.insert(m.id.clone(), now);
        }
        free
    }

    /// `m` as saved after its step: holds a turn, waits for one, or has none.
    pub fn settle(&self, m: &Migration, now: Timestamp) {
        let mut t = self.lock();
        t.waiting.remove(&m.id);
        if super::holds_cutover_turn(m) {
            t.holding.insert(m.id.clone(), now);
            return;
        }
        t.holding.remove(&m.id);
        if m.phase == Phase::AwaitingCutover
            && let Some(asked) = m.progress.cutover_turn_asked_at
        {
            t.waiting.insert(m.id.clone(), (asked, now));
        }
    }

    /// Migrations in their cutover here now, and waiting for a turn.
    pub fn counts(&self) -> (usize, usize) {
        let t = self.lock();
        (t.holding.len(), t.waiting.len())
    }
}

impl Turns {
    fn forget_stale(&mut self, now: Timestamp) {
        self.holding.retain(|_, seen| now - *seen < FORGET_AFTER);
        self.waiting
            .retain(|_, (_, seen)| now - *seen < FORGET_AFTER);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::migration::Migration;

    fn migration(n: u32, phase: Phase) -> Migration {
        let now: Timestamp = "2026-12-01T00:00:00Z".parse().unwrap();
        let mut m = Migration::new(
            MigrationId {
                resource_id: format!("db-{n}"),
                attempt: 1,
            },
            &format!("orders-{n}"),
            &format!("arn:aws:rds:eu-west-1:123456789012:db:orders-{n}"),
            now,
        );
        m.phase = phase;
        m
    }

    fn at(s: i64) -> Timestamp {
        "2026-12-01T00:00:00Z".parse::<Timestamp>().unwrap() + SignedDuration::from_secs(s)
    }

    #[test]
    fn turns_go_in_the_order_migrations_asked_and_come_back_when_a_cutover_ends() {
        let turns = CutoverTurns::new(1);
        turns.seed([], at(0));
        let mut a = migration(1, Phase::AwaitingCutover);
        let mut b = migration(2, Phase::AwaitingCutover);
        let mut c = migration(3, Phase::AwaitingCutover);
        // a takes the only turn and enters Quiescing.
        assert!(turns.has_turn(&a, at(0), Duration::ZERO));
        a.phase = Phase::Quiescing;
        turns.settle(&a, at(0));
        // c asks first, then b: neither has a turn; both wait, c ahead.
        c.progress.cutover_turn_asked_at = Some(at(1));
        assert!(!turns.has_turn(&c, at(1), Duration::ZERO));
        turns.settle(&c, at(1));
        b.progress.cutover_turn_asked_at = Some(at(2));
        assert!(!turns.has_turn(&b, at(2), Duration::ZERO));
        turns.settle(&b, at(2));
        assert_eq!(turns.counts(), (1, 2));
        // a's cutover ends (Verifying): its turn is free, and it is c's, not b's.
        a.phase = Phase::Verifying;
        turns.settle(&a, at(300));
        assert!(
            !turns.has_turn(&b, at(301), Duration::ZERO),
            "b asked after c"
        );
        assert!(turns.has_turn(&c, at(302), Duration::ZERO));
    }

    #[test]
    fn no_turn_is_given_while_the_cutovers_rds_calls_queue() {
        let turns = CutoverTurns::new(10);
        turns.seed([], at(0));
        let m = migration(1, Phase::AwaitingCutover);
        assert!(!turns.has_turn(&m, at(0), MAX_BACKLOG + Duration::from_millis(1)));
        assert_eq!(turns.counts(), (0, 0));
        assert!(turns.has_turn(&m, at(1), MAX_BACKLOG));
    }

    #[test]
    fn a_cutover_under_way_keeps_its_turn_even_beyond_the_limit() {
        let turns = CutoverTurns::new(1);
        turns.seed([], at(0));
        // After a restart two migrations are found in their cutover: both hold a turn.
        turns.settle(&migration(1, Phase::Draining), at(0));
        turns.settle(&migration(2, Phase::Promoting), at(0));
        assert!(turns.has_turn(&migration(2, Phase::Promoting), at(1), Duration::ZERO));
        assert!(!turns.has_turn(&migration(3, Phase::AwaitingCutover), at(1), Duration::ZERO));
        assert_eq!(turns.counts(), (2, 0));
    }

    #[test]
    fn the_cutovers_under_way_at_start_up_are_counted_before_a_turn_is_given() {
        let turns = CutoverTurns::new(2);
        let mut fenced = migration(3, Phase::RollingBack);
        fenced.progress.quarantined_at = Some(at(0));
        let records = [
            migration(1, Phase::Promoting),
            migration(2, Phase::Replicating),
            fenced,
            // Rolling back before the quarantine: no write stopped, no turn.
            migration(4, Phase::RollingBack),
        ];
        turns.seed(&records, at(0));
        assert!(turns.seeded());
        assert_eq!(turns.counts(), (2, 0));
        assert!(!turns.has_turn(&migration(5, Phase::AwaitingCutover), at(1), Duration::ZERO));
    }

    #[test]
    fn a_migration_that_stops_waiting_or_is_not_seen_gives_its_place_up() {
        let turns = CutoverTurns::new(1);
        turns.seed([], at(0));
        turns.settle(&migration(1, Phase::Quiescing), at(0));
        let mut b = migration(2, Phase::AwaitingCutover);
        b.progress.cutover_turn_asked_at = Some(at(1));
        turns.settle(&b, at(1));
        let c = migration(3, Phase::AwaitingCutover);
        // b is rolled back (or paused): no longer in line.
        b.phase = Phase::RolledBack;
        turns.settle(&b, at(2));
        assert_eq!(turns.counts(), (1, 0));
        // The cutover's migration is not stepped here for 5 minutes (another agent has it):
        // its turn is forgotten and c gets one.
        assert!(!turns.has_turn(&c, at(60), Duration::ZERO));
        assert!(turns.has_turn(
            &c,
            at(0) + FORGET_AFTER + SignedDuration::from_secs(1),
            Duration::ZERO
        ));
    }
}
