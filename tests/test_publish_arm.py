"""The ARM part of publishing, through azure-core's transport seam.

No emulator of the Compute resource provider exists, so the real azure-mgmt-compute client
sends its real requests into a requests Session whose adapter answers the way the Compute
REST API does (201 + Azure-AsyncOperation, 202 + Location, polling until Succeeded or
Failed). The tests check the bodies against the shapes in the Compute REST reference,
the polling, retention and the cleanup after a failure: a test of our requests, not a
stand-in for our code.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from azure.core.credentials import AccessToken
from azure.core.pipeline.transport import RequestsTransport
from requests.structures import CaseInsensitiveDict
from urllib3.response import HTTPResponse

from builder import __version__
from builder.errors import BuildError, UsageError
from builder.publish.arm import ImageFacts, create_gallery_version, create_image
from builder.publish.entries import AzureGallery, AzureImage

ARM = "https://management.azure.com"
SUB = "00000000-1111-2222-3333-444444444444"
RG = f"/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Compute"
BLOB = "https://acct.blob.core.windows.net/images/demo.vhd"
ACCOUNT_ID = f"/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Storage/" \
    "storageAccounts/acct"
OPERATIONS = f"{ARM}/subscriptions/{SUB}/providers/Microsoft.Compute/locations/westeurope/" \
    "operations"
SHA = "ab" * 32
FACTS = ImageFacts(template_name="demo", template_sha256="cd" * 32, image_sha256=SHA,
                   firmware="uefi", size=4 * 1024**3 + 512)
TAGS = {"team": "images", "azbuild-template": "cd" * 32, "azbuild-name": "demo",
        "azbuild-image-sha256": SHA, "azbuild-version": __version__}


class Credential:
    """A token credential that hands out a fixed token (the transport never checks it)."""

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken("token", int(time.time()) + 3600)


@dataclass
class Operation:
    resource: str | None
    polls_left: int
    outcome: str = "Succeeded"  # or "Failed"
    result: dict[str, Any] | None = None  # the body a Location poll ends with


@dataclass
class ComputeApi(requests.adapters.BaseAdapter):
    """Answers like the Compute REST API for disks, images and gallery image versions."""

    definition: dict[str, Any] = field(default_factory=dict)
    versions: list[str] = field(default_factory=list)
    polls: int = 1  # InProgress answers before an operation ends
    fail_puts_of: str | None = None  # e.g. "/images/": that PUT's operation fails
    access_sas: str = "https://md-xyz.blob.core.windows.net/abcd/abcd?sv=2018&sig=DiskSas1"
    log: list[tuple[str, str, Any]] = field(default_factory=list)
    resources: dict[str, dict[str, Any]] = field(default_factory=dict)
    operations: dict[str, Operation] = field(default_factory=dict)
    _ids: Any = field(default_factory=itertools.count)

    def __post_init__(self) -> None:
        super().__init__()

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        url = urlsplit(request.url or "")
        path, method = url.path, request.method or "GET"
        body = json.loads(request.body) if request.body else None
        assert "api-version=" in url.query, request.url
        assert request.headers["Authorization"] == "Bearer token"
        self.log.append((method, path, body))
        if "/operations/" in path:
            return self._poll(request, path.rsplit("/", 1)[1])
        if method == "PUT":
            return self._put(request, path, body)
        if method == "DELETE":
            self.resources.pop(path, None)
            if "/versions/" in path:
                self.versions.remove(path.rsplit("/", 1)[1])
            return self._accepted(request, Operation(None, self.polls))
        if method == "POST" and path.endswith("/beginGetAccess"):
            return self._accepted(request, Operation(None, self.polls,
                                                     result={"accessSAS": self.access_sas}))
        if method == "POST" and path.endswith("/endGetAccess"):
            return self._accepted(request, Operation(None, self.polls))
        if method == "GET" and path.endswith("/versions"):
            return _response(request, 200, {"value": [
                {"id": f"{path}/{v}", "name": v, "location": "westeurope",
                 "properties": {"provisioningState": "Succeeded"}} for v in self.versions]})
        if method == "GET" and "/galleries/" in path and "/versions/" not in path:
            return _response(request, 200, self.definition)
        if method == "GET" and path in self.resources:
            return _response(request, 200, self.resources[path])
        return _response(request, 404, {"error": {"code": "NotFound", "message": path}})

    def close(self) -> None:
        pass

    def _put(self, request: requests.PreparedRequest, path: str, body: Any) -> requests.Response:
        name = path.rsplit("/", 1)[1]
        resource = {**body, "id": path, "name": name,
                    "properties": {**body["properties"], "provisioningState": "Creating"}}
        self.resources[path] = resource
        if "/versions/" in path:
            self.versions.append(name)
        outcome = "Failed" if self.fail_puts_of and self.fail_puts_of in path else "Succeeded"
        op_id = str(next(self._ids))
        self.operations[op_id] = Operation(path, self.polls, outcome)
        operation_url = f"{OPERATIONS}/{op_id}?api-version=2024-03-02"
        # The reference's status codes: disks answer 202, images and versions 201.
        return _response(request, 202 if "/disks/" in path else 201, resource,
                         {"Azure-AsyncOperation": operation_url, "Retry-After": "0"})

    def _accepted(self, request: requests.PreparedRequest, op: Operation) -> requests.Response:
        op_id = str(next(self._ids))
        self.operations[op_id] = op
        location = f"{OPERATIONS}/{op_id}?api-version=2024-03-02"
        return _response(request, 202, None, {"Location": location, "Retry-After": "0"})

    def _poll(self, request: requests.PreparedRequest, op_id: str) -> requests.Response:
        op = self.operations[op_id]
        if op.polls_left > 0:
            op.polls_left -= 1
            if op.resource is None:  # a Location poll: 202 while it runs
                return _response(request, 202, None, {"Location": request.url or "",
                                                      "Retry-After": "0"})
            return _response(request, 200, {"status": "InProgress"}, {"Retry-After": "0"})
        if op.resource is None:
            return _response(request, 200, op.result)
        self.resources[op.resource]["properties"]["provisioningState"] = op.outcome
        answer: dict[str, Any] = {"status": op.outcome}
        if op.outcome == "Failed":
            answer["error"] = {"code": "InvalidParameter", "message": "the VHD is not valid"}
        return _response(request, 200, answer)

    def count(self, method: str, fragment: str) -> int:
        return sum(1 for m, p, _ in self.log if m == method and fragment in p)


def _response(request: requests.PreparedRequest, status: int, body: Any,
              headers: dict[str, str] | None = None) -> requests.Response:
    response = requests.Response()
    response.status_code = status
    response.reason = {200: "OK", 201: "Created", 202: "Accepted", 404: "Not Found"}[status]
    content = json.dumps(body).encode() if body is not None else b""
    all_headers = {"Content-Type": "application/json", "Content-Length": str(len(content)),
                   "x-ms-request-id": "r", **(headers or {})}
    response.raw = HTTPResponse(body=io.BytesIO(content), headers=all_headers, status=status,
                                preload_content=False)
    response.headers = CaseInsensitiveDict(all_headers)
    response.url = request.url or ""
    response.request = request
    return response


def compute(api: ComputeApi) -> Any:
    from azure.mgmt.compute import ComputeManagementClient

    session = requests.Session()
    session.mount("https://", api)
    return ComputeManagementClient(Credential(), SUB, transport=RequestsTransport(session=session),
                                   polling_interval=0)


def image_entry(**overrides: Any) -> AzureImage:
    values: dict[str, Any] = {
        "type": "azure-image", "container_url": "https://acct.blob.core.windows.net/images",
        "subscription_id": SUB, "resource_group": "rg", "location": "westeurope",
        "image_name": "demo-image", "storage_account_id": ACCOUNT_ID,
        "tags": {"team": "images"}, **overrides}
    return AzureImage.model_validate(values)


def gallery_entry(**overrides: Any) -> AzureGallery:
    values: dict[str, Any] = {
        "type": "azure-gallery", "container_url": "https://acct.blob.core.windows.net/images",
        "storage_account_id": ACCOUNT_ID, "subscription_id": SUB, "resource_group": "rg",
        "location": "westeurope", "gallery": "gal", "image_definition": "debian-12",
        "version": "1.3.0", "tags": {"team": "images"}, **overrides}
    return AzureGallery.model_validate(values)


def put_body(api: ComputeApi, fragment: str) -> Any:
    [body] = [b for m, p, b in api.log if m == "PUT" and fragment in p]
    return body


def test_managed_disk_then_image_from_the_blob() -> None:
    api = ComputeApi(polls=2)
    record: dict[str, Any] = {}
    create_image(compute(api), image_entry(), FACTS, BLOB, None, "cleanup", record)
    # Disks - Create Or Update, "create a managed disk by importing an unmanaged blob".
    assert put_body(api, "/disks/demo-image-osdisk") == {
        "location": "westeurope", "tags": TAGS,
        "properties": {"osType": "Linux", "hyperVGeneration": "V2",
                       "creationData": {"createOption": "Import", "sourceUri": BLOB,
                                        "storageAccountId": ACCOUNT_ID}}}
    # Images - Create Or Update, "from a managed disk".
    assert put_body(api, "/images/demo-image") == {
        "location": "westeurope", "tags": TAGS,
        "properties": {"hyperVGeneration": "V2", "storageProfile": {"osDisk": {
            "osType": "Linux", "osState": "Generalized",
            "managedDisk": {"id": f"{RG}/disks/demo-image-osdisk"}}}}}
    # Each LRO was polled until it said Succeeded: 2 InProgress answers, then the end.
    assert api.count("GET", "/operations/") == 2 * 3
    assert [m for m, p, _ in api.log if "/operations/" not in p] == ["PUT", "GET", "PUT", "GET"]
    assert record["image_id"] == f"{RG}/images/demo-image"
    assert [(r.kind, r.state) for r in record["resources_list"]] == [
        ("disk", "created"), ("image", "created")]


def test_bios_is_generation_1() -> None:
    api = ComputeApi()
    facts = ImageFacts(**{**FACTS.__dict__, "firmware": "bios"})
    create_image(compute(api), image_entry(), facts, BLOB, None, "cleanup", {})
    assert put_body(api, "/disks/")["properties"]["hyperVGeneration"] == "V1"
    assert put_body(api, "/images/")["properties"]["hyperVGeneration"] == "V1"
    with pytest.raises(ValueError, match="storage_account_id"):
        image_entry(storage_account_id=None)


@pytest.mark.parametrize("on_error", ["cleanup", "abort"])
def test_a_failed_image_removes_what_was_created_unless_abort(on_error: str) -> None:
    api = ComputeApi(fail_puts_of="/images/")
    record: dict[str, Any] = {}
    with pytest.raises(BuildError, match="creating image demo-image failed"):
        create_image(compute(api), image_entry(), FACTS, BLOB, None, on_error, record)
    deletes = [p for m, p, _ in api.log if m == "DELETE"]
    states = [(r.kind, r.state) for r in record["resources_list"]]
    if on_error == "cleanup":
        assert deletes == [f"{RG}/images/demo-image", f"{RG}/disks/demo-image-osdisk"]
        assert states == [("disk", "deleted"), ("image", "deleted")]
        assert api.resources == {}
    else:
        assert deletes == []
        assert states == [("disk", "kept"), ("image", "kept")]
    assert record["failed"] == "creating image demo-image"


def test_an_operation_past_its_timeout_fails_and_is_cleaned_up() -> None:
    api = ComputeApi(polls=10**9)
    entry = image_entry().model_copy(update={"timeout": 0.5})
    started = time.monotonic()
    with pytest.raises(BuildError, match="did not finish within"):
        create_image(compute(api), entry, FACTS, BLOB, None, "cleanup", {})
    assert time.monotonic() - started < 30
    assert api.count("DELETE", "/disks/demo-image-osdisk") == 1


DEFINITION = {"id": f"{RG}/galleries/gal/images/debian-12", "name": "debian-12",
              "location": "westeurope",
              "properties": {"osType": "Linux", "osState": "Generalized",
                             "hyperVGeneration": "V2",
                             "identifier": {"publisher": "p", "offer": "o", "sku": "s"},
                             "features": [{"name": "SecurityType",
                                           "value": "TrustedLaunchSupported"}]}}


def test_gallery_version_with_end_of_life_and_retention() -> None:
    api = ComputeApi(definition=DEFINITION, versions=["0.9.0", "1.0.0", "1.2.0", "1.10.0"])
    entry = gallery_entry(end_of_life=date(2027, 6, 30), exclude_from_latest=True,
                          keep_latest=3, target_regions=["westeurope", "northeurope"],
                          replica_count=2)
    record: dict[str, Any] = {}
    create_gallery_version(compute(api), entry, FACTS, BLOB, "cleanup", record)
    # Gallery Image Versions - Create Or Update, "using vhd as a source".
    assert put_body(api, "/versions/1.3.0") == {
        "location": "westeurope", "tags": TAGS,
        "properties": {
            "publishingProfile": {
                "targetRegions": [{"name": "westeurope", "regionalReplicaCount": 2},
                                  {"name": "northeurope", "regionalReplicaCount": 2}],
                "replicaCount": 2, "excludeFromLatest": True,
                "endOfLifeDate": "2027-06-30T23:59:59Z"},
            "storageProfile": {"osDiskImage": {
                "hostCaching": "ReadOnly",
                "source": {"uri": BLOB, "storageAccountId": ACCOUNT_ID}}}}}
    # Keep the newest 3 by version number (1.10.0 > 1.3.0 > 1.2.0): 1.0.0 and 0.9.0 go.
    assert record["retention_deleted"] == ["1.0.0", "0.9.0"]
    assert sorted(api.versions) == ["1.10.0", "1.2.0", "1.3.0"]
    assert record["gallery_image_version_id"] == (
        f"{RG}/galleries/gal/images/debian-12/versions/1.3.0")


def test_a_definition_of_the_other_generation_is_refused_before_anything_is_created(
    caplog: pytest.LogCaptureFixture,
) -> None:
    v1 = json.loads(json.dumps(DEFINITION))
    v1["properties"]["hyperVGeneration"] = "V1"
    api = ComputeApi(definition=v1)
    with pytest.raises(UsageError, match="hyperVGeneration V1, but the image is V2"):
        create_gallery_version(compute(api), gallery_entry(), FACTS, BLOB, "cleanup", {})
    assert api.count("PUT", "") == 0
    no_tl = json.loads(json.dumps(DEFINITION))
    no_tl["properties"]["features"] = []
    api = ComputeApi(definition=no_tl)
    create_gallery_version(compute(api), gallery_entry(), FACTS, BLOB, "cleanup", {})
    assert "does not declare SecurityType TrustedLaunchSupported" in caplog.text


def test_a_failed_gallery_version_is_deleted() -> None:
    api = ComputeApi(definition=DEFINITION, fail_puts_of="/versions/")
    record: dict[str, Any] = {}
    with pytest.raises(BuildError, match=r"creating gallery image version gal/debian-12/1\.3\.0"):
        create_gallery_version(compute(api), gallery_entry(keep_latest=1), FACTS, BLOB,
                               "cleanup", record)
    assert api.count("DELETE", "/versions/1.3.0") == 1
    assert "retention_deleted" not in record  # retention only runs after a success


def test_direct_upload_fills_the_empty_disk_through_its_write_sas(
    azurite: Any, tmp_path: Path
) -> None:
    """disk_source = "upload": an empty disk (ReadyToUpload), write access granted, the VHD
    sent through the SAS the service hands out (here an Azurite page blob standing for the
    disk), access revoked, then the image."""
    from azure.storage.blob import BlobSasPermissions, generate_blob_sas
    from azurite import ACCOUNT, KEY
    from sparse_vhd import make_sparse_vhd

    from builder.publish.blob import upload_to_existing_blob

    image = tmp_path / "demo.vhd"
    data = make_sparse_vhd(image, 64 * 1024**2, 16 * 1024**2, extent=8 * 1024**2,
                           zero_extent=1024**2)
    size = image.stat().st_size
    container = azurite.service().create_container("disks")
    disk_blob = container.get_blob_client("abcd")
    disk_blob.create_page_blob(size)  # what a disk in ReadyToUpload looks like to a writer
    sas = generate_blob_sas(ACCOUNT, "disks", "abcd", account_key=KEY,
                            permission=BlobSasPermissions(read=True, write=True),
                            expiry=datetime.now(UTC) + timedelta(hours=1))
    api = ComputeApi(access_sas=f"{azurite.account_url}/disks/abcd?{sas}")
    facts = ImageFacts(**{**FACTS.__dict__, "size": size})
    record: dict[str, Any] = {}
    entry = image_entry(disk_source="upload", container_url=None, storage_account_id=None)
    create_image(compute(api), entry, facts, None,
                 lambda url: upload_to_existing_blob(image, url, jobs=4), "cleanup", record)
    assert put_body(api, "/disks/")["properties"]["creationData"] == {
        "createOption": "Upload", "uploadSizeBytes": size}
    [grant] = [b for m, p, b in api.log if p.endswith("/beginGetAccess")]
    assert grant == {"access": "Write", "durationInSeconds": 86400}
    calls = [p.rsplit("/", 1)[1] for m, p, _ in api.log if m != "GET"]
    assert calls == ["demo-image-osdisk", "beginGetAccess", "endGetAccess", "demo-image"]
    assert record["upload"]["bytes_sent"] == data + 512
    assert record["upload"]["url"] == f"{azurite.account_url}/disks/abcd"  # no SAS
    digest = hashlib.sha256(disk_blob.download_blob().readall()).hexdigest()
    assert digest == hashlib.sha256(image.read_bytes()).hexdigest()
