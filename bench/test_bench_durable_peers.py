"""The durable comparison (``fastq._bench_durable``): every available peer moves
messages and gives back exactly what was appended, and the harness itself
rejects a store that loses, duplicates or corrupts messages.

Each peer runs for about 0.2 s per phase; peers that are not installed
(persist-queue, redis-server / redis-py) are skipped with their reason.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, List, Sequence

import pytest

bd = pytest.importorskip("fastq._bench_durable")

SHORT = bd.Budget(duration=0.2, max_items=50_000)
PEERS = [name for name in bd.IMPLS if not name.startswith("fastq")]


class _Recording(bd.Payloads):
    """Payloads that also keep every consumed message, to check them independently."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: List[bytes] = []

    def matches(self, start: int, msgs: Sequence[bytes]) -> bool:
        self.seen.extend(msgs)
        return super().matches(start, msgs)


@pytest.mark.parametrize("name", PEERS)
def test_peer_appends_and_consumes_what_was_appended(name, tmp_path):
    impl = bd.IMPLS[name]
    why = impl.available()
    if why is not None:
        pytest.skip(why)
    payloads = _Recording()
    try:
        ctx = impl.setup(str(tmp_path))
    except bd.Unavailable as e:
        pytest.skip(str(e))
    try:
        a = impl.append(ctx, payloads, SHORT)
        c = impl.consume(ctx, payloads, SHORT, a.messages)
        problem = impl.check(ctx, a.messages, c.messages)
    finally:
        impl.teardown(ctx)
    assert a.messages > 0 and a.rate > 0
    assert 0 < c.messages <= a.messages and c.rate > 0
    assert not c.stalled
    assert c.mismatched == 0
    assert problem is None
    # independent of Payloads.matches: the exact bytes, in append order
    assert len(payloads.seen) == c.messages
    expected = [payloads.items[i & payloads.mask] for i in range(c.messages)]
    assert payloads.seen == expected


def test_run_once_reports_rates_for_sqlite(tmp_path):
    r = bd.run_once(bd.IMPLS["sqlite3-wal-full"], bd.Payloads(), SHORT, parent=str(tmp_path))
    assert r["status"] == "ok", r.get("error")
    assert r["appended"] > 0 and 0 < r["consumed"] <= r["appended"]
    assert r["append_rate"] > 0 and r["consume_rate"] > 0
    assert list(tmp_path.iterdir()) == []  # the run's temp dir is removed


# --------------------------------------------------------------------------
# the harness catches a bad store
# --------------------------------------------------------------------------

def _memory_impl(name: str, mangle: Callable[[List[bytes]], List[bytes]] = list,
                 fsync: str = "never") -> "bd.Impl":
    """An in-memory FIFO; mangle() alters what each consume step hands back."""
    def consume(store: List[bytes], payloads, budget, backlog):
        pos = 0

        def step(n: int) -> List[bytes]:
            nonlocal pos
            out = store[pos:pos + n]
            pos += len(out)
            return mangle(out) if out else out
        return bd.drain(step, payloads, budget, backlog)

    return bd.Impl(name, fsync, "in-memory list (test)", setup=lambda d: [],
                   append=lambda store, p, b: bd.fill_batches(store.extend, p, b),
                   consume=consume)


def _corrupt(msgs: List[bytes]) -> List[bytes]:
    return [msgs[0][:-1] + bytes([msgs[0][-1] ^ 1])] + msgs[1:]


TINY = bd.Budget(duration=0.05, max_items=5_000)


def test_harness_accepts_a_correct_store():
    r = bd.run_once(_memory_impl("ok"), bd.Payloads(), TINY)
    assert r["status"] == "ok", r.get("error")
    assert r["consumed"] == r["appended"] > 0


@pytest.mark.parametrize("mangle, what", [
    (lambda m: m[1:], "differ"),             # loses the first message of every batch
    (lambda m: m + m[-1:], "differ"),        # duplicates one
    (_corrupt, "differ"),                    # flips one bit
    (lambda m: m[::-1], "differ"),           # reorders
    (lambda m: [], "returned nothing"),      # runs dry
])
def test_harness_rejects_a_bad_store(mangle, what):
    r = bd.run_once(_memory_impl("bad", mangle), bd.Payloads(), TINY)
    assert r["status"] == "error"
    assert what in r["error"]


def test_store_check_failure_is_an_error():
    good = _memory_impl("ok")
    liar = dataclasses.replace(good, check=lambda ctx, a, c: "store lost a row")
    r = bd.run_once(liar, bd.Payloads(), TINY)
    assert r["status"] == "error" and "store lost a row" in r["error"]


def test_run_durable_skips_and_computes_ratios(monkeypatch):
    def unavailable(d):
        raise bd.Unavailable("no server here")
    monkeypatch.setitem(bd.IMPLS, "fastq-mem", _memory_impl("fastq-mem", fsync="interval"))
    monkeypatch.setitem(bd.IMPLS, "peer-mem", _memory_impl("peer-mem"))
    monkeypatch.setitem(bd.IMPLS, "peer-single", dataclasses.replace(
        _memory_impl("peer-single", fsync="interval"), batched=False))
    monkeypatch.setitem(bd.IMPLS, "missing", dataclasses.replace(
        _memory_impl("missing"), available=lambda: "pip install missing"))
    monkeypatch.setitem(bd.IMPLS, "nostart", dataclasses.replace(
        _memory_impl("nostart"), setup=unavailable))
    calls: List[str] = []
    rows = bd.run_durable(["fastq-mem", "peer-mem", "peer-single", "missing", "nostart"],
                          duration=0.05, repeat=2, max_items=5_000, progress=calls.append)
    assert len(calls) == 5 * 2
    status = {r["impl"]: r["summary"]["status"] for r in rows}
    assert status == {"fastq-mem": "ok", "peer-mem": "ok", "peer-single": "ok",
                      "missing": "skipped", "nostart": "skipped"}
    table = bd.format_durable_table(rows)
    lines = {line.split()[0]: line.split() for line in table.splitlines() if line.strip()}
    assert lines["fastq-mem"][-2:] == ["-", "-"]  # the reference itself
    assert all(float(x) > 0 for x in lines["peer-mem"][-2:])  # batched peer: vs the batched fastq-interval row
    assert lines["peer-single"][-2:] == ["-", "-"]  # one call per message: no single-call fastq row here
    assert "skipped missing: pip install missing" in table
    assert "skipped nostart: no server here" in table


def test_cli_durable_section(capsys):
    bench = pytest.importorskip("fastq._bench")
    rc = bench.main(["--scenarios", "durable", "--impls", "sqlite3-wal-full", "--duration", "0.1",
                     "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "sqlite3-wal-full" in out and "fastq/peer append" in out
    assert "redis-aof-everysec" not in out  # --impls selects the durable rows too
