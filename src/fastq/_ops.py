"""Operations helpers shared by the command line and the metrics exporter:
find queues, open them without side effects on their users, and take
lock-free snapshots of what they expose.

Opening a queue here never creates it and takes no member slot (a queue or
log is mapped; a member slot is taken only by an administrative command that
needs one, e.g. a group reset).  Opening a durable log that no process has
open after a reboot runs its recovery, as any user's open would.
"""
from __future__ import annotations

import datetime as _dt
import os
import time
from typing import Any, Dict, Iterator, List, Optional, Tuple

from . import _core
from .log import Log, _remove_store

SHM_DIR = "/dev/shm"
SHM_PREFIX = "fastq."


class OpsError(Exception):
    """An operator error: printed as one line, exit status 2."""


def is_store_path(target: str) -> bool:
    """A durable log is named by a path (it has a '/', or is an existing directory)."""
    return "/" in target or target in (".", "..") or os.path.isdir(target)


def open_target(target: str) -> Log:
    """Open the queue or log ``target`` (a shared-memory name or a durable log
    directory) for monitoring or administration; never creates one."""
    if is_store_path(target):
        if not os.path.isdir(target):
            raise OpsError(f"no durable log at {target!r} (no such directory)")
        if not os.path.exists(os.path.join(target, "control")):
            raise OpsError(f"no durable log at {target!r} (no control file)")
        try:
            return Log._open_durable(target, 64 << 20, 16, 4096, False, 1.0, "never", 0.05, None, False, "refuse",
                                     join=False)
        except FileNotFoundError as e:
            raise OpsError(f"no durable log at {target!r}: {e}") from None
    if not _core.name_valid(target):
        raise OpsError(f"invalid queue name {target!r}")
    try:
        return Log._open_or_create(target, 0, 0, 0, False, 1.0, join=False)
    except FileNotFoundError:
        raise OpsError(f"no queue named {target!r} (looked for {SHM_DIR}/{SHM_PREFIX}{target})") from None


def kind_of(log: Log) -> str:
    """"durable", "queue" (a fastq.Queue: the implicit group "queue" in slot 0) or "log"."""
    if log.durable:
        return "durable"
    info = log._ring._group_info(0)
    if info is not None and info["name"] == "queue" and info["max_deliveries"] == 0 \
            and info["visibility_timeout"] == 0 and not info["dead_letter"]:
        return "queue"
    return "log"


def shm_names() -> List[str]:
    """Names of the shared-memory queues on this machine."""
    try:
        files = os.listdir(SHM_DIR)
    except OSError:
        return []
    return sorted(f[len(SHM_PREFIX):] for f in files if f.startswith(SHM_PREFIX) and _core.name_valid(f[len(SHM_PREFIX):]))


def store_paths(root: str, depth: int = 3) -> List[str]:
    """Durable logs at or below directory ``root`` (dead-letter logs included)."""
    if not os.path.isdir(root):
        raise OpsError(f"{root!r} is not a directory")
    out: List[str] = []

    def walk(d: str, left: int) -> None:
        try:
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError:
            return
        if any(e.name == "control" and e.is_file(follow_symlinks=False) for e in entries):
            out.append(d)
        if left:
            for e in entries:
                if e.is_dir(follow_symlinks=False):
                    walk(e.path, left - 1)

    walk(root, depth)
    return out


def summary(log: Log, target: str) -> Dict[str, Any]:
    """One line of ``ls``: kind, size, head, groups."""
    st = log.stats()
    row = {"name": target, "kind": kind_of(log), "head": st["head"], "oldest": st["oldest"],
           "groups": sorted(g for g in st["groups"] if not (kind_of(log) == "queue" and g == "queue")),
           "members_alive": _alive_others(st)}
    if log.durable:
        row["size_bytes"] = store_bytes(target)
        row["durable_offset"] = st["durable_offset"]
    else:
        row["size_bytes"] = st["capacity"]
        row["bytes_used"] = st["bytes_used"]
    return row


def _alive_others(st: Dict[str, Any]) -> int:
    """Live members other than this handle (an observer takes no slot, but an
    administrative command may have taken one)."""
    return sum(1 for m in st["members"] if m["alive"] and not m["self"])


def store_bytes(path: str) -> int:
    """Bytes of a durable log's segment and index files on disk (allocated)."""
    total = 0
    for e in os.scandir(path):
        if e.is_file(follow_symlinks=False) and (e.name.endswith(".seg") or e.name.endswith(".idx") or e.name == "control"):
            total += e.stat(follow_symlinks=False).st_blocks * 512
    return total


class Sampler:
    """Successive snapshots of one log with rates between them: records in
    per second (head), and per group records finished per second (acked,
    dead-lettered or skipped)."""

    def __init__(self, log: Log) -> None:
        self.log = log
        self._prev: Optional[Tuple[float, Dict[str, Any]]] = None

    def sample(self) -> Dict[str, Any]:
        now = time.monotonic()
        st = self.log.stats()
        st["kind"] = kind_of(self.log)
        st["members_alive"] = _alive_others(st)
        st["time"] = time.time()
        prev = self._prev
        if prev is not None and now > prev[0]:
            dt = now - prev[0]
            st["rate_in"] = max(st["head"] - prev[1]["head"], 0) / dt
            for name, g in st["groups"].items():
                pg = prev[1]["groups"].get(name)
                g["rate_out"] = (max(_finished(g) - _finished(pg), 0) / dt) if pg else None
        else:
            st["rate_in"] = None
            for g in st["groups"].values():
                g["rate_out"] = None
        self._prev = (now, st)
        return st


def _finished(g: Dict[str, Any]) -> int:
    return g["acked"] + g["dead_lettered"] + g["skipped"]


def remove(target: str) -> None:
    """Unlink a shared-memory queue, or delete a durable log's files."""
    if is_store_path(target):
        try:
            _remove_store(target)
        except FileNotFoundError:
            raise OpsError(f"no durable log at {target!r}") from None
        return
    try:
        _core.unlink(target)
    except FileNotFoundError:
        raise OpsError(f"no queue named {target!r}") from None


def records(log: Log, start: Any, follow: bool, poll: float = 0.1,
            limit: Optional[int] = None) -> Iterator[Any]:
    """Records from ``start`` (an offset, "earliest", "latest" or a datetime)
    on, without a group; with ``follow``, wait for new ones (polling the head
    every ``poll`` seconds) until interrupted."""
    if isinstance(start, _dt.datetime):
        if not log.durable:
            raise OpsError("--from TIME needs a durable log (a shared-memory ring keeps no time index)")
        nxt = log._ring._seek(None, start.timestamp())[0]
    else:
        nxt = log._offset_of(start, "from")
    n = 0
    while True:
        first = log._offset_of("earliest", "from")
        for r in log.read(max(nxt, first)):
            yield r
            n += 1
            nxt = r.offset + 1
            if limit is not None and n >= limit:
                return
        if not follow:
            return
        time.sleep(poll)
