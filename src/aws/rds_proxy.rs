//! RDS Proxy plumbing for the RDS Proxy router (`core::router::RouterChoice::RdsProxy`): read a
//! proxy and its default target group's targets, move the group from the source instance to the
//! Aurora cluster (or back), and say whether the proxy serves the new target yet.
//!
//! What it will and will not change: the default target group of the one proxy named by the
//! migration's router choice, whose target preflight found to be this source instance alone. A
//! target group holds one database, so a move is deregister-then-register; each step is skipped
//! when already done, so a move that was interrupted (a crash between the two calls) is finished
//! by asking again. The proxy itself, its secrets and its security groups are never changed.
//!
//! Every call waits for the RDS budget's rate limiter, like the agent's other RDS calls.

use std::future::Future;
use std::sync::Arc;

use aws_sdk_rds::Client;

use super::CallCounter;
use super::call::{boxed, call, call_unless};
use super::limit::RateLimiter;
use crate::core::action::RouteRequest;
use crate::core::router::{ProxyTarget, ProxyView, RouteProgress};
use crate::ports::{ErrorKind, PortError, PortResult};

/// The target group the router moves: every proxy has one, named `default`.
const GROUP: &str = "default";

pub struct RdsProxy {
    client: Client,
    calls: CallCounter,
    limiter: Arc<RateLimiter>,
    /// `<prefix>:router`: the tag by which the proxy's owners let the agent move it, read again
    /// before every move (preflight may be days earlier; IAM cannot tell proxies apart).
    opt_in_tag: String,
}

/// What a move asks after (`RouteProgress::Propagating::change`): the target that must become
/// available, `cluster:<id>` or `instance:<id>`.
fn change_for(request: &RouteRequest) -> String {
    if request.back_to_source {
        format!("instance:{}", request.source)
    } else {
        format!("cluster:{}", request.cluster)
    }
}

impl RdsProxy {
    pub fn new(
        client: Client,
        calls: CallCounter,
        limiter: Arc<RateLimiter>,
        tag_prefix: &str,
    ) -> Self {
        RdsProxy {
            client,
            calls,
            limiter,
            opt_in_tag: crate::core::tags::key(tag_prefix, "router"),
        }
    }

    /// The proxy `name` with its default target group's targets (`None`: no such proxy).
    pub fn view(&self, name: &str) -> impl Future<Output = PortResult<Option<ProxyView>>> + Send {
        let name = name.to_string();
        boxed(async move {
            self.limiter.acquire().await;
            let Some(found) = call_unless(
                &self.calls,
                "rds:DescribeDBProxies",
                "DBProxyNotFoundFault",
                self.client
                    .describe_db_proxies()
                    .db_proxy_name(&name)
                    .send(),
            )
            .await?
            else {
                return Ok(None);
            };
            let Some(proxy) = found.db_proxies().first() else {
                return Ok(None);
            };
            let targets = self.targets(&name).await?;
            let mut tags = std::collections::BTreeMap::new();
            if let Some(arn) = proxy.db_proxy_arn() {
                self.limiter.acquire().await;
                let listed = call(
                    &self.calls,
                    "rds:ListTagsForResource",
                    self.client
                        .list_tags_for_resource()
                        .resource_name(arn)
                        .send(),
                )
                .await?;
                for t in listed.tag_list() {
                    if let (Some(k), Some(v)) = (t.key(), t.value()) {
                        tags.insert(k.to_string(), v.to_string());
                    }
                }
            }
            Ok(Some(ProxyView {
                name: name.clone(),
                engine_family: proxy.engine_family().unwrap_or_default().to_string(),
                status: proxy
                    .status()
                    .map(|s| s.as_str().to_string())
                    .unwrap_or_default(),
                vpc_id: proxy.vpc_id().map(str::to_string),
                auth_secrets: proxy.auth().len(),
                tags,
                targets,
            }))
        })
    }

    /// The default target group's targets.
    async fn targets(&self, name: &str) -> PortResult<Vec<ProxyTarget>> {
        self.limiter.acquire().await;
        let page = call(
            &self.calls,
            "rds:DescribeDBProxyTargets",
            self.client
                .describe_db_proxy_targets()
                .db_proxy_name(name)
                .target_group_name(GROUP)
                .max_records(100)
                .send(),
        )
        .await?;
        Ok(page
            .targets()
            .iter()
            .map(|t| {
                let health = t.target_health();
                ProxyTarget {
                    kind: t
                        .r#type()
                        .map(|k| k.as_str().to_string())
                        .unwrap_or_default(),
                    id: t.rds_resource_id().unwrap_or_default().to_string(),
                    cluster: t.tracked_cluster_id().map(str::to_string),
                    role: t.role().map(|r| r.as_str().to_string()),
                    health: health
                        .and_then(|h| h.state())
                        .map(|s| s.as_str().to_string())
                        .unwrap_or_default(),
                    reason: health.and_then(|h| {
                        let reason = h.reason().map(|r| r.as_str().to_string());
                        match (reason, h.description()) {
                            (Some(r), Some(d)) => Some(format!("{r}: {d}")),
                            (Some(r), None) => Some(r),
                            (None, Some(d)) => Some(d.to_string()),
                            (None, None) => None,
                        }
                    }),
                }
            })
            .collect())
    }

    /// Moves the proxy's default target group to the request's target: the Aurora cluster, or
    /// back to the source instance. Propagating until the target is available
    /// ([`RdsProxy::status`]).
    pub fn point(
        &self,
        proxy: &str,
        request: &RouteRequest,
    ) -> impl Future<Output = PortResult<RouteProgress>> + Send {
        let proxy = proxy.to_string();
        let request = request.clone();
        boxed(async move {
            let op = "rds:RegisterDBProxyTargets";
            let refuse = |why: String| Err(PortError::new(ErrorKind::Fatal, op, why));
            // Consent and scope, again at the move: the owners' tag is still there, and the
            // group holds only this migration's databases (the source, or the cluster and its
            // members), so nothing else's traffic moves.
            let Some(view) = self.view(&proxy).await? else {
                return refuse(format!("there is no RDS Proxy named {proxy}"));
            };
            if view.tags.get(&self.opt_in_tag).map(String::as_str)
                != Some(crate::core::router::PROXY_OPT_IN)
            {
                return refuse(format!(
                    "the RDS Proxy {proxy} is no longer tagged {}={}: its owners withdrew their consent; nothing was changed",
                    self.opt_in_tag,
                    crate::core::router::PROXY_OPT_IN
                ));
            }
            let foreign: Vec<String> = view
                .targets
                .iter()
                .filter(|t| {
                    t.id != request.source
                        && t.id != request.cluster
                        && t.cluster.as_deref() != Some(request.cluster.as_str())
                })
                .map(|t| format!("{} {}", t.kind, t.id))
                .collect();
            if !foreign.is_empty() {
                return refuse(format!(
                    "the RDS Proxy {proxy}'s default target group now holds {}: not this migration's; nothing was changed",
                    foreign.join(", ")
                ));
            }
            let targets = view.targets;
            let registered = |kind: &str, id: &str| {
                targets.iter().any(|t| {
                    t.id == id
                        && match kind {
                            "cluster" => t.kind == "TRACKED_CLUSTER",
                            _ => t.kind == "RDS_INSTANCE" && t.cluster.is_none(),
                        }
                })
            };
            let (old, new) = if request.back_to_source {
                (("cluster", &request.cluster), ("instance", &request.source))
            } else {
                (("instance", &request.source), ("cluster", &request.cluster))
            };
            if registered(old.0, old.1) {
                self.limiter.acquire().await;
                let op = self
                    .client
                    .deregister_db_proxy_targets()
                    .db_proxy_name(&proxy)
                    .target_group_name(GROUP);
                let op = if old.0 == "cluster" {
                    op.db_cluster_identifiers(old.1)
                } else {
                    op.db_instance_identifiers(old.1)
                };
                // Gone already (another attempt got there first): what was wanted.
                call_unless(
                    &self.calls,
                    "rds:DeregisterDBProxyTargets",
                    "DBProxyTargetNotFoundFault",
                    op.send(),
                )
                .await?;
            }
            if !registered(new.0, new.1) {
                self.limiter.acquire().await;
                let op = self
                    .client
                    .register_db_proxy_targets()
                    .db_proxy_name(&proxy)
                    .target_group_name(GROUP);
                let op = if new.0 == "cluster" {
                    op.db_cluster_identifiers(new.1)
                } else {
                    op.db_instance_identifiers(new.1)
                };
                call_unless(
                    &self.calls,
                    "rds:RegisterDBProxyTargets",
                    "DBProxyTargetAlreadyRegisteredFault",
                    op.send(),
                )
                .await?;
            }
            Ok(RouteProgress::Propagating {
                change: change_for(&request),
            })
        })
    }

    /// Whether the proxy serves the target `change` names (`cluster:<id>`: its writer member
    /// is `AVAILABLE`; `instance:<id>`: the instance is).
    pub fn status(
        &self,
        proxy: &str,
        change: &str,
    ) -> impl Future<Output = PortResult<RouteProgress>> + Send {
        let (proxy, change) = (proxy.to_string(), change.to_string());
        boxed(async move {
            let targets = self.targets(&proxy).await?;
            let view = ProxyView {
                name: proxy,
                engine_family: String::new(),
                status: String::new(),
                vpc_id: None,
                auth_secrets: 0,
                tags: Default::default(),
                targets,
            };
            let serving = match change.split_once(':') {
                Some(("cluster", id)) => view.serves_cluster(id),
                Some(("instance", id)) => view.serves_instance(id),
                _ => false,
            };
            Ok(if serving {
                RouteProgress::InEffect
            } else {
                RouteProgress::Propagating { change }
            })
        })
    }
}
