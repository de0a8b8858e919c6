"""The job store: one SQLite file under $MAECTL_HOME, shared by every concurrent `maectl`.

WAL journaling lets readers (`maectl list`) run beside a writer, and a generous busy timeout
makes concurrent writers (several `maectl submit` at once) wait for each other instead of
failing. Each operation opens, runs one short transaction and closes: no process holds a lock
while it does anything slow. WAL needs a local filesystem: keep MAECTL_HOME off NFS.
"""

from __future__ import annotations

import json
import sqlite3
import time
from contextlib import closing, contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path

from .backends.states import JobState

SCHEMA_VERSION = 2
_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    handle TEXT PRIMARY KEY,
    experiment TEXT NOT NULL,
    source TEXT NOT NULL,
    backend TEXT NOT NULL,
    state TEXT NOT NULL,
    native_id TEXT,
    output_dir TEXT NOT NULL,
    job_dir TEXT NOT NULL,
    log_path TEXT,
    tracking_uri TEXT,
    overrides TEXT NOT NULL DEFAULT '[]',
    info TEXT NOT NULL DEFAULT '{}',
    exit_code INTEGER,
    message TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    finished_at REAL
);
CREATE INDEX IF NOT EXISTS jobs_created ON jobs (created_at);
"""
# Version 2: sweeps, and the links that make a job part of one or of a pipeline. Added columns
# are nullable, so that a maectl of version 1 still writes records into a version-2 store.
_SCHEMA_V2 = """
ALTER TABLE jobs ADD COLUMN sweep_id TEXT;
ALTER TABLE jobs ADD COLUMN after TEXT;
CREATE INDEX IF NOT EXISTS jobs_sweep ON jobs (sweep_id);
CREATE INDEX IF NOT EXISTS jobs_after ON jobs (after);
CREATE TABLE IF NOT EXISTS sweeps (
    sweep_id TEXT PRIMARY KEY,
    experiment TEXT NOT NULL,
    source TEXT NOT NULL,
    backend TEXT NOT NULL,
    axes TEXT NOT NULL,
    points TEXT NOT NULL DEFAULT '[]',
    overrides TEXT NOT NULL DEFAULT '[]',
    tracking_uri TEXT,
    tracking_experiment TEXT,
    parent_run_id TEXT,
    created_at REAL NOT NULL,
    closed_at REAL
);
"""
BUSY_TIMEOUT_S = 60.0


class HandleTaken(Exception):
    pass


@dataclass
class JobRecord:
    handle: str
    experiment: str
    source: str  # the experiment file, as shown to the user
    backend: str
    state: JobState
    output_dir: str
    job_dir: str  # maectl's per-job folder (job spec, logs, exit status)
    native_id: str | None = None  # pid, SLURM job id, Ray submission id
    log_path: str | None = None
    tracking_uri: str | None = None  # credentials redacted
    overrides: list[str] = field(default_factory=list)
    info: dict = field(default_factory=dict)  # backend-specific details
    exit_code: int | None = None
    message: str | None = None
    cancel_requested: bool = False
    created_at: float = 0.0
    updated_at: float = 0.0
    finished_at: float | None = None
    sweep_id: str | None = None  # the sweep this job is a point of (or a follow-up of a point of)
    after: str | None = None  # pipelines: the job whose final checkpoint this one starts from

    def to_json(self) -> dict:
        """The record as `maectl status --json` shows it (credentials were redacted when it was stored)."""
        out = {name: getattr(self, name) for name in _COLUMNS}
        out["state"] = self.state.value
        return out


@dataclass
class SweepRecord:
    """One `maectl sweep`: its grid, and which job runs each point."""

    sweep_id: str
    experiment: str
    source: str
    backend: str
    axes: list[list] = field(default_factory=list)  # [[dotted key, [values...]], ...] in grid order
    points: list[dict] = field(default_factory=list)  # [{"handle": ..., "values": {key: value}}, ...]
    overrides: list[str] = field(default_factory=list)  # the fixed ones, shared by every point
    tracking_uri: str | None = None  # credentials redacted
    tracking_experiment: str | None = None
    parent_run_id: str | None = None  # the MLflow run that groups the points' runs
    created_at: float = 0.0
    closed_at: float | None = None  # when the parent run was marked ended


_COLUMNS = [f.name for f in fields(JobRecord)]
_SWEEP_COLUMNS = [f.name for f in fields(SweepRecord)]
_SWEEP_JSON = ("axes", "points", "overrides")


def _to_row(record: JobRecord) -> dict:
    row = {name: getattr(record, name) for name in _COLUMNS}
    row["state"] = record.state.value
    row["overrides"] = json.dumps(record.overrides)
    row["info"] = json.dumps(record.info, sort_keys=True)
    row["cancel_requested"] = int(record.cancel_requested)
    return row


def _from_row(row: sqlite3.Row) -> JobRecord:
    values = dict(row)
    values["state"] = JobState(values["state"])
    values["overrides"] = json.loads(values["overrides"])
    values["info"] = json.loads(values["info"])
    values["cancel_requested"] = bool(values["cancel_requested"])
    return JobRecord(**values)


class JobStore:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._transaction() as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version < SCHEMA_VERSION:
                # executescript() would commit our transaction first; run the statements one by one.
                # A store of an older version is migrated in place, inside this one transaction.
                for script in (_SCHEMA, _SCHEMA_V2)[version:]:
                    for statement in filter(str.strip, script.split(";")):
                        db.execute(statement)
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        db.row_factory = sqlite3.Row
        db.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = NORMAL")  # durable across process crashes, which is what matters here
        return db

    @contextmanager
    def _transaction(self):
        # BEGIN IMMEDIATE takes the write lock up front, so two writers queue on the busy
        # timeout rather than one failing later when it upgrades a read lock.
        with closing(self._connect()) as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def add(self, record: JobRecord) -> None:
        now = time.time()
        record.created_at = record.created_at or now
        record.updated_at = now
        row = _to_row(record)
        try:
            with self._transaction() as db:
                db.execute(f"INSERT INTO jobs ({', '.join(row)}) VALUES ({', '.join(':' + k for k in row)})", row)
        except sqlite3.IntegrityError as err:
            raise HandleTaken(record.handle) from err

    def update(self, handle: str, **changes) -> JobRecord:
        if "state" in changes:
            changes["state"] = JobState(changes["state"]).value
            if JobState(changes["state"]).terminal:
                changes.setdefault("finished_at", time.time())
        if "info" in changes:
            changes["info"] = json.dumps(changes["info"], sort_keys=True)
        if "cancel_requested" in changes:
            changes["cancel_requested"] = int(changes["cancel_requested"])
        changes["updated_at"] = time.time()
        unknown = set(changes) - set(_COLUMNS)
        if unknown:
            raise KeyError(f"unknown job fields: {sorted(unknown)}")
        with self._transaction() as db:
            cursor = db.execute(f"UPDATE jobs SET {', '.join(f'{k} = :{k}' for k in changes)} WHERE handle = :handle", {**changes, "handle": handle})
            if cursor.rowcount != 1:
                raise KeyError(handle)
            row = db.execute("SELECT * FROM jobs WHERE handle = ?", (handle,)).fetchone()
        return _from_row(row)

    def get(self, handle: str) -> JobRecord | None:
        with closing(self._connect()) as db:
            row = db.execute("SELECT * FROM jobs WHERE handle = ?", (handle,)).fetchone()
        return _from_row(row) if row else None

    def find(self, prefix: str) -> list[JobRecord]:
        """Jobs whose handle is `prefix` exactly, else those that start with it."""
        exact = self.get(prefix)
        if exact:
            return [exact]
        pattern = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        with closing(self._connect()) as db:
            rows = db.execute("SELECT * FROM jobs WHERE handle LIKE ? ESCAPE '\\' ORDER BY created_at", (pattern,)).fetchall()
        return [_from_row(r) for r in rows]

    def list(self, limit: int | None = None, experiment: str | None = None) -> list[JobRecord]:
        query, args = "SELECT * FROM jobs", []
        if experiment:
            query += " WHERE experiment = ?"
            args.append(experiment)
        query += " ORDER BY created_at DESC, handle"
        if limit:
            query += f" LIMIT {int(limit)}"
        with closing(self._connect()) as db:
            return [_from_row(r) for r in db.execute(query, args).fetchall()]

    def count(self) -> int:
        with closing(self._connect()) as db:
            return db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0]

    def jobs_where(self, *, sweep_id: str | None = None, after: str | None = None) -> list[JobRecord]:
        """A sweep's jobs, or the follow-ups of a job, oldest first."""
        column, value = ("sweep_id", sweep_id) if sweep_id is not None else ("after", after)
        with closing(self._connect()) as db:
            rows = db.execute(f"SELECT * FROM jobs WHERE {column} = ? ORDER BY created_at, handle", (value,)).fetchall()
        return [_from_row(r) for r in rows]

    # -- sweeps ------------------------------------------------------------------------------------
    def add_sweep(self, sweep: SweepRecord) -> None:
        sweep.created_at = sweep.created_at or time.time()
        row = {name: getattr(sweep, name) for name in _SWEEP_COLUMNS}
        for name in _SWEEP_JSON:
            row[name] = json.dumps(row[name])
        try:
            with self._transaction() as db:
                db.execute(f"INSERT INTO sweeps ({', '.join(row)}) VALUES ({', '.join(':' + k for k in row)})", row)
        except sqlite3.IntegrityError as err:
            raise HandleTaken(sweep.sweep_id) from err

    def update_sweep(self, sweep_id: str, **changes) -> SweepRecord:
        unknown = set(changes) - set(_SWEEP_COLUMNS)
        if unknown:
            raise KeyError(f"unknown sweep fields: {sorted(unknown)}")
        changes = {k: json.dumps(v) if k in _SWEEP_JSON else v for k, v in changes.items()}
        with self._transaction() as db:
            cursor = db.execute(f"UPDATE sweeps SET {', '.join(f'{k} = :{k}' for k in changes)} WHERE sweep_id = :sweep_id",
                                {**changes, "sweep_id": sweep_id})
            if cursor.rowcount != 1:
                raise KeyError(sweep_id)
            row = db.execute("SELECT * FROM sweeps WHERE sweep_id = ?", (sweep_id,)).fetchone()
        return _sweep_from_row(row)

    def get_sweep(self, sweep_id: str) -> SweepRecord | None:
        with closing(self._connect()) as db:
            row = db.execute("SELECT * FROM sweeps WHERE sweep_id = ?", (sweep_id,)).fetchone()
        return _sweep_from_row(row) if row else None

    def find_sweeps(self, prefix: str) -> list[SweepRecord]:
        """Sweeps whose id is `prefix` exactly, else those that start with it."""
        exact = self.get_sweep(prefix)
        if exact:
            return [exact]
        pattern = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        with closing(self._connect()) as db:
            rows = db.execute("SELECT * FROM sweeps WHERE sweep_id LIKE ? ESCAPE '\\' ORDER BY created_at", (pattern,)).fetchall()
        return [_sweep_from_row(r) for r in rows]

    def list_sweeps(self, limit: int | None = None) -> list[SweepRecord]:
        query = "SELECT * FROM sweeps ORDER BY created_at DESC, sweep_id"
        if limit:
            query += f" LIMIT {int(limit)}"
        with closing(self._connect()) as db:
            return [_sweep_from_row(r) for r in db.execute(query).fetchall()]


def _sweep_from_row(row: sqlite3.Row) -> SweepRecord:
    values = dict(row)
    for name in _SWEEP_JSON:
        values[name] = json.loads(values[name])
    return SweepRecord(**values)


def open_store() -> JobStore:
    from .locations import maectl_home

    return JobStore(maectl_home() / "jobs.db")
