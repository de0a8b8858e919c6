"""Pipelines: a pretraining job names the jobs that start from its final checkpoint.

    pipeline:
      then:
        - linprobe-vit-b                                   # an experiment name or path
        - {experiment: finetune-vit-b, overrides: [train.epochs=50]}

Each follow-up is a normal maectl job (own handle, output folder, MLflow run) of the same
backend, with `checkpoint.init_from = <pretraining output_dir>/final/mae.pt`. It is submitted
together with the pretraining and waits for it to complete OK (`LaunchRequest.depends_on`):
the local backend runs it after the pretraining on this machine, Ray as a Ray Job that waits
for the pretraining's, SLURM with an `afterok` dependency. A pretraining that fails or is
cancelled leaves its follow-ups CANCELLED, never run.

Tracking: a follow-up's run goes to the pretraining's MLflow experiment, nested under the
pretraining's run (its id is read from <pretraining output_dir>/mlflow_run_id when the
follow-up starts, since it does not exist at submission), and when it finishes its final
`eval/top1` (and top5, best) are logged on the pretraining run as `<follow-up>/eval/top1`:
one row per pretraining with its downstream accuracies (orchestrator/tracking.py).

Site settings (SITE_KEYS: resources, the SLURM job folder and setup, the Ray cluster, tracking)
carry over from the submission: a follow-up runs where its pretraining runs. A site key given on
the submission's command line (or by a sweep) applies to every follow-up unless the follow-up's
own `overrides:` set it; a site key that the pretraining's files set applies unless the
follow-up's files (or overrides) set it too.

Every follow-up is resolved and checked, with the pretraining, before anything is submitted;
one that cannot work (no such file, a model whose encoder does not match the pretraining's, a
backend that cannot chain jobs) stops the submission with exit 2.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .backends import JobState
from .errors import UsageError
from .experiments import COMMAND_LINE, FollowUpConfig, ResolvedExperiment, load_tree, locate
from .jobspec import PipelineLink
from .store import JobRecord, JobStore
from .submission import Prepared, launch, prepare, record_not_run

FINAL_CHECKPOINT = "final/mae.pt"  # what the engine writes at the end of a pretraining (mae_core/engine/loop.py)
# The encoder's shape: what a follow-up's model must share with the pretraining to load its weights.
_ENCODER_FIELDS = ("patch_size", "in_chans", "embed_dim", "depth", "num_heads", "mlp_ratio")


def _site_keys() -> tuple[str, ...]:
    from .resources import Resources

    return (*(f"resources.{f.name}" for f in dataclasses.fields(Resources)), "slurm.job_folder", "slurm.setup", "slurm.srun_args",
            "ray.address", "ray.storage_path", "ray.autoscaling", "tracking.enabled", "tracking.uri")


SITE_KEYS = _site_keys()


def _value(tree: dict, key: str) -> Any:
    for part in key.split("."):
        tree = tree[part]
    return tree


def site_settings(pretrain: ResolvedExperiment, stage: FollowUpConfig) -> dict[str, Any]:
    """The submission's site settings that the follow-up `stage` inherits (dotted key -> value)."""
    tree = pretrain.locator.tree  # the pretraining's merged files + overrides, with who set each key
    own = load_tree(locate(stage.experiment)[1])  # the follow-up's files alone
    own_overrides = {item.split("=", 1)[0].strip() for item in stage.overrides}
    resolved = pretrain.resolved_tree()
    inherited = {}
    for key in SITE_KEYS:
        parts = tuple(key.split("."))
        origin = tree.origins.get(parts)
        if origin is None or key in own_overrides:
            continue  # a default, or the follow-up's own override
        submitted = origin.startswith(COMMAND_LINE) or origin in tree.generated
        if not submitted and parts in own.origins:
            continue  # both files set it: the follow-up's file knows what it needs
        inherited[key] = _value(resolved, key)
    return inherited


@dataclass
class FollowUp:
    index: int
    prepared: Prepared


def final_checkpoint(resolved: ResolvedExperiment) -> str:
    return f"{resolved.run.output_dir.rstrip('/')}/{FINAL_CHECKPOINT}"


def placeholder_dependency(pretrain: Prepared) -> JobRecord:
    """The pretraining as a follow-up sees it before anything is submitted: for the checks and
    dry-runs (the real record, with the scheduler's id, replaces it at launch)."""
    request = pretrain.request
    return JobRecord(handle=request.handle, experiment=pretrain.resolved.name, source=pretrain.resolved.source_display,
                     backend=pretrain.backend.name, state=JobState.PENDING, output_dir=pretrain.resolved.run.output_dir,
                     job_dir=str(request.job_dir), native_id=None)


def prepare_followups(pretrain: Prepared, *, dry_run: bool = False, store: JobStore | None = None,
                      reserved: set[str] | None = None) -> list[FollowUp]:
    """Resolve and check every follow-up of `pretrain` (none if it has no pipeline)."""
    resolved = pretrain.resolved
    pipeline = resolved.pipeline
    if pipeline is None:
        return []
    if not pretrain.backend.supports_dependencies:
        raise resolved.locator.error("pipeline", f"the {pretrain.backend.name} backend cannot start jobs after others yet; "
                                                 f"submit the follow-ups by hand once the pretraining has completed (pipeline=null)")
    final = final_checkpoint(resolved)
    injected = {"checkpoint.init_from": final}
    if resolved.spec.tracking.enabled:
        injected["tracking.experiment"] = resolved.tracking_experiment  # the pretraining's experiment holds the results
        if resolved.spec.tracking.uri:
            injected["tracking.uri"] = resolved.spec.tracking.uri
    followups = []
    for index, stage in enumerate(pipeline.then):
        try:
            stage_injected = {**site_settings(resolved, stage), **injected}
            prepared = prepare(stage.experiment, stage.overrides, backend=resolved.spec.backend, dry_run=dry_run, store=store,
                               injected=stage_injected, injected_by=f"the pipeline of {resolved.source_display}", reserved=reserved,
                               precheck=lambda item: _check_followup(resolved, item, pretrain))
        except UsageError as err:
            raise UsageError(f"{resolved.source_display}: pipeline.then[{index}] ({stage.experiment}): {err}") from None
        followups.append(FollowUp(index, prepared))
    return followups


def _check_followup(pretrain: ResolvedExperiment, resolved: ResolvedExperiment, pretrain_prepared: Prepared):
    """Runs inside `prepare`, before the backend's checks (which may look at the dependency):
    what would make the follow-up fail only after the pretraining. Returns its dependencies."""
    if resolved.pipeline is not None:
        raise resolved.locator.error("pipeline", "a follow-up cannot have follow-ups of its own (pipelines are one level deep)")
    if resolved.sweep_axes:
        raise resolved.locator.error("sweep", "a follow-up runs once per pretraining; sweep the pretraining instead")
    mine, theirs = resolved.run.model_config(), pretrain.run.model_config()
    differs = [f for f in _ENCODER_FIELDS if getattr(mine, f) != getattr(theirs, f)]
    if differs:
        detail = ", ".join(f"{f} {getattr(mine, f)} vs {getattr(theirs, f)}" for f in differs)
        raise resolved.locator.error("model.name", f"{resolved.run.model.name} does not match the encoder that "
                                                   f"{pretrain.source_display} pretrains ({pretrain.run.model.name}): {detail}; "
                                                   f"it could not load {final_checkpoint(pretrain)}")
    return [placeholder_dependency(pretrain_prepared)]


def tag_followup(followup: Prepared, pretrain: Prepared, sweep_id: str | None) -> None:
    """What the follow-up's runner needs to find the pretraining's run and report to it."""
    followup.request.spec.pipeline = PipelineLink(after=pretrain.request.handle, after_output_dir=pretrain.resolved.run.output_dir,
                                                  stage=followup.resolved.name, sweep_id=sweep_id)


def launch_followups(pretrain_record: JobRecord, pretrain: Prepared, followups: list[FollowUp], store: JobStore, say=print,
                     *, sweep_id: str | None = None) -> list[JobRecord]:
    """Submit the follow-ups of a launched pretraining, each depending on it."""
    records = []
    for followup in followups:
        tag_followup(followup.prepared, pretrain, sweep_id)
        followup.prepared.request.depends_on = [pretrain_record]
        if pretrain_record.state == JobState.FAILED:
            records.append(record_not_run(followup.prepared, store, f"{pretrain_record.handle} failed to launch", sweep_id=sweep_id))
            continue
        records.append(launch(followup.prepared, store, say, sweep_id=sweep_id))
    return records


def render_followups(pretrain: Prepared, followups: list[FollowUp]) -> str:
    """The follow-ups' dry-runs, after the pretraining's."""
    from .submission import placeholders, render_dry_run

    parts = []
    for followup in followups:
        tag_followup(followup.prepared, pretrain, None)
        header = (f"# === then[{followup.index}]: {followup.prepared.resolved.name}, after {pretrain.request.handle} completes OK, "
                  f"from {final_checkpoint(pretrain.resolved)} ===\n")
        parts.append(placeholders(pretrain.resolved).apply(header))
        parts.append(render_dry_run(followup.prepared))
    return "".join(parts)


def submit(target: str, overrides: list[str], *, backend: str | None = None, say=print) -> tuple[JobRecord, Prepared, list[JobRecord]]:
    """`maectl submit`: the job and, if its file has a pipeline, its follow-ups (all checked first)."""
    from .store import open_store

    store = open_store()
    reserved: set[str] = set()
    prepared = prepare(target, overrides, backend=backend, store=store, reserved=reserved)
    followups = prepare_followups(prepared, store=store, reserved=reserved)
    record = launch(prepared, store, say)
    return record, prepared, launch_followups(record, prepared, followups, store, say)


__all__ = ["FINAL_CHECKPOINT", "SITE_KEYS", "FollowUp", "final_checkpoint", "launch_followups", "prepare_followups", "render_followups", "site_settings", "submit"]