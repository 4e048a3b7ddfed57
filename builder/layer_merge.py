"""How the files of a template combine (`extends`): tables merge key by key, and each list
key has one rule, append or replace (docs/templates.md#how-layers-combine).

Lists append across files, as mkosi appends its list settings across config files: a team
template adds packages to the shared layer's instead of silently dropping them. A file takes
out what the files below it added with its `[remove]` table (values, or provisioners by
`name`); a provisioner with the `name` of an earlier one replaces it in its place. The one
list that is replaced is `output.formats`: it is a choice of outputs, not a collection, and
a replaced list is said as a warning naming both files and lines.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from builder.errors import Problem
from builder.toml_lines import KeyPath, line_of

Rule = Literal["append", "replace"]
LIST_RULES: dict[KeyPath, Rule] = {
    ("install", "packages"): "append",
    ("install", "kernel_args"): "append",
    ("azure", "kernel_args_add"): "append",
    ("azure", "kernel_args_remove"): "append",
    ("azure", "hyperv_modules"): "append",
    ("provision",): "append",
    ("publish",): "append",
    ("output", "formats"): "replace",
}
# Lists of tables whose items are removed and replaced by their `name`.
NAMED_ITEMS: frozenset[KeyPath] = frozenset({("provision",)})
# The table a file removes with: its keys mirror the lists' ([remove] install.packages = [...]).
REMOVE_KEY = "remove"


def dotted(key_path: KeyPath) -> str:
    out = ""
    for part in key_path:
        out += f"[{part}]" if isinstance(part, int) else ("." if out else "") + str(part)
    return out or "(top level)"


def _problem(file: Path, key_path: KeyPath, message: str) -> Problem:
    return Problem(message, file, dotted(key_path), line_of(file, key_path))


def _where(file: Path, key_path: KeyPath) -> str:
    line = line_of(file, key_path)
    return f"{file}: line {line}" if line is not None else str(file)


@dataclass
class LayerMerge:
    """The files of one template merged in order, lowest first: the data, the file that set
    each key and list item (`origins`), the keys that are one `${var.NAME}` (`references`),
    and what was said on the way."""

    data: dict[str, Any] = field(default_factory=dict)
    origins: dict[KeyPath, Path] = field(default_factory=dict)
    references: dict[KeyPath, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    problems: list[Problem | str] = field(default_factory=list)

    def add(self, source: Path, data: dict[str, Any], references: dict[KeyPath, str],
            removals: Any = None) -> None:
        """Merge one file's data over what is there; `references` are its own key paths, and
        `removals` its `[remove]` table, applied first."""
        if removals is not None:
            self._remove(source, removals)
        placed: dict[KeyPath, dict[int, int]] = {}
        self._merge(self.data, data, source, (), placed)
        for key_path, name in references.items():
            moved = _placed(key_path, placed)
            if moved is not None:
                self.references[moved] = name

    # --- merging ---------------------------------------------------------------------------

    def _merge(self, into: dict[str, Any], data: dict[str, Any], source: Path,
               prefix: KeyPath, placed: dict[KeyPath, dict[int, int]]) -> None:
        for key, value in data.items():
            here = (*prefix, key)
            rule = LIST_RULES.get(here)
            if rule == "append" and isinstance(value, list) and isinstance(into.get(key), list):
                placed[here] = self._append(into[key], value, source, here)
                self.origins[here] = source
                continue
            if isinstance(value, dict) and isinstance(into.get(key), dict):
                self._merge(into[key], value, source, here, placed)
                continue
            if rule == "replace" and key in into and self.origins.get(here) not in (None, source):
                self.warnings.append(
                    f"{_where(source, here)}: {dotted(here)} replaces the list set in "
                    f"{_where(self.origins[here], here)} ({dotted(here)} is replaced, not "
                    "appended: list every item in the later file)")
            self._forget(here)
            self.references.pop(here, None)  # a later file's value replaces a reference too
            self.origins[here] = source
            if isinstance(value, dict):  # a new table: merged into an empty one, so that
                into[key] = {}           # the lists in it are recorded item by item
                self._merge(into[key], value, source, here, placed)
                continue
            into[key] = value
            if isinstance(value, list) and rule is not None:
                placed[here] = {index: index for index in range(len(value))}
                for index, item in enumerate(value):
                    self._record_item(item, source, (*here, index))

    def _append(self, existing: list[Any], items: list[Any], source: Path,
                list_key: KeyPath) -> dict[int, int]:
        """Append `items` to `existing`; an item already there is not added twice, a named
        table replaces the earlier one of its name. Returns each item's new index."""
        placed: dict[int, int] = {}
        named = list_key in NAMED_ITEMS
        for index, item in enumerate(items):
            name = item.get("name") if named and isinstance(item, dict) else None
            at = _index_of(existing, name, named) if name is not None else (
                None if named else _index_of(existing, item, named))
            if at is not None and not named:
                placed[index] = at  # already in the list
                continue
            if at is None:
                at = len(existing)
                existing.append(item)
            else:
                existing[at] = item
                self._forget((*list_key, at))
            placed[index] = at
            self._record_item(item, source, (*list_key, at))
        return placed

    def _record_item(self, item: Any, source: Path, key_path: KeyPath) -> None:
        self.origins[key_path] = source
        if isinstance(item, dict):
            self._record(item, source, key_path)

    def _record(self, data: dict[str, Any], source: Path, prefix: KeyPath) -> None:
        """The keys of a list item (a provisioner): its lists are part of it, not merged."""
        for key, value in data.items():
            self.origins[(*prefix, key)] = source
            if isinstance(value, dict):
                self._record(value, source, (*prefix, key))

    def _forget(self, key_path: KeyPath) -> None:
        """Drop what is known of the keys below `key_path` (its value is replaced)."""
        n = len(key_path)
        for table in (self.origins, self.references):
            for key in [k for k in table if len(k) > n and k[:n] == key_path]:
                del table[key]

    # --- removing --------------------------------------------------------------------------

    def _remove(self, source: Path, removals: Any) -> None:
        if not isinstance(removals, dict):
            self.problems.append(_problem(source, (REMOVE_KEY,), "expected a table of the "
                                          "lists to remove items from"))
            return
        for list_key, names in _remove_entries(removals, ()):
            where: KeyPath = (REMOVE_KEY, *list_key)
            if list_key not in LIST_RULES:
                known = ", ".join(dotted(k) for k in LIST_RULES)
                self.problems.append(_problem(source, where, f"{dotted(list_key)} is not a "
                                              f"list that layers merge (those are: {known})"))
                continue
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                self.problems.append(_problem(source, where, "expected a list of "
                                              + ("provisioner names" if list_key in NAMED_ITEMS
                                                 else "values")))
                continue
            for name in names:
                self._remove_one(source, list_key, name)

    def _remove_one(self, source: Path, list_key: KeyPath, name: str) -> None:
        existing = _get(self.data, list_key)
        named = list_key in NAMED_ITEMS
        at = _index_of(existing, name, named) if isinstance(existing, list) else None
        if at is None:
            what = f"no provisioner named {name!r}" if named else f"{name!r} is not in it"
            self.problems.append(_problem(
                source, (REMOVE_KEY, *list_key),
                f"cannot remove {name!r} from {dotted(list_key)}: {what} in the files below "
                "this one (a file removes only what its layers added)"))
            return
        assert isinstance(existing, list)
        del existing[at]
        self._shift(list_key, at)

    def _shift(self, list_key: KeyPath, removed: int) -> None:
        """Renumber what is known of a list's items after item `removed` is gone."""
        n = len(list_key)
        for table in (self.origins, self.references):
            moved: dict[KeyPath, Any] = {}
            for key in [k for k in table if len(k) > n and k[:n] == list_key]:
                index = key[n]
                value = table.pop(key)
                if isinstance(index, int) and index != removed:
                    moved[(*list_key, index - (index > removed), *key[n + 1:])] = value
            table.update(moved)


def _index_of(items: list[Any], wanted: Any, named: bool) -> int | None:
    for index, item in enumerate(items):
        if (item.get("name") if named and isinstance(item, dict) else item) == wanted:
            return index
    return None


def _get(data: Any, key_path: KeyPath) -> Any:
    for key in key_path:
        data = data.get(str(key)) if isinstance(data, dict) else None
    return data


def _remove_entries(table: dict[str, Any], prefix: KeyPath) -> Iterator[tuple[KeyPath, Any]]:
    """(list key, what to remove) of a `[remove]` table, whose tables mirror the template's."""
    for key, value in table.items():
        here = (*prefix, key)
        if isinstance(value, dict) and here not in LIST_RULES:
            yield from _remove_entries(value, here)
        else:
            yield here, value


def _placed(key_path: KeyPath, placed: dict[KeyPath, dict[int, int]]) -> KeyPath | None:
    """A file's own key path in the merged list (None: its item was not added)."""
    for list_key, moves in placed.items():
        n = len(list_key)
        index = key_path[n] if len(key_path) > n else None
        if key_path[:n] == list_key and isinstance(index, int):
            new = moves.get(index)
            return None if new is None else (*list_key, new, *key_path[n + 1:])
    return key_path


def duplicate_names(source: Path, data: dict[str, Any]) -> list[Problem]:
    """Two provisioners of one file with the same name: which one a later file means would
    be a guess."""
    problems: list[Problem] = []
    for list_key in NAMED_ITEMS:
        items = _get(data, list_key)
        seen: set[str] = set()
        for index, item in enumerate(items if isinstance(items, list) else []):
            name = item.get("name") if isinstance(item, dict) else None
            if isinstance(name, str) and name in seen:
                problems.append(_problem(source, (*list_key, index, "name"),
                                         f"a second provisioner named {name!r} in this file; "
                                         "give each its own name"))
            if isinstance(name, str):
                seen.add(name)
    return problems
