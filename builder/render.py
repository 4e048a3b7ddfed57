"""`azbuild render`: the build plan written out, without a VM.

Nothing is downloaded and no VM starts: the plan (builder/plan.py) is made from the
template and what is already here (a local or cached ISO gives the installer its stage 2
label), and what every build generates afresh (keys, ports, the work directory) is shown
as placeholders. The files appear all at once: they are written into a fresh directory
beside `--out`, which is renamed into place at the end.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from pathlib import Path

from builder.errors import UsageError
from builder.masking import mask_for, masked_files
from builder.plan import (
    BOOT_DOMAIN_FILE,
    DISK_FILE,
    INSTALL_DOMAIN_FILE,
    PLACEHOLDERS,
    SEED_FILE,
    BuildPlan,
    render_runtime,
)
from builder.vm.libvirt import Disk, domain_xml

log = logging.getLogger(__name__)
__all__ = ["mask_for", "render", "rendered_files"]


def render(plan: BuildPlan, out: Path, *, force: bool = False) -> list[Path]:
    """Write the plan's files into `out`, all at once; return their paths.

    `out` must be missing or empty, unless `force`, which replaces it whole.
    """
    _check_out(out, force=force)
    masked = masked_files(rendered_files(plan))
    target = Path(os.path.abspath(out))
    _write_all(target, masked)
    return [target / name for name in masked]


def rendered_files(plan: BuildPlan) -> dict[str, str]:
    """Every file of the plan, by name, secrets still in place: what the guest gets (with
    placeholders for what each build generates) and the domains libvirt gets."""
    files = plan.guest_files(PLACEHOLDERS)
    runtime = render_runtime(plan)
    work = runtime.work_dir
    disk = Disk(work / DISK_FILE, format="raw", bus="virtio")
    if plan.installer_cmdline is not None:
        files[INSTALL_DOMAIN_FILE] = domain_xml(
            plan.install_domain(runtime, disk, work / "serial.log"))
    seed = work / SEED_FILE if plan.installer_cmdline is None else None
    files[BOOT_DOMAIN_FILE] = domain_xml(plan.boot_domain(runtime, disk, seed,
                                                          work / "serial.log"))
    return files


def _check_out(out: Path, *, force: bool) -> None:
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise UsageError(f"--out {out} exists and is not a directory",
                         hint="give --out a new or empty directory")
    try:
        full = out.is_dir() and any(out.iterdir())
    except OSError as exc:
        raise UsageError(f"cannot read --out {out}: {exc.strerror}",
                         hint="give --out a directory you can write to") from None
    if full and not force:
        raise UsageError(
            f"--out {out} is not empty",
            hint="give an empty or new directory, or add --force to replace it whole",
        )
    if out.is_dir() and _holds_the_working_directory(out):
        # The fresh directory is renamed into `out`'s place: the shell would be left in a
        # directory that no longer exists.
        raise UsageError(
            f"--out {out} is the directory you are in, or holds it; render puts a new "
            "directory in its place",
            hint="give a new directory, e.g. --out rendered",
        )


def _holds_the_working_directory(out: Path) -> bool:
    try:
        here = Path.cwd().resolve()
    except OSError:  # the working directory is gone already
        return False
    target = out.resolve()
    return here == target or target in here.parents


def _write_all(out: Path, files: dict[str, str]) -> None:
    """Write `files` into a fresh directory beside `out`, then put it in `out`'s place.

    Nothing is left behind by a failure or an interrupt: the fresh directory is removed,
    and `out` (if it was there) is still there as it was."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fresh = Path(tempfile.mkdtemp(prefix=f".{out.name}.render-", dir=out.parent))
    except OSError as exc:
        raise UsageError(
            f"cannot create the output directory {out}: {exc.strerror}",
            hint="give --out a directory you can write to",
        ) from None
    old: Path | None = None
    try:
        for name, text in files.items():
            path = fresh / name
            path.write_text(text, errors="surrogateescape")
            if name.endswith(".sh"):
                path.chmod(0o755)
        if out.is_dir():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old)
        os.replace(fresh, out)
    except BaseException as exc:  # an interrupt too: `out` must be back as it was
        if old is not None and not out.exists():
            with contextlib.suppress(OSError):
                os.replace(old, out)
                old = None
        if isinstance(exc, OSError):
            raise UsageError(
                f"cannot write {out}: {exc.strerror}",
                hint="give --out a directory you can write to",
            ) from None
        raise
    finally:
        shutil.rmtree(fresh, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
