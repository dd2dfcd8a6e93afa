//! The tags people set to drive a migration, read from the source instance.
//!
//! RDS tag values allow letters, digits, spaces and `_ . : / = + - @` only, so every control value
//! is a plain word. Keys are the configured prefix (default `aurora-migration`) and a suffix.

use std::collections::{BTreeMap, BTreeSet};

/// The tag prefix when `MIGRATOR_TAG_PREFIX` is unset: the contract's tag names
/// (`aurora-migration`, `aurora-migration:phase`, …). The one place it is written.
pub const DEFAULT_PREFIX: &str = "aurora-migration";

/// The trigger's value that starts an attempt.
pub const START: &str = "start";
/// The value the agent writes to the trigger when an attempt ends without completing.
pub const STOPPED: &str = "stopped";

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ControlTags {
    /// `<prefix>` = `start`
    pub start: bool,
    /// `<prefix>:abort` = `true`
    pub abort: bool,
    /// `<prefix>:approve` = `true`: approves a manual cutover.
    pub approve: bool,
    /// `<prefix>:rollback` = `approve`: asks for a rollback after promotion.
    pub rollback: bool,
    /// `<prefix>:ack-<check>` = `true`: acknowledges a preflight finding.
    pub acknowledged: BTreeSet<String>,
    /// `<prefix>:cdc-consumers` = `sg-1 sg-2`: security groups of CDC consumers.
    pub cdc_consumers: Vec<String>,
    /// `<prefix>:cdc-drained` = `true`: the consumers have read their slots to the end.
    pub cdc_drained: bool,
    /// `<prefix>:cdc-slots-created` = `true`: the consumers' slots exist on the target.
    pub cdc_slots_created: bool,
}

pub fn key(prefix: &str, suffix: &str) -> String {
    if suffix.is_empty() {
        prefix.to_string()
    } else {
        format!("{prefix}:{suffix}")
    }
}

/// The agent-only marker on a source it has taken hold of (see `Action::MarkSource`).
pub fn marker_key(prefix: &str) -> String {
    key(prefix, "marker")
}

/// The key of the phase mirror.
pub fn phase_key(prefix: &str) -> String {
    key(prefix, "phase")
}

impl ControlTags {
    pub fn read(prefix: &str, tags: &BTreeMap<String, String>) -> Self {
        let is = |suffix: &str, value: &str| {
            tags.get(&key(prefix, suffix))
                .is_some_and(|v| v.trim().eq_ignore_ascii_case(value))
        };
        let ack_prefix = format!("{prefix}:ack-");
        ControlTags {
            // Exactly `start`: the task role's IAM conditions compare it with StringEquals, so
            // a `Start` the agent accepted would be refused at its first change.
            start: tags.get(prefix).is_some_and(|v| v == START),
            abort: is("abort", "true"),
            approve: is("approve", "true"),
            rollback: is("rollback", "approve"),
            acknowledged: tags
                .iter()
                .filter(|(_, v)| v.trim().eq_ignore_ascii_case("true"))
                .filter_map(|(k, _)| k.strip_prefix(&ack_prefix).map(str::to_string))
                .collect(),
            cdc_consumers: tags
                .get(&key(prefix, "cdc-consumers"))
                .map(|v| v.split_whitespace().map(str::to_string).collect())
                .unwrap_or_default(),
            cdc_drained: is("cdc-drained", "true"),
            cdc_slots_created: is("cdc-slots-created", "true"),
        }
    }

    pub fn cdc_declared(&self) -> bool {
        !self.cdc_consumers.is_empty()
    }
}
