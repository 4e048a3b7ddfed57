"""The fetch step: the build's source here and verified before anything else runs.

An ISO is downloaded into the cache (or found there, or read where it lies) and
verified; a source disk image's checksum file is read (fetched when it is a URL). A
step of its own, so that an input that cannot be fetched fails as `fetch` with exit
code 3 ("input unavailable", builder/image/download.py), not as the install or the copy.
"""

from __future__ import annotations

import logging
from contextlib import ExitStack

from builder.context import BuildContext
from builder.image.fetch import fetch_iso, resolve_checksum

log = logging.getLogger(__name__)


def needed(ctx: BuildContext) -> bool:
    """An ISO build always fetches; a disk-image build only reads a 'file:' checksum."""
    source = ctx.template.source
    return source.iso is not None or (source.checksum or "").lower().startswith("file:")


def fetch(ctx: BuildContext, stack: ExitStack) -> None:
    source = ctx.template.source
    assert source.checksum is not None
    if source.iso is not None:
        ctx.source_file = fetch_iso(source.iso, source.checksum)
        return
    assert source.disk_image is not None
    ctx.source_checksum = resolve_checksum(source.checksum, str(source.disk_image))
    log.info("source.disk_image %s: checksum %s", source.disk_image, ctx.source_checksum)
