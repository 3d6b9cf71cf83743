"""kill -9 tests: a process killed at any point never wedges the queue.

Children arm named crash points (``fastq._core.crash_arm``) and SIGKILL
themselves there; the kill storm SIGKILLs producers from outside at random
moments.  Checks: everything committed is delivered (exactly once unless a
consumer died holding it), half-written records are skipped (never delivered,
never corrupt), survivors go on within a bounded time, qsize() drains to 0.
"""
import multiprocessing as mp
import os
import random
import signal
import sys
import time
import uuid

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _workers as W  # noqa: E402

import fastq  # noqa: E402

pytestmark = [pytest.mark.crash,
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fastq is Linux-only")]

PRODUCER_POINTS = ["prod.after_intent", "prod.after_cas", "prod.after_desc", "prod.mid_payload",
                   "prod.before_commit", "prod.after_commit"]
BATCH_POINTS = [p for p in PRODUCER_POINTS if p != "prod.mid_payload"]  # put_many has no mid_payload point
SIGKILLED = -signal.SIGKILL
DRAIN_TIMEOUT = 20.0   # generous: survivors should go on within ~0.1-0.5 s

fork = mp.get_context("fork")


def _name():
    return f"fqtest-crash-{os.getpid()}-{uuid.uuid4().hex[:10]}"




def _join(p, timeout=30.0):
    p.join(timeout)
    return p.exitcode


def _expect_killed(p, what, timeout=30.0):
    code = _join(p, timeout)
    assert code == SIGKILLED, (f"{what}: exit code {code}, expected {SIGKILLED} (SIGKILL at the crash point); "
                               "3 means the crash point was never reached, None that it hung")


def _drain(q, total, timeout=DRAIN_TIMEOUT):
    """Get until `total` records arrived or the deadline; returns ((pairs, meta), elapsed)."""
    pairs, bad = [], []
    t0 = time.monotonic()
    deadline = t0 + timeout
    while len(pairs) + len(bad) < total:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        try:
            items = q.get_many(256, timeout=left)
        except fastq.Empty:
            break
        for b in items:
            try:
                pairs.append(W.check_record(b))
            except ValueError as e:
                bad.append(str(e))
    elapsed = time.monotonic() - t0
    return (pairs, {"bad": bad, "nbad": len(bad), "err": None if len(pairs) + len(bad) >= total else
                    f"only {len(pairs) + len(bad)} of {total} records within {timeout} s (wedged?)"}), elapsed


def _assert_empty_and_usable(q):
    with pytest.raises(fastq.Empty):
        q.get(timeout=0.3)
    assert q.qsize() == 0, f"qsize() is {q.qsize()} on a drained queue"
    assert q.empty()
    rec = W.make_record(77, 0, 100, 5)
    q.put(rec, timeout=5)
    assert q.get(timeout=5) == rec
    assert q.qsize() == 0


def _put_range(q, prod, start, stop, nbody=120):
    for s in range(start, stop):
        q.put(W.make_record(prod, s, nbody, s * 31), timeout=10)


# --------------------------------------------------------------------------- producer crash points

@pytest.mark.parametrize("batch", [0, 10], ids=["put", "put_many"])
@pytest.mark.parametrize("point", PRODUCER_POINTS)
def test_producer_crash_point(point, batch):
    """A producer commits 50 records then dies at `point` while survivors put
    around it (and are blocked behind its claim): the survivors' records and the
    dead producer's 50 committed ones are all delivered, its half-put record(s)
    are skipped (delivered only if it died after committing), qsize() -> 0."""
    if batch and point == "prod.mid_payload":
        pytest.skip("put_many has no mid_payload crash point")
    q = fastq.Queue(capacity=65536, serializer=None)
    gate = fork.Event()
    survivors = [fork.Process(target=W.gated_producer, args=(q, p, 100, 500, gate, p, 200)) for p in (1, 2)]
    crasher = fork.Process(target=W.crash_producer, args=(q, 0, 50, point, batch))
    procs = survivors + [crasher]
    try:
        for p in procs:
            p.start()
        _expect_killed(crasher, f"producer at {point}")
        gate.set()
        dead_committed = 50 + ((batch or 1) if point == "prod.after_commit" else 0)
        res, elapsed = _drain(q, 1200 + dead_committed)
        W.verify([res], {0: dead_committed, 1: 600, 2: 600})
        for p in survivors:
            assert _join(p) == 0
        _assert_empty_and_usable(q)
    finally:
        W.kill_all(procs)
        q.close()


@pytest.mark.parametrize("point", PRODUCER_POINTS)
def test_two_producers_die_at_same_point_adjacent(point):
    """Two producers die at the same point one after the other with nothing in
    between: their dead claims are adjacent (one dead run).  Records before,
    between and after are delivered."""
    q = fastq.Queue(capacity=65536, serializer=None)
    ev = [fork.Event() for _ in range(4)]
    c1 = fork.Process(target=W.crash_producer, args=(q, 0, 20, point, 0, 100, ev[0], ev[1]))
    c2 = fork.Process(target=W.crash_producer, args=(q, 3, 20, point, 0, 100, ev[2], ev[3]))
    procs = [c1, c2]
    try:
        _put_range(q, 1, 0, 30)
        c1.start()
        c2.start()
        # both join (and scan) before either dies: nobody recovers between the deaths
        assert ev[0].wait(30) and ev[2].wait(30)
        ev[1].set()
        _expect_killed(c1, f"first producer at {point}")
        ev[3].set()
        _expect_killed(c2, f"second producer at {point}")
        _put_range(q, 1, 30, 60)
        k = 21 if point == "prod.after_commit" else 20
        res, _ = _drain(q, 60 + 2 * k)
        W.verify([res], {0: k, 3: k, 1: 60})
        _assert_empty_and_usable(q)
    finally:
        W.kill_all(procs)
        q.close()


@pytest.mark.parametrize("point", ["prod.after_cas", "prod.after_desc", "prod.before_commit", "prod.after_commit"])
def test_two_producers_die_concurrently(point):
    """Two producers die at the same point while two survivors keep putting."""
    q = fastq.Queue(capacity=65536, serializer=None)
    gate = fork.Event()
    survivors = [fork.Process(target=W.gated_producer, args=(q, p, 60, 540, gate, p, 300)) for p in (1, 2)]
    crashers = [fork.Process(target=W.crash_producer, args=(q, p, 40, point, 5)) for p in (0, 3)]
    procs = survivors + crashers
    try:
        for p in procs:
            p.start()
        for c in crashers:
            _expect_killed(c, f"producer at {point}")
        gate.set()
        k = 45 if point == "prod.after_commit" else 40
        res, _ = _drain(q, 1200 + 2 * k)
        W.verify([res], {0: k, 3: k, 1: 600, 2: 600})
        for p in survivors:
            assert _join(p) == 0
        _assert_empty_and_usable(q)
    finally:
        W.kill_all(procs)
        q.close()


@pytest.mark.parametrize("point", PRODUCER_POINTS)
def test_producer_dies_while_consumer_blocked(point):
    """A consumer is blocked in get() on an empty queue when a producer dies
    mid-put (its dead claim is at the tail).  The consumer must not hang: it gets
    the next survivor record (and the dead one only if it was committed)."""
    q = fastq.Queue(capacity=65536, serializer=None)
    rx, tx = fork.Pipe(duplex=False)
    n_expected = 4 if point == "prod.after_commit" else 3
    getter = fork.Process(target=W.blocked_getter, args=(q, tx, n_expected, 15.0))
    crasher = fork.Process(target=W.crash_producer, args=(q, 0, 0, point))
    procs = [getter, crasher]
    try:
        _put_range(q, 9, 0, 2)  # the dead claim is not the queue's first record
        getter.start()
        time.sleep(0.3)  # the getter took those two and is parked in get()
        crasher.start()
        _expect_killed(crasher, f"producer at {point}")
        time.sleep(0.3)  # the getter's scans find the dead claim at the tail
        rec = W.make_record(1, 0, 100, 1)
        q.put(rec, timeout=5)
        assert rx.poll(20), "consumer blocked in get() never returned (wedged)"
        status, got, elapsed = rx.recv()
        assert status == "ok", f"{got} after {elapsed:.1f} s"
        want = [(9, 0), (9, 1)] + ([(0, 0)] if point == "prod.after_commit" else []) + [(1, 0)]
        assert got == want
        assert _join(getter) == 0
        _assert_empty_and_usable(q)
    finally:
        W.kill_all(procs)
        q.close()


@pytest.mark.parametrize("batch", [0, 10], ids=["put", "put_many"])
@pytest.mark.parametrize("point", PRODUCER_POINTS)
def test_dead_claim_of_first_record(point, batch):
    """The very first put of a fresh queue dies at `point` (the dead claim is
    seq 0, whose descriptor has never been written).  A later record must still
    be delivered, within a bounded time."""
    if batch and point == "prod.mid_payload":
        pytest.skip("put_many has no mid_payload crash point")
    q = fastq.Queue(capacity=65536, serializer=None)
    crasher = fork.Process(target=W.crash_producer, args=(q, 0, 0, point, batch))
    try:
        crasher.start()
        _expect_killed(crasher, f"producer at {point}")
        _put_range(q, 1, 0, 3)
        k = (batch or 1) if point == "prod.after_commit" else 0
        res, elapsed = _drain(q, 3 + k, timeout=10)
        W.verify([res], {0: k, 1: 3})
        _assert_empty_and_usable(q)
    finally:
        W.kill_all([crasher])
        q.close()


# --------------------------------------------------------------------------- consumer crash points

@pytest.mark.parametrize("point,many", [
    ("cons.after_lease", 0), ("cons.after_lease:3", 5),
    ("cons.after_ack", 0), ("cons.after_ack", 5),
    ("cons.after_low", 0), ("cons.after_low", 5),
])
def test_consumer_crash_point(point, many):
    """A consumer dies inside get()/get_many().  Leased items go back and a
    surviving consumer receives them; items it acked may or may not come again,
    everything else exactly once; the queue is not wedged."""
    q = fastq.Queue(capacity=65536, serializer=None)
    K = 40
    crasher = fork.Process(target=W.crash_consumer, args=(q, point, many))
    try:
        _put_range(q, 0, 0, K)
        crasher.start()
        _expect_killed(crasher, f"consumer at {point}")
        _put_range(q, 0, K, 2 * K)  # more after the death
        taken = max(many, 1)
        leased_only = point.startswith("cons.after_lease")
        # leased items come back; acked ones (seqs 0..taken-1) may be gone
        need = set(range(2 * K)) if leased_only else set(range(taken, 2 * K))
        got_pairs = []
        deadline = time.monotonic() + DRAIN_TIMEOUT
        while not need <= {s for _, s in got_pairs} and time.monotonic() < deadline:
            try:
                got_pairs += [W.check_record(b) for b in q.get_many(256, timeout=1.0)]
            except fastq.Empty:
                pass
        while True:  # the rest of a batch the dead consumer had not acked yet comes back too
            try:
                got_pairs += [W.check_record(b) for b in q.get_many(256, timeout=0.5)]
            except fastq.Empty:
                break
        seqs = [s for _, s in got_pairs]
        assert len(seqs) == len(set(seqs)), f"duplicates: {sorted(seqs)}"
        assert need <= set(seqs), f"missing after {DRAIN_TIMEOUT} s: {sorted(need - set(seqs))}"
        assert set(seqs) <= set(range(2 * K))
        _assert_empty_and_usable(q)
    finally:
        W.kill_all([crasher])
        q.close()


def test_consumer_dies_with_lease_while_others_consume(tmp_path):
    """Two consumer processes and a dying one: every record is delivered; only the
    dead consumer's leased record may be duplicated."""
    q = fastq.Queue(capacity=8192, serializer=None)
    outs = [str(tmp_path / f"c{i}") for i in range(2)]
    prod = fork.Process(target=W.producer, args=(q, 0, 5000, 7, 300))
    log = str(tmp_path / "dead.log")
    crasher = fork.Process(target=W.crash_consumer_loop, args=(q, "cons.after_lease:50", log))
    cons = [fork.Process(target=W.consumer, args=(q, o, i, 30.0)) for i, o in enumerate(outs)]
    procs = [prod, crasher] + cons
    try:
        crasher.start()
        prod.start()
        # the crasher's 50th lease kills it
        for c in cons:
            c.start()
        assert _join(prod, 60) == 0
        _expect_killed(crasher, "consumer at cons.after_lease:50")
        q.put_many([W.STOP, W.STOP], timeout=10)
        assert [_join(c, 60) for c in cons] == [0, 0]
        with open(log) as f:
            dead_got = [tuple(map(int, line.split())) for line in f]
        assert len(dead_got) == 49, "the dead consumer got 49 records before its 50th lease"
        results = [W.read_result(o) for o in outs] + [(dead_got, {})]
        # the record it held when it died comes back late, to someone else
        W.verify(results, {0: 5000}, allow_dup=(0,), fifo_slack=1)
        # duplicates: at most the one record the dead consumer held (it never returned it)
        pairs = [p for r in results for p in r[0]]
        assert len(pairs) - len(set(pairs)) <= 1
        _assert_empty_and_usable(q)
    finally:
        W.kill_all(procs)
        q.close()


# --------------------------------------------------------------------------- recovery points

@pytest.mark.parametrize("point", ["rec.before_gap", "rec.mid_leases", "rec.before_free"])
def test_recoverer_dies(point):
    """A dead consumer holds 2 leases and a dead producer holds a claim; the first
    process to recover them dies at `point`; a third process completes recovery
    (taking over the recovery mutex) and receives everything."""
    q = fastq.Queue(capacity=65536, serializer=None)
    rx, tx = fork.Pipe(duplex=False)
    ev = [fork.Event() for _ in range(4)]
    dead_cons = fork.Process(target=W.crash_consumer, args=(q, "cons.after_lease:2", 5, ev[0], ev[1]))
    dead_prod = fork.Process(target=W.crash_producer, args=(q, 0, 5, "prod.after_cas", 0, 100, ev[2], ev[3]))
    rec = fork.Process(target=W.recoverer, args=(q, point))
    third = fork.Process(target=W.blocked_getter, args=(q, tx, 45, 10.0))
    procs = [dead_cons, dead_prod, rec, third]
    try:
        _put_range(q, 1, 0, 20)
        dead_cons.start()
        dead_prod.start()
        # both join (joining scans) before either dies, so neither recovers the other
        assert ev[0].wait(30) and ev[2].wait(30)
        ev[1].set()
        _expect_killed(dead_cons, "consumer at cons.after_lease:2")
        ev[3].set()
        _expect_killed(dead_prod, "producer at prod.after_cas")
        _put_range(q, 1, 20, 40)  # behind the dead claim
        # nothing in this process waits on q, so the recoverer is the first to scan
        rec.start()
        _expect_killed(rec, f"recoverer at {point}")
        third.start()
        assert rx.poll(DRAIN_TIMEOUT + 5), "third process never finished (recovery wedged?)"
        status, got, elapsed = rx.recv()
        assert status == "ok", f"{got} after {elapsed:.1f} s"
        # the two records the dead consumer held come back after later ones
        W.verify([(got, {})], {0: 5, 1: 40}, fifo_exempt={(1, 0), (1, 1)})
        assert _join(third) == 0
        _assert_empty_and_usable(q)
    finally:
        W.kill_all(procs)
        q.close()


# --------------------------------------------------------------------------- creator

def test_creator_dies_before_ready():
    name = _name()
    try:
        p = fork.Process(target=W.create_and_die, args=(name,))
        p.start()
        _expect_killed(p, "creator at create.before_ready")
        t0 = time.monotonic()
        with pytest.raises(fastq.FastqError) as ei:
            fastq.Queue.open(name, wait=0.2)
        elapsed = time.monotonic() - t0
        assert elapsed < 3.0, f"open() took {elapsed:.1f} s"
        assert str(ei.value), "the error must say what is wrong"
        assert "initiali" in str(ei.value).lower(), str(ei.value)
        with pytest.raises(FileExistsError):
            fastq.Queue(name=name)
        fastq.unlink(name)
        with pytest.raises(FileNotFoundError):
            fastq.Queue.open(name, wait=0.2)
        q = fastq.Queue(name=name, capacity=65536)
        try:
            q.put("ok")
            q2 = fastq.Queue.open(name, wait=1.0)
            try:
                assert q2.get(timeout=5) == "ok"
            finally:
                q2.close()
        finally:
            q.close()
    finally:
        try:
            fastq.unlink(name)
        except FileNotFoundError:
            pass


# --------------------------------------------------------------------------- kill storm

@pytest.mark.parametrize("method", ["fork", "spawn"])
@pytest.mark.parametrize("capacity", [4096, 65536])
def test_kill_storm(capacity, method, tmp_path):
    """4 producers put in loops; two are SIGKILLed from outside at random moments
    (possibly blocked on space, mid-claim, mid-copy...).  The two survivors and two
    consumers finish: all survivors' records exactly once, per-producer FIFO;
    the dead producers' records are intact (checksums), unique, and a prefix
    0..k-1 (everything they committed)."""
    ctx = mp.get_context(method)
    seed = int.from_bytes(os.urandom(4), "little")
    rng = random.Random(seed)
    q = fastq.Queue(capacity=capacity, serializer=None)
    maxbody = min(2000, q.max_message_size - W.HDR.size)
    victims = rng.sample(range(4), 2)
    n = 20000
    prods = []
    for p in range(4):
        if p in victims:
            prods.append(ctx.Process(target=W.producer_forever, args=(q, p, seed + p, maxbody)))
        else:
            prods.append(ctx.Process(target=W.producer, args=(q, p, n, seed + p, maxbody, 16, 60.0, 0.002)))
    outs = [str(tmp_path / f"c{i}") for i in range(2)]
    cons = [ctx.Process(target=W.consumer, args=(q, o, seed + 10 + i)) for i, o in enumerate(outs)]
    procs = prods + cons
    try:
        for p in cons + prods:
            p.start()
        for v in victims:
            time.sleep(rng.uniform(0.3 if method == "spawn" else 0.05, 1.0))
            os.kill(prods[v].pid, signal.SIGKILL)
        for v in victims:
            assert _join(prods[v], 10) == SIGKILLED
        survivors = [p for p in range(4) if p not in victims]
        codes = [_join(prods[p], 120) for p in survivors]
        assert codes == [0, 0], f"survivor producers: exit codes {codes} (seed {seed})"
        q.put_many([W.STOP, W.STOP], timeout=30)
        codes = [_join(c, 60) for c in cons]
        errs = [W.read_result(o)[1]["err"] if os.path.exists(o) else "no result" for o in outs]
        assert codes == [0, 0], f"consumers: exit codes {codes}, errors {errs} (seed {seed})"
        results = [W.read_result(o) for o in outs]
        seen = W.verify(results, {p: n for p in survivors})
        for v in victims:
            got = seen.get(v, [])
            assert got == list(range(len(got))), (
                f"dead producer {v}: delivered seqs are not a prefix (lost committed records?): "
                f"holes at {sorted(set(range(len(got))) - set(got))[:10]} (seed {seed})")
        assert q.qsize() == 0
        with pytest.raises(fastq.Empty):
            q.get(timeout=0.3)
    finally:
        W.kill_all(procs)
        q.close()
