"""Checks of a loaded template that need more than one key, the distro, or the local files.

They used to fail only once the build had started (some after the VM had booted); run at
load time, they make `azbuild validate` refuse the template instead. Each check returns
(key path, message) pairs; builder.template turns them into problems naming the file and
the line. Nothing here starts a VM or writes a file.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from builder.disk import detect_image_format
from builder.errors import CommandError, UsageError
from builder.fetch import is_url
from builder.models import Template
from builder.run import run
from builder.toml_lines import KeyPath
from builder.units import format_size
from distros import resolve
from distros.answers import answer_file_syntax_error
from distros.azure_prep import prep_facts

log = logging.getLogger(__name__)

Found = list[tuple[KeyPath, str]]
# Image formats the source-disk step converts to the build's raw disk.
STARTABLE_FORMATS = ("raw", "qcow2", "vhd-fixed", "vhd-dynamic", "vhdx")


def value_problems(template: Template) -> Found:
    """Combinations of values the build would refuse."""
    found: Found = []
    if template.source.iso is not None and template.communicator.host_key_file is not None:
        found.append((("communicator", "host_key_file"),
                      "cannot be used with an ISO install: the installed system gets the host"
                      " key azbuild generates; remove communicator.host_key_file"))
    distro = resolve(template.distro.name, template.distro.version)
    if template.azure.provisioning == "cloud-init" and not prep_facts(distro).cloud_init_supported:
        found.append((("azure", "provisioning"),
                      f"cloud-init provisioning is not supported on {distro.label};"
                      ' use provisioning = "waagent"'))
    return found


def file_problems(template: Template) -> Found:
    """What is wrong with the local files that exist (a missing one is reported elsewhere)."""
    found: Found = []
    for index, prov in enumerate(template.provision):
        for key in ("script", "source"):
            path = getattr(prov, key, None)
            if key == "source" and isinstance(path, Path) and path.is_dir():
                # A file provisioner uploads a directory tree: each file must be readable.
                found.extend(_readable_tree(("provision", index, key), path))
            elif isinstance(path, Path):
                found.extend(_readable(("provision", index, key), path))
    comm = template.communicator
    if comm.private_key_file is not None:
        found.extend(_readable(("communicator", "private_key_file"), comm.private_key_file))
    host_key = comm.host_key_file
    if host_key is not None and host_key.exists():
        loc: KeyPath = ("communicator", "host_key_file")
        found.extend(_readable(loc, host_key) or _public_key(loc, host_key))
    answer = template.install.answer_file
    if answer is not None and answer.exists():
        loc = ("install", "answer_file")
        found.extend(_readable(loc, answer) or _answer_syntax(loc, answer))
    if template.source.iso is not None and not is_url(template.source.iso):
        found.extend(_readable(("source", "iso"), Path(template.source.iso)))
    image = template.source.disk_image
    if image is not None and image.exists():
        loc = ("source", "disk_image")
        found.extend(_readable(loc, image) or _source_image(template, image))
    return found


def _readable(loc: KeyPath, path: Path) -> Found:
    """A regular file this process can open, or the reason it is not (nothing when missing)."""
    if not path.exists():
        return []
    if path.is_dir():
        return [(loc, f"{path} is a directory; give a file")]
    if not path.is_file():
        return [(loc, f"{path} is not a regular file")]
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        return [(loc, f"cannot read {path}: {exc.strerror}")]
    return []


def _readable_tree(loc: KeyPath, directory: Path) -> Found:
    """The first file of an uploaded tree that cannot be read (symlinks are uploaded as links)."""
    for root, _dirs, files in os.walk(directory):
        for name in sorted(files):
            path = Path(root) / name
            if path.is_symlink() or not path.is_file():
                continue
            problem = _readable(loc, path)
            if problem:
                return problem
    return []


def _public_key(loc: KeyPath, path: Path) -> Found:
    from builder.keys import load_public_key  # paramiko: only when a key file is named

    try:
        load_public_key(path)
    except UsageError as exc:
        return [(loc, exc.message)]
    return []


def _answer_syntax(loc: KeyPath, path: Path) -> Found:
    error = answer_file_syntax_error(path)
    return [(loc, f"{path}: {error}")] if error else []


def _source_image(template: Template, image: Path) -> Found:
    """The image must be of a format the build starts from and fit in vm.disk_size."""
    loc: KeyPath = ("source", "disk_image")
    image_format = detect_image_format(image)
    if image_format.name not in STARTABLE_FORMATS:
        return [(loc, f"{image} is a {image_format.name} image, which azbuild cannot start"
                      " from; use raw, qcow2, VHD or VHDX")]
    try:
        virtual = virtual_size(image, image_format.qemu_format)
    except CommandError as exc:
        return [(loc, f"qemu-img cannot read {image}: {exc.stderr.strip() or exc.message}")]
    except UsageError as exc:  # qemu-img is not installed: the build says so itself
        log.warning("the size of %s is not checked: %s", image, exc.message)
        return []
    if template.vm.disk_size < virtual:
        return [(("vm", "disk_size"),
                 f"{format_size(template.vm.disk_size)} is smaller than the source image"
                 f" {image} ({format_size(virtual)}); set vm.disk_size to at least"
                 f" {format_size(virtual)}")]
    return []


def virtual_size(image: Path, qemu_format: str) -> int:
    """The disk size an image holds: a raw file's length, else what qemu-img info says."""
    if qemu_format == "raw":
        return os.stat(image).st_size
    info = run(["qemu-img", "info", "-f", qemu_format, "--output", "json", str(image)])
    return int(json.loads(info.stdout)["virtual-size"])
