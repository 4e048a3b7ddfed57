"""Checks of a loaded template that need more than one key, the distro, or the local files.

They used to fail only once the build had started (some after the VM had booted); run at
load time, they make `azbuild validate` refuse the template instead. Each check returns
(key path, message) pairs; builder.template turns them into problems naming the file and
the line. Nothing here starts a VM or writes a file.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from builder import placeholders
from builder.answers import (
    AnswerContext,
    answer_file_syntax_error,
    render_answer_files,
)
from builder.azure_prep import prep_facts
from builder.errors import AzbuildError, UsageError
from builder.image.fetch import is_url, local_iso, resolve_checksum
from builder.local_facts import read_image_facts, read_iso_facts
from builder.models import Template
from builder.toml_lines import KeyPath
from builder.units import format_size
from distros import resolve

log = logging.getLogger(__name__)

Found = list[tuple[KeyPath, str]]


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


def file_problems(template: Template, building: bool = False) -> Found:
    """What is wrong with the local files that exist (a missing one is reported elsewhere).
    A source disk image is inspected as the build's source-disk step does unless
    `building`: the build's step does it then, and fails with its manifest."""
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
    private_key = comm.private_key_file
    if private_key is not None and private_key.exists():
        loc: KeyPath = ("communicator", "private_key_file")
        found.extend(_readable(loc, private_key) or _private_key(loc, private_key))
    host_key = comm.host_key_file
    if host_key is not None and host_key.exists():
        loc = ("communicator", "host_key_file")
        found.extend(_readable(loc, host_key) or _public_key(loc, host_key))
    answer = template.install.answer_file
    if answer is not None and answer.exists():
        loc = ("install", "answer_file")
        found.extend(_readable(loc, answer) or _answer_syntax(loc, answer)
                     or _answer_render(loc, template))
    if template.source.iso is not None and not is_url(template.source.iso):
        found.extend(_readable(("source", "iso"), Path(template.source.iso))
                     or _installer_iso(template))
    elif template.source.iso is not None:
        found.extend(_installer_iso(template))  # its cached download, if any
    found.extend(_checksum_file(template))
    image = template.source.disk_image
    if image is not None and image.exists():
        loc = ("source", "disk_image")
        found.extend(_readable(loc, image) or _source_image(template, image, not building))
    return found


def _installer_iso(template: Template) -> Found:
    """An ISO that is here must be one, with the installer where the install step looks."""
    source = template.source
    assert source.iso is not None
    path = local_iso(source.iso, source.checksum)
    if path is None:
        return []
    try:
        read_iso_facts(path, template)
    except AzbuildError as exc:
        key = "installer_kernel" if source.installer_kernel or source.installer_initrd else "iso"
        return [(("source", key), exc.message)]
    return []


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
    from builder.vm.keys import load_public_key  # paramiko: only when a key file is named

    try:
        load_public_key(path)
    except UsageError as exc:
        return [(loc, exc.message)]
    return []


def _private_key(loc: KeyPath, path: Path) -> Found:
    from builder.vm.keys import load_private_key  # paramiko: only when a key file is named

    try:
        load_private_key(path)
    except UsageError as exc:
        return [(loc, exc.message + (f" ({exc.hint})" if exc.hint else ""))]
    return []


def _checksum_file(template: Template) -> Found:
    """A local checksum file must name the source file (its name is all that is looked up)."""
    source = template.source
    checksum = source.checksum or ""
    path = checksum.removeprefix("file:")
    target = source.iso if source.iso is not None else str(source.disk_image)
    if not checksum.startswith("file:") or is_url(path) or not Path(path).is_file():
        return []
    unreadable = _readable(("source", "checksum"), Path(path))
    if unreadable:
        return unreadable
    try:
        resolve_checksum(checksum, target)
    except UsageError as exc:
        return [(("source", "checksum"), exc.message)]
    return []


def _answer_render(loc: KeyPath, template: Template) -> Found:
    """Render the user's answer file as `azbuild render` does (placeholder keys): a variable
    it names that azbuild does not give fails here, not after the ISO download."""
    if template.source.iso is None:
        return []
    password = template.install.root_password
    context = AnswerContext.for_template(
        template, ssh_public_key=placeholders.PLACEHOLDER_CLIENT_PUBLIC,
        host_key_private=placeholders.PLACEHOLDER_HOST_PRIVATE,
        host_key_public=placeholders.PLACEHOLDER_HOST_PUBLIC,
        root_password_hash=placeholders.PLACEHOLDER_PASSWORD_HASH if password else None)
    distro = resolve(template.distro.name, template.distro.version)
    try:
        render_answer_files(distro, template, context)
    except UsageError as exc:
        return [(loc, exc.message + (f" ({exc.hint})" if exc.hint else ""))]
    return []


def _answer_syntax(loc: KeyPath, path: Path) -> Found:
    error = answer_file_syntax_error(path)
    return [(loc, f"{path}: {error}")] if error else []


def _source_image(template: Template, image: Path, inspect: bool) -> Found:
    """The image must be of a format the build starts from and fit in vm.disk_size; with
    `inspect`, be whole and a disk image at all."""
    facts, found = read_image_facts(image, inspect)
    if facts is None or facts.virtual_size is None:
        return found
    virtual = facts.virtual_size
    if template.vm.disk_size < virtual:
        return [(("vm", "disk_size"),
                 f"{format_size(template.vm.disk_size)} is smaller than the source image"
                 f" {image} ({format_size(virtual)}); set vm.disk_size to at least"
                 f" {format_size(virtual)}")]
    return []
