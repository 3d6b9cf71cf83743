"""fastq.Log consumer groups across processes (fork): fan-out to 3 groups of 4
competing consumer processes with kill -9 of consumers holding leases, and
consumers killed at the crash points cons.after_lease / cons.after_nack.

Acks are tracked through per-process files of lines
``L|A <group> <offset> <deliveries> <pid>`` (L = leased, A = acked), each line
written with one os.write so a SIGKILL never leaves half a line that matters.
"""
import multiprocessing as mp
import os
import random
import signal
import sys
import time
import uuid
from collections import Counter, defaultdict

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _workers as W  # noqa: E402

import fastq  # noqa: E402

pytestmark = [pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fastq is Linux-only"),
              pytest.mark.timeout(120)]

fork = mp.get_context("fork")
GROUPS = ("alpha", "beta", "gamma")
GKW = dict(visibility_timeout=30.0, max_deliveries=16, window=256)


def _name():
    return f"tlmp-{os.getpid()}-{uuid.uuid4().hex[:10]}"


def _cleanup(name):
    for n in (name, name + ".dlq"):
        try:
            fastq.unlink(n)
        except (FileNotFoundError, OSError):
            pass




# --------------------------------------------------------------------------- children

def _producer(name, n, seed):
    rng = random.Random(seed)
    log = fastq.open(name)
    i = 0
    while i < n:
        k = min(n - i, rng.choice((1, 1, 3, 17)))
        recs = [W.make_record(0, i + j, rng.randrange(0, 300), i + j) for j in range(k)]
        if k == 1:
            off = log.append(recs[0], timeout=30)
            assert off == i, (off, i)
        else:
            offs = log.append_many(recs, timeout=30)
            assert offs == list(range(i, i + k)), (offs, i)
        i += k
        if rng.random() < 0.02:
            time.sleep(0.002)
    log.close()
    os._exit(0)


def _consumer(name, group, path, total, freeze_after, flag, seed):
    """Lease, log, ack until every record of the group is finished (per stats).
    With freeze_after=k, after k batches it logs its leases, sets flag=1 and
    sleeps holding them, waiting for its kill -9."""
    rng = random.Random(seed)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    pid = os.getpid()
    try:
        log = fastq.open(name)
        g = log.group(group, **GKW)
        c = g.consumer()
        batches = 0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            ms = c.get_many(rng.choice((1, 4, 16)), timeout=0.1)
            if not ms:
                if g.stats()["low"] >= total:
                    break
                continue
            for m in ms:
                prod, seq = W.check_record(m.data)
                assert seq == m.offset, (seq, m.offset)
            os.write(fd, "".join(f"L {group} {m.offset} {m.deliveries} {pid}\n" for m in ms).encode())
            batches += 1
            if freeze_after and batches >= freeze_after:
                flag.value = 1
                time.sleep(120)   # holding leases until killed
                os._exit(7)
            if rng.random() < 0.05:
                time.sleep(0.002)
            for m in ms:
                if m.ack():
                    os.write(fd, f"A {group} {m.offset} {m.deliveries} {pid}\n".encode())
                else:
                    os.write(fd, f"X {group} {m.offset} {m.deliveries} {pid}\n".encode())
        c.close()
        log.close()
        os.close(fd)
        os._exit(0)
    except BaseException as e:  # pragma: no cover
        os.write(fd, f"E {e!r}\n".encode())
        os._exit(1)


def _read_lines(paths):
    out = []
    for p in paths:
        if not os.path.exists(p):
            continue
        with open(p) as f:
            for line in f:
                if line.endswith("\n"):
                    out.append(line.split())
    return out


# --------------------------------------------------------------------------- fan-out with kills

def test_groups_of_competing_processes_with_kills(tmp_path):
    """3 groups x 4 consumer processes, one producer; 2 consumers per group freeze
    holding leases at a random moment and are kill -9'ed, replacements join.
    Every record is acked exactly once per group; redeliveries (deliveries > 1)
    happen only to records leased to a killed consumer, with deliveries exactly
    one more; the killed consumers' leases come back far sooner than the 30 s
    visibility timeout (the whole run takes seconds)."""
    N = 20000
    name = _name()
    log = fastq.open(name, capacity=1 << 20, max_groups=8)
    procs = []
    rng = random.Random(2024)
    try:
        for gname in GROUPS:
            log.group(gname, **GKW)
        cons = []   # (proc, path, flag, group, doomed)
        k = 0
        for gname in GROUPS:
            doomed = set(rng.sample(range(4), 2))
            for i in range(4):
                path = str(tmp_path / f"c{k}.txt")
                flag = fork.Value("i", 0)
                fa = rng.randrange(3, 60) if i in doomed else 0
                p = fork.Process(target=_consumer, args=(name, gname, path, N, fa, flag, k))
                cons.append([p, path, flag, gname, bool(fa)])
                k += 1
        prod = fork.Process(target=_producer, args=(name, N, 7))
        procs = [c[0] for c in cons] + [prod]
        for c in cons:
            c[0].start()
        prod.start()
        killed_pids = set()
        t0 = time.monotonic()
        deadline = t0 + 60
        pending_kill = [c for c in cons if c[4]]
        while time.monotonic() < deadline:
            for c in list(pending_kill):
                if c[2].value == 1:
                    os.kill(c[0].pid, signal.SIGKILL)
                    c[0].join(5)
                    assert c[0].exitcode == -signal.SIGKILL
                    killed_pids.add(c[0].pid)
                    pending_kill.remove(c)
                    # a replacement joins the group
                    path = str(tmp_path / f"c{k}.txt")
                    p = fork.Process(target=_consumer, args=(name, c[3], path, N, 0, fork.Value("i", 0), k))
                    k += 1
                    p.start()
                    procs.append(p)
                    cons.append([p, path, None, c[3], False])
                elif not c[0].is_alive():
                    pending_kill.remove(c)   # finished before its freeze point
            st = log.stats()["groups"]
            if all(st[gname]["low"] >= N for gname in GROUPS) and not pending_kill:
                break
            time.sleep(0.01)
        elapsed = time.monotonic() - t0
        for p in procs:
            if p.pid not in killed_pids:
                p.join(20)
        codes = {p.pid: p.exitcode for p in procs}
        lines = _read_lines([c[1] for c in cons])
        errors = [l for l in lines if l[0] == "E"]
        assert not errors, errors[:5]
        assert prod.exitcode == 0
        for p in procs:
            if p.pid not in killed_pids and p is not prod:
                assert codes[p.pid] == 0, f"consumer {p.pid} exit {codes[p.pid]}"
        assert len(killed_pids) >= 3, "the kills happened"
        st = log.stats()["groups"]
        for gname in GROUPS:
            assert st[gname]["low"] == N, (gname, st[gname])
            assert st[gname]["unfinished"] == 0 and st[gname]["pending"] == 0
            assert st[gname]["dead_lettered"] == 0 and st[gname]["expired"] == 0
        acks = Counter()
        ack_deliv = {}
        leased_by_killed = defaultdict(set)   # (g, off) -> deliveries leased to a killed pid
        leases = Counter()
        for l in lines:
            kind, gname, off, d, pid = l[0], l[1], int(l[2]), int(l[3]), int(l[4])
            if kind == "A":
                acks[gname, off] += 1
                ack_deliv[gname, off] = d
            elif kind == "L":
                leases[gname, off, d] += 1
                if pid in killed_pids:
                    leased_by_killed[gname, off].add(d)
            else:
                pytest.fail(f"ack returned False: {l} (no expiry can happen with a 30 s visibility timeout)")
        for gname in GROUPS:
            missing = [o for o in range(N) if acks[gname, o] == 0]
            dup = [o for o in range(N) if acks[gname, o] > 1]
            assert not missing, f"{gname}: {len(missing)} records never acked, e.g. {missing[:10]}"
            assert not dup, f"{gname}: records acked twice {dup[:10]}"
        assert not [kk for kk, v in leases.items() if v > 1], "a (record, delivery) leased twice"
        redelivered = {kk: d for kk, d in ack_deliv.items() if d > 1}
        for (gname, off), d in redelivered.items():
            assert (d - 1) in leased_by_killed.get((gname, off), ()), \
                f"{gname}/{off} redelivered (deliveries={d}) but delivery {d - 1} was not to a killed consumer"
        for (gname, off), ds in leased_by_killed.items():
            if acks[gname, off] and ack_deliv[gname, off] not in ds:
                assert ack_deliv[gname, off] == max(ds) + 1, (gname, off, ds, ack_deliv[gname, off])
        returned = sum(1 for kk, ds in leased_by_killed.items() if ack_deliv[kk] > max(ds))
        assert returned > 0, "the killed consumers held leases that came back"
        for gname in GROUPS:
            assert st[gname]["redelivered"] == sum(1 for (g_, o, d) in leases if g_ == gname and d > 1)
        assert elapsed < 50, f"took {elapsed:.1f} s"
    finally:
        W.kill_all(procs)
        log.close()
        _cleanup(name)


# --------------------------------------------------------------------------- crash points

def _crash_consumer(name, group, point, nack_delay, ready):
    log = fastq.open(name)
    g = log.group(group, visibility_timeout=30.0, max_deliveries=5)
    c = g.consumer()
    if point == "cons.after_lease":
        fastq._core.crash_arm(point)
        ready.set()
        c.get(timeout=10)
    else:
        m = c.get(timeout=10)
        fastq._core.crash_arm(point)
        ready.set()
        m.nack(delay=nack_delay)
    os._exit(3)   # the crash point was not reached


def _run_crash(point, nack_delay=0.0):
    name = _name()
    log = fastq.open(name, capacity=1 << 16)
    procs = []
    try:
        g = log.group("g", visibility_timeout=30.0, max_deliveries=5)
        log.append_many([b"first", b"second"])
        ready = fork.Event()
        p = fork.Process(target=_crash_consumer, args=(name, "g", point, nack_delay, ready))
        procs.append(p)
        p.start()
        p.join(10)
        assert p.exitcode == -signal.SIGKILL, f"exit {p.exitcode}: crash point {point} not reached"
        t0 = time.monotonic()
        with g.consumer() as c:
            got = []
            while len(got) < 2 and time.monotonic() - t0 < 10:
                got += c.get_many(10, timeout=0.5)
            took = time.monotonic() - t0
            got.sort(key=lambda m: m.offset)
            assert [(m.offset, m.data) for m in got] == [(0, b"first"), (1, b"second")], got
            assert got[0].deliveries == 2, f"deliveries {got[0].deliveries} after {point}"
            assert got[1].deliveries == 1
            assert took < 2.0, f"the lease came back after {took:.2f} s (visibility timeout 30 s)"
            assert all(m.ack() for m in got)
            with pytest.raises(fastq.Empty):
                c.get(timeout=0.1)
        st = g.stats()
        assert st["low"] == 2 and st["unfinished"] == 0 and st["pending"] == 0 and st["redelivered"] == 1
        return took
    finally:
        W.kill_all(procs)
        log.close()
        _cleanup(name)


def test_consumer_killed_after_lease_returns_lease_promptly():
    took = _run_crash("cons.after_lease")
    assert took < 2.0


@pytest.mark.parametrize("delay", [0.0, 0.3])
def test_consumer_killed_after_nack(delay):
    """The nacked record comes back (deliveries 2) promptly, whatever the nack's delay."""
    _run_crash("cons.after_nack", delay)


def _crash_consumer_holding(name, point_count, n):
    """Lease n records (one get_many) and die at the point_count-th after_lease."""
    log = fastq.open(name)
    g = log.group("g", visibility_timeout=30.0, max_deliveries=5)
    c = g.consumer()
    fastq._core.crash_arm(f"cons.after_lease:{point_count}")
    c.get_many(n, timeout=10)
    os._exit(3)


def test_consumer_killed_mid_batch_all_leases_return():
    """Killed after leasing 3 of a batch of 5: the 3 come back with deliveries 2,
    the rest are delivered fresh, promptly."""
    name = _name()
    log = fastq.open(name, capacity=1 << 16)
    procs = []
    try:
        g = log.group("g", visibility_timeout=30.0, max_deliveries=5)
        log.append_many([b"%d" % i for i in range(8)])
        p = fork.Process(target=_crash_consumer_holding, args=(name, 3, 5))
        procs.append(p)
        p.start()
        p.join(10)
        assert p.exitcode == -signal.SIGKILL
        t0 = time.monotonic()
        with g.consumer() as c:
            got = []
            while len(got) < 8 and time.monotonic() - t0 < 10:
                got += c.get_many(10, timeout=0.5)
            took = time.monotonic() - t0
            assert took < 2.0
            assert sorted((m.offset, m.deliveries) for m in got) == \
                [(0, 2), (1, 2), (2, 2)] + [(i, 1) for i in range(3, 8)]
            assert all(m.ack() for m in got)
        assert g.stats()["low"] == 8
    finally:
        W.kill_all(procs)
        log.close()
        _cleanup(name)


def _hold_then_sleep(name, ev):
    log = fastq.open(name)
    g = log.group("g", visibility_timeout=30.0, max_deliveries=5)
    c = g.consumer()
    c.get_many(2, timeout=10)
    ev.set()
    time.sleep(60)
    os._exit(0)


def test_external_kill_of_consumer_holding_leases_blocked_getter_wakes():
    """A consumer blocked in get() (nothing else to take) gets the leases of a
    consumer killed from outside within well under the visibility timeout."""
    name = _name()
    log = fastq.open(name, capacity=1 << 16)
    procs = []
    try:
        g = log.group("g", visibility_timeout=30.0, max_deliveries=5)
        log.append_many([b"a", b"b"])
        ev = fork.Event()
        p = fork.Process(target=_hold_then_sleep, args=(name, ev))
        procs.append(p)
        p.start()
        assert ev.wait(10)
        with g.consumer() as c:
            with pytest.raises(fastq.Empty):
                c.get(timeout=0.2)
            assert g.stats()["pending"] == 2 and g.stats()["consumers"] == 2
            t0 = time.monotonic()
            os.kill(p.pid, signal.SIGKILL)
            got = []
            while len(got) < 2 and time.monotonic() - t0 < 10:
                got += c.get_many(10, timeout=0.5)
            took = time.monotonic() - t0
            assert sorted((m.offset, m.deliveries) for m in got) == [(0, 2), (1, 2)]
            assert took < 2.0, took
            assert all(m.ack() for m in got)
        p.join(5)
        assert g.stats()["consumers"] == 0
    finally:
        W.kill_all(procs)
        log.close()
        _cleanup(name)


def _crash_dead_letterer(name, ready):
    log = fastq.open(name)
    g = log.group("g", visibility_timeout=30.0, max_deliveries=1)
    c = g.consumer()
    m = c.get(timeout=10)
    fastq._core.crash_arm("dlq.after_copy")
    ready.set()
    m.nack(reason="boom")          # at the limit: copy to the DLQ, then die before finishing
    os._exit(3)


def test_consumer_killed_between_dead_letter_copy_and_finish():
    """Copy first, then finish: a consumer killed between the two leaves the
    message in the DLQ; the lease comes back, the next consumer dead-letters
    it again (a duplicate in the DLQ, never a loss) and it is finished."""
    name = _name()
    log = fastq.open(name, capacity=1 << 16)
    procs = []
    try:
        g = log.group("g", visibility_timeout=30.0, max_deliveries=1)
        log.append(b"poison")
        ready = fork.Event()
        p = fork.Process(target=_crash_dead_letterer, args=(name, ready))
        procs.append(p)
        p.start()
        p.join(10)
        assert p.exitcode == -signal.SIGKILL, f"exit {p.exitcode}: crash point not reached"
        with g.consumer() as c:
            assert c.get_many(10, timeout=1.5) == []     # it was dead-lettered, not redelivered
        st = g.stats()
        assert st["unfinished"] == 0 and st["dead_lettered"] == 1 and st["low"] == 1, st
        dlq = fastq.open(name + ".dlq")
        try:
            with dlq.group("inspect").consumer() as d:
                letters = [fastq.DeadLetter.decode(m.data) for m in d.get_many(10, timeout=1.0)]
        finally:
            dlq.close()
        assert len(letters) == 2, letters                 # the dead consumer's copy + the survivor's
        assert {(x.offset, x.data, x.group) for x in letters} == {(0, b"poison", "g")}
        assert letters[0].reason == "boom"
    finally:
        W.kill_all(procs)
        log.close()
        _cleanup(name)


def _crash_admin(name, point, ready):
    log = fastq.open(name)
    fastq._core.crash_arm(point)
    ready.set()
    log.reset_group("g", 0)
    os._exit(3)   # the crash point was not reached


@pytest.mark.parametrize("point", ["admin.reset_freed", "admin.after_active"])
def test_admin_killed_during_group_reset(point):
    """A reset killed after it freed the slot leaves the group deleted (its
    consumers see it gone; attaching re-creates it); killed after the new
    generation went ACTIVE, the reset is done.  Either way the admin mutex of
    the dead process is taken over: the queue is never wedged."""
    name = _name()
    log = fastq.open(name, capacity=1 << 16)
    procs = []
    try:
        g = log.group("g", visibility_timeout=30.0, max_deliveries=5)
        log.append_many([b"a", b"b", b"c"])
        with g.consumer() as c:
            assert c.ack(c.get_many(2, timeout=1)) == 2
        ready = fork.Event()
        p = fork.Process(target=_crash_admin, args=(name, point, ready))
        procs.append(p)
        p.start()
        p.join(10)
        assert p.exitcode == -signal.SIGKILL, f"exit {p.exitcode}: crash point {point} not reached"
        t0 = time.monotonic()
        if point == "admin.reset_freed":
            assert log.groups() == []
            g = log.group("g", start=1, visibility_timeout=30.0, max_deliveries=5)  # takes the dead admin's mutex
        else:
            assert log.groups() == ["g"] and g.stats()["low"] == 0
            log.group("other")  # takes the dead admin's mutex
        assert time.monotonic() - t0 < 5
        with g.consumer() as c:
            got = c.get_many(10, timeout=1)
            assert [m.data for m in got] == ([b"b", b"c"] if point == "admin.reset_freed" else [b"a", b"b", b"c"])
    finally:
        W.kill_all(procs)
        log.close()
        _cleanup(name)
