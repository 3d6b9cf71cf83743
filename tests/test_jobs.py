"""fastq.jobs: tasks, retries, dead letters, timeouts, a pool that drains on
SIGTERM, survives kill -9 of its workers and scales with the backlog,
deduplicated and delayed jobs, async tasks, results from any process."""
import asyncio
import multiprocessing as mp
import os
import signal
import sys
import time

import pytest

import fastq
from fastq import jobs
from fastq.jobs import App, Backoff, JobFailed, Pool

FAST = Backoff(initial=0.01, maximum=0.01, multiplier=1.0, jitter=0.0)
CTX = mp.get_context("fork")


def _lines(path):
    try:
        with open(path) as f:
            return f.read().split()
    except FileNotFoundError:
        return []


def _note(path, what):
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.write(fd, f"{what}\n".encode())   # one write, O_APPEND: whole lines from any process
    os.close(fd)


@pytest.fixture
def app(tmp_path):
    a = App(tmp_path / "app")
    yield a
    a.close()


def test_success_status_and_wait(app):
    @app.task
    def add(a, b=0):
        return a + b

    job = add.delay(2, b=3)
    assert job.status() == "queued" and job.id == "default:0"
    assert add(1, 1) == 2                                  # calling runs it here and now
    with pytest.raises(TimeoutError):
        job.wait(timeout=0.05)
    assert app.run_pending() == 1
    assert job.status() == "succeeded" and job.wait(timeout=1) == 5
    same = app.job(job.id)                                 # from an id, as another process would
    assert same.wait(0) == 5 and same.info()["attempts"] == 1
    assert app.stats()["results"] == {"succeeded": 1}


def test_expired_result(tmp_path):
    app = App(tmp_path / "app", result_ttl=0.2)
    try:
        @app.task
        def f():
            return 1

        job = f.delay()
        app.run_pending()
        assert job.wait(1) == 1
        time.sleep(0.3)
        assert job.status() == "expired"
        with pytest.raises(LookupError, match="result_ttl"):
            job.wait(timeout=5)
        assert app._results.purge() == 1
    finally:
        app.close()


def test_results_from_another_process(app):
    @app.task
    def square(x):
        return {"sq": x * x}

    job = square.delay(7)

    def waiter(path, jid, q):
        other = App(path)
        q.put(other.job(jid).wait(timeout=10))
        other.close()

    q = CTX.Queue()
    p = CTX.Process(target=waiter, args=(app.path, job.id, q))
    p.start()
    time.sleep(0.1)
    app.run_pending()
    assert q.get(timeout=10) == {"sq": 49}
    p.join(5)


def test_retry_then_success(app):
    calls = []

    @app.task(retry=FAST, max_deliveries=5, retry_on=(ConnectionError,))
    def flaky(n):
        calls.append(n)
        if len(calls) < 3:
            raise ConnectionError(f"try {len(calls)}")
        return "ok"

    job = flaky.delay(1)
    assert app.run_pending() == 1
    info = job.info()
    assert info["status"] == "retrying" and "ConnectionError: try 1" in info["error"]
    deadline = time.monotonic() + 5
    while job.status() != "succeeded" and time.monotonic() < deadline:
        app.run_pending(timeout=0.05)
    assert job.wait(1) == "ok" and len(calls) == 3 and job.info()["attempts"] == 3


def test_retries_exhausted_go_to_the_dlq_with_the_exception(app):
    @app.task(retry=FAST, max_deliveries=3)
    def broken(x):
        raise ValueError(f"bad input {x}")

    @app.task(retry=FAST, max_deliveries=3, retry_on=(ConnectionError,))
    def not_retried():
        raise KeyError("missing")

    job, job2 = broken.delay(42), not_retried.delay()
    deadline = time.monotonic() + 5
    while {job.status(), job2.status()} != {"dead"} and time.monotonic() < deadline:
        app.run_pending(timeout=0.05)
    with pytest.raises(JobFailed) as ei:
        job.wait(1)
    assert ei.value.error == "ValueError: bad input 42" and job.info()["attempts"] == 3
    assert job2.info()["attempts"] == 1                    # not in retry_on: dead at once
    dlq = fastq.open(os.path.join(app.path, "queues", "default", "dlq"), durable=True, fsync="never")
    letters = [fastq.DeadLetter.decode(r.data) for r in dlq.read()]
    dlq.close()
    by = {d.offset: d for d in letters}
    assert sorted(by) == [job.offset, job2.offset]
    assert by[job.offset].reason.startswith("ValueError: bad input 42") and "Traceback" in by[job.offset].reason
    assert by[job.offset].headers["task"] == broken.name and by[job.offset].deliveries == 3
    assert app.stats()["dead_lettered"] == 2


def test_unknown_task_is_dead_lettered(app, tmp_path):
    other = App(app.path)

    @other.task(name="only.elsewhere")
    def f():
        return 1

    job = f.delay()
    other.close()
    app.run_pending()
    assert job.status() == "dead" and "no task named 'only.elsewhere'" in job.info()["error"]


def test_task_options_are_checked(app):
    for kw, exc in (({"max_deliveries": 0}, ValueError), ({"timeout": -1}, ValueError),
                    ({"retry_on": "x"}, TypeError), ({"queue": "bad/name"}, ValueError),
                    ({"dedup": 3}, TypeError), ({"retry": 5}, TypeError)):
        with pytest.raises(exc):
            app.task(**kw)(lambda: None)
    with pytest.raises(ValueError, match="job id"):
        app.job("nonsense")
    app.task(name="t")(lambda: None).delay()
    with pytest.raises(ValueError, match="has 1 jobs"):
        app.job("default:1")
    with pytest.raises(ValueError, match="no queue 'other'"):
        app.job("other:0")
    with pytest.raises(ValueError, match="result_ttl"):
        App(app.path, result_ttl=0)


def test_dedup_within_and_outside_the_window(app):
    @app.task(dedup=lambda order_id: f"email:{order_id}", dedup_window=0.3)
    def send_email(order_id):
        return order_id

    a = send_email.delay(42)
    assert send_email.delay(42) == a                       # within the window: the same job
    b = send_email.delay(43)
    assert b != a
    assert send_email.enqueue((42,), dedup_key="other") not in (a, b)   # an explicit key
    time.sleep(0.35)
    c = send_email.delay(42)                               # outside: a new job
    assert c not in (a, b)
    assert app.run_pending() == 4


def test_delayed_jobs_fire_in_order_of_their_time(app, tmp_path):
    out = str(tmp_path / "order")

    @app.task
    def mark(tag):
        _note(out, f"{tag}:{time.time():.4f}")

    t0 = time.time()
    mark.delay_for(0.6, "c")
    mark.delay_at(fastq.log._dt.datetime.fromtimestamp(t0 + 0.2), "a")
    mark.delay_for(0.4, "b")
    mark.delay("now")
    with Pool(app, processes=1):
        deadline = time.monotonic() + 10
        while len(_lines(out)) < 4 and time.monotonic() < deadline:
            time.sleep(0.02)
    got = [ln.split(":") for ln in _lines(out)]
    assert [g[0] for g in got] == ["now", "a", "b", "c"]
    for tag, due in (("a", 0.2), ("b", 0.4), ("c", 0.6)):
        ts = float(dict(got)[tag])
        assert ts >= t0 + due - 0.01                       # never early (clock resolution)
        assert ts < t0 + due + 1.0                         # and not much later on a loaded machine


def test_async_task(app):
    @app.task
    async def fetch(x):
        await asyncio.sleep(0.01)
        return x * 2

    job = fetch.delay(21)
    with Pool(app, processes=1):
        assert job.wait(timeout=10) == 42


def test_running_status_and_timeout_kill(app, tmp_path):
    started = str(tmp_path / "started")

    @app.task(timeout=0.5, max_deliveries=2, retry=FAST)
    def hang():
        _note(started, os.getpid())
        time.sleep(60)

    @app.task
    def quick():
        return "fine"

    job = hang.delay()
    with Pool(app, processes=1) as pool:
        deadline = time.monotonic() + 10
        while not _lines(started) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert job.status() == "running"
        with pytest.raises(JobFailed, match="timed out"):
            job.wait(timeout=15)
        assert pool.killed == 2 and len(set(_lines(started))) == 2   # two attempts, two worker processes
        assert quick.delay().wait(timeout=10) == "fine"    # the replacement serves the queue
    assert job.info()["attempts"] == 2


def _pool_process(path, out, ready):
    import fastq.jobs as j
    app = j.App(path)

    @app.task(name="work")
    def work(i):
        time.sleep(0.002)
        _note(out, i)

    ready.set()
    sys.exit(j.Pool(app, processes=2, prefetch=8).run())


def _pool_under_load(app, out, n, done):
    """n "work" jobs, and a pool in its own process (_pool_process) that has
    run `done` of them; returns (the pool's process, the jobs)."""
    @app.task(name="work")
    def work(i):
        _note(out, i)

    js = [work.delay(i) for i in range(n)]
    ready = CTX.Event()
    p = CTX.Process(target=_pool_process, args=(app.path, out, ready))
    p.start()
    ready.wait(10)
    deadline = time.monotonic() + 20
    while len(_lines(out)) < done and time.monotonic() < deadline:
        time.sleep(0.01)
    return p, js


def test_sigterm_drains_under_load(app, tmp_path):
    out = str(tmp_path / "done")
    n = 3000
    p, jobs_ = _pool_under_load(app, out, n, 300)
    os.kill(p.pid, signal.SIGTERM)
    p.join(30)
    assert p.exitcode == 0                                 # drained cleanly
    done = _lines(out)
    assert 0 < len(done) < n
    assert len(done) == len(set(done))                     # a drain duplicates nothing
    finished = sum(j.status() == "succeeded" for j in jobs_)
    assert finished == len(done)                           # every job run has its result
    assert app.stats()["running"] == 0                     # nothing left leased
    while app.run_pending(limit=1000):
        pass
    done = _lines(out)
    assert sorted(map(int, done)) == list(range(n))        # nothing lost
    assert all(j.status() == "succeeded" for j in jobs_)


def test_kill_9_of_the_pool_itself(app, tmp_path):
    """The supervisor dies: its workers drain and exit (parent-death signal),
    their leases return, and a new pool finishes everything."""
    out = str(tmp_path / "done")
    n = 2000
    p, js = _pool_under_load(app, out, n, 200)
    log = app._log("default")
    assert sum(m["alive"] and m["role"] == "consumer" for m in log.members()) == 2
    os.kill(p.pid, signal.SIGKILL)
    p.join(10)
    deadline = time.monotonic() + 20
    while any(m["alive"] and m["role"] == "consumer" for m in log.members()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(m["alive"] and m["role"] == "consumer" for m in log.members())   # no orphan workers
    with Pool(app, processes=2):
        for j in js:
            assert j.wait(timeout=30) is None
    done = list(map(int, _lines(out)))
    assert set(done) == set(range(n)) and len(done) == n    # the orphans drained: nothing ran twice


def test_kill_9_of_workers_under_load(app, tmp_path):
    out = str(tmp_path / "done")

    @app.task(max_deliveries=5)
    def work(i):
        time.sleep(0.001)
        _note(out, i)

    n = 2000
    jobs_ = [work.delay(i) for i in range(n)]
    with Pool(app, processes=2, prefetch=8) as pool:
        for _ in range(3):
            deadline = time.monotonic() + 10
            target = len(_lines(out)) + 200
            while len(_lines(out)) < target and time.monotonic() < deadline:
                time.sleep(0.005)
            victim = next(iter(pool.procs.values()))
            os.kill(victim.pid, signal.SIGKILL)
        assert jobs_[-1].wait(timeout=60) is None
        for j in jobs_:
            assert j.wait(timeout=30) is None
    done = list(map(int, _lines(out)))
    assert set(done) == set(range(n))                      # nothing lost
    assert len(done) - n <= 3 * 8                          # duplicates only from the killed workers' leases


def test_autoscale_up_and_down(app, tmp_path):
    @app.task
    def slow(i):
        time.sleep(0.02)

    with Pool(app, autoscale=(1, 3), scale_interval=0.2, idle_timeout=0.5) as pool:
        assert pool.size == 1
        js = [slow.delay(i) for i in range(150)]
        peak = 1
        deadline = time.monotonic() + 30
        while not all(j.status() == "succeeded" for j in js[-5:]) and time.monotonic() < deadline:
            peak = max(peak, pool.size)
            time.sleep(0.05)
        assert peak == 3                                   # grew while the backlog did
        for j in js:
            j.wait(timeout=30)
        deadline = time.monotonic() + 10
        while pool.size > 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pool.size == 1                              # idle workers retired, down to the floor


def test_pool_arguments(app):
    for kw in ({"processes": 0}, {"autoscale": (3, 1)}, {"autoscale": (-1, 2)}):
        with pytest.raises(ValueError):
            Pool(app, **kw)
    with pytest.raises(TypeError):
        Pool("not an app")


def _open_results(path, barrier):
    barrier.wait(10)
    r = jobs._Results(path, 100)
    r.put_many([("q", os.getpid(), "t", "succeeded", None, None, 1)])
    r.close()


def test_results_store_opened_by_many_processes_at_once(tmp_path):
    """The first opens race to switch the new database to WAL and create the
    schema: SQLite answers "database is locked" without waiting; retried
    (found by the jobs benchmark: a worker died of it)."""
    for i in range(10):
        path = str(tmp_path / f"r{i}.sqlite3")
        b = CTX.Barrier(4)
        ps = [CTX.Process(target=_open_results, args=(path, b)) for _ in range(4)]
        for p in ps:
            p.start()
        for p in ps:
            p.join(30)
        assert [p.exitcode for p in ps] == [0] * 4
        assert jobs._Results(path, 100).counts("q") == {"succeeded": 4}
        assert os.stat(path).st_mode & 0o777 == 0o600
