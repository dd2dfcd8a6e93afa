//! Notifications: one per phase change, plus alerts, in the AWS Chatbot (Amazon Q Developer in
//! chat applications) custom-notification format, so a Slack channel following the SNS topic
//! shows them threaded per migration.

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::phase::Phase;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Error,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Error => "error",
        }
    }
    fn emoji(self) -> &'static str {
        match self {
            Severity::Info => ":large_blue_circle:",
            Severity::Warning => ":warning:",
            Severity::Error => ":rotating_light:",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification {
    /// `<resource id>#<attempt>`: the Slack thread.
    pub migration: String,
    pub db_instance: String,
    pub phase: Phase,
    pub severity: Severity,
    /// Why this was sent: `phase-change`, `cutover`, or an alert's name.
    pub event: String,
    pub title: String,
    pub description: String,
    pub next_steps: Vec<String>,
    pub related_resources: Vec<String>,
}

/// SNS rejects a Subject of 100 characters or more.
pub const SUBJECT_MAX_CHARS: usize = 99;

impl Notification {
    /// Unique per migration, phase change and alert: the outbox's key and the Chatbot `id`.
    pub fn id(&self) -> String {
        format!("{}:{}:{}", self.migration, self.phase, self.event)
    }

    /// SNS Subject: one line, under 100 characters, cut with an ellipsis.
    pub fn subject(&self) -> String {
        let raw = format!(
            "[{}] {} {}: {}",
            self.severity.as_str(),
            self.db_instance,
            self.phase,
            self.title
        );
        let line: String = raw
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        if line.chars().count() <= SUBJECT_MAX_CHARS {
            line
        } else {
            let mut cut: String = line.chars().take(SUBJECT_MAX_CHARS - 1).collect();
            cut.push('…');
            cut
        }
    }

    /// The SNS Message body: an AWS Chatbot custom notification.
    pub fn chatbot_message(&self) -> serde_json::Value {
        json!({
            "version": "1.0",
            "source": "custom",
            "id": self.id(),
            "content": {
                "textType": "client-markdown",
                "title": format!("{} {} — {}", self.severity.emoji(), self.db_instance, self.title),
                "description": self.description,
                "nextSteps": self.next_steps,
                "keywords": ["aurora-migration", self.db_instance, self.phase.as_str()],
            },
            "metadata": {
                "threadId": self.migration,
                "summary": format!("{} {}", self.db_instance, self.phase),
                "eventType": "MigrationPhaseChange",
                "relatedResources": self.related_resources,
                "additionalContext": {
                    "phase": self.phase.as_str(),
                    "severity": self.severity.as_str(),
                    "event": self.event,
                },
            }
        })
    }

    /// SNS MessageAttributes (all `String`), for subscription filter policies.
    pub fn attributes(&self) -> [(&'static str, String); 3] {
        [
            ("phase", self.phase.as_str().to_string()),
            ("db_instance", self.db_instance.clone()),
            ("severity", self.severity.as_str().to_string()),
        ]
    }
}
