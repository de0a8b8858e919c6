"""The launch plan: everything a backend will do to start one job, as data.

    validated experiment (ResolvedExperiment) + JobSpec  ->  LaunchRequest
    backend.plan(request)                                ->  LaunchPlan   (pure: nothing written or contacted)
    render(plan)                                         ->  what `--dry-run` prints
    backend.launch(plan)                                 ->  Submitted    (writes plan.files, starts plan.command /
                                                                           plan.script / plan.job, nothing else)

`submit` builds the plan once and hands that same object to `launch`, so what a dry-run shows
is what runs. A sweep is a list of plans (`backend.plan_many`: on SLURM one job array, whose
plans share `group` and one script); a pipeline's follow-ups are plans built once the job they
follow has a scheduler id (their `depends_on`).

The plan holds real values (credentials in the environment, the interpreter's path); `render`
redacts secrets, and the caller replaces machine paths by placeholders (submission.placeholders).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

import yaml

from .redact import REDACTED, is_secret_name, scrub_text

# Inherited variables that a job typically needs: a dry-run of a backend whose job inherits the
# submitting environment (local, SLURM) shows them, redacted, so that the user sees which
# credentials and endpoints the job will use.
PASSED_ENV_PREFIXES = ("AWS_", "MLFLOW_", "FSSPEC_", "S3_", "HF_", "CUDA_VISIBLE_DEVICES", "NCCL_")
FILE_MARKER = "# --- file "
END_MARKER = "# --- end of "


@dataclass(frozen=True)
class LaunchPlan:
    backend: str
    handle: str
    summary: tuple[str, ...]  # what the backend says about the job, one line each (rendered as comments)
    files: Mapping[str, str]  # path -> content, written (owner-only) before anything starts
    env: Mapping[str, str]  # what the job's processes get set (on top of the submitting environment if `inherits_env`)
    inherits_env: bool = True  # local, SLURM: the job starts from the submitting environment; Ray: only `env` travels
    command: tuple[str, ...] = ()  # local: the argv run in `cwd`; Ray: the job's entrypoint
    cwd: str | None = None
    script: str | None = None  # SLURM: the exact sbatch script
    job: Mapping | None = None  # Ray: JobSubmissionClient.submit_job's arguments
    native: Mapping = field(default_factory=dict)  # the scheduler's own parameters, in its own names
    log: str | None = None  # where rank 0's output goes (`maectl logs`); <job id> where the scheduler names it
    spec_path: str | None = None  # which of `files` is the job spec
    depends_on: tuple[str, ...] = ()  # handles of the jobs this one waits for
    group: str | None = None  # plans launched together as one unit (a SLURM job array's folder)
    label: str | None = None  # a sweep point's label

    def file_text(self, suffix: str) -> str:
        """The content of the one file whose path ends with `suffix`."""
        (path,) = [p for p in self.files if p.endswith(suffix)]
        return self.files[path]


def shown_environment(env: Mapping[str, str], *, inherited: bool) -> dict[str, str]:
    """The variables a rendering shows: relevant inherited ones (if the job inherits the
    submitting environment), then what the plan sets; secrets redacted."""
    shown = {k: os.environ[k] for k in sorted(os.environ) if k.startswith(PASSED_ENV_PREFIXES)} if inherited else {}
    shown.update(env)
    return {k: (REDACTED if is_secret_name(k) else scrub_text(str(v))) for k, v in shown.items()}


def shell_quote(word: str) -> str:
    import shlex

    return shlex.quote(word) if word and not word.startswith("<") else (word or "''")


def dump_yaml(tree) -> str:
    """YAML with no folded lines: an entrypoint is read (and copied) as one line."""
    return yaml.safe_dump(tree, sort_keys=False, default_flow_style=False, width=10_000).rstrip()


def _redacted_job(job: Mapping) -> dict:
    """Ray's submission: its env_vars are the plan's environment, shown once above."""
    out = dict(job)
    runtime_env = dict(out.get("runtime_env") or {})
    if "env_vars" in runtime_env:
        runtime_env["env_vars"] = "<the environment above>"
    out["runtime_env"] = runtime_env
    return out


def render_env(plan: LaunchPlan) -> list[str]:
    title = ("# environment: the submitting one, and" if plan.inherits_env else "# environment (nothing else is inherited):")
    return [title, *(f"#   {k}={shell_quote(v)}" for k, v in shown_environment(plan.env, inherited=plan.inherits_env).items())]


def render_files(plan: LaunchPlan, *, contents: bool = True) -> list[str]:
    lines = []
    for path, text in plan.files.items():
        lines.append(f"{FILE_MARKER}{path} ---")
        if contents:
            lines += [scrub_text(text).rstrip(), f"{END_MARKER}{path} ---"]
    return lines


def render(plan: LaunchPlan, *, contents: bool = True, env: bool = True) -> str:
    """The plan as `--dry-run` prints it: summary, environment, what is started, scheduler
    parameters, output, then each file written (with `contents`)."""
    lines = [f"# {plan.backend} backend: {plan.summary[0]}", *(f"# {line}" for line in plan.summary[1:])]
    if plan.depends_on:
        lines.append(f"# starts after {', '.join(plan.depends_on)} completed OK")
    if env:
        lines += render_env(plan)
    if plan.command and plan.job is None:  # Ray's entrypoint is shown in its job submission
        where = f" (in {plan.cwd})" if plan.cwd else ""
        lines += [f"# command{where}:", " ".join(shell_quote(w) for w in plan.command)]
    if plan.script is not None:
        lines += ["# --- sbatch script ---", scrub_text(plan.script).rstrip()]
    if plan.job is not None:
        lines += ["# --- job submission ---", scrub_text(dump_yaml(_redacted_job(plan.job)))]
    if plan.native:
        lines += [f"# --- {plan.backend} parameters ---", scrub_text(dump_yaml(dict(plan.native)))]
    if plan.log:
        lines.append(f"# output: {plan.log}")
    lines += render_files(plan, contents=contents)
    return "\n".join(lines) + "\n"


def render_many(plans: list[LaunchPlan], *, contents: bool = True) -> str:
    """A sweep's plans. Plans of one group (a SLURM job array) share their script: it is shown
    once, then each point's environment and files."""
    if not plans:
        return ""
    n = len(plans)
    grouped = n > 1 and plans[0].group is not None and all(p.group == plans[0].group and p.script == plans[0].script for p in plans)
    if not grouped:
        return "".join(f"# === {i + 1}/{n}: {p.label or p.handle} ===\n{render(p, contents=contents)}" for i, p in enumerate(plans))
    first = plans[0]
    shared = dataclasses.replace(first, native={k: v for k, v in first.native.items() if k != "array"}, log=None)
    head = render(shared, contents=False, env=False)
    head = "\n".join(line for line in head.splitlines() if not line.startswith(FILE_MARKER)) + "\n"
    parts = [head]
    for i, plan in enumerate(plans):
        lines = [f"# === {i + 1}/{n}: {plan.label or plan.handle} (array task {i}) ===", *render_env(plan)]
        if plan.log:
            lines.append(f"# output: {plan.log}")
        lines += render_files(plan, contents=contents)
        parts.append("\n".join(lines) + "\n")
    return "".join(parts)


def write_files(plan: LaunchPlan) -> None:
    """What every backend's launch does first: the plan's files, owner-only."""
    from .jobspec import write_private

    for path, text in plan.files.items():
        write_private(path, text)


__all__ = ["END_MARKER", "FILE_MARKER", "LaunchPlan", "PASSED_ENV_PREFIXES", "dump_yaml", "render", "render_many", "shell_quote",
           "shown_environment", "write_files"]
