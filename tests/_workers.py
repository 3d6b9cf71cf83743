"""Worker functions for the multi-process tests (tests/test_mp.py, tests/test_crash.py).

Spawned children unpickle these functions by module name (``_workers``).  The
test modules put this directory at the front of ``sys.path`` before importing
us, and multiprocessing's spawn start method copies the parent's ``sys.path``
into the child, so ``import _workers`` works in spawn children whether fastq
comes from ``PYTHONPATH=src`` or from site-packages.  Unrelated processes
started with ``python -c`` get the paths from :func:`child_code`.

Records are raw bytes (``serializer=None``) with a self-checking header::

    <IIII  producer, seq, crc32(header[:8] + body), len(body)   + body

so a consumer can tell a torn/corrupt record from a good one.  The sentinel
``STOP`` (4 bytes) can never be mistaken for a record (header is 16 bytes).
"""
from __future__ import annotations

import array
import json
import os
import random
import struct
import sys
import time
import zlib

import fastq
from fastq import _core

HDR = struct.Struct("<IIII")
STOP = b"STOP"

_POOL = random.Random(12345).randbytes(1 << 17) if hasattr(random.Random, "randbytes") else os.urandom(1 << 17)


# --------------------------------------------------------------------------- records

def make_record(prod: int, seq: int, nbody: int, off: int) -> bytes:
    off %= len(_POOL) - nbody if len(_POOL) > nbody else 1
    body = _POOL[off:off + nbody]
    head = struct.pack("<II", prod, seq)
    crc = zlib.crc32(head + body) & 0xFFFFFFFF
    return HDR.pack(prod, seq, crc, len(body)) + body


def check_record(b: bytes):
    """(prod, seq) of a good record; raises ValueError on a torn or corrupt one."""
    b = bytes(b)
    if len(b) < HDR.size:
        raise ValueError(f"short record ({len(b)} bytes): {b[:32]!r}")
    prod, seq, crc, n = HDR.unpack_from(b)
    body = b[HDR.size:]
    if len(body) != n:
        raise ValueError(f"record p{prod} #{seq}: body length {len(body)} != {n}")
    if zlib.crc32(b[:8] + body) & 0xFFFFFFFF != crc:
        raise ValueError(f"record p{prod} #{seq}: checksum mismatch")
    return prod, seq


def body_size(rng: random.Random, maxbody: int) -> int:
    r = rng.random()
    if r < 0.6:
        return rng.randrange(0, min(64, maxbody) + 1)
    if r < 0.9:
        return rng.randrange(0, min(1024, maxbody) + 1)
    return rng.randrange(maxbody // 2, maxbody + 1)


# --------------------------------------------------------------------------- results

def write_result(path: str, pairs, bad, err=None, extra=None) -> None:
    a = array.array("I")
    for p, s in pairs:
        a.append(p)
        a.append(s)
    tmp = path + ".tmp"
    with open(tmp + ".bin", "wb") as f:
        a.tofile(f)
    with open(tmp, "w") as f:
        json.dump({"bad": bad[:50], "nbad": len(bad), "err": err, "extra": extra or {}}, f)
    os.replace(tmp + ".bin", path + ".bin")
    os.replace(tmp, path)


def read_result(path: str):
    """(pairs, meta); pairs is a list of (prod, seq) in the order received."""
    with open(path) as f:
        meta = json.load(f)
    a = array.array("I")
    with open(path + ".bin", "rb") as f:
        a.frombytes(f.read())
    return list(zip(a[0::2], a[1::2])), meta


# --------------------------------------------------------------------------- producers

def producer(q, prod: int, n: int, seed: int, maxbody: int, batch_max: int = 32, timeout: float = 60.0,
             pace: float = 0.0) -> None:
    """Put records prod/0..n-1, mixing put() and put_many(); raises on any error."""
    rng = random.Random(seed)
    seq = 0
    while seq < n:
        if rng.random() < 0.5:
            q.put(make_record(prod, seq, body_size(rng, maxbody), rng.randrange(1 << 20)), timeout=timeout)
            seq += 1
        else:
            k = min(n - seq, rng.randrange(1, batch_max + 1))
            q.put_many([make_record(prod, seq + i, body_size(rng, maxbody), rng.randrange(1 << 20))
                        for i in range(k)], timeout=timeout)
            seq += k
        if pace and rng.random() < 0.05:
            time.sleep(pace)


def producer_forever(q, prod: int, seed: int, maxbody: int, batch_max: int = 16) -> None:
    """Put records until killed (kill storm)."""
    producer(q, prod, 1 << 31, seed, maxbody, batch_max, timeout=120.0)


def _sync(q, ready, go) -> None:
    """Join the queue now (joining runs a forced liveness scan), say so, and wait
    for the go signal: lets a test control who runs recovery when."""
    if ready is None:
        return
    q._maintain(True)
    ready.set()
    if not go.wait(60):
        os._exit(4)


def crash_producer(q, prod: int, n_before: int, point: str, batch: int = 0, nbody: int = 100,
                   ready=None, go=None) -> None:
    """Put n_before records, arm ``point`` and put once more (a batch of ``batch``
    records with put_many if batch > 0).  Dies there; exit 3 if it survives."""
    _sync(q, ready, go)
    for s in range(n_before):
        q.put(make_record(prod, s, nbody, s * 7), timeout=30)
    _core.crash_arm(point)
    if batch:
        q.put_many([make_record(prod, n_before + i, nbody, i * 13) for i in range(batch)], timeout=30)
    else:
        q.put(make_record(prod, n_before, nbody, 99), timeout=30)
    _core.crash_arm("")
    os._exit(3)


def gated_producer(q, prod: int, n1: int, n2: int, gate, seed: int, maxbody: int) -> None:
    """Put prod/0..n1-1, wait for ``gate`` (an Event), then prod/n1..n1+n2-1."""
    rng = random.Random(seed)
    for s in range(n1):
        q.put(make_record(prod, s, body_size(rng, maxbody), rng.randrange(1 << 20)), timeout=60)
    if not gate.wait(60):
        os._exit(4)
    for s in range(n1, n1 + n2):
        q.put(make_record(prod, s, body_size(rng, maxbody), rng.randrange(1 << 20)), timeout=60)


# --------------------------------------------------------------------------- consumers

def consumer(q, out_path: str, seed: int, timeout: float = 60.0, batch_max: int = 64) -> None:
    """Get records until a STOP sentinel, mixing get() and get_many(); write the
    (prod, seq) list and any bad records to out_path.  Extra sentinels taken in a
    batch are put back for the other consumers."""
    rng = random.Random(seed)
    pairs, bad, err = [], [], None
    try:
        done = False
        while not done:
            try:
                if rng.random() < 0.5:
                    items = [q.get(timeout=timeout)]
                else:
                    items = q.get_many(rng.randrange(1, batch_max + 1), timeout=timeout)
            except fastq.CorruptQueueError as e:  # a bug: report it, and go on to see what else
                bad.append(f"CorruptQueueError from get: {e}")
                continue
            stops = 0
            for b in items:
                if b == STOP:
                    stops += 1
                    continue
                try:
                    pairs.append(check_record(b))
                except ValueError as e:
                    bad.append(str(e))
            if stops:
                done = True
                for _ in range(stops - 1):
                    q.put(STOP, timeout=timeout)
    except BaseException as e:  # report, then fail the process
        err = f"{type(e).__name__}: {e}"
    write_result(out_path, pairs, bad, err)
    if err:
        os._exit(5)


def crash_consumer(q, point: str, many: int = 0, ready=None, go=None) -> None:
    """Arm ``point`` and get once (get_many(many) if many); dies there; exit 3 if not."""
    _sync(q, ready, go)
    _core.crash_arm(point)
    if many:
        q.get_many(many, timeout=10)
    else:
        q.get(timeout=10)
    _core.crash_arm("")
    os._exit(3)


def crash_consumer_loop(q, point: str, log_path: str) -> None:
    """Arm ``point`` and get() until it kills us, logging each record got (prod seq
    per line, unbuffered); exit 3 if the queue stays empty 10 s."""
    _core.crash_arm(point)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        while True:
            p, s = check_record(q.get(timeout=10))
            os.write(fd, f"{p} {s}\n".encode())
    except BaseException:
        os._exit(3)


def blocked_getter(q, conn, n: int, timeout: float) -> None:
    """Block in get(timeout) until n records arrive; send [(prod, seq) | error, elapsed]."""
    out = []
    t0 = time.monotonic()
    try:
        for _ in range(n):
            out.append(check_record(q.get(timeout=timeout)))
        conn.send(("ok", out, time.monotonic() - t0))
    except BaseException as e:
        conn.send(("err", f"{type(e).__name__}: {e}", time.monotonic() - t0))
    conn.close()


def recoverer(q, point: str) -> None:
    """Arm a recovery crash point, then join the queue (joining forces a liveness
    scan) and scan again; dies during recovery; exit 3 if it survives."""
    _core.crash_arm(point)
    q._maintain(True)
    q._maintain(True)
    _core.crash_arm("")
    os._exit(3)


def create_and_die(name: str) -> None:
    _core.crash_arm("create.before_ready")
    fastq.Queue(name=name, capacity=65536)
    os._exit(3)


# --------------------------------------------------------------------------- joinable / maxsize

def task_worker(q, results, timeout: float = 30.0) -> None:
    """Get (pickled) items until None; put item*2 on results, task_done each."""
    while True:
        item = q.get(timeout=timeout)
        if item is None:
            q.task_done()
            return
        results.put(item * 2, timeout=timeout)
        q.task_done()


def bounded_producer(q, n: int, conn) -> None:
    """maxsize back-pressure: put n items (blocking); report put_nowait/put(timeout)
    raising Full while the queue is full."""
    import queue as _q
    report = {}
    try:
        for i in range(n):
            q.put(i, timeout=30)
        t0 = time.monotonic()
        try:
            q.put_nowait("x")
            report["nowait"] = "no Full"
        except _q.Full:
            report["nowait"] = "Full"
        try:
            q.put("y", timeout=0.2)
            report["timeout"] = "no Full"
        except _q.Full:
            report["timeout"] = "Full"
        report["elapsed"] = time.monotonic() - t0
        conn.send(report)
        # now the blocking part: the parent drains slowly
        for i in range(n, 3 * n):
            q.put(i, timeout=30)
        conn.send("done")
    except BaseException as e:
        conn.send(f"err {type(e).__name__}: {e}")


# --------------------------------------------------------------------------- unrelated processes

def child_code(call: str) -> str:
    """Source for ``python -c``: make _workers and fastq importable, then run ``call``."""
    here = os.path.dirname(os.path.abspath(__file__))
    pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(fastq.__file__)))
    return (f"import sys; sys.path[:0] = [{here!r}, {pkg_parent!r}]\n"
            f"import _workers\n"
            f"_workers.{call}\n")


def named_producer_main(name: str, prod: int, n: int, seed: int) -> None:
    q = fastq.Queue.open(name, serializer=None, wait=5.0)
    producer(q, prod, n, seed, min(2000, q.max_message_size - HDR.size))
    q.close()


def named_consumer_main(name: str, out_path: str, seed: int) -> None:
    q = fastq.Queue.open(name, serializer=None, wait=5.0)
    consumer(q, out_path, seed, timeout=60)
    q.close()


def named_pickle_echo_main(name_in: str, name_out: str, n: int) -> None:
    """Open two named (pickle) queues; forward n dicts, transformed."""
    qi = fastq.Queue.open(name_in, wait=5.0)
    qo = fastq.Queue.open(name_out, wait=5.0)
    for _ in range(n):
        d = qi.get(timeout=30)
        qo.put({"i": d["i"], "sq": d["i"] ** 2, "pid": os.getpid()}, timeout=30)
    qi.close()
    qo.close()


def joiner(q, timeout: float) -> None:
    """Exit 0 if q.join(timeout) returns True, 6 if it timed out."""
    os._exit(0 if q.join(timeout=timeout) else 6)


def spawn_probe(q, conn) -> None:
    """Report what an inherited queue looks like in the child, then echo one item."""
    item = q.get(timeout=30)
    conn.send({"maxsize": q.maxsize, "name": q.name, "item": item, "type": type(q).__name__})
    q.put(("echo", item), timeout=30)


_pool_q = None


def pool_init(q) -> None:
    global _pool_q
    _pool_q = q


def pool_task(i: int) -> int:
    _pool_q.put(i * 3, timeout=30)
    return i


# --------------------------------------------------------------------------- verification

def verify(results, expected, allow_dup=(), fifo_exempt=(), fifo_slack=0):
    """Check a run.  results: list of (pairs, meta) per consumer; expected: {prod: n}
    (every prod/0..n-1 delivered exactly once).  Producers not in expected may
    appear (their records must be well-formed and unique unless in allow_dup).
    Per-producer FIFO is checked per consumer, except for the (prod, seq) pairs in
    fifo_exempt (records a dead consumer held, which come back later) and at most
    fifo_slack late records in all.
    Returns {prod: sorted seqs} of everything delivered."""
    problems = []
    seen = {}
    fifo_exempt = set(fifo_exempt)
    late = []
    for ci, (pairs, meta) in enumerate(results):
        if meta.get("err"):
            problems.append(f"consumer {ci}: {meta['err']}")
        if meta.get("nbad"):
            problems.append(f"consumer {ci}: {meta['nbad']} corrupt records, e.g. {meta['bad'][:3]}")
        last = {}
        for p, s in pairs:
            if (p, s) in fifo_exempt:
                continue
            if p in last and s <= last[p]:
                late.append(f"consumer {ci}: producer {p} out of order: #{s} after #{last[p]}")
                continue
            last[p] = s
        for p, s in pairs:
            seen.setdefault(p, []).append(s)
    if len(late) > fifo_slack:
        problems += late[:10]
    for p, seqs in seen.items():
        if len(seqs) != len(set(seqs)) and p not in allow_dup:
            dups = sorted({s for s in seqs if seqs.count(s) > 1}) if len(seqs) < 5000 else "many"
            problems.append(f"producer {p}: duplicates delivered: {str(dups)[:200]}")
    for p, n in expected.items():
        got = set(seen.get(p, ()))
        missing = set(range(n)) - got
        extra = got - set(range(n))
        if missing:
            problems.append(f"producer {p}: {len(missing)} of {n} lost, e.g. {sorted(missing)[:10]}")
        if extra:
            problems.append(f"producer {p}: unexpected seqs {sorted(extra)[:10]}")
    assert not problems, "\n".join(problems[:20])
    return {p: sorted(set(s)) for p, s in seen.items()}


if __name__ == "__main__":  # pragma: no cover
    sys.exit("not a script")


def kill_all(procs):
    """Kill (SIGKILL) and reap whatever of procs is still alive; never raises."""
    for p in procs:
        try:
            if p.is_alive():
                p.kill()
            p.join(5)
        except Exception:
            pass
