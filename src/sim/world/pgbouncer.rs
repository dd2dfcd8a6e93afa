//! PgBouncer in the simulator: for the sources that route through one (tag
//! `aurora-migration:router` = `pgbouncer:<source>-pgbouncer:6480:app`), an entry pointing at
//! the source whose clients the companion holds (`PAUSE`), re-points and releases. Traffic
//! follows the entry when it is re-pointed and resumed.
//!
//! Fault model:
//! - a hold (PAUSE waiting for the pool's transactions), a route and a release take the call's
//!   latency (`SimPort::call`); the clients' own transactions are not modelled (the real
//!   PgBouncer test, `tests/postgres_pgbouncer.rs`, has them);
//! - a source with the permanent fault `RouteNeverInSync`: its companion is unreachable once the
//!   clients are held (the host lost, the console down): every route request fails as
//!   retryable, which the agent must meet with a failed migration, the source fenced, people
//!   told (the companion's own maximum hold then resumes the clients: not modelled);
//! - the calls draw the usual call faults in `SimPort::call`.
//!
//! Checked here, where it happens: the source is never fenced while its clients are not held
//! (the point of the hold: ending the source's sessions must meet no transaction).

use super::*;
use crate::core::router::PoolerEntry;

/// A source's PgBouncer entry.
#[derive(Clone, Debug)]
pub struct Pooler {
    pub companion: String,
    /// Where the entry points (the source's endpoint until routed).
    pub host: String,
    pub port: u16,
    /// PgBouncer holds the clients (paused).
    pub paused: bool,
    /// The companion stopped answering after the hold (`RouteNeverInSync`).
    pub lost: bool,
}

impl State {
    /// `id` routes through PgBouncer: its owners tag it and run a companion beside it.
    pub fn route_through_pgbouncer(&mut self, id: &str) {
        let Some(s) = self.sources.get_mut(id) else {
            return;
        };
        let companion = format!("{id}-pgbouncer:6480");
        s.view.tags.insert(
            "aurora-migration:router".to_string(),
            format!("pgbouncer:{companion}:app"),
        );
        let (host, port) = s
            .view
            .endpoint
            .as_ref()
            .map(|e| (e.address.clone(), e.port))
            .unwrap_or_default();
        s.pooler = Some(Pooler {
            companion,
            host,
            port,
            paused: false,
            lost: false,
        });
        self.refresh(id);
    }

    fn pooler_source(&self, router: &RouterChoice) -> Option<String> {
        let RouterChoice::PgBouncer { companion, .. } = router else {
            return None;
        };
        self.sources
            .iter()
            .find(|(_, s)| s.pooler.as_ref().is_some_and(|p| p.companion == *companion))
            .map(|(id, _)| id.clone())
    }

    /// The source whose companion `router` names, when the companion answers: NotFound for an
    /// unknown entry, retryable when the companion is lost (`RouteNeverInSync`).
    fn reachable_pooler(&mut self, op: &str, router: &RouterChoice) -> PortResult<String> {
        let id = self
            .pooler_source(router)
            .ok_or_else(|| PortError::new(ErrorKind::NotFound, op, "no such entry"))?;
        if self.sources[&id].pooler.as_ref().is_some_and(|p| p.lost) {
            return Err(State::unreachable(op));
        }
        Ok(id)
    }

    /// The pooler of a source `reachable_pooler` found.
    fn pooler_mut(&mut self, id: &str) -> &mut Pooler {
        self.sources
            .get_mut(id)
            .and_then(|s| s.pooler.as_mut())
            .expect("found by reachable_pooler")
    }

    fn unreachable(op: &str) -> PortError {
        PortError::new(
            ErrorKind::Retryable,
            op,
            "502: the PgBouncer admin console could not be reached",
        )
    }

    /// `/v1/entry`.
    pub(super) fn pooler_view(&self, router: &RouterChoice) -> Option<PoolerEntry> {
        let id = self.pooler_source(router)?;
        let p = self.sources[&id].pooler.as_ref()?;
        Some(PoolerEntry {
            database: "app".to_string(),
            host: p.host.clone(),
            port: p.port,
            paused: p.paused,
            query_wait_timeout_s: Some(0),
        })
    }

    /// `/v1/hold`: PAUSE.
    pub(super) fn pooler_hold(&mut self, request: &RouteRequest) -> PortResult<()> {
        let id = self.reachable_pooler("pgbouncer:hold", &request.router)?;
        let never = self.sources[&id].permanent == Some(PermanentFault::RouteNeverInSync);
        let p = self.pooler_mut(&id);
        p.paused = true;
        p.lost = never;
        self.log(|| format!("{id}: PgBouncer PAUSE (clients held)"));
        Ok(())
    }

    /// `/v1/release`: RESUME where it points.
    pub(super) fn pooler_release(&mut self, request: &RouteRequest) -> PortResult<()> {
        let id = self.reachable_pooler("pgbouncer:release", &request.router)?;
        let p = self.pooler_mut(&id);
        p.paused = false;
        self.log(|| format!("{id}: PgBouncer RESUME"));
        Ok(())
    }

    /// `/v1/route`: PAUSE, re-point, RELOAD, RESUME; traffic follows.
    pub(super) fn pooler_route(&mut self, request: &RouteRequest) -> PortResult<()> {
        let id = self.reachable_pooler("pgbouncer:route", &request.router)?;
        let p = self.pooler_mut(&id);
        p.host = request.endpoint.clone();
        p.port = request.port;
        p.paused = false;
        self.log(|| {
            format!(
                "{id}: PgBouncer re-pointed at {} and resumed",
                request.endpoint
            )
        });
        self.route(request)
    }

    /// The source `id` is being fenced: its PgBouncer clients must be held by now.
    pub(super) fn check_pooler_held(&mut self, id: &str) {
        let unheld = self.sources[id].pooler.as_ref().is_some_and(|p| !p.paused);
        if unheld {
            self.violation(format!(
                "{id}: fenced while its PgBouncer clients were not held (their transactions meet the fence)"
            ));
        }
    }
}
