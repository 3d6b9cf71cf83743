"""Durable side of the comparison: persistent queues that a user would pick
instead of fastq's on-disk log, measured in the same run on this machine.

Run it as ``python -m fastq bench --scenarios durable`` (``--duration S``,
``--repeat N``, ``--impls sqlite3,redis`` work as for the other sections; an
``--impls`` name selects the implementations equal to it or starting with
``NAME-``).

Every implementation is an :class:`Impl` registered in :data:`IMPLS`: ``setup``
(temp dir -> ctx), ``append`` and ``consume`` (each returns a :class:`Phase`:
messages moved, seconds, verification), ``check`` (asks the store itself
afterwards) and ``teardown``.  The peers:

* ``persistqueue-sqliteack``: ``persistqueue.SQLiteAckQueue``; ``put`` / ``get`` + ``ack``.
* ``persistqueue-file``: ``persistqueue.Queue``; ``put`` / ``get`` + ``task_done``.
* ``sqlite3-wal-full`` / ``sqlite3-wal-normal``: plain sqlite3 in WAL mode,
  ``synchronous=FULL`` / ``NORMAL``, a ``jobs`` table; 256-row ``executemany``
  INSERT transactions; consume = SELECT 256 pending rows + UPDATE them to done,
  in one transaction.
* ``sqlite3-wal-single``: the same table, one INSERT (one transaction) per
  message; consume = one ``UPDATE .. RETURNING`` per message.
* ``redis-aof-everysec``: Redis Streams on a private ``redis-server`` with
  ``--appendonly yes --appendfsync everysec``: 256 pipelined ``XADD`` /
  ``XREADGROUP COUNT 256`` + ``XACK`` of the previous batch in the same round trip.

A peer that is not installed is skipped with its reason, never an error.

Timing protocol of one run of one implementation (one process, one client):

* a fresh temp dir (``tempfile.gettempdir()``, the same disk for everyone);
  ``setup`` is not timed;
* **append**: 64 B messages for ``duration`` seconds or ``max_items`` messages,
  whichever comes first.  Message *i* is ``Payloads.items[i % POOL]``: its
  first 8 bytes are *i*, so no two of the last POOL messages are equal;
* **consume + ack**: the backlog just appended, until it is drained or for
  ``duration`` seconds, whichever comes first.  Every consumed batch is compared
  byte for byte with what was appended at those positions (all peers are FIFO),
  inside the timed loop: the same cost for every implementation;
* rate = messages / seconds of that phase.  ``check`` then asks the store
  (untimed, on a new connection where possible) how many records are done and
  how many pending.  A run fails, and is reported, never patched up, if nothing
  moved, a consumed payload differs, the store ran dry before the backlog was
  drained, the store's own counts disagree, or anything raises.

The ``fsync`` column is when an acknowledged append reaches the disk:
``always`` = before the append call returns (an fsync per commit); ``interval``
= by a background fsync at most ~1 s later; ``never`` = left to the OS page
cache (survives a crash of the process, not of the machine).  The ratio
columns (fastq/peer) divide the rate of the first ``fastq*`` row of the *same*
fsync class by the row's rate; they show ``-`` while there is none.

Adding fastq's durable log (the API named in the design)::

    def _fastq_setup(d):
        import fastq
        log = fastq.open(os.path.join(d, "log"), durable=True, fsync="interval")
        return log, log.group("bench").consumer()

    def _fastq_consume(ctx, payloads, budget, backlog):
        c = ctx[1]

        def step(n):
            msgs = c.get_many(n, timeout=1.0)
            c.ack(msgs)
            return [m.data for m in msgs]
        return drain(step, payloads, budget, backlog)

    register(Impl("fastq-durable-interval", "interval", "fastq.open(durable=True, ...)",
                  setup=_fastq_setup,
                  append=lambda ctx, p, b: fill_batches(ctx[0].append_many, p, b),
                  consume=_fastq_consume, teardown=lambda ctx: ctx[0].close()))
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import statistics
import subprocess
import tempfile
import time
import traceback
from dataclasses import dataclass
from random import Random
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence

from ._bench import (BATCH, BUSY_THRESHOLD, RedisServer, _dist_version, _fmt_rate, _ForeignCpu,
                     _noisy, _redis_client_version, _wait_quiet, background_load)

__all__ = ["IMPLS", "Impl", "Phase", "Budget", "Payloads", "Unavailable", "register", "select",
           "fill_batches", "fill_singles", "drain", "run_once", "run_durable",
           "format_durable_table", "SIZE", "POOL", "DEFAULT_MAX_ITEMS"]

SIZE = 64  # bytes per message
POOL = 1 << 14  # distinct payloads; a power of two and a multiple of BATCH
DEFAULT_MAX_ITEMS = 2_000_000  # per phase: bounds disk use for the fast implementations
FSYNC_CLASSES = ("always", "interval", "never")

_perf = time.perf_counter


# --------------------------------------------------------------------------
# payloads, budgets and the shared timed loops
# --------------------------------------------------------------------------

class Budget(NamedTuple):
    """A phase stops after `duration` seconds or `max_items` messages, whichever first."""
    duration: float
    max_items: int = DEFAULT_MAX_ITEMS


class Phase(NamedTuple):
    """What one append or consume phase did."""
    messages: int  # appended / consumed and acked
    elapsed: float  # seconds
    mismatched: int = 0  # consumed messages in batches that differ from what was appended there
    stalled: bool = False  # consume: the store returned nothing before the backlog was drained

    @property
    def rate(self) -> float:
        return self.messages / self.elapsed if self.elapsed > 0 else 0.0


class Payloads:
    """POOL distinct SIZE-byte payloads; message i is ``items[i % POOL]``.

    Its first 8 bytes are i (little endian), the rest are fixed pseudo-random
    bytes.  ``blob`` is the items joined, followed by the first BATCH of them
    again, so that the bytes of any run of <= BATCH messages are one slice."""

    def __init__(self, size: int = SIZE, pool: int = POOL, seed: int = 0x5EED):
        if pool & (pool - 1) or pool % BATCH or size < 8:
            raise ValueError("pool must be a power of two and a multiple of BATCH; size >= 8")
        filler = Random(seed).randbytes(size - 8)
        self.size = size
        self.mask = pool - 1
        self.items: List[bytes] = [i.to_bytes(8, "little") + filler for i in range(pool)]
        self.blob = b"".join(self.items + self.items[:BATCH])

    def batch(self, start: int, n: int) -> List[bytes]:
        """Messages start .. start + n - 1 (n <= BATCH)."""
        i = start & self.mask
        if i + n <= len(self.items):
            return self.items[i:i + n]
        return self.items[i:] + self.items[:i + n - len(self.items)]

    def matches(self, start: int, msgs: Sequence[bytes]) -> bool:
        """True if msgs are exactly messages start .. start + len(msgs) - 1 (<= BATCH)."""
        i = (start & self.mask) * self.size
        return b"".join(msgs) == self.blob[i:i + len(msgs) * self.size]


def fill_batches(put_batch: Callable[[List[bytes]], Any], payloads: Payloads,
                 budget: Budget) -> Phase:
    """Append phase for batch APIs: put_batch(list of <= BATCH messages) until the budget ends."""
    limit, n = budget.max_items, 0
    batch = payloads.batch
    t0 = _perf()
    end = t0 + budget.duration
    while n < limit:
        k = min(BATCH, limit - n)
        put_batch(batch(n, k))
        n += k
        if _perf() >= end:
            break
    return Phase(n, _perf() - t0)


def fill_singles(put: Callable[[bytes], Any], payloads: Payloads, budget: Budget,
                 check_every: int = 16) -> Phase:
    """Append phase for one-message calls; the clock is read every `check_every` calls."""
    limit, n = budget.max_items, 0
    items, mask = payloads.items, payloads.mask
    t0 = _perf()
    end = t0 + budget.duration
    while n < limit:
        put(items[n & mask])
        n += 1
        if n % check_every == 0 and _perf() >= end:
            break
    return Phase(n, _perf() - t0)


def drain(step: Callable[[int], Sequence[bytes]], payloads: Payloads, budget: Budget,
          backlog: int, finish: Optional[Callable[[], Any]] = None) -> Phase:
    """Consume phase: step(n) consumes and acks up to n (<= BATCH) messages and
    returns their payloads in order; runs until `backlog` messages or the budget's
    duration.  finish() (e.g. a last pipelined ack) is called inside the timing."""
    got = bad = 0
    stalled = False
    matches = payloads.matches
    t0 = _perf()
    end = t0 + budget.duration
    while got < backlog:
        msgs = step(min(BATCH, backlog - got))
        if not msgs:
            stalled = True
            break
        if not matches(got, msgs):
            bad += len(msgs)
        got += len(msgs)
        if _perf() >= end:
            break
    if finish is not None:
        finish()
    return Phase(got, _perf() - t0, bad, stalled)


# --------------------------------------------------------------------------
# the registry
# --------------------------------------------------------------------------

class Unavailable(Exception):
    """Raised by Impl.setup when the environment cannot run it (the run is skipped)."""


def _always() -> Optional[str]:
    return None


def _no_check(ctx: Any, appended: int, consumed: int) -> Optional[str]:
    return None


def _nothing(ctx: Any) -> None:
    return None


@dataclass(frozen=True)
class Impl:
    name: str
    fsync: str  # "always" | "interval" | "never": see the module docstring
    doc: str  # one line: what exactly is measured
    setup: Callable[[str], Any]  # temp dir -> ctx (not timed)
    append: Callable[[Any, Payloads, Budget], Phase]
    consume: Callable[[Any, Payloads, Budget, int], Phase]  # ctx, payloads, budget, backlog
    teardown: Callable[[Any], None] = _nothing
    check: Callable[[Any, int, int], Optional[str]] = _no_check  # ctx, appended, consumed -> problem
    available: Callable[[], Optional[str]] = _always  # None, or why it is skipped
    version: Callable[[], str] = lambda: ""
    batched: bool = True  # appends in batches of BATCH (else one message per call)


IMPLS: Dict[str, Impl] = {}


def register(impl: Impl) -> Impl:
    if impl.fsync not in FSYNC_CLASSES:
        raise ValueError(f"{impl.name}: fsync must be one of {FSYNC_CLASSES}")
    IMPLS[impl.name] = impl
    return impl


def select(wanted: Sequence[str] = ()) -> List[str]:
    """Registered names equal to a wanted name or starting with ``name-`` (all if none wanted)."""
    return [n for n in IMPLS
            if not wanted or any(n == w or n.startswith(w + "-") for w in wanted)]


# --------------------------------------------------------------------------
# peers: persist-queue
# --------------------------------------------------------------------------

def _persistqueue_available() -> Optional[str]:
    try:
        import persistqueue  # noqa: F401
    except Exception as e:  # noqa: BLE001 - any import failure means "skip"
        return f"not installed ({e.__class__.__name__}); pip install persist-queue"
    return None


def _persistqueue_version() -> str:
    return "persist-queue " + _dist_version("persist-queue")


def _pq_ack_open(d: str) -> Any:
    import persistqueue
    return persistqueue.SQLiteAckQueue(os.path.join(d, "ackq"), multithreading=False)


def _pq_ack_consume(q: Any, payloads: Payloads, budget: Budget, backlog: int) -> Phase:
    get, ack = q.get, q.ack

    def step(n: int) -> List[bytes]:
        out = []
        for _ in range(n):
            item = get(block=False)
            ack(item)
            out.append(item)
        return out
    return drain(step, payloads, budget, backlog)


def _pq_ack_check(q: Any, appended: int, consumed: int) -> Optional[str]:
    q.close()
    again = _pq_ack_open(os.path.dirname(q.path))  # a new connection to the same file
    try:
        acked, unacked = again.acked_count(), again.unack_count()
    finally:
        again.close()
    if acked != consumed or unacked:
        return f"reopened queue has {acked} acked, {unacked} unacked; expected {consumed}, 0"
    return None


def _pq_file_open(d: str) -> Any:
    import persistqueue
    tmp = os.path.join(d, "tmp")  # persist-queue writes its info file here, then renames it
    os.makedirs(tmp, exist_ok=True)
    return persistqueue.Queue(os.path.join(d, "fileq"), tempdir=tmp)


def _pq_file_consume(q: Any, payloads: Payloads, budget: Budget, backlog: int) -> Phase:
    get, task_done = q.get, q.task_done

    def step(n: int) -> List[bytes]:
        out = []
        for _ in range(n):
            out.append(get(block=False))
            task_done()
        return out
    return drain(step, payloads, budget, backlog)


def _pq_file_check(q: Any, appended: int, consumed: int) -> Optional[str]:
    left = _pq_file_open(os.path.dirname(q.path)).qsize()  # re-read from the files
    if left != appended - consumed:
        return f"reopened queue holds {left}; expected {appended - consumed}"
    return None


register(Impl(
    "persistqueue-sqliteack", "always",
    "persistqueue.SQLiteAckQueue (SQLite WAL, synchronous=FULL): put / get + ack, one message "
    "per call, a commit each",
    setup=_pq_ack_open,
    append=lambda q, p, b: fill_singles(q.put, p, b),
    consume=_pq_ack_consume, check=_pq_ack_check, teardown=lambda q: q.close(),
    available=_persistqueue_available, version=_persistqueue_version, batched=False))

register(Impl(
    "persistqueue-file", "never",
    "persistqueue.Queue (pickles in 100-item chunk files; fsync when a chunk is full): "
    "put / get + task_done, one message per call",
    setup=_pq_file_open,
    append=lambda q, p, b: fill_singles(q.put, p, b),
    consume=_pq_file_consume, check=_pq_file_check,
    available=_persistqueue_available, version=_persistqueue_version, batched=False))


# --------------------------------------------------------------------------
# peers: plain sqlite3, WAL
# --------------------------------------------------------------------------

_SQL_SCHEMA = ("CREATE TABLE jobs (id INTEGER PRIMARY KEY, payload BLOB NOT NULL, "
               "state INTEGER NOT NULL)",
               "CREATE INDEX jobs_pending ON jobs (id) WHERE state = 0")  # pending rows, in order
_SQL_INSERT = "INSERT INTO jobs (payload, state) VALUES (?, 0)"
_SQL_PENDING = "SELECT id, payload FROM jobs WHERE state = 0 ORDER BY id LIMIT ?"
_SQL_DONE = "UPDATE jobs SET state = 1 WHERE id = ?"
_SQL_TAKE_ONE = ("UPDATE jobs SET state = 1 WHERE id = (SELECT id FROM jobs WHERE state = 0 "
                 "ORDER BY id LIMIT 1) RETURNING payload")


def _sqlite_connect(path: str, synchronous: str) -> sqlite3.Connection:
    # isolation_level=None: no implicit transactions; each statement outside an
    # explicit BEGIN .. COMMIT is its own transaction.
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    return conn


def _sqlite_setup(synchronous: str) -> Callable[[str], sqlite3.Connection]:
    def setup(d: str) -> sqlite3.Connection:
        conn = _sqlite_connect(os.path.join(d, "jobs.db"), synchronous)
        for stmt in _SQL_SCHEMA:
            conn.execute(stmt)
        return conn
    return setup


def _sqlite_append_batches(conn: sqlite3.Connection, payloads: Payloads, budget: Budget) -> Phase:
    execute, executemany = conn.execute, conn.executemany

    def put_batch(batch: List[bytes]) -> None:
        execute("BEGIN")
        executemany(_SQL_INSERT, zip(batch))
        execute("COMMIT")
    return fill_batches(put_batch, payloads, budget)


def _sqlite_consume_batches(conn: sqlite3.Connection, payloads: Payloads, budget: Budget,
                            backlog: int) -> Phase:
    execute, executemany = conn.execute, conn.executemany

    def step(n: int) -> List[bytes]:
        execute("BEGIN IMMEDIATE")
        rows = execute(_SQL_PENDING, (n,)).fetchall()
        executemany(_SQL_DONE, [(r[0],) for r in rows])
        execute("COMMIT")
        return [r[1] for r in rows]
    return drain(step, payloads, budget, backlog)


def _sqlite_append_singles(conn: sqlite3.Connection, payloads: Payloads, budget: Budget) -> Phase:
    execute = conn.execute
    return fill_singles(lambda m: execute(_SQL_INSERT, (m,)), payloads, budget)


def _sqlite_consume_singles(conn: sqlite3.Connection, payloads: Payloads, budget: Budget,
                            backlog: int) -> Phase:
    execute = conn.execute

    def step(n: int) -> List[bytes]:
        out = []
        for _ in range(n):
            row = execute(_SQL_TAKE_ONE).fetchone()
            if row is None:
                break
            out.append(row[0])
        return out
    return drain(step, payloads, budget, backlog)


def _sqlite_check(conn: sqlite3.Connection, appended: int, consumed: int) -> Optional[str]:
    path = conn.execute("PRAGMA database_list").fetchone()[2]
    conn.close()
    with sqlite3.connect(path) as other:  # a new connection to the same file
        counts = dict(other.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall())
    other.close()
    want = {k: v for k, v in ((0, appended - consumed), (1, consumed)) if v}
    if counts != want:
        return f"rows by state {counts}; expected {want}"
    return None


def _sqlite_version() -> str:
    return f"SQLite {sqlite3.sqlite_version}"


for _sync, _fsync, _what in (("FULL", "always", "WAL fsynced at every commit"),
                             ("NORMAL", "never", "WAL fsynced only at checkpoints")):
    register(Impl(
        f"sqlite3-wal-{_sync.lower()}", _fsync,
        f"sqlite3, journal_mode=WAL, synchronous={_sync} ({_what}): executemany INSERT of 256 "
        "rows per transaction / SELECT 256 pending + UPDATE them to done in one transaction",
        setup=_sqlite_setup(_sync), append=_sqlite_append_batches,
        consume=_sqlite_consume_batches, check=_sqlite_check, teardown=lambda c: c.close(),
        version=_sqlite_version))
del _sync, _fsync, _what

register(Impl(
    "sqlite3-wal-single", "always",
    "sqlite3, journal_mode=WAL, synchronous=FULL: one INSERT (one transaction) per message / "
    "one UPDATE .. RETURNING per message",
    setup=_sqlite_setup("FULL"), append=_sqlite_append_singles,
    consume=_sqlite_consume_singles, check=_sqlite_check, teardown=lambda c: c.close(),
    version=_sqlite_version, batched=False))


# --------------------------------------------------------------------------
# peers: Redis Streams with the append-only file
# --------------------------------------------------------------------------

_REDIS_KEY = "durable"
_REDIS_GROUP = "bench"


@dataclass
class _RedisCtx:
    server: RedisServer
    client: Any  # redis.Redis
    acked: int = 0


def _redis_setup(d: str) -> _RedisCtx:
    server = RedisServer(appendfsync="everysec", parent=d)
    try:
        server.start()
    except Exception as e:  # noqa: BLE001 - an environment problem: skip, as the groups section does
        server.stop()
        raise Unavailable(f"could not start redis-server: {e}") from e
    try:
        client = server.client()
        client.xgroup_create(_REDIS_KEY, _REDIS_GROUP, id="0", mkstream=True)
    except BaseException:
        server.stop()
        raise
    return _RedisCtx(server, client)


def _redis_append(ctx: _RedisCtx, payloads: Payloads, budget: Budget) -> Phase:
    pipe = ctx.client.pipeline(transaction=False)
    cmd, execute = pipe.execute_command, pipe.execute

    def put_batch(batch: List[bytes]) -> None:
        for m in batch:
            cmd("XADD", _REDIS_KEY, "*", "d", m)
        execute()
    return fill_batches(put_batch, payloads, budget)


def _redis_consume(ctx: _RedisCtx, payloads: Payloads, budget: Budget, backlog: int) -> Phase:
    pipe = ctx.client.pipeline(transaction=False)
    xack, xreadgroup, execute = pipe.xack, pipe.xreadgroup, pipe.execute
    streams = {_REDIS_KEY: ">"}
    ids: List[bytes] = []

    def step(n: int) -> List[bytes]:
        nonlocal ids
        if ids:  # ack the previous batch in the same round trip as the next read
            xack(_REDIS_KEY, _REDIS_GROUP, *ids)
        xreadgroup(_REDIS_GROUP, "c0", streams, count=n)
        res = execute()
        if ids:
            ctx.acked += res[0]
        entries = res[-1][0][1] if res[-1] else []
        ids = [e[0] for e in entries]
        return [e[1][b"d"] for e in entries]

    def finish() -> None:
        if ids:
            ctx.acked += ctx.client.xack(_REDIS_KEY, _REDIS_GROUP, *ids)
    return drain(step, payloads, budget, backlog, finish)


def _redis_check(ctx: _RedisCtx, appended: int, consumed: int) -> Optional[str]:
    length = ctx.client.xlen(_REDIS_KEY)
    pending = ctx.client.xpending(_REDIS_KEY, _REDIS_GROUP)["pending"]
    if length != appended or pending or ctx.acked != consumed:
        return (f"stream length {length}, pending {pending}, acked {ctx.acked}; "
                f"expected {appended}, 0, {consumed}")
    return None


def _redis_teardown(ctx: _RedisCtx) -> None:
    try:
        ctx.client.close()
    finally:
        ctx.server.stop()


def _redis_version() -> str:
    try:
        out = subprocess.run([shutil.which("redis-server") or "redis-server", "--version"],
                             capture_output=True, text=True, timeout=10).stdout
        server = next((w[2:] for w in out.split() if w.startswith("v=")), "?")
    except Exception:  # noqa: BLE001
        server = "?"
    return f"redis-server {server}, {_redis_client_version()}"


register(Impl(
    "redis-aof-everysec", "interval",
    "Redis Streams, private redis-server --appendonly yes --appendfsync everysec: 256 pipelined "
    "XADD / XREADGROUP COUNT 256 + XACK of the previous batch in one round trip",
    setup=_redis_setup, append=_redis_append, consume=_redis_consume, check=_redis_check,
    teardown=_redis_teardown, available=RedisServer.unavailable, version=_redis_version))


# --------------------------------------------------------------------------
# fastq's durable log (registered first in the table: it is the reference)
# --------------------------------------------------------------------------

class _FastqCtx(NamedTuple):
    log: Any
    consumer: Any


def _fastq_setup(fsync: str) -> Callable[[str], _FastqCtx]:
    def setup(d: str) -> _FastqCtx:
        import fastq
        log = fastq.open(os.path.join(d, "log"), durable=True, fsync=fsync, segment_size=64 << 20)
        return _FastqCtx(log, log.group("bench", window=4096).consumer())
    return setup


def _fastq_consume(ctx: _FastqCtx, payloads: Payloads, budget: Budget, backlog: int) -> Phase:
    c = ctx.consumer

    def step(n: int) -> List[bytes]:
        msgs = c.get_many(n, timeout=1.0)
        c.ack(msgs)
        return [m.data for m in msgs]
    return drain(step, payloads, budget, backlog)


def _fastq_check(ctx: _FastqCtx, appended: int, consumed: int) -> Optional[str]:
    st = ctx.log.stats()
    g = st["groups"]["bench"]
    if st["head"] != appended or g["low"] != consumed or g["acked"] != consumed:
        return f"log head {st['head']}, group low {g['low']}, acked {g['acked']}; expected {appended}/{consumed}"
    if not ctx.log.flush(5.0) or ctx.log.stats()["durable_offset"] != appended:
        return "flush did not make every appended record durable"
    return None


def _fastq_teardown(ctx: _FastqCtx) -> None:
    ctx.consumer.close()
    ctx.log.close()


def _fastq_version() -> str:
    import fastq
    return fastq.__version__


for _fs, _single in (("interval", False), ("interval", True), ("never", False), ("never", True),
                     ("always", False)):
    register(Impl(
        f"fastq-durable-{_fs}" + ("-single" if _single else ""), _fs,
        f"fastq.open(path, durable=True, fsync={_fs!r}, 64 MiB segments): "
        + ("append() one message per call" if _single else "append_many() of 256")
        + " / Consumer.get_many(256) + ack(batch)",
        setup=_fastq_setup(_fs),
        append=(lambda ctx, p, b: fill_singles(ctx.log.append, p, b)) if _single
        else (lambda ctx, p, b: fill_batches(ctx.log.append_many, p, b)),
        consume=_fastq_consume, check=_fastq_check, teardown=_fastq_teardown, version=_fastq_version,
        batched=not _single))
del _fs, _single
# the reference rows come first in the table
IMPLS.update({k: IMPLS.pop(k) for k in [n for n in IMPLS if not n.startswith("fastq")]})


# --------------------------------------------------------------------------
# driver
# --------------------------------------------------------------------------

def run_once(impl: Impl, payloads: Payloads, budget: Budget,
             parent: Optional[str] = None) -> Dict[str, Any]:
    """One append phase + one consume phase of `impl` in a fresh temp dir.

    Returns {"impl", "status": "ok" | "error" | "skipped", ...}: on "ok" the
    counts, seconds and rates of both phases; "error" / "reason" otherwise."""
    r: Dict[str, Any] = {"impl": impl.name, "status": "error",
                         "background_cpus": background_load()}
    d = tempfile.mkdtemp(prefix="fastq-bench-durable-", dir=parent)
    foreign = _ForeignCpu()
    ctx: Any = None
    try:
        ctx = impl.setup(d)
        a = impl.append(ctx, payloads, budget)
        c = impl.consume(ctx, payloads, budget, a.messages)
        r.update(appended=a.messages, append_s=a.elapsed, append_rate=a.rate,
                 consumed=c.messages, consume_s=c.elapsed, consume_rate=c.rate,
                 drained=c.messages == a.messages)
        problems = []
        if a.messages == 0:
            problems.append("nothing was appended")
        if c.messages == 0:
            problems.append("nothing was consumed")
        if c.messages > a.messages:
            problems.append(f"consumed {c.messages} > appended {a.messages}")
        if c.mismatched:
            problems.append(f"{c.mismatched} consumed messages differ from what was appended "
                            "at their positions")
        if c.stalled:
            problems.append(f"the store returned nothing after {c.messages} of {a.messages}")
        problem = impl.check(ctx, a.messages, c.messages)
        if problem:
            problems.append(problem)
        if problems:
            r["error"] = "; ".join(problems)
        else:
            r["status"] = "ok"
    except Unavailable as e:
        r.update(status="skipped", reason=str(e))
    except Exception as e:  # noqa: BLE001 - keep going, report it
        r["error"] = f"{e.__class__.__name__}: {e}\n{traceback.format_exc()}"
    finally:
        if ctx is not None:
            try:
                impl.teardown(ctx)
            except Exception as e:  # noqa: BLE001
                if r["status"] == "ok":
                    r.update(status="error", error=f"teardown: {e!r}")
        r["foreign_cpus"] = foreign.stop()  # after teardown: a reaped redis-server counts as ours
        shutil.rmtree(d, ignore_errors=True)
    return r


def _summary(runs: List[Dict[str, Any]]) -> Dict[str, Any]:
    ok = [r for r in runs if r["status"] == "ok"]
    if not ok:
        skipped = [r for r in runs if r["status"] == "skipped"]
        if skipped and len(skipped) == len(runs):
            return {"status": "skipped", "reason": skipped[0]["reason"]}
        bad = next(r for r in runs if r["status"] == "error")
        return {"status": "error", "error": bad.get("error", "?")}
    s: Dict[str, Any] = {"status": "ok" if len(ok) == len(runs) else "partial",
                         "runs_ok": len(ok), "runs": len(runs),
                         "busy_runs": sum(1 for r in runs if _noisy(r)),
                         "drained_runs": sum(1 for r in ok if r["drained"])}
    for k in ("append_rate", "consume_rate", "appended", "consumed"):
        s[k] = statistics.median(r[k] for r in ok)
    if len(ok) != len(runs):
        s["error"] = next(r.get("error") or r.get("reason") for r in runs if r["status"] != "ok")
    return s


def run_durable(impls: Optional[Sequence[str]] = None, duration: float = 1.0, repeat: int = 1,
                max_items: int = DEFAULT_MAX_ITEMS,
                progress: Optional[Callable[[str], None]] = None, wait_quiet: float = 0.0,
                rerun_noisy: int = 0, parent: Optional[str] = None) -> List[Dict[str, Any]]:
    """Run `repeat` runs of each of `impls` (names in IMPLS; all of them if None).

    Returns one row per implementation, in order: {"impl", "fsync", "doc",
    "version", "summary", "runs"}; summary["status"] is "ok", "partial",
    "error" or "skipped" (with a "reason").  progress(label) is called once
    per (implementation, repetition)."""
    names = list(IMPLS) if impls is None else list(impls)
    budget = Budget(duration, max_items)
    payloads = Payloads()
    rows: List[Dict[str, Any]] = []
    for name in names:
        impl = IMPLS[name]
        why = impl.available()
        runs: List[Dict[str, Any]] = []
        for rep in range(repeat):
            if progress is not None:
                progress(f"durable: {name}" + (f" (run {rep + 1})" if repeat > 1 else ""))
            if why is not None:
                continue
            reruns = 0
            while True:
                if wait_quiet > 0:
                    _wait_quiet(wait_quiet)
                r = run_once(impl, payloads, budget, parent)
                if r["status"] == "ok" and _noisy(r) and reruns < rerun_noisy:
                    reruns += 1
                    continue
                break
            r["noisy_reruns"] = reruns
            runs.append(r)
            if r["status"] == "skipped":
                why = r["reason"]
        summary = _summary(runs) if runs and any(r["status"] != "skipped" for r in runs) else \
            {"status": "skipped", "reason": why}
        version = ""
        if summary["status"] != "skipped":
            try:
                version = impl.version()
            except Exception:  # noqa: BLE001
                version = "?"
        rows.append({"impl": name, "fsync": impl.fsync, "doc": impl.doc, "version": version,
                     "summary": summary, "runs": runs})
    return rows


def replay_cell(total_bytes: int = 4 << 30, record: int = 4096, segment_size: int = 256 << 20,
                parent: Optional[str] = None, repeat: int = 3) -> Dict[str, Any]:
    """Replay from the middle of a log of ``total_bytes`` (records of
    ``record`` bytes) through ``Log.read``: the time to the first record (the
    index lookup: binary search over segments, then index entries, then a
    short walk) and the streaming rate of the second half, from the page
    cache (the log was just written).  A fresh handle per repetition, so no
    mapping is warm; medians of ``repeat``."""
    import fastq
    d = tempfile.mkdtemp(prefix="fastq-bench-replay-", dir=parent)
    try:
        path = os.path.join(d, "log")
        n = max(total_bytes // record, 2)
        rng = Random(1)
        batch = [rng.randbytes(record) for _ in range(64)]
        t0 = _perf()
        with fastq.open(path, durable=True, fsync="never", segment_size=segment_size) as log:
            for i in range(0, n, 64):
                log.append_many(batch[:min(64, n - i)])
        write_s = _perf() - t0
        firsts, rates = [], []
        mid = n // 2
        for _ in range(repeat):
            with fastq.open(path, durable=True, fsync="never") as log:
                t0 = _perf()
                it = log.read(start=mid)
                rec = next(it)
                firsts.append(_perf() - t0)
                if rec.offset != mid or rec.data != batch[mid % 64]:
                    raise AssertionError(f"replay from {mid} returned offset {rec.offset} / wrong data")
                got, nbytes = 1, len(rec.data)
                t0 = _perf()
                for rec in it:
                    got += 1
                    nbytes += len(rec.data)
                el = _perf() - t0
                if got != n - mid:
                    raise AssertionError(f"replay read {got} records, expected {n - mid}")
                rates.append(nbytes / el)
        return {"records": n, "record_bytes": record, "log_bytes": n * (record + 32), "write_s": write_s,
                "first_record_s": statistics.median(firsts), "stream_bytes_per_s": statistics.median(rates)}
    finally:
        shutil.rmtree(d, ignore_errors=True)


def format_replay(r: Dict[str, Any]) -> str:
    return (f"replay: log of {r['log_bytes'] / (1 << 30):.2f} GiB ({r['records']:,} records of {r['record_bytes']} B, "
            f"written in {r['write_s']:.1f} s); Log.read(start=middle): first record after "
            f"{r['first_record_s'] * 1e3:.2f} ms, then {r['stream_bytes_per_s'] / 1e9:.2f} GB/s from the page cache "
            "(targets: < 10 ms, >= 1 GB/s)")


def _ratio(ref: Optional[Dict[str, Any]], s: Dict[str, Any], key: str) -> str:
    if ref is None or not s.get(key):
        return "-"
    return f"{ref[key] / s[key]:.2f}"


def format_durable_table(rows: List[Dict[str, Any]]) -> str:
    """rows from run_durable -> plain-text table (the same style as the other sections)."""
    # The reference is fastq with fsync="interval" (the targets are
    # stated against it), batched for peers that batch, one call per message
    # for peers that take one message per call.
    refs: Dict[bool, Dict[str, Any]] = {}
    for r in rows:
        if r["impl"].startswith("fastq") and r["fsync"] == "interval" and \
                r["summary"]["status"] in ("ok", "partial"):
            refs.setdefault(IMPLS[r["impl"]].batched if r["impl"] in IMPLS else True, r["summary"])
    head = ("durable (1 process)", "fsync", "append", "consume+ack", "fastq/peer append",
            "fastq/peer consume")
    lines = []
    skipped = []
    for r in rows:
        s = r["summary"]
        if s["status"] == "skipped":
            skipped.append(f"skipped {r['impl']}: {s['reason']}")
            continue
        if s["status"] == "error":
            lines.append((r["impl"], r["fsync"], "FAILED", "", "-", "-"))
            continue
        busy = " *" if s.get("busy_runs") else ""
        undrained = "" if s["drained_runs"] == s["runs_ok"] else " +"
        ref = None if r["impl"].startswith("fastq") else \
            refs.get(IMPLS[r["impl"]].batched if r["impl"] in IMPLS else True)
        lines.append((r["impl"], r["fsync"], _fmt_rate(s["append_rate"], "msg/s") + busy,
                      _fmt_rate(s["consume_rate"], "msg/s") + busy + undrained,
                      _ratio(ref, s, "append_rate"), _ratio(ref, s, "consume_rate")))
    w = [max(len(h), *(len(l[i]) for l in lines)) if lines else len(h)
         for i, h in enumerate(head)]
    out = ["  ".join(h.ljust(w[i]) for i, h in enumerate(head)),
           "  ".join("-" * x for x in w)]
    out += ["  ".join(c.ljust(w[i]) for i, c in enumerate(l)).rstrip() for l in lines]
    out.append("append: 64 B messages appended per second; consume+ack: the backlog just "
               "appended, consumed and acked per second (one client, in this process). "
               "fastq/peer: fastq-durable-interval (batched, or -single for peers that take one "
               "message per call) / this row (> 1: fastq is faster; -: no such fastq row in this run).")
    out.append("fsync: always = on disk before the call returns; interval = fsynced in the "
               "background about every second; never = left to the OS page cache.")
    if any(r["summary"].get("busy_runs") for r in rows):
        out.append(f"* other processes used > {BUSY_THRESHOLD} CPU just before or during at "
                   "least one run of this row (shared machine): treat it as noisy")
    if any(l[3].endswith("+") for l in lines):
        out.append("+ the duration ran out before the whole backlog was consumed (rate still "
                   "counts only what was consumed)")
    for r in rows:
        if r["summary"]["status"] != "skipped":
            out.append(f"{r['impl']}: {r['doc']}" + (f" [{r['version']}]" if r["version"] else ""))
    out += skipped
    return "\n".join(out)
