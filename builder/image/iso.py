"""Read installer ISOs with pycdlib: find the installer kernel and initrd, extract files.

The kernel and initrd are booted directly (no bootloader on the ISO runs), so
their paths inside the ISO must be known: the template's `source.installer_kernel`
/ `installer_initrd` when set, else the `[images-x86_64]` section of the ISO's
`.treeinfo` (RHEL-like and some SUSE media), else the distro's defaults.
Paths are looked up by Rock Ridge name, then Joliet, then plain ISO 9660.
"""

from __future__ import annotations

import configparser
import contextlib
import io
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import pycdlib
from pycdlib.pycdlibexception import PyCdlibException

from builder.errors import BuildError, UsageError
from distros import Distro

log = logging.getLogger(__name__)

TREEINFO_ARCH = "x86_64"


@dataclass(frozen=True)
class InstallerPaths:
    """Where the installer kernel and initrd are inside the ISO, and who said so:
    "template", ".treeinfo" or "distro"."""

    kernel: str
    initrd: str
    source: str


@contextlib.contextmanager
def open_iso(iso: Path) -> Iterator[Any]:
    reader = pycdlib.PyCdlib()
    try:
        reader.open(str(iso))
    except (PyCdlibException, OSError) as exc:
        raise BuildError(f"cannot read ISO {iso}: {exc}") from None
    try:
        yield reader
    finally:
        reader.close()


def _norm(path: str) -> str:
    return "/" + str(PurePosixPath("/" + path.strip())).lstrip("/")


def _iso9660_name(path: str) -> str:
    """'/images/pxeboot/vmlinuz' -> '/IMAGES/PXEBOOT/VMLINUZ.;1' (plain ISO 9660 lookup)."""
    parts = [p for p in path.split("/") if p]
    dirs = [p.upper().replace("-", "_").replace(".", "_") for p in parts[:-1]]
    leaf = parts[-1].upper().replace("-", "_")
    if "." not in leaf:
        leaf += "."
    return "/" + "/".join([*dirs, leaf + ";1"])


def _lookups(reader: Any, path: str) -> list[dict[str, str]]:
    path = _norm(path)
    ways: list[dict[str, str]] = []
    if reader.has_rock_ridge():
        ways.append({"rr_path": path})
    if reader.has_joliet():
        ways.append({"joliet_path": path})
    ways.append({"iso_path": _iso9660_name(path)})
    return ways


def read_file(reader: Any, path: str) -> bytes | None:
    """The bytes of `path` in an open ISO, or None when it is not there."""
    for way in _lookups(reader, path):
        buf = io.BytesIO()
        try:
            reader.get_file_from_iso_fp(buf, **way)
        except PyCdlibException:
            continue
        return buf.getvalue()
    return None


def _exists(reader: Any, path: str) -> bool:
    for way in _lookups(reader, path):
        try:
            record = reader.get_record(**way)
        except PyCdlibException:
            continue
        return not record.is_dir()
    return False


def top_level(reader: Any) -> list[str]:
    """Names at the top of the ISO, as a user would see them (Rock Ridge or Joliet)."""
    if reader.has_rock_ridge():
        kind = "rr_path"
    elif reader.has_joliet():
        kind = "joliet_path"
    else:
        kind = "iso_path"
    names: list[str] = []
    for child in reader.list_children(**{kind: "/"}):
        if child.is_dot() or child.is_dotdot():
            continue
        if kind == "rr_path" and child.rock_ridge is not None:
            name = child.rock_ridge.name().decode(errors="replace")
        elif kind == "joliet_path":
            name = child.file_identifier().decode("utf-16_be", errors="replace")
        else:
            name = child.file_identifier().decode(errors="replace").split(";")[0].rstrip(".")
        names.append(name + ("/" if child.is_dir() else ""))
    return sorted(names)


def installer_and_label(
    iso: Path, distro: Distro, kernel: str | None = None, initrd: str | None = None
) -> tuple[InstallerPaths, str]:
    """Where the installer kernel and initrd are in `iso` for `distro`, and the ISO's volume
    identifier (Anaconda finds its stage 2 image by it), with one reading of its directory
    tree (seconds for a DVD's thousands of files). `kernel`/`initrd` (the template's
    overrides) win over `.treeinfo`, which wins over the distro's defaults."""
    with open_iso(iso) as reader:
        label = str(reader.pvd.volume_identifier.decode(errors="replace").rstrip())
        return _find_installer(reader, iso, distro, kernel, initrd), label


def treeinfo_images(text: str, arch: str = TREEINFO_ARCH) -> tuple[str, str] | None:
    """(kernel, initrd) from a `.treeinfo` file's `[images-<arch>]` section."""
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    try:
        parser.read_string(text)
    except configparser.Error as exc:
        log.warning("ignoring unreadable .treeinfo: %s", exc)
        return None
    section = f"images-{arch}"
    if not parser.has_section(section):
        return None
    kernel = parser.get(section, "kernel", fallback=None)
    initrd = parser.get(section, "initrd", fallback=None)
    if not kernel or not initrd:
        return None
    return kernel, initrd


def _find_installer(
    reader: Any, iso: Path, distro: Distro, kernel: str | None, initrd: str | None
) -> InstallerPaths:
    candidates: list[tuple[str, str, str]] = []
    if kernel or initrd:
        candidates.append(
            (kernel or distro.installer_kernel, initrd or distro.installer_initrd, "template")
        )
    else:
        raw = read_file(reader, ".treeinfo")
        images = treeinfo_images(raw.decode(errors="replace")) if raw else None
        if images:
            candidates.append((*images, ".treeinfo"))
        candidates.append((distro.installer_kernel, distro.installer_initrd, "distro"))
    tried: list[str] = []
    for k, i, source in candidates:
        missing = [p for p in (k, i) if not _exists(reader, p)]
        if not missing:
            found = InstallerPaths(kernel=_norm(k).lstrip("/"), initrd=_norm(i).lstrip("/"),
                                   source=source)
            log.debug("installer kernel %s, initrd %s (from %s)", found.kernel,
                     found.initrd, source)
            return found
        tried.append(f"{source}: " + ", ".join(missing) + " missing")
    contents = ", ".join(top_level(reader)) or "(nothing)"
    error = BuildError if not (kernel or initrd) else UsageError
    raise error(
        f"no {distro.label} installer kernel/initrd in {iso} ({'; '.join(tried)});"
        f" the ISO's top level holds: {contents}",
        hint="is this the right ISO for the distro? Otherwise set source.installer_kernel and"
        " source.installer_initrd to their paths inside the ISO",
    )


def extract_files(iso: Path, wanted: Mapping[str, Path]) -> None:
    """Copy files out of the ISO (path in the ISO -> destination), reading its directory
    tree once; each is written to a temporary name, then renamed."""
    with open_iso(iso) as reader:
        for path_in_iso, dest in wanted.items():
            _extract_one(reader, iso, path_in_iso, dest)


def _extract_one(reader: Any, iso: Path, path_in_iso: str, dest: Path) -> None:
    tmp = dest.with_name(dest.name + ".tmp")
    for way in _lookups(reader, path_in_iso):
        try:
            with tmp.open("wb") as out:
                reader.get_file_from_iso_fp(out, **way)
        except PyCdlibException:
            continue
        os.replace(tmp, dest)
        log.debug("extracted %s from %s to %s", path_in_iso, iso, dest)
        return
    tmp.unlink(missing_ok=True)
    raise BuildError(f"{path_in_iso} not found in {iso}; top level: "
                     + ", ".join(top_level(reader)))
