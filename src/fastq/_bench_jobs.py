"""Jobs benchmark: no-op jobs through fastq.jobs against Celery, Dramatiq and
RQ (each on a private redis-server started here) and against a
concurrent.futures.ProcessPoolExecutor, all with 2 worker processes.

Two numbers per tool, measured in one run on one machine:

* **jobs/s**: the workers are started and warmed up (untimed); then one
  producer enqueues N no-op jobs as fast as the tool's client allows and the
  clock stops when the last one has run.  jobs/s = N / (last run - first
  enqueue): the whole pipeline, enqueue included.
* **latency**: one job at a time (the previous one has run, then a 2 ms
  pause), enqueue -> handler start, CLOCK_MONOTONIC across processes; p50/p99.

The task body is the same for every tool (fastq._bench_jobs_tasks.bump): it
counts the run in a per-process memory-mapped counter, which the harness
sums; a cell fails if the count is not exactly N (a lost or doubled job).
Each tool runs in its own spawned process (fresh imports, its own broker).

    python -m fastq bench --scenarios jobs [--quick] [--impls fastq,celery,...] [--install-peers]
    python -m fastq._bench_jobs [--quick] [--impls ...] [--json PATH] [--install-peers]

``--install-peers`` first installs what is missing: celery, dramatiq, rq and
redis-py with pip, and Debian's redis-server with apt-get (as root).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional

WORKERS = 2
IMPLS = ["fastq.jobs", "ProcessPoolExecutor", "celery", "dramatiq", "rq"]
# jobs per throughput cell (quick: a tenth); the slow tools get fewer so a cell stays ~seconds
N_JOBS = {"fastq.jobs": 40000, "ProcessPoolExecutor": 40000, "celery": 6000, "dramatiq": 6000, "rq": 600}
N_LAT = {"fastq.jobs": 300, "ProcessPoolExecutor": 300, "celery": 200, "dramatiq": 200, "rq": 50}
REDIS_TOOLS = ("celery", "dramatiq", "rq")


def available(name: str) -> Optional[str]:
    """None, or why the tool cannot run here."""
    if name in REDIS_TOOLS:
        from ._bench import RedisServer
        why = RedisServer.unavailable()
        if why:
            return why
        mod = {"celery": "celery", "dramatiq": "dramatiq", "rq": "rq"}[name]
        try:
            __import__(mod)
        except Exception as e:  # noqa: BLE001
            return f"{mod} is not importable ({e.__class__.__name__}; pip install {mod})"
    return None


def install_peers(log: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True)) -> None:
    """pip install the missing Python peers; apt-get install redis-server if it is missing (root only)."""
    import importlib.util
    missing = [m for m in ("celery", "dramatiq", "rq", "redis") if importlib.util.find_spec(m) is None]
    if missing:
        log(f"installing {', '.join(missing)} with pip")
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", *missing], check=False)
    if shutil.which("redis-server") is None:
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            log("redis-server is missing and cannot be installed here (needs root and apt-get): "
                "the Redis-backed tools will be skipped")
            return
        log("installing redis-server with apt-get")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=False, stdout=subprocess.DEVNULL)
        subprocess.run(["apt-get", "install", "-y", "-qq", "redis-server"], env=env, check=False,
                       stdout=subprocess.DEVNULL)


def _version(name: str) -> str:
    from importlib import metadata
    dist = {"fastq.jobs": "fastq", "celery": "celery", "dramatiq": "dramatiq", "rq": "rq"}.get(name)
    if dist is None:
        return f"Python {sys.version.split()[0]}"
    try:
        return f"{dist} {metadata.version(dist)}"
    except metadata.PackageNotFoundError:
        return dist


def _wait_count(d: str, target: int, timeout: float) -> float:
    """Wait until `target` runs were counted; returns the monotonic time it was seen."""
    from ._bench_jobs_tasks import total
    end = time.monotonic() + timeout
    while True:
        n = total(d)
        if n >= target:
            return time.monotonic()
        if time.monotonic() > end:
            raise TimeoutError(f"only {n} of {target} jobs ran within {timeout:.0f} s")
        time.sleep(0.0005)


def _cell(name: str, n: int, n_lat: int, out: Any) -> None:
    """In a spawned process: set up one tool, measure, tear down, report."""
    res: Dict[str, Any] = {"impl": name, "version": _version(name), "jobs": n}
    tmp = tempfile.mkdtemp(prefix="fastq-bench-jobs-")
    cdir = os.path.join(tmp, "counts")
    os.mkdir(cdir)
    os.environ["FASTQ_BJ_DIR"] = cdir
    procs: List[subprocess.Popen] = []
    server = None
    teardown: List[Callable[[], None]] = []
    try:
        if name in REDIS_TOOLS:
            from ._bench import RedisServer
            server = RedisServer(parent=tmp)
            server.start()
            os.environ["FASTQ_BJ_REDIS"] = f"redis://127.0.0.1:{server.port}/0"
            res["version"] += f", redis-server {server.version}"
        if name == "fastq.jobs":
            os.environ["FASTQ_BJ_APP"] = os.path.join(tmp, "app")
        from . import _bench_jobs_tasks as T
        env = dict(os.environ)
        if name == "fastq.jobs":
            from .jobs import Pool
            pool = Pool(T.fastq_app, processes=WORKERS).start()
            teardown.append(pool.stop)
            enqueue = T.f_noop.delay
        elif name == "ProcessPoolExecutor":
            from concurrent.futures import ProcessPoolExecutor
            ex = ProcessPoolExecutor(WORKERS, mp_context=mp.get_context("fork"))
            teardown.append(ex.shutdown)
            futs: List[Any] = []

            def enqueue(t: int = 0) -> None:
                futs.append(ex.submit(T.x_noop, t))
        elif name == "celery":
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "fastq._bench_jobs_tasks:celery_app", "worker",
                 "--concurrency", str(WORKERS), "--pool", "prefork", "--loglevel", "warning", "--without-gossip",
                 "--without-mingle", "--without-heartbeat"], env=env, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL))
            enqueue = T.c_noop.delay
        elif name == "dramatiq":
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "dramatiq", "fastq._bench_jobs_tasks", "--processes", str(WORKERS),
                 "--threads", "1"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            enqueue = T.d_noop.send
        elif name == "rq":
            import redis
            import rq
            conn = redis.Redis.from_url(os.environ["FASTQ_BJ_REDIS"])
            q = rq.Queue("bench", connection=conn)
            for _ in range(WORKERS):
                procs.append(subprocess.Popen(
                    [sys.executable, "-c", "import sys; from rq.cli import main; sys.exit(main())", "worker",
                     "--url", os.environ["FASTQ_BJ_REDIS"], "--quiet", "bench"], env=env,
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

            def enqueue(t: int = 0) -> None:
                q.enqueue(T.r_noop, t)
        else:
            raise ValueError(f"unknown tool {name}")
        # warm-up (untimed): workers started, connected, past their first jobs
        warm = 20
        for _ in range(warm):
            enqueue()
        _wait_count(cdir, warm, 60)
        # throughput
        t0 = time.monotonic()
        for _ in range(n):
            enqueue()
        t_enq = time.monotonic()
        t1 = _wait_count(cdir, warm + n, 120)
        res["rate"] = n / (t1 - t0)
        res["enqueue_rate"] = n / (t_enq - t0)
        # latency: one job at a time
        done = warm + n
        for _ in range(n_lat):
            enqueue(time.monotonic_ns())
            done += 1
            _wait_count(cdir, done, 30)
            time.sleep(0.002)
        lat = sorted(T.latencies(cdir))
        if len(lat) != n_lat:
            raise RuntimeError(f"{len(lat)} latency samples for {n_lat} timed jobs")
        res["p50_us"] = statistics.median(lat) / 1e3
        res["p99_us"] = lat[min(len(lat) - 1, int(len(lat) * 0.99))] / 1e3
        time.sleep(0.2)
        extra = T.total(cdir) - done
        if extra:
            raise RuntimeError(f"{extra} jobs ran more than once")
        res["status"] = "ok"
    except Exception as e:  # noqa: BLE001 - reported as a failed cell
        res["status"] = "failed"
        res["error"] = f"{type(e).__name__}: {e}"
    finally:
        for f in teardown:
            try:
                f()
            except Exception:  # noqa: BLE001
                pass
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        if server is not None:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    out.put(res)


def run(impls: Optional[List[str]] = None, quick: bool = False, progress: Optional[Callable[[str], None]] = None
        ) -> List[Dict[str, Any]]:
    rows = []
    for name in impls or IMPLS:
        why = available(name)
        if why is not None:
            rows.append({"impl": name, "status": "skipped", "error": why})
            continue
        if progress:
            progress(f"jobs: {name}")
        n = max(N_JOBS[name] // (10 if quick else 1), 50)
        n_lat = max(N_LAT[name] // (10 if quick else 1), 5)
        ctx = mp.get_context("spawn")
        out = ctx.Queue()
        p = ctx.Process(target=_cell, args=(name, n, n_lat, out))
        p.start()
        try:
            rows.append(out.get(timeout=600))
        except Exception:  # noqa: BLE001
            rows.append({"impl": name, "status": "failed", "error": "the cell did not report within 600 s"})
        p.join(30)
        if p.is_alive():
            p.kill()
    return rows


def format_table(rows: List[Dict[str, Any]]) -> str:
    base = next((r for r in rows if r["impl"] == "fastq.jobs" and r.get("status") == "ok"), None)
    lines = [f"jobs: no-op tasks, {WORKERS} worker processes, one producer; Redis-backed tools on a private "
             "redis-server (no persistence; fastq.jobs is durable: fsync every 50 ms)",
             f"{'tool':22} {'jobs/s':>10} {'fastq adv.':>10} {'enqueue/s':>10} {'p50 µs':>9} {'p99 µs':>9}  "
             "version"]
    for r in rows:
        if r.get("status") != "ok":
            lines.append(f"{r['impl']:22} {r.get('status')}: {r.get('error')}")
            continue
        adv = f"{base['rate'] / r['rate']:.1f}x" if base and r is not base else "-"
        lat = (f"{base['p50_us'] and r['p50_us'] / base['p50_us']:.1f}x" if base and r is not base else "")
        lines.append(f"{r['impl']:22} {r['rate']:>10,.0f} {adv:>10} {r['enqueue_rate']:>10,.0f} "
                     f"{r['p50_us']:>9,.0f} {r['p99_us']:>9,.0f}  {r['version']}"
                     + (f" (p50 {lat} of fastq's)" if lat else ""))
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fastq._bench_jobs", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a tenth of the jobs per cell")
    p.add_argument("--impls", default="", help=f"comma-separated: {', '.join(IMPLS)}")
    p.add_argument("--json", metavar="PATH")
    p.add_argument("--install-peers", action="store_true", help="install Celery, Dramatiq, RQ and redis-server first")
    a = p.parse_args(argv)
    if a.install_peers:
        install_peers()
    impls = [s.strip() for s in a.impls.split(",") if s.strip()] or None
    for i in impls or ():
        if i not in IMPLS:
            print(f"error: unknown tool {i!r}; known: {', '.join(IMPLS)}", file=sys.stderr)
            return 2
    rows = run(impls, a.quick, progress=lambda s: print(s, file=sys.stderr, flush=True))
    print(format_table(rows))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 1 if any(r.get("status") == "failed" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
