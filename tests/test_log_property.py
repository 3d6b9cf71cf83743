"""Stateful property test of one consumer group with 2 consumers in one
process (no visibility timeout: leases change hands only by ack, nack, the
delivery limit and closing a consumer).

The model tracks every record: FRESH, LEASED(consumer, deliveries),
RETRY(deliveries), ACKED, DEAD.  Checked after every step: what get_many
returns (fresh records in offset order from the window [low, low+window),
retries with deliveries+1, dead letters at the limit), the DLQ's exact
content, stats (low monotone and exact, pending, unfinished, delivered,
redelivered, nacked, dead_lettered, consumers), no record leased to two
consumers, and at the end every record is acked or dead-lettered exactly once.
"""
import sys
import os
import uuid

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import fastq

# FASTQ_PROPERTY_SCALE=10 runs 10x the examples (on demand; CI runs 1x)
SCALE = max(1, int(os.environ.get("FASTQ_PROPERTY_SCALE", "1")))

pytestmark = [pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fastq is Linux-only"),
              pytest.mark.timeout(300)]

MAXD = 3
WINDOW = 8
FRESH, LEASED, RETRY, ACKED, DEAD = "fresh", "leased", "retry", "acked", "dead"
LIMIT_REASON = f"delivery limit {MAXD} reached"


class GroupMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.name = "tlp-" + uuid.uuid4().hex
        self.log = fastq.open(self.name, capacity=1 << 16)
        self.group = self.log.group("g", visibility_timeout=None, max_deliveries=MAXD, window=WINDOW,
                                    retry=fastq.Backoff(0.0, 0.0, 1.0, 0.0))
        self.consumers = [self.group.consumer(), self.group.consumer()]
        self.held = [[], []]          # Message objects each consumer holds (model: LEASED by it)
        self.stale = []               # (consumer index, Message) no longer ours, consumer still open
        self.closed_msgs = []         # messages of closed consumers
        self.state = []               # per offset: [state, deliveries, owner]
        self.data = []
        self.acks = []                # per offset: successful acks
        self.dead = {}                # offset -> (deliveries, reason)
        self.low_seen = 0
        self.delivered = self.redelivered = self.nacked = 0
        self.dlq = None               # a reader of the DLQ once it exists
        self.dlq_c = None

    # ------------------------------------------------------------------ helpers
    def low(self):
        for i, s in enumerate(self.state):
            if s[0] not in (ACKED, DEAD):
                return i
        return len(self.state)

    def available(self):
        low = self.low()
        fresh = [i for i in range(low, min(low + WINDOW, len(self.state))) if self.state[i][0] == FRESH]
        retry = [i for i, s in enumerate(self.state) if s[0] == RETRY]
        return fresh, retry

    def read_dlq(self):
        """New dead letters; each must be for a record the model expects dead."""
        if self.dlq_c is None:
            try:
                self.dlq = fastq.open(self.name + ".dlq", create=False, wait=0.0)
            except FileNotFoundError:
                return []
            self.dlq_c = self.dlq.group("r", visibility_timeout=None).consumer()
        out = []
        while True:
            ms = self.dlq_c.get_many(64, timeout=0)
            if not ms:
                return out
            for m in ms:
                out.append(fastq.DeadLetter.decode(m.data))
                assert m.ack()

    def record_dead_letters(self, expected_limit):
        """Reconcile the DLQ with the model: each new dead letter is a RETRY record
        at the delivery limit (expected_limit) or nacked at the limit."""
        for d in self.read_dlq():
            assert (d.log, d.group) == (self.name, "g")
            off = d.offset
            assert off not in self.dead, f"record {off} dead-lettered twice"
            assert d.data == self.data[off]
            s = self.state[off]
            assert off in expected_limit, f"unexpected dead letter {d}"
            assert s[0] == RETRY and s[1] == MAXD and d.deliveries == MAXD + 1, (s, d)
            assert LIMIT_REASON in d.reason, d.reason
            self.state[off] = [DEAD, d.deliveries, None]
            self.dead[off] = (d.deliveries, d.reason)
            self.delivered += 1
            self.redelivered += 1

    # ------------------------------------------------------------------ rules
    @rule(k=st.integers(1, 5))
    def append(self, k):
        recs = [uuid.uuid4().bytes[: (len(self.data) + j) % 17] for j in range(k)]
        offs = self.log.append_many(recs, timeout=1.0)
        assert offs == list(range(len(self.data), len(self.data) + k))
        for r in recs:
            self.data.append(r)
            self.state.append([FRESH, 0, None])
            self.acks.append(0)

    @rule(i=st.integers(0, 1), n=st.integers(1, 6))
    def get(self, i, n):
        fresh, retry = self.available()
        limit = [o for o in retry if self.state[o][1] >= MAXD]
        deliverable = len(fresh) + len(retry) - len(limit)
        c = self.consumers[i]
        ms = c.get_many(n, timeout=1.0 if deliverable else 0)
        ndead = len(self.dead)
        self.record_dead_letters(set(limit))
        if len(self.dead) != ndead:
            # dead letters finished in an earlier round of get_many moved low (and the window)
            fresh = self.available()[0]
        if deliverable:
            assert ms, f"nothing returned though {fresh} fresh / {retry} retry are available"
        assert len(ms) <= n
        got_fresh = []
        for m in ms:
            off = m.offset
            assert m.group == "g" and m.data == self.data[off]
            s = self.state[off]
            if s[0] == FRESH:
                assert m.deliveries == 1
                got_fresh.append(off)
            else:
                assert s[0] == RETRY, f"record {off} delivered while {s}"
                assert m.deliveries == s[1] + 1 <= MAXD
                self.redelivered += 1
            self.delivered += 1
            self.state[off] = [LEASED, m.deliveries, i]
            self.held[i].append(m)
        assert got_fresh == fresh[:len(got_fresh)], f"fresh records out of order/window: {got_fresh} vs {fresh}"

    def _pick(self, i, j):
        h = self.held[i]
        return h.pop(j % len(h))

    @precondition(lambda self: self.held[0] or self.held[1])
    @rule(i=st.integers(0, 1), j=st.integers(0, 50))
    def ack(self, i, j):
        if not self.held[i]:
            i = 1 - i
        m = self._pick(i, j)
        assert m.ack() is True
        self.state[m.offset] = [ACKED, m.deliveries, None]
        self.acks[m.offset] += 1
        self.stale.append((i, m))

    @precondition(lambda self: self.held[0] or self.held[1])
    @rule(i=st.integers(0, 1), j=st.integers(0, 50), reason=st.sampled_from([None, "boom", "é-\u2603"]))
    def nack(self, i, j, reason):
        if not self.held[i]:
            i = 1 - i
        m = self._pick(i, j)
        assert m.nack(delay=0, reason=reason) is True
        off = m.offset
        self.stale.append((i, m))
        if m.deliveries >= MAXD:
            (d,) = self.read_dlq()
            assert (d.log, d.group, d.offset, d.deliveries, d.data) == (self.name, "g", off, m.deliveries,
                                                                        self.data[off])
            assert d.timestamp == m.timestamp
            if reason is not None:
                assert d.reason == reason
            else:
                assert isinstance(d.reason, str) and d.reason
            assert off not in self.dead
            self.dead[off] = (d.deliveries, d.reason)
            self.state[off] = [DEAD, m.deliveries, None]
        else:
            self.nacked += 1
            self.state[off] = [RETRY, m.deliveries, None]

    @precondition(lambda self: self.held[0] or self.held[1])
    @rule(i=st.integers(0, 1), j=st.integers(0, 50))
    def extend(self, i, j):
        if not self.held[i]:
            i = 1 - i
        h = self.held[i]
        m = h[j % len(h)]
        assert m.extend(30.0) is True   # no state change

    @precondition(lambda self: self.stale)
    @rule(j=st.integers(0, 50), op=st.sampled_from(["ack", "nack", "extend"]))
    def stale_op(self, j, op):
        """A finished or returned lease is not ours any more: False, nothing changes."""
        i, m = self.stale[j % len(self.stale)]
        if op == "ack":
            assert m.ack() is False
        elif op == "nack":
            if m.deliveries >= MAXD:
                return   # would go the dead-letter path (copy first): not a pure lease check
            assert m.nack(delay=0) is False
        else:
            assert m.extend(1.0) is False

    @rule(i=st.integers(0, 1))
    def close_consumer(self, i):
        """Closing returns the consumer's leases (RETRY, deliveries kept); a new consumer takes its place."""
        self.consumers[i].close()
        for m in self.held[i]:
            self.state[m.offset] = [RETRY, m.deliveries, None]
            self.closed_msgs.append(m)
        self.held[i] = []
        self.stale = [(k, m) for k, m in self.stale if k != i]
        self.consumers[i] = self.group.consumer()

    @precondition(lambda self: self.closed_msgs)
    @rule(j=st.integers(0, 50))
    def closed_consumer_message(self, j):
        m = self.closed_msgs[j % len(self.closed_msgs)]
        with pytest.raises(ValueError):
            m.ack()

    # ------------------------------------------------------------------ invariants
    @invariant()
    def no_record_leased_twice(self):
        offs = [m.offset for h in self.held for m in h]
        assert len(offs) == len(set(offs))
        for i, h in enumerate(self.held):
            for m in h:
                assert self.state[m.offset][:3] == [LEASED, m.deliveries, i]
        assert sum(1 for s in self.state if s[0] == LEASED) == len(offs)

    @invariant()
    def stats_match(self):
        st_ = self.log.stats()
        assert st_["head"] == len(self.state)
        gs = st_["groups"]["g"]
        low = self.low()
        assert gs["low"] >= self.low_seen, "low-watermark went back"
        self.low_seen = gs["low"]
        assert gs["low"] == low, (gs["low"], low, self.state[low:low + 3])
        assert gs["lag"] == len(self.state) - low
        assert gs["pending"] == sum(1 for s in self.state if s[0] == LEASED)
        assert gs["unfinished"] == sum(1 for s in self.state if s[0] not in (ACKED, DEAD))
        assert gs["delivered"] == self.delivered
        assert gs["redelivered"] == self.redelivered
        assert gs["nacked"] == self.nacked
        assert gs["dead_lettered"] == len(self.dead)
        assert gs["expired"] == 0
        assert gs["consumers"] == 2
        # stats()["acked"] vs dead letters is checked in test_log.py::test_stats_numbers

    @invariant()
    def finished_exactly_once(self):
        for off, s in enumerate(self.state):
            assert self.acks[off] == (1 if s[0] == ACKED else 0)
            assert (off in self.dead) == (s[0] == DEAD)

    # ------------------------------------------------------------------ end
    def teardown(self):
        try:
            # drain: every record ends acked or dead-lettered exactly once
            for h in self.held:
                for m in h:
                    assert m.ack()
                    self.state[m.offset] = [ACKED, m.deliveries, None]
                    self.acks[m.offset] += 1
            self.held = [[], []]
            for _ in range(4 * len(self.state) + 10):
                fresh, retry = self.available()
                if not fresh and not retry:
                    break
                limit = {o for o in retry if self.state[o][1] >= MAXD}
                ms = self.consumers[0].get_many(64, timeout=0.5)
                self.record_dead_letters(limit)
                for m in ms:
                    s = self.state[m.offset]
                    assert s[0] in (FRESH, RETRY) and m.deliveries == s[1] + 1
                    assert m.ack()
                    self.state[m.offset] = [ACKED, m.deliveries, None]
                    self.acks[m.offset] += 1
            assert all(s[0] in (ACKED, DEAD) for s in self.state), self.state
            for off, s in enumerate(self.state):
                assert self.acks[off] + (off in self.dead) == 1
            assert self.read_dlq() == []
            gs = self.log.stats()["groups"]["g"]
            assert gs["low"] == len(self.state) and gs["unfinished"] == 0 and gs["pending"] == 0
        finally:
            for c in self.consumers:
                c.close()
            if self.dlq_c is not None:
                self.dlq_c.close()
                self.dlq.close()
            for n in (self.name, self.name + ".dlq"):
                try:
                    fastq.unlink(n)
                except FileNotFoundError:
                    pass
            self.log.close()


GroupMachine.TestCase.settings = settings(max_examples=300 * SCALE, stateful_step_count=60, deadline=None,
                                          suppress_health_check=list(HealthCheck))
TestGroupMachine = GroupMachine.TestCase
