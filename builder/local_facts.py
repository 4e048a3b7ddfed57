"""Facts a build plan needs from the local inputs a template names, read without a VM.

The plan (builder/plan.py) is a pure function of the template and these facts. They are
read here, once, by whoever makes a plan: `validate` and `render` read what is already
on this machine (a local ISO or its cached download, the source image, the provisioner
scripts); the build reads the ISO again once it has fetched it. A fact that cannot be
read is None, with the reason among the problems: key path and message, as
builder/template_checks.py reports them.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from builder.errors import AzbuildError, CommandError, UsageError
from builder.image.digest import Stamp
from builder.image.disk import detect_image_format, foreign_format
from builder.image.fetch import local_iso
from builder.image.inputs import verify_source_image
from builder.image.iso import InstallerPaths, installer_and_label
from builder.models import ShellProvisioner, Template
from builder.toml_lines import KeyPath
from builder.vm.qemu_img import virtual_size
from distros import resolve

log = logging.getLogger(__name__)

Found = list[tuple[KeyPath, str]]


@dataclass(frozen=True)
class IsoFacts:
    """The installer ISO as the install step boots it."""

    path: Path
    label: str  # the volume identifier (Anaconda's inst.stage2=hd:LABEL=)
    installer: InstallerPaths  # the kernel and initrd inside it


@dataclass(frozen=True)
class ImageFacts:
    """The source disk image as `qemu-img` and its bytes say."""

    format: str  # builder.image.disk.ImageFormat.name: raw, qcow2, vhd-fixed, ...
    qemu_format: str
    virtual_size: int | None  # None when qemu-img is not installed


@dataclass(frozen=True)
class LocalFacts:
    iso: IsoFacts | None = None  # None: an ISO not on this machine yet (or no ISO source)
    image: ImageFacts | None = None
    # The text of each shell provisioner's `script`, by its index in `provision`.
    scripts: Mapping[int, str] = field(default_factory=dict)


def read_local_facts(template: Template) -> tuple[LocalFacts, Found]:
    """The facts of `template`'s local inputs, and what is wrong with those that exist
    (a missing input is not a problem here: the template's own checks say so)."""
    found: Found = []
    iso = None
    source = template.source
    if source.iso is not None:
        path = local_iso(source.iso, source.checksum)
        if path is not None:
            try:
                iso = read_iso_facts(path, template)
            except AzbuildError as exc:
                key = ("installer_kernel" if source.installer_kernel or source.installer_initrd
                       else "iso")
                found.append((("source", key), exc.message))
    image = None
    if source.disk_image is not None and source.disk_image.is_file():
        # Inspected by the template's checks (validate) and by the build's step, not here.
        image, problems = read_image_facts(source.disk_image, inspect=False)
        found.extend(problems)
    scripts, problems = read_scripts(template)
    found.extend(problems)
    return LocalFacts(iso=iso, image=image, scripts=scripts), found


def read_iso_facts(path: Path, template: Template) -> IsoFacts:
    """Label and installer paths of the ISO at `path`; raises BuildError or UsageError when
    it is no ISO or holds no installer where the distro (or the template) says. Read once
    per process while the file is unchanged: validate's checks, the plan and the install
    step all ask, and a DVD's directory tree takes seconds to read."""
    source = template.source
    return _iso_facts(path, Stamp.of(path), template.distro.name, template.distro.version,
                      source.installer_kernel, source.installer_initrd)


@functools.lru_cache(maxsize=16)
def _iso_facts(path: Path, stamp: Stamp, distro_name: str, distro_version: str,
               kernel: str | None, initrd: str | None) -> IsoFacts:
    installer, label = installer_and_label(path, resolve(distro_name, distro_version),
                                           kernel, initrd)
    return IsoFacts(path=path, label=label, installer=installer)


def read_image_facts(image: Path, inspect: bool = True) -> tuple[ImageFacts | None, Found]:
    """The image's format and virtual size; a format the build cannot start from, a file
    that is no disk image (compressed, an ISO), or an image qemu-img cannot read, is a
    problem. With `inspect`, so is anything the build's source-disk step refuses
    (builder/image/inputs.py: HTML, random bytes, zeros, a truncated or corrupt image): what
    validate and render check. A build leaves that to its source-disk step, which then
    fails with its manifest and log."""
    loc: KeyPath = ("source", "disk_image")
    image_format = detect_image_format(image)
    if image_format.name not in STARTABLE_FORMATS:
        return None, [(loc, f"{image} is a {image_format.name} image, which azbuild cannot"
                            " start from; use raw, qcow2, VHD or VHDX")]
    foreign = foreign_format(image) if image_format.name == "raw" else None
    if foreign is not None:
        what, fix = foreign
        return None, [(loc, f"{image} is {what}, not a disk image azbuild starts from (raw, "
                            f"qcow2, VHD or VHDX): {fix}")]
    if inspect:
        try:
            verify_source_image(image, image_format, role="source.disk_image")
        except UsageError as exc:
            message = exc.message.removeprefix("source.disk_image ")
            return None, [(loc, message + (f": {exc.hint}" if exc.hint else ""))]
    try:
        size: int | None = virtual_size(image, image_format.qemu_format)
    except CommandError as exc:
        return None, [(loc, f"qemu-img cannot read {image}: "
                            f"{exc.stderr.strip() or exc.message}")]
    except UsageError as exc:  # qemu-img is not installed: the build says so itself
        log.warning("the size of %s is not checked: %s", image, exc.message)
        size = None
    return ImageFacts(image_format.name, image_format.qemu_format, size), []


def read_scripts(template: Template) -> tuple[dict[int, str], Found]:
    """Each shell provisioner script's text (bytes that are not UTF-8 kept as surrogate
    escapes, so writing it back gives the same bytes)."""
    scripts: dict[int, str] = {}
    found: Found = []
    for index, provisioner in enumerate(template.provision):
        if not isinstance(provisioner, ShellProvisioner) or provisioner.script is None:
            continue
        try:
            scripts[index] = provisioner.script.read_text(errors="surrogateescape")
        except FileNotFoundError:
            continue  # reported as missing by the template's checks
        except OSError as exc:
            found.append((("provision", index, "script"),
                          f"cannot read {provisioner.script}: {exc.strerror}"))
    return scripts, found


# Image formats the source-disk step converts to the build's raw disk.
STARTABLE_FORMATS = ("raw", "qcow2", "vhd-fixed", "vhd-dynamic", "vhdx")
