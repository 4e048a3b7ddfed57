"""Which file set each value of a resolved template (`azbuild inspect --provenance`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from builder.template import VAR_ENV_PREFIX, LoadedTemplate
from builder.toml_lines import KeyPath


@dataclass(frozen=True)
class Origin:
    """Where one value comes from.

    `source` is "template", "layer", "--var", "environment" (AZBUILD_VAR_<name>),
    "var-file" or "default"; `file` is the file that holds the value (none for --var, the
    environment and defaults); `via` names the variable when the key is exactly
    `${var.NAME}`, which the file that writes the key is `via_file`.
    """

    key: str
    value: Any
    source: str
    file: Path | None = None
    via: str | None = None
    via_file: Path | None = None

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"key": self.key, "value": self.value, "source": self.source,
                                "file": str(self.file) if self.file else None}
        if self.via is not None:
            data["via"] = f"${{var.{self.via}}}"
            data["via_file"] = str(self.via_file) if self.via_file else None
        return data


def provenance(loaded: LoadedTemplate) -> list[Origin]:
    """One Origin per value of the resolved template (as `inspect` shows it), in its order."""
    origins: list[Origin] = []
    for path, value in _leaves(loaded.redacted_dict(), (), loaded.origins):
        key = _dotted(path)
        if path[0] == "variables" and len(path) == 2:
            origins.append(_variable_origin(loaded, key, value, str(path[1])))
            continue
        variable = loaded.references.get(path)
        file = loaded.origins.get(path)
        if variable is not None:
            found = _variable_origin(loaded, key, value, variable)
            origins.append(Origin(key, value, found.source, found.file, variable, file))
        elif file is not None:
            origins.append(Origin(key, value, _file_kind(loaded, file), file))
        else:
            origins.append(Origin(key, value, "default"))
    return origins


def _variable_origin(loaded: LoadedTemplate, key: str, value: Any, name: str) -> Origin:
    if name not in loaded.variable_sources:  # cannot happen for a loaded template
        return Origin(key, value, "default")
    file = loaded.variable_sources[name]
    if file is None:
        from_environment = name in loaded.environment_variables
        return Origin(key, value, "environment" if from_environment else "--var")
    if file in loaded.layers:
        return Origin(key, value, _file_kind(loaded, file), file)
    return Origin(key, value, "var-file", file)


def _file_kind(loaded: LoadedTemplate, file: Path) -> str:
    return "template" if file == loaded.path else "layer"


def _leaves(data: Any, path: KeyPath, origins: dict[KeyPath, Path]) -> list[tuple[KeyPath, Any]]:
    """(key path, value) of every value that is not a table; a list of tables is walked into,
    and so is a list whose items files set one by one (layers append to it): item by item."""
    if isinstance(data, dict) and (data or not path):
        return [leaf for key, value in data.items()
                for leaf in _leaves(value, (*path, key), origins)]
    by_item = isinstance(data, list) and data and (
        all(isinstance(item, dict) for item in data) or (*path, 0) in origins)
    if by_item:
        return [leaf for index, item in enumerate(data)
                for leaf in _leaves(item, (*path, index), origins)]
    return [(path, data)]


def _dotted(path: KeyPath) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else ("." if out else "") + str(part)
    return out


def format_provenance(origins: list[Origin]) -> str:
    """`key = value  # source file` lines, the comments aligned; values as JSON (TOML-like)."""
    rows = [(f"{o.key} = {json.dumps(o.value)}", _describe(o)) for o in origins]
    width = min(max((len(left) for left, _ in rows), default=0), 48)  # long values overflow
    return "\n".join(f"{left.ljust(width)}  # {right}" for left, right in rows)


def _describe(origin: Origin) -> str:
    where = f"{origin.source} {origin.file}" if origin.file else origin.source
    if origin.source == "environment":
        where += f" {VAR_ENV_PREFIX}{origin.via or origin.key.removeprefix('variables.')}"
    if origin.via is not None:
        where += f" (via ${{var.{origin.via}}} in {origin.via_file})"
    return where
