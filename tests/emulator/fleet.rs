//! A fleet: sources tagged together are admitted together, and fifty concurrent migrations
//! complete in one agent, sharing fleet describes.

use std::time::{Duration, Instant};

use serde_json::json;

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_migrations_complete_in_one_agent() {
    const N: usize = 50;
    let env = Env::new().await;
    // The shim reports AWS's default quotas (40 instances): raise them for a fleet of 50.
    env.shim
        .post(
            "config",
            json!({"quotas": {"DBClusters": 200, "DBInstances": 300, "DBClusterParameterGroups": 50,
                              "DBParameterGroups": 50, "ManualSnapshots": 200}}),
        )
        .await;
    let mut arns = Vec::new();
    let mut pairs = Vec::new();
    for i in 0..N {
        let id = format!("fleet-{i:02}");
        let source = env.migration_source(&id, true).await;
        arns.push(source.arn);
        pairs.push((id.clone(), source.names.writer));
    }
    let player = Player::start(&env, pairs, false);
    let mut policy = policy();
    policy.fast_poll = jiff::SignedDuration::from_secs(3);
    policy.slow_poll = jiff::SignedDuration::from_secs(4);
    let mut settings = env.settings.clone();
    settings.describe_cache_ttl = Duration::from_secs(2);
    let mut rs = runtime_settings();
    rs.concurrency = 16;
    rs.visibility_timeout_s = 30;
    let agent = env.run_agent_with(&settings, policy, rs).await;
    let calls = agent.calls.clone();
    // One resync message admits them all.
    env.send(&json!({"version": "0", "id": "r", "detail-type": "Scheduled Event", "source": "aws.events", "account": "123456789012", "time": jiff::Timestamp::now().to_string(), "region": REGION, "resources": [], "detail": {}}).to_string()).await;
    let t = Instant::now();
    wait_for(
        Duration::from_secs(900),
        "50 migrations completed",
        || async {
            let phases = env.phases().await;
            let done = phases.values().filter(|p| *p == "completed").count();
            let bad: Vec<_> = phases
                .iter()
                .filter(|(_, p)| ["failed", "rolledback"].contains(&p.as_str()))
                .collect();
            assert!(bad.is_empty(), "{bad:?}");
            done == N
        },
    )
    .await;
    let took = t.elapsed();
    let summary = agent.finish().await;
    player.stop();
    let by_op = calls.calls();
    eprintln!(
        "{N} migrations in {took:?}; {summary:?}\nAWS calls by operation:\n{}",
        calls.render()
    );
    let rds = env.shim.actions("rds").await;
    assert_eq!(
        rds.iter().filter(|(a, _)| a == "CreateDBCluster").count(),
        N
    );
    assert_eq!(
        rds.iter()
            .filter(|(a, _)| a == "PromoteReadReplicaDBCluster")
            .count(),
        N
    );
    // Shared describes: far fewer fleet describes than migration observations.
    let describes = by_op.get("rds:DescribeDBInstances").copied().unwrap_or(0);
    let ticks = by_op.get("sqs:SendMessage").copied().unwrap_or(0);
    assert!(
        describes < ticks,
        "DescribeDBInstances {describes} vs {ticks} wake-ups"
    );
}

/// One scheduled resync admits the sources it finds tagged together (`Agent::resync`,
/// `RESYNC_CONCURRENCY` at a time), not one source's first steps after another's. Each
/// source's first call to the table (the `Query` for its latest record) is held by the emulator
/// for `HELD`: admitted together, the sources' queries are all in flight at once, so they
/// arrive within `HELD` of each other; admitted one after another, each arrives only after the
/// one before was answered, `(N - 1) × HELD` from the first to the last.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sources_tagged_together_are_admitted_together_by_one_resync() {
    const N: usize = 4;
    const HELD: Duration = Duration::from_secs(3);
    let env = Env::new().await;
    for i in 0..N {
        env.source(&format!("together-{i}"), true).await;
    }
    let agent = env.run_agent().await;
    env.shim
        .faults(json!([{"service": "dynamodb", "action": "Query", "delay_ms": HELD.as_millis() as u64, "count": N}]))
        .await;
    // The emulator logs each call's arrival on this machine's clock.
    let sent = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    env.send(&json!({"version": "0", "id": "r", "detail-type": "Scheduled Event", "source": "aws.events", "account": "123456789012", "time": jiff::Timestamp::now().to_string(), "region": REGION, "resources": [], "detail": {}}).to_string()).await;
    for i in 0..N {
        env.wait_past(
            &format!("together-{i}"),
            "preparing",
            Duration::from_secs(120),
            &["failed", "rolledback"],
        )
        .await;
    }
    agent.finish().await;
    let arrivals: Vec<f64> = env
        .shim
        .calls()
        .await
        .iter()
        .filter(|c| c["service"] == "dynamodb" && c["action"] == "Query")
        .map(|c| c["time"].as_f64().unwrap())
        .filter(|t| *t >= sent)
        .take(N)
        .collect();
    assert_eq!(arrivals.len(), N, "one Query per source");
    let spread = arrivals[N - 1] - arrivals[0];
    assert!(
        spread < HELD.as_secs_f64(),
        "the {N} sources' first queries arrived over {spread:.1} s, each after the one before was answered ({HELD:?} each): admitted one after another"
    );
}
