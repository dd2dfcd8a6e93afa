#!/usr/bin/env python3
"""The agent binary at scale: N concurrent migrations (200 by default) against the AWS emulator.

Starts the emulator as scripts/demo.py does (scripts/localrun.py), raises its quotas for the
fleet, creates N RDS PostgreSQL sources tagged `aurora-migration=start`, and runs the real
`aurora-migrator run` binary against them with the production rate limit (5 RDS requests/s),
concurrency (64) and cutover admission (25), and the demo's short policy (seconds where
production waits minutes). One scheduled-resync message admits them all (the agent admits a
resync's sources 16 at a time, `RESYNC_CONCURRENCY`), or with --start events one tag-change event
per source, as EventBridge delivers when each is tagged (up to MIGRATOR_CONCURRENCY at a time). The script plays
CloudWatch for every source and replica (a replicating source until AWS's "DB instance restarted"
event, then a quiet one) until every migration has ended. The metric (reboot) cutover path: the
database-aware one needs a PostgreSQL server per source.

It reports migrations completed / rolled back / failed, wall-clock, the agent's peak RSS
(VmHWM, the kernel's high-water mark of the process since its exec, read from /proc until it
exits), its CPU time (utime + stime, from wait4's rusage), its AWS calls by operation (the shim's
call log less this script's own calls), and per-migration phase latencies (p50/p99/max of the
time in each phase, from the phase history of the records in the DynamoDB table). As a table,
and as JSON with --out. Exits 1 unless every migration completed. Ctrl-C stops the agent and
the emulator without a report; `kill -USR1 <pid>` ends the run early with one (as --timeout does).

Usage: scripts/bench [--migrations N] [--binary PATH] [--out FILE] [--timeout SECONDS]
                     [--period SECONDS] [--rds-rate-limit N] [--start resync|events] [--log FILE]
"""

import argparse
import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

from localrun import (ROOT, TABLE, Clients, agent_calls, agent_environment, create_deployment, create_network,
                      create_source, event, metric_start_tags, put_metrics, replica_metrics, shim, shim_post,
                      source_metrics, start_emulator, stop_emulator, wait_for)

TERMINAL = ("completed", "failed", "rolledback", "aborted")
CUT_SHORT = threading.Event()  # SIGUSR1: end the run now, with a report of what ended
CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


# ---- report arithmetic (unit-tested in tests/support/test_bench.py) ----

def percentile(values, q):
    """The nearest-rank percentile (q in 0..100) of `values`; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def summary(values):
    return {"n": len(values), "p50": percentile(values, 50), "p99": percentile(values, 99),
            "max": max(values) if values else None}


def parse_time(text):
    """An RFC 3339 timestamp as the agent writes it (jiff: up to nanoseconds, `Z`), in seconds."""
    m = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)", text)
    if not m:
        raise ValueError(f"not a timestamp: {text!r}")
    base = datetime.fromisoformat(m.group(1) + ("+00:00" if m.group(3) == "Z" else m.group(3)))
    return base.timestamp() + (float("0." + m.group(2)) if m.group(2) else 0.0)


def phase_times(record):
    """Seconds spent in each phase a migration record went through (its history: phase, entered
    at), a phase entered twice summed; the terminal phase has no duration. Adds `total` (first
    entry → terminal phase) and `write_unavailability` (Quiescing entered → Verifying entered, the
    demo's window) when the record got that far."""
    history = [(h["phase"], parse_time(h["at"])) for h in record.get("history", [])]
    out = {}
    for (phase, at), (_, nxt) in zip(history, history[1:]):
        out[phase] = out.get(phase, 0.0) + (nxt - at)
    if history and history[-1][0] in TERMINAL:
        out["total"] = history[-1][1] - history[0][1]
    entered = {}
    for phase, at in history:
        entered.setdefault(phase, at)
    if "quiescing" in entered and "verifying" in entered:
        out["write_unavailability"] = entered["verifying"] - entered["quiescing"]
    return out


def phase_latencies(records):
    """{phase: summary of its seconds across the records}, phases in the order first seen."""
    by_phase = {}
    for r in records:
        for phase, seconds in phase_times(r).items():
            by_phase.setdefault(phase, []).append(seconds)
    return {phase: summary(v) for phase, v in by_phase.items()}


def outcomes(records):
    """Latest record per source → counts by phase."""
    counts = {}
    for r in records:
        counts[r["phase"]] = counts.get(r["phase"], 0) + 1
    return counts


def max_in_flight(records):
    """Most migrations under way at once: between a record's first history entry and its terminal
    phase (or the end of the run, for one not ended)."""
    edges = []
    for r in records:
        history = [parse_time(h["at"]) for h in r.get("history", [])]
        if history:
            edges.append((history[0], 1))
            if r["phase"] in TERMINAL:
                edges.append((history[-1], -1))
    best = current = 0
    for _, delta in sorted(edges):  # an end before a start at the same instant
        current += delta
        best = max(best, current)
    return best


def rate_peaks(times, window):
    """Most calls in any `window` seconds (sliding, starting at a call)."""
    times = sorted(times)
    best, j = 0, 0
    for i, t in enumerate(times):
        while times[j] < t - window:
            j += 1
        best = max(best, i - j + 1)
    return best


def log_summary(lines):
    """The agent's JSON log lines → counts by level and the most frequent WARN/ERROR messages."""
    levels, messages = {}, {}
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        level = entry.get("level", "?")
        levels[level] = levels.get(level, 0) + 1
        if level in ("WARN", "ERROR"):
            # The agent flattens the event's fields into the line; tracing's default nests them.
            fields = {**entry.get("fields", {}), **entry}
            text = fields.get("message", "") + (f": {fields['error']}" if fields.get("error") else "")
            text = re.sub(r"\d+", "N", text)[:160]  # group messages that differ only in ids
            messages[f"{level} {text}"] = messages.get(f"{level} {text}", 0) + 1
    top = sorted(messages.items(), key=lambda kv: (-kv[1], kv[0]))[:10]
    return {"levels": levels, "top": top}


# ---- the agent process ----

class Watched:
    """The agent process, sampled from /proc every `every` seconds until it exits and reaped with
    wait4, so the kernel's own figures (ru_maxrss, ru_utime, ru_stime) are read too."""

    def __init__(self, proc, every=0.5):
        self.proc, self.pid = proc, proc.pid
        self.peak_rss_kib = 0     # the highest VmRSS sampled
        self.hwm_kib = 0          # the last VmHWM read (the kernel's own peak)
        self.threads = 0
        self.cpu_s = 0.0          # utime + stime, last read
        self.rusage = None
        self.status = None
        self.smaps = None
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(every,), daemon=True)
        self.thread.start()

    def sample(self):
        try:
            status = open(f"/proc/{self.pid}/status").read()
            stat = open(f"/proc/{self.pid}/stat").read()
        except OSError:
            return False
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        kib = lambda k: int(fields.get(k, "0 kB").split()[0])  # noqa: E731
        # stat: fields after the command's closing parenthesis; utime and stime are 14 and 15.
        rest = stat[stat.rindex(")") + 2:].split()
        with self.lock:
            self.hwm_kib = max(self.hwm_kib, kib("VmHWM"))
            self.peak_rss_kib = max(self.peak_rss_kib, kib("VmRSS"))
            self.threads = max(self.threads, int(fields.get("Threads", "0")))
            self.cpu_s = (int(rest[11]) + int(rest[12])) / CLK_TCK
        return True

    def read_smaps(self):
        try:
            self.smaps = open(f"/proc/{self.pid}/smaps_rollup").read()
        except OSError:
            pass

    def _run(self, every):
        while not self.stopping.is_set() and self.sample():
            self.stopping.wait(every)

    def exited(self):
        """Reaps the agent if it has exited (wait4, so its rusage is kept); True when it has."""
        if self.status is not None:
            return True
        pid, status, rusage = os.wait4(self.pid, os.WNOHANG)
        if pid == 0:
            return False
        self.sample()  # nothing to read any more; keeps the last figures
        self.status, self.rusage = os.waitstatus_to_exitcode(status), rusage
        self.proc.returncode = self.status  # Popen must not wait for it again
        self.stopping.set()
        return True

    def stop(self, timeout=40):
        """SIGTERM, SIGKILL after `timeout`; waits for the exit."""
        if self.exited():
            return
        self.sample()
        self.proc.send_signal(signal.SIGTERM)
        deadline = time.time() + timeout
        while not self.exited():
            if time.time() > deadline:
                self.proc.kill()
                deadline = float("inf")
            time.sleep(0.05)

    def figures(self):
        out = {"vmhwm_mib": self.hwm_kib / 1024, "peak_vmrss_sampled_mib": self.peak_rss_kib / 1024,
               "cpu_s_sampled": self.cpu_s, "max_threads": self.threads, "exit_status": self.status}
        if self.rusage is not None:
            # Not ru_maxrss: it counts the forked Python child before its exec too.
            out["cpu_s"] = self.rusage.ru_utime + self.rusage.ru_stime
            out["user_s"], out["system_s"] = self.rusage.ru_utime, self.rusage.ru_stime
        return out


# ---- the run ----

def latest_records(ddb):
    """The newest attempt's record of every source in the table: {source: record}."""
    latest = {}
    for page in ddb.get_paginator("scan").paginate(TableName=TABLE):
        for item in page["Items"]:
            if "record" not in item:
                continue
            r = json.loads(item["record"]["S"])
            source = r.get("source_identifier")
            if source and (source not in latest or r["id"]["attempt"] > latest[source]["id"]["attempt"]):
                latest[source] = r
    return latest


def play_cloudwatch(aws, active):
    """One round of what CloudWatch would show for every migration under way (`active`: a record
    not in a terminal phase): a replicating source until RDS reports it restarted (the metric
    path's reboot), then a quiet one, and its Aurora replica's instances likewise. Only those:
    moto keeps every value and scans them all on each GetMetricData (for each query), so values
    for 200 sources every round made its answers take longer than the agent's 30 s timeout within
    minutes."""
    restarted = set()
    for e in aws.rds.describe_events(SourceType="db-instance", Duration=120)["Events"]:
        if e["Message"].rstrip(".").lower() == "db instance restarted":
            restarted.add(e["SourceIdentifier"])
    live = set()
    for page in aws.rds.get_paginator("describe_db_instances").paginate():
        live.update(i["DBInstanceIdentifier"] for i in page["DBInstances"])
    data = []
    for s in sorted(active & live):
        data += source_metrics(s, s in restarted)
    for page in aws.rds.get_paginator("describe_db_clusters").paginate():
        for c in page["DBClusters"]:
            source = c["DBClusterIdentifier"].split("-aurora-")[0]
            if source in active:
                for m in c.get("DBClusterMembers", []):
                    data += replica_metrics(m["DBInstanceIdentifier"], source in restarted)
    put_metrics(aws.cw, data)


def run(args):
    emulator, endpoint = start_emulator()
    agent = watched = None
    log_path = Path(args.log).resolve()
    try:
        wait_for(endpoint + "/_shim/health")
        n = args.migrations
        # The shim reports AWS's default quotas (40 instances): raise them for the fleet.
        shim_post(endpoint, "/_shim/config", {"quotas": {
            "DBClusters": 2 * n + 50, "DBInstances": 3 * n + 50, "DBClusterParameterGroups": 50,
            "DBParameterGroups": 50, "ManualSnapshots": 2 * n + 50}})
        aws = Clients(endpoint)
        queue, topic, _ = create_deployment(aws, watch=False)
        _, app_sg, subnet_group = create_network(aws)
        sources = [f"bench-{i:03d}" for i in range(n)]
        t0, arns = time.time(), {}
        for s in sources:
            arns[s] = create_source(aws, s, app_sg, subnet_group)
            aws.rds.add_tags_to_resource(ResourceName=arns[s], Tags=metric_start_tags())
        print(f"emulator on {endpoint}; {n} sources created and tagged in {time.time() - t0:.1f}s")
        shim(endpoint, "/_shim/calls", "DELETE")
        aws.ours.clear()

        extra = {}
        if args.rds_rate_limit:
            extra["MIGRATOR_RDS_RATE_LIMIT"] = str(args.rds_rate_limit)
        env = agent_environment(endpoint, queue, topic, log_path.with_suffix(".heartbeat"), **extra)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(log_path, "w")
        if args.start == "resync":  # one scheduled resync admits every tagged source
            aws.sqs.send_message(QueueUrl=queue, MessageBody=json.dumps(event("resync-schedule/scheduled-event")))
        else:  # what EventBridge delivers when each source is tagged
            for i in range(0, n, 10):
                aws.sqs.send_message_batch(QueueUrl=queue, Entries=[
                    {"Id": str(j), "MessageBody": json.dumps(event("tag-change/start", [arns[s]]))}
                    for j, s in enumerate(sources[i:i + 10])])
        started = time.time()
        agent = subprocess.Popen([args.binary, "run", "--create-table"], env=env, stdout=log, stderr=log)
        watched = Watched(agent)
        print(f"agent pid {agent.pid} ({args.binary}; log: {log_path}); "
              f"RDS rate limit {env.get('MIGRATOR_RDS_RATE_LIMIT', '5 (default)')}")

        ended, records, last_print, last_scan = set(), {}, 0.0, 0.0
        while True:
            if watched.exited():
                raise SystemExit(f"the agent exited with {watched.status}; see {log_path}")
            elapsed = time.time() - started
            if elapsed > args.timeout or CUT_SHORT.is_set():
                break
            round_started = time.time()
            play_cloudwatch(aws, {s for s, r in records.items() if r["phase"] not in TERMINAL})
            round_s = time.time() - round_started
            if time.time() - last_scan >= 5:
                last_scan = time.time()
                try:
                    records = latest_records(aws.ddb)
                except aws.ddb.exceptions.ResourceNotFoundException:
                    records = {}  # the agent has not created the table yet
                ended = {s for s, r in records.items() if r["phase"] in TERMINAL}
                if time.time() - last_print >= 30 or len(ended) == n:
                    last_print = time.time()
                    counts = outcomes(records.values())
                    print(f"[{elapsed:7.1f}s] {len(ended)}/{n} ended; phases: "
                          + (", ".join(f"{p} {c}" for p, c in sorted(counts.items(), key=lambda kv: -kv[1])) or "none yet")
                          + f"; RSS peak {watched.hwm_kib / 1024:.1f} MiB, CPU {watched.cpu_s:.1f}s; CloudWatch round {round_s:.1f}s",
                          flush=True)
                if len(ended) == n:
                    break
            time.sleep(args.period)
        wall = time.time() - started
        watched.sample()
        watched.read_smaps()
        hwm_before_stop = watched.hwm_kib / 1024
        watched.stop()
        log.close()

        calls, call_log = agent_calls(endpoint, aws.ours)
        # The log does not say who called: the peaks include this script's own describes (about
        # 3 a round), so they bound the agent's from above.
        rds_times = [c["time"] for c in call_log if c["service"] == "rds"]
        counts = outcomes(records.values())
        report = {
            "migrations": n,
            "completed": counts.get("completed", 0),
            "rolled_back": counts.get("rolledback", 0),
            "failed": counts.get("failed", 0),
            "aborted": counts.get("aborted", 0),
            "not_ended": n - len(ended),
            "max_in_flight": max_in_flight(records.values()),
            "started_by": args.start,
            "phases_at_end": counts,
            "wall_clock_s": wall,
            "timed_out": len(ended) < n,  # by --timeout or SIGUSR1
            "agent": {**watched.figures(), "vmhwm_before_sigterm_mib": hwm_before_stop},
            "agent_smaps_rollup": watched.smaps,
            "aws_calls": {"total": sum(calls.values()), "per_migration": sum(calls.values()) / n,
                          "by_operation": dict(sorted(calls.items(), key=lambda kv: (-kv[1], kv[0])))},
            "rds": {"agent_calls": sum(v for k, v in calls.items() if k.startswith("rds:")),
                    "agent_rate_per_s": sum(v for k, v in calls.items() if k.startswith("rds:")) / wall,
                    "peak_in_1s_with_script": rate_peaks(rds_times, 1.0),
                    "peak_in_60s_with_script": rate_peaks(rds_times, 60.0)},
            "phase_latencies_s": phase_latencies([records[s] for s in sources if s in records]),
            "agent_log": log_summary(open(log_path, errors="replace")),
            "settings": {"binary": args.binary, "start": args.start, "rds_rate_limit": args.rds_rate_limit or 5,
                         "policy": {k: v for k, v in env.items() if k.startswith("MIGRATOR_")
                                    and k not in ("MIGRATOR_QUEUE_URL", "MIGRATOR_TOPIC_ARN", "MIGRATOR_HEARTBEAT_FILE")},
                         "cloudwatch_period_s": args.period},
            "problems": {s: r.get("last_error") for s, r in records.items() if r["phase"] != "completed"},
        }
        return report
    finally:
        if watched is not None:
            watched.stop()
        stop_emulator(emulator)


def fmt(v, unit="s"):
    return "-" if v is None else f"{v:.1f}{unit}" if isinstance(v, float) else f"{v}{unit}"


def render(report):
    a = report["agent"]
    lines = [
        f"migrations: {report['migrations']}  completed {report['completed']}  rolled back {report['rolled_back']}"
        f"  failed {report['failed']}  aborted {report['aborted']}  not ended {report['not_ended']}",
        f"wall-clock: {report['wall_clock_s']:.0f} s" + ("  (timed out)" if report["timed_out"] else "")
        + f"; started by {report['started_by']}; at most {report['max_in_flight']} under way at once",
        f"agent peak RSS: VmHWM {a['vmhwm_mib']:.1f} MiB (sampled peak VmRSS {a['peak_vmrss_sampled_mib']:.1f} MiB"
        + f"; before SIGTERM {a['vmhwm_before_sigterm_mib']:.1f} MiB); target 64 MiB: "
        + ("met" if a["vmhwm_mib"] <= 64 else "NOT met"),
        f"agent CPU time: {a.get('cpu_s', a['cpu_s_sampled']):.1f} s"
        + (f" (user {a['user_s']:.1f} s, system {a['system_s']:.1f} s)" if "user_s" in a else "")
        + f"; threads (max) {a['max_threads']}; exit status {a['exit_status']}",
        f"AWS calls: {report['aws_calls']['total']} ({report['aws_calls']['per_migration']:.1f} per migration); "
        f"RDS {report['rds']['agent_calls']} ({report['rds']['agent_rate_per_s']:.2f}/s over the run)",
        "",
        f"{'operation':<44} {'calls':>8} {'per migration':>14}",
    ]
    for op, c in list(report["aws_calls"]["by_operation"].items())[:15]:
        lines.append(f"{op:<44} {c:>8} {c / report['migrations']:>14.1f}")
    lines += ["", f"{'phase (s per migration)':<28} {'n':>5} {'p50':>8} {'p99':>8} {'max':>8}"]
    for phase, s in report["phase_latencies_s"].items():
        lines.append(f"{phase:<28} {s['n']:>5} {fmt(s['p50'], ''):>8} {fmt(s['p99'], ''):>8} {fmt(s['max'], ''):>8}")
    levels = report["agent_log"]["levels"]
    lines += ["", "agent log: " + (", ".join(f"{k} {v}" for k, v in sorted(levels.items())) or "empty")]
    for text, count in report["agent_log"]["top"]:
        lines.append(f"  {count:>6}  {text}")
    for source, error in sorted(report["problems"].items())[:20]:
        lines.append(f"  not completed: {source}: {error}")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--binary", default=str(ROOT / "target" / "release" / "aurora-migrator"))
    ap.add_argument("--migrations", type=int, default=200)
    ap.add_argument("--timeout", type=float, default=3600, help="seconds before the run is cut short")
    ap.add_argument("--period", type=float, default=2.0, help="seconds between the CloudWatch rounds")
    ap.add_argument("--rds-rate-limit", type=float,
                    help="MIGRATOR_RDS_RATE_LIMIT for the agent (default: unset, the production 5/s)")
    ap.add_argument("--start", choices=("resync", "events"), default="resync",
                    help="how the migrations are started: one scheduled resync (default) or a tag-change event each")
    ap.add_argument("--log", default=str(ROOT / "target" / "bench-agent.log"), help="the agent's log (JSON lines)")
    ap.add_argument("--out", help="also write the report as JSON to this file")
    args = ap.parse_args()
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGUSR1, lambda *_: CUT_SHORT.set())
    report = run(args)
    print()
    print(render(report))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)
        print(f"\nreport: {args.out}")
    if report["completed"] != report["migrations"]:
        raise SystemExit(1)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("interrupted: the agent and the emulator were stopped")
