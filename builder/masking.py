"""Secrets masked in a written file in the form its file type still parses with: what
`azbuild render` writes, and what a build records of the files it fed its guest."""

from __future__ import annotations

from builder.redact import MASK, SHELL_MASK, XML_MASK, redact

# Files whose masked secrets stay in a string or a value where `<sensitive>` is valid.
_PLAIN_MASK_FILES = {"user-data", "meta-data"}
_PLAIN_MASK_SUFFIXES = (".yaml", ".yml", ".json", ".toml")


def mask_for(name: str) -> str:
    """The placeholder for a secret in the file `name` that keeps the file parsing."""
    if name.endswith(".xml"):
        return XML_MASK
    if name in _PLAIN_MASK_FILES or name.endswith(_PLAIN_MASK_SUFFIXES):
        return MASK
    return SHELL_MASK  # scripts, kickstart and preseed (shell in %post), the kernel cmdline


def masked_files(files: dict[str, str]) -> dict[str, str]:
    """`files` with every secret masked in the form its file type still parses with."""
    return {name: redact(text, mask_for(name)) for name, text in files.items()}
