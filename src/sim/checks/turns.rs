//! No more migrations in a stretch that takes turns than the agent's limit (`agent::turns`):
//! in their cutover (`MIGRATOR_MAX_CUTOVERS`), in Preflight or Preparing
//! (`MIGRATOR_MAX_PREPARATIONS`).
//!
//! Checked when a record is saved moving out of the phase that waits for the turn into the
//! stretch (AwaitingCutover → Quiescing, Requested → Preflight: the moment a turn is used): the
//! records already in the stretch (`agent::holds_cutover_turn`, `agent::holds_preparation_turn`)
//! must be fewer than the limit. The table holds every migration the agents must count,
//! including those under way when one was restarted: a process that gave a turn before counting
//! them is caught here. With two agents the limit is the sum of theirs (each counts its own).

use crate::agent::TurnKind;
use crate::core::{Migration, Phase};
use crate::sim::world::State;

/// The violation, if saving `m` (stored before in `before`) uses a turn there was not. Notes
/// the most preparations under way at once (`State::peak_preparations`, for the report).
pub fn check(state: &mut State, m: &Migration, before: Option<Phase>) -> Option<String> {
    let (kind, limit, stretch) = match (before, m.phase) {
        (Some(Phase::AwaitingCutover), Phase::Quiescing) => {
            (TurnKind::Cutover, state.max_cutovers, "cutover")
        }
        (Some(Phase::Requested), Phase::Preflight) => {
            (TurnKind::Preparation, state.max_preparations, "preparation")
        }
        _ => return None,
    };
    let under_way: Vec<String> = state
        .store
        .values()
        .filter(|r| r.id != m.id && kind.holds(r))
        .map(|r| format!("{} in {}", r.id, r.phase))
        .collect();
    if kind == TurnKind::Preparation {
        state.peak_preparations = state.peak_preparations.max(under_way.len() + 1);
    }
    (under_way.len() >= limit).then(|| {
        format!(
            "{} entered its {stretch} while {} migrations were in theirs (limit {limit}): {}",
            m.id,
            under_way.len(),
            under_way.join(", ")
        )
    })
}
