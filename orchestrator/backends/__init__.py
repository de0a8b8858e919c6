"""Backends by name, imported only when used (each may pull in its scheduler's client library)."""

from __future__ import annotations

import importlib

from ..errors import UsageError
from .base import Backend, LaunchRequest, Status, Submitted
from .states import JobState

# name -> (module, class). slurm and ray arrive with issue #6 as orchestrator/backends/{slurm,ray}.py.
_BACKENDS = {
    "local": ("orchestrator.backends.local", "LocalBackend"),
    "slurm": ("orchestrator.backends.slurm", "SlurmBackend"),
    "ray": ("orchestrator.backends.ray", "RayBackend"),
}
BACKEND_NAMES = tuple(_BACKENDS)


def get_backend(name: str) -> Backend:
    if name not in _BACKENDS:
        raise UsageError(f"unknown backend {name!r}; choose one of {', '.join(_BACKENDS)}")
    module_name, class_name = _BACKENDS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name == module_name:
            raise UsageError(f"the {name} backend is not available in this version of maectl") from None
        raise UsageError(f"the {name} backend needs {err.name!r}: pip install 'maectl[{name}]'") from None
    return getattr(module, class_name)()


__all__ = ["Backend", "BACKEND_NAMES", "JobState", "LaunchRequest", "Status", "Submitted", "get_backend"]
