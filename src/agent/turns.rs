//! Turns: how many migrations this agent lets into a budget-heavy stretch at once, and who goes
//! next. Two kinds ([`TurnKind`]): the cutover, and the preparation at the start.
//!
//! Why the cutover: the account's RDS budget (the adapter allows itself
//! `MIGRATOR_RDS_RATE_LIMIT`, 5 requests/s by default) is shared by every migration, and a
//! cutover's looks are write downtime. Let every ready migration in, and a fleet's cutovers queue
//! behind each other at the rate limiter with their writes down: the simulator's 500-migration
//! fleet stretched the outage's p99 from 849 s to 1,683 s and rolled back cutovers whose write
//! budget ran out in that queue. A migration without a turn waits in AwaitingCutover, its writes
//! flowing (`core::machine::preparation`, `Observation::no_cutover_turn`), and its RDS calls go
//! in the rate limiter's other lane while the cutovers' go first (`aws::limit`).
//!
//! Why the preparation: Preflight and Preparing each have 30 minutes, and a preflight is about
//! ten RDS requests. A thousand instances tagged at once all entered Preflight together, their
//! calls interleaved in one queue, and every preflight ended about when the last did: past its
//! timeout (the simulator's 1,000-migration fleet: 90 liveness findings, a thousand preflights
//! being 40 minutes of the whole budget). With turns a few run at a time, each finishing in
//! minutes, and the rest wait in Requested, which has no time limit and costs a look at the
//! fleet snapshot (`Observation::no_preparation_turn`).
//!
//! Contract (the driver calls, per step of a migration):
//! 1. before the step, for a migration in the phase that waits for a turn (AwaitingCutover,
//!    Requested): once per process, [`Turns::seed`] with the table's records; then
//!    [`Turns::has_turn`], which the observation carries to the core;
//! 2. after the step is saved: [`Turns::settle`] with the record as saved: a migration in the
//!    stretch holds a turn, one that waits for a turn waits in line (in the order of
//!    [`TurnKind::asked_at`], which survives a restart), any other gives up what it had.
//!
//! Turns live in this process's memory: a restart forgets them, so the first turn a new process
//! gives waits for the table's migrations under way to be counted (`seed`); a migration under
//! way is never refused or held up, even beyond the limit. A turn held and not refreshed for
//! [`FORGET_AFTER`], a place in line not refreshed for [`WAITING_FORGET_AFTER`], is dropped (its
//! migration moved to another agent or its record went).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

use crate::core::{Migration, MigrationId, Phase};

/// An entry whose migration has not been stepped here for this long is forgotten (its
/// migration moved to another agent, or its record went). Longer than any phase that holds a
/// turn may last (Rolling back: 1 h; Promoting, Preflight, Preparing: 30 min): a cutover can go
/// many minutes without a step while AWS promotes or a router propagates, and forgetting it early
/// gave its turn to a second migration (the simulator's 500-migration fleet saw 38 cutovers over
/// the limit with 15 minutes).
pub const FORGET_AFTER: SignedDuration = SignedDuration::from_hours(2);

/// A waiting entry whose migration has not been stepped here for this long is forgotten: a
/// migration waiting for a turn looks at least every minute (`machine::preparation::turn_look`
/// stops at the phase's poll), so one not seen for five is being stepped by the other agent, or
/// is gone. Kept for [`FORGET_AFTER`], as a turn held is, the other agent's waiting migrations
/// would count ahead of this agent's own for two hours (fewer turns given, never more; the
/// simulator's `--agents 2 --fleet 1000` showed no difference on its seed: 819 and 821
/// completed, at most 120 in preparation of the two agents' 200 either way). Forgetting one
/// early only lets a migration behind it go first once: its place comes back from its record
/// at its next step.
pub const WAITING_FORGET_AFTER: SignedDuration = SignedDuration::from_mins(5);

/// How long before the table was read a turn must have been given or last stepped here for
/// the table's word to drop it ([`Turns::reconcile_with_table`]): longer than a step takes from
/// its turn to its save (a look, rate-limited and retried, then the conditional write), so that
/// a save the list could not show yet never frees its turn. Such a turn then goes within this
/// and the resync's 5 minutes of its migration leaving the stretch, not [`FORGET_AFTER`].
pub const TABLE_MARGIN: SignedDuration = SignedDuration::from_mins(5);

/// The longest a cutover's RDS call may be waiting for the budget when a new cutover is
/// admitted: a second is a few looks' worth of the cutover lane's queue; beyond, another
/// cutover's looks would lengthen every cutover's outage.
pub const MAX_BACKLOG: Duration = Duration::from_secs(1);

/// Which stretch of a migration the turns are for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TurnKind {
    /// Writes stopped: Quiescing … Routing, or rolling back with the source fenced
    /// ([`super::holds_cutover_turn`]). Waits in AwaitingCutover, in the order it first asked
    /// (`Progress::cutover_turn_asked_at`). Also refused while the cutover lane's backlog is over
    /// [`MAX_BACKLOG`].
    Cutover,
    /// The start's describes and creations: Preflight and Preparing
    /// ([`super::holds_preparation_turn`]). Waits in Requested, in the order it was requested
    /// (`Migration::created_at`).
    Preparation,
}

impl TurnKind {
    /// Whether `m` is in the stretch: it holds a turn.
    pub fn holds(self, m: &Migration) -> bool {
        match self {
            TurnKind::Cutover => super::holds_cutover_turn(m),
            TurnKind::Preparation => super::holds_preparation_turn(m),
        }
    }

    /// When `m` asked for a turn it is waiting for (its place in line), if it waits.
    pub fn asked_at(self, m: &Migration) -> Option<Timestamp> {
        match self {
            TurnKind::Cutover => m
                .progress
                .cutover_turn_asked_at
                .filter(|_| m.phase == Phase::AwaitingCutover),
            TurnKind::Preparation => (m.phase == Phase::Requested).then_some(m.created_at),
        }
    }

    /// The phase in which a migration waits for this kind of turn.
    pub fn waits_in(self) -> Phase {
        match self {
            TurnKind::Cutover => Phase::AwaitingCutover,
            TurnKind::Preparation => Phase::Requested,
        }
    }
}

/// The answer to a migration asking for a turn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Turn {
    Given,
    /// No turn now; `ahead` migrations asked before it and wait too.
    Refused {
        ahead: usize,
    },
}

#[derive(Debug)]
pub struct Turns {
    kind: TurnKind,
    /// Most migrations in the stretch at once in this agent (`MIGRATOR_MAX_CUTOVERS`,
    /// `MIGRATOR_MAX_PREPARATIONS`).
    max: usize,
    state: Mutex<Held>,
}

#[derive(Debug, Default)]
struct Held {
    /// The migrations under way when this process started were counted (`seed`): until then no
    /// turn is given, since one of them not stepped yet would not be counted.
    seeded: bool,
    /// In the stretch ([`TurnKind::holds`]): when last stepped.
    holding: HashMap<MigrationId, Timestamp>,
    /// Waiting: (when it asked, when last stepped).
    waiting: HashMap<MigrationId, (Timestamp, Timestamp)>,
}

impl Turns {
    pub fn new(kind: TurnKind, max: usize) -> Self {
        Turns {
            kind,
            max: max.max(1),
            state: Mutex::new(Held::default()),
        }
    }

    pub fn kind(&self) -> TurnKind {
        self.kind
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Held> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the migrations under way have been counted since this process started.
    pub fn seeded(&self) -> bool {
        self.lock().seeded
    }

    /// Counts the records in the stretch (read from the table once per process, before the
    /// first turn is given): each holds a turn until its own steps settle it.
    pub fn seed<'a>(&self, records: impl IntoIterator<Item = &'a Migration>, now: Timestamp) {
        let mut t = self.lock();
        for m in records {
            if self.kind.holds(m) {
                t.holding.entry(m.id.clone()).or_insert(now);
            }
        }
        t.seeded = true;
    }

    /// Whether `m` (waiting in [`TurnKind::waits_in`]) may enter the stretch now: a turn is
    /// free for it and for every migration that asked before it. A turn given is taken until
    /// [`Self::settle`].
    ///
    /// `backlog` is how long a cutover's RDS call would wait now (`Rds::cutover_backlog`): past
    /// [`MAX_BACKLOG`] the budget is carrying all the cutovers it can, and no new one starts
    /// whatever the limit (the limit caps a budget with room to spare). Preparations ignore it:
    /// their calls wait in the other lane, and their number alone keeps each one short.
    pub fn has_turn(&self, m: &Migration, now: Timestamp, backlog: Duration) -> bool {
        self.ask(m, now, backlog) == Turn::Given
    }

    /// As [`Self::has_turn`], and when refused, how many wait ahead of `m` (the core looks
    /// again less often the further back it is: `machine::preparation::turn_look`).
    pub fn ask(&self, m: &Migration, now: Timestamp, backlog: Duration) -> Turn {
        let mut t = self.lock();
        debug_assert!(t.seeded, "the driver seeds the turns before asking for one");
        t.forget_stale(now);
        if t.holding.contains_key(&m.id) {
            return Turn::Given;
        }
        let asked = self.kind.asked_at(m).unwrap_or(now);
        let ahead = t
            .waiting
            .iter()
            .filter(|(id, (a, _))| **id != m.id && (*a, *id) < (asked, &m.id))
            .count();
        let budget_has_room = self.kind == TurnKind::Preparation || backlog <= MAX_BACKLOG;
        // Taken at once, not at `settle`: two handlers stepping two migrations at the same
        // time must not both get the last turn. A step that then does not enter the stretch
        // gives it back at `settle`.
        let free = t.holding.len() + ahead < self.max && budget_has_room;
        if free {
            t.holding.insert(m.id.clone(), now);
            Turn::Given
        } else {
            Turn::Refused { ahead }
        }
    }

    /// `m` as saved after its step: holds a turn, waits for one, or has none.
    pub fn settle(&self, m: &Migration, now: Timestamp) {
        let mut t = self.lock();
        t.waiting.remove(&m.id);
        if self.kind.holds(m) {
            t.holding.insert(m.id.clone(), now);
            return;
        }
        t.holding.remove(&m.id);
        if let Some(asked) = self.kind.asked_at(m) {
            t.waiting.insert(m.id.clone(), (asked, now));
        }
    }

    /// Drops the turns of migrations the table (read at `listed_at`, [`Agent::resync`]'s list)
    /// shows out of the stretch: finished or rolled back by the other agent, whose steps never
    /// settle them here. Kept, they counted for [`FORGET_AFTER`] (2 h) and this agent gave
    /// fewer turns meanwhile. Only a turn not given or stepped here for [`TABLE_MARGIN`] before
    /// the list was read: a turn given just before it may belong to a step whose save into the
    /// stretch the list has not seen yet, and dropping it would let a second migration in.
    ///
    /// [`Agent::resync`]: super::Agent::resync
    pub fn reconcile_with_table<'a>(
        &self,
        records: impl IntoIterator<Item = &'a Migration>,
        listed_at: Timestamp,
    ) {
        let mut t = self.lock();
        for m in records {
            if self.kind.holds(m) {
                continue;
            }
            let stepped_before_the_list = t
                .holding
                .get(&m.id)
                .is_some_and(|seen| *seen + TABLE_MARGIN < listed_at);
            if stepped_before_the_list {
                t.holding.remove(&m.id);
            }
        }
    }

    /// Migrations in the stretch here now, and waiting for a turn.
    pub fn counts(&self) -> (usize, usize) {
        let t = self.lock();
        (t.holding.len(), t.waiting.len())
    }
}

impl Held {
    fn forget_stale(&mut self, now: Timestamp) {
        self.holding.retain(|_, seen| now - *seen < FORGET_AFTER);
        self.waiting
            .retain(|_, (_, seen)| now - *seen < WAITING_FORGET_AFTER);
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
        let turns = Turns::new(TurnKind::Cutover, 1);
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
        turns.settle(&a, at(100));
        assert!(
            !turns.has_turn(&b, at(101), Duration::ZERO),
            "b asked after c"
        );
        assert!(turns.has_turn(&c, at(102), Duration::ZERO));
    }

    #[test]
    fn no_turn_is_given_while_the_cutovers_rds_calls_queue() {
        let turns = Turns::new(TurnKind::Cutover, 10);
        turns.seed([], at(0));
        let m = migration(1, Phase::AwaitingCutover);
        assert!(!turns.has_turn(&m, at(0), MAX_BACKLOG + Duration::from_millis(1)));
        assert_eq!(turns.counts(), (0, 0));
        assert!(turns.has_turn(&m, at(1), MAX_BACKLOG));
    }

    #[test]
    fn a_cutover_under_way_keeps_its_turn_even_beyond_the_limit() {
        let turns = Turns::new(TurnKind::Cutover, 1);
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
        let turns = Turns::new(TurnKind::Cutover, 2);
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
        let turns = Turns::new(TurnKind::Cutover, 1);
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

    /// Two agents: a cutover this agent admitted is finished by the other, and its turn comes
    /// back at the next resync's read of the table, not after [`FORGET_AFTER`]. A turn given
    /// here shortly before the table was read stays (its step's save may not be in the list).
    #[test]
    fn a_cutover_the_other_agent_finished_frees_its_turn_at_the_tables_next_read() {
        let turns = Turns::new(TurnKind::Cutover, 2);
        turns.seed([], at(0));
        turns.settle(&migration(1, Phase::Quiescing), at(0));
        let waiting = migration(3, Phase::AwaitingCutover);
        let listed_at = at(0) + TABLE_MARGIN + SignedDuration::from_secs(60);
        assert!(turns.has_turn(
            &migration(2, Phase::AwaitingCutover),
            at(0) + TABLE_MARGIN + SignedDuration::from_secs(30),
            Duration::ZERO
        ));
        assert!(
            !turns.has_turn(&waiting, listed_at, Duration::ZERO),
            "two turns held"
        );
        // The table, read then: 1 is Verifying (the other agent stepped it on), 2 is still
        // AwaitingCutover (its step's save came after the read).
        let records = [
            migration(1, Phase::Verifying),
            migration(2, Phase::AwaitingCutover),
            migration(3, Phase::AwaitingCutover),
        ];
        turns.reconcile_with_table(&records, listed_at);
        assert_eq!(
            turns.counts().0,
            1,
            "1's turn came back; 2's, given 30 s before, stays"
        );
        assert!(turns.has_turn(&waiting, listed_at, Duration::ZERO));
        // The same read while 1 is still in its cutover changes nothing.
        let turns = Turns::new(TurnKind::Cutover, 1);
        turns.seed([], at(0));
        turns.settle(&migration(1, Phase::Promoting), at(0));
        turns.reconcile_with_table(&[migration(1, Phase::Promoting)], listed_at);
        assert!(!turns.has_turn(&waiting, listed_at, Duration::ZERO));
    }

    #[test]
    fn preparations_go_in_the_order_requested_and_a_turn_comes_back_at_the_replica() {
        let turns = Turns::new(TurnKind::Preparation, 2);
        turns.seed([], at(0));
        let mut a = migration(1, Phase::Requested);
        a.created_at = at(0);
        let mut b = migration(2, Phase::Requested);
        b.created_at = at(1);
        let mut c = migration(3, Phase::Requested);
        c.created_at = at(2);
        let mut d = migration(4, Phase::Requested);
        d.created_at = at(3);
        // The cutover's backlog does not hold a preparation back: its calls are not the cutover's.
        assert!(turns.has_turn(&a, at(5), MAX_BACKLOG * 10));
        a.phase = Phase::Preflight;
        turns.settle(&a, at(5));
        // d is stepped before b and c, which are not in line yet: it takes the second turn.
        assert!(turns.has_turn(&d, at(6), Duration::ZERO));
        d.phase = Phase::Preflight;
        turns.settle(&d, at(6));
        assert!(
            !turns.has_turn(&c, at(7), Duration::ZERO),
            "two preparations under way"
        );
        turns.settle(&c, at(7));
        assert!(!turns.has_turn(&b, at(8), Duration::ZERO));
        turns.settle(&b, at(8));
        assert_eq!(turns.counts(), (2, 2));
        // Preparing still holds the turn; CreatingReplica (AWS's work, few calls) gives it back.
        a.phase = Phase::Preparing;
        turns.settle(&a, at(60));
        assert!(!turns.has_turn(&b, at(61), Duration::ZERO));
        a.phase = Phase::CreatingReplica;
        turns.settle(&a, at(120));
        assert_eq!(
            turns.ask(&c, at(121), Duration::ZERO),
            Turn::Refused { ahead: 1 },
            "b was requested before c"
        );
        assert!(turns.has_turn(&b, at(122), Duration::ZERO));
    }

    #[test]
    fn the_preparations_under_way_at_start_up_are_counted_and_an_ended_one_frees_its_turn() {
        let turns = Turns::new(TurnKind::Preparation, 1);
        let records = [
            migration(1, Phase::Preparing),
            migration(2, Phase::Requested),
            migration(3, Phase::AwaitingCutover),
        ];
        turns.seed(&records, at(0));
        assert_eq!(turns.counts(), (1, 0));
        let waiting = migration(2, Phase::Requested);
        assert!(!turns.has_turn(&waiting, at(1), Duration::ZERO));
        // The preparation under way fails its preflight: its turn is free.
        turns.settle(&migration(1, Phase::Failed), at(2));
        assert!(turns.has_turn(&waiting, at(3), Duration::ZERO));
    }

    #[test]
    fn a_waiting_migration_not_stepped_here_for_minutes_no_longer_counts_ahead() {
        let turns = Turns::new(TurnKind::Preparation, 1);
        turns.seed([], at(0));
        let mut a = migration(1, Phase::Requested);
        a.created_at = at(0);
        let mut b = migration(2, Phase::Requested);
        b.created_at = at(1);
        // A third migration holds the only turn; a waits, then is stepped by the other agent.
        turns.settle(&migration(3, Phase::Preflight), at(0));
        assert!(!turns.has_turn(&a, at(2), Duration::ZERO));
        turns.settle(&a, at(2));
        turns.settle(&migration(3, Phase::CreatingReplica), at(3));
        assert_eq!(
            turns.ask(&b, at(4), Duration::ZERO),
            Turn::Refused { ahead: 1 },
            "a was requested first and was seen a moment ago"
        );
        turns.settle(&b, at(4));
        let later = at(2) + WAITING_FORGET_AFTER + SignedDuration::from_secs(1);
        assert!(
            turns.has_turn(&b, later, Duration::ZERO),
            "a has not been stepped here for minutes: it is the other agent's"
        );
    }
}
