"""Bad arguments and damaged queue files give clear exceptions, never crashes."""
import os
import pickle
import queue
import random
import stat
import struct
import subprocess
import sys
import textwrap

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastq

from conftest import shm_path

SMALL = 1 << 16
PAGE = 4096
OPEN_ERRORS = (fastq.CorruptQueueError, fastq.IncompatibleQueueError, PermissionError)

# superblock field offsets (src/fastq/_native/fq_layout.h, struct fq_super_shm)
OFF = {
    "magic": (0, "8s"), "major": (8, "<H"), "minor": (10, "<H"), "state": (12, "<I"), "flags": (16, "<I"),
    "fingerprint": (20, "<I"), "total_size": (24, "<Q"), "arena_cap": (32, "<Q"), "desc_count": (40, "<I"),
    "max_frame": (44, "<I"), "max_members": (48, "<I"), "max_groups": (52, "<I"), "window_max": (56, "<I"),
    "uid": (60, "<I"), "off_ctrl": (64, "<Q"), "off_members": (72, "<Q"), "off_groups": (80, "<Q"),
    "off_desc": (88, "<Q"), "off_windows": (96, "<Q"), "off_arena": (104, "<Q"), "base_seq": (112, "<Q"),
    "base_pos": (120, "<Q"), "maxsize": (160, "<Q"), "crc": (168, "<I"),
}
CRC_LEN = 168

_T = []
for _i in range(256):
    _c = _i
    for _ in range(8):
        _c = (_c >> 1) ^ 0x82F63B78 if _c & 1 else _c >> 1
    _T.append(_c)


def crc32c(data: bytes) -> int:
    c = 0xFFFFFFFF
    for x in data:
        c = _T[(c ^ x) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


assert crc32c(b"123456789") == 0xE3069283


def reseal(buf: bytearray) -> None:
    """Recompute the superblock checksum (as fq__super_crc does: s_state zeroed)."""
    s = bytearray(buf[:CRC_LEN])
    s[12:16] = b"\0\0\0\0"
    struct.pack_into("<I", buf, OFF["crc"][0], crc32c(bytes(s)))


def get_field(buf, field):
    off, fmt = OFF[field]
    return struct.unpack_from(fmt, buf, off)[0]


def set_field(buf, field, value):
    off, fmt = OFF[field]
    struct.pack_into(fmt, buf, off, value)


@pytest.fixture
def qfile(unique_name):
    """A valid, closed, empty named queue: (name, path, original bytes)."""
    with fastq.Queue(name=unique_name, capacity=4096) as q:
        q.put("hello")
    path = shm_path(unique_name)
    with open(path, "rb") as f:
        data = f.read()
    return unique_name, path, data


def write(path, data):
    with open(path, "r+b") as f:
        f.seek(0)
        f.write(data)


def expect_open_error(name, types=OPEN_ERRORS, match=None, wait=0.05):
    with pytest.raises(types, match=match) as ei:
        q = fastq.Queue.open(name, wait=wait)
        q.close()
    assert str(ei.value), "exception without a message"
    return ei.value


# ---------------------------------------------------------------- argument types
def test_raw_put_non_bytes_typeerror():
    with fastq.Queue(capacity=SMALL, serializer=None) as q:
        for bad in (1, "text", [1, 2], None, 1.5, object()):
            with pytest.raises(TypeError):
                q.put(bad)
            with pytest.raises(TypeError):
                q.put_nowait(bad)
        with pytest.raises(TypeError, match="bytes-like"):
            q.put_many([b"ok", "not bytes"])
        assert q.qsize() == 0


def test_custom_dumps_returning_str_typeerror():
    with fastq.Queue(capacity=SMALL, serializer=(str, str)) as q:
        with pytest.raises(TypeError):
            q.put(1)
        assert q.qsize() == 0


@pytest.mark.parametrize("spec", ["json", "", 42, (pickle.dumps,), (1, 2), (pickle.dumps, pickle.loads, None),
                                  object(), [pickle.dumps, pickle.loads]])
def test_bad_serializer_spec_typeerror(spec, unique_name):
    with pytest.raises(TypeError, match="serializer"):
        fastq.Queue(capacity=SMALL, serializer=spec)
    with fastq.Queue(name=unique_name, capacity=4096):
        pass
    with pytest.raises(TypeError, match="serializer"):
        fastq.Queue.open(unique_name, serializer=spec)


@pytest.mark.parametrize("name", [5, b"bytes-name", ["x"], 1.0])
def test_name_not_str_typeerror(name):
    with pytest.raises(TypeError, match="str"):
        fastq.Queue(name=name, capacity=4096)
    with pytest.raises(TypeError, match="str"):
        fastq.Queue.open(name)


@pytest.mark.parametrize("name", [5, b"bytes-name"])
def test_unlink_name_not_str_typeerror(name):
    with pytest.raises(TypeError):
        fastq.unlink(name)


BAD_NAMES = ["", "a/b", "/abs", "..", "../x", ".hidden", ".", "x" * 201, "a b", "tab\t", "caf\u00e9", "nl\n",
             "a\x00b", "\x00", "q*", "semi;colon"]


@pytest.mark.parametrize("name", BAD_NAMES, ids=[repr(n) for n in BAD_NAMES])
def test_invalid_names_valueerror(name):
    before = set(os.listdir("/dev/shm"))
    try:
        with pytest.raises(ValueError, match="name"):
            q = fastq.Queue(name=name, capacity=4096)
            q.close()
        with pytest.raises(ValueError, match="name"):
            fastq.Queue.open(name)
        with pytest.raises(ValueError, match="name"):
            fastq.unlink(name)
    finally:
        created = set(os.listdir("/dev/shm")) - before
        for f in created:
            if f.startswith("fastq."):
                os.unlink(os.path.join("/dev/shm", f))
    assert not {f for f in created if f.startswith("fastq.")}, f"a file was created for {name!r}: {created}"


def test_name_length_limit(unique_name):
    long_ok = (unique_name + "x" * 200)[:200]
    try:
        with fastq.Queue(name=long_ok, capacity=4096) as q:
            assert q.name == long_ok
        with fastq.Queue.open(long_ok) as q:
            assert q.name == long_ok
        with pytest.raises(ValueError, match="name"):
            fastq.Queue(name=long_ok + "y", capacity=4096)
    finally:
        if os.path.exists(shm_path(long_ok)):
            os.unlink(shm_path(long_ok))


def test_negative_and_nan_timeout_valueerror():
    with fastq.JoinableQueue(1, capacity=SMALL) as q:
        for bad in (-1, -0.001, float("nan")):
            with pytest.raises(ValueError, match="timeout"):
                q.get(timeout=bad)
            with pytest.raises(ValueError, match="timeout"):
                q.get_many(3, timeout=bad)
        q.put(1)
        for bad in (-1, float("nan")):
            with pytest.raises(ValueError, match="timeout"):
                q.put(2, timeout=bad)
            with pytest.raises(ValueError, match="timeout"):
                q.join(timeout=bad)
        assert q.qsize() == 1


def test_oversized_record_valueerror():
    with fastq.Queue(capacity=4096, serializer=None) as q:
        with pytest.raises(ValueError, match="larger than"):
            q.put(b"\0" * (q.max_message_size + 1))
        with pytest.raises(ValueError):
            q.put(b"\0" * 10**6)
        assert q.qsize() == 0


@pytest.mark.parametrize("cap", [0, -1, -4096])
def test_bad_capacity_valueerror(cap):
    with pytest.raises(ValueError, match="capacity"):
        fastq.Queue(capacity=cap)


def test_capacity_too_large_valueerror():
    with pytest.raises(ValueError, match="capacity"):
        fastq.Queue(capacity=(1 << 32) + 1)


def test_maxsize_too_large_valueerror():
    with pytest.raises(ValueError):
        fastq.Queue((1 << 24) + 5, capacity=4096)


def test_bad_max_messages():
    with fastq.Queue(capacity=SMALL) as q:
        q.put(1)
        with pytest.raises(ValueError):
            q.get_many(0)
        with pytest.raises(TypeError):
            q.get_many("3")
        assert q.qsize() == 1


# ---------------------------------------------------------------- damaged files
def test_valid_file_reopens(qfile):
    name, path, data = qfile
    with fastq.Queue.open(name) as q:
        assert q.get(timeout=1) == "hello"
    # resealing an unchanged superblock is a no-op (checks the helper)
    buf = bytearray(data)
    reseal(buf)
    assert bytes(buf) == data


@pytest.mark.parametrize("size", [0, 1, 8, 100, PAGE, 2 * PAGE])
def test_truncated_tiny(qfile, size):
    name, path, _ = qfile
    os.truncate(path, size)
    expect_open_error(name, fastq.IncompatibleQueueError)


def test_truncated_keeps_superblock(qfile):
    name, path, data = qfile
    os.truncate(path, len(data) - PAGE)
    expect_open_error(name, fastq.CorruptQueueError, match="size")


def test_extended_file(qfile):
    name, path, data = qfile
    os.truncate(path, len(data) + PAGE)
    expect_open_error(name, fastq.CorruptQueueError, match="size")


def test_zeroed_file(qfile):
    name, path, data = qfile
    write(path, b"\0" * len(data))
    expect_open_error(name, fastq.IncompatibleQueueError)


def test_garbage_file(qfile):
    name, path, data = qfile
    write(path, random.Random(1).randbytes(len(data)))
    expect_open_error(name, fastq.IncompatibleQueueError)


@pytest.mark.parametrize("field,value,exc", [
    ("magic", b"FASTQRX\0", fastq.IncompatibleQueueError),
    ("major", 2, fastq.IncompatibleQueueError),
    ("major", 0, fastq.IncompatibleQueueError),
    ("state", 0, fastq.IncompatibleQueueError),
    ("state", 1, fastq.IncompatibleQueueError),
    ("state", 3, fastq.IncompatibleQueueError),
    ("arena_cap", 8192, fastq.CorruptQueueError),
    ("desc_count", 128, fastq.CorruptQueueError),
    ("total_size", 1 << 40, fastq.CorruptQueueError),
    ("off_arena", 0, fastq.CorruptQueueError),
    ("maxsize", 1 << 30, fastq.CorruptQueueError),
    ("crc", 0, fastq.CorruptQueueError),
])
def test_flipped_superblock_field_without_reseal(qfile, field, value, exc):
    name, path, data = qfile
    buf = bytearray(data)
    set_field(buf, field, value)
    write(path, bytes(buf))
    expect_open_error(name, exc)


RESEALED = [
    ("fingerprint", lambda v: v ^ 1, fastq.IncompatibleQueueError, "incompatible"),
    ("arena_cap", lambda v: v + 1, fastq.CorruptQueueError, "capacity"),
    ("arena_cap", lambda v: v * 2, fastq.CorruptQueueError, None),
    ("arena_cap", lambda v: 1 << 40, fastq.CorruptQueueError, None),
    ("arena_cap", lambda v: 0, fastq.CorruptQueueError, None),
    ("desc_count", lambda v: v + 1, fastq.CorruptQueueError, "descriptor"),
    ("desc_count", lambda v: 1 << 30, fastq.CorruptQueueError, None),
    ("desc_count", lambda v: 0, fastq.CorruptQueueError, None),
    ("max_frame", lambda v: 0, fastq.CorruptQueueError, "frame"),
    ("max_frame", lambda v: 0xFFFFFFFF, fastq.CorruptQueueError, "frame"),
    ("max_members", lambda v: 0, fastq.CorruptQueueError, "member"),
    ("max_members", lambda v: 0xFFFFFFFF, fastq.CorruptQueueError, "member"),
    ("max_groups", lambda v: 0, fastq.CorruptQueueError, "group"),
    ("max_groups", lambda v: 1 << 20, fastq.CorruptQueueError, None),
    ("window_max", lambda v: 3, fastq.CorruptQueueError, "window"),
    ("window_max", lambda v: 1 << 30, fastq.CorruptQueueError, "window"),
    ("total_size", lambda v: v + PAGE, fastq.CorruptQueueError, "size"),
    ("off_ctrl", lambda v: 0, fastq.CorruptQueueError, "section"),
    ("off_ctrl", lambda v: v + 1, fastq.CorruptQueueError, "section"),
    ("off_members", lambda v: v + PAGE * 1000, fastq.CorruptQueueError, "section"),
    ("off_desc", lambda v: PAGE, fastq.CorruptQueueError, "section"),
    ("off_windows", lambda v: (1 << 64) - PAGE, fastq.CorruptQueueError, "section"),
    ("off_arena", lambda v: v + PAGE, fastq.CorruptQueueError, "section"),
    ("off_arena", lambda v: v - PAGE, fastq.CorruptQueueError, "section"),
    ("base_pos", lambda v: v + 3, fastq.CorruptQueueError, "base"),
    ("base_seq", lambda v: 1 << 62, fastq.CorruptQueueError, "base"),
    ("maxsize", lambda v: 1 << 40, fastq.CorruptQueueError, "maxsize"),
]


@pytest.mark.parametrize("field,mutate,exc,match", RESEALED,
                         ids=[f"{f}-{i}" for i, (f, *_ ) in enumerate(RESEALED)])
def test_resealed_superblock_geometry(qfile, field, mutate, exc, match):
    """Checksum made valid again: the geometry checks themselves must catch it."""
    name, path, data = qfile
    buf = bytearray(data)
    set_field(buf, field, mutate(get_field(buf, field)) & ((1 << 64) - 1 if OFF[field][1] == "<Q" else 0xFFFFFFFF))
    reseal(buf)
    write(path, bytes(buf))
    expect_open_error(name, exc, match=match)


def test_mode_0644_permissionerror(qfile):
    name, path, _ = qfile
    os.chmod(path, 0o644)
    expect_open_error(name, PermissionError, match="0600|permission")


def test_mode_0660_permissionerror(qfile):
    name, path, _ = qfile
    os.chmod(path, 0o660)
    expect_open_error(name, PermissionError)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown")
def test_foreign_owner_permissionerror(qfile):
    name, path, _ = qfile
    os.chown(path, 12345, -1)
    expect_open_error(name, PermissionError, match="owned")


def test_non_fastq_file_incompatible(unique_name):
    path = shm_path(unique_name)
    with open(path, "wb") as f:
        f.write(b"this is not a queue\n" * 1000)
    os.chmod(path, 0o600)
    expect_open_error(unique_name, fastq.IncompatibleQueueError, match="not a fastq")


def test_small_non_fastq_file_incompatible(unique_name):
    path = shm_path(unique_name)
    with open(path, "wb") as f:
        f.write(b"hi")
    os.chmod(path, 0o600)
    expect_open_error(unique_name, fastq.IncompatibleQueueError)


def test_symlink_refused(qfile, name_factory):
    name, path, _ = qfile
    link = name_factory()
    os.symlink(path, shm_path(link))
    with pytest.raises(OSError) as ei:
        fastq.Queue.open(link).close()
    assert str(ei.value)
    # creating over a symlink (even a dangling one) must not follow it
    dangling = name_factory()
    target = shm_path(name_factory())
    os.symlink(target, shm_path(dangling))
    with pytest.raises(FileExistsError):
        fastq.Queue(name=dangling, capacity=4096).close()
    assert not os.path.exists(target)


def test_fifo_at_path_incompatible(unique_name):
    os.mkfifo(shm_path(unique_name), 0o600)
    expect_open_error(unique_name, fastq.IncompatibleQueueError, match="regular")


def test_directory_at_path(unique_name):
    os.mkdir(shm_path(unique_name), 0o700)
    with pytest.raises(OSError):
        fastq.Queue.open(unique_name).close()


def test_not_ready_open_waits_then_fails(qfile):
    import time
    name, path, data = qfile
    buf = bytearray(data)
    set_field(buf, "state", 1)  # INIT: "creator still creating"
    write(path, bytes(buf))
    t0 = time.monotonic()
    expect_open_error(name, fastq.IncompatibleQueueError, match="not initialised", wait=0.2)
    assert 0.19 <= time.monotonic() - t0 < 2.0


# ---------------------------------------------------------------- fuzzing the superblock
@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_fuzz_superblock_open_never_crashes(name_factory, data):
    """Random byte mutations of the first 4 KiB; optionally with a valid checksum.

    The open runs in-process: validation happens on a private copy before the
    whole file is mapped, so a crash here is a bug in fastq."""
    name = name_factory()
    with fastq.Queue(name=name, capacity=4096):
        pass
    path = shm_path(name)
    with open(path, "rb") as f:
        buf = bytearray(f.read())
    n = data.draw(st.integers(1, 8))
    hot = data.draw(st.booleans())  # focus on the 176-byte header
    for _ in range(n):
        off = data.draw(st.integers(0, 175 if hot else PAGE - 1))
        buf[off] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        reseal(buf)
    write(path, bytes(buf))
    try:
        q = fastq.Queue.open(name, wait=0)
    except OPEN_ERRORS as e:
        assert str(e)
    else:
        q.close()
    finally:
        os.unlink(path)


_FUZZ_CHILD = textwrap.dedent(r"""
    import sys, queue, fastq
    name = sys.argv[1]
    try:
        q = fastq.Queue.open(name, wait=0, serializer=None)
    except (fastq.CorruptQueueError, fastq.IncompatibleQueueError, PermissionError) as e:
        print("refused", type(e).__name__, e); sys.exit(0)
    try:
        for i in range(20):
            try:
                q.put_nowait(b"x" * (i * 7))
            except queue.Full:
                pass
        for i in range(25):
            try:
                q.get_nowait()
            except queue.Empty:
                pass
        q.qsize()
    except (ValueError, fastq.FastqError) as e:
        print("error", type(e).__name__, e)
    q.close()
    print("ok")
""")


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_fuzz_resealed_header_then_use_in_subprocess(name_factory, data):
    """Header fields changed to other values with a valid checksum, then the
    queue is opened AND used (put/get) in a child: the child must not die of a signal."""
    name = name_factory()
    with fastq.Queue(name=name, capacity=4096, serializer=None) as q:
        q.put(b"abc")
    path = shm_path(name)
    with open(path, "rb") as f:
        buf = bytearray(f.read())
    fields = ["flags", "minor", "desc_count", "max_frame", "max_members", "max_groups", "window_max",
              "base_seq", "base_pos", "maxsize", "off_members", "off_groups", "off_desc", "off_windows"]
    for _ in range(data.draw(st.integers(1, 3))):
        field = data.draw(st.sampled_from(fields))
        width = 64 if OFF[field][1] == "<Q" else (16 if OFF[field][1] == "<H" else 32)
        v = get_field(buf, field)
        v = data.draw(st.one_of(st.integers(0, (1 << width) - 1),
                                st.sampled_from([v // 2, v * 2, v + 8, max(v - 8, 0), v + PAGE, 64, 1])))
        set_field(buf, field, v & ((1 << width) - 1))
    reseal(buf)
    write(path, bytes(buf))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    r = subprocess.run([sys.executable, "-c", _FUZZ_CHILD, name], capture_output=True, text=True, timeout=60,
                       env=env)
    assert r.returncode == 0, (
        f"child died (rc={r.returncode}) with header {bytes(buf[:176]).hex()}\n{r.stdout}\n{r.stderr}")


_CTRL_CHILD = textwrap.dedent(r"""
    import sys, queue, fastq
    name = sys.argv[1]
    try:
        q = fastq.Queue.open(name, wait=0, serializer=None)
        q.qsize()
        try:
            q.get_nowait()
        except queue.Empty:
            pass
        try:
            q.put_nowait(b"x")
        except queue.Full:
            pass
        q.close()
    except (ValueError, fastq.FastqError, PermissionError) as e:
        print("error", type(e).__name__, e)
    print("done")
""")


@pytest.mark.parametrize("seed", [0])
def test_corrupt_tail_word_does_not_hang(qfile, seed):
    """A garbage claim word (control page) behind the reclaim floor: open /
    qsize / get_nowait / put_nowait / close must return (a clear error is
    fine) instead of spinning forever with the GIL held."""
    name, path, data = qfile
    buf = bytearray(data)
    off_ctrl = get_field(buf, "off_ctrl")
    rnd = random.Random(seed)
    tail = rnd.getrandbits(64) | (1 << 63)  # seq part far "behind" the floor in serial arithmetic
    struct.pack_into("<Q", buf, off_ctrl, tail)
    write(path, bytes(buf))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    try:
        r = subprocess.run([sys.executable, "-c", _CTRL_CHILD, name], capture_output=True, text=True,
                           timeout=10, env=env)
    except subprocess.TimeoutExpired:
        pytest.fail(f"child hung on a queue whose c_tail is {tail:#x}")
    assert r.returncode == 0, r.stderr
    assert "done" in r.stdout
