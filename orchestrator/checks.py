"""Pre-submit checks that more than one backend makes, in one place.

Each raises the experiment's ExperimentError naming the key (exit 2) before anything is
recorded, written or started:

    check_manifest      the dataset's training manifest is readable from here
    check_local_data    a local data path exists (a job that runs on this machine: the local backend)
    check_location      an output or job folder: absolute, not node-local for a multi-node job,
                        and (with `probe`) writable
    check_shared        a location every node of a multi-node job reaches: s3:// or a site shared_paths entry
    probe_writable      create, write and remove a probe file (POSIX paths and object storage)

S3 is asked with S3_PROBE_OPTIONS: a missing or unreachable bucket fails in seconds, not after
botocore's default retries. NODE_LOCAL_PREFIXES are the folders each node has its own copy of.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from .redact import scrub_text

# botocore settings for every pre-submit look at S3 (manifests, write probes).
S3_PROBE_OPTIONS = {"config_kwargs": {"connect_timeout": 5, "read_timeout": 10, "retries": {"max_attempts": 2}}}
# Folders that each node has its own copy of: useless for the output or job folder of a multi-node job.
NODE_LOCAL_PREFIXES = ("/tmp", "/var/tmp", "/dev/shm", "/run")


def is_object_storage(location: str) -> bool:
    return "://" in location and not location.startswith("file://")


def probe_options(url: str, options: dict | None = None) -> dict:
    """fsspec storage options for a quick pre-submit look at `url`."""
    options = dict(options or {})
    if url.startswith("s3://"):
        for key, value in S3_PROBE_OPTIONS.items():
            options.setdefault(key, value)
    return options


def is_node_local(path: str) -> bool:
    if is_object_storage(path):
        return False
    real = os.path.realpath(path.removeprefix("file://"))
    return any(real == p or real.startswith(p + "/") for p in NODE_LOCAL_PREFIXES)


def check_shared(resolved, key: str, location: str, *, nodes: int, why: str) -> None:
    """A location that every one of `nodes` nodes reads or writes (checkpoints, the output
    folder, Ray Train's storage): object storage, or a path the site file declares shared
    (site key `shared_paths`). Anything else is refused: on a cluster without a shared disk each
    node would write its own copy, and a restarted rank would resume from its own disk or from
    scratch. `why` says why the job spans nodes."""
    if nodes <= 1 or is_object_storage(location):
        return
    from .site import active

    site = resolved.site or active()
    path = location.removeprefix("file://")
    if site.is_shared(path) or site.is_shared(os.path.realpath(path)):
        return
    reason = "is node-local storage (every node has its own)" if is_node_local(path) else \
        "is not on storage that the site declares shared (site key shared_paths)"
    raise resolved.locator.error(key, f"{path} {reason}, but {why}: every node must reach the same files. Use s3://..., or add the "
                                      f"shared mount that holds it to shared_paths in the site file ({site.label})")


def nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_manifest(resolved) -> None:
    """The training manifest must be readable now: whatever stops us reading it will stop the job.
    (experiments.check_shards has compared its shard count with ranks x workers where it could.)"""
    if resolved.uses_demo_data:
        return  # generated at launch, then checked
    data = resolved.run.data
    try:
        from mae_core.data.manifest import read_manifest

        read_manifest(data.url, "train", storage_options=probe_options(data.url, data.storage_options))
    except Exception as err:  # noqa: BLE001 — any reason it cannot be read is worth stopping for
        raise resolved.locator.error("data.url", f"cannot read the training manifest at {scrub_text(data.url)}: "
                                                 f"{scrub_text(str(err))[:300]}") from None


def check_local_data(resolved) -> None:
    """A job that runs on this machine reads its data from here: a local path must exist."""
    if resolved.uses_demo_data:
        return
    url = resolved.run.data.url
    if is_object_storage(url):
        return
    path = url.removeprefix("file://")
    if not os.path.exists(path):
        raise resolved.locator.error("data.url", f"{path} does not exist on this machine, where the job would run "
                                                 f"(give the folder of the shards and their manifests)")
    check_manifest(resolved)


def check_location(resolved, key: str, location: str, *, nodes: int, probe: bool) -> None:
    """An output or job folder of a job on `nodes` nodes: object storage is shared (its writing
    is probed when `probe`); a POSIX path must be absolute (ranks start in other directories),
    shared when the job spans nodes, and creatable by this user."""
    where = resolved.locator
    if is_object_storage(location):
        return
    path = location.removeprefix("file://")
    if not os.path.isabs(path):
        raise where.error(key, f"{path} is relative: the job's processes start in another directory; give an absolute path")
    if nodes > 1 and is_node_local(path):
        raise where.error(key, f"{path} is node-local storage, but the job spans {nodes} nodes: every node must see the same "
                               f"folder (use shared storage or s3://)")
    if probe:
        existing = nearest_existing(Path(path))
        if not os.access(existing, os.W_OK | os.X_OK):
            raise where.error(key, f"{path} is not writable ({existing} does not let this user create it)")


def probe_writable(location: str) -> str | None:
    """Why `location` cannot be written (None if it can): create it, write and remove a probe.

    Checked from where maectl runs: right for s3:// and for a folder mounted here and on the
    cluster alike; a folder that exists only on the cluster's nodes cannot be checked here."""
    import fsspec

    try:
        fs, path = fsspec.core.url_to_fs(location, **probe_options(location))
        fs.makedirs(path, exist_ok=True)
        probe = f"{path.rstrip('/')}/.maectl-write-probe-{uuid.uuid4().hex[:8]}"
        with fs.open(probe, "wb") as f:
            f.write(b"ok")
        fs.rm(probe)
    except Exception as err:  # noqa: BLE001 — permission, missing bucket, no credentials, ...
        return scrub_text(f"{type(err).__name__}: {err}")[:300]
    return None


__all__ = ["NODE_LOCAL_PREFIXES", "S3_PROBE_OPTIONS", "check_local_data", "check_location", "check_shared", "check_manifest", "is_node_local",
           "is_object_storage", "nearest_existing", "probe_options", "probe_writable"]
