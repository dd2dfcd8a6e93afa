//! The operator's tag commands through the real binary: what `ack` writes is what the
//! preflight reads, and a check that cannot be acknowledged is refused before anything is
//! written.

use super::*;

/// The instance's tags as RDS has them now.
async fn tags_of(env: &Env, id: &str) -> Vec<(String, String)> {
    env.instance(id)
        .await
        .unwrap()
        .tag_list()
        .iter()
        .map(|t| {
            (
                t.key().unwrap_or_default().to_string(),
                t.value().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

/// A restore of a migrated source carries that source's marker (its tags came from the
/// snapshot): its preflight fails `restored-copy` until the copy is acknowledged by its own
/// resource id, which `ack <instance> restored-copy` writes (a `true` would travel on to the
/// copy's own snapshots). A misspelt check and an unknown instance are refused, naming what is
/// wrong, and write nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_writes_what_the_preflight_reads_and_refuses_an_unknown_check() {
    let env = Env::new().await;
    let arn = env.source("orders-copy", true).await;
    let rid = env.resource_id("orders-copy").await;
    let original = "db-THEMIGRATEDORIGINAL";
    env.aws
        .rds
        .add_tags_to_resource()
        .resource_name(&arn)
        .tags(tag("aurora-migration:marker", original))
        .send()
        .await
        .unwrap();

    let before = AgentProcess::plan(&env, &["orders-copy"]);
    let report = text(&before.stdout);
    assert!(
        report.contains("restored-copy") && report.contains("marker of another instance"),
        "{report}"
    );
    assert!(
        report.contains(&format!("aurora-migration:ack-restored-copy={rid}")),
        "the failure says what to tag: {report}"
    );

    let ack = AgentProcess::operator(&env, "ack", &["orders-copy", "restored-copy"]);
    assert!(ack.status.success(), "{}", text(&ack.stderr));
    let key = "aurora-migration:ack-restored-copy".to_string();
    assert!(
        tags_of(&env, "orders-copy")
            .await
            .contains(&(key.clone(), rid.clone())),
        "the copy's own resource id, not `true`: {:?}",
        tags_of(&env, "orders-copy").await
    );
    let after = text(&AgentProcess::plan(&env, &["orders-copy"]).stdout);
    assert!(
        after.contains(&format!("a copy of {original}, to be migrated")),
        "{after}"
    );

    // Any other acknowledgeable check is `true`.
    let ack = AgentProcess::operator(&env, "ack", &["orders-copy", "extensions"]);
    assert!(ack.status.success(), "{}", text(&ack.stderr));
    assert!(
        tags_of(&env, "orders-copy")
            .await
            .contains(&("aurora-migration:ack-extensions".into(), "true".into()))
    );

    let tags = tags_of(&env, "orders-copy").await;
    let typo = AgentProcess::operator(&env, "ack", &["orders-copy", "unlogged-tabels"]);
    assert!(!typo.status.success());
    let why = text(&typo.stderr);
    assert!(
        why.contains("`unlogged-tabels` is not a check the owners may acknowledge")
            && why.contains("unlogged-tables")
            && why.contains("restored-copy"),
        "{why}"
    );
    assert_eq!(tags_of(&env, "orders-copy").await, tags, "nothing written");

    let missing = AgentProcess::operator(&env, "ack", &["orders-gone", "restored-copy"]);
    assert!(!missing.status.success());
    let why = text(&missing.stderr);
    assert!(why.contains("no RDS instance named `orders-gone`"), "{why}");
}
