"""Azure resources from an uploaded VHD, through azure-mgmt-compute: a managed disk and a
managed image, or a Compute Gallery image version, with retention and cleanup.

Request bodies are plain dicts in the shapes of the Compute REST reference (built by pure
functions, so tests compare them exactly). Every resource created is recorded in a
Ledger; a failure deletes what this run created, unless --on-error=abort keeps it.
Not yet run against a real subscription: see docs/publish.md.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Literal

from builder import __version__
from builder.errors import BuildError, UsageError
from builder.publish.entries import AzureGallery, AzureImage

log = logging.getLogger(__name__)
PROGRESS_INTERVAL = 15.0  # seconds between progress lines while Azure works
UPLOAD_ACCESS_SECONDS = 24 * 3600  # the disk's write SAS lives this long
TRUSTED_LAUNCH_VALUES = ("TrustedLaunchSupported", "TrustedLaunch",
                         "TrustedLaunchAndConfidentialVmSupported")


@dataclass(frozen=True)
class ImageFacts:
    """What the resources' properties and tags come from."""

    template_name: str
    template_sha256: str
    image_sha256: str
    firmware: Literal["bios", "uefi"]
    size: int


@dataclass
class Resource:
    kind: str  # "disk", "image", "gallery-image-version"
    id: str
    state: str = "created"  # then "deleted", "kept" or "delete failed"

    def as_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "id": self.id, "state": self.state}


@dataclass
class Ledger:
    """The resources this run created, in order, each with how to delete it."""

    resources: list[Resource] = field(default_factory=list)
    _deleters: list[Callable[[], Any]] = field(default_factory=list)

    def add(self, kind: str, resource_id: str, delete: Callable[[], Any]) -> Resource:
        resource = Resource(kind, resource_id)
        self.resources.append(resource)
        self._deleters.append(delete)
        return resource

    def clean_up(self, on_error: str, timeout: float) -> None:
        """Delete what was created, newest first; with on_error=abort keep it all."""
        for resource, delete in zip(reversed(self.resources), reversed(self._deleters),
                                    strict=True):
            if on_error == "abort":
                resource.state = "kept"
                log.warning("--on-error=abort: kept %s %s", resource.kind, resource.id)
                continue
            try:
                wait_for(delete(), f"deleting {resource.kind} {resource.id}", timeout)
                resource.state = "deleted"
                log.info("deleted %s %s after the failure", resource.kind, resource.id)
            except Exception as exc:  # report and go on: the manifest says what is left
                resource.state = "delete failed"
                log.error("could not delete %s %s: %s", resource.kind, resource.id, exc)


# --- request bodies (pure) ---------------------------------------------------------------


def hyper_v_generation(firmware: str) -> str:
    return "V2" if firmware == "uefi" else "V1"


def resource_tags(facts: ImageFacts, extra: Mapping[str, str]) -> dict[str, str]:
    return {**extra, "azbuild-template": facts.template_sha256,
            "azbuild-name": facts.template_name, "azbuild-image-sha256": facts.image_sha256,
            "azbuild-version": __version__}


def disk_body(entry: AzureImage, facts: ImageFacts, source_uri: str | None) -> dict[str, Any]:
    """Disks - Create Or Update: import the blob, or an empty disk ready for upload."""
    creation: dict[str, Any]
    if source_uri is not None:
        creation = {"createOption": "Import", "sourceUri": source_uri,
                    "storageAccountId": entry.storage_account_id}
    else:
        creation = {"createOption": "Upload", "uploadSizeBytes": facts.size}
    return {
        "location": entry.location,
        "tags": resource_tags(facts, entry.tags),
        "properties": {
            "osType": "Linux",
            "hyperVGeneration": hyper_v_generation(facts.firmware),
            "creationData": creation,
        },
    }


def image_body(entry: AzureImage, facts: ImageFacts, disk_id: str) -> dict[str, Any]:
    """Images - Create Or Update, from a managed disk, generalized."""
    return {
        "location": entry.location,
        "tags": resource_tags(facts, entry.tags),
        "properties": {
            "hyperVGeneration": hyper_v_generation(facts.firmware),
            "storageProfile": {
                "osDisk": {"osType": "Linux", "osState": "Generalized",
                           "managedDisk": {"id": disk_id}},
            },
        },
    }


def gallery_version_body(entry: AzureGallery, facts: ImageFacts,
                         blob_uri: str) -> dict[str, Any]:
    """Gallery Image Versions - Create Or Update, from the VHD blob."""
    regions = entry.target_regions or [entry.location]
    publishing: dict[str, Any] = {
        "targetRegions": [{"name": region, "regionalReplicaCount": entry.replica_count}
                          for region in regions],
        "replicaCount": entry.replica_count,
        "excludeFromLatest": entry.exclude_from_latest,
    }
    if entry.end_of_life is not None:
        publishing["endOfLifeDate"] = _end_of_day(entry.end_of_life)
    return {
        "location": entry.location,
        "tags": resource_tags(facts, entry.tags),
        "properties": {
            "publishingProfile": publishing,
            "storageProfile": {
                "osDiskImage": {
                    "hostCaching": "ReadOnly",
                    "source": {"uri": blob_uri, "storageAccountId": entry.storage_account_id},
                },
            },
        },
    }


def _end_of_day(day: date) -> str:
    return f"{day.isoformat()}T23:59:59Z"


def check_definition(definition: Mapping[str, Any], facts: ImageFacts, name: str) -> list[str]:
    """Refuse a definition this image cannot be a version of; return warnings."""
    props = definition.get("properties") or {}
    want = hyper_v_generation(facts.firmware)
    have = props.get("hyperVGeneration") or "V1"
    if have != want:
        raise UsageError(
            f"the image definition {name} is hyperVGeneration {have}, but the image is {want} "
            f"(vm.firmware = {facts.firmware!r})",
            hint="publish to a definition of the same generation, or change vm.firmware",
        )
    if props.get("osState") != "Generalized" or props.get("osType") != "Linux":
        raise UsageError(
            f"the image definition {name} is {props.get('osType')}/{props.get('osState')}; "
            "azbuild images are Linux/Generalized",
            hint="create the definition with --os-type Linux --os-state Generalized",
        )
    warnings = []
    features = {f.get("name"): f.get("value") for f in props.get("features") or []}
    if facts.firmware == "uefi" and features.get("SecurityType") not in TRUSTED_LAUNCH_VALUES:
        warnings.append(
            f"the image definition {name} does not declare SecurityType "
            "TrustedLaunchSupported: VMs from it cannot use Trusted Launch"
        )
    return warnings


def _semver(name: str) -> tuple[int, ...]:
    return tuple(int(p) for p in name.split(".")) if re.match(r"^\d+\.\d+\.\d+$", name) else ()


def versions_to_delete(existing: list[str], keep: int, new: str) -> list[str]:
    """The versions older than the newest `keep` (by version number); never `new`."""
    ordered = sorted({*existing, new}, key=_semver, reverse=True)
    return [v for v in ordered[keep:] if v != new]


# --- long-running operations -------------------------------------------------------------


def wait_for(poller: Any, what: str, timeout: float,
             clock: Callable[[], float] = time.monotonic) -> Any:
    """The result of an LRO, with a progress line now and then and a hard bound."""
    started = clock()
    while not poller.done():
        elapsed = clock() - started
        if elapsed >= timeout:
            raise BuildError(
                f"{what} did not finish within {timeout:.0f}s (status {poller.status()})",
                hint="raise the entry's `timeout`, or look at the operation in the portal",
            )
        poller.wait(min(PROGRESS_INTERVAL, timeout - elapsed))
        if not poller.done():
            log.info("%s: %s after %.0fs", what, poller.status(), clock() - started)
    return poller.result()


# --- the two entry types -----------------------------------------------------------------


def compute_client(subscription_id: str, credential: Any = None, **options: Any) -> Any:
    """A ComputeManagementClient with the bounds of builder/publish/reach.py, authenticated
    by DefaultAzureCredential (bounded and watched too) unless `credential` is given.
    `options` go to the client as well (e.g. `base_url`)."""
    import os

    from azure.mgmt.compute import ComputeManagementClient

    from builder.publish.auth import register_identity_secrets
    from builder.publish.reach import Clients

    clients = Clients()
    if credential is None:
        register_identity_secrets(os.environ)
        credential = clients.credential()
    return ComputeManagementClient(credential, subscription_id,
                                   **{**clients.options(), **options})


class _Run:
    """One entry's run: what it is doing now (for the error), and what it created."""

    def __init__(self, record: dict[str, Any], on_error: str, timeout: float,
                 host: str = "management.azure.com") -> None:
        self.host = host  # the ARM endpoint, for messages
        self.record = record
        self.ledger = Ledger(resources=record.setdefault("resources_list", []))
        self.on_error = on_error
        self.timeout = timeout
        self.doing = "starting"

    def step(self, doing: str, poller_factory: Callable[[], Any]) -> Any:
        self.doing = doing
        return wait_for(poller_factory(), doing, self.timeout)

    def fail(self, exc: BaseException) -> BaseException:
        """Clean up, then the error to raise: ours as it is, the SDK's in our words."""
        self.ledger.clean_up(self.on_error, self.timeout)
        self.record["failed"] = self.doing
        if isinstance(exc, (BuildError, UsageError)) or not isinstance(exc, Exception):
            return exc
        from azure.core.exceptions import (
            AzureError,
            ClientAuthenticationError,
            ServiceRequestError,
            ServiceResponseError,
        )

        from builder.publish.reach import reason

        text = str(exc).strip().splitlines()
        detail = text[0] if text else type(exc).__name__
        if isinstance(exc, ClientAuthenticationError):
            return UsageError(f"{self.doing}: credentials refused by {self.host}: {detail}",
                              hint="`az login`, or set AZURE_CLIENT_ID/SECRET/TENANT_ID; the "
                                   "identity needs a role on the resource group")
        if isinstance(exc, ServiceRequestError):
            return UsageError(f"{self.doing}: cannot reach {self.host}: {reason(exc)}",
                              hint="check the network and a proxy (HTTPS_PROXY)")
        if isinstance(exc, ServiceResponseError):
            return UsageError(f"{self.doing}: {self.host} did not answer: {reason(exc)}",
                              hint="Azure or the network to it is failing: try again later")
        if isinstance(exc, AzureError):
            return BuildError(f"{self.doing} failed: {detail}")
        return exc


def create_image(compute: Any, entry: AzureImage, facts: ImageFacts, blob_uri: str | None,
                 upload: Callable[[str], dict[str, Any]] | None, on_error: str,
                 record: dict[str, Any]) -> None:
    """A managed disk (imported from `blob_uri`, or filled by `upload(sas_url)`), then a
    managed image from it. `record` is filled in as it goes, failure or not."""
    run = _Run(record, on_error, entry.timeout, _arm_host(compute))
    rg = entry.resource_group
    disk_name = entry.disk_name or f"{entry.image_name}-osdisk"
    try:
        run.doing = f"creating disk {disk_name}"
        poller = compute.disks.begin_create_or_update(rg, disk_name,
                                                       disk_body(entry, facts, blob_uri))
        disk = run.ledger.add("disk", _arm_id(entry, "disks", disk_name),
                              lambda: compute.disks.begin_delete(rg, disk_name))
        disk.id = _id(wait_for(poller, run.doing, entry.timeout))
        if blob_uri is None:
            assert upload is not None
            access = run.step(f"granting write access to disk {disk_name}",
                              lambda: compute.disks.begin_grant_access(
                                  rg, disk_name, {"access": "Write",
                                                  "durationInSeconds": UPLOAD_ACCESS_SECONDS}))
            sas = access["accessSAS"] if isinstance(access, Mapping) else access.access_sas
            try:
                run.doing = f"uploading into disk {disk_name}"
                record["upload"] = upload(sas)
            finally:
                run.step(f"revoking access to disk {disk_name}",
                         lambda: compute.disks.begin_revoke_access(rg, disk_name))
        run.doing = f"creating image {entry.image_name}"
        poller = compute.images.begin_create_or_update(
            rg, entry.image_name, image_body(entry, facts, disk.id))
        image = run.ledger.add("image", _arm_id(entry, "images", entry.image_name),
                               lambda: compute.images.begin_delete(rg, entry.image_name))
        image.id = _id(wait_for(poller, run.doing, entry.timeout))
        record["disk_id"] = disk.id
        record["image_id"] = image.id
    except BaseException as exc:
        raise run.fail(exc) from None


def create_gallery_version(compute: Any, entry: AzureGallery, facts: ImageFacts,
                           blob_uri: str, on_error: str, record: dict[str, Any]) -> None:
    """A gallery image version from the blob, then retention of the definition's versions."""
    run = _Run(record, on_error, entry.timeout, _arm_host(compute))
    rg, gallery, definition = entry.resource_group, entry.gallery, entry.image_definition
    where = f"{gallery}/{definition}"
    try:
        run.doing = f"reading image definition {where}"
        found = compute.gallery_images.get(rg, gallery, definition)
        as_dict = found if isinstance(found, Mapping) else found.as_dict()
        for warning in check_definition(_rest_shape(as_dict), facts, where):
            log.warning("%s", warning)
        run.doing = f"creating gallery image version {where}/{entry.version}"
        poller = compute.gallery_image_versions.begin_create_or_update(
            rg, gallery, definition, entry.version,
            gallery_version_body(entry, facts, blob_uri))
        version = run.ledger.add(
            "gallery-image-version",
            _arm_id(entry, f"galleries/{gallery}/images/{definition}/versions", entry.version),
            lambda: compute.gallery_image_versions.begin_delete(rg, gallery, definition,
                                                                entry.version))
        version.id = _id(wait_for(poller, run.doing, entry.timeout))
        record["gallery_image_version_id"] = version.id
    except BaseException as exc:
        raise run.fail(exc) from None
    if entry.keep_latest is not None:
        # The new version exists: a failure here is reported, but it is not undone.
        existing = [v.name if not isinstance(v, Mapping) else v["name"] for v in
                    compute.gallery_image_versions.list_by_gallery_image(rg, gallery, definition)]
        deleted = []
        for old in versions_to_delete(existing, entry.keep_latest, entry.version):
            wait_for(compute.gallery_image_versions.begin_delete(rg, gallery, definition, old),
                     f"deleting old version {where}/{old}", entry.timeout)
            log.info("retention: deleted %s/%s (keeping the newest %d)", where, old,
                     entry.keep_latest)
            deleted.append(old)
        record["retention_deleted"] = deleted


def _arm_host(compute: Any) -> str:
    """The ARM endpoint the client talks to (its base URL), for messages."""
    from urllib.parse import urlsplit

    base = getattr(getattr(compute, "_config", None), "base_url", None)
    return (urlsplit(base).netloc or base) if isinstance(base, str) else "management.azure.com"


def _rest_shape(data: Mapping[str, Any]) -> dict[str, Any]:
    """The SDK's model as_dict() flattens `properties`; put it back in the REST shape."""
    if "properties" in data:
        return dict(data)
    keys = {"hyper_v_generation": "hyperVGeneration", "os_state": "osState",
            "os_type": "osType", "features": "features"}
    props = {rest: data[py] for py, rest in keys.items() if py in data}
    return {"properties": props}


def _arm_id(entry: AzureImage | AzureGallery, kind: str, name: str) -> str:
    return (f"/subscriptions/{entry.subscription_id}/resourceGroups/{entry.resource_group}"
            f"/providers/Microsoft.Compute/{kind}/{name}")


def _id(result: Any) -> str:
    return str(result["id"] if isinstance(result, Mapping) else result.id)
