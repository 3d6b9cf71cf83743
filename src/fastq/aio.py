"""asyncio forms of fastq's blocking calls.

>>> import asyncio, fastq
>>> from fastq import aio
>>> async def main():
...     log = fastq.open("doc-aio", capacity=1 << 20)
...     consumer = aio.AsyncConsumer(log.group("g").consumer())
...     waiting = asyncio.ensure_future(consumer.get(timeout=5))
...     await asyncio.sleep(0.01)            # the get is parked, the loop runs on
...     await aio.AsyncLog(log).append(b"hello")
...     m = await waiting
...     print(m.data, m.ack())
...     consumer.close(); log.unlink(); log.close()
>>> asyncio.run(main())
b'hello' True

Every call first tries the non-blocking form on the event loop's thread.
Only when it would block does the task wait — on an asyncio future, never
by blocking the loop or polling it: one *parked waiter* per handle and
event loop (a thread blocked in the queue's futex without the GIL) waits for
records (or space) and wakes the loop through ``call_soon_threadsafe``;
every task waiting on that handle then retries.  A ``get`` that is
cancelled or times out holds no lease: records are only ever taken on the
loop's thread, in the same step that returns them.

``ack``/``nack``/``extend`` of a ``Message`` never block: call them directly.
"""
from __future__ import annotations

import asyncio
import datetime as _dt
import threading
import time
import weakref
from typing import Any, AsyncIterator, Iterable, List, Mapping, Optional, Set, Union

from . import _core, _meta
from .log import Consumer, Log, Message, _not_before_ns
from .queue import Queue

__all__ = ["AsyncQueue", "AsyncLog", "AsyncConsumer"]

Empty = _core.Empty
Full = _core.Full

PARK_SECONDS = 5.0  # a parked waiter's longest futex wait; close() wakes it at once


class _Parker:
    """The parked waiter of one (handle, event loop, condition): a daemon
    thread that blocks in the queue's eventcount while tasks wait, and wakes
    them all through the loop when the condition may hold."""

    def __init__(self, ring: "_core.Ring", loop: asyncio.AbstractEventLoop, kind: int, group: int) -> None:
        self._ring = ring
        self._loop_ref = weakref.ref(loop)  # weak: the handle's table is keyed weakly by the loop
        self._kind = kind
        self._group = group
        self._lock = threading.Lock()
        self._waiters: Set[asyncio.Future] = set()
        self._need = (1, 0)      # space: the largest claim a waiter asked for
        self._thread: Optional[threading.Thread] = None
        self._closed = False
        self._last_wake = 0.0    # kept across threads: a restarted thread rate-limits too

    def wait(self, need: tuple = (1, 0)) -> "asyncio.Future[None]":
        """A future the parked waiter completes when the condition may hold
        (call from the loop's thread, after a non-blocking attempt failed)."""
        fut = asyncio.get_running_loop().create_future()
        with self._lock:
            if self._closed:
                raise ValueError("the handle is closed")
            self._waiters.add(fut)
            self._need = max(self._need, need)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name=f"fastq-aio-{'get' if self._kind == 0 else 'put'}")
                self._thread.start()
        fut.add_done_callback(self._forget)
        return fut

    def _forget(self, fut: "asyncio.Future[None]") -> None:
        with self._lock:
            self._waiters.discard(fut)

    def _run(self) -> None:
        error: Optional[BaseException] = None
        while True:
            with self._lock:
                stop = not self._waiters or self._closed
                if stop:
                    self._thread = None
                    # closed while tasks parked again after the last wake-up: fail them, never strand them
                    stranded, self._waiters = self._waiters, set()
                records, nbytes = self._need
            if stop:
                if stranded:
                    try:
                        _call_in(self._loop_ref, stranded, ValueError("the handle is closed"))
                    except RuntimeError:  # the loop is closed
                        pass
                return
            t0 = time.monotonic()
            if t0 - self._last_wake < 0.001:
                time.sleep(0.001)  # woken again at once: the condition holds but the retry got nothing
            try:
                ready = self._ring._park(self._kind, self._group, PARK_SECONDS, records, nbytes)
            except BaseException as e:  # closed meanwhile, or the queue is gone
                ready, error = True, e
            # early returns count as wake-ups too: the waiters' retry makes a
            # taker scan the window (expired leases, ended nack delays)
            if ready or time.monotonic() - t0 < PARK_SECONDS * 0.9:
                with self._lock:
                    woken, self._waiters = self._waiters, set()
                    self._need = (1, 0)
                if woken:
                    self._last_wake = time.monotonic()
                    try:
                        _call_in(self._loop_ref, woken, error)
                    except RuntimeError:  # the loop is closed
                        with self._lock:
                            self._thread = None
                        return
            if error is not None:
                with self._lock:
                    self._thread = None
                return

    def close(self) -> None:
        with self._lock:
            self._closed = True
            running = self._thread is not None
        if running:
            self._ring._wake_all()


def _call_in(loop_ref: "weakref.ref[asyncio.AbstractEventLoop]", futs: Set["asyncio.Future[None]"],
             error: Optional[BaseException]) -> None:
    """Complete ``futs`` on their loop's thread (RuntimeError: the loop is gone or closed)."""
    loop = loop_ref()
    if loop is None:
        raise RuntimeError("event loop collected")
    loop.call_soon_threadsafe(_wake, futs, error)


def _wake(futs: Iterable["asyncio.Future[None]"], error: Optional[BaseException]) -> None:
    for f in futs:
        if not f.done():
            if error is None:
                f.set_result(None)
            else:
                f.set_exception(error)


class _Handle:
    """Parkers of one ring handle, one per event loop and condition."""

    def __init__(self, ring: "_core.Ring") -> None:
        self._ring = ring
        self._parkers: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict]" = weakref.WeakKeyDictionary()

    def parker(self, kind: int, group: int = 0) -> _Parker:
        loop = asyncio.get_running_loop()
        per_loop = self._parkers.setdefault(loop, {})
        p = per_loop.get((kind, group))
        if p is None:
            p = per_loop[(kind, group)] = _Parker(self._ring, loop, kind, group)
        return p

    def close(self) -> None:
        for per_loop in list(self._parkers.values()):
            for p in per_loop.values():
                p.close()


def _frame(n: int) -> int:
    """Arena bytes of a record of n payload bytes (fq_frame_bytes: 32-byte header, 8-aligned)."""
    return (n + 32 + 7) & ~7


def _as_bytes(b: Any, what: str) -> bytes:
    if type(b) is bytes:
        return b
    if isinstance(b, str):
        raise TypeError(f"{what} must be bytes-like, not str (encode it first)")
    return bytes(memoryview(b).cast("B"))


def _claims(ring: "_core.Ring", sizes: List[int]) -> List[tuple]:
    """Split a batch of payload sizes exactly as Ring._append_many claims it:
    [(start, end, frame bytes)], one claim each."""
    limit = max(min(ring._limit_records, 4096), 1)
    half = ring.capacity // 2
    out, i, n = [], 0, len(sizes)
    while i < n:
        j, nbytes = i, 0
        while j < n and j - i < limit:
            fb = _frame(sizes[j])
            if j > i and nbytes + fb > half:
                break
            nbytes += fb
            j += 1
        out.append((i, j, nbytes))
        i = j
    return out


def _remaining(deadline: Optional[float]) -> Optional[float]:
    return None if deadline is None else deadline - time.monotonic()


def _deadline(timeout: Optional[float]) -> Optional[float]:
    if timeout is None:
        return None
    timeout = float(timeout)
    if not timeout >= 0:
        raise ValueError("'timeout' must be a non-negative number")
    return time.monotonic() + timeout


async def _park(fut: "asyncio.Future[None]", deadline: Optional[float]) -> bool:
    """Wait for the parker's wake-up; False when the deadline passed first."""
    left = _remaining(deadline)
    if left is None:
        await fut
        return True
    if left <= 0:
        fut.cancel()
        return False
    try:
        await asyncio.wait_for(fut, left)
        return True
    except asyncio.TimeoutError:
        return False


class AsyncConsumer:
    """``async`` get/get_many/iteration over a :class:`fastq.Consumer`."""

    def __init__(self, consumer: Consumer) -> None:
        if not isinstance(consumer, Consumer):
            raise TypeError(f"AsyncConsumer wraps a fastq.Consumer, not {type(consumer).__name__}")
        self.consumer = consumer
        self._h = _Handle(consumer._ring)

    async def get_many(self, max_messages: int = 256, timeout: Optional[float] = None) -> List[Message]:
        """Up to ``max_messages`` messages; ``[]`` if none came within ``timeout``."""
        deadline = _deadline(timeout)
        while True:
            msgs = self.consumer.get_many(max_messages, timeout=0)
            if msgs:
                return msgs
            if not await _park(self._h.parker(0, self.consumer._g).wait(), deadline):
                return self.consumer.get_many(max_messages, timeout=0)

    async def get(self, timeout: Optional[float] = None) -> Message:
        """The next message; raises ``fastq.Empty`` when none came in time."""
        got = await self.get_many(1, timeout=timeout)
        if not got:
            raise Empty
        return got[0]

    async def ack(self, messages: List[Message]) -> int:
        """Ack a batch (never blocks; a coroutine for symmetry)."""
        return self.consumer.ack(messages)

    def __aiter__(self) -> AsyncIterator[Message]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Message]:
        while not self.consumer._closed:
            try:
                msgs = await self.get_many(256, timeout=1.0)
            except ValueError:
                if self.consumer._closed:
                    return
                raise
            for m in msgs:
                yield m

    def close(self) -> None:
        """Close the consumer (its leases go back to the group at once)."""
        self._h.close()
        self.consumer.close()

    async def __aenter__(self) -> "AsyncConsumer":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.close()


class AsyncLog:
    """``async`` append/append_many over a :class:`fastq.Log`.  A
    shared-memory log waits (parked) while its slowest group holds the
    space; a durable log never waits for groups, and with ``fsync="always"``
    its flush runs in the loop's default executor."""

    def __init__(self, log: Log) -> None:
        if not isinstance(log, Log):
            raise TypeError(f"AsyncLog wraps a fastq.Log, not {type(log).__name__}")
        self.log = log
        self._h = _Handle(log._ring)

    async def append(self, data: Union[bytes, bytearray, memoryview], *, key: Optional[bytes] = None,
                     headers: Optional[Mapping[str, Union[str, bytes]]] = None, delay: Optional[float] = None,
                     not_before: Optional[_dt.datetime] = None, timeout: Optional[float] = None,
                     dedup_key: Optional[Union[str, bytes]] = None, dedup_window: Optional[float] = None) -> int:
        if dedup_key is not None or dedup_window is not None:
            return await self._append_dedup(data, key, headers, _not_before_ns(delay, not_before), timeout,
                                            dedup_key, dedup_window)
        return (await self._append([data], None if key is None else [key], None if headers is None else [headers],
                                   _not_before_ns(delay, not_before), timeout))[0]

    async def append_many(self, items: Iterable[Union[bytes, bytearray, memoryview]], *,
                          keys: Optional[Iterable[Optional[bytes]]] = None,
                          headers: Optional[Iterable[Optional[Mapping[str, Union[str, bytes]]]]] = None,
                          delay: Optional[float] = None, not_before: Optional[_dt.datetime] = None,
                          timeout: Optional[float] = None) -> List[int]:
        return await self._append(list(items), None if keys is None else list(keys),
                                  None if headers is None else list(headers), _not_before_ns(delay, not_before),
                                  timeout)

    async def _append_dedup(self, data: Any, key: Any, headers: Any, nb: Optional[int], timeout: Optional[float],
                            dedup_key: Any, dedup_window: Optional[float]) -> int:
        """Log.append(dedup_key=...) without blocking the loop: a full log
        parks as _append does; an append of the same key in flight in another
        process (at most its claim -> commit, unless that one waits for space)
        is waited out with a short backoff."""
        log = self.log
        if log.durable and log._fsync == "always":
            return await asyncio.get_running_loop().run_in_executor(
                None, lambda: log._append_dedup(data, key, headers, nb, timeout, dedup_key, dedup_window, True))
        deadline = _deadline(timeout)
        pause = 0.0002
        while True:
            try:
                return log._append_dedup(data, key, headers, nb, 0, dedup_key, dedup_window, False)
            except _core._DedupInFlight:
                left = _remaining(deadline)
                if left is not None and left <= 0:
                    raise
                await asyncio.sleep(pause if left is None else min(pause, left))
                pause = min(pause * 2, 0.02)
            except _core.Full:
                size = len(_as_bytes(data, "data")) + 4096 + 8  # a bound on key + headers + not-before
                if not await _park(self._h.parker(1).wait((1, _frame(min(size, log._ring.max_message_size)))),
                                   deadline):
                    return log._append_dedup(data, key, headers, nb, 0, dedup_key, dedup_window, False)

    async def _append(self, items: list, keys: Optional[list], headers: Optional[list], nb: Optional[int],
                      timeout: Optional[float]) -> List[int]:
        if self.log.durable and self.log._fsync == "always":
            loop = asyncio.get_running_loop()
            kw = {} if nb is None else {"not_before": _dt.datetime.fromtimestamp(nb / 1e9, _dt.timezone.utc)}
            return await loop.run_in_executor(
                None, lambda: self.log.append_many(items, keys=keys, headers=headers, **kw))
        deadline = _deadline(timeout)
        ring = self.log._ring
        n = len(items)
        if (keys is not None and len(keys) != n) or (headers is not None and len(headers) != n):
            raise ValueError(f"append_many got {n} items, {len(keys or ())} keys and {len(headers or ())} headers")
        items = [_as_bytes(x, "data") for x in items]
        # every record's prefix (key, or key and headers) encoded and checked before anything is appended
        enc = [_meta.encode(None if keys is None or keys[i] is None else _as_bytes(keys[i], "key"),
                            None if headers is None else headers[i], nb) for i in range(n)]
        prefixes, flags = [e[0] for e in enc], [e[1] for e in enc]
        sizes = [len(x) + (len(p) if p is not None else 0) for x, p in zip(items, prefixes)]
        maxp = min(ring.capacity // 4, 0xFFFFFFF0) - 32
        if any(p is not None and len(p) > 4096 for p in prefixes):
            raise ValueError("a key is longer than 4096 bytes")
        if any(k > maxp for k in sizes):
            raise ValueError(f"a record is larger than the largest record this log can hold ({maxp} bytes)")
        # a claim of the batch can be Full after earlier claims were committed:
        # append claim by claim, so a retry never appends committed records again
        offsets: List[int] = []
        for i, j, nbytes in _claims(ring, sizes):
            args = (items[i:j], True, 0, prefixes[i:j], flags[i:j])
            while True:
                try:
                    offsets += ring._append_many(*args)
                    break
                except Full:
                    if not await _park(self._h.parker(1).wait((j - i, nbytes)), deadline):
                        offsets += ring._append_many(*args)
                        break
        return offsets

    def close(self) -> None:
        self._h.close()
        self.log.close()


class AsyncQueue:
    """``async`` put/get/get_many over a :class:`fastq.Queue` (the same
    objects, serializer and bounds)."""

    def __init__(self, queue: Queue) -> None:
        if not isinstance(queue, _core.Ring) or not hasattr(queue, "put"):
            raise TypeError(f"AsyncQueue wraps a fastq.Queue, not {type(queue).__name__}")
        self.queue = queue
        self._h = _Handle(queue)

    async def put(self, obj: Any, timeout: Optional[float] = None) -> None:
        """Put ``obj``; raises ``fastq.Full`` if there was no room within ``timeout``."""
        deadline = _deadline(timeout)
        need: Optional[tuple] = None
        while True:
            try:
                return self.queue.put_nowait(obj)
            except Full:
                if need is None:  # park until a record of this size may fit
                    dumps = self.queue._dumps
                    need = (1, _frame(memoryview(dumps(obj) if dumps is not None else obj).nbytes))
                if not await _park(self._h.parker(1).wait(need), deadline):
                    return self.queue.put_nowait(obj)

    async def get(self, timeout: Optional[float] = None) -> Any:
        """The next item; raises ``fastq.Empty`` when none came within ``timeout``."""
        deadline = _deadline(timeout)
        while True:
            try:
                return self.queue.get_nowait()
            except Empty:
                if not await _park(self._h.parker(0, 0).wait(), deadline):
                    return self.queue.get_nowait()

    async def get_many(self, max_messages: int = 256, timeout: Optional[float] = None) -> List[Any]:
        """Up to ``max_messages`` items; ``[]`` if none came within ``timeout``."""
        deadline = _deadline(timeout)
        while True:
            try:
                return self.queue.get_many(max_messages, block=False)
            except Empty:
                pass
            if not await _park(self._h.parker(0, 0).wait(), deadline):
                try:
                    return self.queue.get_many(max_messages, block=False)
                except Empty:
                    return []

    def close(self) -> None:
        self._h.close()
        self.queue.close()
