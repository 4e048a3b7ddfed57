"""`azbuild diff OLD NEW`: what changed between two images, as diff(1) exits (0 same, 1 not).

It compares what was built, never the build's identity: build ids, times, durations,
output paths and the values of `${build.*}` are not differences (the manifest's
template_sha256 is taken with `${build.*}` as written). The azbuild version, a failed
build and a comparison of two templates are said as notes.

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
from typing import Any, Literal

from builder.errors import UsageError
from builder.manifest import MANIFEST_FILE
from builder.report.table import aligned

# The sections in the order they are shown.
SECTIONS = ("status", "packages", "kernels", "kernel arguments", "services", "requirements",
            "sizes", "inputs")
ABSENT = "-"

Value = str | int  # sizes are numbers, everything else text
Items = dict[str, Value]


@dataclass(frozen=True)
class BuildFacts:
    """What a manifest says of its build beyond the image: for the notes, never a change."""

    template: str
    template_sha256: str
    azbuild_version: str
    failure: str | None  # None: it succeeded; else " at step STEP: ERROR", or "" unknown


@dataclass(frozen=True)
class Snapshot:
    """What one side records; a section is None when that side does not record it."""

    label: str
    sections: dict[str, Items | None]
    facts: BuildFacts | None = None  # None for an image file


@dataclass(frozen=True)
class Change:
    section: str
    item: str
    old: Value | None  # None: the item is absent on that side
    new: Value | None


@dataclass(frozen=True)
class Note:
    """Something to know about the comparison that is not a change of the image."""

    kind: Literal["new_failed", "old_failed", "other_template", "other_version"]
    text: str


@dataclass(frozen=True)
class Comparison:
    old: str
    new: str
    changes: list[Change] = field(default_factory=list)
    not_compared: dict[str, str] = field(default_factory=dict)  # section -> why
    notes: list[Note] = field(default_factory=list)

    @property
    def identical(self) -> bool:
        return not self.changes


# ---------------------------------------------------------------- pure: data -> snapshot


def _package_items(packages: Sequence[Mapping[str, Any]]) -> Items:
    """name -> version; a name installed for several architectures is `name:arch`."""
    count = Counter(str(p["name"]) for p in packages)
    return {(str(p["name"]) if count[str(p["name"])] == 1
             else f"{p['name']}:{p['architecture']}"): str(p["version"]) for p in packages}


def inventory_sections(inventory: Mapping[str, Any] | None) -> dict[str, Items | None]:
    """The inventory's sections of a snapshot, from its JSON form (manifest.json's)."""
    if inventory is None:
        return {"packages": None, "kernels": None, "kernel arguments": None, "services": None}
    args = inventory.get("kernel_args") or {}
    kernel_args: Items = {}
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
    sections["status"] = {"build": str(manifest["status"])}
    check = manifest.get("check")
    sections["requirements"] = (
        {str(c["id"]): str(c["status"]) for c in check} if check is not None else None)
    sections["sizes"] = {str(a["format"]): int(a["size"]) for a in manifest["artifacts"]}
    inputs: Items = {"template sha256": str(manifest.get("template_sha256", ""))}
    recorded = manifest.get("inputs")
    if recorded is not None:
        source = recorded["source"]
        inputs["source"] = str(source["location"])
        inputs["source digest"] = str(source["digest"] or "not read")
        for f in recorded.get("template_files", []):
            inputs[f"file {Path(str(f['path'])).name}"] = str(f["sha256"])
    sections["inputs"] = inputs
    failure = manifest.get("failure")
    failed = (f" at step {failure.get('step')}: {failure.get('error')}"
              if isinstance(failure, Mapping) else "")
    facts = BuildFacts(
        template=str(manifest["template"]),
        template_sha256=str(manifest.get("template_sha256", "")),
        azbuild_version=str(manifest.get("azbuild_version", "")),
        failure=failed if manifest["status"] != "succeeded" else None)
    return Snapshot(label, sections, facts)


# ---------------------------------------------------------------- pure: comparing


def compare(old: Snapshot, new: Snapshot) -> Comparison:
    changes: list[Change] = []
    not_compared: dict[str, str] = {}
    for section in SECTIONS:
        before, after = old.sections.get(section), new.sections.get(section)
        if section == "status" and (before is None or after is None):
            continue  # an image file has no build status: nothing to say
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
    return Comparison(old.label, new.label, changes, not_compared, notes(old, new))


def notes(old: Snapshot, new: Snapshot) -> list[Note]:
    """A failed side, two templates, two azbuild versions: said, not counted as changes."""
    found: list[Note] = []
    if new.facts is not None and new.facts.failure is not None:
        found.append(Note("new_failed", f"NEW failed{new.facts.failure}"))
    if old.facts is not None and old.facts.failure is not None:
        found.append(Note("old_failed", f"OLD failed{old.facts.failure}; compare with the "
                          "last build that succeeded"))
    if old.facts is None or new.facts is None:
        return found
    # A name may hold ${build.date}: two names of one unchanged template are one template.
    if (old.facts.template != new.facts.template
            and old.facts.template_sha256 != new.facts.template_sha256):
        found.append(Note("other_template", f"OLD is template {old.facts.template!r}, NEW "
                          f"is template {new.facts.template!r}"))
    if old.facts.azbuild_version != new.facts.azbuild_version:
        found.append(Note("other_version", f"OLD was built by azbuild "
                          f"{old.facts.azbuild_version}, NEW by azbuild "
                          f"{new.facts.azbuild_version}"))
    return found


# ---------------------------------------------------------------- pure: output


def to_json(comparison: Comparison) -> str:
    return json.dumps({
        "old": comparison.old,
        "new": comparison.new,
        "identical": comparison.identical,
        "changes": [asdict(c) for c in comparison.changes],
        "not_compared": comparison.not_compared,
        "notes": [asdict(n) for n in comparison.notes],
    }, indent=2)


def to_table(comparison: Comparison) -> str:
    lines = [f"--- {comparison.old}", f"+++ {comparison.new}"]
    if comparison.changes:
        rows = [("section", "item", "old", "new")]
        rows += [(c.section, c.item, ABSENT if c.old is None else str(c.old),
                  ABSENT if c.new is None else str(c.new)) for c in comparison.changes]
        lines += aligned(rows)
    for section, why in comparison.not_compared.items():
        lines.append(f"{section}: not compared ({why})")
    lines += [f"note: {note.text}" for note in comparison.notes]
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
    from builder.image.disk import detect_image_format
    from builder.offline_check.check import run_check

    report = run_check(image, skip=[], inventory=True)
    inventory = report.inventory.model_dump(mode="json") if report.inventory else None
    sections = inventory_sections(inventory)
    sections["requirements"] = {c.id: c.status for c in report.checks}
    kind = detect_image_format(image).name
    sections["sizes"] = {kind: image.stat().st_size}
    sections["inputs"] = None
    return Snapshot(str(image), sections)


def diff(old: str, new: str) -> Comparison:
    return compare(load_snapshot(old), load_snapshot(new))
