"""Runs a detached job's command and records how it ended, whatever happens to it.

    python -m orchestrator.backends.supervise EXIT_FILE -- COMMAND...

The local backend cannot learn a detached process's exit status once `maectl submit` has
returned, so this small parent waits for the command and writes {"returncode": N} to EXIT_FILE
(atomically; negative N: killed by signal -N). Standard library only: it starts in milliseconds.
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


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: python -m orchestrator.backends.supervise EXIT_FILE -- COMMAND...", file=sys.stderr)
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
    _write_exit(exit_file, returncode)
    return returncode if returncode >= 0 else 128 - returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
