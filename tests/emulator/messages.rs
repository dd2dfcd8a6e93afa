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
