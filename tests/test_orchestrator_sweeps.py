"""Sweeps: the grid from the command line and the `sweep:` block, every point validated before any
is submitted, the dry-run pinned by a golden file, the store's sweep records (and its migration),
and a real 2-point local sweep against the stack's MLflow server: one parent run, one child run
per point with the point's params."""

from __future__ import annotations

import re
import sqlite3
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from orchestrator.errors import UsageError
from orchestrator.sweeps import grid, merge_axes, parse_arguments, plan, split_values
from tests.fixtures.plans import check_golden, plan_part, rendered_specs
from tests.test_orchestrator_cli import assert_no_secrets, clean_env, jobs_recorded, maectl


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("MAECTL_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MAECTL_OUTPUT_ROOT", str(tmp_path / "out"))
    # SLURM_CONF / RAY_ADDRESS unset: no SLURM or Ray is detected, the default backend is local here.
    for name in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_PROFILE", "MLFLOW_TRACKING_URI", "MAECTL_JOBS_PATH", "SLURM_CONF", "RAY_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


TINY = """\
description: a tiny sweep
resources: {{nodes: 1, gpus_per_node: 0, tasks_per_node: 1, cpus_per_task: 1}}
model: {{name: mae_vit_micro_patch4_32, norm_pix_loss: true}}
data: {{url: {data}, img_size: 32, batch_size: 50, num_workers: 0, shuffle_buffer: 64}}
optim: {{lr: 2.0e-3, warmup_epochs: 1}}
train: {{epochs: 1, log_every: 1, max_steps: {steps}}}
checkpoint: {{keep_every_epochs: null}}
tracking: {{enabled: {tracking}}}
"""


def tiny_sweep(folder: Path, data: str, block: str = "", *, steps: int = 2, tracking: bool = False, name: str = "tiny-sweep") -> str:
    path = folder / f"{name}.yaml"
    path.write_text(TINY.format(data=data, steps=steps, tracking=str(tracking).lower()) + textwrap.dedent(block))
    return str(path)


# -- the grid ------------------------------------------------------------------------------------
def test_values_split_at_top_level_commas_only():
    assert split_values("0.5,0.75,0.9") == ["0.5", "0.75", "0.9"]
    assert split_values("[0.9,0.95],[0.9,0.999]") == ["[0.9,0.95]", "[0.9,0.999]"]
    assert split_values("'a,b',c") == ["'a,b'", "c"]
    assert split_values("{x: 1, y: 2}") == ["{x: 1, y: 2}"]


def test_arguments_become_axes_or_fixed_overrides():
    axes, fixed = parse_arguments(["model.mask_ratio=0.5,0.75", "optim.betas=[0.9,0.95]", "optim.betas=[0.9,0.95],[0.9,0.999]",
                                   "train.epochs=2", "data.url='a,b'"])
    assert axes == [("model.mask_ratio", [0.5, 0.75]), ("optim.betas", [[0.9, 0.95], [0.9, 0.999]])]
    assert fixed == ["optim.betas=[0.9,0.95]", "train.epochs=2", "data.url='a,b'"]
    for bad, words in [("x.y=1,,2", "empty value"), ("model.mask_ratio=0.5,0.5", "listed twice"), ("modle.x=1,2", "did you mean 'model'"),
                       ("sweep.x=1,2", "cannot be swept"), ("novalue", "not of the form")]:
        with pytest.raises(UsageError, match=words):
            parse_arguments([bad])


def test_grid_is_the_product_last_axis_fastest():
    points = grid([("a", [1, 2]), ("b", ["x", "y", "z"])])
    assert len(points) == 6 and points[:3] == [{"a": 1, "b": "x"}, {"a": 1, "b": "y"}, {"a": 1, "b": "z"}]


def test_command_line_replaces_or_narrows_the_file_axes():
    file_axes = [("model.mask_ratio", [0.5, 0.75, 0.9]), ("model.decoder_depth", [1, 8])]
    axes, fixed = merge_axes(file_axes, [("model.decoder_depth", [2, 4]), ("optim.base_lr", [1e-4, 1e-3])], ["model.mask_ratio=0.6", "train.epochs=3"])
    assert axes == [("model.mask_ratio", [0.6]), ("model.decoder_depth", [2, 4]), ("optim.base_lr", [1e-4, 1e-3])]
    assert fixed == ["train.epochs=3"]


# -- planning: every point resolved and checked ---------------------------------------------------
def test_plan_from_block_and_command_line(isolated, demo_shards):
    path = tiny_sweep(isolated, demo_shards, """\
        sweep:
          model.mask_ratio: [0.5, 0.9]
        """)
    sweep = plan(path, ["model.decoder_depth=1,2", "train.epochs=2"], dry_run=True)
    assert [p.values for p in sweep.points] == [{"model.mask_ratio": 0.5, "model.decoder_depth": 1}, {"model.mask_ratio": 0.5, "model.decoder_depth": 2},
                                                {"model.mask_ratio": 0.9, "model.decoder_depth": 1}, {"model.mask_ratio": 0.9, "model.decoder_depth": 2}]
    for point in sweep.points:
        run = point.prepared.resolved.run
        assert run.model.arch.mask_ratio == point.values["model.mask_ratio"] and run.model.arch.decoder_depth == point.values["model.decoder_depth"]
        assert run.train.epochs == 2
        assert point.prepared.resolved.overrides[-2:] == [f"model.mask_ratio={point.values['model.mask_ratio']}",
                                                          f"model.decoder_depth={point.values['model.decoder_depth']}"]
        info = point.prepared.request.spec.sweep
        assert info.points == 4 and info.index == point.index and info.values == point.values and info.id == "<sweep>"


def test_real_plan_gives_each_point_its_own_handle_and_output(isolated, demo_shards):
    from orchestrator.store import open_store

    sweep = plan(tiny_sweep(isolated, demo_shards), ["model.mask_ratio=0.5,0.6,0.7"], store=open_store())
    handles = [p.prepared.request.handle for p in sweep.points]
    assert len(set(handles)) == 3 and all(re.fullmatch(r"local-[0-9a-f]{6}", h) for h in handles)
    assert [p.prepared.resolved.run.output_dir for p in sweep.points] == [str(isolated / "out" / "tiny-sweep" / h) for h in handles]
    assert re.fullmatch(r"sweep-[0-9a-f]{6}", sweep.sweep_id)


def test_a_bad_point_stops_the_sweep_before_anything_is_submitted(tmp_path, demo_shards):
    job = tiny_sweep(tmp_path, demo_shards)
    result = maectl(["sweep", job, "model.mask_ratio=0.5,1.5", "train.epochs=1", "--backend", "local"], clean_env(tmp_path))
    assert result.returncode == 2, result.stdout + result.stderr
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("maectl: error: sweep point 2/2 (model.mask_ratio=1.5): ") and "model.mask_ratio:" in message
    assert "got 1.5" in message and "(set by the sweep)" in message
    assert jobs_recorded(tmp_path) == 0 and not (tmp_path / "out").exists() and not (tmp_path / "home" / "jobs").exists()


@pytest.mark.parametrize("block, key, words", [
    ("sweep: {model.mask_ratio: 0.5}\n", "sweep.model.mask_ratio", "expected a non-empty list"),
    ("sweep: {model.mask_ratio: [0.5, 0.5]}\n", "sweep.model.mask_ratio", "listed twice"),
    ("sweep: {optm.lr: [0.1, 0.2]}\n", "sweep.optm.lr", "did you mean 'optim'"),
    ("sweep: [model.mask_ratio]\n", "sweep", "expected a mapping"),
])
def test_a_bad_sweep_block_names_file_and_key(isolated, demo_shards, block, key, words):
    path = tiny_sweep(isolated, demo_shards, block)
    with pytest.raises(UsageError) as err:
        plan(path, [], dry_run=True)
    assert str(err.value).startswith(f"{path}: {key}: ") and words in str(err.value)


def test_submit_of_a_sweep_file_points_to_maectl_sweep(isolated, demo_shards):
    from orchestrator.submission import prepare

    path = tiny_sweep(isolated, demo_shards, "sweep: {model.mask_ratio: [0.5, 0.9]}\n")
    with pytest.raises(UsageError, match=r"sweep: this experiment is a sweep of 2 point\(s\).*maectl sweep tiny-sweep.*sweep=null"):
        prepare(path, [], dry_run=True)
    assert prepare(path, ["sweep=null"], dry_run=True).resolved.run.model_config().mask_ratio == 0.75  # one configuration


def test_every_point_reports_to_one_experiment(isolated, demo_shards):
    with pytest.raises(UsageError, match="tracking.experiment: every point of a sweep reports to one MLflow experiment"):
        plan(tiny_sweep(isolated, demo_shards), ["tracking.experiment=a,b"], dry_run=True)


def test_shipped_table1_sweeps_expand_like_the_ablation_files(isolated):
    from orchestrator.experiments import resolve
    from orchestrator.sweeps import read_axes

    for name, ablations in [("sweep-mask-ratio", ["ablate-mask-ratio-40", "ablate-mask-ratio-50", "ablate-mask-ratio-60", "ablate-baseline",
                                                  "ablate-mask-ratio-80", "ablate-mask-ratio-90"]),
                            ("sweep-decoder-depth", ["ablate-decoder-depth-1", "ablate-decoder-depth-2", "ablate-decoder-depth-4", "ablate-baseline",
                                                     "ablate-decoder-depth-12"]),
                            ("sweep-decoder-width", ["ablate-decoder-width-128", "ablate-decoder-width-256", "ablate-baseline",
                                                     "ablate-decoder-width-768", "ablate-decoder-width-1024"])]:
        axes, fixed = read_axes(name, [], [])
        for values, ablation in zip(grid(axes), ablations, strict=True):
            point, expected = resolve(name, fixed, injected=values), resolve(ablation)
            assert point.run.model_config() == expected.run.model_config(), (name, values, ablation)
            mine, theirs = point.resolved_tree(), expected.resolved_tree()
            for tree in (mine, theirs):
                for key in ("experiment", "description", "model", "output_dir"):  # output_dir: by experiment name
                    tree.pop(key)
            assert mine == theirs
            assert [f.experiment for f in point.pipeline.then] == ["finetune-vit-l", "linprobe-vit-l"]


# -- the dry-run ---------------------------------------------------------------------------------
SWEEP_GOLDEN = ["sweep", "pretrain-vit-tiny-demo", "model.mask_ratio=0.5,0.9", "train.epochs=2", "--dry-run"]  # + --backend local/slurm


def test_dry_run_matches_golden_and_submits_nothing(tmp_path):
    result = maectl([*SWEEP_GOLDEN, "--backend", "local"], clean_env(tmp_path))
    assert result.returncode == 0, result.stderr
    assert_no_secrets(result.stdout + result.stderr)
    check_golden("sweep_dry_run_local.txt", plan_part(result.stdout))
    assert str(tmp_path) not in result.stdout
    assert result.stdout.count("# === ") == 2
    specs = rendered_specs(result.stdout)
    assert [s["resolved"]["model"]["mask_ratio"] for s in specs] == [0.5, 0.9]
    assert [s["sweep"]["index"] for s in specs] == [0, 1] and all(s["sweep"]["id"] == "<sweep>" and s["sweep"]["points"] == 2 for s in specs)
    assert all(s["resolved"]["train"]["epochs"] == 2 for s in specs)
    assert jobs_recorded(tmp_path) == 0 and not (tmp_path / "home").exists() and not (tmp_path / "out").exists()


# -- the store -----------------------------------------------------------------------------------
V1_SCHEMA = """
CREATE TABLE jobs (handle TEXT PRIMARY KEY, experiment TEXT NOT NULL, source TEXT NOT NULL, backend TEXT NOT NULL, state TEXT NOT NULL,
    native_id TEXT, output_dir TEXT NOT NULL, job_dir TEXT NOT NULL, log_path TEXT, tracking_uri TEXT, overrides TEXT NOT NULL DEFAULT '[]',
    info TEXT NOT NULL DEFAULT '{}', exit_code INTEGER, message TEXT, cancel_requested INTEGER NOT NULL DEFAULT 0, created_at REAL NOT NULL,
    updated_at REAL NOT NULL, finished_at REAL);
CREATE INDEX jobs_created ON jobs (created_at);
INSERT INTO jobs (handle, experiment, source, backend, state, output_dir, job_dir, created_at, updated_at)
    VALUES ('local-old001', 'exp', 'jobs/exp.yaml', 'local', 'completed', '/o', '/j', 1.0, 1.0);
PRAGMA user_version = 1;
"""


def test_a_version_1_store_is_migrated_in_place(tmp_path):
    from orchestrator.backends import JobState
    from orchestrator.store import JobRecord, JobStore, SweepRecord

    path = tmp_path / "jobs.db"
    with sqlite3.connect(path) as db:
        db.executescript(V1_SCHEMA)
    store = JobStore(path)
    old = store.get("local-old001")
    assert old.state is JobState.COMPLETED and old.sweep_id is None and old.after is None
    store.add_sweep(SweepRecord(sweep_id="sweep-abc123", experiment="exp", source="s", backend="local", axes=[["model.mask_ratio", [0.5, 0.9]]],
                                points=[{"handle": "local-new001", "values": {"model.mask_ratio": 0.5}}]))
    store.add(JobRecord(handle="local-new001", experiment="exp", source="s", backend="local", state=JobState.PENDING, output_dir="o",
                        job_dir="j", sweep_id="sweep-abc123"))
    store.add(JobRecord(handle="local-new002", experiment="lin", source="s", backend="local", state=JobState.PENDING, output_dir="o",
                        job_dir="j", after="local-new001"))
    assert [j.handle for j in store.jobs_where(sweep_id="sweep-abc123")] == ["local-new001"]
    assert [j.handle for j in store.jobs_where(after="local-new001")] == ["local-new002"]
    assert store.find_sweeps("sweep-ab")[0].axes == [["model.mask_ratio", [0.5, 0.9]]]
    assert store.update_sweep("sweep-abc123", closed_at=2.0).closed_at == 2.0
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 2
    JobStore(path)  # opening again does not migrate twice


# -- a real sweep --------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.integration
def test_local_sweep_one_parent_run_and_a_child_per_point(tmp_path, demo_shards, mlflow_tracking_uri):
    from mlflow.tracking import MlflowClient

    env = clean_env(tmp_path)
    experiment = f"tiny-sweep-{uuid.uuid4().hex[:8]}"  # the server outlives test sessions
    job = tiny_sweep(tmp_path, demo_shards, "sweep: {model.mask_ratio: [0.5, 0.9]}\n", tracking=True)
    started = time.monotonic()
    result = maectl(["sweep", job, "model.decoder_depth=1", f"tracking.uri={mlflow_tracking_uri}", f"tracking.experiment={experiment}", "--backend", "local", "--wait"],
                    env, timeout=400)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stdout + result.stderr
    sweep_id = re.search(r"submitted sweep (sweep-[0-9a-f]{6})", result.stdout)[1]
    handles = re.findall(r"(local-[0-9a-f]{6})", result.stdout)[:2]
    print(f"2-point local sweep: {elapsed:.0f} s from `maectl sweep` to both completed")

    client = MlflowClient(mlflow_tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 2, [(r.info.run_name, r.data.tags.get("mlflow.parentRunId")) for r in runs]
    parent = parents[0]
    assert parent.info.run_name == sweep_id and parent.info.status == "FINISHED"  # closed by the last point to end
    assert parent.data.params["sweep.model.mask_ratio"] == "[0.5, 0.9]" and parent.data.tags["sweep_id"] == sweep_id
    by_ratio = {r.data.params["model.mask_ratio"]: r for r in children}
    assert set(by_ratio) == {"0.5", "0.9"}
    for ratio, run in by_ratio.items():
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id and run.info.status == "FINISHED"
        assert run.data.tags["sweep_id"] == sweep_id and run.data.tags["sweep_point"] == f"model.mask_ratio={ratio}"
        assert run.data.params["model.decoder_depth"] == "1" and run.data.params["train.max_steps"] == "2"
        assert run.info.run_name in handles
        assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == [1, 2]
        output_dir = tmp_path / "out" / "tiny-sweep" / run.info.run_name
        assert (output_dir / "mlflow_run_id").read_text().strip() == run.info.run_id and (output_dir / "final" / "mae.pt").exists()

    status = maectl(["status", sweep_id[:9]], env)
    assert status.returncode == 0, status.stderr
    assert status.stdout.count("completed") == 2 and all(h in status.stdout for h in handles)
    assert "0.5" in status.stdout and "0.9" in status.stdout and parent.info.run_id in status.stdout and "(ended)" in status.stdout
    listing = maectl(["list", "--jobs"], env)
    assert sweep_id in listing.stdout and "2 completed" in listing.stdout
    assert listing.stdout.count(sweep_id) == 3  # the sweep's row and each point's "part of"


# -- SLURM: the points as one job array ----------------------------------------------------------
def test_slurm_dry_run_is_one_array_script_matching_golden(tmp_path):
    result = maectl([*SWEEP_GOLDEN, "--backend", "slurm"], clean_env(tmp_path))
    assert result.returncode == 0, result.stderr
    assert_no_secrets(result.stdout + result.stderr)
    check_golden("sweep_dry_run_slurm.txt", plan_part(result.stdout))
    assert str(tmp_path) not in result.stdout
    assert result.stdout.count("#!/bin/bash") == 1 and result.stdout.count("#SBATCH --array=0-1%2") == 1
    assert "#SBATCH --output='<output_root>/pretrain-vit-tiny-demo/<sweep>/slurm/%A_%a_0_log.out'" in result.stdout
    assert "#SBATCH --job-name='pretrain-vit-tiny-demo.<sweep>'" in result.stdout
    assert result.stdout.count("# --- file <output_root>/pretrain-vit-tiny-demo/<sweep>/slurm/<handle>/job.yaml ---") == 2
    assert [s["resolved"]["model"]["mask_ratio"] for s in rendered_specs(result.stdout)] == [0.5, 0.9]
    assert jobs_recorded(tmp_path) == 0 and not (tmp_path / "home").exists() and not (tmp_path / "out").exists()


def test_slurm_points_with_different_allocations_are_separate_jobs(isolated, demo_shards):
    from orchestrator.backends.slurm import array_folder, array_plan

    job, limit = tiny_sweep(isolated, demo_shards), "resources.time_limit_min=30"
    same = [p.prepared.request for p in plan(job, ["model.mask_ratio=0.5,0.9", limit], backend="slurm", dry_run=True).points]
    folder, params, max_requeues = array_plan(same)
    assert folder == array_folder(same[0]) == f"{isolated}/out/tiny-sweep/<sweep>/slurm" and params["array_parallelism"] == 2
    assert params["job_name"] == "tiny-sweep.<sweep>" and params["comment"] == "maectl <sweep>" and max_requeues == 3
    configured = [p.prepared.request for p in plan(job, ["model.mask_ratio=0.5,0.9", limit, "slurm.job_folder=/shared/jobs"],
                                                   backend="slurm", dry_run=True).points]
    assert array_plan(configured)[0] == "/shared/jobs/<sweep>"
    # Another allocation per point, another requeue bound, or a dependency: one job per point.
    for axis in ("resources.mem_gb=1,2", "slurm.max_requeues=1,2"):
        requests = [p.prepared.request for p in plan(job, [axis, limit], backend="slurm", dry_run=True).points]
        assert array_plan(requests) is None, axis
    same[1].depends_on = [same[0]]
    assert array_plan(same) is None
    assert array_plan(same[:1]) is None  # one point: a plain job
    sweep = plan(job, ["resources.mem_gb=1,2", limit], backend="slurm", dry_run=True)
    from orchestrator.sweeps import render_dry_run

    text = render_dry_run(sweep)
    assert text.count("#!/bin/bash") == 2 and "--array" not in text


@pytest.mark.slow
def test_cancel_takes_a_sweep_id(tmp_path, demo_shards):
    """`maectl cancel SWEEP` stops every point still going (here: two running local jobs)."""
    from orchestrator.backends import JobState
    from orchestrator.store import JobStore

    env = clean_env(tmp_path)
    job = tiny_sweep(tmp_path, demo_shards, steps=100_000)
    result = maectl(["sweep", job, "model.mask_ratio=0.5,0.9", "--backend", "local"], env)
    assert result.returncode == 0, result.stdout + result.stderr
    sweep_id = re.search(r"submitted sweep (sweep-[0-9a-f]{6})", result.stdout)[1]
    store = JobStore(tmp_path / "home" / "jobs.db")
    jobs = store.jobs_where(sweep_id=sweep_id)
    assert len(jobs) == 2
    deadline = time.monotonic() + 120
    for record in jobs:  # both training
        log = Path(record.log_path)
        while "step" not in (log.read_text() if log.exists() else "") and time.monotonic() < deadline:
            time.sleep(0.3)
    cancelled = maectl(["cancel", sweep_id], env)
    assert cancelled.returncode == 0, cancelled.stdout + cancelled.stderr
    assert f"sweep {sweep_id}: 2 of 2 job(s) still going" in cancelled.stdout
    from orchestrator.submission import refresh

    deadline = time.monotonic() + 60  # a loaded machine: the supervisor records the end a moment later
    while time.monotonic() < deadline and not all(refresh(store.get(j.handle), store).state is JobState.CANCELLED for j in jobs):
        time.sleep(0.5)
    states = {j.handle: refresh(store.get(j.handle), store).state for j in jobs}
    assert all(state is JobState.CANCELLED for state in states.values()), states
    status = maectl(["status", sweep_id, "--json"], env)
    assert status.returncode == 143 and '"cancelled": 2' in status.stdout
