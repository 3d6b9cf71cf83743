"""Power loss without a power cut: damage the files of a durable log the way a
power cut can, then open it with ``recover=True``.

The log under test (64 KiB segments, 620 records, payload = f(offset), every
fifth record keyed) is built in a child process that appends 250 records,
writes a checkpoint (``Log.checkpoint()``), appends 370 more and then dies
with ``os._exit`` — no checkpoint at close — and its control file gets another
boot id (a power cut is a reboot: the opener must not trust the page-cache
state).  That is the on-disk state a power cut leaves behind: a checkpointed,
fsync'd prefix (segment 1) and records after it that only the page cache
vouched for (segments 1..3, segment 3 being the active one).  A second
template ("closed") is closed cleanly in the same boot (its checkpoint covers
every record: damage anywhere is corruption, not a torn tail).

Damage (hypothesis picks the points, page-granular and byte-granular):
  * cut      truncate the file at L (its size changes)
  * zerotail zero [L, end) keeping the size (unwritten fallocated pages read
             back as zeros after a power cut)
  * zero     zero a range
  * garbage  random bytes over a range (always different from what was there)
  * flip     flip 1..8 bits
in the LAST pages of the active segment, of its .idx file, of the control file
(store section: checkpoint slots and store state), and — for the mid-log
tests — inside one record of a sealed segment written after the checkpoint.

Every open runs in a forked child: a signal (segfault, abort) or a hang fails
the test.  Accepted outcomes: the open raises a clear fastq error
(CorruptQueueError / CorruptRecordError / IncompatibleQueueError, or OSError
with a message), or it succeeds and then read() returns EXACTLY records
0..k-1 with their payloads and keys (k >= the records wholly before the first
damaged byte; k == all records when only the index or the control file was
damaged), verify() returns k, new appends get offsets k, k+1, ... and read
back, and a plain reopen (no forced recovery) sees the same log.

Regression tests for bugs found while writing these are at the end of this file.
FASTQ_PROPERTY_SCALE=10 runs 10x the examples.
"""
import hashlib
import os
import pickle
import select
import shutil
import signal
import struct
import sys
import tempfile
import time
import traceback

import pytest
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

import fastq

pytestmark = [pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fastq is Linux-only"),
              pytest.mark.timeout(300)]

# FASTQ_PROPERTY_SCALE=10 runs 10x the examples (on demand; CI runs 1x)
SCALE = max(1, int(os.environ.get("FASTQ_PROPERTY_SCALE", "1")))

SEG = 64 << 10
PAGE = 4096
HDR = 4096                 # segment / index file header page
N_CKPT = 250               # records below the checkpoint (fsync'd)
N_TOTAL = 620              # records in the files
CHILD_TIMEOUT = 30.0       # a forked open that takes longer has hung
HANG_TIMEOUT = 2.0         # regression tests of former hangs (the same operations take ~50 ms when they work)

FRAME = struct.Struct("<IIQqHHI")   # fq_frame_hdr: len, crc, seq, ts_ns, flags, version, type
F_DATA, F_GAP, F_PAD, F_COMMITTED = 0x1, 0x2, 0x4, 0x8000
CKPT_SLOT = 4096
STORE_SECTION = 3 * PAGE   # last 3 pages of control: ckpt slot 0, ckpt slot 1, store state


# --------------------------------------------------------------------------- records
def payload(off: int) -> bytes:
    n = (off * 7919) % 700 + 1
    seed = hashlib.blake2b(off.to_bytes(8, "little"), digest_size=32).digest()
    return (seed * (n // 32 + 1))[:n]


def key(off: int):
    return b"k%d" % off if off % 5 == 0 else None


def seg_name(k: int, ext: str = "seg") -> str:
    return "%020d.%s" % (k * SEG, ext)


def align8(n: int) -> int:
    return (n + 7) & ~7


def parse_segments(path: str):
    """Walk every segment file by header alone: {seq: (seg, data_off, f_len)}
    for DATA frames, and PAD frames as (seg, data_off, f_len)."""
    recs, pads = {}, []
    k = 0
    while os.path.exists(os.path.join(path, seg_name(k))):
        with open(os.path.join(path, seg_name(k)), "rb") as f:
            data = f.read()[HDR:]
        off = 0
        while SEG - off >= FRAME.size:
            f_len, _crc, seq, _ts, flags, _ver, _typ = FRAME.unpack_from(data, off)
            if not flags & F_COMMITTED:
                break
            if flags & F_PAD:
                pads.append((k, off, f_len))
                off += f_len
                continue
            assert flags & F_DATA, "the template has no gaps"
            recs[seq] = (k, off, f_len)
            off += align8(f_len)
        k += 1
    return recs, pads


# --------------------------------------------------------------------------- forked runner
def _exc(e: BaseException):
    allowed = isinstance(e, (fastq.CorruptQueueError, fastq.IncompatibleQueueError)) or \
        (isinstance(e, OSError) and bool(str(e).strip()))
    return {"type": type(e).__name__, "msg": str(e), "offset": getattr(e, "offset", None), "allowed": allowed,
            "record_error": isinstance(e, fastq.CorruptRecordError)}


def run_forked(fn, *args, timeout: float = CHILD_TIMEOUT):
    """fn(*args) in a forked child; returns its (picklable) result.  A signal, a
    hang or an exception escaping fn fails the calling test."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        code = 0
        try:
            os.close(r)
            try:
                res = ("ok", fn(*args))
            except BaseException as e:  # noqa: BLE001 - reported to the parent
                res = ("raised", f"{type(e).__name__}: {e}\n{traceback.format_exc()}")
            with os.fdopen(w, "wb") as f:
                f.write(pickle.dumps(res))
        except BaseException:  # noqa: BLE001
            code = 3
        finally:
            os._exit(code)
    os.close(w)
    chunks, deadline = [], time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([r], [], [], left)[0]:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                pytest.fail(f"{fn.__name__}{args!r} hung (> {timeout} s)")
            b = os.read(r, 1 << 20)
            if not b:
                break
            chunks.append(b)
    finally:
        os.close(r)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        pytest.fail(f"{fn.__name__}{args!r}: the process died of signal "
                    f"{signal.Signals(os.WTERMSIG(status)).name}")
    assert os.WEXITSTATUS(status) == 0 and chunks, f"child exit status {os.WEXITSTATUS(status)}"
    kind, res = pickle.loads(b"".join(chunks))
    if kind != "ok":
        pytest.fail(f"unexpected exception in the child:\n{res}")
    return res


def _open(path, **kw):
    return fastq.open(path, durable=True, segment_size=SEG, fsync="never", **kw)


def _build(path: str, close: bool):
    log = _open(path)
    for i in range(N_CKPT):
        assert log.append(payload(i), key=key(i)) == i
    log.checkpoint()
    for i in range(N_CKPT, N_TOTAL):
        assert log.append(payload(i), key=key(i)) == i
    if close:
        log.close()
        return True
    os._exit(0)  # the crash: no checkpoint at close, members left ALIVE, page cache holds the rest


def _read_all(log):
    offs, bad = [], []
    for r in log.read():
        offs.append(r.offset)
        if r.data != payload(r.offset) or r.key != key(r.offset):
            bad.append(r.offset)
    return offs, bad


def _open_and_check(path: str, skip: bool, recover: bool = True):
    """Observations of a (by default forced-recovery) open (run in a child)."""
    obs = {}
    try:
        log = _open(path, recover=recover, on_corrupt="skip" if skip else "refuse")
    except BaseException as e:  # noqa: BLE001
        obs["open"] = _exc(e)
        return obs
    obs["open"] = None
    obs["report"] = dict(log.recovery_report)
    offs = []
    try:
        offs, bad = _read_all(log)
        obs["read"] = {"offsets": offs, "bad": bad}
    except BaseException as e:  # noqa: BLE001
        obs["read"] = {"exc": _exc(e)}
    try:
        obs["verify"] = log.verify()
    except BaseException as e:  # noqa: BLE001
        obs["verify"] = _exc(e)
    # seeks by offset (binary search over segments and index entries)
    seeks = {}
    for s in sorted({0, len(offs) // 3, len(offs) // 2, max(len(offs) - 1, 0)}):
        if s < len(offs):
            try:
                r = next(iter(log.read(start=offs[s])), None)
                seeks[offs[s]] = None if r is None else r.offset
            except BaseException as e:  # noqa: BLE001
                seeks[offs[s]] = _exc(e)
    obs["seeks"] = seeks
    try:
        new = [log.append(b"new-%d" % i, key=b"nk") for i in range(5)]
        back = [(r.offset, r.key, r.data) for r in log.read(start=new[0])]
        obs["append"] = {"offsets": new, "back": back}
    except BaseException as e:  # noqa: BLE001
        obs["append"] = {"exc": _exc(e)}
    log.close()
    try:
        log2 = _open(path)
        obs["reopen"] = {"offsets": [r.offset for r in log2.read()], "verify": log2.verify(),
                         "ran": log2.recovery_report["ran"]}
        log2.close()
    except BaseException as e:  # noqa: BLE001
        obs["reopen"] = {"exc": _exc(e)}
    return obs


# --------------------------------------------------------------------------- templates
STORE_BOOT = 3 * 128       # fq_store_shm.st_boot (block 3): boot id of the last opener


def _new_boot(path):
    """A power cut is a reboot: give the control file another boot id, so the
    opener treats it as one (it may trust page-cache state left by a process
    crash within one boot, not across a reboot)."""
    fpath = os.path.join(path, "control")
    with open(fpath, "r+b") as f:
        f.seek(os.path.getsize(fpath) - PAGE + STORE_BOOT)
        f.write(b"00000000-0000-4000-8000-0000powercut".ljust(40, b"\0"))


@pytest.fixture(scope="module")
def templates():
    root = tempfile.mkdtemp(prefix="fq-powerloss-")
    out = TemplateSet()
    for name, close in (("crashed", False), ("closed", True)):
        path = os.path.join(root, name)
        pid = os.fork()
        if pid == 0:
            try:
                _build(path, close)
                os._exit(0)
            except BaseException:  # noqa: BLE001
                traceback.print_exc()
                os._exit(3)
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, f"building {name}: status {status}"
        if not close:
            _new_boot(path)
        recs, pads = parse_segments(path)
        assert sorted(recs) == list(range(N_TOTAL))
        out[name] = Template(path=path, recs=recs, pads=pads, active=max(k for k, _, _ in recs.values()))
    t = out["crashed"]
    # the geometry the tests rely on
    assert t["recs"][N_CKPT - 1][0] == 1, "the checkpoint lies in segment 1"
    assert t["active"] == 3 and any(k == 2 for k, _, _ in t["recs"].values()), "segment 2 sealed, 3 active"
    yield out
    shutil.rmtree(root, ignore_errors=True)


class Template(dict):
    """A built log (path, recs, pads, active) with a short repr for hypothesis' reports."""

    def __repr__(self):
        return f"<template {self['path']}: {len(self['recs'])} records, active segment {self['active']}>"


class TemplateSet(dict):
    def __repr__(self):
        return "{" + ", ".join(f"{k}: {v!r}" for k, v in self.items()) + "}"


class Scratch:
    """A fresh copy of a template, removed afterwards."""

    def __init__(self, tpl):
        self.root = tempfile.mkdtemp(prefix="fq-pl-")
        self.path = os.path.join(self.root, "log")
        shutil.copytree(tpl["path"], self.path)

    def __enter__(self):
        return self.path

    def __exit__(self, *exc):
        shutil.rmtree(self.root, ignore_errors=True)


def _note(msg):
    try:
        note(msg)
    except InvalidArgument:  # outside a hypothesis test
        pass


def _event(msg):
    try:
        event(msg)
    except InvalidArgument:
        pass


# --------------------------------------------------------------------------- damage
MODES = ["cut", "zerotail", "zero", "garbage", "flip"]


def apply_damage(fpath: str, data, lo: int, page_granular: bool, mode: str, protect=()):
    """Damage file fpath inside [lo, size) (drawing from hypothesis' data);
    returns the first byte offset whose content changed (size if none).
    `protect`: (offset, length) ranges restored afterwards."""
    with open(fpath, "rb") as f:
        orig = f.read()
    size = len(orig)
    lo = max(0, min(lo, size - 1))
    if page_granular:
        pages = list(range(lo // PAGE, (size + PAGE - 1) // PAGE))
        a = data.draw(st.sampled_from(pages), label="page") * PAGE
        n = data.draw(st.integers(1, 3), label="pages") * PAGE
    else:
        a = data.draw(st.integers(lo, size - 1), label="at")
        n = data.draw(st.integers(1, 2 * PAGE), label="len")
    b = min(size, a + n)
    buf = bytearray(orig)
    if mode == "cut":
        buf = buf[:a]
    elif mode == "zerotail":
        buf[a:] = bytes(size - a)
    elif mode == "zero":
        buf[a:b] = bytes(b - a)
    elif mode == "garbage":
        rnd = data.draw(st.randoms(use_true_random=False), label="rng")
        for i in range(a, b):
            buf[i] ^= rnd.randrange(1, 256)
    elif mode == "flip":
        where = st.integers(a, b - 1) if page_granular else st.integers(lo, size - 1)
        for i, bit in data.draw(st.lists(st.tuples(where, st.integers(0, 7)), min_size=1, max_size=8, unique=True),
                                label="flips"):
            buf[i] ^= 1 << bit
    for (po, pn) in protect:
        if po < len(buf):
            buf[po:po + pn] = orig[po:po + pn]
    with open(fpath, "wb") as f:
        f.write(bytes(buf))
    first = next((i for i in range(min(len(buf), size)) if buf[i] != orig[i]), min(len(buf), size))
    _note(f"{os.path.basename(fpath)}: {mode} at {a} (+{b - a}), size {size} -> {len(buf)}, first change {first}")
    return first


def check_outcome(obs, must_keep: int, what: str):
    """The contract of a forced-recovery open after damage."""
    if obs["open"] is not None:
        e = obs["open"]
        assert e["allowed"], f"{what}: open raised {e['type']}: {e['msg']}"
        _event(f"{what}: refused with {e['type']}")
        return None
    rep = obs["report"]
    _note(f"report {rep}")
    assert "exc" not in obs["read"], f"{what}: read() after a successful recovery raised {obs['read']['exc']}"
    offs, bad = obs["read"]["offsets"], obs["read"]["bad"]
    k = len(offs)
    assert offs == list(range(k)), f"{what}: read() is not a prefix: {offs[:5]}..{offs[-5:]}"
    assert not bad, f"{what}: wrong payload/key at offsets {bad[:10]}"
    assert must_keep <= k <= N_TOTAL, f"{what}: recovered {k} records, at least {must_keep} were intact"
    assert rep["tail_offset"] == k and not rep["corrupt"] and rep["skipped"] == 0, rep
    assert obs["verify"] == k, f"{what}: verify() -> {obs['verify']} after recovering {k} records"
    assert all(v == s for s, v in obs["seeks"].items()), f"{what}: seeks {obs['seeks']}"
    ap = obs["append"]
    assert "exc" not in ap, f"{what}: append after recovery raised {ap['exc']}"
    assert ap["offsets"] == list(range(k, k + 5))
    assert ap["back"] == [(k + i, b"nk", b"new-%d" % i) for i in range(5)]
    ro = obs["reopen"]
    assert "exc" not in ro, f"{what}: plain reopen raised {ro['exc']}"
    assert ro["offsets"] == list(range(k + 5)) and ro["verify"] == k + 5
    _event(f"{what}: recovered, {'all' if k == N_TOTAL else 'a prefix of the'} records")
    return k


def _settings(n):
    return settings(max_examples=n * SCALE, deadline=None, derandomize=False,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                           HealthCheck.data_too_large])


# --------------------------------------------------------------------------- the tests
@_settings(60)
@given(data=st.data(), mode=st.sampled_from(MODES), page_granular=st.booleans())
def test_active_segment_tail(templates, data, mode, page_granular):
    """Torn/garbled last pages of the newest segment: recovery keeps exactly
    the intact prefix (and everything in it), never more, never garbage."""
    t = templates["crashed"]
    active = t["active"]
    in_active = sorted((off, ln, s) for s, (k, off, ln) in t["recs"].items() if k == active)
    data_end = HDR + align8(in_active[-1][0] + in_active[-1][1])
    with Scratch(t) as path:
        fpath = os.path.join(path, seg_name(active))
        lo = max(HDR, (data_end // PAGE) * PAGE - 3 * PAGE)  # the last pages holding records, and after
        first = apply_damage(fpath, data, lo, page_granular, mode)
        # records whose CRC-covered bytes all lie before the first changed byte must survive
        must_keep = sum(1 for s, (k, off, ln) in t["recs"].items() if k < active or HDR + off + ln <= first)
        if mode == "cut" and first < os.path.getsize(os.path.join(t["path"], seg_name(active))):
            must_keep = sum(1 for s, (k, off, ln) in t["recs"].items() if k < active)
        obs = run_forked(_open_and_check, path, False)
        check_outcome(obs, must_keep, "active segment")


@_settings(40)
@given(data=st.data(), mode=st.sampled_from(MODES), page_granular=st.booleans(),
       which=st.sampled_from(["active", "active", "older"]))
def test_index_damage(templates, data, mode, page_granular, which):
    """The .idx files are hints: any damage to the active segment's index (or
    to an older one that recovery does not rebuild) loses no record."""
    t = templates["crashed"]
    k = t["active"] if which == "active" else 0
    with Scratch(t) as path:
        apply_damage(os.path.join(path, seg_name(k, "idx")), data, 0, page_granular, mode)
        obs = run_forked(_open_and_check, path, False)
        check_outcome(obs, N_TOTAL, f"{which} index")


@_settings(60)
@given(data=st.data(), mode=st.sampled_from(MODES), page_granular=st.booleans(),
       npages=st.sampled_from([1, 2, 3, 5]))
def test_control_damage(templates, data, mode, page_granular, npages):
    """The last pages of the control file (checkpoint slots, store state, lease
    windows): recovery falls back to the other slot or a full scan and loses
    nothing, or refuses the file (a size change: CorruptQueueError /
    IncompatibleQueueError)."""
    t = templates["crashed"]
    with Scratch(t) as path:
        fpath = os.path.join(path, "control")
        size = os.path.getsize(fpath)
        # st_retain_seg (first 8 bytes of the store-state page) is read before
        # recovery and trusted: damage there is the known bug pinned by
        # test_bug_control_retain_seg_* below, so it is kept intact here.
        apply_damage(fpath, data, size - npages * PAGE, page_granular, mode, protect=[(size - PAGE, 8)])
        obs = run_forked(_open_and_check, path, False)
        check_outcome(obs, N_TOTAL, "control")


def _damage_record(buf, data, off, ln, mode):
    """Damage bytes of the record whose CRC-covered range is buf[off, off+ln) (file offsets)."""
    if mode == "flip":
        flips = data.draw(st.lists(st.tuples(st.integers(off, off + ln - 1), st.integers(0, 7)), min_size=1,
                                   max_size=4, unique=True), label="flips")
        for i, bit in flips:
            buf[i] ^= 1 << bit
        return
    i = data.draw(st.integers(off, off + ln - 1), label="at")
    n = data.draw(st.integers(1, 600), label="len")
    if mode == "zero":
        if not any(buf[i:i + n]):
            i, n = off, ln  # all zeros there already: zero the whole record instead
        buf[i:i + n] = bytes(len(buf[i:i + n]))
    else:
        rnd = data.draw(st.randoms(use_true_random=False), label="rng")
        for j in range(i, min(len(buf), i + n)):
            buf[j] ^= rnd.randrange(1, 256)


def _damage_in_segment(t, path, data, k, mode):
    """Damage one record of segment k (drawn); returns (bad offset, first record of segment k+1)."""
    recs = sorted((s, off, ln) for s, (kk, off, ln) in t["recs"].items() if kk == k)
    nxt = min(s for s, (kk, _, _) in t["recs"].items() if kk == k + 1)
    bad, off, ln = data.draw(st.sampled_from(recs), label="record")
    fpath = os.path.join(path, seg_name(k))
    with open(fpath, "rb") as f:
        buf = bytearray(f.read())
    _damage_record(buf, data, HDR + off, ln, mode)
    with open(fpath, "wb") as f:
        f.write(bytes(buf))
    _note(f"damaged record {bad} ({mode}) of segment {k}; segment {k + 1} starts at record {nxt}")
    return bad, nxt


def check_refused_at(obs, bad):
    e = obs["open"]
    assert e is not None, f"open succeeded with record {bad} corrupt: {obs.get('report')}"
    assert e["record_error"], f"open raised {e['type']}: {e['msg']}"
    assert e["offset"] == bad and str(bad) in e["msg"], e


def check_skipped(obs, bad, seg_end):
    """on_corrupt="skip": a counted loss — one run of records [bad, bad+skipped)
    inside the damaged segment — and every other record intact and readable."""
    assert obs["open"] is None, f"on_corrupt='skip' refused: {obs['open']}"
    rep = obs["report"]
    lost = rep["skipped"]
    assert rep["corrupt"] and rep["corrupt_offset"] == bad and 0 < lost <= seg_end - bad, rep
    assert rep["tail_offset"] == N_TOTAL, rep
    assert "exc" not in obs["read"], f"read() after a skip recovery raised {obs['read']['exc']}"
    keep = list(range(bad)) + list(range(bad + lost, N_TOTAL))
    assert obs["read"]["offsets"] == keep and obs["read"]["bad"] == []
    assert obs["verify"] == N_TOTAL - lost, obs["verify"]
    assert obs["append"]["offsets"] == list(range(N_TOTAL, N_TOTAL + 5)), obs["append"]
    assert obs["reopen"]["offsets"] == keep + list(range(N_TOTAL, N_TOTAL + 5)), obs["reopen"]


@_settings(40)
@given(data=st.data(), mode=st.sampled_from(["zero", "garbage", "flip"]), skip=st.booleans(),
       k=st.sampled_from([1, 2]))
def test_sealed_segment_middle(templates, data, mode, skip, k):
    """Damage inside a record of a sealed segment that a checkpoint covers (the
    cleanly closed log; valid records follow): refused with CorruptRecordError
    naming that offset, or with on_corrupt="skip" a counted loss and every
    other record intact."""
    t = templates["closed"]
    with Scratch(t) as path:
        bad, nxt = _damage_in_segment(t, path, data, k, mode)
        obs = run_forked(_open_and_check, path, skip)
    if skip:
        check_skipped(obs, bad, nxt)
    else:
        check_refused_at(obs, bad)


@_settings(30)
@given(data=st.data(), mode=st.sampled_from(["zero", "garbage", "flip"]), skip=st.booleans())
def test_sealed_segment_after_checkpoint(templates, data, mode, skip):
    """Damage inside a record of a sealed segment written AFTER the last
    checkpoint (the crashed log; valid records follow in the next segment).
    Accepted: refused / counted loss as above, or — records never promised
    durable — a cut there: exactly records 0..bad-1 (the valid segments after
    it are removed; the report shows it only as truncated_bytes and
    segments_removed)."""
    t = templates["crashed"]
    with Scratch(t) as path:
        bad, nxt = _damage_in_segment(t, path, data, 2, mode)
        obs = run_forked(_open_and_check, path, skip)
    if obs["open"] is None and not obs["report"]["corrupt"]:
        _event("after the checkpoint: cut as a torn tail")
        assert check_outcome(obs, bad, "sealed segment after the checkpoint") == bad
        assert obs["report"]["segments_removed"] >= 1
    elif skip:
        _event("after the checkpoint: skipped")
        check_skipped(obs, bad, nxt)
    else:
        _event("after the checkpoint: refused")
        check_refused_at(obs, bad)


# --------------------------------------------------------------------------- specific cases
def test_truncated_control_file_is_refused(templates):
    """A control file of the wrong size is refused (CorruptQueueError), never
    guessed at; below 3 pages it is not a fastq file at all."""
    t = templates["crashed"]
    for cut, exc in ((PAGE, "IncompatibleQueueError"), (-PAGE, "CorruptQueueError"), (-1, "CorruptQueueError")):
        with Scratch(t) as path:
            fpath = os.path.join(path, "control")
            size = os.path.getsize(fpath)
            os.truncate(fpath, cut if cut > 0 else size + cut)
            obs = run_forked(_open_and_check, path, False)
            assert obs["open"] is not None and obs["open"]["type"] == exc, obs["open"]


def test_truncated_active_segment(templates):
    """A newest segment file of the wrong size fails validation (size is
    checked before anything is mapped).  After a crash (checkpoint in an older
    segment) recovery treats it like a missing file: the valid prefix ends
    before it and the file is removed (every record in it is lost, even the
    intact ones; reported as segments_removed).  When a checkpoint covers it
    (a cleanly closed log) the open is refused, even with recover=True.
    Segment files are created whole (fallocate, then link), so only a lying
    disk or a power cut with fsync="never" can produce one."""
    t = templates["crashed"]
    first3 = min(s for s, (k, _, _) in t["recs"].items() if k == t["active"])
    with Scratch(t) as path:
        fpath = os.path.join(path, seg_name(t["active"]))
        os.truncate(fpath, os.path.getsize(fpath) - PAGE)
        obs = run_forked(_open_and_check, path, False)
    assert check_outcome(obs, first3, "truncated active segment") == first3
    assert obs["report"]["segments_removed"] >= 1   # it, and the next one created ahead of time
    t = templates["closed"]
    with Scratch(t) as path:
        fpath = os.path.join(path, seg_name(t["active"]))
        os.truncate(fpath, os.path.getsize(fpath) - PAGE)
        obs = run_forked(_open_and_check, path, False)
    e = obs["open"]
    assert e is not None and e["allowed"], obs   # OSError "failed validation", or CorruptRecordError(507)
    assert e["type"] == "OSError" and "failed validation" in e["msg"] or e["record_error"] and e["offset"] == first3


def test_zeroed_checkpoints_full_scan(templates):
    """Both checkpoint slots torn: recovery scans from the oldest segment and
    keeps every record."""
    t = templates["crashed"]
    with Scratch(t) as path:
        fpath = os.path.join(path, "control")
        size = os.path.getsize(fpath)
        with open(fpath, "r+b") as f:
            f.seek(size - STORE_SECTION)
            f.write(bytes(2 * CKPT_SLOT))
        obs = run_forked(_open_and_check, path, False)
        assert check_outcome(obs, N_TOTAL, "no checkpoint") == N_TOTAL
        assert obs["report"]["reason"] == "requested" and obs["report"]["checkpoint_offset"] == 0


def _damage_pad(t, path):
    """Flip one byte of f_seq in the PAD frame that closes sealed segment 2."""
    pads = [p for p in t["pads"] if p[0] == 2]
    assert pads, "segment 2 of the template ends with a PAD frame"
    _, off, _ = pads[0]
    with open(os.path.join(path, seg_name(2)), "r+b") as f:
        f.seek(HDR + off + 8)
        b = f.read(1)
        f.seek(HDR + off + 8)
        f.write(bytes([b[0] ^ 0x01]))
    return min(s for s, (k, _, _) in t["recs"].items() if k == 3)


@pytest.mark.parametrize("skip", [False, True], ids=["refuse", "skip"])
def test_damaged_pad_frame_mid_log(templates, skip):
    """The PAD frame closing sealed segment 2 of the closed log is damaged (no
    record is): refused with CorruptRecordError naming the record the walk
    expected (the first of segment 3); "skip" loses nothing and leaves a
    readable log.  (An earlier build wrote no gap over the bad PAD when
    nothing was skipped: read() then failed at it.)"""
    t = templates["closed"]
    with Scratch(t) as path:
        first3 = _damage_pad(t, path)
        obs = run_forked(_open_and_check, path, skip)
    if not skip:
        check_refused_at(obs, first3)
        return
    assert obs["open"] is None and obs["report"]["skipped"] == 0, obs
    assert check_outcome(dict(obs, report=dict(obs["report"], corrupt=False)), N_TOTAL, "pad") == N_TOTAL


def test_damaged_pad_frame_after_checkpoint(templates):
    """The same in the crashed log (after its checkpoint): refused, or cut
    there — never fewer than the records before the PAD."""
    t = templates["crashed"]
    with Scratch(t) as path:
        first3 = _damage_pad(t, path)
        obs = run_forked(_open_and_check, path, False)
    if obs["open"] is not None:
        check_refused_at(obs, first3)
    else:
        assert check_outcome(obs, first3, "pad after the checkpoint") >= first3


@pytest.mark.parametrize("skip", [False, True], ids=["refuse", "skip"])
def test_forced_recovery_verifies_checkpointed_records(templates, skip):
    """recover=True verifies every retained record, also those a checkpoint
    covers: the closed log's last record damaged is refused (naming it), or
    with "skip" cut there.  (An earlier build started the scan at the
    checkpoint: the open succeeded and verify() failed afterwards.)"""
    t = templates["closed"]
    last = N_TOTAL - 1
    k, off, ln = t["recs"][last]
    with Scratch(t) as path:
        with open(os.path.join(path, seg_name(k)), "r+b") as f:
            f.seek(HDR + off + ln - 1)
            b = f.read(1)
            f.seek(HDR + off + ln - 1)
            f.write(bytes([b[0] ^ 0x10]))
        obs = run_forked(_open_and_check, path, skip)
    if not skip:
        check_refused_at(obs, last)
        return
    assert obs["open"] is None and obs["report"]["corrupt"] and obs["report"]["corrupt_offset"] == last, obs
    rep = dict(obs["report"], corrupt=False, skipped=0, corrupt_offset=None)
    assert check_outcome(dict(obs, report=rep), last, "closed log, last record damaged") == last


def _damage_seg_magic(path, k):
    with open(os.path.join(path, seg_name(k)), "r+b") as f:
        f.write(b"X")   # first byte of h_magic "FASTQSG": the file fails validation


@pytest.mark.parametrize("which", ["closed", "crashed"])
def test_segment_header_damaged_no_hang(templates, which):
    """Sealed segment 2's file header is damaged, plain reopen (closed log,
    same boot: no recovery scan): read() raises CorruptRecordError (or the
    open refuses), it never hangs — an earlier build spun forever in
    fq_read_next (it took the unmappable segment for one deleted by
    retention).  The power-cut log (new boot) recovers and cuts there."""
    t = templates[which]
    first2 = min(s for s, (k, _, _) in t["recs"].items() if k == 2)
    with Scratch(t) as path:
        _damage_seg_magic(path, 2)
        obs = run_forked(_open_and_check, path, False, False, timeout=HANG_TIMEOUT)
    if obs["open"] is not None:
        assert obs["open"]["allowed"], obs["open"]
    elif "exc" in obs["read"]:
        assert obs["read"]["exc"]["allowed"], obs["read"]
    else:  # the new-boot open recovered: records after the (unpromised) segment cut as a torn tail
        assert obs["report"]["ran"] and check_outcome(obs, first2, "segment header") == first2


# --------------------------------------------------------------------------- bugs found
STORE_STATE = -PAGE        # offset of fq_store_shm from the end of control: st_retain_seg is its first u64


def _poke_retain_seg(path, value):
    fpath = os.path.join(path, "control")
    size = os.path.getsize(fpath)
    with open(fpath, "r+b") as f:
        f.seek(size + STORE_STATE)
        f.write(struct.pack("<Q", value))


def test_regression_control_retain_seg_bitflip_deletes_segments(templates):
    t = templates["crashed"]
    with Scratch(t) as path:
        _poke_retain_seg(path, 0 ^ (1 << 1))   # st_retain_seg 0 -> 2: one bit
        obs = run_forked(_open_and_check, path, False)
        check_outcome(obs, N_TOTAL, "st_retain_seg bit 1")


def test_regression_control_retain_seg_high_bit_hangs(templates):
    t = templates["crashed"]
    with Scratch(t) as path:
        _poke_retain_seg(path, 1 << 62)
        obs = run_forked(_open_and_check, path, False, timeout=HANG_TIMEOUT)
        check_outcome(obs, N_TOTAL, "st_retain_seg bit 62")


def test_regression_sealed_segment_header_skip_unreadable(templates):
    t = templates["closed"]
    seg2 = sorted(s for s, (k, _, _) in t["recs"].items() if k == 2)
    with Scratch(t) as path:
        _damage_seg_magic(path, 2)
        obs = run_forked(_open_and_check, path, True, timeout=HANG_TIMEOUT)
    check_skipped(obs, seg2[0], seg2[-1] + 1)


def test_regression_control_floor_pos_far_ahead_hangs_close(templates):
    t = templates["closed"]
    with Scratch(t) as path:
        fpath = os.path.join(path, "control")
        with open(fpath, "rb") as f:
            buf = bytearray(f.read())
        off_ctrl = struct.unpack_from("<Q", buf, 64)[0]          # s_off_ctrl
        tail = struct.unpack_from("<Q", buf, off_ctrl)[0]        # c_tail = seq_lo32 << 32 | (pos / 8)_lo32
        fseq, fpos = struct.unpack_from("<QQ", buf, off_ctrl + 128)  # c_floor_seq, c_floor_pos
        fpos += 1 << 44
        struct.pack_into("<QQ", buf, off_ctrl + 128, fseq, fpos)
        struct.pack_into("<Q", buf, off_ctrl, (tail & ~0xFFFFFFFF) | ((fpos // 8) & 0xFFFFFFFF))
        with open(fpath, "wb") as f:
            f.write(bytes(buf))
        res = run_forked(_open_close, path, timeout=HANG_TIMEOUT)   # open + close only (read() would hit the other hang)
    assert res == "ok" or res["allowed"], res


def _open_close(path):
    try:
        log = _open(path)
    except BaseException as e:  # noqa: BLE001
        return _exc(e)
    log.close()
    return "ok"


def _append_always(path):
    """A same-boot open (no forced recovery) with fsync="always": one append, then close."""
    try:
        log = fastq.open(path, durable=True, segment_size=SEG, fsync="always")
    except BaseException as e:  # noqa: BLE001
        return _exc(e)
    try:
        off = log.append(b"after")
        return ("appended", off, [r.data for r in log.read(start=off)])
    except BaseException as e:  # noqa: BLE001
        return _exc(e)
    finally:
        log.close()


def test_regression_control_flush_owner_garbage_blocks_appends(templates):
    t = templates["closed"]
    with Scratch(t) as path:
        fpath = os.path.join(path, "control")
        with open(fpath, "r+b") as f:
            f.seek(os.path.getsize(fpath) + STORE_STATE + 128)   # fq_store_shm block 1: st_flush_owner
            f.write(struct.pack("<I", 0xFFFF))
        res = run_forked(_append_always, path, timeout=HANG_TIMEOUT)
    assert res == ("appended", N_TOTAL, [b"after"]) or res["allowed"], res
