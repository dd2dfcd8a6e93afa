//! The agent's own wake-up message: a small, versioned JSON document.
//!
//! ```json
//! {"kind": "aurora-migrator.tick", "version": 1, "resource_id": "db-ABC", "attempt": 1, "token": 7}
//! ```
//! `token` must equal the record's current wake token; any other tick is stale and is dropped
//! without observing, so duplicates and resyncs never start extra chains of ticks.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{ParseError, malformed};
use crate::core::MigrationId;

pub const KIND: &str = "aurora-migrator.tick";
/// The only schema version this agent reads and writes.
pub const VERSION: u32 = 1;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tick {
    pub kind: String,
    pub version: u32,
    pub resource_id: String,
    pub attempt: u32,
    pub token: u64,
}

impl Tick {
    pub fn new(id: &MigrationId, token: u64) -> Self {
        Tick {
            kind: KIND.to_string(),
            version: VERSION,
            resource_id: id.resource_id.clone(),
            attempt: id.attempt,
            token,
        }
    }

    pub fn migration(&self) -> MigrationId {
        MigrationId {
            resource_id: self.resource_id.clone(),
            attempt: self.attempt,
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a tick always serializes")
    }
}

pub(super) fn parse(value: Value) -> Result<Tick, ParseError> {
    let tick: Tick = serde_json::from_value(value).map_err(|e| malformed("tick", e))?;
    if tick.version != VERSION {
        return Err(malformed(
            "tick",
            format!("unsupported version {}", tick.version),
        ));
    }
    if tick.resource_id.is_empty() || tick.attempt == 0 {
        return Err(malformed("tick", "empty resource id or attempt 0"));
    }
    Ok(tick)
}
