"""In-process patches of moto 5.2.5's Route 53 responses: changes that take time to propagate.

moto applies ChangeResourceRecordSets at once and answers every change with the same fixed
ChangeInfo (`/change/C2682N5HXP0BZ4`, `INSYNC`); its GetChange answers `INSYNC` for any id, even
one it never issued. AWS answers a change `PENDING` with an id of its own, and GetChange reports
`INSYNC` once the change has reached every Route 53 DNS server (NoSuchChange for an unknown id).

Here every accepted change gets its own id and is answered `PENDING`; GetChange reports it
`PENDING` until the time its rule gave it has passed (default 0: `INSYNC` at the first GetChange),
or forever. Rules come from `POST /_shim/route53-pending` (app.py), in the style of the fault
rules: `{"pending_seconds": 30}` (negative = forever), optional `count` (changes it applies to;
default: every change until DELETE), `zone` (hosted zone id) and `record` (a record name the
change touches). The record itself changes at once, as in moto: only the change's status waits.
"""

import datetime
import random
import string
import time

from moto.route53 import responses as r
from moto.route53.exceptions import Route53ClientError

from .state import LOCK, STATE


class NoSuchChange(Route53ClientError):
    def __init__(self, change_id):
        super().__init__("NoSuchChange", f"A change with the specified change ID does not exist: {change_id}")


def _bare(zone_or_change_id):
    """`/hostedzone/Z1` or `Z1` -> `Z1` (SDKs strip the prefix; moto may not)."""
    return (zone_or_change_id or "").rsplit("/", 1)[-1]


def _new_change_id():
    return "C" + "".join(random.choice(string.ascii_uppercase + string.digits) for _ in range(20))


def _take_rule(zone, names):
    """The pending_seconds for a new change in `zone` touching `names` (uses one use of the
    first matching rule with uses left), or 0."""
    for rule in STATE.route53_rules:
        if rule["remaining"] == 0:
            continue
        if rule.get("zone") and _bare(rule["zone"]) != zone:
            continue
        if rule.get("record") and rule["record"].rstrip(".").lower() not in names:
            continue
        rule["remaining"] -= 1  # negative counts never reach 0: until DELETE
        return float(rule["pending_seconds"])
    return 0.0


def status(change, now=None):
    """PENDING or INSYNC for a recorded change at `now` (epoch seconds)."""
    pending = change["pending_seconds"]
    if pending < 0:
        return "PENDING"
    return "INSYNC" if (now or time.time()) >= change["submitted"] + pending else "PENDING"


def _record(change):
    rrs = change.get("ResourceRecordSet") or {}
    values = [v.get("Value") for v in rrs.get("ResourceRecords") or []]
    alias = (rrs.get("AliasTarget") or {}).get("DNSName")
    return {"Action": change.get("Action"), "Name": rrs.get("Name"), "Type": rrs.get("Type"),
            "TTL": rrs.get("TTL"), "Values": values if not alias else [alias]}


_orig_change = r.Route53.change_resource_record_sets


def change_resource_record_sets(self):
    # read the batch first: moto rewrites its ResourceRecords in place while applying it
    changes = [_record(c) for c in self._get_param("ChangeBatch.Changes") or []]
    res = _orig_change(self)  # moto validates and applies the batch (errors raise before we record)
    zone = _bare(self._get_param("HostedZoneId"))
    names = {(c["Name"] or "").rstrip(".").lower() for c in changes}
    submitted = time.time()
    with LOCK:
        change = {"Id": _new_change_id(), "HostedZoneId": zone, "submitted": submitted,
                  "pending_seconds": _take_rule(zone, names), "Comment": self._get_param("ChangeBatch.Comment"),
                  "Changes": changes, "account": self.current_account}
        STATE.route53_changes[change["Id"]] = change
    res._result["ChangeInfo"] = _change_info(change, "PENDING")
    return res


def _change_info(change, state):
    info = {"Id": f"/change/{change['Id']}", "Status": state,
            "SubmittedAt": datetime.datetime.fromtimestamp(change["submitted"], datetime.timezone.utc)}
    if change.get("Comment"):
        info["Comment"] = change["Comment"]
    return info


_orig_get_change = r.Route53.get_change

# ids moto itself hands out (CreateHostedZone, DeleteHostedZone, VPC association): still INSYNC
_MOTO_FIXED_IDS = {"C1PA6795UKMFR9", "C2682N5HXP0BZ4", "a1b2c3d4"}


def get_change(self):
    change_id = _bare(self._get_param("Id"))
    with LOCK:
        change = STATE.route53_changes.get(change_id)
    if change is None:
        if change_id in _MOTO_FIXED_IDS:
            return _orig_get_change(self)
        raise NoSuchChange(change_id)
    return r.ActionResult({"ChangeInfo": _change_info(change, status(change))})


def listing():
    """The changes recorded so far, oldest first, with their status now (GET /_shim/route53-changes)."""
    now = time.time()
    with LOCK:
        out = []
        for c in STATE.route53_changes.values():
            view = {k: v for k, v in c.items() if k != "submitted"}
            view["SubmittedAt"] = datetime.datetime.fromtimestamp(c["submitted"], datetime.timezone.utc).isoformat()
            view["Status"] = status(c, now)
            out.append(view)
        return out


def install():
    r.Route53.change_resource_record_sets = change_resource_record_sets
    r.Route53.get_change = get_change
