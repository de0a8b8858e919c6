"""Shared pytest setup. Fixtures live in tests/fixtures/, one module per concern."""

import os
from pathlib import Path

# The suite's own site file (backend: local), so that the dev stack's SLURM and Ray on this
# machine are used only where a test asks for them. Tests of site handling set their own.
os.environ.setdefault("MAECTL_SITE", str(Path(__file__).parent / "fixtures" / "site.yaml"))

pytest_plugins = [
    "tests.fixtures.datasets",
    "tests.fixtures.services",
    "tests.fixtures.s3",
]
