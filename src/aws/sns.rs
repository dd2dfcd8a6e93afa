//! SNS: one message per notification, in the AWS Chatbot custom-notification format.

use std::future::Future;

use aws_sdk_sns::Client;
use aws_sdk_sns::types::MessageAttributeValue;

use super::CallCounter;
use super::call::{boxed, call};
use crate::core::notification::Notification;
use crate::ports::{Notifier, PortResult};

pub struct AwsNotifier {
    client: Client,
    calls: CallCounter,
    topic_arn: String,
    /// Ids of notifications this process already published. A successful publish is reported
    /// back (`core::machine::results::feeds_back`) and the outbox lets go of it on the next
    /// step, but a step that ends before it hears the outcome (an observe error, the step
    /// limit, a crash of the step's task) offers the same notification again: this keeps it to
    /// one message per notification per process.
    sent: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl AwsNotifier {
    pub fn new(client: Client, calls: CallCounter, topic_arn: &str) -> Self {
        AwsNotifier {
            client,
            calls,
            topic_arn: topic_arn.to_string(),
            sent: Default::default(),
        }
    }
}

impl Notifier for AwsNotifier {
    fn publish(&self, note: &Notification) -> impl Future<Output = PortResult<()>> + Send {
        boxed(async move {
            let id = note.id();
            if self
                .sent
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(&id)
            {
                return Ok(());
            }
            let mut request = self
                .client
                .publish()
                .topic_arn(&self.topic_arn)
                .subject(note.subject())
                .message(note.chatbot_message().to_string());
            for (name, value) in note.attributes() {
                request = request.message_attributes(
                    name,
                    MessageAttributeValue::builder()
                        .data_type("String")
                        .string_value(value)
                        .build()
                        .expect("data type is set"),
                );
            }
            call(&self.calls, "sns:Publish", request.send()).await?;
            let mut sent = self.sent.lock().unwrap_or_else(|p| p.into_inner());
            if sent.len() > 100_000 {
                sent.clear();
            }
            sent.insert(id);
            Ok(())
        })
    }
}
