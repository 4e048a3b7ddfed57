"""systemd unit files read from a guest, and the two questions the offline check asks of
them: does one unit run before another, and does anything start it at boot.

Pure: file texts and symlinks in, answers out (tested on real units in
tests/test_guest_checks_parse.py). It follows what systemd does with the files that
matter here: the unit directories' precedence (/etc over the vendor's), aliases and
masks (symlinks), template instances (`name@inst.service` read from `name@.service`),
drop-ins (`name.service.d/*.conf`), `.wants`/`.requires` links, and the ordering that
targets and default dependencies add. It does not evaluate conditions or generators.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath

# In precedence order (systemd reads the first directory that holds a name).
UNIT_DIRS = ("/etc/systemd/system", "/lib/systemd/system", "/usr/lib/systemd/system")
# Directives whose values are space-separated lists that accumulate over lines.
_LISTS = frozenset({"After", "Before", "Wants", "Requires", "Requisite", "BindsTo", "Alias",
                    "WantedBy", "RequiredBy"})
_PULLS = ("Wants", "Requires", "BindsTo")  # what starts the named units along with this one
# Targets every service with default dependencies is ordered after.
_EARLY_TARGETS = ("sysinit.target", "basic.target")

Directives = dict[str, dict[str, list[str]]]  # section -> key -> values, in file order


def parse_unit(text: str) -> Directives:
    """A unit file's directives: `[Section]` -> key -> values. Backslash-newline joins
    lines, `#`/`;` lines are comments; an empty assignment resets the key's values, as
    systemd does for lists and ExecStart= in drop-ins."""
    out: Directives = {}
    section: dict[str, list[str]] | None = None
    pending = ""
    for raw in text.splitlines():
        line = pending + raw.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = out.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        if section is None or not sep:
            continue
        key, value = key.strip(), value.strip()
        if not value:
            section[key] = []
        elif key in _LISTS:
            section.setdefault(key, []).extend(value.split())
        else:
            section.setdefault(key, []).append(value)
    return out


def _merge(into: Directives, more: Directives) -> None:
    for name, keys in more.items():
        section = into.setdefault(name, {})
        for key, values in keys.items():
            section[key] = [*section.get(key, []), *values] if values else []


@dataclass(frozen=True)
class Unit:
    """One unit as systemd would load it: its name, the file read (and drop-ins), and the
    merged directives."""

    name: str
    path: str
    dropins: tuple[str, ...]
    directives: Directives = field(repr=False)

    def get(self, section: str, key: str) -> list[str]:
        return self.directives.get(section, {}).get(key, [])

    @property
    def default_dependencies(self) -> bool:
        return (self.get("Unit", "DefaultDependencies") or ["yes"])[-1].lower() not in (
            "no", "false", "0", "off")

    def exec_lines(self) -> list[tuple[str, str]]:
        """(key, command line) for what the service runs before and as its main process."""
        return [(key, value) for key in ("ExecStartPre", "ExecStart")
                for value in self.get("Service", key)]


def _template_of(name: str) -> tuple[str, str] | None:
    """`sshd-keygen@rsa.service` -> (`sshd-keygen@.service`, `rsa`)."""
    m = re.fullmatch(r"([^@]+)@([^.@]+)(\.[a-z]+)", name)
    return (f"{m.group(1)}@{m.group(3)}", m.group(2)) if m else None


class UnitSet:
    """The guest's unit files (`files`: path -> text, from UNIT_DIRS and their `*.d`
    drop-in directories) and its symlinks in those directories (`links`: path -> target,
    the unit directories themselves and their `.wants`/`.requires` subdirectories)."""

    def __init__(self, files: Mapping[str, str], links: Mapping[str, str]) -> None:
        self.files = files
        self.links = links
        self._dropin_dirs: dict[str, list[str]] = {}  # "dir/name.d" -> its .conf files
        for path in files:
            p = PurePosixPath(path)
            if p.parent.name.endswith(".d") and p.name.endswith(".conf"):
                self._dropin_dirs.setdefault(str(p.parent), []).append(path)
        # The names that unit directories' symlinks give, by the unit they resolve to.
        self._aliases: dict[str, set[str]] = {}
        for path in links:
            p = PurePosixPath(path)
            if str(p.parent) in UNIT_DIRS:
                self._aliases.setdefault(self.canonical(p.name), set()).add(p.name)
        self._units: dict[str, Unit | None] = {}

    def _entry(self, name: str) -> tuple[str, str | None] | None:
        """The first unit directory's entry for `name`: (path, symlink target or None)."""
        for directory in UNIT_DIRS:
            path = f"{directory}/{name}"
            if path in self.links:
                return path, self.links[path]
            if path in self.files:
                return path, None
        return None

    def canonical(self, name: str) -> str:
        """The unit's own name, following alias symlinks (`sshd.service` -> `ssh.service`)."""
        for _ in range(8):
            entry = self._entry(name)
            if entry is None or entry[1] is None or entry[1] == "/dev/null":
                return name
            target = PurePosixPath(entry[1]).name
            if target == name:
                return name
            name = target
        return name

    def names(self, name: str) -> set[str]:
        """Every name the unit answers to: its own and its aliases' (alias symlinks)."""
        own = self.canonical(name)
        return {own, name, *self._aliases.get(own, ())}

    def masked(self, name: str) -> str | None:
        """The masking symlink of `name` (to /dev/null), if any."""
        for n in self.names(name):
            entry = self._entry(n)
            if entry and entry[1] == "/dev/null":
                return entry[0]
        return None

    def unit(self, name: str) -> Unit | None:
        """The unit `name` as systemd loads it, or None when no file defines it (or it is
        masked). An instance without its own file is read from its template, with %i/%I."""
        own = self.canonical(name)
        if own not in self._units:
            self._units[own] = self._load(own)
        return self._units[own]

    def _load(self, own: str) -> Unit | None:
        if self.masked(own):
            return None
        instance = ""
        path = self._file(own)
        template = _template_of(own)
        if path is None and template is not None:
            path = self._file(template[0])
            instance = template[1]
        if path is None:
            return None
        directives = parse_unit(self._expand(self.files[path], instance))
        dropins = self._dropins(own, template[0] if template else None)
        for dropin in dropins:
            _merge(directives, parse_unit(self._expand(self.files[dropin], instance)))
        return Unit(own, path, tuple(dropins), directives)

    def _file(self, name: str) -> str | None:
        entry = self._entry(name)
        if entry is None:
            return None
        path, target = entry
        if target is None:
            return path
        if target.startswith("/") and target in self.files:  # a linked unit file
            return target
        return self._file(PurePosixPath(target).name) if PurePosixPath(target).name != name \
            else None

    @staticmethod
    def _expand(text: str, instance: str) -> str:
        return text.replace("%i", instance).replace("%I", instance) if instance else text

    def _dropins(self, name: str, template: str | None) -> list[str]:
        """Drop-in files in name order; a file in /etc hides the vendor's of the same name."""
        chosen: dict[str, str] = {}
        for directory in reversed(UNIT_DIRS):  # later assignments win: /etc last
            for base in filter(None, (template, *sorted(self.names(name)))):
                for path in self._dropin_dirs.get(f"{directory}/{base}.d", []):
                    chosen[PurePosixPath(path).name] = path
        return [chosen[n] for n in sorted(chosen)]

    def wanted_by_links(self, name: str) -> list[str]:
        """`.wants`/`.requires` links that pull `name` in (link path -> the unit it sits under)."""
        names = self.names(name)
        return sorted(path for path in self.links
                      if PurePosixPath(path).parent.name.endswith((".wants", ".requires"))
                      and (PurePosixPath(path).name in names
                           or PurePosixPath(self.links[path]).name in names))

    def pulled_by(self, name: str, by: str, seen: frozenset[str] = frozenset()) -> str | None:
        """How unit `by` starts `name` when it starts (its Wants=/Requires=/BindsTo= or
        `.wants`/`.requires` link, directly or through a target it pulls), or None."""
        names = self.names(name)
        owner = self.unit(by)
        if owner is None or owner.name in seen:
            return None
        for key in _PULLS:
            for value in owner.get("Unit", key):
                if value in names:
                    return f"{owner.name} {key}={value}"
        by_names = self.names(by)
        for link in self.wanted_by_links(name):
            parent = PurePosixPath(link).parent.name.rsplit(".", 1)[0]
            if parent in by_names:
                return f"{link} -> {self.links[link]}"
        for key in _PULLS:
            for value in owner.get("Unit", key):
                if value.endswith(".target") and value not in by_names:
                    via = self.pulled_by(name, value, seen | {owner.name})
                    if via:
                        return f"{owner.name} {key}={value}, {via}"
        return None

    def enabled(self, name: str) -> str | None:
        """A `.wants`/`.requires` link under a target pulls `name` in at boot, or None."""
        for link in self.wanted_by_links(name):
            if PurePosixPath(link).parent.name.removesuffix(".wants").removesuffix(
                    ".requires").endswith(".target"):
                return f"{link} -> {self.links[link]}"
        return None

    def runs_before(self, first: str, then: str) -> str | None:
        """Why unit `first` finishes before unit `then` starts (an ordering of either one, or
        through a target `then` is ordered after), or None when nothing orders them."""
        a, b = self.unit(first), self.unit(then)
        if a is None or b is None:
            return None
        a_names, b_names = self.names(first), self.names(then)
        for value in a.get("Unit", "Before"):
            if value in b_names:
                return f"{a.name} Before={value}"
        for value in b.get("Unit", "After"):
            if value in a_names:
                return f"{b.name} After={value}"
        if b.default_dependencies:
            for value in a.get("Unit", "Before"):
                if value in _EARLY_TARGETS:
                    return f"{a.name} Before={value}, which {b.name} follows"
        for target in b.get("Unit", "After"):
            if target.endswith(".target") and target not in a_names:
                via = self._before_target(a, a_names, target)
                if via:
                    return f"{b.name} After={target}, {via}"
        return None

    def _before_target(self, a: Unit, a_names: set[str], target: str) -> str | None:
        if target in a.get("Unit", "Before"):
            return f"{a.name} Before={target}"
        t = self.unit(target)
        if t is None:
            return None
        for value in t.get("Unit", "After"):
            if value in a_names:
                return f"{t.name} After={value}"
        # A target with default dependencies is ordered after every unit it pulls in.
        if t.default_dependencies and self.pulled_by(a.name, target):
            return f"{t.name} pulls {a.name} in (and waits for it)"
        return None


def units_running(units: UnitSet, pattern: re.Pattern[str],
                  extra: Sequence[str] = ()) -> list[tuple[Unit, str]]:
    """Every unit (and instance named anywhere) whose ExecStartPre/ExecStart matches
    `pattern`, with the matching line; `extra` names more units to look at."""
    names: set[str] = set(extra)
    for path, text in units.files.items():
        p = PurePosixPath(path)
        if str(p.parent) not in UNIT_DIRS:
            continue
        if "@." not in p.name:
            names.add(p.name)
        if "@" in text:  # instances other units pull in (a template runs as those)
            section = parse_unit(text).get("Unit", {})
            names.update(v for key in _PULLS for v in section.get(key, [])
                         if "@" in v and "@." not in v)
    for path, target in units.links.items():
        names.add(PurePosixPath(path).name)
        names.add(PurePosixPath(target).name)
    found: dict[str, tuple[Unit, str]] = {}
    for name in sorted(names):
        loaded = units.unit(name)
        if loaded is None or loaded.name in found:
            continue
        for key, line in loaded.exec_lines():
            if pattern.search(line):
                found[loaded.name] = (loaded, f"{key}={line}")
                break
    return list(found.values())


def masked_running(units: UnitSet, pattern: re.Pattern[str]) -> list[tuple[str, str]]:
    """(name, masking link) of the masked units whose vendor file's ExecStartPre/ExecStart
    matches `pattern`: what would make host keys if it were not masked."""
    found = []
    for link, target in sorted(units.links.items()):
        name = PurePosixPath(link).name
        if target != "/dev/null" or str(PurePosixPath(link).parent) not in UNIT_DIRS:
            continue
        for directory in UNIT_DIRS[1:]:
            text = units.files.get(f"{directory}/{name}")
            service = parse_unit(text).get("Service", {}) if text else {}
            lines = [*service.get("ExecStartPre", []), *service.get("ExecStart", [])]
            if any(pattern.search(line) for line in lines):
                found.append((name, link))
                break
    return found
