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
if os.path.isdir(_SRC) and _SRC not in sys.path:
    # in-place build (python setup.py build_ext --inplace) without pip install -e;
    # spawned children inherit sys.path from this process
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
