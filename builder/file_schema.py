"""The JSON Schema of one template file as written: a template or a layer (`azbuild schema`).

The models' schema (`template_json_schema`) describes the resolved template, which is what
`inspect` prints. A file an editor or `taplo check` sees is not resolved yet, so three things
differ, and this module derives them from the models' schema instead of writing a second one:

- nothing is required: a layer sets what it sets, and a template may take `source` or
  `distro` from its layers;
- a typed value (a number, a boolean, a choice, a size, a pattern-checked string) may be a
  `${...}` reference, since it may come from a variable;
- provisioners and publish entries are chosen by their `type` with if/then, so a mistake in
  one is reported against that kind's keys, not as "valid under none of the schemas" (JSON
  Schema validators ignore OpenAPI's `discriminator`, which is what pydantic writes).
"""

from __future__ import annotations

import copy
from typing import Any

from builder.layer_merge import LIST_RULES, NAMED_ITEMS, REMOVE_KEY
from builder.models import template_json_schema

# A `${...}` reference anywhere in a string, not the literal `$${`: the text around it may
# make the value fit the pattern once substituted, which only the load can tell.
REFERENCE_IN_TEXT = r"(^|[^$])\$\{[^}]*\}"
# A value that is one reference and nothing else: it takes the variable's type.
WHOLE_REFERENCE = r"^\$\{[^}]*\}$"

_ANNOTATIONS = ("title", "description", "default", "examples")
# Keys that select a model (`type`) and the variables themselves are never references.
_NOT_REFERENCES = frozenset({"type"})


def file_json_schema() -> dict[str, Any]:
    """The schema of a template or layer file (Draft 2020-12)."""
    schema = copy.deepcopy(template_json_schema())
    schema.pop("required", None)
    schema["title"] = "azbuild template or layer"
    schema["description"] = (
        "One azbuild template file or layer as written, before its layers and variables are "
        "applied: no key is required, and a `${...}` reference may stand for a typed value.")
    schema["properties"][REMOVE_KEY] = _remove_schema()
    for name, definition in schema["$defs"].items():
        if name != "Variable":
            _relax_model(definition)
    _relax_model(schema, skip=("variables",))
    _select_on_type(schema)
    return schema


def _remove_schema() -> dict[str, Any]:
    """`[remove]`: its tables mirror the template's, down to the lists layers append to."""
    root: dict[str, Any] = {
        "type": "object", "properties": {},
        "description": "items the files below this one added, to take out of their lists: "
                       "values, or provisioners by name"}
    for key_path, rule in LIST_RULES.items():
        node = root
        for part in key_path[:-1]:
            node = node["properties"].setdefault(str(part), {"type": "object",
                                                             "properties": {}})
        what = "names of provisioners" if key_path in NAMED_ITEMS else "values"
        node["properties"][str(key_path[-1])] = {
            "type": "array", "items": {"type": "string"},
            "description": f"{what} to remove (the list's rule: {rule})"}
    _close(root)
    return root


def _close(node: dict[str, Any]) -> None:
    if node.get("type") == "object":
        node["propertyNames"] = {"enum": sorted(node["properties"])}
        for child in node["properties"].values():
            _close(child)


def _relax_model(model: dict[str, Any], skip: tuple[str, ...] = ()) -> None:
    """Let every property of a model that holds a typed value accept a reference; an unknown
    key is reported at the key, with the keys the table takes."""
    properties = model.get("properties", {})
    if model.get("additionalProperties") is False and properties:
        del model["additionalProperties"]
        model["propertyNames"] = {"enum": sorted(properties)}
    for key, node in properties.items():
        if key not in skip and key not in _NOT_REFERENCES:
            properties[key] = _relaxed(node)


def _relaxed(node: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in node:
        return node  # a table: its own keys are relaxed where it is defined
    if "anyOf" in node:
        # TOML has no null: `X | None` is X, which then gets X's own errors. pydantic puts
        # the pattern of a `str | None` beside the anyOf.
        checks = {k: node.pop(k) for k in ("pattern", "enum") if k in node}
        members = [{**m, **checks} if m.get("type") == "string" else m
                   for m in node.pop("anyOf") if m.get("type") != "null"]
        if node.get("default", 0) is None:
            del node["default"]
        if len(members) == 1:
            return _relaxed({**members[0], **node})
        node["anyOf"] = [_relaxed(member) for member in members]
        return node
    if node.get("type") == "array" and isinstance(node.get("items"), dict):
        node["items"] = _relaxed(node["items"])
        return node
    if node.get("type") == "object":
        extra = node.get("additionalProperties")
        if isinstance(extra, dict):
            node["additionalProperties"] = _relaxed(extra)
        return node
    kinds = node.get("type")
    kinds = set(kinds) if isinstance(kinds, list) else {kinds}
    checked_text = "string" in kinds and any(k in node for k in ("pattern", "enum", "const"))
    if not (checked_text or kinds & {"integer", "number", "boolean"}):
        return node  # plain text accepts a reference as it is
    # if/else rather than anyOf: a value that is no reference gets the type's own error
    # ("'efi' is not one of ..."), not "valid under none of the schemas".
    reference = {"type": "string",
                 "pattern": REFERENCE_IN_TEXT if "string" in kinds else WHOLE_REFERENCE}
    annotations = {k: node.pop(k) for k in _ANNOTATIONS if k in node}
    return {**annotations, "if": reference, "else": node}


def _select_on_type(node: Any) -> None:
    """Replace each pydantic tagged union (`oneOf` + `discriminator`) by if/then on `type`."""
    if isinstance(node, list):
        for item in node:
            _select_on_type(item)
        return
    if not isinstance(node, dict):
        return
    discriminator = node.get("discriminator")
    if isinstance(discriminator, dict) and "oneOf" in node:
        tag = discriminator["propertyName"]
        mapping: dict[str, str] = discriminator["mapping"]
        del node["discriminator"], node["oneOf"]
        node["type"] = "object"
        node["required"] = [tag]
        node["properties"] = {tag: {"enum": sorted(mapping),
                                    "description": "the kind, which decides the other keys"}}
        node["allOf"] = [
            {"if": {"properties": {tag: {"const": kind}}, "required": [tag]},
             "then": {"$ref": ref}}
            for kind, ref in sorted(mapping.items())
        ]
        return
    for value in node.values():
        _select_on_type(value)
