//! Two agents, one table: two agent binaries share the queue, the table and the topic; the one
//! holding the lease of a migration in its cutover is SIGKILLed, the survivor takes that lease
//! over once it lapses (a new token) and completes every migration, with nothing in the DLQ.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::*;

/// `MIGRATOR_LEASE` of both binaries: short, so that the takeover is quick to see.
const LEASE: Duration = Duration::from_secs(6);
/// The cutover's phases: a kill in one of them costs writes (the lease is what bounds it).
const CUTOVER: [&str; 4] = ["quiescing", "draining", "promoting", "routing"];

/// A record's lease as its item holds it.
#[derive(Clone, Debug, PartialEq)]
struct LeaseSeen {
    holder: String,
    token: u64,
    /// Unix milliseconds, by the taker's clock (this machine's).
    expires_ms: i64,
}

impl LeaseSeen {
    /// The host part of the holder name (`HOSTNAME/pid/start-ms`): which binary holds it.
    fn host(&self) -> &str {
        self.holder.split('/').next().unwrap_or("")
    }
}

/// A record as the watcher saw it.
#[derive(Clone, Debug, PartialEq)]
struct Seen {
    phase: String,
    lease: Option<LeaseSeen>,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// The migration records of the table (by source), with their leases.
async fn records(ddb: &aws_sdk_dynamodb::Client, table: &str) -> BTreeMap<String, Seen> {
    let scan = ddb.scan().table_name(table).send().await.unwrap();
    let number = |i: &Item, k: &str| -> Option<i64> { i.get(k)?.as_n().ok()?.parse().ok() };
    scan.items()
        .iter()
        .filter_map(|i| {
            let lease = (|| {
                Some(LeaseSeen {
                    holder: i.get("lease_holder")?.as_s().ok()?.clone(),
                    token: number(i, "lease_token")? as u64,
                    expires_ms: number(i, "lease_expires")?,
                })
            })();
            Some((
                i.get("source")?.as_s().ok()?.clone(),
                Seen {
                    phase: i.get("phase")?.as_s().ok()?.clone(),
                    lease,
                },
            ))
        })
        .collect()
}

/// Every change of every record (phase or lease), as seen by polling the table every 100 ms.
struct Watcher {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    changes: Arc<Mutex<Vec<(Instant, String, Seen)>>>,
}

impl Watcher {
    fn start(env: &Env) -> Watcher {
        let (ddb, table) = (env.aws.ddb.clone(), env.settings.table.clone());
        let stop = CancellationToken::new();
        let changes = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn({
            let (stop, changes) = (stop.clone(), changes.clone());
            async move {
                let mut last: BTreeMap<String, Seen> = BTreeMap::new();
                while !stop.is_cancelled() {
                    let now = records(&ddb, &table).await;
                    let at = Instant::now();
                    {
                        let mut log = changes.lock().unwrap();
                        for (source, seen) in &now {
                            if last.get(source) != Some(seen) {
                                log.push((at, source.clone(), seen.clone()));
                            }
                        }
                    }
                    last = now;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        });
        Watcher {
            stop,
            task,
            changes,
        }
    }

    /// The latest of each record.
    fn latest(&self) -> BTreeMap<String, Seen> {
        let log = self.changes.lock().unwrap();
        log.iter()
            .map(|(_, s, seen)| (s.clone(), seen.clone()))
            .collect()
    }

    /// The first change of `source` at or after `since` that `f` holds for.
    fn first_after(
        &self,
        source: &str,
        since: Instant,
        f: impl Fn(&Seen) -> bool,
    ) -> Option<(Instant, Seen)> {
        let log = self.changes.lock().unwrap();
        log.iter()
            .find(|(at, s, seen)| *at >= since && s == source && f(seen))
            .map(|(at, _, seen)| (*at, seen.clone()))
    }

    /// Every lease `source`'s record showed, in order: (holder, token), each once.
    fn leases(&self, source: &str) -> Vec<(String, u64)> {
        let log = self.changes.lock().unwrap();
        let mut out: Vec<(String, u64)> = Vec::new();
        for (_, s, seen) in log.iter() {
            if let (true, Some(l)) = (s == source, &seen.lease) {
                let this = (l.holder.clone(), l.token);
                if out.last() != Some(&this) {
                    out.push(this);
                }
            }
        }
        out
    }

    async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// The lines of an agent's JSON log at `level` (e.g. "WARN").
fn logged(log: &std::path::Path, level: &str) -> Vec<String> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["level"] == level)
        .map(|v| v.to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_agents_one_killed_mid_cutover_the_survivor_takes_its_lease_over_and_completes_all() {
    // The template's redrive (5 receives) and the harness's 6 s visibility.
    let env = Env::with_queue(6, 5).await;
    let ids = ["orders-pg", "billing-pg", "stock-pg"];
    let mut sources = Vec::new();
    for id in ids {
        sources.push((id, env.migration_source(id, true).await));
    }
    let player = Player::start(
        &env,
        sources
            .iter()
            .map(|(id, s)| (id.to_string(), s.names.writer.clone()))
            .collect(),
        false,
    );
    let lease = format!("{}s", LEASE.as_secs());
    let start = |host: &str| {
        AgentProcess::start_with(
            &env,
            &format!("two-agents-{host}"),
            &[
                ("HOSTNAME", host),
                ("MIGRATOR_LEASE", &lease),
                ("MIGRATOR_MESSAGE_VISIBILITY", "6s"),
                // The deferrals to the other agent's lease are logged at debug.
                ("RUST_LOG", "info,aurora_migrator::agent::lease=debug"),
            ],
        )
    };
    let mut agents: BTreeMap<&str, AgentProcess> =
        [("agent-a", start("agent-a")), ("agent-b", start("agent-b"))].into();
    let watcher = Watcher::start(&env);
    let started = Instant::now();
    for (_, s) in &sources {
        env.send_tag_event(&s.arn, &["aurora-migration"]).await;
    }

    // A migration in its cutover under a live lease (a second of it left at least): its holder
    // is killed.
    let (victim, held) = loop {
        let live = watcher.latest().into_iter().find_map(|(source, seen)| {
            let l = seen.lease.filter(|l| l.expires_ms > now_ms() + 1000)?;
            CUTOVER
                .contains(&seen.phase.as_str())
                .then_some((source, l))
        });
        if let Some(found) = live {
            break found;
        }
        let phases = env.phases().await;
        assert!(
            started.elapsed() < Duration::from_secs(150),
            "no migration reached its cutover under a live lease in 150 s: {phases:?}"
        );
        assert!(
            !phases
                .values()
                .any(|p| ["failed", "rolledback"].contains(&p.as_str())),
            "{phases:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let killed_host = held.host().to_string();
    let killed = agents.remove(killed_host.as_str()).unwrap();
    let killed_log = killed.log.clone();
    let phase_at_kill = watcher.latest()[&victim].phase.clone();
    killed.kill();
    let killed_at = Instant::now();
    let killed_ms = now_ms();
    let (survivor_host, survivor) = agents.pop_first().unwrap();
    eprintln!(
        "killed {killed_host} at {:?}: it held {victim}'s lease in {phase_at_kill} ({held:?}, {} ms left)",
        started.elapsed(),
        held.expires_ms - killed_ms
    );
    // The lease as the dead agent left it (a renewal may have landed just before the kill).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let left = records(&env.aws.ddb, &env.settings.table).await[&victim]
        .lease
        .clone()
        .unwrap();

    // The survivor takes the lease once it lapses: a new holder, a greater token.
    let limit = LEASE + Duration::from_secs(20);
    let (seen_at, taken) = loop {
        let took = watcher.first_after(&victim, killed_at, |s| {
            s.lease.as_ref().is_some_and(|l| l.host() == survivor_host)
        });
        if let Some((at, seen)) = took {
            break (at, seen.lease.unwrap());
        }
        assert!(
            killed_at.elapsed() < limit,
            "the survivor ({survivor_host}) did not take {victim}'s lease over within {limit:?} of \
             the kill: the record is still {:?} (the dead agent left {left:?})",
            watcher.latest().get(&victim)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let seen_after = seen_at - killed_at;
    // When the survivor took it, by its clock: the lease's expiry less its time (the first
    // renewal comes a third of the lease later, after the watcher's 100 ms look).
    let taken_ms = taken.expires_ms - LEASE.as_millis() as i64;
    eprintln!(
        "{survivor_host} took {victim}'s lease {seen_after:?} after the kill (taken {} ms after \
         the kill, {} ms after the dead lease lapsed): token {} -> {}",
        taken_ms - killed_ms,
        taken_ms - left.expires_ms,
        left.token,
        taken.token
    );
    assert!(
        taken.token > left.token,
        "a taking adds to the token: {left:?} then {taken:?}"
    );
    assert!(
        taken_ms >= left.expires_ms,
        "the survivor took a live lease: taken at {taken_ms} ms, the dead one's lapsed at {} ms",
        left.expires_ms
    );
    // The binaries hold leases of MIGRATOR_LEASE: the dead one's lapsed within it of the kill.
    assert!(
        left.expires_ms <= killed_ms + LEASE.as_millis() as i64,
        "the dead agent's lease ran past {LEASE:?} from the kill: {left:?}"
    );
    // Killing an agent mid-cutover costs one lease time, plus the delivery of the message that
    // wakes the survivor (the dead agent's own message after its visibility, or a deferred
    // tick, whole seconds): 1–2 s alone, up to 6 s when the whole emulator suite loads the
    // machine (11.0 s from the kill in one such run).
    assert!(
        seen_after <= LEASE + Duration::from_secs(10),
        "takeover took {seen_after:?} (lease {LEASE:?})"
    );

    // The survivor completes every migration.
    wait_for(
        Duration::from_secs(150),
        "every migration completed by the survivor",
        || async {
            let phases = env.phases().await;
            assert!(
                !phases
                    .values()
                    .any(|p| ["failed", "rolledback"].contains(&p.as_str())),
                "{phases:?}"
            );
            phases.len() == ids.len() && phases.values().all(|p| p == "completed")
        },
    )
    .await;
    let took = started.elapsed();
    // What the kill cost the victim's cutover: its next phase after the kill (the takeover is
    // one lease; an action the dead agent recorded as issued but had not sent is sent again
    // only after the policy's cutover reissue time, 30 s by default).
    if let Some((at, seen)) = watcher.first_after(&victim, killed_at, |s| s.phase != phase_at_kill)
    {
        eprintln!(
            "{victim} left {phase_at_kill} for {} {:?} after the kill",
            seen.phase,
            at - killed_at
        );
    }
    let survivor_log = survivor.log.clone();
    let exit = survivor.terminate();
    // The fencing: every taking of a record's lease had a greater token than the one before, so
    // no token was ever held by two agents.
    for id in ids {
        let leases = watcher.leases(id);
        eprintln!("{id}: leases held {leases:?}");
        assert!(
            leases.windows(2).all(|w| w[1].1 > w[0].1),
            "{id}: a lease taken without a greater token: {leases:?}"
        );
    }
    watcher.stop().await;
    player.stop();
    eprintln!("{} migrations completed in {took:?}", ids.len());
    assert!(exit.success(), "survivor's SIGTERM exit: {exit:?}");

    // Nothing reached the DLQ; one cluster each, created once; each source deleted once.
    assert_eq!(env.dlq_count().await, 0, "messages in the DLQ");
    let calls = env.shim.calls().await;
    let clusters = env.aws.rds.describe_db_clusters().send().await.unwrap();
    assert_eq!(clusters.db_clusters().len(), ids.len());
    for (id, s) in &sources {
        let cluster = s.names.cluster.as_str();
        assert_eq!(
            effective(&calls, ("CreateDBCluster", "DBClusterIdentifier", cluster)),
            1,
            "{id}: cluster created once"
        );
        assert_eq!(
            effective(&calls, ("DeleteDBInstance", "DBInstanceIdentifier", id)),
            1,
            "{id}: source deleted once"
        );
        assert!(env.instance(id).await.is_none(), "{id} deleted");
        let promotions = (calls.iter())
            .filter(|c| {
                c["action"] == "PromoteReadReplicaDBCluster"
                    && c["params"]["DBClusterIdentifier"] == cluster
            })
            .count();
        eprintln!("{id}: {promotions} promotion request(s)");
    }
    for (name, log) in [("killed", &killed_log), ("survivor", &survivor_log)] {
        let errors = logged(log, "ERROR");
        let warnings = logged(log, "WARN");
        let deferred = logged(log, "DEBUG")
            .iter()
            .filter(|l| l.contains("another agent"))
            .count();
        eprintln!(
            "{name} agent ({}): {deferred} deferral(s) to the other's lease, {} warning(s), {} error(s)",
            log.display(),
            warnings.len(),
            errors.len()
        );
        for l in warnings.iter().chain(&errors) {
            eprintln!("  {l}");
        }
    }
}
