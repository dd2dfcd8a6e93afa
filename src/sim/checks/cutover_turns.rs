//! No more migrations in their cutover at once than the agent's limit (`MIGRATOR_MAX_CUTOVERS`,
//! `agent::cutover_turns`).
//!
//! Checked when a record is saved moving from AwaitingCutover into Quiescing (the moment a turn
//! is used): the records whose writes are stopped (Quiescing … Routing, or rolling back with
//! the source fenced: `agent::holds_cutover_turn`) must be fewer than the limit. The simulator runs one agent process at a time, so the table
//! holds every cutover it must count, including those under way when it was restarted: a
//! process that gave a turn before counting them is caught here.

use crate::core::{Migration, Phase};
use crate::sim::world::State;

/// The violation, if saving `m` (stored before in `before`) uses a turn there was not.
pub fn check(state: &State, m: &Migration, before: Option<Phase>) -> Option<String> {
    if before != Some(Phase::AwaitingCutover) || m.phase != Phase::Quiescing {
        return None;
    }
    let under_way: Vec<String> = state
        .store
        .values()
        .filter(|r| r.id != m.id && crate::agent::holds_cutover_turn(r))
        .map(|r| format!("{} in {}", r.id, r.phase))
        .collect();
    (under_way.len() >= state.max_cutovers).then(|| {
        format!(
            "{} entered its cutover while {} migrations were in theirs (limit {}): {}",
            m.id,
            under_way.len(),
            state.max_cutovers,
            under_way.join(", ")
        )
    })
}
