//! SQS: the agent's inbound queue (EventBridge events and its own ticks).

use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::MessageSystemAttributeName;

use super::CallCounter;
use super::classify::classify_counted;
use crate::ports::{PortResult, Queue, QueueMessage};

pub struct AwsQueue {
    client: Client,
    calls: CallCounter,
    url: String,
}

impl AwsQueue {
    pub fn new(client: Client, calls: CallCounter, url: &str) -> Self {
        AwsQueue {
            client,
            calls,
            url: url.to_string(),
        }
    }
}

impl Queue for AwsQueue {
    fn receive(
        &self,
        max: u32,
        wait_s: u32,
        visibility_s: u32,
    ) -> impl std::future::Future<Output = PortResult<Vec<QueueMessage>>> + Send {
        Box::pin(async move {
            const OP: &str = "sqs:ReceiveMessage";
            self.calls.count(OP);
            let r = self
                .client
                .receive_message()
                .queue_url(&self.url)
                .max_number_of_messages(max.clamp(1, 10) as i32)
                .wait_time_seconds(wait_s.min(20) as i32)
                .visibility_timeout(visibility_s.min(43_200) as i32)
                .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
                .send()
                .await
                .map_err(|e| classify_counted(&self.calls, OP, &e))?;
            Ok(r.messages()
                .iter()
                .filter_map(|m| {
                    Some(QueueMessage {
                        id: m.message_id()?.to_string(),
                        receipt: m.receipt_handle()?.to_string(),
                        body: m.body().unwrap_or_default().to_string(),
                        receive_count: m
                            .attributes()
                            .and_then(|a| {
                                a.get(&MessageSystemAttributeName::ApproximateReceiveCount)
                            })
                            .and_then(|v| v.parse().ok())
                            .unwrap_or(1),
                    })
                })
                .collect())
        })
    }

    fn delete(&self, receipt: &str) -> impl std::future::Future<Output = PortResult<()>> + Send {
        Box::pin(async move {
            const OP: &str = "sqs:DeleteMessage";
            self.calls.count(OP);
            self.client
                .delete_message()
                .queue_url(&self.url)
                .receipt_handle(receipt)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| classify_counted(&self.calls, OP, &e))
        })
    }

    fn extend_visibility(
        &self,
        receipt: &str,
        seconds: u32,
    ) -> impl std::future::Future<Output = PortResult<()>> + Send {
        Box::pin(async move {
            const OP: &str = "sqs:ChangeMessageVisibility";
            self.calls.count(OP);
            self.client
                .change_message_visibility()
                .queue_url(&self.url)
                .receipt_handle(receipt)
                .visibility_timeout(seconds.min(43_200) as i32)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| classify_counted(&self.calls, OP, &e))
        })
    }

    fn send(
        &self,
        body: &str,
        delay_s: u32,
    ) -> impl std::future::Future<Output = PortResult<()>> + Send {
        Box::pin(async move {
            const OP: &str = "sqs:SendMessage";
            self.calls.count(OP);
            self.client
                .send_message()
                .queue_url(&self.url)
                .message_body(body)
                .delay_seconds(delay_s.min(crate::agent::MAX_DELAY_S) as i32)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| classify_counted(&self.calls, OP, &e))
        })
    }
}
