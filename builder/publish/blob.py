"""`azbuild publish`: a fixed VHD into a page blob, resumable and verified.

The steps: refuse what Azure would not boot (not a fixed whole-MiB VHD; not ready unless
forced), hash the image, create the blob or resume the one holding the same image, send
the data, read the blob back and compare, then record sha256 and readiness in metadata.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from builder import __version__
from builder.errors import AzbuildError, BuildError, UsageError
from builder.image.digest import sha256_file
from builder.publish import ranges
from builder.publish.auth import AUTH_DESCRIPTIONS, AuthMethod, open_container, parse_container_url
from builder.publish.progress import Progress, human_bytes
from builder.publish.uploader import (
    DEFAULT_JOBS,
    UploadStats,
    present_ranges,
    upload_pages,
    verify_blob,
)
from builder.redact import redact

log = logging.getLogger(__name__)

META_SHA256 = "azbuild_sha256"
META_READY = "azbuild_ready"
# "uploading" until the read-back matched, then "verified"; "corrupt" when it did not
META_STATE = "azbuild_state"
META_VERSION = "azbuild_version"


@dataclass
class PublishResult:
    url: str  # the blob's URL without any SAS
    blob: str
    sha256: str
    ready: bool | None
    auth: AuthMethod
    resumed: bool
    stats: UploadStats
    verify_seconds: float
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return {"type": "azure-page-blob", "url": self.url, "blob": self.blob,
                "sha256": self.sha256, "ready": self.ready, "auth": self.auth,
                "resumed": self.resumed, **self.stats.as_dict(),
                "verify_seconds": round(self.verify_seconds, 3),
                "duration_seconds": round(self.seconds, 3)}

    def summary(self) -> str:
        s = self.stats
        rate = s.sent / s.seconds if s.seconds > 0 else 0.0
        return (f"published {self.url}: sent {human_bytes(s.sent)} ({s.sent} bytes, "
                f"{s.requests} requests), skipped {human_bytes(s.skipped)} ({s.skipped} bytes: "
                f"holes {s.skipped_holes}, zero pages {s.skipped_zeros}, already there "
                f"{s.skipped_present}) in {s.seconds:.1f}s, {human_bytes(rate)}/s; "
                f"verified sha256 {self.sha256}")


@dataclass(frozen=True)
class LocalImage:
    path: Path
    size: int
    sha256: str
    ready: bool | None  # None: not known (no manifest, and --force skipped the check)


def publish_blob(image: Path, container_url: str, blob_name: str | None = None,
                 jobs: int = DEFAULT_JOBS, force: bool = False,
                 ready: bool | None = None, env: Mapping[str, str] | None = None,
                 sha256: str | None = None, **client_options: Any) -> PublishResult:
    """Upload `image` as a page blob and verify it. `ready` is the offline check's verdict
    when the caller knows it (a build); else it comes from a manifest.json beside the image
    or from running the check. `sha256`: the image's digest when the caller knows it (a
    build hashed it for its manifest); else it is hashed here. `client_options` go to the
    storage client (e.g. a raw_request_hook for bench/bench_publish.py)."""
    from builder.publish.reach import Clients

    started = time.monotonic()
    env = os.environ if env is None else env
    if jobs < 1:
        raise UsageError(f"--jobs must be at least 1, found {jobs}")
    url = parse_container_url(container_url)
    local = inspect_image(image, force=force, ready=ready, sha256=sha256)
    name = blob_name or image.name
    clients = Clients()
    with _storage_errors(url.public, name):
        container, auth = open_container(url, env, clients, **client_options)
        blob = container.get_blob_client(name)
        resumed = _create_or_resume(blob, local, force)
        present = present_ranges(blob) if resumed else []
        if resumed:
            log.info("resuming: the blob already holds %s of data",
                     human_bytes(ranges.total(present)))
        with Progress("upload", local.size) as progress:
            stats = upload_pages(blob, image, jobs=jobs, present=present, progress=progress)
        verify_started = time.monotonic()
        with Progress("verify", local.size) as progress:
            mismatch = verify_blob(blob, image, jobs=jobs, progress=progress)
        verify_seconds = time.monotonic() - verify_started
        if mismatch is not None:
            blob.set_blob_metadata(_metadata(local, state="corrupt"))
            raise BuildError(
                f"the blob {url.public}/{name} read back differs from {image} at byte "
                f"{mismatch.offset}: {mismatch.reason}; it does not hash to {local.sha256}",
                hint="run the same command again: a blob marked corrupt is uploaded from scratch",
            )
        blob.set_blob_metadata(_metadata(local, state="verified"))
    result = PublishResult(url=f"{url.public}/{name}", blob=name, sha256=local.sha256,
                           ready=local.ready, auth=auth, resumed=resumed, stats=stats,
                           verify_seconds=verify_seconds,
                           seconds=time.monotonic() - started)
    # The command prints this line itself; a build logs it (builder/steps/publish.py).
    log.debug("%s (authenticated with %s)", result.summary(), AUTH_DESCRIPTIONS[auth])
    return result


def inspect_image(image: Path, force: bool, ready: bool | None = None,
                  sha256: str | None = None) -> LocalImage:
    """Refuse what is not a fixed whole-MiB VHD, or not ready without --force; hash it
    unless its digest `sha256` is known."""
    from builder.image.disk import detect_image_format
    from builder.offline_check.image import format_checks

    if not image.is_file():
        raise UsageError(f"{image}: no such file", hint="give the path of a built .vhd")
    failed = [r for r in format_checks(image, detect_image_format(image)) if r.status == "fail"]
    if failed:
        raise UsageError(
            f"{image} is not an Azure fixed VHD: "
            + "; ".join(f"{r.id} {r.evidence}" for r in failed),
            hint="convert it first: azbuild convert SRC DST.vhd",
        )
    size = image.stat().st_size
    if sha256 is None:
        sha256 = sha256_file(image)
    if ready is None:
        ready = _ready_from_manifest(image, sha256)
    if ready is None and not force:
        from builder.offline_check.check import run_check

        log.info("no manifest.json beside %s lists it: running the offline check", image)
        ready = run_check(image, skip=[]).ready
    if ready is False and not force:
        raise UsageError(
            f"{image} is not ready for Azure (its offline check fails): refusing to publish it",
            hint="run `azbuild check` on it to see why, or publish it anyway with --force",
        )
    return LocalImage(image, size, sha256, ready)


def _ready_from_manifest(image: Path, sha256: str) -> bool | None:
    manifest = image.parent / "manifest.json"
    try:
        data = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return None
    for artifact in data.get("artifacts") or []:
        if artifact.get("file") == image.name and artifact.get("sha256") == sha256:
            ready = data.get("ready")
            return ready if isinstance(ready, bool) else None
    return None


def _metadata(local: LocalImage, state: str) -> dict[str, str]:
    ready = "unknown" if local.ready is None else str(local.ready).lower()
    return {META_SHA256: local.sha256, META_READY: ready, META_STATE: state,
            META_VERSION: __version__}


def _create_or_resume(blob: Any, local: LocalImage, force: bool) -> bool:
    """True when the blob already holds (part of) this very image and is resumed."""
    from azure.core.exceptions import ResourceNotFoundError

    try:
        props = blob.get_blob_properties()
    except ResourceNotFoundError:
        props = None
    if props is not None:
        same = (props.blob_type == "PageBlob" and props.size == local.size
                and (props.metadata or {}).get(META_SHA256) == local.sha256)
        state = (props.metadata or {}).get(META_STATE)
        if same and state != "corrupt":
            return True
        if same:
            log.warning("the blob %s failed its last verification: uploading it again",
                        blob.blob_name)
        elif not force:
            raise UsageError(
                f"the blob {blob.blob_name} already exists and holds something else "
                f"({props.size} bytes, sha256 {(props.metadata or {}).get(META_SHA256)})",
                hint="choose another name with --blob, or replace it with --force",
            )
        else:
            log.warning("--force: replacing the existing blob %s", blob.blob_name)
        blob.delete_blob(delete_snapshots="include")
    blob.create_page_blob(local.size, metadata=_metadata(local, state="uploading"))
    return False


@contextmanager
def _storage_errors(where: str, name: str) -> Iterator[None]:
    """The SDK's exceptions as our errors: credentials and reachability are the user's
    environment (exit 2), anything else a failed publish (exit 1). "cannot reach HOST"
    (no connection) and "credentials refused by HOST" (the service answered no) are
    different messages. Messages are redacted."""
    from azure.core.exceptions import (
        ClientAuthenticationError,
        HttpResponseError,
        ResourceNotFoundError,
        ServiceRequestError,
        ServiceResponseError,
    )

    from builder.publish.reach import reason

    host = urlsplit(where).netloc
    refused_hint = ("check the SAS (permissions racwd, not expired), the connection "
                    "string's account key, or the identity's role (Storage Blob Data "
                    "Contributor); see docs/publish.md#authentication")
    try:
        yield
    except AzbuildError:
        raise
    except ClientAuthenticationError as exc:
        raise UsageError(f"credentials refused by {host} (the storage service at {where}): "
                         f"{_first_line(exc)}", hint=refused_hint) from None
    except ResourceNotFoundError as exc:
        raise UsageError(f"{where}: the container does not exist ({_first_line(exc)})",
                         hint="create it first (az storage container create)") from None
    except HttpResponseError as exc:
        if exc.status_code in (401, 403):
            raise UsageError(f"credentials refused by {host} (the storage service at "
                             f"{where}): {_first_line(exc)}", hint=refused_hint) from None
        raise BuildError(f"uploading {name} to {where} failed: {_first_line(exc)}",
                         hint="run the same command again: it resumes") from None
    except ServiceRequestError as exc:
        raise UsageError(f"cannot reach {host} (the storage service at {where}): "
                         f"{reason(exc)}",
                         hint="check the URL, the network and a proxy (HTTPS_PROXY); "
                              "rerun to resume") from None
    except ServiceResponseError as exc:
        raise UsageError(f"{host} did not answer (the storage service at {where}): "
                         f"{reason(exc)}",
                         hint="the service or the network to it is failing: rerun later "
                              "to resume") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return redact(text[0] if text else type(exc).__name__)


def upload_to_existing_blob(image: Path, sas_url: str, jobs: int = DEFAULT_JOBS
                            ) -> dict[str, Any]:
    """Send `image` into a page blob that exists already at its size, such as a managed
    disk in the ReadyToUpload state behind its write SAS; read back and compare."""
    from azure.storage.blob import BlobClient

    from builder.publish.auth import register_sas
    from builder.publish.reach import Clients

    parts = urlsplit(sas_url)
    register_sas(parts.query)
    where = f"{parts.scheme}://{parts.netloc}{parts.path}"
    with _storage_errors(where, Path(parts.path).name):
        blob = BlobClient.from_blob_url(sas_url, **Clients().storage_options())
        with Progress("upload", image.stat().st_size) as progress:
            stats = upload_pages(blob, image, jobs=jobs, present=present_ranges(blob),
                                 progress=progress)
        with Progress("verify", image.stat().st_size) as progress:
            mismatch = verify_blob(blob, image, jobs=jobs, progress=progress)
        if mismatch is not None:
            raise BuildError(f"{where} read back differs from {image} at byte "
                             f"{mismatch.offset}: {mismatch.reason}")
    return {"url": where, **stats.as_dict()}
