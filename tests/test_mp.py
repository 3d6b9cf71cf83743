"""Multi-process behaviour of fastq.Queue / JoinableQueue: MPMC stress with fork
and spawn, named queues between unrelated processes, task_done/join and
maxsize back-pressure across processes, pickling rules.

Every wait is bounded; stragglers are killed in ``finally``.
"""
import multiprocessing as mp
import os
import pickle
import subprocess
import sys
import time
import uuid

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _workers as W  # noqa: E402

import fastq  # noqa: E402

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fastq is Linux-only")

METHODS = ["fork", "spawn"]


def _name():
    return f"fqtest-mp-{os.getpid()}-{uuid.uuid4().hex[:10]}"


def _unlink(name):
    try:
        fastq.unlink(name)
    except FileNotFoundError:
        pass


def _join_all(procs, timeout):
    """Join processes (multiprocessing or Popen) by a shared deadline; returns exit codes
    (None = still running after the deadline)."""
    deadline = time.monotonic() + timeout
    codes = []
    for p in procs:
        left = max(0.0, deadline - time.monotonic())
        if isinstance(p, subprocess.Popen):
            try:
                codes.append(p.wait(left))
            except subprocess.TimeoutExpired:
                codes.append(None)
        else:
            p.join(left)
            codes.append(p.exitcode)
    return codes


def _kill_all(procs):
    for p in procs:
        try:
            if isinstance(p, subprocess.Popen):
                if p.poll() is None:
                    p.kill()
                    p.wait(5)
            elif p.is_alive():
                p.kill()
                p.join(5)
        except Exception:
            pass


# --------------------------------------------------------------------------- MPMC stress

@pytest.mark.parametrize("capacity", [4096, 65536])
@pytest.mark.parametrize("method", METHODS)
def test_mpmc_stress(method, capacity, tmp_path):
    """4 producers x 4 consumers, random sizes (up to the largest record), tiny rings
    that wrap constantly, put/put_many mixed with get/get_many: nothing lost,
    nothing duplicated, per-producer FIFO, checksums intact."""
    ctx = mp.get_context(method)
    n = 20000 if capacity > 4096 else 12000
    q = fastq.Queue(capacity=capacity, serializer=None)
    maxbody = q.max_message_size - W.HDR.size
    seed = int.from_bytes(os.urandom(4), "little")
    prods = [ctx.Process(target=W.producer, args=(q, p, n, seed + p, maxbody)) for p in range(4)]
    outs = [str(tmp_path / f"c{i}") for i in range(4)]
    cons = [ctx.Process(target=W.consumer, args=(q, outs[i], seed + 100 + i)) for i in range(4)]
    procs = prods + cons
    try:
        for p in cons + prods:
            p.start()
        codes = _join_all(prods, 120)
        assert codes == [0] * 4, f"producers exit codes {codes} (seed {seed})"
        q.put_many([W.STOP] * 4, timeout=30)
        codes = _join_all(cons, 60)
        assert codes == [0] * 4, f"consumers exit codes {codes} (seed {seed})"
        results = [W.read_result(o) for o in outs]
        W.verify(results, {p: n for p in range(4)})
        assert q.qsize() == 0
        with pytest.raises(fastq.Empty):
            q.get_nowait()
    finally:
        _kill_all(procs)
        q.close()


@pytest.mark.parametrize("method", METHODS)
def test_default_capacity_pickle_serializer(method, tmp_path):
    """The default (pickle, 16 MiB) queue between processes: objects round-trip."""
    ctx = mp.get_context(method)
    q = fastq.Queue()
    out = fastq.Queue()
    conn_parent, conn_child = ctx.Pipe()
    p = ctx.Process(target=W.spawn_probe, args=(q, conn_child))
    try:
        p.start()
        obj = {"a": [1, 2.5, "x" * 1000], "b": (None, b"\x00" * 70000)}
        q.put(obj)
        assert conn_parent.poll(30), "child did not report"
        rep = conn_parent.recv()
        assert rep == {"maxsize": 0, "name": None, "item": obj, "type": "Queue"}
        assert q.get(timeout=30) == ("echo", obj)
        assert _join_all([p], 30) == [0]
    finally:
        _kill_all([p])
        q.close()
        out.close()


@pytest.mark.parametrize("method", METHODS)
def test_inherited_maxsize_and_type(method):
    ctx = mp.get_context(method)
    q = fastq.JoinableQueue(7)
    conn_parent, conn_child = ctx.Pipe()
    p = ctx.Process(target=W.spawn_probe, args=(q, conn_child))
    try:
        p.start()
        q.put("hi")
        assert conn_parent.poll(30)
        assert conn_parent.recv() == {"maxsize": 7, "name": None, "item": "hi", "type": "JoinableQueue"}
        assert q.get(timeout=30) == ("echo", "hi")
        assert _join_all([p], 30) == [0]
    finally:
        _kill_all([p])
        q.close()


# --------------------------------------------------------------------------- named queues, unrelated processes

def test_named_unrelated_processes(tmp_path):
    """Producers and consumers are separate ``python -c`` processes that attach by name."""
    name = _name()
    n = 15000
    q = fastq.Queue(name=name, capacity=1 << 16, serializer=None)
    procs = []
    try:
        prods = [subprocess.Popen([sys.executable, "-c", W.child_code(f"named_producer_main({name!r}, {p}, {n}, {p})")])
                 for p in range(3)]
        procs += prods
        outs = [str(tmp_path / f"c{i}") for i in range(2)]
        cons = [subprocess.Popen([sys.executable, "-c", W.child_code(f"named_consumer_main({name!r}, {o!r}, {i})")])
                for i, o in enumerate(outs)]
        procs += cons
        assert _join_all(prods, 120) == [0, 0, 0]
        q.put_many([W.STOP, W.STOP], timeout=30)
        assert _join_all(cons, 60) == [0, 0]
        W.verify([W.read_result(o) for o in outs], {p: n for p in range(3)})
        assert q.qsize() == 0
    finally:
        _kill_all(procs)
        q.close()
        _unlink(name)


def test_named_pickle_roundtrip_between_processes():
    name_in, name_out = _name(), _name()
    qi = fastq.Queue(name=name_in)
    qo = fastq.Queue(name=name_out)
    procs = []
    try:
        procs = [subprocess.Popen([sys.executable, "-c",
                                   W.child_code(f"named_pickle_echo_main({name_in!r}, {name_out!r}, 100)")])
                 for _ in range(2)]
        qi.put_many({"i": i} for i in range(200))
        got = [qo.get(timeout=30) for _ in range(200)]
        assert sorted(d["i"] for d in got) == list(range(200))
        assert all(d["sq"] == d["i"] ** 2 for d in got)
        assert len({d["pid"] for d in got}) == 2
        assert _join_all(procs, 30) == [0, 0]
    finally:
        _kill_all(procs)
        qi.close()
        qo.close()
        _unlink(name_in)
        _unlink(name_out)


def test_named_queue_outlives_creator_until_unlink():
    """A named queue created (and filled) by a process that exits persists; open()
    from another process sees its items; after unlink, open() fails."""
    name = _name()
    pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(fastq.__file__)))
    code = (f"import sys; sys.path.insert(0, {pkg_parent!r})\n"
            "import fastq\n"
            f"q = fastq.Queue(name={name!r}, capacity=1 << 16)\n"
            "q.put_many(range(100))\n"
            "q.put({'done': True})\n"
            "q.close()\n")
    try:
        r = subprocess.run([sys.executable, "-c", code], timeout=60, capture_output=True)
        assert r.returncode == 0, r.stderr.decode()
        q = fastq.Queue.open(name, wait=5)
        try:
            assert q.get_many(1000, timeout=10) == list(range(100)) + [{"done": True}]
        finally:
            q.close()
        fastq.unlink(name)
        with pytest.raises(FileNotFoundError):
            fastq.Queue.open(name, wait=0.2)
    finally:
        _unlink(name)


def test_named_queue_pickles_by_name():
    name = _name()
    q = fastq.Queue(name=name, capacity=1 << 16)
    try:
        q2 = pickle.loads(pickle.dumps(q))
        try:
            assert q2.name == name
            q.put("via original")
            assert q2.get(timeout=5) == "via original"
        finally:
            q2.close()
    finally:
        q.close()
        _unlink(name)


# --------------------------------------------------------------------------- JoinableQueue

@pytest.mark.parametrize("method", METHODS)
def test_joinable_task_done_join(method):
    ctx = mp.get_context(method)
    q = fastq.JoinableQueue()
    results = fastq.Queue()
    procs = []
    try:
        assert q.join(timeout=1) is True  # nothing put
        q.put_many(range(300))
        t0 = time.monotonic()
        assert q.join(timeout=0.2) is False  # nobody working yet
        assert time.monotonic() - t0 < 5
        joiner = ctx.Process(target=W.joiner, args=(q, 60))
        workers = [ctx.Process(target=W.task_worker, args=(q, results)) for _ in range(3)]
        procs = [joiner] + workers
        for p in procs:
            p.start()
        assert q.join(timeout=60) is True
        # every task_done happened after its result was put
        got = results.get_many(1000, timeout=5)
        while len(got) < 300:
            got += results.get_many(1000, timeout=5)
        assert sorted(got) == [2 * i for i in range(300)]
        assert _join_all([joiner], 30) == [0], "join() in another process did not return True"
        q.put_many([None] * 3)
        assert q.join(timeout=60) is True
        assert _join_all(workers, 30) == [0, 0, 0]
        with pytest.raises(ValueError):
            q.task_done()
    finally:
        _kill_all(procs)
        q.close()
        results.close()


# --------------------------------------------------------------------------- maxsize

@pytest.mark.parametrize("method", METHODS)
def test_maxsize_backpressure(method):
    ctx = mp.get_context(method)
    q = fastq.Queue(maxsize=5)
    conn_parent, conn_child = ctx.Pipe()
    p = ctx.Process(target=W.bounded_producer, args=(q, 5, conn_child))
    try:
        p.start()
        assert conn_parent.poll(60), "producer did not report"
        rep = conn_parent.recv()
        assert isinstance(rep, dict), rep
        assert rep["nowait"] == "Full" and rep["timeout"] == "Full", rep
        assert rep["elapsed"] >= 0.15, rep
        assert q.qsize() == 5 and q.full()
        got = []
        max_seen = 0
        while len(got) < 15:
            max_seen = max(max_seen, q.qsize())
            got.append(q.get(timeout=30))
            if len(got) % 3 == 0:
                time.sleep(0.02)  # let the producer refill to the bound
        assert max_seen <= 5
        assert got == list(range(15))  # a single producer's FIFO
        assert conn_parent.poll(30)
        assert conn_parent.recv() == "done"
        assert _join_all([p], 30) == [0]
        assert q.qsize() == 0
    finally:
        _kill_all([p])
        q.close()


# --------------------------------------------------------------------------- pickling rules

def test_anonymous_pickle_outside_spawn_raises():
    q = fastq.Queue()
    try:
        with pytest.raises(RuntimeError):
            pickle.dumps(q)
        a, b = mp.Pipe()
        try:
            with pytest.raises(RuntimeError):
                a.send(q)
        finally:
            a.close()
            b.close()
        # the queue is still perfectly usable
        q.put(1)
        assert q.get(timeout=5) == 1
    finally:
        q.close()


def test_pass_to_spawned_pool_initializer():
    """Pickling while spawning also covers Pool(initargs=...)."""
    ctx = mp.get_context("spawn")
    q = fastq.Queue()
    try:
        with ctx.Pool(2, initializer=W.pool_init, initargs=(q,)) as pool:
            res = pool.map_async(W.pool_task, range(50))
            assert sorted(res.get(60)) == list(range(50))
            got = sorted(q.get(timeout=30) for _ in range(50))
        assert got == [i * 3 for i in range(50)]
    finally:
        q.close()
