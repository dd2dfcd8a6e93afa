//! The happy path: a whole migration with the real adapters completes, every mutation in order
//! and once, the final snapshot taken by the deletion itself, the webhook told the new endpoint,
//! every phase notified; an untagged instance named in messages is never mutated.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::*;

/// RDS actions that change something.
fn is_mutation(action: &str) -> bool {
    !(action.starts_with("Describe") || action.starts_with("List"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_migration_completes_and_an_untagged_instance_named_in_messages_is_never_mutated() {
    let mut env = Env::new().await;
    let webhook = Webhook::start(1).await; // the first POST gets a 503: retried
    env.settings.webhook_url = Some(webhook.url.clone().into());
    env.settings.webhook_secret = Some("emulator-webhook-secret".into());
    let Source { arn, rid, names } = env.migration_source("orders-pg", true).await;
    let bystander_arn = env.source("bystander-pg", false).await;

    let player = Player::one(&env, "orders-pg", &names, false);
    let setup_calls = env.shim.calls().await.len();
    let agent = env.run_agent().await;
    let calls = agent.calls.clone();
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
    let never = ["failed", "rolledback", "aborted"];
    env.wait_past("orders-pg", "completed", Duration::from_secs(300), &never)
        .await;
    let took = started.elapsed();
    let summary = agent.finish().await;
    player.join().await;
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
    let c = env
        .cluster(&names.cluster)
        .await
        .expect("the Aurora cluster");
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
    let expected = PHASES;
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
