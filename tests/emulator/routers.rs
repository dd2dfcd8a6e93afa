//! The Route 53 router against the emulator (moto's Route 53 behind the shim, whose changes stay
//! `PENDING` as long as a rule says): the agent UPSERTs the team's CNAME to the Aurora writer
//! endpoint, keeps its TTL, asks after the change, and counts traffic as moved only at `INSYNC`;
//! a change that never gets there leaves the source fenced, and the migration fails at the
//! routing timeout with people told.

use std::time::Duration;

use aws_sdk_route53::types::{
    Change, ChangeAction, ChangeBatch, ResourceRecord, ResourceRecordSet, RrType,
};
use jiff::SignedDuration;
use serde_json::{Value, json};

use aurora_migrator::aws::AwsWorld;
use aurora_migrator::core::action::RouteRequest;
use aurora_migrator::core::router::{RouteProgress, RouterChoice};
use aurora_migrator::ports::{Router, World};

use super::*;

const ZONE_NAME: &str = "internal.example.com";

/// A hosted zone; its bare id.
async fn hosted_zone(env: &Env) -> String {
    let z = env
        .aws
        .r53
        .create_hosted_zone()
        .name(ZONE_NAME)
        .caller_reference(format!("test-{}", jiff::Timestamp::now().as_nanosecond()))
        .send()
        .await
        .unwrap();
    z.hosted_zone()
        .unwrap()
        .id()
        .rsplit('/')
        .next()
        .unwrap()
        .to_string()
}

/// The team's record: a CNAME to `value` with TTL 5 s.
async fn cname(env: &Env, zone: &str, name: &str, value: &str) {
    let set = ResourceRecordSet::builder()
        .name(name)
        .r#type(RrType::Cname)
        .ttl(5)
        .resource_records(ResourceRecord::builder().value(value).build().unwrap())
        .build()
        .unwrap();
    env.aws
        .r53
        .change_resource_record_sets()
        .hosted_zone_id(zone)
        .change_batch(
            ChangeBatch::builder()
                .changes(
                    Change::builder()
                        .action(ChangeAction::Create)
                        .resource_record_set(set)
                        .build()
                        .unwrap(),
                )
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
}

/// The record's value and TTL now.
async fn record(env: &Env, zone: &str, name: &str) -> (String, i64) {
    let sets = env
        .aws
        .r53
        .list_resource_record_sets()
        .hosted_zone_id(zone)
        .send()
        .await
        .unwrap();
    let r = sets
        .resource_record_sets()
        .iter()
        .find(|r| r.name().trim_end_matches('.') == name && r.r#type() == &RrType::Cname)
        .expect("the record");
    (
        r.resource_records()[0]
            .value()
            .trim_end_matches('.')
            .to_string(),
        r.ttl().unwrap_or_default(),
    )
}

async fn endpoint_of(env: &Env, id: &str) -> String {
    env.instance(id)
        .await
        .unwrap()
        .endpoint()
        .unwrap()
        .address()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route53_routes_at_insync_and_a_change_that_never_syncs_leaves_the_source_fenced() {
    let env = Env::new().await;
    let zone = hosted_zone(&env).await;
    let ok = env.migration_source("orders-pg", false).await;
    let stuck = env.migration_source("billing-pg", false).await;
    let ok_record = format!("orders-db.{ZONE_NAME}");
    let stuck_record = format!("billing-db.{ZONE_NAME}");
    cname(
        &env,
        &zone,
        &ok_record,
        &endpoint_of(&env, "orders-pg").await,
    )
    .await;
    cname(
        &env,
        &zone,
        &stuck_record,
        &endpoint_of(&env, "billing-pg").await,
    )
    .await;
    // The cutover's change stays PENDING for 3 s; billing's never syncs.
    env.shim
        .post(
            "route53-pending",
            json!({"pending_seconds": 3, "record": ok_record, "count": 1}),
        )
        .await;
    env.shim
        .post(
            "route53-pending",
            json!({"pending_seconds": -1, "record": stuck_record}),
        )
        .await;
    for (source, record) in [(&ok, &ok_record), (&stuck, &stuck_record)] {
        env.aws
            .rds
            .add_tags_to_resource()
            .resource_name(&source.arn)
            .tags(tag(
                "aurora-migration:router",
                &format!("route53:{zone}:{record}"),
            ))
            .tags(tag("aurora-migration:ack-unlogged-tables", "true"))
            .tags(tag("aurora-migration", "start"))
            .send()
            .await
            .unwrap();
    }
    let player = Player::start(
        &env,
        vec![
            ("orders-pg".into(), ok.names.writer.clone()),
            ("billing-pg".into(), stuck.names.writer.clone()),
        ],
        false,
    );
    let mut policy = policy();
    policy.soak = SignedDuration::from_secs(600); // stays in Verifying while the test reads
    policy.timeouts.routing = SignedDuration::from_secs(40);
    let setup = env.shim.actions("route53").await.len();
    let agent = env
        .run_agent_with(&env.settings, policy, runtime_settings())
        .await;
    env.send_tag_event(&ok.arn, &["aurora-migration"]).await;
    env.send_tag_event(&stuck.arn, &["aurora-migration"]).await;

    env.wait_past(
        "orders-pg",
        "verifying",
        Duration::from_secs(300),
        &["failed", "rolledback"],
    )
    .await;
    env.wait_past(
        "billing-pg",
        "failed",
        Duration::from_secs(300),
        &["verifying", "rolledback"],
    )
    .await;
    // The failure is told: the phase is in the table before the step's notification has gone
    // out, so wait for it (while the agent still runs).
    let told = |notes: &[Notification]| {
        notes.iter().any(|(_, _, attrs)| {
            attrs.get("db_instance").map(String::as_str) == Some("billing-pg")
                && attrs.get("phase").map(String::as_str) == Some("failed")
                && attrs.get("severity").map(String::as_str) == Some("error")
        })
    };
    let mut notes = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        env.notifications(&mut notes).await;
        if told(&notes) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the failure is told: {notes:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let summary = agent.finish().await;
    player.stop();
    eprintln!("{summary:?}");

    // orders: the record points at the Aurora writer, its TTL kept.
    let writer = env
        .cluster(&ok.names.cluster)
        .await
        .unwrap()
        .endpoint()
        .unwrap()
        .to_string();
    assert_eq!(record(&env, &zone, &ok_record).await, (writer.clone(), 5));

    // Routing back (what a rollback after cutover asks of the router; the core's side is
    // `core_routing::a_rollback_after_cutover_routes_back…`): the agent's Route 53 router points
    // the record at the source again, its TTL kept, in effect at INSYNC.
    let world = AwsWorld::connect(&env.settings).await.unwrap();
    let source_endpoint = endpoint_of(&env, "orders-pg").await;
    let back = RouteRequest {
        migration: "m".into(),
        source: "orders-pg".into(),
        endpoint: source_endpoint.clone(),
        port: 5432,
        phase: aurora_migrator::core::Phase::RollingBack,
        router: RouterChoice::Route53 {
            hosted_zone: zone.clone(),
            record: ok_record.clone(),
        },
        cluster: ok.names.cluster.clone(),
        back_to_source: true,
    };
    let mut progress = world.router().route(&back).await.unwrap();
    let asked = std::time::Instant::now();
    while let RouteProgress::Propagating { change } = &progress {
        assert!(asked.elapsed() < Duration::from_secs(30), "INSYNC");
        tokio::time::sleep(Duration::from_millis(250)).await;
        progress = world
            .router()
            .route_status(&back.router, change)
            .await
            .unwrap();
    }
    assert_eq!(
        record(&env, &zone, &ok_record).await,
        (source_endpoint.to_ascii_lowercase(), 5),
        "the record points at the source again, its TTL kept"
    );
    // The calls, in order: the record read, the UPSERT, then GetChange until INSYNC, and only
    // then Verifying (the phase tag's mirror comes after the last GetChange of the change).
    let changes = env.shim.get("route53-changes").await;
    let ours: Vec<&Value> = changes
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["Comment"] == "aurora-migrator: route")
        .collect();
    assert_eq!(
        ours.len(),
        3,
        "one route per migration, and the route back: {changes}"
    );
    assert!(
        mentions(&ours[2]["Changes"], &ok_record)
            && ours[2]["Changes"][0]["Action"] == "UPSERT"
            && ours[2]["Changes"][0]["TTL"] == 5,
        "the route back re-points the same record: {changes}"
    );
    let orders_change = ours
        .iter()
        .find(|c| mentions(&c["Changes"], &ok_record))
        .expect("orders' change");
    assert_eq!(orders_change["Changes"][0]["Action"], "UPSERT");
    assert_eq!(orders_change["Changes"][0]["Type"], "CNAME");
    assert_eq!(orders_change["Changes"][0]["TTL"], 5);
    assert_eq!(orders_change["Status"], "INSYNC");
    let r53: Vec<(String, Value)> = env.shim.actions("route53").await;
    let names: Vec<&str> = r53[setup..].iter().map(|(a, _)| a.as_str()).collect();
    let upsert = names
        .iter()
        .position(|a| *a == "ChangeResourceRecordSets")
        .unwrap();
    assert!(
        names[..upsert].contains(&"ListResourceRecordSets"),
        "the record is read before it is changed: {names:?}"
    );
    assert!(
        names[upsert..]
            .iter()
            .filter(|a| **a == "GetChange")
            .count()
            >= 2,
        "asked after while PENDING: {names:?}"
    );
    let history = |m: &Value| -> Vec<String> {
        m["history"]
            .as_array()
            .map(|h| {
                h.iter()
                    .map(|p| p["phase"].as_str().unwrap_or("").to_string())
                    .collect()
            })
            .unwrap_or_default()
    };
    let items = env.table_items().await;
    let record_of = |source: &str| -> Value {
        items
            .iter()
            .filter(|i| {
                i.get("source")
                    .and_then(|v| v.as_s().ok())
                    .map(String::as_str)
                    == Some(source)
            })
            .find_map(|i| serde_json::from_str(i.get("record")?.as_s().ok()?).ok())
            .expect("a record")
    };
    let orders = record_of("orders-pg");
    let routed = orders["progress"]["routed_at"].as_str().expect("routed");
    let requested = orders["progress"]["route_requested_at"].as_str().unwrap();
    let span = routed
        .parse::<jiff::Timestamp>()
        .unwrap()
        .duration_since(requested.parse().unwrap());
    assert!(
        span >= SignedDuration::from_secs(3),
        "traffic counted as moved only at INSYNC, 3 s after the UPSERT: {span:?}"
    );
    assert!(history(&orders).contains(&"verifying".to_string()));

    // billing: the record was changed but never synced; never counted as routed, the source
    // still fenced (exactly the quarantine group), and people told.
    let billing = record_of("billing-pg");
    assert!(billing["progress"]["routed_at"].is_null(), "{billing}");
    assert!(billing["progress"]["route_change"].is_string(), "{billing}");
    let source = env.instance("billing-pg").await.unwrap();
    let groups: Vec<&str> = source
        .vpc_security_groups()
        .iter()
        .filter_map(|g| g.vpc_security_group_id())
        .collect();
    assert!(
        !groups.contains(&env.app_sg.as_str()),
        "still fenced: {groups:?}"
    );
    // `status` (the binary, reading the table) says where each one's traffic points.
    let status = AgentProcess::status(&env);
    let row = |source: &str| {
        status
            .lines()
            .find(|l| l.starts_with(source))
            .unwrap_or_else(|| panic!("status lists {source}:\n{status}"))
            .to_string()
    };
    assert!(
        row("orders-pg").contains(&format!("Aurora (route53:{zone}:{ok_record})")),
        "{status}"
    );
    assert!(
        row("billing-pg").contains(&format!("moving to Aurora (route53:{zone}:{stuck_record})")),
        "{status}"
    );
}
