"""pytest-benchmark suite for fastq (run: ``python -m pytest bench/``).

CI runs it as ``python -m pytest bench/ --benchmark-disable``: every benchmark
body then runs once, as a quick smoke test, and the cross-process cells use a
shorter duration.  Peers that are not installed are skipped.
"""

from __future__ import annotations

import os
import sys

import pytest

pytest.importorskip("pytest_benchmark")

_SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")


def _fastq_usable() -> bool:
    try:
        import fastq
    except Exception:  # noqa: BLE001 - not installed / not built
        return False
    return hasattr(fastq, "Queue")


# Prefer an installed fastq (pip install . / -e .: what CI does).  Only when none
# works, fall back to an in-place build in src/ (python setup.py build_ext
# --inplace); spawned children inherit sys.path from this process.
if not _fastq_usable() and os.path.isdir(_SRC) and _SRC not in sys.path:
    for _mod in [m for m in sys.modules if m == "fastq" or m.startswith("fastq.")]:
        del sys.modules[_mod]
    sys.path.insert(0, _SRC)


@pytest.fixture(scope="session")
def fastq_mod():
    """The fastq package, or skip when it is not built / importable."""
    fastq = pytest.importorskip("fastq")
    if not hasattr(fastq, "Queue"):
        pytest.skip("fastq.Queue not available (extension not built?)")
    return fastq


@pytest.fixture(scope="session")
def bench_mod():
    """fastq._bench, the comparison runner reused for cross-process cells."""
    return pytest.importorskip("fastq._bench")


@pytest.fixture
def quick(benchmark) -> bool:
    """True when benchmarks are disabled (CI smoke run): keep durations short."""
    return bool(getattr(benchmark, "disabled", False))
