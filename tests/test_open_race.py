"""Processes that create the same log at the same moment all get it: an
opener that finds the file just created (still empty, or without its magic)
waits for its creator instead of refusing it (found by the jobs pool: two
workers dead-lettering at once both created the DLQ)."""
import multiprocessing as mp
import os
import uuid

import pytest

import fastq

from conftest import _remove

CTX = mp.get_context("fork")


def _opener(target, durable, barrier, out):
    barrier.wait(10)
    try:
        log = fastq.open(target, durable=durable, **({"fsync": "never", "segment_size": 1 << 16} if durable else
                                                     {"capacity": 1 << 20}))
        log.append(b"x")
        log.close()
        out.put("ok")
    except Exception as e:  # reported to the parent, which fails the test with it
        out.put(f"{type(e).__name__}: {e}")


@pytest.mark.parametrize("durable", [False, True])
def test_racing_creators(tmp_path, durable):
    for r in range(40):
        target = str(tmp_path / f"log{r}") if durable else "t-" + uuid.uuid4().hex
        barrier, out = CTX.Barrier(3), CTX.Queue()
        ps = [CTX.Process(target=_opener, args=(target, durable, barrier, out)) for _ in range(3)]
        for p in ps:
            p.start()
        got = [out.get(timeout=30) for _ in ps]
        for p in ps:
            p.join(10)
        assert got == ["ok"] * 3, got
        log = fastq.open(target, durable=durable, **({"fsync": "never"} if durable else {}))
        assert log.stats()["head"] == 3
        log.close()
        if not durable:
            _remove(target)


def test_old_empty_file_is_refused_at_once(tmp_path):
    d = tmp_path / "old"
    d.mkdir()
    (d / "control").write_bytes(b"")
    os.chmod(d / "control", 0o600)
    os.utime(d / "control", (0, 0))
    with pytest.raises(fastq.IncompatibleQueueError, match="too small"):
        fastq.open(str(d), durable=True, create=False, wait=30)
