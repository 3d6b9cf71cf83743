"""fastq.jobs — background jobs on fastq's durable logs: tasks, a worker pool
that scales, retries with backoff, dead letters, deduplicated and delayed
jobs, and results any process can wait for.  No broker to run.

>>> import tempfile
>>> from fastq.jobs import App
>>> app = App(tempfile.mkdtemp())
>>> @app.task
... def add(a, b):
...     return a + b
>>> job = add.delay(2, 3)
>>> job.status()
'queued'
>>> app.run_pending()           # or: python -m fastq worker myapp:app --processes 4
1
>>> job.wait(timeout=5)
5
>>> app.close()

Layout of an app directory (docs/jobs.md):

    <path>/queues/<queue>/    a durable log per queue (fastq.open(durable=True));
                              its group "workers" is shared by every worker process
    <path>/queues/<queue>/dlq the dead-letter log of that group
    <path>/results.sqlite3    outcomes: status, return value (pickled), error text

A job is one record of its queue's log: data = pickle((args, kwargs)),
header "task" = the task's name.  Its id is "<queue>:<offset>".  Its state is
read from the log itself (lock-free): queued, running (leased by a worker),
retrying (nacked with a backoff, or its worker died), then succeeded or dead
from the results store, which a worker writes BEFORE it acks the job (a
crash in between runs the job again: at-least-once).
"""
from __future__ import annotations

import asyncio
import datetime as _dt
import functools
import inspect
import logging
import os
import pickle
import signal
import sqlite3
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple, Type, Union

from . import _core
from .log import Backoff, Consumer, Log, Message, _dedup_key_bytes, open as _open_log

__all__ = ["App", "Task", "Job", "Backoff", "JobFailed", "Pool", "STATUSES"]

log = logging.getLogger("fastq.jobs")

GROUP = "workers"
WINDOW = 16384           # jobs in flight, retrying or delayed per queue before later ones wait
STATUSES = ("queued", "running", "retrying", "succeeded", "dead", "expired")
_FINAL = ("succeeded", "dead")


class JobFailed(Exception):
    """``Job.wait()`` of a job that ended dead (retries exhausted, or an error
    not in ``retry_on``): ``error`` is the exception text of its last attempt."""

    def __init__(self, job: "Job", error: Optional[str]) -> None:
        super().__init__(f"job {job.id} ({job.task}) failed: {error}")
        self.job = job
        self.error = error


@dataclass
class _Row:
    status: str
    value: Optional[bytes]
    error: Optional[str]
    attempts: int
    finished: float
    task: str


class _Results:
    """The results store: one SQLite database (WAL) per app, one row per job
    outcome.  Writers batch rows in one transaction; every process opens its
    own connection (never across a fork)."""

    def __init__(self, path: str, ttl: float) -> None:
        self.path = path
        self.ttl = ttl
        self._pid = -1
        self._db: Optional[sqlite3.Connection] = None
        self._lock = threading.Lock()
        self.readonly = False   # an observer: never creates the database

    def _conn(self) -> sqlite3.Connection:
        if self._pid != os.getpid() or self._db is None:
            if self.readonly and not os.path.exists(self.path):
                raise FileNotFoundError(self.path)
            if not os.path.exists(self.path):
                try:  # created 0600, never through a symlink
                    os.close(os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW, 0o600))
                except FileExistsError:
                    pass
            db = sqlite3.connect(self.path, timeout=60.0, isolation_level=None, check_same_thread=False)
            # Switching to WAL (once: the mode is kept in the file) and creating
            # the schema can answer "locked" without waiting while another
            # process does the same: retried, bounded.
            for attempt in range(500):
                try:
                    if db.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                        db.execute("PRAGMA journal_mode=WAL")
                    db.execute("PRAGMA synchronous=NORMAL")
                    db.execute("CREATE TABLE IF NOT EXISTS results (queue TEXT NOT NULL, job INTEGER NOT NULL, "
                               "task TEXT NOT NULL, status TEXT NOT NULL, value BLOB, error TEXT, "
                               "attempts INTEGER, finished REAL, expires REAL, PRIMARY KEY (queue, job)) "
                               "WITHOUT ROWID")
                    db.execute("CREATE INDEX IF NOT EXISTS results_expires ON results (expires)")
                    break
                except sqlite3.OperationalError as e:
                    if attempt == 499 or not ("locked" in str(e) or "busy" in str(e)):
                        db.close()
                        raise
                    time.sleep(0.01)
            self._db, self._pid = db, os.getpid()
        return self._db

    def put_many(self, rows: List[tuple]) -> None:
        """rows: (queue, job, task, status, value, error, attempts)."""
        if not rows:
            return
        now = time.time()
        with self._lock:
            db = self._conn()
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany("INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                               [r + (now, now + self.ttl) for r in rows])
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def note(self, queue: str, job: int, error: str) -> None:
        """A "retrying" row with ``error`` unless the job already has a final
        one (the supervisor's timeout note races with the worker's result)."""
        now = time.time()
        with self._lock:
            self._conn().execute(
                "INSERT INTO results VALUES (?, ?, '?', 'retrying', NULL, ?, 0, ?, ?) ON CONFLICT (queue, job) "
                "DO UPDATE SET error = excluded.error, finished = excluded.finished, expires = excluded.expires "
                "WHERE status NOT IN ('succeeded', 'dead')", (queue, job, error, now, now + self.ttl))

    def get(self, queue: str, job: int) -> Optional[_Row]:
        if self.readonly and not os.path.exists(self.path):
            return None
        with self._lock:
            r = self._conn().execute("SELECT status, value, error, attempts, finished, task, expires FROM results "
                                     "WHERE queue = ? AND job = ?", (queue, job)).fetchone()
        if r is None or r[6] < time.time():
            return None
        return _Row(r[0], r[1], r[2], r[3], r[4], r[5])

    def counts(self, queue: str) -> Dict[str, int]:
        if self.readonly and not os.path.exists(self.path):
            return {}
        with self._lock:
            rows = self._conn().execute("SELECT status, COUNT(*) FROM results WHERE queue = ? AND expires >= ? "
                                        "GROUP BY status", (queue, time.time())).fetchall()
        return dict(rows)

    def purge(self, queue: Optional[str] = None, everything: bool = False) -> int:
        """Delete expired rows (or every row, ``everything``); returns how many."""
        if self.readonly and not os.path.exists(self.path):
            return 0
        with self._lock:
            db = self._conn()
            where, args = ("1", ()) if everything else ("expires < ?", (time.time(),))
            if queue is not None:
                where, args = f"({where}) AND queue = ?", args + (queue,)
            return db.execute(f"DELETE FROM results WHERE {where}", args).rowcount

    def close(self) -> None:
        if self._db is not None and self._pid == os.getpid():
            self._db.close()
        self._db = None


class Task:
    """A function registered with :meth:`App.task`.  Calling it runs it here
    and now; ``delay``/``delay_for``/``delay_at`` enqueue a job."""

    def __init__(self, app: "App", fn: Callable[..., Any], name: str, queue: str, retry: Backoff,
                 max_deliveries: int, timeout: Optional[float], retry_on: Tuple[Type[BaseException], ...],
                 dedup: Optional[Callable[..., Any]], dedup_window: Optional[float], store_result: bool) -> None:
        self.app = app
        self.fn = fn
        self.name = name
        self.queue = queue
        self.retry = retry
        self.max_deliveries = max_deliveries
        self.timeout = timeout
        self.retry_on = retry_on
        self.dedup = dedup
        self.dedup_window = dedup_window
        self.store_result = store_result
        self.is_async = inspect.iscoroutinefunction(fn)
        functools.update_wrapper(self, fn)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)  # an async task returns its coroutine, as the function does

    def delay(self, *args: Any, **kwargs: Any) -> "Job":
        """Enqueue a job running ``fn(*args, **kwargs)`` as soon as a worker is free."""
        return self.enqueue(args, kwargs)

    def delay_for(self, seconds: float, *args: Any, **kwargs: Any) -> "Job":
        """Enqueue a job that no worker starts before ``seconds`` from now."""
        return self.enqueue(args, kwargs, delay=seconds)

    def delay_at(self, when: _dt.datetime, *args: Any, **kwargs: Any) -> "Job":
        """Enqueue a job that no worker starts before the datetime ``when``."""
        return self.enqueue(args, kwargs, at=when)

    def enqueue(self, args: Iterable[Any] = (), kwargs: Optional[Dict[str, Any]] = None, *,
                delay: Optional[float] = None, at: Optional[_dt.datetime] = None,
                dedup_key: Optional[Union[str, bytes]] = None) -> "Job":
        """The general form: ``dedup_key`` overrides the task's ``dedup``
        function.  With a dedup key, a job enqueued again within the window
        (from any process) is not enqueued: the original job is returned."""
        args = tuple(args)
        kwargs = dict(kwargs or {})
        data = pickle.dumps((args, kwargs), protocol=5)
        if dedup_key is None and self.dedup is not None:
            dedup_key = self.dedup(*args, **kwargs)
        q = self.app._log(self.queue)
        headers = {"task": self.name}
        if dedup_key is not None:  # scoped to the task
            off = q.append(data, headers=headers, delay=delay, not_before=at,
                           dedup_key=self.name.encode() + b"\0" + _dedup_key_bytes(dedup_key),
                           dedup_window=self.dedup_window)
        else:
            off = q.append(data, headers=headers, delay=delay, not_before=at)
        return Job(self.app, self.queue, off, self.name)

    def __repr__(self) -> str:
        return f"<fastq.jobs.Task {self.name} queue={self.queue!r}>"


class Job:
    """A handle on one enqueued job, usable from any process
    (``app.job(job.id)``)."""

    def __init__(self, app: "App", queue: str, offset: int, task: Optional[str] = None) -> None:
        self.app = app
        self.queue = queue
        self.offset = offset
        self.task = task

    @property
    def id(self) -> str:
        return f"{self.queue}:{self.offset}"

    def status(self) -> str:
        """"queued", "running", "retrying", "succeeded", "dead", or "expired"
        (finished longer ago than the app's ``result_ttl``)."""
        return self.info()["status"]

    def info(self) -> Dict[str, Any]:
        """status, attempts (deliveries so far), error (text of the last
        failure, if any), finished (a time.time(), if final)."""
        row = self.app._results.get(self.queue, self.offset)
        if row is not None and row.status in _FINAL:
            return {"status": row.status, "attempts": row.attempts, "error": row.error, "finished": row.finished}
        ring = self.app._log(self.queue)._ring
        state, deliveries = ring._lease_state(self.app._group_index(self.queue), self.offset)
        if state == "finished":
            row = self.app._results.get(self.queue, self.offset)  # written before the ack
            if row is not None:
                return {"status": row.status, "attempts": row.attempts, "error": row.error,
                        "finished": row.finished}
            return {"status": "expired", "attempts": deliveries, "error": None, "finished": None}
        status = {"leased": "running", "retry": "retrying" if deliveries else "queued"}.get(state, "queued")
        return {"status": status, "attempts": deliveries, "error": row.error if row is not None else None,
                "finished": None}

    def wait(self, timeout: Optional[float] = None) -> Any:
        """Block until the job is final; return its value (succeeded) or raise
        :class:`JobFailed` (dead); ``TimeoutError`` if ``timeout`` passed first.
        Polls the results store with a backoff from 0.5 to 20 ms."""
        deadline = None if timeout is None else time.monotonic() + float(timeout)
        pause = 0.0005
        while True:
            row = self.app._results.get(self.queue, self.offset)
            if row is not None and row.status in _FINAL:
                if row.status == "dead":
                    raise JobFailed(self, row.error)
                return pickle.loads(row.value) if row.value is not None else None
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"job {self.id} is still {self.status()} after {timeout} s")
            if pause >= 0.02 and self.info()["status"] == "expired":
                raise LookupError(f"job {self.id} finished longer ago than the app's result_ttl: "
                                  "its result is no longer kept")
            time.sleep(pause if deadline is None else max(min(pause, deadline - time.monotonic()), 0))
            pause = min(pause * 2, 0.02)

    def result(self, timeout: Optional[float] = None) -> Any:
        """Alias of :meth:`wait` (concurrent.futures spelling)."""
        return self.wait(timeout)

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, Job) and (other.queue, other.offset) == (self.queue, self.offset)

    def __hash__(self) -> int:
        return hash((self.queue, self.offset))

    def __repr__(self) -> str:
        return f"<fastq.jobs.Job {self.id} {self.task or ''}>"


class App:
    """A jobs application: a directory of durable queues and a results store.

    ``result_ttl``: seconds a job's outcome is kept (default one day);
    ``fsync``/``fsync_interval``: the queues' durability (see
    :func:`fastq.open`; "interval" by default: a power cut loses at most
    about ``fsync_interval`` of enqueued jobs); ``dedup_window``: default
    window of deduplicated jobs (seconds)."""

    def __init__(self, path: Union[str, os.PathLike], *, result_ttl: float = 86400.0, fsync: str = "interval",
                 fsync_interval: float = 0.05, dedup_window: float = 300.0, dedup_slots: int = 1 << 16) -> None:
        self.path = os.path.abspath(os.fspath(path))
        if not (isinstance(result_ttl, (int, float)) and 0 < result_ttl <= 10 * 365 * 86400):
            raise ValueError("result_ttl must be a positive number of seconds")
        os.makedirs(os.path.join(self.path, "queues"), mode=0o700, exist_ok=True)
        self.tasks: Dict[str, Task] = {}
        self._fsync = fsync
        self._fsync_interval = fsync_interval
        self._dedup = (dedup_window, dedup_slots)
        self._logs: Dict[str, Log] = {}
        self._gidx: Dict[str, int] = {}
        self._pid = os.getpid()
        self._results = _Results(os.path.join(self.path, "results.sqlite3"), float(result_ttl))
        self._results.counts("default")   # the store and its schema exist before any worker starts
        self._observer = False

    @classmethod
    def observe(cls, path: Union[str, os.PathLike]) -> "App":
        """An App for monitoring and administration (the CLI, the exporter):
        it opens existing queues as observers (no member slot, no group
        joined) and creates nothing."""
        path = os.path.abspath(os.fspath(path))
        if not os.path.isdir(os.path.join(path, "queues")):
            raise FileNotFoundError(f"no fastq.jobs app at {path!r} (no queues directory)")
        app = cls.__new__(cls)
        app.path, app.tasks, app._fsync, app._fsync_interval = path, {}, "never", 0.05
        app._dedup, app._logs, app._gidx, app._pid = (300.0, 0), {}, {}, os.getpid()
        app._results = _Results(os.path.join(path, "results.sqlite3"), 86400.0)
        app._results.readonly = True
        app._observer = True
        return app

    # -- tasks
    def task(self, fn: Optional[Callable[..., Any]] = None, *, name: Optional[str] = None, queue: str = "default",
             retry: Optional[Backoff] = None, max_deliveries: int = 3, timeout: Optional[float] = None,
             retry_on: Union[Type[BaseException], Tuple[Type[BaseException], ...]] = (Exception,),
             dedup: Optional[Callable[..., Any]] = None, dedup_window: Optional[float] = None,
             store_result: bool = True) -> Any:
        """Register ``fn`` as a task (a decorator, with or without arguments).

        ``retry``: the delay between attempts (a :class:`Backoff`, default
        1 s doubling to 5 min, ±10 %); ``max_deliveries``: attempts at most
        (a worker killed or timed out counts as one); ``timeout``: seconds
        one attempt may run before its worker process is killed and replaced
        (None = no limit); ``retry_on``: exception types worth retrying
        (others dead-letter at once); ``dedup``: a function of the task's
        arguments returning a key: a job with the same key enqueued again
        within ``dedup_window`` is not enqueued twice; ``store_result``:
        False keeps only the status, not the return value."""
        def register(f: Callable[..., Any]) -> Task:
            if not callable(f):
                raise TypeError("app.task decorates a function")
            tname = name or f"{f.__module__}.{f.__qualname__}"
            if not isinstance(queue, str) or not _core.name_valid(queue):
                raise ValueError(f"invalid queue name {queue!r}: use [A-Za-z0-9._-]")
            if isinstance(max_deliveries, bool) or not isinstance(max_deliveries, int) or \
                    not 1 <= max_deliveries <= 1000:
                raise ValueError("max_deliveries must be an int from 1 to 1000")
            if timeout is not None and not (isinstance(timeout, (int, float)) and timeout > 0):
                raise ValueError("timeout must be None or a positive number of seconds")
            ro = retry_on if isinstance(retry_on, tuple) else (retry_on,)
            if not all(isinstance(t, type) and issubclass(t, BaseException) for t in ro):
                raise TypeError("retry_on must be an exception type or a tuple of them")
            if dedup is not None and not callable(dedup):
                raise TypeError("dedup must be a function of the task's arguments")
            rt = retry if retry is not None else Backoff(initial=1.0, maximum=300.0, multiplier=2.0, jitter=0.1)
            if not isinstance(rt, Backoff):
                raise TypeError("retry must be a fastq.Backoff")
            t = Task(self, f, tname, queue, rt, max_deliveries, timeout, ro, dedup, dedup_window, store_result)
            if tname in self.tasks and self.tasks[tname].fn is not f:
                raise ValueError(f"a task named {tname!r} is already registered")
            self.tasks[tname] = t
            return t
        return register(fn) if fn is not None else register

    def job(self, job_id: str) -> Job:
        """The job of an id ``"<queue>:<offset>"`` (``Job.id``)."""
        queue, sep, off = str(job_id).rpartition(":")
        if not sep or not queue or not off.isdigit():
            raise ValueError(f"not a job id: {job_id!r} (expected '<queue>:<offset>')")
        if queue not in self.queues():
            raise ValueError(f"no job {job_id!r}: the app has no queue {queue!r}")
        head = self._log(queue).stats()["head"]
        if int(off) >= head:
            raise ValueError(f"no job {job_id!r}: queue {queue!r} has {head} jobs")
        return Job(self, queue, int(off))

    def queues(self) -> List[str]:
        """The queues that exist in the app directory."""
        d = os.path.join(self.path, "queues")
        return sorted(n for n in os.listdir(d) if os.path.exists(os.path.join(d, n, "control")))

    # -- plumbing (per process: handles are reopened after a fork)
    def _after_fork(self) -> None:
        """In a forked child: fresh handles and a fresh results connection
        (a lock held by a parent's thread at the fork would never be
        released here); the parent's objects are kept, not closed, so that
        nothing of the parent's is torn down from the child."""
        if self._pid != os.getpid():
            self._stale = [self._logs, self._results]
            self._logs, self._gidx, self._pid = {}, {}, os.getpid()
            self._results = _Results(self._results.path, self._results.ttl)

    def _log(self, queue: str) -> Log:
        self._after_fork()
        lg = self._logs.get(queue)
        if lg is None:
            if not _core.name_valid(queue):
                raise ValueError(f"invalid queue name {queue!r}")
            if self._observer:
                from . import _ops
                lg = _ops.open_target(os.path.join(self.path, "queues", queue))
                self._logs[queue] = lg
                return lg
            lg = _open_log(os.path.join(self.path, "queues", queue), durable=True, fsync=self._fsync,
                           fsync_interval=self._fsync_interval, max_groups=4, window=WINDOW,
                           dedup_window=self._dedup[0], dedup_slots=self._dedup[1])
            self._logs[queue] = lg
        return lg

    def _group(self, queue: str):
        return self._log(queue).group(GROUP, start="earliest", visibility_timeout=None, max_deliveries=None,
                                      dead_letter=True, window=WINDOW)

    def _group_index(self, queue: str) -> int:
        self._after_fork()
        g = self._gidx.get(queue)
        if g is None:
            if self._observer:
                g = self._log(queue)._ring._group_find(GROUP)
            else:
                g = self._group(queue)._index
            self._gidx[queue] = g
        return g

    # -- running jobs in this process (tests, scripts)
    def run_pending(self, queue: str = "default", *, limit: Optional[int] = None, timeout: float = 0.0) -> int:
        """Run the jobs of ``queue`` that are due now in this process, as one
        worker would (retries, dead letters, results; no timeout kill);
        returns how many attempts ran.  Waits up to ``timeout`` for a first job."""
        w = _Worker(self, queue, 0, None, prefetch=16)
        try:
            return w.drain(limit, timeout)
        finally:
            w.close()

    def stats(self, queue: str = "default") -> Dict[str, Any]:
        """Counts of one queue: from the log (lag, in flight, retrying,
        delivered, dead-lettered, workers) and from the results store."""
        st = self._log(queue).stats()
        g = st["groups"].get(GROUP) or {}
        return {"queue": queue, "enqueued": st["head"], "backlog": g.get("lag", st["head"]),
                "running": g.get("pending", 0), "delivered": g.get("delivered", 0),
                "retried": g.get("redelivered", 0), "dead_lettered": g.get("dead_lettered", 0),
                "workers": g.get("consumers", 0), "results": self._results.counts(queue),
                "oldest_age": g.get("oldest_age", 0.0)}

    def close(self) -> None:
        for lg in self._logs.values():
            lg.close()
        self._logs.clear()
        self._gidx.clear()
        self._results.close()

    def __enter__(self) -> "App":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<fastq.jobs.App {self.path} tasks={len(self.tasks)}>"


# ----------------------------------------------------------------------------
# workers

class _Slots:
    """Per-worker words shared with the supervisor (a RawArray made before
    the workers are forked): the job a worker runs (offset + 1, 0 = idle),
    its deadline (CLOCK_MONOTONIC ns, 0 = none), and when it last finished a
    job.  Aligned 8-byte words, one writer each (the worker; the supervisor
    only at spawn): every read is whole.  The worker writes the deadline
    before the offset and clears the offset first, so a reader that sees an
    offset sees that job's deadline or a later one (checked again before a
    kill, Pool._tick)."""
    N = 3   # words per worker

    def __init__(self, n: int) -> None:
        import multiprocessing as mp
        self.a = mp.RawArray("q", n * self.N)

    def set_running(self, i: int, offset: int, deadline_ns: int) -> None:
        self.a[i * self.N + 1] = deadline_ns
        self.a[i * self.N] = offset + 1

    def set_idle(self, i: int) -> None:
        self.a[i * self.N] = 0
        self.a[i * self.N + 1] = 0
        self.a[i * self.N + 2] = time.monotonic_ns()

    def reset(self, i: int) -> None:
        self.a[i * self.N] = self.a[i * self.N + 1] = 0
        self.a[i * self.N + 2] = time.monotonic_ns()

    def running(self, i: int) -> Tuple[int, int]:
        return self.a[i * self.N] - 1, self.a[i * self.N + 1]

    def last_done(self, i: int) -> int:
        return self.a[i * self.N + 2]


class _Worker:
    """The consumer loop of one worker process (or of ``App.run_pending``)."""

    def __init__(self, app: App, queue: str, slot: int, slots: Optional[_Slots], prefetch: int = 64) -> None:
        self.app = app
        self.queue = queue
        self.slot = slot
        self.slots = slots
        self.prefetch = max(1, int(prefetch))
        self.stopping = False
        self.consumer: Consumer = app._group(queue).consumer(name=f"worker-{slot}-{os.getpid()}")
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._rows: List[tuple] = []
        self._acks: List[Message] = []
        self._batch = 1

    # one pass: take, run, record, ack
    def step(self, timeout: float) -> int:
        msgs = self.consumer.get_many(self._batch, timeout=timeout)
        ran = 0
        t_start = t_flush = time.monotonic()
        for i, m in enumerate(msgs):
            if self.stopping:  # drain: what was not started goes back to the group at once
                self._flush()
                for rest in msgs[i:]:
                    rest._nack_raw(0.0)
                break
            self._run(m)
            ran += 1
            now = time.monotonic()
            if now - t_flush > 0.005:
                self._flush()
                t_flush = now
        self._flush()
        # take as many as we run in ~5 ms: one at a time for slow jobs (a
        # drain or a crash then releases little), up to prefetch for fast ones
        if ran:
            per = (time.monotonic() - t_start) / ran
            self._batch = max(1, min(self.prefetch, int(0.005 / max(per, 1e-7))))
        return ran

    def drain(self, limit: Optional[int], timeout: float) -> int:
        total = 0
        first = True
        while limit is None or total < limit:
            n = self.step(timeout if first else 0.0)
            first = False
            if not n:
                break
            total += n
        return total

    def _run(self, m: Message) -> None:
        name = m.headers.get("task")
        task = self.app.tasks.get(name) if isinstance(name, str) else None
        jid = f"{self.queue}:{m.offset}"
        if task is None:
            self._dead(m, name or "?", f"no task named {name!r} is registered in this worker's app", None)
            return
        if m.deliveries > task.max_deliveries:
            prev = self.app._results.get(self.queue, m.offset)
            why = prev.error if prev is not None and prev.error else "its worker died or was killed"
            self._dead(m, task.name, f"{why} (attempt {m.deliveries - 1} of {task.max_deliveries})",
                       task, attempts=m.deliveries - 1)
            return
        if self.slots is not None:
            dl = time.monotonic_ns() + int(task.timeout * 1e9) if task.timeout else 0
            self.slots.set_running(self.slot, m.offset, dl)
        t0 = time.perf_counter()
        try:
            args, kwargs = pickle.loads(m.data)
            if task.is_async:
                if self._loop is None:
                    self._loop = asyncio.new_event_loop()
                value = self._loop.run_until_complete(task.fn(*args, **kwargs))
            else:
                value = task.fn(*args, **kwargs)
            raw = pickle.dumps(value, protocol=5) if task.store_result else None
        except Exception as e:  # the job failed (a BaseException such as SystemExit ends the worker)
            ms = (time.perf_counter() - t0) * 1e3
            err = "".join(traceback.format_exception_only(type(e), e)).strip()
            if isinstance(e, task.retry_on) and m.deliveries < task.max_deliveries:
                delay = task.retry.delay(m.deliveries)
                self._flush()
                self.app._results.put_many([(self.queue, m.offset, task.name, "retrying", None, err,
                                             m.deliveries)])
                m._nack_raw(delay)
                log.info("job %s %s failed in %.1f ms (attempt %d of %d), retrying in %.2f s: %s", jid,
                         task.name, ms, m.deliveries, task.max_deliveries, delay, err)
            else:
                self._dead(m, task.name, err, task, attempts=m.deliveries,
                           tb="".join(traceback.format_exception(type(e), e, e.__traceback__)))
            self._idle()
            return
        ms = (time.perf_counter() - t0) * 1e3
        self._rows.append((self.queue, m.offset, task.name, "succeeded", raw, None, m.deliveries))
        self._acks.append(m)
        self._idle()
        if log.isEnabledFor(logging.INFO):
            log.info("job %s %s succeeded in %.1f ms (attempt %d)", jid, task.name, ms, m.deliveries)

    def _idle(self) -> None:
        if self.slots is not None:
            self.slots.set_idle(self.slot)

    def _dead(self, m: Message, task: str, err: str, t: Optional[Task], attempts: Optional[int] = None,
              tb: Optional[str] = None) -> None:
        self._flush()
        self.app._results.put_many([(self.queue, m.offset, task, "dead", None, err,
                                     m.deliveries if attempts is None else attempts)])
        self.consumer._dead_letter(m, err if tb is None else f"{err}\n{tb}")
        log.info("job %s:%d %s dead after %d attempt(s): %s", self.queue, m.offset, task,
                 m.deliveries if attempts is None else attempts, err)

    def _flush(self) -> None:
        """Results first, then the acks: a crash between runs the jobs again."""
        if self._rows:
            self.app._results.put_many(self._rows)
            self._rows = []
        if self._acks:
            self.consumer.ack(self._acks)
            self._acks = []

    def close(self) -> None:
        try:
            self._flush()
        finally:
            self.consumer.close()
            if self._loop is not None:
                self._loop.close()


def _die_with_parent(parent: int) -> None:
    """Linux: SIGTERM (a drain) when the supervisor dies, however it dies."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0)   # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # it died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _worker_main(app: App, queue: str, slot: int, slots: _Slots, prefetch: int, parent: int) -> None:
    """Entry of a forked worker process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # the supervisor decides
    w: Optional[_Worker] = None
    asked = [False]

    def on_term(signum: int, frame: Any) -> None:
        asked[0] = True
        if w is not None:
            w.stopping = True

    signal.signal(signal.SIGTERM, on_term)
    _die_with_parent(parent)
    app._after_fork()
    code = 0
    try:
        w = _Worker(app, queue, slot, slots, prefetch)
        w.stopping = w.stopping or asked[0]
        while not w.stopping:
            w.step(0.2)
    except BaseException:
        log.exception("worker %d (pid %d) stopped by an error", slot, os.getpid())
        code = 1
    finally:
        if w is not None:
            w.close()  # unstarted leases go back to the group now
        app.close()
        logging.shutdown()
    os._exit(code)


class Pool:
    """Worker processes consuming one queue of an app: ``processes`` to start
    with, ``autoscale=(low, high)`` to add a worker while the backlog grows or
    would take longer than ``scale_target`` seconds to drain at the current
    rate, and retire workers idle for ``idle_timeout`` once there is no
    backlog (hysteresis: ``scale_interval`` seconds between two changes).  A job over its task's
    ``timeout`` has its worker killed (SIGKILL) and replaced; the job goes
    back to the group and is retried or dead-lettered.  ``stop()`` (and
    SIGTERM/SIGINT to ``run()``) drains: running jobs finish, unstarted ones
    go back to the group, workers exit 0."""

    def __init__(self, app: App, queue: str = "default", *, processes: Optional[int] = None,
                 autoscale: Optional[Tuple[int, int]] = None, prefetch: int = 64, scale_interval: float = 1.0,
                 idle_timeout: float = 10.0, scale_target: float = 1.0) -> None:
        if not isinstance(app, App):
            raise TypeError("Pool needs a fastq.jobs.App")
        if autoscale is not None:
            lo, hi = autoscale
            if not (isinstance(lo, int) and isinstance(hi, int) and 0 <= lo <= hi and hi >= 1):
                raise ValueError("autoscale must be (low, high) with 0 <= low <= high, high >= 1")
        else:
            n = processes if processes is not None else (os.cpu_count() or 1)
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ValueError("processes must be a positive int")
            lo = hi = n
        self.app = app
        self.queue = queue
        self.low, self.high = lo, hi
        start = processes if processes is not None else lo
        self.start_n = min(max(start, lo, 1 if hi else 0), hi)
        self.prefetch = prefetch
        self.scale_interval = float(scale_interval)
        self.idle_timeout = float(idle_timeout)
        self.scale_target = float(scale_target)
        self.slots = _Slots(hi)
        self.procs: Dict[int, Any] = {}      # slot -> Process
        self.retiring: Dict[int, Any] = {}   # slot -> Process draining after a scale-down
        self.killed = 0                      # workers killed for a job over its timeout
        self._stop = threading.Event()
        self._last_scale = 0.0
        self._backlog: List[Tuple[float, int, int]] = []   # (when, backlog, jobs finished) samples
        self._thread: Optional[threading.Thread] = None
        app._group(queue)  # create the queue and its group before any worker starts

    # -- process management
    def _spawn(self, slot: int) -> None:
        import multiprocessing as mp
        self.slots.reset(slot)
        p = mp.get_context("fork").Process(target=_worker_main, name=f"fastq-worker-{slot}",
                                           args=(self.app, self.queue, slot, self.slots, self.prefetch, os.getpid()))
        p.daemon = False
        p.start()
        self.procs[slot] = p

    def _free_slot(self) -> Optional[int]:
        for i in range(self.high):
            if i not in self.procs and i not in self.retiring:
                return i
        return None

    @property
    def size(self) -> int:
        """Worker processes running (not counting those draining)."""
        return len(self.procs)

    def start(self) -> "Pool":
        """Start the workers and a supervisor thread; returns self."""
        for _ in range(self.start_n):
            self._spawn(self._free_slot())
        self._thread = threading.Thread(target=self._supervise, name="fastq-pool", daemon=True)
        self._thread.start()
        return self

    def _supervise(self) -> None:
        next_purge = 0.0
        while not self._stop.wait(0.05):
            try:
                self._tick()
                if time.monotonic() >= next_purge:
                    self.app._results.purge()
                    next_purge = time.monotonic() + 60.0
            except Exception:
                log.exception("pool supervisor")

    def _tick(self) -> None:
        now_ns = time.monotonic_ns()
        for slot, p in list(self.procs.items()):
            off, dl = self.slots.running(slot)
            if p.exitcode is not None:  # died (crash, kill -9): its jobs are redelivered by the log
                del self.procs[slot]
                log.warning("worker %d (pid %s) exited with %s; starting another", slot, p.pid, p.exitcode)
                if len(self.procs) < max(self.low, 1) or off >= 0:
                    self._spawn(slot)
                continue
            if off >= 0 and dl and now_ns > dl:
                over = (now_ns - dl) / 1e9
                self.app._results.note(self.queue, off, "timed out (its worker was killed)")
                if self.slots.running(slot) != (off, dl):
                    continue  # it finished meanwhile: nothing to kill
                self._kill(slot, p)
                self.killed += 1
                log.warning("job %s:%d timed out (%.1f s over); worker %d (pid %s) killed and replaced",
                            self.queue, off, over, slot, p.pid)
                self._spawn(slot)
        for slot, p in list(self.retiring.items()):
            if p.exitcode is not None:
                del self.retiring[slot]
        self._autoscale()

    def _kill(self, slot: int, p: Any) -> None:
        try:
            os.kill(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.join(5)
        self.procs.pop(slot, None)

    def _autoscale(self) -> None:
        if self.low == self.high or self._stop.is_set():
            return
        st = self.app._log(self.queue).stats()["groups"].get(GROUP, {})
        backlog = max(st.get("lag", 0) - st.get("pending", 0), 0)
        now = time.monotonic()
        done = st.get("acked", 0) + st.get("dead_lettered", 0)
        self._backlog = [(t, b, d) for t, b, d in self._backlog if now - t <= max(self.scale_interval, 0.5)]
        self._backlog.append((now, backlog, done))
        if now - self._last_scale < self.scale_interval:
            return
        # up: the backlog would take longer than scale_target to drain at the
        # rate jobs finished over the last interval (or it grows)
        t0, b0, d0 = self._backlog[0]
        rate = (done - d0) / (now - t0) if now > t0 else 0.0
        slow = backlog > 0 and (rate <= 0 or backlog / rate > self.scale_target or backlog > b0)
        if (slow or (backlog > 0 and not self.procs)) and len(self.procs) < self.high:
            slot = self._free_slot()
            if slot is not None:
                self._spawn(slot)
                self._last_scale = now
                log.info("autoscale: backlog %d, %.0f jobs/s: %d workers", backlog, rate, len(self.procs))
            return
        if len(self.procs) > self.low and backlog == 0:
            idle_ns = int(self.idle_timeout * 1e9)
            for slot, p in sorted(self.procs.items(), reverse=True):
                off, _ = self.slots.running(slot)
                if off < 0 and time.monotonic_ns() - self.slots.last_done(slot) > idle_ns:
                    os.kill(p.pid, signal.SIGTERM)   # drains: finishes nothing running, exits 0
                    self.retiring[slot] = self.procs.pop(slot)
                    self._last_scale = now
                    log.info("autoscale: worker %d idle for %.0f s: %d workers", slot, self.idle_timeout,
                             len(self.procs))
                    return

    def stop(self, timeout: Optional[float] = None) -> bool:
        """Drain and stop every worker; True if all exited 0 within
        ``timeout`` (default: the longest task timeout + 10 s).  Workers still
        running a job then are killed (the job is redelivered)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if timeout is None:
            tmax = [t.timeout for t in self.app.tasks.values() if t.queue == self.queue and t.timeout]
            timeout = (max(tmax) if tmax else 30.0) + 10.0
        everyone = list(self.procs.items()) + list(self.retiring.items())
        for _, p in everyone:
            if p.exitcode is None:
                try:
                    os.kill(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + timeout
        ok = True
        for slot, p in everyone:
            # timeouts still apply while draining
            while p.exitcode is None and time.monotonic() < deadline:
                off, dl = self.slots.running(slot)
                if off >= 0 and dl and time.monotonic_ns() > dl:
                    break
                p.join(0.05)
            if p.exitcode is None:
                ok = False
                os.kill(p.pid, signal.SIGKILL)
                p.join(5)
            ok = ok and p.exitcode == 0
        self.procs.clear()
        self.retiring.clear()
        return ok

    def run(self) -> int:
        """Start, serve until SIGTERM or SIGINT, drain; returns the exit status
        (0: every worker drained cleanly)."""
        got = threading.Event()

        def on_signal(signum: int, frame: Any) -> None:
            got.set()

        old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            self.start()
            log.info("fastq worker pool on %s queue %r: %d processes (autoscale %d..%d), tasks: %s",
                     self.app.path, self.queue, self.size, self.low, self.high,
                     ", ".join(sorted(t for t, v in self.app.tasks.items() if v.queue == self.queue)) or "none")
            while not got.wait(0.5):
                pass
            log.info("draining: running jobs finish, the rest go back to the queue")
            return 0 if self.stop() else 1
        finally:
            for s, h in old.items():
                signal.signal(s, h)

    def __enter__(self) -> "Pool":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def load_app(spec: str) -> App:
    """``"package.module:attribute"`` -> the App it names (for the CLI)."""
    mod, sep, attr = spec.partition(":")
    if not sep or not mod or not attr:
        raise ValueError(f"expected MODULE:ATTRIBUTE (e.g. myapp:app), not {spec!r}")
    import importlib
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj: Any = importlib.import_module(mod)
    except ImportError as e:
        raise ValueError(f"cannot import {mod!r} for {spec}: {e}") from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ValueError(f"{spec}: {type(obj).__name__} {getattr(obj, '__name__', '')!r} has no "
                             f"attribute {part!r}") from None
    if not isinstance(obj, App):
        raise TypeError(f"{spec} is a {type(obj).__name__}, not a fastq.jobs.App")
    return obj
