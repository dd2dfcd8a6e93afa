//! The emulator harness: moto behind the project's shim (tests/support/moto_shim.py) on a free
//! loopback port, one process per test (killed by PID on drop), the SDK pointed at it, and the
//! AWS resources the agent needs (queue + DLQ, topic with a subscribed queue, table, VPC, subnet
//! group, security group).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aurora_migrator::agent::Agent;
use aurora_migrator::aws::{self, AwsSettings, AwsWorld};
use aurora_migrator::core::policy::{CutoverPolicy, Policy};
use aurora_migrator::runtime::{self, RunSummary, RuntimeSettings};
use jiff::SignedDuration;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

pub const REGION: &str = "us-east-1";

pub struct Shim {
    child: Child,
    pub endpoint: String,
    http: reqwest::Client,
}

impl Shim {
    pub async fn start() -> Shim {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let python = root.join(".venv/bin/python");
        assert!(
            python.exists(),
            "no {} — run scripts/setup-python first",
            python.display()
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = std::fs::File::create(std::env::temp_dir().join(format!("moto-shim-{port}.log")))
            .unwrap();
        let child = Command::new(python)
            .current_dir(&root)
            .args(["tests/support/moto_shim.py", "-H", "127.0.0.1", "-p"])
            .arg(port.to_string())
            .arg("-q")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start the moto shim");
        let endpoint = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let t = Instant::now();
        loop {
            if let Ok(r) = http.get(format!("{endpoint}/_shim/health")).send().await
                && r.status().is_success()
            {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "the shim did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Shim {
            child,
            endpoint,
            http,
        }
    }

    pub async fn post(&self, path: &str, body: Value) -> Value {
        let r = self
            .http
            .post(format!("{}/_shim/{path}", self.endpoint))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "shim {path}: {}", r.status());
        r.json().await.unwrap_or(Value::Null)
    }

    pub async fn faults(&self, rules: Value) {
        self.post("faults", rules).await;
    }

    pub async fn calls(&self) -> Vec<Value> {
        let r = self
            .http
            .get(format!("{}/_shim/calls", self.endpoint))
            .send()
            .await
            .unwrap();
        let v: Value = r.json().await.unwrap();
        match v {
            Value::Array(a) => a,
            Value::Object(mut o) => match o.remove("calls") {
                Some(Value::Array(a)) => a,
                _ => vec![],
            },
            _ => vec![],
        }
    }

    /// (action, params) of every call of `service`, in arrival order.
    pub async fn actions(&self, service: &str) -> Vec<(String, Value)> {
        self.calls()
            .await
            .into_iter()
            .filter(|c| c["service"] == service)
            .map(|c| {
                (
                    c["action"].as_str().unwrap_or("").to_string(),
                    c["params"].clone(),
                )
            })
            .collect()
    }
}

impl Drop for Shim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Clients for the test's own calls (playing AWS's part and reading state back).
pub struct Clients {
    pub rds: aws_sdk_rds::Client,
    pub ec2: aws_sdk_ec2::Client,
    pub sqs: aws_sdk_sqs::Client,
    pub sns: aws_sdk_sns::Client,
    pub cw: aws_sdk_cloudwatch::Client,
    pub ddb: aws_sdk_dynamodb::Client,
}

pub struct Env {
    pub shim: Shim,
    pub aws: Clients,
    pub settings: AwsSettings,
    pub queue_url: String,
    pub dlq_url: String,
    pub notes_url: String,
    pub vpc_id: String,
    pub app_sg: String,
}

pub fn policy() -> Policy {
    let s = SignedDuration::from_secs;
    Policy {
        cutover: CutoverPolicy::Automatic,
        lag_sustain: s(2),
        soak: s(3),
        retention: s(2),
        slow_poll: s(3),
        // 2 s, not 1: the driver truncates a wake-up's delay to whole seconds (1.99 s → 1 s).
        fast_poll: s(2),
        write_unavailability_budget: s(240),
        reissue_after: s(20),
        cutover_reissue_after: s(10),
        ..Policy::default()
    }
}

impl Env {
    pub async fn new() -> Env {
        Env::with_visibility(6).await
    }

    pub async fn with_visibility(visibility_s: u32) -> Env {
        Env::with_queue(visibility_s, 2).await
    }

    /// The agent's queue with this visibility timeout and redrive after `max_receive` receives.
    pub async fn with_queue(visibility_s: u32, max_receive: u32) -> Env {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                    tracing_subscriber::EnvFilter::new("warn,aurora_migrator=info")
                }),
            )
            .with_test_writer()
            .try_init();
        let shim = Shim::start().await;
        let mut settings = AwsSettings::new("", "", "migrations");
        settings.endpoint_url = Some(shim.endpoint.clone());
        settings.region = Some(REGION.to_string());
        settings.static_credentials = Some(("test".into(), "test".into()));
        settings.sdk_initial_backoff = Duration::from_millis(20);
        settings.sdk_max_attempts = 4;
        settings.describe_cache_ttl = Duration::from_millis(800);
        settings.rds_requests_per_second = 50.0;
        settings.rds_burst = 20.0;
        let conf = aws::sdk_config(&settings).await;
        let aws = Clients {
            rds: aws_sdk_rds::Client::new(&conf),
            ec2: aws_sdk_ec2::Client::new(&conf),
            sqs: aws_sdk_sqs::Client::new(&conf),
            sns: aws_sdk_sns::Client::new(&conf),
            cw: aws_sdk_cloudwatch::Client::new(&conf),
            ddb: aws_sdk_dynamodb::Client::new(&conf),
        };
        // Queue + DLQ
        let dlq_url = aws
            .sqs
            .create_queue()
            .queue_name("agent-dlq")
            .send()
            .await
            .unwrap()
            .queue_url()
            .unwrap()
            .to_string();
        let dlq_arn = queue_arn(&aws.sqs, &dlq_url).await;
        let queue_url = aws
            .sqs
            .create_queue()
            .queue_name("agent")
            .attributes(
                aws_sdk_sqs::types::QueueAttributeName::VisibilityTimeout,
                visibility_s.to_string(),
            )
            .attributes(
                aws_sdk_sqs::types::QueueAttributeName::RedrivePolicy,
                serde_json::json!({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": max_receive})
                    .to_string(),
            )
            .send()
            .await
            .unwrap()
            .queue_url()
            .unwrap()
            .to_string();
        // Topic + subscribed queue
        let topic_arn = aws
            .sns
            .create_topic()
            .name("migrations")
            .send()
            .await
            .unwrap()
            .topic_arn()
            .unwrap()
            .to_string();
        let notes_url = aws
            .sqs
            .create_queue()
            .queue_name("notes")
            .send()
            .await
            .unwrap()
            .queue_url()
            .unwrap()
            .to_string();
        let notes_arn = queue_arn(&aws.sqs, &notes_url).await;
        aws.sns
            .subscribe()
            .topic_arn(&topic_arn)
            .protocol("sqs")
            .endpoint(notes_arn)
            .send()
            .await
            .unwrap();
        settings.queue_url = queue_url.clone();
        settings.topic_arn = topic_arn;
        aws::create_table(&settings).await.unwrap();
        // Network
        let vpcs = aws
            .ec2
            .describe_vpcs()
            .filters(
                aws_sdk_ec2::types::Filter::builder()
                    .name("isDefault")
                    .values("true")
                    .build(),
            )
            .send()
            .await
            .unwrap();
        let vpc_id = vpcs.vpcs()[0].vpc_id().unwrap().to_string();
        let subnets = aws
            .ec2
            .describe_subnets()
            .filters(
                aws_sdk_ec2::types::Filter::builder()
                    .name("vpc-id")
                    .values(&vpc_id)
                    .build(),
            )
            .send()
            .await
            .unwrap();
        let subnet_ids: Vec<String> = subnets
            .subnets()
            .iter()
            .filter_map(|s| s.subnet_id().map(str::to_string))
            .collect();
        let app_sg = create_group(&aws.ec2, &vpc_id, "app-db", "application access").await;
        aws.rds
            .create_db_subnet_group()
            .db_subnet_group_name("db-subnets")
            .db_subnet_group_description("test")
            .set_subnet_ids(Some(subnet_ids))
            .send()
            .await
            .unwrap();
        aws.rds
            .create_db_parameter_group()
            .db_parameter_group_name("src-pg15")
            .db_parameter_group_family("postgres15")
            .description("source")
            .send()
            .await
            .unwrap();
        aws.rds
            .modify_db_parameter_group()
            .db_parameter_group_name("src-pg15")
            .parameters(
                aws_sdk_rds::types::Parameter::builder()
                    .parameter_name("work_mem")
                    .parameter_value("65536")
                    .apply_method(aws_sdk_rds::types::ApplyMethod::Immediate)
                    .build(),
            )
            .send()
            .await
            .unwrap();
        Env {
            shim,
            aws,
            settings,
            queue_url,
            dlq_url,
            notes_url,
            vpc_id,
            app_sg,
        }
    }

    /// A source RDS PostgreSQL instance; `start` tags it for migration.
    pub async fn source(&self, id: &str, start: bool) -> String {
        self.source_encrypted_with(id, start, None).await
    }

    /// A source encrypted with the KMS key `kms_key` (an ARN), when given.
    pub async fn source_encrypted_with(
        &self,
        id: &str,
        start: bool,
        kms_key: Option<&str>,
    ) -> String {
        let mut tags = vec![tag("team", "orders")];
        if start {
            tags.push(tag("aurora-migration", "start"));
            tags.push(tag("aurora-migration:ack-unlogged-tables", "true"));
        }
        let r = self
            .aws
            .rds
            .create_db_instance()
            .db_instance_identifier(id)
            .engine("postgres")
            .engine_version("15.7")
            .db_instance_class("db.r6g.large")
            .allocated_storage(100)
            .master_username("postgres")
            .master_user_password("not-a-secret-1")
            .backup_retention_period(7)
            .db_subnet_group_name("db-subnets")
            .vpc_security_group_ids(&self.app_sg)
            .db_parameter_group_name("src-pg15")
            .auto_minor_version_upgrade(false)
            .storage_encrypted(kms_key.is_some())
            .set_kms_key_id(kms_key.map(str::to_string))
            .set_tags(Some(tags))
            .send()
            .await
            .unwrap();
        r.db_instance()
            .unwrap()
            .db_instance_arn()
            .unwrap()
            .to_string()
    }

    pub async fn world(&self) -> AwsWorld {
        AwsWorld::connect(&self.settings).await.unwrap()
    }

    pub async fn agent(&self) -> Arc<Agent<AwsWorld>> {
        Arc::new(Agent::new(self.world().await, policy()))
    }

    pub async fn send(&self, body: &str) {
        self.aws
            .sqs
            .send_message()
            .queue_url(&self.queue_url)
            .message_body(body)
            .send()
            .await
            .unwrap();
    }

    /// A "Tag Change on Resource" event for the instance, as EventBridge delivers it.
    pub async fn send_tag_event(&self, arn: &str, keys: &[&str]) {
        let tags: BTreeMap<&str, &str> = keys.iter().map(|k| (*k, "start")).collect();
        let body = serde_json::json!({
            "version": "0",
            "id": "6a7e8feb-b491-4cf7-a9f1-bf3703467718",
            "detail-type": "Tag Change on Resource",
            "source": "aws.tag",
            "account": "123456789012",
            "time": jiff::Timestamp::now().to_string(),
            "region": REGION,
            "resources": [arn],
            "detail": {
                "changed-tag-keys": keys,
                "service": "rds",
                "resource-type": "db",
                "version": 1,
                "tags": tags,
            }
        });
        self.send(&body.to_string()).await;
    }

    /// Notifications received on the subscribed queue so far: (Subject, Message JSON, attributes).
    pub async fn notifications(&self, into: &mut Vec<(String, Value, BTreeMap<String, String>)>) {
        loop {
            let r = self
                .aws
                .sqs
                .receive_message()
                .queue_url(&self.notes_url)
                .max_number_of_messages(10)
                .send()
                .await
                .unwrap();
            if r.messages().is_empty() {
                break;
            }
            for m in r.messages() {
                let env: Value = serde_json::from_str(m.body().unwrap()).unwrap();
                let attrs = env["MessageAttributes"]
                    .as_object()
                    .map(|o| {
                        o.iter()
                            .map(|(k, v)| {
                                (k.clone(), v["Value"].as_str().unwrap_or("").to_string())
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                let msg: Value =
                    serde_json::from_str(env["Message"].as_str().unwrap()).unwrap_or(Value::Null);
                into.push((
                    env["Subject"].as_str().unwrap_or("").to_string(),
                    msg,
                    attrs,
                ));
                self.aws
                    .sqs
                    .delete_message()
                    .queue_url(&self.notes_url)
                    .receipt_handle(m.receipt_handle().unwrap())
                    .send()
                    .await
                    .unwrap();
            }
        }
    }

    pub async fn dlq_count(&self) -> usize {
        let r = self
            .aws
            .sqs
            .receive_message()
            .queue_url(&self.dlq_url)
            .max_number_of_messages(10)
            .visibility_timeout(0)
            .send()
            .await
            .unwrap();
        r.messages().len()
    }

    /// The phase of each record in the table (by source identifier).
    pub async fn phases(&self) -> BTreeMap<String, String> {
        let r = self
            .aws
            .ddb
            .scan()
            .table_name(&self.settings.table)
            .send()
            .await
            .unwrap();
        r.items()
            .iter()
            .filter_map(|i| {
                Some((
                    i.get("source")?.as_s().ok()?.clone(),
                    i.get("phase")?.as_s().ok()?.clone(),
                ))
            })
            .collect()
    }

    /// The security group with this name, if it exists.
    pub async fn security_group(&self, name: &str) -> Option<aws_sdk_ec2::types::SecurityGroup> {
        let r = self
            .aws
            .ec2
            .describe_security_groups()
            .filters(
                aws_sdk_ec2::types::Filter::builder()
                    .name("group-name")
                    .values(name)
                    .build(),
            )
            .send()
            .await
            .unwrap();
        r.security_groups().first().cloned()
    }

    pub async fn instance(&self, id: &str) -> Option<aws_sdk_rds::types::DbInstance> {
        self.aws
            .rds
            .describe_db_instances()
            .db_instance_identifier(id)
            .send()
            .await
            .ok()
            .and_then(|r| r.db_instances().first().cloned())
    }
}

/// A security group in the VPC; its id.
pub async fn create_group(ec2: &aws_sdk_ec2::Client, vpc: &str, name: &str, what: &str) -> String {
    ec2.create_security_group()
        .group_name(name)
        .description(what)
        .vpc_id(vpc)
        .send()
        .await
        .unwrap()
        .group_id()
        .unwrap()
        .to_string()
}

pub fn tag(k: &str, v: &str) -> aws_sdk_rds::types::Tag {
    aws_sdk_rds::types::Tag::builder().key(k).value(v).build()
}

async fn queue_arn(sqs: &aws_sdk_sqs::Client, url: &str) -> String {
    sqs.get_queue_attributes()
        .queue_url(url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes()
        .unwrap()
        .get(&aws_sdk_sqs::types::QueueAttributeName::QueueArn)
        .unwrap()
        .clone()
}

pub fn runtime_settings() -> RuntimeSettings {
    RuntimeSettings {
        concurrency: 8,
        wait_s: 1,
        batch: 10,
        visibility_timeout_s: 6,
        shutdown_budget: Duration::from_secs(10),
        heartbeat_interval: Duration::from_secs(5),
        heartbeat_file: None,
    }
}

/// The agent's runtime on a task, stopped by the returned token.
pub fn spawn_agent(
    agent: Arc<Agent<AwsWorld>>,
    settings: RuntimeSettings,
) -> (CancellationToken, tokio::task::JoinHandle<RunSummary>) {
    let stop = CancellationToken::new();
    let handle = tokio::spawn(runtime::run(agent, settings, stop.clone()));
    (stop, handle)
}

/// Plays AWS's part for CloudWatch: every `every`, puts the AWS/RDS metrics a healthy
/// replication shows. The source's slot lag oscillates at 64 MiB and its connections stay up
/// until the source is fenced (its security groups no longer include the application group);
/// then both drop to 0. `stale_slot` keeps the slot lag at 5 GiB whatever happens.
pub fn spawn_cloudwatch_player(
    aws: &Clients,
    app_sg: String,
    sources: Vec<(String, String)>,
    stale_slot: bool,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let cw = aws.cw.clone();
    let rds = aws.rds.clone();
    tokio::spawn(async move {
        use aws_sdk_cloudwatch::types::{Dimension, MetricDatum};
        while !stop.is_cancelled() {
            for (source, writer) in &sources {
                let fenced = match rds
                    .describe_db_instances()
                    .db_instance_identifier(source)
                    .send()
                    .await
                {
                    Ok(r) => r.db_instances().first().is_some_and(|i| {
                        !i.vpc_security_groups()
                            .iter()
                            .any(|g| g.vpc_security_group_id() == Some(&app_sg))
                    }),
                    Err(_) => true,
                };
                let slot = if stale_slot {
                    // A forgotten logical slot: fine for replicating, never 0 when drained.
                    (if fenced { 128.0 } else { 64.0 }) * 1024.0 * 1024.0
                } else if fenced {
                    0.0
                } else {
                    64.0 * 1024.0 * 1024.0
                };
                let on = |id: &str, name: &str, v: f64| {
                    MetricDatum::builder()
                        .metric_name(name)
                        .dimensions(
                            Dimension::builder()
                                .name("DBInstanceIdentifier")
                                .value(id)
                                .build(),
                        )
                        .value(v)
                        .build()
                };
                let data = vec![
                    on(source, "OldestReplicationSlotLag", slot),
                    on(
                        source,
                        "DatabaseConnections",
                        if fenced { 0.0 } else { 12.0 },
                    ),
                    on(source, "FreeStorageSpace", 150.0 * 1024.0 * 1024.0 * 1024.0),
                    on(
                        source,
                        "TransactionLogsGeneration",
                        if fenced { 500.0 } else { 2.0e6 },
                    ),
                    on(source, "CPUUtilization", 30.0),
                    on(source, "WriteLatency", 0.002),
                    on(source, "ReadLatency", 0.001),
                    on(
                        writer,
                        "RDSToAuroraPostgreSQLReplicaLag",
                        if fenced { 0.0 } else { 0.4 },
                    ),
                    on(writer, "CPUUtilization", 25.0),
                    on(writer, "WriteLatency", 0.002),
                    on(writer, "ReadLatency", 0.001),
                    on(writer, "WriteIOPS", 100.0),
                ];
                let _ = cw
                    .put_metric_data()
                    .namespace("AWS/RDS")
                    .set_metric_data(Some(data))
                    .send()
                    .await;
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            }
        }
    })
}

/// A loopback HTTP server that records POST bodies and answers 200 (the data access layer's
/// webhook). Bounded: it serves until dropped.
pub struct Webhook {
    pub url: String,
    pub bodies: Arc<std::sync::Mutex<Vec<Value>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Webhook {
    pub async fn start(fail_first: usize) -> Webhook {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/route", listener.local_addr().unwrap());
        let bodies: Arc<std::sync::Mutex<Vec<Value>>> = Arc::default();
        let seen = bodies.clone();
        let task = tokio::spawn(async move {
            let mut served = 0usize;
            while let Ok((mut sock, _)) = listener.accept().await {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let body = loop {
                    let Ok(n) = sock.read(&mut chunk).await else {
                        break None;
                    };
                    if n == 0 {
                        break None;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some(head_end) = text.find("\r\n\r\n") {
                        let len = text[..head_end]
                            .lines()
                            .find_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                k.eq_ignore_ascii_case("content-length")
                                    .then(|| v.trim().parse::<usize>().ok())?
                            })
                            .unwrap_or(0);
                        if buf.len() >= head_end + 4 + len {
                            break Some(buf[head_end + 4..head_end + 4 + len].to_vec());
                        }
                    }
                };
                served += 1;
                let status = if served <= fail_first {
                    "503 Service Unavailable"
                } else {
                    if let Some(b) = body
                        && let Ok(v) = serde_json::from_slice(&b)
                    {
                        seen.lock().unwrap().push(v);
                    }
                    "200 OK"
                };
                let _ = sock
                    .write_all(
                        format!(
                            "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        )
                        .as_bytes(),
                    )
                    .await;
            }
        });
        Webhook { url, bodies, task }
    }
}

impl Drop for Webhook {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The real agent binary (`aurora-migrator run`) as a child process, configured through its
/// environment as in production, with the harness's short policy. Killed (SIGKILL) on drop.
pub struct AgentProcess {
    child: Child,
    pub log: PathBuf,
}

impl AgentProcess {
    pub fn start(env: &Env, name: &str) -> AgentProcess {
        AgentProcess::start_with(env, name, &[])
    }

    /// With more environment variables (they win over the harness's).
    pub fn start_with(env: &Env, name: &str, extra: &[(&str, &str)]) -> AgentProcess {
        let log = std::env::temp_dir().join(format!(
            "aurora-migrator-{}-{name}.log",
            env.shim.endpoint.rsplit(':').next().unwrap_or("0")
        ));
        let out = std::fs::File::create(&log).unwrap();
        let child = AgentProcess::command(env, "run")
            .env("MIGRATOR_QUEUE_URL", &env.queue_url)
            .env("MIGRATOR_TOPIC_ARN", &env.settings.topic_arn)
            .env("MIGRATOR_CUTOVER", "automatic")
            .env("MIGRATOR_LAG_SUSTAIN", "2s")
            .env("MIGRATOR_SOAK", "3s")
            .env("MIGRATOR_RETENTION", "2s")
            .env("MIGRATOR_SLOW_POLL", "2s")
            .env("MIGRATOR_FAST_POLL", "1s")
            .env("MIGRATOR_METRIC_PERIOD", "1s")
            .env("MIGRATOR_WRITE_BUDGET", "4m")
            .env("MIGRATOR_RDS_RATE_LIMIT", "20")
            .env("MIGRATOR_MESSAGE_VISIBILITY", "6s")
            .env(
                "MIGRATOR_HEARTBEAT_FILE",
                std::env::temp_dir().join(format!("aurora-migrator-{name}.heartbeat")),
            )
            .env("MIGRATOR_LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .envs(extra.iter().copied())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start the agent binary");
        AgentProcess { child, log }
    }

    /// The binary's `command`, with only the emulator's endpoint, credentials and table in its
    /// environment (nothing of the developer's AWS settings leaks in).
    fn command(env: &Env, command: &str) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_aurora-migrator"));
        c.arg(command)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("AWS_ENDPOINT_URL", &env.shim.endpoint)
            .env("AWS_REGION", REGION)
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("MIGRATOR_TABLE", &env.settings.table);
        c
    }

    /// SIGKILL: no shutdown path runs, in-flight work and messages are simply abandoned.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, then the exit status (the agent's graceful stop).
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        self.child.wait().unwrap()
    }

    /// The binary's `status` command against the same table.
    pub fn status(env: &Env) -> String {
        let out = AgentProcess::command(env, "status")
            .env("MIGRATOR_LOG_FORMAT", "text")
            .env("RUST_LOG", "error")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `f` is true, polling every 500 ms, for at most `limit`.
pub async fn wait_for<F, Fut>(limit: Duration, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let t = Instant::now();
    while !f().await {
        assert!(
            t.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
