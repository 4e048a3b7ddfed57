"""Before anything runs: outputs writable, work directory, keys."""

from __future__ import annotations

import json
import logging
from contextlib import ExitStack, suppress
from pathlib import Path

from builder.answers import hash_password
from builder.context import BuildContext
from builder.errors import UsageError
from builder.manifest import MANIFEST_FILE
from builder.sbom import sbom_path
from builder.vm.keys import KeyPair, load_public_key
from builder.work_dir import make_work_dir

log = logging.getLogger(__name__)


def prepare(ctx: BuildContext, stack: ExitStack) -> None:
    _check_outputs(ctx, stack)
    make_work_dir(ctx, stack)
    ctx.client_key = KeyPair.generate(f"azbuild-{ctx.build_id}")
    password = ctx.template.install.root_password
    if password:
        ctx.root_password_hash = hash_password(password)  # a fresh salt for every build
    comm = ctx.template.communicator
    if comm.host_key_file is not None:
        ctx.host_key_line = load_public_key(comm.host_key_file)
    else:
        # The engine makes the guest's host key and hands it over with the seed, so the
        # client can pin it instead of trusting whatever answers.
        ctx.host_key = KeyPair.generate(f"azbuild-host-{ctx.build_id}")
        ctx.host_key_line = ctx.host_key.public_line


def _check_outputs(ctx: BuildContext, stack: ExitStack) -> None:
    """Fail before any work when an output exists (without --force) or cannot be written."""
    out = ctx.output_dir
    # The directory, or the first of its parents that exists (--output-dir DIR: DIR/<name>).
    there = next((p for p in (out, *out.parents) if p.exists()), out)
    if there.exists() and not there.is_dir():
        raise UsageError(f"output directory {out} is a file" if there == out
                         else f"output directory {out} cannot be made: {there} is a file")
    targets = [ctx.artifact_path(fmt) for fmt in ctx.template.output.formats]
    targets += [sbom_path(out, ctx.template.name), out / MANIFEST_FILE]
    # A failed build's manifest (and its logs) are no output to protect: a rebuild replaces them.
    existing = [p for p in targets if p.exists() and not _is_failed_manifest(p)]
    if existing and not ctx.options.force:
        raise UsageError(
            "output already exists: " + ", ".join(str(p) for p in existing),
            hint="pass --force to overwrite, or choose another --output-dir",
        )
    if not out.exists():
        out.mkdir(parents=True)
        # Remove the directory again if the build leaves nothing in it.
        stack.callback(_remove_if_empty, out)


def _is_failed_manifest(path: Path) -> bool:
    if path.name != MANIFEST_FILE:
        return False
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("status") == "failed"


def _remove_if_empty(directory: Path) -> None:
    with suppress(OSError):
        directory.rmdir()
