//! An attempt begins only on a `start` that the agent has not reset.
//!
//! Checked at the moment a record is created (`StateStore::create` lands): an attempt after
//! the first is created only while the source's trigger reads `start` in RDS. The agent resets
//! the trigger when an attempt ends without completing (`stopped`), and the record's
//! `trigger_reset_at` says it did; nobody in the simulated world sets `start` again. So a
//! second attempt here was started from a view of the trigger read before its reset (a look
//! at the source paired with a newer record), and it would migrate an instance that nobody
//! asked to migrate again: it quarantines and reboots a production database for nothing, and
//! does so again every time the attempt ends.

use crate::core::Migration;
use crate::core::tags::{ControlTags, DEFAULT_PREFIX};
use crate::sim::world::State;

/// The violation, if creating `m` now begins an attempt the trigger does not ask for.
pub fn check(state: &State, m: &Migration) -> Option<String> {
    if m.id.attempt <= 1 {
        return None;
    }
    let s = state.sources.get(&m.source_identifier)?;
    let trigger = ControlTags::read(DEFAULT_PREFIX, &s.view.tags);
    (!trigger.start).then(|| {
        format!(
            "attempt {} of {} began while its trigger did not read `start` (the agent had reset it: the attempt was started from an older look at the tags)",
            m.id.attempt, m.source_identifier
        )
    })
}
