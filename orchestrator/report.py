"""`maectl report`: the paper's views of a sweep (or of some jobs), read from MLflow.

- a table like Table 1: one row per point, its swept value(s), the final pretraining loss and the
  top-1 of each follow-up the pipeline ran (linear probe, fine-tune), as Markdown and CSV;
- a plot like Figures 5 and 7: accuracy against the swept value, as a PNG (matplotlib).

Everything is read through orchestrator.tracking's read-only queries (this module imports no
MLflow); the files go to a local folder and, for a sweep, become artifacts of its parent run.
"""

from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UsageError

TASK_LABELS = {"linprobe": "linear probe", "finetune": "fine-tune"}
LOSS_METRICS = ("epoch/loss", "train/loss")  # the last epoch's mean training loss; else the last step's
TOP1_METRIC = "eval/top1"  # a follow-up's final top-1 (%)
REPORT_ARTIFACT_DIR = "report"
# Params that differ between any two jobs and say nothing about the experiment.
_INCIDENTAL = ("output_dir", "tracking.", "checkpoint.resume", "init_from", "data.url")


@dataclass
class Row:
    handle: str
    values: dict[str, object]
    status: str
    final_loss: float | None
    top1: dict[str, float] = field(default_factory=dict)  # column -> top-1 (%)
    run_id: str = ""


@dataclass
class Report:
    title: str
    keys: list[str]  # the swept keys, one column each
    rows: list[Row]
    columns: list[str]  # accuracy columns, in order
    uri: str
    parent_run_id: str | None = None

    # -- the table ------------------------------------------------------------------------------
    def header(self) -> list[str]:
        return ["#", *self.keys, "job", "status", "pretrain loss", *(f"{c} top-1" for c in self.columns)]

    def cells(self, row: Row, i: int, *, plain: bool = False) -> list[str]:
        def num(value, digits):
            if value is None or (isinstance(value, float) and not math.isfinite(value)):
                return "" if plain else "-"
            return repr(value) if plain else f"{value:.{digits}f}"

        return [str(i + 1), *(_format_value(row.values.get(k)) for k in self.keys), row.handle, row.status,
                num(row.final_loss, 4), *(num(row.top1.get(c), 2) for c in self.columns)]

    def markdown(self) -> str:
        lines = [f"### {self.title}", "", "| " + " | ".join(self.header()) + " |", "|" + "---|" * len(self.header())]
        lines += ["| " + " | ".join(self.cells(row, i)) + " |" for i, row in enumerate(self.rows)]
        lines += ["", f"pretrain loss: the last epoch's mean `{LOSS_METRICS[0]}` (else the last `{LOSS_METRICS[1]}`); top-1: each follow-up's final `{TOP1_METRIC}` (%)."]
        return "\n".join(lines) + "\n"

    def csv(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["point", *self.keys, "job", "status", "pretrain_loss", *(f"{c}_top1".replace(" ", "_") for c in self.columns),
                         "run_id"])
        for i, row in enumerate(self.rows):
            writer.writerow([*self.cells(row, i, plain=True), row.run_id])
        return out.getvalue()

    # -- the plot -------------------------------------------------------------------------------
    def plot(self, path: str) -> str:
        """Accuracy (or, without follow-ups, the final loss) against the swept value."""
        import matplotlib

        matplotlib.use("Agg")  # no display; also keeps a user's interactive backend out of it
        import matplotlib.pyplot as plt

        series = {f"{c} top-1 (%)": [r.top1.get(c) for r in self.rows] for c in self.columns}
        if not any(v is not None for values in series.values() for v in values):
            series = {"final pretraining loss": [r.final_loss for r in self.rows]}
        xs, label, ticks = self._x_axis()
        fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=120)
        for name, ys in series.items():
            points = [(x, y) for x, y in zip(xs, ys) if y is not None]
            if points:
                ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name)
                for x, y in points:
                    ax.annotate(f"{y:.1f}" if "top-1" in name else f"{y:.3f}", (x, y), textcoords="offset points", xytext=(0, 6),
                                ha="center", fontsize=8)
        if ticks is not None:
            ax.set_xticks(range(len(ticks)), ticks, rotation=20 if len(ticks) > 4 else 0)
        ax.set_xlabel(label)
        ax.set_ylabel("top-1 (%)" if any("top-1" in n for n in series) else "loss")
        ax.set_title(self.title, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)
        return path

    def _x_axis(self) -> tuple[list[float], str, list[str] | None]:
        if len(self.keys) == 1:
            values = [r.values.get(self.keys[0]) for r in self.rows]
            if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
                return [float(v) for v in values], self.keys[0], None
        labels = [" ".join(_format_value(r.values.get(k)) for k in self.keys) or r.handle for r in self.rows]
        return list(range(len(labels))), ", ".join(self.keys) or "job", labels

    def write(self, folder: str) -> dict[str, str]:
        """table.md, table.csv, plot.png in `folder`; returns {path: artifact folder}."""
        os.makedirs(folder, exist_ok=True)
        files = {}
        for name, text in (("table.md", self.markdown()), ("table.csv", self.csv())):
            path = os.path.join(folder, name)
            Path(path).write_text(text)
            files[path] = REPORT_ARTIFACT_DIR
        files[self.plot(os.path.join(folder, "plot.png"))] = REPORT_ARTIFACT_DIR
        return files


def _format_value(value) -> str:
    if value is None:
        return "-"
    from .experiments import format_value

    return format_value(value)


def _parse_param(text: str):
    """A param as logged (str(value)) back to a number where it is one, for sorting and plotting."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


# -- reading the runs -----------------------------------------------------------------------------
def real_uri(stored: str | None, given: str | None = None) -> str:
    """The tracking URI to read from. Stored URIs have their password redacted: the environment's
    MLFLOW_TRACKING_URI is used when it is the same server, or --tracking-uri."""
    from .redact import REDACTED, scrub_text

    if given:
        return given
    if not stored:
        raise UsageError("these jobs ran without MLflow tracking (tracking.enabled: false): there are no runs to report on")
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env and scrub_text(env) == stored:
        return env
    if REDACTED in stored:
        raise UsageError(f"the tracking URI {stored} has a password maectl did not store: set MLFLOW_TRACKING_URI or pass --tracking-uri")
    return stored


def _final_loss(run) -> float | None:
    return next((run.metrics[k] for k in LOSS_METRICS if k in run.metrics), None)


def _followup_columns(followups) -> tuple[dict[str, str], list[str]]:
    """stage -> column label, and the columns in order (linear probe, fine-tune, others)."""
    kinds: dict[str, set[str]] = {}
    task_of = {}
    for run in followups:
        stage = run.tags.get("pipeline.stage", "")
        task = run.tags.get("maectl.task") or run.params.get("task", "")
        task_of[stage] = task
        kinds.setdefault(task, set()).add(stage)
    labels = {}
    for stage, task in task_of.items():
        label = TASK_LABELS.get(task, stage)
        labels[stage] = label if len(kinds[task]) == 1 else f"{stage} ({label})"
    order = {label: i for i, label in enumerate(TASK_LABELS.values())}
    columns = sorted(set(labels.values()), key=lambda c: (min((order[k] for k in order if c.startswith(k)), default=99), c))
    return labels, columns


def _rows(points, followups, keys: list[str], values_of) -> tuple[list[Row], list[str]]:
    labels, columns = _followup_columns(followups)
    rows = []
    for run in points:
        handle = run.tags.get("handle", run.name)
        row = Row(handle=handle, values=values_of(run), status=run.status, final_loss=_final_loss(run), run_id=run.run_id)
        for follow in followups:
            if follow.tags.get("pipeline.after") != handle:
                continue
            stage = follow.tags.get("pipeline.stage", "")
            top1 = follow.metrics.get(TOP1_METRIC, run.metrics.get(f"{stage}/{TOP1_METRIC}"))
            if top1 is not None:
                row.top1[labels[stage]] = top1
        rows.append(row)
    return rows, columns


def for_sweep(sweep, *, tracking_uri: str | None = None) -> Report:
    """The report of a sweep recorded in the job store (orchestrator.store.SweepRecord)."""
    from .tracking import sweep_runs

    uri = real_uri(sweep.tracking_uri, tracking_uri)
    found = sweep_runs(uri, sweep.tracking_experiment or sweep.experiment, sweep.sweep_id, timeout_s=30)
    keys = [key for key, _ in sweep.axes]
    values = {p["handle"]: p["values"] for p in sweep.points}
    order = {p["handle"]: i for i, p in enumerate(sweep.points)}
    points = [r for r in found.points if r.tags.get("handle") in values]
    # A point run twice (a resubmission): its latest run.
    latest = {}
    for run in sorted(points, key=lambda r: r.start_time or 0):
        latest[run.tags["handle"]] = run
    points = sorted(latest.values(), key=lambda r: order[r.tags["handle"]])
    if not points:
        raise UsageError(f"sweep {sweep.sweep_id}: no point has an MLflow run yet on {sweep.tracking_uri}")
    rows, columns = _rows(points, found.followups, keys, lambda run: values[run.tags["handle"]])
    title = f"{sweep.experiment}: sweep {sweep.sweep_id} over {', '.join(keys)}"
    return Report(title, keys, rows, columns, uri, found.parent.run_id if found.parent else sweep.parent_run_id)


def for_jobs(jobs, *, tracking_uri: str | None = None) -> Report:
    """The report of some jobs (orchestrator.store.JobRecord): the params in which their runs
    differ are the swept keys."""
    from .tracking import runs_tagged

    uri = real_uri(next((j.tracking_uri for j in jobs if j.tracking_uri), None), tracking_uri)
    handles = [j.handle for j in jobs]
    runs = runs_tagged(uri, None, "handle", handles, timeout_s=30)
    by_handle = {}
    for run in sorted(runs, key=lambda r: r.start_time or 0):
        by_handle[run.tags["handle"]] = run
    missing = [h for h in handles if h not in by_handle]
    if missing:
        raise UsageError(f"no MLflow run for {', '.join(missing)} on {uri}: not started yet, or tracking was off")
    points = [by_handle[h] for h in handles]
    followups = runs_tagged(uri, None, "pipeline.after", handles, timeout_s=30)
    shared = set.intersection(*(set(r.params) for r in points))
    keys = sorted(k for k in shared if not k.startswith(_INCIDENTAL) and len({r.params[k] for r in points}) > 1)
    rows, columns = _rows(points, followups, keys, lambda run: {k: _parse_param(run.params[k]) for k in keys})
    experiments = sorted({j.experiment for j in jobs})
    title = f"{', '.join(experiments)}: {len(jobs)} job(s)" + (f" over {', '.join(keys)}" if keys else "")
    return Report(title, keys, rows, columns, uri)
