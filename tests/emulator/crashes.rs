//! Crashes lose nothing: SIGTERM mid-work stops within the budget and a new agent carries on;
//! the agent binary SIGKILLed right after each irreversible call completes without repeating it.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_work_exits_within_the_budget_and_loses_no_migration() {
    let env = Env::new().await;
    let Source { arn, names, .. } = env.migration_source("orders-pg", true).await;
    let player = Player::one(&env, "orders-pg", &names, false);
    // Every RDS answer is slow: work is in flight when the signal comes.
    env.shim
        .faults(json!([{"service": "rds", "action": "*", "delay_ms": 1500, "count": 40}]))
        .await;
    let mut settings = runtime_settings();
    settings.shutdown_budget = Duration::from_secs(3);
    let agent = env
        .run_agent_with(&env.settings, policy(), settings.clone())
        .await;
    env.send_tag_event(&arn, &["aurora-migration"]).await;
    wait_for(Duration::from_secs(60), "work in flight", || async {
        env.shim.actions("rds").await.len() >= 2
    })
    .await;
    let t = Instant::now();
    let summary = agent.finish().await;
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
    let agent = env.run_agent().await;
    // The record exists (or the trigger is seen again by the resync message).
    env.send(&json!({"version": "0", "id": "r", "detail-type": "Scheduled Event", "source": "aws.events", "account": "123456789012", "time": jiff::Timestamp::now().to_string(), "region": REGION, "resources": [], "detail": {}}).to_string()).await;
    env.wait_past("orders-pg", "replicating", Duration::from_secs(180), &[])
        .await;
    agent.finish().await;
    player.stop();
    let rds = env.shim.actions("rds").await;
    assert_eq!(
        rds.iter().filter(|(a, _)| a == "CreateDBCluster").count(),
        1
    );
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_killed_right_after_each_irreversible_call_carries_on_without_repeating_it() {
    // Visibility 5 s: the message a killed agent held comes back quickly. Redrive after 10
    // receives: every kill costs one receive of the message in flight.
    let env = Env::with_queue(5, 10).await;
    let Source { arn, names, .. } = env.migration_source("orders-pg", true).await;
    let player = Player::one(&env, "orders-pg", &names, false);
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
    env.wait_past("orders-pg", "completed", Duration::from_secs(240), &[])
        .await;
    let log = agent.log.clone();
    let exit = agent.terminate();
    assert!(
        exit.success(),
        "SIGTERM exit: {exit:?} (log {})",
        log.display()
    );
    player.stop();

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
