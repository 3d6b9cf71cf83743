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
