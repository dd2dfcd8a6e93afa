"""Shared helpers for the infra tests: load the template with CloudFormation's short tags,
resolve the few intrinsic functions the rule patterns use, match EventBridge patterns, and
render the template for the sample deployment (Deployment: the policies as IAM reads them;
with_policy_strings_rendered: a copy checkov can read)."""

from __future__ import annotations

import copy
import hashlib
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


# ---------------------------------------------------------------- a rendered deployment
# Values the template's resources resolve to in the sample deployment, for the tests that
# read the policies as IAM would (test_iam_policy.py) and for checkov (test_lint.py).

_ARN_OF = {
    "AWS::SQS::Queue": "arn:{p}:sqs:{r}:{a}:{name}",
    "AWS::Events::Rule": "arn:{p}:events:{r}:{a}:rule/{name}",
    "AWS::SNS::Topic": "arn:{p}:sns:{r}:{a}:{name}",
    "AWS::DynamoDB::Table": "arn:{p}:dynamodb:{r}:{a}:table/{name}",
    "AWS::KMS::Key": "arn:{p}:kms:{r}:{a}:key/{name}",
    "AWS::IAM::Role": "arn:{p}:iam::{a}:role/{name}",
    "AWS::IAM::ManagedPolicy": "arn:{p}:iam::{a}:policy/{name}",
    "AWS::S3::Bucket": "arn:{p}:s3:::{name}",
    "AWS::Logs::LogGroup": "arn:{p}:logs:{r}:{a}:log-group:{name}:*",
}


class Deployment:
    """The template as CloudFormation would deploy it with these parameters (defaults for the
    rest) in the sample account and Region: Ref, Fn::Sub, Fn::GetAtt (Arn and Name),
    Fn::If and the conditions, AWS::NoValue."""

    def __init__(self, template: dict | None = None, parameters: dict | None = None):
        self.template = template if template is not None else load_template()
        self.names = _names(self.template, parameters)
        for key in self.template.get("Parameters", {}):
            self.names.setdefault(key, f"sample-{key}")
        for key in parameters or {}:
            self.names[key] = str(parameters[key])
        ctx = {"p": self.names["AWS::Partition"], "r": self.names["AWS::Region"],
               "a": self.names["AWS::AccountId"]}
        self.attrs: dict = {}
        for key, res in self.template["Resources"].items():
            kind = res["Type"]
            name = self.names.get(key) or f"{self.names['AWS::StackName']}-{key}-SAMPLE"
            if kind in _ARN_OF:
                arn = _ARN_OF[kind].format(name=name, **ctx)
                self.attrs[f"{key}.Arn"] = arn
                self.attrs[f"{key}.Name"] = name
                self.attrs[f"{key}.QueueName"] = name
                # Ref: a queue's URL, a topic's or managed policy's ARN, a name otherwise.
                if kind == "AWS::SQS::Queue":
                    self.names.setdefault(key, f"https://sqs.{ctx['r']}.amazonaws.com/{ctx['a']}/{name}")
                elif kind in ("AWS::SNS::Topic", "AWS::IAM::ManagedPolicy"):
                    self.names.setdefault(key, arn)
                else:
                    self.names.setdefault(key, name)
            elif kind == "AWS::EC2::SecurityGroup":
                # Ref and GroupId: the group's id (a group in a VPC).
                group_id = "sg-" + hashlib.sha256(key.encode()).hexdigest()[:17]
                self.attrs[f"{key}.GroupId"] = group_id
                self.names.setdefault(key, group_id)
            else:
                self.names.setdefault(key, name)
        self.conditions = {k: self._condition(v) for k, v in self.template.get("Conditions", {}).items()}

    def _condition(self, node):
        if isinstance(node, dict):
            (fn, arg), = node.items()
            if fn == "Fn::Equals":
                a, b = (self.render(x) for x in arg)
                return a == b
            if fn == "Fn::Not":
                return not self._condition(arg[0])
            if fn == "Fn::And":
                return all(self._condition(x) for x in arg)
            if fn == "Fn::Or":
                return any(self._condition(x) for x in arg)
            if fn == "Condition":
                return self._condition(self.template["Conditions"][arg])
        raise ValueError(f"condition not modelled: {node}")

    def _sub(self, text: str, extra: dict | None = None) -> str:
        def one(m):
            key = m.group(1)
            if extra and key in extra:
                return str(extra[key])
            if key in self.attrs:
                return self.attrs[key]
            return str(self.names[key])
        return re.sub(r"\$\{([^}!]+)\}", one, text)

    _NO_VALUE = object()

    def render(self, node):
        out = self._render(node)
        return None if out is self._NO_VALUE else out

    def _render(self, node):
        if isinstance(node, list):
            items = [self._render(n) for n in node]
            return [i for i in items if i is not self._NO_VALUE]
        if isinstance(node, dict):
            if set(node) == {"Ref"}:
                if node["Ref"] == "AWS::NoValue":
                    return self._NO_VALUE
                return self.names[node["Ref"]]
            if set(node) == {"Fn::Sub"}:
                arg = node["Fn::Sub"]
                if isinstance(arg, list):
                    text, extra = arg
                    return self._sub(text, {k: self._render(v) for k, v in extra.items()})
                return self._sub(arg)
            if set(node) == {"Fn::GetAtt"}:
                logical, attr = node["Fn::GetAtt"]
                return self.attrs[f"{logical}.{attr}"]
            if set(node) == {"Fn::If"}:
                cond, yes, no = node["Fn::If"]
                return self._render(yes if self.conditions[cond] else no)
            if set(node) == {"Fn::Join"}:
                sep, parts = node["Fn::Join"]
                return sep.join(self._render(parts))
            if set(node) == {"Fn::FindInMap"}:
                mapping, top, second = (self._render(x) for x in node["Fn::FindInMap"])
                return self.template["Mappings"][mapping][top][second]
            if any(k.startswith("Fn::") for k in node):
                raise ValueError(f"intrinsic not modelled: {node}")
            out = {}
            for k, v in node.items():
                r = self._render(v)
                if r is not self._NO_VALUE:
                    out[k] = r
            return out
        return node

    def resource(self, logical_id: str) -> dict:
        """A resource's properties as deployed (the resource must exist under the conditions)."""
        res = self.template["Resources"][logical_id]
        if "Condition" in res:
            assert self.conditions[res["Condition"]], f"{logical_id} is not deployed here"
        return self.render(res.get("Properties", {}))

    def policy_document(self, logical_id: str, index: int = 0) -> dict:
        """The PolicyDocument of an IAM policy, managed policy or queue policy (a JSON string
        under Fn::Sub parsed the way IAM parses it), or of a role's index-th inline policy."""
        props = self.resource(logical_id)
        doc = props["Policies"][index]["PolicyDocument"] if "Policies" in props else props["PolicyDocument"]
        return json.loads(doc) if isinstance(doc, str) else doc

    def deployed(self, logical_id: str) -> bool:
        """Whether the resource exists under these parameters (its Condition, if any)."""
        cond = self.template["Resources"][logical_id].get("Condition")
        return cond is None or self.conditions[cond]

    def role_policies(self, role_logical_id: str) -> list[dict]:
        """Every inline and stack-defined policy document attached to a role, as deployed
        (a policy whose Condition is false under these parameters is not there)."""
        docs = []
        role = self.resource(role_logical_id)
        docs += [p["PolicyDocument"] for p in role.get("Policies", [])]
        for key, res in self.template["Resources"].items():
            if (res["Type"] == "AWS::IAM::Policy" and {"Ref": role_logical_id} in res["Properties"]["Roles"]
                    and self.deployed(key)):
                docs.append(self.policy_document(key))
        return docs


def with_policy_strings_rendered(template: dict | None = None) -> dict:
    """A copy of the template in which every PolicyDocument written as a JSON string under
    Fn::Sub is a real document: the default TagPrefix and the sample account, Region and
    partition filled in. Everything else is left as written, so the copy is still a template
    (for checkov, which skips a policy it cannot read)."""
    template = copy.deepcopy(template if template is not None else load_template())
    dep = Deployment(template)
    count = 0
    for res in template["Resources"].values():
        props = res.get("Properties", {})
        doc = props.get("PolicyDocument")
        if isinstance(doc, dict) and set(doc) == {"Fn::Sub"} and isinstance(doc["Fn::Sub"], str):
            props["PolicyDocument"] = json.loads(dep._sub(doc["Fn::Sub"]))
            count += 1
    assert count > 0, "no policy string to render"
    return template
