//! The database-aware cutover in the pure core: sessions ended instead of a reboot, a fence by
//! WAL position instead of CloudWatch, and every way it falls back or holds (see
//! `core::machine::wal_fence`). The model (`tests/common`) answers SQL the way the adapter does.

mod common;

use aurora_migrator::core::action::{Action, ActionKey};
use aurora_migrator::core::database::{Credentials, Lsn, SqlPreflight, TableFacts};
use aurora_migrator::core::invariants::irreversible_allowed;
use aurora_migrator::core::migration::{Consistency, RollbackCause};
use aurora_migrator::core::preflight::Outcome;
use aurora_migrator::core::{ErrorKind, Phase};
use common::*;
use jiff::SignedDuration;

/// A model with database access, run until `phase`.
fn with_database_at(phase: Phase) -> (Model, aurora_migrator::core::Migration) {
    let mut model = Model::with_database();
    let mut m = migration();
    advance_to(&mut model, &mut m, &database_policy(), phase);
    (model, m)
}

fn check<'a>(
    m: &'a aurora_migrator::core::Migration,
    name: &str,
) -> &'a aurora_migrator::core::preflight::CheckResult {
    let report = m.preflight.as_ref().expect("a preflight report");
    report
        .checks
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no `{name}` check in {report:?}"))
}

#[test]
fn with_access_the_cutover_ends_sessions_and_promotes_on_the_replayed_fence_without_a_reboot() {
    let policy = database_policy();
    let mut model = Model::with_database();
    let mut m = migration();
    let phases = run_to_end(&mut model, &mut m, &policy, 2_000);
    assert_eq!(m.phase, Phase::Completed, "{phases:?} {:?}", m.last_error);
    assert_eq!(model.reboots, 0, "no reboot on the database path");
    assert_eq!(model.promotions, 1);
    let db = model.db.as_ref().unwrap();
    assert_eq!(db.ended, 2, "both application sessions were ended");
    assert_eq!(db.fences, 1, "one fence");
    let plan = m.plan.as_ref().unwrap();
    assert!(matches!(
        &plan.database.as_ref().unwrap().credentials,
        Credentials::Secret { secret_id } if secret_id.contains("rds!db-1")
    ));
    assert_eq!(
        plan.quarantine_admits(),
        vec!["sg-agent".to_string()],
        "the quarantine admits the agent's group and nothing else"
    );
    let p = &m.progress;
    assert!(p.fence_replayed_lsn >= p.fence_lsn && p.fence_lsn.is_some());
    assert!(p.restarted_at.is_none() && p.reboot_requested_at.is_none());
    assert_eq!(check(&m, "database-access").outcome, Outcome::Pass);
    assert_eq!(
        check(&m, "unlogged-tables").outcome,
        Outcome::Pass,
        "answered by SQL: no acknowledgement tag needed"
    );
    // The outage the core itself adds: quarantine active → proof, in the model's 1 s steps.
    let proof = p.drain_proven_at.unwrap() - p.quarantine_active_at.unwrap();
    assert!(
        proof <= SignedDuration::from_secs(5),
        "the proof took {proof:?} after the quarantine"
    );
}

#[test]
fn promotion_waits_until_aurora_has_replayed_the_fence() {
    let policy = database_policy();
    let (mut model, mut m) = with_database_at(Phase::Draining);
    model.db().replay_stuck_at = Some(model.db().wal);
    for _ in 0..20 {
        let d = quiet_round(&mut model, &mut m, &policy);
        assert!(
            !d.actions
                .iter()
                .any(|a| a.key() == ActionKey::PromoteTarget),
            "promotion asked for before the fence was replayed"
        );
        model.now += SignedDuration::from_secs(1);
    }
    assert_eq!(m.phase, Phase::Draining);
    assert!(m.progress.fence_lsn.is_some(), "the fence was written");
    model.db().replay_stuck_at = None;
    advance_to(&mut model, &mut m, &policy, Phase::Routing);
    assert_eq!(model.promotions, 1);
}

#[test]
fn a_client_that_reconnects_past_the_quarantine_is_named_and_the_attempt_rolls_back_at_once() {
    let policy = database_policy();
    let (mut model, mut m) = with_database_at(Phase::AwaitingCutover);
    model.db().reconnects = true;
    let phases = run_to_end(&mut model, &mut m, &policy, 3_000);
    assert_eq!(m.phase, Phase::RolledBack, "{phases:?}");
    assert_eq!(model.promotions, 0);
    assert_eq!(
        model.db().fences,
        0,
        "no fence once a client got past the quarantine"
    );
    assert!(
        m.last_error
            .as_deref()
            .is_some_and(|e| e.contains("got past the quarantine")),
        "{:?}",
        m.last_error
    );
    let rolled_back = m.history.iter().find(|c| c.phase == Phase::RollingBack);
    let quarantined = m.progress.quarantined_at.expect("quarantined");
    assert!(
        rolled_back.is_some_and(
            |c| c.at.duration_since(quarantined) < policy.write_unavailability_budget / 4
        ),
        "at the first reconnection, not when the write budget runs out: {:?}",
        m.history
    );
    assert!(
        model
            .notifications
            .iter()
            .any(|n| n.event == "client-reconnected" && n.description.contains("10.0.1.7")),
        "people are told a client got in"
    );
    assert!(!model.quarantined(), "the source got its groups back");
}

#[test]
fn a_session_that_appears_after_the_fence_voids_it_and_the_attempt_rolls_back_without_promoting() {
    let policy = database_policy();
    let (mut model, mut m) = with_database_at(Phase::Draining);
    model.db().replay_stuck_at = Some(model.db().wal);
    // Rounds until the fence is written (replay held back, so it cannot be proven yet).
    for _ in 0..20 {
        if m.progress.fence_lsn.is_some() {
            break;
        }
        quiet_round(&mut model, &mut m, &policy);
        model.now += SignedDuration::from_secs(1);
    }
    assert!(m.progress.fence_lsn.is_some(), "a fence");
    let now = model.now;
    model.db().sessions.push(app_session(777, now));
    model.db().replay_stuck_at = None;
    quiet_round(&mut model, &mut m, &policy);
    assert!(m.progress.fence_lsn.is_none(), "the fence was voided");
    assert_eq!(
        m.phase,
        Phase::RollingBack,
        "a client got past the quarantine"
    );
    run_to_end(&mut model, &mut m, &policy, 500);
    assert_eq!(m.phase, Phase::RolledBack);
    assert_eq!(model.promotions, 0);
    assert_eq!(model.db().fences, 1, "no new fence is written");
    assert!(!model.quarantined(), "the source got its groups back");
}

/// The promotion's own look reads the sessions once more: one that got in after the proof
/// (the quiet period and the fence behind it) rolls the attempt back instead of being ended
/// and proven again, because another could get in after that read too.
#[test]
fn a_session_seen_on_the_promotions_look_rolls_back_without_promoting() {
    let policy = database_policy();
    let (mut model, mut m) = with_database_at(Phase::Promoting);
    assert!(m.progress.drain_proven_at.is_some());
    let now = model.now;
    model.db().sessions.push(app_session(778, now));
    quiet_round(&mut model, &mut m, &policy);
    assert_eq!(m.phase, Phase::RollingBack);
    assert_eq!(model.promotions, 0);
    assert!(
        model
            .notifications
            .iter()
            .any(|n| n.event == "client-reconnected" && n.description.contains("778")),
        "people are told who got in: {:?}",
        model
            .notifications
            .iter()
            .map(|n| &n.description)
            .collect::<Vec<_>>()
    );
}

#[test]
fn a_client_that_gets_in_before_a_refused_promotion_is_asked_again_rolls_the_attempt_back() {
    let policy = database_policy();
    let (mut model, mut m) = with_database_at(Phase::Promoting);
    // AWS refuses the first promotion request.
    for _ in 0..20 {
        if m.progress.promote_requested_at.is_some() {
            break;
        }
        round(&mut model, &mut m, &policy, &mut |a| {
            (a.key() == ActionKey::PromoteTarget).then_some(ErrorKind::Retryable)
        });
        model.now += SignedDuration::from_millis(500);
    }
    assert!(
        m.progress.promote_requested_at.is_some(),
        "the promotion was asked for"
    );
    assert_eq!(model.promotions, 0, "the request was refused");
    // Before it is asked again, a client gets in past the quarantine.
    let now = model.now;
    model.db().sessions.push(app_session(555, now));
    for _ in 0..20 {
        let d = quiet_round(&mut model, &mut m, &policy);
        assert!(
            !d.actions
                .iter()
                .any(|a| a.key() == ActionKey::PromoteTarget),
            "no promotion with a client session on the source"
        );
        if m.phase != Phase::Promoting {
            break;
        }
        model.now += SignedDuration::from_secs(1);
    }
    assert_eq!(m.phase, Phase::RollingBack);
    run_to_end(&mut model, &mut m, &policy, 500);
    assert_eq!(m.phase, Phase::RolledBack);
    assert_eq!(model.promotions, 0);
    assert!(!model.quarantined(), "the source got its groups back");
}

#[test]
fn sessions_that_do_not_end_fall_back_to_the_reboot_and_the_metric_proof() {
    let policy = database_policy();
    let (mut model, mut m) = with_database_at(Phase::AwaitingCutover);
    model.db().stuck = true;
    let phases = run_to_end(&mut model, &mut m, &policy, 3_000);
    assert_eq!(m.phase, Phase::Completed, "{phases:?} {:?}", m.last_error);
    assert_eq!(model.reboots, 1, "the fallback rebooted the source");
    assert!(
        m.progress
            .database_fallback
            .as_deref()
            .is_some_and(|w| w.contains("did not end")),
        "{:?}",
        m.progress.database_fallback
    );
    assert!(m.alerts_sent.contains("database-fallback"));
}

#[test]
fn losing_the_database_mid_cutover_falls_back_after_the_grace_period() {
    let policy = database_policy();
    let (mut model, mut m) = with_database_at(Phase::Draining);
    model.db().unreachable = true;
    let entered = model.now;
    while m.progress.database_fallback.is_none() {
        quiet_round(&mut model, &mut m, &policy);
        model.now += SignedDuration::from_secs(1);
        assert!(model.now - entered < SignedDuration::from_mins(2));
    }
    assert!(model.now - entered >= policy.database_unreachable_after);
    let phases = run_to_end(&mut model, &mut m, &policy, 3_000);
    assert_eq!(m.phase, Phase::Completed, "{phases:?}");
    assert_eq!(model.reboots, 1);
}

#[test]
fn without_the_deployment_opt_in_the_tag_is_a_warning_and_the_metric_path_runs() {
    let policy = policy(); // MIGRATOR_DATABASE_ACCESS unset
    let mut model = Model::with_database();
    model.tag_source("aurora-migration:ack-unlogged-tables", "true");
    let mut m = migration();
    advance_to(&mut model, &mut m, &policy, Phase::Preparing);
    let c = check(&m, "database-access");
    assert_eq!(c.outcome, Outcome::Warn);
    assert!(
        c.message.contains("MIGRATOR_DATABASE_ACCESS"),
        "{}",
        c.message
    );
    assert!(m.plan.as_ref().unwrap().database.is_none());
    run_to_end(&mut model, &mut m, &policy, 2_000);
    assert_eq!(m.phase, Phase::Completed);
    assert_eq!(model.reboots, 1);
    assert_eq!(model.db().ended, 0, "no SQL without the opt-in");
}

#[test]
fn a_database_the_agent_cannot_read_in_preflight_means_the_metric_path_and_says_why() {
    let policy = database_policy();
    let mut model = Model::with_database();
    model.tag_source("aurora-migration:ack-unlogged-tables", "true");
    model.db().preflight = Some(Err(
        "postgres:preflight failed (fatal): password authentication failed".into(),
    ));
    let mut m = migration();
    advance_to(&mut model, &mut m, &policy, Phase::Preparing);
    let c = check(&m, "database-access");
    assert_eq!(c.outcome, Outcome::Warn);
    assert!(c.message.contains("password authentication failed"));
    assert!(c.message.contains("reboots the source"));
    let plan = m.plan.as_ref().unwrap();
    assert!(plan.database.is_none());
    assert!(
        plan.quarantine_admits().is_empty(),
        "no hole for the agent without access"
    );
}

#[test]
fn master_secret_access_needs_an_rds_managed_secret() {
    let policy = database_policy();
    let mut model = Model::with_database();
    model.source.as_mut().unwrap().master_user_secret_arn = None;
    model.tag_source("aurora-migration:ack-unlogged-tables", "true");
    let mut m = migration();
    advance_to(&mut model, &mut m, &policy, Phase::Preparing);
    let c = check(&m, "database-access");
    assert_eq!(c.outcome, Outcome::Warn);
    assert!(c.message.contains("MasterUserSecret"), "{}", c.message);
}

#[test]
fn the_sql_preflight_names_unlogged_tables_writers_and_prepared_transactions() {
    let policy = database_policy();
    let mut model = Model::with_database();
    model.db().preflight = Some(Ok(SqlPreflight {
        unlogged_tables: vec!["public.sessions_cache".into()],
        cron_jobs: vec!["3: */5 * * * * CALL refresh()".into()],
        prepared_transactions: vec!["tx-42".into()],
        old_transactions: vec![(4242, 7_200)],
        ..SqlPreflight::default()
    }));
    let mut m = migration();
    advance_to(&mut model, &mut m, &policy, Phase::Failed);
    let unlogged = check(&m, "unlogged-tables");
    assert_eq!(unlogged.outcome, Outcome::Fail);
    assert!(unlogged.message.contains("public.sessions_cache"));
    let writers = check(&m, "database-writers");
    assert_eq!(writers.outcome, Outcome::Fail);
    assert!(writers.message.contains("refresh()"));
    assert_eq!(check(&m, "prepared-transactions").outcome, Outcome::Fail);
    let old = check(&m, "old-transactions");
    assert_eq!(old.outcome, Outcome::Warn);
    assert!(old.message.contains("pid 4242"));
}

// ----- extensions the Aurora family does not offer ---------------------------------------------

/// What `rds.allowed_extensions` of aurora-postgresql15 allows in these tests.
fn aurora_15_allows() -> Option<Vec<String>> {
    Some(vec![
        "plpgsql".into(),
        "pg_stat_statements".into(),
        "postgis".into(),
    ])
}

/// A model whose source has `extensions` installed, and RDS allows `allowed` for the family.
fn with_extensions(extensions: &[(&str, &str)], allowed: Option<Vec<String>>) -> Model {
    let mut model = Model::with_database();
    model.db().preflight = Some(Ok(SqlPreflight {
        extensions: extensions
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect(),
        ..SqlPreflight::default()
    }));
    model.aurora_extensions = allowed;
    model
}

#[test]
fn an_extension_the_aurora_family_does_not_offer_is_named_and_blocks_the_migration() {
    let policy = database_policy();
    let mut model = with_extensions(
        &[
            ("plpgsql", "1.0"),
            ("postgis", "3.4.2"),
            ("timescaledb", "2.14.2"),
            ("pg_partman", "5.0.1"),
        ],
        aurora_15_allows(),
    );
    let mut m = migration();
    advance_to(&mut model, &mut m, &policy, Phase::Failed);
    let ext = check(&m, "extensions");
    assert_eq!(ext.outcome, Outcome::Fail);
    assert!(!ext.acknowledged);
    assert!(
        ext.message.contains("`timescaledb 2.14.2`") && ext.message.contains("`pg_partman 5.0.1`"),
        "each is named: {}",
        ext.message
    );
    assert!(!ext.message.contains("postgis"), "{}", ext.message);
    assert!(
        ext.message.contains("`rds.allowed_extensions`")
            && ext.message.contains("aurora-postgresql15"),
        "the message says the list is RDS's for the family: {}",
        ext.message
    );
    assert!(model.clusters_created == 0, "no replica was created");
    let report = m.preflight.as_ref().unwrap().render("aurora-migration");
    assert!(
        report.contains("aurora-migration:ack-extensions=true"),
        "{report}"
    );
}

#[test]
fn extensions_the_aurora_family_offers_pass() {
    let policy = database_policy();
    let mut model = with_extensions(
        &[("plpgsql", "1.0"), ("postgis", "3.4.2")],
        aurora_15_allows(),
    );
    let mut m = migration();
    let phases = run_to_end(&mut model, &mut m, &policy, 2_000);
    assert_eq!(m.phase, Phase::Completed, "{phases:?} {:?}", m.last_error);
    let ext = check(&m, "extensions");
    assert_eq!(ext.outcome, Outcome::Pass, "{}", ext.message);
    assert!(ext.message.contains("1 installed"), "{}", ext.message);
}

#[test]
fn plpgsql_needs_no_allowance() {
    let policy = database_policy();
    let mut model = with_extensions(&[("plpgsql", "1.0")], Some(vec!["postgis".into()]));
    let mut m = migration();
    let phases = run_to_end(&mut model, &mut m, &policy, 2_000);
    assert_eq!(m.phase, Phase::Completed, "{phases:?} {:?}", m.last_error);
    assert_eq!(check(&m, "extensions").outcome, Outcome::Pass);
}

#[test]
fn acknowledging_an_extension_aurora_does_not_offer_lets_the_migration_proceed() {
    let policy = database_policy();
    let mut model = with_extensions(
        &[("plpgsql", "1.0"), ("timescaledb", "2.14.2")],
        aurora_15_allows(),
    );
    model.tag_source("aurora-migration:ack-extensions", "true");
    let mut m = migration();
    let phases = run_to_end(&mut model, &mut m, &policy, 2_000);
    assert_eq!(m.phase, Phase::Completed, "{phases:?} {:?}", m.last_error);
    let ext = check(&m, "extensions");
    assert_eq!(ext.outcome, Outcome::Fail);
    assert!(ext.acknowledged, "the owners accepted it");
}

#[test]
fn without_the_family_s_allowed_extensions_the_check_warns() {
    let policy = database_policy();
    let mut model = with_extensions(&[("plpgsql", "1.0"), ("timescaledb", "2.14.2")], None);
    let mut m = migration();
    let phases = run_to_end(&mut model, &mut m, &policy, 2_000);
    assert_eq!(m.phase, Phase::Completed, "{phases:?} {:?}", m.last_error);
    let ext = check(&m, "extensions");
    assert_eq!(ext.outcome, Outcome::Warn);
    assert!(
        ext.message
            .contains("could not read the Aurora family's allowed extensions")
            && ext.message.contains("`timescaledb 2.14.2`"),
        "{}",
        ext.message
    );
}

#[test]
fn promotion_is_refused_at_execution_when_the_fence_was_not_replayed() {
    let (_model, mut m) = with_database_at(Phase::Promoting);
    let promote = Action::PromoteTarget {
        cluster: m.names.cluster.clone(),
    };
    assert!(irreversible_allowed(&m, &promote).is_ok());
    m.progress.fence_replayed_lsn = Some(Lsn(m.progress.fence_lsn.unwrap().0 - 1));
    assert!(
        irreversible_allowed(&m, &promote).is_err(),
        "a replay position short of the fence must not promote"
    );
    m.progress.fence_replayed_lsn = None;
    assert!(irreversible_allowed(&m, &promote).is_err());
}

// ----- the consistency check before routing ----------------------------------------------------

/// Runs the model to the end, step by step, and returns every action asked for.
fn run_collecting(
    model: &mut Model,
    m: &mut aurora_migrator::core::Migration,
    policy: &aurora_migrator::core::Policy,
) -> Vec<Action> {
    let mut all = Vec::new();
    for _ in 0..3_000 {
        let d = quiet_round(model, m, policy);
        all.extend(d.actions.iter().cloned());
        match d.wake_after {
            Some(w) => model.now += w.max(SignedDuration::from_secs(1)),
            None => break,
        }
    }
    all
}

#[test]
fn a_difference_before_routing_rolls_back_without_loss_and_nothing_is_ever_routed() {
    let policy = database_policy();
    let (mut model, mut m) = with_database_at(Phase::Promoting);
    // Aurora misses the source's last order (and its sequence value).
    let mut aurora = fingerprint();
    aurora
        .tables
        .insert("public.orders".into(), TableFacts::Rows(4241));
    aurora
        .sequences
        .get_mut("public.orders_id_seq")
        .unwrap()
        .last_value = Some(4200);
    model.db().target_fingerprint = Some(Ok(aurora));
    let actions = run_collecting(&mut model, &mut m, &policy);
    assert_eq!(m.phase, Phase::RolledBack, "{:?}", m.last_error);
    assert_eq!(model.promotions, 1, "it was promoted before the check");
    assert!(
        !actions.iter().any(|a| a.key() == ActionKey::RouteTraffic),
        "traffic was routed to an Aurora that differs from the source"
    );
    assert_eq!(model.routed_to, None);
    assert!(!model.quarantined(), "the source got its groups back");
    let why = m.last_error.as_deref().unwrap_or_default();
    assert!(
        why.contains("table public.orders: 4242 rows on the source, 4241 on Aurora")
            && why.contains("sequence public.orders_id_seq")
            && why.contains("without loss"),
        "{why}"
    );
    assert!(matches!(
        &m.progress.consistency,
        Some(Consistency::Differs(d)) if d.len() == 2
    ));
    assert!(matches!(
        &m.rollback,
        Some(r) if !r.after_cutover && matches!(r.cause, RollbackCause::Failure(_))
    ));
    // The rule of every rollback before routing: the cluster took no write, it is deleted.
    assert!(model.target.is_none());
    assert!(
        model
            .notifications
            .iter()
            .any(|n| n.description.contains("public.orders")),
        "people are told what differed"
    );
}

#[test]
fn equal_fingerprints_route_and_the_cutover_notification_says_what_was_compared() {
    let policy = database_policy();
    let (mut model, mut m) = with_database_at(Phase::Promoting);
    let phases = run_to_end(&mut model, &mut m, &policy, 2_000);
    assert_eq!(m.phase, Phase::Completed, "{phases:?} {:?}", m.last_error);
    assert_eq!(
        m.progress.consistency,
        Some(Consistency::Equal {
            compared: 3,
            not_compared: 0
        })
    );
    let cutover = model
        .notifications
        .iter()
        .find(|n| n.event == "cutover")
        .expect("a cutover notification");
    assert!(
        cutover
            .description
            .contains("the consistency check found Aurora equal to the source (3 sequences and tables compared)"),
        "{}",
        cutover.description
    );
}

#[test]
fn a_check_that_cannot_read_routes_after_the_grace_with_a_warning() {
    let policy = database_policy();
    let (mut model, mut m) = with_database_at(Phase::Promoting);
    model.db().target_fingerprint = Some(Err("postgres:fingerprint timed out".into()));
    advance_to(&mut model, &mut m, &policy, Phase::Routing);
    let entered = model.now;
    advance_to(&mut model, &mut m, &policy, Phase::Verifying);
    assert!(
        model.now - entered >= policy.database_unreachable_after,
        "a side unreadable right after promotion is read again for a while"
    );
    assert!(matches!(
        &m.progress.consistency,
        Some(Consistency::Unreadable(why)) if why.contains("timed out")
    ));
    assert!(m.alerts_sent.contains("consistency-unreadable"));
}

// ----- Aurora's fence in a rollback after cutover ----------------------------------------------

#[test]
fn rollback_after_cutover_ends_auroras_sessions_and_does_not_reboot_its_writer() {
    let policy = database_policy();
    let (mut model, mut m) = with_database_at(Phase::Verifying);
    assert_eq!(
        model.db().target_sessions.len(),
        1,
        "the application is on Aurora"
    );
    model.tag_source("aurora-migration:rollback", "approve");
    let actions = run_collecting(&mut model, &mut m, &policy);
    assert_eq!(m.phase, Phase::RolledBack, "{:?}", m.last_error);
    assert!(
        !actions
            .iter()
            .any(|a| a.key() == ActionKey::RebootTargetWriter),
        "Aurora's writer was rebooted although its sessions could be ended"
    );
    assert!(model.writer_events.is_empty());
    assert_eq!(model.db().target_ended, 1);
    let p = &m.progress;
    assert!(p.target_sessions_ended_at > p.target_sessions_end_requested_at);
    assert!(p.target_fence_fallback.is_none());
    // The quarantine came first: sessions are ended only once no new one can come in.
    let quarantine = actions
        .iter()
        .position(|a| a.key() == ActionKey::QuarantineTarget)
        .unwrap();
    let end = actions
        .iter()
        .position(|a| a.key() == ActionKey::EndTargetSessions)
        .unwrap();
    assert!(quarantine < end);
    assert!(
        model
            .notifications
            .iter()
            .any(|n| n.event == "writes-on-target"
                && n.description
                    .contains("its client sessions were ended behind the quarantine")),
        "the writes made on Aurora are counted and reported"
    );
    let source = model.source.as_ref().unwrap().endpoint.clone().unwrap();
    assert_eq!(model.routed_to, Some(source.address), "traffic went back");
}

#[test]
fn with_auroras_sessions_stuck_the_rollback_falls_back_to_rebooting_its_writer() {
    let policy = database_policy();
    let (mut model, mut m) = with_database_at(Phase::Verifying);
    model.db().target_stuck = true;
    model.tag_source("aurora-migration:rollback", "approve");
    let phases = run_to_end(&mut model, &mut m, &policy, 3_000);
    assert_eq!(m.phase, Phase::RolledBack, "{phases:?} {:?}", m.last_error);
    assert_eq!(model.writer_events.len(), 1, "the writer was rebooted once");
    assert!(
        m.progress
            .target_fence_fallback
            .as_deref()
            .is_some_and(|w| w.contains("did not end") && w.contains("pid 201")),
        "{:?}",
        m.progress.target_fence_fallback
    );
    assert!(m.alerts_sent.contains("target-fence-fallback"));
    assert!(m.progress.target_sessions_ended_at.is_none());
}

#[test]
fn an_aurora_writer_the_agent_cannot_reach_before_the_cutover_means_the_metric_path_from_the_start()
{
    let policy = database_policy();
    let mut model = Model::with_database();
    model.db().target_unreachable = true;
    let mut m = migration();
    advance_to(&mut model, &mut m, &policy, Phase::Quiescing);
    assert!(
        m.progress
            .database_fallback
            .as_deref()
            .is_some_and(|w| w.contains("never reached the Aurora writer")),
        "{:?}",
        m.progress.database_fallback
    );
    assert!(m.alerts_sent.contains("database-fallback"));
    let phases = run_to_end(&mut model, &mut m, &policy, 3_000);
    assert_eq!(m.phase, Phase::Completed, "{phases:?}");
    assert_eq!(model.reboots, 1, "the metric path from the start");
    assert_eq!(model.db().ended, 0, "no session was ended by SQL");
}

#[test]
fn an_aurora_writer_reached_once_before_the_cutover_keeps_the_database_path() {
    let policy = database_policy();
    let (mut model, mut m) = with_database_at(Phase::AwaitingCutover);
    let reached = m
        .progress
        .target_reached_at
        .expect("the route to Aurora was tried");
    assert!(reached <= model.now);
    run_to_end(&mut model, &mut m, &policy, 3_000);
    assert_eq!(m.phase, Phase::Completed);
    assert_eq!(m.progress.database_fallback, None);
    assert_eq!(model.reboots, 0);
}

#[test]
fn the_database_size_is_weighed_against_free_storage() {
    let policy = database_policy();
    let mut model = Model::with_database();
    model.db().preflight = Some(Ok(SqlPreflight {
        // More data than the model's 150 GiB free.
        database_bytes: 400 * 1024 * 1024 * 1024,
        ..SqlPreflight::default()
    }));
    let mut m = migration();
    advance_to(&mut model, &mut m, &policy, Phase::Preparing);
    let size = check(&m, "database-size");
    assert_eq!(size.outcome, Outcome::Warn);
    assert!(
        size.message.contains("400.0 GiB") && size.message.contains("150.0 GiB"),
        "{}",
        size.message
    );

    let mut model = Model::with_database();
    model.db().preflight = Some(Ok(SqlPreflight {
        database_bytes: 20 * 1024 * 1024 * 1024,
        ..SqlPreflight::default()
    }));
    let mut m = migration();
    advance_to(&mut model, &mut m, &policy, Phase::Preparing);
    assert_eq!(check(&m, "database-size").outcome, Outcome::Pass);
}

/// Steps `m` (in Promoting) every `promotion_poll` until the promotion is asked for.
fn step_until_the_promotion_is_asked(
    model: &mut Model,
    m: &mut aurora_migrator::core::Migration,
    policy: &aurora_migrator::core::policy::Policy,
) {
    for _ in 0..20 {
        if m.progress.promote_requested_at.is_some() {
            return;
        }
        quiet_round(model, m, policy);
        model.now += policy.promotion_poll;
    }
    panic!("the promotion was never asked for");
}

#[test]
fn while_aws_promotes_the_database_path_reads_the_describes_from_the_snapshot_and_then_rds_itself()
{
    let policy = database_policy();
    let (mut model, mut m) = with_database_at(Phase::Promoting);
    let need = |m: &aurora_migrator::core::Migration, model: &Model| {
        aurora_migrator::core::needs::needs(m, model.now, &policy)
    };
    assert!(
        !need(&m, &model).snapshot_will_do,
        "the request is due: the fence is read from RDS"
    );
    step_until_the_promotion_is_asked(&mut model, &mut m, &policy);
    assert_eq!(model.promotions, 1);
    // AWS promotes for minutes: a replica, `promoting`, its writer still in recovery.
    let t = model.target.as_mut().unwrap();
    t.replication_source = Some(m.source_arn.clone());
    t.status = "promoting".into();
    for _ in 0..300 {
        let n = need(&m, &model);
        assert!(n.snapshot_will_do && n.target_replay && !n.fresh);
        assert!(
            !n.quarantine_group,
            "no fence re-check for a request in flight"
        );
        quiet_round(&mut model, &mut m, &policy);
        assert_eq!(m.phase, Phase::Promoting);
        model.now += SignedDuration::from_millis(200);
    }
    // Once the writer has left recovery, the next look asks RDS itself.
    let mut out = m.clone();
    out.progress.writer_out_of_recovery_at = Some(model.now);
    let n = need(&out, &model);
    assert!(n.fresh && !n.snapshot_will_do);
    let t = model.target.as_mut().unwrap();
    t.replication_source = None;
    t.status = "available".into();
    advance_to(&mut model, &mut m, &policy, Phase::Verifying);
    assert_eq!(model.promotions, 1);
}

/// On the database path the looks while AWS promotes read the cluster from the fleet snapshot,
/// which for minutes after the request still shows it `available` (the snapshot predates it):
/// when the request's in-flight period passes, one look asks RDS for the cluster alone, not
/// for the source, the fence's group and the sessions as a new request would. RDS showing it
/// `promoting` keeps the request in flight for `reissue_after`. (A full re-check there was a
/// direct describe of the source for a request RDS already had: one a migration on the
/// database path in the simulator's 1,000-migration fleet.)
#[test]
fn a_promotion_request_past_its_in_flight_period_is_confirmed_by_the_cluster_alone() {
    let policy = database_policy();
    let (mut model, mut m) = with_database_at(Phase::Promoting);
    step_until_the_promotion_is_asked(&mut model, &mut m, &policy);
    assert_eq!(model.promotions, 1);
    let asked = m.progress.promote_requested_at.unwrap();
    // The snapshot's cluster: still `available`, a replica (the model serves it as is; its
    // promotion is instant).
    let t = model.target.as_mut().unwrap();
    t.replication_source = Some(m.source_arn.clone());
    t.status = "available".into();
    let mut looks = 0;
    while model.now < asked + policy.cutover_reissue_after {
        let n = aurora_migrator::core::needs::needs(&m, model.now, &policy);
        assert!(
            n.snapshot_will_do && !n.quarantine_group && !n.source_sessions,
            "{:?} after the request: {n:?}",
            model.now.duration_since(asked)
        );
        let d = quiet_round(&mut model, &mut m, &policy);
        assert!(!keys(&d.actions).contains(&ActionKey::PromoteTarget));
        model.now += SignedDuration::from_millis(200);
        looks += 1;
    }
    assert!(looks > 100, "{looks}");
    let n = aurora_migrator::core::needs::needs(&m, model.now, &policy);
    assert!(
        n.target && !n.snapshot_will_do && !n.fresh,
        "the cluster from RDS"
    );
    assert!(n.source_from_snapshot && !n.quarantine_group && !n.source_sessions);
    assert!(n.target_replay, "the writer's recovery state is still read");
    // RDS has it: `promoting`.
    model.target.as_mut().unwrap().status = "promoting".into();
    let d = quiet_round(&mut model, &mut m, &policy);
    assert!(!keys(&d.actions).contains(&ActionKey::PromoteTarget));
    model.now += policy.reissue_after - SignedDuration::from_secs(1);
    let n = aurora_migrator::core::needs::needs(&m, model.now, &policy);
    assert!(
        n.snapshot_will_do && !n.quarantine_group,
        "in flight for reissue_after"
    );
    assert_eq!(model.promotions, 1);
}

/// Once the Aurora writer has left recovery (read by SQL) the promotion has taken effect in the
/// database, whatever RDS's describe says yet: no request is due. A describe that still shows the
/// cluster a replica, `available`, after the request's in-flight period is waited out every
/// `promotion_poll`, and the promotion is not asked again. (It was looked at again at once: each
/// such look, with no wait, read the quarantine group, described both sides directly and read
/// both sides' fingerprints, until RDS caught up or Promoting's time limit ran out.)
#[test]
fn a_describe_that_lags_the_writer_out_of_recovery_is_waited_out_not_looked_at_again_at_once() {
    let policy = database_policy();
    let (mut model, mut m) = with_database_at(Phase::Promoting);
    step_until_the_promotion_is_asked(&mut model, &mut m, &policy);
    assert_eq!(model.promotions, 1);
    // The writer has left recovery (a look read it so); RDS's describe still shows a replica,
    // `available`, and the request's in-flight period is over.
    m.progress.writer_out_of_recovery_at = Some(model.now);
    let t = model.target.as_mut().unwrap();
    t.replication_source = Some(m.source_arn.clone());
    t.status = "available".into();
    model.now += policy.cutover_reissue_after + policy.reissue_after;
    for _ in 0..20 {
        let d = quiet_round(&mut model, &mut m, &policy);
        assert_eq!(m.phase, Phase::Promoting);
        assert!(
            !keys(&d.actions).contains(&ActionKey::PromoteTarget),
            "the promotion is not asked again: {:?}",
            d.actions
        );
        let wait = d.wake_after.expect("a next look");
        assert!(
            wait > SignedDuration::ZERO && wait <= policy.promotion_poll,
            "the next look waits for `promotion_poll`, not at once: {wait:?}"
        );
        model.now += wait;
    }
    // RDS catches up: the migration goes on with the one promotion.
    let t = model.target.as_mut().unwrap();
    t.replication_source = None;
    advance_to(&mut model, &mut m, &policy, Phase::Verifying);
    assert_eq!(model.promotions, 1);
}

/// The database path's Draining proves by SQL and reads the source from the fleet snapshot
/// (for its endpoint and the guards' tags), judging and repairing nothing on it: a fence that
/// broke meanwhile (an IaC apply put the old groups back) is caught by Promoting's first look,
/// which reads RDS before it asks for the promotion and sends the attempt back; from then on
/// Draining reads RDS, puts the quarantine back, and the attempt completes with one promotion,
/// asked only with the fence whole.
#[test]
fn draining_proves_by_sql_on_the_snapshot_and_promoting_catches_a_fence_broken_meanwhile() {
    let policy = database_policy();
    let (mut model, mut m) = with_database_at(Phase::Draining);
    let need = aurora_migrator::core::needs::needs(&m, model.now, &policy);
    assert!(
        need.source_from_snapshot && !need.quarantine_group,
        "{need:?}"
    );
    model.source.as_mut().unwrap().security_groups = vec![active_group("sg-app")];
    for _ in 0..20 {
        let d = quiet_round(&mut model, &mut m, &policy);
        assert!(
            !keys(&d.actions).contains(&ActionKey::QuarantineSource),
            "repaired on a snapshot look: {:?}",
            d.actions
        );
        if m.phase != Phase::Draining {
            break;
        }
        model.now += d.wake_after.unwrap_or(SignedDuration::from_secs(1));
    }
    assert_eq!(
        m.phase,
        Phase::Promoting,
        "proven by SQL: {:?}",
        m.last_error
    );
    // Promoting's first look reads the source from RDS: the fence is broken, nothing promoted.
    let need = aurora_migrator::core::needs::needs(&m, model.now, &policy);
    assert!(!need.source_from_snapshot && need.quarantine_group);
    let d = quiet_round(&mut model, &mut m, &policy);
    assert!(!keys(&d.actions).contains(&ActionKey::PromoteTarget));
    assert_eq!(m.phase, Phase::Draining);
    assert!(m.progress.fence_broke_at.is_some());
    assert_eq!(model.promotions, 0);
    // Back in Draining every look reads RDS: the quarantine is put back.
    let need = aurora_migrator::core::needs::needs(&m, model.now, &policy);
    assert!(!need.source_from_snapshot && need.quarantine_group);
    let d = quiet_round(&mut model, &mut m, &policy);
    assert!(
        keys(&d.actions).contains(&ActionKey::QuarantineSource),
        "{:?}",
        d.actions
    );
    run_to_end(&mut model, &mut m, &policy, 2_000);
    assert_eq!(m.phase, Phase::Completed, "{:?}", m.last_error);
    assert_eq!(model.promotions, 1);
}

/// During the cutover the phase mirror is written only for a phase that lasts a minute
/// (`PHASE_MIRROR_AFTER_IN_CUTOVER`): its tag writes would take turns at the RDS budget with
/// the cutover's own looks, which are write downtime. On the database path Quiescing (here RDS
/// applies the group change in 30 s), Draining and Routing last less and are not written; the
/// phases around the cutover still are.
#[test]
fn the_cutover_s_phases_under_a_minute_are_not_mirrored_on_the_database_path() {
    let policy = database_policy();
    let (mut model, mut m) = with_database_at(Phase::Quiescing);
    let applied_at = model.now + SignedDuration::from_secs(30);
    while m.phase == Phase::Quiescing && model.now < applied_at {
        let d = quiet_round(&mut model, &mut m, &policy);
        if let Some(s) = &mut model.source {
            s.status = "modifying".into();
            for g in &mut s.security_groups {
                g.status = "adding".into();
            }
        }
        model.now += d
            .wake_after
            .unwrap_or_default()
            .max(SignedDuration::from_secs(1));
    }
    if let Some(s) = &mut model.source {
        s.status = "available".into();
        for g in &mut s.security_groups {
            g.status = "active".into();
        }
    }
    run_to_end(&mut model, &mut m, &policy, 2_000);
    assert_eq!(m.phase, Phase::Completed, "{:?}", m.last_error);
    let mirrored = &model.mirrored[ARN];
    let lasted = |phase: Phase| {
        let i = m.history.iter().position(|h| h.phase == phase).unwrap();
        m.history[i + 1].at - m.history[i].at
    };
    assert!(
        lasted(Phase::Quiescing) >= SignedDuration::from_secs(30),
        "{:?}",
        lasted(Phase::Quiescing)
    );
    for phase in [
        Phase::Quiescing,
        Phase::Draining,
        Phase::Promoting,
        Phase::Routing,
    ] {
        if mirrored.contains(&phase) {
            assert!(
                lasted(phase) >= SignedDuration::from_mins(1),
                "{phase} written after {:?}",
                lasted(phase)
            );
        }
    }
    for passed_through in [Phase::Quiescing, Phase::Draining, Phase::Routing] {
        assert!(
            lasted(passed_through) < SignedDuration::from_mins(1),
            "{passed_through} lasted {:?}",
            lasted(passed_through)
        );
        assert!(!mirrored.contains(&passed_through), "{mirrored:?}");
    }
    for around in [Phase::Replicating, Phase::Verifying] {
        assert!(mirrored.contains(&around), "{around}: {mirrored:?}");
    }
}
