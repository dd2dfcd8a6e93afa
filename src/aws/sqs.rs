//! SQS: the agent's inbound queue (EventBridge events and its own ticks).

use std::future::Future;

use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::MessageSystemAttributeName;

use super::CallCounter;
use super::call::{boxed, call};
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

/// The account a queue URL names: `https://sqs.<region>.amazonaws.com/<account>/<name>` (and
/// the legacy `https://<region>.queue.amazonaws.com/...`), or an emulator's
/// `http://127.0.0.1:<port>/<account>/<name>`: the first of exactly two path segments, when it is
/// a 12-digit account id. `None` for anything else (the agent then does not filter events on
/// account).
pub fn account_from_queue_url(url: &str) -> Option<String> {
    let url = reqwest::Url::parse(url.trim()).ok()?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return None;
    }
    let mut segments = url.path_segments()?;
    let (account, name) = (segments.next()?, segments.next()?);
    let valid = account.len() == 12
        && account.bytes().all(|b| b.is_ascii_digit())
        && !name.is_empty()
        && segments.next().is_none();
    valid.then(|| account.to_string())
}

impl Queue for AwsQueue {
    fn receive(
        &self,
        max: u32,
        wait_s: u32,
        visibility_s: u32,
    ) -> impl Future<Output = PortResult<Vec<QueueMessage>>> + Send {
        boxed(async move {
            let request = self
                .client
                .receive_message()
                .queue_url(&self.url)
                .max_number_of_messages(max.clamp(1, 10) as i32)
                .wait_time_seconds(wait_s.min(20) as i32)
                .visibility_timeout(visibility_s.min(43_200) as i32)
                .message_system_attribute_names(
                    MessageSystemAttributeName::ApproximateReceiveCount,
                );
            let r = call(&self.calls, "sqs:ReceiveMessage", request.send()).await?;
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

    fn delete(&self, receipt: &str) -> impl Future<Output = PortResult<()>> + Send {
        boxed(async move {
            let request = self
                .client
                .delete_message()
                .queue_url(&self.url)
                .receipt_handle(receipt);
            call(&self.calls, "sqs:DeleteMessage", request.send())
                .await
                .map(drop)
        })
    }

    fn extend_visibility(
        &self,
        receipt: &str,
        seconds: u32,
    ) -> impl Future<Output = PortResult<()>> + Send {
        boxed(async move {
            let request = self
                .client
                .change_message_visibility()
                .queue_url(&self.url)
                .receipt_handle(receipt)
                .visibility_timeout(seconds.min(43_200) as i32);
            call(&self.calls, "sqs:ChangeMessageVisibility", request.send())
                .await
                .map(drop)
        })
    }

    fn send(&self, body: &str, delay_s: u32) -> impl Future<Output = PortResult<()>> + Send {
        boxed(async move {
            let request = self
                .client
                .send_message()
                .queue_url(&self.url)
                .message_body(body)
                .delay_seconds(delay_s.min(crate::agent::MAX_DELAY_S) as i32);
            call(&self.calls, "sqs:SendMessage", request.send())
                .await
                .map(drop)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::account_from_queue_url;

    #[test]
    fn the_account_comes_from_the_queue_url() {
        for (url, account) in [
            (
                "https://sqs.us-east-1.amazonaws.com/123456789012/aurora-migrator",
                Some("123456789012"),
            ),
            (
                "https://sqs.eu-west-3.amazonaws.com/000011112222/q.fifo",
                Some("000011112222"),
            ),
            (
                "https://us-east-1.queue.amazonaws.com/123456789012/aurora-migrator",
                Some("123456789012"),
            ),
            (
                "http://127.0.0.1:45123/123456789012/aurora-migrator",
                Some("123456789012"),
            ),
            (
                "http://localhost:4566/123456789012/aurora-migrator",
                Some("123456789012"),
            ),
            // Not derivable: no filter on account.
            ("", None),
            ("aurora-migrator", None),
            ("https://sqs.us-east-1.amazonaws.com/aurora-migrator", None),
            ("https://sqs.us-east-1.amazonaws.com/123456789012/", None),
            (
                "https://sqs.us-east-1.amazonaws.com/12345/aurora-migrator",
                None,
            ),
            (
                "https://sqs.us-east-1.amazonaws.com/abcdefghijkl/aurora-migrator",
                None,
            ),
            ("https://sqs.us-east-1.amazonaws.com/123456789012/a/b", None),
            (
                "ftp://sqs.us-east-1.amazonaws.com/123456789012/aurora-migrator",
                None,
            ),
        ] {
            assert_eq!(account_from_queue_url(url).as_deref(), account, "{url}");
        }
    }
}
