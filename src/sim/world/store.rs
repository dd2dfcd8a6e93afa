//! DynamoDB: the migration records with their conditional writes (`StateStore` port).

use super::*;

impl State {
    // ----- store -------------------------------------------------------------------------

    pub(super) fn load(&mut self, id: &MigrationId) -> Option<Migration> {
        if self.store_mode == StoreMode::IgnoresVersion
            && self.world_rng.chance(0.3)
            && let Some(old) = self.store_previous.get(id)
        {
            return Some(old.clone());
        }
        self.store.get(id).cloned()
    }

    pub(super) fn latest(&mut self, resource_id: &str) -> Option<Migration> {
        let newest = self
            .store
            .keys()
            .filter(|k| k.resource_id == resource_id)
            .max_by_key(|k| k.attempt)
            .cloned()?;
        self.load(&newest)
    }

    pub(super) fn save(&mut self, m: &Migration) -> Result<u64, StoreError> {
        let stored = self.store.get(&m.id).cloned();
        let current = stored.as_ref().map_or(0, |s| s.version);
        if self.store_mode == StoreMode::Conditional && current != m.version {
            return Err(StoreError::VersionConflict {
                expected: m.version,
            });
        }
        // World check: a write must never undo what a newer write recorded (a lost update).
        if let Some(prev) = &stored {
            let p = &prev.progress;
            let n = &m.progress;
            let lost = [
                (
                    "quarantined_at",
                    p.quarantined_at.is_some() && n.quarantined_at.is_none(),
                ),
                (
                    "promote_requested_at",
                    p.promote_requested_at.is_some() && n.promote_requested_at.is_none(),
                ),
                (
                    "route_requested_at",
                    p.route_requested_at.is_some() && n.route_requested_at.is_none(),
                ),
                (
                    "verification_passed_at",
                    p.verification_passed_at.is_some() && n.verification_passed_at.is_none(),
                ),
                (
                    "source_delete_requested_at",
                    p.source_delete_requested_at.is_some()
                        && n.source_delete_requested_at.is_none(),
                ),
            ];
            // Backwards along the happy path (exits to RollingBack, Paused and the terminal
            // phases aside): the write was decided from an older record.
            let on_path = |p: Phase| p <= Phase::Completed;
            // A step back the machine itself may take (Promoting → Draining when the proof
            // broke before the promotion request) is not a lost update; the fields above catch
            // a stale write that would undo the request itself.
            let regress = on_path(prev.phase)
                && on_path(m.phase)
                && m.phase < prev.phase
                && !transition_allowed(prev.phase, m.phase)
                || (prev.phase.is_terminal() && !transition_allowed(prev.phase, m.phase));
            if let Some((field, _)) = lost.iter().find(|(_, l)| *l) {
                self.violation(format!(
                    "lost update on {}: a write from version {} erased {field} recorded by version {current}",
                    m.id, m.version
                ));
            } else if regress {
                self.violation(format!(
                    "lost update on {}: a write from version {} moved the record back from {} to {}",
                    m.id, m.version, prev.phase, m.phase
                ));
            }
        }
        let phase_before = stored.as_ref().map(|s| s.phase);
        if let Some(v) = crate::sim::checks::cutover_turns::check(self, m, phase_before) {
            self.violation(v);
        }
        let version = current + 1;
        let mut new = m.clone();
        new.version = version;
        if phase_before != Some(new.phase) {
            let label = format!("{} {}", new.source_identifier, new.id.attempt);
            let phase = new.phase;
            let err = new.last_error.clone();
            self.log(|| match (phase, err) {
                (Phase::Failed | Phase::RolledBack | Phase::RollingBack, Some(e)) => {
                    format!("{label}: phase → {phase} ({e})")
                }
                _ => format!("{label}: phase → {phase}"),
            });
        }
        if let Some(old) = self.store.insert(m.id.clone(), new) {
            self.store_previous.insert(m.id.clone(), old);
        }
        Ok(version)
    }
}

impl StateStore for SimPort {
    async fn load(&self, id: &MigrationId) -> PortResult<Option<Migration>> {
        self.call("dynamodb:GetItem", false, |s| Ok(s.load(id)))
            .await
    }

    async fn latest(&self, resource_id: &str) -> PortResult<Option<Migration>> {
        self.call("dynamodb:Query", false, |s| Ok(s.latest(resource_id)))
            .await
    }

    async fn save(&self, m: &Migration) -> Result<u64, StoreError> {
        let mut outcome = None;
        let r = self
            .call("dynamodb:PutItem", true, |s| {
                outcome = Some(s.save(m));
                Ok(())
            })
            .await;
        match (r, outcome) {
            (Ok(()), Some(o)) => o,
            (Err(e), _) => Err(StoreError::Port(e)),
            (Ok(()), None) => unreachable!("the call ran its closure"),
        }
    }

    async fn list(&self) -> PortResult<Vec<Migration>> {
        self.call("dynamodb:Scan", false, |s| {
            let ids: Vec<MigrationId> = s.store.keys().cloned().collect();
            Ok(ids.iter().filter_map(|id| s.load(id)).collect())
        })
        .await
    }

    async fn fleet_paused(&self) -> PortResult<bool> {
        self.call("dynamodb:GetItem", false, |s| Ok(s.fleet_paused))
            .await
    }

    async fn set_fleet_paused(&self, paused: bool) -> PortResult<()> {
        self.call("dynamodb:PutItem", true, |s| {
            s.fleet_paused = paused;
            Ok(())
        })
        .await
    }
}
