"""Side-by-side benchmark: fastq against the peer queues installed on this machine.

Run it as ``python -m fastq bench`` (or ``python -m fastq._bench``)::

    python -m fastq bench                       # every scenario, ~1 s per cell
    python -m fastq bench --quick               # CI smoke, ~0.2 s per cell
    python -m fastq bench --scenarios single,pingpong --repeat 3 --json out.json

Everything is measured in one run, on this machine, with worker processes
started from a multiprocessing ``spawn`` context (the thread scenario runs its
two threads inside one spawned process).  Each implementation is wrapped in an
adapter class of the same shape (``make_queue`` / ``open`` -> endpoint with
``put`` / ``get`` / ``put_batch`` / ``get_batch``) and driven by the *same*
producer / consumer loops, so every implementation pays the same per-message
Python overhead.  The endpoint attributes are the implementation's own bound
methods (or a ``functools.partial`` of them) so that the adapter adds no extra
Python frame to the hot loop.

Timing protocol of a throughput cell
    * the queue is created in the parent and handed to the children as a
      ``Process`` argument (zmq: an ``ipc://`` address per producer);
    * workers open their endpoints, then meet at a start barrier (two phases:
      producers open first, consumers second, so that zmq connects go to an
      already-bound socket); process start-up is never timed;
    * each producer puts the payload for ``--duration`` seconds (the clock is
      read every few puts), then sends a 1-byte end marker carrying its
      producer index, repeating it until every consumer has finished;
    * a consumer stops when it has seen the end marker of every producer
      (per-producer FIFO order guarantees it has then received all of that
      producer's messages that were routed to it), and records its end time;
    * the rate is ``messages received / (last consumer end - first producer
      start)``; ``CLOCK_MONOTONIC`` (``time.perf_counter`` on Linux) is
      system-wide so the two ends may be read in different processes;
    * the cell fails (and is reported, never retried or patched up) if the
      consumers' total differs from the producers' total, if a payload comes
      back altered, if a worker raises, or if the cell overruns its deadline
      (stragglers are terminated, then killed).

Ping-pong: process A puts a 64 B message on queue 1, process B gets it and puts
it back on queue 2, A gets it; every round trip is timed with
``perf_counter_ns`` after a warm-up, and p50 / p99 are reported.

Consumer groups (``--scenarios groups``, part of the default run): fastq.Log
consumer groups against Redis Streams consumer groups on loopback, one producer
process and 1 or 4 consumer processes, 64 B records, get_many(256) + batch ack
(or per-message ack) against XREADGROUP COUNT 256 + XACK, pipelined.  The
benchmark starts its own ``redis-server`` (free port, temp dir, no persistence)
and always stops it; without redis-server or redis-py the Redis cells are skipped
with a note.  The timing protocol is in the comment above ``GROUP_CELLS``.

The ratio column is *fastq advantage*: fastq rate / peer rate for throughput
cells, peer latency / fastq latency for ping-pong; > 1 means fastq is better.
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing
import multiprocessing.connection
import os
import platform
import queue as _queue
import shutil
import statistics
import sys
import tempfile
import threading
import time
import traceback
from functools import partial
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence

__all__ = ["main", "run_cell", "SCENARIOS", "ADAPTERS", "scenario_by_name", "run_group_cell",
           "run_groups", "GROUP_CELLS", "RedisServer"]

# --------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------

DEFAULT_DURATION = 1.0  # seconds of timed traffic per cell
QUICK_DURATION = 0.2
DEFAULT_CAPACITY = 16 << 20  # bytes of buffering given to each bounded queue
BATCH = 256
STARTUP_TIMEOUT = 30.0  # seconds allowed for spawning + each barrier phase
MARKER_TIMEOUT = 10.0  # how long producers keep offering end markers
WARMUP_ROUNDTRIPS = 200

_perf = time.perf_counter


class Scenario(NamedTuple):
    name: str
    kind: str  # "process" | "thread"
    mode: str  # "throughput" | "pingpong"
    producers: int
    consumers: int
    size: int  # payload bytes
    batch: int  # 0 = one message per call
    unit: str  # "msg/s" | "MB/s" | "us"
    doc: str


SCENARIOS: List[Scenario] = [
    Scenario("1x1 single", "process", "throughput", 1, 1, 64, 0, "msg/s",
             "1 producer process -> 1 consumer process, one 64 B message per put/get"),
    Scenario("1x1 batched", "process", "throughput", 1, 1, 64, BATCH, "msg/s",
             "1 -> 1 processes, 64 B messages in batches of 256 per call"),
    Scenario("64KiB", "process", "throughput", 1, 1, 64 << 10, 0, "MB/s",
             "1 -> 1 processes, one 64 KiB message per call, MB/s (1 MB = 1e6 B)"),
    Scenario("ping-pong", "process", "pingpong", 1, 1, 64, 0, "us",
             "round trip of a 64 B message between 2 processes over 2 queues"),
    Scenario("2x2", "process", "throughput", 2, 2, 64, 0, "msg/s",
             "2 producer processes x 2 consumer processes sharing one queue, 64 B"),
    Scenario("threads 1x1", "thread", "throughput", 1, 1, 64, 0, "msg/s",
             "1 producer thread -> 1 consumer thread in one process, 64 B"),
]

_ALIASES = {
    "single": "1x1 single", "1x1": "1x1 single",
    "batched": "1x1 batched", "batch": "1x1 batched",
    "64k": "64KiB", "large": "64KiB", "64kib": "64KiB",
    "pingpong": "ping-pong", "latency": "ping-pong",
    "mpmc": "2x2",
    "threads": "threads 1x1", "thread": "threads 1x1",
}


def _norm(s: str) -> str:
    return "".join(ch for ch in s.lower() if ch.isalnum())


def scenario_by_name(name: str) -> Scenario:
    key = _norm(name)
    for sc in SCENARIOS:
        if _norm(sc.name) == key:
            return sc
    for alias, target in _ALIASES.items():
        if _norm(alias) == key:
            return scenario_by_name(target)
    raise KeyError(f"unknown scenario {name!r}; known: "
                   + ", ".join(sc.name for sc in SCENARIOS))


class QueueSpec(NamedTuple):
    capacity: int  # bytes of buffering for bounded queues
    size: int  # payload bytes
    batch: int  # messages per put_batch / max per get_batch (0 = single)
    producers: int
    consumers: int


# --------------------------------------------------------------------------
# adapters: one per implementation, all of the same shape
# --------------------------------------------------------------------------

class Endpoint:
    """What a worker holds: the implementation's own callables.

    put(msg)               one message
    get() -> bytes         one message (blocking)
    put_batch(list)        BATCH messages in one call
    get_batch() -> list    up to BATCH messages in one call (blocking)
    send_marker(m, batch, timeout) -> bool   end-of-stream marker, bounded wait
    close()                release this side (flush for mp.Queue / zmq)
    """

    __slots__ = ("put", "get", "put_batch", "get_batch", "send_marker", "close")

    def __init__(self, put=None, get=None, put_batch=None, get_batch=None,
                 send_marker=None, close=None):
        self.put = put
        self.get = get
        self.put_batch = put_batch
        self.get_batch = get_batch
        self.send_marker = send_marker
        self.close = close or (lambda: None)


class Adapter:
    name = "?"
    kinds = ("process",)  # scenario kinds this adapter takes part in
    batch_note = ""

    def available(self) -> Optional[str]:
        """None if usable, else the reason it is skipped."""
        return None

    def version(self) -> str:
        return ""

    def make_queue(self, spec: QueueSpec) -> Any:
        raise NotImplementedError

    def open(self, q: Any, role: str, index: int, spec: QueueSpec) -> Endpoint:
        raise NotImplementedError

    def destroy(self, q: Any) -> None:
        pass


def _identity(x):
    return x


def _dist_version(dist: str) -> str:
    try:
        from importlib.metadata import version
        return version(dist)
    except Exception:
        return "?"


class FastqAdapter(Adapter):
    name = "fastq"
    kinds = ("process", "thread")
    batch_note = "put_many(256) / get_many(256)"

    def available(self):
        try:
            import fastq
        except Exception as e:  # noqa: BLE001 - report any import failure
            return f"import fastq failed: {e!r}"
        if not hasattr(fastq, "Queue"):
            return "fastq.Queue not found (extension not built?)"
        return None

    def version(self):
        try:
            import fastq
            return getattr(fastq, "__version__", "") or _dist_version("fastq")
        except Exception:
            return "?"

    def make_queue(self, spec):
        import fastq
        return fastq.Queue(maxsize=0, capacity=spec.capacity, serializer=None)

    def open(self, q, role, index, spec):
        def send_marker(m, batch, timeout):
            try:
                if batch:
                    q.put_many([m], timeout=timeout)
                else:
                    q.put(m, timeout=timeout)
                return True
            except _queue.Full:
                return False

        return Endpoint(put=q.put, get=q.get, put_batch=q.put_many,
                        get_batch=partial(q.get_many, spec.batch or BATCH),
                        send_marker=send_marker)

    def destroy(self, q):
        q.close()


class MPQueueAdapter(Adapter):
    name = "mp.Queue"
    batch_note = "put(list of 256) / get() -> list (one pickled item)"

    def version(self):
        return "stdlib " + platform.python_version()

    def make_queue(self, spec):
        per_item = spec.size * (spec.batch or 1)
        maxsize = max(64, spec.capacity // per_item)
        return multiprocessing.get_context("spawn").Queue(maxsize=maxsize)

    def open(self, q, role, index, spec):
        def send_marker(m, batch, timeout):
            try:
                q.put([m] if batch else m, timeout=timeout)
                return True
            except _queue.Full:
                return False

        def close():
            if role == "producer":
                q.close()
                q.join_thread()  # flush the feeder thread

        return Endpoint(put=q.put, get=q.get, put_batch=q.put, get_batch=q.get,
                        send_marker=send_marker, close=close)

    def destroy(self, q):
        q.close()
        q.cancel_join_thread()


class FasterFifoAdapter(Adapter):
    name = "faster-fifo"
    batch_note = "put_many(256) / get_many(max_messages_to_get=256)"

    def available(self):
        try:
            import faster_fifo  # noqa: F401
        except Exception as e:  # noqa: BLE001
            return f"not installed ({e.__class__.__name__}); pip install faster-fifo"
        return None

    def version(self):
        return _dist_version("faster-fifo")

    def make_queue(self, spec):
        import faster_fifo
        # raw bytes: no pickling; loads copies the memoryview out (fastq also returns bytes)
        return faster_fifo.Queue(max_size_bytes=spec.capacity, loads=bytes, dumps=_identity)

    def open(self, q, role, index, spec):
        def send_marker(m, batch, timeout):
            try:
                q.put_many([m], timeout=timeout)
                return True
            except _queue.Full:
                return False

        return Endpoint(put=q.put, get=q.get, put_batch=q.put_many,
                        get_batch=partial(q.get_many, max_messages_to_get=spec.batch or BATCH),
                        send_marker=send_marker)


class ZmqHandle(NamedTuple):
    dir: str
    addrs: tuple  # one ipc:// address per producer; producers bind, consumers connect to all
    hwm: int


class ZmqAdapter(Adapter):
    """pyzmq PUSH/PULL over ipc://.

    Topology: every producer's PUSH socket binds its own ipc endpoint and every
    consumer's PULL socket connects to all of them, so each producer
    round-robins over all consumers and each consumer fair-queues from all
    producers: the same any-to-any delivery as one shared MPMC queue, with no
    broker process.  Batches are one ``send_multipart`` of 256 frames (an
    atomic multipart message) received with ``recv_multipart``.
    High-water marks are set so that buffering is comparable to the bounded
    queues (at least zmq's default 1000 messages).
    """

    name = "zmq"
    batch_note = "send_multipart(256 frames) / recv_multipart()"

    def available(self):
        try:
            import zmq  # noqa: F401
        except Exception as e:  # noqa: BLE001
            return f"not installed ({e.__class__.__name__}); pip install pyzmq"
        return None

    def version(self):
        import zmq
        return f"pyzmq {zmq.__version__}, libzmq {zmq.zmq_version()}"

    def make_queue(self, spec):
        d = tempfile.mkdtemp(prefix="fastq-bench-zmq-")
        addrs = tuple(f"ipc://{d}/p{i}" for i in range(spec.producers))
        per_msg = spec.size * (spec.batch or 1)
        hwm = max(1000, spec.capacity // per_msg // 2)  # split between both ends
        return ZmqHandle(d, addrs, hwm)

    def open(self, h, role, index, spec):
        import zmq
        ctx = zmq.Context()
        if role == "producer":
            s = ctx.socket(zmq.PUSH)
            s.setsockopt(zmq.SNDHWM, h.hwm)
            s.bind(h.addrs[index])

            def send_marker(m, batch, timeout):
                if s.poll(int(timeout * 1000), zmq.POLLOUT):
                    try:
                        s.send(m, zmq.NOBLOCK)
                        return True
                    except zmq.Again:
                        return False
                return False

            def close():
                s.close(linger=10_000)  # deliver what is queued, bounded
                ctx.term()

            return Endpoint(put=s.send, put_batch=s.send_multipart,
                            send_marker=send_marker, close=close)
        s = ctx.socket(zmq.PULL)
        s.setsockopt(zmq.RCVHWM, h.hwm)
        s.setsockopt(zmq.RECONNECT_IVL, 10)
        for a in h.addrs:
            s.connect(a)
        time.sleep(0.05)  # let the (async) connects complete before the start barrier

        def close():
            s.close(linger=0)
            ctx.term()

        return Endpoint(get=s.recv, get_batch=s.recv_multipart, close=close)

    def destroy(self, h):
        shutil.rmtree(h.dir, ignore_errors=True)


class _ThreadQueueAdapter(Adapter):
    kinds = ("thread",)
    factory: Callable[[QueueSpec], Any]

    def version(self):
        return "stdlib " + platform.python_version()

    def open(self, q, role, index, spec):
        def send_marker(m, batch, timeout):
            try:
                q.put(m, timeout=timeout)
                return True
            except _queue.Full:
                return False

        return Endpoint(put=q.put, get=q.get, send_marker=send_marker)


class QueueQueueAdapter(_ThreadQueueAdapter):
    name = "queue.Queue"

    def make_queue(self, spec):
        return _queue.Queue(maxsize=max(64, spec.capacity // spec.size))


class SimpleQueueAdapter(_ThreadQueueAdapter):
    name = "queue.SimpleQueue"

    def make_queue(self, spec):
        return _queue.SimpleQueue()  # unbounded; put never blocks


ADAPTERS: Dict[str, type] = {
    a.name: a for a in (FastqAdapter, MPQueueAdapter, FasterFifoAdapter, ZmqAdapter,
                        QueueQueueAdapter, SimpleQueueAdapter)
}


def get_adapter(name: str) -> Adapter:
    return ADAPTERS[name]()


# --------------------------------------------------------------------------
# worker loops (identical for every implementation)
# --------------------------------------------------------------------------

def _producer(ep: Endpoint, payload: bytes, sc: Scenario, index: int, duration: float,
              barrier, finished, start_phase: Callable[[], None]) -> dict:
    start_phase()
    marker = bytes([index])
    n = 0
    if sc.batch:
        put_batch = ep.put_batch
        # distinct objects, as real data would be (pickle would memoize one object repeated)
        batch = [bytes(bytearray(payload)) for _ in range(sc.batch)]
        t0 = _perf()
        deadline = t0 + duration
        while True:
            put_batch(batch)
            n += sc.batch
            if _perf() >= deadline:
                break
    else:
        put = ep.put
        chunk = 8 if sc.size >= 8192 else 64
        rng = range(chunk)
        t0 = _perf()
        deadline = t0 + duration
        while True:
            for _ in rng:
                put(payload)
            n += chunk
            if _perf() >= deadline:
                break
    t_end = _perf()
    # end markers: one per consumer at once, then keep offering one every 2 ms
    # until every consumer has finished (zmq may route two to the same consumer)
    batch_mode = bool(sc.batch)
    hard = time.monotonic() + MARKER_TIMEOUT
    sent = 0
    while sent < sc.consumers and time.monotonic() < hard:
        if ep.send_marker(marker, batch_mode, 1.0):
            sent += 1
    while finished.value < sc.consumers and time.monotonic() < hard:
        time.sleep(0.002)
        if finished.value < sc.consumers:
            ep.send_marker(marker, batch_mode, 0.05)
    ep.close()
    return {"role": "producer", "index": index, "count": n, "t0": t0, "t_end": t_end}


def _consumer(ep: Endpoint, payload: bytes, sc: Scenario, index: int, barrier, finished,
              start_phase: Callable[[], None]) -> dict:
    start_phase()
    P = sc.producers
    seen = set()
    n = 0
    bad = 0
    if sc.batch:
        get_batch = ep.get_batch
        first = True
        while True:
            b = get_batch()
            if first and len(b[0]) != 1:
                first = False
                bad += (b[0] != payload) + (len(b[-1]) != 1 and b[-1] != payload)
            if len(b[-1]) == 1 or len(b[0]) == 1:  # contains end marker(s): slow path
                for m in b:
                    if len(m) == 1:
                        seen.add(m[0])
                    else:
                        n += 1
                if len(seen) >= P:
                    break
                continue
            n += len(b)
    else:
        get = ep.get
        m = get()
        if len(m) != 1:
            bad += m != payload
        while True:
            if len(m) == 1:
                seen.add(m[0])
                if len(seen) >= P:
                    break
            else:
                n += 1
            m = get()
    t1 = _perf()
    with finished.get_lock():
        finished.value += 1
    ep.close()
    return {"role": "consumer", "index": index, "count": n, "t1": t1, "bad_payloads": bad}


def _pinger(ep_out: Endpoint, ep_in: Endpoint, payload: bytes, duration: float,
            start_phase: Callable[[], None]) -> dict:
    start_phase()
    put, get = ep_out.put, ep_in.get
    bad = 0
    for _ in range(WARMUP_ROUNDTRIPS):
        put(payload)
        bad += get() != payload
    samples = []
    app = samples.append
    ns = time.perf_counter_ns
    t_start = _perf()
    deadline = t_start + duration
    i = 0
    while True:
        t = ns()
        put(payload)
        get()
        app(ns() - t)
        i += 1
        if not (i & 15) and _perf() >= deadline:
            break
    elapsed = _perf() - t_start
    ep_out.send_marker(b"\x00", False, 5.0)
    ep_out.close()
    ep_in.close()
    samples.sort()
    k = len(samples)

    def pct(p):
        return samples[min(k - 1, int(p / 100.0 * k))] / 1000.0

    return {"role": "ping", "count": k, "elapsed": elapsed, "p50_us": pct(50),
            "p99_us": pct(99), "p999_us": pct(99.9), "min_us": samples[0] / 1000.0,
            "mean_us": sum(samples) / k / 1000.0, "bad_payloads": bad}


def _ponger(ep_in: Endpoint, ep_out: Endpoint, start_phase: Callable[[], None]) -> dict:
    start_phase()
    get, put = ep_in.get, ep_out.put
    n = 0
    while True:
        m = get()
        if len(m) == 1:
            break
        put(m)
        n += 1
    ep_in.close()
    ep_out.close()
    return {"role": "pong", "count": n}


class _LocalCounter:
    """threading stand-in for multiprocessing.Value('i')."""

    def __init__(self):
        self.value = 0
        self._lock = threading.Lock()

    def get_lock(self):
        return self._lock


# ---- process entry points (module level: importable by spawned children) ----

def _start_workers(ctx, roles, procs: list, conns: dict, name: str, target, make_args) -> None:
    """Spawn one worker per (role, index), each with the write end of its own
    result pipe; procs/conns are filled as they start (the caller reaps them)."""
    for role, idx in roles:
        r, w = ctx.Pipe(duplex=False)
        p = ctx.Process(target=target, name=name.format(f"{role}{idx}"), args=make_args(role, idx, w), daemon=True)
        p.start()
        w.close()
        procs.append(p)
        conns[f"{role}{idx}"] = r


def _send_result(conn, role: str, index: int, work: Callable[[], dict]) -> None:
    """Run a worker body in a child and send its result, or its error, to the parent."""
    try:
        res = work()
    except BaseException as e:  # noqa: BLE001 - everything goes back to the parent
        res = {"role": role, "index": index,
               "error": f"{e.__class__.__name__}: {e}\n{traceback.format_exc()}"}
    try:
        conn.send(res)
    finally:
        conn.close()


def _proc_worker(role: str, index: int, adapter_name: str, qs: list, sc: Scenario,
                 spec: QueueSpec, payload: bytes, duration: float, barrier, finished, conn):
    _send_result(conn, role, index, lambda: _run_role(get_adapter(adapter_name), role, index, qs, sc, spec,
                                                      payload, duration, barrier, finished))


def _run_role(adapter, role, index, qs, sc, spec, payload, duration, barrier, finished):
    wait = partial(barrier.wait, STARTUP_TIMEOUT)
    if role in ("producer", "consumer"):
        q = qs[0]
        if role == "producer":
            ep = adapter.open(q, "producer", index, spec)
            wait()  # phase 1: every producer is open (zmq: bound)

            def start():
                wait()  # phase 2: every consumer is open
            return _producer(ep, payload, sc, index, duration, barrier, finished, start)
        wait()
        ep = adapter.open(q, "consumer", index, spec)

        def start():
            wait()
        return _consumer(ep, payload, sc, index, barrier, finished, start)
    q1, q2 = qs  # ping-pong: q1 ping->pong, q2 pong->ping
    if role == "ping":
        out = adapter.open(q1, "producer", 0, spec)
        wait()
        inp = adapter.open(q2, "consumer", 0, spec)
        return _pinger(out, inp, payload, duration, wait)
    if role == "pong":
        out = adapter.open(q2, "producer", 0, spec)
        wait()
        inp = adapter.open(q1, "consumer", 0, spec)
        return _ponger(inp, out, wait)
    raise ValueError(role)


def _thread_cell_worker(adapter_name: str, sc: Scenario, spec: QueueSpec, payload: bytes,
                        duration: float, conn):
    """A whole thread-scenario cell inside one spawned process."""
    try:
        adapter = get_adapter(adapter_name)
        q = adapter.make_queue(spec)
        n = sc.producers + sc.consumers
        barrier = threading.Barrier(n)
        finished = _LocalCounter()
        results: List[dict] = []
        lock = threading.Lock()

        def run(role, index):
            try:
                r = _run_role(adapter, role, index, [q], sc, spec, payload, duration,
                              barrier, finished)
            except BaseException as e:  # noqa: BLE001
                r = {"role": role, "index": index,
                     "error": f"{e.__class__.__name__}: {e}\n{traceback.format_exc()}"}
                barrier.abort()
            with lock:
                results.append(r)

        threads = [threading.Thread(target=run, args=("producer", i), daemon=True)
                   for i in range(sc.producers)]
        threads += [threading.Thread(target=run, args=("consumer", i), daemon=True)
                    for i in range(sc.consumers)]
        for t in threads:
            t.start()
        limit = time.monotonic() + STARTUP_TIMEOUT + duration + MARKER_TIMEOUT
        for t in threads:
            t.join(max(0.0, limit - time.monotonic()))
        if any(t.is_alive() for t in threads):
            results.append({"role": "cell", "error": "thread(s) still running at deadline"})
        try:
            adapter.destroy(q)
        except Exception as e:  # noqa: BLE001
            results.append({"role": "cell", "error": f"destroy failed: {e!r}"})
        conn.send(results)
    except BaseException as e:  # noqa: BLE001
        conn.send([{"role": "cell", "error": f"{e.__class__.__name__}: {e}\n"
                                             f"{traceback.format_exc()}"}])
    finally:
        conn.close()
    # daemon threads that are stuck must not keep the process alive
    os._exit(0)


# --------------------------------------------------------------------------
# running one cell
# --------------------------------------------------------------------------

def _reap(procs: Sequence[multiprocessing.Process], grace: float = 5.0) -> List[str]:
    """Join with a bound, then terminate / kill whatever is left. Returns notes."""
    notes = []
    limit = time.monotonic() + grace
    for p in procs:
        p.join(max(0.0, limit - time.monotonic()))
    for p in procs:
        if p.is_alive():
            notes.append(f"{p.name} (pid {p.pid}) still running: terminated")
            p.terminate()
            p.join(2.0)
            if p.is_alive():
                p.kill()
                p.join(2.0)
    return notes


def _collect(conns: Dict[str, Any], deadline: float) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    pending = dict(conns)
    while pending:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        ready = multiprocessing.connection.wait(list(pending.values()), timeout=left)
        for c in ready:
            name = next(k for k, v in pending.items() if v is c)
            try:
                out[name] = c.recv()
            except EOFError:
                out[name] = {"role": name, "error": "worker exited without a result"}
            del pending[name]
    for name in pending:
        out[name] = {"role": name, "error": "no result before the cell deadline (hang?)"}
    return out


def _cpu_times():
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = v[3] + (v[4] if len(v) > 4 else 0)  # idle + iowait
    return sum(v), idle


def background_load(interval: float = 0.1) -> Optional[float]:
    """Busy CPUs (0..ncpu) on the machine over `interval` while we are idle.

    Sampled before each cell: the machine is shared, and another process
    competing for the 2 cores changes the results a lot; cells that started
    on a busy machine are flagged in the table.
    """
    a = _cpu_times()
    if a is None:
        return None
    time.sleep(interval)
    b = _cpu_times()
    total, idle = b[0] - a[0], b[1] - a[1]
    if total <= 0:
        return None
    return round((1.0 - idle / total) * (os.cpu_count() or 1), 2)


class _ForeignCpu:
    """CPUs used by processes other than this one and its children over a span.

    /proc/stat busy time of the whole machine minus getrusage(SELF + CHILDREN)
    (children count once reaped), divided by wall time.  Linux only.
    """

    def __init__(self, pids: Sequence[int] = ()):
        import resource
        self._res = resource
        self.hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.pids = tuple(pids)  # also ours: helpers that are not reaped (redis-server)
        self.t0 = time.monotonic()
        self.s0 = _cpu_times()
        self.u0 = self._ours()

    def _ours(self):
        r = self._res
        a, b = r.getrusage(r.RUSAGE_SELF), r.getrusage(r.RUSAGE_CHILDREN)
        t = a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime
        for pid in self.pids:
            try:
                with open(f"/proc/{pid}/stat") as f:
                    v = f.read().rsplit(")", 1)[1].split()
                t += (int(v[11]) + int(v[12])) / self.hz  # utime + stime
            except (OSError, ValueError, IndexError):
                pass
        return t

    def stop(self) -> Optional[float]:
        s1 = _cpu_times()
        if self.s0 is None or s1 is None:
            return None
        wall = time.monotonic() - self.t0
        busy = ((s1[0] - s1[1]) - (self.s0[0] - self.s0[1])) / self.hz
        foreign = busy - (self._ours() - self.u0)
        return round(max(0.0, foreign / wall), 2) if wall > 0 else None


BUSY_THRESHOLD = 0.25  # busy CPUs before a cell above which it is flagged


def run_cell(scenario: Scenario | str, adapter_name: str, duration: float = DEFAULT_DURATION,
             capacity: int = DEFAULT_CAPACITY) -> dict:
    """Run one (scenario, implementation) cell once; return a result dict.

    result["status"] is "ok" or "error"; "rate" (msg/s), "mb_s", or
    "p50_us"/"p99_us" are set for ok cells.
    """
    sc = scenario_by_name(scenario) if isinstance(scenario, str) else scenario
    adapter = get_adapter(adapter_name)
    spec = QueueSpec(capacity, sc.size, sc.batch, sc.producers, sc.consumers)
    payload = bytes((i * 7 + 3) & 0xFF for i in range(sc.size))
    ctx = multiprocessing.get_context("spawn")
    cell = {"scenario": sc.name, "impl": adapter.name, "duration": duration,
            "background_cpus": background_load()}
    deadline = time.monotonic() + STARTUP_TIMEOUT + duration * 3 + MARKER_TIMEOUT
    procs: List[multiprocessing.Process] = []
    conns: Dict[str, Any] = {}
    qs: list = []
    try:
        foreign = _ForeignCpu()
    except Exception:  # noqa: BLE001 - not Linux
        foreign = None
    try:
        if sc.kind == "thread":
            r, w = ctx.Pipe(duplex=False)
            p = ctx.Process(target=_thread_cell_worker, name=f"bench-{sc.name}-{adapter.name}",
                            args=(adapter.name, sc, spec, payload, duration, w), daemon=True)
            p.start()
            w.close()
            procs.append(p)
            got = _collect({"cell": r}, deadline)["cell"]
            results = got if isinstance(got, list) else [got]
        else:
            if sc.mode == "pingpong":
                qs = [adapter.make_queue(spec), adapter.make_queue(spec)]
                roles = [("ping", 0), ("pong", 0)]
            else:
                qs = [adapter.make_queue(spec)]
                roles = [("producer", i) for i in range(sc.producers)]
                roles += [("consumer", i) for i in range(sc.consumers)]
            barrier = ctx.Barrier(len(roles))
            finished = ctx.Value("i", 0)
            _start_workers(ctx, roles, procs, conns, f"bench-{{}}-{adapter.name}", _proc_worker,
                           lambda role, idx, w: (role, idx, adapter.name, qs, sc, spec, payload,
                                                 duration, barrier, finished, w))
            results = list(_collect(conns, deadline).values())
    finally:
        notes = _reap(procs)
        for q in qs:
            try:
                adapter.destroy(q)
            except Exception as e:  # noqa: BLE001
                notes.append(f"destroy failed: {e!r}")
    cell["foreign_cpus"] = foreign.stop() if foreign is not None else None
    errors = [f"{r.get('role')}{r.get('index', '')}: {r['error']}" for r in results if "error" in r]
    errors += notes
    for p in procs:
        if p.exitcode not in (0, None) and p.exitcode != -15 and p.exitcode != -9:
            errors.append(f"{p.name} exit code {p.exitcode}")
    cell["workers"] = results
    if errors:
        cell["status"] = "error"
        cell["error"] = "; ".join(errors)
        return cell
    if sc.mode == "pingpong":
        ping = next(r for r in results if r["role"] == "ping")
        pong = next(r for r in results if r["role"] == "pong")
        expect = ping["count"] + WARMUP_ROUNDTRIPS
        if pong["count"] != expect or ping["bad_payloads"]:
            cell.update(status="error", error=f"pong echoed {pong['count']} messages, "
                        f"ping sent {expect}; bad payloads {ping['bad_payloads']}")
            return cell
        cell.update(status="ok", roundtrips=ping["count"], p50_us=ping["p50_us"],
                    p99_us=ping["p99_us"], p999_us=ping["p999_us"], mean_us=ping["mean_us"],
                    rate=ping["count"] / ping["elapsed"])
        return cell
    prods = [r for r in results if r["role"] == "producer"]
    cons = [r for r in results if r["role"] == "consumer"]
    sent = sum(r["count"] for r in prods)
    got = sum(r["count"] for r in cons)
    bad = sum(r["bad_payloads"] for r in cons)
    if sent != got or bad or len(prods) != sc.producers or len(cons) != sc.consumers:
        cell.update(status="error", error=f"count mismatch or corruption: producers sent {sent}, "
                    f"consumers received {got} ({[r['count'] for r in cons]}), "
                    f"bad payloads {bad}")
        return cell
    t0 = min(r["t0"] for r in prods)
    t1 = max(r["t1"] for r in cons)
    elapsed = t1 - t0
    cell.update(status="ok", messages=got, elapsed=elapsed, rate=got / elapsed,
                mb_s=got * sc.size / elapsed / 1e6,
                producer_rate=sent / max(r["t_end"] - r["t0"] for r in prods))
    return cell


# --------------------------------------------------------------------------
# driver
# --------------------------------------------------------------------------

def _fmt_rate(v: float, unit: str) -> str:
    if unit == "MB/s":
        return f"{v:,.0f} MB/s"
    for div, suf in ((1e6, "M"), (1e3, "k")):
        if v >= div:
            return f"{v / div:.2f} {suf} msg/s"
    return f"{v:.0f} msg/s"


def _noisy(r: dict) -> bool:
    return max(r.get("background_cpus") or 0, r.get("foreign_cpus") or 0) > BUSY_THRESHOLD


def _summary(sc: Scenario, runs: List[dict]) -> dict:
    ok = [r for r in runs if r["status"] == "ok"]
    if not ok:
        return {"status": "error", "error": runs[-1].get("error", "?") if runs else "no runs"}
    s: Dict[str, Any] = {"status": "ok" if len(ok) == len(runs) else "partial",
                         "runs_ok": len(ok), "runs": len(runs),
                         "busy_runs": sum(1 for r in runs if _noisy(r))}
    if sc.mode == "pingpong":
        s["p50_us"] = statistics.median(r["p50_us"] for r in ok)
        s["p99_us"] = statistics.median(r["p99_us"] for r in ok)
        s["rate"] = statistics.median(r["rate"] for r in ok)
    else:
        s["rate"] = statistics.median(r["rate"] for r in ok)
        s["mb_s"] = statistics.median(r["mb_s"] for r in ok)
    if len(ok) != len(runs):
        s["error"] = next(r["error"] for r in runs if r["status"] != "ok")
    return s


def _value_str(sc: Scenario, s: dict) -> str:
    if s["status"] == "error":
        return "FAILED"
    return _value_str0(sc, s) + (" *" if s.get("busy_runs") else "")


def _value_str0(sc: Scenario, s: dict) -> str:
    if sc.mode == "pingpong":
        def us(v):
            return f"{v:.2f}" if v < 10 else f"{v:.1f}"
        return f"p50 {us(s['p50_us'])} us / p99 {us(s['p99_us'])} us"
    if sc.unit == "MB/s":
        return _fmt_rate(s["mb_s"], "MB/s")
    return _fmt_rate(s["rate"], "msg/s")


def _ratio_str(sc: Scenario, fq: Optional[dict], s: dict, is_fastq: bool) -> str:
    if is_fastq:
        return "1.00" if s["status"] != "error" else "-"
    if fq is None or fq["status"] == "error" or s["status"] == "error":
        return "n/a"
    if sc.mode == "pingpong":
        return f"{s['p50_us'] / fq['p50_us']:.1f} / {s['p99_us'] / fq['p99_us']:.1f}"
    return f"{fq['rate'] / s['rate']:.2f}"


def format_table(rows: List[dict]) -> str:
    """rows: [{scenario, impl, summary}] in run order -> plain-text table."""
    by_sc: Dict[str, Dict[str, dict]] = {}
    for r in rows:
        by_sc.setdefault(r["scenario"], {})[r["impl"]] = r["summary"]
    head = ("scenario", "implementation", "result", "fastq advantage")
    lines = []
    for scname, impls in by_sc.items():
        sc = scenario_by_name(scname)
        fq = impls.get("fastq")
        for name, s in impls.items():
            lines.append((scname, name, _value_str(sc, s),
                          _ratio_str(sc, fq, s, name == "fastq")))
    w = [max(len(h), *(len(l[i]) for l in lines)) if lines else len(h)
         for i, h in enumerate(head)]
    out = ["  ".join(h.ljust(w[i]) for i, h in enumerate(head)),
           "  ".join("-" * x for x in w)]
    out += ["  ".join(c.ljust(w[i]) for i, c in enumerate(l)) for l in lines]
    out.append("fastq advantage: fastq rate / peer rate; ping-pong: peer p50 / fastq p50 "
               "and peer p99 / fastq p99. > 1 means fastq is better.")
    if any(r["summary"].get("busy_runs") for r in rows):
        out.append(f"* other processes used > {BUSY_THRESHOLD} CPU just before or during at "
                   "least one run of this cell (shared machine): treat it as noisy")
    return "\n".join(out)


class _Progress:
    def __init__(self, total: int, stream, enabled: bool = True):
        self.total, self.stream, self.enabled = total, stream, enabled
        self.tty = enabled and hasattr(stream, "isatty") and stream.isatty()
        self.width = 0

    def show(self, done: int, label: str):
        if not self.enabled:
            return
        n = 10
        filled = n * done // max(1, self.total)
        s = f"[{'#' * filled}{'.' * (n - filled)}] {done}/{self.total} {label}"
        if self.tty:
            self.stream.write("\r" + s.ljust(self.width))
            self.width = len(s)
        else:
            self.stream.write(s + "\n")
        self.stream.flush()

    def end(self):
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()


def environment() -> dict:
    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
    }
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    env["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    versions = {}
    for name, cls in ADAPTERS.items():
        a = cls()
        if a.available() is None:
            try:
                versions[name] = a.version()
            except Exception:  # noqa: BLE001
                versions[name] = "?"
    env["versions"] = versions
    return env


def _wait_quiet(limit: float) -> Optional[float]:
    """Wait (up to `limit` s) until other processes use < BUSY_THRESHOLD CPU."""
    end = time.monotonic() + limit
    while True:
        b = background_load(0.5)
        if b is None or b < BUSY_THRESHOLD or time.monotonic() >= end:
            return b


def _parse(argv):
    if argv and argv[0] == "--":  # `python -m fastq bench -- --quick` (argparse REMAINDER keeps it)
        argv = argv[1:]
    p = argparse.ArgumentParser(
        prog="python -m fastq bench",
        description="Compare fastq with multiprocessing.Queue, faster-fifo, pyzmq and "
                    "queue.Queue / SimpleQueue on this machine (spawned processes).")
    p.add_argument("--quick", action="store_true",
                   help=f"CI smoke: {QUICK_DURATION} s per cell instead of {DEFAULT_DURATION} s")
    p.add_argument("--duration", type=float, default=None,
                   help="seconds of timed traffic per cell (overrides --quick)")
    p.add_argument("--scenarios", default="",
                   help="comma-separated subset: " + ", ".join(s.name for s in SCENARIOS)
                   + ", numpy, groups, durable, replay (aliases: single, batched, 64k, pingpong, 2x2, "
                   "threads); groups = consumer groups, fastq.Log against Redis Streams; "
                   "durable = persistent queues (fastq._bench_durable); replay = Log.read from the "
                   "middle of a 4 GiB durable log (FASTQ_REPLAY_BYTES to change the size)")
    p.add_argument("--impls", default="",
                   help="comma-separated subset of: " + ", ".join(ADAPTERS)
                   + ", redis (redis: the groups scenario only); with durable, also its "
                   "names or their prefixes (sqlite3, persistqueue, redis)")
    p.add_argument("--repeat", type=int, default=1, help="runs per cell; the median is reported")
    p.add_argument("--capacity", type=int, default=DEFAULT_CAPACITY,
                   help="bytes of buffering for bounded queues (default 16 MiB)")
    p.add_argument("--json", metavar="PATH", help="write the raw results as JSON")
    p.add_argument("--wait-quiet", type=float, default=0.0, metavar="S",
                   help="before each run, wait up to S seconds for other processes to use "
                        f"< {BUSY_THRESHOLD} CPU (shared machines)")
    p.add_argument("--rerun-noisy", type=int, default=0, metavar="K",
                   help="re-run a run up to K times when other processes used CPU before "
                        "or during it (the last attempt is kept)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.add_argument("--list", action="store_true", help="list scenarios and implementations")
    p.add_argument("--install-peers", action="store_true",
                   help="jobs scenario: install Celery, Dramatiq, RQ (pip) and redis-server (apt-get, root) first")
    return p.parse_args(argv)


def _numpy_producer(q, rows: int, duration: float, ready, go) -> None:
    import numpy as np
    block = np.arange(rows * 2, dtype=np.uint64).reshape(rows, 2)   # 16-byte records
    ready.set()
    go.wait(30)
    end = time.perf_counter() + duration
    while time.perf_counter() < end:
        q.put_many(block)
    q.put(b"E")  # a record of another size ends the stream


def numpy_cell(duration: float = DEFAULT_DURATION, capacity: int = 256 << 20, rows: int = 65536) -> dict:
    """fastq only: 16-byte records between two spawned processes with
    put_many(ndarray) / get_array (no Python object per record)."""
    import numpy as np
    from .queue import Queue
    ctx = multiprocessing.get_context("spawn")
    q = Queue(capacity=capacity, serializer=None)
    ready, go = ctx.Event(), ctx.Event()
    p = ctx.Process(target=_numpy_producer, args=(q, rows, duration, ready, go), daemon=True)
    try:
        p.start()
        if not ready.wait(60):
            return {"status": "error", "error": "producer did not start"}
        dt_rec = np.dtype((np.uint64, 2))
        go.set()
        n = 0
        t0 = time.perf_counter()
        deadline = t0 + duration + 30
        while time.perf_counter() < deadline:
            try:
                n += len(q.get_array(dt_rec, max_messages=rows, timeout=10))
            except ValueError:  # the end marker
                q.get(timeout=1)
                break
        dt = time.perf_counter() - t0
        return {"status": "ok", "records": n, "rate": n / dt, "seconds": dt}
    finally:
        _reap([p])
        q.close()


# --------------------------------------------------------------------------
# consumer groups: fastq.Log groups side by side with Redis Streams groups
# --------------------------------------------------------------------------
#
# One producer process appends 64 B records in batches of 256 for `duration`
# seconds (fastq: Log.append_many; Redis: 256 XADDs in one pipeline), then
# 1-byte end markers, re-offered every 2 ms until every consumer is done (as in
# the queue cells).  Consumer processes of one group lease 256 at a time and ack
# them (fastq: Consumer.get_many(256) + Consumer.ack(batch) or Message.ack()
# each; Redis: XREADGROUP COUNT 256, with the XACK of the previous batch sent
# in the same pipeline round trip).  A consumer stops at the first end marker
# it gets; a group delivers in offset order, so every record before it has been
# delivered, to this consumer or to another one that is still running.
# Rate = records acked / (last consumer end - producer start).  Verified: the
# records acked equal the records appended, every ack succeeded, and the group
# has nothing pending at the end (fastq: no redelivery either).

GROUP_NAME = "bench"
GROUP_LOG_CAPACITY = 256 << 20
GROUP_WINDOW = 4096
GROUP_IMPLS = ("fastq", "redis")
GROUPS_IN_DEFAULT_RUN = True  # the section takes ~15 s at 1 s per cell


class GroupCell(NamedTuple):
    name: str
    consumers: int
    ack: str  # "batch" | "each"
    doc: str


GROUP_CELLS: List[GroupCell] = [
    GroupCell("1 consumer, batch ack", 1, "batch",
              "1 producer -> 1 consumer: get_many(256) + ack(batch) / XREADGROUP COUNT 256 + "
              "one XACK of 256 ids (pipelined with the next XREADGROUP)"),
    GroupCell("4 consumers, batch ack", 4, "batch",
              "1 producer -> 4 consumer processes in one group, as above"),
    GroupCell("1 consumer, per-message ack", 1, "each",
              "1 producer -> 1 consumer: get_many(256) + m.ack() per message / XREADGROUP "
              "COUNT 256 + 256 one-id XACKs (pipelined)"),
]


def _group_settings() -> dict:
    return dict(start="earliest", visibility_timeout=30.0, max_deliveries=None,
                dead_letter=None, window=GROUP_WINDOW)


def _group_producer(impl: str, target: Any, gc: GroupCell, payload: bytes, duration: float,
                    wait: Callable[[], None], finished) -> dict:
    batch = [bytes(bytearray(payload)) for _ in range(BATCH)]  # distinct objects
    if impl == "fastq":
        from .log import open as log_open
        log = log_open(target, create=False)
        append_many = partial(log.append_many, timeout=MARKER_TIMEOUT)

        def put_batch():
            append_many(batch)

        def send_marker():
            log.append(b"\x00", timeout=1.0)

        close = log.close
    else:
        import redis
        host, port, key = target
        r = redis.Redis(host=host, port=port)
        pipe = r.pipeline(transaction=False)
        cmd = pipe.execute_command
        fields = [(b"d", m) for m in batch]

        def put_batch():
            for f, v in fields:
                cmd("XADD", key, "*", f, v)
            pipe.execute()

        def send_marker():
            r.execute_command("XADD", key, "*", b"d", b"\x00")

        close = r.close
    wait()  # phase 1: the producer is open
    wait()  # phase 2: every consumer is open
    n = 0
    t0 = _perf()
    deadline = t0 + duration
    while True:
        put_batch()
        n += BATCH
        if _perf() >= deadline:
            break
    t_end = _perf()
    hard = time.monotonic() + MARKER_TIMEOUT
    for _ in range(gc.consumers):
        send_marker()
    while finished.value < gc.consumers and time.monotonic() < hard:
        time.sleep(0.002)
        if finished.value < gc.consumers:
            send_marker()
    close()
    return {"role": "producer", "index": 0, "count": n, "t0": t0, "t_end": t_end}


def _group_consumer(impl: str, target: Any, gc: GroupCell, index: int, payload: bytes,
                    duration: float, wait: Callable[[], None], finished) -> dict:
    n = acked = bad = 0
    wait()  # phase 1: the producer is open
    if impl == "fastq":
        from .log import open as log_open
        log = log_open(target, create=False)
        c = log.group(GROUP_NAME, **_group_settings()).consumer()
        get_many = partial(c.get_many, BATCH, timeout=1.0)
        ack_batch = c.ack
        per_message = gc.ack == "each"
        wait()  # phase 2
        hard = time.monotonic() + duration + MARKER_TIMEOUT + STARTUP_TIMEOUT
        first = True
        while True:
            msgs = get_many()
            if not msgs:
                if time.monotonic() > hard:
                    raise TimeoutError(f"no end marker after {n} records")
                continue
            if first:
                first = False
                bad += (msgs[0].data != payload and len(msgs[0].data) != 1)
            if per_message:
                for m in msgs:
                    if m.ack():
                        acked += 1
            else:
                acked += ack_batch(msgs)
            if len(msgs[-1].data) == 1 or len(msgs[0].data) == 1:  # end marker(s): slow path
                n += sum(1 for m in msgs if len(m.data) != 1)
                acked -= sum(1 for m in msgs if len(m.data) == 1)  # markers are not records
                break
            n += len(msgs)
        t1 = _perf()
        c.close()
        log.close()
    else:
        import redis
        host, port, key = target
        r = redis.Redis(host=host, port=port)
        pipe = r.pipeline(transaction=False)
        me = f"c{index}"
        streams = {key: ">"}
        xack, xreadgroup, execute = pipe.xack, pipe.xreadgroup, pipe.execute
        per_message = gc.ack == "each"
        wait()  # phase 2
        hard = time.monotonic() + duration + MARKER_TIMEOUT + STARTUP_TIMEOUT
        ids: list = []
        first = True
        while True:
            if ids:
                if per_message:
                    for i in ids:
                        xack(key, GROUP_NAME, i)
                else:
                    xack(key, GROUP_NAME, *ids)
            xreadgroup(GROUP_NAME, me, streams, count=BATCH, block=1000)
            res = execute()
            if ids:
                acked += sum(res[:-1])
            resp = res[-1]
            entries = resp[0][1] if resp else []
            ids = [e[0] for e in entries]
            if not entries:
                if time.monotonic() > hard:
                    raise TimeoutError(f"no end marker after {n} records")
                continue
            if first:
                first = False
                d = entries[0][1][b"d"]
                bad += (d != payload and len(d) != 1)
            if len(entries[-1][1][b"d"]) == 1 or len(entries[0][1][b"d"]) == 1:
                markers = sum(1 for e in entries if len(e[1][b"d"]) == 1)
                n += len(entries) - markers
                acked += r.xack(key, GROUP_NAME, *ids) - markers
                break
            n += len(entries)
        t1 = _perf()
        r.close()
    with finished.get_lock():
        finished.value += 1
    return {"role": "consumer", "index": index, "count": n, "acked": acked, "t1": t1,
            "bad_payloads": bad}


def _group_worker(impl: str, role: str, index: int, target: Any, gc: GroupCell, payload: bytes,
                  duration: float, barrier, finished, conn) -> None:
    def work() -> dict:
        wait = partial(barrier.wait, STARTUP_TIMEOUT)
        try:
            if role == "producer":
                return _group_producer(impl, target, gc, payload, duration, wait, finished)
            return _group_consumer(impl, target, gc, index, payload, duration, wait, finished)
        except BaseException:
            barrier.abort()  # nobody waits STARTUP_TIMEOUT for a worker that is gone
            raise
    _send_result(conn, role, index, work)


class RedisServer:
    """A throw-away redis-server on 127.0.0.1 (free port, temp dir).

    No persistence by default.  ``appendfsync="everysec"`` (or "always" / "no")
    turns the append-only file on with that fsync policy (RDB snapshots stay
    off); ``parent`` is where the temp dir, and so the AOF, is created."""

    def __init__(self, appendfsync: Optional[str] = None, parent: Optional[str] = None):
        self.proc = None
        self.dir = None
        self.port = None
        self.version = "?"
        self.appendfsync = appendfsync
        self.parent = parent

    @staticmethod
    def unavailable() -> Optional[str]:
        missing = []
        if shutil.which("redis-server") is None:
            missing.append("redis-server is not on PATH (apt-get install -y redis-server)")
        try:
            import redis  # noqa: F401
        except Exception as e:  # noqa: BLE001
            missing.append(f"the redis package is not importable ({e.__class__.__name__}; "
                           "pip install redis)")
        return "; ".join(missing) or None

    def start(self, timeout: float = 10.0) -> None:
        import socket
        import subprocess
        import redis
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.dir = tempfile.mkdtemp(prefix="fastq-bench-redis-", dir=self.parent)
        self._log = open(os.path.join(self.dir, "redis.log"), "wb")
        aof = (["--appendonly", "no"] if self.appendfsync is None
               else ["--appendonly", "yes", "--appendfsync", self.appendfsync])
        self.proc = subprocess.Popen(
            [shutil.which("redis-server"), "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", *aof, "--dir", self.dir, "--daemonize", "no"],
            cwd=self.dir, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        end = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}: "
                                   + self.log_tail())
            try:
                r = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1.0)
                if r.ping():
                    self.version = r.info("server").get("redis_version", "?")
                    r.close()
                    return
            except redis.exceptions.RedisError:
                pass
            if time.monotonic() > end:
                raise RuntimeError("redis-server did not answer PING within "
                                   f"{timeout:g} s: " + self.log_tail())
            time.sleep(0.05)

    def log_tail(self) -> str:
        try:
            with open(os.path.join(self.dir, "redis.log"), "rb") as f:
                return f.read()[-500:].decode(errors="replace")
        except OSError:
            return ""

    def client(self):
        import redis
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=30.0)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: clean shutdown (no RDB; an AOF is flushed)
            try:
                self.proc.wait(5.0)
            except Exception:  # noqa: BLE001 - subprocess.TimeoutExpired
                self.proc.kill()
                self.proc.wait(5.0)
        if getattr(self, "_log", None) is not None:
            self._log.close()
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)


def _redis_client_version() -> str:
    try:
        import redis
        from redis.utils import HIREDIS_AVAILABLE
        return f"redis-py {redis.__version__}" + (
            f", hiredis {_dist_version('hiredis')}" if HIREDIS_AVAILABLE else ", no hiredis")
    except Exception:  # noqa: BLE001
        return "?"


_group_seq = 0


def run_group_cell(gc: GroupCell | str, impl: str, duration: float = DEFAULT_DURATION,
                   redis_server: Optional[RedisServer] = None) -> dict:
    """Run one consumer-group cell ("fastq" or "redis") once; result dict like run_cell.

    For "redis", pass a started RedisServer."""
    global _group_seq
    if isinstance(gc, str):
        gc = next(c for c in GROUP_CELLS if _norm(c.name) == _norm(gc))
    if impl not in GROUP_IMPLS:
        raise ValueError(f"unknown consumer-group implementation {impl!r}")
    _group_seq += 1
    payload = bytes((i * 7 + 3) & 0xFF for i in range(64))
    ctx = multiprocessing.get_context("spawn")
    cell: Dict[str, Any] = {"scenario": gc.name, "impl": impl, "duration": duration,
                            "background_cpus": background_load()}
    deadline = time.monotonic() + STARTUP_TIMEOUT + duration * 3 + MARKER_TIMEOUT
    procs: List[multiprocessing.Process] = []
    conns: Dict[str, Any] = {}
    log = None
    rc = None
    results: List[dict] = []
    notes: List[str] = []
    final: Dict[str, Any] = {}
    try:
        foreign = _ForeignCpu([redis_server.proc.pid] if impl == "redis" and redis_server
                              and redis_server.proc else [])
    except Exception:  # noqa: BLE001 - not Linux
        foreign = None
    try:
        if impl == "fastq":
            from .log import open as log_open
            target = f"fastq-bench-groups-{os.getpid()}-{_group_seq}"
            log = log_open(target, capacity=GROUP_LOG_CAPACITY, max_groups=16, window=GROUP_WINDOW)
            log.group(GROUP_NAME, **_group_settings())
        else:
            if redis_server is None:
                raise ValueError("run_group_cell(..., 'redis') needs a started RedisServer")
            target = ("127.0.0.1", redis_server.port, f"fastq-bench:{os.getpid()}:{_group_seq}")
            rc = redis_server.client()
            rc.delete(target[2])
            rc.xgroup_create(target[2], GROUP_NAME, id="0", mkstream=True)
        roles = [("producer", 0)] + [("consumer", i) for i in range(gc.consumers)]
        barrier = ctx.Barrier(len(roles))
        finished = ctx.Value("i", 0)
        _start_workers(ctx, roles, procs, conns, f"bench-group-{{}}-{impl}", _group_worker,
                       lambda role, idx, w: (impl, role, idx, target, gc, payload, duration, barrier,
                                             finished, w))
        results = list(_collect(conns, deadline).values())
    finally:
        notes = _reap(procs)
        try:
            if log is not None:
                st = log.stats()["groups"][GROUP_NAME]
                final = {k: st[k] for k in ("pending", "delivered", "redelivered", "expired",
                                            "acked", "lag")}
                log.unlink()
                log.close()
            if rc is not None:
                info = next((g for g in rc.xinfo_groups(target[2])
                             if g["name"] in (GROUP_NAME, GROUP_NAME.encode())), {})
                final = {"pending": info.get("pending"), "lag": info.get("lag"),
                         "length": rc.xlen(target[2])}
                rc.delete(target[2])
                rc.close()
        except Exception as e:  # noqa: BLE001
            notes.append(f"clean-up failed: {e!r}")
    cell["foreign_cpus"] = foreign.stop() if foreign is not None else None
    cell["workers"] = results
    cell["group_state"] = final
    errors = [f"{r.get('role')}{r.get('index', '')}: {r['error']}" for r in results if "error" in r]
    errors += notes
    for p in procs:
        if p.exitcode not in (0, None, -15, -9):
            errors.append(f"{p.name} exit code {p.exitcode}")
    if errors:
        cell.update(status="error", error="; ".join(errors))
        return cell
    prods = [r for r in results if r["role"] == "producer"]
    cons = [r for r in results if r["role"] == "consumer"]
    sent = sum(r["count"] for r in prods)
    got = sum(r["count"] for r in cons)
    acked = sum(r["acked"] for r in cons)
    bad = sum(r["bad_payloads"] for r in cons)
    problems = []
    if sent != got or len(prods) != 1 or len(cons) != gc.consumers:
        problems.append(f"producer appended {sent}, consumers got {got} "
                        f"({[r['count'] for r in cons]})")
    if acked != got:
        problems.append(f"{got} records received but {acked} acks succeeded")
    if bad:
        problems.append(f"{bad} bad payloads")
    if final.get("pending"):
        problems.append(f"{final['pending']} still pending in the group at the end")
    if impl == "fastq" and (final.get("redelivered") or final.get("expired")):
        problems.append(f"redelivered {final.get('redelivered')}, expired {final.get('expired')}")
    if problems:
        cell.update(status="error", error="; ".join(problems))
        return cell
    t0 = prods[0]["t0"]
    elapsed = max(r["t1"] for r in cons) - t0
    cell.update(status="ok", messages=got, elapsed=elapsed, rate=got / elapsed,
                mb_s=got * 64 / elapsed / 1e6,
                producer_rate=sent / (prods[0]["t_end"] - t0))
    return cell


def _group_summary(runs: List[dict]) -> dict:
    ok = [r for r in runs if r["status"] == "ok"]
    if not ok:
        return {"status": "error", "error": runs[-1].get("error", "?") if runs else "no runs"}
    s: Dict[str, Any] = {"status": "ok" if len(ok) == len(runs) else "partial",
                         "runs_ok": len(ok), "runs": len(runs),
                         "busy_runs": sum(1 for r in runs if _noisy(r)),
                         "rate": statistics.median(r["rate"] for r in ok),
                         "producer_rate": statistics.median(r["producer_rate"] for r in ok)}
    if len(ok) != len(runs):
        s["error"] = next(r["error"] for r in runs if r["status"] != "ok")
    return s


def format_group_table(rows: List[dict]) -> str:
    """rows: [{scenario, impl, summary}] of consumer-group cells -> plain-text table."""
    by_cell: Dict[str, Dict[str, dict]] = {}
    for r in rows:
        by_cell.setdefault(r["scenario"], {})[r["impl"]] = r["summary"]
    head = ("consumer groups (1 producer)", "implementation", "acked", "producer",
            "fastq / redis")
    lines = []
    for name, impls in by_cell.items():
        fq, rd = impls.get("fastq"), impls.get("redis")
        for impl, s in impls.items():
            if s["status"] == "error":
                lines.append((name, impl, "FAILED", "", "-"))
                continue
            ratio = ""
            if impl == "fastq":
                ratio = "n/a" if rd is None or rd["status"] == "error" else \
                    f"{s['rate'] / rd['rate']:.1f}"
            lines.append((name, impl, _fmt_rate(s["rate"], "msg/s")
                          + (" *" if s.get("busy_runs") else ""),
                          _fmt_rate(s["producer_rate"], "msg/s"), ratio))
    w = [max(len(h), *(len(l[i]) for l in lines)) if lines else len(h)
         for i, h in enumerate(head)]
    out = ["  ".join(h.ljust(w[i]) for i, h in enumerate(head)),
           "  ".join("-" * x for x in w)]
    out += ["  ".join(c.ljust(w[i]) for i, c in enumerate(l)).rstrip() for l in lines]
    out.append("acked: 64 B records acked per second by the group, from the producer's start to "
               "the last consumer's end; producer: append rate while it ran. "
               "fastq / redis: ratio of the acked rates (> 1: fastq is faster).")
    if any(r["summary"].get("busy_runs") for r in rows):
        out.append(f"* other processes used > {BUSY_THRESHOLD} CPU just before or during at "
                   "least one run of this cell (shared machine): treat it as noisy")
    return "\n".join(out)


def run_groups(impls: Sequence[str], duration: float, repeat: int = 1, progress=None,
               wait_quiet: float = 0.0, rerun_noisy: int = 0) -> dict:
    """The consumer-group section: every GROUP_CELLS cell for each of `impls`.

    Starts (and always stops) its own redis-server when "redis" is wanted and
    available; otherwise the Redis cells are skipped with a note."""
    notes: List[str] = []
    impls = list(impls)
    server = None
    versions: Dict[str, str] = {}
    rows: List[dict] = []
    if "redis" in impls:
        why = RedisServer.unavailable()
        if why:
            notes.append(f"skipping the Redis Streams cells: {why}. To compare with Redis: "
                         "apt-get install -y redis-server && pip install redis "
                         "(or pip install 'fastq[bench]')")
            impls.remove("redis")
    try:
        if "fastq" in impls:
            versions["fastq"] = FastqAdapter().version()
        if "redis" in impls:
            server = RedisServer()
            try:
                server.start()
                versions["redis"] = f"redis-server {server.version}, {_redis_client_version()}"
            except Exception as e:  # noqa: BLE001
                notes.append(f"skipping the Redis Streams cells: could not start redis-server: {e}")
                impls.remove("redis")
        for gc in GROUP_CELLS:
            for impl in impls:
                runs = []
                for rep in range(repeat):
                    if progress is not None:
                        progress(f"groups: {gc.name} {impl}"
                                 + (f" (run {rep + 1})" if repeat > 1 else ""))
                    reruns = 0
                    while True:
                        if wait_quiet > 0:
                            _wait_quiet(wait_quiet)
                        try:
                            r = run_group_cell(gc, impl, duration, server)
                        except Exception as e:  # noqa: BLE001 - keep going, report it
                            r = {"scenario": gc.name, "impl": impl, "status": "error",
                                 "error": f"{e.__class__.__name__}: {e}\n{traceback.format_exc()}"}
                        if r["status"] == "ok" and _noisy(r) and reruns < rerun_noisy:
                            reruns += 1
                            continue
                        break
                    r["noisy_reruns"] = reruns
                    runs.append(r)
                rows.append({"scenario": gc.name, "impl": impl, "summary": _group_summary(runs),
                             "runs": runs})
    finally:
        if server is not None:
            server.stop()
    return {"cells": [gc._asdict() for gc in GROUP_CELLS], "versions": versions,
            "notes": notes, "results": rows}


def main(argv: Optional[List[str]] = None) -> int:
    args = _parse(argv)
    if args.list:
        for sc in SCENARIOS:
            print(f"{sc.name:12}  {sc.doc}")
        print(f"{'numpy':12}  fastq only: put_many(ndarray) / get_array of 16-byte records, 1 -> 1")
        print(f"{'groups':12}  consumer groups, fastq.Log against Redis Streams:")
        for gc in GROUP_CELLS:
            print(f"{'':14}{gc.name}: {gc.doc}")
        from ._bench_durable import IMPLS as durable_registry
        from ._bench_jobs import IMPLS as job_tools, available as job_available
        print(f"{'jobs':12}  no-op jobs/s and enqueue->start latency, 2 workers (fastq._bench_jobs):")
        for n_ in job_tools:
            print(f"{'':14}{n_}: {job_available(n_) or 'available'}")
        print(f"{'durable':12}  persistent queues in one process (in the default run; replay too):")
        for n_, di in durable_registry.items():
            print(f"{'':14}{n_} [fsync {di.fsync}]: {di.available() or 'available'}")
        print()
        for name, cls in ADAPTERS.items():
            why = cls().available()
            print(f"{name:18}  {'available' if why is None else 'skipped: ' + why}"
                  f"  [{', '.join(cls.kinds)}]")
        why = RedisServer.unavailable()
        print(f"{'redis':18}  {'available' if why is None else 'skipped: ' + why}  [groups]")
        return 0
    duration = args.duration if args.duration is not None else (
        QUICK_DURATION if args.quick else DEFAULT_DURATION)
    if duration <= 0 or args.repeat < 1 or args.capacity <= 0:
        print("error: --duration, --repeat and --capacity must be positive", file=sys.stderr)
        return 2
    names = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    specials = {"numpy": "numpy", "groups": "groups", "group": "groups", "durable": "durable",
                "consumergroups": "groups", "replay": "replay", "jobs": "jobs"}
    picked = {specials[_norm(n)] for n in names if _norm(n) in specials}
    want_numpy = not names or "numpy" in picked
    want_groups = (not names and GROUPS_IN_DEFAULT_RUN) or "groups" in picked
    durable_select = None
    if not names or "durable" in picked:  # the durable section: persistent queues
        from ._bench_durable import select as durable_select
    want_replay = not names or "replay" in picked
    want_jobs = not names or "jobs" in picked
    names = [n for n in names if _norm(n) not in specials]
    try:
        scenarios = ([scenario_by_name(s) for s in names]
                     or ([] if picked else list(SCENARIOS)))
    except KeyError as e:
        print(f"error: {e.args[0]}", file=sys.stderr)
        return 2
    wanted = [s.strip() for s in args.impls.split(",") if s.strip()]
    from ._bench_jobs import IMPLS as job_tools
    for w_ in wanted:
        is_durable = durable_select is not None and bool(durable_select([w_]))
        if w_ not in ADAPTERS and w_ != "redis" and not is_durable and w_ not in job_tools:
            print(f"error: unknown implementation {w_!r}; known: {', '.join(ADAPTERS)}, redis",
                  file=sys.stderr)
            return 2
    notes = []
    usable = {}
    for name, cls in ADAPTERS.items():
        if wanted and name not in wanted:
            continue
        if name != "fastq" and not scenarios:
            continue  # only the numpy / groups sections: no peer queue runs
        why = cls().available()
        if why is None:
            usable[name] = cls
        else:
            notes.append(f"skipping {name}: {why}")
    for n_ in notes:
        print(n_, file=sys.stderr)
    if "fastq" not in usable:
        print("note: fastq is not available, so the ratio column is n/a", file=sys.stderr)
    plan = []
    for sc in scenarios:
        for name, cls in usable.items():
            if sc.kind in cls.kinds:
                plan.append((sc, name))
    group_impls = [i for i in GROUP_IMPLS if (not wanted or i in wanted)
                   and (i != "fastq" or "fastq" in usable)] if want_groups else []
    durable_impls = durable_select(wanted) if durable_select else []
    total = (len(plan) + len(GROUP_CELLS) * len(group_impls) + len(durable_impls)) * args.repeat
    prog = _Progress(total, sys.stderr, enabled=not args.no_progress)
    rows = []
    done = 0
    failures = []
    for sc, name in plan:
        runs = []
        for rep in range(args.repeat):
            prog.show(done, f"{sc.name} {name}" + (f" (run {rep + 1})" if args.repeat > 1 else ""))
            reruns = 0
            while True:
                if args.wait_quiet > 0:
                    _wait_quiet(args.wait_quiet)
                try:
                    r = run_cell(sc, name, duration=duration, capacity=args.capacity)
                except Exception as e:  # noqa: BLE001 - keep going, report it
                    r = {"scenario": sc.name, "impl": name, "status": "error",
                         "error": f"{e.__class__.__name__}: {e}\n{traceback.format_exc()}"}
                if r["status"] == "ok" and _noisy(r) and reruns < args.rerun_noisy:
                    reruns += 1
                    continue
                break
            r["noisy_reruns"] = reruns
            runs.append(r)
            done += 1
        s = _summary(sc, runs)
        if s["status"] != "ok":
            failures.append(f"{sc.name} / {name}: {s.get('error')}")
        rows.append({"scenario": sc.name, "impl": name, "summary": s, "runs": runs})
    def section_progress(label):
        nonlocal done
        prog.show(done, label)
        done += 1
    groups = None
    if group_impls:
        groups = run_groups(group_impls, duration, args.repeat, section_progress,
                            args.wait_quiet, args.rerun_noisy)
        for n_ in groups["notes"]:
            print(n_, file=sys.stderr)
        for row in groups["results"]:
            if row["summary"]["status"] != "ok":
                failures.append(f"groups {row['scenario']} / {row['impl']}: "
                                f"{row['summary'].get('error')}")
    durable = None
    if durable_impls:
        from ._bench_durable import run_durable
        durable = run_durable(durable_impls, duration, args.repeat, progress=section_progress,
                              wait_quiet=args.wait_quiet, rerun_noisy=args.rerun_noisy)
        failures += [f"durable / {r['impl']}: {r['summary'].get('error')}" for r in durable
                     if r["summary"]["status"] not in ("ok", "skipped")]
    replay = None
    if want_replay and (not wanted or "fastq" in wanted):
        from ._bench_durable import replay_cell
        prog.show(done, "replay: 4 GiB durable log")
        try:
            replay = replay_cell(int(os.environ.get("FASTQ_REPLAY_BYTES", 4 << 30)))
        except Exception as e:  # noqa: BLE001 - reported with the other failures
            failures.append(f"replay: {e!r}")
    jobs = None
    if want_jobs:
        from . import _bench_jobs
        jimpls = [w_ for w_ in wanted if w_ in _bench_jobs.IMPLS] or None
        if not wanted or jimpls or "fastq" in wanted:
            if args.install_peers:
                _bench_jobs.install_peers()
            jobs = _bench_jobs.run(jimpls, quick=args.quick, progress=lambda s: prog.show(done, s))
            failures += [f"jobs / {r['impl']}: {r.get('error')}" for r in jobs if r.get("status") == "failed"]
    prog.show(done, "done")
    prog.end()
    env = environment()
    print(f"fastq bench  {env['date']}  Python {env['python']}  {env.get('cpu', '')}  "
          f"{env['cpus']} CPUs  {duration:g} s/cell  median of {args.repeat}")
    print("versions: " + "; ".join(f"{k} {v}" for k, v in env["versions"].items()))
    batch_notes = [f"{n}: {usable[n].batch_note}" for n in usable if usable[n].batch_note]
    if any(sc.batch for sc in scenarios) and batch_notes:
        print("batched = " + "; ".join(batch_notes))
    if rows:
        print()
        print(format_table(rows))
    np_result = None
    if "fastq" in usable and want_numpy:
        try:
            import numpy  # noqa: F401
            np_result = numpy_cell(duration)
            if np_result["status"] == "ok":
                print(f"\nnumpy 1x1    fastq put_many(ndarray) / get_array, 16-byte records: "
                      f"{np_result['rate'] / 1e6:.1f} M records/s ({np_result['rate'] * 16 / 1e6:,.0f} MB/s)")
            else:
                failures.append(f"numpy / fastq: {np_result.get('error')}")
        except ImportError:
            print("\nnumpy 1x1    skipped: numpy is not installed", file=sys.stderr)
    if groups is not None:
        print("\nconsumer groups: 1 producer appends 64 B records in batches of 256 "
              "(fastq append_many / Redis 256 pipelined XADDs); consumers of one group lease "
              "256 at a time and ack them")
        if groups["results"]:
            print("versions: " + "; ".join(f"{k}: {v}" for k, v in groups["versions"].items()))
            print(format_group_table(groups["results"]))
        for n_ in groups["notes"]:
            print("note: " + n_)
    if durable is not None:
        from ._bench_durable import format_durable_table
        print("\n" + format_durable_table(durable))
    if replay is not None:
        from ._bench_durable import format_replay
        print("\n" + format_replay(replay))
    if jobs is not None:
        from ._bench_jobs import format_table as format_jobs
        print("\n" + format_jobs(jobs))
    if failures:
        print("\nFAILED cells:")
        for f in failures:
            print("  " + f.replace("\n", "\n    "))
    if args.json:
        doc = {"environment": env,
               "config": {"duration": duration, "repeat": args.repeat,
                          "capacity": args.capacity, "batch": BATCH,
                          "wait_quiet": args.wait_quiet, "rerun_noisy": args.rerun_noisy,
                          "scenarios": [sc._asdict() for sc in scenarios],
                          "groups": bool(group_impls),
                          "skipped": notes},
               "results": rows, "numpy": np_result, "groups": groups, "durable": durable,
               "replay": replay, "jobs": jobs}
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=2, default=str)
        print(f"\nraw results written to {args.json}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
