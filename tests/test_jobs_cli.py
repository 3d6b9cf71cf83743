"""The jobs command line: `python -m fastq worker MODULE:APP` (a pool that
drains on SIGTERM and exits 0) and `python -m fastq jobs ls|stat|retry|purge`."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

APP = textwrap.dedent("""
    from fastq.jobs import App, Backoff
    app = App({path!r})

    @app.task(name="add")
    def add(a, b):
        return a + b

    @app.task(name="boom", max_deliveries=2, retry=Backoff(initial=0.01, maximum=0.01, jitter=0))
    def boom(x):
        raise ValueError(f"boom {{x}}")
""")


def run(*args, cwd, check=True, timeout=60):
    env = dict(os.environ, PYTHONPATH=str(cwd) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.run([sys.executable, "-m", "fastq", *args], cwd=cwd, env=env, capture_output=True, text=True,
                       timeout=timeout)
    if check:
        assert p.returncode == 0, p.stderr
    return p


@pytest.fixture
def appdir(tmp_path):
    (tmp_path / "jobsapp.py").write_text(APP.format(path=str(tmp_path / "data")))
    sys.path.insert(0, str(tmp_path))
    import importlib
    mod = importlib.import_module("jobsapp")
    yield tmp_path, mod
    mod.app.close()
    sys.path.remove(str(tmp_path))
    sys.modules.pop("jobsapp", None)


def test_worker_runs_jobs_and_drains_on_sigterm(appdir):
    cwd, mod = appdir
    adds = [mod.add.delay(i, i) for i in range(50)]
    booms = [mod.boom.delay(i) for i in range(3)]
    env = dict(os.environ, PYTHONPATH=str(cwd) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.Popen([sys.executable, "-m", "fastq", "worker", "jobsapp:app", "--processes", "2"], cwd=cwd,
                         env=env, stderr=subprocess.PIPE, text=True)
    try:
        assert [j.wait(timeout=30) for j in adds] == [2 * i for i in range(50)]
        deadline = time.monotonic() + 30
        while any(j.status() != "dead" for j in booms) and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        p.send_signal(signal.SIGTERM)
        err = p.communicate(timeout=30)[1]
    assert p.returncode == 0, err
    assert "succeeded" in err and "dead after 2 attempt(s): ValueError: boom 0" in err   # one line per outcome
    assert "draining" in err

    ls = json.loads(run("jobs", "ls", str(cwd / "data"), "--json", cwd=cwd).stdout)
    assert ls[0]["queue"] == "default" and ls[0]["results"] == {"succeeded": 50, "dead": 3}
    assert ls[0]["dead_pending"] == 3 and ls[0]["backlog"] == 0 and ls[0]["workers"] == 0
    assert "QUEUE" in run("jobs", "ls", str(cwd / "data"), cwd=cwd).stdout
    stat = run("jobs", "stat", "jobsapp:app", cwd=cwd).stdout     # an app spec works too
    assert "dead pending   3" in stat

    r = run("jobs", "retry", str(cwd / "data"), booms[0].id, "--json", cwd=cwd)
    assert json.loads(r.stdout)["count"] == 1
    assert json.loads(run("jobs", "ls", str(cwd / "data"), "--json", cwd=cwd).stdout)[0]["backlog"] == 1
    bad = run("jobs", "retry", str(cwd / "data"), adds[0].id, cwd=cwd, check=False)
    assert bad.returncode == 2 and "not dead jobs" in bad.stderr
    out = run("jobs", "purge", str(cwd / "data"), "--results", "--dead", cwd=cwd).stdout
    assert "deleted 53 stored result(s); purged 2 dead job(s) of default" in out
    ls = json.loads(run("jobs", "ls", str(cwd / "data"), "--json", cwd=cwd).stdout)
    assert ls[0]["results"] == {} and ls[0]["dead_pending"] == 0


def test_errors_are_one_line(appdir, tmp_path):
    cwd, _ = appdir
    for args, what in ((["worker", "nonsense"], "MODULE:ATTRIBUTE"), (["worker", "jobsapp:nope"], "nope"),
                       (["worker", "jobsapp:app", "--autoscale", "x"], "LOW:HIGH"),
                       (["jobs", "ls", str(tmp_path / "missing")], "no fastq.jobs app"),
                       (["jobs", "retry", str(cwd / "data")], "job ids")):
        p = run(*args, cwd=cwd, check=False)
        assert p.returncode == 2 and what in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr


def test_job_metrics(appdir):
    from fastq import metrics
    cwd, mod = appdir
    for i in range(4):
        mod.add.delay(i, 1)
    mod.boom.delay(0)
    while mod.app.run_pending(timeout=0.05):
        time.sleep(0.02)
    col = metrics.FastqCollector([str(cwd / "data")])
    try:
        got = {(m, tuple(sorted(lab.items()))): v for m, lab, v in metrics.samples(col._sources)}
    finally:
        col.close()
    lab = (("app", str(cwd / "data")), ("queue", "default"))
    assert got[("fastq_jobs_up", (("app", str(cwd / "data")),))] == 1
    assert got[("fastq_jobs_enqueued_total", lab)] == 5
    assert got[("fastq_jobs_backlog", lab)] == 0
    assert got[("fastq_jobs_attempts_total", lab)] == 6       # 4 adds, boom twice
    assert got[("fastq_jobs_dead_total", lab)] == 1
    assert got[("fastq_jobs_results", lab + (("status", "succeeded"),))] == 4
    assert all(m in metrics.METRICS for m, _ in got)
    pytest.importorskip("prometheus_client")
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families
    registry = CollectorRegistry()
    col = metrics.FastqCollector([str(cwd / "data")])
    registry.register(col)
    try:
        fams = {f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())}
    finally:
        col.close()
    for mname, (kind, _doc, where) in metrics.METRICS.items():   # every jobs metric, with its type
        if where == "j":
            assert fams[mname[:-len("_total")] if kind == "counter" else mname].type == kind
