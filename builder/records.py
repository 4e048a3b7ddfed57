"""The base of azbuild's JSON records (manifest.json, summary.json, the inventory): frozen,
and strict about unknown fields, so a typo in a writer fails its tests."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def document_config(title: str) -> ConfigDict:
    """The config of a record written as a whole file: titled, with its JSON Schema draft."""
    return ConfigDict(frozen=True, extra="forbid", title=title,
                      json_schema_extra={"$schema": "https://json-schema.org/draft/2020-12/schema"})
