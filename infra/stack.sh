#!/usr/bin/env bash
# The development service stack (single-node SLURM + accounting, S3 API, MLflow, Ray head,
# and the multi-node clusters: 3-node SLURM `slurm_mn`, 2-node Ray `ray_mn`).
#   infra/stack.sh up [slurm|s3|mlflow|ray|slurm_mn|ray_mn ...]   start (idempotent); writes infra/.state/env.sh
#   infra/stack.sh down [--force] [SERVICE ...]      stop what it started (PID files only)
#   infra/stack.sh status [SERVICE ...]              table of services, PIDs, health
#   infra/stack.sh clean                             down, then remove all state under infra/.state
# The work is done by the Python package infra/stack/ (standard library only), run with the
# project's venv interpreter (MAECTL_VENV, default .venv). See docs/operations.md.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MAECTL_VENV:-$ROOT/.venv}"

main() {
    local py="$VENV/bin/python"
    if [[ ! -x "$py" ]]; then
        echo "stack: no Python at $py — run infra/dev.sh setup first (or set MAECTL_VENV)" >&2
        exit 2
    fi
    # The caller (infra/dev.sh, a terminal) holds the stack until its own `down`. When bash
    # exec'd this script in place of the caller (last command of `bash -c`), $$ is the caller.
    export MAECTL_STACK_CALLER="$PPID" MAECTL_STACK_SELF="$$"
    export MAECTL_STACK_CWD="$PWD"   # paths in messages are shown relative to it
    cd "$ROOT/infra"
    exec "$py" -m stack "$@"
}

main "$@"
