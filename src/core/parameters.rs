//! Translation of the source's parameter group into Aurora cluster and instance groups.
//!
//! Only parameters the owners set (`Source = user`) are carried over; everything else keeps the
//! Aurora family's default. A parameter the Aurora family does not know is dropped and reported
//! by preflight. The translated content is hashed so that identical translations share a group
//! (50 cluster parameter groups per account, not adjustable).

use serde::{Deserialize, Serialize};

use super::action::TranslatedParameter;
use super::naming::fnv1a64;
use super::observation::Parameter;

/// Parameters never copied: the agent owns them (logical replication follows the CDC
/// declaration), or they describe the RDS instance's own storage and replication.
const NEVER_COPIED: [&str; 3] = [
    "rds.logical_replication",
    "wal_keep_size",
    "max_slot_wal_keep_size",
];

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Translation {
    pub cluster: Vec<TranslatedParameter>,
    pub instance: Vec<TranslatedParameter>,
    /// Parameters with no Aurora equivalent, dropped.
    pub dropped: Vec<String>,
    pub cluster_hash: u64,
    pub instance_hash: u64,
}

pub struct AuroraFamily<'a> {
    pub family: &'a str,
    pub cluster_parameters: &'a [String],
    pub instance_parameters: &'a [String],
    pub static_parameters: &'a [String],
}

pub fn translate(source: &[Parameter], aurora: &AuroraFamily<'_>, cdc: bool) -> Translation {
    let apply = |name: &str| {
        if aurora.static_parameters.iter().any(|s| s == name) {
            "pending-reboot"
        } else {
            "immediate"
        }
    };
    let mut cluster = Vec::new();
    let mut instance = Vec::new();
    let mut dropped = Vec::new();
    for p in source {
        if NEVER_COPIED.contains(&p.name.as_str()) {
            continue;
        }
        let param = TranslatedParameter {
            name: p.name.clone(),
            value: p.value.clone(),
            apply_method: apply(&p.name).to_string(),
        };
        // Cluster level first: a value there applies to every instance, today's and tomorrow's.
        if aurora.cluster_parameters.contains(&p.name) {
            cluster.push(param);
        } else if aurora.instance_parameters.contains(&p.name) {
            instance.push(param);
        } else {
            dropped.push(p.name.clone());
        }
    }
    if cdc {
        // Static: it must be in the group when the cluster is created.
        cluster.push(TranslatedParameter {
            name: "rds.logical_replication".to_string(),
            value: "1".to_string(),
            apply_method: "pending-reboot".to_string(),
        });
    }
    cluster.sort_by(|a, b| a.name.cmp(&b.name));
    instance.sort_by(|a, b| a.name.cmp(&b.name));
    dropped.sort();
    dropped.dedup();
    Translation {
        cluster_hash: content_hash(aurora.family, &cluster),
        instance_hash: content_hash(aurora.family, &instance),
        cluster,
        instance,
        dropped,
    }
}

fn content_hash(family: &str, params: &[TranslatedParameter]) -> u64 {
    let mut text = String::from(family);
    for p in params {
        text.push('\n');
        text.push_str(&p.name);
        text.push('=');
        text.push_str(&p.value);
        text.push('@');
        text.push_str(&p.apply_method);
    }
    fnv1a64(text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(name: &str, value: &str) -> Parameter {
        Parameter {
            name: name.into(),
            value: value.into(),
        }
    }

    fn family<'a>(
        cluster: &'a [String],
        instance: &'a [String],
        statics: &'a [String],
    ) -> AuroraFamily<'a> {
        AuroraFamily {
            family: "aurora-postgresql15",
            cluster_parameters: cluster,
            instance_parameters: instance,
            static_parameters: statics,
        }
    }

    #[test]
    fn parameters_go_to_the_cluster_first_then_the_instance_else_are_dropped() {
        let cluster = vec![
            "log_min_duration_statement".to_string(),
            "shared_preload_libraries".to_string(),
        ];
        let instance = vec![
            "work_mem".to_string(),
            "log_min_duration_statement".to_string(),
        ];
        let statics = vec!["shared_preload_libraries".to_string()];
        let t = translate(
            &[
                p("work_mem", "64MB"),
                p("log_min_duration_statement", "500"),
                p("shared_preload_libraries", "pg_stat_statements"),
                p("max_wal_senders", "20"),
                p("rds.logical_replication", "1"),
            ],
            &family(&cluster, &instance, &statics),
            false,
        );
        let names =
            |v: &[TranslatedParameter]| v.iter().map(|p| p.name.clone()).collect::<Vec<_>>();
        assert_eq!(
            names(&t.cluster),
            ["log_min_duration_statement", "shared_preload_libraries"]
        );
        assert_eq!(names(&t.instance), ["work_mem"]);
        assert_eq!(t.dropped, ["max_wal_senders"]);
        assert_eq!(
            t.cluster[1].apply_method, "pending-reboot",
            "static parameters apply at reboot"
        );
    }

    #[test]
    fn cdc_sets_logical_replication_and_changes_the_content_hash() {
        let none: Vec<String> = vec![];
        let without = translate(&[], &family(&none, &none, &none), false);
        let with = translate(&[], &family(&none, &none, &none), true);
        assert_eq!(with.cluster[0].name, "rds.logical_replication");
        assert_eq!(with.cluster[0].value, "1");
        assert_ne!(
            with.cluster_hash, without.cluster_hash,
            "different content, different shared group"
        );
    }

    #[test]
    fn the_same_content_in_any_order_shares_a_group() {
        let cluster = vec!["a".to_string(), "b".to_string()];
        let none: Vec<String> = vec![];
        let one = translate(
            &[p("a", "1"), p("b", "2")],
            &family(&cluster, &none, &none),
            false,
        );
        let two = translate(
            &[p("b", "2"), p("a", "1")],
            &family(&cluster, &none, &none),
            false,
        );
        assert_eq!(one.cluster_hash, two.cluster_hash);
    }
}
