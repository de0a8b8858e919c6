"""The last line of a maectl job's sbatch script, after srun, when srun did not exit 0:

    python -m orchestrator.backends.slurm.teardown SUBMITIT_FOLDER SRUN_EXIT_CODE

A task killed outright (the kernel's OOM killer, a SIGKILL, a segfault, srun killing the other
tasks after one failed for good) cannot close the job's MLflow run, which would then stay RUNNING
for ever. The batch script outlives its tasks, so it ends the run here with srun's exit status
(tracking.end_job_run: only a run still RUNNING; a run the runner closed is left as it is). A
requeue (preemption, time limit, `scontrol requeue`, a retried failure) ends the batch script
with the job, so this never runs between two runs of one job; `maectl cancel` ends the run
KILLED whatever this did.

The job's spec is found as submitit's own task wrapper finds its work: the pickled task of this
job (array task) in the submitit folder.
"""

from __future__ import annotations

import sys


def spec_path_of_this_job(folder: str) -> str:
    """The spec path of the SlurmTask submitit pickled for the job (or array task) this runs in."""
    import submitit
    from submitit.core.utils import DelayedSubmission, JobPaths

    job_id = submitit.JobEnvironment().job_id  # <array id>_<index> in an array task
    return DelayedSubmission.load(JobPaths(folder, job_id=job_id).submitted_pickle).function.spec_path


def main(argv: list[str]) -> int:
    if len(argv) != 2 or not argv[1].lstrip("-").isdigit():
        print("usage: python -m orchestrator.backends.slurm.teardown SUBMITIT_FOLDER SRUN_EXIT_CODE", file=sys.stderr)
        return 2
    folder, code = argv[0], int(argv[1])
    try:
        from ...jobspec import JobSpec
        from ...tracking import end_job_run, status_for_exit

        status = status_for_exit(code)
        if end_job_run(JobSpec.load(spec_path_of_this_job(folder)), status) is not None:
            print(f"[maectl] srun exited {code}: the job's MLflow run, if still RUNNING, is now {status}", flush=True)
    except Exception as err:  # noqa: BLE001 — the batch script's exit status is srun's whatever happens here
        print(f"[maectl] could not end the job's MLflow run after srun exited {code} ({type(err).__name__}: {err})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
