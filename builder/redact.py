"""Keeps sensitive values out of every output: logs, errors, files we write.

Values are registered when a template is loaded; everything that leaves the
process as text goes through `redact()`.
"""

from __future__ import annotations

import json
import logging
from typing import Any
from xml.sax.saxutils import escape

MASK = "<sensitive>"
XML_MASK = escape(MASK)
"""`<sensitive>` as XML text: the file still parses, and reads `<sensitive>` when parsed."""
SHELL_MASK = "__sensitive__"
"""One shell word in any quoting: `<sensitive>` outside quotes would be a redirection."""
_secrets: set[str] = set()


MIN_LENGTH = 4


def register(value: object) -> None:
    """Mask this value, and the escaped forms it takes in reprs and JSON, from now on."""
    text = str(value) if value is not None else ""
    # Very short values would mask innocent text everywhere; they are still kept
    # out of structured output by the callers that know which fields are secret.
    if len(text) < MIN_LENGTH:
        return
    _secrets.add(text)
    escaped_forms = (
        repr(text)[1:-1], json.dumps(text)[1:-1], json.dumps(text, ensure_ascii=False)[1:-1],
        escape(text), escape(text, {'"': "&quot;"}),  # XML text and attributes
    )
    for escaped in escaped_forms:
        if len(escaped) >= MIN_LENGTH:
            _secrets.add(escaped)


def clear() -> None:
    _secrets.clear()


def redact(text: str, mask: str = MASK) -> str:
    for secret in sorted(_secrets, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, mask)
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
            # Formatters print exc_text as it is; render the traceback here, masked.
            if record.exc_info and not record.exc_text:
                record.exc_text = logging.Formatter().formatException(record.exc_info)
            if record.exc_text:
                record.exc_text = redact(record.exc_text)
            if record.stack_info:
                record.stack_info = redact(record.stack_info)
        return True
