"""Linters as tests: rules of the C core that a reviewer should not have to check by eye."""
import pathlib
import re

import pytest

NATIVE = pathlib.Path(__file__).resolve().parent.parent / "src" / "fastq" / "_native"
SOURCES = sorted(NATIVE.glob("*.[ch]"))

pytestmark = pytest.mark.skipif(not SOURCES, reason="source tree not available")


def _code(path):
    text = path.read_text()
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)  # comments may mention anything
    return re.sub(r"//[^\n]*", "", text)


def test_no_python_headers_in_the_core():
    for path in SOURCES:
        assert "Python.h" not in _code(path), f"{path.name} includes Python.h: the core must stay Python-free"


def test_every_atomic_names_its_memory_order():
    call = re.compile(r"\batomic_(load|store|exchange|compare_exchange_weak|compare_exchange_strong"
                      r"|fetch_add|fetch_sub|fetch_or|fetch_and|fetch_xor)\b")
    for path in SOURCES:
        bad = [m.group(0) for m in call.finditer(_code(path))]
        assert not bad, f"{path.name}: {bad} — use the _explicit form and state the order"


def test_no_pthread_locks_in_shared_memory():
    for path in SOURCES:
        code = _code(path)
        assert "pthread_mutex" not in code and "pthread_cond" not in code, (
            f"{path.name}: no pthread mutex/condvar in shared memory (a dead holder wedges everyone)")


def test_shared_structs_live_in_layout_header():
    for path in SOURCES:
        if path.name == "fq_layout.h":
            continue
        assert not re.search(r"struct\s+fq_\w+_shm\s*\{", _code(path)), (
            f"{path.name} defines a *_shm struct: shared structs belong in fq_layout.h")


def test_every_shared_struct_has_a_size_assertion():
    layout = (NATIVE / "fq_layout.h").read_text()
    for name in re.findall(r"struct\s+(fq_\w+_shm)\s*\{", layout):
        assert re.search(rf"sizeof\(struct {name}\)", layout), f"{name} has no _Static_assert on its size"
