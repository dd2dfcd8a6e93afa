//! Rollback after cutover (issue 13) against real servers: traffic was routed to the promoted
//! standby (standing in for Aurora), a client keeps a session open on it and keeps writing, and
//! the owners tag `aurora-migration:rollback=approve`. The agent must fence Aurora the way it
//! fenced the source (exactly the quarantine group, then a reboot of the writer, because open
//! sessions survive a security group change), see the writer's restart and no session after it,
//! and only then count Aurora's writes, give the source its groups back and route back.
//!
//! See `tests/postgres/world.rs` for what each RDS call maps to.

mod postgres;

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aurora_migrator::agent::Agent;
use aurora_migrator::core::Phase;
use aurora_migrator::core::observation::InstanceEventKind;
use aurora_migrator::core::policy::{CutoverPolicy, Policy};
use jiff::{SignedDuration, Timestamp};

use postgres::server::{SUPERUSER, TABLE, connect, tcp_config};
use postgres::world::{APP_GROUP, Mutation, PgWorld, Shared};
use postgres::writer::{Ack, Background, Writer};
use postgres::{ENDS, assert_ended_in, drive, drive_until};

const ROLLBACK_TAG: &str = "aurora-migration:rollback";

/// Second-scale timings; a soak and retention far longer than the test, so traffic stays on the
/// target (Verifying) until the test approves the rollback. One-second metric periods, so the
/// count of Aurora's writes is per second.
fn policy() -> Policy {
    Policy {
        cutover: CutoverPolicy::Automatic,
        lag_sustain: SignedDuration::from_secs(2),
        soak: SignedDuration::from_hours(1),
        retention: SignedDuration::from_hours(24 * 7),
        fast_poll: SignedDuration::from_secs(1),
        slow_poll: SignedDuration::from_secs(1),
        write_unavailability_budget: SignedDuration::from_mins(2),
        metric_period: SignedDuration::from_secs(1),
        ..Policy::default()
    }
}

/// For the test that waits for a restart that does not come: the writer's reboot is asked for
/// again after 8 s instead of minutes (outside the cutover phases a request is repeated after
/// the longer of `reboot_reissue_after` and `reissue_after`).
fn impatient_policy() -> Policy {
    Policy {
        reboot_reissue_after: SignedDuration::from_secs(8),
        reissue_after: SignedDuration::from_secs(8),
        ..policy()
    }
}

/// One client session opened on the target after the cutover that keeps inserting and never
/// reconnects: the session a security group change leaves open.
struct Session {
    acks: Arc<Mutex<Vec<Ack>>>,
    /// Each failed write: when, and the error.
    errors: Arc<Mutex<Vec<(Timestamp, String)>>>,
    task: Background,
}

impl Session {
    async fn open(port: u16, seq: Arc<AtomicI64>) -> Session {
        let client = connect(&tcp_config(port, SUPERUSER))
            .await
            .expect("open a session on the target");
        let acks: Arc<Mutex<Vec<Ack>>> = Arc::default();
        let errors: Arc<Mutex<Vec<(Timestamp, String)>>> = Arc::default();
        let task = Background::spawn(|stop| {
            let (acks, errors) = (acks.clone(), errors.clone());
            async move {
                let insert = format!("INSERT INTO {TABLE} (seq, writer) VALUES ($1, 'pinned')");
                while !stop.load(Ordering::Relaxed) {
                    let n = seq.fetch_add(1, Ordering::SeqCst);
                    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&n];
                    let call = client.execute(insert.as_str(), &params);
                    match tokio::time::timeout(Duration::from_secs(5), call).await {
                        Ok(Ok(_)) => acks.lock().unwrap().push(Ack::now(n, port)),
                        Ok(Err(e)) => errors
                            .lock()
                            .unwrap()
                            .push((Timestamp::now(), e.to_string())),
                        Err(_) => errors
                            .lock()
                            .unwrap()
                            .push((Timestamp::now(), "timed out".into())),
                    }
                    let failing = !errors.lock().unwrap().is_empty();
                    tokio::time::sleep(Duration::from_millis(if failing { 200 } else { 20 })).await;
                }
            }
        });
        Session { acks, errors, task }
    }

    fn acks(&self) -> Vec<Ack> {
        self.acks.lock().unwrap().clone()
    }

    fn errors(&self) -> Vec<(Timestamp, String)> {
        self.errors.lock().unwrap().clone()
    }

    async fn close(&mut self) {
        self.task.stop().await;
    }
}

async fn wait_until(within: Duration, what: &str, pred: impl Fn() -> bool) {
    let deadline = Instant::now() + within;
    while !pred() {
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A migration with traffic on the promoted standby: the application writer (following the data
/// access layer) has written there, and a pinned session on the target keeps writing.
struct OnTarget {
    agent: Agent<PgWorld>,
    shared: Arc<Shared>,
    app: Writer,
    session: Session,
    source_port: u16,
    target_port: u16,
    writer: String,
}

async fn migrate_to_aurora(label: &str, policy: Policy) -> OnTarget {
    let world = PgWorld::start(label, &[]).await;
    let shared = world.shared.clone();
    let source_port = shared.primary.port;
    let seq = Arc::new(AtomicI64::new(1));
    let app = Writer::spawn("app", SUPERUSER, world.router.endpoint.clone(), seq.clone());
    wait_until(Duration::from_secs(10), "a first write", || {
        !app.acks().is_empty()
    })
    .await;
    let agent = Agent::new(world, policy);
    let mut stops = ENDS.to_vec();
    stops.push(Phase::Verifying);
    let m = drive(&agent, &stops, Duration::from_secs(150)).await;
    assert_ended_in(&m, Phase::Verifying, "the cutover");
    let target_port = agent.world.router.endpoint.lock().unwrap().1;
    assert_ne!(target_port, source_port, "traffic was routed to the target");
    wait_until(Duration::from_secs(10), "20 writes on the target", || {
        app.acks().iter().filter(|a| a.port == target_port).count() >= 20
    })
    .await;
    let session = Session::open(target_port, seq).await;
    wait_until(
        Duration::from_secs(10),
        "5 writes of the pinned session",
        || session.acks().len() >= 5,
    )
    .await;
    let writer = shared.writer_name().expect("the Aurora writer exists");
    OnTarget {
        agent,
        shared,
        app,
        session,
        source_port,
        target_port,
        writer,
    }
}

fn approve_rollback(shared: &Shared) -> Timestamp {
    shared
        .state
        .lock()
        .unwrap()
        .source_tags
        .insert(ROLLBACK_TAG.to_string(), "approve".to_string());
    Timestamp::now()
}

/// Index and entry of the first mutation in the world's log starting with `prefix`.
fn first(log: &[Mutation], prefix: &str) -> Option<(usize, Mutation)> {
    log.iter()
        .position(|m| m.what.starts_with(prefix))
        .map(|i| (i, log[i].clone()))
}

/// Rows the target committed itself (not replicated from the source), with `at` in
/// `[from, to)`. Read over the local socket, which the quarantine does not close.
async fn rows_on_target(shared: &Shared, from: Option<Timestamp>, to: Option<Timestamp>) -> i64 {
    let standby = shared.standby().expect("the target is kept");
    let client = connect(&standby.local())
        .await
        .expect("connect to the target");
    let micros = |t: Option<Timestamp>, default: i64| t.map_or(default, |t| t.as_microsecond());
    client
        .query_one(
            &format!(
                "SELECT count(*)::int8 FROM {TABLE} WHERE server_port = $1 \
                 AND at >= 'epoch'::timestamptz + $2::int8 * interval '1 microsecond' \
                 AND at < 'epoch'::timestamptz + $3::int8 * interval '1 microsecond'"
            ),
            &[
                &i32::from(standby.port),
                &micros(from, 0),
                &micros(to, i64::MAX / 4),
            ],
        )
        .await
        .expect("count the target's rows")
        .get(0)
}

/// The latest `at` of a row the target committed itself.
async fn last_write_on_target(shared: &Shared) -> Option<Timestamp> {
    let standby = shared.standby().expect("the target is kept");
    let client = connect(&standby.local())
        .await
        .expect("connect to the target");
    let micros: Option<i64> = client
        .query_one(
            &format!(
                "SELECT (extract(epoch FROM max(at)) * 1000000)::int8 FROM {TABLE} WHERE server_port = $1"
            ),
            &[&i32::from(standby.port)],
        )
        .await
        .expect("last write")
        .get(0);
    micros.map(|m| Timestamp::from_microsecond(m).expect("a timestamp"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_after_cutover_fences_and_reboots_aurora_before_routing_back() {
    let started = Instant::now();
    let OnTarget {
        agent,
        shared,
        mut app,
        mut session,
        source_port,
        target_port,
        writer,
    } = migrate_to_aurora("rollback", policy()).await;

    let approved = approve_rollback(&shared);
    let approved_clock = Instant::now();
    let m = drive(&agent, &ENDS, Duration::from_secs(90)).await;
    let approval_to_rolled_back = approved_clock.elapsed();
    assert_ended_in(&m, Phase::RolledBack, "the rollback");

    // The order: the quarantine group on Aurora, the writer's reboot, the source's groups
    // back, traffic back to the source. Each once.
    let log = shared.state.lock().unwrap().log.clone();
    let (fence_i, fence) = first(&log, "set_target_groups").expect("Aurora was fenced");
    let quarantine_group = {
        let s = shared.state.lock().unwrap();
        let t = s.target.as_ref().expect("the Aurora cluster is kept");
        assert_eq!(t.groups.len(), 1, "Aurora's groups: {:?}", t.groups);
        assert!(t.groups[0].starts_with("sg-quarantine-"), "{:?}", t.groups);
        t.groups[0].clone()
    };
    assert!(
        fence.what.ends_with(&format!(" {quarantine_group}")),
        "Aurora got more than the quarantine group: {}",
        fence.what
    );
    let (reboot_i, reboot) =
        first(&log, &format!("reboot_instance {writer}")).expect("Aurora's writer was rebooted");
    let (restore_i, restore) =
        first(&log, &format!("set_source_groups {APP_GROUP}")).expect("the source got its groups");
    let (back_i, back) =
        first(&log, &format!("route_traffic 127.0.0.1:{source_port}")).expect("routed back");
    assert!(
        fence_i < reboot_i && reboot_i < restore_i && restore_i < back_i,
        "mutations out of order: {:#?}",
        &log[fence_i.min(reboot_i)..]
    );
    assert!(approved < fence.at, "Aurora was fenced before the approval");
    for prefix in [
        "set_target_groups".to_string(),
        format!("reboot_instance {writer}"),
    ] {
        let n = log.iter().filter(|m| m.what.starts_with(&prefix)).count();
        assert_eq!(n, 1, "{prefix}: {n} requests");
    }

    // The writer restarted after the request, and the agent waited for it.
    let writer_events = shared.state.lock().unwrap().writer_events.clone();
    let (shutdowns, restarts): (Vec<_>, Vec<_>) = writer_events
        .iter()
        .partition(|e| e.kind == InstanceEventKind::Shutdown);
    assert_eq!((shutdowns.len(), restarts.len()), (1, 1), "writer events");
    let restarted = restarts[0].at;
    assert!(reboot.at < restarted && restarted < restore.at);
    assert_eq!(m.progress.target_restarted_at, Some(restarted));
    // The source's own events are apart: its one reboot during the cutover.
    assert!(
        shared
            .state
            .lock()
            .unwrap()
            .events
            .iter()
            .all(|e| e.at < fence.at)
    );

    // The pinned session survived the group change and kept writing, until the restart ended
    // it; every write after that fails.
    let pinned = session.acks();
    let errors = session.errors();
    let after_fence = pinned.iter().filter(|a| a.at > fence.at).count();
    assert!(
        after_fence > 0,
        "the pinned session wrote nothing between the group change and the reboot"
    );
    let first_error = errors
        .first()
        .expect("the restart ended the pinned session")
        .0;
    assert!(
        first_error > reboot.at,
        "the session failed before the reboot"
    );
    assert!(
        pinned
            .iter()
            .all(|a| a.at < first_error && a.at < restarted)
    );
    assert!(
        errors.iter().any(|(at, _)| *at > restarted),
        "no write of the pinned session was tried after the restart"
    );
    // A new session on the target is refused: the quarantine holds after the restart.
    assert!(
        connect(&tcp_config(target_port, SUPERUSER)).await.is_err(),
        "the fenced target accepts new TCP sessions"
    );

    // Nothing was acknowledged, nor committed, by the target after its restart.
    let app_acks = app.acks();
    assert!(
        app_acks
            .iter()
            .chain(pinned.iter())
            .filter(|a| a.port == target_port)
            .all(|a| a.at < restarted)
    );
    let last_on_target = last_write_on_target(&shared)
        .await
        .expect("writes on the target");
    assert!(last_on_target < restarted);

    // The alert names the count and the time range; the count is the target's own writes from
    // the cutover (`routed_at`) on.
    // The count starts where Aurora could first take a write: the route request.
    let routed = m.progress.route_requested_at.expect("route requested");
    let alert = agent
        .world
        .notifier
        .sent
        .lock()
        .unwrap()
        .iter()
        .find(|n| n.event == "writes-on-target")
        .cloned()
        .expect("a writes-on-target alert");
    let counted: i64 = alert
        .description
        .split("about ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in: {}", alert.description));
    assert!(
        alert.description.contains(&routed.to_string())
            && alert.description.contains(&restarted.to_string()),
        "the time range is not named: {}",
        alert.description
    );
    let from_routed = rows_on_target(&shared, Some(routed), None).await;
    let all_on_target = rows_on_target(&shared, None, None).await;
    assert!(counted > 0);
    assert_eq!(
        counted, from_routed,
        "the alert's count and the rows the target committed from the cutover on differ"
    );

    // Traffic is on the source again, and it takes writes.
    let last_route = agent
        .world
        .router
        .routes
        .lock()
        .unwrap()
        .last()
        .cloned()
        .expect("routes");
    assert_eq!(last_route.1.port, source_port);
    assert_eq!(agent.world.router.endpoint.lock().unwrap().1, source_port);
    assert!(back.at > restore.at);
    let rolled_back = Timestamp::now();
    wait_until(
        Duration::from_secs(20),
        "a write on the source after the rollback",
        || {
            app.acks()
                .iter()
                .any(|a| a.port == source_port && a.at > rolled_back)
        },
    )
    .await;
    app.stop().await;
    session.close().await;
    assert_eq!(
        shared.state.lock().unwrap().source_groups,
        vec![APP_GROUP.to_string()]
    );

    let before_fence = rows_on_target(&shared, None, Some(fence.at)).await;
    let fence_to_restart = rows_on_target(&shared, Some(fence.at), Some(restarted)).await;
    eprintln!(
        "rollback after cutover: {all_on_target} writes committed on the target ({before_fence} before the fence, \
         {fence_to_restart} between the group change and the writer's restart, {after_fence} of them by the pinned session; \
         {counted} counted in the alert from the route request, {} before it); \
         fence→restart {:.2} s, reboot request→restart {:.2} s, restart→routed back {:.2} s; \
         approval→RolledBack {:.1} s; run time {:.1} s",
        all_on_target - from_routed,
        restarted.duration_since(fence.at).as_secs_f64(),
        restarted.duration_since(reboot.at).as_secs_f64(),
        back.at.duration_since(restarted).as_secs_f64(),
        approval_to_rolled_back.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    eprintln!("writes-on-target: {}", alert.description);
}

/// The same rollback in a world where the writer's reboot answers success but never happens:
/// the agent fences Aurora, asks for the reboot (again after `reboot_reissue_after`) and waits.
/// It neither counts, nor gives the source its groups back, nor routes back, while the pinned
/// session keeps writing to Aurora through the group change. Once a reboot really happens, the
/// rollback finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_after_cutover_does_not_proceed_on_a_group_change_alone() {
    let OnTarget {
        agent,
        shared,
        mut app,
        mut session,
        source_port,
        target_port,
        writer,
    } = migrate_to_aurora("norestart", impatient_policy()).await;
    shared.skip_writer_reboot.store(true, Ordering::Relaxed);

    approve_rollback(&shared);
    let wait = Duration::from_secs(20);
    let held = drive_until(&agent, &ENDS, wait).await;
    assert!(
        held.is_err(),
        "the rollback ended without a restart: {held:?}"
    );
    let m = agent
        .world
        .store
        .latest_now(postgres::world::RESOURCE_ID)
        .expect("record");
    assert_eq!(m.phase, Phase::RollingBack);
    assert!(m.progress.target_restarted_at.is_none());

    let log = shared.state.lock().unwrap().log.clone();
    let (_, fence) = first(&log, "set_target_groups").expect("Aurora was fenced");
    let asked = log
        .iter()
        .filter(|m| m.what == format!("reboot_instance {writer} (skipped by the test)"))
        .count();
    assert!(
        asked >= 2,
        "the writer's reboot was asked for {asked} times"
    );
    assert!(
        first(&log, &format!("set_source_groups {APP_GROUP}")).is_none(),
        "the source got its groups back without Aurora's restart"
    );
    assert!(
        first(&log, &format!("route_traffic 127.0.0.1:{source_port}")).is_none(),
        "traffic was routed back without Aurora's restart"
    );
    assert_eq!(agent.world.router.endpoint.lock().unwrap().1, target_port);
    assert!(shared.state.lock().unwrap().writer_events.is_empty());
    assert!(
        !agent
            .world
            .notifier
            .sent
            .lock()
            .unwrap()
            .iter()
            .any(|n| n.event == "writes-on-target"),
        "Aurora's writes were counted while it still took them"
    );
    // Why it must wait: the session open before the group change still writes to Aurora.
    let late = fence.at + SignedDuration::from_secs(10);
    let still_writing = session.acks().iter().filter(|a| a.at > late).count();
    assert!(
        still_writing > 0 && session.errors().is_empty(),
        "the pinned session stopped writing without a restart"
    );

    // The reboot happens at last (the agent asks again): the rollback finishes.
    shared.skip_writer_reboot.store(false, Ordering::Relaxed);
    let m = drive(&agent, &ENDS, Duration::from_secs(60)).await;
    assert_eq!(m.phase, Phase::RolledBack, "{:?}", m.last_error);
    assert_eq!(agent.world.router.endpoint.lock().unwrap().1, source_port);
    assert!(
        !session.errors().is_empty(),
        "the restart ended the session"
    );
    app.stop().await;
    session.close().await;
    eprintln!(
        "without the writer's restart: held in RollingBack for {} s, the reboot asked {asked} times, \
         {still_writing} writes of the pinned session acknowledged by Aurora more than 10 s after its group change; \
         then rolled back once the reboot happened",
        wait.as_secs()
    );
}
