"""Logs with consumer groups: per-message acks, redelivery, retries with
backoff and dead letters, over the same shared-memory engine as fastq.Queue.

>>> import fastq
>>> log = fastq.open("doc-orders", capacity=1 << 20)
>>> log.append(b"order-1")
0
>>> billing = log.group("billing", visibility_timeout=30.0, max_deliveries=5)
>>> with billing.consumer() as c:
...     m = c.get(timeout=1.0)
...     (m.offset, m.data, m.deliveries, m.ack())
(0, b'order-1', 1, True)
>>> log.unlink(); log.close()
"""
from __future__ import annotations

import pickle
import random
import time
from dataclasses import dataclass
from typing import Any, Dict, Iterable, Iterator, List, Optional, Union

from . import _core
from ._core import Message

__all__ = ["open", "Log", "Group", "Consumer", "Message", "Backoff", "DeadLetter"]

DEFAULT_LOG_CAPACITY = 64 << 20
_START = {"earliest": 0, "latest": 1}


@dataclass(frozen=True)
class Backoff:
    """Retry delay for ``nack()`` without a delay: ``initial * multiplier**(deliveries-1)``,
    capped at ``maximum``, then spread by ±``jitter`` (a fraction)."""
    initial: float = 0.5
    maximum: float = 60.0
    multiplier: float = 2.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if not (self.initial >= 0 and self.maximum >= self.initial and self.multiplier >= 1 and 0 <= self.jitter <= 1):
            raise ValueError("Backoff needs 0 <= initial <= maximum, multiplier >= 1 and 0 <= jitter <= 1")
        if self.maximum > 4e6:
            raise ValueError("Backoff maximum must be below 4,000,000 seconds")

    def delay(self, deliveries: int) -> float:
        d = min(self.maximum, self.initial * self.multiplier ** max(deliveries - 1, 0))
        if self.jitter:
            d *= 1.0 + random.uniform(-self.jitter, self.jitter)
        return max(d, 0.0)

    def _packed(self) -> tuple:
        return (round(self.initial * 1000), round(self.maximum * 1000), round(self.multiplier * 1000),
                round(self.jitter * 1000))

    @classmethod
    def _unpack(cls, t: tuple) -> "Backoff":
        return cls(t[0] / 1000, t[1] / 1000, t[2] / 1000, t[3] / 1000)


@dataclass(frozen=True)
class DeadLetter:
    """What a dead-letter queue holds for each message it received: decode a
    record of the DLQ with ``DeadLetter.decode(message.data)``."""
    log: str
    group: str
    offset: int
    deliveries: int
    reason: Optional[str]
    timestamp: float
    data: bytes

    def encode(self) -> bytes:
        return pickle.dumps(("fastq.dlq/1", self.log, self.group, self.offset, self.deliveries, self.reason,
                             self.timestamp, self.data), protocol=4)

    @classmethod
    def decode(cls, raw: bytes) -> "DeadLetter":
        t = pickle.loads(raw)
        if not (isinstance(t, tuple) and len(t) == 8 and t[0] == "fastq.dlq/1"):
            raise ValueError("not a fastq dead-letter record")
        return cls(*t[1:])


def open(name: str, *, capacity: int = DEFAULT_LOG_CAPACITY, max_groups: int = 16, window: int = 4096,
         create: bool = True, wait: float = 1.0) -> "Log":
    """Attach to the shared-memory log ``name``, creating it if needed (and ``create``)."""
    return Log._open_or_create(name, capacity, max_groups, window, create, wait)


class Log:
    """An append-only log in shared memory, read through consumer groups.

    ``append``/``append_many`` return offsets (dense, from 0).  Records are
    raw bytes.  Space is reused below the slowest group's low-watermark, so a
    slow group makes ``append`` block (``timeout`` -> ``queue.Full``); with no
    group at all the oldest records are overwritten as space is needed.
    """

    def __init__(self, *a: Any, **k: Any) -> None:
        raise TypeError("use fastq.open(name) to get a Log")

    @classmethod
    def _open_or_create(cls, name, capacity, max_groups, window, create, wait) -> "Log":
        if not isinstance(name, str):
            raise TypeError(f"log name must be a str, not {type(name).__name__}")
        ring = _core.Ring()
        ring._kind = 1  # producer
        if create:
            try:
                ring._create(name, int(capacity), 0, 0, 0, int(max_groups), int(window), True)
            except FileExistsError:
                ring = _core.Ring()
                ring._kind = 1
                ring._open(name, wait)
        else:
            ring._open(name, wait)
        log = object.__new__(cls)
        log._ring = ring
        log.name = name
        log._groups: Dict[str, Group] = {}
        return log

    # -- producing
    def append(self, data: Union[bytes, bytearray, memoryview], *, timeout: Optional[float] = None) -> int:
        """Append one record; returns its offset.  Blocks while the slowest
        group holds the space (``timeout`` -> ``queue.Full``)."""
        return self._ring._append(data, True, timeout)

    def append_many(self, items: Iterable[Union[bytes, bytearray, memoryview]], *,
                    timeout: Optional[float] = None) -> List[int]:
        """Append records with as few claims as possible; returns their offsets."""
        return self._ring._append_many(items, True, timeout)

    # -- groups
    def group(self, name: str, *, start: Union[str, int] = "earliest", visibility_timeout: Optional[float] = 30.0,
              max_deliveries: Optional[int] = 16, retry: Optional[Backoff] = None,
              dead_letter: Union[str, None, bool] = True, window: int = 1024) -> "Group":
        """Create the group ``name`` or attach to it.

        Settings are fixed when the group is created; attaching with other
        settings raises ValueError.  ``start`` ("earliest", "latest" or an
        offset) only matters at creation.  ``dead_letter``: True (default)
        means the log ``<log name>.dlq``; a str names another log; None/False
        drops messages past ``max_deliveries``.
        """
        if not isinstance(name, str):
            raise TypeError(f"group name must be a str, not {type(name).__name__}")
        if isinstance(start, str):
            if start not in _START:
                raise ValueError(f"start must be 'earliest', 'latest' or an offset, not {start!r}")
            kind, seq = _START[start], 0
        elif isinstance(start, int) and not isinstance(start, bool) and start >= 0:
            kind, seq = 2, start
        else:
            raise ValueError(f"start must be 'earliest', 'latest' or a non-negative offset, not {start!r}")
        vis = 0.0 if visibility_timeout is None else float(visibility_timeout)
        if not 0 <= vis < 4e6:
            raise ValueError("visibility_timeout must be None or between 0 and 4,000,000 seconds")
        maxd = 0 if max_deliveries is None else int(max_deliveries)
        if not 0 <= maxd <= 254:
            raise ValueError("max_deliveries must be None or 1..254")
        if dead_letter is True:
            dlq = self.name + ".dlq"
        elif dead_letter in (None, False):
            dlq = ""
        elif isinstance(dead_letter, str):
            dlq = dead_letter
        else:
            raise TypeError("dead_letter must be True, None or a log name")
        if dlq and not _core.name_valid(dlq):
            raise ValueError(f"invalid dead-letter log name {dlq!r}")
        retry = retry or Backoff()
        if not isinstance(retry, Backoff):
            raise TypeError("retry must be a fastq.Backoff")
        if int(window) < 1:
            raise ValueError("window must be >= 1")
        g, created = self._ring._group_open(name, int(window), maxd, vis, kind, seq, dlq, retry._packed())
        grp = Group(self, name, g)
        self._groups[name] = grp
        return grp

    def groups(self) -> List[str]:
        """Names of the groups of this log."""
        return [self._ring._group_info(g)["name"] for g in self._ring._groups()]

    def delete_group(self, name: str) -> None:
        """Delete a group: its consumers stop, its hold on the ring is released."""
        self._ring._group_delete(name)
        self._groups.pop(name, None)

    # -- monitoring
    def stats(self) -> Dict[str, Any]:
        """Head offset, bytes used/free and, per group, low-watermark, lag
        (messages, bytes, age of the oldest unfinished record), pending leases,
        delivered/redelivered/expired/nacked/dead-lettered counts, consumers
        alive.  Lock-free reads of shared counters."""
        base = self._ring._group_stats(0)
        out: Dict[str, Any] = {
            "name": self.name, "head": base["tail_seq"], "oldest": base["floor_seq"],
            "bytes_used": base["tail_pos"] - base["floor_pos"], "capacity": self._ring.capacity,
            "members_alive": base["members_alive"], "groups": {},
        }
        out["bytes_free"] = out["capacity"] - out["bytes_used"]
        now = time.time()
        for g in self._ring._groups():
            info = self._ring._group_info(g)
            st = self._ring._group_stats(g)
            out["groups"][info["name"]] = {
                "low": st["low"], "lag": st["tail_seq"] - st["low"], "lag_bytes": st["lag_bytes"],
                "oldest_age": (now - st["oldest_ts_ns"] / 1e9) if st["oldest_ts_ns"] else 0.0,
                "pending": st["pending"], "unfinished": self._ring._g_qsize(g),
                "delivered": st["delivered"], "redelivered": st["redelivered"], "expired": st["expired"],
                "nacked": st["nacked"], "dead_lettered": st["dead"], "acked": st["acked"] - st["dead"],
                "consumers": st["consumers"], "settings": info,
            }
        return out

    def unlink(self) -> None:
        """Remove the log's name (processes that have it open keep using it)."""
        _core.unlink(self.name)

    def close(self) -> None:
        self._ring.close()

    def __enter__(self) -> "Log":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __reduce__(self):
        return (open, (self.name,), None)

    def __repr__(self) -> str:
        return f"<fastq.Log {self.name!r}>"


class Group:
    """A consumer group of a log: a cursor plus leases (fan-out between
    groups, competing consumers within one)."""

    def __init__(self, log: Log, name: str, index: int) -> None:
        self.log = log
        self.name = name
        self._index = index

    @property
    def settings(self) -> Dict[str, Any]:
        info = self.log._ring._group_info(self._index)
        if info is None or info["name"] != self.name:
            raise _core.FastqError(f"group {self.name!r} was deleted")
        return info

    def consumer(self) -> "Consumer":
        """A new consumer: a member of the group whose leases go back to the
        group as soon as its process dies."""
        return Consumer(self)

    def delete(self) -> None:
        self.log.delete_group(self.name)

    def stats(self) -> Dict[str, Any]:
        return self.log.stats()["groups"][self.name]

    def __repr__(self) -> str:
        return f"<fastq.Group {self.name!r} of {self.log.name!r}>"


class Consumer:
    """A consumer in a group.  Use as a context manager; ``get``/``get_many``
    lease messages, which you ``ack()``, ``nack()`` or ``extend()``."""

    def __init__(self, group: Group) -> None:
        ring = _core.Ring()
        ring._kind = 2  # consumer
        ring._open(group.log.name)
        try:
            self._g = ring._group_find(group.name)
            ring._member_group(self._g)
            info = ring._group_info(self._g)
        except BaseException:
            ring.close()
            raise
        self._ring = ring
        self.group = group
        self._name = group.name
        self._max_deliveries = info["max_deliveries"]
        self._retry = Backoff._unpack(info["backoff"])
        self._dlq_name = info["dead_letter"]
        self._dlq: Optional[Log] = None
        self._closed = False

    # -- getting
    def get(self, timeout: Optional[float] = None) -> Message:
        """The next message (a lease); raises ``fastq.Empty`` when none came in time."""
        got = self.get_many(1, timeout=timeout)
        if not got:
            raise _core.Empty
        return got[0]

    def get_many(self, max_messages: int = 256, timeout: Optional[float] = None) -> List[Message]:
        """Up to ``max_messages`` messages; ``[]`` if none came within ``timeout``."""
        if timeout is not None:
            timeout = float(timeout)
            if not timeout >= 0:
                raise ValueError("'timeout' must be a non-negative number")
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            msgs = self._ring._g_get(self._g, int(max_messages), left, self._name, self)
            if msgs and any(m._must_dead_letter for m in msgs):
                msgs = [m for m in msgs if not (m._must_dead_letter and self._dead_letter(
                    m, f"delivery limit {self._max_deliveries} reached (lease expired or its consumer died)"))]
            if msgs or (deadline is not None and time.monotonic() >= deadline):
                return msgs

    def __iter__(self) -> Iterator[Message]:
        """Messages until the consumer is closed (blocks while there are none)."""
        while not self._closed:
            try:
                yield from self.get_many(256, timeout=0.2)
            except ValueError:
                if self._closed:
                    return
                raise

    def ack(self, messages: List[Message]) -> int:
        """Ack a batch of messages this consumer got (one low-watermark
        advance); returns how many were acked (a lost lease is not)."""
        return self._ring._g_ack_many(self._g, list(messages))

    # -- nack / dead letters
    def _nack(self, m: Message, delay: Optional[float], reason: Optional[str]) -> bool:
        if self._max_deliveries and m.deliveries >= self._max_deliveries:
            return self._dead_letter(m, reason if reason is not None else "nacked at the delivery limit")
        d = self._retry.delay(m.deliveries) if delay is None else float(delay)
        if not d >= 0:
            raise ValueError("'delay' must be a non-negative number")
        return m._nack_raw(d)

    def _dead_letter(self, m: Message, reason: Optional[str]) -> bool:
        """Copy to the dead-letter log first, then finish (a crash between the
        two leaves a duplicate in the DLQ, never a loss)."""
        if self._dlq_name:
            if self._dlq is None:
                self._dlq = open(self._dlq_name)
            self._dlq.append(DeadLetter(self.group.log.name, self._name, m.offset, m.deliveries, reason,
                                        m.timestamp, m.data).encode())
            _core.crashpoint("dlq.after_copy")
        return m._dead()

    # -- lifecycle
    def close(self) -> None:
        """Leave the group: leases still held go back to it at once."""
        if not self._closed:
            self._closed = True
            self._ring.close()
            if self._dlq is not None:
                self._dlq.close()

    def __enter__(self) -> "Consumer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<fastq.Consumer of {self._name!r} on {self.group.log.name!r}>"
