//! The agent end to end against the moto emulator (behind the project's shim), over HTTP, with
//! the real AWS SDK adapters, the DynamoDB store and the SQS runtime. The tests play AWS's part
//! where moto cannot: CloudWatch values (PutMetricData), scripted faults.
//!
//! Needs `.venv` (scripts/setup-python). Each test starts its own emulator process.

mod emulator;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use aurora_migrator::core::naming::target_names;
use aurora_migrator::ports::ErrorKind;
use emulator::*;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// RDS actions that change something.
fn is_mutation(action: &str) -> bool {
    !(action.starts_with("Describe") || action.starts_with("List"))
}

fn position(calls: &[(String, Value)], action: &str, pred: impl Fn(&Value) -> bool) -> usize {
    calls
        .iter()
        .position(|(a, p)| a == action && pred(p))
        .unwrap_or_else(|| panic!("no {action} in the call log"))
}

fn mentions(p: &Value, s: &str) -> bool {
    p.to_string().contains(s)
}

async fn resource_id(env: &Env, id: &str) -> String {
    env.instance(id)
        .await
        .unwrap()
        .dbi_resource_id()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_migration_completes_and_an_untagged_instance_named_in_messages_is_never_mutated() {
    let mut env = Env::new().await;
    let webhook = Webhook::start(1).await; // the first POST gets a 503: retried
    env.settings.webhook_url = Some(webhook.url.clone().into());
    env.settings.webhook_secret = Some("emulator-webhook-secret".into());
    let arn = env.source("orders-pg", true).await;
    let bystander_arn = env.source("bystander-pg", false).await;
    let rid = resource_id(&env, "orders-pg").await;
    let names = target_names("orders-pg", &rid, 1);

    let stop_player = CancellationToken::new();
    let player = spawn_cloudwatch_player(
        &env.aws,
        env.app_sg.clone(),
        vec![("orders-pg".into(), names.writer.clone())],
        false,
        stop_player.clone(),
    );
    let setup_calls = env.shim.calls().await.len();
    let agent = env.agent().await;
    let calls = agent.world.calls.clone();
    let (stop, run) = spawn_agent(agent, runtime_settings());
    env.send_tag_event(&arn, &["aurora-migration"]).await;
    // The bystander is named by a tag event and an RDS event: neither may touch it.
    env.send_tag_event(&bystander_arn, &["aurora-migration:approve"])
        .await;
    env.send(
        &json!({
            "version": "0", "id": "1", "detail-type": "RDS DB Instance Event", "source": "aws.rds",
            "account": "123456789012", "time": jiff::Timestamp::now().to_string(), "region": REGION,
            "resources": [bystander_arn],
            "detail": {"EventCategories": ["availability"], "SourceType": "DB_INSTANCE",
                       "SourceArn": bystander_arn, "Date": jiff::Timestamp::now().to_string(),
                       "Message": "DB instance restarted", "SourceIdentifier": "bystander-pg",
                       "EventID": "RDS-EVENT-0006"}
        })
        .to_string(),
    )
    .await;

    let started = Instant::now();
    wait_for(Duration::from_secs(300), "orders-pg completed", || async {
        let p = env.phases().await;
        let phase = p.get("orders-pg").cloned().unwrap_or_default();
        assert!(
            !["failed", "rolledback", "aborted"].contains(&phase.as_str()),
            "migration ended in {phase}"
        );
        phase == "completed"
    })
    .await;
    let took = started.elapsed();
    stop.cancel();
    let summary = run.await.unwrap();
    stop_player.cancel();
    let _ = player.await;
    eprintln!(
        "whole migration: {took:?}, {summary:?}\nAWS calls by operation:\n{}",
        calls.render()
    );

    // Mutations in order, read from the emulator's call log (the agent's calls only).
    let rds: Vec<(String, Value)> = env
        .shim
        .calls()
        .await
        .into_iter()
        .skip(setup_calls)
        .filter(|c| c["service"] == "rds")
        .map(|c| {
            (
                c["action"].as_str().unwrap_or("").to_string(),
                c["params"].clone(),
            )
        })
        .collect();
    let mutations: Vec<&(String, Value)> = rds.iter().filter(|(a, _)| is_mutation(a)).collect();
    let create = position(&rds, "CreateDBCluster", |p| {
        p["ReplicationSourceIdentifier"] == arn.as_str()
            && p["DBClusterIdentifier"] == names.cluster.as_str()
    });
    let writer = position(&rds, "CreateDBInstance", |p| {
        p["DBClusterIdentifier"] == names.cluster.as_str()
    });
    let quarantine = position(&rds, "ModifyDBInstance", |p| {
        p["DBInstanceIdentifier"] == "orders-pg"
    });
    let reboot = position(&rds, "RebootDBInstance", |p| {
        p["DBInstanceIdentifier"] == "orders-pg"
    });
    let promote = position(&rds, "PromoteReadReplicaDBCluster", |_| true);
    let delete = position(&rds, "DeleteDBInstance", |p| {
        p["DBInstanceIdentifier"] == "orders-pg"
    });
    assert!(create < writer && writer < quarantine && quarantine < reboot);
    assert!(reboot < promote && promote < delete);
    // The deletion carries the final snapshot (RDS takes it of the last state, atomically) and
    // keeps the automated backups; no separate snapshot that could predate a last write.
    let (_, deletion) = &rds[delete];
    assert_eq!(
        deletion["FinalDBSnapshotIdentifier"],
        names.final_snapshot.as_str()
    );
    assert_eq!(deletion["SkipFinalSnapshot"], "false", "{deletion}");
    assert_eq!(deletion["DeleteAutomatedBackups"], "false", "{deletion}");
    assert!(
        !rds.iter().any(|(a, _)| a == "CreateDBSnapshot"),
        "no separate CreateDBSnapshot"
    );
    // Exactly one of each one-shot mutation.
    for once in [
        "CreateDBCluster",
        "PromoteReadReplicaDBCluster",
        "RebootDBInstance",
    ] {
        assert_eq!(
            mutations.iter().filter(|(a, _)| a == once).count(),
            1,
            "{once}"
        );
    }
    // The bystander was described at most, never changed.
    let touched: Vec<_> = mutations
        .iter()
        .filter(|(_, p)| mentions(p, "bystander-pg"))
        .collect();
    assert!(touched.is_empty(), "bystander mutated: {touched:?}");
    let bystander = env.instance("bystander-pg").await.unwrap();
    assert_eq!(
        bystander.vpc_security_groups()[0].vpc_security_group_id(),
        Some(env.app_sg.as_str())
    );
    assert!(
        !bystander
            .tag_list()
            .iter()
            .any(|t| t.key() == Some("aurora-migration:phase"))
    );

    // The quarantine group: no ingress, no egress; the source was fenced with exactly it.
    if let Some(g) = env.security_group(&names.quarantine_group).await {
        assert!(g.ip_permissions().is_empty() && g.ip_permissions_egress().is_empty());
        let (_, p) = &rds[quarantine];
        assert_eq!(p["VpcSecurityGroupIds"], json!([g.group_id().unwrap()]));
    } else {
        // Deleted at the end of decommissioning: the ModifyDBInstance named one sg- group.
        let (_, p) = &rds[quarantine];
        assert_eq!(p["VpcSecurityGroupIds"].as_array().map(Vec::len), Some(1));
    }

    // The source is gone after a final snapshot; the cluster is promoted and tagged completed.
    assert!(env.instance("orders-pg").await.is_none());
    let snap = env
        .aws
        .rds
        .describe_db_snapshots()
        .db_snapshot_identifier(&names.final_snapshot)
        .send()
        .await
        .unwrap();
    assert_eq!(snap.db_snapshots()[0].status(), Some("available"));
    assert_eq!(
        snap.db_snapshots()[0].db_instance_identifier(),
        Some("orders-pg")
    );
    // Point-in-time recovery survives the deletion: the automated backups are still there.
    let automated = env
        .aws
        .rds
        .describe_db_snapshots()
        .db_instance_identifier("orders-pg")
        .snapshot_type("automated")
        .send()
        .await
        .unwrap();
    assert!(
        !automated.db_snapshots().is_empty(),
        "the source's automated backups were deleted with it"
    );
    let cluster = env
        .aws
        .rds
        .describe_db_clusters()
        .db_cluster_identifier(&names.cluster)
        .send()
        .await
        .unwrap();
    let c = &cluster.db_clusters()[0];
    assert!(c.replication_source_identifier().is_none_or(str::is_empty));
    let tags: BTreeMap<_, _> = c
        .tag_list()
        .iter()
        .map(|t| {
            (
                t.key().unwrap().to_string(),
                t.value().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(
        tags.get("aurora-migration:phase").map(String::as_str),
        Some("completed")
    );

    // The webhook got the new writer endpoint.
    let bodies = webhook.bodies.lock().unwrap().clone();
    assert_eq!(bodies.len(), 1, "{bodies:?}");
    assert_eq!(bodies[0]["endpoint"], c.endpoint().unwrap());
    assert_eq!(bodies[0]["source"], "orders-pg");
    assert_eq!(bodies[0]["migration"], format!("{rid}/1"));
    assert!(bodies[0]["port"].as_u64().is_some());

    // The heartbeat alarm existed during the quarantine and is gone now.
    let cw = env.shim.actions("monitoring").await;
    let put_alarm = position(&cw, "PutMetricAlarm", |p| {
        mentions(p, &names.heartbeat_alarm)
    });
    let del_alarm = position(&cw, "DeleteAlarms", |p| mentions(p, &names.heartbeat_alarm));
    assert!(put_alarm < del_alarm);
    assert!(
        cw.iter()
            .any(|(a, p)| a == "PutMetricData" && mentions(p, "AuroraMigrator"))
    );

    // One notification per phase change, in order, in the Chatbot format.
    let mut notes = Vec::new();
    env.notifications(&mut notes).await;
    let phases: Vec<String> = notes.iter().map(|(_, _, a)| a["phase"].clone()).collect();
    let expected = [
        "preflight",
        "preparing",
        "creatingreplica",
        "replicating",
        "awaitingcutover",
        "quiescing",
        "draining",
        "promoting",
        "routing",
        "verifying",
        "decommissioning",
        "completed",
    ];
    let mut at = 0;
    for p in &phases {
        if at < expected.len() && p == expected[at] {
            at += 1;
        }
    }
    assert_eq!(at, expected.len(), "phases notified: {phases:?}");
    for (subject, msg, attrs) in &notes {
        assert!(subject.chars().count() < 100, "{subject}");
        assert_eq!(msg["version"], "1.0");
        assert_eq!(msg["source"], "custom");
        assert_eq!(msg["metadata"]["threadId"], format!("{rid}/1"));
        assert_eq!(attrs["db_instance"], "orders-pg");
        assert!(["info", "warning", "error"].contains(&attrs["severity"].as_str()));
    }
    assert!(calls.calls()["rds:DescribeDBInstances"] > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_goes_to_the_dlq_while_duplicate_stale_and_unknown_messages_do_no_harm() {
    let env = Env::new().await;
    let arn = env.source("orders-pg", true).await;
    let rid = resource_id(&env, "orders-pg").await;
    let names = target_names("orders-pg", &rid, 1);
    let stop_player = CancellationToken::new();
    let _player = spawn_cloudwatch_player(
        &env.aws,
        env.app_sg.clone(),
        vec![("orders-pg".into(), names.writer.clone())],
        false,
        stop_player.clone(),
    );
    let agent = env.agent().await;
    let (stop, run) = spawn_agent(agent, runtime_settings());
    env.send("{this is not json").await;
    env.send(&json!({"source": "aws.ec2", "detail-type": "EC2 Instance State-change Notification", "detail": {}}).to_string()).await;
    // The same trigger three times, plus a CloudTrail-style duplicate through the tag event.
    for _ in 0..3 {
        env.send_tag_event(&arn, &["aurora-migration"]).await;
    }
    // A tick with a token the record never had: dropped without observing.
    env.send(&json!({"kind": "aurora-migrator.tick", "version": 1, "resource_id": rid, "attempt": 1, "token": 987654}).to_string()).await;

    wait_for(
        Duration::from_secs(120),
        "the migration replicating and the DLQ holding the malformed message",
        || async {
            let phase = env
                .phases()
                .await
                .get("orders-pg")
                .cloned()
                .unwrap_or_default();
            [
                "replicating",
                "awaitingcutover",
                "quiescing",
                "draining",
                "promoting",
                "routing",
                "verifying",
                "decommissioning",
                "completed",
            ]
            .contains(&phase.as_str())
                && env.dlq_count().await >= 1
        },
    )
    .await;
    stop.cancel();
    let summary = run.await.unwrap();
    stop_player.cancel();
    assert_eq!(
        env.dlq_count().await,
        1,
        "only the malformed message is dead-lettered"
    );
    let r = env
        .aws
        .sqs
        .receive_message()
        .queue_url(&env.dlq_url)
        .visibility_timeout(0)
        .send()
        .await
        .unwrap();
    assert_eq!(r.messages()[0].body(), Some("{this is not json"));
    // One attempt, one cluster, whatever the duplicates.
    let rds = env.shim.actions("rds").await;
    assert_eq!(
        rds.iter().filter(|(a, _)| a == "CreateDBCluster").count(),
        1
    );
    let items = env
        .aws
        .ddb
        .scan()
        .table_name(&env.settings.table)
        .send()
        .await
        .unwrap();
    let attempts: Vec<_> = items
        .items()
        .iter()
        .filter(|i| i["sk"].as_s().unwrap().starts_with("attempt#"))
        .collect();
    assert_eq!(attempts.len(), 1);
    assert!(
        summary.left >= 2,
        "the malformed message was left twice before the DLQ: {summary:?}"
    );
}

/// The source's slot lag never reaches 0 (a stale logical slot): replicating is fine (64 MiB →
/// 128 MiB, under the threshold), but the Draining proof never holds.
async fn stale_slot_rollback(abort: bool) {
    let env = Env::new().await;
    let arn = env.source("orders-pg", true).await;
    let rid = resource_id(&env, "orders-pg").await;
    let names = target_names("orders-pg", &rid, 1);
    let stop_player = CancellationToken::new();
    let _player = spawn_cloudwatch_player(
        &env.aws,
        env.app_sg.clone(),
        vec![("orders-pg".into(), names.writer.clone())],
        true,
        stop_player.clone(),
    );
    let mut policy = policy();
    if !abort {
        policy.write_unavailability_budget = jiff::SignedDuration::from_secs(20);
    }
    let world = env.world().await;
    let agent = std::sync::Arc::new(aurora_migrator::agent::Agent::new(world, policy));
    let (stop, run) = spawn_agent(agent, runtime_settings());
    env.send_tag_event(&arn, &["aurora-migration"]).await;
    wait_for(Duration::from_secs(120), "draining", || async {
        env.phases().await.get("orders-pg").map(String::as_str) == Some("draining")
    })
    .await;
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
        env.aws
            .rds
            .add_tags_to_resource()
            .resource_name(&arn)
            .tags(tag("aurora-migration:abort", "true"))
            .send()
            .await
            .unwrap();
        env.send_tag_event(&arn, &["aurora-migration:abort"]).await;
    }
    // An abort ends in `aborted`, a failure (the budget) in `rolledback`; both roll back.
    let end = if abort { "aborted" } else { "rolledback" };
    wait_for(Duration::from_secs(120), end, || async {
        env.phases().await.get("orders-pg").map(String::as_str) == Some(end)
    })
    .await;
    stop.cancel();
    run.await.unwrap();
    stop_player.cancel();
    let rds = env.shim.actions("rds").await;
    assert!(
        !rds.iter().any(|(a, _)| a == "PromoteReadReplicaDBCluster"),
        "never promoted"
    );
    // The original groups are back, the replica is gone, the source is intact.
    let src = env.instance("orders-pg").await.expect("the source is kept");
    let groups: Vec<_> = src
        .vpc_security_groups()
        .iter()
        .filter_map(|g| g.vpc_security_group_id())
        .collect();
    assert_eq!(groups, vec![env.app_sg.as_str()]);
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
    let arn = env.source("orders-pg", true).await;
    let rid = resource_id(&env, "orders-pg").await;
    let names = target_names("orders-pg", &rid, 1);
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
    let stop_player = CancellationToken::new();
    let _player = spawn_cloudwatch_player(
        &env.aws,
        env.app_sg.clone(),
        vec![("orders-pg".into(), names.writer.clone())],
        false,
        stop_player.clone(),
    );
    let agent = env.agent().await;
    let calls = agent.world.calls.clone();
    let (stop, run) = spawn_agent(agent, runtime_settings());
    env.send_tag_event(&arn, &["aurora-migration"]).await;
    wait_for(Duration::from_secs(300), "completed", || async {
        let phase = env
            .phases()
            .await
            .get("orders-pg")
            .cloned()
            .unwrap_or_default();
        assert!(
            !["failed", "rolledback"].contains(&phase.as_str()),
            "ended in {phase}"
        );
        phase == "completed"
    })
    .await;
    stop.cancel();
    run.await.unwrap();
    stop_player.cancel();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_work_exits_within_the_budget_and_loses_no_migration() {
    let env = Env::new().await;
    let arn = env.source("orders-pg", true).await;
    let rid = resource_id(&env, "orders-pg").await;
    let names = target_names("orders-pg", &rid, 1);
    let stop_player = CancellationToken::new();
    let _player = spawn_cloudwatch_player(
        &env.aws,
        env.app_sg.clone(),
        vec![("orders-pg".into(), names.writer.clone())],
        false,
        stop_player.clone(),
    );
    // Every RDS answer is slow: work is in flight when the signal comes.
    env.shim
        .faults(json!([{"service": "rds", "action": "*", "delay_ms": 1500, "count": 40}]))
        .await;
    let agent = env.agent().await;
    let mut settings = runtime_settings();
    settings.shutdown_budget = Duration::from_secs(3);
    let (stop, run) = spawn_agent(agent, settings.clone());
    env.send_tag_event(&arn, &["aurora-migration"]).await;
    wait_for(Duration::from_secs(60), "work in flight", || async {
        env.shim.actions("rds").await.len() >= 2
    })
    .await;
    let t = Instant::now();
    stop.cancel();
    let summary = run.await.unwrap();
    let took = t.elapsed();
    assert!(
        took <= settings.shutdown_budget + Duration::from_secs(2),
        "took {took:?}"
    );
    eprintln!("shutdown took {took:?}: {summary:?}");
    // A new agent carries on: nothing was lost.
    env.shim.post("faults", json!([])).await;
    let _ = reqwest::Client::new()
        .delete(format!("{}/_shim/faults", env.shim.endpoint))
        .send()
        .await;
    let (stop, run) = spawn_agent(env.agent().await, runtime_settings());
    // The record exists (or the trigger is seen again by the resync message).
    env.send(&json!({"version": "0", "id": "r", "detail-type": "Scheduled Event", "source": "aws.events", "account": "123456789012", "time": jiff::Timestamp::now().to_string(), "region": REGION, "resources": [], "detail": {}}).to_string()).await;
    wait_for(
        Duration::from_secs(180),
        "replicating after the restart",
        || async {
            let phase = env
                .phases()
                .await
                .get("orders-pg")
                .cloned()
                .unwrap_or_default();
            [
                "replicating",
                "awaitingcutover",
                "quiescing",
                "draining",
                "promoting",
                "routing",
                "verifying",
                "decommissioning",
                "completed",
            ]
            .contains(&phase.as_str())
        },
    )
    .await;
    stop.cancel();
    run.await.unwrap();
    stop_player.cancel();
    let rds = env.shim.actions("rds").await;
    assert_eq!(
        rds.iter().filter(|(a, _)| a == "CreateDBCluster").count(),
        1
    );
}

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
        arns.push(env.source(&id, true).await);
        let rid = resource_id(&env, &id).await;
        pairs.push((id.clone(), target_names(&id, &rid, 1).writer));
    }
    let stop_player = CancellationToken::new();
    let _player = spawn_cloudwatch_player(
        &env.aws,
        env.app_sg.clone(),
        pairs,
        false,
        stop_player.clone(),
    );
    let mut policy = policy();
    policy.fast_poll = jiff::SignedDuration::from_secs(3);
    policy.slow_poll = jiff::SignedDuration::from_secs(4);
    let mut settings = env.settings.clone();
    settings.describe_cache_ttl = Duration::from_secs(2);
    let world = aurora_migrator::aws::AwsWorld::connect(&settings)
        .await
        .unwrap();
    let calls = world.calls.clone();
    let agent = std::sync::Arc::new(aurora_migrator::agent::Agent::new(world, policy));
    let mut rs = runtime_settings();
    rs.concurrency = 16;
    rs.visibility_timeout_s = 30;
    let (stop, run) = spawn_agent(agent, rs);
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
    stop.cancel();
    let summary = run.await.unwrap();
    stop_player.cancel();
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

/// An RDS call naming a resource: `(action, identifier parameter, identifier)`.
type NamedCall<'a> = (&'a str, &'a str, &'a str);

/// Whether the call log holds the call that took effect while its answer is still held back by
/// the shim (`hold_ms`): the caller has not seen it yet.
fn held(calls: &[Value], (action, key, id): NamedCall) -> bool {
    calls.iter().any(|c| {
        c["action"] == action
            && c["params"][key] == id
            && c["real_status"] == 200
            && c["status"].is_null()
    })
}

/// How many times the call took effect (answered 200, or 200 held back).
fn effective(calls: &[Value], (action, key, id): NamedCall) -> usize {
    calls
        .iter()
        .filter(|c| {
            c["action"] == action
                && c["params"][key] == id
                && (c["status"] == 200 || c["real_status"] == 200)
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_killed_right_after_each_irreversible_call_carries_on_without_repeating_it() {
    // Visibility 5 s: the message a killed agent held comes back quickly. Redrive after 10
    // receives: every kill costs one receive of the message in flight.
    let env = Env::with_queue(5, 10).await;
    let arn = env.source("orders-pg", true).await;
    let rid = resource_id(&env, "orders-pg").await;
    let names = target_names("orders-pg", &rid, 1);
    let stop_player = CancellationToken::new();
    let _player = spawn_cloudwatch_player(
        &env.aws,
        env.app_sg.clone(),
        vec![("orders-pg".into(), names.writer.clone())],
        false,
        stop_player.clone(),
    );
    // Each call below takes effect, then its answer is held for 20 s: the agent is killed in
    // that gap, so it never learns that the call succeeded.
    let cluster = ("DBClusterIdentifier", names.cluster.as_str());
    let source = ("DBInstanceIdentifier", "orders-pg");
    let create: NamedCall = ("CreateDBCluster", cluster.0, cluster.1);
    let quarantine: NamedCall = ("ModifyDBInstance", source.0, source.1);
    let reboot: NamedCall = ("RebootDBInstance", source.0, source.1);
    let promote: NamedCall = ("PromoteReadReplicaDBCluster", cluster.0, cluster.1);
    let delete: NamedCall = ("DeleteDBInstance", source.0, source.1);
    let kill_points = [create, quarantine, reboot, promote, delete];
    env.shim
        .faults(Value::Array(
            kill_points
                .iter()
                .map(|(action, key, id)| {
                    // The shim matches on its own log line's text (Python's json.dumps).
                    json!({"service": "rds", "action": action,
                           "params_contains": format!("\"{key}\": \"{id}\""),
                           "hold_ms": 20000, "count": 1})
                })
                .collect(),
        ))
        .await;
    let mut agent = AgentProcess::start(&env, "first");
    env.send_tag_event(&arn, &["aurora-migration"]).await;
    for (n, point) in kill_points.iter().enumerate() {
        let action = point.0;
        wait_for(
            Duration::from_secs(240),
            &format!("{action} to take effect"),
            || async { held(&env.shim.calls().await, *point) },
        )
        .await;
        agent.kill();
        eprintln!("killed right after {action}");
        agent = AgentProcess::start(&env, &format!("restart-{n}"));
    }
    wait_for(Duration::from_secs(240), "completed", || async {
        env.phases().await.get("orders-pg").map(String::as_str) == Some("completed")
    })
    .await;
    let log = agent.log.clone();
    let exit = agent.terminate();
    assert!(
        exit.success(),
        "SIGTERM exit: {exit:?} (log {})",
        log.display()
    );
    stop_player.cancel();

    let calls = env.shim.calls().await;
    // One cluster, created once; one quarantine, one reboot, one promotion, one deletion.
    let clusters = env.aws.rds.describe_db_clusters().send().await.unwrap();
    assert_eq!(clusters.db_clusters().len(), 1, "{clusters:?}");
    assert_eq!(effective(&calls, create), 1);
    assert_eq!(
        calls
            .iter()
            .filter(|c| c["action"] == "PromoteReadReplicaDBCluster")
            .count(),
        1,
        "promotion requested once"
    );
    assert_eq!(effective(&calls, quarantine), 1);
    assert_eq!(effective(&calls, reboot), 1);
    assert_eq!(effective(&calls, delete), 1);
    assert!(env.instance("orders-pg").await.is_none());
    // Nothing reached the DLQ, and the record says completed with no error.
    assert_eq!(env.dlq_count().await, 0);
    let status = AgentProcess::status(&env);
    eprintln!("{status}");
    let row = status
        .lines()
        .find(|l| l.starts_with("orders-pg"))
        .expect("status lists the migration");
    assert!(row.contains("completed"), "{row}");
    assert!(row.trim_end().ends_with('-'), "no last error: {row}");
    // Every phase was notified (at least once: a crash may repeat a notification).
    let mut notes = Vec::new();
    env.notifications(&mut notes).await;
    for phase in ["quiescing", "draining", "promoting", "routing", "completed"] {
        assert!(
            notes.iter().any(|(_, _, a)| a["phase"] == phase),
            "{phase} notified"
        );
    }
}

/// Sets a tag on the source and delivers its tag-change event, as a person or a consumer would.
async fn tag_source(env: &Env, arn: &str, key: &str, value: &str) {
    env.aws
        .rds
        .add_tags_to_resource()
        .resource_name(arn)
        .tags(tag(key, value))
        .send()
        .await
        .unwrap();
    env.send_tag_event(arn, &[key]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cdc_consumers_pass_the_quarantine_and_their_acknowledgements_gate_draining_and_routing() {
    let mut env = Env::new().await;
    let webhook = Webhook::start(0).await;
    env.settings.webhook_url = Some(webhook.url.clone().into());
    env.settings.webhook_secret = Some("emulator-webhook-secret".into());
    let cdc_sg = create_group(&env.aws.ec2, &env.vpc_id, "debezium", "CDC consumers").await;
    let arn = env.source("orders-pg", false).await;
    env.aws
        .rds
        .add_tags_to_resource()
        .resource_name(&arn)
        .tags(tag("aurora-migration:cdc-consumers", &cdc_sg))
        // Declaring consumers opens the quarantine to them: the owners acknowledge it.
        .tags(tag("aurora-migration:ack-cdc-consumers", "true"))
        .tags(tag("aurora-migration:ack-unlogged-tables", "true"))
        .tags(tag("aurora-migration", "start"))
        .send()
        .await
        .unwrap();
    let rid = resource_id(&env, "orders-pg").await;
    let names = target_names("orders-pg", &rid, 1);
    let stop_player = CancellationToken::new();
    let _player = spawn_cloudwatch_player(
        &env.aws,
        env.app_sg.clone(),
        vec![("orders-pg".into(), names.writer.clone())],
        false,
        stop_player.clone(),
    );
    let (stop, run) = spawn_agent(env.agent().await, runtime_settings());
    env.send_tag_event(&arn, &["aurora-migration"]).await;
    let phase = async || {
        env.phases()
            .await
            .get("orders-pg")
            .cloned()
            .unwrap_or_default()
    };
    wait_for(Duration::from_secs(180), "draining", || async {
        phase().await == "draining"
    })
    .await;

    // The quarantine group admits the consumers' group on the database port and nothing else.
    let group = env
        .security_group(&names.quarantine_group)
        .await
        .expect("the quarantine group exists");
    assert!(group.ip_permissions_egress().is_empty());
    let sources: Vec<_> = group
        .ip_permissions()
        .iter()
        .flat_map(|p| p.user_id_group_pairs())
        .filter_map(|g| g.group_id())
        .collect();
    assert_eq!(sources, vec![cdc_sg.as_str()]);
    assert!(
        group
            .ip_permissions()
            .iter()
            .all(|p| p.from_port() == Some(5432) && p.ip_ranges().is_empty())
    );

    // Fenced, restarted, drained by the metrics: still no promotion until the consumers say so.
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert_eq!(phase().await, "draining");
    let rds = env.shim.actions("rds").await;
    assert!(rds.iter().any(|(a, _)| a == "RebootDBInstance"));
    assert!(!rds.iter().any(|(a, _)| a == "PromoteReadReplicaDBCluster"));
    let mut notes = Vec::new();
    env.notifications(&mut notes).await;
    assert!(
        notes
            .iter()
            .any(|(_, m, _)| mentions(m, "aurora-migration:cdc-drained=true")),
        "the consumers were asked to drain"
    );
    let calls_before_drained = env.shim.calls().await.len();
    tag_source(&env, &arn, "aurora-migration:cdc-drained", "true").await;

    // Promoted, then held before routing until the consumers' slots exist on Aurora.
    wait_for(Duration::from_secs(90), "routing", || async {
        phase().await == "routing"
    })
    .await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(phase().await, "routing");
    assert!(
        webhook.bodies.lock().unwrap().is_empty(),
        "routed too early"
    );
    env.notifications(&mut notes).await;
    assert!(
        notes
            .iter()
            .any(|(_, m, _)| mentions(m, "aurora-migration:cdc-slots-created=true")),
        "the consumers were asked to create their slots"
    );
    tag_source(&env, &arn, "aurora-migration:cdc-slots-created", "true").await;
    wait_for(Duration::from_secs(120), "completed", || async {
        let p = phase().await;
        assert!(!["failed", "rolledback"].contains(&p.as_str()), "{p}");
        p == "completed"
    })
    .await;
    stop.cancel();
    run.await.unwrap();
    stop_player.cancel();
    assert_eq!(webhook.bodies.lock().unwrap().len(), 1);
    let promote = env
        .shim
        .calls()
        .await
        .iter()
        .position(|c| c["action"] == "PromoteReadReplicaDBCluster")
        .expect("promoted");
    assert!(
        promote >= calls_before_drained,
        "promoted before cdc-drained"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_source_whose_key_is_disabled_fails_preflight_and_an_enabled_key_is_used() {
    let env = Env::new().await;
    let conf = aurora_migrator::aws::sdk_config(&env.settings).await;
    let kms = aws_sdk_kms::Client::new(&conf);
    // (id, ARN): moto's DisableKey takes only the id; RDS reports the ARN.
    let key = async || {
        let k = kms.create_key().send().await.unwrap();
        let meta = k.key_metadata().unwrap();
        (meta.key_id().to_string(), meta.arn().unwrap().to_string())
    };
    let ((_, good_key), (disabled_id, disabled_key)) = (key().await, key().await);
    kms.disable_key().key_id(&disabled_id).send().await.unwrap();
    let good = env
        .source_encrypted_with("payments-pg", true, Some(&good_key))
        .await;
    let bad = env
        .source_encrypted_with("ledger-pg", true, Some(&disabled_key))
        .await;
    let setup_calls = env.shim.calls().await.len();
    let (stop, run) = spawn_agent(env.agent().await, runtime_settings());
    env.send_tag_event(&good, &["aurora-migration"]).await;
    env.send_tag_event(&bad, &["aurora-migration"]).await;
    wait_for(
        Duration::from_secs(120),
        "one failed, the other's replica requested",
        || async {
            env.phases().await.get("ledger-pg").map(String::as_str) == Some("failed")
                && env
                    .shim
                    .actions("rds")
                    .await
                    .iter()
                    .any(|(a, p)| a == "CreateDBCluster" && mentions(p, "payments-pg"))
        },
    )
    .await;
    stop.cancel();
    run.await.unwrap();

    // The failure names the check and the key's state; nothing was created for it.
    let mut notes = Vec::new();
    env.notifications(&mut notes).await;
    let failed = notes
        .iter()
        .find(|(_, _, a)| a["db_instance"] == "ledger-pg" && a["phase"] == "failed")
        .expect("the failure was notified");
    assert_eq!(failed.2["severity"], "error");
    let text = failed.1.to_string();
    assert!(
        text.contains("encryption") && text.contains("Disabled") && text.contains(&disabled_key),
        "{text}"
    );
    let agent_calls: Vec<Value> = env.shim.calls().await.split_off(setup_calls);
    assert!(
        !agent_calls.iter().any(|c| c["service"] == "rds"
            && c["action"]
                .as_str()
                .is_some_and(|a| a.starts_with("Create"))
            && mentions(&c["params"], "ledger-pg")),
        "nothing created for the failed source"
    );
    let rds = env.shim.actions("rds").await;
    // The usable key was checked and the replica asked for it.
    let kms_calls = env.shim.actions("kms").await;
    assert!(
        kms_calls
            .iter()
            .any(|(a, p)| a == "DescribeKey" && mentions(p, &good_key))
    );
    let create = position(&rds, "CreateDBCluster", |p| mentions(p, "payments-pg"));
    assert_eq!(rds[create].1["KmsKeyId"], good_key.as_str());
}

/// Every `name` found under `key` (`"name"` of spans and metrics) in the OTLP/JSON bodies.
fn otlp_names(bodies: &[Value], key: &str) -> Vec<String> {
    fn walk(v: &Value, key: &str, out: &mut Vec<String>) {
        match v {
            Value::Object(o) => {
                for (k, child) in o {
                    if k == key
                        && let Value::Array(items) = child
                    {
                        out.extend(
                            items
                                .iter()
                                .filter_map(|i| i["name"].as_str().map(str::to_string)),
                        );
                    }
                    walk(child, key, out);
                }
            }
            Value::Array(a) => a.iter().for_each(|c| walk(c, key, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    bodies.iter().for_each(|b| walk(b, key, &mut out));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_binary_exports_spans_and_metrics_over_otlp_when_an_endpoint_is_set() {
    let env = Env::new().await;
    let collector = Webhook::start(0).await; // records every JSON body it is sent
    let base = collector.url.trim_end_matches("/route").to_string();
    let arn = env.source("bystander-pg", false).await;
    let agent = AgentProcess::start_with(
        &env,
        "otlp",
        &[
            ("MIGRATOR_OTLP_ENDPOINT", base.as_str()),
            ("MIGRATOR_OTLP_PROTOCOL", "http/json"),
        ],
    );
    // Work that needs no migration: an untagged instance's tag event and an unknown kind.
    env.send_tag_event(&arn, &["aurora-migration:approve"])
        .await;
    env.send(r#"{"kind": "someone-elses.message", "version": 1}"#)
        .await;
    wait_for(Duration::from_secs(60), "both messages handled", || async {
        let r = env
            .aws
            .sqs
            .get_queue_attributes()
            .queue_url(&env.queue_url)
            .attribute_names(aws_sdk_sqs::types::QueueAttributeName::All)
            .send()
            .await
            .unwrap();
        let a = r.attributes().unwrap();
        let n = |k: aws_sdk_sqs::types::QueueAttributeName| {
            a.get(&k).and_then(|v| v.parse::<u32>().ok()).unwrap_or(1)
        };
        n(aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages) == 0
            && n(aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessagesNotVisible) == 0
    })
    .await;
    // SIGTERM: the agent flushes its spans and metrics on the way out.
    let exit = agent.terminate();
    assert!(exit.success(), "{exit:?}");
    let bodies = collector.bodies.lock().unwrap().clone();
    let spans = otlp_names(&bodies, "spans");
    assert!(spans.iter().any(|s| s == "message"), "spans: {spans:?}");
    let metrics = otlp_names(&bodies, "metrics");
    for m in [
        "aurora_migrator.messages",
        "aurora_migrator.aws.calls",
        "aurora_migrator.migrations",
    ] {
        assert!(metrics.iter().any(|x| x == m), "{m} in {metrics:?}");
    }
    let text = Value::Array(bodies).to_string();
    assert!(text.contains("rds:DescribeDBInstances") && text.contains("sqs:ReceiveMessage"));
    assert!(
        text.contains("\"unknown\""),
        "the unknown message's outcome"
    );
}
