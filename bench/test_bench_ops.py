"""What monitoring costs (issue: "stat on a queue under full load does not slow
it measurably").

Groups (compare within a group):
  ops-stats            one Log.stats() call (what `fastq stat`, the exporter and
                       the demo's progress line read): a shared-memory log with 4
                       groups holding leases, and a durable log
  ops-stat-under-load  records/s of a producer process -> consumer process
                       pipeline (append_many / get_many + ack, 256 x 64 B) with
                       no observer, with an observer process reading stats() 10
                       times a second (`fastq stat --watch 0.1`), and with one
                       reading it in a tight loop (the worst case)

The ratio of the three cells is the cost of being watched.
"""

from __future__ import annotations

import multiprocessing as mp
import time
import uuid

import pytest

PAYLOAD = bytes(range(64))
BATCH = 256


@pytest.mark.benchmark(group="ops-stats")
@pytest.mark.parametrize("kind", ["shared-memory", "durable"])
def test_stats(benchmark, fastq_mod, tmp_path, kind):
    if kind == "durable":
        log = fastq_mod.open(str(tmp_path / "log"), durable=True, fsync="never", segment_size=16 << 20)
    else:
        log = fastq_mod.open("bops-" + uuid.uuid4().hex, capacity=16 << 20)
    consumers = []
    try:
        log.append_many([PAYLOAD] * 10_000)
        for g in range(4):
            c = log.group(f"g{g}").consumer(f"c{g}")
            c.get_many(100, timeout=1.0)  # leases held: stats walks each group's window
            consumers.append(c)
        st = benchmark(log.stats)
        assert len(st["groups"]) == 4 and all(g["pending"] == 100 for g in st["groups"].values())
    finally:
        for c in consumers:
            c.close()
        if kind != "durable":
            log.unlink()
        log.close()


def _produce(name: str, n: int, go) -> None:
    import fastq
    log = fastq.open(name)
    items = [PAYLOAD] * BATCH
    go.wait(60)
    for _ in range(n // BATCH):
        log.append_many(items)
    log.close()


def _consume(name: str, n: int, ready) -> None:
    import fastq
    log = fastq.open(name)
    with log.group("work").consumer("bench") as c:
        ready.set()
        got = 0
        while got < n:
            msgs = c.get_many(BATCH, timeout=5.0)
            if not msgs:
                raise RuntimeError(f"consumer starved at {got}/{n}")
            c.ack(msgs)
            got += len(msgs)
    log.close()


def _observe(name: str, interval: float, ready, stop) -> None:
    from fastq import _ops
    log = _ops.open_target(name)  # as `fastq stat` does: an observer, no member slot
    log.stats()
    ready.set()
    while not stop.is_set():
        log.stats()
        if interval:
            time.sleep(interval)
    log.close()


@pytest.mark.benchmark(group="ops-stat-under-load")
@pytest.mark.parametrize("observer", ["none", "10-per-second", "tight-loop"])
def test_pipeline_while_watched(benchmark, fastq_mod, quick, observer):
    """Timed: from the producer's go to the consumer's last ack (processes
    started, imported and attached in the untimed setup)."""
    n = (20_000 if quick else 1_000_000) // BATCH * BATCH
    ctx = mp.get_context("spawn")
    runs = []

    def setup():
        run = {"name": "bops-" + uuid.uuid4().hex, "procs": []}
        runs.append(run)
        run["log"] = log = fastq_mod.open(run["name"], capacity=32 << 20)
        log.group("work")
        run["stop"] = stop = ctx.Event()
        watching, consuming, run["go"] = ctx.Event(), ctx.Event(), ctx.Event()
        if observer != "none":
            run["procs"].append(ctx.Process(target=_observe, args=(
                run["name"], 0.1 if observer == "10-per-second" else 0.0, watching, stop)))
        else:
            watching.set()
        run["cons"] = ctx.Process(target=_consume, args=(run["name"], n, consuming))
        run["prod"] = ctx.Process(target=_produce, args=(run["name"], n, run["go"]))
        run["procs"] += [run["cons"], run["prod"]]
        for p in run["procs"]:
            p.start()
        assert watching.wait(60) and consuming.wait(60)
        time.sleep(0.3)  # the producer has imported fastq too
        return (run,), {}

    def pipeline(run):
        run["go"].set()
        run["prod"].join(120)
        run["cons"].join(120)

    try:
        benchmark.pedantic(pipeline, setup=setup, rounds=1 if quick else 5, iterations=1)
        for run in runs:
            assert run["prod"].exitcode == 0 and run["cons"].exitcode == 0
            assert run["log"].stats()["groups"]["work"]["low"] == n
    finally:
        for run in runs:
            run["stop"].set()
            for p in run["procs"]:
                p.join(10)
                if p.is_alive():
                    p.kill()
            run["log"].unlink()
            run["log"].close()
    benchmark.extra_info["records"] = n
