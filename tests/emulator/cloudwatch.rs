//! The CloudWatch player: the test plays AWS's part for the AWS/RDS metrics (moto keeps what it
//! is sent with PutMetricData but produces none).

use std::time::Duration;

use aurora_migrator::core::naming::TargetNames;
use tokio_util::sync::CancellationToken;

use super::env::{Clients, Env};

/// A running player; `stop` ends it at its next pause.
pub struct Player {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Player {
    /// Plays for every (source, writer) pair.
    pub fn start(env: &Env, sources: Vec<(String, String)>, stale_slot: bool) -> Player {
        let stop = CancellationToken::new();
        let task = spawn_cloudwatch_player(
            &env.aws,
            env.app_sg.clone(),
            sources,
            stale_slot,
            stop.clone(),
        );
        Player { stop, task }
    }

    /// Plays for one source and its first attempt's writer.
    pub fn one(env: &Env, source: &str, names: &TargetNames, stale_slot: bool) -> Player {
        Player::start(env, vec![(source.into(), names.writer.clone())], stale_slot)
    }

    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Stops, and waits for the player's last round to end.
    pub async fn join(mut self) {
        self.stop.cancel();
        let _ = (&mut self.task).await;
    }
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
                let of_source = [
                    ("OldestReplicationSlotLag", slot),
                    ("DatabaseConnections", if fenced { 0.0 } else { 12.0 }),
                    ("FreeStorageSpace", 150.0 * 1024.0 * 1024.0 * 1024.0),
                    (
                        "TransactionLogsGeneration",
                        if fenced { 500.0 } else { 2.0e6 },
                    ),
                    ("CPUUtilization", 30.0),
                    ("WriteLatency", 0.002),
                    ("ReadLatency", 0.001),
                ];
                let of_writer = [
                    (
                        "RDSToAuroraPostgreSQLReplicaLag",
                        if fenced { 0.0 } else { 0.4 },
                    ),
                    ("CPUUtilization", 25.0),
                    ("WriteLatency", 0.002),
                    ("ReadLatency", 0.001),
                    ("WriteIOPS", 100.0),
                ];
                let data = (of_source.iter().map(|(name, v)| on(source, name, *v)))
                    .chain(of_writer.iter().map(|(name, v)| on(writer, name, *v)))
                    .collect();
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
