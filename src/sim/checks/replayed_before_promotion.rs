//! No promotion unless the replica had replayed every acknowledged write.
//!
//! Checked at the moment PromoteReadReplicaDBCluster lands (replication stops there), on both
//! cutover paths: the metric path's proof (CloudWatch after a reboot) and the database-aware
//! one (a fence replayed by Aurora) must each imply it. The route-time check (`messaging.rs`)
//! finds a loss only once traffic moves; this one finds the premature promotion itself, even
//! if the migration later rolls back.

use crate::sim::world::State;

/// The violation, if promoting `cluster` now would leave acknowledged writes behind. The
/// caller synced the source first.
pub fn check(state: &State, cluster: &str) -> Option<String> {
    let c = state.clusters.get(cluster)?;
    let s = state.sources.get(&c.source)?;
    (s.acked > c.applied).then(|| {
        format!(
            "promotion before the replica replayed every acknowledged write: {} asked to promote while {} had acknowledged up to #{} and the replica had applied up to #{} ({})",
            cluster,
            c.source,
            s.acked,
            c.applied,
            if s.db.is_some() { "a source with database access" } else { "a source without database access" }
        )
    })
}
