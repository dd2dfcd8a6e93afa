#!/usr/bin/env python3
"""A whole migration on this machine, with no AWS account.

Starts the AWS emulator (moto behind tests/support/moto_shim), creates what the deployment would
(queue + DLQ, topic, table), an RDS PostgreSQL source in its security group, tags it
`aurora-migration=start`, and runs the real `aurora-migrator run` binary against it. This script
plays AWS's part where the emulator cannot: it publishes the CloudWatch values a real source and
replica would (replication-slot lag, connections, replica lag...) and the tag-change event
EventBridge would deliver. It prints every phase notification as the agent sends it and a summary
at the end: phase durations, the write-unavailability window, AWS calls by operation.

The database-aware path, when the PostgreSQL server binaries and the `openssl` CLI are here
(tests/support/moto_shim/local_postgres.py finds them): a real PostgreSQL primary (TLS, a
throwaway CA) stands behind the emulated instance's endpoint, the Aurora replica is a real
streaming standby the shim makes of it, the agent's login is a secret in the emulator's Secrets
Manager, and the agent runs with database access. A writer (the `app` role) inserts numbered
rows throughout and follows the route to Aurora; the summary adds the outage as that writer saw
it and how many of its acknowledged writes are missing on Aurora (any: exit 1). Without the
binaries, or with --no-postgres, the metric path runs (CloudWatch values and the reboot) and one
line says why.

Usage: scripts/demo [--binary PATH] [--timeout SECONDS] [--no-postgres]
"""

import argparse
import collections
import json
import signal
import subprocess
import sys
import threading
import time

from localrun import (ROOT, TABLE, Clients, agent_calls, agent_environment, create_deployment, create_network,
                      create_source, event, metric_start_tags, put_metrics, replica_metrics, shim, shim_post,
                      source_metrics, start_emulator, stop_agent, stop_emulator, wait_for)

sys.path.insert(0, str(ROOT / "tests" / "support"))
from moto_shim import local_postgres  # noqa: E402  (standard library only)

SOURCE = "orders-pg"
AGENT_ROLE = "agent"
AGENT_PASSWORD = "agent-Pw-demo-5c1"
APP_ROLE = "app"
def database_path_missing(args):
    """Why the database-aware path cannot be shown here, or None when it can."""
    if args.no_postgres:
        return "--no-postgres given"
    try:
        local_postgres.bin_dir()
        local_postgres.run_as()
    except local_postgres.Missing as e:
        return str(e)
    if not local_postgres.openssl_available():
        return "the `openssl` CLI is not on PATH (it makes the test CA the agent verifies the database against)"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "the Python package psycopg is not installed in .venv (tests/support/requirements.txt)"
    return None


class Writer(threading.Thread):
    """An application: the `app` role inserting sequence numbers, one autocommit INSERT at a time,
    to wherever `route` points. Each acknowledged write is kept as (seq, time, server port). On any
    error it drops the connection and tries again; a write whose answer was lost counts as not
    acknowledged and its number is not reused."""

    def __init__(self, host, port):
        super().__init__(name="writer", daemon=True)
        self.route = (host, port)
        self.acks = []
        self.errors = collections.Counter()
        self.stopping = threading.Event()

    def run(self):
        import psycopg
        seq, conn, conn_route = 1, None, None
        while not self.stopping.is_set():
            route = self.route
            try:
                if conn is None or conn.closed or conn_route != route:
                    if conn is not None:
                        conn.close()
                    conn, conn_route = None, route
                    conn = psycopg.connect(host=route[0], port=route[1], user=APP_ROLE, dbname="postgres",
                                           autocommit=True, connect_timeout=2, application_name="demo-writer")
                n, seq = seq, seq + 1
                port = conn.execute("INSERT INTO writes (seq, writer) VALUES (%s, 'demo') RETURNING server_port",
                                    (n,)).fetchone()[0]
                self.acks.append((n, time.time(), port))
                time.sleep(0.02)
            except Exception as e:  # refused, terminated, reset: reconnect
                self.errors[type(e).__name__] += 1
                if conn is not None:
                    try:
                        conn.close()
                    except Exception:
                        pass
                conn = None
                time.sleep(0.1)
        if conn is not None:
            conn.close()

    def stop(self):
        self.stopping.set()
        self.join(timeout=10)


def latest_record(ddb, source):
    """The agent's migration record of `source` (the newest attempt), or None."""
    records = []
    for item in ddb.scan(TableName=TABLE)["Items"]:
        if item.get("source", {}).get("S") == source and "record" in item:
            records.append(json.loads(item["record"]["S"]))
    return max(records, key=lambda m: m.get("id", {}).get("attempt", 0), default=None)


def path_taken(database, why_not, record):
    if not database:
        return f"metric (the database-aware path was not shown: {why_not})"
    if record is None:
        return "unknown (no migration record)"
    fallback = (record.get("progress") or {}).get("database_fallback")
    if fallback:
        return f"metric (the agent fell back from the database path: {fallback})"
    if not (record.get("plan") or {}).get("database"):
        checks = (record.get("preflight") or {}).get("checks", [])
        why = next((c.get("message") for c in checks if c.get("name") == "database-access"), "not planned")
        return f"metric (database access not planned: {why})"
    progress = record["progress"]
    extra = ""
    if progress.get("fence_lsn"):
        extra = f"; fence {progress['fence_lsn']}, replayed by Aurora to {progress.get('fence_replayed_lsn')}"
    return f"database-aware (sessions ended, WAL fence, no reboot{extra})"


def writer_summary(endpoint, writer, primary):
    """Prints what the writer saw and checks its acknowledged writes on Aurora; the failures."""
    import psycopg
    backend = shim(endpoint, "/_shim/postgres")[0]
    standby = next((s for s in backend["standbys"] if s.get("promoted")), None)
    acks = writer.acks
    on_source = [a for a in acks if a[2] == primary.port]
    on_aurora = [a for a in acks if standby and a[2] == standby["port"]]
    print(f"  writer: {len(acks)} writes acknowledged ({len(on_source)} by the source, {len(on_aurora)} by Aurora); "
          f"errors while cut off: {sum(writer.errors.values())} ({', '.join(f'{k} {v}' for k, v in writer.errors.most_common())})")
    if not standby:
        return ["no promoted standby behind the Aurora cluster"]
    if on_source and on_aurora:
        gap = on_aurora[0][1] - on_source[-1][1]
        print(f"  outage as the writer saw it (last acknowledgement by the source → first by Aurora): {gap:.1f}s")
    with psycopg.connect(host="127.0.0.1", port=standby["port"], user="postgres", dbname="postgres",
                         autocommit=True, connect_timeout=5) as conn:
        present = {r[0] for r in conn.execute("SELECT seq FROM writes")}
    lost = sorted(a[0] for a in acks if a[0] not in present)
    print(f"  acknowledged writes missing on Aurora: {len(lost)}" + (f" {lost[:20]}" if lost else ""))
    failures = []
    if lost:
        failures.append(f"{len(lost)} acknowledged writes are missing on Aurora")
    if not on_aurora:
        failures.append("the writer never wrote to Aurora")
    return failures


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--binary", default=str(ROOT / "target" / "debug" / "aurora-migrator"))
    ap.add_argument("--timeout", type=float, default=180)
    ap.add_argument("--no-postgres", action="store_true",
                    help="run the metric path even where the PostgreSQL server binaries are installed")
    args = ap.parse_args()
    # Ctrl-C and SIGTERM stop the servers and remove the temp dirs (the finally below).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    why_not = database_path_missing(args)
    database = why_not is None

    emulator, endpoint = start_emulator()
    agent = None
    primary = None
    writer = None
    try:
        if database:
            primary = local_postgres.Primary(tls=True, prefix="aurora-demo-")
            primary.sql(
                "CREATE TABLE writes (seq bigint PRIMARY KEY, writer text NOT NULL, "
                "server_port int DEFAULT inet_server_port(), at timestamptz DEFAULT clock_timestamp()); "
                f"CREATE ROLE {AGENT_ROLE} LOGIN PASSWORD '{AGENT_PASSWORD}'; "
                f"GRANT pg_signal_backend, pg_read_all_stats, pg_read_all_data TO {AGENT_ROLE}; "
                f"CREATE ROLE {APP_ROLE} LOGIN; GRANT INSERT, SELECT ON writes TO {APP_ROLE}")
        wait_for(endpoint + "/_shim/health")
        aws = Clients(endpoint)  # aws.ours: this script's own calls, so that the summary counts only the agent's
        sqs, rds, ec2, cw, sm, ddb = aws.sqs, aws.rds, aws.ec2, aws.cw, aws.sm, aws.ddb
        queue, topic, watch = create_deployment(aws)  # what the CloudFormation template would create
        # The source: an RDS PostgreSQL instance in its application security group.
        vpc, app_sg, subnet_group = create_network(aws)
        arn = create_source(aws, SOURCE, app_sg, subnet_group)
        agent_env = {}
        if database:
            # The agent's login, in Secrets Manager, readable by the agent by tag.
            secret = sm.create_secret(
                Name=f"{SOURCE}-agent",
                SecretString=json.dumps({"username": AGENT_ROLE, "password": AGENT_PASSWORD}),
                Tags=[{"Key": "aurora-migration:agent-readable", "Value": "true"}],
            )["ARN"]
            # The agent's own security group (the ECS task's); the shim lets its role through
            # pg_hba.conf when the quarantine group admits it.
            agent_sg = ec2.create_security_group(GroupName="aurora-migrator-agent", Description="the agent's task",
                                                 VpcId=vpc)["GroupId"]
            shim_post(endpoint, "/_shim/postgres", {
                "instance": SOURCE, "host": "127.0.0.1", "port": primary.port, "data": primary.data,
                "socket_dir": primary.sock, "bin_dir": primary.bin, "root": primary.root,
                "run_as": primary.run_as, "roles": {agent_sg: AGENT_ROLE},
            })
            # The SQL preflight answers what the metric path asks owners to acknowledge.
            rds.add_tags_to_resource(ResourceName=arn, Tags=[
                {"Key": "aurora-migration", "Value": "start"},
                {"Key": "aurora-migration:database-access", "Value": f"secret:{secret}"},
            ])
            agent_env = {"MIGRATOR_DATABASE_ACCESS": "true", "MIGRATOR_RDS_CA_BUNDLE": primary.certs["ca"],
                         "MIGRATOR_AGENT_SECURITY_GROUP": agent_sg}
            src = rds.describe_db_instances(DBInstanceIdentifier=SOURCE)["DBInstances"][0]["Endpoint"]
            writer = Writer(src["Address"], src["Port"])
            writer.start()
        else:
            rds.add_tags_to_resource(ResourceName=arn, Tags=metric_start_tags())
        # EventBridge would deliver the tag change; the resync scan would find it too.
        sqs.send_message(QueueUrl=queue, MessageBody=json.dumps(event("tag-change/start", [arn])))
        shim(endpoint, "/_shim/calls", "DELETE")
        aws.ours.clear()

        env = agent_environment(endpoint, queue, topic, ROOT / "target" / "demo.heartbeat", **agent_env)
        (ROOT / "target").mkdir(exist_ok=True)
        log = open(ROOT / "target" / "demo-agent.log", "w")
        agent = subprocess.Popen([args.binary, "run", "--create-table"], env=env, stdout=log, stderr=log)
        print(f"emulator on {endpoint}; agent pid {agent.pid} (log: target/demo-agent.log)")
        if database:
            print(f"database-aware path: PostgreSQL {primary.version()} primary (TLS, test CA) on 127.0.0.1:"
                  f"{primary.port} behind {SOURCE}'s endpoint; a writer inserts as `{APP_ROLE}` throughout")
            print(f"tagged {SOURCE} aurora-migration=start, aurora-migration:database-access=secret:…\n")
        else:
            print(f"metric path: the database-aware path is not shown: {why_not}")
            print(f"tagged {SOURCE} aurora-migration=start\n")

        started = time.time()
        phases = []  # (phase, seconds since start)
        restarted_at = None
        done = None
        routed = False  # the agent said traffic goes to Aurora: the writer follows
        while time.time() - started < args.timeout and done is None:
            if agent.poll() is not None:
                raise SystemExit(f"the agent exited with {agent.returncode}; see target/demo-agent.log")
            # Play the source and the replica: what CloudWatch would show.
            if restarted_at is None:
                for e in rds.describe_events(SourceIdentifier=SOURCE, SourceType="db-instance", Duration=60)["Events"]:
                    if e["Message"].rstrip(".").lower() == "db instance restarted":
                        restarted_at = e["Date"]
            # Quiet once the source restarted (the metric path) or, on the database path, once it
            # is fenced (no application security group left: the agent ended its sessions, no reboot).
            quiet = restarted_at is not None
            if database and not quiet:
                try:
                    groups = rds.describe_db_instances(DBInstanceIdentifier=SOURCE)["DBInstances"][0]["VpcSecurityGroups"]
                    quiet = app_sg not in [g["VpcSecurityGroupId"] for g in groups]
                except rds.exceptions.DBInstanceNotFoundFault:
                    quiet = True  # deleted at the end
            data = source_metrics(SOURCE, quiet)
            for c in rds.describe_db_clusters()["DBClusters"]:
                if writer is not None and routed and c.get("Endpoint") and writer.route != (c["Endpoint"], c["Port"]):
                    writer.route = (c["Endpoint"], c["Port"])
                    print(f"[{time.time() - started:6.1f}s] writer  now writes to Aurora's writer "
                          f"{c['Endpoint']}:{c['Port']}")
                for member in c.get("DBClusterMembers", []):
                    data += replica_metrics(member["DBInstanceIdentifier"], quiet)
            put_metrics(cw, data)
            # The Slack channel: every notification the agent sends.
            for m in sqs.receive_message(QueueUrl=watch, MaxNumberOfMessages=10, WaitTimeSeconds=1).get("Messages", []):
                sqs.delete_message(QueueUrl=watch, ReceiptHandle=m["ReceiptHandle"])
                note = json.loads(m["Body"])
                ctx = note["metadata"]["additionalContext"]
                t = time.time() - started
                print(f"[{t:6.1f}s] {ctx['severity']:<7} {ctx['phase']:<16} {note['content']['title']}")
                if ctx["event"] == "phase-change" or ctx["event"] == "cutover":
                    phases.append((ctx["phase"], t))
                if ctx["event"] == "cutover" or ctx["phase"] == "verifying":
                    routed = True
                if ctx["phase"] in ("completed", "failed", "rolledback", "aborted"):
                    done = ctx["phase"]
        if done is None:
            raise SystemExit(f"no end within {args.timeout:.0f}s; see target/demo-agent.log")
        total = time.time() - started
        if writer is not None:
            time.sleep(2)  # a few writes on Aurora after the migration completed
            writer.stop()

        print("\nSummary")
        print(f"  outcome: {done} in {total:.1f}s")
        failures = []
        record = latest_record(ddb, SOURCE)
        print(f"  path: {path_taken(database, why_not, record)}")
        for c in ((record or {}).get("preflight") or {}).get("checks", []):
            if c.get("outcome") != "pass":
                how = "fail, acknowledged by tag" if c.get("acknowledged") else c.get("outcome")
                print(f"  preflight {how}: {c.get('name')}: {c.get('message')}")
        print("  phase durations:")
        for (phase, t), nxt in zip(phases, phases[1:] + [(None, total)]):
            print(f"    {phase:<16} {nxt[1] - t:6.1f}s")
        at = dict(phases)
        if "quiescing" in at and "verifying" in at:
            print(f"  write-unavailability window (quarantine → traffic on Aurora): {at['verifying'] - at['quiescing']:.1f}s")
        calls, log = agent_calls(endpoint, aws.ours)
        reboots = [c for c in log if c["action"] == "RebootDBInstance" and SOURCE in json.dumps(c.get("params"))]
        print(f"  source rebooted: {'yes (%d RebootDBInstance)' % len(reboots) if reboots else 'no'}")
        if writer is not None:
            failures += writer_summary(endpoint, writer, primary)
        print(f"  AWS calls by operation ({sum(calls.values())} in all):")
        for op, n in sorted(calls.items(), key=lambda kv: (-kv[1], kv[0])):
            print(f"    {op:<48} {n}")
        if done != "completed":
            raise SystemExit(1)
        if failures:
            raise SystemExit("; ".join(failures))
    finally:
        if writer is not None:
            writer.stop()
        stop_agent(agent)
        if primary is not None:
            try:  # the shim stops the standbys it made...
                shim(endpoint, "/_shim/postgres", "DELETE")
            except Exception:
                pass
        stop_emulator(emulator)
        if primary is not None:
            primary.stop()  # ...and this stops the primary and any standby left, and removes the dir


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("interrupted: the agent, the emulator and the PostgreSQL servers were stopped")
