"""The SQLite job store: records survive many `maectl` processes writing at once."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap

from orchestrator.backends import JobState
from orchestrator.store import HandleTaken, JobRecord, JobStore


def record(handle: str, **kw) -> JobRecord:
    return JobRecord(handle=handle, experiment="exp", source="jobs/exp.yaml", backend="local", state=JobState.PENDING,
                     output_dir="/out/exp/" + handle, job_dir="/home/jobs/" + handle, **kw)


def test_add_update_find(tmp_path):
    store = JobStore(tmp_path / "jobs.db")
    store.add(record("local-aaa111", overrides=["train.epochs=1"], info={"pid": 1}))
    store.add(record("local-aab222"))
    try:
        store.add(record("local-aaa111"))
        raise AssertionError("a handle is unique")
    except HandleTaken:
        pass
    job = store.update("local-aaa111", state=JobState.COMPLETED, exit_code=0)
    assert job.state is JobState.COMPLETED and job.finished_at and job.overrides == ["train.epochs=1"] and job.info == {"pid": 1}
    assert [j.handle for j in store.find("local-aa")] == ["local-aaa111", "local-aab222"]
    assert [j.handle for j in store.find("local-aab")] == ["local-aab222"]
    assert store.find("local-a_a") == []  # LIKE wildcards are literal
    assert store.count() == 2 and len(store.list(limit=1)) == 1
    with sqlite3.connect(tmp_path / "jobs.db") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


WRITER = textwrap.dedent("""
    import sys
    from orchestrator.backends import JobState
    from orchestrator.store import JobRecord, JobStore
    store = JobStore(sys.argv[1])
    worker, count = sys.argv[2], int(sys.argv[3])
    for i in range(count):
        handle = f"local-{worker}-{i:03d}"
        store.add(JobRecord(handle=handle, experiment="exp", source="s", backend="local", state=JobState.PENDING,
                            output_dir="o", job_dir="j"))
        store.update(handle, state=JobState.RUNNING, native_id=str(i))
        store.list(limit=5)  # readers interleave with writers
        store.update(handle, state=JobState.COMPLETED, exit_code=0)
""")


def test_concurrent_processes_lose_no_records(tmp_path):
    path = tmp_path / "jobs.db"
    workers, each = 6, 30
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), f"w{w}", str(each)]) for w in range(workers)]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    jobs = JobStore(path).list()
    assert len(jobs) == workers * each
    assert all(j.state is JobState.COMPLETED and j.exit_code == 0 for j in jobs)
    assert len({j.handle for j in jobs}) == workers * each
