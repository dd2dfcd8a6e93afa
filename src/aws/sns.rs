//! SNS: one message per notification, in the AWS Chatbot custom-notification format.

use aws_sdk_sns::Client;
use aws_sdk_sns::types::MessageAttributeValue;

use super::CallCounter;
use super::classify::classify;
use crate::core::notification::Notification;
use crate::ports::{Notifier, PortResult};

pub struct AwsNotifier {
    client: Client,
    calls: CallCounter,
    topic_arn: String,
}

impl AwsNotifier {
    pub fn new(client: Client, calls: CallCounter, topic_arn: &str) -> Self {
        AwsNotifier {
            client,
            calls,
            topic_arn: topic_arn.to_string(),
        }
    }
}

impl Notifier for AwsNotifier {
    async fn publish(&self, note: &Notification) -> PortResult<()> {
        const OP: &str = "sns:Publish";
        self.calls.count(OP);
        let mut req = self
            .client
            .publish()
            .topic_arn(&self.topic_arn)
            .subject(note.subject())
            .message(note.chatbot_message().to_string());
        for (name, value) in note.attributes() {
            req = req.message_attributes(
                name,
                MessageAttributeValue::builder()
                    .data_type("String")
                    .string_value(value)
                    .build()
                    .expect("data type is set"),
            );
        }
        req.send().await.map(|_| ()).map_err(|e| {
            let err = classify(OP, &e);
            self.calls.error(OP, err.kind);
            err
        })
    }
}
