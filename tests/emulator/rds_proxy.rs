//! The RDS Proxy router against the emulator (moto's RDS Proxy behind the shim, whose targets are
//! `REGISTERING` for a configured time and whose health a rule can hold `UNAVAILABLE`): the agent
//! reads the proxy before writes stop, moves its default target group from the source to the
//! Aurora cluster (deregister, then register), counts traffic as moved only when the cluster's
//! writer target is `AVAILABLE`, and routing back (a rollback's route) moves it back to the
//! source and waits for that too; a target that never becomes available leaves the source fenced and the migration
//! fails at the routing timeout with people told.

use std::time::Duration;

use jiff::SignedDuration;
use serde_json::{Value, json};

use aurora_migrator::aws::AwsWorld;
use aurora_migrator::core::action::RouteRequest;
use aurora_migrator::core::router::{RouteProgress, RouterChoice};
use aurora_migrator::ports::{Router, World};

use super::*;

/// A PostgreSQL proxy in the environment's VPC, opted in by its owners' tag, with the source
/// `target` as its default target group's one target.
async fn proxy_in_front_of(env: &Env, name: &str, target: &str) {
    let subnets = env
        .aws
        .ec2
        .describe_subnets()
        .filters(filter("vpc-id", &env.vpc_id))
        .send()
        .await
        .unwrap();
    let ids: Vec<String> = subnets
        .subnets()
        .iter()
        .filter_map(|s| s.subnet_id().map(str::to_string))
        .take(2)
        .collect();
    env.aws
        .rds
        .create_db_proxy()
        .db_proxy_name(name)
        .engine_family(aws_sdk_rds::types::EngineFamily::Postgresql)
        .role_arn("arn:aws:iam::123456789012:role/proxy")
        .auth(
            aws_sdk_rds::types::UserAuthConfig::builder()
                .auth_scheme(aws_sdk_rds::types::AuthScheme::Secrets)
                .secret_arn(format!(
                    "arn:aws:secretsmanager:us-east-1:123456789012:secret:{name}"
                ))
                .build(),
        )
        .set_vpc_subnet_ids(Some(ids))
        .tags(tag("aurora-migration:router", "allow"))
        .send()
        .await
        .unwrap();
    env.aws
        .rds
        .register_db_proxy_targets()
        .db_proxy_name(name)
        .target_group_name("default")
        .db_instance_identifiers(target)
        .send()
        .await
        .unwrap();
}

/// The proxy's default target group now: (type, id, health) of each target.
async fn targets(env: &Env, name: &str) -> Vec<(String, String, String)> {
    let out = env
        .aws
        .rds
        .describe_db_proxy_targets()
        .db_proxy_name(name)
        .target_group_name("default")
        .send()
        .await
        .unwrap();
    out.targets()
        .iter()
        .map(|t| {
            (
                t.r#type()
                    .map(|k| k.as_str().to_string())
                    .unwrap_or_default(),
                t.rds_resource_id().unwrap_or_default().to_string(),
                t.target_health()
                    .and_then(|h| h.state())
                    .map(|s| s.as_str().to_string())
                    .unwrap_or_default(),
            )
        })
        .collect()
}

/// The agent's RDS Proxy calls since `from`, in order.
async fn proxy_calls(env: &Env, from: usize) -> Vec<(String, Value)> {
    let rds: Vec<(String, Value)> = env.shim.actions("rds").await;
    rds[from..]
        .iter()
        .filter(|(a, _)| a.contains("DBProxy"))
        .cloned()
        .collect()
}

/// Waits (while the agent runs) for the notification of `source` entering `phase`, of
/// `severity` when given; returns its message.
async fn wait_for_note(env: &Env, source: &str, phase: &str, severity: Option<&str>) -> Value {
    let mut notes = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        env.notifications(&mut notes).await;
        if let Some((_, message, _)) = notes.iter().find(|(_, _, attrs)| {
            attrs.get("db_instance").map(String::as_str) == Some(source)
                && attrs.get("phase").map(String::as_str) == Some(phase)
                && severity.is_none_or(|s| attrs.get("severity").map(String::as_str) == Some(s))
        }) {
            return message.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{source}: {phase} ({severity:?}) is told: {notes:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rds_proxy_moves_to_the_cluster_when_available_back_when_routed_back_and_a_target_that_never_is_leaves_the_source_fenced()
 {
    let env = Env::new().await;
    let ok = env.migration_source("orders-pg", false).await;
    let stuck = env.migration_source("billing-pg", false).await;
    proxy_in_front_of(&env, "orders-proxy", "orders-pg").await;
    proxy_in_front_of(&env, "billing-proxy", "billing-pg").await;
    // A new target is REGISTERING for 3 s; billing's cluster never becomes reachable.
    env.shim
        .post("config", json!({"proxy_target_registering_s": 3}))
        .await;
    env.shim
        .post(
            "proxy-target-health",
            json!({"proxy": "billing-proxy", "target": stuck.names.cluster,
                   "state": "UNAVAILABLE", "reason": "CONNECTION_FAILED"}),
        )
        .await;
    // The sources' own targets are AVAILABLE before preflight reads them.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for (source, proxy) in [(&ok, "orders-proxy"), (&stuck, "billing-proxy")] {
        env.aws
            .rds
            .add_tags_to_resource()
            .resource_name(&source.arn)
            .tags(tag(
                "aurora-migration:router",
                &format!("rds-proxy:{proxy}"),
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
    policy.soak = SignedDuration::from_secs(600); // stays in Verifying until the rollback
    policy.timeouts.routing = SignedDuration::from_secs(40);
    let setup = env.shim.actions("rds").await.len();
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
    // orders: the proxy serves the cluster (its writer member AVAILABLE), the source is gone
    // from the group.
    let now = targets(&env, "orders-proxy").await;
    assert!(
        now.iter()
            .any(|(k, id, _)| k == "TRACKED_CLUSTER" && *id == ok.names.cluster),
        "{now:?}"
    );
    assert!(
        !now.iter().any(|(_, id, _)| id == "orders-pg"),
        "the source left the group: {now:?}"
    );
    let calls: Vec<String> = proxy_calls(&env, setup)
        .await
        .into_iter()
        .filter(|(_, p)| p["DBProxyName"] == "orders-proxy" || p.get("DBProxyName").is_none())
        .map(|(a, _)| a)
        .collect();
    let dereg = calls
        .iter()
        .position(|a| a == "DeregisterDBProxyTargets")
        .expect("deregistered");
    let reg = calls
        .iter()
        .position(|a| a == "RegisterDBProxyTargets")
        .expect("registered");
    assert!(
        calls[..dereg].iter().any(|a| a == "DescribeDBProxyTargets"),
        "the proxy's targets are read before they are changed: {calls:?}"
    );
    assert!(dereg < reg, "deregister, then register: {calls:?}");
    assert!(
        calls[reg..]
            .iter()
            .filter(|a| *a == "DescribeDBProxyTargets")
            .count()
            >= 2,
        "asked after while REGISTERING: {calls:?}"
    );
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
        "traffic counted as moved only when the target was AVAILABLE, 3 s after it registered: {span:?}"
    );

    // billing: registered but never available; never routed, the source still fenced, told.
    env.wait_past(
        "billing-pg",
        "failed",
        Duration::from_secs(300),
        &["verifying", "rolledback"],
    )
    .await;
    wait_for_note(&env, "billing-pg", "failed", Some("error")).await;
    let billing = record_of_now(&env, "billing-pg").await;
    assert!(billing["progress"]["routed_at"].is_null(), "{billing}");
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

    let summary = agent.finish().await;
    player.stop();
    eprintln!("{summary:?}");

    // Routing back (what a rollback after cutover asks of the router; the core's side is
    // `core_routing::a_rollback_after_cutover_routes_back…`): the agent's RDS Proxy router moves
    // the group back to the source, and says so only when the source's target is AVAILABLE.
    let from = env.shim.actions("rds").await.len();
    let world = AwsWorld::connect(&env.settings).await.unwrap();
    let source = env.instance("orders-pg").await.unwrap();
    let back = RouteRequest {
        migration: "m".into(),
        source: "orders-pg".into(),
        endpoint: source.endpoint().unwrap().address().unwrap().to_string(),
        port: 5432,
        phase: aurora_migrator::core::Phase::RollingBack,
        router: RouterChoice::RdsProxy {
            proxy: "orders-proxy".into(),
        },
        cluster: ok.names.cluster.clone(),
        back_to_source: true,
    };
    let asked = std::time::Instant::now();
    let RouteProgress::Propagating { change } = world.router().route(&back).await.unwrap() else {
        panic!("a new target is REGISTERING first");
    };
    assert_eq!(change, "instance:orders-pg");
    loop {
        let p = world
            .router()
            .route_status(&back.router, &change)
            .await
            .unwrap();
        if p == RouteProgress::InEffect {
            break;
        }
        assert!(asked.elapsed() < Duration::from_secs(30), "{p:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        asked.elapsed() >= Duration::from_secs(3),
        "in effect only when AVAILABLE, 3 s after registering"
    );
    assert_eq!(
        targets(&env, "orders-proxy").await,
        vec![(
            "RDS_INSTANCE".to_string(),
            "orders-pg".to_string(),
            "AVAILABLE".to_string()
        )],
        "the proxy serves the source again"
    );
    let calls: Vec<String> = proxy_calls(&env, from)
        .await
        .into_iter()
        .map(|(a, _)| a)
        .collect();
    let dereg = calls
        .iter()
        .position(|a| a == "DeregisterDBProxyTargets")
        .expect("the cluster deregistered");
    let reg = calls
        .iter()
        .position(|a| a == "RegisterDBProxyTargets")
        .expect("the source registered");
    assert!(dereg < reg, "{calls:?}");
    // Asked again (a retry after a crash): nothing is deregistered or registered twice.
    let again = env.shim.actions("rds").await.len();
    world.router().route(&back).await.unwrap();
    let repeated: Vec<String> = proxy_calls(&env, again)
        .await
        .into_iter()
        .map(|(a, _)| a)
        .filter(|a| a.contains("RegisterDBProxyTargets"))
        .collect();
    assert!(repeated.is_empty(), "{repeated:?}");

    // Consent is read again at every move: with the owners' tag gone, a route is refused and
    // nothing is deregistered or registered.
    let proxy_arn = env
        .aws
        .rds
        .describe_db_proxies()
        .db_proxy_name("orders-proxy")
        .send()
        .await
        .unwrap()
        .db_proxies()[0]
        .db_proxy_arn()
        .unwrap()
        .to_string();
    env.aws
        .rds
        .remove_tags_from_resource()
        .resource_name(&proxy_arn)
        .tag_keys("aurora-migration:router")
        .send()
        .await
        .unwrap();
    let before = env.shim.actions("rds").await.len();
    let forward = RouteRequest {
        back_to_source: false,
        phase: aurora_migrator::core::Phase::Routing,
        ..back.clone()
    };
    let refused = world.router().route(&forward).await.unwrap_err();
    assert_eq!(refused.kind, aurora_migrator::ports::ErrorKind::Fatal);
    assert!(refused.message.contains("no longer tagged"), "{refused}");
    let moved: Vec<String> = proxy_calls(&env, before)
        .await
        .into_iter()
        .map(|(a, _)| a)
        .filter(|a| a.contains("RegisterDBProxyTargets"))
        .collect();
    assert!(moved.is_empty(), "nothing moved without consent: {moved:?}");
    let status = AgentProcess::status(&env);
    let row = status
        .lines()
        .find(|l| l.starts_with("billing-pg"))
        .unwrap_or_else(|| panic!("status lists billing-pg:\n{status}"));
    assert!(
        row.contains("moving to Aurora (rds-proxy:billing-proxy)"),
        "{status}"
    );
}

/// The migration record of `source` as the table holds it now.
async fn record_of_now(env: &Env, source: &str) -> Value {
    env.table_items()
        .await
        .iter()
        .filter(|i| {
            i.get("source")
                .and_then(|v| v.as_s().ok())
                .map(String::as_str)
                == Some(source)
        })
        .find_map(|i| serde_json::from_str(i.get("record")?.as_s().ok()?).ok())
        .expect("a record")
}
