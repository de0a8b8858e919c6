"""Errors the CLI turns into a one-line message and an exit code."""


class UsageError(Exception):
    """Bad input from the user (file, key, value, sample). Exit code 2, nothing submitted."""

    exit_code = 2
