//! The phases of one migration attempt.
//!
//! The happy path is a straight line; the other phases are exits from it. The names are the
//! public contract: their lower-case forms are written to the `<prefix>:phase` tag and sent as
//! the `phase` message attribute of every notification.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Requested,
    Preflight,
    Preparing,
    CreatingReplica,
    Replicating,
    AwaitingCutover,
    Quiescing,
    Draining,
    Promoting,
    Routing,
    Verifying,
    Decommissioning,
    Completed,
    /// Held at the cutover gate by the fleet-wide pause.
    Paused,
    /// Ended without completing, with nothing left to undo (or, after cutover, waiting for a
    /// person: the record says which).
    Failed,
    /// Undoing what was done: before promotion losslessly and by itself, after it only on an
    /// approval tag.
    RollingBack,
    RolledBack,
    /// Ended by the owners' abort tag; what was created has been removed.
    Aborted,
}

impl Phase {
    /// Every phase, in the order of the happy path first.
    pub const ALL: [Phase; 18] = [
        Phase::Requested,
        Phase::Preflight,
        Phase::Preparing,
        Phase::CreatingReplica,
        Phase::Replicating,
        Phase::AwaitingCutover,
        Phase::Quiescing,
        Phase::Draining,
        Phase::Promoting,
        Phase::Routing,
        Phase::Verifying,
        Phase::Decommissioning,
        Phase::Completed,
        Phase::Paused,
        Phase::Failed,
        Phase::RollingBack,
        Phase::RolledBack,
        Phase::Aborted,
    ];

    /// The lower-case name used in tags, message attributes and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Requested => "requested",
            Phase::Preflight => "preflight",
            Phase::Preparing => "preparing",
            Phase::CreatingReplica => "creatingreplica",
            Phase::Replicating => "replicating",
            Phase::AwaitingCutover => "awaitingcutover",
            Phase::Quiescing => "quiescing",
            Phase::Draining => "draining",
            Phase::Promoting => "promoting",
            Phase::Routing => "routing",
            Phase::Verifying => "verifying",
            Phase::Decommissioning => "decommissioning",
            Phase::Completed => "completed",
            Phase::Paused => "paused",
            Phase::Failed => "failed",
            Phase::RollingBack => "rollingback",
            Phase::RolledBack => "rolledback",
            Phase::Aborted => "aborted",
        }
    }

    /// No step ever leaves a terminal phase by itself. (Failed after cutover can still be
    /// rolled back on an approval tag: see the phase machine.)
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Phase::Completed | Phase::Failed | Phase::RolledBack | Phase::Aborted
        )
    }

    /// Cutover phases poll at seconds: the source is not taking writes.
    pub fn is_cutover(self) -> bool {
        matches!(
            self,
            Phase::Quiescing | Phase::Draining | Phase::Promoting | Phase::Routing
        )
    }

    /// The cutover or the rollback: the phases whose waits are seconds and are followed
    /// closely (the fast poll, the in-process follow-up, a late wake-up adopted at once, a
    /// look at each resync), because the source's writes are or may be stopped.
    pub fn is_followed_closely(self) -> bool {
        self.is_cutover() || self == Phase::RollingBack
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unknown phase `{0}`")]
pub struct UnknownPhase(pub String);

impl FromStr for Phase {
    type Err = UnknownPhase;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Phase::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| UnknownPhase(s.to_string()))
    }
}
