# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, embedsignature=True
"""fastq._core — owns native queue handles, releases the GIL around waits and
turns C status codes into Python exceptions.  Nothing else: the public API is
in fastq.queue (Queue, JoinableQueue) and fastq.__init__.

Rules this layer keeps (see docs/protocol.md):
- fq_claim -> copy -> fq_commit runs with the GIL held and cannot raise in
  between, so threads sharing one handle never interleave claims (one intent
  slot per member) and a claim is never abandoned by a Python exception.
- Waits run without the GIL in slices of at most 100 ms; between slices the
  loop checks signals (Ctrl-C -> KeyboardInterrupt), close(), the deadline,
  and runs the rate-limited liveness scan (fq_maintain).
- A handle is never unmapped while a thread waits on it: close() defers the
  unmap to the last waiter leaving.
"""
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int64_t
from libc.string cimport memcpy
from libc.stdlib cimport malloc, free
from posix.time cimport nanosleep, timespec
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING, PyBytes_GET_SIZE, PyBytes_CheckExact
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyObject_CheckBuffer, PyBUF_SIMPLE, PyBUF_WRITABLE, PyBUF_ANY_CONTIGUOUS
from cpython.exc cimport PyErr_CheckSignals
from cpython.list cimport PyList_New, PyList_SET_ITEM
from cpython.ref cimport Py_INCREF

from . cimport _capi as N

import errno as _errno

from . import _meta
import multiprocessing.process as _mp_process
import os as _os
import queue as _queue

Empty = _queue.Empty
Full = _queue.Full


class FastqError(Exception):
    """Base class of fastq's own errors."""


class CorruptQueueError(FastqError):
    """A queue file failed validation (checksum, bounds, impossible state)."""


class CorruptRecordError(CorruptQueueError):
    """A record of a durable log failed its checksum or header check.  ``offset``
    is the first bad record (None when not known)."""

    def __init__(self, msg, offset=None):
        super().__init__(msg)
        self.offset = offset


class IncompatibleQueueError(FastqError):
    """The file is not a fastq queue of a layout this build can read."""


class DedupTableFullError(FastqError):
    """An append with a dedup key found no free entry for the key in the
    log's dedup table (every entry of its bucket holds an unexpired key).
    Nothing was appended: create the log with more ``dedup_slots`` or a
    shorter ``dedup_window``."""


class _DedupInFlight(Full):
    """(internal) An append with the same dedup key is in flight elsewhere."""


cdef int64_t SLICE_NS = 100_000_000      # longest uninterrupted park
cdef uint32_t SPIN_NS = 50_000           # busy-wait before parking: ping-pong latency vs CPU burnt
cdef uint32_t KIND_PRODUCER_CONSUMER = 3


cdef str _detail(int rc):
    cdef const char *d = N.fq_last_error()
    s = d.decode('utf-8', 'replace') if d != NULL else ''
    return s or N.fq_strerror(rc).decode()


cdef int _raise(int rc, str what=None) except -1:
    msg = _detail(rc)
    if what:
        msg = f"{what}: {msg}"
    if rc == N.FQ_ERR_INVAL or rc == N.FQ_ERR_TOO_BIG or rc == N.FQ_ERR_SIZE or rc == N.FQ_ERR_CONFLICT \
            or rc == N.FQ_ERR_RANGE:
        raise ValueError(msg)
    if rc == N.FQ_ERR_EXISTS:
        raise FileExistsError(_errno.EEXIST, msg)
    if rc == N.FQ_ERR_NOENT:
        raise FileNotFoundError(_errno.ENOENT, msg)
    if rc == N.FQ_ERR_PERM:
        raise PermissionError(_errno.EACCES, msg)
    if rc == N.FQ_ERR_NOMEM:
        raise OSError(_errno.ENOSPC, msg)
    if rc == N.FQ_ERR_CORRUPT:
        raise CorruptQueueError(msg)
    if rc == N.FQ_ERR_DATA:
        raise CorruptRecordError(msg)
    if rc == N.FQ_ERR_FORMAT:
        raise IncompatibleQueueError(msg)
    if rc == N.FQ_ERR_MEMBERS:
        raise FastqError("the queue's member table is full: " + msg)
    if rc == N.FQ_ERR_DEDUP_FULL:
        raise DedupTableFullError(msg)
    if rc == N.FQ_ERR_GROUPS or rc == N.FQ_ERR_BUSY:
        raise FastqError(msg)
    if rc == N.FQ_TIMEOUT:
        raise TimeoutError(msg)
    if rc == N.FQ_ERR_SYS:
        raise OSError(msg)
    raise FastqError(msg)


def crash_arm(spec):
    """Arm a named crash point in this process (tests): ``"prod.after_cas[:n]"``."""
    b = spec.encode() if spec else b""
    N.fq_crash_arm(b)


cdef bytes _as_bytes(object b, str what):
    if PyBytes_CheckExact(b):
        return <bytes>b
    if isinstance(b, str):
        raise TypeError(f"{what} must be bytes-like, not str (encode it first)")
    if not PyObject_CheckBuffer(b):
        raise TypeError(f"{what} must be bytes-like, not {type(b).__name__!r}")
    return bytes(memoryview(b).cast('B'))


cdef tuple _prefix(N.fq_msg *m):
    """(key, raw headers) of a record: its bare key, or the parts of its meta
    region (fastq._meta); (None, None) without a prefix."""
    if not (m.flags & (N.FQ_MSG_KEY | N.FQ_MSG_META)):
        return None, None
    p = PyBytes_FromStringAndSize(<const char *>m.data, m.key_len)
    if not (m.flags & N.FQ_MSG_META):
        return p, None
    try:
        return _meta.split(p, bool(m.flags & N.FQ_MSG_KEY), bool(m.flags & N.FQ_MSG_DELAYED))
    except ValueError as e:
        raise CorruptRecordError(f"record {m.seq}: {e}", m.seq) from None


cdef bytes _encode_name(object name):
    if not isinstance(name, str):
        raise TypeError(f"queue name must be a str, not {type(name).__name__}")
    if '\x00' in name:
        raise ValueError(f"invalid queue name {name!r}: NUL character")
    return name.encode()


def _advance_clock(double seconds):
    """Test hook: make fastq's clock in this process jump ahead (lease
    deadlines, nack delays).  Returns the total skew in seconds."""
    N.fq_clock_skew_ns += <int64_t>(seconds * 1e9)
    return N.fq_clock_skew_ns / 1e9


def crashpoint(str name):
    """A named crash point in Python code (tests arm it with crash_arm)."""
    b = name.encode()
    N.FQ_CRASHPOINT(b)


def unlink(name):
    """Remove the named queue.  Processes that have it open keep using it."""
    rc = N.fq_unlink(_encode_name(name))
    if rc != N.FQ_OK:
        _raise(rc)


def name_valid(name):
    if not isinstance(name, str) or '\x00' in name:
        return False
    return bool(N.fq_name_valid(name.encode()))


cdef inline int64_t _deadline(object timeout) except? -2:
    if timeout is None:
        return -1
    t = float(timeout)
    if t != t:
        raise ValueError("'timeout' must be a number, not NaN")
    if t < 0:
        raise ValueError("'timeout' must be a non-negative number")
    return N.fq_now_ns() + <int64_t>(t * 1e9)


cdef class Ring:
    """A shared-memory ring with one implicit consumer group (group 0).

    Not constructed directly: use fastq.Queue / fastq.JoinableQueue.
    """
    cdef N.fq_queue q
    cdef bint _mapped
    cdef bint _closed
    cdef int _inflight
    cdef N.fq_msg *_msgs
    cdef uint32_t _msgs_cap
    cdef public object _dumps
    cdef public object _loads
    cdef readonly object name
    cdef public uint32_t _kind     # FQ_M_KIND_* bits this handle registers with
    cdef uint32_t _gets            # group gets since the last liveness scan
    cdef object __weakref__        # fork hook registry (fastq.queue._live)
    cdef public uint32_t _g_deadletters  # messages of the last _g_get over max_deliveries
    cdef public object _member_name      # label of this handle's member slot (default: the process's name)

    def __cinit__(self, *args, **kwargs):
        self._mapped = False
        self._closed = False
        self._inflight = 0
        self._msgs = NULL
        self._msgs_cap = 0
        self._dumps = None
        self._loads = None
        self.name = None
        self._kind = KIND_PRODUCER_CONSUMER

    def __dealloc__(self):
        if self._mapped:
            N.fq_close(&self.q)
            self._mapped = False
        free(self._msgs)

    # ---- lifecycle ------------------------------------------------------
    def _create(self, name, uint64_t capacity, uint64_t maxsize, uint32_t max_members=0,
                uint32_t desc_count=0, uint32_t max_groups=1, uint32_t window=0, bint log=False,
                uint32_t dedup_slots=0, uint32_t dedup_window_ms=0):
        cdef N.fq_params p
        p.dedup_slots = dedup_slots
        p.dedup_window_ms = dedup_window_ms
        p.capacity = capacity
        p.maxsize = maxsize
        p.desc_count = desc_count
        p.window = window
        p.max_members = max_members
        p.max_groups = max_groups
        p.flags = N.FQ_P_NO_QUEUE_GROUP if log else 0
        cdef bytes bname = _encode_name(name) if name is not None else None
        cdef const char *cname = NULL
        if bname is not None:
            cname = bname
        rc = N.fq_create(&self.q, cname, &p)
        if rc != N.FQ_OK:
            _raise(rc, f"cannot create queue {name!r}" if name else "cannot create queue")
        self._mapped = True
        self.name = name
        self._join()

    def _open(self, name, double wait=1.0, bint join=True):
        """Attach to the named queue; join=False: an observer (monitoring)
        that takes a member slot only when it first produces or consumes."""
        rc = N.fq_open(&self.q, _encode_name(name), <int64_t>(wait * 1e9))
        if rc != N.FQ_OK:
            _raise(rc, f"cannot open queue {name!r}")
        self._mapped = True
        self.name = name
        if join:
            self._join()

    def _open_fd(self, int fd):
        """Attach to an inherited anonymous queue; takes ownership of fd."""
        rc = N.fq_open_fd(&self.q, fd)
        if rc != N.FQ_OK:
            _os.close(fd)
            _raise(rc, "cannot attach to inherited queue")
        self._mapped = True
        self._join()

    def _create_dir(self, path, uint64_t segment_size, uint32_t max_groups, uint32_t window, uint32_t fsync,
                    uint32_t max_members=0, uint32_t desc_count=0, uint32_t dedup_slots=0,
                    uint32_t dedup_window_ms=0):
        """Create the durable log directory ``path`` (segment store)."""
        cdef N.fq_params p
        p.dedup_slots = dedup_slots
        p.dedup_window_ms = dedup_window_ms
        p.capacity = segment_size
        p.maxsize = 0
        p.desc_count = desc_count
        p.window = window
        p.max_members = max_members
        p.max_groups = max_groups
        p.flags = N.FQ_P_NO_QUEUE_GROUP
        bpath = _os.fsencode(path)
        if b"\x00" in bpath:
            raise ValueError("log path contains a NUL character")
        rc = N.fq_create_dir(&self.q, bpath, &p, fsync)
        if rc != N.FQ_OK:
            _raise(rc, f"cannot create log {path!r}")
        self._mapped = True
        self.name = path
        self._join()

    def _open_dir(self, path, double wait=1.0, bint recover=False, bint skip_corrupt=False, bint join=True):
        """Open the durable log ``path``; returns the recovery report (a dict).
        join=False: an observer (monitoring) that takes a member slot only
        when it first produces, consumes or administers."""
        cdef N.fq_recovery_report r
        bpath = _os.fsencode(path)
        if b"\x00" in bpath:
            raise ValueError("log path contains a NUL character")
        rc = N.fq_open_dir(&self.q, bpath, <int64_t>(wait * 1e9),
                           N.FQ_RECOVER_FORCE if recover else N.FQ_RECOVER_AUTO,
                           N.FQ_CORRUPT_SKIP if skip_corrupt else N.FQ_CORRUPT_REFUSE, &r)
        report = {"ran": bool(r.ran), "reason": {0: None, 1: "new boot", 2: "requested", 3: "no checkpoint",
                                                  4: "inconsistent state"}.get(r.reason, "unknown"),
                  "checkpoint_offset": r.ckpt_seq, "tail_offset": r.tail_seq, "records_verified": r.scanned,
                  "truncated_bytes": r.truncated_bytes, "corrupt": bool(r.corrupt),
                  "corrupt_offset": r.corrupt_seq if r.corrupt else None, "skipped": r.skipped,
                  "leases_reset": r.leases_reset, "groups": r.groups, "segments_removed": r.segments_removed,
                  "index_entries_rebuilt": r.index_rebuilt}
        if rc == N.FQ_ERR_DATA:
            raise CorruptRecordError(f"cannot open log {path!r}: {_detail(rc)}", r.corrupt_seq)
        if rc != N.FQ_OK:
            _raise(rc, f"cannot open log {path!r}")
        self._mapped = True
        self.name = path
        if join:
            self._join()
        return report

    def _set_fsync(self, uint32_t mode):
        self._check_mapped()
        self.q.fsync_mode = mode

    @property
    def _durable(self):
        self._check_mapped()
        return bool(self.q.durable)

    def _flush(self, timeout=None):
        """Make every record appended so far durable (fdatasync); False on timeout."""
        cdef int64_t deadline
        cdef uint64_t upto
        cdef int rc
        self._ensure()
        deadline = _deadline(timeout)
        if deadline < 0:
            deadline = <int64_t>0x7FFFFFFFFFFFFFFF
        upto = N.fq_tail_seq(&self.q)
        self._inflight += 1   # close() defers the unmap while we flush without the GIL
        with nogil:
            rc = N.fq_flush(&self.q, upto, deadline)
        self._inflight -= 1
        if self._closed:
            self._release_if_idle()
        if rc == N.FQ_TIMEOUT:
            return False
        if rc != N.FQ_OK:
            _raise(rc, "flush")
        return True

    cdef int _sync_upto(self, uint64_t upto) except -1:
        cdef int rc
        self._inflight += 1
        with nogil:
            rc = N.fq_flush(&self.q, upto, <int64_t>0x7FFFFFFFFFFFFFFF)
        self._inflight -= 1
        if self._closed:
            self._release_if_idle()
        if rc != N.FQ_OK:
            _raise(rc, "fsync")
        return 0

    def _checkpoint(self):
        self._ensure()
        cdef int rc
        self._inflight += 1
        with nogil:
            rc = N.fq_checkpoint(&self.q)
        self._inflight -= 1
        if self._closed:
            self._release_if_idle()
        if rc != N.FQ_OK:
            _raise(rc, "checkpoint")

    def _retain(self, uint64_t max_bytes, double max_age, bint consumed):
        """Delete old segments; returns how many were deleted."""
        self._ensure()
        if not max_age >= 0:
            raise ValueError("max_age must be >= 0 seconds")
        cdef int64_t age_ns = <int64_t>(max_age * 1e9) if max_age < 9e9 else 0  # beyond ~285 years: no limit
        rc = N.fq_retain(&self.q, max_bytes, age_ns, consumed)
        if rc < 0:
            _raise(rc, "retention")
        return rc

    def _first_seq(self):
        self._check_mapped()
        return N.fq_first_seq(&self.q)

    def _durable_seq(self):
        self._check_mapped()
        return N.fq_durable_seq(&self.q)

    def _frontier(self):
        self._check_mapped()
        return N.fq_frontier(&self.q)

    def _seek(self, seq=None, ts=None):
        """Cursor (seq, pos) of the first record at or after offset seq / time ts (seconds)."""
        cdef N.fq_cursor c
        self._check_mapped()
        if ts is not None:
            ts = min(max(float(ts), -9.2e9), 9.2e9)
            rc = N.fq_seek_time(&self.q, <int64_t>(ts * 1e9), &c)
        else:
            rc = N.fq_seek_seq(&self.q, seq, &c)
        if rc == N.FQ_ERR_DATA:
            raise CorruptRecordError(_detail(rc))
        if rc != N.FQ_OK:
            _raise(rc, "seek")
        return c.seq, c.pos

    def _read_batch(self, uint64_t seq, uint64_t pos, uint64_t end, uint32_t maxn):
        """Up to maxn records from cursor (seq, pos) below offset end:
        ([(offset, timestamp_ns, key, data)], seq, pos)."""
        cdef N.fq_cursor c
        cdef N.fq_msg m
        cdef list out = []
        cdef uint32_t k
        self._check_mapped()
        c.seq = seq
        c.pos = pos
        while <uint32_t>len(out) < maxn and c.seq < end:
            rc = N.fq_read_next(&self.q, &c, &m)
            if rc == N.FQ_EMPTY:
                break
            if rc != N.FQ_OK and out:
                break  # hand over the good records first; the next call reports the error
            if rc == N.FQ_ERR_DATA:
                raise CorruptRecordError(_detail(rc), c.seq)
            if rc != N.FQ_OK:
                _raise(rc, "read")
            if m.seq >= end:
                break
            k = m.key_len
            key, hraw = _prefix(&m)
            out.append((m.seq, m.ts_ns, key, PyBytes_FromStringAndSize(<const char *>m.data + k, m.len - k), hraw))
        return out, c.seq, c.pos

    def _peek_batch(self, uint64_t seq, uint32_t maxn):
        """Up to maxn records of a shared-memory ring from offset seq on,
        read without a group (nothing is leased, nobody waits for us):
        ([(offset, timestamp_ns, key, data)], next_seq, overwritten), where
        overwritten counts records that were gone (below the ring's floor)
        by the time we got to them."""
        cdef N.fq_msg m
        cdef uint64_t floor = 0, overwritten = 0
        cdef uint32_t cap, k
        cdef uint8_t *buf
        cdef list out = []
        cdef int rc
        self._check_mapped()
        if self.q.durable:
            raise ValueError("_peek_batch reads shared-memory rings; use _read_batch for durable logs")
        cap = self.q.max_frame
        buf = <uint8_t *>malloc(cap)
        if buf == NULL:
            raise MemoryError()
        try:
            while <uint32_t>len(out) < maxn:
                rc = N.fq_peek(&self.q, seq, buf, cap, &m, &floor)
                if rc == N.FQ_OK:
                    k = m.key_len
                    key, hraw = _prefix(&m)
                    out.append((m.seq, m.ts_ns, key, PyBytes_FromStringAndSize(<const char *>m.data + k, m.len - k),
                                hraw))
                    seq += 1
                elif rc == N.FQ_ERR_LOST:
                    seq += 1  # a dead producer's gap: no record
                elif rc == N.FQ_ERR_RANGE:
                    if <int64_t>(floor - seq) <= 0:
                        floor = seq + 1  # overwritten while copied, floor not yet visible: step over it
                    overwritten += floor - seq
                    seq = floor
                elif rc == N.FQ_EMPTY:
                    break
                else:
                    _raise(rc, f"reading record {seq}")
        finally:
            free(buf)
        return out, seq, overwritten

    def _verify(self):
        """CRC-check every retained record: (records, None) or raises CorruptRecordError."""
        cdef uint64_t recs = 0, bad = 0
        self._check_mapped()
        rc = N.fq_verify(&self.q, &recs, &bad)
        if rc == N.FQ_ERR_DATA:
            raise CorruptRecordError(_detail(rc), bad)
        if rc != N.FQ_OK:
            _raise(rc, "verify")
        return recs

    def _fileno(self):
        self._check_mapped()
        return self.q.fd

    def _after_fork(self):
        """In a forked child: drop the parent's member identity (we join anew)."""
        if self._mapped:
            N.fq_after_fork_child(&self.q)
        self._inflight = 0

    cdef int _join(self) except -1:
        rc = N.fq_join(&self.q, self._kind)
        if rc != N.FQ_OK:
            _raise(rc, "cannot register with the queue")
        label = self._member_name
        if label is None:
            label = _mp_process.current_process().name
        N.fq_member_set_name(&self.q, str(label).encode("utf-8", "replace")[:31])
        N.fq_maintain(&self.q, 1)
        return 0

    cdef int _check_mapped(self) except -1:
        if self._closed or not self._mapped:
            raise ValueError(f"Queue {self!r} is closed")
        return 0

    cdef inline int _ensure(self) except -1:
        if self._closed or not self._mapped:
            raise ValueError(f"Queue {self!r} is closed")
        if self.q.member < 0:
            self._join()
        return 0

    def close(self):
        """Close this handle (this process).  Later calls raise ValueError."""
        if self._closed:
            return
        self._closed = True
        if self._inflight and self._mapped:
            N.fq_wake_all(&self.q)  # threads parked on this handle return now, not at their slice's end
        self._release_if_idle()

    cdef void _release_if_idle(self):
        if self._closed and self._inflight == 0 and self._mapped:
            N.fq_close(&self.q)
            self._mapped = False

    @property
    def closed(self):
        return self._closed

    # ---- waiting --------------------------------------------------------
    cdef int _wait(self, int kind, int64_t deadline, uint64_t a, uint64_t b, bint first, uint32_t g=0) except -1:
        cdef int64_t end = N.fq_now_ns() + SLICE_NS
        cdef uint32_t spin = SPIN_NS if first else 0
        if deadline >= 0 and deadline < end:
            end = deadline
        self._inflight += 1
        with nogil:
            if kind == 0:
                N.fq_wait_data(&self.q, g, end, spin)
            elif kind == 1:
                N.fq_wait_space(&self.q, a, b, end)
            else:
                N.fq_wait_done(&self.q, end)
        self._inflight -= 1
        if self._closed:
            self._release_if_idle()
            raise ValueError(f"Queue {self!r} is closed")
        PyErr_CheckSignals()
        if self.q.member < 0:   # forked meanwhile (another thread's fork)
            self._join()
        N.fq_maintain(&self.q, 0)
        return 0

    def _park(self, int kind, uint32_t g=0, double timeout=1.0, uint64_t records=1, uint64_t nbytes=0):
        """Block the calling thread, without the GIL, until group g may have
        a record to take (kind 0) or a claim of (records, nbytes) may fit
        (kind 1), or ``timeout`` seconds pass, or ``_wake_all()``.  Returns
        True if the condition held when it returned.  fastq.aio's parked
        waiter runs it in its own thread, never in an event loop."""
        cdef int64_t deadline
        cdef int rc
        self._ensure()
        deadline = N.fq_now_ns() + <int64_t>(max(timeout, 0.0) * 1e9)
        self._inflight += 1
        with nogil:
            if kind == 0:
                rc = N.fq_wait_data(&self.q, g, deadline, 0)
            else:
                rc = N.fq_wait_space(&self.q, records, nbytes, deadline)
        self._inflight -= 1
        if self._closed:
            self._release_if_idle()
            raise ValueError(f"Queue {self!r} is closed")
        N.fq_maintain(&self.q, 0)
        return rc == N.FQ_OK

    def _wake_all(self):
        """Wake every waiter of this queue (each re-checks its condition)."""
        if self._mapped:
            N.fq_wake_all(&self.q)

    # ---- produce --------------------------------------------------------
    cdef int _claim(self, const uint32_t *lens, uint32_t n, uint64_t nbytes, uint64_t *seq, bint block,
                    object timeout) except -1:
        """Claim n records (lens is the caller's own array: it must not be
        shared with other threads, since the wait below releases the GIL)."""
        cdef int rc = N.fq_claim(&self.q, lens, n, seq)
        cdef int64_t deadline
        cdef bint first = True
        if rc == N.FQ_OK:
            return 0
        if rc == N.FQ_FULL:
            if not block:
                raise Full
            deadline = _deadline(timeout)
            while True:
                self._wait(1, deadline, n, nbytes, first)
                first = False
                rc = N.fq_claim(&self.q, lens, n, seq)
                if rc == N.FQ_OK:
                    return 0
                if rc != N.FQ_FULL:
                    break
                if deadline >= 0 and N.fq_now_ns() >= deadline:
                    raise Full
        _raise(rc)

    cdef int _too_big(self, Py_ssize_t n) except -1:
        raise ValueError(
            f"message of {n} bytes is larger than the largest record this queue can hold "
            f"({N.fq_max_payload(&self.q)} bytes = capacity/4 - 32; create the queue with a larger capacity)")

    def put(self, obj, block=True, timeout=None):
        """Put obj into the queue (see multiprocessing.Queue.put)."""
        cdef uint64_t seq
        if self._closed or self.q.member < 0:
            self._ensure()
        self._put_one(obj if self._dumps is None else self._dumps(obj), block, timeout, &seq)

    def _append(self, data, block=True, timeout=None, key=None, int kflags=1):
        """Append one raw record with an optional prefix ``key``: the key
        (kflags 1), or a meta region (fastq._meta flags: 2 meta, 1 has a
        key, 4 delayed); returns its offset (seq)."""
        cdef uint64_t seq
        if self._closed or self.q.member < 0:
            self._ensure()
        if key is None:
            self._put_one(data, block, timeout, &seq)
        else:
            self._put_keyed(key, data, block, timeout, &seq, kflags)
        if self.q.fsync_mode == N.FQ_FSYNC_ALWAYS and self.q.durable:
            self._sync_upto(seq + 1)
        return seq

    def _append_dedup(self, data, dedup_key, double window=0.0, block=True, timeout=None, key=None,
                      int kflags=1):
        """Append one raw record (prefix ``key`` with ``kflags`` as _append)
        unless a record with ``dedup_key`` (bytes) was appended within its
        window (``window`` seconds, 0 = the log's); returns the offset of the
        new record or of the original.  Waits while an append of the same key
        is in flight elsewhere (block=False or past timeout: _DedupInFlight,
        a queue.Full) and while the log is full (queue.Full)."""
        cdef bytes dk = _as_bytes(dedup_key, "dedup_key")
        cdef bytes k = b"" if key is None else _as_bytes(key, "key")
        cdef bytes d = _as_bytes(data, "data")
        cdef Py_ssize_t dkl = PyBytes_GET_SIZE(dk)
        cdef uint64_t seq = 0, orig = 0
        cdef uint32_t slot = 0, len32
        cdef int rc
        cdef int64_t deadline, win = <int64_t>(window * 1e9) if window > 0 else 0
        cdef int64_t pause = 20_000
        cdef timespec ts
        cdef bint first = True
        if self._closed or self.q.member < 0:
            self._ensure()
        if dkl > 65536:
            raise ValueError(f"dedup_key of {dkl} bytes is longer than 65536 bytes")
        len32 = self._keyed_len(k, d)
        deadline = _deadline(timeout) if block else 0
        while True:
            # X1..X3 of fq_dedup.c, begin -> claim -> bind -> copy -> commit ->
            # end with the GIL held and nothing that can raise in between: one
            # dedup journal per member, never left CLAIMING by an exception
            rc = N.fq_dedup_begin(&self.q, PyBytes_AS_STRING(dk), <uint32_t>dkl, win, &orig, &slot)
            if rc == N.FQ_DUPLICATE:
                return orig
            if rc == N.FQ_STALLED:
                if not block or (deadline >= 0 and N.fq_now_ns() >= deadline):
                    raise _DedupInFlight("an append with this dedup_key is in flight in another process")
                ts.tv_sec = 0
                ts.tv_nsec = pause
                self._inflight += 1   # close() meanwhile defers the unmap to us
                with nogil:
                    nanosleep(&ts, NULL)
                self._inflight -= 1
                if self._closed:
                    self._release_if_idle()
                    raise ValueError(f"Queue {self!r} is closed")
                pause = min(pause * 2, 2_000_000)
                PyErr_CheckSignals()
                continue
            if rc != N.FQ_OK:
                _raise(rc)
            rc = N.fq_claim(&self.q, &len32, 1, &seq)
            if rc == N.FQ_OK:
                N.fq_dedup_bind(&self.q, slot, seq)
                self._write_keyed(seq, k, d, key is not None, kflags)
                N.fq_dedup_end(&self.q, slot, 1)
                break
            N.fq_dedup_end(&self.q, slot, 0)   # nothing claimed: the key is free again
            if rc != N.FQ_FULL:
                _raise(rc)
            if not block or (deadline >= 0 and N.fq_now_ns() >= deadline):
                raise Full
            self._wait(1, deadline, 1, N.fq_frame_bytes(len32), first)
            first = False
        if self.q.fsync_mode == N.FQ_FSYNC_ALWAYS and self.q.durable:
            self._sync_upto(seq + 1)
        return seq

    def _dedup_stats(self):
        """The dedup table's counts (lock-free scan), or None without a table."""
        cdef N.fq_dedup_stats st
        self._check_mapped()
        N.fq_dedup_get_stats(&self.q, &st)
        if st.slots == 0:
            return None
        return {"slots": st.slots, "keys": st.set, "in_flight": st.claiming, "expired": st.expired,
                "duplicates": st.hits, "window": st.window_ms / 1000.0}

    cdef uint32_t _keyed_len(self, bytes k, bytes d) except? 0:
        """Payload length of prefix k + data d, checked before anything is claimed."""
        cdef Py_ssize_t kl = PyBytes_GET_SIZE(k), dl = PyBytes_GET_SIZE(d)
        if kl > 4096:
            raise ValueError(f"key of {kl} bytes is longer than 4096 bytes")
        if kl + dl > N.fq_max_payload(&self.q):
            self._too_big(kl + dl)
        return <uint32_t>(kl + dl)

    cdef void _write_keyed(self, uint64_t seq, bytes k, bytes d, bint prefixed, int kflags) noexcept:
        """Copy prefix k and data d into claimed record seq and commit it
        (claim -> copy -> commit: GIL held, nothing can raise)."""
        cdef Py_ssize_t kl = PyBytes_GET_SIZE(k)
        cdef uint8_t *dst = N.fq_payload(&self.q, seq)
        memcpy(dst, PyBytes_AS_STRING(k), kl)
        memcpy(dst + kl, PyBytes_AS_STRING(d), PyBytes_GET_SIZE(d))
        if prefixed:
            N.fq_set_prefix(&self.q, seq, <uint32_t>kl, <unsigned>kflags)
        N.fq_commit(&self.q, seq, 1)

    cdef int _put_keyed(self, object key, object data, object block, object timeout, uint64_t *seq,
                        int kflags=1) except -1:
        cdef bytes k = _as_bytes(key, "key")
        cdef bytes d = _as_bytes(data, "data")
        cdef uint32_t len32 = self._keyed_len(k, d)
        self._claim(&len32, 1, N.fq_frame_bytes(len32), seq, block, timeout)
        self._write_keyed(seq[0], k, d, True, kflags)
        return 0

    cdef int _put_one(self, object data, object block, object timeout, uint64_t *seq) except -1:
        cdef Py_buffer view
        cdef const char *ptr
        cdef Py_ssize_t ln
        cdef uint32_t len32
        cdef uint8_t *dst
        cdef bint have_view = False
        if PyBytes_CheckExact(data):
            ptr = PyBytes_AS_STRING(data)
            ln = PyBytes_GET_SIZE(data)
        else:
            PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
            have_view = True
            ptr = <const char *>view.buf
            ln = view.len
        try:
            if ln > N.fq_max_payload(&self.q):
                self._too_big(ln)
            len32 = <uint32_t>ln
            self._claim(&len32, 1, N.fq_frame_bytes(len32), seq, block, timeout)
            # claim -> copy -> commit: GIL held, nothing can raise
            dst = N.fq_payload(&self.q, seq[0])
            if ln >= 64:
                memcpy(dst, ptr, ln >> 1)
                N.FQ_CRASHPOINT("prod.mid_payload")
                memcpy(dst + (ln >> 1), ptr + (ln >> 1), ln - (ln >> 1))
            else:
                memcpy(dst, ptr, ln)
            N.fq_commit(&self.q, seq[0], 1)
        finally:
            if have_view:
                PyBuffer_Release(&view)
        return 0

    def put_nowait(self, obj):
        return self.put(obj, False)

    def put_many(self, items, block=True, timeout=None):
        """Put every item of ``items`` (an iterable, or a numpy array: one record per row).

        Records are claimed in as few batches as the ring allows (one CAS per
        batch).  Too-large items raise ValueError before anything is put.  On
        ``queue.Full`` (timeout), the batches already committed stay in the queue.
        """
        if self._closed or self.q.member < 0:
            self._ensure()
        if type(items).__module__ == 'numpy' and type(items).__name__ == 'ndarray':
            if self._dumps is not None:
                raise TypeError("put_many(ndarray) puts raw rows: use a queue created with serializer=None "
                                "(or pass list(array) to pickle each row)")
            return self._put_array(items, block, timeout)
        self._put_datas(self._prepare(items, self._dumps), block, timeout, None)

    def _append_many(self, items, block=True, timeout=None, keys=None, kflags=None):
        """Append raw records (keys: None or one prefix per item, a key or
        None; kflags: None (every non-None prefix is a key) or one flags int
        per item, as _append's); returns their offsets."""
        if self._closed or self.q.member < 0:
            self._ensure()
        cdef list offsets = []
        cdef list klens = None
        cdef list kfl = None
        datas = self._prepare(items, None)
        if keys is not None:
            keys = list(keys)
            if len(keys) != len(datas) or (kflags is not None and len(kflags) != len(datas)):
                raise ValueError(f"append_many got {len(datas)} items and {len(keys)} keys")
            klens = []
            kfl = []
            for i, k in enumerate(keys):
                if k is None:
                    klens.append(0)
                    kfl.append(0)
                    continue
                k = _as_bytes(k, "key")
                if len(k) > 4096:
                    raise ValueError(f"key of {len(k)} bytes is longer than 4096 bytes")
                if len(k) + len(datas[i]) > N.fq_max_payload(&self.q):
                    self._too_big(len(k) + len(datas[i]))
                datas[i] = k + datas[i]
                klens.append(len(k))
                kfl.append(1 if kflags is None else int(kflags[i]))
        self._put_datas(datas, block, timeout, offsets, klens, kfl)
        if offsets and self.q.fsync_mode == N.FQ_FSYNC_ALWAYS and self.q.durable:
            self._sync_upto(offsets[len(offsets) - 1] + 1)  # one flush for the whole batch
        return offsets

    cdef list _prepare(self, object items, object dumps):
        """Serialize and check every item before anything is claimed."""
        cdef list datas = []
        cdef uint32_t maxp = N.fq_max_payload(&self.q)
        for it in items:
            d = it if dumps is None else dumps(it)
            if not PyBytes_CheckExact(d):
                if not PyObject_CheckBuffer(d):
                    raise TypeError(f"a bytes-like object is required, not {type(d).__name__!r}")
                d = bytes(memoryview(d).cast('B'))
            if PyBytes_GET_SIZE(d) > maxp:
                self._too_big(PyBytes_GET_SIZE(d))
            datas.append(d)
        return datas

    cdef int _put_datas(self, list datas, object block, object timeout, list offsets, list klens=None,
                        list kfl=None) except -1:
        cdef Py_ssize_t n = len(datas), i = 0, j, k
        cdef uint64_t limit = N.fq_batch_limit(&self.q)
        cdef uint64_t half = self.q.cap // 2, nbytes, fb, seq
        if limit > 4096:
            limit = 4096
        if <uint64_t>n < limit:
            limit = <uint64_t>n
        if n == 0:
            return 0
        cdef uint32_t *lens = <uint32_t *>malloc(limit * sizeof(uint32_t))
        if lens == NULL:
            raise MemoryError()
        try:
            while i < n:
                j = i
                nbytes = 0
                while j < n and <uint64_t>(j - i) < limit:
                    fb = N.fq_frame_bytes(<uint32_t>PyBytes_GET_SIZE(datas[j]))
                    if j > i and nbytes + fb > half:
                        break
                    lens[j - i] = <uint32_t>PyBytes_GET_SIZE(datas[j])
                    nbytes += fb
                    j += 1
                self._claim(lens, <uint32_t>(j - i), nbytes, &seq, block, timeout)
                # claim -> copy -> commit with the GIL held (one intent per handle)
                for k in range(j - i):
                    d = datas[i + k]
                    memcpy(N.fq_payload(&self.q, seq + k), PyBytes_AS_STRING(d), PyBytes_GET_SIZE(d))
                    if kfl is not None and kfl[i + k]:
                        N.fq_set_prefix(&self.q, seq + k, <uint32_t>klens[i + k], <unsigned>kfl[i + k])
                N.fq_commit(&self.q, seq, <uint32_t>(j - i))
                if offsets is not None:
                    offsets.extend(range(seq, seq + <uint64_t>(j - i)))
                i = j
        finally:
            free(lens)
        return 0

    cdef _put_array(self, arr, block, timeout):
        import numpy as np
        arr = np.ascontiguousarray(arr)
        if arr.ndim == 0:
            raise TypeError("put_many() needs an array with at least one dimension (one record per row)")
        cdef Py_ssize_t rows = arr.shape[0]
        if rows == 0:
            return
        cdef Py_ssize_t rowbytes = arr.nbytes // rows
        if rowbytes == 0:
            raise ValueError("array rows are empty (0 bytes per record)")
        if rowbytes > N.fq_max_payload(&self.q):
            self._too_big(rowbytes)
        cdef Py_buffer view
        PyObject_GetBuffer(arr, &view, PyBUF_ANY_CONTIGUOUS)
        cdef const char *base = <const char *>view.buf
        cdef Py_ssize_t i = 0, j, k
        cdef uint64_t limit = N.fq_batch_limit(&self.q), seq
        cdef uint64_t fb = N.fq_frame_bytes(<uint32_t>rowbytes)
        cdef uint64_t per = (self.q.cap // 2) // fb
        if per < 1:
            per = 1
        if limit > per:
            limit = per
        if limit > 65536:
            limit = 65536
        if <uint64_t>rows < limit:
            limit = <uint64_t>rows
        cdef uint32_t *lens = <uint32_t *>malloc(limit * sizeof(uint32_t))
        if lens == NULL:
            PyBuffer_Release(&view)
            raise MemoryError()
        try:
            for k in range(<Py_ssize_t>limit):
                lens[k] = <uint32_t>rowbytes
            while i < rows:
                j = i + <Py_ssize_t>limit
                if j > rows:
                    j = rows
                self._claim(lens, <uint32_t>(j - i), (j - i) * fb, &seq, block, timeout)
                # claim -> copy -> commit with the GIL held (one intent per handle)
                for k in range(j - i):
                    memcpy(N.fq_payload(&self.q, seq + k), base + (i + k) * rowbytes, rowbytes)
                N.fq_commit(&self.q, seq, <uint32_t>(j - i))
                i = j
        finally:
            free(lens)
            PyBuffer_Release(&view)

    # ---- consume --------------------------------------------------------
    cdef int _msgs_reserve(self, uint32_t n) except -1:
        if n <= self._msgs_cap:
            return 0
        free(self._msgs)
        self._msgs = <N.fq_msg *>malloc(n * sizeof(N.fq_msg))
        if self._msgs == NULL:
            self._msgs_cap = 0
            raise MemoryError()
        self._msgs_cap = n
        return 0

    cdef uint32_t _take(self, N.fq_msg **buf, uint32_t maxn, uint32_t only_len, bint block,
                        object timeout, uint32_t g=0, bint empty_ok=False) except? 0:
        """Lease up to maxn records of group g into *buf (re-read after every
        wait: the buffer may be self._msgs, which another thread may have
        grown).  Raises Empty when nothing came, unless empty_ok (returns 0)."""
        cdef uint32_t n = 0
        cdef int rc = N.fq_take(&self.q, g, buf[0], maxn, only_len, &n)
        cdef int64_t deadline
        cdef bint first = True
        if rc == N.FQ_OK:
            return n
        if rc < 0:
            _raise(rc)
        if not block:
            if empty_ok:
                return 0
            raise Empty
        deadline = _deadline(timeout)
        while True:
            self._wait(0, deadline, 0, 0, first, g)
            first = False
            rc = N.fq_take(&self.q, g, buf[0], maxn, only_len, &n)
            if rc == N.FQ_OK:
                return n
            if rc < 0:
                _raise(rc)
            if deadline >= 0 and N.fq_now_ns() >= deadline:
                if empty_ok:
                    return 0
                raise Empty

    def get(self, block=True, timeout=None):
        """Remove and return an item (see multiprocessing.Queue.get)."""
        if self._closed or self.q.member < 0:
            self._ensure()
        cdef N.fq_msg m
        cdef N.fq_msg *pm = &m
        self._take(&pm, 1, 0, block, timeout)
        data = PyBytes_FromStringAndSize(<const char *>m.data, m.len)
        N.fq_ack(&self.q, 0, &m, 1)
        if self._loads is not None:
            return self._loads(data)
        return data

    def get_nowait(self):
        return self.get(False)

    def get_many(self, max_messages=256, block=True, timeout=None):
        """Remove and return a list of 1..max_messages items; waits like get()."""
        if self._closed or self.q.member < 0:
            self._ensure()
        cdef Py_ssize_t want = max_messages
        if want < 1:
            raise ValueError("max_messages must be >= 1")
        if <uint64_t>want > self.q.limit_records:
            want = <Py_ssize_t>self.q.limit_records
        if want > 65536:
            want = 65536
        self._msgs_reserve(<uint32_t>want)
        # self._msgs is used with the GIL held from the take to the ack
        cdef uint32_t n = self._take(&self._msgs, <uint32_t>want, 0, block, timeout), i
        cdef list out = PyList_New(n)
        for i in range(n):
            b = PyBytes_FromStringAndSize(<const char *>self._msgs[i].data, self._msgs[i].len)
            Py_INCREF(b)
            PyList_SET_ITEM(out, i, b)
        N.fq_ack(&self.q, 0, self._msgs, n)
        loads = self._loads
        if loads is not None:
            return [loads(b) for b in out]
        return out

    def get_array(self, dtype, max_messages=65536, block=True, timeout=None):
        """Remove the next records (each exactly dtype.itemsize bytes) as one numpy array.

        Returns 1..max_messages rows; stops before a record of another size.
        Raises ValueError (and leaves it queued) if the very next record has
        another size; waits like get().
        """
        import numpy as np
        if self._closed or self.q.member < 0:
            self._ensure()
        if self._loads is not None:
            raise TypeError("get_array() reads raw records: use a queue created with serializer=None")
        dt = np.dtype(dtype)
        cdef Py_ssize_t isz = dt.itemsize
        if isz <= 0:
            raise ValueError("dtype must have a non-zero itemsize")
        cdef Py_ssize_t want = max_messages
        if want < 1:
            raise ValueError("max_messages must be >= 1")
        if <uint64_t>want > self.q.limit_records:
            want = <Py_ssize_t>self.q.limit_records
        if want > 1 << 20:
            want = 1 << 20
        # a buffer of our own: the copy below runs without the GIL
        cdef N.fq_msg *msgs = <N.fq_msg *>malloc(want * sizeof(N.fq_msg))
        if msgs == NULL:
            raise MemoryError()
        cdef uint32_t n = 0, i
        cdef Py_buffer view
        cdef char *dst
        try:
            n = self._take(&msgs, <uint32_t>want, <uint32_t>isz, block, timeout)
            try:
                out = np.empty(n, dtype=dt)
                PyObject_GetBuffer(out, &view, PyBUF_WRITABLE | PyBUF_ANY_CONTIGUOUS)
                dst = <char *>view.buf
                with nogil:
                    for i in range(n):
                        memcpy(dst + i * isz, msgs[i].data, isz)
                PyBuffer_Release(&view)
            finally:
                N.fq_ack(&self.q, 0, msgs, n)
        finally:
            free(msgs)
        return out

    # ---- groups (fastq.log) ---------------------------------------------
    def _group_open(self, str name, uint32_t window, uint32_t max_deliveries, double visibility,
                    int start_kind, uint64_t start_seq, dlq, tuple backoff):
        """Create or attach the group; returns (index, created)."""
        cdef N.fq_group_cfg c
        cdef uint32_t g = 0
        cdef int created = 0
        self._ensure()
        bname = _encode_name(name)
        bdlq = _encode_name(dlq) if dlq else b""
        c.name = bname
        c.window = window
        c.max_deliveries = max_deliveries
        c.visibility_ms = <uint32_t>(visibility * 1000.0 + 0.5)
        c.start = start_kind
        c.start_seq = start_seq
        c.dlq = bdlq
        for i in range(4):
            c.backoff[i] = backoff[i]
        rc = N.fq_group_open(&self.q, &c, &g, &created)
        if rc != N.FQ_OK:
            _raise(rc)
        return g, bool(created)

    def _group_find(self, str name):
        cdef uint32_t g = 0
        self._ensure()
        rc = N.fq_group_find(&self.q, _encode_name(name), &g)
        if rc != N.FQ_OK:
            raise KeyError(f"no group named {name!r}")
        return g

    def _group_delete(self, str name):
        self._ensure()
        rc = N.fq_group_delete(&self.q, _encode_name(name))
        if rc == N.FQ_ERR_NOENT:
            raise KeyError(f"no group named {name!r}")
        if rc != N.FQ_OK:
            _raise(rc)

    def _group_info(self, uint32_t g):
        cdef N.fq_group_cfg c
        cdef char name[64]
        cdef char dlq[64]
        self._check_mapped()
        if N.fq_group_info(&self.q, g, &c, name, dlq) != N.FQ_OK:
            return None
        return {"name": name.decode("utf-8", "replace"), "dead_letter": dlq.decode("utf-8", "replace") or None,
                "window": c.window, "max_deliveries": c.max_deliveries,
                "visibility_timeout": c.visibility_ms / 1000.0, "start": c.start_seq,
                "backoff": (c.backoff[0], c.backoff[1], c.backoff[2], c.backoff[3])}

    def _group_reset(self, str name, int start_kind, uint64_t start_seq, bint force):
        """Re-create group ``name`` at another start; returns the number of
        live consumers it had (only non-zero with force)."""
        cdef uint32_t live = 0
        self._ensure()
        rc = N.fq_group_reset(&self.q, _encode_name(name), start_kind, start_seq, force, &live)
        if rc == N.FQ_ERR_NOENT:
            raise KeyError(f"no group named {name!r}")
        if rc != N.FQ_OK:
            _raise(rc)
        return live

    def _lease_state(self, uint32_t g, uint64_t seq):
        """(state, deliveries) of record seq in group g, lock-free: state is
        "queued" (not dispatched, or fresh), "leased", "retry" (a nack, an
        expired or dead lease, or a delayed record not yet due), "finished"
        (acked, dead-lettered or skipped)."""
        cdef uint32_t d = 0
        self._check_mapped()
        cdef int st = N.fq_lease_state(&self.q, g, seq, &d)
        name = {1: "leased", 3: "retry", 2: "finished", 4: "finished", 5: "finished"}.get(st, "queued")
        return name, d

    def _finished(self, uint32_t g, uint64_t seq):
        """Is record seq finished (acked, dead-lettered, skipped) in group g?"""
        self._check_mapped()
        return bool(N.fq_finished(&self.q, g, seq))

    def _leases_held(self, uint32_t g, uint32_t member):
        """Leases member slot `member` holds in group g now."""
        self._check_mapped()
        return N.fq_leases_held(&self.q, g, member)

    def _members(self):
        """Lock-free snapshot of the member table: one dict per occupied slot."""
        cdef N.fq_member_info mi
        cdef uint32_t i
        self._check_mapped()
        out = []
        for i in range(self.q.max_members):
            if N.fq_member_peek(&self.q, i, &mi) != N.FQ_OK:
                continue
            out.append({"id": i, "pid": mi.pid, "leases": N.fq_leases_held(&self.q, mi.group, i) if mi.bound else 0, "kind": mi.kind, "group": mi.group if mi.bound else None,
                        "alive": bool(mi.alive), "started": mi.started_ns / 1e9,
                        "name": (<char *>mi.name).decode("utf-8", "replace"), "puts": mi.puts, "gets": mi.gets,
                        "acked": mi.acked, "self": <int>i == self.q.member})
        return out

    def _groups(self):
        """Indexes of the active groups."""
        self._check_mapped()
        return [g for g in range(self.q.max_groups) if self._group_info(g) is not None]

    def _member_group(self, uint32_t g):
        self._ensure()
        rc = N.fq_member_group(&self.q, g)
        if rc != N.FQ_OK:
            _raise(rc, "this handle already consumed in another group")

    def _group_stats(self, uint32_t g):
        cdef N.fq_stats st
        self._check_mapped()
        N.fq_get_stats(&self.q, g, &st)
        return st

    def _g_qsize(self, uint32_t g):
        self._check_mapped()
        return N.fq_qsize(&self.q, g)

    def _g_get(self, uint32_t g, uint32_t maxn, object timeout, object group, object consumer):
        """Lease up to maxn records of group g as Message objects ([] on timeout)."""
        cdef uint32_t n, i, kl
        cdef Message m
        if self._closed or self.q.member < 0:
            self._ensure()
        if maxn < 1:
            raise ValueError("max_messages must be >= 1")
        if maxn > 65536:
            maxn = 65536
        self._msgs_reserve(maxn)
        self._gets += 1
        if (self._gets & 63) == 0:
            # busy consumers that never wait still notice dead members soon
            # (rate-limited to one scan per 20 ms across all processes)
            N.fq_maintain(&self.q, 0)
        try:
            n = self._take(&self._msgs, maxn, 0, True, timeout, g, True)
        except FileNotFoundError:
            raise FastqError(f"group {group!r} was deleted") from None
        cdef list out = PyList_New(n)
        self._g_deadletters = 0
        for i in range(n):
            if self._msgs[i].flags & N.FQ_MSG_DEADLETTER:
                self._g_deadletters += 1
            m = Message.__new__(Message)
            m._m = self._msgs[i]
            m._m.data = NULL
            kl = self._msgs[i].key_len
            if self._msgs[i].flags & (N.FQ_MSG_KEY | N.FQ_MSG_META):
                m.key, m._hraw = _prefix(&self._msgs[i])
            m.data = PyBytes_FromStringAndSize(<const char *>self._msgs[i].data + kl, self._msgs[i].len - kl)
            m._ring = self
            m._g = g
            m.group = group
            m._consumer = consumer
            Py_INCREF(m)
            PyList_SET_ITEM(out, i, m)
        return out

    def _g_ack_many(self, uint32_t g, list msgs):
        """Ack a batch of this handle's messages with one low-watermark advance;
        returns how many were acked (the others had lost their lease)."""
        cdef Py_ssize_t n = len(msgs), i
        cdef Message m
        cdef N.fq_msg *buf
        cdef uint32_t done = 0
        self._check_mapped()
        if n == 0:
            return 0
        buf = <N.fq_msg *>malloc(n * sizeof(N.fq_msg))
        if buf == NULL:
            raise MemoryError()
        try:
            for i in range(n):
                m = msgs[i]
                if m._ring is not self or m._g != g:
                    raise ValueError("ack_many() takes messages this consumer got")
                buf[i] = m._m
            rc = N.fq_ack_n(&self.q, g, buf, <uint32_t>n, &done)
            if rc != N.FQ_OK and rc != N.FQ_ERR_LOST:
                _raise(rc)
            return done
        finally:
            free(buf)

    # ---- counts ---------------------------------------------------------
    def qsize(self):
        """Number of items put and not yet got (exact when no call is in flight)."""
        self._check_mapped()
        return N.fq_qsize(&self.q, 0)

    def empty(self):
        self._check_mapped()
        return N.fq_qsize(&self.q, 0) == 0

    def full(self):
        self._check_mapped()
        return N.fq_qsize(&self.q, 0) >= self.q.limit_records

    def _task_done(self):
        self._check_mapped()
        rc = N.fq_task_done(&self.q, 1)
        if rc != N.FQ_OK:
            raise ValueError("task_done() called too many times")

    def _join_tasks(self, timeout=None):
        """Block until every item put has been task_done(); False on timeout."""
        self._ensure()
        cdef int64_t deadline = _deadline(timeout)
        while N.fq_unfinished(&self.q) != 0:
            if deadline >= 0 and N.fq_now_ns() >= deadline:
                return False
            self._wait(2, deadline, 0, 0, False)
        return True

    def _unfinished(self):
        self._check_mapped()
        return N.fq_unfinished(&self.q)

    def _maintain(self, force=True):
        """Run the liveness scan now; returns the number of dead members recovered."""
        self._ensure()
        return N.fq_maintain(&self.q, 1 if force else 0)

    def _stats(self):
        """A lock-free snapshot of the shared counters (monitoring, tests)."""
        cdef N.fq_stats st
        self._check_mapped()
        N.fq_get_stats(&self.q, 0, &st)
        return st

    @property
    def capacity(self):
        """Arena bytes (a power of two)."""
        self._check_mapped()
        return self.q.cap

    @property
    def max_message_size(self):
        """Largest payload one record can carry (capacity/4 - 32 bytes)."""
        self._check_mapped()
        return N.fq_max_payload(&self.q)

    @property
    def _shm_maxsize(self):
        self._check_mapped()
        return self.q.maxsize

    @property
    def _limit_records(self):
        self._check_mapped()
        return self.q.limit_records

    @property
    def _tail(self):
        self._check_mapped()
        return N.fq_tail_seq(&self.q)


cdef object _lease_result(int rc):
    """True: done; False: the lease was lost (expired, redelivered, returned)."""
    if rc == N.FQ_OK:
        return True
    if rc == N.FQ_ERR_LOST:
        return False
    _raise(rc)


cdef class Message:
    """One delivery of a record to a consumer of a group (a lease).

    ``offset``, ``data`` (bytes), ``timestamp`` (seconds since the epoch, when
    it was appended), ``deliveries`` (1 on the first delivery), ``group``.
    Finish it with :meth:`ack`, give it back with :meth:`nack`, or keep it
    longer with :meth:`extend`; a lease that is neither acked nor extended
    before the group's visibility timeout is redelivered to another consumer.
    """
    cdef N.fq_msg _m
    cdef Ring _ring
    cdef uint32_t _g
    cdef readonly object data
    cdef readonly object key
    cdef readonly object group
    cdef object _consumer
    cdef object _hraw          # raw headers of the meta region (None: no headers)

    def __init__(self, *args, **kwargs):
        raise TypeError("Message objects come from Consumer.get()")

    @property
    def offset(self):
        return self._m.seq

    @property
    def deliveries(self):
        return self._m.deliveries

    @property
    def timestamp(self):
        return self._m.ts_ns / 1e9

    @property
    def headers(self):
        """The record's headers: a dict of str to str or bytes ({} if none)."""
        return _meta.decode_headers(self._hraw) if self._hraw else {}

    @property
    def _must_dead_letter(self):
        return bool(self._m.flags & N.FQ_MSG_DEADLETTER)

    cdef int _check(self) except -1:
        if self._ring is None or not self._ring._mapped or self._ring._closed:
            raise ValueError("the consumer of this message is closed")
        return 0

    def ack(self):
        """Finish the message.  False if the lease was lost (it expired and was
        redelivered, or recovery returned it): never finishes someone else's
        delivery."""
        self._check()
        return _lease_result(N.fq_ack(&self._ring.q, self._g, &self._m, 1))

    def nack(self, delay=None, reason=None):
        """Give the message back: visible again after ``delay`` seconds, or
        after the group's backoff delay for its delivery count.  At the
        delivery limit it goes to the dead-letter queue with ``reason``.
        False if the lease was lost."""
        return self._consumer._nack(self, delay, reason)

    def extend(self, seconds):
        """Renew the lease for ``seconds`` from now.  False if it was lost."""
        self._check()
        t = float(seconds)
        if not t >= 0:
            raise ValueError("'seconds' must be a non-negative number")
        return _lease_result(N.fq_extend(&self._ring.q, self._g, &self._m, <uint64_t>(t * 1000.0 + 0.5)))

    def _nack_raw(self, double delay):
        self._check()
        return _lease_result(N.fq_nack(&self._ring.q, self._g, &self._m, <uint64_t>(delay * 1e9)))

    def _dead(self):
        self._check()
        return _lease_result(N.fq_dead(&self._ring.q, self._g, &self._m, 1))

    def __repr__(self):
        return (f"<fastq.Message group={self.group!r} offset={self._m.seq} deliveries={self._m.deliveries} "
                f"{len(self.data)} bytes>")
