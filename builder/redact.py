"""Keeps sensitive values out of every output: logs, errors, files we write.

Values are registered when a template is loaded; everything that leaves the
process as text goes through `redact()`.
"""

from __future__ import annotations

import logging
from typing import Any

MASK = "<sensitive>"
_secrets: set[str] = set()


def register(value: object) -> None:
    text = str(value) if value is not None else ""
    # Very short values would mask innocent text everywhere; they are still kept
    # out of structured output by the callers that know which fields are secret.
    if len(text) >= 4:
        _secrets.add(text)


def clear() -> None:
    _secrets.clear()


def redact(text: str) -> str:
    for secret in sorted(_secrets, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def redact_data(data: Any) -> Any:
    """Redact every string inside nested dicts and lists."""
    if isinstance(data, str):
        return redact(data)
    if isinstance(data, dict):
        return {key: redact_data(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [redact_data(value) for value in data]
    return data


class RedactingFilter(logging.Filter):
    """Masks secrets in every log record before any handler formats it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _secrets:
            record.msg = redact(record.getMessage())
            record.args = None
        return True
