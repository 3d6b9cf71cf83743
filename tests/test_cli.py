"""The operations layer: ``python -m fastq COMMAND`` (src/fastq/cli.py and
_ops.py), the Prometheus collector and exporter (metrics.py) and the demo
(_demo.py), run in real subprocesses against real shared-memory queues and
durable logs; plus the library calls they rest on (``Log.read`` on shared
memory, ``Log.reset_group``, ``Log.members``, ``Group.consumer(name=)``,
``Log.group(name)`` attaching without settings).

Every command is checked for its output (text and ``--json``) and its exit
status: 0 on success, 1 when a check failed (verify, recover --dry-run, dlq
offsets not found, demo), 2 for errors — and then exactly one line on stderr,
``fastq: error: ...``, never a traceback.

Shared-memory queues are named ``t-<uuid>`` (removed afterwards, with their
``.dlq``); durable logs live under pytest's ``tmp_path``.
"""
import base64
import datetime as dt
import json
import os
import pickle
import queue as _queue
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
import zlib

import pytest

import fastq
from fastq import metrics as fq_metrics

pytestmark = [pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fastq is Linux-only"),
              pytest.mark.timeout(120)]

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHM = "/dev/shm/fastq."


def _child_env():
    # children import the very fastq these tests import: src/ when run with
    # PYTHONPATH=src (a build in place), else the installed package (CI)
    env = dict(os.environ)
    pkg_root = os.path.dirname(os.path.dirname(os.path.abspath(fastq.__file__)))
    env["PYTHONPATH"] = pkg_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


ENV = _child_env()


# --------------------------------------------------------------------------- running the command line

def fq(*args, timeout=30):
    """``python -m fastq ARGS`` -> CompletedProcess (text)."""
    return subprocess.run([sys.executable, "-m", "fastq", *map(str, args)], env=ENV, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def ok(*args, rc=0, timeout=30):
    p = fq(*args, timeout=timeout)
    assert p.returncode == rc, f"fastq {args}: exit {p.returncode}\nstdout: {p.stdout}\nstderr: {p.stderr}"
    assert "Traceback" not in p.stderr, p.stderr
    return p


def js(*args, rc=0, timeout=30):
    """Run with the output parsed as one JSON document."""
    return json.loads(ok(*args, rc=rc, timeout=timeout).stdout)


def err(*args, match=None, rc=2, timeout=30):
    """A command that must fail with exit ``rc`` and ONE line on stderr: ``fastq: error: ...``."""
    p = fq(*args, timeout=timeout)
    assert p.returncode == rc, f"fastq {args}: exit {p.returncode}\nstdout: {p.stdout}\nstderr: {p.stderr}"
    assert "Traceback" not in p.stderr, p.stderr
    lines = p.stderr.splitlines()
    assert len(lines) == 1, f"fastq {args}: stderr is not one line: {p.stderr!r}"
    assert lines[0].startswith("fastq: error: "), lines[0]
    if match is not None:
        assert re.search(match, lines[0]), f"{match!r} not in {lines[0]!r}"
    return lines[0]


class Child:
    """A subprocess whose stdout lines are read by a thread (with timeouts)."""

    def __init__(self, argv, stdin=True):
        self.proc = subprocess.Popen(argv, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     stdin=subprocess.PIPE if stdin else subprocess.DEVNULL)
        self.lines = _queue.Queue()
        self.err = []
        threading.Thread(target=self._pump, args=(self.proc.stdout, self.lines.put), daemon=True).start()
        threading.Thread(target=self._pump, args=(self.proc.stderr, self.err.append), daemon=True).start()

    @staticmethod
    def _pump(stream, put):
        for line in iter(stream.readline, b""):
            put(line.decode("utf-8", "backslashreplace").rstrip("\n"))
        put(None)

    def line(self, timeout=15.0):
        try:
            got = self.lines.get(timeout=timeout)
        except _queue.Empty:
            raise AssertionError(f"no output within {timeout}s; stderr: {''.join(self.err)}") from None
        assert got is not None, f"child exited ({self.proc.poll()}); stderr: {''.join(self.err)}"
        return got

    def send(self, text="go\n"):
        self.proc.stdin.write(text.encode())
        self.proc.stdin.flush()

    def wait(self, timeout=15.0):
        return self.proc.wait(timeout=timeout)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=15)
        for s in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if s is not None:
                s.close()


def py_child(code, *args, stdin=True):
    return Child([sys.executable, "-c", code, *map(str, args)], stdin=stdin)


# A consumer in another process: leases COUNT records of GROUP, says "held N",
# waits for a line on stdin, then tries one more get and reports what happened.
HOLDER = r"""
import sys, fastq
name, durable, group, label, count = sys.argv[1:6]
log = fastq.open(name, durable=durable == "1")
c = log.group(group).consumer(name=label)
ms = c.get_many(int(count), timeout=5)
print("held", len(ms), flush=True)
sys.stdin.readline()
try:
    c.get_many(1, timeout=0.2)
    print("no error", flush=True)
except fastq.FastqError as e:
    print("FastqError", e, flush=True)
"""

# A producer that is also a consumer of GROUP: appends and acks until killed.
PUMP = r"""
import sys, time, fastq
log = fastq.open(sys.argv[1])
c = log.group(sys.argv[2]).consumer(name="pump")
print("ready", flush=True)
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    log.append_many([b"pump"] * 20)
    ms = c.get_many(20, timeout=0.01)
    if ms:
        c.ack(ms)
    time.sleep(0.005)
"""


# --------------------------------------------------------------------------- fixtures and helpers

@pytest.fixture
def names():
    """names() -> a fresh queue name; the queues (and their .dlq) are removed afterwards."""
    made = []

    def make():
        n = "t-" + uuid.uuid4().hex
        made.append(n)
        return n

    yield make
    for n in made:
        for suffix in ("", ".dlq"):
            try:
                os.unlink(SHM + n + suffix)
            except FileNotFoundError:
                pass


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(pred, timeout=10.0, step=0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(step)
    return pred()


def make_shm(name, n=25, capacity=1 << 20, keyed=True):
    """A shared-memory log with n records b"r<i>" (odd ones keyed b"k<i>")."""
    log = fastq.open(name, capacity=capacity)
    for i in range(n):
        log.append(b"r%d" % i, key=(b"k%d" % i) if keyed and i % 2 else None)
    return log


def make_durable(path, n=30, segment_size=64 << 10):
    log = fastq.open(str(path), durable=True, segment_size=segment_size, fsync="never")
    for i in range(n):
        log.append(b"REC%05d|" % i + b"x" * 400, key=b"key%d" % i)
    return log


def dead_letters(log, group="work", count=3, other_group="audit"):
    """Dead-letter the first `count` records of `log` through `group`
    (max_deliveries=1: the first nack dead-letters); an `other_group` too."""
    g = log.group(group, max_deliveries=1, visibility_timeout=30)
    if other_group:
        log.group(other_group)
    with g.consumer(name="dl-maker") as c:
        ms = c.get_many(count, timeout=2)
        assert len(ms) == count
        for m in ms:
            assert m.nack(reason=f"bad record {m.offset}")
    return g


def offsets_of_json_lines(text):
    return [json.loads(line)["offset"] for line in text.splitlines()]


def corrupt_record(path, marker, delta=40):
    """Flip one byte inside the payload of the record whose bytes contain `marker`."""
    for fn in sorted(os.listdir(path)):
        if not fn.endswith(".seg"):
            continue
        full = os.path.join(path, fn)
        with open(full, "r+b") as f:
            data = f.read()
            i = data.find(marker)
            if i >= 0:
                f.seek(i + delta)
                f.write(bytes([data[i + delta] ^ 0xFF]))
                return fn
    raise AssertionError(f"{marker!r} not found in {path}")


def scrape(port):
    from prometheus_client.parser import text_string_to_metric_families
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        assert r.status == 200
        text = r.read().decode()
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    values = {}
    for f in fams.values():
        for s in f.samples:
            values[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return text, fams, values


def metric(values, name, **labels):
    return values.get((name, tuple(sorted(labels.items()))))


# =========================================================================== ls

def test_ls_shared_memory_json_and_text(names):
    name, qname = names(), names()
    log = make_shm(name)
    log.group("billing")
    log.group("audit", start="latest")
    q = fastq.Queue(name=qname)
    q.put("hello")
    try:
        rows = {r["name"]: r for r in js("ls", "--json")}
        r = rows[name]
        assert r["kind"] == "log" and r["head"] == 25 and r["oldest"] == 0
        assert r["groups"] == ["audit", "billing"]
        assert r["size_bytes"] == 1 << 20 and r["bytes_used"] > 0
        # only this test process is attached: the `ls` process must not count itself
        assert r["members_alive"] == 1
        rq = rows[qname]
        assert rq["kind"] == "queue" and rq["head"] == 1
        assert rq["groups"] == []  # a Queue's implicit group is not listed
        # a fastq.Queue: its records are pickles, its implicit group is "queue"
        assert ok("tail", qname, "--format", "pickle").stdout.endswith(" 'hello'\n")
        sq = js("stat", qname, "--json", "--interval", "0")
        assert sq["kind"] == "queue" and list(sq["groups"]) == ["queue"] and sq["groups"]["queue"]["lag"] == 1
        assert [m["role"] for m in sq["members"] if not m["self"]] == ["queue"]
        assert ok("stat", qname, "--interval", "0").stdout.startswith(f"{qname}  queue in shared memory  head 1")
        text = ok("ls").stdout
        head, *lines = text.splitlines()
        assert head.split() == ["NAME", "KIND", "SIZE", "HEAD", "ALIVE", "GROUPS"]
        mine = [ln.split() for ln in lines if ln.split()[0] == name]
        assert mine == [[name, "log", "1.0", "MiB", "25", "1", "audit,billing"]]
    finally:
        q.close()
        log.close()


def test_ls_dir_lists_durable_logs_recursively(tmp_path):
    a = make_durable(tmp_path / "a", n=5)
    b = make_durable(tmp_path / "sub" / "b", n=4)
    dead_letters(b, count=2)
    (tmp_path / "not-a-log").mkdir()
    (tmp_path / "not-a-log" / "file.txt").write_text("x")
    a.close()
    b.close()
    rows = js("ls", tmp_path, "--json")
    by = {r["name"]: r for r in rows}
    assert sorted(by) == [str(tmp_path / "a"), str(tmp_path / "sub" / "b"), str(tmp_path / "sub" / "b" / "dlq")]
    ra = by[str(tmp_path / "a")]
    assert ra["kind"] == "durable" and ra["head"] == 5 and ra["groups"] == [] and ra["size_bytes"] > 0
    assert ra["durable_offset"] == 5 and ra["members_alive"] == 0
    assert by[str(tmp_path / "sub" / "b")]["groups"] == ["audit", "work"]
    assert by[str(tmp_path / "sub" / "b" / "dlq")]["head"] == 2
    text = ok("ls", tmp_path).stdout
    assert text.splitlines()[0].split()[:3] == ["NAME", "KIND", "SIZE"]
    assert str(tmp_path / "sub" / "b" / "dlq") in text and "durable" in text
    empty = tmp_path / "empty"
    empty.mkdir()
    assert js("ls", empty, "--json") == []
    assert "no durable logs under" in ok("ls", empty).stdout
    # an unreadable log is a row with an error, not a failure of `ls`
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "control").write_bytes(b"\0" * 100)
    os.chmod(bad / "control", 0o600)
    rows = js("ls", tmp_path, "--json")
    assert [r for r in rows if r["name"] == str(bad)][0]["error"]
    err("ls", tmp_path / "missing", match="not a directory")


# =========================================================================== stat

def test_stat_json_counters_members_and_text(names):
    name = names()
    log = make_shm(name, n=10)
    g = log.group("g", max_deliveries=2, visibility_timeout=30)
    c = g.consumer(name="alpha")
    m = c.get(timeout=1)
    assert m.nack(delay=0)                      # nacked 1
    m = c.get(timeout=1)
    assert (m.offset, m.deliveries) == (0, 2)   # redelivered 1
    assert m.nack(delay=0)                      # at the limit: dead-lettered
    ms = c.get_many(3, timeout=1)
    assert c.ack(ms[:2]) == 2                   # offsets 1, 2 acked; 3 stays leased
    holder = py_child(HOLDER, name, 0, "g", "beta", 4)
    try:
        assert holder.line() == "held 4"
        s = js("stat", name, "--json", "--interval", "0")
        assert s["name"] == name and s["durable"] is False and s["kind"] == "log"
        assert s["head"] == 10 and s["oldest"] == 0 and s["capacity"] == 1 << 20
        assert s["bytes_used"] + s["bytes_free"] == s["capacity"]
        assert s["rate_in"] is None
        gs = s["groups"]["g"]
        assert gs["rate_out"] is None
        assert gs["low"] == 3 and gs["lag"] == 7
        assert gs["pending"] == 5                   # 1 held here + 4 by beta
        assert gs["redelivered"] == 1 and gs["nacked"] == 1 and gs["dead_lettered"] == 1
        assert gs["acked"] == 2 and gs["consumers"] == 2
        assert gs["settings"]["max_deliveries"] == 2 and gs["settings"]["dead_letter"] == name + ".dlq"
        others = [x for x in s["members"] if not x["self"]]
        by = {x["name"]: x for x in others}
        assert by["alpha"]["pid"] == os.getpid() and by["alpha"]["role"] == "consumer"
        assert by["alpha"]["group"] == "g" and by["alpha"]["leases"] == 1 and by["alpha"]["alive"]
        assert by["beta"]["pid"] == holder.proc.pid and by["beta"]["role"] == "consumer"
        assert by["beta"]["leases"] == 4 and by["beta"]["group"] == "g"
        producers = [x for x in others if x["role"] == "producer"]
        assert [x["pid"] for x in producers if x["pid"] == os.getpid()]
        assert s["members_alive"] == len([x for x in others if x["alive"]])
        text = ok("stat", name, "--interval", "0").stdout
        assert f"{name}  log in shared memory  head 10" in text
        assert "members: " in text and "alpha" in text and "beta" in text and str(holder.proc.pid) in text
        row = [ln.split() for ln in text.splitlines() if ln.startswith("g ")][0]
        # GROUP LOW LAG LAG_BYTES(2) OLDEST PENDING OUT REDELIVERED EXPIRED NACKED DEAD CONSUMERS
        assert row[:3] == ["g", "3", "7"] and row[-7:] == ["5", "-", "1", "0", "1", "1", "2"]
    finally:
        holder.stop()
        c.close()
        log.close()


def test_stat_rates_while_a_producer_appends(names):
    name = names()
    log = fastq.open(name, capacity=4 << 20)
    log.group("g")
    pump = py_child(PUMP, name, "g", stdin=False)
    try:
        assert pump.line() == "ready"
        s = js("stat", name, "--json", "--interval", "0.3")
        assert s["rate_in"] is not None and s["rate_in"] > 0
        assert s["groups"]["g"]["rate_out"] is not None and s["groups"]["g"]["rate_out"] > 0
        pumps = [m for m in s["members"] if m["pid"] == pump.proc.pid]
        assert {m["role"] for m in pumps} == {"producer", "consumer"}
        assert [m["name"] for m in pumps if m["role"] == "consumer"] == ["pump"]
        # --watch --count: one JSON object per sample, each with rates
        p = ok("stat", name, "--watch", "0.1", "--count", "3", "--json")
        samples = [json.loads(ln) for ln in p.stdout.splitlines()]
        assert len(samples) == 3
        assert all(x["rate_in"] is not None and x["rate_in"] > 0 for x in samples)
        assert all(x["groups"]["g"]["rate_out"] is not None for x in samples)
        assert samples[0]["head"] <= samples[1]["head"] <= samples[2]["head"]
        # text --watch to a pipe: no screen clearing, one block per sample
        p = ok("stat", name, "--watch", "0.1", "--count", "2")
        assert "\x1b[" not in p.stdout
        assert len(re.findall(rf"^\d\d:\d\d:\d\d  {re.escape(name)}  log in shared memory", p.stdout, re.M)) == 2
        assert re.search(r"in \d+(\.\d+)?[kM]?/s", p.stdout)
    finally:
        pump.stop()
        log.close()


def test_stat_watch_until_interrupted(names):
    name = names()
    log = make_shm(name, n=3)
    w = Child([sys.executable, "-m", "fastq", "stat", name, "--watch", "0.05", "--json"], stdin=False)
    try:
        first = json.loads(w.line())
        assert first["head"] == 3 and first["rate_in"] == 0.0
        log.append(b"x")
        assert wait_for(lambda: json.loads(w.line())["head"] == 4, timeout=10)
        w.proc.send_signal(signal.SIGINT)
        assert w.wait() == 130
        assert wait_for(lambda: any(e and "fastq: interrupted" in e for e in w.err), timeout=5)
    finally:
        w.stop()
        log.close()


DOOMED = r"""
import os, signal, sys, fastq
log = fastq.open(sys.argv[1])
c = log.group("g").consumer(name="doomed")
assert len(c.get_many(4, timeout=5)) == 4
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_killed_consumer_shows_dead_and_does_not_block_a_reset(names):
    name = names()
    log = make_shm(name, n=10)
    log.group("g")
    try:
        p = subprocess.run([sys.executable, "-c", DOOMED, name], env=ENV, capture_output=True, timeout=30)
        assert p.returncode == -signal.SIGKILL, p.stderr
        s = js("stat", name, "--json", "--interval", "0")
        doomed = [m for m in s["members"] if m["name"] == "doomed"]
        assert len(doomed) == 1 and doomed[0]["alive"] is False and doomed[0]["leases"] == 4
        assert s["members_alive"] == 1          # this test's handle only
        text = ok("stat", name, "--interval", "0").stdout
        assert "dead (not yet recovered)" in text
        assert re.search(r"consumer\s+doomed\s+g\s.*\bDEAD$", text, re.M)
        # observing did not recover it; an administrative command may (it joins), and is not refused
        r = js("groups", name, "reset", "g", "--to", "5", "--json")
        assert (r["to"], r["consumers_detached"]) == (5, 0)
        st = log.stats()["groups"]["g"]
        assert (st["low"], st["pending"]) == (5, 0)
    finally:
        log.close()


def test_stat_durable_log(tmp_path):
    path = tmp_path / "d"
    log = make_durable(path, n=12)
    dead_letters(log, count=2)
    log.flush()
    s = js("stat", path, "--json", "--interval", "0")
    assert s["durable"] is True and s["kind"] == "durable" and s["head"] == 12 and s["oldest"] == 0
    assert s["durable_offset"] == 12 and s["segment_size"] == 64 << 10
    assert s["groups"]["work"]["dead_lettered"] == 2 and s["groups"]["work"]["low"] == 2
    assert s["groups"]["audit"]["lag"] == 12
    assert [m for m in s["members"] if m["self"]] == []  # an observer of a durable log takes no slot
    text = ok("stat", path, "--interval", "0").stdout
    assert f"{path}  durable log  head 12  oldest 0  durable 12  segment 64.0 KiB" in text
    log.close()


# =========================================================================== groups

def test_groups_create_list_delete(names):
    name = names()
    log = make_shm(name, n=20)
    try:
        assert js("groups", name, "--json") == {}
        assert ok("groups", name).stdout.strip() == "no groups"
        r = js("groups", name, "create", "fresh", "--json")
        assert r == {"group": "fresh", "created": True, "low": 0}
        r = js("groups", name, "create", "late", "--start", "latest", "--visibility-timeout", "0",
               "--max-deliveries", "0", "--no-dead-letter", "--window", "64", "--json")
        assert r["low"] == 20
        r = js("groups", name, "create", "mid", "--start", "7", "--visibility-timeout", "2.5",
               "--max-deliveries", "5", "--json")
        assert r["low"] == 7
        lst = js("groups", name, "--json")
        assert sorted(lst) == ["fresh", "late", "mid"]
        assert lst["fresh"]["settings"]["visibility_timeout"] == 30.0
        assert lst["fresh"]["settings"]["max_deliveries"] == 16
        assert lst["fresh"]["settings"]["dead_letter"] == name + ".dlq"
        assert lst["fresh"]["settings"]["window"] == 1024
        late = lst["late"]["settings"]
        assert (late["visibility_timeout"], late["max_deliveries"], late["dead_letter"], late["window"]) == \
            (0.0, 0, None, 64)
        assert lst["mid"]["settings"]["visibility_timeout"] == 2.5 and lst["mid"]["settings"]["max_deliveries"] == 5
        assert (lst["mid"]["low"], lst["mid"]["lag"], lst["late"]["lag"]) == (7, 13, 0)
        # the library sees the same groups and settings
        assert sorted(log.groups()) == ["fresh", "late", "mid"]
        assert log.group("late").settings["window"] == 64
        text = ok("groups", name, "list").stdout
        assert text.splitlines()[0].split() == ["GROUP", "LOW", "LAG", "PENDING", "CONSUMERS", "MAX_DELIVERIES",
                                                "VISIBILITY", "DEAD_LETTER"]
        assert [ln.split() for ln in text.splitlines() if ln.startswith("mid ")] == \
            [["mid", "7", "13", "0", "0", "5", "2.5s", name + ".dlq"]]
        err("groups", name, "create", "fresh", match="already exists")
        assert js("groups", name, "delete", "mid", "--json") == {"group": "mid", "deleted": True}
        assert "mid" not in log.groups() and "mid" not in js("groups", name, "--json")
        assert ok("groups", name, "delete", "late").stdout.strip() == "group=late deleted=True"
        err("groups", name, "delete", "mid", match="no group named 'mid'")
    finally:
        log.close()


def test_groups_reset_positions_on_a_durable_log(tmp_path):
    path = tmp_path / "d"
    log = fastq.open(str(path), durable=True, fsync="never")
    log.append_many([b"early"] * 5)
    time.sleep(0.05)
    between = dt.datetime.now(dt.timezone.utc)
    time.sleep(0.05)
    log.append_many([b"late"] * 5)
    log.group("g")

    def low():
        return log.stats()["groups"]["g"]["low"]

    try:
        r = js("groups", path, "reset", "g", "--to", "latest", "--json")
        assert r == {"group": "g", "reset": True, "from": 0, "to": 10, "consumers_detached": 0}
        assert low() == 10
        assert js("groups", path, "reset", "g", "--to", "earliest", "--json")["to"] == 0
        assert js("groups", path, "reset", "g", "--to", "3", "--json")["to"] == 3
        assert low() == 3
        # an ISO time (UTC with Z, with an offset, and naive = local time)
        iso_z = between.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        assert js("groups", path, "reset", "g", "--to", iso_z, "--json")["to"] == 5
        assert js("groups", path, "reset", "g", "--to", "earliest", "--json")["to"] == 0
        assert js("groups", path, "reset", "g", "--to", between.isoformat(), "--json")["to"] == 5
        naive_local = between.astimezone().replace(tzinfo=None).isoformat()
        assert js("groups", path, "reset", "g", "--to", "0", "--json")["to"] == 0
        assert js("groups", path, "reset", "g", "--to", naive_local, "--json")["to"] == 5
        assert js("groups", path, "reset", "g", "--to", "2000-01-01", "--json")["to"] == 0
        assert js("groups", path, "reset", "g", "--to", "2100-01-01T00:00:00+00:00", "--json")["to"] == 10
        # relative: "-10m" is before every record; "--to -10m" works without "="
        assert js("groups", path, "reset", "g", "--to", "-10m", "--json")["to"] == 0
        assert js("groups", path, "reset", "g", "--to=-1h", "--json")["to"] == 0
        assert js("groups", path, "reset", "g", "--to", "-1d", "--json")["to"] == 0
        # create: --start takes the same positions
        assert js("groups", path, "create", "c1", "--start", "-10m", "--json")["low"] == 0
        assert js("groups", path, "create", "c2", "--start", between.isoformat(), "--json")["low"] == 5
        assert js("groups", path, "create", "c3", "--start", "latest", "--json")["low"] == 10
        assert js("groups", path, "create", "c4", "--start", "9", "--json")["low"] == 9
        assert log.group("c2").stats()["lag"] == 5
        # the group is consumable where it was put
        js("groups", path, "reset", "g", "--to", "8", "--json")
        with log.group("g").consumer() as c:
            assert [m.offset for m in c.get_many(10, timeout=1)] == [8, 9]
        err("groups", path, "reset", "g", "--to", "11", match="outside the log")
        err("groups", path, "reset", "g", "--to", "soon", match="bad --to 'soon'")
        err("groups", path, "reset", "g", "--to", "-5x")
        err("groups", path, "reset", "g", match="needs --to")
        err("groups", path, "reset", "nope", "--to", "0", match="no group named 'nope'")
    finally:
        log.close()


def test_groups_reset_relative_time_picks_the_right_record(tmp_path):
    """--to -0.5s: every record before the cut is older than (now - 0.5 s),
    every record from it on is not."""
    path = tmp_path / "d"
    log = fastq.open(str(path), durable=True, fsync="never")
    log.group("g")
    end = time.monotonic() + 1.0
    while time.monotonic() < end:
        log.append(b"tick")
        time.sleep(0.02)
    try:
        t0 = time.time()
        to = js("groups", path, "reset", "g", "--to", "-0.5s", "--json")["to"]
        t1 = time.time()
        ts = [r.timestamp for r in log.read()]
        assert 0 < to <= len(ts)
        assert all(t < t1 - 0.5 for t in ts[:to])
        assert all(t >= t0 - 0.5 for t in ts[to:])
    finally:
        log.close()


@pytest.mark.parametrize("durable", [False, True], ids=["shm", "durable"])
def test_groups_reset_refused_with_a_live_consumer_then_forced(names, tmp_path, durable):
    target = str(tmp_path / "d") if durable else names()
    log = make_durable(target, n=20) if durable else make_shm(target, n=20)
    log.group("g", visibility_timeout=None)
    holder = py_child(HOLDER, target, int(durable), "g", "holder-7", 3)
    try:
        assert holder.line() == "held 3"
        line = err("groups", target, "reset", "g", "--to", "earliest",
                   match=r"1 live consumer\(s\): holder-7 \(pid %d\)" % holder.proc.pid)
        assert "--force" in line
        st = log.stats()["groups"]["g"]
        assert (st["pending"], st["consumers"]) == (3, 1)  # untouched
        r = js("groups", target, "reset", "g", "--to", "10", "--force", "--json")
        assert r == {"group": "g", "reset": True, "from": 0, "to": 10, "consumers_detached": 1}
        holder.send()
        assert holder.line().startswith("FastqError")
        assert holder.wait() == 0
        st = log.stats()["groups"]["g"]
        assert (st["low"], st["pending"], st["delivered"]) == (10, 0, 0)
        assert st["settings"]["visibility_timeout"] == 0.0  # settings kept
        with log.group("g").consumer() as c:
            assert c.get(timeout=1).offset == 10
    finally:
        holder.stop()
        log.close()


# =========================================================================== tail

TAIL_REPR = re.compile(r"^(\d+) \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}( key=b'[^']*')? (.*)$")


def test_tail_last_records_and_n(names):
    name = names()
    log = make_shm(name, n=25)
    try:
        lines = ok("tail", name).stdout.splitlines()
        assert len(lines) == 10
        parsed = [TAIL_REPR.match(ln) for ln in lines]
        assert all(parsed), lines
        assert [int(m.group(1)) for m in parsed] == list(range(15, 25))
        assert parsed[0].group(2) == " key=b'k15'" and parsed[0].group(3) == "b'r15'"
        assert parsed[1].group(2) is None and parsed[1].group(3) == "b'r16'"
        assert parsed[2].group(2) == " key=b'k17'" and parsed[2].group(3) == "b'r17'"
        assert ok("tail", name, "-n", "3", "--format", "raw").stdout == "r22\nr23\nr24\n"
        assert ok("tail", name, "--lines", "100", "--format", "raw").stdout.splitlines()[0] == "r0"
        assert offsets_of_json_lines(ok("tail", name, "--from", "20", "--json").stdout) == [20, 21, 22, 23, 24]
        assert offsets_of_json_lines(ok("tail", name, "--from", "earliest", "-n", "2", "--json").stdout) == [0, 1]
        assert offsets_of_json_lines(ok("tail", name, "--from", "5", "-n", "2", "--json").stdout) == [5, 6]
        assert ok("tail", name, "--from", "latest").stdout == ""
        assert ok("tail", name, "--from", "1000").stdout == ""
        empty = names()
        fastq.open(empty, capacity=1 << 16).close()
        assert ok("tail", empty).stdout == ""
    finally:
        log.close()


def test_tail_formats_and_keys(names):
    name = names()
    log = fastq.open(name, capacity=1 << 20)
    try:
        log.append(pickle.dumps({"order": 1, "items": [1, 2]}), key=b"cust-1")
        log.append(b"\xff\xfe binary", key=b"\x00\x9f")
        log.append(b"plain text")
        rows = [json.loads(ln) for ln in ok("tail", name, "--format", "json").stdout.splitlines()]
        assert [r["offset"] for r in rows] == [0, 1, 2]
        assert rows[0]["key"] == "cust-1"
        assert rows[1]["data"] == {"base64": base64.b64encode(b"\xff\xfe binary").decode()}
        assert rows[1]["key"] == {"base64": base64.b64encode(b"\x00\x9f").decode()}
        assert rows[2] == {"offset": 2, "key": None, "data": "plain text", "timestamp": rows[2]["timestamp"]}
        assert abs(rows[2]["timestamp"] - time.time()) < 60
        assert rows == [json.loads(ln) for ln in ok("tail", name, "--json").stdout.splitlines()]
        raw = subprocess.run([sys.executable, "-m", "fastq", "tail", name, "--format", "raw"], env=ENV,
                             capture_output=True, timeout=30)
        assert raw.returncode == 0 and raw.stderr == b""
        assert raw.stdout == pickle.dumps({"order": 1, "items": [1, 2]}) + b"\n\xff\xfe binary\nplain text\n"
        pk = ok("tail", name, "--format", "pickle").stdout.splitlines()
        assert pk[0].endswith("key=b'cust-1' {'order': 1, 'items': [1, 2]}")
        assert "<not a pickle: " in pk[1] and "b'\\xff\\xfe binary'" in pk[1]
        assert "<not a pickle: " in pk[2] and pk[2].endswith("> b'plain text'")
        rp = ok("tail", name, "--format", "repr").stdout.splitlines()
        assert rp[1].endswith("key=b'\\x00\\x9f' b'\\xff\\xfe binary'")
    finally:
        log.close()


def test_tail_durable_from_times(tmp_path):
    path = tmp_path / "d"
    log = fastq.open(str(path), durable=True, fsync="never")
    try:
        log.append_many([b"a%d" % i for i in range(4)])
        time.sleep(0.05)
        cut = dt.datetime.now(dt.timezone.utc)
        time.sleep(0.05)
        log.append_many([b"b%d" % i for i in range(3)])
        assert offsets_of_json_lines(ok("tail", path, "--json").stdout) == list(range(7))
        assert offsets_of_json_lines(ok("tail", path, "--from", cut.isoformat(), "--json").stdout) == [4, 5, 6]
        assert offsets_of_json_lines(ok("tail", path, "--from", "-10m", "-n", "2", "--json").stdout) == [0, 1]
        assert ok("tail", path, "--from", "2100-01-01", "--json").stdout == ""
        assert ok("tail", path, "--from", "latest").stdout == ""
        assert ok("tail", path, "-n", "2", "--format", "raw").stdout == "b1\nb2\n"
    finally:
        log.close()


def test_tail_follow_until_terminated(names):
    name = names()
    log = make_shm(name, n=15)
    t = Child([sys.executable, "-m", "fastq", "tail", name, "--follow", "--format", "json"], stdin=False)
    try:
        assert [json.loads(t.line())["offset"] for _ in range(10)] == list(range(5, 15))
        log.append(b"new-1", key=b"nk")
        log.append(b"new-2")
        got = [json.loads(t.line()) for _ in range(2)]
        assert [(g["offset"], g["key"], g["data"]) for g in got] == [(15, "nk", "new-1"), (16, None, "new-2")]
        log.append_many([b"more"] * 50)
        assert [json.loads(t.line())["offset"] for _ in range(50)] == list(range(17, 67))
        assert t.proc.poll() is None  # still following
        t.proc.terminate()
        assert t.wait() == -signal.SIGTERM
    finally:
        t.stop()
        log.close()


def test_tail_follow_durable_from_offset_and_ctrl_c(tmp_path):
    path = tmp_path / "d"
    log = make_durable(path, n=5)
    t = Child([sys.executable, "-m", "fastq", "tail", str(path), "-f", "--from", "3", "--format", "raw"],
              stdin=False)
    try:
        assert [t.line()[:8] for _ in range(2)] == ["REC00003", "REC00004"]
        log.append(b"after")
        assert t.line() == "after"
        t.proc.send_signal(signal.SIGINT)
        assert t.wait() == 130
        assert wait_for(lambda: any("fastq: interrupted" in e for e in t.err if e), timeout=5)
        assert not any("Traceback" in e for e in t.err if e)
    finally:
        t.stop()
        log.close()


def test_tail_follow_with_n_starts_n_back(names):
    name = names()
    log = make_shm(name, n=8)
    t = Child([sys.executable, "-m", "fastq", "tail", name, "-f", "-n", "3", "--format", "raw"], stdin=False)
    try:
        assert [t.line() for _ in range(3)] == ["r5", "r6", "r7"]
        log.append(b"r8")
        assert t.line() == "r8"   # -n does not stop --follow
        t.proc.terminate()
        assert t.wait() == -signal.SIGTERM
    finally:
        t.stop()
        log.close()


@pytest.mark.parametrize("follow", [False, True], ids=["plain", "follow"])
def test_tail_into_a_closed_pipe_exits_quietly(names, follow):
    """`fastq tail ... | head -1`: exit 0, nothing on stderr."""
    name = names()
    log = fastq.open(name, capacity=16 << 20)
    log.append_many([b"x" * 100] * (100 if follow else 50_000))
    argv = [sys.executable, "-m", "fastq", "tail", name, "--from", "earliest"] + (["-f"] if follow else [])
    p = subprocess.Popen(argv, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        assert p.stdout.readline().startswith(b"0 ")
        p.stdout.close()
        if follow:
            time.sleep(0.3)
            log.append(b"one more")      # the next write meets the closed pipe
        assert p.wait(timeout=20) == 0
        assert p.stderr.read() == b""
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(timeout=10)
        p.stderr.close()
        log.close()


# =========================================================================== dlq

def test_dlq_list_and_show(tmp_path):
    path = tmp_path / "d"
    log = make_durable(path, n=10)
    log.append(b"\xff binary payload", key=b"\xffk")  # offset 10
    g = log.group("work", max_deliveries=1)
    log.group("audit")
    with g.consumer() as c:
        ms = c.get_many(3, timeout=1)
        for m in ms:
            m.nack(reason=f"bad record {m.offset}")
        assert c.ack(c.get_many(7, timeout=1)) == 7
        m = c.get(timeout=1)
        assert m.offset == 10
        m.nack(reason="binary")
    try:
        rows = js("dlq", path, "list", "--json")
        assert [r["dlq_offset"] for r in rows] == [0, 1, 2, 3]
        r0 = rows[0]
        assert (r0["log"], r0["group"], r0["offset"], r0["deliveries"], r0["reason"], r0["key"], r0["handled"]) == \
            (str(path), "work", 0, 1, "bad record 0", "key0", False)
        assert r0["size"] == len(b"REC00000|" + b"x" * 400) and r0["dead_at"] >= r0["timestamp"]
        assert rows[3]["key"] == {"base64": base64.b64encode(b"\xffk").decode()}
        text = ok("dlq", path, "list").stdout.splitlines()
        assert text[0].split() == ["DLQ_OFFSET", "GROUP", "OFFSET", "DELIVERIES", "AGE", "SIZE", "HANDLED", "REASON"]
        assert len(text) == 5 and text[2].split()[:4] == ["1", "work", "1", "1"] and text[2].endswith("bad record 1")
        s = js("dlq", path, "show", "1", "--json")
        assert s["offset"] == 1 and s["data"] == "REC00001|" + "x" * 400 and s["key"] == "key1"
        s = js("dlq", path, "show", "3", "--json")
        assert s["data"] == {"base64": base64.b64encode(b"\xff binary payload").decode()}
        assert s["reason"] == "binary" and s["offset"] == 10
        shown = ok("dlq", path, "show", "2").stdout
        assert "reason: bad record 2" in shown and "dlq_offset: 2" in shown and "handled: False" in shown
        err("dlq", path, "show", "4", match="no dead letter at offset 4")
        err("dlq", path, "show", match="exactly one")
        err("dlq", path, "show", "1", "2", match="exactly one")
        # --group: the DLQ of that group (both groups use the log's default one)
        assert [r["dlq_offset"] for r in js("dlq", path, "list", "--group", "work", "--json")] == [0, 1, 2, 3]
        err("dlq", path, "list", "--group", "nope", match="no group named 'nope'")
    finally:
        log.close()


def test_dlq_requeue_refused_with_other_groups_then_forced(tmp_path):
    path = tmp_path / "d"
    log = make_durable(path, n=10)
    dead_letters(log, count=3)     # group "work" dead-letters 0, 1, 2; group "audit" also reads the log
    try:
        line = err("dlq", path, "requeue", "0", match=r"other groups \(audit\)")
        assert "--force" in line
        assert [r["dlq_offset"] for r in js("dlq", path, "list", "--json")] == [0, 1, 2]  # nothing consumed
        assert log.stats()["head"] == 10
        r = js("dlq", path, "requeue", "0", "--force", "--json")
        assert r == {"action": "requeue", "done": [0], "count": 1, "not_found": [], "pending_left": 2,
                     "stopped_early": False, "into": str(path)}
        last = list(log.read(10))
        assert [(x.offset, x.key, x.data) for x in last] == [(10, b"key0", b"REC00000|" + b"x" * 400)]
        # the group that dead-lettered it gets it again
        with log.group("work").consumer() as c:
            got = c.get_many(100, timeout=1)
            assert got[-1].offset == 10 and got[-1].data.startswith(b"REC00000|")
            c.ack(got)
        pending = js("dlq", path, "list", "--json")
        assert [(x["dlq_offset"], x["handled"]) for x in pending] == [(1, False), (2, False)]
        every = js("dlq", path, "list", "--all", "--json")
        assert [(x["dlq_offset"], x["handled"]) for x in every] == [(0, True), (1, False), (2, False)]
        assert "yes" in ok("dlq", path, "list", "--all").stdout
        # already handled: exit 1 with the offset reported
        r = js("dlq", path, "requeue", "0", "--force", "--json", rc=1)
        assert (r["done"], r["not_found"]) == ([], [0])
        assert log.stats()["head"] == 11
        p = ok("dlq", path, "requeue", "0", "7", "--force", rc=1)
        assert "not found or already handled: [0, 7]" in p.stdout
        err("dlq", path, "requeue", match="needs dead-letter offsets or --all")
    finally:
        log.close()


def test_dlq_requeue_to_another_log_and_purge(tmp_path):
    path, other = tmp_path / "d", tmp_path / "other"
    log = make_durable(path, n=10)
    dead_letters(log, count=4)
    fastq.open(str(other), durable=True).close()
    try:
        # a bad --to fails without handling anything
        err("dlq", path, "requeue", "1", "--to", tmp_path / "missing", match="no durable log")
        assert len(js("dlq", path, "list", "--json")) == 4
        r = js("dlq", path, "requeue", "1", "2", "--to", other, "--json")
        assert (r["done"], r["into"], r["not_found"]) == ([1, 2], str(other), [])
        with fastq.open(str(other), durable=True) as o:
            assert [(x.offset, x.key) for x in o.read()] == [(0, b"key1"), (1, b"key2")]
        assert log.stats()["head"] == 10   # nothing went back into the origin log
        r = js("dlq", path, "purge", "0", "99", "--json", rc=1)
        assert (r["action"], r["done"], r["not_found"]) == ("purge", [0], [99])
        assert [x["dlq_offset"] for x in js("dlq", path, "list", "--json")] == [3]
        assert ok("dlq", path, "purge", "--all").stdout.strip() == "purged 1 dead letter(s)"
        assert js("dlq", path, "list", "--json") == []
        assert "no dead letters pending" in ok("dlq", path, "list").stdout
        assert [x["handled"] for x in js("dlq", path, "list", "--all", "--json")] == [True] * 4
        assert js("dlq", path, "purge", "--all", "--json")["count"] == 0
        # new dead letters after a purge are pending again
        with log.group("work").consumer() as c:
            m = c.get(timeout=1)
            m.nack(reason="again")
        assert [x["reason"] for x in js("dlq", path, "list", "--json")] == ["again"]
    finally:
        log.close()


def test_dlq_offsets_past_the_cursor_window_are_reported_not_handled(tmp_path):
    """requeue/purge walk the pending dead letters in order and stop once they
    hold 768 they were not asked for (documented): a later offset is reported
    (exit 1) and nothing else is touched; handling earlier ones moves the window."""
    path = tmp_path / "d"
    log = fastq.open(str(path), durable=True, fsync="never")
    log.append_many([b"r%d" % i for i in range(1000)])
    g = log.group("work", max_deliveries=1)
    with g.consumer() as c:
        n = 0
        while n < 1000:
            ms = c.get_many(256, timeout=1)
            for m in ms:
                assert m.nack(reason="x")
            n += len(ms)
    try:
        r = js("dlq", path, "purge", "900", "--json", rc=1)
        assert (r["done"], r["not_found"], r["pending_left"], r["stopped_early"]) == ([], [900], 768, True)
        assert "not reached" in fq("dlq", path, "purge", "900").stdout
        assert len(js("dlq", path, "list", "--json")) == 1000          # held ones were released
        assert js("dlq", path, "purge", *range(0, 400), "--json")["count"] == 400
        r = js("dlq", path, "purge", "900", "--json")
        assert (r["done"], r["not_found"]) == ([900], [])
        rows = js("dlq", path, "list", "--json")
        assert len(rows) == 599 and 900 not in [x["dlq_offset"] for x in rows]
    finally:
        log.close()


def test_dlq_shared_memory_default_and_group_dlq(names):
    name, custom = names(), names()
    log = make_shm(name, n=10)
    try:
        err("dlq", name, "list", match="no dead letters yet")
        g = log.group("only", max_deliveries=1)
        with g.consumer() as c:
            for m in c.get_many(2, timeout=1):
                m.nack(reason="x")
        rows = js("dlq", name, "list", "--json")
        assert [(r["dlq_offset"], r["offset"], r["group"]) for r in rows] == [(0, 0, "only"), (1, 1, "only")]
        # the only group of the log is the one that dead-lettered: no --force needed
        r = js("dlq", name, "requeue", "--all", "--json")
        assert (r["done"], r["into"]) == ([0, 1], name)
        assert [x.data for x in log.read(10)] == [b"r0", b"r1"]
        # a group with its own dead-letter log
        g2 = log.group("own", max_deliveries=1, dead_letter=custom)
        log.group("nodlq", dead_letter=None)
        with g2.consumer() as c:
            c.get(timeout=1).nack(reason="to custom")
        rows = js("dlq", name, "list", "--group", "own", "--json")
        assert [(r["group"], r["reason"]) for r in rows] == [("own", "to custom")]
        assert js("dlq", name, "list", "--json") == []  # the default DLQ: all handled
        err("dlq", name, "list", "--group", "nodlq", match="no dead-letter queue")
    finally:
        log.close()


# =========================================================================== verify / recover

def test_verify_ok_then_corrupt(tmp_path):
    path = tmp_path / "d"
    make_durable(path, n=200).close()
    v = js("verify", path, "--json")
    assert v["ok"] is True and v["records"] == 200 and v["head"] == 200 and v["oldest"] == 0
    assert v["segments"] >= 2 and v["bytes"] > 0
    assert ok("verify", path).stdout.startswith("ok: 200 records")
    corrupt_record(str(path), b"REC00150|")
    v = js("verify", path, "--json", rc=1)
    assert v["ok"] is False and v["bad_offset"] == 150 and "150" in v["error"]
    assert ok("verify", path, rc=1).stdout.startswith("CORRUPT: record 150")
    err("verify", tmp_path / "nothing", match="no durable log")


def test_recover_dry_run_report_and_skip_corrupt(tmp_path):
    path = tmp_path / "d"
    log = make_durable(path, n=200)
    log.group("g")
    log.checkpoint()
    log.close()
    d = js("recover", path, "--dry-run", "--json")
    assert d["dry_run"] is True and d["records"] == 200 and d["would"] == "keep every record"
    assert d["head"] == 200 and d["checkpoint"] == 200 and "bad_offset" not in d
    assert "recovery would keep every record" in ok("recover", path, "--dry-run").stdout
    rep = js("recover", path, "--json")
    assert rep["ran"] is True and rep["reason"] == "requested" and rep["corrupt"] is False
    assert rep["records_verified"] == 200 and rep["head"] == 200 and rep["groups"] == 1
    assert ok("recover", path).stdout.startswith(f"recovered {path}: records 0..200")
    corrupt_record(str(path), b"REC00120|")
    d = js("recover", path, "--dry-run", "--json", rc=1)
    assert d["bad_offset"] == 120 and "refuse to open" in d["would"] and "--skip-corrupt" in d["would"]
    err("recover", path, match=r"record 120 .*--skip-corrupt")
    rep = js("recover", path, "--skip-corrupt", "--json")
    assert rep["corrupt"] is True and rep["corrupt_offset"] == 120 and rep["skipped"] == 1
    assert rep["head"] == 200
    v = js("verify", path, "--json")
    assert v["ok"] is True and v["records"] == 199
    got = offsets_of_json_lines(ok("tail", path, "--from", "118", "-n", "4", "--json").stdout)
    assert got == [118, 119, 121, 122]
    assert js("groups", path, "--json")["g"]["low"] == 0  # the group survived recovery
    err("recover", tmp_path / "nothing", match="no durable log")
    err("recover", tmp_path, match="no durable log")   # a directory without a log
    with fastq.open(str(path), durable=True):
        err("recover", path, match="open in another process")
        assert js("recover", path, "--dry-run", "--json")["records"] == 199   # only reads


CRASHING_WRITER = r"""
import os, signal, sys, fastq
log = fastq.open(sys.argv[1], durable=True, segment_size=1 << 16, fsync="never")
for i in range(200):
    log.append(b"REC%05d|" % i + b"x" * 400)
log.checkpoint()
for i in range(200, 210):
    log.append(b"REC%05d|" % i + b"x" * 400)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_recover_cuts_a_torn_tail_above_the_checkpoint(tmp_path):
    path = tmp_path / "d"
    p = subprocess.run([sys.executable, "-c", CRASHING_WRITER, str(path)], env=ENV, capture_output=True, timeout=30)
    assert p.returncode == -signal.SIGKILL, p.stderr
    corrupt_record(str(path), b"REC00209|")          # the last record, above the checkpoint (200)
    d = js("recover", path, "--dry-run", "--json", rc=1)
    assert (d["bad_offset"], d["checkpoint"], d["head"]) == (209, 200, 210)
    assert d["would"].startswith("cut the log at offset 209")
    rep = js("recover", path, "--json")
    assert rep["head"] == 209 and rep["truncated_bytes"] > 0 and rep["checkpoint_offset"] == 200
    v = js("verify", path, "--json")
    assert v["ok"] is True and v["records"] == 209


# =========================================================================== unlink

def test_unlink_shared_memory_and_durable(names, tmp_path):
    name = names()
    fastq.open(name, capacity=1 << 16).close()
    assert os.path.exists(SHM + name)
    assert ok("unlink", name).stdout == ""
    assert not os.path.exists(SHM + name)
    err("unlink", name, match="no queue named")
    path = tmp_path / "d"
    log = make_durable(path, n=5)
    dead_letters(log, count=1)
    log.close()
    (tmp_path / "keep.txt").write_text("not fastq's")
    ok("unlink", path)
    assert not path.exists() and (tmp_path / "keep.txt").exists()
    err("unlink", path, match="no durable log")
    err("unlink", "bad name!", match="invalid queue name")


# =========================================================================== exporter

def test_exporter_serves_real_metrics(names, tmp_path):
    pytest.importorskip("prometheus_client")
    name, late = names(), names()
    path = tmp_path / "d"
    log = make_shm(name, n=30)
    g = log.group("billing", max_deliveries=1)
    c = g.consumer(name="scraped")
    ms = c.get_many(10, timeout=1)
    c.ack(ms[:8])
    ms[8].nack(reason="x")           # dead-lettered; 9 stays leased
    dur = make_durable(path, n=12)
    dur.group("audit")
    dur.flush()
    port = free_port()
    exp = Child([sys.executable, "-m", "fastq", "exporter", "--port", str(port), name, str(path), late],
                stdin=False)
    try:
        assert exp.line().startswith(f"fastq exporter: http://127.0.0.1:{port}/metrics")
        text, fams, values = scrape(port)
        assert metric(values, "fastq_up", queue=name) == 1.0
        assert metric(values, "fastq_up", queue=str(path)) == 1.0
        assert metric(values, "fastq_up", queue=late) == 0.0      # missing: reported, not fatal
        lag = log.stats()["groups"]["billing"]["lag"]
        assert lag == 21   # 0..7 acked, 8 dead-lettered, 9 leased
        assert metric(values, "fastq_group_lag_messages", queue=name, group="billing") == lag
        assert metric(values, "fastq_group_lag_messages", queue=str(path), group="audit") == 12
        assert metric(values, "fastq_head_offset", queue=name) == 30
        assert metric(values, "fastq_group_pending_leases", queue=name, group="billing") == 1
        assert metric(values, "fastq_group_consumers", queue=name, group="billing") == 1
        assert metric(values, "fastq_members", queue=name, role="consumer", state="alive") == 1
        assert metric(values, "fastq_group_acked_total", queue=name, group="billing") == 8
        assert metric(values, "fastq_group_dead_lettered_total", queue=name, group="billing") == 1
        assert metric(values, "fastq_capacity_bytes", queue=name) == 1 << 20
        assert metric(values, "fastq_durable_offset", queue=str(path)) == 12
        assert metric(values, "fastq_disk_bytes", queue=str(path)) > 0
        assert metric(values, "fastq_members", queue=name, role="producer", state="alive") == 1  # this process
        # counters: typed counter, exposed with _total
        counters = [f for f in fams.values() if f.type == "counter"]
        assert {f.name for f in counters} >= {"fastq_records_appended", "fastq_group_delivered",
                                              "fastq_group_redelivered", "fastq_group_acked"}
        for f in counters:
            assert f.samples and all(s.name == f.name + "_total" for s in f.samples), f
        assert "# TYPE fastq_group_acked_total counter" in text or "# TYPE fastq_group_acked counter" in text
        assert re.search(r'^fastq_group_delivered_total\{group="billing",queue="%s"\} ' % name, text, re.M)
        # the numbers follow the queue; a queue that appears later comes up
        log.append_many([b"more"] * 5)
        fastq.open(late, capacity=1 << 16).close()
        _, _, values = scrape(port)
        assert metric(values, "fastq_group_lag_messages", queue=name, group="billing") == 26
        assert metric(values, "fastq_up", queue=late) == 1.0
        # a queue removed while served goes down; the exporter keeps running
        fastq.unlink(late)
        _, _, values = scrape(port)
        assert metric(values, "fastq_up", queue=late) == 0.0
        assert metric(values, "fastq_up", queue=name) == 1.0
        assert exp.proc.poll() is None
        exp.proc.send_signal(signal.SIGINT)     # Ctrl-C: exit 130
        assert exp.wait() == 130
    finally:
        exp.stop()
        c.close()
        dur.close()
        log.close()


def test_exporter_port_in_use_and_bad_port(names):
    pytest.importorskip("prometheus_client")
    name = names()
    fastq.open(name, capacity=1 << 16).close()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        err("exporter", "--port", s.getsockname()[1], name, match="[Aa]ddress already in use")
    err("exporter", "--port", "0", name, match="--port must be 1..65535")
    err("exporter", "--port", "70000", name, match="--port must be 1..65535")
    err("exporter", match="required")


# =========================================================================== demo

def _demo_summary(p):
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_demo_shared_memory_kill_and_json():
    before = {f for f in os.listdir("/dev/shm") if f.startswith("fastq.fastq-demo-")}
    p = ok("demo", "--messages", "20000", "--workers", "2", "--json", timeout=90)
    s = _demo_summary(p)
    assert s["messages"] == 20000 and s["workers"] == 2 and s["durable"] is None
    assert s["lost"] == 0 and s["corrupt"] == 0 and s["checksum_ok"] is True
    # killed while frozen with leases: exactly those leases are redelivered
    assert s["killed"] is not None and s["killed"]["pid"] > 0 and s["killed"]["leases_held"] > 0
    assert s["redelivered"] == s["killed"]["leases_held"] and s["dead_lettered"] == 0
    assert "fastq demo: shared-memory log" in p.stderr
    after = {f for f in os.listdir("/dev/shm") if f.startswith("fastq.fastq-demo-")}
    assert after <= before  # its queue is removed


def test_demo_durable_and_no_kill(tmp_path):
    d = tmp_path / "demo"
    s = _demo_summary(ok("demo", "--messages", "20000", "--workers", "2", "--durable", d, "--json", timeout=90))
    assert s["durable"] == str(d) and s["lost"] == 0 and s["checksum_ok"] is True and s["killed"] is not None
    assert s["redelivered"] >= 0 and s["durable_offset"] == 20000
    assert js("verify", d, "--json")["records"] == 20000
    assert js("stat", d, "--json", "--interval", "0")["groups"]["demo"]["lag"] == 0
    p = ok("demo", "--messages", "5000", "--workers", "2", "--no-kill", "--batch", "64", "--size", "100",
           timeout=90)
    assert "lost 0" in p.stdout and "sum of message numbers ok" in p.stdout and "killed" not in p.stdout
    s = _demo_summary(ok("demo", "--messages", "3000", "--workers", "1", "--no-kill", "--json", timeout=90))
    assert s["killed"] is None and s["lost"] == 0 and s["checksum_ok"] is True


@pytest.mark.parametrize("args,match", [
    (["--workers", "1"], "--workers must be >= 2"),
    (["--messages", "0"], "must be >= 1"),
    (["--batch", "0"], "must be >= 1"),
    (["--size", "3"], "--size must be between"),
    (["--size", str(2 << 20)], "--size must be between"),
    (["--messages", "many"], "invalid int value"),
    (["--frobnicate"], "unrecognized arguments"),
])
def test_demo_bad_arguments(args, match):
    err("demo", *args, match=match)


def test_demo_refuses_a_non_empty_directory(tmp_path):
    (tmp_path / "junk").write_text("x")
    err("demo", "--messages", "10", "--durable", tmp_path, match="is not empty")
    assert os.listdir(tmp_path) == ["junk"]


# =========================================================================== error handling

@pytest.fixture(scope="module")
def targets(tmp_path_factory):
    """A shared-memory log and a durable log, each with group "g"."""
    name = "t-" + uuid.uuid4().hex
    log = make_shm(name, n=5)
    log.group("g")
    base = tmp_path_factory.mktemp("cli-err")
    dur = make_durable(base / "d", n=5)
    dur.group("g")
    empty = base / "empty"
    empty.mkdir()
    yield {"shm": name, "dur": str(base / "d"), "missing": "t-" + uuid.uuid4().hex,
           "nodir": str(base / "no" / "such"), "empty": str(empty)}
    dur.close()
    log.close()
    fastq.unlink(name)


ERRORS = [
    (["stat", "{missing}"], "no queue named"),
    (["stat", "{nodir}"], "no durable log"),
    (["stat", "{empty}"], "no control file"),
    (["stat", "bad name!"], "invalid queue name"),
    (["stat", "{shm}", "--watch", "0"], "--watch needs a positive"),
    (["stat", "{shm}", "--interval", "-1"], "--interval must be >= 0"),
    (["stat", "{shm}", "--watch", "1", "--count", "0"], "--count must be >= 1"),
    (["stat", "{shm}", "--bogus"], "unrecognized arguments"),
    (["stat"], "required"),
    (["ls", "{nodir}"], "not a directory"),
    (["ls", "a", "b"], "unrecognized arguments"),
    (["groups", "{missing}"], "no queue named"),
    (["groups", "{shm}", "frobnicate"], "invalid choice"),
    (["groups", "{shm}", "create"], "needs a GROUP"),
    (["groups", "{shm}", "create", "g"], "already exists"),
    (["groups", "{shm}", "create", "x", "--start", "nope"], "bad --start"),
    (["groups", "{shm}", "create", "x", "--start", "-10m"], "durable"),
    (["groups", "{shm}", "create", "x", "--window", "0"], "window"),
    (["groups", "{shm}", "create", "x", "--max-deliveries", "999"], "max_deliveries"),
    (["groups", "{shm}", "create", "x", "--visibility-timeout", "abc"], "invalid float"),
    (["groups", "{shm}", "create", "x", "--start", "100"], "beyond the head"),
    (["groups", "{shm}", "reset", "nope", "--to", "0"], "no group named 'nope'"),
    (["groups", "{shm}", "reset", "g", "--to", "yesterday"], "bad --to"),
    (["groups", "{shm}", "reset", "g", "--to", "-10m"], "needs a durable log"),
    (["groups", "{shm}", "reset", "g", "--to", "2026-01-01T00:00:00"], "needs a durable log"),
    (["groups", "{shm}", "reset", "g", "--to", "99"], "outside"),
    (["groups", "{dur}", "reset", "g", "--to", "2026-13-45"], "bad --to"),
    (["groups", "{dur}", "reset", "g", "--to", "99"], "outside the log"),
    (["groups", "{dur}", "delete", "nope"], "no group named 'nope'"),
    (["tail", "{missing}"], "no queue named"),
    (["tail", "{nodir}"], "no durable log"),
    (["tail", "{shm}", "-n", "0"], "-n must be >= 1"),
    (["tail", "{shm}", "--format", "xml"], "invalid choice"),
    (["tail", "{shm}", "--from", "-10m"], "needs a durable log"),
    (["tail", "{shm}", "--from", "whenever"], "bad --from"),
    (["tail", "{dur}", "--from", "whenever"], "bad --from"),
    (["dlq", "{missing}", "list"], "no queue named"),
    (["dlq", "{shm}", "list"], "no dead letters yet"),
    (["dlq", "{dur}", "list"], "no dead letters yet"),
    (["dlq", "{shm}", "explode"], "invalid choice"),
    (["dlq", "{shm}", "show", "x"], "invalid int value"),
    (["dlq", "{shm}", "list", "--group", "nope"], "no group named 'nope'"),
    (["verify", "{nodir}"], "no durable log"),
    (["verify", "{missing}"], "no durable log"),
    (["verify", "{empty}"], "no durable log"),
    (["recover", "{nodir}"], "no durable log"),
    (["recover", "{empty}"], "no durable log"),
    (["recover", "{nodir}", "--dry-run"], "no durable log"),
    (["unlink", "{missing}"], "no queue named"),
    (["unlink", "{nodir}"], "no durable log"),
    (["exporter", "--port", "x", "{shm}"], "invalid int value"),
    (["frobnicate"], "invalid choice"),
]


@pytest.mark.parametrize("argv,match", ERRORS, ids=[" ".join(a) for a, _ in ERRORS])
def test_errors_are_one_line_exit_2(targets, argv, match):
    err(*[a.format(**targets) for a in argv], match=match)


def test_errors_leave_the_queue_untouched(targets):
    before = js("groups", targets["shm"], "--json")
    err("groups", targets["shm"], "create", "x", "--window", "0")
    err("groups", targets["shm"], "reset", "g", "--to", "yesterday")
    assert js("groups", targets["shm"], "--json") == before


def test_no_command_prints_help_and_exits_2():
    p = fq()
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "usage: fastq" in p.stdout + p.stderr
    for cmd in ("ls", "stat", "groups", "tail", "dlq", "recover", "verify", "unlink", "exporter", "demo"):
        h = fq(cmd, "--help")
        assert h.returncode == 0 and f"usage: fastq {cmd}" in h.stdout


# =========================================================================== the library underneath

def test_read_shared_memory_log(names):
    name = names()
    log = make_shm(name, n=20)
    try:
        other = fastq.open(name)     # another handle, no settings: attaches
        recs = list(other.read())
        assert [r.offset for r in recs] == list(range(20))
        assert [r.data for r in recs[:3]] == [b"r0", b"r1", b"r2"] and [r.key for r in recs[:2]] == [None, b"k1"]
        assert all(isinstance(r, fastq.Record) for r in recs)
        assert all(a.timestamp <= b.timestamp for a, b in zip(recs, recs[1:]))
        assert abs(recs[-1].timestamp - time.time()) < 60
        assert [r.offset for r in other.read(5, 8)] == [5, 6, 7]
        assert [r.offset for r in other.read(18, batch=1)] == [18, 19]
        assert list(other.read("latest")) == []
        assert list(other.read(100)) == []
        # a reader is not a group: nothing is held, the log has no groups
        assert other.groups() == [] and log.stats()["groups"] == {}
        with pytest.raises(ValueError):
            list(other.read(dt.datetime.now()))
        with pytest.raises(ValueError):
            other.read(batch=0)
        other.close()
    finally:
        log.close()


def _rec(i):
    body = (b"%08d" % i) * (1 + i % 40)
    return struct.pack("<QI", i, zlib.crc32(body)) + body


def _check(r):
    i, crc = struct.unpack_from("<QI", r.data)
    body = r.data[12:]
    assert i == r.offset and zlib.crc32(body) == crc and body == (b"%08d" % i) * (1 + i % 40), r


def test_read_shared_memory_after_the_ring_wrapped(names):
    name = names()
    log = fastq.open(name, capacity=1 << 16)
    try:
        for i in range(3000):
            log.append(_rec(i))
        st = log.stats()
        assert st["head"] == 3000 and st["oldest"] > 0
        recs = list(log.read())
        assert recs[0].offset == st["oldest"] and recs[-1].offset == 2999
        assert [r.offset for r in recs] == list(range(st["oldest"], 3000))
        for r in recs:
            _check(r)
        assert list(log.read(0, 5)) == []                      # long gone: skipped
        assert [r.offset for r in log.read(0, st["oldest"] + 2)] == [st["oldest"], st["oldest"] + 1]
        tail = [json.loads(ln) for ln in ok("tail", name, "--from", "earliest", "--json").stdout.splitlines()]
        assert tail[0]["offset"] >= st["oldest"] and tail[-1]["offset"] == 2999
    finally:
        log.close()


WRAPPER = r"""
import struct, sys, time, zlib, fastq
log = fastq.open(sys.argv[1])
print("ready", flush=True)
i = log.stats()["head"]
end = time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    batch = []
    for _ in range(64):
        body = (b"%08d" % i) * (1 + i % 40)
        batch.append(struct.pack("<QI", i, zlib.crc32(body)) + body)
        i += 1
    log.append_many(batch)
print("done", i, flush=True)
"""


def test_read_shared_memory_while_a_producer_overwrites(names):
    """Records overwritten under the reader are skipped, never returned torn."""
    name = names()
    log = fastq.open(name, capacity=1 << 16)
    w = py_child(WRAPPER, name, 1.0, stdin=False)
    try:
        assert w.line() == "ready"
        seen = 0
        deadline = time.monotonic() + 30
        while True:
            running = w.proc.poll() is None
            prev = -1
            for r in log.read():
                assert r.offset > prev
                prev = r.offset
                _check(r)
                seen += 1
            if not running or time.monotonic() > deadline:
                break
        assert w.line().startswith("done ")
        assert seen > 0
    finally:
        w.stop()
        log.close()


def test_reset_group_api(names, tmp_path):
    name = names()
    log = make_shm(name, n=10)
    try:
        g = log.group("g")
        c = g.consumer(name="me")
        assert [m.offset for m in c.get_many(4, timeout=1)] == [0, 1, 2, 3]
        with pytest.raises(fastq.FastqError):
            log.reset_group("g", "latest")           # a live consumer
        assert g.stats()["pending"] == 4
        log.reset_group("g", 6, force=True)
        with pytest.raises(fastq.FastqError):
            c.get_many(1, timeout=0.1)               # detached
        c.close()
        st = g.stats()
        assert (st["low"], st["pending"], st["delivered"]) == (6, 0, 0)
        log.reset_group("g", "earliest")
        assert g.stats()["low"] == 0
        log.reset_group("g", "latest")
        assert g.stats()["low"] == 10
        log.reset_group("g")                         # default: earliest
        assert g.stats()["low"] == 0
        with g.consumer() as c2:
            assert c2.get(timeout=1).offset == 0
        for bad in ("middle", -1, True, 1.5):
            with pytest.raises(ValueError):
                log.reset_group("g", bad)
        with pytest.raises(ValueError):
            log.reset_group("g", dt.datetime.now())  # shared memory: no time index
        with pytest.raises(KeyError):
            log.reset_group("nope", 0)
        with pytest.raises(ValueError, match="outside the log"):
            log.reset_group("g", 11)
        log.reset_group("g", 10)                     # the head itself: nothing left
        assert g.stats()["lag"] == 0
    finally:
        log.close()
    path = tmp_path / "d"
    dur = fastq.open(str(path), durable=True, fsync="never")
    try:
        dur.append_many([b"a"] * 3)
        time.sleep(0.05)
        cut = dt.datetime.now()
        time.sleep(0.05)
        dur.append_many([b"b"] * 3)
        dur.group("g")
        dur.reset_group("g", cut)
        assert dur.stats()["groups"]["g"]["low"] == 3
    finally:
        dur.close()


def test_members_and_consumer_names(names):
    name = names()
    log = make_shm(name, n=10)
    holder = py_child(HOLDER, name, 0, "g", "far-away", 2)
    try:
        g = log.group("g")
        log.group("h")
        with g.consumer(name="alpha") as a, log.group("h").consumer() as anon:
            assert len(a.get_many(3, timeout=1)) == 3
            assert holder.line() == "held 2"
            anon.get(timeout=1)
            ms = log.members()
            keys = {"pid", "name", "role", "group", "alive", "started", "puts", "gets", "acked", "leases", "self"}
            assert all(set(m) == keys for m in ms)
            by = {(m["pid"], m["name"], m["role"]): m for m in ms}
            me = os.getpid()
            alpha = by[(me, "alpha", "consumer")]
            assert alpha["group"] == "g" and alpha["leases"] == 3 and alpha["alive"] and not alpha["self"]
            assert alpha["gets"] == 3
            far = by[(holder.proc.pid, "far-away", "consumer")]
            assert far["group"] == "g" and far["leases"] == 2 and far["alive"]
            anon_m = by[(me, "MainProcess", "consumer")]     # default label: the process's name
            assert anon_m["group"] == "h" and anon_m["leases"] == 1
            own = [m for m in ms if m["self"]]
            assert len(own) == 1 and own[0]["role"] == "producer" and own[0]["pid"] == me
            assert own[0]["puts"] == 10 and own[0]["group"] is None and own[0]["leases"] == 0
            assert abs(alpha["started"] - time.time()) < 60
            # a killed consumer: shown dead (or gone); its leases go back to the group once
            # a live member does maintenance (here: another consumer polling)
            holder.proc.kill()
            holder.wait()
            assert all(not m["alive"] for m in log.members() if m["pid"] == holder.proc.pid)
            assert wait_for(lambda: anon.get_many(1, timeout=0.02) is not None and g.stats()["pending"] == 3,
                            timeout=10)
            gone = [m for m in log.members() if m["pid"] == holder.proc.pid]
            assert all(not m["alive"] for m in gone)
        with pytest.raises(TypeError):
            g.consumer(name=42)
        with g.consumer(name="n" * 50):
            assert "n" * 31 in [m["name"] for m in log.members()]   # labels keep 31 bytes
        assert [m for m in log.members() if m["role"] == "consumer"] == []
    finally:
        holder.stop()
        log.close()


CREATOR = r"""
import sys, fastq
log = fastq.open(sys.argv[1])
log.group("special", visibility_timeout=7.5, max_deliveries=3, dead_letter=None, window=64,
          retry=fastq.Backoff(1.0, 2.0, 2.0, 0.0))
print("created", flush=True)
"""


def test_group_attaches_without_restating_settings(names):
    name = names()
    log = fastq.open(name, capacity=1 << 20)
    try:
        c = py_child(CREATOR, name, stdin=False)
        assert c.line() == "created"
        c.wait()
        c.stop()
        g = log.group("special")
        s = g.settings
        assert (s["visibility_timeout"], s["max_deliveries"], s["dead_letter"], s["window"]) == (7.5, 3, None, 64)
        assert fastq.Backoff._unpack(s["backoff"]) == fastq.Backoff(1.0, 2.0, 2.0, 0.0)
        log.append(b"x")
        with g.consumer(name="attached") as cons:
            m = cons.get(timeout=1)
            assert (m.offset, m.data) == (0, b"x") and m.ack()
        # the same settings restated: fine; different ones: refused
        log.group("special", visibility_timeout=7.5, max_deliveries=3, dead_letter=None, window=64,
                  retry=fastq.Backoff(1.0, 2.0, 2.0, 0.0))
        with pytest.raises(ValueError):
            log.group("special", max_deliveries=4)
        # no settings and no such group: created with the defaults
        d = log.group("plain").settings
        assert (d["visibility_timeout"], d["max_deliveries"], d["dead_letter"], d["window"]) == \
            (30.0, 16, name + ".dlq", 1024)
        # the command line attaches the same way
        assert js("groups", name, "--json")["special"]["settings"]["window"] == 64
    finally:
        log.close()


def test_collector_in_a_registry(names, tmp_path):
    pytest.importorskip("prometheus_client")
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families
    name, missing = names(), names()
    log = make_shm(name, n=12)
    g = log.group("g")
    with g.consumer() as c:
        c.ack(c.get_many(5, timeout=1))
    dur = make_durable(tmp_path / "d", n=4)
    dur.group("audit")
    registry = CollectorRegistry()
    collector = fq_metrics.FastqCollector([name, dur, missing])
    registry.register(collector)
    try:
        fams = {f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())}
        values = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in fams.values() for s in f.samples}
        assert metric(values, "fastq_up", queue=name) == 1.0
        assert metric(values, "fastq_up", queue=dur.name) == 1.0
        assert metric(values, "fastq_up", queue=missing) == 0.0
        assert metric(values, "fastq_group_lag_messages", queue=name, group="g") == log.stats()["groups"]["g"]["lag"]
        assert metric(values, "fastq_group_lag_messages", queue=name, group="g") == 7
        assert metric(values, "fastq_group_acked_total", queue=name, group="g") == 5
        assert metric(values, "fastq_group_lag_messages", queue=dur.name, group="audit") == 4
        assert metric(values, "fastq_records_appended_total", queue=dur.name) == 4
        assert fams["fastq_group_acked"].type == "counter" and fams["fastq_group_lag_messages"].type == "gauge"
        # every documented metric with its type
        for mname, (kind, _doc, where) in fq_metrics.METRICS.items():
            if where == "j":
                continue  # jobs apps: tests/test_jobs_cli.py
            fam = fams[mname[:-len("_total")] if kind == "counter" else mname]
            assert fam.type == kind
        # scrapes follow the queues
        log.append_many([b"z"] * 3)
        fams2 = text_string_to_metric_families(generate_latest(registry).decode())
        lag = [s.value for f in fams2 for s in f.samples
               if s.name == "fastq_group_lag_messages" and s.labels == {"queue": name, "group": "g"}]
        assert lag == [10.0]
    finally:
        registry.unregister(collector)
        collector.close()
        dur.close()
        log.close()


def test_collector_owns_what_it_reopens(names):
    """A collector given an open Log keeps reporting after the caller closes
    it (re-opening the queue itself) and closes that handle of its own."""
    name = names()
    log = fastq.open(name, capacity=1 << 16)
    log.append(b"x")
    col = fq_metrics.FastqCollector([log])

    def up():
        return [v for m, _labels, v in fq_metrics.samples(col._sources) if m == "fastq_up"]

    try:
        assert up() == [1.0]
        log.close()
        assert wait_for(lambda: up() == [1.0], timeout=5)
        handle = col._sources[0].log
        assert handle is not None and handle is not log
    finally:
        col.close()
        log.close()
    assert handle._ring.closed


def test_member_counters_start_at_zero(names):
    """A member slot reused by a new process starts with puts/gets at 0."""
    name = names()
    code = "import sys, fastq; log = fastq.open(sys.argv[1], capacity=1 << 16); log.append_many([b'x'] * 7)"
    subprocess.run([sys.executable, "-c", code, name], env=ENV, check=True, timeout=30)
    log = fastq.open(name)
    try:
        me = [m for m in log.members() if m["self"]][0]
        assert me["puts"] == 0
    finally:
        log.close()
