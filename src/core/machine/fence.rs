//! The fence: the source reachable through the quarantine group only. One check, used by the
//! Draining proof, by the re-checks right before promotion and before routing, and by the last
//! check before the source is deleted.
//!
//! Why it is checked again and again: an IaC apply or a person can put the old groups back, or
//! add a rule to the quarantine group, at any moment; a proof a minute old is not enough before
//! an irreversible step. The fence holds when the source's groups are exactly the quarantine
//! group, `active` (RDS shows `adding`/`removing` while a change is being applied), and the
//! group, described again, has no egress rule and no ingress source beyond the declared CDC
//! consumers' groups.

use super::*;

impl Stepper<'_> {
    /// What breaks the fence around `source` (empty: it holds).
    pub(super) fn fence_breaks(&self, source: &SourceInstance, q: &str) -> Vec<String> {
        let mut breaks = Vec::new();
        if !source.groups_exactly_active(&[q.to_string()]) {
            breaks.push(format!(
                "the source's security groups are {:?}, not exactly the quarantine group {q}, active",
                source.group_ids()
            ));
        }
        match self.obs.quarantine_group.present() {
            Some(g) if self.quarantine_exact(g) => {}
            Some(_) => breaks.push(
                "the quarantine group has rules beyond its exceptions (CDC consumers, the agent)"
                    .to_string(),
            ),
            None => breaks.push("the quarantine group was not described".to_string()),
        }
        breaks
    }

    /// The fence as the Draining proof established it, on the source as observed now.
    pub(super) fn fence_intact(&self) -> Result<(), String> {
        let Some(q) = self.quarantine_id() else {
            return Err("no quarantine group was recorded".to_string());
        };
        let Some(source) = self.source() else {
            return Err("the source was not observed".to_string());
        };
        let breaks = self.fence_breaks(source, &q);
        if breaks.is_empty() {
            Ok(())
        } else {
            Err(breaks.join("; "))
        }
    }

    /// The quarantine group has no egress rule and admits exactly the CDC consumers' groups and,
    /// with database access, the agent's own.
    pub(super) fn quarantine_exact(&self, group: &SecurityGroup) -> bool {
        let Some(plan) = self.plan() else {
            return false;
        };
        let mut have = group.ingress_sources.clone();
        have.sort();
        have.dedup();
        group.egress_rules == 0 && have == plan.quarantine_admits()
    }

    /// The group the agent made for this migration (recorded in Preparing).
    pub(super) fn quarantine_id(&self) -> Option<String> {
        self.m.progress.quarantine_group_id.clone()
    }

    /// What the Draining proof still lacks (empty: proven). Records the restart when seen.
    /// True when the source has exactly the quarantine group, active. Otherwise asks for it,
    /// unless the change is already under way (the group is there, not yet `active`).
    pub(super) fn quarantine_source(&mut self, source: &SourceInstance, q: &str) -> bool {
        if source.groups_exactly_active(&[q.to_string()]) {
            return true;
        }
        if source.group_ids() != [q] {
            self.request(Action::QuarantineSource {
                instance: source.identifier.clone(),
                group_id: q.to_string(),
            });
        }
        false
    }
}
