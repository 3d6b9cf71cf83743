"""``python -m fastq demo``: one producer and N worker processes in a consumer
group; midway one worker is killed with SIGKILL and its leases are
redelivered to the others.

The producer appends numbered messages whose payload carries its own CRC.
Each worker leases batches, checks every CRC, counts every message number it
processed in a shared array (processing = incrementing the count), then acks
the batch.  Midway the producer pauses until the parent has picked worker-0
as its victim; worker-0 then hangs on its next batch (a stuck job holding its
leases) and the parent kills it with SIGKILL: exactly those leases go back to
the group and are redelivered to the others, none is lost.  (A worker killed
between processing and ack would leave messages processed twice: delivery is
at-least-once; the summary counts them.)  The parent draws a progress line from the
log's lock-free stats (rate, lag, pending leases) and ends with a summary
checked against the array: lost = messages never processed (must be 0),
corrupt = bad CRCs (must be 0), and the sum of the processed message numbers.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import struct
import sys
import time
import zlib
from multiprocessing import shared_memory
from typing import Any, Dict, List, Optional

from . import log as _log

_HDR = struct.Struct("<QI")  # message number, crc32 of the filler
GROUP = "demo"


def _payload(i: int, size: int) -> bytes:
    filler = (i.to_bytes(8, "little") * (size // 8 + 1))[: size - _HDR.size]
    return _HDR.pack(i, zlib.crc32(filler)) + filler


def _producer(name: str, durable: bool, n: int, size: int, batch: int, midway: Any) -> None:
    log = _log.open(name, durable=durable)
    i = 0
    while i < n:
        if midway is not None and i >= n // 2 and not midway.is_set():
            midway.wait(60)  # the parent picks its victim while the workers wait for the second half
        k = min(batch, n - i)
        log.append_many([_payload(j, size) for j in range(i, i + k)])
        i += k
    log.close()


def _worker(name: str, durable: bool, shm_name: str, n: int, batch: int, index: int, stop: Any,
            midway: Any = None, stuck: Any = None) -> None:
    """midway/stuck (the victim only): once ``midway`` is set, its next batch
    hangs unprocessed and unacked (``stuck`` set) until the parent kills it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C
    shm = shared_memory.SharedMemory(shm_name)
    seen = shm.buf.cast("H")  # seen[i] = times message i was processed; seen[n] = corrupt ones
    log = _log.open(name, durable=durable)
    c = log.group(GROUP).consumer(f"worker-{index}")
    try:
        while not stop.is_set():
            msgs = c.get_many(batch, timeout=0.1)
            if msgs and midway is not None and midway.is_set():
                stuck.set()
                time.sleep(600)  # a hung job holding its leases: kill -9 comes
            for m in msgs:
                data = m.data
                i, crc = _HDR.unpack_from(data)
                if zlib.crc32(memoryview(data)[_HDR.size:]) != crc or i >= n:
                    seen[n] += 1
                else:
                    seen[i] += 1
            if msgs:
                c.ack(msgs)
    finally:
        c.close()
        log.close()
        seen.release()
        shm.close()


def _line(done: int, n: int, rate: float, g: Dict[str, Any], note: str = "", width: int = 28) -> str:
    fill = int(done / n * width) if n else width
    return (f"\r[{'#' * fill}{'.' * (width - fill)}] {done:>{len(f'{n:,}')},}/{n:,}  {rate / 1e6:5.2f} M msg/s  "
            f"lag {g['lag']:>9,}  pending {g['pending']:>5,}  redelivered {g['redelivered']:>5,}{note}")


def run_demo(messages: int, workers: int, size: int, batch: int, durable: Optional[str] = None,
             kill: bool = True, as_json: bool = False) -> int:
    if messages < 1 or workers < 1 or batch < 1:
        raise ValueError("--messages, --workers and --batch must be >= 1")
    if kill and workers < 2:
        raise ValueError("--workers must be >= 2 to kill one midway (or pass --no-kill)")
    if size < _HDR.size + 4 or size > (1 << 20):
        raise ValueError(f"--size must be between {_HDR.size + 4} and 1 MiB")
    if messages >= 1 << 32:
        raise ValueError("--messages must be below 2**32")
    if durable is not None:
        if os.path.exists(durable) and os.listdir(durable):
            raise ValueError(f"--durable {durable!r} is not empty: give a new or empty directory")
        name, is_durable = durable, True
        log = _log.open(name, durable=True, fsync="interval")
        where = f"durable log {durable!r} (fsync every 50 ms)"
    else:
        name, is_durable = f"fastq-demo-{os.getpid()}", False
        log = _log.open(name, capacity=max(64 << 20, 16 * batch * (size + 64)))
        where = f"shared-memory log {name!r}"
    out = sys.stderr
    ctx = mp.get_context("spawn")
    shm = shared_memory.SharedMemory(create=True, size=(messages + 1) * 2)
    shm.buf[:] = bytes(len(shm.buf))  # SharedMemory may round the size up
    seen = shm.buf.cast("H")
    stop = ctx.Event()
    procs: List[Any] = []
    try:
        log.group(GROUP, visibility_timeout=60.0, max_deliveries=16)
        print(f"fastq demo: {where}; 1 producer -> {workers} worker processes in group {GROUP!r}; "
              f"{messages:,} messages of {size} B" + ("; one worker is killed (SIGKILL) midway" if kill else ""),
              file=out)
        midway, stuck = (ctx.Event(), ctx.Event()) if kill else (None, None)
        procs = [ctx.Process(target=_worker, args=(name, is_durable, shm.name, messages, batch, k, stop)
                             + ((midway, stuck) if k == 0 else ()), daemon=True) for k in range(workers)]
        for p in procs:
            p.start()
        producer = ctx.Process(target=_producer, args=(name, is_durable, messages, size, batch, midway), daemon=True)
        t0 = time.perf_counter()
        producer.start()
        killed: Optional[Dict[str, Any]] = None
        note = ""
        last_draw = 0.0
        deadline = time.monotonic() + 600
        while True:
            st = log.stats()
            g = st["groups"][GROUP]
            done = g["low"]
            now = time.perf_counter()
            if kill and not midway.is_set() and done >= messages // 2:
                midway.set()  # the second half flows; worker-0 hangs on its next batch
            if kill and killed is None and stuck.is_set():
                victim = procs[0]
                held = _held_by(log, victim.pid)  # stable: it hangs before its ack
                os.kill(victim.pid, signal.SIGKILL)
                victim.join(10)
                killed = {"pid": victim.pid, "at": done, "leases_held": held}
                note = f"  << kill -9 worker-0 (pid {victim.pid}, holding {held} leases)"
                print(_line(done, messages, done / max(now - t0, 1e-9), g, note), file=out)
                note = ""
            if now - last_draw > 0.1 or done >= messages:
                print(_line(done, messages, done / max(now - t0, 1e-9), g, note), end="", file=out, flush=True)
                last_draw = now
            if done >= messages:
                break
            if producer.exitcode not in (None, 0):
                raise RuntimeError(f"producer died with exit code {producer.exitcode}")
            if all(not p.is_alive() for p in procs):
                raise RuntimeError("every worker died")
            if time.monotonic() > deadline:
                raise RuntimeError("demo did not finish in 10 minutes")
            time.sleep(0.02)
        elapsed = time.perf_counter() - t0
        print(file=out)
        stop.set()
        producer.join(30)
        for p in procs:
            p.join(30)
        g = log.stats()["groups"][GROUP]
        processed = seen[:messages].tolist()
        lost = processed.count(0)
        twice = messages - lost - processed.count(1)
        corrupt = seen[messages]
        total = sum(i for i, k in enumerate(processed) if k)
        ok = lost == 0 and corrupt == 0 and total == messages * (messages - 1) // 2
        summary = {"messages": messages, "seconds": round(elapsed, 3), "rate": round(messages / elapsed),
                   "workers": workers, "size": size, "durable": durable, "killed": killed,
                   "redelivered": g["redelivered"], "dead_lettered": g["dead_lettered"],
                   "processed_twice": twice, "lost": lost, "corrupt": corrupt, "checksum_ok": ok}
        if is_durable:
            log.flush()
            summary["durable_offset"] = log.stats()["durable_offset"]
        if as_json:
            print(json.dumps(summary, sort_keys=True))
        else:
            print(f"messages {messages:,} in {elapsed:.2f} s = {messages / elapsed / 1e6:.2f} M msg/s "
                  f"({messages * size / elapsed / 1e6:.0f} MB/s) through {workers} workers")
            if killed:
                print(f"killed worker pid {killed['pid']} at {killed['at']:,} done, holding {killed['leases_held']} leases; "
                      f"redelivered {g['redelivered']:,} (processed twice: {twice:,}, at-least-once)")
            print(f"dead-lettered {g['dead_lettered']}, corrupt {corrupt}, lost {lost}; "
                  f"sum of message numbers {'ok' if ok else 'MISMATCH'}")
            if is_durable:
                print(f"the log stays in {durable}: try `python -m fastq stat {durable}` and "
                      f"`python -m fastq verify {durable}`")
        return 0 if ok else 1
    finally:
        stop.set()
        for p in procs:
            if p.is_alive():
                p.join(5)
            if p.is_alive():
                p.kill()
        seen.release()
        shm.close()
        shm.unlink()
        if not is_durable:
            log.unlink()
        log.close()


def _held_by(log: _log.Log, pid: int) -> int:
    """Leases the consumer of process ``pid`` holds now."""
    return sum(m["leases"] for m in log.members() if m["pid"] == pid and m["role"] == "consumer")
