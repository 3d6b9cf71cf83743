"""Shared fixtures for the fastq test-suite (kept small and generic)."""
import os
import uuid

import pytest

SHM_DIR = "/dev/shm"


def shm_path(name: str) -> str:
    """Path of the file backing the named queue ``name``."""
    return os.path.join(SHM_DIR, "fastq." + name)


def _remove(name: str) -> None:
    try:
        os.unlink(shm_path(name))
    except FileNotFoundError:
        pass
    except IsADirectoryError:
        os.rmdir(shm_path(name))


@pytest.fixture
def unique_name():
    """A fresh queue name ``t-<uuid>``; its /dev/shm file is removed afterwards."""
    name = "t-" + uuid.uuid4().hex
    yield name
    _remove(name)


@pytest.fixture
def name_factory():
    """Call it to get as many fresh queue names as needed; all are removed afterwards."""
    names = []

    def make() -> str:
        n = "t-" + uuid.uuid4().hex
        names.append(n)
        return n

    yield make
    for n in names:
        _remove(n)


@pytest.fixture(params=["shm", "durable"])
def any_log(request, tmp_path):
    """A fresh log of each kind: a shared-memory log (1 MiB; it and its .dlq
    are unlinked afterwards) and a durable log (64 KiB segments, fsync never)."""
    import fastq
    if request.param == "shm":
        name = "t-" + uuid.uuid4().hex
        log = fastq.open(name, capacity=1 << 20)
        yield log
        for n in (name, name + ".dlq"):
            _remove(n)
    else:
        log = fastq.open(str(tmp_path / "log"), durable=True, fsync="never", segment_size=1 << 16)
        yield log
    log.close()
