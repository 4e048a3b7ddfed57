"""Disk images to Azure fixed VHDs: `azbuild convert`, and the last step of every build.

A fixed VHD is the raw disk, padded with zeros to a whole MiB, plus a 512-byte footer.
So a raw image that is not kept becomes the VHD in place (rename, resize, footer:
constant time); a kept raw image or a fixed VHD is copied range by range (only what is
allocated, or a reflink); qcow2, dynamic VHD and VHDX go through `qemu-img convert -O raw`
once, straight into the output file. Every output is verified (R01, R02) before it gets
its final name, and nothing partial is ever left behind.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from builder.errors import BuildError, UsageError
from builder.image.disk import (
    ImageFormat,
    atomic_output,
    copy_sparse,
    detect_image_format,
    fsync_dir,
    refuse_existing,
)
from builder.image.inputs import verify_image
from builder.image.vhd import FOOTER_SIZE, aligned_size, build_footer, check_size
from builder.offline_check.image import verify_vhd
from builder.run import run
from builder.units import format_size
from builder.vm.qemu_img import convert_to_raw_argv, virtual_size

log = logging.getLogger(__name__)

# A destination the user cannot write to, as opposed to one that failed mid-write.
_UNWRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)


def convert_image(src: Path, dst: Path, *, force: bool = False) -> Path:
    """Write `dst` as an Azure fixed VHD holding the disk in `src` (raw, qcow2, VHD of any
    kind, VHDX); `src` is left untouched. Returns `dst`."""
    _require_source(src)
    _refuse_same_file(src, dst)
    refuse_existing(dst, force=force)
    image_format = detect_image_format(src)
    verify_image(src, image_format, role="source image")
    log.info("converting %s (%s) to fixed VHD %s", src, image_format.name, dst)
    with _os_errors(dst):
        if image_format.name == "raw":
            return _copy_to_vhd(src, dst, src.stat().st_size, force=force)
        if image_format.name == "vhd-fixed":
            # The disk is everything before the footer; the footer is rewritten.
            return _copy_to_vhd(src, dst, src.stat().st_size - FOOTER_SIZE, force=force)
        return _qemu_to_vhd(src, image_format, dst, force=force)


def raw_to_vhd(raw: Path, dst: Path, *, keep_raw: bool, force: bool) -> Path:
    """Turn the raw disk `raw` into the fixed VHD `dst`. Without `keep_raw`, `raw` itself
    becomes `dst` (rename, resize, footer); on failure it is put back as it was.
    With `keep_raw`, a sparse copy. Returns `dst`."""
    _require_source(raw)
    _refuse_same_file(raw, dst)
    refuse_existing(dst, force=force)
    image_format = detect_image_format(raw)
    if image_format.name != "raw":
        raise UsageError(
            f"{raw} is {image_format.name}, not a raw disk",
            hint=f"use azbuild convert {raw} {dst}",
        )
    length = raw.stat().st_size
    with _os_errors(dst):
        if keep_raw:
            return _copy_to_vhd(raw, dst, length, force=force)
        if raw.stat().st_dev != dst.parent.stat().st_dev:
            log.info("%s and %s are on different filesystems: copying", raw, dst)
            _copy_to_vhd(raw, dst, length, force=force)
            raw.unlink()
            return dst
        return _in_place(raw, dst, length, force=force)


def _in_place(raw: Path, dst: Path, length: int, *, force: bool) -> Path:
    size = aligned_size(length)
    check_size(size)
    with atomic_output(dst, force=force) as tmp:
        os.replace(raw, tmp)
        try:
            _append_footer(tmp, size)
            verify_vhd(tmp)
        except BaseException:
            # Put the raw disk back exactly: only zeros and the footer were added.
            os.truncate(tmp, length)
            os.replace(tmp, raw)
            raise
    if raw.parent.resolve() != dst.parent.resolve():
        fsync_dir(raw.parent)
    log.info("%s became fixed VHD %s in place (%s)", raw, dst, format_size(size))
    return dst


def _copy_to_vhd(src: Path, dst: Path, length: int, *, force: bool) -> Path:
    size = aligned_size(length)
    check_size(size)
    with atomic_output(dst, force=force) as tmp:
        fd = os.open(tmp, os.O_WRONLY)
        try:
            copy_sparse(src, fd, length=length)
        finally:
            os.close(fd)
        _append_footer(tmp, size)
        verify_vhd(tmp)
    log.info("wrote fixed VHD %s (%s) from %s", dst, format_size(size), src)
    return dst


def _qemu_to_vhd(src: Path, image_format: ImageFormat, dst: Path, *, force: bool) -> Path:
    virtual = virtual_size(src, image_format.qemu_format)
    size = aligned_size(virtual)
    check_size(size)
    with atomic_output(dst, force=force) as tmp:
        run(convert_to_raw_argv(src, image_format.qemu_format, tmp))
        written = tmp.stat().st_size
        if written != virtual:
            raise BuildError(
                f"qemu-img wrote {written} bytes from {src}, expected its virtual size {virtual}"
            )
        _append_footer(tmp, size)
        verify_vhd(tmp)
    log.info("wrote fixed VHD %s (%s) from %s %s", dst, format_size(size), image_format.name, src)
    return dst


def _append_footer(path: Path, size: int) -> None:
    """Grow `path` with zeros (a hole) to `size` bytes and write the footer after them."""
    footer = build_footer(size)
    fd = os.open(path, os.O_WRONLY)
    try:
        os.ftruncate(fd, size)
        if os.pwrite(fd, footer, size) != len(footer):
            raise OSError(errno.EIO, f"short write of the VHD footer to {path}")
    finally:
        os.close(fd)


def _require_source(src: Path) -> None:
    if not src.exists():
        raise UsageError(f"source image {src} does not exist", hint="check the path")
    if not src.is_file():
        raise UsageError(f"source image {src} is not a regular file")
    try:
        with open(src, "rb"):
            pass
    except OSError as exc:
        raise UsageError(
            f"cannot read source image {src}: {exc.strerror}",
            hint="check its permissions (or run as a user who can read it)",
        ) from None


def _refuse_same_file(src: Path, dst: Path) -> None:
    if dst.exists() and os.path.samefile(src, dst):
        raise UsageError(
            f"source and destination are the same file: {src}",
            hint="name a different DST.vhd",
        )


@contextlib.contextmanager
def _os_errors(dst: Path) -> Iterator[None]:
    """Turn OSError into an error naming the output: a destination the user cannot write
    is theirs to fix (UsageError, exit 2); disk full or an I/O error fails the work."""
    try:
        yield
    except OSError as exc:
        if exc.errno in _UNWRITABLE:
            raise UsageError(
                f"cannot write {dst}: {exc.strerror or exc}",
                hint=f"choose a destination you can write, or fix the permissions of "
                f"{dst.parent}",
            ) from exc
        hint = None
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            hint = f"free space on the filesystem of {dst.parent}"
        raise BuildError(f"writing {dst} failed: {exc.strerror or exc}", hint=hint) from exc
