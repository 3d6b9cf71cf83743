"""Durable logs (``fastq.open(path, durable=True)``, docs/store.md) through the
public API, trying to break what the docs promise:

- create / reopen (same process, spawned processes, crashed processes);
  dense offsets; segment rolls, file names and modes; record size limits;
- ``Log.read``: by offset, by time, "earliest"/"latest", ``end``, keys, across
  segments and retention;
- consumer groups on a durable log: fan-out, competing consumers, a group far
  behind the descriptor ring, ack/nack/redelivery, start positions, resuming
  after close/reopen/recovery/crash, durable dead letters;
- retention (max_bytes, max_age, consumed, background flusher);
- fsync modes; bad input and damaged files; ``stats()``.

Every log lives under pytest's ``tmp_path``; 64 KiB segments make rolls happen
with few records.  Tests marked ``xfail(strict=True, reason="BUG: ...")``
document library bugs (they pass once the bug is fixed, then the marker must go).
"""
import datetime as dt
import hashlib
import multiprocessing as mp
import os
import random
import re
import shutil
import stat
import sys
import threading
import time
import uuid

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import fastq  # noqa: E402

pytestmark = [pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fastq is Linux-only"),
              pytest.mark.timeout(60)]

SEG = 64 << 10                      # smallest segment: rolls after a few records
MAXREC = SEG // 4 - 32              # largest record (key + data) of a 64 KiB-segment log
FRAME_HDR = 32
SEG_FILE = re.compile(r"^(\d{20})\.seg$")
IDX_FILE = re.compile(r"^(\d{20})\.idx$")
spawn = mp.get_context("spawn")

_POOL = random.Random(20240601).randbytes(1 << 16)


# --------------------------------------------------------------------------- helpers

def rec(i: int) -> bytes:
    """Record i: self-identifying, 8..707 bytes, deterministic."""
    off = (i * 131) % 60000
    return b"%08d" % i + _POOL[off:off + (i * 37) % 700]


def fixed(i: int) -> bytes:
    """Record i of exactly 1000 bytes: 63 of them fill a 64 KiB segment (the
    rest is padding), so record i lives in segment i // PER_SEG_RECS."""
    return b"%08d" % i + b"." * 992




def key(i: int) -> bytes:
    return b"k%d" % i


def digest(items) -> str:
    """Checksum over (offset, key, data) triples."""
    h = hashlib.sha256()
    for off, k, d in items:
        h.update(b"%d|%d|" % (off, -1 if k is None else len(k)))
        h.update(k or b"")
        h.update(b"%d|" % len(d))
        h.update(d)
    return h.hexdigest()


def read_triples(log, **kw):
    return [(r.offset, r.key, r.data) for r in log.read(**kw)]


def seg_files(path):
    return sorted(n for n in os.listdir(path) if SEG_FILE.match(n))


def store_bytes(path):
    return sum(os.path.getsize(os.path.join(path, n)) for n in os.listdir(path)
               if SEG_FILE.match(n) or IDX_FILE.match(n))


def frame(n: int) -> int:
    """Bytes a record of n payload bytes takes in a segment."""
    return (FRAME_HDR + n + 7) & ~7


PER_SEG_RECS = SEG // frame(1000)   # 63 records of fixed() per segment


def drain(c, want, timeout=5.0, ack=True, batch=256):
    """get_many until `want` messages came (acking them if `ack`)."""
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < want and time.monotonic() < deadline:
        ms = c.get_many(min(batch, want - len(out)), timeout=0.1)
        if ms and ack:
            assert c.ack(ms) == len(ms)
        out += ms
    return out


def no_more(c, wait=0.1):
    return c.get_many(16, timeout=wait) == []


def wait_for(pred, timeout, step=0.01):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return pred()


@pytest.fixture
def store(tmp_path):
    """store.open(name="log", **kw) -> a durable Log in tmp_path (64 KiB
    segments, fsync="never" unless given); store.path(name) -> its path.
    Every handle is closed afterwards."""
    handles = []

    class Store:
        @staticmethod
        def path(name="log"):
            return str(tmp_path / name)

        @staticmethod
        def open(name="log", **kw):
            kw.setdefault("segment_size", SEG)
            kw.setdefault("fsync", "never")
            log = fastq.open(Store.path(name), durable=True, **kw)
            handles.append(log)
            return log

    yield Store
    for h in reversed(handles):
        try:
            h.close()
        except Exception:
            pass


def put_and_die(q, value):
    """Send value to the parent, then die at once (no close, no atexit, no flush)."""
    q.put(value)
    q.close()
    q.join_thread()  # the queue's feeder thread must deliver before we vanish
    os._exit(0)


def run_child(target, *args, timeout=20.0):
    """Run target(*args, result_queue) in a spawned process; returns (what it
    put or ("no result", ...), exit code).  A child still running after
    `timeout` seconds is killed (exit code -9)."""
    import queue as _queue
    q = spawn.Queue()
    p = spawn.Process(target=target, args=args + (q,), daemon=True)
    p.start()
    deadline = time.monotonic() + timeout
    res = ("no result",)
    while time.monotonic() < deadline:
        try:
            res = q.get(timeout=0.05)
            break
        except _queue.Empty:
            if not p.is_alive():  # died without a result (one last look for a late one)
                try:
                    res = q.get(timeout=0.2)
                except _queue.Empty:
                    pass
                break
    p.join(max(0.0, min(5.0, deadline - time.monotonic())))
    if p.is_alive():
        p.kill()
        p.join()
    return res, p.exitcode


# --------------------------------------------------------------------------- spawned children
# (module level: spawn children import this module by name)

def _child_read_all(path, q):
    """Open an existing log and report (head, digest of every record)."""
    log = fastq.open(path, durable=True, create=False)
    try:
        q.put((log.stats()["head"], digest(read_triples(log)), log.recovery_report["ran"]))
    finally:
        log.close()


def _child_append(path, start, n, crash, q):
    """Append rec(start..start+n) with keys; crash=True: exit without close()."""
    log = fastq.open(path, durable=True, fsync="never")
    offs = log.append_many([rec(i) for i in range(start, start + n)], keys=[key(i) for i in range(start, start + n)])
    if crash:
        put_and_die(q, offs)  # no close, no checkpoint, no flush
    q.put(offs)
    log.close()


def _child_append_via_pickled_log(log, n, q):
    """A Log passed to a spawned child (pickled: it reopens by path) appends n records."""
    q.put(log.append_many([b"child-%d" % i for i in range(n)]))
    log.close()


def _child_flusher_race(path, seconds, q):
    """Stress: one handle reads the whole log over and over while its flusher
    thread (fsync="interval") flushes records another handle appends, and
    retention keeps the log short.  A crash shows up as the exit code."""
    import threading as th
    a = fastq.open(path, durable=True, segment_size=SEG, fsync="interval", fsync_interval=0.001,
                   retention=fastq.Retention(max_bytes=40 * 75000))
    b = fastq.open(path, durable=True, fsync="never")
    stop = time.monotonic() + seconds

    def write():
        while time.monotonic() < stop:
            b.append_many([b"w" * 900] * 50)

    t = th.Thread(target=write)
    t.start()
    rounds = 0
    while time.monotonic() < stop:
        for _ in a.read(batch=256):
            pass
        rounds += 1
        if rounds % 5 == 0:
            a.retain()
    t.join()
    q.put(rounds)


def _child_append_sizes(path, sizes, q):
    """Append records of the given payload sizes one by one, then crash."""
    log = fastq.open(path, durable=True, fsync="never")
    offs = [log.append(rec(i)[:8] + b"\xab" * (n - 8) if n >= 8 else b"\xcd" * n) for i, n in enumerate(sizes)]
    put_and_die(q, offs)


def _child_consume_and_die(path, n_ack, n_hold, q):
    """Lease n_ack + n_hold records of group "g", ack the first n_ack, die holding the rest."""
    log = fastq.open(path, durable=True, fsync="never")
    g = log.group("g", visibility_timeout=None)
    c = g.consumer()
    got = drain(c, n_ack + n_hold, ack=False)
    c.ack(got[:n_ack])
    put_and_die(q, [m.offset for m in got])


def _child_read_guarded(path, q):
    """read() the whole log; report the outcome (a hang is the parent's to detect)."""
    log = fastq.open(path, durable=True, create=False)
    try:
        n = sum(1 for _ in log.read())
        q.put(("ok", n))
    except Exception as e:  # noqa: BLE001 - we report whatever it was
        q.put(("error", type(e).__name__, str(e)))


# =========================================================================== create / reopen

def test_create_files_modes_and_stats(store):
    log = store.open()
    path = store.path()
    names = sorted(os.listdir(path))
    assert names == ["00000000000000000000.idx", "00000000000000000000.seg", "control"]
    for n in names:
        st = os.stat(os.path.join(path, n))
        assert stat.S_IMODE(st.st_mode) == 0o600, (n, oct(st.st_mode))
        assert st.st_uid == os.geteuid()
    assert os.path.getsize(os.path.join(path, names[1])) == 4096 + SEG
    assert not stat.S_IMODE(os.stat(path).st_mode) & 0o077
    st = log.stats()
    assert st["durable"] is True and st["name"] == path
    assert (st["head"], st["oldest"], st["durable_offset"], st["segment_size"]) == (0, 0, 0, SEG)
    assert st["groups"] == {}
    assert log.durable and repr(log) == f"<fastq.Log {path!r} durable>"
    assert log.recovery_report is None  # freshly created: nothing to recover
    assert list(log.read()) == [] and log.verify() == 0


def test_append_offsets_dense_from_zero(store):
    log = store.open()
    assert log.append(b"a") == 0
    assert log.append(bytearray(b"bb")) == 1
    assert log.append(memoryview(b"xccc")[1:]) == 2
    assert log.append(b"") == 3
    assert log.append_many([b"d", b"e"], keys=[b"kd", b"ke"]) == [4, 5]
    assert log.append_many([]) == []
    assert log.append_many(iter([b"f", bytearray(b"g")])) == [6, 7]
    assert log.append(b"h", key=b"kh") == 8
    big = log.append_many([rec(i) for i in range(500)])
    assert big == list(range(9, 509))
    assert log.stats()["head"] == 509
    got = read_triples(log, end=9)
    assert got == [(0, None, b"a"), (1, None, b"bb"), (2, None, b"ccc"), (3, None, b""), (4, b"kd", b"d"),
                   (5, b"ke", b"e"), (6, None, b"f"), (7, None, b"g"), (8, b"kh", b"h")]
    assert all(type(d) is bytes for _, _, d in got)
    assert [d for _, _, d in read_triples(log, start=9)] == [rec(i) for i in range(500)]


def test_reopen_same_process_keeps_records_and_keys(store):
    log = store.open()
    items = [(rec(i), key(i) if i % 3 else None) for i in range(400)]
    for d, k in items[:200]:
        log.append(d, key=k)
    log.append_many([d for d, _ in items[200:]], keys=[k for _, k in items[200:]])  # None: no key
    want = digest((i, k, d) for i, (d, k) in enumerate(items))
    assert digest(read_triples(log)) == want
    log.close()
    with pytest.raises(ValueError):
        log.append(b"closed")

    log2 = store.open()
    assert log2.recovery_report["ran"] is False  # same boot, clean close: nothing to rebuild
    st = log2.stats()
    assert st["head"] == 400 and st["oldest"] == 0 and st["durable_offset"] == 400
    assert digest(read_triples(log2)) == want
    assert log2.verify() == 400
    # offsets continue where they were
    assert log2.append(b"after") == 400
    assert log2.append_many([b"x", b"y"]) == [401, 402]
    log2.close()
    log3 = store.open(recover=True)
    assert log3.recovery_report["ran"] is True and log3.recovery_report["reason"] == "requested"
    assert log3.recovery_report["tail_offset"] == 403 and not log3.recovery_report["corrupt"]
    assert digest(read_triples(log3, end=400)) == want
    assert [d for _, _, d in read_triples(log3, start=400)] == [b"after", b"x", b"y"]


def test_two_handles_in_one_process_share_offsets(store):
    a = store.open()
    b = store.open()
    offs = []
    for i in range(300):
        offs.append((a if i % 2 else b).append(rec(i)))
    assert offs == list(range(300))
    assert digest(read_triples(a)) == digest(read_triples(b)) == digest((i, None, rec(i)) for i in range(300))
    assert a.stats()["members_alive"] >= 2


def test_reopen_in_spawned_processes(store):
    log = store.open()
    log.append_many([rec(i) for i in range(700)], keys=[key(i) for i in range(700)])
    want = digest((i, key(i), rec(i)) for i in range(700))
    log.close()
    (head, got, _), code = run_child(_child_read_all, store.path())
    assert code == 0 and head == 700 and got == want
    # a spawned producer appends; we (reopened) see its records after ours
    offs, code = run_child(_child_append, store.path(), 700, 300, False)
    assert code == 0 and offs == list(range(700, 1000))
    log = store.open()
    assert log.stats()["head"] == 1000
    assert digest(read_triples(log)) == digest((i, key(i), rec(i)) for i in range(1000))
    # a Log object itself can be handed to a spawned process (it reopens by path)
    offs, code = run_child(_child_append_via_pickled_log, log, 10)
    assert code == 0 and offs == list(range(1000, 1010))
    assert [r.data for r in log.read(start=1000)] == [b"child-%d" % i for i in range(10)]


def test_forked_child_appends_through_the_inherited_handle(store):
    log = store.open(fsync="interval", fsync_interval=0.01)
    log.append(b"parent")
    pid = os.fork()
    if pid == 0:  # child: use the parent's handle (it re-registers and restarts its flusher)
        code = 1
        try:
            offs = log.append_many([b"forked-%d" % i for i in range(200)])
            code = 0 if offs == list(range(1, 201)) else 2
            log.close()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert log.append(b"parent again") == 201
    assert [r.data for r in log.read()] == [b"parent"] + [b"forked-%d" % i for i in range(200)] + [b"parent again"]
    assert wait_for(lambda: log.stats()["durable_offset"] >= 202, 2.0)


def test_crashed_producer_loses_nothing_same_boot(store):
    """A producer that dies without close (fsync="never", no checkpoint)
    loses nothing: the page cache holds its records (docs/guarantees.md)."""
    store.open().close()
    offs, code = run_child(_child_append, store.path(), 0, 900, True)
    assert code == 0 and offs == list(range(900))
    log = store.open()
    assert log.recovery_report["ran"] is False  # same boot: the shared state is trusted, no cold recovery
    assert log.stats()["head"] == 900
    assert digest(read_triples(log)) == digest((i, key(i), rec(i)) for i in range(900))
    assert log.append(b"next") == 900


def test_forced_recovery_walks_every_frame_after_a_crash(store):
    """Crash with no checkpoint since creation, then recover=True: the walk
    starts at offset 0 and must cross every kind of segment end (exactly
    full, 8..24 bytes skipped, 32-byte PAD, larger PAD) and keep every record."""
    store.open().close()
    # Build sizes that leave each interesting remainder at a segment end.
    sizes = []
    for left in (0, 8, 16, 24, 32, 40, 1000):
        used = 0
        while SEG - used - left > MAXREC + FRAME_HDR:
            sizes.append(MAXREC)
            used += frame(MAXREC)
        last = SEG - used - left - FRAME_HDR
        assert 0 <= last <= MAXREC and frame(last) == SEG - used - left
        sizes.append(last)
        sizes.append(left + 1)  # does not fit in `left`: goes to the next segment
        # fill the rest of that next segment exactly so the next round starts at a segment start
        rest = SEG - frame(left + 1)
        while rest > 0:
            n = min(MAXREC, rest - FRAME_HDR)
            sizes.append(n)
            rest -= frame(n)
        assert rest == 0
    offs, code = run_child(_child_append_sizes, store.path(), sizes)
    assert code == 0 and offs == list(range(len(sizes)))
    assert len(seg_files(store.path())) >= 14

    log = store.open(recover=True)
    r = log.recovery_report
    assert r["ran"] and r["reason"] == "requested"
    assert r["checkpoint_offset"] == 0
    assert r["records_verified"] == len(sizes) and r["tail_offset"] == len(sizes)
    assert not r["corrupt"] and r["skipped"] == 0
    assert log.stats()["head"] == len(sizes)
    got = list(log.read())
    assert [x.offset for x in got] == list(range(len(sizes)))
    assert [len(x.data) for x in got] == sizes
    assert log.verify() == len(sizes)
    assert log.append(b"z" * 100) == len(sizes)


def test_many_segment_rolls_named_by_position(store):
    log = store.open()
    n = 3000   # ~1.1 MB of records: ~17 segments
    want = digest((i, key(i) if i % 2 else None, rec(i)) for i in range(n))
    for i in range(0, n, 100):
        log.append_many([rec(j) for j in range(i, i + 50)],
                        keys=[key(j) if j % 2 else None for j in range(i, i + 50)])
        for j in range(i + 50, i + 100):
            log.append(rec(j), key=key(j) if j % 2 else None)
    segs = seg_files(log.name)
    assert len(segs) > 10
    positions = [int(SEG_FILE.match(s).group(1)) for s in segs]
    assert positions == [k * SEG for k in range(len(segs))]  # named by byte position, no holes
    for s in segs:
        p = os.path.join(log.name, s)
        st = os.stat(p)
        assert stat.S_IMODE(st.st_mode) == 0o600, (s, oct(st.st_mode))
        assert st.st_size == 4096 + SEG
        assert os.path.exists(p[:-4] + ".idx")
        with open(p, "rb") as f:
            head = f.read(64)
        assert head[:8] != b"\0" * 8  # a header (magic) is there
    assert digest(read_triples(log)) == want
    assert log.verify() == n
    # random starts land exactly, across segments
    rnd = random.Random(5)
    for s in rnd.sample(range(n), 60):
        r = next(log.read(start=s))
        assert (r.offset, r.data) == (s, rec(s))


@pytest.mark.parametrize("seg", [SEG, 2 * SEG])
def test_record_size_limit_including_key(store, seg):
    log = store.open(segment_size=seg)
    mx = seg // 4 - 32
    assert log.append(b"\x01" * mx) == 0
    assert log.append(b"\x02" * (mx - 10), key=b"k" * 10) == 1
    assert log.append(b"\x03" * (mx - 4096), key=b"K" * 4096) == 2
    assert log.append_many([b"\x04" * mx, b"\x05" * (mx - 3)], keys=[b"", b"abc"]) == [3, 4]
    before = read_triples(log)

    def nothing_written():
        assert log.stats()["head"] == 5
        assert read_triples(log) == before

    for call in (lambda: log.append(b"x" * (mx + 1)),
                 lambda: log.append(b"x" * (mx - 9), key=b"k" * 10),
                 lambda: log.append(b"", key=b"k" * 4097),
                 lambda: log.append_many([b"ok", b"x" * (mx + 1), b"ok"]),
                 lambda: log.append_many([b"ok", b"x" * (mx - 1)], keys=[b"a", b"bb"]),
                 lambda: log.append_many([b"ok", b"ok"], keys=[b"a", b"k" * 4097])):
        with pytest.raises(ValueError, match=r"larger than|longer than"):
            call()
        nothing_written()
    with pytest.raises(ValueError, match=str(mx)):
        log.append(b"x" * (mx + 1))
    # still healthy, and the big records survive a reopen
    assert log.append(b"after") == 5
    log.close()
    log = store.open()
    got = read_triples(log)
    assert got[:5] == before and got[5] == (5, None, b"after")
    assert [len(d) + len(k or b"") for _, k, d in got[:5]] == [mx, mx, mx, mx, mx]


def test_max_size_records_fill_segments_exactly(store):
    log = store.open()
    data = [bytes([i]) * MAXREC for i in range(40)]   # 4 per segment, no padding
    assert log.append_many(data[:20]) == list(range(20))
    for d in data[20:]:
        log.append(d)
    assert len(seg_files(log.name)) >= 10
    assert [r.data for r in log.read()] == data
    log.close()
    log = store.open(recover=True)
    assert [r.data for r in log.read()] == data


# =========================================================================== read()

@pytest.fixture
def filled(store):
    """A log of 600 records (keys on odd offsets) over ~8 segments."""
    log = store.open()
    log.append_many([rec(i) for i in range(600)], keys=[key(i) if i % 2 else None for i in range(600)])
    assert len(seg_files(log.name)) >= 5
    return log


def test_read_every_start_and_end_exclusive(filled):
    log = filled
    n = 600
    full = read_triples(log)
    assert [o for o, _, _ in full] == list(range(n))
    assert all(d == rec(o) and k == (key(o) if o % 2 else None) for o, k, d in full)
    for s in range(n + 3):
        got = [r.offset for r in log.read(start=s, batch=97)]
        assert got == list(range(s, n)), s
    rnd = random.Random(11)
    for _ in range(300):
        s, e = rnd.randrange(n + 2), rnd.randrange(n + 2)
        assert [r.offset for r in log.read(start=s, end=e, batch=rnd.choice([1, 7, 1024]))] == list(range(s, min(e, n)))
    assert list(log.read(start=5, end=5)) == []
    assert list(log.read(start=10 ** 9)) == []


def test_read_earliest_latest(filled):
    log = filled
    assert [r.offset for r in log.read("earliest")] == list(range(600))
    assert list(log.read(start="latest")) == []
    assert [r.offset for r in log.read(end="latest")] == list(range(600))
    assert [r.offset for r in log.read(start=590, end="latest")] == list(range(590, 600))
    assert list(log.read(start="earliest", end="earliest")) == []


def test_read_by_datetime(store):
    log = store.open()
    instants, firsts = [], []
    for b in range(8):
        time.sleep(0.003)
        instants.append(dt.datetime.now(dt.timezone.utc))
        time.sleep(0.003)
        firsts.append(log.stats()["head"])
        log.append_many([rec(i) for i in range(b * 150, (b + 1) * 150)])  # ~1 segment per batch
    t_end = dt.datetime.now(dt.timezone.utc)
    head = log.stats()["head"]
    for t, first in zip(instants, firsts):
        got = [r.offset for r in log.read(start=t)]
        assert got == list(range(first, head)), (t, first, got[:3])
        naive = t.astimezone().replace(tzinfo=None)  # local naive time is the same instant
        assert next(log.read(start=naive)).offset == first
    # end as a datetime: records appended before it
    for i, t in enumerate(instants[1:], 1):
        assert [r.offset for r in log.read(end=t)] == list(range(firsts[i]))
        assert [r.offset for r in log.read(start=instants[i - 1], end=t)] == list(range(firsts[i - 1], firsts[i]))
    assert list(log.read(start=t_end)) == []
    assert [r.offset for r in log.read(start=dt.datetime(2000, 1, 1))] == list(range(head))
    assert list(log.read(start=dt.datetime(2200, 1, 1))) == []
    # timestamps are claim times, in order, between the instants
    recs = list(log.read())
    ts = [r.timestamp for r in recs]
    assert ts == sorted(ts)
    for t, first in zip(instants, firsts):
        assert recs[first].timestamp >= t.timestamp()
        if first:
            assert recs[first - 1].timestamp < t.timestamp()


def test_read_keys_returned(filled):
    got = {r.offset: r.key for r in filled.read(start=100, end=120)}
    assert got == {o: (key(o) if o % 2 else None) for o in range(100, 120)}


def test_read_while_appending_sees_a_dense_prefix(store):
    log = store.open()
    w = store.open()
    stop = threading.Event()

    def writer():
        i = 0
        while not stop.is_set() and i < 4000:
            w.append_many([rec(j) for j in range(i, i + 20)])
            i += 20

    t = threading.Thread(target=writer)
    t.start()
    try:
        for _ in range(30):
            got = [(r.offset, r.data) for r in log.read(batch=64)]
            assert [o for o, _ in got] == list(range(len(got)))
            assert all(d == rec(o) for o, d in got)
    finally:
        stop.set()
        t.join(10)
    assert [r.data for r in log.read()] == [rec(i) for i in range(log.stats()["head"])]


def test_read_iterator_jumps_over_retention(store):
    log = store.open()
    log.append_many([rec(i) for i in range(2000)])
    it = log.read(batch=10)
    first = [next(it).offset for _ in range(15)]
    assert first == list(range(15))
    deleted = log.retain(fastq.Retention(max_bytes=3 * SEG))
    assert deleted >= 5
    oldest = log.stats()["oldest"]
    assert 15 < oldest < 2000
    rest = [r.offset for r in it]
    # what the iterator had already fetched (15..19 of its second batch of 10)
    # comes first; then it continues at the retained start, densely
    assert rest == list(range(15, 20)) + list(range(oldest, 2000))
    assert [r.offset for r in log.read()] == list(range(oldest, 2000))
    assert [r.offset for r in log.read(start=3)][:1] == [oldest]
    assert next(log.read(start="earliest")).offset == oldest


# =========================================================================== groups

def test_fanout_between_two_groups(store):
    log = store.open()
    log.append_many([rec(i) for i in range(1000)], keys=[key(i) for i in range(1000)])
    ga = log.group("a", visibility_timeout=None)
    gb = log.group("b", visibility_timeout=None)
    assert sorted(log.groups()) == ["a", "b"]
    with ga.consumer() as ca, gb.consumer() as cb:
        ma = drain(ca, 1000)
        assert [m.offset for m in ma] == list(range(1000)) and no_more(ca)
        assert log.stats()["groups"]["b"]["low"] == 0
        mb = drain(cb, 1000)
        assert [m.offset for m in mb] == list(range(1000))
        for m in ma + mb:
            assert m.data == rec(m.offset) and m.key == key(m.offset) and m.deliveries == 1
        assert {m.group for m in ma} == {"a"} and {m.group for m in mb} == {"b"}
    st = log.stats()["groups"]
    assert st["a"]["low"] == st["b"]["low"] == 1000
    assert st["a"]["acked"] == st["b"]["acked"] == 1000
    assert st["a"]["skipped"] == st["b"]["skipped"] == 0


def test_competing_consumers_each_record_once(store):
    log = store.open()
    g = log.group("work", visibility_timeout=None)
    n = 6000
    seen = [[] for _ in range(3)]
    errors = []

    def consume(k):
        try:
            with g.consumer() as c:
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline and g.stats()["low"] < n:
                    ms = c.get_many(64, timeout=0.05)
                    for m in ms:
                        assert m.data == rec(m.offset)
                        seen[k].append(m.offset)
                    if ms:
                        c.ack(ms)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    ts = [threading.Thread(target=consume, args=(k,)) for k in range(3)]
    for t in ts:
        t.start()
    for i in range(0, n, 200):
        log.append_many([rec(j) for j in range(i, i + 200)])
    for t in ts:
        t.join(30)
    assert not errors
    allseen = sorted(sum(seen, []))
    assert allseen == list(range(n))  # each exactly once
    for s in seen:
        assert s == sorted(s)  # each consumer got its share in offset order
    st = g.stats()
    assert st["low"] == n and st["acked"] == n and st["redelivered"] == 0


def test_group_far_behind_the_descriptor_ring_reads_everything(store):
    log = store.open()
    fast = log.group("fast", visibility_timeout=None)
    slow = log.group("slow", visibility_timeout=None, window=64)
    n = 20000
    items = [rec(i)[:8 + i % 50] for i in range(n)]
    with fast.consumer() as cf:
        for i in range(0, n, 1000):
            log.append_many(items[i:i + 1000], keys=[key(j) for j in range(i, i + 1000)])
            drain(cf, 1000)
    assert len(seg_files(log.name)) > 10
    assert slow.stats()["lag"] == n and fast.stats()["low"] == n
    got = []
    with slow.consumer() as cs:
        got = drain(cs, n, timeout=30, batch=500)
        assert no_more(cs)
    assert [m.offset for m in got] == list(range(n))
    assert all(m.data == items[m.offset] and m.key == key(m.offset) for m in got)
    st = slow.stats()
    assert st["low"] == n and st["skipped"] == 0 and st["dead_lettered"] == 0


def test_ack_nack_extend_redelivery(store):
    log = store.open()
    g = log.group("g", visibility_timeout=0.3, max_deliveries=5, retry=fastq.Backoff(0.0, 0.0, 1.0, 0.0))
    log.append_many([rec(i) for i in range(10)])
    with g.consumer() as c:
        ms = drain(c, 10, ack=False)
        assert [m.offset for m in ms] == list(range(10))
        assert ms[0].ack() is True and ms[0].ack() is False  # a second ack finds no lease
        assert ms[1].nack(delay=0) is True
        assert ms[2].nack(delay=0.2) is True
        assert ms[3].extend(5.0) is True
        for m in ms[4:]:
            assert m.ack()
        again = drain(c, 1, ack=False, timeout=1)
        assert [(m.offset, m.deliveries) for m in again] == [(1, 2)]
        assert again[0].data == rec(1)
        later = drain(c, 1, ack=False, timeout=2)
        assert [(m.offset, m.deliveries) for m in later] == [(2, 2)]
        # 1 and 2 are leased again (0.3 s visibility); 3 is extended: let 1 and 2 expire
        time.sleep(0.45)
        expired = drain(c, 2, ack=False, timeout=2)
        assert sorted((m.offset, m.deliveries) for m in expired) == [(1, 3), (2, 3)]
        assert ms[3].ack() is True  # still ours: it was extended
        assert again[0].ack() is False  # that lease expired and was given out again
        for m in expired:
            assert m.ack()
        assert no_more(c)
    st = g.stats()
    assert st["low"] == 10 and st["unfinished"] == 0 and st["nacked"] == 2 and st["expired"] >= 2


def test_group_start_positions(store):
    log = store.open()
    log.append_many([rec(i) for i in range(300)])
    time.sleep(0.003)
    t = dt.datetime.now(dt.timezone.utc)
    time.sleep(0.003)
    log.append_many([rec(i) for i in range(300, 500)])
    cases = {"earliest": 0, 123: 123, t: 300, "latest": 500, 500: 500}
    for i, (start, first) in enumerate(cases.items()):
        g = log.group(f"s{i}", start=start, visibility_timeout=None)
        assert g.stats()["low"] == first, start
        with g.consumer() as c:
            got = drain(c, 500 - first)
            assert [m.offset for m in got] == list(range(first, 500)), start
            assert no_more(c, 0.02)
    with pytest.raises(ValueError, match="beyond the head"):
        log.group("too-far", start=501)
    # a group created at "latest" gets what comes after
    g = log.group("s3", start="latest", visibility_timeout=None)
    log.append(b"new")
    with g.consumer() as c:
        assert [m.offset for m in drain(c, 1)] == [500]


def test_group_resumes_at_low_watermark_after_reopen(store):
    log = store.open()
    g = log.group("g", visibility_timeout=None)
    log.append_many([rec(i) for i in range(3000)])   # > 1 segment, > the group window
    c = g.consumer()
    ms = drain(c, 100, ack=False)
    c.ack(ms[:40])
    ms[50].ack()                                      # acked out of order: low stays at 40
    held = [m.offset for m in ms[40:] if m.offset != 50]
    c.close()
    log.close()

    log = store.open()
    st = log.stats()["groups"]["g"]
    assert st["low"] == 40 and st["pending"] == 0
    g = log.group("g", visibility_timeout=None)
    with g.consumer() as c:
        got = drain(c, 3000 - 41)
        offs = [m.offset for m in got]
        assert offs == [o for o in range(40, 3000) if o != 50]  # 50 was finished: not again
        assert all(m.data == rec(m.offset) for m in got)
        # same boot: delivery counts are kept for the returned leases
        assert {m.deliveries for m in got if m.offset in held} == {2}
        assert {m.deliveries for m in got if m.offset >= 100} == {1}
        assert no_more(c)
    assert g.stats()["low"] == 3000


def test_group_resumes_after_forced_recovery(store):
    log = store.open()
    g = log.group("g", visibility_timeout=None)
    log.append_many([rec(i) for i in range(1000)])
    c = g.consumer()
    ms = drain(c, 300, ack=False)
    c.ack(ms[:200])
    c.close()
    log.close()
    log = store.open(recover=True)
    r = log.recovery_report
    assert r["ran"] and r["groups"] == 1 and r["tail_offset"] == 1000
    assert log.stats()["groups"]["g"]["low"] == 200
    g = log.group("g", visibility_timeout=None)
    with g.consumer() as c:
        got = drain(c, 800)
        assert [m.offset for m in got] == list(range(200, 1000))
        assert {m.deliveries for m in got} == {1}  # cold recovery restarts counts
        assert no_more(c)


def test_dead_consumer_leases_redelivered_after_reopen(store):
    log = store.open()
    log.group("g", visibility_timeout=None)
    log.append_many([rec(i) for i in range(500)])
    log.close()
    offs, code = run_child(_child_consume_and_die, store.path(), 100, 50)
    assert code == 0 and offs == list(range(150))
    log = store.open()
    g = log.group("g", visibility_timeout=None)
    assert g.stats()["low"] == 100
    with g.consumer() as c:
        got = drain(c, 400)
        assert [m.offset for m in got] == list(range(100, 500))
        assert [m.deliveries for m in got[:50]] == [2] * 50
        assert {m.deliveries for m in got[50:]} == {1}
        assert no_more(c)


def test_dead_letters_go_to_the_durable_dlq_and_survive_reopen(store):
    log = store.open()
    g = log.group("g", visibility_timeout=None, max_deliveries=2, retry=fastq.Backoff(0.0, 0.0, 1.0, 0.0))
    log.append_many([rec(i) for i in range(20)], keys=[key(i) for i in range(20)])
    with g.consumer() as c:
        for m in drain(c, 20, ack=False):
            if m.offset % 5 == 0:
                assert m.nack(delay=0)
            else:
                assert m.ack()
        again = drain(c, 4, ack=False)
        assert sorted((m.offset, m.deliveries) for m in again) == [(0, 2), (5, 2), (10, 2), (15, 2)]
        for m in again:
            assert m.nack(reason=f"bad {m.offset}") is True  # at the limit: dead-lettered
        assert no_more(c)
    st = g.stats()
    assert st["dead_lettered"] == 4 and st["low"] == 20 and st["unfinished"] == 0
    dlq_path = os.path.join(log.name, "dlq")
    assert os.path.isdir(dlq_path)
    log.close()

    dlq = fastq.open(dlq_path, durable=True, create=False)
    try:
        assert dlq.durable and dlq.stats()["head"] == 4
        letters = [fastq.DeadLetter.decode(r.data) for r in dlq.read()]
    finally:
        dlq.close()
    assert [(d.offset, d.group, d.deliveries, d.reason, d.data) for d in letters] == \
        [(o, "g", 2, f"bad {o}", rec(o)) for o in (0, 5, 10, 15)]
    assert all(d.log == store.path() for d in letters)
    # the log itself still has every record; unlink removes both
    log = store.open()
    assert log.stats()["head"] == 20 and log.stats()["groups"]["g"]["dead_lettered"] == 4
    log.unlink()
    assert not os.path.exists(store.path())


def test_expired_lease_at_the_delivery_limit_is_dead_lettered(store):
    log = store.open()
    g = log.group("g", visibility_timeout=0.15, max_deliveries=1)
    log.append_many([b"slow-%d" % i for i in range(3)])
    with g.consumer() as c:
        ms = drain(c, 3, ack=False)
        assert ms[1].ack()
        time.sleep(0.3)  # 0 and 2 expire at their only delivery
        assert c.get_many(10, timeout=0.3) == []
    st = g.stats()
    assert st["dead_lettered"] == 2 and st["expired"] >= 2 and st["low"] == 3
    log.close()
    dlq = fastq.open(os.path.join(store.path(), "dlq"), durable=True, create=False)
    try:
        letters = [fastq.DeadLetter.decode(r.data) for r in dlq.read()]
    finally:
        dlq.close()
    # (as for shared-memory logs: the count includes the delivery that became the dead letter)
    assert [(d.offset, d.data, d.deliveries) for d in letters] == [(0, b"slow-0", 2), (2, b"slow-2", 2)]
    assert all("delivery limit" in d.reason for d in letters)


# =========================================================================== retention

PER_SEG = SEG + (SEG // 4096) * 32 + 2 * 4096   # a segment's .seg + .idx bytes


def test_retention_max_bytes_and_lagging_group_skips(store):
    log = store.open()
    done = log.group("done", visibility_timeout=None)
    lag = log.group("lag", visibility_timeout=None)
    n = 5000
    with done.consumer() as c:
        log.append_many([rec(i) for i in range(n)])
        drain(c, n)
    with lag.consumer() as c:
        first = drain(c, 10)
        assert [m.offset for m in first] == list(range(10))
    nseg = len(seg_files(log.name))
    assert nseg > 10
    assert log.retain() == 0  # no retention configured
    limit = 4 * PER_SEG + 100
    deleted = log.retain(fastq.Retention(max_bytes=limit))
    assert deleted > 0
    left = seg_files(log.name)
    assert store_bytes(log.name) <= limit
    assert len(left) == 4 and deleted == nseg - 4  # 4 segments fit in the limit, 5 would not
    oldest = log.stats()["oldest"]
    assert int(SEG_FILE.match(left[0]).group(1)) == deleted * SEG
    assert 10 < oldest < n
    assert [r.offset for r in log.read()] == list(range(oldest, n))
    st = log.stats()["groups"]
    assert st["lag"]["skipped"] == oldest - 10 and st["lag"]["low"] == oldest
    assert st["done"]["skipped"] == 0 and st["done"]["low"] == n
    with lag.consumer() as c:
        got = drain(c, n - oldest)
        assert [m.offset for m in got] == list(range(oldest, n))
        assert all(m.data == rec(m.offset) for m in got)
    assert log.retain(fastq.Retention(max_bytes=limit)) == 0  # idempotent
    # it all holds after a reopen (and a forced recovery)
    log.close()
    for kw in ({}, {"recover": True}):
        log = store.open(**kw)
        assert log.stats()["oldest"] == oldest
        assert seg_files(log.name)[0] == left[0]
        assert [r.offset for r in log.read()] == list(range(oldest, n))
        assert log.stats()["groups"]["lag"]["low"] == n
        log.close()


def test_retention_never_deletes_the_active_segment(store):
    log = store.open()
    log.append_many([rec(i) for i in range(3000)])
    head = log.stats()["head"]
    log.retain(fastq.Retention(max_bytes=1))
    left = seg_files(log.name)
    assert 1 <= len(left) <= 2
    oldest = log.stats()["oldest"]
    assert 0 < oldest < head
    assert [r.offset for r in log.read()] == list(range(oldest, head))
    assert log.append(b"still") == head
    assert [r.data for r in log.read(start=head)] == [b"still"]


def test_retention_consumed_deletes_only_what_every_group_finished(store):
    log = store.open()
    log.append_many([fixed(i) for i in range(2000)])
    # no groups: "consumed" never deletes anything
    assert log.retain(fastq.Retention(consumed=True)) == 0
    a = log.group("a", visibility_timeout=None)
    b = log.group("b", visibility_timeout=None)
    with a.consumer() as c:
        drain(c, 2000)
    with b.consumer() as c:
        drain(c, 700)
        ms = drain(c, 100, ack=False)
        assert [m.offset for m in ms] == list(range(700, 800))
        ms[50].ack()
        assert b.stats()["low"] == 700  # 700..799 leased, 750 acked
        seg_of_700 = 700 // PER_SEG_RECS
        assert log.retain(fastq.Retention(consumed=True)) == seg_of_700  # every segment wholly below 700
        oldest = log.stats()["oldest"]
        assert oldest == seg_of_700 * PER_SEG_RECS  # the segment holding 700 stays
        st = log.stats()["groups"]
        assert st["a"]["skipped"] == st["b"]["skipped"] == 0
        assert [r.offset for r in log.read()] == list(range(oldest, 2000))
        assert log.retain(fastq.Retention(consumed=True)) == 0
        # the leases of b are still valid and ackable
        assert all(m.ack() for m in ms if m.offset != 750)
        drain(c, 200)
    assert b.stats()["low"] == 1000
    assert log.retain(fastq.Retention(consumed=True)) == 1000 // PER_SEG_RECS - seg_of_700
    assert log.stats()["oldest"] == 1000 // PER_SEG_RECS * PER_SEG_RECS
    assert b.stats()["skipped"] == 0


@pytest.mark.parametrize("age", [0.25, dt.timedelta(milliseconds=250)], ids=["seconds", "timedelta"])
def test_retention_max_age(store, age):
    log = store.open()
    g = log.group("g", visibility_timeout=None)
    log.append_many([fixed(i) for i in range(500)])        # old
    time.sleep(0.4)
    log.append_many([fixed(i) for i in range(500, 1000)])  # new
    # segment k goes when the first record of segment k+1 is old: k+1 <= seg(499)
    seg_last_old = 499 // PER_SEG_RECS
    assert log.retain(fastq.Retention(max_age=age)) == seg_last_old
    oldest = log.stats()["oldest"]
    assert oldest == seg_last_old * PER_SEG_RECS            # the mixed segment stays
    assert [r.offset for r in log.read()] == list(range(oldest, 1000))
    assert g.stats()["skipped"] == oldest
    assert log.retain(fastq.Retention(max_age=age)) == 0
    # once everything is old, all but the active segment can go
    time.sleep(0.4)
    log.append(b"fresh")
    assert log.retain(fastq.Retention(max_age=age)) == 999 // PER_SEG_RECS - seg_last_old
    assert log.stats()["oldest"] == 999 // PER_SEG_RECS * PER_SEG_RECS
    assert [r.data for r in log.read()][-1] == b"fresh"


@pytest.mark.parametrize("age", [float("inf"), 1e12, dt.timedelta(days=365 * 400)], ids=["inf", "1e12s", "400y"])
def test_retention_huge_max_age_keeps_everything(store, age):
    log = store.open()
    log.append_many([rec(i) for i in range(1000)])
    try:
        deleted = log.retain(fastq.Retention(max_age=age))
    except (ValueError, OverflowError):
        deleted = 0  # rejecting the value is a fix too
    assert deleted == 0 and log.stats()["oldest"] == 0


@pytest.mark.parametrize("fsync", ["interval", "never"])
def test_background_flusher_applies_retention(store, fsync):
    log = store.open(fsync=fsync, fsync_interval=0.02, retention=fastq.Retention(max_bytes=3 * PER_SEG))
    g = log.group("g", visibility_timeout=None)
    log.append_many([rec(i) for i in range(3000)])
    # the flusher retains about once a second (every flush tick when fsync="interval")
    assert wait_for(lambda: log.stats()["oldest"] > 0, 2.5), log.stats()
    assert store_bytes(log.name) <= 3 * PER_SEG
    oldest = log.stats()["oldest"]
    assert g.stats()["skipped"] == oldest
    assert [r.offset for r in log.read()] == list(range(oldest, 3000))


# =========================================================================== fsync modes

def test_fsync_always_append_returns_durable(store):
    log = store.open(fsync="always")
    for i in range(100):
        o = log.append(rec(i), key=key(i) if i % 2 else None)
        assert log.stats()["durable_offset"] >= o + 1
    offs = log.append_many([rec(i) for i in range(100, 400)])
    assert log.stats()["durable_offset"] >= offs[-1] + 1


def test_fsync_always_concurrent_appenders_share_flushes(store):
    # one handle per thread: threads sharing one handle with fsync="always" are
    # exposed to the segment-map race of test_stress_flusher_thread_vs_reader_on_one_handle
    log = store.open(fsync="always")
    other = store.open(fsync="always")
    third = store.open(fsync="always")
    bad = []

    def work(h, base):
        for i in range(base, base + 150):
            o = h.append(rec(i))
            if h.stats()["durable_offset"] < o + 1:
                bad.append(o)

    ts = [threading.Thread(target=work, args=(h, k * 1000)) for k, h in enumerate((log, other, third))]
    for t in ts:
        t.start()
    for t in ts:
        t.join(30)
    assert not bad
    assert log.stats()["head"] == 450 == log.stats()["durable_offset"]
    want = [rec(i) for k in range(3) for i in range(k * 1000, k * 1000 + 150)]
    assert sorted(r.data for r in log.read()) == sorted(want)


def test_fsync_interval_becomes_durable_within_a_few_intervals(store):
    log = store.open(fsync="interval", fsync_interval=0.05)
    o = log.append_many([rec(i) for i in range(1000)])[-1]
    t0 = time.monotonic()
    assert wait_for(lambda: log.stats()["durable_offset"] >= o + 1, 1.0)
    assert time.monotonic() - t0 < 0.5
    o = log.append(b"one more")
    assert wait_for(lambda: log.stats()["durable_offset"] >= o + 1, 0.5)


def test_fsync_never_close_flushes(store):
    log = store.open(fsync="never")
    log.append_many([rec(i) for i in range(800)])
    time.sleep(0.15)
    assert log.stats()["durable_offset"] == 0  # nobody flushes
    assert log.flush(timeout=5) is True
    assert log.stats()["durable_offset"] == 800
    log.append_many([rec(i) for i in range(800, 900)])
    assert log.stats()["durable_offset"] == 800
    log.close()
    log = store.open(fsync="never")
    assert log.stats()["durable_offset"] == log.stats()["head"] == 900
    log.append(b"x")
    log.checkpoint()
    assert log.stats()["durable_offset"] == 901


@pytest.mark.skipif(not os.environ.get("FASTQ_STRESS"), reason="stress test: set FASTQ_STRESS=1 (and optionally "
                                                              "FASTQ_STRESS_SECONDS)")
@pytest.mark.timeout(300)
def test_stress_flusher_thread_vs_reader_on_one_handle(store):
    seconds = float(os.environ.get("FASTQ_STRESS_SECONDS", "20"))
    store.open().close()
    res, code = run_child(_child_flusher_race, store.path(), seconds, timeout=seconds + 30)
    assert code == 0, f"child died with exit code {code} (-11 = SIGSEGV)"


# =========================================================================== bad input

def test_wrong_types_are_rejected_and_write_nothing(store):
    log = store.open()
    log.append(b"base")
    with pytest.raises(TypeError, match="str"):
        log.append("text")
    with pytest.raises(TypeError, match="key"):
        log.append(b"x", key="text")
    with pytest.raises(TypeError, match="key"):
        log.append(b"x", key=5)
    with pytest.raises(TypeError):
        log.append(5)
    with pytest.raises(TypeError):
        log.append_many([b"ok", "text"])
    with pytest.raises(TypeError, match="key"):
        log.append_many([b"ok", b"ok"], keys=[b"a", "b"])
    with pytest.raises(ValueError, match="2 items and 1 keys"):
        log.append_many([b"ok", b"ok"], keys=[b"a"])
    assert log.stats()["head"] == 1
    for bad in (True, False, 1.5, "bogus", None, b"earliest"):
        with pytest.raises(TypeError, match="start"):
            list(log.read(start=bad))
    with pytest.raises(TypeError, match="end"):
        list(log.read(end=True))
    with pytest.raises(ValueError, match=">= 0"):
        list(log.read(start=-1))
    for bad in (True, -1, "bogus", 1.5):
        with pytest.raises(ValueError, match="start"):
            log.group("g", start=bad)
    assert log.groups() == []
    assert [r.data for r in log.read()] == [b"base"]


@pytest.mark.parametrize("kw, exc, match", [
    (dict(segment_size=1000), ValueError, "segment_size"),
    (dict(segment_size=32 << 10), ValueError, "segment_size"),
    (dict(segment_size=(64 << 10) + 4096), ValueError, "power of two"),
    (dict(segment_size=2 << 30), ValueError, "segment_size"),
    (dict(segment_size="65536"), ValueError, "segment_size"),
    (dict(segment_size=65536.0), ValueError, "segment_size"),
    (dict(fsync="sometimes"), ValueError, "fsync"),
    (dict(fsync=None), ValueError, "fsync"),
    (dict(fsync_interval=0), ValueError, "fsync_interval"),
    (dict(fsync_interval=-1), ValueError, "fsync_interval"),
    (dict(fsync_interval=float("nan")), ValueError, "fsync_interval"),
    (dict(fsync_interval=1e9), ValueError, "fsync_interval"),
    (dict(on_corrupt="ignore"), ValueError, "on_corrupt"),
    (dict(retention={"max_bytes": 1}), TypeError, "Retention"),
])
def test_bad_open_arguments(store, kw, exc, match):
    with pytest.raises(exc, match=match):
        store.open("bad", **kw)
    assert not os.path.exists(store.path("bad"))  # nothing created


@pytest.mark.parametrize("kw, match", [
    (dict(max_bytes=0), "max_bytes"),
    (dict(max_bytes=-5), "max_bytes"),
    (dict(max_bytes=1.5), "max_bytes"),
    (dict(max_bytes="100"), "max_bytes"),
    (dict(max_age=0), "max_age"),
    (dict(max_age=-1.0), "max_age"),
    (dict(max_age=dt.timedelta(0)), "max_age"),
    (dict(max_age=dt.timedelta(seconds=-3)), "max_age"),
])
def test_bad_retention_values(kw, match):
    with pytest.raises(ValueError, match=match):
        fastq.Retention(**kw)


@pytest.mark.parametrize("kw", [dict(max_age=float("nan")), dict(max_age=float("inf")), dict(max_age="5"),
                                dict(max_bytes=True)], ids=["nan", "inf", "str", "bool"])
def test_retention_rejects_nonsense_values(kw):
    with pytest.raises((ValueError, TypeError)):
        fastq.Retention(**kw)


def test_durable_only_api_on_a_shared_memory_log():
    name = "tsa-" + uuid.uuid4().hex
    log = fastq.open(name, capacity=1 << 16)
    try:
        for call, what in ((lambda: list(log.read(dt.datetime.now())), "read(start=datetime)"), (log.verify, "verify"),
                           (log.retain, "retain"),
                           (log.checkpoint, "checkpoint"),
                           (lambda: log.group("g", start=dt.datetime.now()), "start=datetime")):
            with pytest.raises(ValueError, match=re.escape(what) + r".*durable"):
                call()
        assert log.flush() is True  # a no-op
        for kw in (dict(segment_size=SEG), dict(retention=fastq.Retention(max_bytes=1)), dict(recover=True),
                   dict(on_corrupt="skip")):
            with pytest.raises(ValueError, match="durable=True"):
                fastq.open(name, **kw)
    finally:
        log.unlink()
        log.close()


def test_read_checks_arguments_when_called(store):
    log = store.open()
    with pytest.raises((TypeError, ValueError)):
        log.read(start="bogus")


def test_read_batch_zero_is_rejected_or_reads(store):
    log = store.open()
    log.append_many([b"a", b"b"])
    try:
        got = [r.data for r in log.read(batch=0)]
    except ValueError:
        return
    assert got == [b"a", b"b"]


def test_open_missing_or_wrong_paths(tmp_path):
    with pytest.raises(FileNotFoundError):
        fastq.open(str(tmp_path / "nope"), durable=True, create=False)
    assert not os.path.exists(tmp_path / "nope")
    with pytest.raises(FileNotFoundError):
        fastq.open(str(tmp_path / "nope"), durable=True, recover=True)
    os.mkdir(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="control"):
        fastq.open(str(tmp_path / "empty"), durable=True, create=False)
    (tmp_path / "afile").write_bytes(b"")
    with pytest.raises(OSError, match="[Nn]ot a directory"):
        fastq.open(str(tmp_path / "afile"), durable=True)
    with pytest.raises(TypeError):
        fastq.open(12345, durable=True)


def test_control_file_of_another_kind(tmp_path):
    name = "tsa-" + uuid.uuid4().hex
    shm = fastq.open(name, capacity=1 << 16)
    try:
        d = tmp_path / "shmcopy"
        d.mkdir(mode=0o700)
        shutil.copyfile("/dev/shm/fastq." + name, d / "control")
        os.chmod(d / "control", 0o600)
    finally:
        shm.unlink()
        shm.close()
    with pytest.raises(fastq.IncompatibleQueueError, match="not the control file of a durable log"):
        fastq.open(str(d), durable=True)
    for content, mode in ((b"", 0o600), (b"junk" * 1000, 0o600), (b"\0" * (1 << 20), 0o600), (b"\0" * 8192, 0o644)):
        d = tmp_path / f"junk{len(content)}-{mode:o}"
        d.mkdir(mode=0o700)
        (d / "control").write_bytes(content)
        os.chmod(d / "control", mode)
        for kw in ({}, {"recover": True}):
            with pytest.raises((fastq.IncompatibleQueueError, fastq.CorruptQueueError, PermissionError)):
                fastq.open(str(d), durable=True, **kw)
        assert (d / "control").read_bytes() == content  # never "repaired" into something else


def test_recover_while_open_elsewhere_is_refused(store):
    log = store.open()
    log.append(b"x")
    with pytest.raises(FileExistsError, match="open"):
        store.open(recover=True)
    other = store.open()  # a plain open is fine
    assert other.append(b"y") == 1
    other.close()
    with pytest.raises(FileExistsError):
        store.open(recover=True)
    log.close()
    log = store.open(recover=True)
    assert log.recovery_report["ran"] and [r.data for r in log.read()] == [b"x", b"y"]


def _drain_past_damage(g, rounds, batch):
    """Get and ack everything a new consumer of g gets; a take that met only
    damaged records (CorruptQueueError) is retried."""
    got = []
    with g.consumer() as c:
        for _ in range(rounds):
            try:
                ms = c.get_many(batch, timeout=0.1)
            except fastq.CorruptQueueError:
                continue
            if not ms:
                break
            c.ack(ms)
            got += ms
    return got


def _make_segments(store, n=300):
    """A closed log of n 1000-byte records over 5+ segments; returns its segment file names."""
    log = store.open()
    log.group("g", visibility_timeout=None)
    log.append_many([b"%06d" % i + b"x" * 994 for i in range(n)])
    log.close()
    segs = seg_files(store.path())
    assert len(segs) >= 5
    return segs


def _damage(path, how):
    if how == "mode":
        os.chmod(path, 0o640)
    elif how == "magic":
        with open(path, "r+b") as f:
            f.write(b"NOTMAGIC")
    elif how == "truncated":
        os.truncate(path, 4096 + 100)
    elif how == "deleted":
        os.unlink(path)


@pytest.mark.parametrize("how", ["mode", "magic", "truncated"])
def test_bad_active_segment_is_a_clear_error(store, how):
    log = store.open()
    log.append_many([b"x" * 1000] * 100)         # the tail is in segment 1
    log.close()
    segs = seg_files(store.path())
    _damage(os.path.join(store.path(), segs[1]), how)
    log = store.open()
    with pytest.raises(OSError, match=re.escape(segs[1]) + ".*failed validation"):
        log.append(b"y")
    log.close()
    with pytest.raises((OSError, fastq.CorruptRecordError), match=re.escape(segs[1])):
        store.open(recover=True)  # below the checkpoint: corruption, refused by default
    assert len(seg_files(store.path())) == len(segs)  # nothing deleted on the way


@pytest.mark.parametrize("how", ["mode", "magic", "truncated", "deleted"])
def test_bad_middle_segment_verify_and_group(store, how):
    """A middle segment that fails validation: verify() names it; a group
    does not deliver records it cannot read, and counts them."""
    segs = _make_segments(store)
    _damage(os.path.join(store.path(), segs[1]), how)
    log = store.open()
    with pytest.raises(Exception) as ei:
        log.verify()
    assert segs[1] in str(ei.value)
    g = log.group("g", visibility_timeout=None)
    got = _drain_past_damage(g, rounds=200, batch=500)
    assert all(m.data.startswith(b"%06d" % m.offset) for m in got)
    lost = 300 - len(got)
    assert lost > 0
    st = g.stats()
    assert st["low"] == 300 and st["dead_lettered"] + st["skipped"] == lost  # accounted for, not silent


@pytest.mark.parametrize("how", ["mode", "magic", "truncated", "deleted"])
def test_bad_middle_segment_verify_raises_corrupt_record_error(store, how):
    segs = _make_segments(store)
    _damage(os.path.join(store.path(), segs[1]), how)
    log = store.open()
    with pytest.raises(fastq.CorruptRecordError):
        log.verify()


@pytest.mark.parametrize("how", ["mode", "deleted"])
def test_bad_middle_segment_read_does_not_hang(store, how):
    segs = _make_segments(store)
    _damage(os.path.join(store.path(), segs[1]), how)
    res, code = run_child(_child_read_guarded, store.path(), timeout=3.0)
    assert res[0] != "no result", "read() hung (the child was killed)"
    assert res[0] == "error" and res[1] in ("CorruptRecordError", "OSError", "FileNotFoundError"), res


def _flip_record_byte(path, segs, offset):
    for s in segs:
        fn = os.path.join(path, s)
        with open(fn, "rb") as f:
            raw = f.read()
        i = raw.find(b"%06d" % offset + b"x")
        if i >= 0:
            with open(fn, "r+b") as f:
                f.seek(i + 20)
                f.write(b"Z")
            return s
    raise AssertionError(f"record {offset} not found")


def test_corrupt_record_read_and_verify_name_it(store):
    segs = _make_segments(store)
    where = _flip_record_byte(store.path(), segs, 100)
    log = store.open()
    got = []
    with pytest.raises(fastq.CorruptRecordError) as ei:
        for r in log.read(batch=1):
            got.append(r.offset)
    assert got == list(range(100)) and ei.value.offset == 100 and "100" in str(ei.value)
    with pytest.raises(fastq.CorruptRecordError) as ei:
        log.verify()
    assert ei.value.offset == 100 and where in str(ei.value)
    # the next segment starts with a valid record: reading from there is fine
    nxt = (100 // PER_SEG_RECS + 1) * PER_SEG_RECS
    assert [r.offset for r in log.read(start=nxt)] == list(range(nxt, 300))


def test_seek_error_message_is_about_this_log(store):
    segs = _make_segments(store)                      # log "log": a damaged record 100
    _flip_record_byte(store.path(), segs, 100)
    other = store.open("other")
    other.append_many([b"%06d" % i + b"x" * 994 for i in range(300)])
    other.close()
    os.unlink(os.path.join(store.path("other"), seg_files(store.path("other"))[1]))
    log = store.open()
    other = store.open("other")
    with pytest.raises(Exception) as ei:
        other.verify()                                # fails at record 63 of "other"
    assert "record 63" in str(ei.value)
    try:
        list(log.read(start=101, batch=1))
    except fastq.CorruptQueueError as e:
        assert "record 63" not in str(e), str(e)


@pytest.mark.parametrize("batched", [True, False], ids=["append_many", "append"])
def test_read_can_start_after_a_corrupt_record(store, batched):
    log = store.open()
    data = [b"%06d" % i + b"x" * 994 for i in range(300)]
    if batched:
        log.append_many(data)
    else:
        for d in data:
            log.append(d)
    log.close()
    _flip_record_byte(store.path(), seg_files(store.path()), 100)
    log = store.open()
    assert [r.offset for r in log.read(start=101, batch=1)] == list(range(101, 300))


def test_corrupt_record_read_yields_the_good_prefix_first(store):
    segs = _make_segments(store)
    _flip_record_byte(store.path(), segs, 100)
    log = store.open()
    got = []
    with pytest.raises(fastq.CorruptRecordError):
        for r in log.read():
            got.append(r.offset)
    assert got == list(range(100))


def test_corrupt_record_in_a_group_is_counted(store):
    segs = _make_segments(store)
    _flip_record_byte(store.path(), segs, 100)
    log = store.open()
    g = log.group("g", visibility_timeout=None)
    got = _drain_past_damage(g, rounds=100, batch=64)
    assert [m.offset for m in got] == [o for o in range(300) if o != 100]
    assert g.stats()["dead_lettered"] == 1 and g.stats()["low"] == 300


def test_cold_recovery_refuses_or_skips_mid_log_corruption(store):
    """A record damaged below the last checkpoint (a sealed, flushed part of
    the log): recover=True refuses by default, naming the offset and segment;
    on_corrupt="skip" drops what cannot be read up to the next index entry
    and counts it.  (Damage above the checkpoint is a torn tail: see below.)"""
    store.open().close()
    offs, code = run_child(_child_append, store.path(), 0, 1500, False)  # clean close: checkpoint at 1500
    assert code == 0 and len(offs) == 1500
    segs = seg_files(store.path())
    target = None
    for s in segs:
        with open(os.path.join(store.path(), s), "r+b") as f:
            raw = f.read()
            i = raw.find(b"%08d" % 700)
            if i >= 0:
                f.seek(i + 4)
                f.write(b"#")
                target = s
                break
    assert target not in (None, segs[0], segs[-1])  # in the middle of the log
    with pytest.raises(fastq.CorruptRecordError) as ei:
        store.open(recover=True)
    assert ei.value.offset == 700 and target in str(ei.value) and "skip" in str(ei.value)
    log = store.open(recover=True, on_corrupt="skip")
    r = log.recovery_report
    assert r["corrupt"] and r["corrupt_offset"] == 700 and r["skipped"] >= 1
    assert r["tail_offset"] == 1500
    got = [x.offset for x in log.read()]
    assert got[:700] == list(range(700))
    assert 700 not in got and got[-1] == 1499
    assert len(got) == 1500 - r["skipped"]
    assert all(x.data == rec(x.offset) for x in log.read())
    assert log.append(b"after") == 1500


def test_torn_tail_is_cut_by_cold_recovery(store):
    store.open().close()
    offs, code = run_child(_child_append, store.path(), 0, 400, True)
    assert code == 0 and offs == list(range(400))
    # damage the last record of the log (the tail): no valid record follows it
    segs = seg_files(store.path())
    for s in reversed(segs):
        with open(os.path.join(store.path(), s), "r+b") as f:
            raw = f.read()
            i = raw.find(b"%08d" % 399)
            if i >= 0:
                f.seek(i + 3)
                f.write(b"#")
                break
    else:
        raise AssertionError("record 399 not found")
    log = store.open(recover=True)
    r = log.recovery_report
    assert r["tail_offset"] == 399 and r["truncated_bytes"] > 0 and not r["corrupt"]
    assert [x.offset for x in log.read()] == list(range(399))
    assert log.append(b"new") == 399


# =========================================================================== stats

def test_stats_of_a_group_behind_the_descriptor_ring(store):
    """Lag bytes and the oldest record's age come from the segments when the
    group is further behind than the descriptor ring reaches."""
    log = store.open(fsync="never", window=64)
    g = log.group("far", visibility_timeout=None)
    t0 = time.time()
    n = 20_000
    log.append_many([b"z" * 40] * n)
    raw = log._ring._group_stats(log._ring._group_find("far"))
    assert raw["oldest_ts_ns"] == 0  # the descriptor ring no longer reaches the group's low
    gs = log.stats()["groups"]["far"]
    assert gs["lag"] == n
    assert gs["lag_bytes"] >= n * 40
    assert 0 < gs["oldest_age"] <= time.time() - t0 + 1
    with g.consumer() as c:
        drain(c, 300)
    gs2 = log.stats()["groups"]["far"]
    assert gs2["lag"] == n - 300 and 0 < gs2["lag_bytes"] < gs["lag_bytes"]


def test_stats_of_a_durable_log(store):
    log = store.open(fsync="never")
    g = log.group("g", visibility_timeout=None)
    log.append_many([rec(i) for i in range(1500)])
    st = log.stats()
    assert set(st) >= {"name", "durable", "head", "oldest", "durable_offset", "segment_size", "members_alive",
                       "groups"}
    assert (st["head"], st["oldest"], st["durable_offset"], st["segment_size"]) == (1500, 0, 0, SEG)
    gs = st["groups"]["g"]
    assert set(gs) >= {"low", "lag", "lag_bytes", "pending", "unfinished", "delivered", "acked", "skipped",
                       "dead_lettered", "settings"}
    assert (gs["low"], gs["lag"], gs["skipped"], gs["unfinished"]) == (0, 1500, 0, 1500)
    assert gs["lag_bytes"] >= sum(len(rec(i)) for i in range(1500))
    with g.consumer() as c:
        drain(c, 500)
    log.flush()
    log.retain(fastq.Retention(max_bytes=2 * PER_SEG))
    st = log.stats()
    gs = st["groups"]["g"]
    assert st["durable_offset"] == 1500 and st["oldest"] > 500
    assert gs["skipped"] == st["oldest"] - 500 and gs["low"] == st["oldest"]
    assert gs["acked"] == 500 and gs["lag"] == 1500 - st["oldest"]
    same = {k: v for k, v in g.stats().items() if k != "oldest_age"}
    assert same == {k: v for k, v in gs.items() if k != "oldest_age"}
    assert gs["oldest_age"] >= 0
