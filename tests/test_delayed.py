"""Delayed messages (docs/messages.md §2): ``append(data, delay=)`` /
``not_before=``: no group dispatches the record earlier; later records are not
held back; the first delivery counts as a delivery, not a redelivery; waiting
consumers wake at the time (no polling)."""
import datetime as dt
import time

import pytest

import fastq


@pytest.fixture
def log(any_log):
    return any_log


def _drain(c, n, timeout=5.0):
    got, end = [], time.monotonic() + timeout
    while len(got) < n and time.monotonic() < end:
        for m in c.get_many(16, timeout=0.5):
            got.append((m, time.time()))
            m.ack()
    return got


def test_delayed_records_fire_in_order_of_their_time(log):
    g = log.group("g", visibility_timeout=None)
    t0 = time.time()
    plan = [("c", 0.30), ("now", None), ("a", 0.10), ("b", 0.20), ("now2", 0.0)]
    for name, d in plan:
        log.append(name.encode(), delay=d, key=b"k-" + name.encode(), headers={"n": name})
    log.append(b"at", not_before=dt.datetime.now() + dt.timedelta(seconds=0.15))
    with g.consumer() as c:
        got = _drain(c, 6)
    assert [m.data for m, _ in got] == [b"now", b"now2", b"a", b"at", b"b", b"c"]
    due = {b"a": 0.10, b"at": 0.15, b"b": 0.20, b"c": 0.30}
    for m, at in got:
        assert m.deliveries == 1
        if m.data in due:
            assert at >= t0 + due[m.data] - 0.002, (m.data, at - t0)   # never early
            assert at <= t0 + due[m.data] + 0.25, (m.data, at - t0)    # within a few ms (generous on CI)
        if m.data != b"at":
            assert m.key == b"k-" + m.data and m.headers == {"n": m.data.decode()}
    st = g.stats()
    assert st["redelivered"] == 0 and st["delivered"] == 6 and st["unfinished"] == 0
    # replay shows every record with its key and headers, the delay is not data
    assert [r.data for r in log.read()] == [b"c", b"now", b"a", b"b", b"now2", b"at"]


def test_a_delayed_record_does_not_hold_back_others_and_each_group_waits(log):
    g1 = log.group("g1", visibility_timeout=None)
    g2 = log.group("g2", visibility_timeout=None)
    log.append(b"later", delay=0.4)
    log.append_many([b"x%d" % i for i in range(100)])
    for g in (g1, g2):
        with g.consumer() as c:
            got = _drain(c, 100, timeout=2)
            assert [m.data for m, _ in got] == [b"x%d" % i for i in range(100)]
            assert g.stats()["unfinished"] == 1 and g.stats()["pending"] == 0
    with g1.consumer() as c:
        t = time.monotonic()
        m = c.get(timeout=5)  # a blocking get sleeps until the not-before time
        assert m.data == b"later" and 0.2 < time.monotonic() - t < 1.5


def test_waiting_for_a_delayed_record_uses_no_cpu(log):
    g = log.group("g", visibility_timeout=None)
    log.append(b"x", delay=0.6)
    with g.consumer() as c:
        c0, w0 = time.process_time(), time.monotonic()
        m = c.get(timeout=5)
        assert m.data == b"x"
        assert time.process_time() - c0 < 0.2 * (time.monotonic() - w0)


def test_nack_of_a_delayed_record_after_it_fired_is_a_redelivery(log):
    g = log.group("g", visibility_timeout=None, max_deliveries=5)
    log.append(b"x", delay=0.05)
    with g.consumer() as c:
        m = c.get(timeout=2)
        assert m.deliveries == 1
        m.nack(delay=0)
        m2 = c.get(timeout=2)
        assert m2.offset == m.offset and m2.deliveries == 2
        m2.ack()
    assert g.stats()["redelivered"] == 1


@pytest.mark.parametrize("kw, exc", [(dict(delay=-1), ValueError), (dict(delay="5"), ValueError),
                                     (dict(delay=True), ValueError), (dict(delay=float("nan")), ValueError),
                                     (dict(not_before=5), TypeError),
                                     (dict(delay=1, not_before=dt.datetime.now()), ValueError)])
def test_bad_delays_are_refused(log, kw, exc):
    head = log.stats()["head"]
    with pytest.raises(exc):
        log.append(b"x", **kw)
    with pytest.raises(exc):
        log.append_many([b"x"], **kw)
    assert log.stats()["head"] == head


def test_delays_survive_cold_recovery(tmp_path):
    path = str(tmp_path / "log")
    log = fastq.open(path, durable=True, fsync="always")
    g = log.group("g", visibility_timeout=None)
    t0 = time.time()
    log.append(b"d", delay=0.5)
    log.append(b"n")
    with g.consumer() as c:
        assert c.get(timeout=1).data == b"n"  # acked below; "d" waits (RETRY, reset by recovery)
        c.ack([])
    log.close()
    log = fastq.open(path, durable=True, recover=True)
    try:
        with log.group("g").consumer() as c:
            m = c.get(timeout=5)
            assert m.data in (b"d", b"n")
            if m.data == b"n":
                m.ack()
                m = c.get(timeout=5)
            assert m.data == b"d" and time.time() >= t0 + 0.5 - 0.002
    finally:
        log.close()


def test_async_append_with_a_delay(log):
    import asyncio
    from fastq import aio
    g = log.group("g", visibility_timeout=None)

    async def main():
        t0 = time.time()
        await aio.AsyncLog(log).append(b"later", delay=0.2)
        async with aio.AsyncConsumer(g.consumer()) as c:
            m = await c.get(timeout=5)
            return m.data, time.time() - t0

    data, took = asyncio.run(main())
    assert data == b"later" and 0.198 <= took < 1.5
