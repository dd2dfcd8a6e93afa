//! Names of everything the agent creates, derived from the source and the attempt.
//!
//! Derived names make every create idempotent: a repeat after a crash asks for the same name and
//! finds its own resource. The source's identifier keeps them readable; a hash of the source's
//! `DbiResourceId` keeps two sources that share a truncated prefix (or a reused identifier) apart.

use serde::{Deserialize, Serialize};

/// RDS identifiers for clusters and instances: at most 63 characters.
const RDS_IDENTIFIER_MAX: usize = 63;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetNames {
    pub cluster: String,
    pub writer: String,
    pub final_snapshot: String,
    pub quarantine_group: String,
    pub heartbeat_alarm: String,
}

/// FNV-1a, 64 bits: a stable, dependency-free hash for names and content addresses (not for
/// security).
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// Cuts `base` so that `base + suffix` fits `max`, and keeps the result a valid RDS identifier
/// (no trailing or doubled hyphen).
fn fit(base: &str, suffix: &str, max: usize) -> String {
    let room = max.saturating_sub(suffix.len());
    let mut cut: String = base.chars().take(room).collect();
    while cut.ends_with('-') {
        cut.pop();
    }
    let mut out = String::with_capacity(cut.len() + suffix.len());
    for c in cut.chars().chain(suffix.chars()) {
        if c == '-' && out.ends_with('-') {
            continue;
        }
        out.push(c);
    }
    out
}

pub fn target_names(source_identifier: &str, resource_id: &str, attempt: u32) -> TargetNames {
    let hash = format!("{:06x}", fnv1a64(resource_id.as_bytes()) & 0xff_ffff);
    let source = source_identifier.to_ascii_lowercase();
    TargetNames {
        cluster: fit(
            &source,
            &format!("-aurora-{hash}-{attempt}"),
            RDS_IDENTIFIER_MAX,
        ),
        writer: fit(
            &source,
            &format!("-aurora-{hash}-{attempt}-w"),
            RDS_IDENTIFIER_MAX,
        ),
        final_snapshot: fit(
            &source,
            &format!("-final-{hash}-{attempt}"),
            RDS_IDENTIFIER_MAX,
        ),
        quarantine_group: fit(
            &format!("aurora-migrator-quarantine-{source}"),
            &format!("-{hash}-{attempt}"),
            255,
        ),
        heartbeat_alarm: format!("aurora-migrator-heartbeat-{resource_id}-{attempt}"),
    }
}

/// Parameter groups are shared between migrations with the same translated content, so 50
/// cluster parameter groups per account are enough for any fleet.
pub fn parameter_group_name(kind: &str, family: &str, content_hash: u64) -> String {
    format!("aurora-migrator-{kind}-{family}-{content_hash:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid_rds_identifier(s: &str) -> bool {
        s.len() <= 63
            && s.starts_with(|c: char| c.is_ascii_alphabetic())
            && !s.ends_with('-')
            && !s.contains("--")
            && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    }

    #[test]
    fn names_fit_rds_limits_even_for_the_longest_source() {
        let long = format!("a{}", "-b".repeat(31));
        assert_eq!(long.len(), 63);
        let n = target_names(&long, "db-ABCDEFGHIJKLMNOPQRSTUVWXYZ", 12);
        for name in [&n.cluster, &n.writer, &n.final_snapshot] {
            assert!(valid_rds_identifier(name), "{name}");
        }
        assert!(n.cluster.ends_with("-12"));
    }

    #[test]
    fn two_sources_sharing_a_prefix_get_different_names() {
        let prefix = "x".repeat(60);
        let a = target_names(&format!("{prefix}-one"), "db-AAA", 1);
        let b = target_names(&format!("{prefix}-two"), "db-BBB", 1);
        assert_ne!(a.cluster, b.cluster);
        assert_ne!(a.writer, b.writer);
    }

    #[test]
    fn names_are_stable_per_source_and_attempt() {
        assert_eq!(
            target_names("orders", "db-1", 1),
            target_names("orders", "db-1", 1)
        );
        assert_ne!(
            target_names("orders", "db-1", 1).cluster,
            target_names("orders", "db-1", 2).cluster
        );
    }
}
