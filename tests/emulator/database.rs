//! The database-aware cutover with everything real but AWS itself: a PostgreSQL primary with TLS
//! (a test CA) stands behind the emulated source instance's endpoint (the shim's
//! `POST /_shim/postgres`), the Aurora replica is a real streaming standby the shim makes on
//! CreateDBCluster, the agent's login is a secret in moto's Secrets Manager read through the
//! SDK, and the quarantine group becomes pg_hba.conf from what moto's EC2 says it admits.
//! Writers keep writing through the cutover; the route (the webhook) moves them to Aurora.

#[path = "../postgres/access.rs"]
mod access;
#[path = "../postgres/server.rs"]
mod server;
#[path = "../postgres/writer.rs"]
mod writer;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::AtomicI64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aurora_migrator::core::Migration;
use aurora_migrator::core::database::Lsn;
use aurora_migrator::core::preflight::Outcome;
use aurora_migrator::database::{DatabaseSettings, RdsTls};
use serde_json::json;

use super::*;
use access::make_certs;
use server::{Bins, PgServer, RunAs, TABLE, TempRoot, connect, tcp_config};
use writer::Writer;

const SOURCE: &str = "orders-pg";
const AGENT_ROLE: &str = "agent";
const AGENT_PASSWORD: &str = "agent-Pw-7e21a";
const APP_ROLE: &str = "app";

/// Stops, by PID, the standbys the shim started under `root` (the shim is SIGKILLed on drop
/// and cannot stop them itself).
struct StandbyReaper(PathBuf);

impl Drop for StandbyReaper {
    fn drop(&mut self) {
        let Ok(dirs) = std::fs::read_dir(&self.0) else {
            return;
        };
        for d in dirs.flatten() {
            let pid_file = d.path().join("postmaster.pid");
            let name = d.file_name().to_string_lossy().to_string();
            if !name.starts_with("standby") {
                continue;
            }
            if let Some(pid) = std::fs::read_to_string(pid_file)
                .ok()
                .and_then(|t| t.lines().next()?.trim().parse::<u32>().ok())
            {
                let _ = std::process::Command::new("kill")
                    .args(["-QUIT", &pid.to_string()])
                    .status();
            }
        }
    }
}

/// The migration record of `source` as the agent stored it.
async fn record(env: &Env, source: &str) -> Option<Migration> {
    env.table_items()
        .await
        .iter()
        .filter(|i| {
            i.get("source")
                .and_then(|s| s.as_s().ok())
                .map(String::as_str)
                == Some(source)
        })
        .filter_map(|i| serde_json::from_str(i.get("record")?.as_s().ok()?).ok())
        .max_by_key(|m: &Migration| m.id.attempt)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_path_with_a_real_postgres_behind_the_emulated_instance_loses_no_acknowledged_write()
 {
    let mut env = Env::new().await;
    // The primary: TLS with the test CA's certificate, SCRAM passwords.
    let bins = Bins::locate();
    let run_as = RunAs::get();
    let root = TempRoot::new("emu-db", run_as);
    let _reaper = StandbyReaper(root.path.clone());
    let certs = make_certs(&root.path, run_as);
    let primary = PgServer::init_primary(&root.path, "primary", &bins, run_as);
    let tls = format!(
        "ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\npassword_encryption = 'scram-sha-256'",
        certs.cert.display(),
        certs.key.display()
    );
    primary.append_conf(&[&tls]);
    if let Err(e) = primary.start() {
        panic!("the primary did not start: {e}\n{}", primary.log_tail());
    }
    let admin = connect(&primary.local()).await.expect("connect to primary");
    admin
        .batch_execute(&format!(
            "CREATE TABLE {TABLE} (seq bigint PRIMARY KEY, writer text NOT NULL, \
             server_port int DEFAULT inet_server_port(), at timestamptz DEFAULT clock_timestamp()); \
             CREATE ROLE {AGENT_ROLE} LOGIN PASSWORD '{AGENT_PASSWORD}'; \
             GRANT pg_signal_backend, pg_read_all_stats TO {AGENT_ROLE}; \
             CREATE ROLE {APP_ROLE} LOGIN; GRANT INSERT, SELECT ON {TABLE} TO {APP_ROLE}"
        ))
        .await
        .expect("the table and the roles");
    // No superuser session may stay open: the agent's role may not end those (as on RDS).
    drop(admin);

    // The agent's login in moto's Secrets Manager, readable by the agent by tag.
    let conf = aurora_migrator::aws::sdk_config(&env.settings).await;
    let secrets = aws_sdk_secretsmanager::Client::new(&conf);
    let secret_arn = secrets
        .create_secret()
        .name("orders-pg-agent")
        .secret_string(json!({"username": AGENT_ROLE, "password": AGENT_PASSWORD}).to_string())
        .tags(
            aws_sdk_secretsmanager::types::Tag::builder()
                .key("aurora-migration:agent-readable")
                .value("true")
                .build(),
        )
        .send()
        .await
        .unwrap()
        .arn()
        .unwrap()
        .to_string();

    // The emulated source, granting access by that secret, with the primary behind it.
    let Source { arn, names, .. } = env.migration_source(SOURCE, true).await;
    env.aws
        .rds
        .add_tags_to_resource()
        .resource_name(&arn)
        .tags(tag(
            "aurora-migration:database-access",
            &format!("secret:{secret_arn}"),
        ))
        .send()
        .await
        .unwrap();
    let agent_sg = create_group(&env.aws.ec2, &env.vpc_id, "agent", "the agent's task").await;
    let bin_dir = bins.path("pg_ctl").parent().unwrap().to_path_buf();
    env.shim
        .post(
            "postgres",
            json!({
                "instance": SOURCE, "host": "127.0.0.1", "port": primary.port,
                "data": primary.data, "socket_dir": primary.sock_dir, "bin_dir": bin_dir,
                "root": root.path, "run_as": run_as.ids.map(|(u, g)| [u, g]),
                "roles": {agent_sg.clone(): AGENT_ROLE},
            }),
        )
        .await;

    // The agent with database access, built as main.rs builds it: the real Secrets Manager
    // client (pointed at the emulator) and TLS verified against the test CA only.
    let webhook = Webhook::start(0).await;
    env.settings.webhook_url = Some(webhook.url.clone().into());
    env.settings.webhook_secret = Some("emulator-webhook-secret".into());
    env.settings.database = Some(DatabaseSettings::new(
        RdsTls::from_bundle_file(&certs.ca).expect("the test CA bundle"),
    ));
    let mut policy = policy();
    policy.database_access = true;
    policy.agent_security_group = Some(agent_sg.clone());
    // CloudWatch's part (replica lag for Replicating); the cutover itself does not wait on it.
    let player = Player::one(&env, SOURCE, &names, false);
    let setup_calls = env.shim.calls().await.len();
    let agent = env
        .run_agent_with(&env.settings, policy, runtime_settings())
        .await;

    // Two writers through the data access layer: one commits synchronously, one does not.
    let endpoint: writer::Endpoint = Arc::new(Mutex::new(("127.0.0.1".to_string(), primary.port)));
    let seq = Arc::new(AtomicI64::new(1));
    let mut writers = vec![
        Writer::spawn("sync", APP_ROLE, endpoint.clone(), seq.clone()),
        Writer::spawn_with("async", APP_ROLE, endpoint.clone(), seq.clone(), true),
    ];
    tokio::time::sleep(Duration::from_secs(1)).await;
    env.send_tag_event(&arn, &["aurora-migration"]).await;

    // Drive: follow the route the webhook is told, watch the quarantine group and the fence.
    let started = Instant::now();
    let never = ["failed", "rolledback", "aborted", "paused"];
    let mut quarantine_admitted_agent = false;
    let mut fences = BTreeSet::new();
    let mut last = String::new();
    loop {
        let phase = env.phase(SOURCE).await;
        if phase != last {
            let m = record(&env, SOURCE).await;
            eprintln!(
                "[{:>5.1}s] {phase} {:?}",
                started.elapsed().as_secs_f64(),
                m.map(|m| (m.last_error, m.progress.database_fallback))
            );
            last = phase.clone();
        }
        assert!(
            !never.contains(&phase.as_str()),
            "the migration ended in {phase}: {:?}",
            record(&env, SOURCE).await.map(|m| m.last_error)
        );
        if phase == "completed" {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "not completed after 180 s (at {phase}): {:?}",
            record(&env, SOURCE).await.map(|m| m.last_error)
        );
        if let Some(body) = webhook.bodies.lock().unwrap().last() {
            let to = (
                body["endpoint"].as_str().unwrap_or_default().to_string(),
                body["port"].as_u64().unwrap_or(0) as u16,
            );
            *endpoint.lock().unwrap() = to;
        }
        if let Some(g) = env.security_group(&names.quarantine_group).await {
            quarantine_admitted_agent |= g.ip_permissions().iter().any(|p| {
                p.user_id_group_pairs()
                    .iter()
                    .any(|pair| pair.group_id() == Some(agent_sg.as_str()))
                    && p.from_port().is_some_and(|f| f <= primary.port as i32)
                    && p.to_port().is_some_and(|t| t >= primary.port as i32)
            });
        }
        if let Some(m) = record(&env, SOURCE).await
            && let Some(f) = m.progress.fence_lsn
        {
            fences.insert(f);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let took = started.elapsed();
    // Some writes on Aurora after the route moved, then stop writing.
    let (host, port) = endpoint.lock().unwrap().clone();
    tokio::time::sleep(Duration::from_secs(2)).await;
    for w in &mut writers {
        w.stop().await;
    }
    let summary = agent.finish().await;
    player.join().await;
    eprintln!("database path, emulated: {took:?}, {summary:?}");

    let m = record(&env, SOURCE).await.expect("the record");
    // Preflight connected (TLS, the secret) and planned the database path.
    let preflight = m.preflight.as_ref().expect("a preflight report");
    let check = preflight
        .checks
        .iter()
        .find(|c| c.name == "database-access")
        .expect("a database-access check");
    assert_eq!(check.outcome, Outcome::Pass, "{}", check.message);
    assert!(
        m.progress.database_fallback.is_none(),
        "{:?}",
        m.progress.database_fallback
    );

    // The agent's calls: the secret read through the SDK, no reboot of the source.
    let calls: Vec<_> = env
        .shim
        .calls()
        .await
        .into_iter()
        .skip(setup_calls)
        .collect();
    assert!(
        calls
            .iter()
            .any(|c| c["service"] == "secretsmanager" && c["action"] == "GetSecretValue"),
        "no secretsmanager:GetSecretValue in the call log"
    );
    let reboots: Vec<_> = calls
        .iter()
        .filter(|c| c["action"] == "RebootDBInstance" && mentions(&c["params"], SOURCE))
        .collect();
    assert!(reboots.is_empty(), "the source was rebooted: {reboots:?}");

    // The quarantine group admitted the agent's group on the database port, and the shim's
    // pg_hba.conf let the agent's role in through it.
    assert!(
        quarantine_admitted_agent,
        "the quarantine group never admitted {agent_sg}"
    );
    let backends = env.shim.get("postgres").await;
    let log: Vec<String> = backends[0]["log"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap().to_string())
        .collect();
    assert!(
        log.iter()
            .any(|l| l == &format!("hba quarantined {AGENT_ROLE}")),
        "{log:?}"
    );
    assert!(!log.iter().any(|l| l == "restart"), "{log:?}");
    assert!(log.iter().any(|l| l.starts_with("promote ")), "{log:?}");

    // A fence was recorded and the standby (Aurora) replayed it.
    let fence = m
        .progress
        .fence_lsn
        .or(fences.last().copied())
        .expect("a fence in the record");
    let replayed = m
        .progress
        .fence_replayed_lsn
        .expect("Aurora's replay position in the record");
    assert!(replayed >= fence, "replayed {replayed} < fence {fence}");
    let standby_port = backends[0]["standbys"][0]["port"].as_u64().unwrap() as u16;
    assert_eq!(
        (host.as_str(), port),
        ("127.0.0.1", standby_port),
        "the route"
    );
    let aurora = connect(&tcp_config(standby_port, "postgres"))
        .await
        .expect("connect to the promoted standby");
    let row = aurora
        .query_one(
            "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text",
            &[],
        )
        .await
        .unwrap();
    assert!(!row.get::<_, bool>(0), "the standby was not promoted");
    let last_replayed: Lsn = row.get::<_, String>(1).parse().unwrap();
    assert!(
        last_replayed >= fence,
        "Aurora replayed {last_replayed} < fence {fence}"
    );

    // Every acknowledged write is on Aurora.
    let on_aurora: BTreeSet<i64> = aurora
        .query(&format!("SELECT seq FROM {TABLE}"), &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let acks: Vec<_> = writers.iter().flat_map(Writer::acks).collect();
    let lost: Vec<i64> = acks
        .iter()
        .map(|a| a.seq)
        .filter(|s| !on_aurora.contains(s))
        .collect();
    let after = acks.iter().filter(|a| a.port == standby_port).count();
    eprintln!(
        "{} writes acknowledged ({} by Aurora), {} on Aurora, fence {fence}, replayed {replayed}",
        acks.len(),
        after,
        on_aurora.len()
    );
    assert!(
        acks.len() > 20 && after > 0,
        "too few writes to mean anything"
    );
    assert!(
        lost.is_empty(),
        "acknowledged writes missing on Aurora: {lost:?}"
    );
    drop(primary);
}
