//! Real PostgreSQL behind the agent's ports: servers, a PostgreSQL-backed `World`, a writer
//! client, and the loop that delivers the agent's own ticks.
#![allow(dead_code)]

pub mod access;
pub mod fakes;
pub mod metrics;
pub mod rds;
pub mod server;
#[path = "../common/source_fixture.rs"]
pub mod source_fixture;
pub mod world;
pub mod writer;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use aurora_migrator::agent::{Agent, Disposition};
use aurora_migrator::core::{Migration, Phase};
use aurora_migrator::ports::QueueMessage;

use world::{PgWorld, RESOURCE_ID, SOURCE_ID};

/// The phases a drive stops at when nothing else is asked for: the ends, and Paused.
pub const ENDS: [Phase; 5] = [
    Phase::Completed,
    Phase::Failed,
    Phase::RolledBack,
    Phase::Aborted,
    Phase::Paused,
];

/// Starts the migration of the source, then handles the ticks the agent schedules (honouring
/// their delay) until the record reaches one of `stop_at`. Panics with the record on timeout.
pub async fn drive(agent: &Agent<PgWorld>, stop_at: &[Phase], timeout: Duration) -> Migration {
    match drive_until(agent, stop_at, timeout).await {
        Ok(m) => m,
        Err(why) => panic!("{why}"),
    }
}

/// Like [`drive`], but a timeout is an answer: `Err` with the record's state, after `timeout`.
/// Also the tag-change event: an in-flight migration is stepped at once.
pub async fn drive_until(
    agent: &Agent<PgWorld>,
    stop_at: &[Phase],
    timeout: Duration,
) -> Result<Migration, String> {
    let start = Instant::now();
    agent
        .on_source(SOURCE_ID)
        .await
        .expect("the agent could not start the migration");
    let world = &agent.world;
    let mut last = None;
    let mut handled = 0u32;
    loop {
        if let Some(m) = world.store.latest_now(RESOURCE_ID) {
            if last != Some(m.phase) {
                eprintln!(
                    "[{:>5.1}s] phase {}",
                    start.elapsed().as_secs_f64(),
                    m.phase
                );
                last = Some(m.phase);
            }
            if stop_at.contains(&m.phase) {
                eprintln!(
                    "[{:>5.1}s] stopped at {} after {handled} messages",
                    start.elapsed().as_secs_f64(),
                    m.phase
                );
                return Ok(m);
            }
        }
        let describe = || {
            let m = world.store.latest_now(RESOURCE_ID);
            format!(
                "phase {:?}, last error {:?}, history {:?}",
                m.as_ref().map(|m| m.phase),
                m.as_ref().and_then(|m| m.last_error.clone()),
                m.as_ref()
                    .map(|m| m.history.iter().map(|h| h.phase).collect::<Vec<_>>())
            )
        };
        if start.elapsed() >= timeout {
            return Err(format!(
                "the migration did not reach {stop_at:?} within {timeout:?}: {}",
                describe()
            ));
        }
        let Some((message, visible_at)) = world.queue.take_next() else {
            panic!("the agent scheduled no wake-up: {}", describe());
        };
        let now = Instant::now();
        if visible_at > now {
            // Not past the deadline: a tick due later is put back for the next drive.
            let deadline = start + timeout;
            if visible_at > deadline {
                tokio::time::sleep(deadline.saturating_duration_since(now)).await;
                // Not received: it goes back as it was.
                let unseen = QueueMessage {
                    receive_count: message.receive_count.saturating_sub(1),
                    ..message
                };
                world.queue.put_back(
                    &unseen,
                    visible_at.saturating_duration_since(Instant::now()),
                );
                continue;
            }
            tokio::time::sleep(visible_at - now).await;
        }
        handled += 1;
        if let Disposition::Leave(why) = agent.handle_message(&message).await {
            eprintln!("[driver] message left for redelivery: {why}");
            world.queue.put_back(&message, Duration::from_secs(1));
        }
    }
}

/// Checks that `what` (the migration, the cutover, …) ended in `phase`; otherwise says where it
/// ended and why.
pub fn assert_ended_in(m: &Migration, phase: Phase, what: &str) {
    assert_eq!(
        m.phase, phase,
        "{what} ended in {} ({:?})",
        m.phase, m.last_error
    );
}

/// The sequence numbers in a `pg_dump --data-only` file of the writes table.
pub fn seqs_in_dump(file: &Path) -> BTreeSet<i64> {
    let text = std::fs::read_to_string(file)
        .unwrap_or_else(|e| panic!("read the snapshot {}: {e}", file.display()));
    let mut out = BTreeSet::new();
    let mut in_copy = false;
    for line in text.lines() {
        if in_copy {
            if line == "\\." {
                in_copy = false;
            } else if let Some(seq) = line.split('\t').next().and_then(|s| s.parse().ok()) {
                out.insert(seq);
            }
        } else if line.starts_with(&format!("COPY public.{} ", server::TABLE)) {
            in_copy = true;
        }
    }
    out
}

/// Second-scale timings so a whole migration takes seconds in the real-PostgreSQL world, and a
/// generous write budget so a loaded two-core machine does not make the happy path roll back.
pub fn fast_policy(budget: jiff::SignedDuration) -> aurora_migrator::core::Policy {
    use aurora_migrator::core::policy::CutoverPolicy;
    use jiff::SignedDuration;
    aurora_migrator::core::Policy {
        cutover: CutoverPolicy::Automatic,
        lag_sustain: SignedDuration::from_secs(2),
        soak: SignedDuration::from_secs(3),
        retention: SignedDuration::from_secs(1),
        fast_poll: SignedDuration::from_secs(1),
        slow_poll: SignedDuration::from_secs(1),
        write_unavailability_budget: budget,
        ..aurora_migrator::core::Policy::default()
    }
}

/// Every row of the writes table on a server: seq → the port of the server that committed it.
pub async fn rows(config: &tokio_postgres::Config) -> std::collections::BTreeMap<i64, Option<i32>> {
    let client = server::connect(config)
        .await
        .expect("connect to read the table");
    client
        .query(
            &format!("SELECT seq, server_port FROM {}", server::TABLE),
            &[],
        )
        .await
        .expect("read the table")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// The acknowledged sequence numbers missing from `rows` (a server's table), in order.
pub fn missing(
    acks: &[writer::Ack],
    rows: &std::collections::BTreeMap<i64, Option<i32>>,
) -> Vec<i64> {
    acks.iter()
        .map(|a| a.seq)
        .filter(|s| !rows.contains_key(s))
        .collect()
}
