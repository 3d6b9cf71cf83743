"""Stateful property test of lease expiry with an injected clock.

fastq._core._advance_clock(seconds) makes fastq's monotonic clock in this
process jump ahead, so leases expire without sleeping.  The visibility
timeout is long (VIS virtual seconds) and time only jumps by more than it,
so the few real seconds a run takes never decide an expiry.

Model per offset: fresh / leased(owner, deliveries, expired?) / acked.
Checked: what get_many hands out (due redeliveries first, in offset order,
then fresh records in offset order inside the window), deliveries counted
exactly, ack/extend True exactly when the lease is still the caller's (even
past its deadline, until someone else took it), at most one holder per
record, low-watermark monotone, stats (pending, expired, redelivered).
"""
import os
import uuid

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

import fastq

# FASTQ_PROPERTY_SCALE=10 runs 10x the examples (on demand; CI runs 1x)
SCALE = max(1, int(os.environ.get("FASTQ_PROPERTY_SCALE", "1")))

VIS = 30.0
WINDOW = 16
pytestmark = pytest.mark.timeout(300)


class ExpiryMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.name = "tlc-" + uuid.uuid4().hex
        self.log = fastq.open(self.name, capacity=1 << 16)
        self.group = self.log.group("g", visibility_timeout=VIS, max_deliveries=None, window=WINDOW)
        self.cons = [self.group.consumer(), self.group.consumer()]
        self.held = [[], []]            # Message objects each consumer got
        self.rec = []                   # per offset: dict(state, owner, deliveries, expired)
        self.low_seen = 0
        self.expired_count = 0

    def teardown(self):
        for c in self.cons:
            c.close()
        self.log.unlink()
        self.log.close()

    def _low(self):
        for i, r in enumerate(self.rec):
            if r["state"] != "acked":
                return i
        return len(self.rec)

    @rule(n=st.integers(1, 6))
    def append(self, n):
        offs = self.log.append_many([b"r%d" % (len(self.rec) + i) for i in range(n)], timeout=1.0)
        assert offs == list(range(len(self.rec), len(self.rec) + n))
        for _ in range(n):
            self.rec.append({"state": "fresh", "owner": None, "deliveries": 0, "expired": False})

    @rule(ci=st.integers(0, 1), k=st.integers(1, 5))
    def get(self, ci, k):
        got = self.cons[ci].get_many(k, timeout=0)
        # expected: due redeliveries first (offset order), then fresh inside the window
        due = [i for i, r in enumerate(self.rec) if r["state"] == "leased" and r["expired"]]
        low = self._low()
        fresh = [i for i, r in enumerate(self.rec) if r["state"] == "fresh" and i < low + WINDOW]
        want = (due + fresh)[:k]
        assert [m.offset for m in got] == want, (got, due, fresh)
        for m in got:
            r = self.rec[m.offset]
            if r["state"] == "leased":
                self.expired_count += 1
            r.update(state="leased", owner=ci, deliveries=r["deliveries"] + 1, expired=False)
            assert m.deliveries == r["deliveries"]
            assert m.data == b"r%d" % m.offset
            self.held[ci].append(m)

    @rule(ci=st.integers(0, 1), pick=st.integers(0, 1 << 30))
    def ack(self, ci, pick):
        if not self.held[ci]:
            return
        m = self.held[ci].pop(pick % len(self.held[ci]))
        r = self.rec[m.offset]
        mine = r["state"] == "leased" and r["owner"] == ci and r["deliveries"] == m.deliveries
        assert m.ack() is mine
        if mine:
            r.update(state="acked", owner=None, expired=False)

    @rule(ci=st.integers(0, 1), pick=st.integers(0, 1 << 30))
    def extend(self, ci, pick):
        if not self.held[ci]:
            return
        m = self.held[ci][pick % len(self.held[ci])]
        r = self.rec[m.offset]
        mine = r["state"] == "leased" and r["owner"] == ci and r["deliveries"] == m.deliveries
        assert m.extend(VIS) is mine
        if mine:
            r["expired"] = False

    @rule()
    def time_passes(self):
        fastq._core._advance_clock(VIS + 5.0)
        for r in self.rec:
            if r["state"] == "leased":
                r["expired"] = True

    @invariant()
    def stats_agree(self):
        s = self.log.stats()["groups"]["g"]
        low = self._low()
        assert s["low"] == low and s["low"] >= self.low_seen
        self.low_seen = s["low"]
        assert s["pending"] == sum(r["state"] == "leased" for r in self.rec)
        assert s["unfinished"] == sum(r["state"] != "acked" for r in self.rec)
        assert s["expired"] == self.expired_count
        assert s["redelivered"] == self.expired_count


TestExpiry = ExpiryMachine.TestCase
TestExpiry.settings = settings(max_examples=60 * SCALE, stateful_step_count=40, deadline=None,
                               suppress_health_check=[HealthCheck.too_slow])
