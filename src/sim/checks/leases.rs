//! One agent at a time acts for a migration (`agent::lease`).
//!
//! Checked at every call that changes something outside the agent's own table and queue (RDS,
//! EC2, the routers, notifications, the heartbeat), as it leaves the process: when the call is
//! part of a migration's step, the process making it must be the holder of that migration's
//! lease as the table has it (lapsed but not taken by another is still its own). A process
//! whose lease was taken and that runs its step's actions anyway is caught here: the guard in
//! `agent::execute` is what stops it.
//!
//! Not checked: DynamoDB and SQS calls (a process that finds the lease taken sends the record's
//! tick and writes nothing that is not fenced), and calls outside a step (resync listings).

use crate::sim::world::State;

/// The violation, if `process` makes the call `op` for a migration whose lease it does not
/// hold.
pub fn check(state: &State, process: &str, op: &str) -> Option<String> {
    if op.starts_with("dynamodb:") || op.starts_with("sqs:") {
        return None;
    }
    let id = crate::agent::stepping_migration()?;
    let holder = state.leases.get(&id).map(|l| (l.holder.as_str(), l.token));
    match holder {
        Some((h, _)) if h == process => None,
        Some((h, token)) => Some(format!(
            "{process} called {op} for {id} while {h} held its lease (token {token})"
        )),
        None => Some(format!(
            "{process} called {op} for {id}, whose lease nobody has taken"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{MigrationId, Phase};
    use crate::ports::Lease;
    use crate::sim::faults::FaultPlan;
    use crate::sim::world::StoreMode;

    fn id() -> MigrationId {
        MigrationId {
            resource_id: "db-1".into(),
            attempt: 1,
        }
    }

    fn held_by(holder: &str) -> State {
        let mut s = State::new(
            1,
            FaultPlan::scripted(Vec::new()),
            StoreMode::Conditional,
            false,
        );
        s.leases.insert(
            id(),
            Lease {
                id: id(),
                holder: holder.into(),
                token: 3,
                expires_at: jiff::Timestamp::UNIX_EPOCH,
                taken_from: None,
            },
        );
        s
    }

    /// Run inside a step of `id()`, as the agent's actions are.
    fn in_step<T>(f: impl FnOnce() -> T) -> T {
        let step = async { f() };
        let scoped = crate::agent::stepping_scope(id(), Phase::Promoting, step);
        block_on(scoped)
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(f)
    }

    #[test]
    fn a_call_for_a_migration_whose_lease_another_process_holds_is_a_violation() {
        let s = held_by("agent-1.0");
        let v = in_step(|| check(&s, "agent-0.0", "rds:PromoteReadReplicaDBCluster"));
        assert_eq!(
            v.as_deref(),
            Some(
                "agent-0.0 called rds:PromoteReadReplicaDBCluster for db-1/1 while agent-1.0 held its lease (token 3)"
            )
        );
        // Its holder may (lapsed or not: nobody else took it).
        assert_eq!(
            in_step(|| check(&s, "agent-1.0", "rds:PromoteReadReplicaDBCluster")),
            None
        );
        // The table and the queue are not AWS changes a lease guards.
        assert_eq!(in_step(|| check(&s, "agent-0.0", "sqs:SendMessage")), None);
        // Outside a step (a resync's listing) there is no migration to hold.
        assert_eq!(check(&s, "agent-0.0", "rds:AddTagsToResource"), None);
    }
}
