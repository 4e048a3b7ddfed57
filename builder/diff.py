"""`azbuild diff OLD NEW`: what changed between two builds, as diff(1) exits (0 same, 1 not).

Each side is a manifest.json, an output directory holding one, or a disk image whose
inventory is read on the spot (the offline check and its inventory, one libguestfs
launch on the standalone check's accelerator decision). A side is first turned into a
`Snapshot` (plain comparable data); `compare` and the two renderers are pure.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from builder.errors import UsageError
from builder.manifest import MANIFEST_FILE
from builder.table import aligned

# The sections in the order they are shown.
SECTIONS = ("packages", "kernels", "kernel arguments", "services", "requirements", "sizes",
            "inputs")
ABSENT = "-"


@dataclass(frozen=True)
class Snapshot:
    """What one side records; a section is None when that side does not record it."""

    label: str
    sections: dict[str, dict[str, str] | None]


@dataclass(frozen=True)
class Change:
    section: str
    item: str
    old: str | None  # None: the item is absent on that side
    new: str | None


@dataclass(frozen=True)
class Comparison:
    old: str
    new: str
    changes: list[Change] = field(default_factory=list)
    not_compared: dict[str, str] = field(default_factory=dict)  # section -> why

    @property
    def identical(self) -> bool:
        return not self.changes


# ---------------------------------------------------------------- pure: data -> snapshot


def _package_items(packages: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """name -> version; a name installed for several architectures is `name:arch`."""
    count = Counter(str(p["name"]) for p in packages)
    return {(str(p["name"]) if count[str(p["name"])] == 1
             else f"{p['name']}:{p['architecture']}"): str(p["version"]) for p in packages}


def inventory_sections(inventory: Mapping[str, Any] | None) -> dict[str, dict[str, str] | None]:
    """The inventory's sections of a snapshot, from its JSON form (manifest.json's)."""
    if inventory is None:
        return {"packages": None, "kernels": None, "kernel arguments": None, "services": None}
    args = inventory.get("kernel_args") or {}
    kernel_args: dict[str, str] = {}
    if args.get("default") is not None:
        kernel_args["boot loader default"] = " ".join(args["default"])
    if args.get("grub_cmdline") is not None:
        kernel_args["/etc/default/grub"] = args["grub_cmdline"]
    return {
        "packages": _package_items(inventory.get("packages", [])),
        "kernels": {str(k["version"]): k.get("image") or "modules only"
                    for k in inventory.get("kernels", [])},
        "kernel arguments": kernel_args,
        "services": {str(s): "enabled" for s in inventory.get("services", [])},
    }


def manifest_snapshot(label: str, manifest: Mapping[str, Any]) -> Snapshot:
    """A snapshot of a manifest.json's data."""
    sections = inventory_sections(manifest.get("inventory"))
    check = manifest.get("check")
    sections["requirements"] = (
        {str(c["id"]): str(c["status"]) for c in check} if check is not None else None)
    sections["sizes"] = {str(a["format"]): str(a["size"]) for a in manifest["artifacts"]}
    inputs: dict[str, str] = {
        "azbuild version": str(manifest.get("azbuild_version", "")),
        "resolved template sha256": str(manifest.get("template_sha256", "")),
    }
    recorded = manifest.get("inputs")
    if recorded is not None:
        source = recorded["source"]
        inputs["source"] = str(source["location"])
        inputs["source digest"] = str(source["digest"] or "not read")
        for f in recorded.get("template_files", []):
            inputs[f"file {Path(str(f['path'])).name}"] = str(f["sha256"])
    sections["inputs"] = inputs
    return Snapshot(label, sections)


# ---------------------------------------------------------------- pure: comparing


def compare(old: Snapshot, new: Snapshot) -> Comparison:
    changes: list[Change] = []
    not_compared: dict[str, str] = {}
    for section in SECTIONS:
        before, after = old.sections.get(section), new.sections.get(section)
        if before is None or after is None:
            missing = [s.label for s, v in ((old, before), (new, after)) if v is None]
            if len(missing) == 1:
                not_compared[section] = f"{missing[0]} does not record it"
            elif missing:
                not_compared[section] = "neither side records it"
            continue
        for item in sorted(set(before) | set(after)):
            if before.get(item) != after.get(item):
                changes.append(Change(section, item, before.get(item), after.get(item)))
    return Comparison(old.label, new.label, changes, not_compared)


# ---------------------------------------------------------------- pure: output


def to_json(comparison: Comparison) -> str:
    return json.dumps({
        "old": comparison.old,
        "new": comparison.new,
        "identical": comparison.identical,
        "changes": [asdict(c) for c in comparison.changes],
        "not_compared": comparison.not_compared,
    }, indent=2)


def to_table(comparison: Comparison) -> str:
    lines = [f"--- {comparison.old}", f"+++ {comparison.new}"]
    if comparison.changes:
        rows = [("section", "item", "old", "new")]
        rows += [(c.section, c.item, ABSENT if c.old is None else c.old,
                  ABSENT if c.new is None else c.new) for c in comparison.changes]
        lines += aligned(rows)
    for section, why in comparison.not_compared.items():
        lines.append(f"{section}: not compared ({why})")
    count = len(comparison.changes)
    lines.append("no differences" if not count
                 else f"{count} difference{'s' if count != 1 else ''}")
    return "\n".join(lines)


# ---------------------------------------------------------------- reading a side


def load_snapshot(argument: str) -> Snapshot:
    """A snapshot of OLD or NEW as given on the command line; UsageError for a missing
    path, a directory without manifest.json, or a file that is not a manifest."""
    path = Path(argument)
    if not path.exists():
        raise UsageError(f"{argument} does not exist",
                         hint="give a manifest.json, a build's output directory or an image")
    if path.is_dir():
        manifest = path / MANIFEST_FILE
        if not manifest.is_file():
            raise UsageError(f"{argument} is a directory without {MANIFEST_FILE}: not a "
                             "build's output directory",
                             hint="give a manifest.json, a build's output directory or an image")
        return _manifest_snapshot(argument, manifest)
    if _looks_like_json(path):
        return _manifest_snapshot(argument, path)
    return image_snapshot(path)


def _manifest_snapshot(label: str, path: Path) -> Snapshot:
    """manifest_snapshot of the file `path`; a manifest whose parts are not shaped as
    azbuild writes them (edited by hand, or damaged) is the user's to fix, not a crash."""
    data = _read_manifest(path)
    try:
        return manifest_snapshot(label, data)
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        what = f"no {exc.args[0]!r} where one was expected" if isinstance(exc, KeyError) \
            else str(exc)
        raise UsageError(f"{path} is not an azbuild manifest: {what}",
                         hint="give the manifest.json of an azbuild build, unedited") from None


def _looks_like_json(path: Path) -> bool:
    if path.suffix == ".json":
        return True
    with open(path, "rb") as f:
        return f.read(64).lstrip()[:1] == b"{"


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise UsageError(f"{path} is not an azbuild manifest: not JSON ({exc})") from None
    required = ("status", "template", "artifacts", "check")
    if not isinstance(data, dict) or any(key not in data for key in required):
        raise UsageError(
            f"{path} is not an azbuild manifest: it lacks "
            + ", ".join(k for k in required if not isinstance(data, dict) or k not in data),
            hint="give the manifest.json of an azbuild build")
    return data


def image_snapshot(image: Path) -> Snapshot:
    """Check `image` offline and read its inventory (one appliance launch)."""
    from builder.disk import detect_image_format
    from builder.offline_check.check import run_check

    report = run_check(image, skip=[], inventory=True)
    inventory = report.inventory.model_dump(mode="json") if report.inventory else None
    sections = inventory_sections(inventory)
    sections["requirements"] = {c.id: c.status for c in report.checks}
    kind = detect_image_format(image).name
    sections["sizes"] = {kind: str(image.stat().st_size)}
    sections["inputs"] = None
    return Snapshot(str(image), sections)


def diff(old: str, new: str) -> Comparison:
    return compare(load_snapshot(old), load_snapshot(new))
