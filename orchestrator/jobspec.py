"""The job spec: what `maectl submit` hands to every rank of a job (`job.yaml`), typed.

    JobSpec  (format maectl.job/1)
      handle, experiment, source, backend, overrides
      submitted   who/what submitted it: user, git commit, dirty, maectl version
      tracking    MLflow: enabled, uri, experiment, run_name
      resolved    the whole validated experiment (maectl's sections + the engine's RunConfig tree)
      sweep       a sweep point's place in its grid (None for a single job)
      pipeline    a follow-up's link to the pretraining it starts from (None otherwise)

Written by the backends (owner-only: a tracking URI may hold a password), read by
`orchestrator.runner` on every rank, by `orchestrator.ray_entry` and by the SLURM task. The
YAML layout is the plain-dict form (`to_dict`), which orchestrator/tracking.py reads as it is.
Standard library + PyYAML only: the task side imports it before torch.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

SPEC_FORMAT = "maectl.job/1"
SPEC_FILE = "job.yaml"


class JobSpecError(ValueError):
    """A job.yaml that is not a maectl job spec (wrong format, missing section)."""


@dataclass
class Submitted:
    user: str
    git_commit: str | None
    git_dirty: bool
    maectl_version: str


@dataclass
class Tracking:
    enabled: bool
    uri: str
    experiment: str
    run_name: str


@dataclass
class SweepPoint:
    id: str
    index: int  # 0-based, in grid order
    points: int
    values: dict[str, Any]
    label: str
    parent_run_id: str | None = None


@dataclass
class PipelineLink:
    after: str  # the pretraining's handle
    after_output_dir: str
    stage: str  # this follow-up's experiment name
    sweep_id: str | None = None


@dataclass
class JobSpec:
    handle: str
    experiment: str
    source: str
    backend: str
    overrides: list[str]
    submitted: Submitted
    tracking: Tracking
    resolved: dict  # ResolvedExperiment.resolved_tree(): plain data, validated at submission
    sweep: SweepPoint | None = None
    pipeline: PipelineLink | None = None
    format: str = SPEC_FORMAT

    # -- what the task side asks of it -----------------------------------------------------------
    @property
    def output_dir(self) -> str:
        return self.resolved["output_dir"]

    def run_sections(self, names) -> dict:
        """The resolved tree's engine sections (`names`: RunConfig's field names)."""
        wanted = set(names)
        return {k: v for k, v in self.resolved.items() if k in wanted}

    # -- plain form --------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        out = {
            "format": self.format, "handle": self.handle, "experiment": self.experiment, "source": self.source,
            "backend": self.backend, "overrides": list(self.overrides), "submitted": dataclasses.asdict(self.submitted),
            "tracking": dataclasses.asdict(self.tracking), "resolved": self.resolved,
        }
        if self.sweep is not None:
            out["sweep"] = dataclasses.asdict(self.sweep)
        if self.pipeline is not None:
            out["pipeline"] = {k: v for k, v in dataclasses.asdict(self.pipeline).items() if v is not None}
        return out

    @classmethod
    def from_dict(cls, data: dict) -> JobSpec:
        if not isinstance(data, dict):
            raise JobSpecError(f"a job spec is a mapping, got {type(data).__name__}")
        if data.get("format") != SPEC_FORMAT:
            raise JobSpecError(f"format {data.get('format')!r} is not {SPEC_FORMAT!r} (a job spec of another maectl version?)")
        try:
            return cls(
                handle=data["handle"], experiment=data["experiment"], source=data.get("source", ""), backend=data["backend"],
                overrides=list(data.get("overrides") or []), submitted=Submitted(**data["submitted"]), tracking=Tracking(**data["tracking"]),
                resolved=data["resolved"], sweep=SweepPoint(**data["sweep"]) if data.get("sweep") else None,
                pipeline=PipelineLink(**data["pipeline"]) if data.get("pipeline") else None, format=data["format"],
            )
        except (KeyError, TypeError) as err:
            raise JobSpecError(f"job spec: {err}") from None

    @classmethod
    def coerce(cls, spec: JobSpec | dict) -> JobSpec:
        return spec if isinstance(spec, JobSpec) else cls.from_dict(spec)

    def dump(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=False, width=120)

    @classmethod
    def load(cls, location: str) -> JobSpec:
        """From a path or any fsspec URL (Ray's working_dir, a shared folder)."""
        if "://" in location and not location.startswith("file://"):
            import fsspec

            with fsspec.open(location, "r") as f:
                return cls.from_dict(yaml.safe_load(f))
        with open(location.removeprefix("file://")) as f:
            return cls.from_dict(yaml.safe_load(f))

    def with_changes(self, **changes) -> JobSpec:
        return dataclasses.replace(self, **changes)


def write_private(path: str | Path, text: str) -> None:
    """Owner-only, atomic: a job spec may hold a tracking URI with a password in it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


__all__ = ["JobSpec", "JobSpecError", "PipelineLink", "SPEC_FILE", "SPEC_FORMAT", "Submitted", "SweepPoint", "Tracking", "write_private"]
