"""From a validated experiment to a recorded, launched job: the steps `maectl submit` takes.

    resolve (validate, derive) -> LaunchRequest (JobSpec + env) -> backend.check -> backend.plan
        -> dry-run: render the plan and stop           (nothing written, nothing recorded)
        -> record PENDING -> backend.launch(that plan) -> record the backend's id and state
"""

from __future__ import annotations

import getpass
import os
import secrets
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from . import __version__, locations
from .backends import Backend, JobState, LaunchRequest, get_backend
from .backends.base import Placeholders
from .experiments import HANDLE_PLACEHOLDER, ResolvedExperiment, check_shards, resolve
from .jobspec import JobSpec, Submitted, Tracking
from .plan import LaunchPlan, render
from .redact import scrub_text
from .store import HandleTaken, JobRecord, JobStore, open_store

_HANDLE_ATTEMPTS = 5


def new_handle(backend: str) -> str:
    """Short, stable, unique in practice: 16M per backend; the store rejects a repeat."""
    return f"{backend}-{secrets.token_hex(3)}"


def git_state(root: Path = locations.PROJECT_ROOT) -> tuple[str | None, bool]:
    """(commit, has uncommitted changes) of the checkout maectl runs from, if it is one."""
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if commit.returncode != 0:
            return None, False
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=10)
        return commit.stdout.strip(), bool(dirty.stdout.strip())
    except (OSError, subprocess.TimeoutExpired):
        return None, False


def default_tracking_uri(output_root: str) -> str:
    """A local SQLite store in the output folder, viewable with `mlflow ui --backend-store-uri URI`."""
    if "://" in output_root:  # SQLite cannot live on s3://
        return f"sqlite:///{locations.maectl_home() / 'mlflow.db'}"
    return f"sqlite:///{os.path.join(output_root, 'mlflow.db')}"


def tracking_uri(resolved: ResolvedExperiment) -> str:
    return resolved.spec.tracking.uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(resolved.output_root)


def mlflow_ui_hint(uri: str) -> str:
    if uri.startswith("sqlite:") or uri.startswith("file:"):
        return f"mlflow ui --backend-store-uri {uri}"
    return f"open {scrub_text(uri)} in a browser"


def job_dir(handle: str) -> Path:
    return locations.maectl_home() / "jobs" / handle


def build_request(resolved: ResolvedExperiment, *, dry_run: bool = False) -> LaunchRequest:
    if dry_run:
        # Identity tokens instead of values: a dry-run rendering is the same on every machine.
        user, (commit, dirty) = "<user>", ("<git_commit>", False)
    else:
        user, (commit, dirty) = getpass.getuser(), git_state()
    spec = JobSpec(
        handle=resolved.handle, experiment=resolved.name, source=resolved.source_display, backend=resolved.spec.backend,
        overrides=[scrub_text(o) for o in resolved.overrides],
        submitted=Submitted(user=user, git_commit=commit, git_dirty=dirty, maectl_version=__version__),
        tracking=Tracking(enabled=resolved.spec.tracking.enabled, uri=tracking_uri(resolved), experiment=resolved.tracking_experiment,
                          run_name=resolved.handle),
        resolved=resolved.resolved_tree(),
    )
    return LaunchRequest(handle=resolved.handle, experiment=resolved, spec=spec, job_dir=job_dir(resolved.handle))


def placeholders(resolved: ResolvedExperiment) -> Placeholders:
    mapping = {
        resolved.output_root: "<output_root>",
        str(locations.maectl_home()): "<maectl_home>",
        sys.executable: "<python>",
        str(locations.PROJECT_ROOT): "<project>",
    }
    cwd = os.getcwd()
    if cwd not in mapping:
        mapping[cwd] = "<cwd>"
    return Placeholders(mapping)


def ensure_demo_data(resolved: ResolvedExperiment, say=print) -> None:
    """The built-in dataset is generated on first use, into the output root."""
    from mae_core.data import ManifestError, read_manifest

    url = resolved.run.data.url
    try:
        read_manifest(url, "train")
        read_manifest(url, "val")
        return
    except ManifestError:
        pass
    from mae_core.data.demo import build_demo_shards

    say(f"generating the built-in demo dataset in {url} (first use only) ...")
    manifests = build_demo_shards(f"{url}-images", url)
    say(f"  {manifests['train'].num_samples} training / {manifests['val'].num_samples} validation images, "
        f"{manifests['train'].num_classes} classes, {len(manifests['train'].shards)} training shards")


@dataclass
class Prepared:
    resolved: ResolvedExperiment
    backend: Backend
    request: LaunchRequest


def prepare(target: str, overrides: list[str], *, backend: str | None = None, dry_run: bool = False,
            store: JobStore | None = None, injected: dict | None = None, injected_by: str = "maectl",
            reserved: set[str] | None = None, precheck=None) -> Prepared:
    """Everything up to (not including) launching: UsageError on any problem, nothing recorded.

    `injected` (dotted key -> value) is what a sweep point or a pipeline sets on top of the
    overrides; `reserved` holds handles already given to jobs prepared alongside (not recorded
    yet); `precheck(resolved)`, if given, checks the job before its backend does and returns the
    records of the jobs it depends on (orchestrator/pipelines.py)."""
    def make_handle(name: str) -> str:
        for _ in range(_HANDLE_ATTEMPTS):
            handle = new_handle(name)
            if (store is None or store.get(handle) is None) and handle not in (reserved or ()):
                if reserved is not None:
                    reserved.add(handle)
                return handle
        raise RuntimeError("could not find a free job handle")

    resolved = resolve(target, overrides, backend=backend, make_handle=None if dry_run else make_handle,
                       injected=injected, injected_by=injected_by)
    if resolved.sweep_axes and injected is None:
        points = 1
        for _, values in resolved.sweep_axes:
            points *= len(values)
        raise resolved.locator.error("sweep", f"this experiment is a sweep of {points} point(s) over {', '.join(k for k, _ in resolved.sweep_axes)}: "
                                              f"run it with `maectl sweep {resolved.name}`, or submit one configuration with sweep=null")
    chosen = get_backend(resolved.spec.backend)
    request = build_request(resolved, dry_run=dry_run)
    if precheck is not None:
        request.depends_on = list(precheck(resolved) or [])
    chosen.check(request)
    return Prepared(resolved, chosen, request)


def plan(prepared: Prepared) -> LaunchPlan:
    """The plan of a prepared job as it stands now (after a sweep or pipeline has tagged its spec)."""
    return prepared.backend.plan(prepared.request)


def render_dry_run(prepared: Prepared) -> str:
    text = render(plan(prepared))
    if prepared.resolved.uses_demo_data:
        text = f"# the built-in demo dataset would be generated in {prepared.resolved.run.data.url} if absent\n" + text
    return placeholders(prepared.resolved).apply(text)


def _prepare_data(resolved: ResolvedExperiment, say) -> None:
    if resolved.uses_demo_data:
        ensure_demo_data(resolved, say)
        if resolved.train_images is None:  # not checked at validation: it did not exist yet
            check_shards(resolved)


def _record(prepared: Prepared, store: JobStore, sweep_id: str | None) -> JobRecord:
    """Store the job as PENDING, before its backend hears of it."""
    resolved, request = prepared.resolved, prepared.request
    record = JobRecord(
        handle=request.handle, experiment=resolved.name, source=resolved.source_display, backend=prepared.backend.name,
        state=JobState.PENDING, output_dir=resolved.run.output_dir, job_dir=str(request.job_dir),
        tracking_uri=scrub_text(request.spec.tracking.uri) if request.spec.tracking.enabled else None,
        overrides=request.spec.overrides, sweep_id=sweep_id,
        after=request.depends_on[0].handle if request.depends_on else None,
    )
    try:
        store.add(record)
    except HandleTaken:  # two submissions drew the same handle within milliseconds
        raise RuntimeError(f"job handle {record.handle} was taken concurrently; submit again") from None
    return record


def launch(prepared: Prepared, store: JobStore, say=print, *, sweep_id: str | None = None) -> JobRecord:
    """Record the job, then start it: its plan, built once, is what the backend executes. A
    launch failure leaves a FAILED record saying why."""
    _prepare_data(prepared.resolved, say)
    launch_plan = plan(prepared)
    record = _record(prepared, store, sweep_id)
    try:
        submitted = prepared.backend.launch(launch_plan)
    except Exception as err:
        store.update(record.handle, state=JobState.FAILED, message=f"launch failed: {scrub_text(str(err))}")
        raise
    return store.update(record.handle, state=submitted.state, native_id=submitted.native_id, log_path=submitted.log_path, info=submitted.info)


def launch_array(prepared: list[Prepared], store: JobStore, say=print, *, sweep_id: str | None = None) -> list[JobRecord]:
    """Record several jobs of one backend, then start them together (`Backend.plan_many` /
    `launch_many`: a SLURM job array where the backend makes one). A point that fails to launch
    is recorded FAILED with the reason; the others run."""
    if not prepared:
        return []
    for item in prepared:
        _prepare_data(item.resolved, say)
    backend = prepared[0].backend
    plans = backend.plan_many([item.request for item in prepared])
    records = [_record(item, store, sweep_id) for item in prepared]
    try:
        results = backend.launch_many(plans)
    except Exception as err:
        for record in records:
            store.update(record.handle, state=JobState.FAILED, message=f"launch failed: {scrub_text(str(err))}")
        raise
    out = []
    for record, submitted in zip(records, results):
        message = f"launch failed: {submitted.info['error']}" if submitted.state == JobState.FAILED and submitted.info.get("error") else None
        out.append(store.update(record.handle, state=submitted.state, native_id=submitted.native_id, log_path=submitted.log_path,
                                info=submitted.info, message=message))
    return out


def record_not_run(prepared: Prepared, store: JobStore, reason: str, *, sweep_id: str | None = None) -> JobRecord:
    """A job that will never start (what it follows failed to launch): recorded CANCELLED, saying why."""
    record = _record(prepared, store, sweep_id)
    return store.update(record.handle, state=JobState.CANCELLED, message=f"not run: {reason}")


def submit(target: str, overrides: list[str], *, backend: str | None = None, say=print) -> tuple[JobRecord, Prepared]:
    store = open_store()
    prepared = prepare(target, overrides, backend=backend, store=store)
    return launch(prepared, store, say), prepared


def refresh(record: JobRecord, store: JobStore) -> JobRecord:
    """Ask the backend for the state of a job that has not ended, and store the answer."""
    if record.state.terminal:
        return record
    try:
        status = get_backend(record.backend).status(record)
    except Exception as err:  # noqa: BLE001 — a scheduler that cannot be asked is UNKNOWN, not a crash
        return store.update(record.handle, state=JobState.UNKNOWN, message=scrub_text(str(err)))
    if status.state == record.state and status.exit_code == record.exit_code:
        return record
    changes = {"state": status.state, "exit_code": status.exit_code, "message": status.message}
    if status.finished_at and status.state.terminal:
        changes["finished_at"] = status.finished_at
    return store.update(record.handle, **changes)


def find_job(store: JobStore, handle: str) -> JobRecord:
    from .errors import UsageError

    matches = store.find(handle)
    if not matches:
        raise UsageError(f"no job {handle!r}; `maectl list` shows the submitted jobs")
    if len(matches) > 1:
        raise UsageError(f"{handle!r} matches several jobs: {', '.join(m.handle for m in matches[:5])}")
    return matches[0]


__all__ = ["HANDLE_PLACEHOLDER", "Prepared", "build_request", "find_job", "launch", "launch_array", "plan", "prepare", "record_not_run",
           "refresh", "render_dry_run", "submit"]
