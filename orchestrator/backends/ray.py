"""The Ray backend: the job runs as a Ray Job whose driver starts a Ray Train `TorchTrainer`.

    maectl submit NAME --backend ray
      -> <job_dir>/ray/job.yaml                          the spec, uploaded as the job's working_dir
      -> Ray Job (JobSubmissionClient.submit_job):
           entrypoint  python -m orchestrator.ray_entry job.yaml --workers N ... --code ship|installed
           runtime_env {working_dir, py_modules: [orchestrator/, mae_core/], env_vars}
      -> the driver: TorchTrainer(run_job(spec) on each worker, ScalingConfig, RunConfig)

`submit` returns once the cluster accepted the job; `status`, `logs` and `cancel` use the Ray
Jobs REST API of the cluster's dashboard (`GET /api/jobs/ID`, `GET .../logs`, `POST .../stop`),
so they answer without importing ray. Every request carries Ray's auth token when one is
configured (`ray_auth_token`: $RAY_AUTH_TOKEN, $RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token).

The code: the packages as imported by the submitter travel in the runtime env (py_modules, far
below Ray's 100 MiB cap), so a node without the checkout (its own disk, an editable install
elsewhere) runs the submitter's code; or, with the site key `cluster_has_maectl`, the
cluster's own install runs. Either way the driver and each worker compare the digest of the
code they imported with the submitter's and stop with exit 2 if it differs (ray_entry.py).

The environment: endpoints and settings by prefix (AWS_*, MLFLOW_*, RAY_TRAIN_*, ...) travel in
runtime_env.env_vars; credentials (secret-looking names, values with a password) only where the
site file names them in `pass_env` (env_vars are visible in the dashboard). The dry-run lists
what is held back and shows what travels redacted.

Failures and restarts: see orchestrator/ray_entry.py — the engine's checkpoints in output_dir,
reported to Ray Train as pointer checkpoints in Ray's storage; the driver restarts the worker
group up to `ray.max_failures` times, each attempt resuming from `get_checkpoint()` and
continuing the same MLflow run, and never after an exit code that no retry can fix.

Pre-submit checks (exit 2, nothing submitted): a job that spans nodes (resources.nodes > 1, or
a cluster with more than one alive node) keeps Ray's storage, the output folder and the data on
s3:// or a site `shared_paths` folder (also in a --dry-run, for resources.nodes); the code fits
Ray's package cap. Then, skipped by --dry-run, which never contacts the cluster: the job API
answers; the alive nodes have room for every worker (unless `ray.autoscaling`); Ray's storage
path and the output folder are writable; the dataset manifest is readable.

Dependencies (pipelines): Ray has no job dependencies, so a follow-up is a Ray Job submitted at
once whose entrypoint is `python -m orchestrator.backends.ray after --job ID ... -- <entrypoint>`:
a waiter that polls the Ray Jobs it follows on the cluster's job API and, once all SUCCEEDED,
replaces itself (exec) with the real entrypoint, or exits with ExitCode.DEPENDENCY_FAILED if one
failed or was stopped. The chain lives on the cluster, so the submitting machine may go away.
The waiter reserves no CPU (a Ray Job's entrypoint asks for none); `status` shows PENDING while
it waits, CANCELLED ("not run") if it gave up.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mae_core.exitcodes import ExitCode

from .. import checks
from ..experiments import HANDLE_PLACEHOLDER, ExperimentError
from ..jobspec import SPEC_FILE
from ..plan import PASSED_ENV_PREFIXES, LaunchPlan, write_files
from ..ray_entry import CODE_DIGEST_ENV, code_digest, package_dirs
from ..redact import is_secret_name, scrub_text
from .base import Backend, LaunchRequest, Status, Submitted
from .states import JobState

WORKING_DIR = "ray"  # under the job's folder: holds only job.yaml, the job's working_dir
SPEC_NAME = SPEC_FILE
# Ray Train's own knobs (health-check interval, timeouts) set where maectl runs reach the job.
RAY_PASSED_ENV_PREFIXES = (*PASSED_ENV_PREFIXES, "RAY_TRAIN_")
HTTP_TIMEOUT_S = 10.0
CANCEL_WAIT_S = 30.0
DEPENDENCY_POLL_S = 5.0
PACKAGE_LIMIT_BYTES = 100 << 20  # Ray Jobs' cap on one working_dir / py_modules package
CODE_EXCLUDES = ("__pycache__/", "*.pyc")

# Ray job states -> maectl's. A stopped job is one that someone stopped: `ray job stop`,
# `maectl cancel` or the dashboard.
STATES = {
    "PENDING": JobState.PENDING,
    "RUNNING": JobState.RUNNING,
    "SUCCEEDED": JobState.COMPLETED,
    "FAILED": JobState.FAILED,
    "STOPPED": JobState.CANCELLED,
}


class RayUnreachable(RuntimeError):
    pass


def normalise_address(address: str) -> str:
    """The dashboard's job API as a URL; `host:port` means http."""
    address = address.strip().rstrip("/")
    if "://" not in address:
        address = f"http://{address}"
    return address


def ray_auth_token() -> str | None:
    """Ray's token (token auth, Ray >= 2.52; on by default for new clusters in 2.60), where the
    Ray docs say a client finds it: $RAY_AUTH_TOKEN, the file $RAY_AUTH_TOKEN_PATH, else
    ~/.ray/auth_token. None when RAY_AUTH_MODE=disabled or no token is configured."""
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        return None
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return os.environ["RAY_AUTH_TOKEN"].strip()
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if path:
        try:
            token = Path(path).expanduser().read_text().strip()
        except OSError as err:
            raise RayUnreachable(f"RAY_AUTH_TOKEN_PATH={path}: cannot read the token ({err.strerror})") from None
        if not token:
            raise RayUnreachable(f"RAY_AUTH_TOKEN_PATH={path} is empty")
        return token
    default = Path("~/.ray/auth_token").expanduser()
    if default.is_file():
        return default.read_text().strip() or None
    return None


def auth_headers() -> dict[str, str]:
    """The header every request to the job API carries (REST calls and JobSubmissionClient)."""
    token = ray_auth_token()
    return {"Authorization": f"Bearer {token}"} if token else {}


def _http_json(url: str, *, method: str = "GET", timeout: float = HTTP_TIMEOUT_S):
    request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None, headers=auth_headers())
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read().decode() or "null")
    except urllib.error.HTTPError as err:
        body = err.read().decode(errors="replace")[:300]
        if err.code in (401, 403):
            body += (" (the cluster has token auth: set RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH, or put the token in ~/.ray/auth_token)"
                     if err.code == 401 else " (the Ray auth token sent is not the cluster's)")
        raise RayUnreachable(f"{scrub_text(url)}: HTTP {err.code} {body}") from None
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        raise RayUnreachable(f"{scrub_text(url)}: {reason}") from None


@dataclass(frozen=True)
class Scaling:
    """What Ray Train's ScalingConfig gets, from maectl's resources."""

    workers: int
    gpus_per_worker: int
    cpus_per_worker: int

    @classmethod
    def of(cls, resources) -> Scaling:
        return cls(workers=resources.world_size, gpus_per_worker=1 if resources.gpus_per_node else 0,
                   cpus_per_worker=resources.cpus_per_task or 1)

    @property
    def per_worker(self) -> dict[str, int]:
        out = {"CPU": self.cpus_per_worker}
        if self.gpus_per_worker:
            out["GPU"] = self.gpus_per_worker
        return out

    def slots(self, node_resources: dict[str, float]) -> int:
        """How many workers fit on a node with these total resources."""
        return min(int(node_resources.get(name, 0.0) // amount) for name, amount in self.per_worker.items())


class RayBackend(Backend):
    name = "ray"
    supports_dependencies = True

    # -- what the job is -------------------------------------------------------------------------
    @staticmethod
    def _config(request: LaunchRequest):
        return request.experiment.spec.ray

    def _address(self, request: LaunchRequest) -> str | None:
        address = self._config(request).address or os.environ.get("RAY_ADDRESS")
        return normalise_address(address) if address else None

    def _storage_path(self, request: LaunchRequest) -> str:
        configured = self._config(request).storage_path
        return (configured or f"{request.experiment.output_root.rstrip('/')}/ray").rstrip("/")

    @staticmethod
    def _site(request: LaunchRequest):
        from ..site import active

        return request.experiment.site or active()

    def _ships_code(self, request: LaunchRequest) -> bool:
        return not self._site(request).config.cluster_has_maectl

    def _placement(self, request: LaunchRequest) -> str:
        chosen = self._config(request).placement_strategy
        if chosen != "auto":
            return chosen
        # More than one node asked for: one worker group across them, not packed onto the head.
        return "SPREAD" if request.resources.nodes > 1 else "PACK"

    def _entrypoint(self, request: LaunchRequest) -> list[str]:
        scaling = Scaling.of(request.resources)
        # `python`, not this interpreter's path: the entrypoint runs on the cluster, where the
        # head's PATH names the environment that has maectl installed.
        words = ["python", "-m", "orchestrator.ray_entry", SPEC_NAME, "--workers", str(scaling.workers),
                 "--cpus-per-worker", str(scaling.cpus_per_worker)]
        if scaling.gpus_per_worker:
            words += ["--gpus-per-worker", str(scaling.gpus_per_worker)]
        words += ["--storage-path", self._storage_path(request), "--max-failures", str(self._config(request).max_failures),
                  "--placement-strategy", self._placement(request), "--code", "ship" if self._ships_code(request) else "installed"]
        if request.depends_on:
            # The Ray submission id is the maectl handle, so the handle names the job to wait for.
            waits = [word for dep in request.depends_on for word in ("--job", dep.handle)]
            words = ["python", "-m", "orchestrator.backends.ray", "after", *waits, "--address", self._address(request) or "", "--", *words]
        return words

    def _passed(self, request: LaunchRequest) -> tuple[dict[str, str], list[str]]:
        """(what travels from this shell, the credentials held back). Endpoints and settings
        (AWS_*, MLFLOW_*, ... by prefix) travel; a credential (a secret-looking name, or a value
        with a password in it) only if the site file names it in pass_env: runtime_env.env_vars
        are readable by anyone with dashboard access. pass_env may name any other variable too."""
        named = set(self._site(request).config.pass_env)
        passed, held = {}, []
        for name in sorted(os.environ):
            value = os.environ[name]
            if name in named:
                passed[name] = value
            elif name.startswith(RAY_PASSED_ENV_PREFIXES):
                if is_secret_name(name) or scrub_text(value) != value:
                    held.append(name)
                else:
                    passed[name] = value
        return passed, held

    def _environment(self, request: LaunchRequest) -> dict[str, str]:
        """The job's env_vars: Ray gives them to the driver and every worker (the cluster's
        processes do not share this shell's environment); credentials only as _passed says."""
        # Ray Train V2 sends workers' print() to its logger and, where Ray has wrapped stdout,
        # to stdout as well: every line of the job log would appear twice.
        # Ray's log de-duplication merges lines that differ only in numbers across workers
        # within 5 s: each rank's "rank N: pid P" line, say, and a rank-1 error behind rank 0's.
        env = {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0", "RAY_DEDUP_LOGS": "0"}
        env.update(self._passed(request)[0])
        env.update({"PYTHONUNBUFFERED": "1", "MAECTL_JOB": request.handle, CODE_DIGEST_ENV: code_digest()})
        env.update(request.env)
        return env

    def _working_dir(self, request: LaunchRequest) -> Path:
        return request.job_dir / WORKING_DIR

    def _runtime_env(self, request: LaunchRequest, env: dict[str, str]) -> dict:
        runtime_env = {"working_dir": str(self._working_dir(request))}
        if self._ships_code(request):
            # The packages as imported here (an editable checkout, a wheel): Ray zips each folder
            # into its GCS and puts it on every job process's path, on every node.
            runtime_env["py_modules"] = [str(p) for p in package_dirs()]
            runtime_env["excludes"] = list(CODE_EXCLUDES)
        runtime_env["env_vars"] = env
        return runtime_env

    def _metadata(self, request: LaunchRequest) -> dict[str, str]:
        return {"maectl_handle": request.handle, "experiment": request.experiment.name}

    # -- checks ----------------------------------------------------------------------------------
    def check(self, request: LaunchRequest) -> None:
        source = request.experiment.source_display
        address = self._address(request)
        if address and urllib.parse.urlsplit(address).scheme not in ("http", "https"):
            raise ExperimentError(source, "ray.address", f"{scrub_text(address)} is not the dashboard's job API: give http://HEAD:8265 "
                                                        f"(ray:// client and GCS addresses are not for job submission)")
        self._check_shared(request, request.resources.nodes, f"the job asks for {request.resources.nodes} nodes")
        if self._ships_code(request):
            self._check_code_size(request)
        if request.handle == HANDLE_PLACEHOLDER:
            # A dry-run (its handle is still the placeholder): print the spec without contacting
            # the cluster or touching storage, so it works for a cluster that is not up yet.
            return
        if not address:
            raise ExperimentError(source, "ray.address", "no Ray cluster given: set ray.address (the job API, http://HEAD:8265) "
                                                        "or $RAY_ADDRESS")
        nodes = self._check_cluster(request, address, source)
        if nodes > 1:
            self._check_shared(request, nodes, f"the Ray cluster has {nodes} nodes and a (restarted) worker may run on any of them")
        for key, location in (("ray.storage_path", self._storage_path(request)), ("output_dir", request.experiment.run.output_dir)):
            problem = checks.probe_writable(location)
            if problem:
                raise ExperimentError(source, key, f"cannot write to {scrub_text(location)} ({problem}); the job would fail at its first "
                                                   f"checkpoint")
        checks.check_manifest(request.experiment)

    def _check_shared(self, request: LaunchRequest, nodes: int, why: str) -> None:
        """Checkpoints, the output folder and the data: on storage every node reaches."""
        resolved = request.experiment
        for key, location in (("ray.storage_path", self._storage_path(request)), ("output_dir", resolved.run.output_dir),
                              ("data.url", resolved.run.data.url)):
            checks.check_shared(resolved, key, location, nodes=nodes, why=why)

    def _check_code_size(self, request: LaunchRequest) -> None:
        """Ray refuses a py_modules package over 100 MiB (at upload, after the job was recorded)."""
        for folder in package_dirs():
            size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
            if size > PACKAGE_LIMIT_BYTES:
                raise ExperimentError(self._site(request).label, "cluster_has_maectl",
                                      f"{folder} is {size / 2**20:.0f} MiB, over Ray's {PACKAGE_LIMIT_BYTES >> 20} MiB limit for a "
                                      f"py_modules package: install maectl on the cluster and set cluster_has_maectl: true")

    def _check_cluster(self, request: LaunchRequest, address: str, source: str) -> int:
        """The job API answers and the alive nodes have room; returns how many nodes are alive."""
        try:
            _http_json(f"{address}/api/version", timeout=5.0)
        except RayUnreachable as err:
            raise ExperimentError(source, "ray.address", f"the Ray job API does not answer ({err}); is the cluster up? "
                                                        f"(address from {'ray.address' if self._config(request).address else '$RAY_ADDRESS'})") from None
        scaling = Scaling.of(request.resources)
        try:
            nodes = _alive_nodes(address)
        except RayUnreachable as err:
            raise ExperimentError(source, "ray.address", f"cannot list the cluster's nodes ({err})") from None
        if self._config(request).autoscaling:
            return max(len(nodes), 2)  # nodes come and go: count it as more than one
        room = sum(scaling.slots(n.get("resources_total") or {}) for n in nodes)
        if room < scaling.workers:
            totals = {name: sum((n.get("resources_total") or {}).get(name, 0.0) for n in nodes) for name in ("CPU", "GPU")}
            raise ExperimentError(
                source, "resources",
                f"{scaling.workers} worker(s) x {scaling.per_worker} do not fit the Ray cluster at {scrub_text(address)}: its "
                f"{len(nodes)} alive node(s) ({totals['CPU']:g} CPU, {totals['GPU']:g} GPU in all) have room for {room}; lower "
                f"resources.nodes, tasks_per_node, gpus_per_node or cpus_per_task, or set ray.autoscaling=true if the cluster adds "
                f"nodes on demand")
        return len(nodes)

    # -- the plan and its launch ------------------------------------------------------------------
    def plan(self, request: LaunchRequest) -> LaunchPlan:
        scaling = Scaling.of(request.resources)
        config = self._config(request)
        address = self._address(request)
        working_dir = self._working_dir(request)
        env = self._environment(request)
        entrypoint = self._entrypoint(request)
        spec_text = request.spec.dump()
        job = {
            "address": address or "<$RAY_ADDRESS: not set>",
            "submission_id": request.handle,
            "entrypoint": shlex.join(entrypoint),
            "runtime_env": self._runtime_env(request, env),
            "metadata": self._metadata(request),
        }
        storage = self._storage_path(request)
        trainer = {
            "scaling_config": {"num_workers": scaling.workers, "use_gpu": bool(scaling.gpus_per_worker),
                               "resources_per_worker": scaling.per_worker, "placement_strategy": self._placement(request)},
            "run_config": {"name": request.handle, "storage_path": storage, "failure_config": {"max_failures": 0}},
            "restarts": f"up to {config.max_failures} attempts more (ray.max_failures), each resuming from get_checkpoint(); "
                        f"none after an exit code that no retry fixes",
            "checkpoints": f"the engine's, in {request.experiment.run.output_dir}; each reported (ray.train.report) as a "
                           f"pointer checkpoint in {storage}/{request.handle}",
        }
        held = self._passed(request)[1]
        code = (f"the job ships orchestrator/ and mae_core/ (py_modules, code {env[CODE_DIGEST_ENV]})" if self._ships_code(request) else
                f"the cluster's own maectl runs (site: cluster_has_maectl), checked against code {env[CODE_DIGEST_ENV]}")
        return LaunchPlan(
            backend=self.name, handle=request.handle,
            summary=(f"a Ray Job whose driver runs a Ray Train TorchTrainer with {scaling.workers} worker(s); submit returns at once",
                     f"the job's working_dir is {working_dir} (the spec only); the entrypoint builds the TorchTrainer below",
                     code,
                     *([f"credentials not passed to the cluster (name them in the site's pass_env to pass them): {', '.join(held)}"]
                       if held else [])),
            files={str(request.spec_path): spec_text, str(working_dir / SPEC_NAME): spec_text},
            env=env, inherits_env=False, command=tuple(entrypoint), job=job, native={"torch_trainer": trainer},
            spec_path=str(working_dir / SPEC_NAME), depends_on=tuple(d.handle for d in request.depends_on), label=request.label,
        )

    def launch(self, plan: LaunchPlan) -> Submitted:
        from ray.job_submission import JobSubmissionClient

        job = plan.job
        write_files(plan)
        client = JobSubmissionClient(job["address"], headers=auth_headers())
        submission_id = client.submit_job(entrypoint=job["entrypoint"], submission_id=job["submission_id"],
                                          runtime_env=job["runtime_env"], metadata=job["metadata"])
        address = job["address"]
        info = {"address": address, "submission_id": submission_id,
                "storage_path": plan.native["torch_trainer"]["run_config"]["storage_path"], "dashboard": f"{address}/#/jobs/{submission_id}"}
        if plan.depends_on:
            info["after"] = list(plan.depends_on)
        return Submitted(native_id=submission_id, log_path=None, info=info, state=JobState.PENDING)

    # -- status, logs, cancel --------------------------------------------------------------------
    @staticmethod
    def _job_url(record) -> str:
        return f"{record.info['address']}/api/jobs/{urllib.parse.quote(record.info['submission_id'])}"

    def status(self, record) -> Status:
        info = _http_json(self._job_url(record))
        state = STATES.get(info.get("status"), JobState.UNKNOWN)
        message = None
        after = record.info.get("after") or []
        if after and state == JobState.FAILED and info.get("driver_exit_code") == ExitCode.DEPENDENCY_FAILED:
            return Status(JobState.CANCELLED, ExitCode.DEPENDENCY_FAILED, f"not run: {', '.join(after)} did not succeed")
        if after and state in (JobState.PENDING, JobState.RUNNING):
            waiting = [h for h in after if _job_status(record.info["address"], h) != "SUCCEEDED"]
            if waiting:
                return Status(JobState.PENDING, None, f"waiting for {', '.join(waiting)} to succeed")
        if state == JobState.FAILED and info.get("message"):
            # Ray's message ends with the log's tail; its first line says what ended the job.
            message = scrub_text(info["message"].splitlines()[0])[:300]
        elif state == JobState.CANCELLED:
            message = "stopped (ray job stop)"
        return Status(state, info.get("driver_exit_code"), message)

    def logs(self, record, follow: bool = False) -> Iterator[str]:
        if follow:
            yield from self._follow(record)
            return
        text = (_http_json(f"{self._job_url(record)}/logs") or {}).get("logs", "")
        for line in text.splitlines(keepends=True):
            yield scrub_text(line if line.endswith("\n") else line + "\n")

    def _follow(self, record) -> Iterator[str]:
        """Ray's websocket tail (efficient for long logs), as a plain iterator of lines."""
        import asyncio

        from ray.job_submission import JobSubmissionClient

        client = JobSubmissionClient(record.info["address"], headers=auth_headers())
        stream = client.tail_job_logs(record.info["submission_id"])
        loop = asyncio.new_event_loop()
        pending = ""
        try:
            while True:
                try:
                    chunk = loop.run_until_complete(stream.__anext__())
                except StopAsyncIteration:
                    break
                pending += chunk
                *lines, pending = pending.split("\n")
                for line in lines:
                    yield scrub_text(line + "\n")
            if pending:
                yield scrub_text(pending + "\n")
        finally:
            loop.run_until_complete(stream.aclose())
            loop.close()

    def cancel(self, record) -> None:
        """`ray job stop`: SIGTERM to the driver (it marks the MLflow run KILLED and exits; its
        Train workers go with it), SIGKILL after Ray's grace period. Waits for the stop, so that
        `maectl cancel` can show the final state."""
        try:
            _http_json(f"{self._job_url(record)}/stop", method="POST")
        except RayUnreachable:
            if self.status(record).state.terminal:
                return
            raise
        deadline = time.monotonic() + CANCEL_WAIT_S
        while time.monotonic() < deadline and not self.status(record).state.terminal:
            time.sleep(0.5)


def _alive_nodes(address: str) -> list[dict]:
    """Nodes from the state API (`ray list nodes`), alive ones only."""
    answer = _http_json(f"{address}/api/v0/nodes?limit=10000&detail=false")
    nodes = ((answer or {}).get("data") or {}).get("result", {}).get("result", [])
    return [n for n in nodes if n.get("state") == "ALIVE"]


def _job_status(address: str, submission_id: str) -> str | None:
    """A Ray Job's status (PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED); None if the job API
    does not know it."""
    try:
        return (_http_json(f"{address}/api/jobs/{urllib.parse.quote(submission_id)}") or {}).get("status")
    except RayUnreachable as err:
        if "HTTP 404" in str(err):
            return None
        raise


def _cluster_job_api(submitted_address: str) -> str:
    """The job API as seen from inside the cluster: the address the job was submitted to if it
    answers here (the usual case: the driver runs on the head), else the dashboard's address
    that `ray.init()` reports."""
    if submitted_address:
        try:
            _http_json(f"{normalise_address(submitted_address)}/api/version", timeout=5.0)
            return normalise_address(submitted_address)
        except RayUnreachable:
            pass
    import ray

    context = ray.init()
    url = context.dashboard_url
    ray.shutdown()
    if not url:
        raise RayUnreachable("the cluster reports no dashboard (job API) address")
    return normalise_address(url)


def wait_then_exec(argv: list[str]) -> int:
    """`after --job ID [--job ID ...] --address URL -- ENTRYPOINT...`: run ENTRYPOINT once every
    Ray Job named has SUCCEEDED; exit ExitCode.DEPENDENCY_FAILED if one failed, was stopped or is unknown."""
    if "--" not in argv:
        print("usage: python -m orchestrator.backends.ray after --job ID ... --address URL -- ENTRYPOINT...", file=sys.stderr)
        return ExitCode.BAD_INPUT
    split = argv.index("--")
    options, command = argv[:split], argv[split + 1 :]
    jobs, address = [], ""
    for flag, value in zip(options[::2], options[1::2]):
        if flag == "--job":
            jobs.append(value)
        elif flag == "--address":
            address = value
    api = _cluster_job_api(address)
    print(f"[maectl] waiting for {', '.join(jobs)} to succeed (job API {scrub_text(api)})", flush=True)
    pending = list(jobs)
    while pending:
        for job in list(pending):
            try:
                status = _job_status(api, job)
            except RayUnreachable as err:
                # A restarting head is no reason to give up a queued follow-up: keep trying.
                print(f"[maectl] cannot ask about {job} ({err}); retrying", flush=True)
                continue
            if status == "SUCCEEDED":
                pending.remove(job)
            elif status in ("FAILED", "STOPPED", None):
                print(f"[maectl] not run: {job} {'is unknown to the cluster' if status is None else status.lower()}", flush=True)
                return ExitCode.DEPENDENCY_FAILED
        if pending:
            time.sleep(DEPENDENCY_POLL_S)
    print(f"[maectl] {', '.join(jobs)} succeeded: starting", flush=True)
    os.execvp(command[0], command)


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] != "after":
        print("usage: python -m orchestrator.backends.ray after ...", file=sys.stderr)
        sys.exit(ExitCode.BAD_INPUT)
    sys.exit(wait_then_exec(sys.argv[2:]))
