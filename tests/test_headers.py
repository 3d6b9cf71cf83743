"""Message headers (docs/messages.md §1): a small mapping of str to str or
bytes per record, carried in the record's meta region next to its key — on
shared-memory logs and durable logs, through groups, replay, dead letters,
recovery and the command line."""
import json
import os
import subprocess
import sys

import pytest

import fastq
from fastq import _meta

H1 = {"trace-id": "4bf92f3577b34da6", "tenant": "acme", "blob": b"\x00\xff\x10", "empty": "", "ünï": "cödé"}


@pytest.fixture
def log(any_log):
    return any_log


def test_round_trip_through_read_and_groups(log):
    g = log.group("g", visibility_timeout=None)
    offs = [log.append(b"plain"), log.append(b"keyed", key=b"k1"), log.append(b"h", headers=H1),
            log.append(b"kh", key=b"k2", headers={"a": "1"}), log.append(b"ek", key=b"", headers={"b": b""})]
    offs += log.append_many([b"m0", b"m1", b"m2", b"m3"], keys=[None, b"x", b"", None],
                            headers=[{"n": "0"}, None, {"n": "2"}, {}])
    want = [(None, b"plain", {}), (b"k1", b"keyed", {}), (None, b"h", H1), (b"k2", b"kh", {"a": "1"}),
            (b"", b"ek", {"b": b""}), (None, b"m0", {"n": "0"}), (b"x", b"m1", {}), (b"", b"m2", {"n": "2"}),
            (None, b"m3", {})]
    assert offs == list(range(len(want)))
    assert [(r.key, r.data, r.headers) for r in log.read()] == want
    with g.consumer() as c:
        ms = c.get_many(100, timeout=1)
        assert [(m.key, m.data, m.headers) for m in ms] == want
        assert c.ack(ms) == len(want)
    for r in log.read(2, 3):
        assert isinstance(r.headers["blob"], bytes) and isinstance(r.headers["tenant"], str)


def test_dead_letters_keep_headers(log, tmp_path):
    g = log.group("g", visibility_timeout=None, max_deliveries=1)
    log.append(b"poison", key=b"k", headers={"why": "test", "raw": b"\x01"})
    with g.consumer() as c:
        assert c.get(timeout=1).nack(reason="bad")
    dlq = fastq.open(os.path.join(log.name, "dlq"), durable=True) if log.durable else fastq.open(log.name + ".dlq")
    try:
        (rec,) = list(dlq.read())
        dl = fastq.DeadLetter.decode(rec.data)
        assert (dl.data, dl.key, dl.headers, dl.reason) == (b"poison", b"k", {"why": "test", "raw": b"\x01"}, "bad")
        assert rec.headers == {"why": "test", "raw": b"\x01"} and rec.key == b"k"
    finally:
        dlq.close()


def test_old_dead_letters_still_decode():
    import pickle
    raw = pickle.dumps(("fastq.dlq/2", "log", "g", 3, 2, "r", 1.0, b"d", b"k"))
    assert fastq.DeadLetter.decode(raw) == fastq.DeadLetter("log", "g", 3, 2, "r", 1.0, b"d", b"k", None)


@pytest.mark.parametrize("headers, exc, match", [
    ({1: "x"}, TypeError, "names must be str"),
    ({"a": 1}, TypeError, "values must be str or bytes"),
    ({"": "x"}, ValueError, "1..255 bytes"),
    ({"n" * 256: "x"}, ValueError, "1..255 bytes"),
    ({f"h{i}": "" for i in range(65)}, ValueError, "at most 64"),
    ({"big": "v" * 5000}, ValueError, "at most 4096"),
    (["a", "b"], TypeError, "mapping"),
])
def test_bad_headers_are_refused_and_nothing_is_appended(log, headers, exc, match):
    head = log.stats()["head"]
    with pytest.raises(exc, match=match):
        log.append(b"x", headers=headers)
    with pytest.raises(exc, match=match):
        log.append_many([b"ok", b"x"], headers=[{"fine": "1"}, headers])
    assert log.stats()["head"] == head


def test_key_and_headers_share_the_4_KiB_limit(log):
    log.append(b"x", key=b"k" * 4000, headers={"a": "b" * 80})
    with pytest.raises(ValueError, match="4096"):
        log.append(b"x", key=b"k" * 4090, headers={"a": "b"})
    with pytest.raises(ValueError, match="items, 1 keys and 2 headers"):
        log.append_many([b"a", b"b"], keys=[b"k"], headers=[None, None])


def test_headers_survive_cold_recovery_and_are_checksummed(tmp_path):
    path = str(tmp_path / "log")
    log = fastq.open(path, durable=True, fsync="always", segment_size=1 << 16)
    for i in range(50):
        log.append(b"body-%d" % i, headers={"i": str(i)})
    log.close()
    log = fastq.open(path, durable=True, recover=True)
    try:
        assert [r.headers["i"] for r in log.read()] == [str(i) for i in range(50)]
        assert log.verify() == 50
    finally:
        log.close()
    # flip one byte inside a record's headers: its CRC fails (header bytes are covered)
    seg = sorted(f for f in os.listdir(path) if f.endswith(".seg"))[0]
    with open(os.path.join(path, seg), "r+b") as f:
        data = f.read()
        at = data.index(b"\x01i\x00\x02\x00\x00\x0025")  # header "i" = "25" (name, kind 0, length 2)
        f.seek(at + 7)
        f.write(b"7")
    log = fastq.open(path, durable=True)
    try:
        with pytest.raises(fastq.CorruptRecordError) as ei:
            log.verify()
        assert ei.value.offset == 25
    finally:
        log.close()


def test_meta_region_codec_rejects_malformed_bytes():
    prefix, flags = _meta.encode(b"key", {"a": "1", "b": b"2"})
    assert flags == _meta.META | _meta.HAS_KEY
    key, raw = _meta.split(prefix, True)
    assert key == b"key" and _meta.decode_headers(raw) == {"a": "1", "b": b"2"}
    assert _meta.encode(b"k", None) == (b"k", _meta.HAS_KEY) and _meta.encode(None, {}) == (None, 0)
    for bad in (raw[:-1], raw + b"\x00", raw[:3], b"\x01"):
        with pytest.raises(ValueError):
            _meta.decode_headers(bad)
    with pytest.raises(ValueError):
        _meta.split(b"\x09\x00abc", True)


def test_tail_and_dlq_commands_show_headers(tmp_path):
    path = str(tmp_path / "log")
    log = fastq.open(path, durable=True, fsync="never")
    g = log.group("g", visibility_timeout=None, max_deliveries=1)
    log.append(b"payload", key=b"k", headers={"trace": "t-1", "bin": b"\xff"})
    with g.consumer() as c:
        c.get(timeout=1).nack(reason="no")
    log.close()
    pkg_root = os.path.dirname(os.path.dirname(os.path.abspath(fastq.__file__)))
    env = dict(os.environ, PYTHONPATH=pkg_root + os.pathsep + os.environ.get("PYTHONPATH", ""))

    def run(*args):
        p = subprocess.run([sys.executable, "-m", "fastq", *args], capture_output=True, text=True, env=env,
                           timeout=60)
        assert p.returncode == 0, p.stderr
        return p.stdout

    (line,) = run("tail", path, "--from", "0", "--json").splitlines()
    rec = json.loads(line)
    assert rec["headers"] == {"trace": "t-1", "bin": {"base64": "/w=="}} and rec["key"] == "k"
    assert "headers={'trace': 't-1', 'bin': b'\\xff'}" in run("tail", path, "--from", "0")
    (row,) = json.loads(run("dlq", path, "list", "--json"))
    assert row["headers"] == {"trace": "t-1", "bin": {"base64": "/w=="}}
    out = json.loads(run("dlq", path, "requeue", "0", "--force", "--json"))
    assert out["done"] == [0]
    log = fastq.open(path, durable=True)
    try:
        last = list(log.read(1))
        assert [(r.key, r.data, r.headers) for r in last] == [(b"k", b"payload", {"trace": "t-1", "bin": b"\xff"})]
    finally:
        log.close()


def test_async_append_and_get_carry_headers(log):
    import asyncio
    from fastq import aio
    g = log.group("g", visibility_timeout=None)

    async def main():
        alog = aio.AsyncLog(log)
        async with aio.AsyncConsumer(g.consumer()) as c:
            waiting = asyncio.ensure_future(c.get_many(10, timeout=5))
            await asyncio.sleep(0.01)
            await alog.append(b"one", key=b"k", headers={"a": "1"})
            await alog.append_many([b"two", b"three"], keys=[None, b"k3"], headers=[{"b": b"2"}, None])
            got = await waiting
            while len(got) < 3:
                got += await c.get_many(10, timeout=5)
            return [(m.key, m.data, m.headers) for m in got]

    assert asyncio.run(main()) == [(b"k", b"one", {"a": "1"}), (None, b"two", {"b": b"2"}), (b"k3", b"three", {})]
    with pytest.raises(TypeError, match="values must be str or bytes"):
        asyncio.run(aio.AsyncLog(log).append(b"x", headers={"a": 1}))
