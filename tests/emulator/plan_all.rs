//! The fleet readiness report (`plan --all`, #17) through the real binary: every RDS for
//! PostgreSQL instance gets a row with the verdict its preflight gives, one whose preflight cannot
//! be read gets an `error` row without stopping the report, other engines are left out, a
//! pending maintenance action read from the Region's list warns on its own instance only, and
//! the run makes no mutating AWS call.

use serde_json::{Value, json};

use super::*;

/// An instance in the harness's VPC, subnet group and security group, with the source
/// parameter group for PostgreSQL (`src-pg15`, or `group`); its engine, backups and tags as
/// given.
async fn instance_in(
    env: &Env,
    id: &str,
    engine: &str,
    backups: i32,
    tags: &[(&str, &str)],
    group: &str,
) {
    let postgres = engine == "postgres";
    env.aws
        .rds
        .create_db_instance()
        .db_instance_identifier(id)
        .engine(engine)
        .engine_version(if postgres { "15.7" } else { "8.0.35" })
        .db_instance_class("db.r6g.large")
        .allocated_storage(100)
        .master_username("admin_user")
        .master_user_password("not-a-secret-1")
        .backup_retention_period(backups)
        .db_subnet_group_name("db-subnets")
        .vpc_security_group_ids(&env.app_sg)
        .set_db_parameter_group_name(postgres.then(|| group.to_string()))
        .auto_minor_version_upgrade(false)
        .set_tags(Some(tags.iter().map(|(k, v)| tag(k, v)).collect()))
        .send()
        .await
        .unwrap();
}

async fn instance(env: &Env, id: &str, engine: &str, backups: i32, tags: &[(&str, &str)]) {
    instance_in(env, id, engine, backups, tags, "src-pg15").await;
}

fn names(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_all_reports_every_postgres_instance_read_only() {
    let env = Env::new().await;
    let ack = ("aurora-migration:ack-unlogged-tables", "true");
    instance(&env, "orders-ready", "postgres", 7, &[ack]).await;
    // Without database access unlogged tables always need an acknowledgement (README, Tags).
    instance(&env, "billing-unacked", "postgres", 7, &[]).await;
    instance(&env, "ledger-nobackup", "postgres", 0, &[ack]).await;
    env.aws
        .rds
        .create_db_parameter_group()
        .db_parameter_group_name("denied-pg15")
        .db_parameter_group_family("postgres15")
        .description("source")
        .send()
        .await
        .unwrap();
    instance_in(&env, "denied-db", "postgres", 7, &[ack], "denied-pg15").await;
    instance(&env, "shop-mysql", "mysql", 7, &[]).await;
    // One instance's preflight is refused for good (its parameter group's parameters).
    env.shim
        .faults(json!([{"service": "rds", "action": "DescribeDBParameters",
            "status": 403, "code": "AccessDenied", "message": "not authorized to read denied-db",
            "params_contains": "denied-pg15", "count": -1}]))
        .await;
    // The Region's pending maintenance (read once for every preflight): one action on
    // billing-unacked, none on the others.
    let arn = |id: &str| format!("arn:aws:rds:us-east-1:123456789012:db:{id}");
    env.shim
        .post(
            "pending-maintenance",
            json!([{"ResourceIdentifier": arn("billing-unacked"),
                "PendingMaintenanceActionDetails": [{"Action": "system-update",
                    "Description": "New Operating System update is available"}]}]),
        )
        .await;
    let before = env.shim.calls().await.len();

    let out = std::env::temp_dir().join(format!(
        "plan-all-{}.json",
        env.shim.endpoint.rsplit(':').next().unwrap()
    ));
    let run = AgentProcess::plan(
        &env,
        &["--all", "--format", "json", "--out", out.to_str().unwrap()],
    );
    assert!(
        run.status.success(),
        "plan --all failed: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(run.stdout.is_empty(), "the report went to --out");
    let rows: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let _ = std::fs::remove_file(&out);
    let rows = rows.as_array().unwrap();
    // Errors, blocked, needs-acknowledgement, ready; the MySQL instance is not there.
    let order: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| {
            (
                r["instance"].as_str().unwrap(),
                r["verdict"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        order,
        [
            ("denied-db", "error"),
            ("ledger-nobackup", "blocked"),
            ("billing-unacked", "needs-acknowledgement"),
            ("orders-ready", "ready"),
        ],
        "{rows:#?}"
    );
    let row = |id: &str| rows.iter().find(|r| r["instance"] == id).unwrap();

    let ready = row("orders-ready");
    assert_eq!(names(&ready["blocking"]), Vec::<String>::new());
    assert_eq!(names(&ready["acknowledged"]), ["unlogged-tables"]);
    assert!(names(&ready["warnings"]).contains(&"encryption".to_string()));
    assert_eq!(ready["source_version"], "15.7");
    assert_eq!(ready["aurora_version"], "15.7");
    assert_eq!(ready["aurora_class"], "db.r6g.large");
    assert_eq!(ready["storage_gib"], 100);
    // 8 min + 6–12 s/GiB of 100 GiB.
    assert_eq!(
        ready["replica_build"],
        json!({"min_s": 1080, "max_s": 1680})
    );
    assert_eq!(ready["error"], Value::Null);

    let unacked = row("billing-unacked");
    assert_eq!(names(&unacked["to_acknowledge"]), ["unlogged-tables"]);
    assert!(
        names(&unacked["warnings"]).contains(&"maintenance".to_string()),
        "{unacked:#?}"
    );
    assert!(
        !names(&ready["warnings"]).contains(&"maintenance".to_string()),
        "another instance's pending action: {ready:#?}"
    );
    assert_eq!(names(&unacked["blocking"]), Vec::<String>::new());

    let blocked = row("ledger-nobackup");
    assert_eq!(names(&blocked["blocking"]), ["automated-backups"]);
    assert_eq!(
        blocked["aurora_version"], "15.7",
        "where it is headed, once fixed"
    );

    let denied = row("denied-db");
    let reason = denied["error"].as_str().unwrap();
    assert!(
        reason.contains("DescribeDBParameters") && reason.contains("denied-db"),
        "{reason}"
    );
    assert_eq!(denied["storage_gib"], 100);

    // Read-only: every call the run made is a Describe*, List* or Get* (CloudWatch's
    // GetMetricData for free storage); the fleet came from paged DescribeDBInstances.
    let calls = env.shim.calls().await;
    let made: Vec<String> = calls[before..]
        .iter()
        .map(|c| {
            format!(
                "{}:{}",
                c["service"].as_str().unwrap_or(""),
                c["action"].as_str().unwrap_or("")
            )
        })
        .collect();
    assert!(
        made.contains(&"rds:DescribeDBInstances".to_string()),
        "{made:?}"
    );
    let mutating: Vec<&String> = made
        .iter()
        .filter(|c| {
            let action = c.split(':').nth(1).unwrap_or("");
            !["Describe", "List", "Get"]
                .iter()
                .any(|p| action.starts_with(p))
        })
        .collect();
    assert!(mutating.is_empty(), "mutating calls: {mutating:?}");
    let rds = made.iter().filter(|c| c.starts_with("rds:")).count();
    println!(
        "plan --all over 4 instances: {} calls, {rds} to RDS",
        made.len()
    );
    // No preflight of the MySQL instance was read.
    assert!(
        !calls[before..]
            .iter()
            .any(|c| mentions(&c["params"], "shop-mysql")),
        "the MySQL instance was looked at"
    );

    // The default: Markdown on standard output, in the same order.
    let run = AgentProcess::plan(&env, &["--all"]);
    assert!(run.status.success());
    let md = String::from_utf8(run.stdout).unwrap();
    println!("{md}");
    let table: Vec<&str> = md.lines().filter(|l| l.starts_with("| ")).collect();
    assert!(table[0].starts_with("| instance | verdict | blocking checks |"));
    assert!(table[1].starts_with("| denied-db | error | "), "{md}");
    assert!(
        table[2].starts_with("| ledger-nobackup | blocked | automated-backups | - |"),
        "{md}"
    );
    assert!(
        table[4].contains("| 15.7 → 15.7 | db.r6g.large | 100 GiB | 18 min – 28 min |"),
        "{md}"
    );
    assert!(
        md.contains("4 instances: 1 ready, 1 need acknowledgement, 1 blocked, 1 could not be read")
    );

    // `plan <instance>` as before; `plan` alone is a usage error.
    let one = AgentProcess::plan(&env, &["orders-ready"]);
    assert!(one.status.success());
    assert!(String::from_utf8_lossy(&one.stdout).contains("Result: ready to migrate"));
    let neither = AgentProcess::plan(&env, &[]);
    assert_eq!(neither.status.code(), Some(2), "clap's usage error");
    let err = String::from_utf8_lossy(&neither.stderr);
    assert!(err.contains("<INSTANCE|--all>"), "{err}");
    let mixed = AgentProcess::plan(&env, &["orders-ready", "--format", "csv"]);
    assert_eq!(mixed.status.code(), Some(2), "--format is for --all");
}
