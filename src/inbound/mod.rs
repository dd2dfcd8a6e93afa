//! Every message the agent reads from its queue, parsed into the agent's own types.
//!
//! A message only says *which* source or migration to look at (the reconcile is level-triggered),
//! so parsing keeps just that and a little context for logs. An unknown kind is reported as
//! [`ParseError::Unknown`] (the agent logs and deletes it); a known kind that is malformed is
//! [`ParseError::Malformed`] (the agent leaves it for the queue's redrive to the DLQ). A body
//! over [`MAX_BODY_BYTES`] is not parsed at all: [`ParseError::TooLarge`], handled like a
//! malformed one.

pub mod pattern;
pub mod tick;

use jiff::Timestamp;
use serde::Deserialize;
use serde_json::Value;

pub use tick::Tick;

/// Largest message body the agent parses: 64 KiB (65,536 bytes), the queue's
/// `MaximumMessageSize` as the deployment sets it. Every kind the agent reads is a few KiB; a
/// larger body (SQS itself allows up to 256 KiB) is none of them, and parsing it would only cost
/// memory and time. Such a body is refused unread ([`ParseError::TooLarge`]) and, like a
/// malformed one, left for the queue's redrive to the DLQ.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

#[derive(Clone, Debug, PartialEq)]
pub enum Inbound {
    /// `aws.rds` "RDS DB Instance Event".
    InstanceEvent(RdsEvent),
    /// `aws.rds` "RDS DB Cluster Event".
    ClusterEvent(RdsEvent),
    /// `aws.tag` "Tag Change on Resource" on an RDS resource.
    TagChange(TagChange),
    /// CloudTrail `AddTagsToResource` on RDS.
    TagsAdded(TagChange),
    /// The scheduled fleet-wide resync.
    Resync { at: Timestamp },
    /// The agent's own wake-up.
    Tick(Tick),
}

/// Where an EventBridge event says it comes from: its envelope's `account` and `region`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    pub account: String,
    pub region: String,
}

/// A parsed message and, for an EventBridge event, where it comes from (a tick, the agent's
/// own message, has no origin).
#[derive(Clone, Debug, PartialEq)]
pub struct Received {
    pub inbound: Inbound,
    pub origin: Option<Origin>,
}

/// The agent's own account and Region. An event from elsewhere is not its business (a
/// misrouted cross-account or cross-Region rule, or a sender that is not EventBridge): it is
/// deleted unhandled. `None`: not known, so not filtered on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Home {
    pub account: Option<String>,
    pub region: Option<String>,
}

impl Home {
    /// Why an event from `origin` is not this agent's; `None` when it is (or cannot be told).
    pub fn foreign(&self, origin: &Origin) -> Option<String> {
        if let Some(own) = &self.account
            && origin.account != *own
        {
            return Some(format!(
                "event from account `{}`, not this agent's `{own}`",
                origin.account
            ));
        }
        if let Some(own) = &self.region
            && origin.region != *own
        {
            return Some(format!(
                "event from Region `{}`, not this agent's `{own}`",
                origin.region
            ));
        }
        None
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct RdsEvent {
    pub source_arn: String,
    pub source_identifier: String,
    /// `RDS-EVENT-nnnn`; optional (cluster events sometimes have none).
    pub event_id: Option<String>,
    pub message: String,
    pub at: Timestamp,
}

#[derive(Clone, Debug, PartialEq)]
pub struct TagChange {
    /// The RDS resource's ARN.
    pub arn: String,
    /// Keys that changed (for CloudTrail: the keys that were added).
    pub changed_keys: Vec<String>,
}

#[derive(Debug, PartialEq, thiserror::Error)]
pub enum ParseError {
    #[error("unknown message kind: {0}")]
    Unknown(String),
    #[error("malformed {kind}: {reason}")]
    Malformed { kind: &'static str, reason: String },
    /// Over [`MAX_BODY_BYTES`]: not parsed (and never logged).
    #[error("message body of {bytes} bytes is over the {MAX_BODY_BYTES}-byte limit, not parsed")]
    TooLarge { bytes: usize },
}

fn malformed(kind: &'static str, reason: impl ToString) -> ParseError {
    ParseError::Malformed {
        kind,
        reason: reason.to_string(),
    }
}

#[derive(Deserialize)]
struct Envelope {
    /// Every EventBridge event names both; one that does not is malformed.
    account: String,
    region: String,
    time: Timestamp,
    #[serde(default)]
    resources: Vec<String>,
    detail: Value,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RdsDetail {
    source_arn: String,
    #[serde(default)]
    source_identifier: String,
    #[serde(rename = "EventID", default)]
    event_id: Option<String>,
    #[serde(default)]
    message: String,
    #[serde(default)]
    date: Option<Timestamp>,
}

#[derive(Deserialize)]
struct TagDetail {
    #[serde(rename = "changed-tag-keys", default)]
    changed_tag_keys: Vec<String>,
    #[serde(default)]
    service: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CloudTrailDetail {
    event_source: String,
    event_name: String,
    request_parameters: Option<CloudTrailTagParams>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CloudTrailTagParams {
    resource_name: String,
    #[serde(default)]
    tags: Vec<CloudTrailTag>,
}

#[derive(Deserialize)]
struct CloudTrailTag {
    key: String,
}

/// Parses one queue message body.
pub fn parse(body: &str) -> Result<Inbound, ParseError> {
    read(body).map(|r| r.inbound)
}

/// Parses one queue message body, keeping where an event comes from.
pub fn read(body: &str) -> Result<Received, ParseError> {
    if body.len() > MAX_BODY_BYTES {
        return Err(ParseError::TooLarge { bytes: body.len() });
    }
    let value: Value =
        serde_json::from_str(body).map_err(|e| malformed("message", format!("not JSON: {e}")))?;
    if value.get("kind").and_then(Value::as_str) == Some(tick::KIND) {
        return tick::parse(value).map(|t| Received {
            inbound: Inbound::Tick(t),
            origin: None,
        });
    }
    let (Some(source), Some(detail_type)) = (
        value.get("source").and_then(Value::as_str),
        value.get("detail-type").and_then(Value::as_str),
    ) else {
        return Err(ParseError::Unknown(
            "neither an EventBridge event nor an agent tick".to_string(),
        ));
    };
    let kind = match (source, detail_type) {
        ("aws.rds", "RDS DB Instance Event") => "RDS DB Instance Event",
        ("aws.rds", "RDS DB Cluster Event") => "RDS DB Cluster Event",
        ("aws.tag", "Tag Change on Resource") => "Tag Change on Resource",
        ("aws.rds", "AWS API Call via CloudTrail") => "CloudTrail RDS call",
        ("aws.events", "Scheduled Event") => "Scheduled Event",
        (s, d) => return Err(ParseError::Unknown(format!("{s} / {d}"))),
    };
    let envelope: Envelope = serde_json::from_value(value).map_err(|e| malformed(kind, e))?;
    let origin = Origin {
        account: envelope.account.clone(),
        region: envelope.region.clone(),
    };
    let inbound = event(kind, envelope)?;
    Ok(Received {
        inbound,
        origin: Some(origin),
    })
}

fn event(kind: &'static str, envelope: Envelope) -> Result<Inbound, ParseError> {
    match kind {
        "RDS DB Instance Event" | "RDS DB Cluster Event" => {
            let d: RdsDetail =
                serde_json::from_value(envelope.detail).map_err(|e| malformed(kind, e))?;
            if !d.source_arn.starts_with("arn:") {
                return Err(malformed(kind, "SourceArn is not an ARN"));
            }
            // Some samples carry `rds:<id>`: the ARN is the truth, the identifier is for logs.
            let identifier = d
                .source_arn
                .rsplit(':')
                .next()
                .unwrap_or_default()
                .to_string();
            let event = RdsEvent {
                source_identifier: if identifier.is_empty() {
                    d.source_identifier
                } else {
                    identifier
                },
                source_arn: d.source_arn,
                event_id: d.event_id,
                message: d.message,
                at: d.date.unwrap_or(envelope.time),
            };
            Ok(if kind == "RDS DB Instance Event" {
                Inbound::InstanceEvent(event)
            } else {
                Inbound::ClusterEvent(event)
            })
        }
        "Tag Change on Resource" => {
            let d: TagDetail =
                serde_json::from_value(envelope.detail).map_err(|e| malformed(kind, e))?;
            if d.service != "rds" {
                return Err(ParseError::Unknown(format!(
                    "tag change on service `{}`",
                    d.service
                )));
            }
            let arn = envelope
                .resources
                .into_iter()
                .next()
                .ok_or_else(|| malformed(kind, "no resource ARN"))?;
            Ok(Inbound::TagChange(TagChange {
                arn,
                changed_keys: d.changed_tag_keys,
            }))
        }
        "CloudTrail RDS call" => {
            let d: CloudTrailDetail =
                serde_json::from_value(envelope.detail).map_err(|e| malformed(kind, e))?;
            if d.event_source != "rds.amazonaws.com" || d.event_name != "AddTagsToResource" {
                return Err(ParseError::Unknown(format!(
                    "CloudTrail {} {}",
                    d.event_source, d.event_name
                )));
            }
            let params = d
                .request_parameters
                .ok_or_else(|| malformed(kind, "no requestParameters"))?;
            Ok(Inbound::TagsAdded(TagChange {
                arn: params.resource_name,
                changed_keys: params.tags.into_iter().map(|t| t.key).collect(),
            }))
        }
        _ => Ok(Inbound::Resync { at: envelope.time }),
    }
}
