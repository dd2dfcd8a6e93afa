//! Golden tests: the texts people read. A change to a preflight report or a notification shows
//! up as a snapshot diff to review (`cargo insta review`, or INSTA_UPDATE=always to accept).

mod common;

use aurora_migrator::core::Phase;
use aurora_migrator::core::messages;
use aurora_migrator::core::migration::{Rollback, RollbackCause};
use aurora_migrator::core::observation::Parameter;
use aurora_migrator::core::preflight;
use common::*;

#[test]
fn preflight_report_of_a_ready_instance() {
    let (report, plan) = preflight::run(&source(), &preflight_inputs(), &policy());
    assert!(plan.is_some());
    insta::assert_snapshot!(report.render("aurora-migration"));
}

#[test]
fn preflight_report_of_an_instance_with_every_problem() {
    let mut s = source();
    s.engine_version = "17.9".into();
    s.status = "modifying".into();
    s.has_pending_modifications = true;
    s.parameter_group.apply_status = "pending-reboot".into();
    s.backup_retention_days = 0;
    s.read_replicas = vec![
        "orders-pg-reader".into(),
        "arn:aws:rds:eu-west-1:123456789012:db:orders-dr".into(),
    ];
    s.aurora_replica_clusters = vec!["someone-elses-replica".into()];
    s.instance_class = "db.m5.xlarge".into();
    s.iam_auth_enabled = true;
    s.deletion_protection = true;
    s.auto_minor_version_upgrade = true;
    s.tags.remove("aurora-migration:ack-unlogged-tables");
    s.tags
        .insert("aws:cloudformation:stack-name".into(), "orders-db".into());
    // Restored from a snapshot of an instance the agent migrated, tags and all.
    s.tags.insert(
        "aurora-migration:marker".into(),
        "db-AN0THER1NSTANCE2345".into(),
    );
    s.tags
        .insert("aurora-migration:rollback".into(), "approve".into());
    s.tags
        .insert("aurora-migration:cdc-slots-created".into(), "true".into());
    let mut inputs = preflight_inputs();
    inputs
        .source_parameters
        .retain(|p| p.name != "shared_preload_libraries");
    inputs.source_parameters.push(Parameter {
        name: "shared_preload_libraries".into(),
        value: "pg_stat_statements,pg_cron".into(),
    });
    inputs.source_parameters.push(Parameter {
        name: "rds.logical_replication".into(),
        value: "1".into(),
    });
    inputs.source_parameters.push(Parameter {
        name: "max_wal_senders".into(),
        value: "20".into(),
    });
    inputs.kms_key =
        aurora_migrator::core::observation::KeyCheck::Unusable("the key is Disabled".into());
    inputs.free_storage_bytes = Some(4.0 * GIB);
    inputs.pending_maintenance = vec!["system-update".into()];
    inputs.quotas[0].used = 40;
    let (report, plan) = preflight::run(&s, &inputs, &policy());
    assert!(plan.is_none());
    insta::assert_snapshot!(report.render("aurora-migration"));
}

#[test]
fn notification_for_every_phase() {
    let mut out = String::new();
    let mut m = migration();
    let (_, plan) = preflight::run(&source(), &preflight_inputs(), &policy());
    m.plan = plan;
    for phase in Phase::ALL {
        m.phase = phase;
        m.rollback = matches!(phase, Phase::RollingBack | Phase::RolledBack).then(|| Rollback {
            cause: RollbackCause::Failure("the write-unavailability budget of 10m ran out".into()),
            started_at: t0(),
            after_cutover: false,
        });
        m.last_error =
            (phase == Phase::Failed).then(|| "preflight blocked the migration".to_string());
        let n = messages::phase_change(&m, Phase::Requested, "", "phase-change", &policy());
        assert!(n.subject().chars().count() < 100);
        out.push_str(&format!(
            "== {phase}\nSubject: {}\n{}\n\n",
            n.subject(),
            serde_json::to_string_pretty(&n.chatbot_message()).unwrap()
        ));
    }
    insta::assert_snapshot!(out);
}

#[test]
fn notification_subject_is_cut_under_100_characters() {
    let mut m = migration();
    m.source_identifier = "a".repeat(63);
    let n = messages::alert(
        &m,
        "source-writes",
        aurora_migrator::core::notification::Severity::Error,
        &"very long title ".repeat(10),
        "",
        &policy(),
    );
    let subject = n.subject();
    assert_eq!(subject.chars().count(), 99);
    assert!(subject.ends_with('…'));
}
