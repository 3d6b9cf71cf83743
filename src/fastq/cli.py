"""The command line: ``python -m fastq COMMAND`` (or the ``fastq`` script).

    ls [DIR]                      queues on this machine, or durable logs under DIR
    stat TARGET [--watch S]       head, space, members, and per group lag, pending, rates
    groups TARGET list|create|delete|reset
    tail TARGET [--from X] [--follow] [--format raw|repr|json|pickle]
    dlq TARGET list|show|requeue|purge
    recover PATH / verify PATH    durable logs: run recovery / CRC-check every record
    unlink TARGET                 remove a shared-memory queue (or a durable log's files)
    exporter --port 9464 TARGET…  Prometheus metrics over HTTP (a jobs app directory too)
    worker MODULE:APP [--processes N] [--autoscale LO:HI]   run job workers (fastq.jobs)
    jobs ls|stat|retry|purge APP  background jobs of an app directory
    demo, bench                   the demo and the comparison benchmark

TARGET is a shared-memory queue name, or the directory of a durable log (a
path: it contains a '/' or is an existing directory).  Every command that
prints data takes ``--json``.  Errors are one line on stderr; the exit status
is 0 on success, 1 when a check failed (verify, demo), 2 for errors.
"""
from __future__ import annotations

import argparse
import base64
import datetime as _dt
import json
import os
import pickle
import queue
import re
import sys
import time
from typing import Any, Dict, Iterable, List, Optional, Sequence

from . import _core, _ops
from .log import DeadLetter, Log, Record
from .log import open as open_log

EXIT_OK, EXIT_FAILED, EXIT_ERROR = 0, 1, 2
DLQ_GROUP = "fastq-dlq"  # the cursor group `dlq requeue|purge` keeps on a dead-letter log


# ---------------------------------------------------------------- formatting
def _num(n: Optional[float]) -> str:
    if n is None:
        return "-"
    if isinstance(n, float) and not n.is_integer():
        return f"{n:,.1f}"
    return f"{int(n):,}"


def _bytes(n: Optional[float]) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _rate(r: Optional[float]) -> str:
    if r is None:
        return "-"
    if r >= 1e6:
        return f"{r / 1e6:.2f}M/s"
    if r >= 1e3:
        return f"{r / 1e3:.1f}k/s"
    return f"{r:.0f}/s"


def _age(s: float) -> str:
    if not s:
        return "-"
    if s < 1:
        return f"{s * 1000:.0f}ms"
    if s < 120:
        return f"{s:.1f}s"
    if s < 7200:
        return f"{s / 60:.1f}m"
    return f"{s / 3600:.1f}h"


def _table(rows: List[List[str]], head: List[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in [head] + rows]
    return "\n".join(lines)


def _json_default(o: Any) -> Any:
    if isinstance(o, (bytes, bytearray, memoryview)):
        return _bytes_json(bytes(o))
    if isinstance(o, tuple):
        return list(o)
    if isinstance(o, _dt.datetime):
        return o.isoformat()
    return repr(o)


def _bytes_json(b: Optional[bytes]) -> Any:
    """bytes as JSON: the text if it is UTF-8, else {"base64": ...}."""
    if b is None:
        return None
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(b).decode("ascii")}


def _print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, default=_json_default, sort_keys=True) + "\n")
    sys.stdout.flush()


# ---------------------------------------------------------------- arguments
_REL = re.compile(r"^-(\d+(?:\.\d+)?)([smhd])$")


def parse_position(text: str, what: str = "position") -> Any:
    """earliest | latest | an offset | an ISO 8601 time | -N{s,m,h,d} (that long ago)."""
    t = text.strip()
    if t in ("earliest", "latest"):
        return t
    if t.isdigit():
        return int(t)
    m = _REL.match(t)
    if m:
        secs = float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
        return _dt.datetime.now(_dt.timezone.utc) - _dt.timedelta(seconds=secs)
    try:
        when = _dt.datetime.fromisoformat(t.replace("Z", "+00:00"))
    except ValueError:
        raise _ops.OpsError(f"bad {what} {text!r}: use earliest, latest, an offset, an ISO time "
                            "(2026-11-28T10:00:00) or a relative time (-10m)") from None
    return when if when.tzinfo else when.astimezone()


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse prints usage + message)
        sys.stderr.write(f"fastq: error: {message} (see: {self.prog} --help)\n")
        sys.exit(EXIT_ERROR)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="fastq", description="fastq: shared-memory queues and durable logs for Python processes")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND", parser_class=_Parser)

    d = sub.add_parser("demo", help="a producer and worker processes in a consumer group; kill -9 one, lose nothing")
    d.add_argument("--messages", type=int, default=1_000_000, help="messages to move (default 1,000,000)")
    d.add_argument("--workers", type=int, default=3, help="worker processes (default 3)")
    d.add_argument("--size", type=int, default=64, help="payload bytes per message (default 64, >= 16)")
    d.add_argument("--batch", type=int, default=256, help="messages per append_many/get_many (default 256)")
    d.add_argument("--durable", metavar="DIR", default=None, help="use a durable log in DIR (default: shared memory)")
    d.add_argument("--no-kill", action="store_true", help="do not kill a worker midway")
    d.add_argument("--json", action="store_true", help="print the summary as JSON")

    sub.add_parser("bench", help="side-by-side comparison with peers (python -m fastq bench --help)")

    ls = sub.add_parser("ls", help="queues on this machine (shared memory), or durable logs under DIR")
    ls.add_argument("dir", nargs="?", default=None)
    ls.add_argument("--json", action="store_true")

    st = sub.add_parser("stat", help="head, space, members, per-group lag, pending leases, rates")
    st.add_argument("target")
    st.add_argument("--watch", type=float, metavar="SECONDS", default=None, help="redraw every SECONDS until Ctrl-C")
    st.add_argument("--interval", type=float, default=0.5, metavar="SECONDS",
                    help="sampling interval for rates without --watch (default 0.5; 0 = no rates)")
    st.add_argument("--count", type=int, default=None, help="with --watch: stop after COUNT samples")
    st.add_argument("--json", action="store_true", help="JSON (with --watch: one object per line)")

    g = sub.add_parser("groups", help="list, create, delete or reset consumer groups")
    g.add_argument("target")
    g.add_argument("action", nargs="?", default="list", choices=["list", "create", "delete", "reset"])
    g.add_argument("group", nargs="?", default=None)
    g.add_argument("--to", default=None, help="reset: earliest, latest, OFFSET, TIME (ISO) or -N{s,m,h,d}")
    g.add_argument("--start", default="earliest", help="create: where the group starts (as --to)")
    g.add_argument("--force", action="store_true", help="reset even with live consumers (they must attach again)")
    g.add_argument("--visibility-timeout", type=float, default=30.0, help="create: lease seconds (0 = never expire)")
    g.add_argument("--max-deliveries", type=int, default=16, help="create: deliveries before dead-lettering (0 = no limit)")
    g.add_argument("--no-dead-letter", action="store_true", help="create: drop messages past max deliveries")
    g.add_argument("--window", type=int, default=1024, help="create: in-flight bound (leases)")
    g.add_argument("--json", action="store_true")

    t = sub.add_parser("tail", help="print records without joining a group")
    t.add_argument("target")
    t.add_argument("--from", dest="start", default=None,
                   help="earliest, latest, OFFSET, TIME or -N{s,m,h,d} (default: the last 10 records)")
    t.add_argument("-n", "--lines", type=int, default=None, help="stop after N records")
    t.add_argument("-f", "--follow", action="store_true", help="keep printing new records until Ctrl-C")
    t.add_argument("--format", choices=["repr", "raw", "json", "pickle"], default="repr",
                   help="repr (default), raw (the bytes, one record per line), json (one object per line), "
                        "pickle (unpickle each record: only for data you trust)")
    t.add_argument("--json", action="store_true", help="same as --format json")

    q = sub.add_parser("dlq", help="inspect and re-drive dead letters")
    q.add_argument("target", help="the log whose dead letters to handle")
    q.add_argument("action", choices=["list", "show", "requeue", "purge"])
    q.add_argument("offsets", nargs="*", type=int, help="dead-letter offsets (show: one; requeue/purge: some)")
    q.add_argument("--group", default=None, help="the DLQ of this group (default: the log's default DLQ)")
    q.add_argument("--all", action="store_true", help="list: also handled ones; requeue/purge: every pending one")
    q.add_argument("--to", default=None, help="requeue into this log instead of the original one")
    q.add_argument("--force", action="store_true", help="requeue into a log other groups also read")
    q.add_argument("--json", action="store_true")

    r = sub.add_parser("recover", help="durable log: run a full recovery now (or --dry-run: report what it would do)")
    r.add_argument("path")
    r.add_argument("--dry-run", action="store_true", help="only check: CRC every record, say what would be cut")
    r.add_argument("--skip-corrupt", action="store_true", help="drop corrupt records below the checkpoint")
    r.add_argument("--json", action="store_true")

    v = sub.add_parser("verify", help="durable log: CRC-check every retained record (exit 1 if one is bad)")
    v.add_argument("path")
    v.add_argument("--json", action="store_true")

    u = sub.add_parser("unlink", help="remove a shared-memory queue (or delete a durable log's files)")
    u.add_argument("target")

    w = sub.add_parser("worker", help="run a pool of job worker processes for a fastq.jobs app")
    w.add_argument("app", help="MODULE:ATTRIBUTE naming the fastq.jobs.App (e.g. myapp:app)")
    w.add_argument("--queue", "-Q", default="default", help="the queue to consume (default: default)")
    w.add_argument("--processes", "-p", type=int, default=None, help="worker processes (default: one per CPU)")
    w.add_argument("--autoscale", default=None, metavar="LOW:HIGH",
                   help="scale between LOW and HIGH processes with the backlog")
    w.add_argument("--prefetch", type=int, default=64, help="jobs a worker leases at once at most (default 64)")
    w.add_argument("--scale-interval", type=float, default=1.0, help="seconds between two scaling changes")
    w.add_argument("--idle-timeout", type=float, default=10.0, help="seconds without a job before a worker retires")
    w.add_argument("--loglevel", default="info", choices=["debug", "info", "warning", "error"])

    j = sub.add_parser("jobs", help="background jobs of a fastq.jobs app: ls, stat, retry, purge")
    j.add_argument("action", choices=["ls", "stat", "retry", "purge"])
    j.add_argument("app", help="the app's directory (or MODULE:ATTRIBUTE)")
    j.add_argument("jobs", nargs="*", help="retry: ids (queue:offset) or offsets of dead jobs")
    j.add_argument("--queue", "-Q", default=None, help="one queue (default: all; retry: default)")
    j.add_argument("--all", action="store_true", help="retry: every dead job of the queue")
    j.add_argument("--results", action="store_true", help="purge: every stored result, not only expired ones")
    j.add_argument("--dead", action="store_true", help="purge: also drop the queue's pending dead jobs")
    j.add_argument("--json", action="store_true")

    e = sub.add_parser("exporter", help="serve Prometheus metrics of queues over HTTP")
    e.add_argument("targets", nargs="+")
    e.add_argument("--port", type=int, default=9464)
    e.add_argument("--addr", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "bench":  # the runner parses its own options
        from ._bench import main as bench_main
        return bench_main(argv[1:])
    args = build_parser().parse_args(_glue_negative(argv))
    if args.cmd is None:
        build_parser().print_help()
        return EXIT_ERROR
    try:
        return int(_COMMANDS[args.cmd](args) or 0)
    except _ops.OpsError as e:
        return _fail(str(e))
    except KeyError as e:  # a missing group
        return _fail(str(e.args[0]) if e.args else "not found")
    except BrokenPipeError:  # `fastq tail … | head` (before OSError, its base class)
        try:  # stdout's unflushed buffer must not fail again at exit
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return EXIT_OK
    except (ValueError, TypeError, OSError, _core.FastqError) as e:
        return _fail(str(e) or type(e).__name__)
    except KeyboardInterrupt:
        sys.stderr.write("fastq: interrupted\n")
        return 130


def _glue_negative(argv: List[str]) -> List[str]:
    """``--from -10m`` -> ``--from=-10m`` (argparse would take -10m for an option)."""
    out: List[str] = []
    i = 0
    while i < len(argv):
        if argv[i] in ("--from", "--to", "--start") and i + 1 < len(argv) and _REL.match(argv[i + 1]):
            out.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


def _fail(msg: str) -> int:
    sys.stderr.write(f"fastq: error: {msg}\n")
    return EXIT_ERROR


# ---------------------------------------------------------------- commands
def cmd_demo(a: argparse.Namespace) -> int:
    from ._demo import run_demo
    return run_demo(a.messages, a.workers, a.size, a.batch, durable=a.durable, kill=not a.no_kill, as_json=a.json)


def cmd_ls(a: argparse.Namespace) -> int:
    targets = _ops.store_paths(a.dir) if a.dir is not None else _ops.shm_names()
    rows = []
    for t in targets:
        try:
            log = _ops.open_target(t)
        except (_ops.OpsError, OSError, _core.FastqError) as e:
            rows.append({"name": t, "error": str(e)})
            continue
        try:
            rows.append(_ops.summary(log, t))
        finally:
            log.close()
    if a.json:
        _print_json(rows)
        return EXIT_OK
    if not rows:
        print("no queues" if a.dir is None else f"no durable logs under {a.dir}")
        return EXIT_OK
    table = []
    for r in rows:
        if "error" in r:
            table.append([r["name"], "?", "-", "-", "-", r["error"]])
        else:
            table.append([r["name"], r["kind"], _bytes(r["size_bytes"]), _num(r["head"]), str(r["members_alive"]),
                          ",".join(r["groups"]) or "-"])
    print(_table(table, ["NAME", "KIND", "SIZE", "HEAD", "ALIVE", "GROUPS"]))
    return EXIT_OK


def render_stat(s: Dict[str, Any]) -> str:
    """A human table of one Sampler sample."""
    lines = []
    if s["durable"]:
        lines.append(f"{s['name']}  durable log  head {_num(s['head'])}  oldest {_num(s['oldest'])}  "
                     f"durable {_num(s['durable_offset'])}  segment {_bytes(s['segment_size'])}  "
                     f"in {_rate(s['rate_in'])}")
    else:
        lines.append(f"{s['name']}  {s['kind']} in shared memory  head {_num(s['head'])}  oldest {_num(s['oldest'])}  "
                     f"used {_bytes(s['bytes_used'])}  free {_bytes(s['bytes_free'])} of {_bytes(s['capacity'])}  "
                     f"in {_rate(s['rate_in'])}")
    members = [m for m in s["members"] if not m["self"]]
    alive = [m for m in members if m["alive"]]
    lines.append(f"members: {len(alive)} alive" + (f", {len(members) - len(alive)} dead (not yet recovered)"
                                                    if len(members) != len(alive) else ""))
    if members:
        lines.append("  " + _table([[str(m["pid"]), m["role"], m["name"] or "-", m["group"] or "-", _num(m["puts"]),
                                     _num(m["gets"]), _num(m["leases"]), "yes" if m["alive"] else "DEAD"]
                                    for m in members],
                                   ["PID", "ROLE", "NAME", "GROUP", "PUTS", "GETS", "LEASES", "ALIVE"]).replace("\n", "\n  "))
    if s["groups"]:
        rows = [[n, _num(g["low"]), _num(g["lag"]), _bytes(g["lag_bytes"]), _age(g["oldest_age"]), _num(g["pending"]),
                 _rate(g["rate_out"]), _num(g["redelivered"]), _num(g["expired"]), _num(g["nacked"]),
                 _num(g["dead_lettered"]), str(g["consumers"])] for n, g in sorted(s["groups"].items())]
        lines.append(_table(rows, ["GROUP", "LOW", "LAG", "LAG_BYTES", "OLDEST", "PENDING", "OUT",
                                   "REDELIVERED", "EXPIRED", "NACKED", "DEAD", "CONSUMERS"]))
    else:
        lines.append("no groups")
    return "\n".join(lines)


def cmd_stat(a: argparse.Namespace) -> int:
    if a.watch is not None and not a.watch > 0:
        raise _ops.OpsError("--watch needs a positive number of seconds")
    if a.interval < 0:
        raise _ops.OpsError("--interval must be >= 0")
    if a.count is not None and a.count < 1:
        raise _ops.OpsError("--count must be >= 1")
    log = _ops.open_target(a.target)
    try:
        sampler = _ops.Sampler(log)
        if a.watch is None:
            s = sampler.sample()
            if a.interval > 0:
                time.sleep(a.interval)
                s = sampler.sample()
            _print_json(s) if a.json else print(render_stat(s))
            return EXIT_OK
        tty = sys.stdout.isatty() and not a.json
        n = 0
        sampler.sample()
        while True:
            time.sleep(a.watch)
            s = sampler.sample()
            if a.json:
                _print_json(s)
            else:
                sys.stdout.write(("\x1b[H\x1b[2J" if tty else "") + time.strftime("%H:%M:%S  ") + render_stat(s) + "\n")
                sys.stdout.flush()
            n += 1
            if a.count is not None and n >= a.count:
                return EXIT_OK
    finally:
        log.close()


def cmd_groups(a: argparse.Namespace) -> int:
    log = _ops.open_target(a.target)
    try:
        if a.action == "list":
            st = log.stats()
            out = {n: {"low": g["low"], "lag": g["lag"], "pending": g["pending"], "consumers": g["consumers"],
                       "settings": g["settings"]} for n, g in st["groups"].items()}
            if a.json:
                _print_json(out)
            elif not out:
                print("no groups")
            else:
                print(_table([[n, _num(g["low"]), _num(g["lag"]), _num(g["pending"]), str(g["consumers"]),
                               str(g["settings"]["max_deliveries"] or "-"),
                               f"{g['settings']['visibility_timeout']:g}s", g["settings"]["dead_letter"] or "-"]
                              for n, g in sorted(out.items())],
                             ["GROUP", "LOW", "LAG", "PENDING", "CONSUMERS", "MAX_DELIVERIES", "VISIBILITY", "DEAD_LETTER"]))
            return EXIT_OK
        if not a.group:
            raise _ops.OpsError(f"groups {a.action} needs a GROUP name")
        if a.action == "create":
            start = parse_position(a.start, "--start")
            if a.group in log.groups():
                raise _ops.OpsError(f"group {a.group!r} already exists")
            log.group(a.group, start=start, visibility_timeout=a.visibility_timeout or None,
                      max_deliveries=a.max_deliveries or None, dead_letter=None if a.no_dead_letter else True,
                      window=a.window)
            result = {"group": a.group, "created": True, "low": log.stats()["groups"][a.group]["low"]}
        elif a.action == "delete":
            log.delete_group(a.group)
            result = {"group": a.group, "deleted": True}
        else:
            if a.to is None:
                raise _ops.OpsError("groups reset needs --to earliest|latest|OFFSET|TIME")
            before = log.stats()["groups"].get(a.group)
            if before is None:
                raise _ops.OpsError(f"no group named {a.group!r} in {a.target}")
            try:
                live = log.reset_group(a.group, parse_position(a.to, "--to"), force=a.force)
            except _core.FastqError as e:
                holders = [m for m in log.members()
                           if m["alive"] and not m["self"] and m["role"] == "consumer" and m["group"] == a.group]
                if a.force or not holders:
                    raise
                who = ", ".join(f"{m['name'] or '?'} (pid {m['pid']})" for m in holders)
                raise _ops.OpsError(f"group {a.group!r} has {len(holders)} live consumer(s): {who}; stop them "
                                    "first, or pass --force (they must attach again)") from e
            after = log.stats()["groups"][a.group]
            result = {"group": a.group, "reset": True, "from": before["low"], "to": after["low"],
                      "consumers_detached": live}
        if a.json:
            _print_json(result)
        else:
            print(" ".join(f"{k}={v}" for k, v in result.items()))
        return EXIT_OK
    finally:
        log.close()


def _format_record(r: Record, fmt: str) -> bytes:
    if fmt == "raw":
        return r.data + b"\n"
    if fmt == "json":
        obj = {"offset": r.offset, "timestamp": r.timestamp, "key": _bytes_json(r.key), "data": _bytes_json(r.data)}
        if r.headers:
            obj["headers"] = {k: _bytes_json(v) if isinstance(v, bytes) else v for k, v in r.headers.items()}
        return (json.dumps(obj, sort_keys=True) + "\n").encode()
    ts = _dt.datetime.fromtimestamp(r.timestamp).isoformat(timespec="milliseconds")
    if fmt == "pickle":
        try:
            body = repr(pickle.loads(r.data))
        except Exception as e:
            body = f"<not a pickle: {type(e).__name__}> {r.data!r}"
    else:
        body = repr(r.data)
    key = f" key={r.key!r}" if r.key is not None else ""
    hdr = f" headers={r.headers!r}" if r.headers else ""
    return f"{r.offset} {ts}{key}{hdr} {body}\n".encode("utf-8", "backslashreplace")


def cmd_tail(a: argparse.Namespace) -> int:
    fmt = "json" if a.json else a.format
    if a.lines is not None and a.lines < 1:
        raise _ops.OpsError("-n must be >= 1")
    log = _ops.open_target(a.target)
    try:
        if a.start is None:  # like tail(1): the last 10 (or -n) records, then (-f) new ones
            n = a.lines or 10
            start: Any = max(log._offset_of("latest", "from") - n, log._offset_of("earliest", "from"))
            limit = None if a.follow else n
        else:
            start, limit = parse_position(a.start, "--from"), a.lines
        out = sys.stdout.buffer
        for r in _ops.records(log, start, a.follow, limit=limit):
            out.write(_format_record(r, fmt))
            if a.follow:
                out.flush()
        out.flush()
        return EXIT_OK
    finally:
        log.close()


# ---- dead letters
def _dlq_location(log: Log, group: Optional[str]) -> tuple:
    """(DLQ target, durable?) of the log's default DLQ or of the group's."""
    if group is not None:
        st = log.stats()["groups"].get(group)
        if st is None:
            raise _ops.OpsError(f"no group named {group!r} in {log.name}")
        name = st["settings"]["dead_letter"]
        if not name:
            raise _ops.OpsError(f"group {group!r} has no dead-letter queue")
    else:
        name = "dlq" if log.durable else log.name + ".dlq"
    if log.durable:
        return os.path.join(log.name, name), True
    return name, False


def _open_dlq(log: Log, group: Optional[str]) -> Log:
    where, _ = _dlq_location(log, group)
    try:
        return _ops.open_target(where)
    except _ops.OpsError:
        raise _ops.OpsError(f"{log.name} has no dead letters yet (no dead-letter log {where!r})") from None


def _dead_letters(dlq: Log, start: Any) -> Iterable[tuple]:
    for r in dlq.read(start):
        try:
            yield r, DeadLetter.decode(r.data)
        except Exception:
            yield r, None


def _dl_row(r: Record, dl: Optional[DeadLetter], handled: bool) -> Dict[str, Any]:
    if dl is None:
        return {"dlq_offset": r.offset, "error": "not a fastq dead-letter record", "handled": handled}
    return {"dlq_offset": r.offset, "log": dl.log, "group": dl.group, "offset": dl.offset,
            "deliveries": dl.deliveries, "reason": dl.reason, "timestamp": dl.timestamp, "dead_at": r.timestamp,
            "key": _bytes_json(dl.key), "size": len(dl.data), "handled": handled,
            "headers": {k: _bytes_json(v) if isinstance(v, bytes) else v for k, v in (dl.headers or {}).items()}}


def cmd_dlq(a: argparse.Namespace) -> int:
    log = _ops.open_target(a.target)
    try:
        dlq = _open_dlq(log, a.group)
        try:
            return _dlq_action(a, log, dlq)
        finally:
            dlq.close()
    finally:
        log.close()


def _dlq_action(a: argparse.Namespace, log: Log, dlq: Log) -> int:
    cursor = next((g for g in dlq._ring._groups() if (dlq._ring._group_info(g) or {}).get("name") == DLQ_GROUP), None)
    low = dlq.stats()["groups"][DLQ_GROUP]["low"] if cursor is not None else None

    def handled(offset: int) -> bool:  # requeued or purged already
        return cursor is not None and dlq._ring._finished(cursor, offset)

    if a.action in ("list", "show"):
        if a.action == "show" and len(a.offsets) != 1:
            raise _ops.OpsError("dlq show needs exactly one dead-letter offset")
        start = a.offsets[0] if a.action == "show" else ("earliest" if a.all or low is None else low)
        rows = []
        for r, dl in _dead_letters(dlq, start):
            if a.action == "show":
                if r.offset != a.offsets[0]:
                    break
                row = _dl_row(r, dl, handled(r.offset))
                if dl is not None:
                    row["data"] = _bytes_json(dl.data)
                _print_json(row) if a.json else print("\n".join(f"{k}: {v}" for k, v in row.items()))
                return EXIT_OK
            dlr = _dl_row(r, dl, handled(r.offset))
            if a.all or not dlr["handled"]:
                rows.append(dlr)
        if a.action == "show":
            raise _ops.OpsError(f"no dead letter at offset {a.offsets[0]} of {dlq.name}")
        if a.json:
            _print_json(rows)
        elif not rows:
            print("no dead letters" + ("" if a.all else " pending (--all shows handled ones too)"))
        else:
            print(_table([[str(x["dlq_offset"]), x.get("group", "?"), str(x.get("offset", "?")),
                           str(x.get("deliveries", "?")), _age(time.time() - x["dead_at"]) if "dead_at" in x else "-",
                           _bytes(x.get("size")), "yes" if x["handled"] else "no",
                           (x.get("reason") or x.get("error") or "")[:60]] for x in rows],
                         ["DLQ_OFFSET", "GROUP", "OFFSET", "DELIVERIES", "AGE", "SIZE", "HANDLED", "REASON"]))
        return EXIT_OK
    # requeue / purge: through the cursor group DLQ_GROUP, so each dead letter is handled once
    if not a.offsets and not a.all:
        raise _ops.OpsError(f"dlq {a.action} needs dead-letter offsets or --all")
    want = set(a.offsets)
    target: Optional[Log] = None
    done, kept, stopped = [], 0, False
    grp = dlq.group(DLQ_GROUP, start="earliest", visibility_timeout=None, max_deliveries=None, dead_letter=None)
    try:
        with grp.consumer("fastq dlq " + a.action) as c:
            held = []
            while True:
                msgs = c.get_many(256, timeout=0)
                if not msgs:
                    break
                for m in msgs:
                    if not a.all and m.offset not in want:
                        held.append(m)  # released when the consumer closes
                        continue
                    if a.action == "requeue":
                        try:
                            dl = DeadLetter.decode(m.data)
                        except Exception:
                            raise _ops.OpsError(f"dead-letter offset {m.offset} is not a fastq dead letter; "
                                                "purge it instead") from None
                        if target is None:
                            target = _requeue_target(a, log, dl)
                        try:
                            target.append(dl.data, key=dl.key, headers=dl.headers, timeout=10.0)
                        except queue.Full:
                            raise _ops.OpsError(f"{target.name} stayed full for 10 s (its groups hold all its "
                                                f"space); requeued so far: {done}") from None
                    m.ack()
                    done.append(m.offset)
                if len(held) >= grp.settings["window"] - 256:
                    stopped = True  # the lease window is full of records we were not asked for
                    break
            kept = len(held)
    finally:
        if target is not None and target is not log:
            target.close()
    missing = sorted(want - set(done)) if not a.all else []
    result = {"action": a.action, "done": done, "count": len(done), "not_found": missing, "pending_left": kept,
              "stopped_early": stopped}
    if target is not None:
        result["into"] = target.name
    if a.json:
        _print_json(result)
    else:
        verb = "requeued" if a.action == "requeue" else "purged"
        print(f"{verb} {len(done)} dead letter(s)" + (f" into {target.name}" if target is not None else "")
              + (f"; not found or already handled: {missing}" if missing and not stopped else "")
              + (f"; not reached (the scan stopped after holding {kept} pending dead letters before them; "
                 f"handle those first): {missing}" if missing and stopped else ""))
    return EXIT_FAILED if missing else EXIT_OK


def _requeue_target(a: argparse.Namespace, log: Log, dl: DeadLetter) -> Log:
    if a.to is not None:
        return _ops.open_target(a.to)
    others = sorted(set(log.groups()) - {dl.group})
    if others and not a.force:
        raise _ops.OpsError(f"{log.name} has other groups ({', '.join(others)}) that would receive requeued "
                            "records again: pass --force to requeue anyway, or --to LOG")
    return log


# ---- durable store
def cmd_verify(a: argparse.Namespace) -> int:
    if not os.path.isdir(a.path):
        raise _ops.OpsError(f"no durable log at {a.path!r} (no such directory)")
    log = _ops.open_target(a.path)
    try:
        if not log.durable:
            raise _ops.OpsError("verify checks durable logs (a directory)")
        t0 = time.perf_counter()
        st = log.stats()
        result: Dict[str, Any] = {"path": a.path, "oldest": st["oldest"], "head": st["head"],
                                  "segments": sum(1 for n in os.listdir(a.path) if n.endswith(".seg")),
                                  "bytes": _ops.store_bytes(a.path)}
        try:
            result["records"] = log.verify()
            result["ok"] = True
        except _core.CorruptRecordError as e:
            result.update(ok=False, bad_offset=e.offset, error=str(e))
        result["seconds"] = round(time.perf_counter() - t0, 3)
    finally:
        log.close()
    if a.json:
        _print_json(result)
    elif result["ok"]:
        print(f"ok: {result['records']:,} records (offsets {result['oldest']:,}..{result['head']:,}) in "
              f"{result['segments']} segment(s), {_bytes(result['bytes'])}, every checksum valid "
              f"({result['seconds']} s)")
    else:
        print(f"CORRUPT: {result['error']}")
    return EXIT_OK if result["ok"] else EXIT_FAILED


def cmd_recover(a: argparse.Namespace) -> int:
    if not os.path.isdir(a.path) or not os.path.exists(os.path.join(a.path, "control")):
        raise _ops.OpsError(f"no durable log at {a.path!r}")
    if a.dry_run:
        return _recover_dry_run(a)
    try:
        log = open_log(a.path, durable=True, create=False, fsync="never", recover=True,
                       on_corrupt="skip" if a.skip_corrupt else "refuse")
    except _core.CorruptRecordError as e:
        raise _ops.OpsError(f"{e} (fastq recover --skip-corrupt drops them)") from None
    try:
        rep = dict(log.recovery_report or {})
        st = log.stats()
        rep.update(path=a.path, oldest=st["oldest"], head=st["head"])
    finally:
        log.close()
    if a.json:
        _print_json(rep)
    else:
        print(f"recovered {a.path}: records {rep['oldest']:,}..{rep['head']:,}; "
              + ", ".join(f"{k}={v}" for k, v in sorted(rep.items()) if k not in ("path", "oldest", "head")))
    return EXIT_OK


def _recover_dry_run(a: argparse.Namespace) -> int:
    log = _ops.open_target(a.path)
    try:
        st = log.stats()
        res: Dict[str, Any] = {"path": a.path, "dry_run": True, "oldest": st["oldest"], "head": st["head"],
                               "checkpoint": st["durable_offset"], "recovery_at_open": log.recovery_report}
        try:
            res["records"] = log.verify()
            res["would"] = "keep every record"
        except _core.CorruptRecordError as e:
            res["bad_offset"] = e.offset
            res["error"] = str(e)
            if e.offset is not None and e.offset >= st["durable_offset"]:
                res["would"] = f"cut the log at offset {e.offset} (a torn tail above the checkpoint)"
            else:
                res["would"] = (f"refuse to open (corruption at offset {e.offset}, below the checkpoint "
                                f"{st['durable_offset']}); with --skip-corrupt: drop the damaged record(s)")
    finally:
        log.close()
    if a.json:
        _print_json(res)
    else:
        print(f"{a.path}: records {res['oldest']:,}..{res['head']:,}, checkpoint at {res['checkpoint']:,}; "
              f"recovery would {res['would']}")
    return EXIT_OK if "bad_offset" not in res else EXIT_FAILED


def cmd_unlink(a: argparse.Namespace) -> int:
    _ops.remove(a.target)
    return EXIT_OK


def cmd_exporter(a: argparse.Namespace) -> int:
    from .metrics import serve
    serve(a.targets, port=a.port, addr=a.addr)
    return EXIT_OK


def cmd_worker(a: argparse.Namespace) -> int:
    import logging
    from .jobs import Pool, load_app
    auto = None
    if a.autoscale is not None:
        lo, sep, hi = a.autoscale.partition(":")
        if not sep or not lo.isdigit() or not hi.isdigit():
            raise _ops.OpsError(f"--autoscale takes LOW:HIGH (e.g. 1:16), not {a.autoscale!r}")
        auto = (int(lo), int(hi))
    logging.basicConfig(level=a.loglevel.upper(), format="%(asctime)s %(processName)s %(levelname)s %(message)s")
    app = load_app(a.app)
    pool = Pool(app, a.queue, processes=a.processes, autoscale=auto, prefetch=a.prefetch,
                scale_interval=a.scale_interval, idle_timeout=a.idle_timeout)
    return pool.run()


def _jobs_app(spec: str) -> Any:
    from .jobs import App, load_app
    if ":" in spec and not os.path.isdir(spec):
        return App.observe(load_app(spec).path)
    try:
        return App.observe(spec)
    except FileNotFoundError as e:
        raise _ops.OpsError(str(e)) from None


def cmd_jobs(a: argparse.Namespace) -> int:
    app = _jobs_app(a.app)
    try:
        queues = [a.queue] if a.queue else app.queues()
        if a.queue and a.queue not in app.queues():
            raise _ops.OpsError(f"{app.path} has no queue {a.queue!r} (queues: {', '.join(app.queues()) or 'none'})")
        if a.action in ("ls", "stat"):
            rows = []
            for q in queues:
                st = app.stats(q)
                st["dead_pending"] = _dead_pending(app, q)
                rows.append(st)
            if a.json:
                _print_json(rows if a.action == "ls" else {r["queue"]: r for r in rows})
            elif a.action == "ls":
                print(_table([[r["queue"], _num(r["enqueued"]), _num(r["backlog"]), _num(r["running"]),
                               _num(r["retried"]), _num(r["results"].get("succeeded", 0)),
                               _num(r["results"].get("dead", 0)), _num(r["dead_pending"]), _num(r["workers"]),
                               _age(r["oldest_age"])] for r in rows],
                             ["QUEUE", "ENQUEUED", "BACKLOG", "RUNNING", "RETRIED", "SUCCEEDED", "DEAD",
                              "DLQ", "WORKERS", "OLDEST"]) if rows else f"no queues in {app.path}")
            else:
                for r in rows:
                    print(f"queue {r['queue']} of {app.path}")
                    for k in ("enqueued", "backlog", "running", "delivered", "retried", "dead_lettered",
                              "dead_pending", "workers"):
                        print(f"  {k.replace('_', ' '):14} {_num(r[k])}")
                    print(f"  {'oldest':14} {_age(r['oldest_age'])}")
                    for k, v in sorted(r["results"].items()):
                        print(f"  {'results ' + k:14} {_num(v)}")
            return EXIT_OK
        if a.action == "retry":
            return _jobs_retry(a, app, a.queue or "default")
        # purge
        n = app._results.purge(a.queue, everything=a.results)
        out: Dict[str, Any] = {"results_deleted": n}
        if a.dead:
            for q in queues:
                out[f"dead_purged:{q}"] = _jobs_dlq(app, q, "purge", [], True, a.json, quiet=True)
        if a.json:
            _print_json(out)
        else:
            print(f"deleted {n} {'stored' if a.results else 'expired'} result(s)" +
                  "".join(f"; purged {v} dead job(s) of {k.split(':', 1)[1]}" for k, v in out.items()
                          if k.startswith("dead_purged:")))
        return EXIT_OK
    finally:
        app.close()


def _dead_pending(app: Any, queue: str) -> int:
    path = os.path.join(app.path, "queues", queue, "dlq")
    if not os.path.exists(os.path.join(path, "control")):
        return 0
    dlq = _ops.open_target(path)
    try:
        st = dlq.stats()
        g = st["groups"].get(DLQ_GROUP)   # the cursor of `dlq requeue|purge`: below it, handled
        return g["lag"] if g else st["head"] - st["oldest"]
    finally:
        dlq.close()


def _jobs_dlq(app: Any, queue: str, action: str, offsets: List[int], every: bool, as_json: bool,
              quiet: bool = False) -> int:
    """dlq requeue/purge on a queue's dead-letter log; returns how many."""
    log = _ops.open_target(os.path.join(app.path, "queues", queue))
    try:
        try:
            dlq = _ops.open_target(os.path.join(log.name, "dlq"))
        except _ops.OpsError:
            if quiet or every:
                return 0
            raise _ops.OpsError(f"queue {queue!r} has no dead jobs") from None
        try:
            ns = argparse.Namespace(action=action, offsets=offsets, all=every, to=None, force=True,
                                    json=as_json or quiet, group=None)
            if quiet:  # the count, not the report
                import contextlib
                import io
                buf = io.StringIO()
                with contextlib.redirect_stdout(buf):
                    _dlq_action(ns, log, dlq)
                return int(json.loads(buf.getvalue())["count"])
            return _dlq_action(ns, log, dlq)
        finally:
            dlq.close()
    finally:
        log.close()


def _jobs_retry(a: argparse.Namespace, app: Any, queue: str) -> int:
    """Enqueue dead jobs again (new job ids), from the queue's dead-letter log."""
    if not a.jobs and not a.all:
        raise _ops.OpsError("jobs retry needs job ids (queue:offset) or --all")
    if a.all:
        return _jobs_dlq(app, queue, "requeue", [], True, a.json)
    want = set()
    for jid in a.jobs:
        q, _, off = jid.rpartition(":")
        if (q and q != queue) or not off.isdigit():
            raise _ops.OpsError(f"not a job id of queue {queue!r}: {jid!r}")
        want.add(int(off))
    path = os.path.join(app.path, "queues", queue, "dlq")
    try:
        dlq = _ops.open_target(path)
    except _ops.OpsError:
        raise _ops.OpsError(f"queue {queue!r} has no dead jobs") from None
    try:
        found = {dl.offset: r.offset for r, dl in _dead_letters(dlq, "earliest") if dl is not None and dl.offset in want}
    finally:
        dlq.close()
    missing = sorted(want - set(found))
    if missing:
        raise _ops.OpsError(f"not dead jobs of queue {queue!r}: {', '.join(f'{queue}:{m}' for m in missing)}")
    return _jobs_dlq(app, queue, "requeue", sorted(found.values()), False, a.json)


_COMMANDS = {"worker": cmd_worker, "jobs": cmd_jobs, "demo": cmd_demo, "ls": cmd_ls, "stat": cmd_stat, "groups": cmd_groups, "tail": cmd_tail,
             "dlq": cmd_dlq, "recover": cmd_recover, "verify": cmd_verify, "unlink": cmd_unlink,
             "exporter": cmd_exporter}
