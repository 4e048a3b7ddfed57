"""`qemu-img` command lines, built by pure functions (tested argument for argument), and
the one reading of an image's virtual size."""

from __future__ import annotations

import json
import os
from pathlib import Path

from builder.run import run


def check_argv(path: Path, qemu_format: str) -> list[str]:
    """`qemu-img check` of `path`, read only, with its findings as JSON on stdout."""
    return ["qemu-img", "check", "-f", qemu_format, "--output", "json", str(path)]


def info_argv(path: Path, qemu_format: str) -> list[str]:
    """`qemu-img info` of `path` read as `qemu_format` (never probed), as JSON on stdout."""
    return ["qemu-img", "info", "-f", qemu_format, "--output", "json", str(path)]


def convert_to_raw_argv(src: Path, qemu_format: str, dst: Path) -> list[str]:
    """`qemu-img convert` of `src` (read as `qemu_format`) into the raw file `dst`."""
    return ["qemu-img", "convert", "-f", qemu_format, "-O", "raw", str(src), str(dst)]


def create_qcow2_argv(path: Path, size: int) -> list[str]:
    """`qemu-img create` of an empty qcow2 disk of `size` bytes (what an install writes to)."""
    return ["qemu-img", "create", "-q", "-f", "qcow2", str(path), str(size)]


def create_overlay_argv(backing: Path, overlay: Path) -> list[str]:
    """`qemu-img create` of a copy-on-write qcow2 `overlay` on the qcow2 `backing`. The
    backing format is recorded in the header (-F), so nothing ever probes it (and
    libvirt's AppArmor helper follows the chain)."""
    return ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(backing), "-F", "qcow2",
            str(overlay)]


def raw_to_qcow2_argv(src: Path, dst: Path) -> list[str]:
    """`qemu-img convert` of the raw disk `src` into the qcow2 `dst` (holes stay holes)."""
    return ["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(src), str(dst)]


def chain_to_raw_argv(top: Path, dst: Path) -> list[str]:
    """`qemu-img convert` of a qcow2 backing chain, read through its top `top`, into the
    sparse raw file `dst` (zeros become holes: -S 4k is qemu-img's default, said here)."""
    return ["qemu-img", "convert", "-f", "qcow2", "-O", "raw", "-S", "4k", str(top), str(dst)]


def virtual_size(path: Path, qemu_format: str) -> int:
    """The disk size an image holds: a raw file's length, else what qemu-img info says.

    Raises CommandError when qemu-img cannot read it (UsageError when it is missing)."""
    if qemu_format == "raw":
        return os.stat(path).st_size
    info = run(info_argv(path, qemu_format))
    return int(json.loads(info.stdout)["virtual-size"])
