"""Disk image files: what format a file holds, sparse copies, and atomic outputs."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import secrets
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from builder.errors import UsageError
from builder.image.vhd import COOKIE, DISK_TYPE_DYNAMIC, DISK_TYPE_FIXED, FOOTER_SIZE, parse_footer

log = logging.getLogger(__name__)

FICLONE = 0x40049409  # _IOW(0x94, 9, int), linux/fs.h
_PIECE = 16 << 20  # bytes one thread copies at a time
_WORKERS = 8  # pieces in flight: measured on a virtual disk, see docs/benchmarks-vhd.md
_BUFFER = 1 << 20  # bytes per read/write when the kernel cannot copy for us
_NO_KERNEL_COPY = (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL, errno.EBADF)

QCOW2_MAGIC = b"QFI\xfb"
VHDX_MAGIC = b"vhdxfile"


@dataclass(frozen=True)
class ImageFormat:
    """What an image file holds, judged from its bytes.

    `name` is one of raw, qcow2, vhd-fixed, vhd-dynamic, vhd-differencing, vhdx, or
    vhd-unknown (a footer only at the end, as in a fixed VHD, but another disk type);
    `qemu_format` is the driver name qemu-img and libguestfs take (raw, qcow2, vpc, vhdx);
    `evidence` says which bytes decided it."""

    name: str
    qemu_format: str
    evidence: str


def detect_image_format(path: Path) -> ImageFormat:
    """Judge the format from magic numbers: qcow2 and VHDX at offset 0, a dynamic or
    differencing VHD's footer copy at 0, a fixed VHD's footer in the last 512 bytes.
    Anything else is raw. Never asks qemu to probe."""
    with open(path, "rb") as f:
        length = os.fstat(f.fileno()).st_size
        head = f.read(FOOTER_SIZE)
        tail = b""
        if length >= FOOTER_SIZE:
            f.seek(length - FOOTER_SIZE)
            tail = f.read(FOOTER_SIZE)
    if head[:4] == QCOW2_MAGIC:
        return ImageFormat("qcow2", "qcow2", "qcow2 magic 'QFI\\xfb' at offset 0")
    if head[:8] == VHDX_MAGIC:
        return ImageFormat("vhdx", "vhdx", "VHDX signature 'vhdxfile' at offset 0")
    header = parse_footer(head) if head[:8] == COOKIE and len(head) == FOOTER_SIZE else None
    if header is not None and header.disk_type != DISK_TYPE_FIXED:
        footer = header
        name = "vhd-dynamic" if footer.disk_type == DISK_TYPE_DYNAMIC else "vhd-differencing"
        return ImageFormat(
            name, "vpc",
            f"VHD footer copy at offset 0 (disk type {footer.disk_type}, "
            f"{footer.disk_type_name}, data offset {footer.data_offset})",
        )
    if tail[:8] == COOKIE:
        footer = parse_footer(tail)
        offset = length - FOOTER_SIZE
        if footer.disk_type == DISK_TYPE_FIXED:
            return ImageFormat(
                "vhd-fixed", "vpc", f"VHD footer cookie 'conectix' at offset {offset}"
            )
        # A fixed layout (footer only at the end) with a wrong disk type: a broken VHD.
        return ImageFormat(
            "vhd-unknown", "vpc",
            f"VHD footer at offset {offset} with disk type {footer.disk_type} "
            f"({footer.disk_type_name}) and no header copy at offset 0",
        )
    return ImageFormat(
        "raw", "raw", "no qcow2, VHDX or VHD signature at the start or in the last 512 bytes"
    )


# Files that detect_image_format takes for raw but that hold no disk azbuild starts from:
# (offset, signature, what it is, what to do).
_FOREIGN_SIGNATURES = (
    (0, b"KDMV", "a VMDK image", "convert it to qcow2 first (qemu-img convert -O qcow2)"),
    (0, b"# Disk DescriptorFile", "a VMDK descriptor",
     "convert the VMDK to qcow2 first (qemu-img convert -O qcow2)"),
    (0x40, b"\x7f\x10\xda\xbe", "a VirtualBox VDI image",
     "convert it to qcow2 first (qemu-img convert -O qcow2)"),
    (0, b"\xfd7zXZ\x00", "an xz-compressed file", "decompress it first (unxz)"),
    (0, b"\x1f\x8b", "a gzip-compressed file", "decompress it first (gunzip)"),
    (0, b"\x28\xb5\x2f\xfd", "a zstd-compressed file", "decompress it first (unzstd)"),
    (0, b"BZh", "a bzip2-compressed file", "decompress it first (bunzip2)"),
    (0x8001, b"CD001", "an ISO 9660 image",
     "an installer ISO goes in source.iso, with source.checksum"),
)


def foreign_format(path: Path) -> tuple[str, str] | None:
    """(what the file is, what to do) when its signature says it is no raw disk at all:
    a VMDK or VDI image, a compressed file, an ISO; None otherwise."""
    with open(path, "rb") as f:
        for offset, signature, what, fix in _FOREIGN_SIGNATURES:
            f.seek(offset)
            if f.read(len(signature)) == signature:
                return what, fix
    return None


def allocated_bytes(path: Path) -> int:
    """Bytes the filesystem has allocated for `path` (st_blocks counts 512-byte units)."""
    return os.stat(path).st_blocks * 512


def _try_reflink(src_fd: int, dst_fd: int) -> bool:
    try:
        fcntl.ioctl(dst_fd, FICLONE, src_fd)
    except OSError as exc:
        log.debug("no reflink (%s); copying allocated ranges", exc.strerror)
        return False
    return True


def data_ranges(fd: int, length: int) -> list[tuple[int, int]]:
    """[start, end) of every allocated range below `length`, from SEEK_DATA/SEEK_HOLE
    (holes left out). A file system without SEEK_DATA reports everything as data, which
    is still correct."""
    ranges: list[tuple[int, int]] = []
    pos = 0
    while pos < length:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # only a hole remains
                break
            if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP):
                return [(0, length)] if length else []
            raise
        if start >= length:
            break
        end = min(os.lseek(fd, start, os.SEEK_HOLE), length)
        ranges.append((start, end))
        pos = end
    return ranges


class _Copier:
    """Copies pieces of one file into another from a few threads: the disk gets several
    requests at once (as qemu-img's parallel requests do), and writeback of each piece
    starts as soon as it is copied, so the final fsync has little left to do."""

    def __init__(self, src_fd: int, dst_fd: int) -> None:
        self.src_fd = src_fd
        self.dst_fd = dst_fd
        self.kernel = True  # copy_file_range works here; cleared on the first refusal

    def copy(self, start: int, count: int) -> None:
        pos, end = start, start + count
        while pos < end:
            done = self._kernel_copy(pos, end - pos) if self.kernel else 0
            if not self.kernel:
                data = os.pread(self.src_fd, min(end - pos, _BUFFER), pos)
                done = os.pwrite(self.dst_fd, data, pos) if data else 0
            if done == 0:
                raise OSError(errno.EIO, f"source ended early at offset {pos}, expected {end}")
            pos += done
        os.posix_fadvise(self.dst_fd, start, count, os.POSIX_FADV_DONTNEED)

    def _kernel_copy(self, pos: int, count: int) -> int:
        try:
            return os.copy_file_range(self.src_fd, self.dst_fd, count, pos, pos)
        except OSError as exc:
            if exc.errno not in _NO_KERNEL_COPY:
                raise
            if self.kernel:
                log.debug("copy_file_range unavailable (%s); using read/write", exc.strerror)
            self.kernel = False
            return 0


def _pieces(fd: int, length: int) -> Iterator[tuple[int, int]]:
    for start, end in data_ranges(fd, length):
        for pos in range(start, end, _PIECE):
            yield pos, min(_PIECE, end - pos)


def _copy_pieces(src_fd: int, dst_fd: int, length: int) -> int:
    """Copy every allocated piece below `length`; returns the bytes copied."""
    copier = _Copier(src_fd, dst_fd)
    copied = 0
    pending: deque[Future[None]] = deque()
    with ThreadPoolExecutor(_WORKERS, thread_name_prefix="copy") as pool:
        try:
            for start, count in _pieces(src_fd, length):
                pending.append(pool.submit(copier.copy, start, count))
                copied += count
                if len(pending) >= 2 * _WORKERS:
                    pending.popleft().result()
            while pending:
                pending.popleft().result()
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return copied


def copy_sparse(src: Path, dst_fd: int, *, length: int | None = None) -> None:
    """Copy the first `length` bytes (default: all) of `src` into the empty file `dst_fd`,
    writing only the allocated ranges, so the copy stays as sparse as the source.

    A whole-file copy is a reflink (FICLONE) when the filesystem offers it; otherwise the
    allocated ranges (SEEK_DATA/SEEK_HOLE) are copied in pieces by a few threads with
    copy_file_range (in the kernel), or read/write where it cannot. The destination ends
    up exactly `length` bytes long."""
    with open(src, "rb") as f:
        src_fd = f.fileno()
        size = os.fstat(src_fd).st_size
        if length is None:
            length = size
        if length > size:
            raise ValueError(f"cannot copy {length} bytes from {src}: it has only {size}")
        if length == size and length and _try_reflink(src_fd, dst_fd):
            log.debug("reflinked %s (%d bytes)", src, length)
            return
        copied = _copy_pieces(src_fd, dst_fd, length)
        os.ftruncate(dst_fd, length)
        log.debug("copied %d allocated of %d bytes from %s", copied, length, src)


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def refuse_existing(dst: Path, *, force: bool) -> None:
    """UsageError when `dst` cannot be written: it exists (without force), it is a
    directory, or its directory is missing."""
    if dst.is_dir():
        raise UsageError(f"output {dst} is a directory", hint="name a file, e.g. DIR/disk.vhd")
    if (dst.exists() or dst.is_symlink()) and not force:
        raise UsageError(
            f"output {dst} already exists", hint="pass --force to overwrite it"
        )
    if not dst.parent.is_dir():
        raise UsageError(f"output directory {dst.parent} does not exist")


def _temp_name(dst: Path) -> Path:
    return dst.with_name(f".{dst.name}.{secrets.token_hex(4)}.tmp")


def _commit(tmp: Path, dst: Path, *, force: bool) -> None:
    if force:
        os.replace(tmp, dst)
        return
    # No clobbering even if dst appeared meanwhile: link fails on an existing name.
    try:
        os.link(tmp, dst)
    except FileExistsError:
        raise UsageError(
            f"output {dst} already exists", hint="pass --force to overwrite it"
        ) from None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK):
            raise
        os.rename(tmp, dst)  # a filesystem without hard links
        return
    os.unlink(tmp)


@contextlib.contextmanager
def atomic_output(dst: Path, *, force: bool) -> Iterator[Path]:
    """Yield an empty temporary file beside `dst`. On success it is fsynced and renamed to
    `dst`; on any exception, KeyboardInterrupt included, it is removed and `dst` untouched.
    An existing `dst` is refused (UsageError) unless `force`."""
    refuse_existing(dst, force=force)
    tmp = _temp_name(dst)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except OSError as exc:
        # Nothing written yet: a directory that takes no new file (permissions, read-only,
        # /proc) is the user's choice of destination, not a failure of the work.
        raise UsageError(
            f"cannot write {dst}: {exc.strerror or exc}",
            hint=f"choose a destination you can write, or fix the permissions of {dst.parent}",
        ) from exc
    os.close(fd)
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        _commit(tmp, dst, force=force)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(dst.parent)


def write_named_output(target: Path, text: str, option: str) -> Path:
    """Write a file the user named with `option` (`--html FILE`) atomically, replacing an
    earlier one; a destination that cannot be written is a UsageError naming the option."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(target, force=True) as tmp:
            tmp.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot write {target} ({option}): {exc.strerror or exc}",
                         hint=f"give {option} a path in a writable directory") from None
    return target
