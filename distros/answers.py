"""Compatibility re-export: the answer-file renderer is `builder/answers.py`.

Code that imports these names from `distros.answers` keeps working while it moves to
`builder.answers`; the distro plugins themselves import nothing from the engine. The
answer-file templates stay in `distros/answers/`, beside the plugins that name them.
"""

from __future__ import annotations

from builder.answers import (
    ANSWER_TEMPLATE_DIR,
    SERIAL_CONSOLE,
    AnswerContext,
    AnswerMedia,
    answer_file_syntax_error,
    answer_media,
    answer_variables,
    hash_password,
    install_packages,
    installer_cmdline,
    installer_failure_patterns,
    installer_failure_regex,
    render_answer_files,
)

__all__ = [
    "ANSWER_TEMPLATE_DIR",
    "SERIAL_CONSOLE",
    "AnswerContext",
    "AnswerMedia",
    "answer_file_syntax_error",
    "answer_media",
    "answer_variables",
    "hash_password",
    "install_packages",
    "installer_cmdline",
    "installer_failure_patterns",
    "installer_failure_regex",
    "render_answer_files",
]
