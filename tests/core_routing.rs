//! Table tests of observed routing (issue 16): a route counts as moved only when its router
//! says it is in effect, a route that never takes effect leaves the source fenced, and a
//! rollback after cutover routes back through the same router and waits for it too.

mod common;

use aurora_migrator::commands::traffic;
use aurora_migrator::core::Phase;
use aurora_migrator::core::action::{Action, ActionKey};
use aurora_migrator::core::notification::Severity;
use aurora_migrator::core::observation::PreflightInputs;
use aurora_migrator::core::policy::Policy;
use aurora_migrator::core::preflight::{self, Outcome};
use aurora_migrator::core::router::{
    DnsRecord, PoolerEntry, ProxyTarget, ProxyView, RouterChoice, RouterView,
};
use common::*;
use jiff::SignedDuration;

/// What preflight read of the record: not read, unreadable, missing, or the record.
type RecordRead = Option<Result<Option<DnsRecord>, String>>;

const RECORD: &str = "orders-db.internal.example.com";

fn route53_policy() -> Policy {
    Policy {
        router: RouterChoice::Route53 {
            hosted_zone: "Z0123ABC".into(),
            record: RECORD.into(),
        },
        ..policy()
    }
}

const SOURCE_ENDPOINT: &str = "orders-pg.abc.us-east-1.rds.amazonaws.com";

/// The team's record as Route 53 shows it: a CNAME to the source's endpoint, TTL 5 s.
fn team_record() -> DnsRecord {
    DnsRecord {
        name: RECORD.into(),
        kind: "CNAME".into(),
        values: vec![SOURCE_ENDPOINT.into()],
        ttl: Some(5),
        special: None,
    }
}

fn route53_model(propagation: Option<SignedDuration>) -> Model {
    let mut model = Model::new();
    model.route53 = Some(ModelRoute53 {
        propagation,
        record: Some(team_record()),
        value: SOURCE_ENDPOINT.into(),
        changes: vec![],
    });
    model
}

fn routes(actions: &[Action]) -> usize {
    actions
        .iter()
        .filter(|a| a.key() == ActionKey::RouteTraffic)
        .count()
}

/// Rounds one second apart (a propagating route is asked after every second) until `phase`
/// is left or `limit` rounds pass; returns the routes asked for on the way.
fn rounds_while(
    model: &mut Model,
    m: &mut aurora_migrator::core::Migration,
    policy: &Policy,
    phase: Phase,
    limit: usize,
) -> usize {
    let mut asked = 0;
    for _ in 0..limit {
        if m.phase != phase {
            break;
        }
        let d = quiet_round(model, m, policy);
        asked += routes(&d.actions);
        model.now += d
            .wake_after
            .unwrap_or(SignedDuration::from_secs(1))
            .max(SignedDuration::from_secs(1));
    }
    asked
}

#[test]
fn a_route53_route_counts_as_moved_only_when_route53_reports_it_insync() {
    let policy = route53_policy();
    // 90 s of PENDING: longer than a route request's reissue window (30 s), so a route asked
    // again while it propagates would show.
    let mut model = route53_model(Some(SignedDuration::from_secs(90)));
    let mut m = migration();
    advance_to(&mut model, &mut m, &policy, Phase::Routing);
    let routed_from = model.now;
    // `status` says where traffic points, through which router.
    let router = format!("route53:Z0123ABC:{RECORD}");
    let mut asked = rounds_while(&mut model, &mut m, &policy, Phase::Routing, 3);
    assert_eq!(traffic(&m), format!("moving to Aurora ({router})"));
    asked += rounds_while(&mut model, &mut m, &policy, Phase::Routing, 200);
    assert_eq!(m.phase, Phase::Verifying);
    assert_eq!(traffic(&m), format!("Aurora ({router})"));
    assert_eq!(
        asked, 1,
        "asked after while it propagated, never asked again"
    );
    let r53 = model.route53.as_ref().unwrap();
    assert_eq!(r53.changes.len(), 1);
    assert!(
        r53.value.contains("aurora"),
        "the record points at Aurora: {}",
        r53.value
    );
    let routed = m.progress.routed_at.expect("routed");
    assert!(
        routed >= routed_from + SignedDuration::from_secs(90),
        "moved only at INSYNC: {routed} vs the request at {routed_from}"
    );
    assert!(
        routed <= routed_from + SignedDuration::from_secs(93),
        "seen within a poll or two of INSYNC: {routed}"
    );
}

#[test]
fn a_route_that_never_takes_effect_leaves_the_source_fenced_and_alerts() {
    let policy = route53_policy();
    let mut model = route53_model(None);
    let mut m = migration();
    advance_to(&mut model, &mut m, &policy, Phase::Routing);
    let limit = policy.timeouts.routing.as_secs() as usize + 120;
    let asked = rounds_while(&mut model, &mut m, &policy, Phase::Routing, limit);
    assert_eq!(asked, 1);
    assert_eq!(m.phase, Phase::Failed, "the routing timeout ends it");
    assert!(m.progress.routed_at.is_none(), "never counted as moved");
    assert!(
        model.quarantined(),
        "the source stays fenced: nothing may write to it"
    );
    assert!(
        model
            .notifications
            .iter()
            .any(|n| n.severity == Severity::Error),
        "people are told"
    );
}

#[test]
fn a_rollback_after_cutover_routes_back_through_route53_and_waits_for_insync() {
    let policy = route53_policy();
    let mut model = route53_model(Some(SignedDuration::from_secs(20)));
    let mut m = migration();
    advance_to(&mut model, &mut m, &policy, Phase::Verifying);
    let source_endpoint = model
        .source
        .as_ref()
        .and_then(|s| s.endpoint.clone())
        .unwrap()
        .address;
    model.tag_source("aurora-migration:rollback", "approve");
    let mut asked = 0;
    let mut back_asked_at = None;
    for _ in 0..2_000 {
        if m.phase.is_terminal() {
            break;
        }
        let d = quiet_round(&mut model, &mut m, &policy);
        if routes(&d.actions) > 0 {
            asked += routes(&d.actions);
            back_asked_at.get_or_insert(model.now);
        }
        model.now += d
            .wake_after
            .unwrap_or(SignedDuration::from_secs(1))
            .max(SignedDuration::from_secs(1));
    }
    assert_eq!(m.phase, Phase::RolledBack);
    assert_eq!(asked, 1, "one route back");
    assert_eq!(
        traffic(&m),
        format!("source (routed back, route53:Z0123ABC:{RECORD})")
    );
    let r53 = model.route53.as_ref().unwrap();
    assert_eq!(
        r53.value, source_endpoint,
        "the record points at the source again"
    );
    assert_eq!(
        r53.changes.len(),
        2,
        "the cutover's change and the one back"
    );
    let back = m.progress.routed_back_at.expect("routed back");
    assert!(back >= back_asked_at.unwrap() + SignedDuration::from_secs(20));
    let told = model
        .notifications
        .iter()
        .rev()
        .find(|n| n.phase == Phase::RolledBack)
        .expect("the rollback's end is told");
    assert!(
        told.description.contains("routed back to the source") && told.description.contains(RECORD),
        "the rollback says where traffic points and through what: {}",
        told.description
    );
}

#[test]
fn a_router_tag_that_does_not_parse_fails_preflight_naming_the_forms() {
    let mut s = source();
    s.tags
        .insert("aurora-migration:router".into(), "route53:Z1".into());
    let inputs = PreflightInputs {
        router_view: Some(Ok(Some(RouterView::Dns(team_record())))),
        ..preflight_inputs()
    };
    let (report, plan) = preflight::run(&s, &inputs, &policy());
    let check = report
        .checks
        .iter()
        .find(|c| c.name == "router")
        .expect("a router check");
    assert_eq!(check.outcome, Outcome::Fail);
    assert!(
        check
            .message
            .contains("route53:<hosted zone id>:<record name>"),
        "{}",
        check.message
    );
    assert!(plan.is_none());

    s.tags.insert(
        "aurora-migration:router".into(),
        format!("route53:Z1:{RECORD}"),
    );
    let (report, plan) = preflight::run(&s, &inputs, &policy());
    let check = report.checks.iter().find(|c| c.name == "router").unwrap();
    assert_eq!(check.outcome, Outcome::Pass, "{}", check.message);
    assert_eq!(
        plan.expect("planned").router.to_string(),
        format!("route53:Z1:{RECORD}"),
        "the tag wins over the deployment's default"
    );
}

/// A record written before routers were chosen has no router in its plan, its route requests
/// and its progress: it loads, and routes through the webhook as before.
#[test]
fn a_record_from_before_routers_loads_and_routes_through_the_webhook() {
    let policy = policy();
    let mut model = Model::new();
    let mut m = migration();
    advance_to(&mut model, &mut m, &policy, Phase::Promoting);
    let json = serde_json::to_string(&m).unwrap();
    let old = json
        .replace(r#","router":{"kind":"webhook"}"#, "")
        .replace(r#","route_change":null"#, "")
        .replace(r#","routed_back_at":null"#, "");
    assert!(
        !old.contains(r#""router":{"#)
            && !old.contains("route_change")
            && !old.contains("routed_back_at"),
        "{old}"
    );
    let loaded: aurora_migrator::core::Migration = serde_json::from_str(&old).unwrap();
    assert_eq!(loaded, m);
    let mut m = loaded;
    rounds_while(&mut model, &mut m, &policy, Phase::Promoting, 50);
    let asked = rounds_while(&mut model, &mut m, &policy, Phase::Routing, 50);
    assert_eq!(asked, 1);
    assert_eq!(m.phase, Phase::Verifying);
    assert_eq!(model.route53.map(|r| r.changes.len()), None);
}

/// Route 53's record is checked before writes stop: it must exist, be a simple CNAME to this
/// instance, and a long TTL is warned about.
#[test]
fn preflight_checks_the_route53_record_before_writes_stop() {
    let policy = route53_policy();
    let check = |record: RecordRead| {
        let inputs = PreflightInputs {
            router_view: record.map(|r| r.map(|r| r.map(RouterView::Dns))),
            ..preflight_inputs()
        };
        let (report, plan) = preflight::run(&source(), &inputs, &policy);
        let c = report
            .checks
            .into_iter()
            .find(|c| c.name == "router")
            .unwrap();
        (c.outcome, c.message, plan.is_some())
    };
    let (outcome, message, planned) = check(Some(Ok(Some(team_record()))));
    assert_eq!((outcome, planned), (Outcome::Pass, true), "{message}");

    let cases: Vec<(&str, RecordRead, &str)> = vec![
        ("missing", Some(Ok(None)), "has no record"),
        (
            "unreadable",
            Some(Err("AccessDenied".into())),
            "route53:ListResourceRecordSets",
        ),
        (
            "an A record",
            Some(Ok(Some(DnsRecord {
                kind: "A".into(),
                values: vec!["10.0.0.1".into()],
                ..team_record()
            }))),
            "not a CNAME",
        ),
        (
            "weighted",
            Some(Ok(Some(DnsRecord {
                special: Some("a routing policy (set identifier \"blue\")".into()),
                ..team_record()
            }))),
            "simple CNAMEs only",
        ),
        (
            "pointing elsewhere",
            Some(Ok(Some(DnsRecord {
                values: vec!["billing-pg.abc.us-east-1.rds.amazonaws.com".into()],
                ..team_record()
            }))),
            "not at this instance's endpoint",
        ),
    ];
    for (what, record, says) in cases {
        let (outcome, message, planned) = check(record);
        assert_eq!(outcome, Outcome::Fail, "{what}: {message}");
        assert!(!planned, "{what}: a failed router check stops the plan");
        assert!(message.contains(says), "{what}: {message}");
    }
    let (outcome, message, planned) = check(Some(Ok(Some(DnsRecord {
        ttl: Some(300),
        ..team_record()
    }))));
    assert_eq!((outcome, planned), (Outcome::Warn, true), "{message}");
    assert!(message.contains("TTL 300 s"), "{message}");
}

/// What preflight read of a router: not read, unreadable, missing, or the view.
type ViewRead = Option<Result<Option<RouterView>, String>>;

/// The router check's outcome, message and whether a plan came out, for `router` with `view`.
fn router_check(router: RouterChoice, view: ViewRead) -> (Outcome, String, bool) {
    let policy = Policy { router, ..policy() };
    let inputs = PreflightInputs {
        router_view: view,
        ..preflight_inputs()
    };
    let (report, plan) = preflight::run(&source(), &inputs, &policy);
    let c = report
        .checks
        .into_iter()
        .find(|c| c.name == "router")
        .unwrap();
    (c.outcome, c.message, plan.is_some())
}

/// The team's proxy in front of the source: PostgreSQL, available, in the source's VPC, one
/// secret, the source its only target and reachable.
fn team_proxy() -> ProxyView {
    ProxyView {
        name: "orders-proxy".into(),
        engine_family: "POSTGRESQL".into(),
        status: "available".into(),
        vpc_id: Some(source().vpc_id),
        auth_secrets: 1,
        tags: [("aurora-migration:router".into(), "allow".into())].into(),
        targets: vec![ProxyTarget {
            kind: "RDS_INSTANCE".into(),
            id: source().identifier,
            cluster: None,
            role: Some("READ_WRITE".into()),
            health: "AVAILABLE".into(),
            reason: None,
        }],
    }
}

/// An RDS Proxy is checked before writes stop: it must exist, be opted in by its owners' tag
/// (the task role may move tagged proxies only), be a PostgreSQL proxy that is
/// available, in the source's VPC, with secrets, and hold this instance alone, reachable today.
#[test]
fn preflight_checks_the_rds_proxy_before_writes_stop() {
    let router = RouterChoice::RdsProxy {
        proxy: "orders-proxy".into(),
    };
    let read = |p: ProxyView| Some(Ok(Some(RouterView::Proxy(p))));
    let (outcome, message, planned) = router_check(router.clone(), read(team_proxy()));
    assert_eq!((outcome, planned), (Outcome::Pass, true), "{message}");
    assert!(message.contains("AVAILABLE"), "{message}");

    let mut other_target = team_proxy();
    other_target.targets[0].id = "billing-pg".into();
    let mut two_targets = team_proxy();
    two_targets.targets.push(ProxyTarget {
        id: "billing-pg".into(),
        ..team_proxy().targets[0].clone()
    });
    let mut unreachable = team_proxy();
    unreachable.targets[0].health = "UNAVAILABLE".into();
    unreachable.targets[0].reason = Some("CONNECTION_FAILED".into());
    let cases: Vec<(&str, ViewRead, &str)> = vec![
        ("missing", Some(Ok(None)), "no RDS Proxy named orders-proxy"),
        (
            "not opted in",
            read(ProxyView {
                tags: Default::default(),
                ..team_proxy()
            }),
            "not tagged aurora-migration:router=allow",
        ),
        (
            "unreadable",
            Some(Err("AccessDenied".into())),
            "rds:DescribeDBProxies",
        ),
        (
            "a MySQL proxy",
            read(ProxyView {
                engine_family: "MYSQL".into(),
                ..team_proxy()
            }),
            "not POSTGRESQL",
        ),
        (
            "being modified",
            read(ProxyView {
                status: "modifying".into(),
                ..team_proxy()
            }),
            "not available",
        ),
        (
            "in another VPC",
            read(ProxyView {
                vpc_id: Some("vpc-other".into()),
                ..team_proxy()
            }),
            "could not reach the cluster",
        ),
        (
            "without secrets",
            read(ProxyView {
                auth_secrets: 0,
                ..team_proxy()
            }),
            "no authentication secrets",
        ),
        (
            "in front of another instance",
            read(other_target),
            "billing-pg",
        ),
        (
            "in front of two",
            read(two_targets),
            "not this instance alone",
        ),
        (
            "that cannot reach the source",
            read(unreachable),
            "CONNECTION_FAILED",
        ),
    ];
    for (what, view, says) in cases {
        let (outcome, message, planned) = router_check(router.clone(), view);
        assert_eq!(outcome, Outcome::Fail, "{what}: {message}");
        assert!(!planned, "{what}: a failed router check stops the plan");
        assert!(message.contains(says), "{what}: {message}");
    }
}

/// A PgBouncer entry is checked before writes stop: the companion must answer, the entry must
/// point at this instance and not be paused; a query_wait_timeout shorter than the write
/// budget warns (a client held longer gets an error).
#[test]
fn preflight_checks_the_pgbouncer_entry_before_writes_stop() {
    let router = RouterChoice::PgBouncer {
        companion: "pgbouncer-1.internal:6480".into(),
        database: "orders".into(),
    };
    let endpoint = source().endpoint.unwrap();
    let entry = PoolerEntry {
        database: "orders".into(),
        host: endpoint.address.clone(),
        port: endpoint.port,
        paused: false,
        query_wait_timeout_s: Some(0),
    };
    let read = |e: PoolerEntry| Some(Ok(Some(RouterView::Pooler(e))));
    let (outcome, message, planned) = router_check(router.clone(), read(entry.clone()));
    assert_eq!((outcome, planned), (Outcome::Pass, true), "{message}");

    let cases: Vec<(&str, ViewRead, &str)> = vec![
        ("missing", Some(Ok(None)), "no database entry orders"),
        (
            "companion unreachable",
            Some(Err("connection refused".into())),
            "could not be read (connection refused)",
        ),
        (
            "pointing elsewhere",
            read(PoolerEntry {
                host: "billing-pg.abc.us-east-1.rds.amazonaws.com".into(),
                ..entry.clone()
            }),
            "not at this instance's endpoint",
        ),
        (
            "another port",
            read(PoolerEntry {
                port: 6543,
                ..entry.clone()
            }),
            "not at this instance's endpoint",
        ),
        (
            "paused",
            read(PoolerEntry {
                paused: true,
                ..entry.clone()
            }),
            "paused now",
        ),
    ];
    for (what, view, says) in cases {
        let (outcome, message, planned) = router_check(router.clone(), view);
        assert_eq!(outcome, Outcome::Fail, "{what}: {message}");
        assert!(!planned, "{what}: a failed router check stops the plan");
        assert!(message.contains(says), "{what}: {message}");
    }
    let (outcome, message, planned) = router_check(
        router,
        read(PoolerEntry {
            query_wait_timeout_s: Some(120),
            ..entry
        }),
    );
    assert_eq!((outcome, planned), (Outcome::Warn, true), "{message}");
    assert!(message.contains("query_wait_timeout (120 s)"), "{message}");
}

fn pgbouncer_policy() -> Policy {
    Policy {
        router: RouterChoice::PgBouncer {
            companion: "pgbouncer-1.internal:6480".into(),
            database: "orders".into(),
        },
        ..policy()
    }
}

/// A PgBouncer in front of the source, as its companion reads it.
fn pgbouncer_model() -> Model {
    let mut model = Model::new();
    let e = source().endpoint.unwrap();
    model.pooler = Some(PoolerEntry {
        database: "orders".into(),
        host: e.address,
        port: e.port,
        paused: false,
        query_wait_timeout_s: Some(0),
    });
    model
}

/// Rounds (one second apart at least) until `m` leaves `phase` or `limit` rounds pass, with
/// the actions `fail` names failing.
fn rounds_failing(
    model: &mut Model,
    m: &mut aurora_migrator::core::Migration,
    policy: &Policy,
    limit: usize,
    fail: &mut dyn FnMut(&Action) -> Option<aurora_migrator::core::action::ErrorKind>,
) {
    for _ in 0..limit {
        if m.phase.is_terminal() {
            break;
        }
        let d = round(model, m, policy, fail);
        model.now += d
            .wake_after
            .unwrap_or(SignedDuration::from_secs(60))
            .max(SignedDuration::from_secs(1));
    }
}

/// PgBouncer holds the clients before the source is fenced (so ending its sessions meets no
/// transaction and nothing a client sends is refused), and the route re-points and resumes them.
#[test]
fn pgbouncer_holds_the_clients_before_the_quarantine_and_the_route_resumes_them() {
    let policy = pgbouncer_policy();
    let mut model = pgbouncer_model();
    let mut m = migration();
    advance_to(&mut model, &mut m, &policy, Phase::Verifying);
    assert_eq!(
        model.pooler_log,
        vec![
            (ActionKey::HoldClients, false),
            (ActionKey::RouteTraffic, true),
        ],
        "held while the source still had its groups, routed (and resumed) once, fenced"
    );
    assert!(!model.clients_held, "the route resumed them");
    let held = m.progress.clients_held_at.expect("the hold was confirmed");
    let quarantined = m.progress.quarantine_active_at.expect("quarantined");
    assert!(held <= quarantined, "{held} vs {quarantined}");
    let entry = model.pooler.as_ref().unwrap();
    assert!(entry.host.contains("aurora"), "{entry:?}");
    let asked = m.progress.clients_hold_requested_at.expect("asked");
    assert!(
        m.progress.quarantined_at.is_some_and(|q| q <= asked),
        "the write budget counts from the hold's request"
    );
}

/// A hold that keeps failing (a transaction longer than the companion's pause timeout, the
/// console unreachable) never lets the quarantine happen: the cutover rolls back with the
/// source untouched, and releases (to be sure: an answer may have been lost).
#[test]
fn a_hold_that_keeps_failing_rolls_back_without_fencing_the_source() {
    let policy = pgbouncer_policy();
    let mut model = pgbouncer_model();
    let mut m = migration();
    advance_to(&mut model, &mut m, &policy, Phase::Quiescing);
    rounds_failing(&mut model, &mut m, &policy, 3000, &mut |a| {
        (a.key() == ActionKey::HoldClients)
            .then_some(aurora_migrator::core::action::ErrorKind::Retryable)
    });
    assert_eq!(m.phase, Phase::RolledBack, "{:?}", m.last_error);
    assert_eq!(
        model.pooler_log,
        vec![(ActionKey::ReleaseClients, false)],
        "a hold asked for is released (a release of what is not held changes nothing)"
    );
    assert!(!model.quarantined());
    assert_eq!(model.promotions, 0);
    assert!(m.progress.quarantine_active_at.is_none());
}

/// A rollback before cutover (here an abort after the hold) releases the held clients to the
/// source, after the source has its groups back, and only then ends.
#[test]
fn an_abort_after_the_hold_releases_the_clients_to_the_source() {
    let policy = pgbouncer_policy();
    let mut model = pgbouncer_model();
    let mut m = migration();
    advance_to(&mut model, &mut m, &policy, Phase::Quiescing);
    for _ in 0..5 {
        if model.clients_held {
            break;
        }
        let d = quiet_round(&mut model, &mut m, &policy);
        model.now += d.wake_after.unwrap_or(SignedDuration::from_secs(1));
    }
    assert!(model.clients_held, "held in Quiescing");
    model
        .source
        .as_mut()
        .unwrap()
        .tags
        .insert("aurora-migration:abort".into(), "true".into());
    run_to_end(&mut model, &mut m, &policy, 400);
    assert_eq!(m.phase, Phase::Aborted, "{:?}", m.last_error);
    assert!(!model.clients_held, "released");
    assert_eq!(
        model.pooler_log.last(),
        Some(&(ActionKey::ReleaseClients, false)),
        "released once the source had its groups back: {:?}",
        model.pooler_log
    );
    assert!(m.progress.clients_released_at.is_some());
    assert_eq!(model.promotions, 0);
}

/// PgBouncer unreachable after promotion (the companion or its admin console down, every route
/// request failing): the source stays fenced, Routing's timeout fails the migration, and people
/// are told; the clients stay held until the companion's maximum hold resumes them.
#[test]
fn a_pgbouncer_that_cannot_be_routed_leaves_the_source_fenced_and_alerts() {
    let policy = pgbouncer_policy();
    let mut model = pgbouncer_model();
    let mut m = migration();
    advance_to(&mut model, &mut m, &policy, Phase::Routing);
    rounds_failing(&mut model, &mut m, &policy, 3000, &mut |a| {
        (a.key() == ActionKey::RouteTraffic)
            .then_some(aurora_migrator::core::action::ErrorKind::Retryable)
    });
    assert_eq!(m.phase, Phase::Failed, "{:?}", m.last_error);
    assert!(m.progress.routed_at.is_none(), "never counted as moved");
    assert!(model.quarantined(), "the source is still fenced");
    assert!(
        model
            .notifications
            .iter()
            .any(|n| n.severity == Severity::Error && n.phase == Phase::Failed),
        "people are told"
    );
}

/// A rollback whose release the companion never answers does not wait for ever: the source
/// has its groups back, and after 15 minutes (the companion's default maximum hold) the
/// rollback ends with an error saying what a person must do.
#[test]
fn a_release_the_companion_never_answers_ends_the_rollback_with_an_error() {
    let policy = pgbouncer_policy();
    let mut model = pgbouncer_model();
    let mut m = migration();
    advance_to(&mut model, &mut m, &policy, Phase::Quiescing);
    for _ in 0..5 {
        let d = quiet_round(&mut model, &mut m, &policy);
        model.now += d.wake_after.unwrap_or(SignedDuration::from_secs(1));
    }
    assert!(m.progress.clients_held_at.is_some(), "held");
    model
        .source
        .as_mut()
        .unwrap()
        .tags
        .insert("aurora-migration:abort".into(), "true".into());
    rounds_failing(&mut model, &mut m, &policy, 5000, &mut |a| {
        (a.key() == ActionKey::ReleaseClients)
            .then_some(aurora_migrator::core::action::ErrorKind::Retryable)
    });
    assert_eq!(m.phase, Phase::Aborted, "{:?}", m.last_error);
    assert!(!model.quarantined(), "the source takes writes again");
    let told = model
        .notifications
        .iter()
        .find(|n| n.severity == Severity::Error && n.title.contains("could not be released"))
        .expect("people are told");
    assert!(told.description.contains("RESUME"), "{}", told.description);
    let released = m.history.last().unwrap().at;
    let asked = m.progress.clients_release_requested_at.unwrap();
    assert!(
        released.duration_since(asked) >= SignedDuration::from_mins(15),
        "kept asking for 15 minutes"
    );
}

/// A rollback after cutover through PgBouncer holds the clients (now on Aurora) before Aurora
/// is fenced, and the route back re-points and resumes them on the source.
#[test]
fn a_rollback_after_cutover_holds_pgbouncers_clients_before_fencing_aurora() {
    let policy = pgbouncer_policy();
    let mut model = pgbouncer_model();
    let mut m = migration();
    advance_to(&mut model, &mut m, &policy, Phase::Verifying);
    model.tag_source("aurora-migration:rollback", "approve");
    run_to_end(&mut model, &mut m, &policy, 2_000);
    assert_eq!(m.phase, Phase::RolledBack, "{:?}", m.last_error);
    let keys: Vec<ActionKey> = model.pooler_log.iter().map(|(k, _)| *k).collect();
    assert_eq!(
        keys,
        vec![
            ActionKey::HoldClients,
            ActionKey::RouteTraffic,
            ActionKey::HoldClients,
            ActionKey::RouteTraffic,
        ],
        "held and routed at the cutover, held and routed back at the rollback"
    );
    let held = m.progress.rollback_clients_held_at.expect("held again");
    let fenced = m
        .progress
        .target_sessions_end_requested_at
        .or(m.progress.target_reboot_requested_at)
        .expect("Aurora fenced");
    assert!(held <= fenced, "held before Aurora was fenced");
    assert!(!model.clients_held, "the route back resumed them");
    let e = source().endpoint.unwrap();
    let entry = model.pooler.as_ref().unwrap();
    assert_eq!(
        (entry.host.as_str(), entry.port),
        (e.address.as_str(), e.port)
    );
}
