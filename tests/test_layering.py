"""mae_core must not import the orchestration stack: it runs inside jobs that any backend starts."""

import subprocess
import sys


def test_mae_core_imports_no_orchestration_packages():
    code = (
        "import sys\n"
        "import mae_core, mae_core.weights, mae_core.visualize, mae_core.optim, mae_core.models.classifier\n"
        "banned = [m for m in ('ray', 'submitit', 'mlflow', 'orchestrator') if m in sys.modules]\n"
        "print(','.join(banned))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"mae_core imported {out.stdout.strip()}"
