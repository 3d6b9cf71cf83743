"""Model-based test: a raw-bytes fastq.Queue against a deque over random operation sequences."""
import collections
import queue
import os
import uuid

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import fastq

# FASTQ_PROPERTY_SCALE=10 runs 10x the examples (on demand; CI runs 1x)
SCALE = max(1, int(os.environ.get("FASTQ_PROPERTY_SCALE", "1")))

from conftest import _remove

HDR_MIN = 8  # lower bound of a record's header bytes (used only for the Full plausibility check)


def frame_lb(n: int) -> int:
    return HDR_MIN + ((n + 7) // 8) * 8


payloads = st.one_of(
    st.binary(max_size=64),
    st.integers(0, 20000).map(lambda n: bytes([n % 251]) * n),
)


class QueueModel(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.q = None
        self.name = None
        self.model = collections.deque()

    @initialize(capacity=st.sampled_from([4096, 8192, 16384, 65536]),
                maxsize=st.sampled_from([0, 0, 1, 3, 10]),
                named=st.booleans())
    def create(self, capacity, maxsize, named):
        self.maxsize = maxsize
        if named:
            self.name = "t-" + uuid.uuid4().hex
        self.q = fastq.Queue(maxsize, capacity=capacity, name=self.name, serializer=None)
        self.cap = self.q.capacity
        self.maxp = self.q.max_message_size
        self.limit = self.q._limit_records
        assert self.maxp == self.cap // 4 - 32

    def teardown(self):
        if self.q is not None:
            self.q.close()
        if self.name:
            _remove(self.name)

    # ---- helpers
    def _check_full(self, data, rest=()):
        """put raised Full: plausible only if some bound is (nearly) reached.

        For put_many, ``rest`` are the items not yet committed: the failed claim
        was for a batch of some of them (put_many claims whole batches)."""
        rest = list(rest) or [data]
        assert self.model, "Full on an empty queue"
        if self.maxsize and len(self.model) + len(rest) > self.maxsize:
            return
        if len(self.model) + len(rest) > self.limit:
            return
        used = sum(frame_lb(len(x)) for x in self.model) + sum(frame_lb(len(x)) for x in rest)
        assert used > self.cap // 2, (
            f"Full with {len(self.model)} records using ~{used} of {self.cap} bytes (maxsize={self.maxsize})")

    def _put(self, fn, data):
        if len(data) > self.maxp:
            with pytest.raises(ValueError):
                fn(data)
            return
        try:
            fn(data)
        except queue.Full:
            self._check_full(data)
        else:
            assert not (self.maxsize and len(self.model) >= self.maxsize), "put beyond maxsize"
            self.model.append(bytes(data))

    # ---- rules
    @rule(data=payloads)
    def put_nowait(self, data):
        self._put(self.q.put_nowait, data)

    @rule(data=payloads, kind=st.sampled_from([bytes, bytearray, memoryview]))
    def put_timeout(self, data, kind):
        self._put(lambda d: self.q.put(kind(d), timeout=0.005), data)

    @rule(items=st.lists(payloads, max_size=12), block=st.booleans())
    def put_many(self, items, block):
        if any(len(x) > self.maxp for x in items):
            with pytest.raises(ValueError):
                self.q.put_many(items, block=False)
            return
        before = self.q.qsize()
        assert before == len(self.model)
        try:
            if block:
                self.q.put_many(items, timeout=0.005)
            else:
                self.q.put_many(items, block=False)
        except queue.Full:
            k = self.q.qsize() - before
            assert 0 <= k < len(items)
            self.model.extend(items[:k])
            self._check_full(items[k], items[k:])
        else:
            self.model.extend(items)
        if self.maxsize:
            assert len(self.model) <= self.maxsize

    @rule()
    def get_nowait(self):
        if not self.model:
            with pytest.raises(queue.Empty):
                self.q.get_nowait()
        else:
            assert self.q.get_nowait() == self.model.popleft()

    @rule()
    def get_timeout(self):
        if not self.model:
            with pytest.raises(queue.Empty):
                self.q.get(timeout=0.003)
        else:
            assert self.q.get(timeout=1) == self.model.popleft()

    @rule(n=st.integers(1, 20), block=st.booleans())
    def get_many(self, n, block):
        if not self.model:
            with pytest.raises(queue.Empty):
                if block:
                    self.q.get_many(n, timeout=0.003)
                else:
                    self.q.get_many(n, block=False)
            return
        got = self.q.get_many(n, timeout=1) if block else self.q.get_many(n, block=False)
        assert 1 <= len(got) <= min(n, len(self.model))
        for g in got:
            assert g == self.model.popleft()

    @rule()
    def counts(self):
        n = len(self.model)
        assert self.q.qsize() == n
        assert self.q.empty() == (n == 0)
        assert self.q.full() == (n >= self.limit)

    @precondition(lambda self: self.name is not None)
    @rule()
    def close_and_reopen(self):
        self.q.close()
        self.q = fastq.Queue.open(self.name, serializer=None)
        assert self.q.capacity == self.cap
        assert self.q.maxsize == self.maxsize

    @invariant()
    def qsize_matches(self):
        if self.q is not None:
            assert self.q.qsize() == len(self.model)


QueueModel.TestCase.settings = settings(max_examples=150 * SCALE, stateful_step_count=40, deadline=None,
                                        suppress_health_check=[HealthCheck.too_slow])
TestQueueModel = QueueModel.TestCase
