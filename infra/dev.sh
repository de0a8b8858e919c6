#!/usr/bin/env bash
# Development entry point: `infra/dev.sh demo` and `infra/dev.sh test` (the README's two commands).
# Creates ./.venv, installs maectl with every extra, and (for tests) brings up the service stack.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MAECTL_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"

# libjpeg's headers, for the crop-window JPEG decoder (mae_core/data/_jpegcrop.c) that pip builds;
# without them the build is skipped and the loader decodes whole images instead.
jpeg_headers() {
    [[ -f /usr/include/jpeglib.h ]] && return 0
    if [[ $EUID -eq 0 ]] && command -v apt-get >/dev/null; then
        echo "==> installing libjpeg62-turbo-dev (Debian)"
        apt-cache policy libjpeg62-turbo-dev | grep -q 'Candidate: [0-9]' || apt-get update -qq || true
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libjpeg62-turbo-dev >/dev/null \
            || echo "warning: libjpeg62-turbo-dev not installed: whole-image JPEG decoding" >&2
    fi
}

setup() {
    jpeg_headers
    if [[ ! -x "$VENV/bin/python" ]]; then
        echo "==> creating $VENV"
        "$PY" -m venv "$VENV"
    fi
    # A stamp keyed on pyproject.toml makes re-runs instant when nothing changed.
    local stamp="$VENV/.maectl-installed"
    if [[ ! -f "$stamp" || "$ROOT/pyproject.toml" -nt "$stamp" ]]; then
        echo "==> installing maectl and its dependencies into $VENV (first run: a few minutes)"
        "$VENV/bin/python" -m pip install -q --upgrade pip
        # torch/torchvision pinned to the pair that imports together on these machines.
        "$VENV/bin/python" -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
        "$VENV/bin/python" -m pip install -q -e "$ROOT[all,dev]"
        touch "$stamp"
    fi
}

cmd="${1:-}"; shift || true
case "$cmd" in
    setup) setup ;;
    demo)
        setup
        exec "$VENV/bin/maectl" demo "$@"
        ;;
    test)
        setup
        if [[ -x "$ROOT/infra/stack.sh" ]]; then
            "$ROOT/infra/stack.sh" up
            trap '"$ROOT/infra/stack.sh" down' EXIT
            # shellcheck disable=SC1091
            source "$ROOT/infra/.state/env.sh"
        fi
        cd "$ROOT"
        echo "==> lint (ruff, configured in pyproject.toml)"
        "$VENV/bin/ruff" check .
        "$VENV/bin/python" -m pytest "$@"
        ;;
    *)
        echo "usage: infra/dev.sh {setup|demo|test} [args...]" >&2
        exit 2
        ;;
esac
