//! What the tests send the agent and read back: messages on its queue, notifications, the DLQ,
//! the table's phases, RDS and EC2 state; and the waits on them (`wait_for`, `wait_past`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::env::{Env, REGION, filter};

/// A notification as the tests read it: (Subject, Message JSON, message attributes).
pub type Notification = (String, Value, BTreeMap<String, String>);

/// An item of the agent's DynamoDB table.
pub type Item = std::collections::HashMap<String, aws_sdk_dynamodb::types::AttributeValue>;

/// The phases of a migration that goes well, in order.
pub const PHASES: [&str; 12] = [
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

impl Env {
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

    /// Sets a tag on the source and delivers its tag-change event, as a person or a consumer
    /// would.
    pub async fn tag_source(&self, arn: &str, key: &str, value: &str) {
        self.aws
            .rds
            .add_tags_to_resource()
            .resource_name(arn)
            .tags(super::env::tag(key, value))
            .send()
            .await
            .unwrap();
        self.send_tag_event(arn, &[key]).await;
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

    /// Up to ten messages of the queue at `url`; `peek` leaves them visible to the next read.
    pub async fn receive(&self, url: &str, peek: bool) -> Vec<aws_sdk_sqs::types::Message> {
        let r = self.aws.sqs.receive_message().queue_url(url);
        let r = if peek { r.visibility_timeout(0) } else { r };
        let r = r.max_number_of_messages(10).send().await.unwrap();
        r.messages().to_vec()
    }

    /// Notifications received on the subscribed queue so far: (Subject, Message JSON, attributes).
    pub async fn notifications(&self, into: &mut Vec<Notification>) {
        loop {
            let messages = self.receive(&self.notes_url, false).await;
            if messages.is_empty() {
                break;
            }
            for m in &messages {
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

    /// The messages in the DLQ (up to ten), left there.
    pub async fn dlq_messages(&self) -> Vec<aws_sdk_sqs::types::Message> {
        self.receive(&self.dlq_url, true).await
    }

    pub async fn dlq_count(&self) -> usize {
        self.dlq_messages().await.len()
    }

    /// Every item of the agent's table (records and their attempts).
    pub async fn table_items(&self) -> Vec<Item> {
        let scan = self.aws.ddb.scan().table_name(&self.settings.table);
        scan.send().await.unwrap().items().to_vec()
    }

    /// The phase of each record in the table (by source identifier).
    pub async fn phases(&self) -> BTreeMap<String, String> {
        self.table_items()
            .await
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
        let groups = self.aws.ec2.describe_security_groups();
        let r = groups.filters(filter("group-name", name)).send().await;
        r.unwrap().security_groups().first().cloned()
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

    pub async fn cluster(&self, id: &str) -> Option<aws_sdk_rds::types::DbCluster> {
        let describe = self.aws.rds.describe_db_clusters();
        let r = describe.db_cluster_identifier(id).send().await.ok()?;
        r.db_clusters().first().cloned()
    }

    /// The phase of `source`'s record ("" before it exists).
    pub async fn phase(&self, source: &str) -> String {
        self.phases().await.get(source).cloned().unwrap_or_default()
    }

    /// Waits, at most `limit`, until `source`'s record is at `phase` or past it on the way of a
    /// migration that goes well ([`PHASES`]; a phase off that way, such as `rolledback`: exactly
    /// it). Panics at once if the record is in one of `never`.
    pub async fn wait_past(&self, source: &str, phase: &str, limit: Duration, never: &[&str]) {
        let at = PHASES.iter().position(|p| *p == phase);
        let what = format!("{source} at or past {phase}");
        wait_for(limit, &what, || async {
            let now = self.phase(source).await;
            assert!(!never.contains(&now.as_str()), "{source} ended in {now}");
            match at {
                Some(i) => PHASES[i..].contains(&now.as_str()),
                None => now == phase,
            }
        })
        .await;
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
