//! The wire contract: every sample in `events/` is routed by exactly the rule it sits under
//! (using the same pattern files the CloudFormation template deploys), parses into the kind the
//! agent expects, and a bad body is reported, never a panic.

use std::fs;
use std::path::{Path, PathBuf};

use aurora_migrator::inbound::{
    Home, Inbound, MAX_BODY_BYTES, Origin, ParseError, parse, pattern, read,
};
use proptest::prelude::*;
use serde_json::Value;

const RULES: [&str; 4] = [
    "rds-instance-events",
    "rds-cluster-events",
    "tag-change",
    "cloudtrail-add-tags",
];

fn events_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("events")
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&fs::read_to_string(path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn samples(folder: &str) -> Vec<(PathBuf, String)> {
    let mut out: Vec<_> = fs::read_dir(events_dir().join("samples").join(folder))
        .unwrap_or_else(|e| panic!("events/samples/{folder}: {e}"))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| {
            let body = fs::read_to_string(&p).unwrap();
            (p, body)
        })
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no samples in events/samples/{folder}");
    out
}

fn patterns() -> Vec<(&'static str, Value)> {
    RULES
        .iter()
        .map(|r| {
            (
                *r,
                read_json(&events_dir().join("patterns").join(format!("{r}.json"))),
            )
        })
        .collect()
}

fn routing_rules(event: &Value) -> Vec<&'static str> {
    patterns()
        .into_iter()
        .filter(|(_, p)| pattern::matches(p, event))
        .map(|(r, _)| r)
        .collect()
}

#[test]
fn every_sample_is_routed_by_exactly_its_own_rule() {
    for rule in RULES {
        for (path, body) in samples(rule) {
            let event: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(routing_rules(&event), vec![rule], "{}", path.display());
        }
    }
}

#[test]
fn unrouted_samples_and_the_schedule_match_no_rule() {
    for folder in ["unrouted", "resync-schedule", "tick"] {
        for (path, body) in samples(folder) {
            let event: Value = serde_json::from_str(&body).unwrap();
            assert!(
                routing_rules(&event).is_empty(),
                "{} is routed",
                path.display()
            );
        }
    }
    let schedule = read_json(&events_dir().join("patterns/resync-schedule.json"));
    assert!(schedule["schedule"].as_str().unwrap().starts_with("rate("));
}

#[test]
fn every_routed_sample_parses_into_the_kind_the_agent_expects() {
    type IsExpected = fn(&Inbound) -> bool;
    let kinds: [(&str, IsExpected); 6] = [
        (
            "rds-instance-events",
            |i| matches!(i, Inbound::InstanceEvent(e) if e.source_arn.contains(":db:") && e.event_id.as_deref().is_some_and(|id| id.starts_with("RDS-EVENT-"))),
        ),
        (
            "rds-cluster-events",
            |i| matches!(i, Inbound::ClusterEvent(e) if e.source_arn.contains(":cluster:")),
        ),
        (
            "tag-change",
            |i| matches!(i, Inbound::TagChange(t) if t.arn.contains(":db:") && t.changed_keys.iter().any(|k| k.starts_with("aurora-migration"))),
        ),
        (
            "cloudtrail-add-tags",
            |i| matches!(i, Inbound::TagsAdded(t) if t.arn.contains(":db:")),
        ),
        ("resync-schedule", |i| matches!(i, Inbound::Resync { .. })),
        (
            "tick",
            |i| matches!(i, Inbound::Tick(t) if t.version == 1 && t.attempt >= 1),
        ),
    ];
    for (folder, is_expected) in kinds {
        for (path, body) in samples(folder) {
            let parsed = parse(&body).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(
                is_expected(&parsed),
                "{}: parsed as {parsed:?}",
                path.display()
            );
        }
    }
}

#[test]
fn the_restart_sample_carries_what_the_draining_proof_reads() {
    let (_, body) = samples("rds-instance-events")
        .into_iter()
        .find(|(p, _)| p.to_string_lossy().contains("0006"))
        .unwrap();
    let Inbound::InstanceEvent(e) = parse(&body).unwrap() else {
        panic!()
    };
    assert_eq!(e.event_id.as_deref(), Some("RDS-EVENT-0006"));
    assert_eq!(e.source_identifier, "orders-pg");
}

#[test]
fn unrouted_samples_never_panic_the_parser() {
    for (path, body) in samples("unrouted") {
        match parse(&body) {
            Ok(_) | Err(ParseError::Unknown(_)) => {}
            Err(e) => panic!("{}: {e}", path.display()),
        }
    }
}

#[test]
fn malformed_bodies_are_reported_as_malformed() {
    let cases = [
        "",
        "not json",
        "{\"kind\": \"aurora-migrator.tick\", \"version\": 2, \"resource_id\": \"db-1\", \"attempt\": 1, \"token\": 1}",
        "{\"kind\": \"aurora-migrator.tick\", \"version\": 1}",
        "{\"kind\": \"aurora-migrator.tick\", \"version\": 1, \"resource_id\": \"\", \"attempt\": 1, \"token\": 1}",
        "{\"source\": \"aws.rds\", \"detail-type\": \"RDS DB Instance Event\", \"time\": \"2026-01-01T00:00:00Z\", \"detail\": {}}",
        "{\"source\": \"aws.rds\", \"detail-type\": \"RDS DB Instance Event\", \"time\": \"yesterday\", \"detail\": {\"SourceArn\": \"arn:aws:rds:us-east-1:1:db:x\"}}",
        "{\"source\": \"aws.tag\", \"detail-type\": \"Tag Change on Resource\", \"time\": \"2026-01-01T00:00:00Z\", \"resources\": [], \"detail\": {\"service\": \"rds\"}}",
    ];
    for body in cases {
        assert!(
            matches!(parse(body), Err(ParseError::Malformed { .. })),
            "{body:?} gave {:?}",
            parse(body)
        );
    }
}

/// The example deployment the samples come from.
fn home() -> Home {
    Home {
        account: Some("123456789012".into()),
        region: Some("us-east-1".into()),
    }
}

/// Every EventBridge sample the agent handles, with `field` of its envelope set to `value`.
fn events_with(field: &str, value: &str) -> Vec<(PathBuf, String)> {
    RULES
        .iter()
        .copied()
        .chain(["resync-schedule"])
        .flat_map(samples)
        .map(|(path, body)| {
            let mut event: Value = serde_json::from_str(&body).unwrap();
            event[field] = Value::String(value.into());
            (path, event.to_string())
        })
        .collect()
}

#[test]
fn every_event_sample_is_from_the_agents_own_account_and_region() {
    for (path, body) in events_with("version", "0") {
        let r = read(&body).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let origin = r.origin.expect("an EventBridge event has an origin");
        assert_eq!(home().foreign(&origin), None, "{}", path.display());
    }
    // Ticks are the agent's own: no origin, never foreign.
    for (path, body) in samples("tick") {
        assert_eq!(read(&body).unwrap().origin, None, "{}", path.display());
    }
}

#[test]
fn an_event_from_another_account_is_foreign() {
    for (path, body) in events_with("account", "210987654321") {
        let origin = read(&body).unwrap().origin.unwrap();
        assert_eq!(origin.account, "210987654321");
        let why = home().foreign(&origin);
        assert!(
            why.as_deref().is_some_and(|w| w.contains("210987654321")),
            "{}: {why:?}",
            path.display()
        );
        // Without a known account (the queue URL named none), no filter on account.
        let no_account = Home {
            account: None,
            ..home()
        };
        assert_eq!(no_account.foreign(&origin), None, "{}", path.display());
    }
}

#[test]
fn an_event_from_another_region_is_foreign() {
    for (path, body) in events_with("region", "eu-west-1") {
        let origin = read(&body).unwrap().origin.unwrap();
        let why = home().foreign(&origin);
        assert!(
            why.as_deref().is_some_and(|w| w.contains("eu-west-1")),
            "{}: {why:?}",
            path.display()
        );
        assert_eq!(Home::default().foreign(&origin), None);
    }
    let unknown_region = Home {
        region: None,
        ..home()
    };
    let elsewhere = Origin {
        account: "123456789012".into(),
        region: "eu-west-1".into(),
    };
    assert_eq!(unknown_region.foreign(&elsewhere), None);
}

#[test]
fn an_event_without_account_or_region_is_malformed() {
    let (_, body) = samples("tag-change").into_iter().next().unwrap();
    for field in ["account", "region"] {
        let mut event: Value = serde_json::from_str(&body).unwrap();
        event.as_object_mut().unwrap().remove(field);
        assert!(
            matches!(parse(&event.to_string()), Err(ParseError::Malformed { .. })),
            "without {field}"
        );
    }
}

/// A valid sample padded with trailing whitespace (still valid JSON) to exactly `len` bytes.
fn padded_sample(len: usize) -> String {
    let (_, body) = samples("tag-change").into_iter().next().unwrap();
    assert!(body.len() <= len);
    format!("{body}{}", " ".repeat(len - body.len()))
}

#[test]
fn a_body_over_64_kib_is_refused_unread() {
    assert_eq!(MAX_BODY_BYTES, 65_536);
    // At the limit: parsed as usual.
    let at_limit = padded_sample(MAX_BODY_BYTES);
    assert!(matches!(parse(&at_limit), Ok(Inbound::TagChange(_))));
    // One byte over: refused before parsing, whatever it holds (valid JSON here), and the error
    // carries the size, not the body.
    let over = padded_sample(MAX_BODY_BYTES + 1);
    let e = parse(&over).unwrap_err();
    assert_eq!(
        e,
        ParseError::TooLarge {
            bytes: MAX_BODY_BYTES + 1
        }
    );
    assert!(!e.to_string().contains("orders-pg"), "{e}");
    // Not even JSON is looked at.
    let junk = "x".repeat(MAX_BODY_BYTES + 1);
    assert!(matches!(parse(&junk), Err(ParseError::TooLarge { .. })));
}

#[test]
fn unknown_kinds_are_reported_as_unknown() {
    let cases = [
        "{}",
        "[1, 2]",
        "{\"source\": \"aws.ec2\", \"detail-type\": \"EC2 Instance State-change Notification\", \"time\": \"2026-01-01T00:00:00Z\", \"detail\": {}}",
        "{\"Type\": \"Notification\", \"Message\": \"hello\"}",
    ];
    for body in cases {
        assert!(
            matches!(parse(body), Err(ParseError::Unknown(_))),
            "{body:?} gave {:?}",
            parse(body)
        );
    }
}

proptest! {
    #[test]
    fn the_parser_never_panics_on_arbitrary_text(body in ".{0,300}") {
        let _ = parse(&body);
    }

    #[test]
    fn the_parser_never_panics_on_mangled_samples(cut in 0usize..2000, junk in "[{}\\[\\]\",:a-z0-9 ]{0,20}") {
        for (_, body) in samples("rds-instance-events").into_iter().chain(samples("tag-change")) {
            let at = cut.min(body.len());
            if body.is_char_boundary(at) {
                let mangled = format!("{}{}{}", &body[..at], junk, &body[at..]);
                let _ = parse(&mangled);
            }
        }
    }
}
