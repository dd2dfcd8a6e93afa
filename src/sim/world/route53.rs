//! Route 53 in the simulator: the team's CNAME for the sources that route through it (tag
//! `aurora-migration:router` = `route53:ZSIM…:<record>`), and changes that take time to reach
//! every Route 53 server. Traffic follows a change when it is in sync, not when it is asked for.
//!
//! Fault model:
//! - every accepted UPSERT is `PENDING` for 2–60 s, drawn from the world stream (AWS: changes
//!   generally reach all Route 53 authoritative servers within 60 seconds), then `INSYNC`; the
//!   clients' DNS caches are not modelled (the team's record has a 5 s TTL);
//! - a source with the permanent fault `RouteNeverInSync`: its changes stay `PENDING` forever;
//! - the calls (`ChangeResourceRecordSets`, `GetChange`, `ListResourceRecordSets`) draw the
//!   usual call faults (latency, throttling, 5xx, lost answers, crashes) in `SimPort::call`.

use super::*;

/// A change Route 53 accepted.
#[derive(Clone, Debug)]
pub struct Change {
    pub source: String,
    pub request: RouteRequest,
    /// When every server has it (`None`: never).
    pub in_sync_at: Option<Ms>,
}

/// The simulated hosted zone.
pub const ZONE: &str = "ZSIM0123456789";

impl State {
    /// `id` routes through Route 53: its owners tag it and own a CNAME to its endpoint.
    pub fn route_through_route53(&mut self, id: &str) {
        let Some(s) = self.sources.get_mut(id) else {
            return;
        };
        let record = format!("{id}.db.sim.internal");
        s.view.tags.insert(
            "aurora-migration:router".to_string(),
            format!("route53:{ZONE}:{record}"),
        );
        s.route53_record = Some(record);
        self.refresh(id);
    }

    /// `ListResourceRecordSets` of `name`: the source's CNAME, to its endpoint.
    pub(super) fn route53_record(&self, name: &str) -> Option<DnsRecord> {
        let s = self
            .sources
            .values()
            .find(|s| s.route53_record.as_deref() == Some(name))?;
        Some(DnsRecord {
            name: name.to_string(),
            kind: "CNAME".to_string(),
            values: s
                .view
                .endpoint
                .iter()
                .map(|e| e.address.to_ascii_lowercase())
                .collect(),
            ttl: Some(5),
            special: None,
        })
    }

    /// `ChangeResourceRecordSets` (UPSERT): accepted, `PENDING`.
    pub(super) fn route53_upsert(&mut self, request: &RouteRequest) -> PortResult<RouteProgress> {
        let Some(id) = self.find_source_id(&request.source) else {
            return Err(PortError::new(
                ErrorKind::Fatal,
                "route53:ChangeResourceRecordSets",
                "no such record",
            ));
        };
        let now = self.now;
        let never = self.sources[&id].permanent == Some(PermanentFault::RouteNeverInSync);
        let pending = self.world_rng.range(2 * SEC, 60 * SEC);
        let change = format!("C{:06}", self.route53_changes.len() + 1);
        if let Some(s) = self.sources.get_mut(&id) {
            s.route_accepted_at.get_or_insert(now);
        }
        self.route53_changes.insert(
            change.clone(),
            Change {
                source: id.clone(),
                request: request.clone(),
                in_sync_at: (!never).then_some(now + pending),
            },
        );
        if !never {
            self.schedule(pending, Ev::Route53InSync(change.clone()));
        }
        self.log(|| {
            format!(
                "{id}: Route 53 change {change} to {} (PENDING)",
                request.endpoint
            )
        });
        Ok(RouteProgress::Propagating { change })
    }

    /// `GetChange`.
    pub(super) fn route53_status(&mut self, change: &str) -> PortResult<RouteProgress> {
        let now = self.now;
        match self.route53_changes.get(change) {
            None => Err(PortError::new(
                ErrorKind::NotFound,
                "route53:GetChange",
                format!("NoSuchChange: {change}"),
            )),
            Some(c) if c.in_sync_at.is_some_and(|t| now >= t) => Ok(RouteProgress::InEffect),
            Some(_) => Ok(RouteProgress::Propagating {
                change: change.to_string(),
            }),
        }
    }

    /// The change is on every server: the clients' traffic follows it.
    pub(super) fn route53_in_sync(&mut self, change: &str) {
        let Some(c) = self.route53_changes.get(change).cloned() else {
            return;
        };
        self.log(|| format!("{}: Route 53 change {change} INSYNC", c.source));
        let _ = self.route(&c.request);
    }
}
