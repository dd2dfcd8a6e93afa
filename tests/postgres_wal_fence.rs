//! The database-aware cutover with real PostgreSQL: the real agent, through its real database
//! adapter (TLS verified against a test CA, the agent's password from a secret), ends the
//! client sessions of a real primary (the RDS instance) instead of rebooting it, writes the
//! fence, and promotes a real streaming standby (the Aurora replica) once it has replayed the
//! fence, while many clients keep writing, half of them with `synchronous_commit = off`.
//!
//! See `tests/postgres/world.rs` for what each AWS call maps to; `PgWorld::start_with_database`
//! for the access path (the quarantine lets the agent's role in only when the quarantine group
//! admits the agent's security group).

mod postgres;

use std::sync::Arc;
use std::sync::atomic::AtomicI64;
use std::time::{Duration, Instant};

use aurora_migrator::agent::Agent;
use aurora_migrator::core::Phase;
use aurora_migrator::core::policy::Policy;
use jiff::SignedDuration;

use postgres::server::SUPERUSER;
use postgres::world::{AGENT_GROUP, APP_GROUP, APP_ROLE, PgWorld, Shared};
use postgres::writer::{Ack, Writer};
use postgres::{ENDS, assert_ended_in, drive, missing, rows};

/// Whole cutovers in the zero-loss test (`AURORA_MIGRATOR_PG_RUNS` to change).
const RUNS: usize = 20;
/// Concurrent clients; every other one commits asynchronously.
const WRITERS: usize = 8;

/// The real-PostgreSQL world's timings (`postgres::fast_policy`) and database access.
fn policy(budget: SignedDuration) -> Policy {
    Policy {
        database_access: true,
        agent_security_group: Some(AGENT_GROUP.to_string()),
        ..postgres::fast_policy(budget)
    }
}

fn writers(world: &PgWorld, seq: &Arc<AtomicI64>) -> Vec<Writer> {
    (0..WRITERS)
        .map(|i| {
            let async_commit = i % 2 == 1;
            let name = format!("app-{i}{}", if async_commit { "-async" } else { "" });
            Writer::spawn_with(
                &name,
                APP_ROLE,
                world.router.endpoint.clone(),
                seq.clone(),
                async_commit,
            )
        })
        .collect()
}

async fn wait_until(within: Duration, what: &str, pred: impl Fn() -> bool) {
    let deadline = Instant::now() + within;
    while !pred() {
        assert!(Instant::now() < deadline, "{what} within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn all_acks(ws: &[Writer]) -> Vec<Ack> {
    ws.iter().flat_map(Writer::acks).collect()
}

/// One whole cutover on the database path; returns the outage the writers saw (last
/// acknowledgement on the source → first on the target) and the agent's proof time.
async fn one_run(run: usize) -> (Duration, Duration) {
    let world = PgWorld::start_with_database(&format!("fence-{run}"), &[]).await;
    let shared: Arc<Shared> = world.shared.clone();
    let source_port = shared.primary.port;
    let seq = Arc::new(AtomicI64::new(1));
    let mut ws = writers(&world, &seq);
    wait_until(Duration::from_secs(10), "first writes", || {
        ws.iter().all(|w| !w.acks().is_empty())
    })
    .await;

    let agent = Agent::new(world, policy(SignedDuration::from_mins(2)));
    let mut stop_at = ENDS.to_vec();
    stop_at.push(Phase::Verifying);
    let m = drive(&agent, &stop_at, Duration::from_secs(150)).await;
    assert_ended_in(&m, Phase::Verifying, "the cutover");
    let target_port = agent.world.router.endpoint.lock().unwrap().1;
    assert_ne!(target_port, source_port, "traffic was routed to the target");
    wait_until(Duration::from_secs(10), "writes on the target", || {
        all_acks(&ws)
            .iter()
            .filter(|a| a.port == target_port)
            .count()
            >= 40
    })
    .await;
    for w in &mut ws {
        w.stop().await;
    }

    // The database path, not the fallback: no reboot, a fence Aurora replayed.
    let p = &m.progress;
    assert_eq!(p.database_fallback, None, "run {run}: fell back");
    assert!(
        shared.mutations("reboot_instance").is_empty(),
        "run {run}: rebooted"
    );
    let (fence, replayed) = (p.fence_lsn.expect("a fence"), p.fence_replayed_lsn.unwrap());
    assert!(replayed >= fence);
    assert_eq!(shared.mutations("promote_target").len(), 1);
    let plan = m.plan.as_ref().unwrap();
    assert_eq!(plan.quarantine_admits(), vec![AGENT_GROUP.to_string()]);

    // Zero loss: every acknowledged write, asynchronous commits included, is on the target.
    let standby = shared.standby().expect("the promoted standby");
    let on_target = rows(&standby.tcp(SUPERUSER)).await;
    let acks = all_acks(&ws);
    let lost = missing(&acks, &on_target);
    assert!(
        lost.is_empty(),
        "run {run}: {} acknowledged writes missing on the target: {:?}",
        lost.len(),
        &lost[..lost.len().min(20)]
    );
    let async_acks = ws
        .iter()
        .filter(|w| w.name.ends_with("-async"))
        .map(|w| w.acks().len())
        .sum::<usize>();
    assert!(async_acks > 0, "asynchronous commits were acknowledged");
    let last_source = acks
        .iter()
        .filter(|a| a.port == source_port)
        .map(|a| a.at)
        .max()
        .unwrap();
    let first_target = acks
        .iter()
        .filter(|a| a.port == target_port)
        .map(|a| a.at)
        .min()
        .unwrap();
    assert!(last_source < first_target, "the two sides overlapped");
    let outage = first_target.duration_since(last_source);
    let proof = p
        .drain_proven_at
        .unwrap()
        .duration_since(p.quarantine_active_at.unwrap());
    eprintln!(
        "run {run}: outage {:.2} s, quarantine active → proof {:.2} s, {} writes acknowledged ({async_acks} asynchronous), fence {fence}, replayed {replayed}",
        outage.as_secs_f64(),
        proof.as_secs_f64(),
        acks.len()
    );
    (
        Duration::from_secs_f64(outage.as_secs_f64()),
        Duration::from_secs_f64(proof.as_secs_f64()),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_path_loses_no_acknowledged_write_over_many_cutovers_without_a_reboot() {
    let runs = std::env::var("AURORA_MIGRATOR_PG_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(RUNS);
    let started = Instant::now();
    let mut outages = Vec::new();
    let mut proofs = Vec::new();
    for run in 1..=runs {
        let (outage, proof) = one_run(run).await;
        outages.push(outage);
        proofs.push(proof);
    }
    outages.sort();
    proofs.sort();
    let at = |v: &[Duration], q: f64| v[((v.len() - 1) as f64 * q).round() as usize].as_secs_f64();
    eprintln!(
        "database path, {runs} cutovers, {WRITERS} writers (half asynchronous), 0 acknowledged writes lost: outage p50 {:.2} s, max {:.2} s; quarantine active → proof p50 {:.2} s, max {:.2} s; {:.0} s in all",
        at(&outages, 0.5),
        at(&outages, 1.0),
        at(&proofs, 0.5),
        at(&proofs, 1.0),
        started.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_reconnecting_through_a_hole_rolls_the_attempt_back_losslessly_naming_it() {
    // `cdc` reaches the source on a path the security groups do not show (an old pg_hba rule).
    let world = PgWorld::start_with_database("fence-hole", &["cdc"]).await;
    let shared = world.shared.clone();
    let source_port = shared.primary.port;
    let seq = Arc::new(AtomicI64::new(1));
    let mut app = Writer::spawn("app", APP_ROLE, world.router.endpoint.clone(), seq.clone());
    let fixed = Arc::new(std::sync::Mutex::new((
        "127.0.0.1".to_string(),
        source_port,
    )));
    let mut leak = Writer::spawn("cdc", "cdc", fixed, seq);
    wait_until(Duration::from_secs(10), "first writes", || {
        !app.acks().is_empty() && !leak.acks().is_empty()
    })
    .await;

    let agent = Agent::new(world, policy(SignedDuration::from_secs(12)));
    let m = drive(&agent, &ENDS, Duration::from_secs(120)).await;
    assert_ended_in(&m, Phase::RolledBack, "the migration");
    let why = m.last_error.clone().unwrap_or_default();
    assert!(why.contains("got past the quarantine"), "{why}");
    assert!(
        shared.mutations("promote_target").is_empty(),
        "never promoted"
    );
    assert!(shared.standby().is_none(), "the replica was deleted");
    assert_eq!(
        shared.state.lock().unwrap().source_groups,
        vec![APP_GROUP.to_string()],
        "the source has its groups back"
    );
    // The agent ended the leaking client's sessions, saw it come back, and said who it was.
    assert!(shared.mutations("reboot_instance").is_empty());
    let notes = agent.world.notifier.sent.lock().unwrap().clone();
    let reconnected = notes
        .iter()
        .find(|n| n.event == "client-reconnected")
        .expect("a client-reconnected alert");
    assert!(
        reconnected.description.contains("cdc"),
        "{}",
        reconnected.description
    );
    assert!(
        leak.failed_connects
            .load(std::sync::atomic::Ordering::Relaxed)
            == 0
    );

    // Lossless: every acknowledged write is on the source, which keeps serving.
    tokio::time::sleep(Duration::from_millis(500)).await;
    app.stop().await;
    leak.stop().await;
    let on_source = rows(&shared.primary.tcp(SUPERUSER)).await;
    let acks: Vec<Ack> = app.acks().into_iter().chain(leak.acks()).collect();
    assert!(acks.iter().all(|a| a.port == source_port));
    let lost = acks
        .iter()
        .filter(|a| !on_source.contains_key(&a.seq))
        .count();
    assert_eq!(lost, 0, "acknowledged writes missing on the source");
}
