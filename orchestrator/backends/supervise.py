"""Runs a detached job's command and records how it ended, whatever happens to it.

    python -m orchestrator.backends.supervise EXIT_FILE [--spec SPEC] -- COMMAND...

The local backend cannot learn a detached process's exit status once `maectl submit` has
returned, so this small parent waits for the command and writes {"returncode": N} to EXIT_FILE
(atomically; negative N: killed by signal -N). Standard library only: it starts in milliseconds.

With --spec (the job's spec file), a command that did not exit 0 may have died without closing
its MLflow run (SIGKILL by the kernel's OOM killer, a segfault, torchrun reporting a rank killed
so): the run is then ended with the exit status (tracking.end_job_run, which leaves a run the
runner closed itself as it is), so that MLflow does not show a dead job RUNNING for ever.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time


def _write_exit(path: str, returncode: int) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump({"returncode": returncode, "finished_at": time.time()}, f)
    os.replace(tmp, path)


# Exits whose MLflow run is someone else's to end: success and SIGTERM / SIGINT (the runner closes
# its run KILLED on them, and `maectl cancel` ends it KILLED whatever the runner managed).
CLOSED_BY_THEIR_OWN = (0, 130, 143, -signal.SIGINT, -signal.SIGTERM)


def _end_unclosed_run(spec_path: str, returncode: int) -> None:
    """End the job's MLflow run if the command left it RUNNING (imports MLflow: only after a failure)."""
    code = returncode if returncode >= 0 else 128 - returncode  # killed by signal N: 128 + N, as a shell says
    try:
        from orchestrator.jobspec import JobSpec
        from orchestrator.tracking import end_job_run, status_for_exit

        status = status_for_exit(code)
        if end_job_run(JobSpec.load(spec_path), status, replace=("RUNNING",)) is not None:
            how = f"killed by signal {-returncode}" if returncode < 0 else f"exit {returncode}"
            print(f"maectl: the job ended ({how}); its MLflow run, if still RUNNING, is now {status}", file=sys.stderr, flush=True)
    except Exception as err:  # noqa: BLE001 — tracking down or unreachable: the exit file is what matters
        print(f"maectl: could not end the job's MLflow run ({type(err).__name__}: {err})", file=sys.stderr, flush=True)


def main(argv: list[str]) -> int:
    spec_path = None
    if len(argv) >= 3 and argv[1] == "--spec":
        spec_path, argv = argv[2], [argv[0], *argv[3:]]
    if len(argv) < 3 or argv[1] != "--":
        print("usage: python -m orchestrator.backends.supervise EXIT_FILE [--spec SPEC] -- COMMAND...", file=sys.stderr)
        return 2
    exit_file, command = argv[0], argv[2:]
    try:
        child = subprocess.Popen(command)
    except OSError as err:
        print(f"maectl: cannot start {command[0]}: {err}", file=sys.stderr, flush=True)
        _write_exit(exit_file, 127)
        return 127

    def forward(signum, _frame):
        # `maectl cancel` signals the whole process group, the child included; forwarding
        # covers a signal sent to this process alone (e.g. by a user's `kill PID`).
        try:
            child.send_signal(signum)
        except ProcessLookupError:
            pass

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGHUP):
        signal.signal(sig, forward)
    returncode = child.wait()
    _write_exit(exit_file, returncode)  # first: a cancel's SIGKILL after its grace period must not lose it
    if spec_path is not None and returncode not in CLOSED_BY_THEIR_OWN:
        _end_unclosed_run(spec_path, returncode)
    return returncode if returncode >= 0 else 128 - returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
