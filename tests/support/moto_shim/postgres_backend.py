"""A real PostgreSQL behind one emulated RDS instance (opt-in: POST /_shim/postgres).

A test starts a PostgreSQL primary itself (TLS, roles, data) and registers it for an
instance moto already knows. From then on the RDS calls the agent makes on that instance
and on the Aurora replica cluster made of it act on real servers too:

| RDS call                                           | here                                         |
|----------------------------------------------------|----------------------------------------------|
| DescribeDBInstances (the instance)                 | `Endpoint` = the primary's host and port     |
| CreateDBCluster, ReplicationSourceIdentifier = it  | `pg_basebackup -R -C -S <slot>`: a standby   |
| CreateDBInstance of that cluster (the writer)      | `pg_ctl start` of the standby                |
| DescribeDBClusters / its writer's describe         | `Endpoint` = 127.0.0.1, `Port` = the standby's|
| PromoteReadReplicaDBCluster                        | `pg_ctl promote -w`                          |
| DeleteDBCluster                                    | `pg_ctl stop`, the slot dropped on the primary|
| ModifyDBInstance VpcSecurityGroupIds               | pg_hba.conf rewritten + `pg_reload_conf()`   |
| RebootDBInstance                                   | `pg_ctl restart -m fast`                     |

Security groups become pg_hba.conf: the groups the instance had when it was registered are
"open" (every role over TCP); any other set is a quarantine that rejects TCP clients except
the roles of the groups it admits (a group `G` of the registration's `roles` map, admitted
when an ingress rule of one of the new groups names `G` as its source and covers the port):
`hostssl all <role> <host>/32 scram-sha-256`. Unix-socket and replication connections are
always trusted (the agent's CloudWatch view and Aurora's storage-level stream, which security
groups do not cut). Sessions already open survive a reload, as they survive a group change.

Server commands run as the registration's `run_as` user (PostgreSQL refuses root). Nothing
here starts the primary or stops it for good: the test owns it, and the standbys' data
directories are under the test's `root`, so the test can stop them by PID if the shim dies.
"""

import os
import socket
import subprocess
import threading

from moto.ec2.models import ec2_backends
from moto.rds import models as m

from .state import LOCK

# instance id (lower case) -> Backend; cluster id (lower case) -> Standby
BACKENDS = {}
STANDBYS = {}


class BackendError(Exception):
    pass


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Standby:
    def __init__(self, backend, cluster, n):
        root = backend.root
        self.backend = backend
        self.cluster = cluster
        self.data = os.path.join(root, f"standby{n}")
        self.socket_dir = os.path.join(root, f"standby{n}-sock")
        self.log = os.path.join(root, f"standby{n}.log")
        self.port = _free_port()
        self.slot = f"aurora_{n}_" + "".join(c if c.isalnum() else "_" for c in cluster.lower())[:40]
        self.running = False
        self.promoted = False
        self.dropped = False

    def view(self):
        return {"cluster": self.cluster, "data": self.data, "socket_dir": self.socket_dir,
                "port": self.port, "slot": self.slot, "running": self.running,
                "promoted": self.promoted, "dropped": self.dropped}


class Backend:
    """One registered instance and the real servers behind it."""

    def __init__(self, spec):
        self.instance = spec["instance"]
        self.account = spec.get("account", "123456789012")
        self.region = spec.get("region", "us-east-1")
        self.host = spec.get("host", "127.0.0.1")
        self.port = int(spec["port"])
        self.data = spec["data"]
        self.socket_dir = spec["socket_dir"]
        self.bin_dir = spec["bin_dir"]
        self.root = spec["root"]
        self.superuser = spec.get("superuser", "postgres")
        run_as = spec.get("run_as")
        self.run_as = (int(run_as[0]), int(run_as[1])) if run_as else None
        self.roles = dict(spec.get("roles") or {})  # security group id -> database role
        for tool in ("pg_ctl", "pg_basebackup", "psql"):
            if not os.path.isfile(os.path.join(self.bin_dir, tool)):
                raise ValueError(f"{tool} not found in bin_dir {self.bin_dir}")
        db = m.rds_backends[self.account][self.region].databases.get(self.instance)
        if db is None:
            raise ValueError(f"no instance {self.instance} in {self.account}/{self.region}")
        self.open_groups = sorted(db.vpc_security_group_ids)
        self.hba = "open"  # or the list of admitted roles
        self.log = []  # what was done, in order, for the tests
        self.lock = threading.Lock()  # one server operation at a time
        self.n = 0

    def view(self):
        return {"instance": self.instance, "host": self.host, "port": self.port,
                "open_groups": self.open_groups, "hba": self.hba, "log": list(self.log),
                "standbys": [s.view() for s in STANDBYS.values() if s.backend is self]}

    # -- commands ---------------------------------------------------------------
    def _run(self, tool, *args, check=True):
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        kw = {}
        if self.run_as:
            kw = {"user": self.run_as[0], "group": self.run_as[1], "extra_groups": []}
        p = subprocess.run([os.path.join(self.bin_dir, tool), *args], cwd=self.root, env=env,
                           stdin=subprocess.DEVNULL, capture_output=True, text=True,
                           timeout=180, **kw)
        if check and p.returncode != 0:
            raise BackendError(f"{tool} {' '.join(args)} failed ({p.returncode}): {p.stdout}{p.stderr}")
        return p

    def _sql(self, sql, socket_dir=None, port=None):
        p = self._run("psql", "-h", socket_dir or self.socket_dir, "-p", str(port or self.port),
                      "-U", self.superuser, "-d", "postgres", "-X", "-At", "-v", "ON_ERROR_STOP=1",
                      "-c", sql)
        return p.stdout.strip()

    def _chown(self, path):
        if self.run_as:
            os.chown(path, *self.run_as)

    # -- RDS calls ----------------------------------------------------------------
    def create_standby(self, cluster):
        with self.lock:
            self.n += 1
            s = Standby(self, cluster, self.n)
            os.makedirs(s.socket_dir, mode=0o755, exist_ok=True)
            self._chown(s.socket_dir)
            self._run("pg_basebackup", "-D", s.data, "-h", self.host, "-p", str(self.port),
                      "-U", self.superuser, "-R", "-C", "-S", s.slot, "-X", "stream",
                      "-c", "fast", "--no-sync")
            conf = os.path.join(s.data, "postgresql.conf")
            with open(conf, "a") as f:
                f.write(f"\n# moto shim: the standby of {cluster}\nport = {s.port}\n"
                        f"unix_socket_directories = '{s.socket_dir}'\n")
            self._chown(conf)
            STANDBYS[cluster.lower()] = s
            self.log.append(f"basebackup {cluster} slot {s.slot}")
            return s

    def start_standby(self, s):
        with self.lock:
            if s.running:
                return
            self._run("pg_ctl", "start", "-D", s.data, "-l", s.log, "-w", "-t", "120")
            s.running = True
            self.log.append(f"start {s.cluster} port {s.port}")

    def promote(self, s):
        with self.lock:
            if not s.running:
                self._run("pg_ctl", "start", "-D", s.data, "-l", s.log, "-w", "-t", "120")
                s.running = True
            self._run("pg_ctl", "promote", "-D", s.data, "-w", "-t", "120")
            s.promoted = True
            self.log.append(f"promote {s.cluster}")

    def delete_standby(self, s, immediate=False):
        with self.lock:
            if s.running:
                self._run("pg_ctl", "stop", "-D", s.data, "-m", "immediate" if immediate else "fast",
                          "-w", "-t", "60", check=False)
                s.running = False
            # The walsender lets go of the slot a moment after the standby is gone.
            for _ in range(50):
                p = self._run("psql", "-h", self.socket_dir, "-p", str(self.port), "-U", self.superuser,
                              "-d", "postgres", "-X", "-At", "-c",
                              f"SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                              f"WHERE slot_name = '{s.slot}'", check=False)
                if p.returncode == 0:
                    s.dropped = True
                    break
                threading.Event().wait(0.1)
            STANDBYS.pop(s.cluster.lower(), None)
            self.log.append(f"delete {s.cluster}")

    def set_groups(self, groups):
        """pg_hba.conf for the instance's new security groups, then a reload."""
        with self.lock:
            if sorted(groups) == self.open_groups:
                mode = "open"
            else:
                mode = self._admitted(groups)
            lines = [
                "# moto shim: security groups as pg_hba.conf",
                "local all all trust",
                "local replication all trust",
                f"host replication all {self.host}/32 trust",
            ]
            if mode == "open":
                lines.append(f"host all all {self.host}/32 trust")
            else:
                lines += [f"hostssl all {role} {self.host}/32 scram-sha-256" for role in mode]
                lines.append(f"host all all {self.host}/32 reject")
            path = os.path.join(self.data, "pg_hba.conf")
            with open(path, "w") as f:
                f.write("\n".join(lines) + "\n")
            self._chown(path)
            self._sql("SELECT pg_reload_conf()")
            self.hba = mode
            self.log.append(f"hba {'open' if mode == 'open' else 'quarantined ' + ','.join(mode)}")

    def _admitted(self, groups):
        """The roles of the registered groups that one of `groups` admits on the port."""
        ec2 = ec2_backends[self.account][self.region]
        admitted = set()
        for gid in groups:
            group = ec2.get_security_group_from_id(gid)
            for rule in getattr(group, "ingress_rules", []):
                if rule.ip_protocol not in ("tcp", "-1"):
                    continue
                if rule.ip_protocol == "tcp" and not (rule.from_port <= self.port <= rule.to_port):
                    continue
                source = (rule.source_group or {}).get("GroupId")
                if source in self.roles:
                    admitted.add(self.roles[source])
        return sorted(admitted)

    def reboot(self):
        with self.lock:
            self._run("pg_ctl", "restart", "-D", self.data, "-l",
                      os.path.join(self.root, f"{os.path.basename(self.data)}.log"),
                      "-m", "fast", "-w", "-t", "120")
            self.log.append("restart")


# --- entry points for rds.py and the control API ----------------------------------------

def register(spec):
    b = Backend(spec)
    with LOCK:
        BACKENDS[b.instance.lower()] = b
    return b.view()


def listing():
    with LOCK:
        return [b.view() for b in BACKENDS.values()]


def reset():
    """Stops every standby (immediately) and forgets the registrations."""
    with LOCK:
        standbys = list(STANDBYS.values())
    for s in standbys:
        s.backend.delete_standby(s, immediate=True)
    with LOCK:
        BACKENDS.clear()
        STANDBYS.clear()


def backend(instance_id):
    return BACKENDS.get((instance_id or "").lower())


def standby(cluster_id):
    return STANDBYS.get((cluster_id or "").lower())


def instance_endpoint(db):
    """(host, port) a described instance shows, or None: the primary, or the writer's standby."""
    b = backend(db.db_instance_identifier)
    if b:
        return b.host, b.port
    s = standby(getattr(db, "db_cluster_identifier", None))
    return ("127.0.0.1", s.port) if s else None


def cluster_endpoint(cluster):
    s = standby(cluster.db_cluster_identifier)
    return ("127.0.0.1", s.port) if s else None
