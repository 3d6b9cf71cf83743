"""``python -m fastq demo``: one producer and N worker processes share a queue.

The producer sends numbered messages whose payload carries its own checksum;
each worker verifies every payload and reports, per batch, how many it saw,
the sum of their numbers and the count of bad checksums on a second queue.
The parent draws a progress bar and ends with a summary: messages/s, lost
(expected minus received), duplicated and corrupt — all must be 0.
"""
from __future__ import annotations

import multiprocessing as mp
import struct
import sys
import time
import zlib
from typing import Optional

from .queue import Queue

_HDR = struct.Struct("<QI")  # message number, crc32 of the filler


def _payload(i: int, size: int) -> bytes:
    filler = (i.to_bytes(8, "little") * (size // 8 + 1))[: size - _HDR.size]
    return _HDR.pack(i, zlib.crc32(filler)) + filler


def _producer(q: Queue, n: int, size: int, batch: int) -> None:
    i = 0
    while i < n:
        k = min(batch, n - i)
        if k == 1:
            q.put(_payload(i, size))
        else:
            q.put_many([_payload(j, size) for j in range(i, i + k)])
        i += k


def _worker(q: Queue, results: Queue, batch: int) -> None:
    while True:
        msgs = q.get_many(batch) if batch > 1 else [q.get()]
        count = total = bad = stops = 0
        for m in msgs:
            if m == b"STOP":
                stops += 1
                continue
            i, crc = _HDR.unpack_from(m)
            if zlib.crc32(memoryview(m)[_HDR.size:]) != crc:
                bad += 1
            count += 1
            total += i
        if count:
            results.put((count, total, bad))
        if stops:
            for _ in range(stops - 1):  # one STOP per worker: hand back the others
                q.put(b"STOP")
            results.put(None)
            return


def _bar(done: int, n: int, t0: float, width: int = 32) -> str:
    frac = done / n if n else 1.0
    fill = int(frac * width)
    rate = done / max(time.perf_counter() - t0, 1e-9)
    return f"\r[{'#' * fill}{'.' * (width - fill)}] {done:>{len(str(n))}}/{n} {rate / 1e6:6.2f} M msg/s"


def run_demo(messages: int, workers: int, size: int, batch: int, name: Optional[str] = None) -> int:
    if messages < 1 or workers < 1 or batch < 1:
        raise ValueError("--messages, --workers and --batch must be >= 1")
    if size < _HDR.size + 4:
        raise ValueError(f"--size must be >= {_HDR.size + 4}")
    ctx = mp.get_context("spawn")
    capacity = max(64 << 20, 8 * (size + 64))
    q = Queue(capacity=capacity, serializer=None, name=name)
    results = Queue()
    try:
        print(f"fastq demo: 1 producer -> {workers} workers, {messages:,} messages of {size} B, "
              f"batches of {batch}, spawned processes", file=sys.stderr)
        procs = [ctx.Process(target=_worker, args=(q, results, batch), daemon=True) for _ in range(workers)]
        for p in procs:
            p.start()
        producer = ctx.Process(target=_producer, args=(q, messages, size, batch), daemon=True)
        t0 = time.perf_counter()
        producer.start()
        received = total = bad = 0
        finished = 0
        last_draw = 0.0
        stops_sent = False
        while finished < workers:
            item = results.get(timeout=60)
            if item is None:
                finished += 1
                continue
            c, s, b = item
            received += c
            total += s
            bad += b
            now = time.perf_counter()
            if now - last_draw > 0.1:
                print(_bar(received, messages, t0), end="", file=sys.stderr, flush=True)
                last_draw = now
            if received >= messages and not stops_sent:
                for _ in range(workers):
                    q.put(b"STOP")
                stops_sent = True
            if not stops_sent and not producer.is_alive() and producer.exitcode not in (0, None):
                raise RuntimeError(f"producer died with exit code {producer.exitcode}")
        elapsed = time.perf_counter() - t0
        print(_bar(received, messages, t0), file=sys.stderr)
        producer.join(10)
        for p in procs:
            p.join(10)
        expected_sum = messages * (messages - 1) // 2
        lost = max(messages - received, 0)
        dup = max(received - messages, 0)
        print(f"messages: {received:,} in {elapsed:.2f} s = {received / elapsed / 1e6:.2f} M msg/s "
              f"({received * size / elapsed / 1e6:.0f} MB/s)")
        print(f"lost = {lost}, duplicated = {dup}, corrupt = {bad}, "
              f"checksum of message numbers {'ok' if total == expected_sum and not dup else 'MISMATCH'}")
        return 0 if (lost == 0 and dup == 0 and bad == 0 and total == expected_sum) else 1
    finally:
        if name is not None:
            q.unlink()
        q.close()
        results.close()
