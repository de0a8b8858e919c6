"""Shared pytest setup. Fixtures live in tests/fixtures/, one module per concern."""

pytest_plugins = [
    "tests.fixtures.datasets",
    "tests.fixtures.services",
    "tests.fixtures.s3",
]
