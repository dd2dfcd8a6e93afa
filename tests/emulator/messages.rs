//! Inbound messages that must do no harm: a malformed one goes to the DLQ; duplicate triggers,
//! a stale tick and an unknown kind change nothing (one attempt, one cluster).

use std::time::Duration;

use serde_json::json;

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_goes_to_the_dlq_while_duplicate_stale_and_unknown_messages_do_no_harm() {
    let env = Env::new().await;
    let Source { arn, rid, names } = env.migration_source("orders-pg", true).await;
    let player = Player::one(&env, "orders-pg", &names, false);
    let agent = env.run_agent().await;
    env.send("{this is not json").await;
    env.send(&json!({"source": "aws.ec2", "detail-type": "EC2 Instance State-change Notification", "detail": {}}).to_string()).await;
    // The same trigger three times, plus a CloudTrail-style duplicate through the tag event.
    for _ in 0..3 {
        env.send_tag_event(&arn, &["aurora-migration"]).await;
    }
    // A tick with a token the record never had: dropped without observing.
    env.send(&json!({"kind": "aurora-migrator.tick", "version": 1, "resource_id": rid, "attempt": 1, "token": 987654}).to_string()).await;

    env.wait_past("orders-pg", "replicating", Duration::from_secs(120), &[])
        .await;
    wait_for(
        Duration::from_secs(120),
        "the DLQ holding the malformed message",
        || async { env.dlq_count().await >= 1 },
    )
    .await;
    let summary = agent.finish().await;
    player.stop();
    assert_eq!(
        env.dlq_count().await,
        1,
        "only the malformed message is dead-lettered"
    );
    let dead = env.dlq_messages().await;
    assert_eq!(dead[0].body(), Some("{this is not json"));
    // One attempt, one cluster, whatever the duplicates.
    let rds = env.shim.actions("rds").await;
    assert_eq!(
        rds.iter().filter(|(a, _)| a == "CreateDBCluster").count(),
        1
    );
    let items = env.table_items().await;
    let attempts: Vec<_> = items
        .iter()
        .filter(|i| i["sk"].as_s().unwrap().starts_with("attempt#"))
        .collect();
    assert_eq!(attempts.len(), 1);
    assert!(
        summary.left >= 2,
        "the malformed message was left twice before the DLQ: {summary:?}"
    );
}

/// A tag event is news: the step it starts describes the source as it is now, not from the
/// fleet describe snapshot taken before the tag was set. An agent whose snapshot lives for two
/// minutes acts on an approval set while the migration waits for it within seconds (before:
/// not until the snapshot expired, up to its TTL later).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_event_is_acted_on_at_once_whatever_the_describe_snapshot_holds() {
    let env = Env::new().await;
    let Source { arn, names, .. } = env.migration_source("orders-pg", true).await;
    let player = Player::one(&env, "orders-pg", &names, false);
    let mut manual = policy();
    manual.cutover = aurora_migrator::core::policy::CutoverPolicy::ManualApproval;
    // The harness's agent (a describe snapshot of 0.8 s) builds the replica and waits.
    let first = env
        .run_agent_with(&env.settings, manual.clone(), runtime_settings())
        .await;
    env.send_tag_event(&arn, &["aurora-migration"]).await;
    env.wait_past(
        "orders-pg",
        "awaitingcutover",
        Duration::from_secs(120),
        &[],
    )
    .await;
    first.finish().await;
    // Its successor keeps a snapshot for two minutes: its first look takes one (no approval).
    let mut long_snapshot = env.settings.clone();
    long_snapshot.describe_cache_ttl = Duration::from_secs(120);
    let agent = env
        .run_agent_with(&long_snapshot, manual, runtime_settings())
        .await;
    let described = |calls: &aurora_migrator::aws::CallCounter| {
        calls
            .calls()
            .get("rds:DescribeDBInstances")
            .copied()
            .unwrap_or(0)
    };
    wait_for(
        Duration::from_secs(30),
        "the successor's first look",
        || async { described(&agent.calls) > 0 },
    )
    .await;
    assert_eq!(env.phase("orders-pg").await, "awaitingcutover");
    env.tag_source(&arn, "aurora-migration:approve", "true")
        .await;
    env.wait_past(
        "orders-pg",
        "quiescing",
        Duration::from_secs(15),
        &["failed"],
    )
    .await;
    agent.finish().await;
    player.stop();
}
