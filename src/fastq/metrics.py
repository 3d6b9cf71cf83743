"""Prometheus metrics for fastq queues and logs (extra ``prometheus``:
``pip install "fastq[prometheus]"``).

Register a collector in a program that already serves metrics::

    from prometheus_client import REGISTRY
    from fastq.metrics import FastqCollector
    REGISTRY.register(FastqCollector(["orders", "data/events"]))

or run the exporter: ``python -m fastq exporter --port 9464 orders data/events``.
A target that is a ``fastq.jobs`` app directory exports ``fastq_jobs_*``
per queue (enqueued, backlog, running, attempts, retried, dead, workers,
oldest age, stored results by status).

Every scrape reads the queues' shared counters without a lock (the same
numbers as ``fastq stat``): it never blocks or slows producers and consumers.
Names follow Prometheus conventions: base units, ``_total`` for counters,
labels ``queue`` and ``group``.
"""
from __future__ import annotations

import threading
import time
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

from . import _core, _ops
from .log import Log

__all__ = ["FastqCollector", "serve", "METRICS"]

# name -> (type, help, where): where "q" = per queue, "g" = per group
METRICS: Dict[str, Tuple[str, str, str]] = {
    "fastq_up": ("gauge", "1 if the queue could be opened and read, else 0", "q"),
    "fastq_head_offset": ("gauge", "Offset the next appended record will get", "q"),
    "fastq_oldest_offset": ("gauge", "Oldest record still held", "q"),
    "fastq_records_appended_total": ("counter", "Records appended since the queue was created", "q"),
    "fastq_capacity_bytes": ("gauge", "Bytes of the shared-memory ring", "q"),
    "fastq_used_bytes": ("gauge", "Bytes of the ring holding unfinished records", "q"),
    "fastq_durable_offset": ("gauge", "Records below this offset are on disk (durable logs)", "q"),
    "fastq_disk_bytes": ("gauge", "Bytes allocated on disk by the control, segment and index files (durable logs)", "q"),
    "fastq_members": ("gauge", "Attached processes by role (producer, consumer, queue) and state", "q"),
    "fastq_group_low_offset": ("gauge", "Every record below this offset is finished in the group", "g"),
    "fastq_group_lag_messages": ("gauge", "Records appended and not yet finished by the group", "g"),
    "fastq_group_lag_bytes": ("gauge", "Bytes of the records the group has not finished", "g"),
    "fastq_group_oldest_unfinished_age_seconds": ("gauge", "Age of the oldest record the group has not finished", "g"),
    "fastq_group_pending_leases": ("gauge", "Records leased to consumers now", "g"),
    "fastq_group_consumers": ("gauge", "Live consumers in the group", "g"),
    "fastq_group_delivered_total": ("counter", "Deliveries (first ones and redeliveries)", "g"),
    "fastq_group_redelivered_total": ("counter", "Redeliveries (lease expired, nacked, consumer died)", "g"),
    "fastq_group_expired_total": ("counter", "Leases that expired (visibility timeout)", "g"),
    "fastq_group_nacked_total": ("counter", "Records given back with nack()", "g"),
    "fastq_group_acked_total": ("counter", "Records acked", "g"),
    "fastq_group_dead_lettered_total": ("counter", "Records sent to the dead-letter queue (or dropped)", "g"),
    "fastq_group_skipped_total": ("counter", "Records deleted by retention before the group finished them", "g"),
    # a fastq.jobs app directory (labels app, queue)
    "fastq_jobs_up": ("gauge", "1 if the jobs app could be read, else 0", "j"),
    "fastq_jobs_enqueued_total": ("counter", "Jobs enqueued", "j"),
    "fastq_jobs_backlog": ("gauge", "Jobs enqueued and not finished (waiting, running or retrying)", "j"),
    "fastq_jobs_running": ("gauge", "Jobs leased to a worker now", "j"),
    "fastq_jobs_attempts_total": ("counter", "Attempts started (first runs and retries)", "j"),
    "fastq_jobs_retried_total": ("counter", "Attempts that were retries (failure, timeout, worker died)", "j"),
    "fastq_jobs_dead_total": ("counter", "Jobs dead-lettered (retries exhausted or not retryable)", "j"),
    "fastq_jobs_workers": ("gauge", "Worker processes consuming the queue", "j"),
    "fastq_jobs_oldest_unfinished_age_seconds": ("gauge", "Age of the oldest unfinished job", "j"),
    "fastq_jobs_results": ("gauge", "Outcomes kept in the results store, by status", "j"),
}

_GROUP_FIELDS = {
    "fastq_group_low_offset": "low", "fastq_group_lag_messages": "lag", "fastq_group_lag_bytes": "lag_bytes",
    "fastq_group_oldest_unfinished_age_seconds": "oldest_age", "fastq_group_pending_leases": "pending",
    "fastq_group_consumers": "consumers", "fastq_group_delivered_total": "delivered",
    "fastq_group_redelivered_total": "redelivered", "fastq_group_expired_total": "expired",
    "fastq_group_nacked_total": "nacked", "fastq_group_acked_total": "acked",
    "fastq_group_dead_lettered_total": "dead_lettered", "fastq_group_skipped_total": "skipped",
}

Sample = Tuple[str, Dict[str, str], float]


class _Source:
    """One queue: opened once, re-opened when it was removed or re-created."""

    def __init__(self, target: Union[str, Log]) -> None:
        self._owned = not isinstance(target, Log)
        self.log: Optional[Log] = None if self._owned else target  # type: ignore[assignment]
        self.name = target if isinstance(target, str) else target.name
        self._ino: Optional[Tuple[int, int]] = None

    def stats(self) -> Optional[Dict[str, Any]]:
        if self._owned and self.log is not None and self._replaced():
            self.close()
        if self.log is None:
            try:
                self.log = _ops.open_target(self.name)
            except (_ops.OpsError, OSError, _core.FastqError, ValueError):
                return None
            self._owned = True  # our handle (also after a caller's Log was closed): close() must close it
            self._ino = self._identity()
        try:
            return self.log.stats()
        except (ValueError, OSError, _core.FastqError):
            self.close()
            return None

    def _identity(self) -> Optional[Tuple[int, int]]:
        import os
        path = (os.path.join(self.name, "control") if self.log is not None and self.log.durable
                else f"{_ops.SHM_DIR}/{_ops.SHM_PREFIX}{self.name}")
        try:
            s = os.stat(path)
        except OSError:
            return None
        return (s.st_dev, s.st_ino)

    def _replaced(self) -> bool:
        return self._identity() != self._ino

    def close(self) -> None:
        if self.log is not None and self._owned:
            self.log.close()
        self.log = None


class _JobsSource:
    """A fastq.jobs app directory: its queues, read as an observer."""

    def __init__(self, path: str) -> None:
        self.name = path
        self.app: Any = None

    def rows(self) -> Optional[List[Dict[str, Any]]]:
        from .jobs import App
        try:
            if self.app is None:
                self.app = App.observe(self.name)
            return [self.app.stats(q) for q in self.app.queues()]
        except (_ops.OpsError, OSError, _core.FastqError, ValueError, KeyError):
            self.close()
            return None

    def close(self) -> None:
        if self.app is not None:
            self.app.close()
        self.app = None


def is_jobs_app(target: Any) -> bool:
    import os
    return isinstance(target, str) and os.path.isdir(os.path.join(target, "queues")) and \
        not os.path.exists(os.path.join(target, "control"))


def _job_samples(src: _JobsSource) -> Iterator[Sample]:
    rows = src.rows()
    yield "fastq_jobs_up", {"app": src.name}, 0.0 if rows is None else 1.0
    for r in rows or ():
        lab = {"app": src.name, "queue": r["queue"]}
        for metric, field in (("fastq_jobs_enqueued_total", "enqueued"), ("fastq_jobs_backlog", "backlog"),
                              ("fastq_jobs_running", "running"), ("fastq_jobs_attempts_total", "delivered"),
                              ("fastq_jobs_retried_total", "retried"), ("fastq_jobs_dead_total", "dead_lettered"),
                              ("fastq_jobs_workers", "workers"),
                              ("fastq_jobs_oldest_unfinished_age_seconds", "oldest_age")):
            yield metric, lab, r[field]
        for status in ("succeeded", "dead", "retrying"):
            yield "fastq_jobs_results", dict(lab, status=status), r["results"].get(status, 0)


def samples(sources: Iterable[Any]) -> Iterator[Sample]:
    """(metric, labels, value) for every source, read lock-free."""
    for src in sources:
        if isinstance(src, _JobsSource):
            yield from _job_samples(src)
            continue
        st = src.stats()
        q = {"queue": src.name}
        yield "fastq_up", q, 0.0 if st is None else 1.0
        if st is None:
            continue
        yield "fastq_head_offset", q, st["head"]
        yield "fastq_oldest_offset", q, st["oldest"]
        yield "fastq_records_appended_total", q, st["head"]
        if st["durable"]:
            yield "fastq_durable_offset", q, st["durable_offset"]
            try:
                yield "fastq_disk_bytes", q, _ops.store_bytes(src.name)
            except OSError:
                pass
        else:
            yield "fastq_capacity_bytes", q, st["capacity"]
            yield "fastq_used_bytes", q, st["bytes_used"]
        counts: Dict[Tuple[str, str], int] = {}
        for m in st["members"]:
            if not m["self"]:
                k = (m["role"], "alive" if m["alive"] else "dead")
                counts[k] = counts.get(k, 0) + 1
        for role in ("producer", "consumer", "queue"):
            for state in ("alive", "dead"):
                yield "fastq_members", dict(q, role=role, state=state), counts.get((role, state), 0)
        for gname, g in st["groups"].items():
            labels = dict(q, group=gname)
            for metric, field in _GROUP_FIELDS.items():
                yield metric, labels, g[field]


class FastqCollector:
    """A prometheus_client collector for the given queues (names, durable log
    paths, or open ``Log`` objects)."""

    def __init__(self, targets: Sequence[Union[str, Log]]) -> None:
        self._sources: List[Any] = [_JobsSource(t) if is_jobs_app(t) else _Source(t) for t in targets]
        self._lock = threading.Lock()  # scrapes of one exporter, not the queues: they are never locked

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
        with self._lock:
            got = list(samples(self._sources))
        fams: Dict[str, Any] = {}
        for metric, labels, value in got:
            fam = fams.get(metric)
            if fam is None:
                kind, doc, _ = METRICS[metric]
                keys = list(labels)
                if kind == "counter":
                    fam = CounterMetricFamily(metric[: -len("_total")], doc, labels=keys)
                else:
                    fam = GaugeMetricFamily(metric, doc, labels=keys)
                fams[metric] = fam
            fam.add_metric(list(labels.values()), float(value))
        yield from fams.values()

    def describe(self) -> List[Any]:
        return []  # unchecked collector: the label sets depend on the queues' groups

    def close(self) -> None:
        for s in self._sources:
            s.close()


def serve(targets: Sequence[str], port: int = 9464, addr: str = "127.0.0.1",
          ready: Optional[threading.Event] = None, stop: Optional[threading.Event] = None) -> None:
    """Serve ``/metrics`` for ``targets`` until interrupted (or ``stop`` is set)."""
    try:
        from prometheus_client import CollectorRegistry, start_http_server
    except ImportError:
        raise _ops.OpsError('the exporter needs prometheus-client: pip install "fastq[prometheus]"') from None
    if not 0 < port < 65536:
        raise _ops.OpsError(f"--port must be 1..65535, not {port}")
    registry = CollectorRegistry(auto_describe=False)
    collector = FastqCollector(targets)
    registry.register(collector)
    server = start_http_server(port, addr=addr, registry=registry)
    print(f"fastq exporter: http://{addr}:{port}/metrics for {', '.join(targets)}", flush=True)
    if ready is not None:
        ready.set()
    try:
        while not (stop is not None and stop.wait(0.5)):
            if stop is None:
                time.sleep(3600)
    finally:
        if isinstance(server, tuple):
            server[0].shutdown()
        collector.close()
