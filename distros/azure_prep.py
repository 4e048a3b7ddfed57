"""Compatibility re-export: the Azure preparation renderer is `builder/azure_prep.py`.

Code that imports these names from `distros.azure_prep` keeps working while it moves to
`builder.azure_prep`; the distro plugins themselves import nothing from the engine. The
script templates stay in `distros/prep/`.
"""

from __future__ import annotations

from builder.azure_prep import (
    BUILD_SSHD_DROPIN,
    CLOUD_INIT_DROPIN,
    KARG_RE,
    MODULE_RE,
    PATH_RE,
    ROOTDELAY_PATTERN,
    SCRIPT_NAMES,
    USER_RE,
    kernel_args,
    prep_context,
    prep_facts,
    prep_scripts,
)
from distros.facts import PrepFacts

__all__ = [
    "BUILD_SSHD_DROPIN",
    "CLOUD_INIT_DROPIN",
    "KARG_RE",
    "MODULE_RE",
    "PATH_RE",
    "ROOTDELAY_PATTERN",
    "SCRIPT_NAMES",
    "USER_RE",
    "PrepFacts",
    "kernel_args",
    "prep_context",
    "prep_facts",
    "prep_scripts",
]
