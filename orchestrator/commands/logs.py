"""`maectl logs JOB [--follow] [--tail N]`."""

from __future__ import annotations

import sys


def register(subparsers) -> None:
    parser = subparsers.add_parser("logs", help="print a job's output", description="Print a job's output (rank 0 and its launcher).")
    parser.add_argument("job", help="job handle (a unique prefix will do)")
    parser.add_argument("-f", "--follow", action="store_true", help="keep printing until the job ends")
    parser.add_argument("-n", "--tail", type=int, metavar="N", help="start with the last N lines")
    parser.set_defaults(handler=run)


def run(args) -> int:
    from collections import deque

    from mae_core.exitcodes import ExitCode

    from ..backends import get_backend
    from ..store import open_store
    from ..submission import find_job, refresh

    store = open_store()
    record = refresh(find_job(store, args.job), store)
    lines = get_backend(record.backend).logs(record, follow=args.follow)
    if args.tail is not None and not args.follow:
        lines = deque(lines, maxlen=max(args.tail, 0))
    elif args.tail is not None:
        # Following: skip to the last N lines written so far, then stream.
        lines = _tail_then_follow(lines, args.tail, record)
    try:
        for line in lines:
            sys.stdout.write(line)
            sys.stdout.flush()
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED
    except BrokenPipeError:  # `maectl logs JOB | head`
        return 0
    return 0


def _tail_then_follow(lines, n, record):
    from pathlib import Path

    path = Path(record.log_path or "")
    existing = sum(1 for _ in open(path, errors="replace")) if path.is_file() else 0
    skip = max(0, existing - max(n, 0))
    for i, line in enumerate(lines):
        if i >= skip:
            yield line
