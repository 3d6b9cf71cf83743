"""Micro-benchmarks of fastq.Queue (raw bytes) and a cross-process cell.

Groups (compare within a group):
  roundtrip-<size>   put + get of one message in one process (fastq, faster-fifo, mp.Queue)
  batch-256x64B      put_many of 256 x 64 B + get_many until all 256 are back
  group-consume-ack  fastq.Log consumer group, in one process: get_many(256) of
                     64 B records + one batch ack (the 256 records are appended
                     in the untimed setup of each round)
  process-1x1        one "1x1 single" cell of fastq._bench (spawned producer and
                     consumer processes); the throughput is in extra_info["msg_per_s"],
                     the timed figure includes process start-up.
"""

from __future__ import annotations

import multiprocessing
import os

import pytest

SIZES = [64, 1 << 10, 16 << 10, 64 << 10]
SIZE_IDS = ["64B", "1KiB", "16KiB", "64KiB"]
CAPACITY = 8 << 20
BATCH = 256


def _payload(size: int) -> bytes:
    return bytes((i * 7 + 3) & 0xFF for i in range(size))


class _Ops:
    """put / get / put_many / get_many of one in-process queue."""

    def __init__(self, put, get, put_many=None, get_many=None, close=lambda: None):
        self.put, self.get, self.put_many, self.get_many, self.close = (
            put, get, put_many, get_many, close)


def _make(impl: str, request) -> _Ops:
    if impl == "fastq":
        fastq = request.getfixturevalue("fastq_mod")
        q = fastq.Queue(maxsize=0, capacity=CAPACITY, serializer=None)
        return _Ops(q.put, q.get, q.put_many, lambda: q.get_many(BATCH), q.close)
    if impl == "faster-fifo":
        ff = pytest.importorskip("faster_fifo")
        q = ff.Queue(max_size_bytes=CAPACITY, loads=bytes, dumps=lambda x: x)
        return _Ops(q.put, q.get, q.put_many, lambda: q.get_many(max_messages_to_get=BATCH))
    if impl == "mp.Queue":
        q = multiprocessing.get_context("spawn").Queue()

        def close():
            q.close()
            q.join_thread()
        return _Ops(q.put, q.get, close=close)
    raise ValueError(impl)


@pytest.fixture
def ops(request):
    o = _make(request.param, request)
    yield o
    o.close()


@pytest.mark.parametrize("size", SIZES, ids=SIZE_IDS)
@pytest.mark.parametrize("ops", ["fastq", "faster-fifo", "mp.Queue"], indirect=True)
def test_roundtrip(benchmark, ops, size):
    benchmark.group = f"roundtrip-{SIZE_IDS[SIZES.index(size)]}"
    payload = _payload(size)
    put, get = ops.put, ops.get

    def roundtrip():
        put(payload)
        return get()

    assert benchmark(roundtrip) == payload


@pytest.mark.parametrize("ops", ["fastq", "faster-fifo"], indirect=True)
def test_batch_256x64(benchmark, ops):
    benchmark.group = "batch-256x64B"
    msgs = [_payload(64) for _ in range(BATCH)]
    put_many, get_many = ops.put_many, ops.get_many

    def batch():
        put_many(msgs)
        out = get_many()
        while len(out) < BATCH:  # get_many may return fewer than asked for
            out += get_many()
        return out

    out = benchmark(batch)
    assert len(out) == BATCH and out[0] == msgs[0] and out[-1] == msgs[-1]


def test_group_consume_ack(benchmark, fastq_mod):
    """Consume + batch ack of 256 x 64 B records by one consumer of a group."""
    benchmark.group = "group-consume-ack"
    log = fastq_mod.open(f"bench-group-{os.getpid()}", capacity=CAPACITY, window=4096)
    try:
        g = log.group("bench", start="earliest", visibility_timeout=30.0, max_deliveries=None,
                      dead_letter=None, window=4096)
        records = [_payload(64) for _ in range(BATCH)]
        with g.consumer() as c:
            get_many, ack = c.get_many, c.ack

            def consume_ack():
                msgs = get_many(BATCH, timeout=1.0)
                return len(msgs), ack(msgs), msgs[0].data

            got, acked, first = benchmark.pedantic(
                consume_ack, setup=lambda: log.append_many(records) and None,
                rounds=200, iterations=1, warmup_rounds=5)
        assert got == acked == BATCH and first == records[0]
        st = g.stats()
        assert st["pending"] == 0 and st["lag"] == 0 and st["redelivered"] == 0
        benchmark.extra_info["records_per_round"] = BATCH
    finally:
        log.unlink()
        log.close()


_PEER_MODULE = {"faster-fifo": "faster_fifo", "zmq": "zmq"}


@pytest.mark.parametrize("impl", ["fastq", "mp.Queue", "faster-fifo", "zmq"])
def test_process_1x1(benchmark, bench_mod, quick, impl, request):
    """One cross-process '1x1 single' cell of the comparison runner."""
    if impl == "fastq":
        request.getfixturevalue("fastq_mod")
    elif impl in _PEER_MODULE:
        pytest.importorskip(_PEER_MODULE[impl])
    benchmark.group = "process-1x1"
    duration = 0.1 if quick else 0.5
    res = benchmark.pedantic(bench_mod.run_cell, args=("1x1 single", impl),
                             kwargs={"duration": duration}, rounds=1, iterations=1)
    assert res["status"] == "ok", res.get("error")
    assert res["messages"] > 0
    benchmark.extra_info["msg_per_s"] = round(res["rate"])
    benchmark.extra_info["messages"] = res["messages"]
