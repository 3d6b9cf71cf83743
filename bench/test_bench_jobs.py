"""fastq.jobs: enqueue cost and an in-process drain (pytest-benchmark), and
the jobs comparison of fastq._bench_jobs kept from rotting: every available
tool runs a few jobs, each counted exactly once (tools not installed, or
without a redis-server, are skipped with their reason)."""
import pytest

from fastq import _bench_jobs
from fastq.jobs import App


@pytest.fixture
def app(tmp_path):
    a = App(tmp_path / "app", fsync="never")

    @a.task(name="noop")
    def noop():
        return None

    yield a
    a.close()


def test_enqueue(benchmark, app):
    noop = app.tasks["noop"]
    benchmark(noop.delay)


def test_drain_in_process(benchmark, app):
    noop = app.tasks["noop"]

    def setup():
        for _ in range(500):
            noop.delay()
        return (), {}

    benchmark.pedantic(lambda: app.run_pending(limit=500), setup=setup, rounds=5)


@pytest.mark.parametrize("tool", _bench_jobs.IMPLS)
def test_comparison_cell(tool, monkeypatch):
    why = _bench_jobs.available(tool)
    if why:
        pytest.skip(why)
    monkeypatch.setitem(_bench_jobs.N_JOBS, tool, 60)
    monkeypatch.setitem(_bench_jobs.N_LAT, tool, 3)
    rows = _bench_jobs.run([tool], quick=False)
    assert rows[0]["status"] == "ok", rows[0].get("error")
    assert rows[0]["rate"] > 0 and rows[0]["p99_us"] >= rows[0]["p50_us"] > 0
