"""MLflow: the only package of maectl that imports it. One home for the run lifecycle.

One MLflow experiment per experiment file, one run per submitted job. The run's id is kept in
`<output_dir>/mlflow_run_id`, beside the checkpoints: a job that starts again on the same output
folder (a requeue, a restart, a crash) resumes the checkpoint and continues the same run, its
metrics continuing from the resumed step. Params are immutable in MLflow, so a restart logs only
params the run does not have yet and reports changed ones in a tag.

Who may do what:

| who | calls | module |
|---|---|---|
| the task-side runner (rank 0) | `open_run(spec, output_dir)` -> sink; `sink.close(outcome)` | run.py |
| a launcher whose ranks die unclosed (Ray driver, a supervisor that sees the runner killed) | `end_job_run(spec, status_for_exit(code))` | lifecycle.py |
| `maectl cancel` | `cancel_job_run(spec)` after the backend's cancel | lifecycle.py |
| `maectl sweep` | `start_sweep_run(...)`; `end_sweep_run(...)` when a sweep is cancelled | lifecycle.py |
| `maectl status`, `list`, `logs`, `report` | read only: `job_run`, `run_view`, `runs_tagged`, `sweep_runs` (short timeouts) | queries.py |

Tracking never holds training up: the sink hands metrics and artifacts to one background sender
(sender.py) that retries while the server is down and is flushed when the run closes.
What MLflow users expect is there too (artifacts.py): the final encoder as a registered MLflow
model, the shards as the run's dataset inputs, MLflow's own system metrics.

Sweeps and pipelines nest runs with MLflow's own `mlflow.parentRunId` tag: a sweep's points under
the sweep's parent run, which the last point to end marks ended; a pipeline's follow-ups under the
pretraining's run, to which a follow-up that finishes copies its final accuracies
(`<follow-up>/eval/top1`, ...).
"""

from ._common import MAX_PARAM_VALUE, PARENT_TAG, REPORTED_METRICS, RUN_ID_FILE, TrackingTimeout, flatten_params, run_id_of
from .lifecycle import cancel_job_run, close_sweep_run_if_done, end_job_run, end_sweep_run, log_report, start_sweep_run, status_for_exit
from .queries import READ_TIMEOUT_S, RunView, job_run, run_view, runs_tagged, sweep_runs
from .run import MLflowSink, open_run

__all__ = [
    "MAX_PARAM_VALUE", "PARENT_TAG", "READ_TIMEOUT_S", "REPORTED_METRICS", "RUN_ID_FILE", "MLflowSink", "RunView", "TrackingTimeout",
    "cancel_job_run", "close_sweep_run_if_done", "end_job_run", "end_sweep_run", "flatten_params", "job_run",
    "log_report", "open_run", "run_id_of", "run_view", "runs_tagged", "start_sweep_run", "status_for_exit", "sweep_runs",
]
