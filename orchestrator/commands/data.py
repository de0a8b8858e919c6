"""`maectl data ...` (shard, verify, demo, bench) — filled in by the data issue (#3)."""

from __future__ import annotations


def register(subparsers) -> None:
    parser = subparsers.add_parser("data", help="build, verify and benchmark WebDataset shards")
    parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)
