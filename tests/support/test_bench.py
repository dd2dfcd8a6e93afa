"""scripts/bench.py's report arithmetic and its watch of the agent process (no emulator, no agent:
the run itself is `scripts/bench --migrations 3`, minutes, and not part of the tests)."""

import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import bench  # noqa: E402


def test_percentile_is_nearest_rank():
    values = list(range(1, 101))  # 1..100
    assert bench.percentile(values, 50) == 50
    assert bench.percentile(values, 99) == 99
    assert bench.percentile(values, 100) == 100
    assert bench.percentile([7.0], 99) == 7.0
    assert bench.percentile([3, 1, 2], 50) == 2  # unsorted input
    assert bench.percentile([], 50) is None
    assert bench.summary([4.0, 1.0, 9.0]) == {"n": 3, "p50": 4.0, "p99": 9.0, "max": 9.0}


def test_parse_time_reads_the_agents_nanosecond_timestamps():
    assert bench.parse_time("1970-01-01T00:00:01Z") == 1.0
    assert abs(bench.parse_time("2026-12-05T01:00:00.123456789Z") - bench.parse_time("2026-12-05T01:00:00Z") - 0.123456789) < 1e-6
    assert bench.parse_time("2026-12-05T02:00:00+01:00") == bench.parse_time("2026-12-05T01:00:00Z")


def record(*history, phase=None):
    return {"phase": phase or history[-1][0],
            "history": [{"phase": p, "at": f"2026-12-05T01:00:{s:09.6f}Z"} for p, s in history]}


def test_phase_times_from_the_history():
    r = record(("requested", 0), ("preflight", 1.5), ("replicating", 4), ("awaitingcutover", 10),
               ("quiescing", 12), ("draining", 13), ("promoting", 15), ("routing", 20), ("verifying", 21),
               ("decommissioning", 25), ("completed", 30))
    t = bench.phase_times(r)
    assert t["requested"] == 1.5 and t["preflight"] == 2.5 and t["replicating"] == 6
    assert t["promoting"] == 5 and t["decommissioning"] == 5
    assert "completed" not in t  # the terminal phase has no duration
    assert t["total"] == 30
    assert t["write_unavailability"] == 9  # quiescing entered (12) → verifying entered (21)


def test_a_phase_entered_twice_is_summed_and_an_unended_record_has_no_total():
    r = record(("replicating", 0), ("paused", 2), ("replicating", 5), ("awaitingcutover", 6))
    t = bench.phase_times(r)
    assert t["replicating"] == 3 and t["paused"] == 3
    assert "total" not in t and "write_unavailability" not in t


def test_phase_latencies_and_outcomes_over_records():
    rs = [record(("preflight", 0), ("preparing", d), ("completed", d + 1)) for d in (1, 2, 3, 4)]
    rs.append(record(("preflight", 0), ("rollingback", 8), ("rolledback", 9)))
    lat = bench.phase_latencies(rs)
    assert lat["preflight"] == {"n": 5, "p50": 3, "p99": 8, "max": 8}
    assert lat["total"]["n"] == 5 and lat["total"]["max"] == 9
    assert bench.outcomes(rs) == {"completed": 4, "rolledback": 1}


def test_rate_peaks_is_the_most_calls_in_a_sliding_window():
    times = [0.0, 0.1, 0.2, 0.95, 1.5, 5.0, 5.5]
    assert bench.rate_peaks(times, 1.0) == 4   # 0.0 .. 0.95
    assert bench.rate_peaks(times, 60.0) == 7
    assert bench.rate_peaks([], 1.0) == 0


def test_log_summary_counts_levels_and_groups_messages_by_shape():
    lines = [json.dumps({"level": "WARN", "fields": {"message": f"step of bench-{i:03d} failed"}}) for i in range(3)]
    lines += [json.dumps({"level": "INFO", "fields": {"message": "hi"}}), "not json",
              json.dumps({"level": "ERROR", "fields": {"message": "boom"}}),
              # the agent's own format: the fields flattened into the line
              json.dumps({"level": "WARN", "message": "observation failed", "error": "GetMetricData timed out after 30s"})]
    s = bench.log_summary(lines)
    assert s["levels"] == {"WARN": 4, "INFO": 1, "ERROR": 1}
    assert s["top"] == [("WARN step of bench-N failed", 3), ("ERROR boom", 1),
                        ("WARN observation failed: GetMetricData timed out after Ns", 1)]


def test_watched_samples_a_process_and_reaps_it_with_its_cpu_time():
    proc = subprocess.Popen([sys.executable, "-c",
                             "import signal, time\n"
                             "x = bytearray(32 * 1024 * 1024)\n"   # 32 MiB, touched
                             "t = time.process_time()\n"
                             "while time.process_time() - t < 0.3: pass\n"
                             "signal.pause()"])
    w = bench.Watched(proc, every=0.05)
    try:
        import time
        time.sleep(1.0)
        assert not w.exited()
        w.read_smaps()
    finally:
        w.stop(timeout=5)
    f = w.figures()
    assert f["exit_status"] == -15  # SIGTERM
    assert f["vmhwm_mib"] >= 32
    assert f["cpu_s"] >= 0.3
    assert f["max_threads"] >= 1
    assert w.smaps is None or "Rss:" in w.smaps


def test_max_in_flight_counts_migrations_under_way_at_once():
    rs = [record(("preflight", 0), ("completed", 10)),
          record(("preflight", 5), ("completed", 12)),
          record(("preflight", 10), ("completed", 20)),   # starts as the first ends
          record(("preflight", 11), ("replicating", 15))]  # not ended: under way to the end
    assert bench.max_in_flight(rs) == 3
    assert bench.max_in_flight([]) == 0
