//! Faults the agent rolls back from or retries through: an abort and a spent write budget during
//! Draining roll back without promoting; throttling and 5xx on RDS, CloudWatch and DynamoDB are
//! retried and the migration completes with one cluster.

use std::time::Duration;

use aurora_migrator::aws::AwsWorld;
use aurora_migrator::core::machine::SNAPSHOT_EXISTS;
use aurora_migrator::core::policy::Policy;
use aurora_migrator::ports::{ErrorKind, Rds};
use serde_json::json;

use super::*;

/// `orders-pg` tagged and migrated with this write budget until it is fenced in Draining, where
/// its slot lag never reaches 0 (a stale logical slot): replicating is fine (64 MiB → 128 MiB,
/// under the threshold), but the Draining proof never holds. The source, the CloudWatch player
/// and the running agent.
async fn held_in_draining(
    env: &Env,
    write_budget: jiff::SignedDuration,
) -> (Source, Player, RunningAgent) {
    let source = env.migration_source("orders-pg", true).await;
    let player = Player::one(env, "orders-pg", &source.names, true);
    let policy = Policy {
        write_unavailability_budget: write_budget,
        ..policy()
    };
    let agent = env
        .run_agent_with(&env.settings, policy, runtime_settings())
        .await;
    env.send_tag_event(&source.arn, &["aurora-migration"]).await;
    env.wait_past("orders-pg", "draining", Duration::from_secs(120), &[])
        .await;
    (source, player, agent)
}

/// Held in Draining by a stale slot ([`held_in_draining`]), then aborted by the owners or out
/// of its write budget (20 s): both roll back without promoting.
async fn stale_slot_rollback(abort: bool) {
    let env = Env::new().await;
    let budget = if abort {
        policy().write_unavailability_budget
    } else {
        jiff::SignedDuration::from_secs(20)
    };
    let (Source { arn, rid, names }, player, agent) = held_in_draining(&env, budget).await;
    // The agent took hold of the source with its own marker before it changed anything: the
    // task role's permissions hold through it (infra/tests/test_iam_policy.py).
    let marker = env
        .instance("orders-pg")
        .await
        .unwrap()
        .tag_list()
        .iter()
        .find(|t| t.key() == Some("aurora-migration:marker"))
        .and_then(|t| t.value().map(str::to_string));
    assert_eq!(marker.as_deref(), Some(rid.as_str()));
    if abort {
        // An IaC apply removes the trigger while the source is quarantined: the abort still
        // rolls back (the agent's permissions hold through the marker, not the trigger).
        env.aws
            .rds
            .remove_tags_from_resource()
            .resource_name(&arn)
            .tag_keys("aurora-migration")
            .send()
            .await
            .unwrap();
        env.tag_source(&arn, "aurora-migration:abort", "true").await;
    }
    // An abort ends in `aborted`, a failure (the budget) in `rolledback`; both roll back.
    let end = if abort { "aborted" } else { "rolledback" };
    env.wait_past("orders-pg", end, Duration::from_secs(120), &[])
        .await;
    agent.finish().await;
    player.stop();
    let rds = env.shim.actions("rds").await;
    assert!(
        !rds.iter().any(|(a, _)| a == "PromoteReadReplicaDBCluster"),
        "never promoted"
    );
    // The original groups are back, the replica is gone, the source is intact.
    assert_eq!(groups_of(&env, "orders-pg").await, vec![env.app_sg.clone()]);
    let clusters = env.aws.rds.describe_db_clusters().send().await.unwrap();
    assert!(
        clusters
            .db_clusters()
            .iter()
            .all(|c| c.db_cluster_identifier() != Some(names.cluster.as_str()))
    );
    assert!(
        rds.iter()
            .any(|(a, p)| a == "DeleteDBCluster"
                && p["DBClusterIdentifier"] == names.cluster.as_str())
    );
    let mut notes = Vec::new();
    env.notifications(&mut notes).await;
    let rolled: Vec<_> = notes
        .iter()
        .filter(|(_, _, a)| {
            a["phase"] == "rolledback" || a["phase"] == "rollingback" || a["phase"] == "aborted"
        })
        .collect();
    assert!(!rolled.is_empty(), "a rollback was notified");
    if !abort {
        assert!(
            notes
                .iter()
                .any(|(_, _, a)| a["severity"] == "error" || a["severity"] == "warning"),
            "an alert was sent"
        );
    }
    // `status` (the binary, reading the table) lists the finished migration and why it ended.
    let status = AgentProcess::status(&env);
    let row = status
        .lines()
        .find(|l| l.starts_with("orders-pg"))
        .unwrap_or_else(|| panic!("status lists the migration:\n{status}"));
    assert!(row.contains(end), "{row}");
    if !abort {
        assert!(row.contains("write-unavailability budget"), "{row}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_during_draining_with_a_stale_slot_rolls_back_losslessly_without_promoting() {
    stale_slot_rollback(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_budget_running_out_with_a_stale_slot_rolls_back_by_itself() {
    stale_slot_rollback(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_and_5xx_on_describe_create_modify_promote_are_retried_and_it_completes() {
    let env = Env::new().await;
    let Source { arn, names, .. } = env.migration_source("orders-pg", true).await;
    env.shim
        .faults(json!([
            {"service": "rds", "action": "DescribeDBInstances", "status": 400, "code": "Throttling", "message": "Rate exceeded", "count": 2},
            {"service": "rds", "action": "CreateDBCluster", "status": 500, "code": "InternalFailure", "count": 1, "after_success": true},
            {"service": "rds", "action": "ModifyDBInstance", "status": 400, "code": "Throttling", "message": "Rate exceeded", "count": 3},
            {"service": "rds", "action": "PromoteReadReplicaDBCluster", "status": 503, "code": "ServiceUnavailable", "count": 5},
            {"service": "monitoring", "action": "GetMetricData", "status": 400, "code": "Throttling", "count": 2},
            {"service": "dynamodb", "action": "PutItem", "status": 500, "code": "InternalServerError", "count": 2}
        ]))
        .await;
    let player = Player::one(&env, "orders-pg", &names, false);
    let agent = env.run_agent().await;
    let calls = agent.calls.clone();
    env.send_tag_event(&arn, &["aurora-migration"]).await;
    let never = ["failed", "rolledback"];
    env.wait_past("orders-pg", "completed", Duration::from_secs(300), &never)
        .await;
    agent.finish().await;
    player.stop();
    let all = env.shim.calls().await;
    let faulted = |action: &str| {
        all.iter()
            .filter(|c| c["action"] == action && c.get("fault").is_some_and(|f| !f.is_null()))
            .count()
    };
    assert_eq!(faulted("DescribeDBInstances"), 2);
    assert_eq!(faulted("CreateDBCluster"), 1);
    assert_eq!(faulted("ModifyDBInstance"), 3);
    assert_eq!(faulted("PromoteReadReplicaDBCluster"), 5);
    // The lost CreateDBCluster answer was retried, found "already exists" and ours: one cluster.
    let clusters = env.aws.rds.describe_db_clusters().send().await.unwrap();
    assert_eq!(clusters.db_clusters().len(), 1);
    // 5 × 503 outlasted the SDK's 4 attempts: surfaced once as retryable, then the phase machine
    // asked again after its backoff.
    let errors = calls.errors();
    assert_eq!(
        errors.get(&(
            "rds:PromoteReadReplicaDBCluster".to_string(),
            ErrorKind::Retryable
        )),
        Some(&1),
        "{errors:?}"
    );
    let rds = env.shim.actions("rds").await;
    assert_eq!(
        rds.iter()
            .filter(|(a, _)| a == "PromoteReadReplicaDBCluster")
            .count(),
        6
    );
}

/// RDS refuses a deletion whose final snapshot's name is taken, in the call that would take it,
/// and deletes nothing; the AWS adapter reports the refusal as the phase machine reads it (a
/// conflict whose message starts with `SNAPSHOT_EXISTS`: `core_edges::a_snapshot_with_the_final_name_taken…`
/// holds the deletion on it, alerts, and asks again). Decommissioning describes no snapshot
/// before it asks, so this refusal is the name's only check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deletion_whose_final_snapshot_name_is_taken_is_refused_and_deletes_nothing() {
    let env = Env::new().await;
    env.source("taken-pg", false).await;
    env.aws
        .rds
        .create_db_snapshot()
        .db_instance_identifier("taken-pg")
        .db_snapshot_identifier("taken-pg-final")
        .send()
        .await
        .unwrap();
    let world = AwsWorld::connect(&env.settings).await.unwrap();
    let err = world
        .rds
        .delete_source("taken-pg", "taken-pg-final")
        .await
        .expect_err("the name is taken");
    assert_eq!(err.kind, ErrorKind::Conflict, "{err:?}");
    assert!(err.message.starts_with(SNAPSHOT_EXISTS), "{err:?}");
    assert!(
        env.instance("taken-pg").await.is_some(),
        "a refused deletion deletes nothing"
    );
}

/// The security groups on the instance (which must exist).
async fn groups_of(env: &Env, id: &str) -> Vec<String> {
    let instance = env.instance(id).await.expect("the source is kept");
    instance
        .vpc_security_groups()
        .iter()
        .filter_map(|g| g.vpc_security_group_id().map(str::to_string))
        .collect()
}

/// `ModifyDBInstance` with `NewDBInstanceIdentifier`, applied at once (a person renaming).
async fn rename(env: &Env, from: &str, to: &str) {
    env.aws
        .rds
        .modify_db_instance()
        .db_instance_identifier(from)
        .new_db_instance_identifier(to)
        .apply_immediately(true)
        .send()
        .await
        .unwrap();
}

/// A person renames the source while it is fenced in Draining (a stale slot holds the proof
/// back). Taken for deleted, the migration ended Failed with the source left fenced; now the
/// agent finds it by its resource id, says so and holds. Renamed back, the migration goes on:
/// the owners' abort rolls it back and the source gets its groups again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_renamed_mid_cutover_is_held_fenced_not_taken_for_deleted() {
    let env = Env::new().await;
    // A write budget that outlasts the wait below: the migration stays in Draining.
    let budget = jiff::SignedDuration::from_secs(600);
    let (Source { arn, .. }, player, agent) = held_in_draining(&env, budget).await;
    rename(&env, "orders-pg", "orders-pg-renamed").await;
    let mut notes = Vec::new();
    // While CloudWatch is awaited the metric path's looks read the source from the fleet
    // snapshot, up to `aws::rds::cache::SNAPSHOT_WILL_DO_AGE` (3 minutes) old: the first look
    // after it describes the name and finds it gone.
    let deadline = std::time::Instant::now() + Duration::from_secs(240);
    let told = loop {
        env.notifications(&mut notes).await;
        if let Some((_, message, _)) = notes
            .iter()
            .find(|(_, m, _)| m.to_string().contains("is now named orders-pg-renamed"))
        {
            break message.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the rename is told: {notes:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(told.to_string().contains("still fenced"), "{told}");
    // Held, not failed, and still fenced, for a few more looks.
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(env.phases().await["orders-pg"], "draining");
    assert!(
        !groups_of(&env, "orders-pg-renamed")
            .await
            .contains(&env.app_sg),
        "still fenced"
    );
    rename(&env, "orders-pg-renamed", "orders-pg").await;
    env.tag_source(&arn, "aurora-migration:abort", "true").await;
    env.wait_past(
        "orders-pg",
        "aborted",
        Duration::from_secs(120),
        &["failed"],
    )
    .await;
    agent.finish().await;
    player.stop();
    assert_eq!(groups_of(&env, "orders-pg").await, vec![env.app_sg.clone()]);
    let rds = env.shim.actions("rds").await;
    assert!(!rds.iter().any(|(a, _)| a == "PromoteReadReplicaDBCluster"));
}
