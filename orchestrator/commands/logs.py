"""`maectl logs JOB [--follow] [--tail N] [--rank N | --all]`."""

from __future__ import annotations

import sys


def register(subparsers) -> None:
    parser = subparsers.add_parser("logs", help="print a job's output",
                                   description="Print a job's output: rank 0's (and its launcher's) unless --rank or --all says otherwise.")
    parser.add_argument("job", help="job handle (a unique prefix will do)")
    parser.add_argument("-f", "--follow", action="store_true", help="keep printing until the job ends")
    parser.add_argument("-n", "--tail", type=int, metavar="N", help="start with the last N lines (of each rank's log with --all)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--rank", type=int, metavar="N", help="rank N's log (SLURM: one log per task)")
    which.add_argument("--all", action="store_true", help="every rank's log, each line prefixed [rank N]")
    parser.set_defaults(handler=run)


def run(args) -> int:
    from collections import deque

    from mae_core.exitcodes import ExitCode

    from ..backends import get_backend
    from ..errors import UsageError
    from ..store import open_store
    from ..submission import find_job, refresh

    store = open_store()
    record = refresh(find_job(store, args.job), store)
    backend = get_backend(record.backend)
    per_rank = hasattr(backend, "log_path")  # SLURM: a log per task; the others write one log with every rank in it
    rank = args.rank or 0
    if args.rank is not None:
        if not per_rank:
            if args.rank != 0:
                raise UsageError(f"--rank {args.rank}: the {record.backend} backend writes one log with every rank's output (maectl logs {record.handle})")
        elif not 0 <= args.rank < backend.ranks(record):
            raise UsageError(f"--rank {args.rank}: job {record.handle} has {backend.ranks(record)} rank(s), 0 to {backend.ranks(record) - 1}")

    if args.all and per_rank:
        lines = backend.all_logs(record, follow=args.follow)
        if args.tail is not None and not args.follow:
            lines = _tail_each(lines, args.tail)
        elif args.tail is not None:
            lines = _skip_each(lines, args.tail, [backend.log_path(record, r) for r in range(backend.ranks(record))])
    else:
        lines = backend.logs(record, follow=args.follow, rank=rank) if per_rank else backend.logs(record, follow=args.follow)
        if args.tail is not None and not args.follow:
            lines = deque(lines, maxlen=max(args.tail, 0))
        elif args.tail is not None:
            # Following: skip to the last N lines written so far, then stream.
            path = backend.log_path(record, rank) if per_rank else record.log_path
            lines = _tail_then_follow(lines, args.tail, path)
    try:
        for line in lines:
            sys.stdout.write(line)
            sys.stdout.flush()
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED
    except BrokenPipeError:  # `maectl logs JOB | head`
        return 0
    return 0


def _existing_lines(path) -> int:
    from pathlib import Path

    path = Path(path or "")
    return sum(1 for _ in open(path, errors="replace")) if path.is_file() else 0


def _tail_then_follow(lines, n, path):
    skip = max(0, _existing_lines(path) - max(n, 0))
    for i, line in enumerate(lines):
        if i >= skip:
            yield line


def _rank_of(line: str) -> int:
    return int(line[len("[rank "):line.index("]")])


def _tail_each(lines, n):
    """The last n lines of each rank, rank by rank (the lines come rank by rank)."""
    from collections import deque

    kept: dict[int, deque] = {}
    for line in lines:
        kept.setdefault(_rank_of(line), deque(maxlen=max(n, 0))).append(line)
    for rank in sorted(kept):
        yield from kept[rank]


def _skip_each(lines, n, paths):
    skip = [max(0, _existing_lines(p) - max(n, 0)) for p in paths]
    seen = [0] * len(paths)
    for line in lines:
        rank = _rank_of(line)
        seen[rank] += 1
        if seen[rank] > skip[rank]:
            yield line
