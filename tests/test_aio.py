"""Adversarial tests of fastq.aio (AsyncQueue, AsyncLog, AsyncConsumer).

Claims under test: waiting never blocks or polls the event loop (one parked
waiter thread per handle/loop/condition sleeps in the queue's futex); a get
that is cancelled or times out holds no lease; closing a handle wakes its
waiters at once.  Every queue is named "ta-<uuid>" and unlinked (with its
".dlq") afterwards; every wait is bounded.
"""
import asyncio
import contextlib
import multiprocessing as mp
import random
import struct
import sys
import threading
import time
import uuid

import pytest

import fastq
from fastq import aio

pytestmark = [pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fastq is Linux-only"),
              pytest.mark.timeout(60)]

MP = mp.get_context("fork")
REC = struct.Struct("<II")  # producer, seq


# --------------------------------------------------------------------------- helpers

def _unlink_quiet(name):
    try:
        fastq.unlink(name)
    except (OSError, ValueError):
        pass


@contextlib.contextmanager
def shm_names(k=1):
    names = ["ta-" + uuid.uuid4().hex for _ in range(k)]
    try:
        yield names if k > 1 else names[0]
    finally:
        for n in names:
            _unlink_quiet(n)
            _unlink_quiet(n + ".dlq")


def _close_quiet(*handles):
    for h in handles:
        try:
            h.close()
        except Exception:
            pass


class Ticker:
    """A task sleeping 1 ms at a time: counts ticks and the longest gap."""

    def __init__(self):
        self.ticks = 0
        self.max_gap = 0.0
        self._stop = False
        self._task = None

    def start(self):
        self._task = asyncio.ensure_future(self._run())
        return self

    async def _run(self):
        last = time.monotonic()
        while not self._stop:
            await asyncio.sleep(0.001)
            now = time.monotonic()
            self.max_gap = max(self.max_gap, now - last)
            last = now
            self.ticks += 1

    async def stop(self):
        self._stop = True
        await asyncio.wait_for(self._task, 1.0)


def _aio_threads():
    return {t for t in threading.enumerate() if t.name.startswith("fastq-aio")}


def _wait_threads_gone(threads, timeout=1.5):
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(deadline - time.monotonic(), 0.0))
    return [t for t in threads if t.is_alive()]


def _pending(log, group):
    return log.stats()["groups"][group]["pending"]


def _unfinished(log, group):
    return log.stats()["groups"][group]["unfinished"]


def _fill_log(log, size=1000):
    """Append size-byte records, then 1-byte ones, until the log (held by a
    group) is full: not even an empty record fits.  Returns how many."""
    n = 0
    for rec in (b"f" * size, b"f"):
        while True:
            try:
                log.append(rec, timeout=0)
            except fastq.Full:
                break
            n += 1
    return n


# --------------------------------------------------------------------------- child processes (fork)

def _log_producer(name, pid, n, batch, pause):
    log = fastq.open(name)
    try:
        seq = 0
        while seq < n:
            k = min(batch, n - seq)
            log.append_many([REC.pack(pid, seq + i) for i in range(k)], timeout=20)
            seq += k
            if pause:
                time.sleep(pause)
    finally:
        log.close()


def _queue_drainer(name, delay, n, out_name):
    q = fastq.Queue.open(name)
    out = fastq.Queue.open(out_name)
    try:
        time.sleep(delay)
        got = [q.get(timeout=10) for _ in range(n)]
        out.put(got)
    finally:
        q.close()
        out.close()


def _queue_producer(name, n, pause):
    q = fastq.Queue.open(name)
    try:
        for i in range(n):
            q.put(("item", i), timeout=10)
            if pause and i % 50 == 0:
                time.sleep(pause)
    finally:
        q.close()


def _join_all(procs, timeout=20):
    for p in procs:
        p.join(timeout)
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join(2)
    assert [p.exitcode for p in procs] == [0] * len(procs)


# --------------------------------------------------------------------------- the loop is never blocked

def test_parked_get_does_not_block_the_loop():
    with shm_names() as name:
        log = fastq.open(name, capacity=1 << 16)
        c = log.group("g").consumer()
        ac = aio.AsyncConsumer(c)
        try:
            async def main():
                ticker = Ticker().start()
                getters = [asyncio.ensure_future(ac.get(timeout=10)) for _ in range(5)]
                q_getter = asyncio.ensure_future(ac.get_many(10, timeout=10))
                await asyncio.sleep(0.5)
                assert not any(t.done() for t in getters + [q_getter])
                # a producer thread appends one record every 20 ms while the loop keeps ticking
                stop = threading.Event()

                def produce():
                    for i in range(100):
                        log.append(b"r%d" % i)
                        if stop.wait(0.02):
                            return

                th = threading.Thread(target=produce)
                th.start()
                try:
                    msgs = await asyncio.wait_for(asyncio.gather(*getters), 5)
                    many = await asyncio.wait_for(q_getter, 5)
                finally:
                    stop.set()
                    th.join(5)
                await ticker.stop()
                return ticker, msgs, many

            ticker, msgs, many = asyncio.run(main())
            offsets = [m.offset for m in msgs + many]
            assert len(set(offsets)) == len(offsets) == 5 + len(many) and many
            assert ticker.ticks >= 100, ticker.ticks
            assert ticker.max_gap < 0.05, ticker.max_gap
        finally:
            _close_quiet(ac, log)


def test_parked_gets_use_no_cpu():
    """Parked gets on an empty log group (with a nack delay and a foreign
    lease pending, so the group has a next deadline) and on an empty Queue:
    ~1 s of waiting costs next to no CPU."""
    with shm_names(2) as (lname, qname):
        log = fastq.open(lname, capacity=1 << 16)
        grp = log.group("g", visibility_timeout=5.0)
        other = grp.consumer()
        log.append_many([b"a", b"b"])
        m1, m2 = other.get_many(2, timeout=0)
        m1.nack(delay=5.0)                  # a redelivery in 5 s
        ac = aio.AsyncConsumer(grp.consumer())
        aq = aio.AsyncQueue(fastq.Queue(name=qname, capacity=1 << 16))
        try:
            async def main():
                waits = [asyncio.ensure_future(ac.get(timeout=3)) for _ in range(20)]
                waits += [asyncio.ensure_future(aq.get(timeout=3)) for _ in range(20)]
                waits.append(asyncio.ensure_future(aq.get_many(5, timeout=3)))
                await asyncio.sleep(0.1)
                c0, w0 = time.process_time(), time.monotonic()
                await asyncio.sleep(1.0)
                cpu, wall = time.process_time() - c0, time.monotonic() - w0
                assert not any(t.done() for t in waits)
                for t in waits:
                    t.cancel()
                await asyncio.gather(*waits, return_exceptions=True)
                return cpu, wall

            cpu, wall = asyncio.run(main())
            assert cpu < 0.1, f"{cpu:.3f} s of CPU while parked for {wall:.2f} s"
            st = log.stats()["groups"]["g"]
            assert (st["delivered"], st["redelivered"]) == (2, 0)   # nothing taken by the async gets
        finally:
            _close_quiet(ac, aq, other, log)


def test_parked_puts_use_no_cpu_even_with_keys():
    """A put on a full Queue and appends on a full log, one with a large key
    whose frame does not fit the free space although its data alone would:
    the parked waiter must wait for the real record size, not spin."""
    with shm_names(2) as (lname, qname):
        log = fastq.open(lname, capacity=1 << 16)
        g = log.group("slow", visibility_timeout=None)
        slow = g.consumer()
        log.append_many([b"p" * 1000] * 62)          # 62 * 1032 bytes used; ~1.5 KiB free
        with pytest.raises(fastq.Full):
            log.append(b"x" * 100, key=b"k" * 4096, timeout=0)
        log.append(b"x" * 100, timeout=0)            # the data alone fits
        q = fastq.Queue(1, name=qname, capacity=1 << 16)
        q.put("first")
        al, aq = aio.AsyncLog(log), aio.AsyncQueue(q)
        try:
            async def main():
                waits = [asyncio.ensure_future(al.append(b"x" * 100, key=b"k" * 4096, timeout=5)),
                         asyncio.ensure_future(aq.put("second", timeout=5))]
                await asyncio.sleep(0.1)
                c0, w0 = time.process_time(), time.monotonic()
                await asyncio.sleep(1.0)
                cpu, wall = time.process_time() - c0, time.monotonic() - w0
                assert not any(t.done() for t in waits)
                # free the space: both complete
                slow.ack(slow.get_many(256, timeout=0))
                assert q.get(timeout=1) == "first"
                off, _ = await asyncio.wait_for(asyncio.gather(*waits), 3)
                return cpu, wall, off

            cpu, wall, off = asyncio.run(main())
            assert cpu < 0.1, f"{cpu:.3f} s of CPU while parked for {wall:.2f} s"
            assert off == 63
            assert q.get(timeout=1) == "second"
            m = slow.get(timeout=1)
            assert (m.offset, m.key, m.data) == (63, b"k" * 4096, b"x" * 100)
        finally:
            _close_quiet(slow, al, aq)


def test_window_full_parked_get_does_not_spin_a_core():
    """The group's lease window is full (another consumer holds every lease)
    while more records wait: nothing is takeable until an ack moves the
    low-watermark, so the parked waiter sleeps (fq__take_ready says "not
    ready"; the ack's E3 wake-up resumes it)."""
    with shm_names() as name:
        log = fastq.open(name, capacity=1 << 16)
        g = log.group("g", visibility_timeout=None, window=4)
        holder = g.consumer()
        log.append_many([b"a"] * 10)
        held = holder.get_many(4, timeout=0)
        assert len(held) == 4
        ac = aio.AsyncConsumer(g.consumer())
        try:
            async def main():
                t = asyncio.ensure_future(ac.get(timeout=5))
                await asyncio.sleep(0.05)
                c0, w0 = time.process_time(), time.monotonic()
                await asyncio.sleep(0.6)
                cpu, wall = time.process_time() - c0, time.monotonic() - w0
                assert not t.done()
                holder.ack(held)                      # the window opens: the parked get goes on
                m = await asyncio.wait_for(t, 3)
                return cpu, wall, m

            cpu, wall, m = asyncio.run(main())
            assert m.offset == 4
            assert cpu < 0.05 * wall, f"{cpu:.3f} s of CPU in {wall:.2f} s"
        finally:
            _close_quiet(ac, holder, log)


# --------------------------------------------------------------------------- cancellation and timeouts hold no lease

def _ack_exactly_once(log, msgs, n):
    """Offsets 0..n-1 each delivered once (first delivery), then all acked: nothing pending or unfinished."""
    offs = [m.offset for m in msgs]
    assert sorted(offs) == list(range(n)), (len(offs), len(set(offs)))
    assert all(m.deliveries == 1 for m in msgs)
    for m in msgs:
        assert m.ack()
    assert _pending(log, "g") == 0 and _unfinished(log, "g") == 0


def test_cancelled_and_timed_out_gets_hold_no_lease():
    with shm_names() as name:
        log = fastq.open(name, capacity=1 << 18)
        log.group("g", visibility_timeout=30.0)
        acs = [aio.AsyncConsumer(log.group("g").consumer()) for _ in range(3)]
        try:
            async def main():
                doomed = [asyncio.ensure_future(acs[i % 3].get()) for i in range(60)]
                doomed += [asyncio.ensure_future(acs[i % 3].get_many(7)) for i in range(30)]
                timed = [asyncio.ensure_future(asyncio.wait_for(acs[i % 3].get(), 0.05 + 0.002 * i))
                         for i in range(40)]
                own = [asyncio.ensure_future(acs[i % 3].get_many(5, timeout=0.1)) for i in range(20)]
                await asyncio.sleep(0.02)
                for t in doomed[:45]:
                    t.cancel()
                res = await asyncio.gather(*timed, *own, return_exceptions=True)
                assert all(isinstance(r, asyncio.TimeoutError) for r in res[:40])
                assert all(r == [] for r in res[40:])
                # append while the rest of the doomed tasks are parked, and cancel them
                # in the same loop step: whether or not their wake-up came, they take nothing
                log.append_many([b"m%d" % i for i in range(50)])
                for t in doomed[45:]:
                    t.cancel()
                await asyncio.gather(*doomed, return_exceptions=True)
                assert all(t.cancelled() for t in doomed)
                await asyncio.sleep(0.2)
                assert _pending(log, "g") == 0
                assert _unfinished(log, "g") == 50
                # survivors: 60 getters for 50 records
                surv = [asyncio.ensure_future(acs[i % 3].get(timeout=1.0)) for i in range(60)]
                res = await asyncio.gather(*surv, return_exceptions=True)
                return res

            res = asyncio.run(main())
            msgs = [r for r in res if not isinstance(r, BaseException)]
            errs = [r for r in res if isinstance(r, BaseException)]
            assert all(isinstance(e, fastq.Empty) for e in errs)
            assert _pending(log, "g") == 50
            _ack_exactly_once(log, msgs, 50)
        finally:
            _close_quiet(*acs, log)


def test_cancellation_races_with_appends_exactly_once():
    """A producer thread appends at random moments while getters are
    cancelled / time out at random moments: every record is delivered
    exactly once, no lease is left behind."""
    N = 400
    rnd = random.Random(7)
    with shm_names() as name:
        log = fastq.open(name, capacity=1 << 18)
        log.group("g", visibility_timeout=30.0)
        acs = [aio.AsyncConsumer(log.group("g").consumer()) for _ in range(2)]
        try:
            def produce():
                r = random.Random(11)
                for i in range(N):
                    log.append(REC.pack(0, i))
                    if r.random() < 0.2:
                        time.sleep(r.random() * 0.003)

            async def main():
                got = []
                th = threading.Thread(target=produce)
                th.start()
                deadline = time.monotonic() + 15
                while len(got) < N and time.monotonic() < deadline:
                    tasks = []
                    for i in range(12):
                        ac = acs[i % 2]
                        kind = rnd.randrange(4)
                        if kind == 0:
                            tasks.append(asyncio.ensure_future(ac.get_many(rnd.randrange(1, 20), timeout=0.004)))
                        elif kind == 1:
                            tasks.append(asyncio.ensure_future(asyncio.wait_for(ac.get(), rnd.random() * 0.004)))
                        else:
                            tasks.append(asyncio.ensure_future(ac.get_many(rnd.randrange(1, 20))))
                    await asyncio.sleep(rnd.random() * 0.004)
                    for t in tasks:
                        if rnd.random() < 0.5:
                            t.cancel()
                    await asyncio.sleep(0)
                    for t in tasks:
                        t.cancel()
                    for r in await asyncio.gather(*tasks, return_exceptions=True):
                        if isinstance(r, list):
                            got.extend(r)
                        elif isinstance(r, fastq.Message):
                            got.append(r)
                        else:
                            assert isinstance(r, (asyncio.CancelledError, asyncio.TimeoutError, fastq.Empty)), r
                th.join(10)
                # every delivery so far is a lease we hold; nothing else is leased
                assert _pending(log, "g") == len(got)
                while len(got) < N:
                    more = await acs[0].get_many(256, timeout=1.0)
                    if not more:
                        break
                    got.extend(more)
                return got

            got = asyncio.run(main())
            _ack_exactly_once(log, got, N)
        finally:
            _close_quiet(*acs, log)


def test_timeouts():
    with shm_names(2) as (lname, qname):
        log = fastq.open(lname, capacity=1 << 16)
        ac = aio.AsyncConsumer(log.group("g").consumer())
        q = fastq.Queue(1, name=qname, capacity=1 << 16)
        aq = aio.AsyncQueue(q)
        try:
            async def timed(coro):
                t0 = time.monotonic()
                try:
                    return await coro, time.monotonic() - t0
                except Exception as e:
                    return e, time.monotonic() - t0

            async def main():
                out = {}
                out["get"] = await timed(ac.get(timeout=0.2))
                out["get_many"] = await timed(ac.get_many(10, timeout=0.2))
                out["get0"] = await timed(ac.get(timeout=0))
                out["many0"] = await timed(ac.get_many(10, timeout=0))
                out["qget"] = await timed(aq.get(timeout=0.2))
                out["qmany"] = await timed(aq.get_many(5, timeout=0.2))
                await aq.put("x", timeout=0)
                out["qput"] = await timed(aq.put("y", timeout=0.2))
                # concurrent timeouts on one handle all fire on time
                res = await asyncio.gather(*[timed(ac.get(timeout=0.1 + 0.01 * i)) for i in range(10)])
                out["bad"] = await timed(ac.get(timeout=-1))
                return out, res

            out, res = asyncio.run(main())
            for key in ("get", "qget"):
                r, dt = out[key]
                assert isinstance(r, fastq.Empty), (key, r)
                assert 0.18 <= dt < 0.6, (key, dt)
            for key in ("get_many", "qmany"):
                r, dt = out[key]
                assert r == [], (key, r)
                assert 0.18 <= dt < 0.6, (key, dt)
            assert isinstance(out["get0"][0], fastq.Empty) and out["get0"][1] < 0.1
            assert out["many0"][0] == [] and out["many0"][1] < 0.1
            r, dt = out["qput"]
            assert isinstance(r, fastq.Full) and 0.18 <= dt < 0.6, (r, dt)
            for i, (r, dt) in enumerate(res):
                assert isinstance(r, fastq.Empty)
                assert 0.1 + 0.01 * i - 0.02 <= dt < 0.6 + 0.01 * i
            assert isinstance(out["bad"][0], ValueError)
            assert q.get(timeout=1) == "x" and q.empty()
        finally:
            _close_quiet(ac, aq, log)


# --------------------------------------------------------------------------- many waiters

def test_many_concurrent_waiters_get_distinct_messages():
    with shm_names() as name:
        log = fastq.open(name, capacity=1 << 20)
        g = log.group("g", visibility_timeout=30.0)
        one = aio.AsyncConsumer(g.consumer())
        several = [aio.AsyncConsumer(g.consumer()) for _ in range(4)]
        try:
            async def main():
                ticker = Ticker().start()
                tasks = [asyncio.ensure_future(one.get(timeout=10)) for _ in range(200)]
                tasks += [asyncio.ensure_future(several[i % 4].get(timeout=10)) for i in range(200)]
                await asyncio.sleep(0.1)
                # trickle then bursts, from another thread
                def produce():
                    for i in range(20):
                        log.append(b"%d" % i)
                        time.sleep(0.002)
                    for k in range(20, 400, 95):
                        log.append_many([b"%d" % i for i in range(k, min(k + 95, 400))])
                        time.sleep(0.01)
                th = threading.Thread(target=produce)
                th.start()
                msgs = await asyncio.wait_for(asyncio.gather(*tasks), 15)
                th.join(5)
                extra = await one.get_many(10, timeout=0.2)
                await ticker.stop()
                return msgs, extra, ticker

            msgs, extra, ticker = asyncio.run(main())
            assert extra == []
            assert sorted(m.offset for m in msgs) == list(range(400))
            assert sorted(int(m.data) for m in msgs) == list(range(400))
            assert _pending(log, "g") == 400
            assert ticker.max_gap < 0.1, ticker.max_gap
            for m in msgs:
                assert m.ack()
            assert _unfinished(log, "g") == 0
        finally:
            _close_quiet(one, *several, log)


# --------------------------------------------------------------------------- other processes

def test_producer_processes_async_consumers_exactly_once_in_order():
    P, N = 3, 1500
    with shm_names() as name:
        log = fastq.open(name, capacity=1 << 18)    # small: producers wait for the group too
        g = log.group("g", visibility_timeout=30.0)
        acs = [aio.AsyncConsumer(g.consumer()) for _ in range(2)]
        procs = []
        try:
            async def reader(ac, out, done):
                while not done.is_set():
                    msgs = await ac.get_many(64, timeout=0.2)
                    out.extend(msgs)
                    await ac.ack(msgs)

            async def main():
                outs = [[], [], []]
                done = asyncio.Event()
                readers = [asyncio.ensure_future(reader(acs[i % 2], outs[i], done)) for i in range(3)]
                ticker = Ticker().start()
                await asyncio.sleep(0.05)       # readers parked before any producer exists
                for p in range(P):
                    procs.append(MP.Process(target=_log_producer, args=(name, p, N, 1 + 37 * p, 0.001)))
                    procs[-1].start()
                deadline = time.monotonic() + 20
                while sum(map(len, outs)) < P * N and time.monotonic() < deadline:
                    await asyncio.sleep(0.02)
                done.set()
                await asyncio.wait_for(asyncio.gather(*readers), 5)
                await ticker.stop()
                return outs, ticker

            outs, ticker = asyncio.run(main())
            _join_all(procs)
            every = [REC.unpack(m.data) for out in outs for m in out]
            assert len(every) == P * N
            assert sorted(every) == [(p, s) for p in range(P) for s in range(N)]
            for out in outs:   # each reader sees each producer's records in order
                last = {}
                for m in out:
                    p, s = REC.unpack(m.data)
                    assert s > last.get(p, -1)
                    last[p] = s
            assert _pending(log, "g") == 0 and _unfinished(log, "g") == 0
            assert ticker.max_gap < 0.1, ticker.max_gap
        finally:
            for p in procs:
                if p.is_alive():
                    p.kill()
            _close_quiet(*acs, log)


def test_async_queue_put_waits_for_a_consumer_in_another_process():
    with shm_names(2) as (qname, oname):
        q = fastq.Queue(4, name=qname, capacity=1 << 16)
        out = fastq.Queue(name=oname, capacity=1 << 16)
        aq = aio.AsyncQueue(q)
        procs = []
        try:
            async def main():
                for i in range(4):
                    await aq.put(i, timeout=0)
                t0 = time.monotonic()
                with pytest.raises(fastq.Full):
                    await aq.put("late", timeout=0.2)
                assert 0.18 <= time.monotonic() - t0 < 0.6
                ticker = Ticker().start()
                puts = [asyncio.ensure_future(aq.put(i, timeout=10)) for i in range(4, 12)]
                await asyncio.sleep(0.05)
                assert not any(t.done() for t in puts)
                procs.append(MP.Process(target=_queue_drainer, args=(qname, 0.3, 12, oname)))
                t1 = time.monotonic()
                procs[0].start()
                await asyncio.wait_for(asyncio.gather(*puts), 10)
                waited = time.monotonic() - t1
                await ticker.stop()
                got = await asyncio.get_running_loop().run_in_executor(None, lambda: out.get(timeout=10))
                return waited, ticker, got

            waited, ticker, got = asyncio.run(main())
            _join_all(procs)
            assert waited >= 0.25
            assert ticker.ticks >= 50 and ticker.max_gap < 0.05, (ticker.ticks, ticker.max_gap)
            assert got[:4] == [0, 1, 2, 3] and sorted(got) == list(range(12))
        finally:
            for p in procs:
                if p.is_alive():
                    p.kill()
            _close_quiet(aq, out)


def test_async_queue_get_with_a_producer_in_another_process():
    N = 1000
    with shm_names() as qname:
        q = fastq.Queue(name=qname, capacity=1 << 16)   # small: the producer waits for space too
        aq = aio.AsyncQueue(q)
        procs = []
        try:
            async def main():
                got = []
                first = asyncio.ensure_future(aq.get(timeout=10))
                await asyncio.sleep(0.05)
                procs.append(MP.Process(target=_queue_producer, args=(qname, N, 0.005)))
                procs[0].start()
                got.append(await asyncio.wait_for(first, 10))
                deadline = time.monotonic() + 15
                while len(got) < N and time.monotonic() < deadline:
                    if len(got) % 2:
                        got.extend(await aq.get_many(37, timeout=1))
                    else:
                        got.append(await aq.get(timeout=1))
                assert await aq.get_many(5, timeout=0.1) == []
                return got

            got = asyncio.run(main())
            _join_all(procs)
            assert got == [("item", i) for i in range(N)]
        finally:
            for p in procs:
                if p.is_alive():
                    p.kill()
            _close_quiet(aq)


# --------------------------------------------------------------------------- AsyncLog

def test_async_log_append_parks_until_the_slow_group_acks():
    with shm_names() as name:
        log = fastq.open(name, capacity=1 << 16)
        g = log.group("slow", visibility_timeout=None)
        slow = g.consumer()
        n = _fill_log(log)
        al = aio.AsyncLog(log)
        try:
            async def main():
                ticker = Ticker().start()
                t0 = time.monotonic()
                with pytest.raises(fastq.Full):
                    await al.append(b"z" * 1000, timeout=0.2)
                assert 0.18 <= time.monotonic() - t0 < 0.6
                apps = [asyncio.ensure_future(al.append(b"y%d" % i, timeout=10)) for i in range(5)]
                batch = asyncio.ensure_future(al.append_many([b"b%d" % i for i in range(10)], timeout=10))
                await asyncio.sleep(0.3)
                assert not any(t.done() for t in apps + [batch])
                msgs = slow.get_many(8, timeout=0)      # ack a few: ~8 KiB free
                assert slow.ack(msgs) == 8
                offs = await asyncio.wait_for(asyncio.gather(*apps), 5)
                boffs = await asyncio.wait_for(batch, 5)
                await ticker.stop()
                return offs, boffs, ticker

            offs, boffs, ticker = asyncio.run(main())
            assert sorted(offs + boffs) == list(range(n, n + 15))
            assert boffs == list(range(boffs[0], boffs[0] + 10))
            assert log.stats()["head"] == n + 15
            assert ticker.max_gap < 0.05, ticker.max_gap
        finally:
            _close_quiet(slow, al)


def test_async_log_append_many_larger_than_one_claim_is_not_duplicated():
    """append_many that the ring splits into several claims (more than half
    the capacity) when the first claim fits and a later one is Full: the
    records already committed must not be appended again on the retry."""
    with shm_names() as name:
        log = fastq.open(name, capacity=1 << 16)
        g = log.group("slow", visibility_timeout=None)
        slow = g.consumer()
        log.append_many([b"p" * 1000] * 24)
        al = aio.AsyncLog(log)
        try:
            async def main():
                t = asyncio.ensure_future(al.append_many([REC.pack(1, i) + b"x" * 992 for i in range(40)], timeout=10))
                await asyncio.sleep(0.2)
                assert not t.done()
                got = []
                while not t.done():                     # the slow group catches up
                    msgs = slow.get_many(256, timeout=0)
                    got.extend(msgs)
                    slow.ack(msgs)
                    await asyncio.sleep(0.01)
                offs = await t
                got.extend(slow.get_many(256, timeout=0))
                return offs, got

            offs, got = asyncio.run(main())
            assert offs == list(range(24, 64))
            assert log.stats()["head"] == 64
            datas = [m.data for m in got if not m.data.startswith(b"p")]
            assert [REC.unpack(d[:8])[1] for d in datas] == list(range(40))
        finally:
            _close_quiet(slow, al)


def test_async_log_append_many_checks_the_whole_batch_first():
    """Bad input in a batch spanning several claims raises before anything
    is appended (like Log.append_many); buffers of any format are appended
    as their bytes."""
    import array
    with shm_names() as name:
        log = fastq.open(name, capacity=1 << 16)
        al = aio.AsyncLog(log)
        try:
            async def main():
                big = [b"x" * 1000] * 40                       # > half the ring: several claims
                with pytest.raises(ValueError):
                    await al.append_many(big + [b"y" * 20000], timeout=1)
                with pytest.raises(ValueError):
                    await al.append_many(big, keys=[b"k"] * 39, timeout=1)
                with pytest.raises(ValueError):
                    await al.append_many(big, keys=[b"k"] * 39 + [b"k" * 5000], timeout=1)
                with pytest.raises(TypeError):
                    await al.append_many(big + ["text"], timeout=1)
                assert log.stats()["head"] == 0
                assert await al.append_many([], timeout=1) == []
                offs = await al.append_many([array.array("i", [1, 2, 3])] + big, keys=[b"a"] * 41, timeout=1)
                assert offs == list(range(41))
                assert await al.append(memoryview(array.array("h", [7])), key=bytearray(b"kk")) == 41

            asyncio.run(main())
            recs = list(log.read())
            assert len(recs) == 42
            assert (recs[0].key, recs[0].data) == (b"a", array.array("i", [1, 2, 3]).tobytes())
            assert (recs[41].key, recs[41].data) == (b"kk", array.array("h", [7]).tobytes())
        finally:
            _close_quiet(al)


def test_async_log_small_append_not_starved_by_a_big_one():
    """Two appends parked on a full log, a big one and a small one: when the
    group frees room for the small one only, the small one must go on."""
    with shm_names() as name:
        log = fastq.open(name, capacity=1 << 16)
        g = log.group("slow", visibility_timeout=None)
        slow = g.consumer()
        _fill_log(log, 1000)
        al = aio.AsyncLog(log)
        try:
            async def main():
                big = asyncio.ensure_future(al.append(b"B" * 12000, timeout=5))
                await asyncio.sleep(0.05)
                small = asyncio.ensure_future(al.append(b"s", timeout=5))
                await asyncio.sleep(0.1)
                assert not big.done() and not small.done()
                assert slow.ack(slow.get_many(2, timeout=0)) == 2   # ~2 KiB free
                t0 = time.monotonic()
                off = await asyncio.wait_for(small, 2)
                dt = time.monotonic() - t0
                assert not big.done()
                slow.ack(slow.get_many(256, timeout=0))
                boff = await asyncio.wait_for(big, 3)
                return off, boff, dt

            off, boff, dt = asyncio.run(main())
            assert boff == off + 1
            assert dt < 0.5, dt
        finally:
            _close_quiet(slow, al)


def test_durable_log_fsync_always_append_does_not_block_the_loop(tmp_path):
    path = str(tmp_path / "dlog")
    log = fastq.open(path, durable=True, fsync="always", segment_size=1 << 20)
    al = aio.AsyncLog(log)
    ac = aio.AsyncConsumer(log.group("g").consumer())
    try:
        async def main():
            ticker = Ticker().start()
            waiting = asyncio.ensure_future(ac.get(timeout=10))   # parked on a durable log
            await asyncio.sleep(0.05)
            first = await al.append(b"first", key=b"k0")
            m = await asyncio.wait_for(waiting, 5)
            offs = await asyncio.gather(*[al.append(b"r%d" % i) for i in range(100)])
            offs2 = await al.append_many([b"b%d" % i for i in range(50)], keys=[b"k"] * 50)
            msgs = []
            while len(msgs) < 150:
                more = await ac.get_many(256, timeout=2)
                assert more
                msgs.extend(more)
            await ticker.stop()
            return first, m, offs, offs2, msgs, ticker

        first, m, offs, offs2, msgs, ticker = asyncio.run(main())
        assert first == 0 and (m.offset, m.data, m.key) == (0, b"first", b"k0")
        assert sorted(offs + offs2) == list(range(1, 151))
        assert offs2 == list(range(offs2[0], offs2[0] + 50))
        assert sorted(x.offset for x in msgs) == list(range(1, 151))
        assert log.stats()["durable_offset"] >= 151
        assert len(list(log.read())) == 151
        assert ticker.ticks >= 20 and ticker.max_gap < 0.05, (ticker.ticks, ticker.max_gap)
    finally:
        _close_quiet(ac, log)


# --------------------------------------------------------------------------- iteration and close

def test_async_for_stops_when_the_consumer_is_closed():
    with shm_names() as name:
        log = fastq.open(name, capacity=1 << 16)
        ac = aio.AsyncConsumer(log.group("g").consumer())
        try:
            async def main():
                got = []

                async def consume():
                    async for m in ac:
                        got.append(m.data)
                        m.ack()

                task = asyncio.ensure_future(consume())
                await asyncio.sleep(0.05)
                log.append_many([b"%d" % i for i in range(30)])
                while len(got) < 30:
                    await asyncio.sleep(0.01)
                await asyncio.sleep(0.1)     # parked again, no data
                t0 = time.monotonic()
                ac.close()
                await asyncio.wait_for(task, 2)
                return got, time.monotonic() - t0

            got, dt = asyncio.run(main())
            assert got == [b"%d" % i for i in range(30)]
            assert dt < 0.5, dt
        finally:
            _close_quiet(ac, log)


def test_close_while_parked_raises_promptly_and_the_thread_exits():
    with shm_names(3) as (lname, qname, fname):
        log = fastq.open(lname, capacity=1 << 16)
        ac = aio.AsyncConsumer(log.group("g").consumer())
        aq = aio.AsyncQueue(fastq.Queue(name=qname, capacity=1 << 16))
        flog = fastq.open(fname, capacity=1 << 16)
        slow = flog.group("slow", visibility_timeout=None).consumer()
        _fill_log(flog)
        al = aio.AsyncLog(fastq.open(fname))
        try:
            async def main():
                before = _aio_threads()
                gets = [asyncio.ensure_future(ac.get()) for _ in range(5)]
                gets.append(asyncio.ensure_future(ac.get_many(3)))
                qgets = [asyncio.ensure_future(aq.get()) for _ in range(3)]
                apps = [asyncio.ensure_future(al.append(b"x" * 1000)) for _ in range(3)]
                await asyncio.sleep(0.2)
                mine = _aio_threads() - before
                assert len(mine) == 3, mine
                out = []
                for h, tasks in ((ac, gets), (aq, qgets), (al, apps)):
                    t0 = time.monotonic()
                    h.close()
                    res = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 3)
                    out.append((res, time.monotonic() - t0))
                left = await asyncio.get_running_loop().run_in_executor(None, _wait_threads_gone, mine)
                return out, left

            out, left = asyncio.run(main())
            for res, dt in out:
                assert all(isinstance(r, ValueError) for r in res), res
                assert dt < 1.0, dt
            assert left == [], left
            with pytest.raises(ValueError):
                asyncio.run(ac.get(timeout=0))
        finally:
            _close_quiet(ac, aq, al, slow, flog)


def test_close_right_after_a_wake_does_not_strand_a_waiter():
    """The parked waiter wakes the loop and is preempted before it loops
    again; meanwhile a woken task found nothing and parked again, and the
    handle is closed: that task must still get ValueError, not hang."""
    with shm_names() as name:
        log = fastq.open(name, capacity=1 << 16)
        ac = aio.AsyncConsumer(log.group("g").consumer())
        try:
            async def main():
                loop = asyncio.get_running_loop()
                real = loop.call_soon_threadsafe

                def preempted(*a, **k):
                    h = real(*a, **k)
                    if threading.current_thread().name.startswith("fastq-aio"):
                        time.sleep(0.3)   # the parked waiter is descheduled here
                    return h

                loop.call_soon_threadsafe = preempted
                a = asyncio.ensure_future(ac.get())
                b = asyncio.ensure_future(ac.get())
                await asyncio.sleep(0.05)
                log.append(b"only one")
                done, _ = await asyncio.wait([a, b], timeout=2, return_when=asyncio.FIRST_COMPLETED)
                assert len(done) == 1
                loser = b if a in done else a
                await asyncio.sleep(0.05)     # the loser parked again
                t0 = time.monotonic()
                ac.close()
                try:
                    await asyncio.wait_for(loser, 2)
                except ValueError:
                    return time.monotonic() - t0
                except asyncio.TimeoutError:
                    return None
                raise AssertionError("the loser got a message")

            dt = asyncio.run(main())
            assert dt is not None and dt < 1.0, "a waiter parked across close() was never woken"
        finally:
            _close_quiet(ac, log)


def test_closing_the_wrapped_consumer_directly_ends_a_parked_get():
    """Closing the fastq.Consumer itself (e.g. leaving its `with` block)
    instead of the AsyncConsumer: Ring.close wakes the parked waiter at once
    (not at its next futex timeout, PARK_SECONDS = 5 s) and the task gets
    ValueError."""
    assert aio.PARK_SECONDS >= 5
    with shm_names() as name:
        log = fastq.open(name, capacity=1 << 16)
        c = log.group("g").consumer()
        ac = aio.AsyncConsumer(c)
        try:
            async def main():
                t = asyncio.ensure_future(ac.get())
                await asyncio.sleep(0.05)
                t0 = time.monotonic()
                c.close()
                with pytest.raises(ValueError):
                    await asyncio.wait_for(t, 3)
                return time.monotonic() - t0

            assert asyncio.run(main()) < 1.0
        finally:
            _close_quiet(ac, log)


# --------------------------------------------------------------------------- two loops

def test_two_event_loops_in_two_threads():
    N = 600
    with shm_names() as name:
        log = fastq.open(name, capacity=1 << 18)
        g = log.group("g", visibility_timeout=30.0)
        shared_log = aio.AsyncLog(log)    # one handle appended to from both loops
        results, errors = {}, []
        ready = threading.Barrier(3)

        def run(idx):
            ac = aio.AsyncConsumer(g.consumer())
            try:
                async def main():
                    ticker = Ticker().start()
                    got = []
                    getters = [asyncio.ensure_future(ac.get(timeout=10)) for _ in range(5)]
                    await asyncio.sleep(0.05)
                    await asyncio.get_running_loop().run_in_executor(None, ready.wait, 5)
                    for i in range(N // 4):
                        await shared_log.append(REC.pack(idx, i))
                        if i % 20 == 0:
                            await asyncio.sleep(0.001)
                    for t in getters:
                        got.append(await asyncio.wait_for(t, 10))
                    while True:
                        more = await ac.get_many(50, timeout=0.3)
                        if not more:
                            break
                        got.extend(more)
                    await ticker.stop()
                    return got, ticker

                results[idx] = asyncio.run(main())
            except BaseException as e:  # reported below
                errors.append(e)
            finally:
                ac.close()

        threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
        try:
            for t in threads:
                t.start()
            ready.wait(5)
            for i in range(N // 2):   # the main thread appends too (sync)
                log.append(REC.pack(9, i))
            for t in threads:
                t.join(20)
            assert not errors, errors
            assert len(results) == 2
            every = [REC.unpack(m.data) for got, _ in results.values() for m in got]
            want = [(i, s) for i in (0, 1) for s in range(N // 4)] + [(9, s) for s in range(N // 2)]
            assert sorted(every) == sorted(want)
            assert all(len(got) >= 5 for got, _ in results.values())   # both loops' parked getters were woken
            for _, ticker in results.values():
                assert ticker.max_gap < 0.1, ticker.max_gap
        finally:
            _close_quiet(shared_log)


# --------------------------------------------------------------------------- deadlines wake parked gets

def test_nack_delay_wakes_a_parked_get():
    with shm_names() as name:
        log = fastq.open(name, capacity=1 << 16)
        ac = aio.AsyncConsumer(log.group("g", visibility_timeout=30.0).consumer())
        try:
            async def main():
                log.append(b"once")
                m = await ac.get(timeout=1)
                assert m.deliveries == 1
                t0 = time.monotonic()
                assert m.nack(delay=0.3)
                again = await ac.get(timeout=5)       # nothing is appended meanwhile
                return again, time.monotonic() - t0

            again, dt = asyncio.run(main())
            assert (again.offset, again.data, again.deliveries) == (0, b"once", 2)
            assert 0.25 <= dt < 1.0, dt
            assert again.ack()
        finally:
            _close_quiet(ac, log)


def test_lease_expiry_wakes_a_parked_get_in_another_consumer():
    with shm_names() as name:
        log = fastq.open(name, capacity=1 << 16)
        g = log.group("g", visibility_timeout=0.3)
        a = aio.AsyncConsumer(g.consumer())
        b = aio.AsyncConsumer(g.consumer())
        try:
            async def main():
                log.append(b"lease")
                m = await a.get(timeout=1)          # never acked
                t0 = time.monotonic()
                tasks = [asyncio.ensure_future(b.get(timeout=1.0)) for _ in range(2)]
                done, _ = await asyncio.wait(tasks, timeout=3, return_when=asyncio.FIRST_COMPLETED)
                dt = time.monotonic() - t0
                assert len(done) == 1
                again = done.pop().result()
                assert again.ack()          # before its own lease expires
                other = tasks[1] if tasks[0].done() else tasks[0]
                with pytest.raises(fastq.Empty):
                    await other
                return m, again, dt

            m, again, dt = asyncio.run(main())
            assert (again.offset, again.deliveries) == (0, 2)
            assert 0.25 <= dt < 1.0, dt
            assert not m.ack()       # the lease was lost
        finally:
            _close_quiet(a, b, log)
