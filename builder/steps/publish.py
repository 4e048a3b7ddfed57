"""The `[[publish]]` entries, run after the check step; their records go into the manifest."""

from __future__ import annotations

import logging
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from builder.context import BuildContext
from builder.errors import AzbuildError, BuildError
from builder.image.digest import sha256_file
from builder.publish.arm import ImageFacts, compute_client, create_gallery_version, create_image
from builder.publish.blob import publish_blob
from builder.publish.entries import AzureGallery, AzureImage, AzurePageBlob, PublishEntry

log = logging.getLogger(__name__)


class PublishFailed(BuildError):
    """Publishing failed after a good build: the image and the manifest stay."""

    keep_outputs = True


def publish(ctx: BuildContext, stack: ExitStack) -> None:
    """Each entry in order; a failure stops, and the pipeline's failed manifest lists what
    exists (the records so far) while the image stays."""
    image = ctx.artifacts["vhd"]  # the template requires the VHD format with [[publish]]
    ready = ctx.report.ready if ctx.report else None
    for index, entry in enumerate(ctx.template.publish):
        record: dict[str, Any] = {"type": entry.type}
        ctx.published.append(record)
        started = time.monotonic()
        try:
            run_entry(ctx, entry, image, ready, record)
        except AzbuildError as exc:
            record["error"] = exc.message
            _finish(record, started)
            raise PublishFailed(f"[[publish]] entry {index + 1} ({entry.type}): {exc.message}",
                                hint=exc.hint) from None
        except BaseException:
            _finish(record, started)
            raise
        _finish(record, started)


def _finish(record: dict[str, Any], started: float) -> None:
    record["resources"] = [r.as_dict() for r in record.pop("resources_list", [])]
    record["duration_seconds"] = round(time.monotonic() - started, 3)


def run_entry(ctx: BuildContext, entry: PublishEntry, image: Path, ready: bool | None,
              record: dict[str, Any]) -> None:
    upload: dict[str, Any] | None = None
    needs_blob = not (isinstance(entry, AzureImage) and entry.disk_source == "upload")
    # The digest the export step computed for the manifest, if the image is unchanged.
    known = ctx.digests.known(image) if ctx.digests is not None else None
    if needs_blob:
        assert entry.container_url is not None
        result = publish_blob(image, entry.container_url, entry.blob, jobs=entry.jobs,
                              force=ctx.options.force, ready=ready, sha256=known)
        log.info("%s", result.summary())
        upload = result.as_dict()
        record.update(upload)
    if isinstance(entry, AzurePageBlob):
        return
    assert upload is not None or not needs_blob
    facts = ImageFacts(template_name=ctx.template.name, template_sha256=ctx.loaded.digest(),
                       image_sha256=upload["sha256"] if upload else known or sha256_file(image),
                       firmware=ctx.template.vm.firmware, size=image.stat().st_size)
    compute = compute_client(entry.subscription_id)
    blob_uri = upload["url"] if upload else None
    if isinstance(entry, AzureImage):
        create_image(compute, entry, facts, blob_uri,
                     None if needs_blob else (lambda sas: _upload_to_disk(image, sas, entry.jobs)),
                     ctx.options.on_error, record)
    elif isinstance(entry, AzureGallery):
        assert blob_uri is not None
        create_gallery_version(compute, entry, facts, blob_uri, ctx.options.on_error, record)


def _upload_to_disk(image: Path, sas_url: str, jobs: int) -> dict[str, Any]:
    """Fill an empty managed disk (ReadyToUpload) through its write SAS, as for a blob."""
    from builder.publish.blob import upload_to_existing_blob

    return upload_to_existing_blob(image, sas_url, jobs)
