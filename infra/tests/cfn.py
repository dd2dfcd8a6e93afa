"""Shared helpers for the infra tests: load the template with CloudFormation's short tags,
resolve the few intrinsic functions the rule patterns use, and match EventBridge patterns."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "infra" / "template.yaml"
EVENTS = ROOT / "events"

# The deployment the files under events/ are written for (see events/README.md).
SAMPLE_CONTEXT = {
    "AWS::AccountId": "123456789012",
    "AWS::Region": "us-east-1",
    "AWS::Partition": "aws",
    "AWS::StackName": "aurora-migrator",
    "AWS::URLSuffix": "amazonaws.com",
}


class _CfnLoader(yaml.SafeLoader):
    """SafeLoader that turns !Ref, !Sub, !GetAtt ... into their long JSON forms."""


def _construct(tag: str):
    name = "Ref" if tag == "Ref" else f"Fn::{tag}"

    def build(loader: yaml.Loader, node: yaml.Node):
        if isinstance(node, yaml.ScalarNode):
            value = loader.construct_scalar(node)
            if tag == "GetAtt":
                value = value.split(".", 1)
        elif isinstance(node, yaml.SequenceNode):
            value = loader.construct_sequence(node, deep=True)
        else:
            value = loader.construct_mapping(node, deep=True)
        return {name: value}

    return build


for _tag in ("Ref", "Sub", "GetAtt", "If", "Not", "Equals", "And", "Or", "Join", "Select",
             "Split", "FindInMap", "ImportValue", "Base64", "Cidr", "GetAZs", "Condition"):
    _CfnLoader.add_constructor(f"!{_tag}", _construct(_tag))


def load_template(path: Path = TEMPLATE) -> dict:
    with open(path) as f:
        return yaml.load(f, Loader=_CfnLoader)


def _names(template: dict, overrides: dict | None = None) -> dict:
    """Values that Ref and ${...} resolve to in the sample deployment."""
    names = dict(SAMPLE_CONTEXT)
    for key, spec in template.get("Parameters", {}).items():
        if "Default" in spec:
            names[key] = str(spec["Default"])
    names.update(overrides or {})
    # A role with a fixed RoleName is referred to by that name.
    for key, res in template["Resources"].items():
        role_name = res.get("Properties", {}).get("RoleName")
        if res["Type"] == "AWS::IAM::Role" and role_name is not None:
            names[key] = resolve(role_name, names)
    return names


def resolve(node, names: dict):
    """Resolve Ref and Fn::Sub (the only intrinsics the rule patterns may use)."""
    if isinstance(node, list):
        return [resolve(n, names) for n in node]
    if isinstance(node, dict):
        if set(node) == {"Ref"}:
            return names[node["Ref"]]
        if set(node) == {"Fn::Sub"}:
            text = node["Fn::Sub"]
            assert isinstance(text, str), "only the one-argument Fn::Sub is resolved here"
            return re.sub(r"\$\{([^}!]+)\}", lambda m: names[m.group(1)], text)
        if any(k.startswith("Fn::") for k in node):
            raise ValueError(f"unresolvable intrinsic in a pattern: {node}")
        return {k: resolve(v, names) for k, v in node.items()}
    return node


def rules(template: dict) -> dict:
    """rule file name (from Metadata.PatternFile) -> resolved rule properties."""
    names = _names(template)
    out = {}
    for key, res in template["Resources"].items():
        if res["Type"] != "AWS::Events::Rule":
            continue
        pattern_file = res.get("Metadata", {}).get("PatternFile")
        assert pattern_file, f"rule {key} has no Metadata.PatternFile"
        rule = Path(pattern_file).stem
        props = res["Properties"]
        out[rule] = {
            "logical_id": key,
            "pattern": resolve(props["EventPattern"], names) if "EventPattern" in props else None,
            "schedule": props.get("ScheduleExpression"),
        }
    return out


def pattern_files() -> dict:
    return {p.stem: json.loads(p.read_text()) for p in sorted((EVENTS / "patterns").glob("*.json"))}


# ---------------------------------------------------------------- EventBridge matching
# The operator subset the Rust matcher implements; anything else is an error here too, so
# a pattern cannot rely on an operator the agent's own tests never exercise.

_MISSING = object()


def _leaves(event, path=()):
    """Flatten an event to (path, value) pairs; arrays contribute each element at the
    array's own path, as EventBridge does."""
    if isinstance(event, dict):
        for k, v in event.items():
            yield from _leaves(v, path + (k,))
    elif isinstance(event, list):
        for v in event:
            yield from _leaves(v, path)
    else:
        yield path, event


def _pattern_leaves(pattern, path=()):
    for k, v in pattern.items():
        if isinstance(v, dict):
            yield from _pattern_leaves(v, path + (k,))
        elif isinstance(v, list):
            yield path + (k,), v
        else:
            raise ValueError(f"pattern value at {'.'.join(path + (k,))} must be a list or object")


def _value_matches(value, cond) -> bool:
    if not isinstance(cond, dict):
        return value is not _MISSING and value == cond and type(value) is type(cond)
    if len(cond) != 1:
        raise ValueError(f"one operator per condition: {cond}")
    (op, arg), = cond.items()
    if op == "exists":
        return (value is not _MISSING) == arg
    if value is _MISSING:
        return False
    if op == "prefix":
        return isinstance(value, str) and value.startswith(arg)
    if op == "equals-ignore-case":
        return isinstance(value, str) and value.casefold() == arg.casefold()
    if op == "anything-but":
        if isinstance(arg, dict):
            (sub, sarg), = arg.items()
            if sub != "prefix":
                raise ValueError(f"unsupported anything-but form: {arg}")
            return isinstance(value, str) and not value.startswith(sarg)
        values = arg if isinstance(arg, list) else [arg]
        if not all(isinstance(v, str) for v in values):
            raise ValueError("anything-but takes strings only here")
        return isinstance(value, str) and value not in values
    raise ValueError(f"operator not supported by the agent's matcher: {op}")


def matches(pattern: dict, event: dict) -> bool:
    by_path: dict[tuple, list] = {}
    for path, value in _leaves(event):
        by_path.setdefault(path, []).append(value)
    for path, conds in _pattern_leaves(pattern):
        values = by_path.get(path, [_MISSING])
        if not any(_value_matches(v, c) for v in values for c in conds):
            return False
    return True
