"""Checkpoints that hold everything resumable, written atomically to a folder or s3:// prefix.

Files are `checkpoint-{step:09d}.pt` under `<output_dir>/checkpoints/`. A file only ever
appears complete under its final name (local: temp file + rename; S3: a PUT is atomic), so
a crash mid-write leaves the previous checkpoint as the latest. All are loadable with
`torch.load(weights_only=True)`.
"""

from __future__ import annotations

import io
import os
import re
import uuid
from dataclasses import dataclass

import fsspec
import torch
from fsspec.implementations.local import LocalFileSystem

FORMAT = "maectl.train/1"
_NAME = re.compile(r"checkpoint-(\d{9})\.pt$")
# A local save's temporary file; one left behind is a save killed before its rename.
_PARTIAL = re.compile(r"checkpoint-\d{9}\.pt\.tmp-[0-9a-f]{32}$")


class CheckpointError(RuntimeError):
    pass


@dataclass(frozen=True)
class CheckpointInfo:
    path: str
    step: int


class CheckpointManager:
    def __init__(self, output_dir: str, keep_last: int = 2, keep_every_epochs: int | None = None):
        self.dir = output_dir.rstrip("/") + "/checkpoints"
        self.keep_last = keep_last
        self.keep_every_epochs = keep_every_epochs
        self.fs, self.root = fsspec.core.url_to_fs(self.dir)

    def _url(self, name: str) -> str:
        return f"{self.dir}/{name}"

    def check_writable(self) -> None:
        """Fail before training starts when the location cannot be written."""
        probe = self._url(f".write-probe-{uuid.uuid4().hex}")
        try:
            self.fs.makedirs(self.root, exist_ok=True)
            with fsspec.open(probe, "wb") as f:
                f.write(b"ok")
            self.fs.rm(fsspec.core.url_to_fs(probe)[1])
        except Exception as err:  # noqa: BLE001 — any failure means "not writable", reported with its cause
            raise CheckpointError(f"checkpoint location {self.dir} is not writable: {err}") from err

    def list(self) -> list[CheckpointInfo]:
        try:
            names = self.fs.ls(self.root, detail=False)
        except FileNotFoundError:
            return []
        found = []
        for name in names:
            match = _NAME.search(name)
            if match:
                found.append(CheckpointInfo(self._url(os.path.basename(name)), int(match.group(1))))
        return sorted(found, key=lambda c: c.step)

    def latest(self) -> CheckpointInfo | None:
        found = self.list()
        return found[-1] if found else None

    def save(self, state: dict, step: int, milestone: bool = False) -> str:
        state = {"format": FORMAT, **state}
        url = self._url(f"checkpoint-{step:09d}.pt")
        buffer = io.BytesIO()
        torch.save(state, buffer)
        self.fs.makedirs(self.root, exist_ok=True)
        if isinstance(self.fs, LocalFileSystem):
            local = fsspec.core.url_to_fs(url)[1]
            tmp = f"{local}.tmp-{uuid.uuid4().hex}"
            with open(tmp, "wb") as f:
                f.write(buffer.getbuffer())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, local)
        else:
            with fsspec.open(url, "wb") as f:
                f.write(buffer.getbuffer())
        if milestone:
            with fsspec.open(url + ".milestone", "w") as f:
                f.write("kept: epoch milestone\n")
        self._prune()
        return url

    def _prune(self) -> None:
        self._remove_partial_saves()
        found = self.list()
        keep = {c.step for c in found[-self.keep_last :]}
        for info in found:
            if info.step in keep:
                continue
            if self.keep_every_epochs and self._is_milestone(info):
                continue
            self.fs.rm(fsspec.core.url_to_fs(info.path)[1])
            # Drop a stale sidecar too (none exists for ordinary checkpoints).
            sidecar = fsspec.core.url_to_fs(info.path + ".milestone")[1]
            if self.fs.exists(sidecar):
                self.fs.rm(sidecar)

    def _remove_partial_saves(self) -> None:
        """Temporary files of saves killed mid-write (SIGKILL, node loss): never listed, never
        loaded, but each as large as a checkpoint. Only the main rank saves, one save at a time,
        so any such file seen after a completed save is an orphan."""
        if not isinstance(self.fs, LocalFileSystem):
            return  # S3: a killed upload leaves no object behind
        for name in self.fs.ls(self.root, detail=False):
            if _PARTIAL.search(name):
                self.fs.rm(name)

    def _is_milestone(self, info: CheckpointInfo) -> bool:
        # Milestones are marked in the name-independent sidecar written at save time.
        return self.fs.exists(fsspec.core.url_to_fs(info.path + ".milestone")[1])


def load_checkpoint(path: str, map_location="cpu") -> dict:
    """Load one of our training checkpoints, refusing other formats with a clear message."""
    try:
        with fsspec.open(path, "rb") as f:
            state = torch.load(f, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} does not exist") from None
    except Exception as err:  # noqa: BLE001 — unpickling errors come in many types
        raise CheckpointError(f"checkpoint {path} is not loadable with weights_only=True: {err}") from err
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"checkpoint {path} has format {found!r}, expected {FORMAT!r} (a maectl training checkpoint)")
    return state
