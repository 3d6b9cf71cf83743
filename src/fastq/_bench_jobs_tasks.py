"""The no-op task of the jobs benchmark (fastq._bench_jobs), defined for
every tool that is importable, the same body for all: count the run in a
per-process counter file and, when the job carries its enqueue time, log
the enqueue -> handler-start latency.

Configured by the environment (set by the harness before it starts the
tools' workers): FASTQ_BJ_DIR (counter directory), FASTQ_BJ_REDIS (broker
URL of Celery, Dramatiq, RQ), FASTQ_BJ_APP (the fastq.jobs app directory).
"""
import mmap
import os
import struct
import time

_DIR = os.environ.get("FASTQ_BJ_DIR", "")
_REDIS = os.environ.get("FASTQ_BJ_REDIS", "")
_APP = os.environ.get("FASTQ_BJ_APP", "")
_me = {"pid": -1, "n": 0, "mm": None, "lat": -1}


def bump(t_enq_ns: int = 0) -> None:
    """The task body: +1 in this process's counter; the latency if timed."""
    now = time.monotonic_ns()
    if _me["pid"] != os.getpid():
        fd = os.open(os.path.join(_DIR, f"c.{os.getpid()}"), os.O_RDWR | os.O_CREAT, 0o600)
        os.ftruncate(fd, 8)
        _me.update(pid=os.getpid(), n=0, mm=mmap.mmap(fd, 8), lat=os.open(
            os.path.join(_DIR, f"l.{os.getpid()}"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600))
        os.close(fd)
    if t_enq_ns:
        os.write(_me["lat"], struct.pack("<q", now - t_enq_ns))
    _me["n"] += 1
    struct.pack_into("<Q", _me["mm"], 0, _me["n"])


def total(d: str) -> int:
    """Runs counted by every process so far."""
    n = 0
    for name in os.listdir(d):
        if name.startswith("c."):
            with open(os.path.join(d, name), "rb") as f:
                b = f.read(8)
            if len(b) == 8:
                n += struct.unpack("<Q", b)[0]
    return n


def latencies(d: str) -> list:
    out = []
    for name in os.listdir(d):
        if name.startswith("l."):
            with open(os.path.join(d, name), "rb") as f:
                b = f.read()
            out += [v for (v,) in struct.iter_unpack("<q", b[: len(b) // 8 * 8])]
    return out


def x_noop(t_enq_ns: int = 0) -> None:      # concurrent.futures and RQ call plain functions
    bump(t_enq_ns)


r_noop = x_noop

if _APP:
    from fastq.jobs import App

    fastq_app = App(_APP)

    @fastq_app.task(name="noop")
    def f_noop(t_enq_ns: int = 0) -> None:
        bump(t_enq_ns)

if _REDIS:
    try:
        from celery import Celery
    except ImportError:
        pass
    else:
        celery_app = Celery("fastq_bench", broker=_REDIS)
        celery_app.conf.update(task_ignore_result=True, worker_hijack_root_logger=False,
                               broker_connection_retry_on_startup=True)

        @celery_app.task(name="noop")
        def c_noop(t_enq_ns: int = 0) -> None:
            bump(t_enq_ns)
    try:
        import dramatiq
        from dramatiq.brokers.redis import RedisBroker
    except ImportError:
        pass
    else:
        dramatiq.set_broker(RedisBroker(url=_REDIS))

        @dramatiq.actor(queue_name="bench", max_retries=0)
        def d_noop(t_enq_ns: int = 0) -> None:
            bump(t_enq_ns)
