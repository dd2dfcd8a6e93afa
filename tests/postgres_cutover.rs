//! The real agent driver and phase machine migrating a real PostgreSQL primary (standing in for
//! the RDS instance) to a real streaming standby (standing in for the Aurora replica) while a
//! client keeps writing: no acknowledged write may be lost.
//!
//! See `tests/postgres/world.rs` for what each RDS call maps to. The servers run on loopback as
//! an unprivileged user (created when the test runs as root) and are stopped by PID on drop.

mod postgres;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::AtomicI64;
use std::time::{Duration, Instant};

use aurora_migrator::agent::Agent;
use aurora_migrator::core::Phase;
use aurora_migrator::core::observation::InstanceEventKind;
use aurora_migrator::core::policy::Policy;
use jiff::{SignedDuration, Timestamp};

use postgres::server::{SUPERUSER, connect};
use postgres::world::{APP_GROUP, PgWorld, Shared};
use postgres::writer::{Ack, Writer};
use postgres::{ENDS, assert_ended_in, drive, missing, rows, seqs_in_dump};

/// When the source restarted (its restart events).
fn source_restarts(shared: &Shared) -> Vec<Timestamp> {
    let s = shared.state.lock().unwrap();
    let restarts = s
        .events
        .iter()
        .filter(|e| e.kind == InstanceEventKind::Restarted);
    restarts.map(|e| e.at).collect()
}

/// The real-PostgreSQL world's timings (`postgres::fast_policy`).
fn policy(budget: SignedDuration) -> Policy {
    postgres::fast_policy(budget)
}

/// Waits until `pred` holds on a writer's acknowledgements (or panics after `within`).
async fn wait_for_acks(w: &Writer, within: Duration, what: &str, pred: impl Fn(&[Ack]) -> bool) {
    let deadline = Instant::now() + within;
    while !pred(&w.acks()) {
        assert!(
            Instant::now() < deadline,
            "{}: {what} did not happen within {within:?}",
            w.name
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cutover_to_a_real_standby_loses_no_acknowledged_write() {
    let started = Instant::now();
    let world = PgWorld::start("cutover", &[]).await;
    let shared = world.shared.clone();
    let source_port = shared.primary.port;
    let seq = Arc::new(AtomicI64::new(1));
    let mut app = Writer::spawn("app", SUPERUSER, world.router.endpoint.clone(), seq);
    wait_for_acks(&app, Duration::from_secs(10), "a first write", |a| {
        !a.is_empty()
    })
    .await;

    let agent = Agent::new(world, policy(SignedDuration::from_mins(2)));
    let m = drive(&agent, &ENDS, Duration::from_secs(150)).await;
    assert_ended_in(&m, Phase::Completed, "the migration");

    let target_port = agent.world.router.endpoint.lock().unwrap().1;
    assert_ne!(target_port, source_port, "traffic was routed to the target");
    wait_for_acks(
        &app,
        Duration::from_secs(10),
        "20 writes on the target",
        |a| a.iter().filter(|x| x.port == target_port).count() >= 20,
    )
    .await;
    app.stop().await;

    let standby = shared.standby().expect("the promoted standby is kept");
    let on_target = rows(&standby.tcp(SUPERUSER)).await;
    let acks = app.acks();
    let (on_source_acks, on_target_acks): (Vec<Ack>, Vec<Ack>) =
        acks.iter().partition(|a| a.port == source_port);
    assert!(!on_source_acks.is_empty() && !on_target_acks.is_empty());

    // Zero loss: every acknowledged write is on the promoted target.
    let lost = missing(&acks, &on_target);
    assert!(
        lost.is_empty(),
        "{} acknowledged writes are missing on the target: {:?}",
        lost.len(),
        &lost[..lost.len().min(20)]
    );

    // The old primary's final snapshot (taken after the cutover) holds exactly the rows the
    // target got from it: nothing written there was left behind.
    let snapshot_file = {
        let s = shared.state.lock().unwrap();
        s.snapshots
            .get(&m.names.final_snapshot)
            .map(|(_, f, _)| f.clone())
            .expect("a final snapshot was taken")
    };
    let on_old_primary = seqs_in_dump(&snapshot_file);
    let from_source_on_target: BTreeSet<i64> = on_target
        .iter()
        .filter(|(_, port)| **port == Some(i32::from(source_port)))
        .map(|(s, _)| *s)
        .collect();
    assert_eq!(
        on_old_primary, from_source_on_target,
        "the old primary's rows and the rows the target replicated from it differ"
    );

    // The source took no write after the target took its first one.
    let first_on_target = on_target
        .iter()
        .filter(|(_, port)| **port == Some(i32::from(target_port)))
        .map(|(s, _)| *s)
        .min()
        .expect("rows written on the target");
    let last_on_source = on_old_primary.iter().max().copied().unwrap_or(0);
    assert!(
        last_on_source < first_on_target,
        "the old primary has seq {last_on_source} after the target's first {first_on_target}"
    );
    let last_source_ack = on_source_acks.iter().max_by_key(|a| a.seq).unwrap();
    let first_target_ack = on_target_acks.iter().min_by_key(|a| a.seq).unwrap();
    assert!(last_source_ack.at < first_target_ack.at);

    // Promoted exactly once, and only after the reboot's restart.
    let promotes = shared.mutations("promote_target");
    assert_eq!(promotes.len(), 1, "promote requests: {promotes:?}");
    let reboots = shared.mutations("reboot_instance");
    assert_eq!(reboots.len(), 1, "reboot requests: {reboots:?}");
    let restarted = source_restarts(&shared)
        .into_iter()
        .min()
        .expect("a restart event");
    assert!(reboots[0].at < restarted && restarted < promotes[0].at);
    assert!(m.progress.drain_proven_at.is_some_and(|p| p > restarted));
    let quarantined = shared
        .mutations("set_source_groups")
        .first()
        .map(|q| q.at)
        .expect("the source was quarantined");
    assert!(quarantined < reboots[0].at);
    // The quarantine stopped the writer: nothing was acknowledged on the source after the
    // restart.
    assert!(last_source_ack.at < restarted);
    let order: Vec<Phase> = m.history.iter().map(|h| h.phase).collect();
    let at = |p: Phase| order.iter().position(|x| *x == p).unwrap();
    assert!(
        at(Phase::Quiescing) < at(Phase::Draining) && at(Phase::Draining) < at(Phase::Promoting)
    );

    let outage = first_target_ack.at.duration_since(last_source_ack.at);
    // Sessions open before the quarantine keep writing until the reboot ends them.
    let between = on_source_acks
        .iter()
        .filter(|a| a.at > quarantined && a.at < restarted)
        .count();
    let in_doubt = app.in_doubt.lock().unwrap().clone();
    eprintln!(
        "write outage: {:.2} s between the last acknowledged write on the source (seq {}) and the first on the target (seq {}); \
         {} writes acknowledged ({} on the source, {} on the target); {} in doubt, {} of them committed; \
         {} refused connections; {} writes acknowledged between the quarantine and the restart; \
         quarantine→promotion {:.2} s; run time {:.1} s",
        outage.as_secs_f64(),
        last_source_ack.seq,
        first_target_ack.seq,
        acks.len(),
        on_source_acks.len(),
        on_target_acks.len(),
        in_doubt.len(),
        in_doubt
            .iter()
            .filter(|s| on_target.contains_key(s))
            .count(),
        app.failed_connects
            .load(std::sync::atomic::Ordering::Relaxed),
        between,
        promotes[0].at.duration_since(quarantined).as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_the_quarantine_misses_fails_the_proof_and_the_agent_rolls_back_losslessly() {
    let started = Instant::now();
    // `cdc` reaches the source on a path the security groups do not show (an old pg_hba rule).
    let world = PgWorld::start("leak", &["cdc"]).await;
    let shared = world.shared.clone();
    let source_port = shared.primary.port;
    let seq = Arc::new(AtomicI64::new(1));
    let mut app = Writer::spawn("app", SUPERUSER, world.router.endpoint.clone(), seq.clone());
    // Not behind the data access layer: it always writes to the source.
    let fixed = Arc::new(std::sync::Mutex::new((
        "127.0.0.1".to_string(),
        source_port,
    )));
    let mut leak = Writer::spawn("cdc", "cdc", fixed, seq);

    let budget = SignedDuration::from_secs(12);
    let agent = Agent::new(world, policy(budget));
    let m = drive(&agent, &ENDS, Duration::from_secs(120)).await;
    assert_ended_in(&m, Phase::RolledBack, "the migration");
    let why = m.last_error.clone().unwrap_or_default();
    assert!(
        why.contains("write-unavailability budget")
            && why.contains("connections on the quarantined source"),
        "unexpected reason: {why}"
    );
    let rolled_back_at = Timestamp::now();

    // Never promoted; the replica is gone; the source has its groups back.
    assert!(shared.mutations("promote_target").is_empty());
    assert!(shared.standby().is_none(), "the standby was deleted");
    {
        let s = shared.state.lock().unwrap();
        assert!(s.target.is_none());
        assert_eq!(s.source_groups, vec![APP_GROUP.to_string()]);
        // Only a new `start` begins another attempt.
        assert_eq!(
            s.source_tags.get("aurora-migration").map(String::as_str),
            Some("stopped")
        );
    }
    // Deleting the replica released its slot: the source holds no WAL for it.
    let monitor = connect(&shared.primary.local()).await.expect("connect");
    let slots: i64 = monitor
        .query_one("SELECT count(*) FROM pg_replication_slots", &[])
        .await
        .expect("slots")
        .get(0);
    assert_eq!(slots, 0, "the replica's slot is left on the source");
    let restarted = !source_restarts(&shared).is_empty();
    assert!(restarted, "the source was rebooted");
    let quarantined = shared.mutations("set_source_groups")[0].at;
    // The leaking writer kept writing through the quarantine (that is what the proof caught).
    assert!(leak.acks().iter().any(|a| a.at > quarantined));

    // The source is writable again through the data access layer.
    assert_eq!(agent.world.router.endpoint.lock().unwrap().1, source_port);
    wait_for_acks(
        &app,
        Duration::from_secs(20),
        "a write after the rollback",
        |a| a.iter().any(|x| x.at > rolled_back_at),
    )
    .await;
    app.stop().await;
    leak.stop().await;

    // Zero loss: every write either writer had acknowledged is on the source.
    let on_source = rows(&shared.primary.local()).await;
    let acks: Vec<Ack> = app.acks().into_iter().chain(leak.acks()).collect();
    assert!(acks.iter().all(|a| a.port == source_port));
    let lost: Vec<i64> = acks
        .iter()
        .map(|a| a.seq)
        .filter(|s| !on_source.contains_key(s))
        .collect();
    assert!(lost.is_empty(), "lost acknowledged writes: {lost:?}");
    eprintln!(
        "rolled back after the {}s budget: {}; {} writes acknowledged, all on the source; run time {:.1} s",
        budget.as_secs(),
        why,
        acks.len(),
        started.elapsed().as_secs_f64()
    );
}

/// An agent with a two-minute budget on a fresh world (`label`) that has started the migration:
/// its first tick is queued.
async fn started_agent(label: &str) -> Agent<PgWorld> {
    let world = PgWorld::start(label, &[]).await;
    let agent = Agent::new(world, policy(SignedDuration::from_mins(2)));
    agent
        .on_source(postgres::world::SOURCE_ID)
        .await
        .expect("start");
    agent
}

/// A successful `Notify` is fed back to the phase machine, which then lets it go from the
/// record's outbox: each notification is published once (this once published ~40,000 SNS
/// messages for 13 phase changes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_notification_is_published_once() {
    let agent = started_agent("notify").await;
    for _ in 0..3 {
        let (message, _) = agent.world.queue.take_next().expect("a tick");
        agent.handle_message(&message).await;
    }
    let m = agent
        .world
        .store
        .latest_now(postgres::world::RESOURCE_ID)
        .expect("record");
    let mut published: BTreeMap<String, usize> = BTreeMap::new();
    for n in agent.world.notifier.sent.lock().unwrap().iter() {
        *published.entry(n.id()).or_default() += 1;
    }
    let repeated: Vec<_> = published.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        m.outbox.is_empty() && repeated.is_empty(),
        "{} notifications still in the outbox after SNS took them; published more than once: {repeated:?}",
        m.outbox.len()
    );
}

/// A tick's delay is its wake-up's distance rounded up, so it never arrives before the
/// wake-up (rounded down, every sub-second remainder became a hot loop of observations).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ticks_are_not_delivered_before_their_wake_up() {
    let agent = started_agent("ticks").await;
    let until = Instant::now() + Duration::from_secs(3);
    let (mut handled, mut early) = (0, Vec::new());
    while Instant::now() < until {
        let (message, visible_at) = agent.world.queue.take_next().expect("a tick");
        if let Some(wait) = visible_at.checked_duration_since(Instant::now()) {
            tokio::time::sleep(wait).await;
        }
        let token =
            serde_json::from_str::<serde_json::Value>(&message.body).expect("json")["token"]
                .as_u64();
        let m = agent
            .world
            .store
            .latest_now(postgres::world::RESOURCE_ID)
            .expect("record");
        if let Some(wake) = m.next_wake.filter(|w| Some(w.token) == token) {
            let now = Timestamp::now();
            if wake.at > now + SignedDuration::from_millis(100) {
                early.push(wake.at.duration_since(now));
            }
        }
        agent.handle_message(&message).await;
        handled += 1;
    }
    assert!(
        early.is_empty(),
        "{} of {handled} ticks arrived before their wake-up (up to {:?} early)",
        early.len(),
        early.iter().max()
    );
}
