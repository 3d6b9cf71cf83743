"""Producer-side deduplication: Log.append(data, dedup_key=...) appends a key
once within its window, from any number of threads and processes, and a
producer killed mid-append counts as having appended iff its record was
committed (docs/messages.md §3)."""
import asyncio
import multiprocessing as mp
import os
import signal
import time
import uuid

import pytest
from hypothesis import given, settings, strategies as st

import fastq
from fastq import _core, aio

from conftest import _remove

CTX = mp.get_context("fork")


@pytest.fixture(params=["shm", "durable"])
def make_log(request, tmp_path):
    """make(**open_kwargs) -> a fresh log of each kind, closed and removed afterwards."""
    made = []

    def make(**kw):
        if request.param == "shm":
            name = "t-" + uuid.uuid4().hex
            log = fastq.open(name, capacity=1 << 20, **kw)
        else:
            name = str(tmp_path / f"log{len(made)}")
            log = fastq.open(name, durable=True, fsync="never", segment_size=1 << 16, **kw)
        made.append((log, name))
        return log

    make.kind = request.param
    make.reopen = lambda log: (fastq.open(log.name, durable=log.durable, **({} if not log.durable else
                                                                             {"fsync": "never"})))
    yield make
    for log, name in made:
        log.close()
        if request.param == "shm":
            _remove(name)


def _records(log):
    """Every record in the log, read without a group: {offset: data}."""
    return {r.offset: r.data for r in log.read(start="earliest")}


def test_within_and_outside_the_window(make_log):
    log = make_log(dedup_window=0.3)
    a = log.append(b"first", dedup_key="order-1")
    assert log.append(b"second", dedup_key="order-1") == a   # dropped: the original's offset
    assert log.append(b"other", dedup_key=b"order-2") == a + 1
    assert log.append(b"bytes-and-str-agree", dedup_key=b"order-1") == a
    assert log.append(b"plain") == a + 2                       # no key: never deduplicated
    st = log.stats()["dedup"]
    assert st["keys"] == 2 and st["duplicates"] == 2 and st["window"] == 0.3 and st["in_flight"] == 0
    time.sleep(0.35)
    c = log.append(b"again", dedup_key="order-1")              # outside the window: appended again
    assert c == a + 3
    assert log.append(b"x", dedup_key="order-1") == c
    assert _records(log) == {a: b"first", a + 1: b"other", a + 2: b"plain", a + 3: b"again"}


def test_per_append_window(make_log):
    log = make_log(dedup_window=0.1)
    a = log.append(b"long", dedup_key="k", dedup_window=60)
    b = log.append(b"short", dedup_key="j")
    time.sleep(0.15)
    assert log.append(b"long2", dedup_key="k") == a
    assert log.append(b"short2", dedup_key="j") != b


def test_key_headers_and_delay_are_kept(make_log):
    log = make_log()
    g = log.group("g")
    a = log.append(b"payload", key=b"pk", headers={"trace": "t1", "raw": b"\x00"}, dedup_key="d1", delay=0.05)
    assert log.append(b"other", key=b"zz", headers={"trace": "t2"}, dedup_key="d1") == a
    with g.consumer() as c:
        with pytest.raises(fastq.Empty):
            c.get(timeout=0.01)                                    # delayed: not yet
        m = c.get(timeout=2.0)
        assert (m.offset, m.data, m.key, m.headers) == (a, b"payload", b"pk", {"trace": "t1", "raw": b"\x00"})
        m.ack()
        with pytest.raises(fastq.Empty):
            c.get(timeout=0.05)


def test_survives_reopen(make_log):
    log = make_log(dedup_window=60)
    a = log.append(b"x", dedup_key="persist")
    log2 = make_log.reopen(log)
    assert log2.append(b"y", dedup_key="persist") == a
    log2.close()


def test_bad_input(make_log):
    log = make_log(dedup_slots=63, dedup_window=60)    # one bucket of 63 entries
    head = log.stats()["head"]
    with pytest.raises(TypeError, match="dedup_key"):
        log.append(b"x", dedup_key=7)
    with pytest.raises(ValueError, match="dedup_window needs a dedup_key"):
        log.append(b"x", dedup_window=5)
    for bad in (0, -1, float("nan"), "5", True, 1e12):
        with pytest.raises(ValueError, match="dedup_window"):
            log.append(b"x", dedup_key="k", dedup_window=bad)
    with pytest.raises(ValueError, match="larger than the largest record"):
        log.append(b"x" * (log._ring.max_message_size + 1), dedup_key="big")
    with pytest.raises(ValueError, match="dedup_key of"):
        log.append(b"x", dedup_key=b"k" * 70000)
    assert log.stats()["head"] == head                 # nothing appended by any of them
    assert log.append(b"fits", dedup_key="big") == head  # the refused append did not take the key
    for i in range(62):
        log.append(b"%d" % i, dedup_key=f"fill-{i}")
    head = log.stats()["head"]
    with pytest.raises(fastq.DedupTableFullError, match="dedup table full"):
        log.append(b"no room", dedup_key="one-too-many")
    assert log.stats()["head"] == head
    assert log.append(b"dup", dedup_key="fill-3") == head - 62 + 3   # accepted keys still count


def test_open_arguments(tmp_path):
    for kw, what in (({"dedup_slots": -1}, "dedup_slots"), ({"dedup_slots": 1.5}, "dedup_slots"),
                     ({"dedup_slots": 10 ** 9}, "dedup_slots"), ({"dedup_window": 0}, "dedup_window"),
                     ({"dedup_window": 10 ** 9}, "dedup_window")):
        with pytest.raises(ValueError, match=what):
            fastq.open("t-" + uuid.uuid4().hex, **kw)
    name = "t-" + uuid.uuid4().hex
    log = fastq.open(name, dedup_slots=0)
    try:
        with pytest.raises(ValueError, match="no dedup table"):
            log.append(b"x", dedup_key="k")
        assert log.stats()["dedup"] is None
        assert log.append(b"x") == 0
    finally:
        log.close()
        _remove(name)


def _race_worker(name, durable, keys, order, out):
    log = fastq.open(name, durable=durable, **({"fsync": "never"} if durable else {}))
    res = {}
    for k in order:
        res[k] = log.append(b"%d:%d" % (k, os.getpid()), dedup_key=f"job-{keys[k]}")
    log.close()
    out.put(res)


def test_racing_processes_append_each_key_once(make_log):
    log = make_log(dedup_window=600)
    n = 400
    keys = [uuid.uuid4().hex for _ in range(n)]
    out = CTX.Queue()
    orders = [list(range(n)), list(reversed(range(n))), [(i * 7) % n for i in range(n)],
              [(i * 13 + 5) % n for i in range(n)]]
    procs = [CTX.Process(target=_race_worker, args=(log.name, log.durable, keys, o, out)) for o in orders]
    for p in procs:
        p.start()
    results = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    recs = _records(log)
    assert len(recs) == n                                  # one record per key
    for k in range(n):
        offs = {r[k] for r in results}
        assert len(offs) == 1                              # every racer was told the same offset
        assert recs[offs.pop()].split(b":")[0] == b"%d" % k


def _killed_worker(name, durable, point, ready):
    log = fastq.open(name, durable=durable, **({"fsync": "never"} if durable else {}))
    _core.crash_arm(point)
    ready.set()
    log.append(b"from-the-child", dedup_key="the-key")
    os._exit(0)   # the crash point was not reached


@pytest.mark.parametrize("point,appended", [
    ("dedup.after_claim", False),     # holds the bucket lock and the key, nothing claimed
    ("prod.after_cas", False),        # record claimed, nothing written
    ("prod.before_commit", False),    # written, not committed: becomes a gap
    ("prod.after_commit", True),      # committed, the key still "in flight"
    ("dedup.after_commit", True),
    ("dedup.mid_finish", True),       # expiry written, not SET yet: redone from the kept window
])
def test_producer_killed_mid_append(make_log, point, appended):
    log = make_log(dedup_window=600)
    log.append(b"before", dedup_key="before")
    ready = CTX.Event()
    p = CTX.Process(target=_killed_worker, args=(log.name, log.durable, point, ready))
    p.start()
    p.join(30)
    assert p.exitcode == -signal.SIGKILL
    t0 = time.monotonic()
    off = log.append(b"from-the-parent", dedup_key="the-key", timeout=10)
    assert time.monotonic() - t0 < 5                       # no wedge: recovery resolves the key
    recs = _records(log)
    if appended:
        assert recs[off] == b"from-the-child"
        assert list(recs.values()).count(b"from-the-parent") == 0
    else:
        assert recs[off] == b"from-the-parent"
        assert b"from-the-child" not in recs.values()
    assert log.append(b"again", dedup_key="the-key") == off
    assert log.append(b"b", dedup_key="before") == 0
    assert log.stats()["dedup"]["in_flight"] == 0


@pytest.mark.parametrize("point,appended", [("prod.before_commit", False), ("dedup.after_commit", True)])
def test_durable_cold_recovery(tmp_path, point, appended):
    path = str(tmp_path / "log")
    log = fastq.open(path, durable=True, fsync="never", segment_size=1 << 16, dedup_window=600)
    log.append(b"before", dedup_key="before")
    log.close()                                            # the child is the only one attached when it dies
    ready = CTX.Event()
    p = CTX.Process(target=_killed_worker, args=(path, True, point, ready))
    p.start()
    p.join(30)
    assert p.exitcode == -signal.SIGKILL
    log = fastq.open(path, durable=True, fsync="never", recover=True)
    try:
        assert log.recovery_report["ran"]
        off = log.append(b"from-the-parent", dedup_key="the-key")
        recs = _records(log)
        assert recs[off] == (b"from-the-child" if appended else b"from-the-parent")
        assert log.append(b"b", dedup_key="before") == 0
    finally:
        log.close()


def test_threads_share_a_handle(make_log):
    import threading
    log = make_log(dedup_window=600)
    got = [[] for _ in range(4)]

    def run(i):
        for k in range(300):
            got[i].append(log.append(b"%d" % k, dedup_key=str(k)))

    ts = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert all(g == got[0] for g in got)
    assert len(_records(log)) == 300


def test_async_append(make_log):
    log = make_log(dedup_window=600)

    async def main():
        alog = aio.AsyncLog(log)
        a = await alog.append(b"a", dedup_key="x")
        b = await alog.append(b"b", dedup_key="x", timeout=1)
        many = await asyncio.gather(*(alog.append(b"%d" % i, dedup_key=f"k{i % 10}") for i in range(50)))
        return a, b, many

    a, b, many = asyncio.run(main())
    assert a == b
    assert len(set(many)) == 10
    assert len(_records(log)) == 11


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from([f"k{i}" for i in range(12)] + [None]), max_size=60))
def test_property_first_append_wins(keys):
    """Any sequence of appends within the window: exactly one record per
    distinct key (plus every append without a key), and each append returns
    the offset of its key's first append."""
    name = "t-" + uuid.uuid4().hex
    log = fastq.open(name, capacity=1 << 20, dedup_window=600, dedup_slots=256)
    try:
        first = {}
        expect = {}
        for i, k in enumerate(keys):
            off = log.append(b"%d" % i, dedup_key=k) if k is not None else log.append(b"%d" % i)
            if k is None or k not in first:
                assert off == len(expect)
                expect[off] = b"%d" % i
                if k is not None:
                    first[k] = off
            else:
                assert off == first[k]
        assert _records(log) == expect
    finally:
        log.close()
        _remove(name)
