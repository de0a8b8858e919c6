"""Experiment files: find them, merge their `extends:` chain and command-line overrides, and
validate the result strictly into a `ResolvedExperiment` before anything is submitted.

An experiment file holds the engine's run sections at the top level (task, model, data, optim,
train, checkpoint, monitor, finetune, output_dir), so that an override `train.epochs=10`
addresses them directly, plus maectl's own sections:

    extends: base/pretrain.yaml        # or a list; paths relative to this file, or job names
    description: one line for `maectl list`
    backend: local | slurm | ray       # default for `maectl submit`
    global_batch: 4096                 # the recipe's effective batch; accum_iter is derived
    resources: {nodes, gpus_per_node, cpus_per_task, mem_gb, time_limit_min, partition, ...}
    tracking: {uri, experiment, enabled}
    slurm: {job_folder, max_requeues, max_restarts, signal_delay_s, setup, srun_args, python, container, array_parallelism}
    ray: {address, storage_path, max_failures, autoscaling}   # --backend ray only
    sweep: {model.mask_ratio: [0.5, 0.75, 0.9], ...}     # `maectl sweep NAME`: one job per point of the grid
    pipeline: {then: [finetune-vit-b, linprobe-vit-b]}    # jobs that start from this one's final checkpoint

Strings may use ${output_root}, ${experiment} and ${handle}. `data.url: builtin:demo` names
the generated demo dataset under the output root. Every error names the file and the dotted key.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import yaml

from mae_core.structured import bounded

from . import locations
from .errors import UsageError
from .resources import Resources, config_error
from .site import DATASET_SCHEME, Site, detect_backend
from .site import active as active_site

HANDLE_PLACEHOLDER = "<handle>"
BACKENDS = ("local", "slurm", "ray")
BUILTIN_DEMO_DATA = "builtin:demo"
BASE_FOLDER = "base"  # files under a folder of this name are shared defaults, not experiments
_RUN_SECTIONS = ("task", "output_dir", "model", "data", "optim", "train", "checkpoint", "monitor", "finetune")
DEFAULT_OUTPUT_DIR = "${output_root}/${experiment}/${handle}"
COMMAND_LINE = "command line"
# Sections that say what to launch around the job, not how it runs: read by orchestrator/sweeps.py
# and pipelines.py, and left out of the job's resolved config (and so of its MLflow params).
_PLAN_SECTIONS = ("sweep", "pipeline")


class ExperimentError(UsageError):
    """A problem with an experiment file, located by file and dotted key."""

    def __init__(self, file: str, key: str, message: str, note: str = ""):
        self.file, self.key = file, key
        text = f"{file}: {key}: {message}" if key else f"{file}: {message}"
        super().__init__(text + (f" ({note})" if note else ""))


@dataclass(kw_only=True)
class TrackingConfig:
    enabled: bool = True
    uri: str | None = None  # default: $MLFLOW_TRACKING_URI, else sqlite:///<output_root>/mlflow.db
    experiment: str | None = None  # MLflow experiment; default: the experiment file's name


@dataclass(kw_only=True)
class RayConfig:
    """Where and how a `--backend ray` job runs (orchestrator/backends/ray.py)."""

    address: str | None = None  # the cluster's job API, http://HEAD:8265; default $RAY_ADDRESS
    storage_path: str | None = None  # Ray Train's RunConfig.storage_path; default <output_root>/ray
    max_failures: int = bounded(3, ge=-1, le=1000)  # worker-group restarts (each resumes from the latest checkpoint)
    autoscaling: bool = False  # the cluster adds nodes on demand: skip the pre-submit resource check
    placement_strategy: Literal["auto", "PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "auto"  # auto: SPREAD when resources.nodes > 1

    def __post_init__(self):
        if self.max_failures < -1:
            raise config_error("max_failures", f"must be >= 0 (or -1 for unlimited), got {self.max_failures}")


@dataclass(kw_only=True)
class ContainerConfig:
    """`slurm.container`: the job's tasks run inside this image (orchestrator/backends/slurm/backend.py)."""

    image: str | None = None  # none: no container. pyxis: an enroot image or docker://URI; apptainer: a .sif file or docker://URI
    runtime: Literal["pyxis", "apptainer"] = "pyxis"  # pyxis: srun --container-image; apptainer: apptainer exec
    mounts: list[str] = field(default_factory=list)  # "SRC[:DST[:FLAGS]]"; the job folder and output folder are added


@dataclass(kw_only=True)
class SlurmConfig:
    """Read by the SLURM backend only (orchestrator/backends/slurm/)."""

    job_folder: str | None = None  # sbatch scripts + submitit logs, on shared storage; default <output_dir>/slurm
    max_requeues: int = bounded(3, ge=0, le=1000)  # restarts (preemption, time limit, `scontrol requeue`) before the job gives up
    max_restarts: int = bounded(2, ge=0, le=1000)  # retries after an application failure (exit 1), each from the latest checkpoint
    signal_delay_s: int = bounded(120, ge=0, le=86_400)  # SLURM's warning signal this long before the time limit: time to checkpoint
    setup: list[str] = field(default_factory=list)  # lines run at the top of the job script (modules, venv)
    srun_args: list[str] = field(default_factory=list)  # extra srun arguments
    python: str | None = None  # the tasks' interpreter; default: the submitting one (sys.executable), `python` in a container
    container: ContainerConfig = field(default_factory=ContainerConfig)  # run every task in a container (pyxis or apptainer)
    array_parallelism: int | None = bounded(None, ge=1, le=100_000)  # a sweep array's throttle (%K); default: all points at once

    def __post_init__(self):
        if self.max_requeues < 0:
            raise config_error("max_requeues", f"must be >= 0, got {self.max_requeues}")
        if self.signal_delay_s < 0:
            raise config_error("signal_delay_s", f"must be >= 0, got {self.signal_delay_s}")


@dataclass(kw_only=True)
class ExperimentSpec:
    """maectl's own sections of an experiment file."""

    description: str = ""
    backend: Literal["local", "slurm", "ray"] = "local"  # = BACKENDS
    global_batch: int | None = bounded(None, ge=1, le=10**9)
    resources: Resources = field(default_factory=Resources)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    slurm: SlurmConfig = field(default_factory=SlurmConfig)
    ray: RayConfig = field(default_factory=RayConfig)

    def __post_init__(self):
        if self.global_batch is not None and self.global_batch < 1:
            raise config_error("global_batch", f"must be >= 1, got {self.global_batch}")


_SPEC_SECTIONS = tuple(f.name for f in dataclasses.fields(ExperimentSpec))
TOP_LEVEL_KEYS = ("extends", *_SPEC_SECTIONS, *_RUN_SECTIONS, *_PLAN_SECTIONS)


# -- finding files ------------------------------------------------------------------------------
def _display(path: Path) -> str:
    """A path as the user should read it: relative to the working directory when inside it."""
    try:
        return os.path.relpath(path) if path.is_relative_to(Path.cwd()) else str(path)
    except ValueError:
        return str(path)


def _yaml_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())


def _is_base(path: Path, root: Path) -> bool:
    return BASE_FOLDER in path.relative_to(root).parts[:-1]


def find_experiments() -> dict[str, Path]:
    """Experiment name (file stem) -> file, for every non-base file under the jobs folders.

    The first folder on the search path wins, so MAECTL_JOBS_PATH can shadow a shipped recipe."""
    found: dict[str, Path] = {}
    for root in locations.jobs_dirs():
        seen_here: dict[str, Path] = {}
        for path in _yaml_files(root):
            if _is_base(path, root):
                continue
            if path.stem in seen_here:
                raise UsageError(f"two experiment files are named {path.stem!r}: {_display(seen_here[path.stem])} and {_display(path)}")
            seen_here[path.stem] = path
        for name, path in seen_here.items():
            found.setdefault(name, path)
    return dict(sorted(found.items()))


def locate(name_or_path: str) -> tuple[str, Path]:
    """(experiment name, file) for a job name or a path to a YAML file."""
    candidate = Path(name_or_path).expanduser()
    if candidate.suffix in (".yaml", ".yml") or os.sep in name_or_path:
        if not candidate.is_file():
            raise UsageError(f"{name_or_path}: no such experiment file")
        return candidate.stem, candidate.absolute()
    experiments = find_experiments()
    if name_or_path in experiments:
        return name_or_path, experiments[name_or_path]
    close = difflib.get_close_matches(name_or_path, experiments, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(map(repr, close))}?" if close else "; `maectl list` shows them all"
    raise UsageError(f"unknown experiment {name_or_path!r}{hint}")


# -- loading and merging ------------------------------------------------------------------------
class _StrictLoader(yaml.SafeLoader):
    """yaml.safe_load, except that a key given twice in one mapping is an error, not a silent overwrite."""


def _construct_mapping(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
# YAML 1.1 (PyYAML) reads `1e-3` as a string; learning rates are written that way. Read it, and
# `1E+4`, `-2e5`, as numbers, as YAML 1.2 does.
_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))


def _tag_in(text: str) -> str | None:
    """The first explicit YAML tag (`!!python/object`, `!!binary`, `!foo`) in `text`, if any:
    experiment files hold plain data, and a tag is either an attack or a typo."""
    try:
        for token in yaml.scan(text):
            if isinstance(token, yaml.TagToken):
                handle, suffix = token.value
                return f"{handle or ''}{suffix}"
    except yaml.YAMLError:
        return None  # reported by the loader, with its position
    return None


def read_yaml(path: Path) -> dict:
    try:
        text = path.read_text()
        tag = _tag_in(text)
        if tag:
            raise UsageError(f"{_display(path)}: YAML tags are not allowed in experiment files, found {tag!r}")
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 — a SafeLoader subclass
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise UsageError(f"{_display(path)}{where}: invalid YAML: {getattr(err, 'problem', None) or err}") from None
    except OSError as err:
        raise UsageError(f"{_display(path)}: cannot read: {err.strerror}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"{_display(path)}: expected a mapping of sections at the top level, got {type(data).__name__}")
    return data


@dataclass
class MergedTree:
    """A merged config and, for each key path that some source set, which source set it last."""

    data: dict = field(default_factory=dict)
    origins: dict[tuple, str] = field(default_factory=dict)
    generated: set[str] = field(default_factory=set)  # origins that are maectl itself (a sweep, a pipeline), not a file

    def origin(self, dotted_key: str) -> str | None:
        parts = tuple(p.split("[", 1)[0] for p in dotted_key.split(".") if p)
        for n in range(len(parts), 0, -1):
            if parts[:n] in self.origins:
                return self.origins[parts[:n]]
        return None


def _merge(into: dict, source: dict, origins: dict, label, prefix: tuple = ()) -> None:
    """Deep-merge `source` over `into`: mappings merge key by key, anything else replaces.
    `label(path)` names the source of each key path set, for error messages."""
    for key, value in source.items():
        path = (*prefix, key)
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            origins.setdefault(path, label(path))
            _merge(into[key], value, origins, label, path)
            continue
        into[key] = copy.deepcopy(value)
        for stale in [p for p in origins if p[: len(path)] == path]:
            del origins[stale]
        origins[path] = label(path)
        if isinstance(value, dict):
            _merge(into[key], value, origins, label, path)


def _resolve_extends(ref: Any, from_file: Path, key_origin: str) -> Path:
    if not isinstance(ref, str) or not ref:
        raise ExperimentError(key_origin, "extends", f"expected a file or job name (or a list of them), got {ref!r}")
    names = [ref] if Path(ref).suffix in (".yaml", ".yml") else [f"{ref}.yaml", f"{ref}.yml"]
    extra = locations.extra_jobs_dirs()
    # A reference beside the file that lands in the checkout's jobs/ (`../base/pretrain.yaml`) is
    # looked up under the site's folders first, by its path below jobs/.
    for name in names:
        beside = (from_file.parent / name).resolve()
        for root in (d for d in locations.jobs_dirs() if d not in extra):
            if beside.is_relative_to(root.resolve()):
                for folder in extra:
                    if (folder / beside.relative_to(root.resolve())).is_file():
                        return (folder / beside.relative_to(root.resolve())).resolve()
    # Site folders first, so that a site can shadow base/pretrain.yaml; then beside the file.
    for folder in (*extra, from_file.parent, *locations.jobs_dirs()):
        for name in names:
            if (folder / name).is_file():
                return (folder / name).resolve()
    for root in locations.jobs_dirs():
        matches = [p for p in _yaml_files(root) if p.stem == Path(ref).stem]
        if len(matches) == 1:
            return matches[0].resolve()
    raise ExperimentError(key_origin, "extends", f"cannot find {ref!r} (looked in the site's folders, beside the file and under the jobs folders)")


def load_tree(path: Path, _stack: tuple[Path, ...] = ()) -> MergedTree:
    """The file merged over its `extends:` chain (bases first, in list order)."""
    path = path.resolve()
    label = _display(path)
    if path in _stack:
        chain = " -> ".join(_display(p) for p in (*_stack, path))
        raise ExperimentError(label, "extends", f"circular: {chain}")
    own = read_yaml(path)
    refs = own.pop("extends", None)
    refs = [] if refs is None else refs if isinstance(refs, list) else [refs]
    merged = MergedTree()
    for ref in refs:
        base = load_tree(_resolve_extends(ref, path, label), (*_stack, path))
        _merge(merged.data, base.data, merged.origins, lambda p, b=base: b.origins.get(p, label))
    _merge(merged.data, own, merged.origins, lambda p: label)
    return merged


def parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item or item.startswith("="):
        raise UsageError(f"override {item!r} is not of the form key.path=value")
    key, raw = item.split("=", 1)
    parts = key.strip().split(".")
    if any(not p for p in parts):
        raise UsageError(f"override {item!r}: empty part in key {key!r}")
    tag = _tag_in(raw)
    if tag:
        raise UsageError(f"override {item!r}: YAML tags are not allowed, found {tag!r}")
    try:
        value = yaml.load(raw, Loader=_StrictLoader) if raw.strip() else ""  # noqa: S506 — a SafeLoader subclass
    except yaml.YAMLError as err:
        raise UsageError(f"override {item!r}: value is not valid YAML ({getattr(err, 'problem', err)})") from None
    return parts, value


def apply_overrides(tree: MergedTree, overrides: list[str]) -> None:
    for item in overrides:
        parts, value = parse_override(item)
        set_key(tree, parts, value, COMMAND_LINE, item)


def set_key(tree: MergedTree, parts: list[str], value: Any, origin: str, item: str | None = None) -> None:
    """Set one dotted key in the merged tree, recording `origin` as what set it."""
    node = tree.data
    for i, part in enumerate(parts[:-1]):
        if part not in node or node[part] is None:
            node[part] = {}
            tree.origins[tuple(parts[: i + 1])] = origin
        node = node[part]
        if not isinstance(node, dict):
            raise UsageError(f"override {item or '.'.join(parts)!r}: {'.'.join(parts[: i + 1])} is a value, not a section")
    _merge(node, {parts[-1]: value}, tree.origins, lambda p: origin, tuple(parts[:-1]))


def format_value(value: Any) -> str:
    """A value as an override writes it (`key=VALUE`), so that parse_override reads it back equal."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    return text.removesuffix("...").strip()


# -- the plan sections: sweep and pipeline -------------------------------------------------------
@dataclass(kw_only=True)
class FollowUpConfig:
    """A job that starts from the pretraining's final checkpoint (`pipeline.then`)."""

    experiment: str  # a name under jobs/ or a path
    overrides: list[str] = field(default_factory=list)


@dataclass(kw_only=True)
class PipelineConfig:
    then: list[FollowUpConfig] = field(default_factory=list)


def parse_sweep_block(value: Any, where: _Locator) -> list[tuple[str, list]]:
    """`sweep: {dotted.key: [v1, v2], ...}` -> [(key, values)] in file order; the grid is their product."""
    if value is None:
        return []
    if not isinstance(value, dict):
        raise where.error("sweep", f"expected a mapping of dotted keys to lists of values, e.g. {{model.mask_ratio: [0.5, 0.75]}}, got {value!r}")
    axes = []
    for key, values in value.items():
        key_text = str(key)
        check_sweep_key(key_text, lambda message, k=key_text: where.error(f"sweep.{k}", message))
        if not isinstance(values, list) or not values:
            raise where.error(f"sweep.{key_text}", f"expected a non-empty list of values, got {values!r}")
        seen = []
        for v in values:
            if v in seen:
                raise where.error(f"sweep.{key_text}", f"value {format_value(v)} is listed twice")
            seen.append(v)
        axes.append((key_text, list(values)))
    return axes


def read_sweep_axes(name_or_path: str, overrides: list[str]) -> list[tuple[str, list]]:
    """The file's `sweep:` axes once `overrides` are applied, from the YAML alone: the grid is
    known before any point is resolved (a point may be valid where the file alone is not)."""
    _, path = locate(name_or_path)
    tree = load_tree(path)
    apply_overrides(tree, overrides)
    return parse_sweep_block(tree.data.get("sweep"), _Locator(tree, path))


def check_sweep_key(key: str, fail: Callable[[str], Exception]) -> None:
    """A swept key names a setting of the job (a dotted path below a section), not maectl's plan."""
    parts = key.split(".")
    if any(not p for p in parts):
        raise fail("empty part in the dotted key")
    if parts[0] in ("extends", *_PLAN_SECTIONS):
        raise fail(f"{parts[0]!r} cannot be swept")
    if parts[0] not in TOP_LEVEL_KEYS:
        sections = [k for k in TOP_LEVEL_KEYS if k not in ("extends", *_PLAN_SECTIONS)]
        close = difflib.get_close_matches(parts[0], sections, n=1)
        raise fail(f"{parts[0]!r} is not a section of an experiment" + (f"; did you mean {close[0]!r}?" if close else ""))


def parse_pipeline_block(value: Any, where: _Locator) -> PipelineConfig | None:
    """`pipeline: {then: [name, {experiment: name, overrides: [k=v, ...]}, ...]}`."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise where.error("pipeline", f"expected a mapping with `then: [experiment, ...]`, got {value!r}")
    for key in value:
        if key != "then":
            raise where.error(f"pipeline.{key}", "unknown key; a pipeline has only `then: [experiment, ...]`")
    items = value.get("then") or []
    if not isinstance(items, list):
        raise where.error("pipeline.then", f"expected a list of experiments, got {items!r}")
    then = []
    for i, item in enumerate(items):
        key = f"pipeline.then[{i}]"
        if isinstance(item, str) and item:
            then.append(FollowUpConfig(experiment=item))
            continue
        if not isinstance(item, dict) or not isinstance(item.get("experiment"), str) or not item["experiment"]:
            raise where.error(key, f"expected an experiment name or {{experiment: NAME, overrides: [key=value, ...]}}, got {item!r}")
        for extra in item:
            if extra not in ("experiment", "overrides"):
                raise where.error(f"{key}.{extra}", "unknown key; a follow-up has `experiment` and `overrides`")
        overrides = item.get("overrides") or []
        if not isinstance(overrides, list) or not all(isinstance(o, str) and "=" in o for o in overrides):
            raise where.error(f"{key}.overrides", f"expected a list of key=value strings, got {overrides!r}")
        then.append(FollowUpConfig(experiment=item["experiment"], overrides=list(overrides)))
    return PipelineConfig(then=then) if then else None


# -- validation ----------------------------------------------------------------------------------
@dataclass
class ResolvedExperiment:
    name: str
    source: Path
    overrides: list[str]
    spec: ExperimentSpec
    run: Any  # mae_core.engine.RunConfig
    handle: str
    output_root: str
    notes: list[str] = field(default_factory=list)  # derived values worth showing (accum_iter, ...)
    locator: Any = None  # turns a key into an error naming the file that set it
    train_images: int | None = None  # from the dataset manifest, when it was readable
    sweep_axes: list[tuple[str, list]] = field(default_factory=list)  # the file's `sweep:` block
    pipeline: PipelineConfig | None = None  # the file's `pipeline:` block
    site: Site | None = None  # the site file in effect (orchestrator/site.py)
    backend_reason: str = ""  # why this backend: --backend, the file, the site, or detected

    @property
    def uses_demo_data(self) -> bool:
        return self.run.data.url == demo_data_location(self.output_root)

    @property
    def source_display(self) -> str:
        return _display(self.source)

    def resolved_tree(self) -> dict:
        """Everything that will run: maectl's sections then the run sections, all defaults filled."""
        from mae_core.structured import to_dict

        return {"experiment": self.name, **to_dict(self.spec), **self.run.to_dict()}

    @property
    def tracking_experiment(self) -> str:
        return self.spec.tracking.experiment or self.name


def _substitute(tree, values: dict[str, str]):
    if isinstance(tree, dict):
        return {k: _substitute(v, values) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_substitute(v, values) for v in tree]
    if isinstance(tree, str):
        for name, value in values.items():
            tree = tree.replace("${" + name + "}", value)
        return tree
    return tree


def demo_data_location(output_root: str) -> str:
    return f"{output_root.rstrip('/')}/datasets/demo"


class _Locator:
    """Turns a ConfigError's key into an ExperimentError naming the file that set it."""

    def __init__(self, tree: MergedTree, source: Path):
        self.tree, self.source = tree, _display(source)

    def error(self, key: str, message: str) -> ExperimentError:
        origin = self.tree.origin(key)
        if origin is None:
            return ExperimentError(self.source, key, message)
        if origin in self.tree.generated:
            return ExperimentError(self.source, key, message, f"set by {origin}")
        if origin.startswith(COMMAND_LINE):
            return ExperimentError(self.source, key, message, f"set on the {origin}")
        if origin != self.source:
            return ExperimentError(origin, key, message, f"inherited by {self.source}")
        return ExperimentError(origin, key, message)

    def from_config_error(self, err) -> ExperimentError:
        """`err`: a mae_core.structured.ConfigError."""
        key = err.key
        message = str(err)[len(key) + 2 :] if key else str(err)
        # Some checks report the section ("model: mask_ratio must be ..."): point at the field.
        first_word = message.split(" ", 1)[0].strip("'\":,")
        section = self._subtree(key)
        if isinstance(section, dict) and first_word in section:
            key = f"{key}.{first_word}"
        return self.error(key, message)

    def _subtree(self, key: str):
        node = self.tree.data
        for part in key.split(".") if key else []:
            if not isinstance(node, dict):
                return None
            node = node.get(part)
        return node


def resolve(name_or_path: str, overrides: list[str] | None = None, *, backend: str | None = None,
            make_handle: Callable[[str], str] | None = None, output_root: str | None = None,
            check_data: bool = True, injected: dict[str, Any] | None = None, injected_by: str = "maectl") -> ResolvedExperiment:
    """Find, merge, override and validate an experiment. Raises UsageError (exit 2) on any problem.

    `backend` overrides the file's `backend:`; `make_handle(backend)` names the job (without it
    the handle is a placeholder, for `show` and dry-runs). `injected`: dotted keys that maectl
    sets on top of the overrides (a sweep point's values, a follow-up's checkpoint); an error
    about one of them says it was set by `injected_by`."""
    overrides = list(overrides or [])
    name, path = locate(name_or_path)
    tree = load_tree(path)
    site = active_site()
    if site.config.defaults:
        site_label = _display(site.path)
        _merge(tree.data, site.config.defaults, tree.origins, lambda p: site_label)
    apply_overrides(tree, overrides)
    for key, value in (injected or {}).items():
        set_key(tree, key.split("."), value, injected_by)
        tree.generated.add(injected_by)
    shown_overrides = [*overrides, *(f"{key}={format_value(value)}" for key, value in (injected or {}).items())]
    if "backend" in tree.data and tree.data["backend"] not in BACKENDS:
        # Checked before --backend replaces it: a bad value on the command line is still a mistake.
        close = difflib.get_close_matches(str(tree.data["backend"]), BACKENDS, n=1)
        raise _Locator(tree, path).error("backend", f"must be one of {', '.join(map(repr, BACKENDS))}, got {tree.data['backend']!r}"
                                         + (f"; did you mean {close[0]!r}?" if close else ""))
    if backend is not None:
        _merge(tree.data, {"backend": backend}, tree.origins, lambda p: "command line (--backend)")
        backend_reason = "--backend"
    elif "backend" in tree.data:
        backend_reason = f"set in {tree.origin('backend')}"
    elif site.config.backend:
        tree.data["backend"] = site.config.backend
        backend_reason = f"from the {site.label}"
    else:
        tree.data["backend"], backend_reason = detect_backend()
    where = _Locator(tree, path)
    from mae_core.structured import ConfigError, from_dict  # loads torch: not needed by list/status/logs
    output_root = output_root or locations.output_root()

    for key in tree.data:
        if key not in TOP_LEVEL_KEYS:
            close = difflib.get_close_matches(str(key), TOP_LEVEL_KEYS, n=1)
            raise where.error(str(key), "unknown key" + (f"; did you mean {close[0]!r}?" if close else f" (sections: {', '.join(TOP_LEVEL_KEYS[1:])})"))
    try:
        spec = from_dict(ExperimentSpec, {k: v for k, v in tree.data.items() if k in _SPEC_SECTIONS})
    except ConfigError as err:
        raise where.from_config_error(err) from None

    sweep_axes = parse_sweep_block(tree.data.get("sweep"), where)
    pipeline = parse_pipeline_block(tree.data.get("pipeline"), where)
    handle = make_handle(spec.backend) if make_handle else HANDLE_PLACEHOLDER
    run_tree = {k: v for k, v in tree.data.items() if k in _RUN_SECTIONS}
    run_tree.setdefault("output_dir", DEFAULT_OUTPUT_DIR)
    data = run_tree.get("data")
    if not isinstance(data, dict) or not data.get("url"):
        raise where.error("data.url", "is required: where the dataset shards are (a folder, file:// or s3:// URL, or builtin:demo)")
    if isinstance(data.get("url"), str) and data["url"].startswith(DATASET_SCHEME):
        dataset = data["url"][len(DATASET_SCHEME):]
        location = site.dataset_url(dataset)
        if location is None:
            known = ", ".join(sorted(site.config.datasets)) or "none"
            raise where.error("data.url", f"dataset {dataset!r} has no location on this site: add `datasets: {{{dataset}: URL}}` "
                                          f"to the site file ({site.label}; known: {known}), or give data.url=URL")
        data["url"] = location
    if data.get("url") == BUILTIN_DEMO_DATA:
        data["url"] = demo_data_location(output_root)
    run_tree = _substitute(run_tree, {"output_root": output_root, "experiment": name, "handle": handle})

    notes: list[str] = []
    _derive_accumulation(spec, run_tree, where, notes)

    from mae_core.engine.config import load_run_config  # imports torch: only once the cheap checks passed

    try:
        run = load_run_config(run_tree)
    except ConfigError as err:
        raise where.from_config_error(err) from None

    if run.task in ("finetune", "linprobe") and not run.checkpoint.init_from:
        raise where.error("checkpoint.init_from", f"a {run.task} job needs pretrained weights (a checkpoint path or URL)")
    resolved = ResolvedExperiment(name, path, shown_overrides, spec, run, handle, output_root, notes, where,
                                  sweep_axes=sweep_axes, pipeline=pipeline, site=site, backend_reason=backend_reason)
    if check_data:
        if make_handle is not None:  # a real submission, not `show` or a dry-run
            check_local_data(resolved)
        check_shards(resolved)
    return resolved


def local_path(url: str) -> Path | None:
    """The folder a data URL names on this machine's disk, or None for a remote URL."""
    if url.startswith("file://"):
        return Path(url[len("file://"):])
    return None if "://" in url else Path(url).expanduser()


def check_local_data(resolved: ResolvedExperiment) -> None:
    """A job that runs here (the local backend) cannot read a dataset folder that does not exist
    here. (Where ranks run on other machines, the backend's pre-submit checks decide.)"""
    if resolved.spec.backend != "local" or resolved.uses_demo_data:
        return
    folder = local_path(resolved.run.data.url)
    if folder is not None and not folder.exists():
        raise resolved.locator.error("data.url", f"{resolved.run.data.url} does not exist on this machine, where the local backend "
                                                 f"runs the job (make shards with `maectl data shard`, or give an s3:// URL)")


def _derive_accumulation(spec: ExperimentSpec, run_tree: dict, where: _Locator, notes: list[str]) -> None:
    """global_batch = data.batch_size x ranks x train.accum_iter; accum_iter is derived unless given."""
    if spec.global_batch is None:
        return
    per_rank = (run_tree.get("data") or {}).get("batch_size", 64)
    if not isinstance(per_rank, int) or isinstance(per_rank, bool) or per_rank < 1:
        return  # the engine's validation reports it with the right key
    ranks = spec.resources.world_size
    per_step = per_rank * ranks
    train = run_tree.setdefault("train", {})
    if not isinstance(train, dict):
        return
    explicit = train.get("accum_iter")
    if spec.global_batch % per_step:
        raise where.error("global_batch", f"{spec.global_batch} is not a multiple of data.batch_size x ranks = {per_rank} x {ranks} = {per_step}; "
                                           f"change data.batch_size or resources so that it divides")
    accum = spec.global_batch // per_step
    if explicit is not None and explicit != accum:
        raise where.error("train.accum_iter", f"is {explicit}, but global_batch {spec.global_batch} = {per_rank} per rank x {ranks} ranks x {accum}; "
                                              f"remove train.accum_iter to derive it")
    train["accum_iter"] = accum
    notes.append(f"batch: {per_rank} per rank x {ranks} rank{'s' if ranks != 1 else ''} x accum_iter {accum} = global_batch {spec.global_batch}")


def check_shards(resolved: ResolvedExperiment) -> None:
    """Fewer training shards than ranks x loader workers leaves a reader idle and hangs DDP.
    Checked when the manifest is readable now; a missing dataset is left to the pre-submit checks."""
    run, spec, where, notes = resolved.run, resolved.spec, resolved.locator, resolved.notes
    options = dict(run.data.storage_options)
    if run.data.url.startswith("s3://"):
        if not (options or os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ACCESS_KEY_ID") or os.environ.get("AWS_PROFILE")):
            return  # no S3 configured here: a lookup would only wait on timeouts
        # `show` must answer quickly: one short attempt, not botocore's retries.
        options["config_kwargs"] = {"connect_timeout": 3, "read_timeout": 5, "retries": {"max_attempts": 1}}
    elif "://" in run.data.url and not run.data.url.startswith("file://"):
        return
    try:
        from mae_core.data.manifest import read_manifest

        manifest = read_manifest(run.data.url, "train", storage_options=options)
    except Exception:  # noqa: BLE001 — unreadable now (not generated yet, no credentials here): not an error
        return
    readers = spec.resources.world_size * max(run.data.num_workers, 1)
    shards = len(manifest.shards)
    if shards < readers:
        raise where.error("data.num_workers", f"{run.data.url} has {shards} training shards, fewer than ranks x workers = "
                                              f"{spec.resources.world_size} x {max(run.data.num_workers, 1)} = {readers}; lower data.num_workers or resources")
    resolved.train_images = manifest.num_samples
    notes.append(f"data: {manifest.num_samples} training samples in {shards} shards, {manifest.num_classes} classes")
