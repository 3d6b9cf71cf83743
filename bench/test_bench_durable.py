"""Micro-benchmarks of fastq's durable log (segment store), in one process.

Groups (compare within a group):
  durable-append        append() of one 64 B record, per fsync mode ("always" shows the
                        cost of one fdatasync per call)
  durable-append-many   append_many() of 256 x 64 B, per fsync mode (one flush per batch
                        with "always")
  durable-consume-ack   get_many(256) + one batch ack of 64 B records appended in the
                        untimed setup of each round
  durable-replay        Log.read(start=middle) of a 64 MiB log: time to the first record
                        (the index lookup) and to stream the rest

The side-by-side comparison with persist-queue, SQLite and Redis Streams is
``python -m fastq bench --scenarios durable,replay`` (fastq._bench_durable).
"""

from __future__ import annotations

import pytest

PAYLOAD = bytes(range(64))
BATCH = 256


@pytest.fixture(params=["never", "interval", "always"])
def durable_log(request, tmp_path, fastq_mod):
    log = fastq_mod.open(str(tmp_path / "log"), durable=True, fsync=request.param, segment_size=16 << 20)
    yield log
    log.close()


@pytest.mark.benchmark(group="durable-append")
def test_append(benchmark, durable_log):
    first = durable_log.stats()["head"]
    off = benchmark(durable_log.append, PAYLOAD)
    assert off >= first
    assert [r.data for r in durable_log.read(start=off, end=off + 1)] == [PAYLOAD]


@pytest.mark.benchmark(group="durable-append-many")
def test_append_many(benchmark, durable_log):
    items = [PAYLOAD] * BATCH
    offs = benchmark(durable_log.append_many, items)
    assert offs == list(range(offs[0], offs[0] + BATCH))
    if durable_log._fsync == "always":
        assert durable_log.stats()["durable_offset"] >= offs[-1] + 1


@pytest.mark.benchmark(group="durable-consume-ack")
def test_consume_ack(benchmark, tmp_path, fastq_mod):
    log = fastq_mod.open(str(tmp_path / "log"), durable=True, fsync="never", segment_size=16 << 20)
    consumer = log.group("bench", window=1024).consumer()
    items = [PAYLOAD] * BATCH

    def setup():
        log.append_many(items)
        return (), {}

    def run():
        msgs = consumer.get_many(BATCH, timeout=1.0)
        assert consumer.ack(msgs) == len(msgs) == BATCH

    benchmark.pedantic(run, setup=setup, rounds=200, iterations=1)
    assert log.stats()["groups"]["bench"]["lag"] == 0
    consumer.close()
    log.close()


@pytest.mark.benchmark(group="durable-replay")
def test_replay_from_middle(benchmark, tmp_path, fastq_mod):
    log = fastq_mod.open(str(tmp_path / "log"), durable=True, fsync="never", segment_size=4 << 20)
    rec = bytes(4096)
    n = (64 << 20) // len(rec)
    for i in range(0, n, 64):
        log.append_many([rec] * 64)
    mid = n // 2

    def first_record():
        r = next(log.read(start=mid))
        assert r.offset == mid
        return r

    benchmark(first_record)
    assert sum(len(r.data) for r in log.read(start=mid)) == (n - mid) * len(rec)
    log.close()
