//! A fleet: fifty concurrent migrations complete in one agent, sharing fleet describes.

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
