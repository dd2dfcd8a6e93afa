//! RDS Proxy in the simulator: for the sources that route through one (tag
//! `aurora-migration:router` = `rds-proxy:<source>-proxy`), a proxy whose default target group
//! holds the source, and targets that take time to become available after registration.
//! Traffic follows the proxy's target when it is available, not when it is registered.
//!
//! Fault model:
//! - a newly registered target is `REGISTERING` for 5–90 s, drawn from the world stream (AWS
//!   documents no figure; the proxy opens connections to the new target and checks them), then
//!   `AVAILABLE`; the old target is gone at once (a target group holds one database), so clients
//!   of the proxy get errors in between, inside the fenced window;
//! - a source with the permanent fault `RouteNeverInSync`: its new target never becomes
//!   available (`UNAVAILABLE`, `CONNECTION_FAILED`: a security group that does not admit the
//!   proxy), which the agent must meet with a failed migration, the source fenced, people told;
//! - the calls (`DescribeDBProxies`, `DescribeDBProxyTargets`, `DeregisterDBProxyTargets`,
//!   `RegisterDBProxyTargets`) draw the usual call faults in `SimPort::call`.

use super::*;
use crate::core::router::{ProxyTarget, ProxyView};

/// A source's proxy.
#[derive(Clone, Debug)]
pub struct Proxy {
    pub name: String,
    /// The registered target: `None` the source instance, `Some` the Aurora cluster.
    pub cluster: Option<String>,
    /// When the registered target is available (`None`: never).
    pub available_at: Option<Ms>,
    /// The route that registered it, for traffic to follow when it is available.
    pub request: Option<RouteRequest>,
}

impl State {
    /// `id` routes through an RDS Proxy: its owners tag it and own a proxy in front of it.
    pub fn route_through_rds_proxy(&mut self, id: &str) {
        let Some(s) = self.sources.get_mut(id) else {
            return;
        };
        let name = format!("{id}-proxy");
        s.view.tags.insert(
            "aurora-migration:router".to_string(),
            format!("rds-proxy:{name}"),
        );
        s.rds_proxy = Some(Proxy {
            name,
            cluster: None,
            available_at: Some(0),
            request: None,
        });
        self.refresh(id);
    }

    fn proxy_source(&self, name: &str) -> Option<String> {
        self.sources
            .iter()
            .find(|(_, s)| s.rds_proxy.as_ref().is_some_and(|p| p.name == name))
            .map(|(id, _)| id.clone())
    }

    /// `DescribeDBProxies` and `DescribeDBProxyTargets` of `name`.
    pub(super) fn proxy_view(&self, name: &str) -> Option<ProxyView> {
        let id = self.proxy_source(name)?;
        let s = &self.sources[&id];
        let p = s.rds_proxy.as_ref()?;
        let health = match p.available_at {
            Some(t) if self.now >= t => ("AVAILABLE", None),
            Some(_) => ("REGISTERING", None),
            None => (
                "UNAVAILABLE",
                Some("CONNECTION_FAILED: Could not connect to the database".to_string()),
            ),
        };
        let targets = match &p.cluster {
            None => vec![ProxyTarget {
                kind: "RDS_INSTANCE".to_string(),
                id: s.view.identifier.clone(),
                cluster: None,
                role: Some("READ_WRITE".to_string()),
                health: health.0.to_string(),
                reason: health.1,
            }],
            Some(c) => vec![
                ProxyTarget {
                    kind: "TRACKED_CLUSTER".to_string(),
                    id: c.clone(),
                    cluster: Some(c.clone()),
                    role: None,
                    health: String::new(),
                    reason: None,
                },
                ProxyTarget {
                    kind: "RDS_INSTANCE".to_string(),
                    id: format!("{c}-writer"),
                    cluster: Some(c.clone()),
                    role: Some("READ_WRITE".to_string()),
                    health: health.0.to_string(),
                    reason: health.1,
                },
            ],
        };
        Some(ProxyView {
            name: name.to_string(),
            engine_family: "POSTGRESQL".to_string(),
            status: "available".to_string(),
            vpc_id: Some(s.view.vpc_id.clone()),
            auth_secrets: 1,
            tags: [(
                "aurora-migration:router".to_string(),
                crate::core::router::PROXY_OPT_IN.to_string(),
            )]
            .into(),
            targets,
        })
    }

    /// Deregister the old target, register the new one: `REGISTERING` until available.
    pub(super) fn proxy_point(&mut self, request: &RouteRequest) -> PortResult<RouteProgress> {
        let Some(id) = self.find_source_id(&request.source) else {
            return Err(PortError::new(
                ErrorKind::NotFound,
                "rds:RegisterDBProxyTargets",
                "DBProxyNotFoundFault",
            ));
        };
        let now = self.now;
        let never = self.sources[&id].permanent == Some(PermanentFault::RouteNeverInSync)
            && !request.back_to_source;
        let registering = self.world_rng.range(5 * SEC, 90 * SEC);
        let wanted = (!request.back_to_source).then(|| request.cluster.clone());
        let change = match &wanted {
            Some(c) => format!("cluster:{c}"),
            None => format!("instance:{}", request.source),
        };
        let Some(s) = self.sources.get_mut(&id) else {
            return Ok(RouteProgress::Propagating { change });
        };
        let Some(p) = s.rds_proxy.as_mut() else {
            return Err(PortError::new(
                ErrorKind::NotFound,
                "rds:RegisterDBProxyTargets",
                "DBProxyNotFoundFault",
            ));
        };
        // Asked again while the same target registers (a retry): nothing changes.
        if p.cluster == wanted && p.request.is_some() {
            return Ok(RouteProgress::Propagating { change });
        }
        p.cluster = wanted;
        p.available_at = (!never).then_some(now + registering);
        p.request = Some(request.clone());
        s.route_accepted_at.get_or_insert(now);
        if !never {
            self.schedule(registering, Ev::ProxyTargetAvailable(id.clone()));
        }
        self.log(|| format!("{id}: RDS Proxy target {change} REGISTERING"));
        Ok(RouteProgress::Propagating { change })
    }

    /// Whether the proxy serves what `change` names.
    pub(super) fn proxy_status(&self, name: &str, change: &str) -> PortResult<RouteProgress> {
        let Some(view) = self.proxy_view(name) else {
            return Err(PortError::new(
                ErrorKind::NotFound,
                "rds:DescribeDBProxyTargets",
                "DBProxyNotFoundFault",
            ));
        };
        let serving = match change.split_once(':') {
            Some(("cluster", c)) => view.serves_cluster(c),
            Some(("instance", i)) => view.serves_instance(i),
            _ => false,
        };
        Ok(if serving {
            RouteProgress::InEffect
        } else {
            RouteProgress::Propagating {
                change: change.to_string(),
            }
        })
    }

    /// The new target is available: the clients' traffic follows it.
    pub(super) fn proxy_target_available(&mut self, id: &str) {
        let request = self
            .sources
            .get(id)
            .and_then(|s| s.rds_proxy.as_ref())
            .filter(|p| p.available_at.is_some_and(|t| self.now >= t))
            .and_then(|p| p.request.clone());
        if let Some(request) = request {
            self.log(|| format!("{id}: RDS Proxy target AVAILABLE"));
            let _ = self.route(&request);
        }
    }
}
