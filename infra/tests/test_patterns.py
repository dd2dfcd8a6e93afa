"""The template's rules use exactly the patterns in events/patterns plus this account and
Region, and every sample under events/samples is routed by exactly the rule whose folder it is
in, by the file's pattern and by the template's; an event from another account or Region is
routed by none."""

import json

import pytest

from cfn import EVENTS, SAMPLE_CONTEXT, load_template, matches, pattern_files, rules

TEMPLATE_RULES = rules(load_template())
FILES = pattern_files()
PATTERNS = {name: p for name, p in FILES.items() if "schedule" not in p}
# What the template adds to every file pattern: the events files are the agent's (the Rust
# tests compare them to the samples), the account and Region are the deployment's.
ACCOUNT, REGION = SAMPLE_CONTEXT["AWS::AccountId"], SAMPLE_CONTEXT["AWS::Region"]
HERE = {"account": [ACCOUNT], "region": [REGION]}
DEPLOYED = {name: TEMPLATE_RULES[name]["pattern"] for name in PATTERNS}
ENVELOPE = {"version", "id", "detail-type", "source", "account", "time", "region", "resources", "detail"}


def samples(folder):
    return sorted((EVENTS / "samples" / folder).glob("*.json"))


def test_every_pattern_file_has_one_rule_and_back():
    assert set(TEMPLATE_RULES) == set(FILES)


@pytest.mark.parametrize("rule", sorted(PATTERNS))
def test_template_pattern_equals_file_plus_account_and_region(rule):
    assert TEMPLATE_RULES[rule]["schedule"] is None
    assert not set(HERE) & set(PATTERNS[rule]), "the file must not pin an account or Region"
    assert TEMPLATE_RULES[rule]["pattern"] == {**PATTERNS[rule], **HERE}


def test_resync_schedule_is_a_schedule_not_a_pattern():
    assert FILES["resync-schedule"] == {"schedule": TEMPLATE_RULES["resync-schedule"]["schedule"]}
    assert TEMPLATE_RULES["resync-schedule"]["pattern"] is None


def _all_samples():
    for folder in sorted(p.name for p in (EVENTS / "samples").iterdir() if p.is_dir()):
        if folder == "tick":
            continue  # the agent's own messages; no EventBridge rule routes them
        for path in samples(folder):
            yield pytest.param(folder, path, id=f"{folder}/{path.name}")


@pytest.mark.parametrize("folder,path", list(_all_samples()))
def test_sample_routed_by_exactly_its_rule(folder, path):
    event = json.loads(path.read_text())
    assert ENVELOPE <= set(event), f"missing envelope fields: {ENVELOPE - set(event)}"
    assert (event["account"], event["region"]) == (ACCOUNT, REGION)
    routed = {rule for rule, pattern in PATTERNS.items() if matches(pattern, event)}
    deployed = {rule for rule, pattern in DEPLOYED.items() if matches(pattern, event)}
    if folder in ("unrouted", "resync-schedule"):
        assert routed == deployed == set()
    else:
        assert folder in PATTERNS, f"samples/{folder} names no rule"
        assert routed == deployed == {folder}
    for field, other in (("account", "210987654321"), ("region", "eu-west-1")):
        foreign = {**event, field: other}
        assert {rule for rule, pattern in DEPLOYED.items() if matches(pattern, foreign)} == set(), field


def test_every_rule_has_samples():
    for rule in FILES:
        assert samples(rule), f"no samples for {rule}"
    assert samples("unrouted")


def test_rds_instance_samples_cover_the_event_ids_the_agent_uses():
    ids = {json.loads(p.read_text())["detail"]["EventID"] for p in samples("rds-instance-events")}
    wanted = {f"RDS-EVENT-{n}" for n in ("0005", "0006", "0004", "0003", "0045", "0057", "0046", "0202", "0089", "0418")}
    assert wanted <= ids


def test_rds_cluster_samples_include_a_promotion_without_event_id():
    details = [json.loads(p.read_text())["detail"] for p in samples("rds-cluster-events")]
    assert any("EventID" not in d and d["Message"].startswith("Promoted Read Replica cluster") for d in details)
    ids = {d.get("EventID") for d in details}
    assert {"RDS-EVENT-0170", "RDS-EVENT-0171", "RDS-EVENT-0076", "RDS-EVENT-0354", "RDS-EVENT-0355"} <= ids


# The matcher itself, on the operators the patterns may use.
@pytest.mark.parametrize("pattern,event,expected", [
    ({"a": ["x"]}, {"a": "x"}, True),
    ({"a": ["x"]}, {"a": ["y", "x"]}, True),
    ({"a": ["x"]}, {"a": "y"}, False),
    ({"a": ["x"]}, {}, False),
    ({"a": [3]}, {"a": 3}, True),
    ({"a": [3]}, {"a": "3"}, False),
    ({"a": [{"prefix": "ab"}]}, {"a": "abc"}, True),
    ({"a": [{"prefix": "ab"}]}, {"a": "ba"}, False),
    ({"a": [{"anything-but": ["x", "y"]}]}, {"a": "z"}, True),
    ({"a": [{"anything-but": ["x", "y"]}]}, {"a": "x"}, False),
    ({"a": [{"anything-but": ["x"]}]}, {}, False),
    ({"a": [{"anything-but": {"prefix": "ar"}}]}, {"a": "arn"}, False),
    ({"a": [{"anything-but": {"prefix": "ar"}}]}, {"a": "urn"}, True),
    ({"a": [{"exists": True}]}, {"a": "v"}, True),
    ({"a": [{"exists": True}]}, {}, False),
    ({"a": [{"exists": False}]}, {}, True),
    ({"a": [{"exists": False}]}, {"a": "v"}, False),
    ({"a": [{"equals-ignore-case": "AbC"}]}, {"a": "aBc"}, True),
    ({"d": {"t": {"k": [{"prefix": "p"}]}}}, {"d": {"t": [{"k": "q"}, {"k": "pz"}]}}, True),
    ({"d": {"t": {"k": [{"prefix": "p"}]}}}, {"d": {"t": [{"k": "q"}]}}, False),
])
def test_matcher(pattern, event, expected):
    assert matches(pattern, event) is expected


def test_matcher_rejects_operators_the_agent_lacks():
    with pytest.raises(ValueError):
        matches({"a": [{"numeric": [">", 1]}]}, {"a": 2})
    with pytest.raises(ValueError):
        matches({"a": [{"wildcard": "*x"}]}, {"a": "x"})
