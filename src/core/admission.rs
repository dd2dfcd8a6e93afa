//! Whether a tagged instance starts a new attempt.
//!
//! The trigger may be seen three ways (tag-change event, CloudTrail event, resync scan), often
//! all three: an attempt starts exactly once, and only for an instance that carries the trigger.

use jiff::Timestamp;

use super::migration::{Migration, MigrationId};
use super::observation::SourceInstance;
use super::phase::Phase;
use super::tags::ControlTags;

#[derive(Clone, Debug, PartialEq)]
pub enum Admission {
    /// Create this record (attempt = last + 1).
    Start(Box<Migration>),
    /// The latest attempt is still running: step it.
    Continue(MigrationId),
    /// No trigger, or the last attempt ended and the trigger was not set again.
    Ignore(&'static str),
}

/// `latest` is the newest record for the instance's resource id, if any.
pub fn admit(
    source: &SourceInstance,
    latest: Option<&Migration>,
    tag_prefix: &str,
    now: Timestamp,
) -> Admission {
    let tags = ControlTags::read(tag_prefix, &source.tags);
    match latest {
        // Running, or ended and still cleaning up (the trigger not yet reset to `stopped`).
        Some(m) if !m.phase.is_terminal() || m.next_wake.is_some() => {
            Admission::Continue(m.id.clone())
        }
        Some(m) if m.phase == Phase::Completed => {
            Admission::Ignore("this instance was already migrated")
        }
        _ if !tags.start => Admission::Ignore("the instance does not carry the start tag"),
        latest => {
            let attempt = latest.map_or(1, |m| m.id.attempt + 1);
            let id = MigrationId {
                resource_id: source.resource_id.clone(),
                attempt,
            };
            Admission::Start(Box::new(Migration::new(
                id,
                &source.identifier,
                &source.arn,
                now,
            )))
        }
    }
}
