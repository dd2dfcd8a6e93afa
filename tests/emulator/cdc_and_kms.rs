//! Source features that gate the migration: CDC consumers pass the quarantine and their
//! acknowledgements gate Draining and Routing; an encrypted source's disabled KMS key fails
//! preflight while an enabled key is the one the replica is created with.

use std::time::Duration;

use serde_json::Value;

use super::*;

/// Reads the notifications received since into `notes`; whether one of them asks the CDC
/// consumers to set `tag` (`key=value`).
async fn consumers_asked(env: &Env, notes: &mut Vec<Notification>, tag: &str) -> bool {
    env.notifications(notes).await;
    notes.iter().any(|(_, m, _)| mentions(m, tag))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cdc_consumers_pass_the_quarantine_and_their_acknowledgements_gate_draining_and_routing() {
    let mut env = Env::new().await;
    let webhook = Webhook::start(0).await;
    env.settings.webhook_url = Some(webhook.url.clone().into());
    env.settings.webhook_secret = Some("emulator-webhook-secret".into());
    let cdc_sg = create_group(&env.aws.ec2, &env.vpc_id, "debezium", "CDC consumers").await;
    let Source { arn, names, .. } = env.migration_source("orders-pg", false).await;
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
    let player = Player::one(&env, "orders-pg", &names, false);
    let agent = env.run_agent().await;
    env.send_tag_event(&arn, &["aurora-migration"]).await;
    let phase = async || env.phase("orders-pg").await;
    env.wait_past("orders-pg", "draining", Duration::from_secs(180), &[])
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
    assert!(
        consumers_asked(&env, &mut notes, "aurora-migration:cdc-drained=true").await,
        "the consumers were asked to drain"
    );
    let calls_before_drained = env.shim.calls().await.len();
    env.tag_source(&arn, "aurora-migration:cdc-drained", "true")
        .await;

    // Promoted, then held before routing until the consumers' slots exist on Aurora.
    env.wait_past("orders-pg", "routing", Duration::from_secs(90), &[])
        .await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(phase().await, "routing");
    assert!(
        webhook.bodies.lock().unwrap().is_empty(),
        "routed too early"
    );
    assert!(
        consumers_asked(&env, &mut notes, "aurora-migration:cdc-slots-created=true").await,
        "the consumers were asked to create their slots"
    );
    env.tag_source(&arn, "aurora-migration:cdc-slots-created", "true")
        .await;
    let never = ["failed", "rolledback"];
    env.wait_past("orders-pg", "completed", Duration::from_secs(120), &never)
        .await;
    agent.finish().await;
    player.stop();
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
    let agent = env.run_agent().await;
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
    agent.finish().await;

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
