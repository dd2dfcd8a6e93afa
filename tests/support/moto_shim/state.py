"""The shim's own mutable state, shared by the WSGI middleware and the moto patches.

Werkzeug serves each request on its own thread, so everything goes through LOCK.
"""

import threading

LOCK = threading.RLock()

DEFAULT_CONFIG = {
    # reads of DescribeDBInstances that show new VPC security groups as "adding"
    # (and dropped ones as "removing") after ModifyDBInstance changes them
    "sg_adding_reads": 0,
    # reads that show "rebooting" after RebootDBInstance (0 = moto's "available")
    "reboot_rebooting_reads": 0,
    # seconds a target registered with an RDS Proxy shows TargetHealth.State REGISTERING before
    # AVAILABLE (rds_proxy.py; counted from its registration, or from when a tracked cluster's
    # new member was first described)
    "proxy_target_registering_s": 0.5,
    # seconds CloudWatch values are kept, counted back from now by their timestamps
    # (cloudwatch_store.py)
    "cloudwatch_retention_s": 3600,
    # Max values reported by DescribeAccountAttributes
    "quotas": {
        "DBClusters": 40,
        "DBInstances": 40,
        "DBClusterParameterGroups": 50,
        "DBParameterGroups": 50,
        "ManualSnapshots": 100,
    },
}


class ShimState:
    def __init__(self):
        self.reset()

    def reset(self):
        with LOCK:
            self.config = {k: (dict(v) if isinstance(v, dict) else v) for k, v in DEFAULT_CONFIG.items()}
            # (kind, id) -> {"status": str, "reads": int}
            self.status_scripts = {}
            # instance id -> {"old": [sg], "new": [sg], "reads": int}
            self.sg_transitions = {}
            # list of fault rules (dicts, see app.add_faults)
            self.faults = []
            # call log
            self.calls = []
            self.seq = 0
            # ResourcePendingMaintenanceActions dicts returned by DescribePendingMaintenanceActions
            self.pending_maintenance = []
            # Route 53 (route53.py): rules giving new changes their PENDING time, and every change
            # accepted, by id
            self.route53_rules = []
            self.route53_changes = {}
            # RDS Proxy (rds_proxy.py): rules overriding proxy targets' TargetHealth
            self.proxy_health = []

    # -- scripted statuses -------------------------------------------------
    def take_status(self, kind, ident, count=True):
        """Status to show for (kind, ident), or None; count=True uses up one read."""
        with LOCK:
            script = self.status_scripts.get((kind, ident))
            if not script:
                return None
            if count:
                script["reads"] -= 1
                if script["reads"] <= 0:
                    del self.status_scripts[(kind, ident)]
            return script["status"]

    def take_sg_transition(self, ident, count=True):
        """(old, new) security groups still in transition for this instance, or None."""
        with LOCK:
            t = self.sg_transitions.get(ident)
            if not t:
                return None
            if count:
                t["reads"] -= 1
                if t["reads"] <= 0:
                    del self.sg_transitions[ident]
            return t["old"], t["new"]


STATE = ShimState()
