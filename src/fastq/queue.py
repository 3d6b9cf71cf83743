"""fastq.Queue and fastq.JoinableQueue: drop-ins for multiprocessing.Queue /
JoinableQueue over a lock-free shared-memory ring.

>>> import fastq
>>> q = fastq.Queue()
>>> q.put({"job": 1})
>>> q.get()
{'job': 1}
>>> q.close()
"""
from __future__ import annotations

import os
import pickle
import weakref
from typing import Any, Callable, Iterable, Optional, Tuple, Union

from . import _core

__all__ = ["Queue", "JoinableQueue", "unlink"]

DEFAULT_CAPACITY = 16 << 20

Serializer = Union[str, None, Tuple[Callable[[Any], bytes], Callable[[bytes], Any]], Any]

_live: "weakref.WeakSet[_core.Ring]" = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for ring in list(_live):
        ring._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _resolve_serializer(spec: Serializer) -> Tuple[Optional[Callable], Optional[Callable]]:
    if spec is None:
        return None, None
    if spec == "pickle":
        return pickle.dumps, pickle.loads
    if isinstance(spec, tuple) and len(spec) == 2 and all(callable(f) for f in spec):
        return spec[0], spec[1]
    dumps, loads = getattr(spec, "dumps", None), getattr(spec, "loads", None)
    if callable(dumps) and callable(loads):
        return dumps, loads
    raise TypeError(
        "serializer must be 'pickle', None (raw bytes), a (dumps, loads) pair "
        f"or an object with dumps/loads, not {spec!r}"
    )


def unlink(name: str) -> None:
    """Remove the named queue.  Processes that have it open keep using it."""
    _core.unlink(name)


def _rebuild_named(cls, name, serializer):
    return cls.open(name, serializer=serializer)


def _rebuild_anon(cls, dupfd, serializer, maxsize):
    q = cls.__new__(cls)
    q._open_fd(dupfd.detach())
    q._setup(serializer, maxsize)
    return q


class Queue(_core.Ring):
    """A multi-producer multi-consumer queue in shared memory.

    Behaves like :class:`multiprocessing.Queue`: ``put/get(block=True,
    timeout=None)``, ``put_nowait/get_nowait``, ``qsize/empty/full``,
    ``close/join_thread/cancel_join_thread``, ``queue.Full``/``queue.Empty``.

    - ``maxsize``: bound on the number of items (0 = as many as fit).
    - ``capacity``: bytes of the shared ring (rounded up to a power of two);
      one item may use at most ``capacity // 4 - 32`` bytes.
    - ``name``: create a named queue that unrelated processes attach to with
      ``Queue.open(name)``; it persists until :meth:`unlink`.  Without a name
      the queue is anonymous and lives as long as some process holds it;
      pass it to children (fork or spawn) as you would a multiprocessing.Queue.
    - ``serializer``: ``"pickle"`` (default), ``None`` for raw bytes in and
      out, or a ``(dumps, loads)`` pair.

    A process killed at any instruction never wedges the queue: its half-put
    item is skipped and items it was getting are delivered to someone else.
    """

    def __init__(self, maxsize: int = 0, *, capacity: int = DEFAULT_CAPACITY, name: Optional[str] = None,
                 serializer: Serializer = "pickle", max_members: int = 0) -> None:
        maxsize = int(maxsize)
        if maxsize < 0:
            maxsize = 0  # multiprocessing treats maxsize <= 0 as unbounded
        if int(capacity) <= 0:
            raise ValueError(f"capacity must be positive, not {capacity!r}")
        if name is not None:
            if not isinstance(name, str):
                raise TypeError(f"name must be a str, not {type(name).__name__}")
            if not _core.name_valid(name):
                raise ValueError(
                    f"invalid queue name {name!r}: use 1-200 characters from [A-Za-z0-9._-], not starting with '.'")
        dumps_loads = _resolve_serializer(serializer)
        self._create(name, int(capacity), maxsize, int(max_members))
        self._setup(serializer, maxsize, dumps_loads)

    def _setup(self, serializer: Serializer, maxsize: int, dumps_loads=None) -> None:
        self._dumps, self._loads = dumps_loads or _resolve_serializer(serializer)
        self._serializer = serializer
        self._maxsize = maxsize
        _live.add(self)

    @classmethod
    def open(cls, name: str, *, serializer: Serializer = "pickle", wait: float = 1.0) -> "Queue":
        """Attach to the named queue ``name`` created by any process."""
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, not {type(name).__name__}")
        dumps_loads = _resolve_serializer(serializer)
        q = cls.__new__(cls)
        q._open(name, wait)
        q._setup(serializer, int(q._shm_maxsize), dumps_loads)
        return q

    @property
    def maxsize(self) -> int:
        return self._maxsize

    def unlink(self) -> None:
        """Remove this queue's name (named queues only)."""
        if self.name is None:
            raise ValueError("an anonymous queue has no name to unlink")
        unlink(self.name)

    def join_thread(self) -> None:
        """Like multiprocessing.Queue.join_thread: only valid after close().
        There is no feeder thread: puts are in shared memory when put() returns."""
        assert self.closed, "Queue {0!r} not closed".format(self)

    def cancel_join_thread(self) -> None:
        """No-op: there is no feeder thread and no buffered data to lose."""

    def __reduce__(self):
        if self.closed:
            raise ValueError(f"Queue {self!r} is closed")
        if self.name is not None:
            return (_rebuild_named, (type(self), self.name, self._serializer))
        from multiprocessing import context, reduction
        if context.get_spawning_popen() is None:
            raise RuntimeError(
                "an anonymous fastq.Queue can only be shared with child processes through inheritance "
                "(pass it to Process/Pool at creation); give it a name to share it any other way")
        return (_rebuild_anon, (type(self), reduction.DupFd(self._fileno()), self._serializer, self._maxsize))

    def __enter__(self) -> "Queue":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        kind = f"name={self.name!r}" if self.name is not None else "anonymous"
        state = " closed" if self.closed else ""
        return f"<fastq.{type(self).__name__} {kind}{state} at {id(self):#x}>"


class JoinableQueue(Queue):
    """A Queue with ``task_done()`` and ``join()``, across processes
    (multiprocessing.JoinableQueue)."""

    def task_done(self) -> None:
        """Mark one item got earlier as processed; ValueError if called more
        times than items were put."""
        self._task_done()

    def join(self, timeout: Optional[float] = None) -> bool:
        """Block until every item put has been marked done.  With a timeout,
        returns False if it expired (multiprocessing has no timeout)."""
        return self._join_tasks(timeout)
