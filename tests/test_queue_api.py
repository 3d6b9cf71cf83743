"""Single-process (and threaded) behaviour of fastq.Queue / fastq.JoinableQueue.

Every blocking call carries a timeout so that a bug shows up as a failure,
never as a hang.
"""
import collections
import os
import pickle
import queue
import random
import signal
import threading
import time

import pytest

import fastq

from conftest import shm_path

np = pytest.importorskip("numpy")

SMALL = 1 << 16  # capacity used by most tests (keeps /dev/shm usage low)


@pytest.fixture
def q():
    qu = fastq.Queue(capacity=SMALL)
    yield qu
    qu.close()


@pytest.fixture
def rq():
    """A raw-bytes queue."""
    qu = fastq.Queue(capacity=SMALL, serializer=None)
    yield qu
    qu.close()


def timed(fn, *a, **kw):
    t0 = time.monotonic()
    exc = None
    try:
        fn(*a, **kw)
    except BaseException as e:  # noqa: BLE001 - returned to the caller
        exc = e
    return time.monotonic() - t0, exc


def check_timeout(fn, timeout, exc_type, attempts=3, slack=0.1):
    """fn() must raise exc_type after timeout..timeout+slack seconds.

    The lower bound must hold on every attempt; the upper bound on at least
    one of `attempts` tries (the machine may be loaded by other tests).
    """
    best = None
    for _ in range(attempts):
        el, exc = timed(fn)
        assert isinstance(exc, exc_type), f"expected {exc_type.__name__}, got {exc!r}"
        assert el >= timeout - 0.002, f"returned after {el:.4f}s, before the {timeout}s timeout"
        best = el if best is None else min(best, el)
        if el <= timeout + slack:
            return
    pytest.fail(f"timeout {timeout}s: fastest attempt took {best:.4f}s (> {timeout + slack:.3f}s)")


# ---------------------------------------------------------------- basics
def test_exceptions_are_stdlib_ones():
    assert fastq.Empty is queue.Empty
    assert fastq.Full is queue.Full
    assert issubclass(fastq.CorruptQueueError, fastq.FastqError)
    assert issubclass(fastq.IncompatibleQueueError, fastq.FastqError)


def test_put_get_pickled_objects(q):
    items = [1, "two", {"three": [3.0, None]}, (4, b"4"), None, 10**40, frozenset({1, 2}), b"", ""]
    for it in items:
        q.put(it)
    assert q.qsize() == len(items)
    got = [q.get(timeout=1) for _ in items]
    assert got == items
    assert q.qsize() == 0 and q.empty()


def test_put_get_large_pickled_object():
    with fastq.Queue(capacity=1 << 20) as q:
        obj = list(range(20000))
        assert len(pickle.dumps(obj)) < q.max_message_size
        q.put(obj)
        assert q.get(timeout=1) == obj


@pytest.mark.parametrize("conv", [bytes, bytearray, memoryview, lambda b: memoryview(bytearray(b))],
                         ids=["bytes", "bytearray", "memoryview", "memoryview-bytearray"])
def test_raw_bytes_in_out(rq, conv):
    payloads = [b"", b"a", b"hello world", bytes(range(256)) * 3]
    for p in payloads:
        rq.put(conv(p))
    for p in payloads:
        out = rq.get(timeout=1)
        assert type(out) is bytes
        assert out == p


def test_raw_put_noncontiguous_memoryview(rq):
    data = bytes(range(100))
    mv = memoryview(data)[::2]  # not contiguous
    try:
        rq.put(mv)
    except (TypeError, ValueError, BufferError):
        assert rq.qsize() == 0
    else:
        assert rq.get(timeout=1) == data[::2]


def test_raw_put_multidim_memoryview(rq):
    arr = np.arange(12, dtype=np.int16).reshape(3, 4)
    rq.put(memoryview(arr))
    assert rq.get(timeout=1) == arr.tobytes()


def test_serializer_pair_and_object():
    with fastq.Queue(capacity=SMALL, serializer=(lambda o: repr(o).encode(), lambda b: "got:" + b.decode())) as q:
        q.put(12)
        assert q.get(timeout=1) == "got:12"
    with fastq.Queue(capacity=SMALL, serializer=pickle) as q:
        q.put({"a": 1})
        assert q.get(timeout=1) == {"a": 1}


def test_nowait(q):
    with pytest.raises(queue.Empty):
        q.get_nowait()
    q.put_nowait(1)
    q.put_nowait(2)
    assert q.get_nowait() == 1
    assert q.get_nowait() == 2
    with pytest.raises(queue.Empty):
        q.get_nowait()


def test_block_false_ignores_timeout(q):
    el, exc = timed(q.get, False, 5)
    assert isinstance(exc, queue.Empty)
    assert el < 0.1


def test_get_timeout_zero_is_immediate(q):
    el, exc = timed(q.get, True, 0)
    assert isinstance(exc, queue.Empty)
    assert el < 0.1


@pytest.mark.parametrize("timeout", [0.05, 0.2, 0.5])
def test_get_timeout_precision(q, timeout):
    check_timeout(lambda: q.get(timeout=timeout), timeout, queue.Empty)


@pytest.mark.parametrize("timeout", [0.05, 0.2])
def test_put_timeout_precision_maxsize(timeout):
    with fastq.Queue(2, capacity=SMALL) as q:
        q.put(1)
        q.put(2)
        check_timeout(lambda: q.put(3, timeout=timeout), timeout, queue.Full)
        assert q.qsize() == 2
        assert [q.get_nowait(), q.get_nowait()] == [1, 2]


def test_put_timeout_precision_ring_full():
    with fastq.Queue(capacity=4096, serializer=None) as q:
        n = 0
        while True:
            try:
                q.put_nowait(b"x" * 500)
            except queue.Full:
                break
            n += 1
            assert n < 100
        assert n >= 2
        check_timeout(lambda: q.put(b"y" * 500, timeout=0.2), 0.2, queue.Full)
        assert q.qsize() == n


def test_get_many_timeout_precision(q):
    check_timeout(lambda: q.get_many(10, timeout=0.2), 0.2, queue.Empty)


def test_get_array_timeout_precision(rq):
    check_timeout(lambda: rq.get_array(np.int64, 10, timeout=0.2), 0.2, queue.Empty)


def test_join_timeout_precision():
    with fastq.JoinableQueue(capacity=SMALL) as q:
        q.put(1)
        best = None
        for _ in range(3):
            t0 = time.monotonic()
            assert q.join(timeout=0.2) is False
            el = time.monotonic() - t0
            assert el >= 0.198
            best = el if best is None else min(best, el)
            if el <= 0.3:
                break
        assert best <= 0.3, best


# ---------------------------------------------------------------- counts
def test_qsize_empty_full_unbounded(q):
    assert q.qsize() == 0 and q.empty() and not q.full()
    for i in range(1, 51):
        q.put(i)
        assert q.qsize() == i
        assert not q.empty()
        assert not q.full()
    for i in range(49, -1, -1):
        q.get_nowait()
        assert q.qsize() == i
    assert q.empty()


def test_qsize_empty_full_maxsize():
    with fastq.Queue(3, capacity=SMALL) as q:
        assert q.maxsize == 3
        assert not q.full()
        q.put(1)
        q.put(2)
        assert q.qsize() == 2 and not q.full()
        q.put(3)
        assert q.qsize() == 3 and q.full()
        with pytest.raises(queue.Full):
            q.put_nowait(4)
        with pytest.raises(queue.Full):
            q.put(4, timeout=0.01)
        with pytest.raises(queue.Full):
            q.put(4, False)
        assert q.qsize() == 3
        assert q.get_nowait() == 1
        assert not q.full()
        q.put_nowait(4)
        assert [q.get_nowait() for _ in range(3)] == [2, 3, 4]


@pytest.mark.parametrize("maxsize", [0, -1, -100])
def test_nonpositive_maxsize_is_unbounded(maxsize):
    with fastq.Queue(maxsize, capacity=SMALL) as q:
        assert q.maxsize == 0
        for i in range(200):
            q.put_nowait(i)
        assert q.qsize() == 200


def test_maxsize_one():
    with fastq.Queue(1, capacity=SMALL) as q:
        q.put(1)
        assert q.full()
        with pytest.raises(queue.Full):
            q.put_nowait(2)
        assert q.get_nowait() == 1
        q.put_nowait(2)
        assert q.get_nowait() == 2


def test_maxsize_large_exact():
    with fastq.Queue(5000, capacity=1 << 20, serializer=None) as q:
        for i in range(5000):
            q.put_nowait(b"%d" % i)
        assert q.full()
        with pytest.raises(queue.Full):
            q.put_nowait(b"x")
        got = []
        while len(got) < 5000:
            got += q.get_many(6000, timeout=1)
        assert got == [b"%d" % i for i in range(5000)]
        assert q.empty()


def test_capacity_rounding():
    with fastq.Queue(capacity=5000) as q:
        assert q.capacity == 8192
        assert q.max_message_size == 8192 // 4 - 32
    with fastq.Queue(capacity=1) as q:
        assert q.capacity == 4096
        assert q.max_message_size == 992


# ---------------------------------------------------------------- batches
def test_put_many_get_many(q):
    q.put_many(range(100))
    assert q.qsize() == 100
    assert q.get_many(10, timeout=1) == list(range(10))
    assert q.get_many(1, timeout=1) == [10]
    rest = []
    while len(rest) < 89:
        batch = q.get_many(1000, timeout=1)
        assert 1 <= len(batch)
        rest += batch
    assert rest == list(range(11, 100))
    assert q.empty()


def test_put_many_generator_and_empty(q):
    q.put_many([])
    q.put_many(iter(()))
    assert q.qsize() == 0
    q.put_many((i * i for i in range(5)))
    assert q.get_many(100, timeout=1) == [0, 1, 4, 9, 16]


def test_get_many_returns_what_is_there(q):
    q.put_many([1, 2, 3])
    t0 = time.monotonic()
    assert q.get_many(100, timeout=2) == [1, 2, 3]
    assert time.monotonic() - t0 < 0.5


def test_get_many_empty(q):
    with pytest.raises(queue.Empty):
        q.get_many(5, block=False)
    with pytest.raises(queue.Empty):
        q.get_many(5, timeout=0.01)


def test_get_many_bad_max(q):
    q.put(1)
    for bad in (0, -1):
        with pytest.raises(ValueError):
            q.get_many(bad, timeout=0.01)
    assert q.qsize() == 1


def test_put_many_raw_mixed_buffers(rq):
    rq.put_many([b"a", bytearray(b"bc"), memoryview(b"def"), b""])
    assert rq.get_many(10, timeout=1) == [b"a", b"bc", b"def", b""]


def test_put_many_larger_than_ring_in_batches():
    # 200 records of 300 bytes do not fit a 4 KiB ring at once: put_many with a
    # consumer thread must still deliver all, in order.
    with fastq.Queue(capacity=4096, serializer=None) as q:
        items = [bytes([i % 256]) * 300 for i in range(200)]
        got = []

        def consume():
            while len(got) < len(items):
                got.extend(q.get_many(50, timeout=5))

        t = threading.Thread(target=consume)
        t.start()
        q.put_many(items, timeout=10)
        t.join(10)
        assert not t.is_alive()
        assert got == items


def test_put_many_full_with_timeout():
    with fastq.Queue(3, capacity=SMALL) as q:
        with pytest.raises(queue.Full):
            q.put_many(range(10), timeout=0.05)
        n = q.qsize()
        assert n <= 3
        assert q.get_many(10, timeout=1) == list(range(n))


# ---------------------------------------------------------------- numpy
def test_numpy_put_many_rows_get_array(rq):
    arr = np.arange(30, dtype=np.float64).reshape(10, 3)
    rq.put_many(arr)
    assert rq.qsize() == 10
    for i in range(10):
        assert rq.get(timeout=1) == arr[i].tobytes()
    rq.put_many(arr)
    dt = np.dtype((np.float64, 3))
    out = rq.get_array(dt, 4, timeout=1)
    assert out.shape == (4, 3)
    np.testing.assert_array_equal(out, arr[:4])
    out = rq.get_array(dt, 100, timeout=1)
    np.testing.assert_array_equal(out, arr[4:])
    assert rq.empty()


def test_numpy_1d_and_structured(rq):
    a = np.arange(100, dtype=np.int32)
    rq.put_many(a)
    assert rq.qsize() == 100
    np.testing.assert_array_equal(rq.get_array(np.int32, 1000, timeout=1), a)
    st = np.dtype([("x", "<i4"), ("y", "<f8")])
    s = np.zeros(7, dtype=st)
    s["x"] = np.arange(7)
    s["y"] = np.arange(7) / 2
    rq.put_many(s)
    out = rq.get_array(st, 1000, timeout=1)
    assert out.dtype == st
    np.testing.assert_array_equal(out, s)


def test_numpy_noncontiguous_and_empty(rq):
    a = np.arange(40, dtype=np.int64).reshape(10, 4)[:, ::2]
    assert not a.flags["C_CONTIGUOUS"]
    rq.put_many(a)
    np.testing.assert_array_equal(rq.get_array(np.dtype((np.int64, 2)), 100, timeout=1), a)
    rq.put_many(np.zeros((0, 3)))
    assert rq.qsize() == 0


def test_numpy_get_array_stops_before_other_size(rq):
    a = np.arange(9, dtype=np.int32).reshape(3, 3)
    rq.put_many(a)
    rq.put(b"12345")
    rq.put_many(a)
    dt = np.dtype((np.int32, 3))
    np.testing.assert_array_equal(rq.get_array(dt, 100, timeout=1), a)
    assert rq.qsize() == 4
    with pytest.raises(ValueError):
        rq.get_array(dt, 100, timeout=1)
    assert rq.qsize() == 4  # left queued
    assert rq.get(timeout=1) == b"12345"
    np.testing.assert_array_equal(rq.get_array(dt, 100, timeout=1), a)


def test_numpy_get_array_bad_args(rq):
    rq.put(b"abcd")
    with pytest.raises(ValueError):
        rq.get_array(np.int32, 0, timeout=0.01)
    assert rq.qsize() == 1
    np.testing.assert_array_equal(rq.get_array(np.int32, 1, timeout=1), np.frombuffer(b"abcd", np.int32))


def test_numpy_row_too_big():
    with fastq.Queue(capacity=4096, serializer=None) as q:
        with pytest.raises(ValueError, match="larger"):
            q.put_many(np.zeros((3, q.max_message_size + 1), dtype=np.uint8))
        assert q.qsize() == 0
        q.put_many(np.ones((2, q.max_message_size), dtype=np.uint8))
        assert q.qsize() == 2


def test_numpy_many_rows_through_small_ring():
    with fastq.Queue(capacity=4096, serializer=None) as q:
        a = np.arange(5000, dtype=np.int64)
        got = []

        def consume():
            n = 0
            while n < len(a):
                chunk = q.get_array(np.int64, 1000, timeout=5)
                got.append(chunk)
                n += len(chunk)

        t = threading.Thread(target=consume)
        t.start()
        q.put_many(a, timeout=10)
        t.join(10)
        assert not t.is_alive()
        np.testing.assert_array_equal(np.concatenate(got), a)


# ---------------------------------------------------------------- close & lifecycle
CLOSED_CALLS = [
    ("put", lambda q: q.put(1)),
    ("put_nowait", lambda q: q.put_nowait(1)),
    ("get", lambda q: q.get(timeout=0.01)),
    ("get_nowait", lambda q: q.get_nowait()),
    ("put_many", lambda q: q.put_many([1])),
    ("get_many", lambda q: q.get_many(2, timeout=0.01)),
    ("get_array", lambda q: q.get_array(np.int8, 2, timeout=0.01)),
    ("qsize", lambda q: q.qsize()),
    ("empty", lambda q: q.empty()),
    ("full", lambda q: q.full()),
]


@pytest.mark.parametrize("call", [c for _, c in CLOSED_CALLS], ids=[n for n, _ in CLOSED_CALLS])
def test_use_after_close_raises_valueerror(call):
    q = fastq.Queue(capacity=SMALL)
    q.put(1)
    q.close()
    assert q.closed
    with pytest.raises(ValueError, match="closed"):
        call(q)


def test_close_is_idempotent_and_repr(q):
    assert "closed" not in repr(q)
    q.close()
    q.close()
    assert "closed" in repr(q)


def test_join_thread_and_cancel():
    q = fastq.Queue(capacity=SMALL)
    with pytest.raises(AssertionError):
        q.join_thread()
    q.cancel_join_thread()
    q.put(1)
    assert q.get(timeout=1) == 1
    q.close()
    q.join_thread()
    q.cancel_join_thread()


def test_context_manager_closes():
    with fastq.Queue(capacity=SMALL) as q:
        q.put(1)
        assert not q.closed
    assert q.closed
    with pytest.raises(ValueError, match="closed"):
        q.put(2)


def test_context_manager_closes_on_exception():
    with pytest.raises(RuntimeError):
        with fastq.Queue(capacity=SMALL) as q:
            raise RuntimeError("boom")
    assert q.closed


def test_close_wakes_blocked_get_in_other_thread(q):
    res = {}

    def waiter():
        t0 = time.monotonic()
        try:
            q.get(timeout=5)
        except BaseException as e:  # noqa: BLE001
            res["exc"] = e
        res["t"] = time.monotonic() - t0

    t = threading.Thread(target=waiter)
    t.start()
    time.sleep(0.2)
    q.close()
    t.join(6)
    assert not t.is_alive()
    assert isinstance(res.get("exc"), ValueError), res
    assert res["t"] < 1.0, res


def test_anonymous_pickle_outside_spawn_is_refused(q):
    with pytest.raises(RuntimeError):
        pickle.dumps(q)


# ---------------------------------------------------------------- named queues
def test_named_queue_open_same_process(unique_name):
    a = fastq.Queue(name=unique_name, capacity=SMALL)
    try:
        assert a.name == unique_name
        assert os.path.exists(shm_path(unique_name))
        assert os.stat(shm_path(unique_name)).st_mode & 0o777 == 0o600
        b = fastq.Queue.open(unique_name)
        try:
            assert b.name == unique_name
            a.put("from-a")
            a.put("from-a-2")
            assert b.qsize() == 2
            assert b.get(timeout=1) == "from-a"
            b.put("from-b")
            assert a.get(timeout=1) == "from-a-2"
            assert a.get(timeout=1) == "from-b"
            assert a.empty() and b.empty()
        finally:
            b.close()
        a.put(3)
        assert a.get(timeout=1) == 3
    finally:
        a.close()


def test_named_queue_survives_handle_close(unique_name):
    with fastq.Queue(name=unique_name, capacity=SMALL) as a:
        a.put_many([1, 2, 3])
    with fastq.Queue.open(unique_name) as b:
        assert b.get_many(10, timeout=1) == [1, 2, 3]


def test_named_open_keeps_maxsize_and_capacity(unique_name):
    with fastq.Queue(2, name=unique_name, capacity=1 << 14) as a:
        with fastq.Queue.open(unique_name) as b:
            assert b.maxsize == 2
            assert b.capacity == a.capacity == 1 << 14
            b.put(1)
            b.put(2)
            with pytest.raises(queue.Full):
                b.put_nowait(3)
            assert a.full()


def test_named_open_raw_serializer(unique_name):
    with fastq.Queue(name=unique_name, capacity=SMALL, serializer=None) as a:
        with fastq.Queue.open(unique_name, serializer=None) as b:
            a.put(b"raw")
            assert b.get(timeout=1) == b"raw"


def test_named_exists_and_missing(unique_name, name_factory):
    with fastq.Queue(name=unique_name, capacity=SMALL):
        with pytest.raises(FileExistsError):
            fastq.Queue(name=unique_name, capacity=SMALL)
    missing = name_factory()
    with pytest.raises(FileNotFoundError):
        fastq.Queue.open(missing)
    with pytest.raises(FileNotFoundError):
        fastq.unlink(missing)


def test_unlink_method_and_function(unique_name, name_factory):
    a = fastq.Queue(name=unique_name, capacity=SMALL)
    a.put("still here")
    a.unlink()
    assert not os.path.exists(shm_path(unique_name))
    with pytest.raises(FileNotFoundError):
        fastq.Queue.open(unique_name)
    # the open handle keeps working
    assert a.get(timeout=1) == "still here"
    a.put(1)
    assert a.get(timeout=1) == 1
    with pytest.raises(FileNotFoundError):
        a.unlink()
    a.close()
    # the name can be reused
    with fastq.Queue(name=unique_name, capacity=SMALL) as b:
        assert b.empty()
    fastq.unlink(unique_name)
    assert not os.path.exists(shm_path(unique_name))


def test_unlink_anonymous_raises(q):
    with pytest.raises(ValueError):
        q.unlink()


def test_pickle_named_queue_reopens(unique_name):
    with fastq.Queue(name=unique_name, capacity=SMALL) as a:
        b = pickle.loads(pickle.dumps(a))
        try:
            assert isinstance(b, fastq.Queue) and b is not a
            a.put("x")
            assert b.get(timeout=1) == "x"
        finally:
            b.close()
        a.close()
        with pytest.raises(ValueError):
            pickle.dumps(a)


# ---------------------------------------------------------------- JoinableQueue
def test_joinable_task_done_join():
    with fastq.JoinableQueue(capacity=SMALL) as q:
        assert q.join(timeout=0.01) is True
        q.put(1)
        q.put(2)
        assert q.join(timeout=0.05) is False
        q.get(timeout=1)
        q.task_done()
        assert q.join(timeout=0.05) is False
        q.get(timeout=1)
        assert q.join(timeout=0.05) is False  # got but not done
        q.task_done()
        assert q.join(timeout=0.05) is True
        with pytest.raises(ValueError):
            q.task_done()
        # still consistent after the error
        q.put(3)
        assert q.join(timeout=0.02) is False
        q.get(timeout=1)
        q.task_done()
        assert q.join(timeout=1) is True


def test_joinable_task_done_too_many_on_fresh_queue():
    with fastq.JoinableQueue(capacity=SMALL) as q:
        with pytest.raises(ValueError):
            q.task_done()
        q.put(1)
        assert q.join(timeout=0.02) is False


def test_joinable_join_woken_by_task_done_in_thread():
    with fastq.JoinableQueue(capacity=SMALL) as q:
        q.put_many(range(20))

        def worker():
            for _ in range(20):
                q.get(timeout=5)
                time.sleep(0.005)
                q.task_done()

        t = threading.Thread(target=worker)
        t.start()
        t0 = time.monotonic()
        assert q.join(timeout=10) is True
        assert time.monotonic() - t0 < 5
        t.join(5)
        assert not t.is_alive()


def test_joinable_join_none_timeout_when_done():
    with fastq.JoinableQueue(capacity=SMALL) as q:
        q.put(1)
        q.get(timeout=1)
        q.task_done()
        assert q.join() is True


def test_joinable_put_many_counts():
    with fastq.JoinableQueue(capacity=SMALL) as q:
        q.put_many(range(5))
        assert q.get_many(10, timeout=1) == list(range(5))
        for _ in range(4):
            q.task_done()
        assert q.join(timeout=0.02) is False
        q.task_done()
        assert q.join(timeout=1) is True


def test_joinable_named_shared_counter(unique_name):
    with fastq.JoinableQueue(name=unique_name, capacity=SMALL) as a:
        with fastq.JoinableQueue.open(unique_name) as b:
            a.put(1)
            assert b.join(timeout=0.02) is False
            b.get(timeout=1)
            b.task_done()
            assert a.join(timeout=1) is True


# ---------------------------------------------------------------- serialization failures
def _pickling_error_type():
    try:
        pickle.dumps(lambda: 0)
    except Exception as e:  # noqa: BLE001
        return type(e)
    raise AssertionError("lambda pickled?")


def test_unpicklable_value_leaves_queue_untouched(q):
    q.put("before")
    with pytest.raises(_pickling_error_type()):
        q.put(lambda: 0)
    assert q.qsize() == 1
    with pytest.raises(_pickling_error_type()):
        q.put_many(["a", lambda: 0, "b"])
    assert q.qsize() == 1
    q.put("after")
    assert q.get(timeout=1) == "before"
    assert q.get(timeout=1) == "after"
    assert q.empty()


def test_failing_loads_does_not_lose_following_items():
    def loads(b):
        if b == b"bad":
            raise RuntimeError("cannot decode")
        return b.decode()

    with fastq.Queue(capacity=SMALL, serializer=(lambda s: s.encode(), loads)) as q:
        q.put("ok1")
        q.put("bad")
        q.put("ok2")
        assert q.get(timeout=1) == "ok1"
        with pytest.raises(RuntimeError):
            q.get(timeout=1)
        assert q.qsize() == 1
        assert q.get(timeout=1) == "ok2"


# ---------------------------------------------------------------- sizes & ring wrap
def test_oversized_record_rejected(rq):
    m = rq.max_message_size
    with pytest.raises(ValueError, match="larger"):
        rq.put(b"x" * (m + 1))
    assert rq.qsize() == 0
    with pytest.raises(ValueError):
        rq.put_many([b"a", b"x" * (m + 1)])
    assert rq.qsize() == 0
    rq.put(b"y" * m)
    assert rq.get(timeout=1) == b"y" * m


def test_oversized_pickled_record_rejected():
    with fastq.Queue(capacity=4096) as q:
        with pytest.raises(ValueError):
            q.put("z" * 5000)
        assert q.qsize() == 0
        q.put("small")
        assert q.get(timeout=1) == "small"


@pytest.mark.parametrize("seed", range(4))
def test_ring_wrap_random_sizes_tiny_ring(seed):
    rnd = random.Random(seed)
    with fastq.Queue(capacity=4096, serializer=None) as q:
        m = q.max_message_size
        model = collections.deque()
        total = 0
        counter = 0
        while total < 40 * q.capacity:  # many laps
            # fill until Full
            while True:
                size = rnd.choice([0, 1, 7, 8, 9, m, m - 1, rnd.randint(0, m), rnd.randint(0, 64)])
                counter += 1
                payload = (counter.to_bytes(4, "little") * (size // 4 + 1))[:size]
                try:
                    q.put_nowait(payload)
                except queue.Full:
                    assert len(model) > 0, "Full on an empty queue"
                    break
                model.append(payload)
                total += size + 8
            assert q.qsize() == len(model)
            # drain a random part
            k = rnd.randint(1, len(model))
            for _ in range(k):
                assert q.get_nowait() == model.popleft()
            assert q.qsize() == len(model)
        while model:
            assert q.get_nowait() == model.popleft()
        with pytest.raises(queue.Empty):
            q.get_nowait()


def test_ring_wrap_max_size_records_many_laps():
    with fastq.Queue(capacity=4096, serializer=None) as q:
        m = q.max_message_size
        for lap in range(200):
            a = bytes([lap % 256]) * m
            b = bytes([(lap + 1) % 256]) * m
            q.put_nowait(a)
            q.put_nowait(b)
            assert q.get_nowait() == a
            assert q.get_nowait() == b


def test_ring_wrap_batches_threads():
    rnd = random.Random(7)
    with fastq.Queue(capacity=4096, serializer=None) as q:
        m = q.max_message_size
        items = [bytes([i % 251]) * rnd.randint(0, m) + i.to_bytes(4, "little") for i in range(3000)]
        items = [it[-m:] if len(it) > m else it for it in items]
        got = []

        def consume():
            while len(got) < len(items):
                got.extend(q.get_many(rnd.randint(1, 8), timeout=5))

        t = threading.Thread(target=consume)
        t.start()
        i = 0
        while i < len(items):
            k = rnd.randint(1, 6)
            q.put_many(items[i:i + k], timeout=5)
            i += k
        t.join(10)
        assert not t.is_alive()
        assert got == items


# ---------------------------------------------------------------- threads
def test_threads_4x4_no_loss_no_dup_fifo_per_producer():
    P, C, N = 4, 4, 3000
    with fastq.Queue(capacity=1 << 14) as q:  # small ring so producers block too
        results = [[] for _ in range(C)]
        errors = []

        def producer(p):
            try:
                for i in range(N):
                    q.put((p, i), timeout=10)
            except BaseException as e:  # noqa: BLE001
                errors.append(e)

        def consumer(c):
            try:
                while True:
                    item = q.get(timeout=10)
                    if item is None:
                        return
                    results[c].append(item)
            except BaseException as e:  # noqa: BLE001
                errors.append(e)

        cs = [threading.Thread(target=consumer, args=(c,)) for c in range(C)]
        ps = [threading.Thread(target=producer, args=(p,)) for p in range(P)]
        for t in cs + ps:
            t.start()
        for t in ps:
            t.join(30)
        for _ in range(C):
            q.put(None, timeout=5)
        for t in cs:
            t.join(30)
        assert not any(t.is_alive() for t in cs + ps)
        assert not errors, errors
        allitems = [x for r in results for x in r]
        assert len(allitems) == P * N
        assert sorted(allitems) == [(p, i) for p in range(P) for i in range(N)]
        for r in results:
            for p in range(P):
                seq = [i for (pp, i) in r if pp == p]
                assert seq == sorted(seq), "per-producer FIFO violated"
        assert q.empty()


def test_threads_batches_4x4():
    P, C, N = 4, 4, 2000
    with fastq.Queue(capacity=1 << 14, serializer=None) as q:
        results = [[] for _ in range(C)]
        errors = []

        def producer(p):
            try:
                i = 0
                while i < N:
                    k = min(N - i, 1 + (i % 7))
                    q.put_many([b"%d:%d" % (p, j) for j in range(i, i + k)], timeout=10)
                    i += k
            except BaseException as e:  # noqa: BLE001
                errors.append(e)

        done = threading.Event()

        def consumer(c):
            try:
                while True:
                    try:
                        results[c].extend(q.get_many(1 + c * 3, timeout=0.2))
                    except queue.Empty:
                        if done.is_set():
                            return
            except BaseException as e:  # noqa: BLE001
                errors.append(e)

        cs = [threading.Thread(target=consumer, args=(c,)) for c in range(C)]
        ps = [threading.Thread(target=producer, args=(p,)) for p in range(P)]
        for t in cs + ps:
            t.start()
        for t in ps:
            t.join(30)
        done.set()
        for t in cs:
            t.join(30)
        assert not any(t.is_alive() for t in cs + ps)
        assert not errors, errors
        allitems = [x for r in results for x in r]
        expected = sorted(b"%d:%d" % (p, j) for p in range(P) for j in range(N))
        assert sorted(allitems) == expected
        for r in results:
            for p in range(P):
                seq = [int(x.split(b":")[1]) for x in r if x.split(b":")[0] == b"%d" % p]
                assert seq == sorted(seq)


def test_blocked_get_woken_by_put_in_other_thread(q):
    res = {}

    def waiter():
        t0 = time.monotonic()
        res["v"] = q.get(timeout=5)
        res["t"] = time.monotonic() - t0

    t = threading.Thread(target=waiter)
    t.start()
    time.sleep(0.2)
    t_put = time.monotonic()
    q.put("wake")
    t.join(6)
    assert not t.is_alive()
    assert res["v"] == "wake"
    assert 0.15 <= res["t"] < 1.0
    del t_put


def test_blocked_put_woken_by_get_in_other_thread():
    with fastq.Queue(1, capacity=SMALL) as q:
        q.put(1)
        res = {}

        def putter():
            t0 = time.monotonic()
            q.put(2, timeout=5)
            res["t"] = time.monotonic() - t0

        t = threading.Thread(target=putter)
        t.start()
        time.sleep(0.2)
        assert q.get(timeout=1) == 1
        t.join(6)
        assert not t.is_alive()
        assert 0.15 <= res["t"] < 1.0
        assert q.get(timeout=1) == 2


def test_blocked_put_ring_full_woken_by_get():
    with fastq.Queue(capacity=4096, serializer=None) as q:
        big = b"b" * q.max_message_size
        n = 0
        while True:
            try:
                q.put_nowait(big)
                n += 1
            except queue.Full:
                break
        res = {}

        def putter():
            t0 = time.monotonic()
            q.put(b"last", timeout=5)
            res["t"] = time.monotonic() - t0

        t = threading.Thread(target=putter)
        t.start()
        time.sleep(0.2)
        assert q.get(timeout=1) == big
        t.join(6)
        assert not t.is_alive()
        assert res["t"] < 1.0
        assert q.get_many(100, timeout=1)[-1] == b"last"


# ---------------------------------------------------------------- Ctrl-C
def _sigint_after(delay):
    def fire():
        time.sleep(delay)
        os.kill(os.getpid(), signal.SIGINT)

    t = threading.Thread(target=fire, daemon=True)
    t.start()
    return t


@pytest.fixture
def default_sigint():
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, old)


@pytest.mark.parametrize("what", ["get", "get_many", "put_full", "join"])
def test_ctrl_c_interrupts_blocked_call(default_sigint, what):
    cls = fastq.JoinableQueue if what == "join" else fastq.Queue
    q = cls(1, capacity=SMALL)
    try:
        if what == "put_full":
            q.put(0)
            call = lambda: q.put(1, timeout=5)  # noqa: E731
        elif what == "get":
            call = lambda: q.get(timeout=5)  # noqa: E731
        elif what == "get_many":
            call = lambda: q.get_many(4, timeout=5)  # noqa: E731
        else:
            q.put(0)
            call = lambda: q.join(timeout=5)  # noqa: E731
        t = _sigint_after(0.2)
        t0 = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            call()
        el = time.monotonic() - t0
        t.join(2)
        assert 0.15 <= el < 1.0, el
        # the queue is still usable afterwards
        if what in ("put_full", "join"):
            assert q.get(timeout=1) == 0
        q.put("after", timeout=1)
        assert q.get(timeout=1) == "after"
    finally:
        q.close()


def test_ctrl_c_no_timeout_get(default_sigint, q):
    t = _sigint_after(0.2)
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        q.get()
    assert time.monotonic() - t0 < 1.0
    t.join(2)
    q.put(1)
    assert q.get(timeout=1) == 1


# ---------------------------------------------------------------- threads sharing one handle
def test_thread_blocked_put_keeps_its_record_length():
    """A put blocked in one thread must not pick up the length of another
    thread's (failed) put on the same handle."""
    with fastq.Queue(1, capacity=SMALL, serializer=None) as q:
        q.put(b"first")
        t = threading.Thread(target=lambda: q.put(b"a" * 10, timeout=5))
        t.start()
        time.sleep(0.2)  # the thread is now blocked in put (maxsize reached)
        with pytest.raises(queue.Full):
            q.put_nowait(b"b" * 100)
        assert q.get(timeout=1) == b"first"
        t.join(6)
        assert not t.is_alive()
        assert q.get(timeout=1) == b"a" * 10


def test_thread_blocked_put_many_keeps_its_record_lengths():
    with fastq.Queue(2, capacity=SMALL, serializer=None) as q:
        q.put(b"x")
        q.put(b"y")
        t = threading.Thread(target=lambda: q.put_many([b"a" * 3, b"b" * 5], timeout=5))
        t.start()
        time.sleep(0.2)
        with pytest.raises(queue.Full):
            q.put_many([b"c" * 200, b"d" * 300], block=False)
        assert q.get_many(2, timeout=1) == [b"x", b"y"]
        t.join(6)
        assert not t.is_alive()
        got = []
        while len(got) < 2:
            got += q.get_many(2, timeout=1)
        assert got == [b"a" * 3, b"b" * 5]


def test_threads_get_array_and_get_many_share_handle():
    """Concurrent get_array / get_many on one handle: nothing duplicated, lost or stuck."""
    N = 200_000
    with fastq.Queue(capacity=1 << 22, serializer=None) as q:
        got = [[], []]
        errors = []

        def prod():
            try:
                q.put_many(np.arange(N, dtype=np.int64), timeout=20)
            except BaseException as e:  # noqa: BLE001
                errors.append(e)

        def cons(c):
            try:
                while sum(map(len, got)) < N:
                    try:
                        if c == 0:
                            got[c].extend(q.get_array(np.int64, 4096, timeout=0.5).tolist())
                        else:
                            got[c].extend(int.from_bytes(b, "little") for b in q.get_many(4096, timeout=0.5))
                    except queue.Empty:
                        if not pt.is_alive():
                            return
            except BaseException as e:  # noqa: BLE001
                errors.append(e)

        pt = threading.Thread(target=prod)
        ts = [threading.Thread(target=cons, args=(c,)) for c in range(2)]
        pt.start()
        for t in ts:
            t.start()
        for t in ts + [pt]:
            t.join(40)
        assert not any(t.is_alive() for t in ts + [pt])
        assert not errors, errors
        allv = got[0] + got[1]
        assert len(allv) == len(set(allv)), "records delivered twice"
        assert sorted(allv) == list(range(N))
        assert q.qsize() == 0


def test_threads_put_many_arrays_share_handle():
    """Two threads put_many(ndarray) on one handle while a third consumes."""
    N = 50_000
    with fastq.Queue(capacity=1 << 16, serializer=None) as q:
        errors = []
        got = []

        def prod(p):
            try:
                a = np.arange(N, dtype=np.int64) * 2 + p
                for chunk in np.array_split(a, 50):
                    q.put_many(chunk, timeout=10)
            except BaseException as e:  # noqa: BLE001
                errors.append(e)

        def cons():
            try:
                while len(got) < 2 * N:
                    got.extend(q.get_many(1000, timeout=10))
            except BaseException as e:  # noqa: BLE001
                errors.append(e)

        ts = [threading.Thread(target=prod, args=(p,)) for p in range(2)] + [threading.Thread(target=cons)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(40)
        assert not any(t.is_alive() for t in ts)
        assert not errors, errors
        assert all(len(b) == 8 for b in got), "record of the wrong length"
        vals = [int.from_bytes(b, "little") for b in got]
        assert sorted(vals) == list(range(2 * N))
        for p in range(2):
            seq = [v for v in vals if v % 2 == p]
            assert seq == sorted(seq)
