"""fastq.open / Log / Group / Consumer / Message / Backoff / DeadLetter in one
process (threads where useful).  Every blocking call is bounded; every log (and
its "<name>.dlq") is unlinked afterwards."""
import queue
import sys
import threading
import time
import uuid

import pytest

import fastq

pytestmark = [pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fastq is Linux-only"),
              pytest.mark.timeout(60)]

TOL = 0.05   # timing tolerance (s)


def _unlink_quiet(name):
    try:
        fastq.unlink(name)
    except (FileNotFoundError, OSError, ValueError):
        pass


@pytest.fixture
def mklog():
    """mklog(**open_kwargs) -> a fresh Log; it, its .dlq and any extra names are unlinked afterwards."""
    made = []

    def make(name=None, **kw):
        name = name or "tl-" + uuid.uuid4().hex
        log = fastq.open(name, **kw)
        made.append(log)
        return log

    make.names = []
    yield make
    for log in made:
        for n in (log.name, log.name + ".dlq"):
            _unlink_quiet(n)
        try:
            log.close()
        except Exception:
            pass
    for n in make.names:
        _unlink_quiet(n)


def _drain(c, want, timeout=5.0):
    """Get (and ack) until `want` messages came; returns the messages."""
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < want and time.monotonic() < deadline:
        for m in c.get_many(256, timeout=0.1):
            out.append(m)
    return out


def _dlq_records(name, n, timeout=2.0):
    dlq = fastq.open(name, create=False)
    try:
        g = dlq.group("inspect", start="earliest", visibility_timeout=None)
        with g.consumer() as c:
            ms = _drain(c, n, timeout)
            extra = c.get_many(10, timeout=0.05)
            return [fastq.DeadLetter.decode(m.data) for m in ms + extra]
    finally:
        dlq.close()


# --------------------------------------------------------------------------- appending

def test_append_offsets_dense(mklog):
    log = mklog(capacity=1 << 20)
    assert log.append(b"a") == 0
    assert log.append(bytearray(b"bb")) == 1
    assert log.append(memoryview(b"ccc")) == 2
    assert log.append_many([b"d", b"e", b""]) == [3, 4, 5]
    assert log.append_many([]) == []
    assert log.append_many(iter([b"f"])) == [6]
    st = log.stats()
    assert st["head"] == 7 and st["oldest"] == 0
    assert st["bytes_used"] + st["bytes_free"] == st["capacity"] == log._ring.capacity
    g = log.group("g", visibility_timeout=None)
    with g.consumer() as c:
        ms = _drain(c, 7)
        assert [m.offset for m in ms] == list(range(7))
        assert [m.data for m in ms] == [b"a", b"bb", b"ccc", b"d", b"e", b"", b"f"]
        assert all(type(m.data) is bytes for m in ms)
        assert all(m.deliveries == 1 and m.group == "g" for m in ms)
        now = time.time()
        assert all(now - 10 < m.timestamp <= now + 1 for m in ms)
        assert all(m.ack() for m in ms)


def test_open_attach_same_log(mklog):
    a = mklog(capacity=1 << 16)
    b = fastq.open(a.name)
    try:
        assert b.append(b"x") == 0
        assert a.append(b"y") == 1
        assert b.stats()["head"] == 2
        assert a.group("g", visibility_timeout=None) is not None
        assert b.groups() == ["g"]
    finally:
        b.close()
    with pytest.raises(FileNotFoundError):
        fastq.open("tl-none-" + uuid.uuid4().hex, create=False, wait=0.1)


# --------------------------------------------------------------------------- fan-out / competing

def test_fanout_groups_independent(mklog):
    log = mklog(capacity=1 << 20)
    log.append_many([b"%d" % i for i in range(50)])
    ga = log.group("a", visibility_timeout=None)
    gb = log.group("b", visibility_timeout=None)
    assert sorted(log.groups()) == ["a", "b"]
    with ga.consumer() as ca, gb.consumer() as cb:
        ma = _drain(ca, 50)
        assert [m.offset for m in ma] == list(range(50))
        assert all(m.ack() for m in ma)
        # b is untouched by a's acks
        mb = _drain(cb, 50)
        assert [m.offset for m in mb] == list(range(50))
        assert [m.data for m in mb] == [b"%d" % i for i in range(50)]
        assert all(m.deliveries == 1 and m.group == "b" for m in mb)
        for m in mb:
            m.ack()
    st = log.stats()["groups"]
    assert st["a"]["low"] == st["b"]["low"] == 50
    assert st["a"]["acked"] == st["b"]["acked"] == 50


def test_group_dispatches_in_offset_order(mklog):
    log = mklog(capacity=1 << 20)
    g = log.group("g", visibility_timeout=None)
    with g.consumer() as c:
        got = []
        for i in range(10):
            log.append_many([b"r"] * 7)
            got += c.get_many(3, timeout=1.0)
        got += _drain(c, 70 - len(got))
        assert [m.offset for m in got] == list(range(70))


def test_competing_consumers_threads_exactly_once(mklog):
    log = mklog(capacity=1 << 22)
    g = log.group("work", visibility_timeout=None, window=256)
    N, T = 5000, 4
    acked = [[] for _ in range(T)]
    delivered = [[] for _ in range(T)]
    errors = []
    stop = threading.Event()

    def worker(i):
        try:
            with g.consumer() as c:
                while not stop.is_set():
                    for m in c.get_many(32, timeout=0.05):
                        delivered[i].append(m.offset)
                        assert m.deliveries == 1
                        assert m.ack() is True
                        acked[i].append(int(m.data))
        except BaseException as e:  # pragma: no cover
            errors.append(e)

    ths = [threading.Thread(target=worker, args=(i,)) for i in range(T)]
    for t in ths:
        t.start()
    try:
        for base in range(0, N, 100):
            log.append_many([b"%d" % k for k in range(base, base + 100)], timeout=10)
        deadline = time.monotonic() + 20
        while sum(map(len, acked)) < N and time.monotonic() < deadline and not errors:
            time.sleep(0.01)
    finally:
        stop.set()
        for t in ths:
            t.join(10)
    assert not errors, errors
    assert not any(t.is_alive() for t in ths)
    allacks = sorted(x for a in acked for x in a)
    assert allacks == list(range(N)), "every record acked exactly once"
    alld = sorted(x for d in delivered for x in d)
    assert alld == list(range(N)), "no record delivered twice"
    for d in delivered:
        assert d == sorted(d), "each consumer sees increasing offsets"
    st = log.stats()["groups"]["work"]
    assert st["low"] == N and st["acked"] == N and st["delivered"] == N
    assert st["redelivered"] == 0 and st["pending"] == 0 and st["unfinished"] == 0


# --------------------------------------------------------------------------- start positions

def test_start_earliest_latest_offset(mklog):
    log = mklog(capacity=1 << 20)
    log.append_many([b"%d" % i for i in range(10)])
    ge = log.group("e", start="earliest", visibility_timeout=None)
    gl = log.group("l", start="latest", visibility_timeout=None)
    go = log.group("o", start=4, visibility_timeout=None)
    gh = log.group("h", start=10, visibility_timeout=None)  # == head: allowed, sees new records only
    with pytest.raises(ValueError, match="beyond the head"):
        log.group("x", start=11)
    assert "x" not in log.groups()
    log.append(b"10")
    st = log.stats()["groups"]
    assert st["e"]["low"] == 0 and st["l"]["low"] == 10 and st["o"]["low"] == 4 and st["h"]["low"] == 10
    assert st["e"]["lag"] == 11 and st["l"]["lag"] == 1 and st["o"]["lag"] == 7
    for g, first in ((ge, 0), (gl, 10), (go, 4), (gh, 10)):
        with g.consumer() as c:
            ms = _drain(c, 11 - first)
            assert [m.offset for m in ms] == list(range(first, 11))
            assert [m.data for m in ms] == [b"%d" % i for i in range(first, 11)]
            with pytest.raises(fastq.Empty):
                c.get(timeout=0.05)
    # start only matters at creation: attaching with another start is fine
    assert log.group("e", start="latest", visibility_timeout=None).name == "e"
    assert log.stats()["groups"]["e"]["settings"]["start"] == 0


@pytest.mark.parametrize("capacity", [4096, 65536])
def test_start_on_wrapped_log_without_groups(mklog, capacity):
    log = mklog(capacity=capacity)
    rec = b"z" * 100
    n = 4 * capacity // 100
    for i in range(n):
        assert log.append(rec, timeout=1.0) == i  # no group: never blocks, overwrites the oldest
    st = log.stats()
    assert st["head"] == n
    oldest = st["oldest"]
    assert 0 < oldest < n
    assert st["bytes_used"] <= capacity
    with pytest.raises(ValueError, match="no longer in the ring"):
        log.group("old", start=oldest - 1)
    with pytest.raises(ValueError, match="no longer in the ring"):
        log.group("old0", start=0)
    assert log.groups() == []
    ge = log.group("e", start="earliest", visibility_timeout=None)
    go = log.group("o", start=oldest + 1, visibility_timeout=None)
    gl = log.group("l", start="latest", visibility_timeout=None)
    gs = log.stats()["groups"]
    low_e = gs["e"]["low"]
    assert low_e >= oldest  # the oldest record the ring still holds (or later, if it moved on)
    assert gs["o"]["low"] == oldest + 1 and gs["l"]["low"] == n
    # the ring is full and the groups hold it: append blocks until they consume
    with pytest.raises(queue.Full):
        log.append(b"new", timeout=0.1)
    with ge.consumer() as ce, go.consumer() as co, gl.consumer() as cl:
        ms = _drain(ce, n - low_e)
        assert [m.offset for m in ms] == list(range(low_e, n))
        assert all(m.data == rec and m.ack() for m in ms)
        ms = _drain(co, n - oldest - 1)
        assert [m.offset for m in ms] == list(range(oldest + 1, n))
        assert all(m.ack() for m in ms)
        assert log.append(b"new", timeout=2.0) == n
        for c in (ce, co, cl):
            ms = _drain(c, 1)
            assert [(m.offset, m.data) for m in ms] == [(n, b"new")]
            assert ms[0].ack()


def test_start_on_wrapped_log_with_group(mklog):
    """A group holds space; a group created later at 'earliest' starts at the oldest
    retained record and an older offset is refused."""
    log = mklog(capacity=4096)
    rec = b"y" * 100
    for _ in range(200):
        log.append(rec, timeout=1.0)
    slow = log.group("slow", start="latest", visibility_timeout=None)
    oldest = log.stats()["oldest"]
    assert oldest > 0
    with pytest.raises(ValueError):
        log.group("tooold", start=oldest - 1)
    g2 = log.group("g2", start="earliest", visibility_timeout=None)
    low2 = log.stats()["groups"]["g2"]["low"]
    assert oldest <= low2 <= 200
    with g2.consumer() as c:
        ms = _drain(c, 200 - low2)
        assert [m.offset for m in ms] == list(range(low2, 200))
        for m in ms:
            m.ack()
    # slow holds everything appended from now on
    appended = 0
    with pytest.raises(queue.Full):
        for _ in range(1000):
            log.append(rec, timeout=0.05)
            appended += 1
    assert 0 < appended < 1000
    with slow.consumer() as c:
        ms = _drain(c, appended)
        assert [m.offset for m in ms] == list(range(200, 200 + appended))


# --------------------------------------------------------------------------- argument errors

def test_bad_arguments(mklog):
    log = mklog(capacity=1 << 16)
    with pytest.raises(TypeError, match="log name must be a str"):
        fastq.open(123)
    with pytest.raises(TypeError, match="use fastq.open"):
        fastq.Log()
    with pytest.raises(TypeError, match="group name must be a str"):
        log.group(5)
    with pytest.raises(ValueError, match="start must be"):
        log.group("g", start="middle")
    with pytest.raises(ValueError, match="start must be"):
        log.group("g", start=-1)
    with pytest.raises(ValueError, match="start must be"):
        log.group("g", start=True)
    with pytest.raises(ValueError, match="start must be"):
        log.group("g", start=1.5)
    with pytest.raises(ValueError, match="visibility_timeout"):
        log.group("g", visibility_timeout=-1)
    with pytest.raises(ValueError, match="visibility_timeout"):
        log.group("g", visibility_timeout=float("nan"))
    with pytest.raises(ValueError, match="max_deliveries"):
        log.group("g", max_deliveries=255)
    with pytest.raises(ValueError, match="max_deliveries"):
        log.group("g", max_deliveries=-1)
    with pytest.raises(TypeError, match="dead_letter"):
        log.group("g", dead_letter=3)
    with pytest.raises(TypeError, match="retry must be a fastq.Backoff"):
        log.group("g", retry=(1, 2))
    with pytest.raises(ValueError, match="window"):
        log.group("g", window=0)
    with pytest.raises(ValueError, match="1-63 bytes"):
        log.group("")
    with pytest.raises(ValueError, match="1-63 bytes"):
        log.group("n" * 64)
    with pytest.raises(ValueError):
        log.group("g", dead_letter="bad\x00name")
    assert log.groups() == [], "a refused group must not be created"
    for bad in (dict(initial=-1), dict(initial=2, maximum=1), dict(multiplier=0.5), dict(jitter=1.5),
                dict(jitter=-0.1), dict(maximum=5e6)):
        with pytest.raises(ValueError, match="Backoff"):
            fastq.Backoff(**bad)
    with pytest.raises(KeyError):
        log.delete_group("nope")
    g = log.group("g", visibility_timeout=None)
    log.append(b"x")
    with g.consumer() as c:
        with pytest.raises(ValueError, match="max_messages"):
            c.get_many(0, timeout=0.1)
        with pytest.raises(ValueError, match="timeout"):
            c.get(timeout=-1)
        m = c.get(timeout=1)
        with pytest.raises(ValueError, match="delay"):
            m.nack(delay=-1)
        with pytest.raises(ValueError, match="seconds"):
            m.extend(-1)
        with pytest.raises(TypeError):
            fastq.Message()
        assert m.ack()
    with pytest.raises(ValueError, match="closed"):
        m.ack()  # its consumer is closed
    with pytest.raises(TypeError):
        log.append("text is not bytes")


def test_conflicting_settings(mklog):
    log = mklog(capacity=1 << 16)
    kw = dict(visibility_timeout=5.0, max_deliveries=3, retry=fastq.Backoff(0.1, 1.0, 3.0, 0.0),
              dead_letter="tl-other-dlq", window=64)
    g = log.group("g", **kw)
    assert log.group("g", **kw).name == "g"  # same settings: attach
    other = log.name + "-x"
    for change in (dict(visibility_timeout=6.0), dict(visibility_timeout=None), dict(max_deliveries=4),
                   dict(max_deliveries=None), dict(retry=fastq.Backoff()), dict(dead_letter=True),
                   dict(dead_letter=None), dict(dead_letter=other), dict(window=128)):
        with pytest.raises(ValueError, match="other settings"):
            log.group("g", **{**kw, **change})
    s = g.settings
    assert s["name"] == "g" and s["window"] == 64 and s["max_deliveries"] == 3
    assert s["visibility_timeout"] == 5.0 and s["dead_letter"] == "tl-other-dlq"
    assert fastq.Backoff._unpack(s["backoff"]) == fastq.Backoff(0.1, 1.0, 3.0, 0.0)


def test_max_groups(mklog):
    log = mklog(capacity=1 << 16, max_groups=2)
    log.group("a")
    log.group("b")
    with pytest.raises(fastq.FastqError, match="group table is full"):
        log.group("c")
    log.delete_group("a")
    log.group("c")
    assert sorted(log.groups()) == ["b", "c"]


# --------------------------------------------------------------------------- leases

def test_lease_expiry_redelivers_and_late_ack_false(mklog):
    log = mklog(capacity=1 << 16)
    log.append(b"job")
    g = log.group("g", visibility_timeout=0.2, max_deliveries=5)
    with g.consumer() as c1, g.consumer() as c2:
        m1 = c1.get(timeout=1)
        t0 = time.monotonic()
        with pytest.raises(fastq.Empty):
            c2.get(timeout=0.1)
        m2 = c2.get(timeout=2)
        waited = time.monotonic() - t0
        assert 0.2 - TOL <= waited < 1.5
        assert (m2.offset, m2.data, m2.deliveries) == (0, b"job", 2)
        assert m1.ack() is False, "late ack of an expired lease must fail"
        assert m1.extend(10) is False
        assert m1.nack(delay=0) is False
        st = g.stats()
        assert st["expired"] == 1 and st["redelivered"] == 1 and st["delivered"] == 2 and st["pending"] == 1
        assert m2.ack() is True
        assert m2.ack() is False, "second ack of the same lease"
        st = g.stats()
        assert st["low"] == 1 and st["unfinished"] == 0 and st["pending"] == 0 and st["acked"] == 1


def test_no_visibility_timeout_never_expires(mklog):
    log = mklog(capacity=1 << 16)
    log.append(b"job")
    g = log.group("g", visibility_timeout=None)
    with g.consumer() as c1, g.consumer() as c2:
        m = c1.get(timeout=1)
        time.sleep(0.3)
        with pytest.raises(fastq.Empty):
            c2.get(timeout=0.2)
        assert m.ack()


def test_extend_keeps_lease(mklog):
    log = mklog(capacity=1 << 16)
    log.append(b"long job")
    g = log.group("g", visibility_timeout=0.2)
    with g.consumer() as c1, g.consumer() as c2:
        m = c1.get(timeout=1)
        time.sleep(0.1)
        assert m.extend(0.6) is True
        with pytest.raises(fastq.Empty):
            c2.get(timeout=0.4)   # past the original 0.2 s
        assert m.ack() is True
        assert g.stats()["expired"] == 0
    # and an extended lease does expire at the new deadline
    log.append(b"again")
    with g.consumer() as c1, g.consumer() as c2:
        m = c1.get(timeout=1)
        assert m.extend(0.4)
        t0 = time.monotonic()
        m2 = c2.get(timeout=2)
        assert time.monotonic() - t0 >= 0.4 - TOL
        assert (m2.offset, m2.deliveries) == (m.offset, 2)
        assert m.ack() is False and m2.ack() is True


def test_nack_with_delay(mklog):
    log = mklog(capacity=1 << 16)
    log.append_many([b"a", b"b"])
    g = log.group("g", visibility_timeout=None, max_deliveries=5)
    with g.consumer() as c1, g.consumer() as c2:
        m = c1.get(timeout=1)
        assert m.offset == 0
        t0 = time.monotonic()
        assert m.nack(delay=0.3) is True
        assert m.nack(delay=0) is False, "a nacked lease is no longer ours"
        assert m.ack() is False
        # the next record is still dispatched while 0 waits
        mb = c2.get(timeout=1)
        assert mb.offset == 1 and mb.ack()
        with pytest.raises(fastq.Empty):
            c2.get(timeout=0.3 - TOL - (time.monotonic() - t0))
        m2 = c2.get(timeout=2)
        assert time.monotonic() - t0 >= 0.3 - TOL
        assert (m2.offset, m2.data, m2.deliveries) == (0, b"a", 2)
        st = g.stats()
        assert st["nacked"] == 1 and st["redelivered"] == 1 and st["expired"] == 0
        # nack(delay=0): back at once
        assert m2.nack(delay=0)
        m3 = c1.get(timeout=0.5)
        assert (m3.offset, m3.deliveries) == (0, 3)
        assert m3.ack()
        assert g.stats()["low"] == 2


def test_nack_without_delay_uses_backoff(mklog):
    log = mklog(capacity=1 << 16)
    log.append(b"r")
    g = log.group("g", visibility_timeout=None, max_deliveries=10,
                  retry=fastq.Backoff(initial=0.2, maximum=0.5, multiplier=2.0, jitter=0.0))
    with g.consumer() as c:
        m = c.get(timeout=1)
        for expect in (0.2, 0.4, 0.5, 0.5):   # initial * 2**(d-1), capped at 0.5
            t0 = time.monotonic()
            assert m.nack()
            with pytest.raises(fastq.Empty):
                c.get(timeout=expect - TOL)
            m2 = c.get(timeout=expect + 2)
            took = time.monotonic() - t0
            assert expect - TOL <= took < expect + 1.0, (expect, took)
            assert m2.deliveries == m.deliveries + 1
            m = m2
        assert m.ack()


def test_backoff_delay_math():
    b = fastq.Backoff(initial=0.5, maximum=3.0, multiplier=2.0, jitter=0.0)
    assert [b.delay(d) for d in (1, 2, 3, 4, 5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    j = fastq.Backoff(initial=1.0, maximum=10.0, multiplier=1.0, jitter=0.2)
    ds = [j.delay(1) for _ in range(200)]
    assert all(0.8 <= d <= 1.2 for d in ds) and len(set(ds)) > 1


# --------------------------------------------------------------------------- dead letters

def test_max_deliveries_nack_goes_to_dlq(mklog):
    log = mklog(capacity=1 << 16)
    log.append(b"ok-0")
    off = log.append(b"poison")
    log.append(b"ok-2")
    g = log.group("billing", visibility_timeout=None, max_deliveries=3)
    with g.consumer() as c:
        seen = []
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            ms = c.get_many(10, timeout=0.2)
            if not ms and len(seen) >= 5:
                break
            for m in ms:
                seen.append((m.offset, m.deliveries))
                if m.data == b"poison":
                    assert m.nack(delay=0, reason=f"bad #{m.deliveries}") is True
                else:
                    assert m.ack()
        assert seen.count((off, 1)) == seen.count((off, 2)) == seen.count((off, 3)) == 1
        assert [s for s in seen if s[0] == off] == [(off, 1), (off, 2), (off, 3)]
        with pytest.raises(fastq.Empty):
            c.get(timeout=0.1)
    st = g.stats()
    assert st["dead_lettered"] == 1 and st["low"] == 3 and st["unfinished"] == 0 and st["pending"] == 0
    assert st["nacked"] == 2
    dls = _dlq_records(log.name + ".dlq", 1)
    assert len(dls) == 1
    d = dls[0]
    assert d == fastq.DeadLetter(log.name, "billing", off, 3, "bad #3", d.timestamp, b"poison")
    assert abs(d.timestamp - time.time()) < 10


def test_full_dead_letter_log_keeps_the_message_in_its_group(mklog):
    """A shared-memory DLQ whose own group holds all its space: a message past
    max_deliveries stays in its group (retried after the backoff) instead of
    being dropped or blocking the consumer, and is dead-lettered once the DLQ
    has room."""
    log = mklog(capacity=1 << 16)
    dlq = mklog(log.name + ".dlq", capacity=1 << 12)
    reader = dlq.group("ops")  # gates the DLQ's ring: nobody reads it yet
    for size in (200, 1):  # fill it to the last byte a record could use
        while True:
            try:
                dlq.append(b"x" * size, timeout=0)
            except fastq.Full:
                break
    off = log.append(b"poison")
    g = log.group("billing", visibility_timeout=None, max_deliveries=1,
                  retry=fastq.Backoff(initial=0.05, maximum=0.05, jitter=0))
    with g.consumer() as c:
        m = c.get(timeout=1)
        t0 = time.monotonic()
        assert m.nack(reason="bad") is True
        assert time.monotonic() - t0 < 5
        st = g.stats()
        assert st["dead_lettered"] == 0 and st["unfinished"] == 1  # kept, not lost
        # past its limit it is never handed to the handler again; each retry
        # tries the DLQ (0.5 s) and keeps it while the DLQ is full
        assert c.get_many(10, timeout=1.0) == []
        st = g.stats()
        assert st["dead_lettered"] == 0 and st["unfinished"] == 1
        with reader.consumer() as rc:  # the DLQ drains: now it is dead-lettered
            while rc.ack(rc.get_many(1000, timeout=0.2)):
                pass
        deadline = time.monotonic() + 10
        while g.stats()["dead_lettered"] == 0 and time.monotonic() < deadline:
            assert c.get_many(10, timeout=0.2) == []
    st = g.stats()
    assert st["dead_lettered"] == 1 and st["unfinished"] == 0
    last = list(dlq.read())[-1]
    assert fastq.DeadLetter.decode(last.data).reason.startswith("delivery limit 1 reached")


def test_max_deliveries_by_expiry_goes_to_dlq(mklog):
    log = mklog(capacity=1 << 16)
    log.append(b"slow")
    g = log.group("g", visibility_timeout=0.1, max_deliveries=2, dead_letter="tl-dl-" + log.name[3:])
    mklog.names.append(g.settings["dead_letter"])
    with g.consumer() as c:
        m1 = c.get(timeout=1)
        m2 = c.get(timeout=2)
        assert (m2.offset, m2.deliveries) == (0, 2)
        with pytest.raises(fastq.Empty):
            c.get(timeout=0.4)   # the 3rd delivery is the dead letter, never returned
        assert m1.ack() is False and m2.ack() is False
    st = g.stats()
    assert st["dead_lettered"] == 1 and st["low"] == 1 and st["unfinished"] == 0
    dls = _dlq_records(g.settings["dead_letter"], 1)
    assert len(dls) == 1
    d = dls[0]
    assert (d.log, d.group, d.offset, d.deliveries, d.data) == (log.name, "g", 0, 3, b"slow")
    assert "expired" in d.reason or "died" in d.reason
    with pytest.raises(FileNotFoundError):
        fastq.open(log.name + ".dlq", create=False, wait=0.1)


def test_nack_at_limit_without_reason(mklog):
    log = mklog(capacity=1 << 16)
    log.append(b"p")
    g = log.group("g", visibility_timeout=None, max_deliveries=1)
    with g.consumer() as c:
        m = c.get(timeout=1)
        assert m.nack() is True   # at the limit: dead-lettered at once, no backoff wait
        with pytest.raises(fastq.Empty):
            c.get(timeout=0.1)
    (d,) = _dlq_records(log.name + ".dlq", 1)
    assert (d.offset, d.deliveries, d.data, d.group) == (0, 1, b"p", "g")
    assert isinstance(d.reason, str) and d.reason
    assert g.stats()["dead_lettered"] == 1


def test_dead_letter_none_drops(mklog):
    log = mklog(capacity=1 << 16)
    log.append_many([b"p", b"q"])
    g = log.group("g", visibility_timeout=None, max_deliveries=1, dead_letter=None)
    assert g.settings["dead_letter"] is None
    with g.consumer() as c:
        m = c.get(timeout=1)
        assert m.nack(reason="drop me") is True
        m = c.get(timeout=1)
        assert m.offset == 1 and m.ack()
        with pytest.raises(fastq.Empty):
            c.get(timeout=0.1)
    st = g.stats()
    assert st["dead_lettered"] == 1 and st["low"] == 2 and st["unfinished"] == 0
    with pytest.raises(FileNotFoundError):
        fastq.open(log.name + ".dlq", create=False, wait=0.1)


def test_dead_letter_decode_rejects_other_data():
    with pytest.raises(ValueError, match="dead-letter"):
        fastq.DeadLetter.decode(__import__("pickle").dumps(("x", 1)))
    d = fastq.DeadLetter("l", "g", 5, 2, None, 1.5, b"\x00\xff")
    assert fastq.DeadLetter.decode(d.encode()) == d


# --------------------------------------------------------------------------- window / back-pressure

def test_window_limits_in_flight(mklog):
    log = mklog(capacity=1 << 16)
    log.append_many([b"%d" % i for i in range(10)])
    g = log.group("g", visibility_timeout=None, window=4)
    assert g.settings["window"] == 4
    with g.consumer() as c1, g.consumer() as c2:
        ms = c1.get_many(100, timeout=0.5)
        assert [m.offset for m in ms] == [0, 1, 2, 3]
        assert c2.get_many(100, timeout=0.1) == []
        assert g.stats()["pending"] == 4
        # acking a later record does not open the window (the window counts from low)
        assert ms[3].ack()
        assert c2.get_many(100, timeout=0.1) == []
        assert ms[0].ack()
        got = c2.get_many(100, timeout=0.5)
        assert [m.offset for m in got] == [4]
        assert ms[1].ack() and ms[2].ack()
        got += c2.get_many(100, timeout=0.5)
        assert [m.offset for m in got] == [4, 5, 6, 7]   # low is 4 now: window [4, 8)
        assert c1.get_many(100, timeout=0.1) == []
        for m in got:
            m.ack()
        rest = _drain(c1, 2)
        assert [m.offset for m in rest] == [8, 9]


def test_slow_group_blocks_append_and_delete_releases(mklog):
    log = mklog(capacity=4096)
    slow = log.group("slow", visibility_timeout=None)
    rec = b"s" * 200
    n = 0
    t0 = time.monotonic()
    with pytest.raises(queue.Full):
        for _ in range(1000):
            log.append(rec, timeout=0.1)
            n += 1
    assert 0 < n < 4096 // 200 + 1
    assert time.monotonic() - t0 >= 0.1 - TOL
    with pytest.raises(queue.Full):
        log.append_many([rec, rec], timeout=0.05)
    st = log.stats()
    assert st["groups"]["slow"]["lag"] == n and st["head"] == n
    # a blocked append goes on as soon as the group is deleted
    res = {}

    def blocked():
        t = time.monotonic()
        try:
            res["off"] = log.append(rec, timeout=5.0)
        except BaseException as e:  # pragma: no cover
            res["err"] = e
        res["took"] = time.monotonic() - t

    th = threading.Thread(target=blocked)
    th.start()
    time.sleep(0.2)
    assert th.is_alive(), "append should block while the slow group holds the ring"
    slow.delete()
    th.join(5)
    assert not th.is_alive()
    assert res.get("off") == n, res
    assert res["took"] < 1.5
    assert log.groups() == []
    for _ in range(100):  # no group: overwrites
        log.append(rec, timeout=0.5)


def test_consuming_releases_blocked_append(mklog):
    log = mklog(capacity=4096)
    g = log.group("g", visibility_timeout=None)
    rec = b"c" * 200
    n = 0
    with pytest.raises(queue.Full):
        while True:
            log.append(rec, timeout=0.05)
            n += 1
    res = {}
    th = threading.Thread(target=lambda: res.setdefault("off", log.append(rec, timeout=5.0)))
    th.start()
    time.sleep(0.1)
    with g.consumer() as c:
        ms = c.get_many(4, timeout=1)
        assert ms
        for m in ms:
            m.ack()
        th.join(5)
        assert res.get("off") == n


def test_deleted_group_consumer_errors(mklog):
    log = mklog(capacity=1 << 16)
    g = log.group("g", visibility_timeout=None)
    log.append(b"x")
    c = g.consumer()
    try:
        g.delete()
        assert log.groups() == []
        with pytest.raises(fastq.FastqError, match="deleted"):
            c.get(timeout=0.2)
        with pytest.raises(fastq.FastqError, match="deleted"):
            g.settings
        with pytest.raises(KeyError):
            g.consumer()
    finally:
        c.close()
    # re-created with the same name: a fresh group
    g2 = log.group("g", start="latest", visibility_timeout=None)
    assert g2.stats()["low"] == 1 and g2.stats()["delivered"] == 0


# --------------------------------------------------------------------------- stats

def test_stats_numbers(mklog):
    log = mklog(capacity=1 << 16)
    g = log.group("g", visibility_timeout=None, max_deliveries=2, dead_letter=None)
    other = log.group("idle", visibility_timeout=None)
    recs = [b"x" * i for i in range(10)]
    log.append_many(recs)
    st = log.stats()
    assert st["name"] == log.name and st["head"] == 10 and st["oldest"] == 0
    assert st["capacity"] == 1 << 16 and st["bytes_used"] > sum(map(len, recs))
    assert st["bytes_used"] + st["bytes_free"] == st["capacity"]
    gs = st["groups"]["g"]
    assert (gs["low"], gs["lag"], gs["pending"], gs["unfinished"], gs["delivered"], gs["consumers"]) == (0, 10, 0, 10, 0, 0)
    assert gs["lag_bytes"] >= sum(map(len, recs))
    assert gs["oldest_age"] >= 0
    with g.consumer() as c1, g.consumer() as c2:
        assert g.stats()["consumers"] == 2
        ms = c1.get_many(6, timeout=1)
        assert [m.offset for m in ms] == list(range(6))
        assert ms[0].ack() and ms[1].ack() and ms[3].ack()
        assert ms[2].nack(delay=60)
        assert ms[4].nack(delay=0, reason="x")
        time.sleep(0.05)
        m4 = c2.get(timeout=1)
        assert (m4.offset, m4.deliveries) == (4, 2)
        assert m4.nack(delay=0, reason="dead")   # deliveries 2 == max: dropped (dead_letter=None)
        time.sleep(0.05)
        gs = g.stats()
        assert gs["low"] == 2                     # 2 is waiting for its retry
        assert gs["lag"] == 8
        assert gs["pending"] == 1                 # 5 (leased by c1)
        assert gs["unfinished"] == 10 - 4         # 0, 1, 3 acked, 4 dead
        assert gs["delivered"] == 7 and gs["redelivered"] == 1
        assert gs["nacked"] == 2 and gs["dead_lettered"] == 1 and gs["expired"] == 0
        assert gs["acked"] == 3, f"acked counts ack() only, not dead letters: {gs}"
        assert gs["oldest_age"] >= 0.05
        assert gs["settings"]["max_deliveries"] == 2
        idle = log.stats()["groups"]["idle"]
        assert idle["low"] == 0 and idle["lag"] == 10 and idle["delivered"] == 0 and idle["consumers"] == 0
    gs = g.stats()
    assert gs["consumers"] == 0
    assert gs["pending"] == 0, "closing the consumers returned the lease"


# --------------------------------------------------------------------------- consumer lifecycle

def test_consumer_close_returns_leases(mklog):
    log = mklog(capacity=1 << 16)
    log.append_many([b"a", b"b", b"c"])
    g = log.group("g", visibility_timeout=30.0)
    c1 = g.consumer()
    with g.consumer() as c2:
        ms = c1.get_many(2, timeout=1)
        assert [m.offset for m in ms] == [0, 1]
        assert ms[0].ack()
        t0 = time.monotonic()
        c1.close()
        c1.close()  # idempotent
        got = _drain(c2, 2, timeout=2)
        assert time.monotonic() - t0 < 1.0, "leases of a closed consumer come back at once"
        assert sorted((m.offset, m.deliveries) for m in got) == [(1, 2), (2, 1)]
        with pytest.raises(ValueError):
            ms[1].ack()   # its consumer is closed
        for m in got:
            assert m.ack()
    st = g.stats()
    assert st["low"] == 3 and st["unfinished"] == 0 and st["acked"] == 3


def test_iteration_stops_on_close(mklog):
    log = mklog(capacity=1 << 16)
    g = log.group("g", visibility_timeout=None)
    c = g.consumer()
    got, errors = [], []

    def run():
        try:
            for m in c:
                got.append(m.offset)
                m.ack()
        except BaseException as e:  # pragma: no cover
            errors.append(e)

    th = threading.Thread(target=run)
    th.start()
    try:
        log.append_many([b"1", b"2", b"3"])
        deadline = time.monotonic() + 3
        while len(got) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert got == [0, 1, 2]
        time.sleep(0.1)
        c.close()
        th.join(3)
        assert not th.is_alive(), "iteration must stop when the consumer is closed"
        assert not errors, errors
    finally:
        c.close()
        th.join(1)


def test_get_timeout_bounded(mklog):
    log = mklog(capacity=1 << 16)
    g = log.group("g")
    with g.consumer() as c:
        t0 = time.monotonic()
        with pytest.raises(fastq.Empty):
            c.get(timeout=0.2)
        assert 0.2 - TOL <= time.monotonic() - t0 < 1.0
        assert c.get_many(5, timeout=0) == []
        # a record appended by another thread wakes a blocked get
        threading.Timer(0.1, lambda: log.append(b"wake")).start()
        t0 = time.monotonic()
        m = c.get(timeout=3)
        assert m.data == b"wake" and time.monotonic() - t0 < 1.0
        assert issubclass(fastq.Empty, queue.Empty) and fastq.Empty is queue.Empty


def test_log_close_and_unlink(mklog):
    log = mklog(capacity=1 << 16)
    log.append(b"x")
    name = log.name
    log.unlink()
    with pytest.raises(FileNotFoundError):
        fastq.open(name, create=False, wait=0.1)
    assert log.append(b"y") == 1  # still usable by who has it open
    log.close()
    with pytest.raises(ValueError):
        log.append(b"z")


def test_batch_ack_counts_and_lost_leases(unique_name):
    """Consumer.ack(messages) acks a batch; a message whose lease was lost is
    not counted and not finished twice."""
    log = fastq.open(unique_name, capacity=1 << 20)
    try:
        g = log.group("g", visibility_timeout=0.05, max_deliveries=None)
        log.append_many([b"%d" % i for i in range(10)])
        with g.consumer() as c, g.consumer() as other:
            first = c.get_many(10, timeout=1.0)
            assert [m.offset for m in first] == list(range(10))
            time.sleep(0.1)                               # every lease expires
            again = other.get_many(3, timeout=1.0)        # three are redelivered to `other`
            assert len(again) == 3 and all(m.deliveries == 2 for m in again)
            assert c.ack(first) == 7                      # the three lost leases are not acked
            assert other.ack(again) == 3
            with pytest.raises(ValueError):
                c.ack(again)                              # not this consumer's messages
        assert log.stats()["groups"]["g"]["unfinished"] == 0
    finally:
        log.unlink()
        log.close()


def test_consumer_of_deleted_group_does_not_read_its_successor(unique_name):
    """A group deleted and a new one created in the same slot: the old
    group's consumer gets an error, never the new group's records."""
    log = fastq.open(unique_name, capacity=1 << 16, max_groups=1)
    try:
        old = log.group("old", visibility_timeout=None)
        log.append(b"a")
        with old.consumer() as c:
            log.delete_group("old")
            log.group("new", start="latest", visibility_timeout=None)   # the only slot, reused
            log.append(b"b")
            with pytest.raises(fastq.FastqError, match="deleted"):
                c.get_many(10, timeout=0.2)
    finally:
        log.unlink()
        log.close()


def test_get_on_a_full_window_sleeps_and_wakes_on_the_ack(mklog):
    """Another consumer holds every lease of the group's window while more
    records wait: a blocking get sleeps (no CPU) and resumes as soon as an
    ack frees the window (E3), not at its timeout."""
    log = mklog(capacity=1 << 16)
    g = log.group("g", visibility_timeout=None, window=4)
    log.append_many([b"r%d" % i for i in range(10)])
    with g.consumer() as holder, g.consumer() as waiter:
        held = holder.get_many(4, timeout=1)
        assert len(held) == 4
        got = []
        t = threading.Thread(target=lambda: got.append(waiter.get(timeout=10)))
        c0, w0 = time.process_time(), time.monotonic()
        t.start()
        time.sleep(0.6)
        cpu = time.process_time() - c0
        assert not got and cpu < 0.1 * (time.monotonic() - w0), f"{cpu:.3f} s of CPU while waiting"
        t_ack = time.monotonic()
        assert holder.ack(held) == 4
        t.join(5)
        assert got and got[0].offset == 4
        assert time.monotonic() - t_ack < 1.0
