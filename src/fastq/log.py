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

import datetime as _dt
import os
import pickle
import queue as _queue
import random
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Tuple, Union

from . import _core, _meta
from ._core import Message
from .queue import _live

__all__ = ["open", "Log", "Group", "Consumer", "Message", "Backoff", "DeadLetter", "Retention", "Record"]

DEFAULT_LOG_CAPACITY = 64 << 20
DEFAULT_SEGMENT_SIZE = 64 << 20
DEFAULT_DEDUP_SLOTS = 16384          # 512 buckets of 63 entries (2 MiB); 0 = no dedup table
DEFAULT_DEDUP_WINDOW = 300.0         # seconds (SQS's five minutes)
MAX_DEDUP_SLOTS = (1 << 16) * 63     # the core's bucket limit
_START = {"earliest": 0, "latest": 1}
_FSYNC = {"never": 0, "interval": 1, "always": 2}
PathLike = Union[str, "os.PathLike[str]"]
Start = Union[int, str, _dt.datetime]


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
    key: Optional[bytes] = None
    headers: Optional[Dict[str, Union[str, bytes]]] = None

    def encode(self) -> bytes:
        return pickle.dumps(("fastq.dlq/3", self.log, self.group, self.offset, self.deliveries, self.reason,
                             self.timestamp, self.data, self.key, self.headers or None), protocol=4)

    @classmethod
    def decode(cls, raw: bytes) -> "DeadLetter":
        t = pickle.loads(raw)
        if isinstance(t, tuple) and len(t) == 10 and t[0] == "fastq.dlq/3":
            return cls(*t[1:])
        if isinstance(t, tuple) and len(t) == 9 and t[0] == "fastq.dlq/2":
            return cls(*t[1:])
        if isinstance(t, tuple) and len(t) == 8 and t[0] == "fastq.dlq/1":
            return cls(*t[1:])
        raise ValueError("not a fastq dead-letter record")


@dataclass(frozen=True)
class Retention:
    """What a durable log keeps.  Whole segments are deleted, oldest first,
    never the one being written: while the log is larger than ``max_bytes``,
    while a segment's newest record is older than ``max_age`` (a
    ``timedelta`` or seconds), and — with ``consumed=True`` — once every
    group has finished every record in it.  ``None`` = no limit."""
    max_bytes: Optional[int] = None
    max_age: Union[_dt.timedelta, float, None] = None
    consumed: bool = False

    def __post_init__(self) -> None:
        mb = self.max_bytes
        if mb is not None and (isinstance(mb, bool) or not isinstance(mb, int) or mb <= 0):
            raise ValueError(f"Retention max_bytes must be a positive int or None, not {mb!r}")
        a = self.max_age
        if a is not None:
            if isinstance(a, bool) or not isinstance(a, (int, float, _dt.timedelta)):
                raise ValueError(f"Retention max_age must be a timedelta or seconds, not {a!r}")
            if not (0 < self._age() < float("inf")):
                raise ValueError(f"Retention max_age must be positive and finite, not {a!r}")
        if not isinstance(self.consumed, bool):
            raise ValueError("Retention consumed must be True or False")

    def _age(self) -> float:
        a = self.max_age
        return 0.0 if a is None else a.total_seconds() if isinstance(a, _dt.timedelta) else float(a)


@dataclass(frozen=True)
class Record:
    """One record of a log, as ``Log.read()`` returns it."""
    offset: int
    timestamp: float      # seconds since the epoch, when it was appended
    key: Optional[bytes]
    data: bytes
    headers: Dict[str, Union[str, bytes]] = field(default_factory=dict)


def open(name: PathLike, *, durable: bool = False, capacity: int = DEFAULT_LOG_CAPACITY, max_groups: int = 16,
         window: int = 4096, create: bool = True, wait: float = 1.0, segment_size: int = DEFAULT_SEGMENT_SIZE,
         fsync: str = "interval", fsync_interval: float = 0.05, retention: Optional[Retention] = None,
         recover: bool = False, on_corrupt: str = "refuse", dedup_window: float = DEFAULT_DEDUP_WINDOW,
         dedup_slots: int = DEFAULT_DEDUP_SLOTS) -> "Log":
    """Attach to the log ``name``, creating it if needed (and ``create``).

    Shared memory (default): ``name`` is a queue name, ``capacity`` the ring's
    bytes.  ``durable=True``: ``name`` is a directory holding a segment store
    (see docs/store.md): ``segment_size`` (a power of two, 64 KiB .. 1 GiB; a
    record is at most a quarter of it), ``fsync`` = "never" (a process crash
    loses nothing; a power cut loses what the kernel had not written),
    "interval" (a background flush every ``fsync_interval`` seconds) or
    "always" (``append`` returns once the record is on disk; concurrent and
    batched appends share one flush), ``retention`` (a :class:`Retention`),
    ``recover=True`` forces a full recovery scan at open (it needs the log
    closed everywhere), ``on_corrupt`` = "refuse" (default: a corrupt record
    in the middle of the log fails the open with ``CorruptRecordError``) or
    "skip" (drop it, counted in ``recovery_report["skipped"]``).

    Deduplication (``append(data, dedup_key=...)``, docs/messages.md §3): a
    table of ``dedup_slots`` entries (0 = none) lives in the log's shared
    memory or control file; a key counts as appended for ``dedup_window``
    seconds (the default of ``append``'s own ``dedup_window``).  Size it for
    about twice the keys appended per window.  Both are fixed when the log is
    created; an existing log keeps its own.
    """
    dedup = _dedup_params(dedup_window, dedup_slots)
    if durable:
        return Log._open_durable(name, segment_size, max_groups, window, create, wait, fsync, fsync_interval,
                                 retention, recover, on_corrupt, dedup=dedup)
    for what, v in (("segment_size", segment_size != DEFAULT_SEGMENT_SIZE), ("retention", retention is not None),
                    ("recover", recover), ("on_corrupt", on_corrupt != "refuse")):
        if v:
            raise ValueError(f"{what} applies to durable logs: pass durable=True")
    return Log._open_or_create(name, capacity, max_groups, window, create, wait, dedup=dedup)


def _dedup_params(window: Any, slots: Any) -> Tuple[int, int]:
    """(slots, window in ms) for the core, checked."""
    if isinstance(slots, bool) or not isinstance(slots, int) or not 0 <= slots <= MAX_DEDUP_SLOTS:
        raise ValueError(f"dedup_slots must be an int from 0 to {MAX_DEDUP_SLOTS}, not {slots!r}")
    return slots, _dedup_window_ms(window, "dedup_window")


def _dedup_window_ms(window: Any, what: str) -> int:
    if isinstance(window, bool) or not isinstance(window, (int, float)) or not 0.001 <= window <= 30 * 86400:
        raise ValueError(f"{what} must be a number of seconds from 0.001 to 2592000 (30 days), not {window!r}")
    return max(1, int(round(window * 1000)))


def _dedup_key_bytes(key: Any) -> bytes:
    if isinstance(key, str):
        return key.encode("utf-8")
    if isinstance(key, (bytes, bytearray, memoryview)):
        return bytes(key)
    raise TypeError(f"dedup_key must be str or bytes, not {type(key).__name__}")


_UNSET: Any = type("_Unset", (), {"__repr__": lambda self: "<default>"})()  # a setting not given

_forks = [0]  # +1 in every forked child: a Log notices it has no flusher thread there


def _count_fork() -> None:
    _forks[0] += 1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_count_fork)


def _not_before_ns(delay: Optional[float], not_before: Optional[_dt.datetime]) -> Optional[int]:
    """The not-before time (ns since the epoch) of ``delay`` seconds from now
    or of the datetime ``not_before`` (naive = local time); None for neither."""
    if delay is not None and not_before is not None:
        raise ValueError("give delay or not_before, not both")
    if delay is not None:
        if isinstance(delay, bool) or not isinstance(delay, (int, float)) or not 0 <= delay <= 1e9:
            raise ValueError(f"delay must be a number of seconds from 0 to 1e9, not {delay!r}")
        return time.time_ns() + int(delay * 1e9)
    if not_before is not None:
        if not isinstance(not_before, _dt.datetime):
            raise TypeError(f"not_before must be a datetime, not {type(not_before).__name__}")
        return int(not_before.timestamp() * 1e9)
    return None


def _key_bytes(key: Any) -> Optional[bytes]:
    if key is None or type(key) is bytes:
        return key
    if isinstance(key, str):
        raise TypeError("key must be bytes-like, not str (encode it first)")
    return bytes(memoryview(key).cast("B"))


def _open_pickled(name: str, durable: bool) -> "Log":
    return open(name, durable=durable)


def _flusher(ref: "weakref.ref[Log]", interval: float, stop: threading.Event) -> None:
    """Background upkeep of a durable log handle: group-commit flushes (fsync
    "interval") and retention, until the handle closes or is collected."""
    next_retain = 0.0
    while not stop.wait(interval):
        log = ref()
        if log is None:
            return
        try:
            if log._fsync == "interval":
                log._ring._flush(max(interval, 0.05))  # bounded: a stopped producer may hold the frontier
            if log._retention is not None and time.monotonic() >= next_retain:
                log.retain()
                next_retain = time.monotonic() + 1.0
        except ValueError:
            return  # closed meanwhile
        except Exception as e:  # keep flushing; the error is visible in stats
            log._flush_error = e
        finally:
            del log


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
    def _open_or_create(cls, name, capacity, max_groups, window, create, wait, join: bool = True,
                        dedup: Tuple[int, int] = (0, 0)) -> "Log":
        if not isinstance(name, str):
            raise TypeError(f"log name must be a str, not {type(name).__name__}")
        ring = _core.Ring()
        ring._kind = 1  # producer
        if create:
            try:
                ring._create(name, int(capacity), 0, 0, 0, int(max_groups), int(window), True, dedup[0], dedup[1])
            except FileExistsError:
                ring = _core.Ring()
                ring._kind = 1
                ring._open(name, wait, join)
        else:
            ring._open(name, wait, join)
        return cls._new(ring, name, False)

    @classmethod
    def _new(cls, ring: "_core.Ring", name: str, durable: bool) -> "Log":
        log = object.__new__(cls)
        log._ring = ring
        log.name = name
        log.durable = durable
        log.recovery_report = None
        log._groups: Dict[str, Group] = {}
        log._fsync = "never"
        log._fsync_interval = 0.0
        log._retention = None
        log._flush_error = None
        log._stop: Optional[threading.Event] = None
        log._flusher_gen = -1
        _live.add(ring)
        return log

    @classmethod
    def _open_durable(cls, path, segment_size, max_groups, window, create, wait, fsync, fsync_interval,
                      retention, recover, on_corrupt, join: bool = True,
                      dedup: Tuple[int, int] = (0, 0)) -> "Log":
        path = os.fspath(path)
        if not isinstance(path, str):
            raise TypeError(f"log path must be a str or os.PathLike, not {type(path).__name__}")
        if fsync not in _FSYNC:
            raise ValueError(f"fsync must be 'never', 'interval' or 'always', not {fsync!r}")
        if on_corrupt not in ("refuse", "skip"):
            raise ValueError(f"on_corrupt must be 'refuse' or 'skip', not {on_corrupt!r}")
        if not (isinstance(fsync_interval, (int, float)) and 0.001 <= fsync_interval <= 3600):
            raise ValueError("fsync_interval must be between 0.001 and 3600 seconds")
        if retention is not None and not isinstance(retention, Retention):
            raise TypeError("retention must be a fastq.Retention")
        if not isinstance(segment_size, int) or segment_size < (64 << 10) or segment_size > (1 << 30) \
                or segment_size & (segment_size - 1):
            raise ValueError("segment_size must be a power of two from 64 KiB to 1 GiB")
        ring = _core.Ring()
        ring._kind = 1  # producer
        report = None
        if create and not recover and not os.path.exists(os.path.join(path, "control")):
            parent = os.path.dirname(os.path.abspath(path))
            os.makedirs(parent, exist_ok=True)
            try:
                ring._create_dir(path, segment_size, int(max_groups), int(window), _FSYNC[fsync], 0, 0, dedup[0],
                                 dedup[1])
            except FileExistsError:
                ring = _core.Ring()
                ring._kind = 1
                report = ring._open_dir(path, wait, recover, on_corrupt == "skip", join)
        else:
            report = ring._open_dir(path, wait, recover, on_corrupt == "skip", join)
        ring._set_fsync(_FSYNC[fsync])
        log = cls._new(ring, path, True)
        log.recovery_report = report
        log._fsync = fsync
        log._fsync_interval = float(fsync_interval)
        log._retention = retention
        log._segment_size = ring.capacity
        if fsync == "interval" or retention is not None:
            log._start_flusher()
        return log

    def _start_flusher(self) -> None:
        if self._flusher_gen == _forks[0]:
            return
        self._flusher_gen = _forks[0]
        self._stop = threading.Event()
        interval = self._fsync_interval if self._fsync == "interval" else 1.0
        t = threading.Thread(target=_flusher, args=(weakref.ref(self), interval, self._stop),
                             name=f"fastq-flush-{os.path.basename(self.name)}", daemon=True)
        t.start()

    # -- producing
    def append(self, data: Union[bytes, bytearray, memoryview], *, key: Optional[bytes] = None,
               headers: Optional[Mapping[str, Union[str, bytes]]] = None, delay: Optional[float] = None,
               not_before: Optional[_dt.datetime] = None, timeout: Optional[float] = None,
               dedup_key: Optional[Union[str, bytes]] = None, dedup_window: Optional[float] = None) -> int:
        """Append one record (with an optional ``key``, bytes, and
        ``headers``, a small mapping of str to str or bytes: at most 64, key
        and headers at most 4 KiB together); returns its offset.  ``delay``
        (seconds) or ``not_before`` (a datetime): no group dispatches the
        record earlier; records after it are not held back (a delayed record
        waits in a group's lease window).  A shared-memory log blocks while
        the slowest group holds the space (``timeout`` -> ``queue.Full``); a
        durable log never waits for groups.

        ``dedup_key`` (str or bytes): if a record with this key was appended
        to the log within ``dedup_window`` seconds (default: the log's, see
        :func:`fastq.open`), from any process, nothing is appended and the
        original's offset is returned; producers racing with one key append
        it once.  A producer killed mid-append counts as having appended iff
        its record was committed.  ``DedupTableFullError`` if the table has
        no room for the key (nothing appended)."""
        if self._flusher_gen != _forks[0] and self._stop is not None:
            self._start_flusher()  # a forked child has no flusher thread yet
        if dedup_key is not None or dedup_window is not None:
            return self._append_dedup(data, key, headers, _not_before_ns(delay, not_before), timeout, dedup_key,
                                      dedup_window, True)
        if headers or delay is not None or not_before is not None:  # no Python call on the plain path
            prefix, flags = _meta.encode(_key_bytes(key), headers, _not_before_ns(delay, not_before))
            return self._ring._append(data, True, timeout, prefix, flags)
        return self._ring._append(data, True, timeout, key)

    def _append_dedup(self, data: Any, key: Any, headers: Any, nb: Optional[int], timeout: Optional[float],
                      dedup_key: Any, dedup_window: Optional[float], block: bool) -> int:
        if dedup_key is None:
            raise ValueError("dedup_window needs a dedup_key")
        dk = _dedup_key_bytes(dedup_key)
        win = 0.0 if dedup_window is None else _dedup_window_ms(dedup_window, "dedup_window") / 1000.0
        if headers or nb is not None:
            prefix, flags = _meta.encode(_key_bytes(key), headers, nb)
            return self._ring._append_dedup(data, dk, win, block, timeout, prefix, flags)
        return self._ring._append_dedup(data, dk, win, block, timeout, _key_bytes(key))

    def append_many(self, items: Iterable[Union[bytes, bytearray, memoryview]], *,
                    keys: Optional[Iterable[Optional[bytes]]] = None,
                    headers: Optional[Iterable[Optional[Mapping[str, Union[str, bytes]]]]] = None,
                    delay: Optional[float] = None, not_before: Optional[_dt.datetime] = None,
                    timeout: Optional[float] = None) -> List[int]:
        """Append records with as few claims as possible (``keys``, ``headers``:
        one per item, None for none; ``delay``/``not_before``: for every
        item, as ``append``); returns their offsets.  With ``fsync="always"``
        the whole batch shares one flush."""
        if self._flusher_gen != _forks[0] and self._stop is not None:
            self._start_flusher()
        nb = _not_before_ns(delay, not_before)
        if headers is None and nb is None:
            return self._ring._append_many(items, True, timeout, None if keys is None else list(keys))
        items = list(items)
        hs = [None] * len(items) if headers is None else list(headers)
        ks = [None] * len(items) if keys is None else list(keys)
        if len(hs) != len(items) or len(ks) != len(items):
            raise ValueError(f"append_many got {len(items)} items, {len(ks)} keys and {len(hs)} headers")
        enc = [_meta.encode(_key_bytes(k), h, nb) for k, h in zip(ks, hs)]
        return self._ring._append_many(items, True, timeout, [e[0] for e in enc], [e[1] for e in enc])

    # -- durability, retention, replay (durable logs)
    def _need_durable(self, what: str) -> None:
        if not self.durable:
            raise ValueError(f"{what}() needs a durable log (fastq.open(path, durable=True))")

    def flush(self, timeout: Optional[float] = None) -> bool:
        """Make every record appended so far durable (fdatasync); False if
        ``timeout`` passed first.  A no-op for shared-memory logs."""
        if not self.durable:
            return True
        return self._ring._flush(timeout)

    def checkpoint(self) -> None:
        """Flush and write a checkpoint (recovery after a power cut starts there)."""
        self._need_durable("checkpoint")
        self._ring._checkpoint()

    def retain(self, retention: Optional[Retention] = None) -> int:
        """Apply ``retention`` (default: the log's own) now; returns the number
        of segments deleted.  Groups whose position was deleted jump forward
        and count the records they skipped (``stats()[...]["skipped"]``)."""
        self._need_durable("retain")
        r = retention or self._retention
        if r is None:
            return 0
        return self._ring._retain(r.max_bytes or 0, r._age(), bool(r.consumed))

    def _offset_of(self, where: Start, what: str) -> int:
        if isinstance(where, bool):
            raise TypeError(f"{what} must be an offset, a datetime, 'earliest' or 'latest'")
        if isinstance(where, int):
            if where < 0:
                raise ValueError(f"{what} offset must be >= 0")
            return where
        if where == "earliest":
            return self._ring._first_seq() if self.durable else self._ring._stats()["floor_seq"]
        if where == "latest":
            return self._ring._frontier() if self.durable else self._ring._tail
        if isinstance(where, _dt.datetime):
            return self._ring._seek(None, where.timestamp())[0]
        raise TypeError(f"{what} must be an offset, a datetime, 'earliest' or 'latest', not {where!r}")

    def read(self, start: Start = "earliest", end: Optional[Start] = None, *, batch: int = 1024) -> Iterator[Record]:
        """Replay records without a group, in offset order: from ``start`` (an
        offset, a ``datetime`` (durable logs), "earliest" or "latest") up to
        ``end`` (exclusive; default: the head when each batch is read).
        Nothing is leased and nobody waits for the reader.

        Durable logs: lookups use the segment indexes (binary search);
        records deleted by retention are skipped; a record that fails its
        checksum raises ``CorruptRecordError`` (after the good ones before
        it).  Shared-memory logs: the records still in the ring (producers
        may overwrite the oldest while you read; those are skipped, never
        returned torn)."""
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ValueError(f"batch must be an int >= 1, not {batch!r}")
        batch = min(batch, 1 << 16)
        if not self.durable:
            if isinstance(start, _dt.datetime) or isinstance(end, _dt.datetime):
                raise ValueError("read(start=datetime) needs a durable log (a shared-memory ring keeps no time index)")
            seq = self._offset_of(start, "start")
            stop = (1 << 64) - 1 if end is None else self._offset_of(end, "end")
            return self._peek(seq, stop, batch)
        if isinstance(start, _dt.datetime):
            seq, pos = self._ring._seek(None, start.timestamp())
        else:
            seq, pos = self._ring._seek(self._offset_of(start, "start"), None)
        stop = (1 << 64) - 1 if end is None else self._offset_of(end, "end")
        return self._replay(seq, pos, stop, batch)

    def _replay(self, seq: int, pos: int, stop: int, batch: int) -> Iterator[Record]:
        while seq < stop:
            recs, seq, pos = self._ring._read_batch(seq, pos, stop, batch)
            if not recs:
                return
            for off, ts, key, data, hraw in recs:
                yield Record(off, ts / 1e9, key, data, _meta.decode_headers(hraw) if hraw else {})

    def _peek(self, seq: int, stop: int, batch: int) -> Iterator[Record]:
        while seq < stop:
            recs, seq, _ = self._ring._peek_batch(seq, min(batch, stop - seq))
            if not recs:
                return
            for off, ts, key, data, hraw in recs:
                if off >= stop:
                    return
                yield Record(off, ts / 1e9, key, data, _meta.decode_headers(hraw) if hraw else {})

    def verify(self) -> int:
        """Check the CRC of every retained record; returns how many records
        there are, or raises ``CorruptRecordError`` at the first bad one."""
        self._need_durable("verify")
        return self._ring._verify()

    # -- groups
    def group(self, name: str, *, start: Start = "earliest", visibility_timeout: Any = _UNSET,
              max_deliveries: Any = _UNSET, retry: Any = _UNSET, dead_letter: Any = _UNSET,
              window: Any = _UNSET) -> "Group":
        """Create the group ``name`` or attach to it.

        Settings are fixed when the group is created: ``visibility_timeout``
        (seconds, default 30; None = leases never expire), ``max_deliveries``
        (default 16; None = no limit), ``retry`` (a :class:`Backoff`),
        ``dead_letter`` (True (default): the log ``<log name>.dlq``, or
        ``<dir>/dlq`` for a durable log; a str names another log; None/False
        drops messages past ``max_deliveries``) and ``window`` (in-flight
        leases, default 1024).  Attaching without settings takes the group as
        it is; attaching with settings that differ raises ValueError.
        ``start`` ("earliest", "latest", an offset, or a datetime for durable
        logs) only matters at creation.
        """
        if not isinstance(name, str):
            raise TypeError(f"group name must be a str, not {type(name).__name__}")
        given = (visibility_timeout, max_deliveries, retry, dead_letter, window)
        if all(v is _UNSET for v in given):
            try:
                grp = Group(self, name, self._ring._group_find(name))
                self._groups[name] = grp
                return grp
            except KeyError:
                pass  # create it with the defaults
        visibility_timeout = 30.0 if visibility_timeout is _UNSET else visibility_timeout
        max_deliveries = 16 if max_deliveries is _UNSET else max_deliveries
        retry = None if retry is _UNSET else retry
        dead_letter = True if dead_letter is _UNSET else dead_letter
        window = 1024 if window is _UNSET else window
        kind, seq = self._position(start, "start", "group")
        vis = 0.0 if visibility_timeout is None else float(visibility_timeout)
        if not 0 <= vis < 4e6:
            raise ValueError("visibility_timeout must be None or between 0 and 4,000,000 seconds")
        maxd = 0 if max_deliveries is None else int(max_deliveries)
        if not 0 <= maxd <= 254:
            raise ValueError("max_deliveries must be None or 1..254")
        if dead_letter is True:
            # shared memory: the log "<name>.dlq"; durable: the durable log "dlq" inside this log's directory
            dlq = "dlq" if self.durable else self.name + ".dlq"
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
        try:
            g, created = self._ring._group_open(name, int(window), maxd, vis, kind, seq, dlq, retry._packed())
        except ValueError as e:
            if not all(v is _UNSET for v in given):
                raise
            try:
                g = self._ring._group_find(name)  # created meanwhile by another process, with its settings
            except KeyError:
                raise e from None
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

    def reset_group(self, name: str, to: Start = "earliest", *, force: bool = False) -> int:
        """Move group ``name`` to ``to`` ("earliest", "latest", an offset, or a
        ``datetime`` for durable logs), like Kafka's ``--reset-offsets``.  The
        group keeps its settings; its leases, retries and counters start
        afresh.  Refused (``FastqError``) while the group has live consumers,
        unless ``force``: they then see the group as deleted (``FastqError``
        on their next call) and must attach again.  Returns how many live
        consumers were detached."""
        kind, seq = self._position(to, "to", "reset_group")
        return self._ring._group_reset(name, kind, seq, bool(force))

    def _position(self, where: Start, what: str, call: str) -> tuple:
        """(start kind, offset) of a group position: "earliest", "latest", an
        offset, or a datetime (durable logs: looked up in the time index)."""
        if isinstance(where, _dt.datetime):
            self._need_durable(f"{call}({what}=datetime)")
            return 2, self._ring._seek(None, where.timestamp())[0]
        if isinstance(where, str):
            if where not in _START:
                raise ValueError(f"{what} must be 'earliest', 'latest', an offset or a datetime, not {where!r}")
            return _START[where], 0
        if isinstance(where, int) and not isinstance(where, bool) and where >= 0:
            return 2, where
        raise ValueError(f"{what} must be 'earliest', 'latest', a non-negative offset or a datetime, not {where!r}")

    # -- monitoring
    def members(self) -> List[Dict[str, Any]]:
        """Processes attached to this log (lock-free): pid, name (the
        process's name unless the handle was labelled), role ("producer",
        "consumer" or "queue"), group, alive, puts, gets, acked, leases
        (held now in its group)."""
        roles = {1: "producer", 2: "consumer", 3: "queue"}
        names = {g: self._ring._group_info(g) for g in self._ring._groups()}
        out = []
        for m in self._ring._members():
            info = names.get(m["group"]) if m["kind"] & 2 else None
            out.append({"pid": m["pid"], "name": m["name"], "role": roles.get(m["kind"] & 3, "observer"),
                        "group": info["name"] if info else None, "alive": m["alive"], "started": m["started"],
                        "puts": m["puts"], "gets": m["gets"], "acked": m["acked"],
                        "leases": m["leases"] if info else 0, "self": m["self"]})
        return out

    def stats(self) -> Dict[str, Any]:
        """Head offset, bytes used/free and, per group, low-watermark, lag
        (messages, bytes, age of the oldest unfinished record), pending leases,
        delivered/redelivered/expired/nacked/dead-lettered counts, consumers
        alive, and the attached processes (``members``).  Lock-free reads of
        shared counters: it never blocks or slows producers and consumers."""
        base = self._ring._group_stats(0)
        if self.durable:
            seg = self._ring.capacity
            out: Dict[str, Any] = {
                "name": self.name, "durable": True, "head": base["tail_seq"], "oldest": base["first_seq"],
                "durable_offset": base["durable_seq"], "segment_size": seg,
                "members_alive": base["members_alive"], "groups": {},
            }
        else:
            out = {
                "name": self.name, "durable": False, "head": base["tail_seq"], "oldest": base["floor_seq"],
                "bytes_used": base["tail_pos"] - base["floor_pos"], "capacity": self._ring.capacity,
                "members_alive": base["members_alive"], "groups": {},
            }
            out["bytes_free"] = out["capacity"] - out["bytes_used"]
        out["dedup"] = self._ring._dedup_stats()
        now = time.time()
        out["members"] = self.members()
        for g in self._ring._groups():
            info = self._ring._group_info(g)
            st = self._ring._group_stats(g)
            if info is None:
                continue  # deleted meanwhile
            if self.durable and st["tail_seq"] > st["low"] and not (st["lag_bytes"] and st["oldest_ts_ns"]):
                self._behind_ring(st)
            out["groups"][info["name"]] = {
                "low": st["low"], "lag": st["tail_seq"] - st["low"], "lag_bytes": st["lag_bytes"],
                "oldest_age": (now - st["oldest_ts_ns"] / 1e9) if st["oldest_ts_ns"] else 0.0,
                "pending": st["pending"], "unfinished": self._ring._g_qsize(g),
                "delivered": st["delivered"], "redelivered": st["redelivered"], "expired": st["expired"],
                "nacked": st["nacked"], "dead_lettered": st["dead"],
                "acked": max(st["acked"] - st["dead"] - st["skipped"], 0), "skipped": st["skipped"],
                "consumers": st["consumers"], "settings": info,
            }
        return out

    def _behind_ring(self, st: Dict[str, Any]) -> None:
        """A durable group further behind than the descriptor ring: find its
        oldest unfinished record in the segments (index lookup) for lag bytes
        and age."""
        try:
            seq, pos = self._ring._seek(st["low"], None)
            recs = self._ring._read_batch(seq, pos, seq + 1, 1)[0]
        except (ValueError, OSError, _core.FastqError):
            return
        if seq == st["low"]:
            st["lag_bytes"] = max(st["tail_pos"] - pos, 0)
            if recs:
                st["oldest_ts_ns"] = recs[0][1]

    def unlink(self) -> None:
        """Remove the log's name (processes that have it open keep using it).
        For a durable log: delete its directory's files (and the directory)."""
        if not self.durable:
            _core.unlink(self.name)
            return
        _remove_store(self.name)

    def close(self) -> None:
        """Close this handle; a durable log flushes what this handle appended first."""
        if self._stop is not None:
            self._stop.set()
        if self.durable and not self._ring.closed and self._fsync != "never":
            try:
                self._ring._flush(5.0)  # bounded: a stopped (SIGSTOP) producer may hold the frontier
            except (ValueError, OSError):
                pass
        self._ring.close()

    def __enter__(self) -> "Log":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __reduce__(self):
        return (_open_pickled, (self.name, self.durable), None)

    def __repr__(self) -> str:
        return f"<fastq.Log {self.name!r}{' durable' if self.durable else ''}>"

    def _attach(self, kind: int, label: Optional[str] = None) -> "_core.Ring":
        """Another handle (member) on this log, e.g. for a consumer."""
        ring = _core.Ring()
        ring._kind = kind
        ring._member_name = label
        if self.durable:
            ring._open_dir(self.name, 1.0, False, False)
            ring._set_fsync(_FSYNC[self._fsync])
        else:
            ring._open(self.name)
        _live.add(ring)
        return ring


def _remove_store(path: str) -> None:
    """Delete a durable log's own files (control, segments, indexes, and its
    dead-letter log) and the directory if that leaves it empty."""
    names = os.listdir(path)
    if "control" not in names:
        raise FileNotFoundError(f"no durable log at {path!r}")
    for n in names:
        full = os.path.join(path, n)
        if n == "dlq" and os.path.isdir(full):
            _remove_store(full)
        elif n == "control" or n.startswith("tmp.") or (len(n) == 24 and n[20:] in (".seg", ".idx")):
            os.unlink(full)
    try:
        os.rmdir(path)
    except OSError:
        pass


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

    def consumer(self, name: Optional[str] = None) -> "Consumer":
        """A new consumer: a member of the group whose leases go back to the
        group as soon as its process dies.  ``name`` labels it in ``fastq
        stat`` and ``Log.members()`` (default: the process's name)."""
        return Consumer(self, name)

    def delete(self) -> None:
        self.log.delete_group(self.name)

    def stats(self) -> Dict[str, Any]:
        return self.log.stats()["groups"][self.name]

    def __repr__(self) -> str:
        return f"<fastq.Group {self.name!r} of {self.log.name!r}>"


class Consumer:
    """A consumer in a group.  Use as a context manager; ``get``/``get_many``
    lease messages, which you ``ack()``, ``nack()`` or ``extend()``."""

    def __init__(self, group: Group, name: Optional[str] = None) -> None:
        if name is not None and not isinstance(name, str):
            raise TypeError(f"consumer name must be a str, not {type(name).__name__}")
        ring = group.log._attach(2, name)  # consumer
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
            if self._ring._g_deadletters:
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
                log = self.group.log
                if log.durable:
                    path = os.path.join(log.name, self._dlq_name)
                    self._dlq = open(path, durable=True, segment_size=min(log._segment_size, 1 << 26),
                                     fsync=log._fsync)
                else:
                    self._dlq = open(self._dlq_name)
            try:
                hs = m.headers
                self._dlq.append(DeadLetter(self.group.log.name, self._name, m.offset, m.deliveries, reason,
                                            m.timestamp, m.data, m.key, hs or None).encode(), key=m.key,
                                 headers=hs or None, timeout=0.5)
            except _queue.Full:
                # a shared-memory DLQ whose own groups hold all its space: keep
                # the message in this group (retried after the backoff) rather
                # than drop it; it is dead-lettered once the DLQ has room
                m._nack_raw(self._retry.delay(m.deliveries))
                return True
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
