"""A small IAM policy evaluator for the infra tests, limited to what the template uses.

No package on PyPI evaluates IAM policies offline in a way this project can rely on (the
maintained ones lint or generate policies: parliament, policy_sentry, policyuniverse,
cloudsplaining), so this one implements the documented rules for the subset the template's
policies use, and refuses (ValueError) anything outside it, so a policy cannot lean on an
operator or element these tests never model:

- Effect Allow/Deny; Action/NotAction (case-insensitive, * and ? wildcards); Resource/
  NotResource (ARNs compared segment by segment, * and ? within a segment, the last segment
  being the rest of the ARN); Principal/NotPrincipal for resource policies ("*", AWS account
  ids, account roots, role ARNs, Service names).
- Condition operators StringEquals, StringNotEquals, StringEqualsIgnoreCase, StringLike,
  StringNotLike, ArnEquals, ArnLike, ArnNotEquals, ArnNotLike, Bool and Null, the set
  prefixes ForAllValues:/ForAnyValue: and the IfExists suffix.
- Evaluation: an explicit Deny in any applicable policy wins; otherwise an Allow from an
  identity policy of the principal, or from the resource policy for that principal, allows
  (same account); across accounts both the identity and the resource policy must allow;
  otherwise the request is implicitly denied.

Missing keys (the IAM documentation, "Condition operators"): a condition on a key absent from
the request is false, except for the negated operators (StringNotEquals, StringNotLike,
ArnNotEquals, ArnNotLike), which are true; Null tests presence; ...IfExists is true when the
key is absent; ForAllValues is true on an absent or empty key, ForAnyValue is false.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

ALLOW, DENY, IMPLICIT_DENY = "Allow", "Deny", "ImplicitDeny"

# Keys whose value is a set in the request context.
MULTIVALUED = {
    "aws:TagKeys",
    "route53:ChangeResourceRecordSetsActions",
    "route53:ChangeResourceRecordSetsRecordTypes",
    "route53:ChangeResourceRecordSetsNormalizedRecordNames",
}


def _glob(pattern: str, value: str, ignore_case: bool = False) -> bool:
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    flags = re.IGNORECASE | re.DOTALL if ignore_case else re.DOTALL
    return re.fullmatch(regex, value, flags) is not None


def _arn_parts(arn: str):
    parts = arn.split(":", 5)
    return parts if len(parts) == 6 and parts[0] == "arn" else None


def arn_like(pattern: str, arn: str) -> bool:
    """ArnLike/ArnEquals and Resource matching: segment by segment, wildcards within one."""
    if pattern == "*":
        return True
    p, a = _arn_parts(pattern), _arn_parts(arn)
    if p is None or a is None:
        return False
    return all(_glob(ps, av) for ps, av in zip(p, a))


def action_matches(pattern: str, action: str) -> bool:
    return _glob(pattern, action, ignore_case=True)


def _as_list(v):
    return v if isinstance(v, list) else [v]


@dataclass
class Request:
    action: str
    resource: str
    # The caller: an IAM role ARN (the aws:PrincipalArn of its sessions), or a service name.
    principal: str
    context: dict = field(default_factory=dict)

    @property
    def principal_is_service(self) -> bool:
        return self.principal.endswith(".amazonaws.com")

    @property
    def principal_account(self) -> str | None:
        parts = _arn_parts(self.principal)
        return parts[4] if parts else None


def request(action, resource, principal, *, resource_tags=None, request_tags=None,
            tag_keys=None, context=None) -> Request:
    """A request with its context keys built the way the services build them: each resource
    tag as aws:ResourceTag/<key>, each request tag as aws:RequestTag/<key>, the request's tag
    keys as aws:TagKeys, and aws:PrincipalArn/aws:PrincipalAccount for IAM principals."""
    ctx = {}
    for k, v in (resource_tags or {}).items():
        ctx[f"aws:ResourceTag/{k}"] = v
    for k, v in (request_tags or {}).items():
        ctx[f"aws:RequestTag/{k}"] = v
    keys = list(request_tags or {}) if tag_keys is None else list(tag_keys)
    if keys:
        ctx["aws:TagKeys"] = keys
    req = Request(action, resource, principal, ctx)
    if not req.principal_is_service:
        ctx["aws:PrincipalArn"] = principal
        ctx["aws:PrincipalAccount"] = req.principal_account
    ctx.update(context or {})
    return req


# ---------------------------------------------------------------- conditions
_NEGATED = {"StringNotEquals", "StringNotLike", "ArnNotEquals", "ArnNotLike"}


def _match_one(op: str, policy_value: str, value) -> bool:
    """The positive form of op on one policy value and one request value."""
    value = str(value)
    if op in ("StringEquals", "StringNotEquals"):
        return value == policy_value
    if op == "StringEqualsIgnoreCase":
        return value.casefold() == policy_value.casefold()
    if op in ("StringLike", "StringNotLike"):
        return _glob(policy_value, value)
    if op in ("ArnEquals", "ArnLike", "ArnNotEquals", "ArnNotLike"):
        return arn_like(policy_value, value)
    if op == "Bool":
        return value.lower() == policy_value.lower()
    raise ValueError(f"condition operator not modelled: {op}")


def _matches_any(op, policy_values, value) -> bool:
    return any(_match_one(op, str(pv), value) for pv in policy_values)


def condition_holds(full_op: str, key: str, policy_values, ctx: dict) -> bool:
    policy_values = _as_list(policy_values)
    present = key in ctx and ctx[key] is not None
    if full_op == "Null":
        (want,) = policy_values
        return (not present) == (str(want).lower() == "true")
    set_op = None
    op = full_op
    if ":" in op:
        set_op, op = op.split(":", 1)
        if set_op not in ("ForAllValues", "ForAnyValue"):
            raise ValueError(f"set operator not modelled: {set_op}")
    if_exists = op.endswith("IfExists")
    if if_exists:
        op = op[: -len("IfExists")]
    negated = op in _NEGATED

    if set_op is not None:
        values = _as_list(ctx[key]) if present else []
        if set_op == "ForAllValues":
            # Every request value passes (vacuously true when there are none).
            return all(_matches_any(op, policy_values, v) != negated for v in values)
        return any(_matches_any(op, policy_values, v) != negated for v in values)

    if key in MULTIVALUED:
        raise ValueError(f"{key} is multivalued: use ForAllValues/ForAnyValue with {full_op}")
    if not present:
        return if_exists or negated
    matched = _matches_any(op, policy_values, ctx[key])
    return not matched if negated else matched


def conditions_hold(block: dict | None, ctx: dict) -> bool:
    for op, pairs in (block or {}).items():
        for key, values in pairs.items():
            if not condition_holds(op, key, values, ctx):
                return False
    return True


# ---------------------------------------------------------------- statements
_KNOWN = {"Sid", "Effect", "Action", "NotAction", "Resource", "NotResource", "Condition",
          "Principal", "NotPrincipal"}


def _principal_matches(spec, req: Request) -> bool:
    if spec == "*":
        return True
    if not isinstance(spec, dict):
        raise ValueError(f"principal form not modelled: {spec}")
    for kind, values in spec.items():
        for v in _as_list(values):
            if kind == "Service" and req.principal == v:
                return True
            if kind == "AWS" and not req.principal_is_service:
                if v == "*" or v == req.principal:
                    return True
                if re.fullmatch(r"\d{12}", v) and v == req.principal_account:
                    return True
                parts = _arn_parts(v)
                if parts and parts[2] == "iam" and parts[5] == "root" and parts[4] == req.principal_account:
                    return True
            if kind not in ("Service", "AWS"):
                raise ValueError(f"principal kind not modelled: {kind}")
    return False


def _element_matches(stmt: dict, name: str, matches, value: str) -> bool:
    """`name` (Action, Resource) or its `Not` form, exactly one of them: true when `value`
    matches one of the element's patterns, or, for the `Not` form, none of them."""
    negated = "Not" + name
    if (name in stmt) == (negated in stmt):
        raise ValueError(f"exactly one of {name} and {negated}")
    if name in stmt:
        return any(matches(p, value) for p in _as_list(stmt[name]))
    return not any(matches(p, value) for p in _as_list(stmt[negated]))


def statement_applies(stmt: dict, req: Request, *, resource_policy: bool = False) -> bool:
    unknown = set(stmt) - _KNOWN
    if unknown:
        raise ValueError(f"statement element not modelled: {unknown}")
    if stmt["Effect"] not in (ALLOW, DENY):
        raise ValueError(stmt["Effect"])
    if resource_policy:
        if "Principal" in stmt:
            if not _principal_matches(stmt["Principal"], req):
                return False
        elif "NotPrincipal" in stmt:
            if _principal_matches(stmt["NotPrincipal"], req):
                return False
        else:
            raise ValueError("a resource policy statement needs Principal or NotPrincipal")
    elif "Principal" in stmt or "NotPrincipal" in stmt:
        raise ValueError("an identity policy statement has no Principal")

    if not _element_matches(stmt, "Action", action_matches, req.action):
        return False
    if not _element_matches(stmt, "Resource", arn_like, req.resource):
        return False

    return conditions_hold(stmt.get("Condition"), req.context)


def _statements(policy: dict):
    if policy.get("Version") != "2012-10-17":
        raise ValueError("policy Version must be 2012-10-17 (policy variables and the rules above)")
    return _as_list(policy["Statement"])


def matching(policies, req: Request, *, resource_policy=False):
    """(effect, sid) of every statement of these policies that applies to the request."""
    return [(s["Effect"], s.get("Sid")) for p in policies for s in _statements(p)
            if statement_applies(s, req, resource_policy=resource_policy)]


def evaluate(req: Request, identity_policies=(), resource_policy: dict | None = None,
             resource_account: str | None = None) -> str:
    """ALLOW, DENY (an explicit Deny applied) or IMPLICIT_DENY.

    identity_policies are the principal's own policies (none for a service principal);
    resource_policy is the policy on the resource (a queue policy), if any; resource_account
    is the account that owns the resource, for the cross-account rule."""
    ident = matching(identity_policies, req)
    res = matching([resource_policy], req, resource_policy=True) if resource_policy else []
    if any(effect == DENY for effect, _ in ident + res):
        return DENY
    ident_allows = any(effect == ALLOW for effect, _ in ident)
    res_allows = any(effect == ALLOW for effect, _ in res)
    if req.principal_is_service:
        return ALLOW if res_allows else IMPLICIT_DENY
    same_account = resource_account is None or resource_account == req.principal_account
    if same_account:
        return ALLOW if (ident_allows or res_allows) else IMPLICIT_DENY
    return ALLOW if (ident_allows and res_allows) else IMPLICIT_DENY
