"""The IAM evaluator of iam_eval.py on the documented rules it models."""

import pytest

from iam_eval import (ALLOW, DENY, IMPLICIT_DENY, arn_like, condition_holds, evaluate, request)

ROLE = "arn:aws:iam::111111111111:role/r"
OTHER = "arn:aws:iam::222222222222:role/x"


def pol(*statements):
    return {"Version": "2012-10-17", "Statement": list(statements)}


@pytest.mark.parametrize("op,key,values,ctx,expected", [
    # Null tests presence only.
    ("Null", "k", "true", {}, True),
    ("Null", "k", "true", {"k": "v"}, False),
    ("Null", "k", "false", {}, False),
    ("Null", "k", "false", {"k": ""}, True),
    # Positive operators on a missing key are false...
    ("StringEquals", "k", ["v"], {}, False),
    ("StringLike", "k", ["*"], {}, False),
    ("ArnEquals", "k", ["arn:aws:s:r:1:x"], {}, False),
    ("ArnLike", "k", ["arn:*"], {}, False),
    # ...negated ones are true.
    ("StringNotEquals", "k", ["v"], {}, True),
    ("StringNotLike", "k", ["v*"], {}, True),
    ("ArnNotEquals", "k", ["arn:aws:s:r:1:x"], {}, True),
    ("ArnNotLike", "k", ["arn:*"], {}, True),
    # IfExists: true when the key is absent, the operator otherwise.
    ("StringEqualsIfExists", "k", ["v"], {}, True),
    ("StringEqualsIfExists", "k", ["v"], {"k": "w"}, False),
    # Values of one key are ORed; negated operators are true when none matches.
    ("StringEquals", "k", ["a", "b"], {"k": "b"}, True),
    ("StringEquals", "k", ["start"], {"k": "Start"}, False),
    ("StringEqualsIgnoreCase", "k", ["start"], {"k": "Start"}, True),
    ("StringNotEquals", "k", ["a", "b"], {"k": "b"}, False),
    ("StringNotEquals", "k", ["a", "b"], {"k": "c"}, True),
    ("StringLike", "k", ["p:ack-*"], {"k": "p:ack-x"}, True),
    ("StringLike", "k", ["p:a?"], {"k": "p:abc"}, False),
    ("ArnEquals", "k", ["arn:aws:events:r:1:rule/a"], {"k": "arn:aws:events:r:1:rule/a"}, True),
    ("ArnNotEquals", "k", ["arn:aws:events:r:1:rule/a"], {"k": "arn:aws:events:r:1:rule/b"}, True),
    ("ArnLike", "k", ["arn:aws:iam::*:role/r"], {"k": "arn:aws:iam::1:role/r"}, True),
    ("Bool", "k", ["false"], {"k": "false"}, True),
    # ForAllValues: every request value matches; vacuously true on a missing/empty key.
    ("ForAllValues:StringLike", "aws:TagKeys", ["p", "p:*"], {"aws:TagKeys": ["p", "p:x"]}, True),
    ("ForAllValues:StringLike", "aws:TagKeys", ["p", "p:*"], {"aws:TagKeys": ["p", "owner"]}, False),
    ("ForAllValues:StringLike", "aws:TagKeys", ["p"], {}, True),
    ("ForAllValues:StringEquals", "aws:TagKeys", ["p"], {"aws:TagKeys": []}, True),
    # ForAnyValue: at least one; false on a missing key.
    ("ForAnyValue:StringEquals", "aws:TagKeys", ["p:m"], {"aws:TagKeys": ["x", "p:m"]}, True),
    ("ForAnyValue:StringEquals", "aws:TagKeys", ["p:m"], {"aws:TagKeys": ["x"]}, False),
    ("ForAnyValue:StringEquals", "aws:TagKeys", ["p:m"], {}, False),
    ("ForAnyValue:StringLike", "aws:TagKeys", ["p*"], {"aws:TagKeys": ["q", "pz"]}, True),
    # Negated inside a set operator: each (any) value matches none of the policy values.
    ("ForAllValues:StringNotLike", "aws:TagKeys", ["p*"], {"aws:TagKeys": ["a", "b"]}, True),
    ("ForAllValues:StringNotLike", "aws:TagKeys", ["p*"], {"aws:TagKeys": ["a", "p1"]}, False),
    ("ForAnyValue:StringNotLike", "aws:TagKeys", ["p*"], {"aws:TagKeys": ["a", "p1"]}, True),
    ("ForAnyValue:StringNotLike", "aws:TagKeys", ["p*"], {}, False),
])
def test_condition_operators(op, key, values, ctx, expected):
    assert condition_holds(op, key, values, ctx) is expected


def test_unmodelled_operators_and_forms_are_refused():
    with pytest.raises(ValueError):
        condition_holds("NumericLessThan", "k", ["1"], {"k": "0"})
    with pytest.raises(ValueError):
        condition_holds("StringLike", "aws:TagKeys", ["p*"], {"aws:TagKeys": ["p"]})  # needs a set op
    with pytest.raises(ValueError):
        evaluate(request("s:A", "*", ROLE), [{"Version": "2008-10-17", "Statement": []}])


@pytest.mark.parametrize("pattern,arn,expected", [
    ("*", "arn:aws:rds:r:1:db:x", True),
    ("arn:aws:rds:r:1:db:*", "arn:aws:rds:r:1:db:orders", True),
    ("arn:aws:rds:r:1:db:*-aurora-*-w", "arn:aws:rds:r:1:db:orders-aurora-abc-1-w", True),
    ("arn:aws:rds:r:1:db:*-aurora-*-w", "arn:aws:rds:r:1:db:orders", False),
    ("arn:aws:rds:r:1:db:*-aurora-*-w", "arn:aws:rds:r:1:db:orders-aurora-abc-1", False),
    ("arn:aws:rds:r:1:cluster:*-aurora-*", "arn:aws:rds:r:1:db:x-aurora-y", False),
    ("arn:aws:rds:r:1:*", "arn:aws:rds:r:2:db:x", False),  # the account segment must match
    ("arn:aws:rds:*:1:db:x", "arn:aws:rds:eu-west-1:1:db:x", True),
    ("arn:aws:rds:r:1:db:x", "not-an-arn", False),
])
def test_arn_matching(pattern, arn, expected):
    assert arn_like(pattern, arn) is expected


def test_deny_beats_allow_and_nothing_is_implicit_deny():
    allow = {"Effect": "Allow", "Action": "rds:*", "Resource": "*"}
    deny = {"Effect": "Deny", "Action": "rds:DeleteDBSnapshot", "Resource": "*"}
    assert evaluate(request("rds:DeleteDBSnapshot", "arn:aws:rds:r:1:snapshot:s", ROLE), [pol(allow, deny)]) == DENY
    assert evaluate(request("rds:ModifyDBInstance", "arn:aws:rds:r:1:db:x", ROLE), [pol(allow, deny)]) == ALLOW
    assert evaluate(request("sqs:SendMessage", "arn:aws:sqs:r:1:q", ROLE), [pol(allow, deny)]) == IMPLICIT_DENY
    # A Deny in one policy wins over an Allow in another.
    assert evaluate(request("rds:DeleteDBSnapshot", "arn:aws:rds:r:1:snapshot:s", ROLE),
                    [pol(allow), pol(deny)]) == DENY


def test_actions_are_case_insensitive_and_wildcarded():
    p = pol({"Effect": "Allow", "Action": "rds:Describe*", "Resource": "*"})
    assert evaluate(request("RDS:describedbinstances", "*", ROLE), [p]) == ALLOW
    assert evaluate(request("rds:DeleteDBInstance", "*", ROLE), [p]) == IMPLICIT_DENY


def test_not_resource_and_not_action():
    deny = {"Effect": "Deny", "Action": "rds:AddTagsToResource",
            "NotResource": ["arn:aws:rds:r:1:db:*-w"]}
    allow = {"Effect": "Allow", "NotAction": "iam:*", "Resource": "*"}
    p = pol(allow, deny)
    assert evaluate(request("rds:AddTagsToResource", "arn:aws:rds:r:1:db:orders", ROLE), [p]) == DENY
    assert evaluate(request("rds:AddTagsToResource", "arn:aws:rds:r:1:db:a-w", ROLE), [p]) == ALLOW
    assert evaluate(request("iam:PassRole", "*", ROLE), [p]) == IMPLICIT_DENY


def test_statement_conditions_are_anded_across_keys_and_operators():
    p = pol({"Effect": "Allow", "Action": "rds:AddTagsToResource", "Resource": "*",
             "Condition": {"StringEquals": {"aws:ResourceTag/p": "start"},
                           "ForAllValues:StringEquals": {"aws:TagKeys": ["p:phase"]}}})
    ok = request("rds:AddTagsToResource", "arn:aws:rds:r:1:db:x", ROLE,
                 resource_tags={"p": "start"}, request_tags={"p:phase": "x"})
    assert evaluate(ok, [p]) == ALLOW
    bad_key = request("rds:AddTagsToResource", "arn:aws:rds:r:1:db:x", ROLE,
                      resource_tags={"p": "start"}, request_tags={"owner": "x"})
    assert evaluate(bad_key, [p]) == IMPLICIT_DENY
    no_tag = request("rds:AddTagsToResource", "arn:aws:rds:r:1:db:x", ROLE, request_tags={"p:phase": "x"})
    assert evaluate(no_tag, [p]) == IMPLICIT_DENY


def test_resource_policy_principals_and_accounts():
    q = "arn:aws:sqs:r:111111111111:q"
    rp = pol({"Effect": "Allow", "Principal": {"Service": "events.amazonaws.com"},
              "Action": "sqs:SendMessage", "Resource": q},
             {"Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::222222222222:root"},
              "Action": "sqs:SendMessage", "Resource": q})
    anything = pol({"Effect": "Allow", "Action": "*", "Resource": "*"})
    # A service is allowed by the resource policy alone.
    assert evaluate(request("sqs:SendMessage", q, "events.amazonaws.com"), resource_policy=rp,
                    resource_account="111111111111") == ALLOW
    assert evaluate(request("sqs:SendMessage", q, "sns.amazonaws.com"), resource_policy=rp,
                    resource_account="111111111111") == IMPLICIT_DENY
    # Across accounts both sides must allow.
    assert evaluate(request("sqs:SendMessage", q, OTHER), [anything], rp, "111111111111") == ALLOW
    assert evaluate(request("sqs:SendMessage", q, OTHER), [], rp, "111111111111") == IMPLICIT_DENY
    third = "arn:aws:iam::333333333333:role/y"
    assert evaluate(request("sqs:SendMessage", q, third), [anything], rp, "111111111111") == IMPLICIT_DENY
    # In the same account either side suffices.
    assert evaluate(request("sqs:SendMessage", q, ROLE), [anything], None, "111111111111") == ALLOW


def test_request_builds_the_documented_context_keys():
    r = request("rds:AddTagsToResource", "arn:aws:rds:r:1:db:x", ROLE,
                resource_tags={"p": "start"}, request_tags={"p:phase": "a"})
    assert r.context == {"aws:ResourceTag/p": "start", "aws:RequestTag/p:phase": "a",
                         "aws:TagKeys": ["p:phase"], "aws:PrincipalArn": ROLE,
                         "aws:PrincipalAccount": "111111111111"}
    s = request("sqs:SendMessage", "arn:aws:sqs:r:1:q", "events.amazonaws.com",
                context={"aws:SourceArn": "arn:aws:events:r:1:rule/a"})
    assert "aws:PrincipalArn" not in s.context and s.context["aws:SourceArn"].endswith("rule/a")
