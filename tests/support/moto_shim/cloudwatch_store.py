"""CloudWatch values kept for a window and read through an index by series.

moto keeps every value PutMetricData is sent, in one list, and GetMetricData scans that list
once a call and then the call's window once per query and period: a run that puts values for
hundreds of instances every second makes every read slower than the one before (the benchmark
of 200 migrations saw the agent's reads pass its 30 s timeout, #17). The shim changes two things:

- Retention: values whose timestamp is older than `cloudwatch_retention_s` (shim config,
  default 3,600 s) are dropped, from the index at the next PutMetricData and from moto's own
  list (which GetMetricStatistics and ListMetrics still read) every tenth of the retention.
  The agent's longest look back is 15 minutes (preflight's FreeStorageSpace); a rollback after
  the cutover reads from the route request on, which the tests keep within minutes.
- Reads: a GetMetricData whose queries are all MetricStat queries naming dimensions is
  answered from an index by series (namespace, metric name, dimensions), each series sorted by
  time, so a read costs the points of the series it asks for, not every value stored. The
  statistics are moto's own (`Statistics`), per period from StartTime, as moto answers them;
  unlike moto, a query's namespace must match too, as on AWS. Any other call (metric math,
  Metrics Insights, a query without dimensions) is moto's, unchanged.
"""

import bisect
import datetime
import threading
import time

from moto.cloudwatch import models as m

from .state import STATE

_LOCK = threading.Lock()
_put_metric_data = m.CloudWatchBackend.put_metric_data
_get_metric_data = m.CloudWatchBackend.get_metric_data
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


def _epoch(t):
    """Seconds since the epoch of a datetime (naive ones are UTC, as moto's `utcnow`)."""
    if isinstance(t, datetime.datetime):
        if t.tzinfo is None:
            t = t.replace(tzinfo=datetime.timezone.utc)
        return (t - _EPOCH).total_seconds()
    return float(t)


def _key(namespace, name, dimensions):
    """A series: dimensions as sorted (name, value) pairs (their order in a request is not)."""
    pairs = sorted((d.name, d.value) if isinstance(d, m.Dimension) else (d["Name"], d["Value"])
                   for d in dimensions)
    return namespace, name, tuple(pairs)


class _Series:
    """One series' values, sorted by time (`times` beside `data`, for bisect)."""

    __slots__ = ("times", "data")

    def __init__(self):
        self.times, self.data = [], []

    def add(self, t, datum):
        i = bisect.bisect_right(self.times, t)  # after equal times: arrival order kept
        self.times.insert(i, t)
        self.data.insert(i, datum)

    def drop_before(self, cutoff):
        k = bisect.bisect_left(self.times, cutoff)
        del self.times[:k]
        del self.data[:k]

    def between(self, start, end):
        """(time, datum) of the values in [start, end)."""
        lo, hi = bisect.bisect_left(self.times, start), bisect.bisect_left(self.times, end)
        return zip(self.times[lo:hi], self.data[lo:hi])


class _Store:
    """What one CloudWatch backend (account and Region) keeps beside moto's list."""

    def __init__(self):
        self.series = {}
        self.pruned_list_at = time.time()


def _store(backend):
    # On the backend itself: the shim's reset (moto's) makes new backends, and so new stores.
    store = getattr(backend, "_shim_store", None)
    if store is None:
        store = backend._shim_store = _Store()
    return store


def retention_s():
    return float(STATE.config["cloudwatch_retention_s"])


def put_metric_data(self, namespace, metric_data):
    with _LOCK:
        before = len(self.metric_data)
        _put_metric_data(self, namespace, metric_data)
        store = _store(self)
        for datum in self.metric_data[before:]:
            key = _key(datum.namespace, datum.name, datum.dimensions)
            store.series.setdefault(key, _Series()).add(_epoch(datum.timestamp), datum)
        _prune(self, store)


def _prune(backend, store):
    keep = retention_s()
    now = time.time()
    cutoff = now - keep
    for key in [k for k, s in store.series.items() if s.times and s.times[0] < cutoff]:
        series = store.series[key]
        series.drop_before(cutoff)
        if not series.times:
            del store.series[key]
    # moto's list is only filtered now and then: a pass over every value stored.
    if now - store.pruned_list_at >= keep / 10:
        backend.metric_data[:] = [d for d in backend.metric_data if _epoch(d.timestamp) >= cutoff]
        store.pruned_list_at = now


def get_metric_data(self, queries, start_time, end_time, scan_by="TimestampAscending"):
    indexed = all("MetricStat" in q and q["MetricStat"]["Metric"].get("Dimensions") for q in queries)
    if not indexed:
        return _get_metric_data(self, queries, start_time, end_time, scan_by)
    start_time = start_time.replace(microsecond=0)
    end_time = end_time.replace(microsecond=0)
    if start_time > end_time:
        raise m.ValidationError("The parameter EndTime must be greater than StartTime.")
    if start_time == end_time:
        raise m.ValidationError("The parameter StartTime must not equal parameter EndTime.")
    start, end = _epoch(start_time), _epoch(end_time)
    results = []
    with _LOCK:
        store = _store(self)
        for query in queries:
            stat_query = query["MetricStat"]
            metric = stat_query["Metric"]
            series = store.series.get(_key(metric["Namespace"], metric["MetricName"], metric["Dimensions"]))
            period = int(stat_query["Period"])
            unit, stat = stat_query.get("Unit"), stat_query["Stat"]
            periods = {}
            for t, datum in series.between(start, end) if series else ():
                if not unit or datum.unit == unit:
                    periods.setdefault(int((t - start) // period), []).append(datum)
            values, timestamps = [], []
            for n in sorted(periods):
                stats = m.Statistics([stat], start_time + datetime.timedelta(seconds=n * period))
                stats.metric_data = periods[n]
                values.append(stats.get_statistics_for_type(stat))
                timestamps.append(stats.timestamp)
            if scan_by == "TimestampDescending":
                values.reverse()
                timestamps.reverse()
            if query.get("ReturnData", True):
                results.append({"id": query["Id"], "label": query.get("Label") or f"{metric['MetricName']} {stat}",
                                "values": values, "timestamps": timestamps, "status_code": "Complete"})
    return results


def install():
    m.CloudWatchBackend.put_metric_data = put_metric_data
    m.CloudWatchBackend.get_metric_data = get_metric_data
