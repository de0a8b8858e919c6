"""`maectl site show` / `maectl site init`: the site file in effect, and a starter one from what
this machine shows (partitions and GPUs from `sinfo`, RAY_ADDRESS, MLFLOW_TRACKING_URI)."""

from __future__ import annotations

import sys
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser("site", help="show or create the site file (default backend, partition, data, tracking)")
    sub = parser.add_subparsers(dest="site_command", metavar="ACTION", required=True)
    show = sub.add_parser("show", help="print the effective site settings and where they come from")
    show.set_defaults(handler=_show)
    init = sub.add_parser("init", help="write a starter site file from what this machine shows")
    init.add_argument("--output", help="where to write it (default ~/.config/maectl/site.yaml)")
    init.add_argument("--force", action="store_true", help="replace an existing file")
    init.set_defaults(handler=_init)


def _show(args) -> int:
    import yaml

    from mae_core.structured import to_dict

    from .. import locations
    from ..site import active, detect_backend


    site = active()
    print(f"# {site.label}" + ("" if site.path else " (set MAECTL_SITE, or run `maectl site init`)"))
    settings = to_dict(site.config)
    if not site.config.backend:
        backend, why = detect_backend()
        settings["backend"] = f"{backend}  # {why}"
    settings["output_root"] = locations.output_root()
    print(yaml.safe_dump(settings, sort_keys=False, default_flow_style=None, width=120), end="")
    return 0


def _init(args) -> int:
    import yaml

    from ..errors import UsageError
    from ..site import USER_SITE, starter_site

    target = Path(args.output).expanduser() if args.output else USER_SITE.expanduser()
    if target.exists() and not args.force:
        raise UsageError(f"{target} exists; add --force to replace it (`maectl site show` prints what it says)")
    site, notes = starter_site()
    text = "# Written by `maectl site init`; edit freely. Keys: orchestrator/site.py, docs/operations.md.\n"
    text += "".join(f"# {note}\n" for note in notes)
    text += yaml.safe_dump(site, sort_keys=False, default_flow_style=False, width=120)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(target.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(target)
    print(f"wrote {target}", file=sys.stderr)
    print(text, end="")
    return 0
