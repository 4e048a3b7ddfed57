"""The template's `[[publish]]` entries: where a build's VHD goes after its check step.

Kept beside the publishing code; builder/models.py adds them to the template.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from builder.publish.auth import register_sas
from builder.units import Duration

_VERSION_RE = r"^\d+\.\d+\.\d+$"
_AZURE_NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$"


class _Entry(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    container_url: str | None = Field(
        None,
        description="the blob container the VHD is uploaded to: "
        "https://ACCOUNT.blob.core.windows.net/CONTAINER, with a SAS (`?sv=...&sig=...`) or "
        "not (see docs/publish.md#authentication); a SAS is masked in every output"
    )
    blob: str | None = Field(None, description="the blob's name (default: the VHD's file name)")
    jobs: Annotated[int, Field(ge=1, le=64)] = Field(
        8, description="Put Page requests in flight"
    )

    @field_validator("container_url")
    @classmethod
    def _mask_sas(cls, value: str | None) -> str | None:
        if value is None:
            return None
        _, sep, query = value.partition("?")
        if sep and query:
            register_sas(query)
        if not re.match(r"^https?://[^/?]+/[^?]+", value):
            raise ValueError("expected https://ACCOUNT.blob.core.windows.net/CONTAINER[?SAS]")
        return value


class AzurePageBlob(_Entry):
    """Uploads the VHD as a page blob, as `azbuild publish` does."""

    type: Literal["azure-page-blob"] = Field(description="the kind of entry")

    @model_validator(mode="after")
    def _needs_container(self) -> AzurePageBlob:
        if self.container_url is None:
            raise ValueError("`container_url` is required")
        return self


class _ArmEntry(_Entry):
    subscription_id: str = Field(description="the Azure subscription's ID")
    resource_group: str = Field(description="an existing resource group")
    location: str = Field(description="the Azure region, e.g. 'westeurope'")
    timeout: Duration = Field(
        3600.0, description="bound on each long-running Azure operation"
    )
    tags: dict[str, str] = Field(
        default_factory=dict,
        description="extra tags; azbuild adds azbuild-template, azbuild-name, "
        "azbuild-image-sha256 and azbuild-version",
    )


class AzureImage(_ArmEntry):
    """A managed disk, then a managed image from it."""

    type: Literal["azure-image"] = Field(description="the kind of entry")
    image_name: str = Field(
        json_schema_extra={"pattern": _AZURE_NAME_RE}, description="the managed image's name"
    )
    disk_name: str | None = Field(
        None, description="the managed disk's name (default: IMAGE_NAME-osdisk)"
    )
    disk_source: Literal["blob", "upload"] = Field(
        "blob",
        description="'blob': the disk imports the uploaded page blob; 'upload': the VHD is "
        "sent straight into an empty disk (no storage account kept)",
    )
    storage_account_id: str | None = Field(
        None,
        description="resource ID of the container's storage account; required with "
        "disk_source = \"blob\" (the disk imports the blob from it)",
    )

    @model_validator(mode="after")
    def _needs_container(self) -> AzureImage:
        if self.disk_source == "blob" and (self.container_url is None
                                           or self.storage_account_id is None):
            raise ValueError('`container_url` and `storage_account_id` are required unless '
                             'disk_source = "upload"')
        return self


class AzureGallery(_ArmEntry):
    """A Compute Gallery image version in an existing gallery and image definition."""

    type: Literal["azure-gallery"] = Field(description="the kind of entry")
    storage_account_id: str = Field(
        description="resource ID of the container's storage account (the version imports "
        "the blob from it)"
    )
    gallery: str = Field(description="the existing gallery's name")
    image_definition: str = Field(description="the existing image definition's name")
    version: str = Field(
        json_schema_extra={"pattern": _VERSION_RE},
        description="the new version, MAJOR.MINOR.PATCH",
    )
    target_regions: list[str] = Field(
        default_factory=list, description="regions to replicate to (default: `location`)"
    )
    replica_count: Annotated[int, Field(ge=1, le=100)] = Field(
        1, description="replicas per region"
    )
    end_of_life: dt.date | None = Field(
        None, description="the version's end-of-life date, e.g. 2027-06-30"
    )
    exclude_from_latest: bool = Field(
        False, description="VMs asking for 'latest' do not get this version"
    )
    keep_latest: Annotated[int, Field(ge=1)] | None = Field(
        None,
        description="keep only the newest N versions of the definition; older ones are "
        "deleted after this one exists",
    )

    @model_validator(mode="after")
    def _needs_container(self) -> AzureGallery:
        if self.container_url is None:
            raise ValueError("`container_url` is required")
        return self

    @field_validator("version")
    @classmethod
    def _semver(cls, value: str) -> str:
        if not re.match(_VERSION_RE, value):
            raise ValueError(f"expected MAJOR.MINOR.PATCH such as '1.0.0', found {value!r}")
        return value


PublishEntry = Annotated[AzurePageBlob | AzureImage | AzureGallery, Field(discriminator="type")]
