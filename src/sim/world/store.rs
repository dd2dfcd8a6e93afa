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

    /// The lease fence of a save (`ports::StateStore::save`): the item's lease must still be
    /// `lease`'s holder and token. A store that ignores versions (a teeth variant) ignores it
    /// too.
    pub(super) fn fenced(&self, m: &Migration, lease: &Lease) -> Result<(), StoreError> {
        assert_eq!(lease.id, m.id, "a save is fenced by its own record's lease");
        let ours = self
            .leases
            .get(&m.id)
            .is_some_and(|l| l.is_same_taking(lease));
        if ours || self.store_mode == StoreMode::IgnoresVersion {
            Ok(())
        } else {
            Err(StoreError::LeaseLost)
        }
    }

    /// Takes `id`'s lease for `holder` if it is free, lapsed or `holder`'s ([`Lease::take`],
    /// the adapter's conditional `UpdateItem`).
    pub(super) fn acquire_lease(
        &mut self,
        id: &MigrationId,
        holder: &str,
        now: Timestamp,
        ttl: SignedDuration,
    ) -> Result<Lease, LeaseError> {
        if !self.store.contains_key(id) {
            return Err(LeaseError::NoRecord);
        }
        let lease = Lease::take(id, self.leases.get(id), holder, now, ttl)?;
        self.leases.insert(id.clone(), lease.clone());
        if let Some((due, dead)) = self.orphans.get(id)
            && dead != holder
        {
            let took = (self.now - due).max(0);
            self.takeovers_ms.push(took);
            self.orphans.remove(id);
        }
        Ok(lease)
    }

    /// `holder` died at `now`: the migrations in their cutover whose lease it held are
    /// orphans until another process takes their lease, counted from when their next step was
    /// due (a migration waiting for a wake-up a minute away loses nothing to the death before
    /// it). Earlier orphans are dropped unmeasured (their takeover now waits on this crash too).
    pub fn orphan_leases_of(&mut self, holder: &str, measured: bool) {
        self.orphans.clear();
        if !measured {
            return;
        }
        let now = self.now;
        let held: Vec<(MigrationId, Ms)> = self
            .leases
            .values()
            .filter(|l| l.holder == holder)
            .filter_map(|l| {
                let m = self.store.get(&l.id).filter(|m| m.phase.is_cutover())?;
                let due = m.next_wake.as_ref().map_or(now, |w| self.ms(w.at).max(now));
                Some((l.id.clone(), due))
            })
            .collect();
        for (id, due) in held {
            self.orphans.insert(id, (due, holder.to_string()));
        }
    }

    pub(super) fn release_lease(&mut self, lease: &Lease) -> Result<(), LeaseError> {
        Lease::set_expiry(self.leases.get_mut(&lease.id), lease, Timestamp::UNIX_EPOCH).map(drop)
    }

    pub(super) fn renew_lease(
        &mut self,
        lease: &Lease,
        now: Timestamp,
        ttl: SignedDuration,
    ) -> Result<Lease, LeaseError> {
        Lease::set_expiry(self.leases.get_mut(&lease.id), lease, now + ttl)
    }

    pub(super) fn save(&mut self, m: &Migration) -> Result<u64, StoreError> {
        let stored = self.store.get(&m.id).cloned();
        let current = stored.as_ref().map_or(0, |s| s.version);
        if self.store_mode == StoreMode::Conditional && current != m.version {
            self.stale_saves += 1;
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
        if stored.is_none()
            && let Some(v) = crate::sim::checks::attempts::check(self, m)
        {
            self.violation(v);
        }
        let phase_before = stored.as_ref().map(|s| s.phase);
        if let Some(v) = crate::sim::checks::turns::check(self, m, phase_before) {
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

impl SimPort {
    /// A write with a condition (`create`, `save`, the lease's): one mutating call whose
    /// answer is the store's own verdict `f` (`Err` when the condition failed), or the call's
    /// failure as `E`'s port error. A call that fails after its write landed (a reply lost)
    /// answers with the failure, as DynamoDB's client would.
    async fn conditional_write<T, E: From<PortError>>(
        &self,
        op: &'static str,
        f: impl FnOnce(&mut State) -> Result<T, E>,
    ) -> Result<T, E> {
        let mut verdict = None;
        let r = self
            .call(op, true, |s| {
                verdict = Some(f(s));
                Ok(())
            })
            .await;
        match (r, verdict) {
            (Ok(()), Some(v)) => v,
            (Err(e), _) => Err(E::from(e)),
            (Ok(()), None) => unreachable!("the call ran its closure"),
        }
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

    async fn create(&self, m: &Migration) -> Result<u64, StoreError> {
        assert_eq!(m.version, 0, "create writes a new record only");
        self.conditional_write("dynamodb:PutItem", |s| s.save(m))
            .await
    }

    async fn save(&self, m: &Migration, lease: &Lease) -> Result<u64, StoreError> {
        assert!(m.version > 0, "a new record is created, not saved");
        self.conditional_write("dynamodb:UpdateItem", |s| {
            s.fenced(m, lease).and_then(|()| s.save(m))
        })
        .await
    }

    async fn acquire_lease(
        &self,
        id: &MigrationId,
        holder: &str,
        now: Timestamp,
        ttl: SignedDuration,
    ) -> Result<Lease, LeaseError> {
        self.conditional_write("dynamodb:UpdateItem", |s| {
            s.acquire_lease(id, holder, now, ttl)
        })
        .await
    }

    async fn release_lease(&self, lease: &Lease) -> Result<(), LeaseError> {
        self.conditional_write("dynamodb:UpdateItem", |s| s.release_lease(lease))
            .await
    }

    async fn renew_lease(
        &self,
        lease: &Lease,
        now: Timestamp,
        ttl: SignedDuration,
    ) -> Result<Lease, LeaseError> {
        self.conditional_write("dynamodb:UpdateItem", |s| s.renew_lease(lease, now, ttl))
            .await
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
