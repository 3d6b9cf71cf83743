"""The same behaviour tests run against fastq and multiprocessing (the reference).

multiprocessing.Queue hands items to a feeder thread, so ``empty()`` (which
polls the pipe) lags behind ``put()``; where a test depends on that, it waits
for the mp queue only (see ``settle``).  ``qsize()`` and ``full()`` of
multiprocessing are semaphore based and exact immediately.
"""
import multiprocessing
import queue
import threading
import time

import pytest

import fastq

SMALL = 1 << 16


def _fastq(maxsize=0):
    return fastq.Queue(maxsize, capacity=SMALL)


def _fastq_j(maxsize=0):
    return fastq.JoinableQueue(maxsize, capacity=SMALL)


IMPLS = {
    "fastq": _fastq,
    "mp": multiprocessing.Queue,
}
JIMPLS = {
    "fastq": _fastq_j,
    "mp": multiprocessing.JoinableQueue,
}


def _is_mp(q):
    return not isinstance(q, fastq.Queue)


def settle(q, nonempty=True, timeout=2.0):
    """multiprocessing only: wait until the feeder thread has flushed to the pipe."""
    if not _is_mp(q):
        return
    end = time.monotonic() + timeout
    while q.empty() == nonempty and time.monotonic() < end:
        time.sleep(0.005)


@pytest.fixture(params=list(IMPLS))
def make(request):
    made = []

    def f(maxsize=0):
        q = IMPLS[request.param](maxsize)
        made.append(q)
        return q

    yield f
    for q in made:
        try:
            q.close()
            q.join_thread()
        except (ValueError, AssertionError):
            pass


@pytest.fixture(params=list(JIMPLS))
def jmake(request):
    made = []

    def f(maxsize=0):
        q = JIMPLS[request.param](maxsize)
        made.append(q)
        return q

    yield f
    for q in made:
        q.close()
        q.join_thread()


OBJECTS = [0, -1, 2**70, 1.5, "s", b"b", None, [1, [2]], {"k": (1, 2)}, {1, 2}, (), ""]


def test_fifo_single_producer(make):
    q = make()
    for i in range(200):
        q.put(i)
    assert [q.get(timeout=2) for _ in range(200)] == list(range(200))


def test_objects_round_trip(make):
    q = make()
    for o in OBJECTS:
        q.put(o)
    assert [q.get(timeout=2) for _ in OBJECTS] == OBJECTS


def test_get_nowait_on_empty_raises_empty(make):
    q = make()
    with pytest.raises(queue.Empty):
        q.get_nowait()
    with pytest.raises(queue.Empty):
        q.get(False)
    with pytest.raises(queue.Empty):
        q.get(True, 0.05)
    with pytest.raises(queue.Empty):
        q.get(timeout=0.05)


def test_get_block_false_ignores_timeout(make):
    q = make()
    t0 = time.monotonic()
    with pytest.raises(queue.Empty):
        q.get(False, 10)
    assert time.monotonic() - t0 < 1.0


def test_put_on_full_raises_full(make):
    q = make(2)
    q.put(1)
    q.put(2)
    with pytest.raises(queue.Full):
        q.put_nowait(3)
    with pytest.raises(queue.Full):
        q.put(3, False)
    with pytest.raises(queue.Full):
        q.put(3, True, 0.05)
    with pytest.raises(queue.Full):
        q.put(3, timeout=0)
    assert q.qsize() == 2
    assert q.full()
    assert q.get(timeout=2) == 1
    assert not q.full()
    q.put_nowait(3)
    assert [q.get(timeout=2), q.get(timeout=2)] == [2, 3]


def test_get_timeout_duration(make):
    q = make()
    t0 = time.monotonic()
    with pytest.raises(queue.Empty):
        q.get(timeout=0.2)
    assert 0.19 <= time.monotonic() - t0 < 1.0


def test_qsize_after_puts_and_gets(make):
    q = make()
    assert q.qsize() == 0
    for i in range(10):
        q.put(i)
        assert q.qsize() == i + 1
    for i in range(10):
        q.get(timeout=2)
        assert q.qsize() == 9 - i


def test_empty_full_flags(make):
    q = make(3)
    assert q.empty() and not q.full()
    q.put(1)
    settle(q)  # mp: empty() polls the pipe, which the feeder thread fills later
    assert not q.empty() and not q.full()
    q.put(2)
    q.put(3)
    assert q.full()
    for _ in range(3):
        q.get(timeout=2)
    assert q.empty() and not q.full()


@pytest.mark.parametrize("maxsize", [0, -5])
def test_nonpositive_maxsize_unbounded(make, maxsize):
    q = make(maxsize)
    for i in range(100):
        q.put_nowait(i)
    assert q.qsize() == 100
    assert not q.full()
    assert [q.get(timeout=2) for _ in range(100)] == list(range(100))


def test_close_semantics(make):
    q = make()
    q.put(1)
    with pytest.raises(AssertionError):
        q.join_thread()
    q.close()
    q.close()  # idempotent
    q.join_thread()
    for call in (lambda: q.put(2), lambda: q.put_nowait(2), lambda: q.get(timeout=0.05), q.get_nowait):
        with pytest.raises(ValueError, match="closed"):
            call()


def test_cancel_join_thread_is_allowed(make):
    q = make()
    q.cancel_join_thread()
    q.put(1)
    assert q.get(timeout=2) == 1
    q.close()
    q.join_thread()


def test_blocked_get_woken_by_put_from_thread(make):
    q = make()
    threading.Timer(0.1, q.put, args=("x",)).start()
    t0 = time.monotonic()
    assert q.get(timeout=5) == "x"
    assert time.monotonic() - t0 < 2.0


def test_blocked_put_woken_by_get_from_thread(make):
    q = make(1)
    q.put(1)
    threading.Timer(0.1, q.get, kwargs={"timeout": 5}).start()
    q.put(2, timeout=5)
    assert q.get(timeout=2) == 2


# ---------------------------------------------------------------- JoinableQueue
def _join_in_thread(q):
    done = threading.Event()

    def run():
        q.join()
        done.set()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return done


def test_join_returns_immediately_when_nothing_put(jmake):
    q = jmake()
    assert _join_in_thread(q).wait(2)


def test_task_done_and_join(jmake):
    q = jmake()
    q.put(1)
    q.put(2)
    done = _join_in_thread(q)
    assert not done.wait(0.1)
    q.get(timeout=2)
    q.task_done()
    assert not done.wait(0.1)
    q.get(timeout=2)
    assert not done.wait(0.1)  # got, not yet done
    q.task_done()
    assert done.wait(2)


def test_task_done_too_many(jmake):
    q = jmake()
    with pytest.raises(ValueError):
        q.task_done()
    q.put(1)
    q.get(timeout=2)
    q.task_done()
    with pytest.raises(ValueError):
        q.task_done()
    assert _join_in_thread(q).wait(2)


def test_joinable_full(jmake):
    q = jmake(1)
    q.put(1)
    with pytest.raises(queue.Full):
        q.put_nowait(2)
    assert q.get(timeout=2) == 1
    q.task_done()
    assert _join_in_thread(q).wait(2)


def test_joinable_worker_thread(jmake):
    q = jmake()
    seen = []

    def worker():
        while True:
            item = q.get(timeout=5)
            seen.append(item)
            q.task_done()
            if item is None:
                return

    t = threading.Thread(target=worker, daemon=True)
    t.start()
    for i in range(50):
        q.put(i)
    q.put(None)
    assert _join_in_thread(q).wait(10)
    t.join(5)
    assert seen == list(range(50)) + [None]
