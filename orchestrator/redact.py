"""Keeping credentials out of everything maectl writes or prints: params, tags, logs, dry-runs.

Two rules: a value stored under a secret-looking name is replaced whole, and any string is
scrubbed of URL passwords (`scheme://user:PASSWORD@host`), AWS access-key ids and the values
of secret-named environment variables present in this process.
"""

from __future__ import annotations

import os
import re

REDACTED = "<redacted>"

# Name parts that mark a secret: AWS_SECRET_ACCESS_KEY, AWS_ACCESS_KEY_ID, HF_TOKEN,
# MLFLOW_TRACKING_PASSWORD, api_key, ... but not keep_last or knn_k.
_SECRET_NAME = re.compile(r"secret|token|passw(or)?d|credential|auth|(^|[_\-.])(api|access)?key(s|_id)?($|[_\-.])|apikey|accesskey", re.IGNORECASE)
_URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.\-]*://[^/\s:@]+:)(?P<password>[^@/\s]+)(?P<tail>@)")
_AWS_KEY_ID = re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b")
# Shorter values would redact ordinary words that happen to equal a weak test password.
_MIN_ENV_SECRET_LENGTH = 6


def is_secret_name(name: str) -> bool:
    return bool(_SECRET_NAME.search(name))


def _env_secret_values() -> list[str]:
    for _ in range(5):
        try:
            # Libraries' threads (MLflow's telemetry) may change the environment while we read it.
            items = list(os.environ.items())
            break
        except (KeyError, RuntimeError):
            continue
    else:
        items = []
    values = {v for k, v in items if is_secret_name(k) and len(v) >= _MIN_ENV_SECRET_LENGTH}
    return sorted(values, key=len, reverse=True)


def scrub_text(text: str) -> str:
    """`text` with URL passwords, access-key ids and secret environment values replaced."""
    text = _URL_PASSWORD.sub(lambda m: m["head"] + REDACTED + m["tail"], text)
    text = _AWS_KEY_ID.sub(REDACTED, text)
    for value in _env_secret_values():
        text = text.replace(value, REDACTED)
    return text


def scrub_value(name: str, value):
    """The value to show for `name`: redacted whole when the name looks secret."""
    if value is None:
        return None
    if is_secret_name(name.rsplit(".", 1)[-1]):
        return REDACTED
    return scrub_text(value) if isinstance(value, str) else value


def scrub_tree(tree):
    """A copy of a nested dict/list with secret-named entries and secret-looking strings redacted."""
    if isinstance(tree, dict):
        return {k: (REDACTED if is_secret_name(str(k)) and v is not None else scrub_tree(v)) for k, v in tree.items()}
    if isinstance(tree, list):
        return [scrub_tree(v) for v in tree]
    if isinstance(tree, str):
        return scrub_text(tree)
    return tree
