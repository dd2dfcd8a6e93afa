//! Telemetry: the agent binary exports spans and metrics over OTLP when an endpoint is set.

use std::time::Duration;

use serde_json::Value;

use super::*;

/// Every `name` found under `key` (`"name"` of spans and metrics) in the OTLP/JSON bodies.
fn otlp_names(bodies: &[Value], key: &str) -> Vec<String> {
    fn walk(v: &Value, key: &str, out: &mut Vec<String>) {
        match v {
            Value::Object(o) => {
                for (k, child) in o {
                    if k == key
                        && let Value::Array(items) = child
                    {
                        out.extend(
                            items
                                .iter()
                                .filter_map(|i| i["name"].as_str().map(str::to_string)),
                        );
                    }
                    walk(child, key, out);
                }
            }
            Value::Array(a) => a.iter().for_each(|c| walk(c, key, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    bodies.iter().for_each(|b| walk(b, key, &mut out));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_binary_exports_spans_and_metrics_over_otlp_when_an_endpoint_is_set() {
    let env = Env::new().await;
    let collector = Webhook::start(0).await; // records every JSON body it is sent
    let base = collector.url.trim_end_matches("/route").to_string();
    let arn = env.source("bystander-pg", false).await;
    let agent = AgentProcess::start_with(
        &env,
        "otlp",
        &[
            ("MIGRATOR_OTLP_ENDPOINT", base.as_str()),
            ("MIGRATOR_OTLP_PROTOCOL", "http/json"),
        ],
    );
    // Work that needs no migration: an untagged instance's tag event and an unknown kind.
    env.send_tag_event(&arn, &["aurora-migration:approve"])
        .await;
    env.send(r#"{"kind": "someone-elses.message", "version": 1}"#)
        .await;
    wait_for(Duration::from_secs(60), "both messages handled", || async {
        let r = env
            .aws
            .sqs
            .get_queue_attributes()
            .queue_url(&env.queue_url)
            .attribute_names(aws_sdk_sqs::types::QueueAttributeName::All)
            .send()
            .await
            .unwrap();
        let a = r.attributes().unwrap();
        let n = |k: aws_sdk_sqs::types::QueueAttributeName| {
            a.get(&k).and_then(|v| v.parse::<u32>().ok()).unwrap_or(1)
        };
        n(aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages) == 0
            && n(aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessagesNotVisible) == 0
    })
    .await;
    // SIGTERM: the agent flushes its spans and metrics on the way out.
    let exit = agent.terminate();
    assert!(exit.success(), "{exit:?}");
    let bodies = collector.bodies.lock().unwrap().clone();
    let spans = otlp_names(&bodies, "spans");
    assert!(spans.iter().any(|s| s == "message"), "spans: {spans:?}");
    let metrics = otlp_names(&bodies, "metrics");
    for m in [
        "aurora_migrator.messages",
        "aurora_migrator.aws.calls",
        "aurora_migrator.migrations",
    ] {
        assert!(metrics.iter().any(|x| x == m), "{m} in {metrics:?}");
    }
    let text = Value::Array(bodies).to_string();
    assert!(text.contains("rds:DescribeDBInstances") && text.contains("sqs:ReceiveMessage"));
    assert!(
        text.contains("\"unknown\""),
        "the unknown message's outcome"
    );
}
