"""Template loading: TOML layers (`extends`), variables, path resolution, validation.

The result is a frozen `Template` plus what the rest of the program needs to
know about where it came from. Every problem found is collected, so one run of
`azbuild validate` shows all of them.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import logging
import os
import re
import tomllib
import typing
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from builder import redact, template_checks
from builder.errors import Problem, TemplateError
from builder.image.fetch import is_url
from builder.layer_merge import REMOVE_KEY, LayerMerge, duplicate_names
from builder.models import Template, Variable
from builder.toml_lines import KeyPath, line_of

log = logging.getLogger(__name__)

LAYER_PATH_ENV = "AZBUILD_TEMPLATE_PATH"
# AZBUILD_VAR_<name> sets the template variable <name>, as PKR_VAR_<name> does for Packer.
VAR_ENV_PREFIX = "AZBUILD_VAR_"
# `$${` (a literal `${`), a reference `${...}`, or a `${` that no `}` closes.
_REF_RE = re.compile(r"\$\$\{|\$\{([^}]*)\}|(\$\{)")
_WHOLE_VAR_RE = re.compile(r"\$\{\s*var\.([^}\s]+)\s*\}")
# Stands for ${name} until the merged name is known; a private-use character cannot clash
# with what a template author writes, unlike the literal "${name}" that "$${name}" produces.
_NAME_PLACEHOLDER = "\ue000name\ue000"

# Keys holding local paths, resolved against the directory of the file that declares them.
_PATH_KEYS = {
    ("source", "disk_image"),
    ("install", "answer_file"),
    ("communicator", "private_key_file"),
    ("communicator", "host_key_file"),
}
_PROVISIONER_PATH_KEYS = ("script", "source")
# Fields that hold secrets whatever the template says about its variables.
_SECRET_FIELDS = (
    ("install", "root_password"), ("install", "rhel_activation_key"),
    ("install", "rhel_organization"), ("communicator", "password"),
)


@dataclass(frozen=True)
class BuildInfo:
    """One build's identity, fixed when its template is loaded, so that `inspect` and `render`
    show the values the build uses: its id (the work directory's and domain's names carry it)
    and the time, for `${build.id}`, `${build.date}` and `${build.timestamp}`."""

    id: str
    time: datetime

    @classmethod
    def new(cls, now: datetime | None = None) -> BuildInfo:
        return cls(id=os.urandom(4).hex(), time=now or datetime.now(UTC))

    def values(self) -> dict[str, str]:
        """The `${build.NAME}` values: UTC date YYYYMMDD, compact ISO 8601 time, id."""
        utc = self.time.astimezone(UTC)
        return {
            "date": utc.strftime("%Y%m%d"),
            "timestamp": utc.strftime("%Y%m%dT%H%M%SZ"),
            "id": self.id,
        }


BUILD_VARIABLES = ("date", "timestamp", "id")


@dataclass
class Layer:
    path: Path
    data: dict[str, Any]


@dataclass
class LoadedTemplate:
    template: Template
    path: Path
    layers: list[Path]
    variables: dict[str, Any]
    sensitive_variables: set[str] = field(default_factory=set)
    warnings: list[str] = field(default_factory=list)
    # Provenance: the file that set each key, where each variable's value came from
    # (None for --var, else the var file or the file that declares its default), and the
    # keys that are exactly one `${var.NAME}` reference.
    origins: dict[KeyPath, Path] = field(default_factory=dict)
    variable_sources: dict[str, Path | None] = field(default_factory=dict)
    references: dict[KeyPath, str] = field(default_factory=dict)
    # Variables whose value came from an AZBUILD_VAR_<name> environment variable.
    environment_variables: set[str] = field(default_factory=set)
    build: BuildInfo = field(default_factory=BuildInfo.new)
    # What the template asks for, whichever build it is (see digest).
    identity_sha256: str = ""

    def redacted_dict(self) -> dict[str, Any]:
        """The resolved template as plain data, every secret masked."""
        data = self.template.model_dump(mode="json", exclude_none=True)
        data.pop("extends", None)
        variables: dict[str, Any] = {}
        for name, value in self.variables.items():
            variables[name] = redact.MASK if name in self.sensitive_variables else value
        data["variables"] = variables
        for section, key in _SECRET_FIELDS:
            if key in data.get(section, {}):
                data[section][key] = redact.MASK
        masked: dict[str, Any] = redact.redact_data(data)
        return masked

    def digest(self) -> str:
        """The template's identity for the manifest: sha256 of the resolved template (layers
        merged, variables substituted) with its `${build.*}` references as written, without
        output.directory and secrets. Two builds of an unchanged template share it."""
        return self.identity_sha256


def shipped_layers_dir() -> Path:
    """Where the shipped layers are: package data when installed, templates/ in a checkout."""
    try:
        root = resources.files("builder.layers")
        candidate = Path(str(root))
        if (candidate / "gen2.toml").is_file():
            return candidate
    except ModuleNotFoundError:
        pass
    return Path(__file__).resolve().parent.parent / "templates"


def layer_search_path() -> list[Path]:
    extra = [Path(p) for p in os.environ.get(LAYER_PATH_ENV, "").split(os.pathsep) if p]
    return [*extra, shipped_layers_dir()]


def search_path_warnings() -> list[str]:
    """One warning per AZBUILD_TEMPLATE_PATH entry that is not a directory."""
    value = os.environ.get(LAYER_PATH_ENV, "")
    return [
        f"{LAYER_PATH_ENV} entry {entry} does not exist or is not a directory; layers are"
        f" not searched there ({LAYER_PATH_ENV}={value})"
        for entry in value.split(os.pathsep)
        if entry and not Path(entry).is_dir()
    ]


def shipped_layer_names() -> list[str]:
    return sorted(p.stem for p in shipped_layers_dir().glob("*.toml"))


@dataclass(frozen=True)
class LayerInfo:
    """A layer `extends` can name: the file that wins, and the files of the same name it hides."""

    name: str
    path: Path
    description: str
    shadows: tuple[Path, ...] = ()

    def shadow_warning(self) -> str | None:
        if not self.shadows:
            return None
        hidden = ", ".join(str(p) for p in self.shadows)
        return (
            f"layer {self.name!r}: {self.path} shadows {hidden} (found first in"
            f" {LAYER_PATH_ENV}); rename one of them if that is not what you want"
        )


def layer_description(path: Path) -> str:
    """A layer's description: the comment lines at the top of its file, joined."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return ""
    lines = []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped.startswith("#"):
            break
        if stripped.startswith("#:"):  # an editor's directive (taplo's `#:schema URL`)
            continue
        lines.append(stripped.lstrip("#").strip())
    return " ".join(part for part in lines if part)


def available_layers() -> list[LayerInfo]:
    """Every layer name on the search path, the first file of each name winning, sorted."""
    found: dict[str, list[Path]] = {}
    for directory in layer_search_path():
        for candidate in sorted(directory.glob("*.toml")) if directory.is_dir() else []:
            if not candidate.is_file():
                continue
            paths = found.setdefault(candidate.stem, [])
            if candidate.resolve() not in paths:
                paths.append(candidate.resolve())
    return [
        LayerInfo(name, paths[0], layer_description(paths[0]), tuple(paths[1:]))
        for name, paths in sorted(found.items())
    ]


def load_template(
    path: Path | str,
    cli_vars: dict[str, str] | None = None,
    var_files: list[Path] | None = None,
    *,
    build: BuildInfo | None = None,
    environ: Mapping[str, str] | None = None,
    ignore_undeclared_file_vars: bool = False,
) -> LoadedTemplate:
    """Load, layer, interpolate and validate a template; raise TemplateError with every problem.

    Variables: declared defaults < `var_files` (later wins) < AZBUILD_VAR_<name> in `environ`
    (default: os.environ) < `cli_vars`. `build` fixes `${build.*}` (default: a new build).
    A var file's name this template does not declare is skipped with a warning naming the
    file and line, as Packer does; `ignore_undeclared_file_vars`: without the warning
    (var files shared by several templates of one command, which warns once for them all).
    """
    path = Path(path)
    build = build or BuildInfo.new()
    build_values = build.values()
    problems: list[Problem | str] = []
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        raise TemplateError([Problem(f"the template file {what}", path)])

    warnings = search_path_warnings()
    layers = _unique(_collect_layers(path.resolve(), [], problems, warnings))
    for warning in warnings:
        log.warning("%s", warning)
    if problems:
        raise TemplateError(problems)

    declared, sensitive = _declared_variables(layers, problems)
    overrides, override_origins, given_bases, override_files = _variable_overrides(
        var_files or [], problems
    )
    # A var file may serve several templates: a name this one does not declare is skipped,
    # with a warning unless the command's other templates are there to take it.
    if not ignore_undeclared_file_vars:
        for warning in undeclared_var_file_names(var_files or [], set(declared),
                                                 f"{path} or its layers"):
            log.warning("%s", warning)
    for name in [n for n in overrides if n not in declared]:
        del overrides[name], override_origins[name], given_bases[name]
        override_files.pop(name, None)
    from_environment = _environment_values(
        os.environ if environ is None else environ, declared, path, problems
    )
    for name, value in from_environment.items():
        overrides[name] = value
        override_origins[name] = f"{VAR_ENV_PREFIX}{name}"
        given_bases[name] = Path.cwd()
        override_files.pop(name, None)
    for name, text in (cli_vars or {}).items():
        overrides[name] = _typed_cli_value(name, text, declared, problems)
        override_origins[name] = f"--var {name}"
        given_bases[name] = Path.cwd()
        override_files.pop(name, None)
        from_environment.pop(name, None)
    for name in overrides:
        if name not in declared:
            known = ", ".join(sorted(declared)) or "none"
            problems.append(Problem(
                f"no variable {name!r} is declared in {path} or its layers"
                f"{_did_you_mean(name, declared)} (declared: {known})",
                key=override_origins[name],
            ))
    values = _variable_values(declared, overrides, build_values, problems)
    for name in sensitive:
        if name in values:
            redact.register(values[name])

    # A declared variable without a value is reported once, where it is declared: its uses
    # read it as empty, not as undefined (the load fails on that one problem anyway).
    usable = {**{name: "" for name in declared}, **values}
    merged, origins, references, merge_warnings = _merge_layers(
        layers, values, usable, given_bases, build_values, problems)
    for warning in merge_warnings:
        log.warning("%s", warning)
    warnings.extend(merge_warnings)
    # The build's identity: the same merge with every ${build.NAME} left as written.
    literal_build = {name: f"${{build.{name}}}" for name in BUILD_VARIABLES}
    literal_values = _variable_values(declared, overrides, literal_build, [])
    identity_data, _, _, _ = _merge_layers(
        layers, literal_values, {**{name: "" for name in declared}, **literal_values},
        given_bases, literal_build, [])
    identity_data["variables"] = dict(literal_values)
    merged["variables"] = dict(values)
    if problems:
        raise TemplateError(problems)

    # Register secrets held in fields before validation errors could quote them.
    for section, key in _SECRET_FIELDS:
        table = merged.get(section)
        if isinstance(table, dict) and isinstance(table.get(key), str):
            redact.register(table[key])

    try:
        template = Template.model_validate(merged)
    except ValidationError as exc:
        raise TemplateError(_describe_validation(exc, origins, path, references)) from None

    output = merged.get("output")
    if not (isinstance(output, dict) and "directory" in output):
        # The model's default directory names the build too.
        directory = template.output.directory.replace("${name}", template.name)
        template = template.model_copy(
            update={"output": template.output.model_copy(update={"directory": directory})}
        )

    late = [_problem(_origin(loc, origins) or path, loc, redact.redact(message))
            for loc, message in template_checks.value_problems(template)]
    late += _secrets_in_names(layers, sensitive, origins, path)
    if late:
        raise TemplateError(late)

    variable_sources: dict[str, Path | None] = {
        name: where for name, (_, where) in declared.items()
    }
    variable_sources.update({name: override_files.get(name) for name in overrides})
    loaded = LoadedTemplate(
        template=template,
        path=path.resolve(),
        layers=[layer.path for layer in layers],
        variables=values,
        sensitive_variables=sensitive,
        warnings=warnings,
        origins=origins,
        variable_sources=variable_sources,
        references=references,
        environment_variables=set(from_environment),
        build=build,
        identity_sha256=_identity_digest(identity_data, sensitive),
    )
    return loaded


def _identity_digest(data: dict[str, Any], sensitive: set[str]) -> str:
    """sha256 of what the template asks for, whichever build it is: `data` is the merged
    template with its ${build.*} references as written; output.directory (where, not
    what) and secrets are left out."""
    data = copy.deepcopy(data)
    output = data.get("output")
    if isinstance(output, dict):
        output.pop("directory", None)
    variables = data.get("variables", {})
    for name in sensitive & set(variables):
        variables[name] = redact.MASK
    for section, key in _SECRET_FIELDS:
        if isinstance(data.get(section), dict) and key in data[section]:
            data[section][key] = redact.MASK
    canonical = json.dumps(redact.redact_data(data), sort_keys=True, separators=(",", ":"),
                           default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _merge_layers(
    layers: list[Layer],
    values: dict[str, Any],
    usable: dict[str, Any],
    given_bases: dict[str, Path],
    build_values: dict[str, str],
    problems: list[Problem | str],
) -> tuple[dict[str, Any], dict[KeyPath, Path], dict[KeyPath, str], list[str]]:
    """The layers interpolated and merged by the list rules (builder/layer_merge.py),
    `${name}` filled in; the file that set each key, the keys that are exactly one
    `${var.NAME}`, and the merge's warnings (a replaced list)."""
    merging = LayerMerge()
    for layer in layers:
        data = {k: v for k, v in layer.data.items()
                if k not in ("extends", "variables", REMOVE_KEY)}
        problems.extend(duplicate_names(layer.path, data))
        layer_refs: dict[KeyPath, str] = {}
        data = _anchor_given_paths(copy.deepcopy(data), values, given_bases, layer_refs)
        data = _interpolate(
            data, usable, layer.path, (), problems, refs=layer_refs, build=build_values
        )
        _resolve_paths(data, layer.path.parent)
        merging.add(layer.path, data, layer_refs, layer.data.get(REMOVE_KEY))
    problems.extend(merging.problems)
    merged = merging.data
    if isinstance(merged.get("name"), str) and _NAME_PLACEHOLDER not in merged["name"]:
        merged = _replace_name(merged, merged["name"])
    else:
        merged = _drop_name_placeholder(merged)
    return merged, merging.origins, merging.references, list(merging.warnings)


def check_local_inputs(loaded: LoadedTemplate, building: bool = False,
                       strict: bool = False) -> list[str]:
    """Problems with local files the template names; a missing source (image, ISO, checksum
    file) is a warning unless building, or `strict` (`validate --strict`).

    Returns warnings; raises TemplateError for missing inputs that must exist.
    """
    t = loaded.template
    problems: list[Problem | str] = []
    source_problems: list[Problem] = []

    def missing(loc: KeyPath, value: object) -> Problem:
        where = _origin(loc, loaded.origins) or loaded.path
        return _problem(where, loc, f"file not found: {value}")

    for index, prov in enumerate(t.provision):
        for key in _PROVISIONER_PATH_KEYS:
            value = getattr(prov, key, None)
            if isinstance(value, Path) and not value.exists():
                problems.append(missing(("provision", index, key), value))
    for section, key in sorted(_PATH_KEYS - {("source", "disk_image")}):
        value = getattr(getattr(t, section), key)
        if isinstance(value, Path) and not value.exists():
            problems.append(missing((section, key), value))
    if t.source.disk_image is not None and not t.source.disk_image.exists():
        source_problems.append(missing(("source", "disk_image"), t.source.disk_image))
    if t.source.iso is not None and not is_url(t.source.iso) and not Path(t.source.iso).exists():
        source_problems.append(missing(("source", "iso"), t.source.iso))
    checksum = t.source.checksum or ""
    if checksum.startswith("file:") and not is_url(checksum[5:]) and not Path(
        checksum[5:]
    ).exists():
        source_problems.append(missing(("source", "checksum"), checksum[5:]))
    problems.extend(
        _problem(_origin(loc, loaded.origins) or loaded.path, loc, redact.redact(message))
        for loc, message in template_checks.file_problems(t, building)
    )
    warnings: list[str] = []
    if building or strict:
        problems.extend(source_problems)
    else:
        warnings.extend(f"{p} (needed at build time)" for p in source_problems)
    if t.source.disk_image is not None:
        # Easy to miss when a template moves from an ISO to a disk image.
        warnings.extend(
            str(_problem(_origin(("install", key), loaded.origins) or loaded.path,
                         ("install", key), "applies to an ISO install only; with "
                         "source.disk_image it is not used (provisioners change the image)"))
            for key in sorted(t.install.model_fields_set))
    if problems:
        raise TemplateError(problems)
    loaded.warnings.extend(warnings)
    return warnings


def _secrets_in_names(layers: Sequence[Any], sensitive: set[str],
                      origins: dict[KeyPath, Path], path: Path) -> list[Problem]:
    """A sensitive variable in the name or the output directory (as written in a layer):
    those become paths, the VM's name and the guest's host name, where nothing can mask
    it. (The default output directory is output/<name>: said for the name.)"""
    problems: list[Problem] = []
    for loc in (("name",), ("output", "directory")):
        written = [_get(layer.data, loc) for layer in layers]
        used = sorted(n for n in sensitive
                      if any(isinstance(w, str) and f"${{var.{n}}}" in w for w in written))
        if used:
            problems.append(_problem(
                _origin(loc, origins) or path, loc,
                f"uses the sensitive variable {', '.join(map(repr, used))}: it would appear "
                "in file and VM names, which cannot be masked; use a variable that is not "
                "sensitive"))
    return problems


def _get(data: Any, loc: KeyPath) -> Any:
    """The value at `loc` in a layer's raw data, or None."""
    for key in loc:
        data = data.get(str(key)) if isinstance(data, Mapping) else None
    return data


# --- layers -------------------------------------------------------------------------------


def _read_toml(path: Path, problems: list[Problem | str]) -> dict[str, Any] | None:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        problems.append(Problem(f"cannot read: {exc.strerror}", path))
        return None
    if b"\x00" in raw:
        problems.append(Problem("not a TOML file (it contains binary data)", path))
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        problems.append(Problem(f"not a TOML file (invalid UTF-8 at byte {exc.start})", path))
        return None
    if not text.strip():
        problems.append(Problem(
            "the file is empty; a template needs at least name, source and distro", path
        ))
        return None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        problems.append(_describe_syntax_error(path, text, str(exc)))
        return None


_TOML_POSITION_RE = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")


def _describe_syntax_error(path: Path, text: str, message: str) -> Problem:
    """'file: line L, column C: TOML syntax error: <expected>, found <what is there>'.

    The offending line itself is not quoted: it may hold a secret not yet registered.
    """
    match = _TOML_POSITION_RE.search(message)
    if match is None:  # "(at end of document)" or a message without a position
        head = message.replace(" (at end of document)", "")
        lines = text.splitlines() or [""]
        return Problem(
            f"TOML syntax error: {_lower_first(head)}, found the end of the file",
            path, line=len(lines), column=len(lines[-1]) + 1,
        )
    line, column = int(match.group(1)), int(match.group(2))
    head = message[: match.start()]
    where = f"TOML syntax error: {_lower_first(head)}"
    if head.startswith("Cannot"):  # "cannot overwrite a value": the position says enough
        return Problem(where, path, line=line, column=column)
    lines = text.split("\n")
    offset = sum(len(row) + 1 for row in lines[: line - 1]) + column - 1
    if offset >= len(text):
        found = "the end of the file"
    elif text[offset] in "\r\n":
        found = "the end of the line"
    else:
        found = repr(text[offset])
    return Problem(f"{where}, found {found}", path, line=line, column=column)


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]


def _find_layer(ref: str, declaring: Path, warnings: list[str]) -> Path | None:
    if "/" in ref or ref.endswith(".toml"):
        candidate = Path(ref).expanduser()
        if not candidate.is_absolute():
            candidate = declaring.parent / candidate
        return candidate.resolve() if candidate.is_file() else None
    found: list[Path] = []  # a directory listed twice finds the same file: once is enough
    for directory in layer_search_path():
        candidate = (directory / f"{ref}.toml").resolve()
        if candidate.is_file() and candidate not in found:
            found.append(candidate)
    if not found:
        return None
    warning = LayerInfo(ref, found[0], "", tuple(found[1:])).shadow_warning()
    if warning is not None and warning not in warnings:
        warnings.append(warning)
    return found[0]


def _collect_layers(
    path: Path, chain: list[Path], problems: list[Problem | str], warnings: list[str]
) -> list[Layer]:
    """Depth-first: a file's layers come before the file itself."""
    if path in chain:
        cycle = " -> ".join(str(p) for p in [*chain[chain.index(path):], path])
        problems.append(_problem(chain[-1], ("extends",), f"cycle: {cycle}"))
        return []
    data = _read_toml(path, problems)
    if data is None:
        return []
    extends = data.get("extends", [])
    if isinstance(extends, str):
        extends = [extends]
    if not isinstance(extends, list) or not all(isinstance(e, str) for e in extends):
        problems.append(_problem(path, ("extends",), "expected a list of layer names or paths"))
        return [Layer(path, data)]
    layers: list[Layer] = []
    for ref in extends:
        found = _find_layer(ref, path, warnings)
        if found is None:
            via = " -> ".join(str(p) for p in [*chain, path])
            searched = ", ".join(str(d) for d in layer_search_path())
            names = [layer.name for layer in available_layers()]
            hint = (
                f"relative to {path.parent}" if ("/" in ref or ref.endswith(".toml"))
                else f"searched {searched}; the layers there: {', '.join(names) or 'none'}"
                     f"{_did_you_mean(ref, names)}"
            )
            problems.append(
                _problem(path, ("extends",), f"layer {ref!r} not found ({hint}); chain: {via}")
            )
            continue
        layers.extend(_collect_layers(found, [*chain, path], problems, warnings))
    layers.append(Layer(path, data))
    return layers


def _unique(layers: list[Layer]) -> list[Layer]:
    """A layer reached twice (a diamond) applies once, at its first, lowest place."""
    seen: set[Path] = set()
    kept = []
    for layer in layers:
        if layer.path not in seen:
            seen.add(layer.path)
            kept.append(layer)
    return kept


def _path_slots(data: dict[str, Any]) -> Iterator[tuple[dict[str, Any], str, bool]]:
    """(table, key, is_checksum) for every key of one layer's data that holds a local path."""
    for section, key in sorted(_PATH_KEYS):
        table = data.get(section)
        if isinstance(table, dict) and key in table:
            yield table, key, False
    source = data.get("source")
    if isinstance(source, dict):
        if "iso" in source:
            yield source, "iso", False
        if "checksum" in source:
            yield source, "checksum", True
    provisioners = data.get("provision")
    for prov in provisioners if isinstance(provisioners, list) else []:
        if isinstance(prov, dict) and prov.get("type") in ("shell", "file"):
            for key in _PROVISIONER_PATH_KEYS:
                if key in prov:
                    yield prov, key, False


def _absolute(value: Any, base: Path, is_checksum: bool) -> Any:
    """A relative local path made absolute against `base`; URLs and other values unchanged."""
    if not isinstance(value, str):
        return value
    if is_checksum:
        if value.startswith("file:"):
            return "file:" + _absolute(value[5:], base, False)
        return value
    if value and not is_url(value):
        p = Path(value).expanduser()
        return str(p if p.is_absolute() else (base / p))
    return value


def _key_path_of(data: dict[str, Any], table: dict[str, Any], key: str) -> KeyPath:
    """The key path of `table[key]` in one layer's data (a section or a provisioner)."""
    for section, value in data.items():
        if value is table:
            return (section, key)
    provisioners = data.get("provision")
    for index, prov in enumerate(provisioners if isinstance(provisioners, list) else []):
        if prov is table:
            return ("provision", index, key)
    return (key,)


def _resolve_paths(data: dict[str, Any], base: Path) -> None:
    for table, key, is_checksum in _path_slots(data):
        table[key] = _absolute(table[key], base, is_checksum)


def _anchor_given_paths(
    data: dict[str, Any],
    values: dict[str, Any],
    bases: dict[str, Path],
    refs: dict[KeyPath, str],
) -> dict[str, Any]:
    """A path key that is exactly `${var.NAME}`, NAME set by --var or --var-file, takes the
    value resolved against where it was given: the working directory for --var, the var
    file's directory for --var-file (the file that declares the value)."""
    for table, key, is_checksum in _path_slots(data):
        raw = table[key]
        match = _WHOLE_VAR_RE.fullmatch(raw) if isinstance(raw, str) else None
        if match and match.group(1) in bases and isinstance(values.get(match.group(1)), str):
            name = match.group(1)
            table[key] = _absolute(values[name], bases[name], is_checksum)
            refs[_key_path_of(data, table, key)] = name
    return data


# --- variables ------------------------------------------------------------------------------


def declared_variable_names(path: Path) -> set[str]:
    """The variables `path` and its layers declare (what could be read of them: the
    template's own load reports its problems)."""
    if not path.is_file():
        return set()
    problems: list[Problem | str] = []
    layers = _unique(_collect_layers(path.resolve(), [], problems, []))
    return set(_declared_variables(layers, problems)[0])


def var_file_names(var_files: list[Path]) -> set[str]:
    """The variable names the var files set (unreadable files: their loads say why)."""
    return set(_variable_overrides(var_files, [])[0])


def undeclared_var_file_names(var_files: list[Path], declared: set[str],
                              where: str) -> list[str]:
    """A warning for each name a var file sets that is not in `declared` (the variables
    of `where`: a template and its layers, or every template of the command), naming the
    file and the line, with a "did you mean" for a close declared name."""
    warnings: list[str] = []
    for var_file in var_files:
        is_json = var_file.suffix.lower() == ".json"
        for name in _variable_overrides([var_file], [])[0]:
            if name in declared:
                continue
            message = (f"no variable {name!r} is declared in {where}; it is ignored"
                       f"{_did_you_mean(name, declared)}")
            problem = (Problem(message, var_file, name, _json_key_line(var_file, name))
                       if is_json else _problem(var_file, (name,), message))
            warnings.append(str(problem))
    return warnings



def _declared_variables(
    layers: list[Layer], problems: list[Problem | str]
) -> tuple[dict[str, tuple[Variable, Path]], set[str]]:
    declared: dict[str, tuple[Variable, Path]] = {}
    for layer in layers:
        table = layer.data.get("variables", {})
        if not isinstance(table, dict):
            problems.append(_problem(layer.path, ("variables",), "expected a table"))
            continue
        for name, spec in table.items():
            if isinstance(spec, dict):
                try:
                    var = Variable.model_validate(spec)
                except ValidationError as exc:
                    for err_loc, err in _errors(exc):
                        loc = ("variables", name, *err_loc)
                        problems.append(_problem(layer.path, loc, _error_message(err, Variable)))
                    continue
            elif isinstance(spec, (str, int, float, bool)):
                var = Variable(default=spec)
            else:
                problems.append(_problem(
                    layer.path, ("variables", name),
                    "expected a value or a table { default, sensitive, description }",
                ))
                continue
            previous = declared.get(name)
            if previous is not None and previous[0].sensitive and not var.sensitive:
                var = var.model_copy(update={"sensitive": True})
            declared[name] = (var, layer.path)
    sensitive = {name for name, (var, _) in declared.items() if var.sensitive}
    return declared, sensitive


def _variable_overrides(
    var_files: list[Path], problems: list[Problem | str]
) -> tuple[dict[str, Any], dict[str, str], dict[str, Path], dict[str, Path]]:
    """Values from --var-file files (later files win) and, per name, where each came from:
    a label for messages, the directory its relative paths are resolved against, the file.
    A file named *.json is JSON (one object); any other is TOML."""
    overrides: dict[str, Any] = {}
    origins: dict[str, str] = {}
    bases: dict[str, Path] = {}
    files: dict[str, Path] = {}
    for var_file in var_files:
        if var_file.suffix.lower() == ".hcl":  # Packer's .pkrvars.hcl
            problems.append(Problem(
                "HCL is not supported; write the variables as TOML (NAME = value) or JSON "
                '({"NAME": value}) and name the file .toml or .json',
                key=f"--var-file {var_file}"))
            continue
        if not var_file.is_file():
            what = "is a directory" if var_file.is_dir() else "not found"
            problems.append(Problem(f"file {what}", key=f"--var-file {var_file}"))
            continue
        is_json = var_file.suffix.lower() == ".json"
        data = _read_json(var_file, problems) if is_json else _read_toml(var_file, problems)
        if data is None:
            continue
        for name, value in data.items():
            if isinstance(value, (dict, list)) or value is None:
                found = ("null" if value is None
                         else f"a {'table' if isinstance(value, dict) else 'list'}")
                message = f"expected a plain value (text, number or boolean), found {found}"
                problems.append(
                    Problem(message, var_file, name, _json_key_line(var_file, name))
                    if is_json else _problem(var_file, (name,), message)
                )
            else:
                overrides[name] = value
                origins[name] = f"{var_file}: {name}"
                bases[name] = var_file.resolve().parent
                files[name] = var_file.resolve()
    return overrides, origins, bases, files


def _read_json(path: Path, problems: list[Problem | str]) -> dict[str, Any] | None:
    """A JSON var file: one object of NAME: value."""
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        problems.append(Problem(f"cannot read: {exc.strerror}", path))
        return None
    except UnicodeDecodeError as exc:
        problems.append(Problem(f"not a JSON file (invalid UTF-8 at byte {exc.start})", path))
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        # The offending text is not quoted: it may hold a secret not yet registered.
        problems.append(Problem(f"JSON syntax error: {_lower_first(exc.msg)}", path,
                                line=exc.lineno, column=exc.colno))
        return None
    if not isinstance(data, dict):
        found = "a string" if isinstance(data, str) else "null" if data is None else _kind_of(data)
        problems.append(Problem(
            f"expected a JSON object of variable names to values, found {found}", path
        ))
        return None
    return data


def _json_key_line(path: Path, name: str) -> int | None:
    """The first line of a JSON file where `name` is written as a key."""
    pattern = re.compile(re.escape(json.dumps(name)) + r"\s*:")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    return next((n for n, line in enumerate(lines, 1) if pattern.search(line)), None)


def _environment_values(
    environ: Mapping[str, str],
    declared: dict[str, tuple[Variable, Path]],
    template: Path,
    problems: list[Problem | str],
) -> dict[str, Any]:
    """Values from AZBUILD_VAR_<name>, typed as --var values are. One environment serves many
    templates (a nightly job), so a name the template does not declare is not an error: it
    is ignored, with a warning when it is close to a declared name (a typo, most likely)."""
    values: dict[str, Any] = {}
    for key in sorted(environ):
        if not key.startswith(VAR_ENV_PREFIX):
            continue
        name = key.removeprefix(VAR_ENV_PREFIX)
        if name in declared:
            values[name] = _typed_cli_value(name, environ[key], declared, problems, label=key)
            continue
        same_but_case = [d for d in declared if d.lower() == name.lower()]
        close = same_but_case or difflib.get_close_matches(name, list(declared), n=1)
        if close:
            log.warning("%s is set, but %s declares no variable %r (did you mean %r?);"
                        " it is ignored", key, template, name, close[0])
        else:
            log.debug("%s is set, but %s declares no variable %r; ignored", key, template, name)
    return values


def _variable_values(
    declared: dict[str, tuple[Variable, Path]],
    overrides: dict[str, Any],
    build: dict[str, str],
    problems: list[Problem | str],
) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name, (var, where) in declared.items():
        if name in overrides:
            values[name] = overrides[name]
            continue
        if var.default is None:
            problems.append(_problem(
                where, ("variables", name), f"no value; give it a default or pass --var {name}=..."
            ))
            continue
        value = var.default
        if isinstance(value, str):
            value = _interpolate(
                value, {}, where, ("variables", name), problems, env_only=True, build=build
            )
        values[name] = value
    return values


def _typed_cli_value(
    name: str,
    text: str,
    declared: dict[str, tuple[Variable, Path]],
    problems: list[Problem | str],
    label: str | None = None,
) -> Any:
    """A --var value is text; it takes the type of the variable's declared default, so that
    `--var cpus=8` sets a number where `cpus = 4` is declared. Nothing else is converted.
    The same holds for AZBUILD_VAR_<name> (`label` names where the text came from)."""
    default = declared[name][0].default if name in declared else None
    if isinstance(default, bool):
        if text in ("true", "false"):
            return text == "true"
        expected = "true or false"
    elif isinstance(default, int):
        if re.fullmatch(r"[+-]?\d+", text.strip()):
            return int(text)
        expected = "an integer"
    elif isinstance(default, float):
        try:
            return float(text)
        except ValueError:
            expected = "a number"
    else:
        return text
    shown = redact.MASK if declared[name][0].sensitive else repr(text)
    problems.append(Problem(
        f"expected {expected} (the type of the declared default {default!r}), found {shown}",
        key=label or f"--var {name}",
    ))
    return text


def _did_you_mean(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _problem(file: Path, key_path: KeyPath, message: str) -> Problem:
    """A problem at a key of a file, with the line the key is written on when it is there."""
    return Problem(message, file, _dotted(key_path), line_of(file, key_path))


def _interpolate(
    data: Any,
    values: dict[str, Any],
    where: Path,
    key_path: tuple[Any, ...],
    problems: list[Problem | str],
    env_only: bool = False,
    refs: dict[KeyPath, str] | None = None,
    build: dict[str, str] | None = None,
) -> Any:
    """Substitute references; `refs` collects the keys that are exactly one ${var.NAME}.
    `env_only` (a variable's default) allows ${env.NAME} and ${build.NAME} only."""
    if isinstance(data, dict):
        return {
            k: _interpolate(v, values, where, (*key_path, k), problems, env_only, refs, build)
            for k, v in data.items()
        }
    if isinstance(data, list):
        return [
            _interpolate(v, values, where, (*key_path, i), problems, env_only, refs, build)
            for i, v in enumerate(data)
        ]
    if not isinstance(data, str) or "${" not in data:
        return data

    def lookup(ref: str) -> Any:
        kind, _, name = ref.partition(".")
        if kind == "env" and name:
            if name not in os.environ:
                problems.append(
                    _problem(where, key_path, f"environment variable {name} is not set")
                )
                return ""
            return os.environ[name]
        if kind == "build" and build is not None:
            if name in build:
                return build[name]
            choices = ", ".join(f"${{build.{n}}}" for n in BUILD_VARIABLES)
            problems.append(_problem(
                where, key_path, f"unknown build variable ${{{ref}}}"
                f"{_did_you_mean(name, BUILD_VARIABLES)} (there are {choices})",
            ))
            return ""
        if kind == "var" and name and not env_only:
            if name not in values:
                known = ", ".join(sorted(values)) or "none"
                problems.append(_problem(
                    where, key_path, f"undefined variable {name!r}"
                    f"{_did_you_mean(name, values)} (declared: {known})",
                ))
                return ""
            return values[name]
        if ref == "name" and not env_only:
            return _NAME_PLACEHOLDER  # filled in once the merged name is known
        if env_only and (kind == "var" or ref == "name"):
            problems.append(_problem(
                where, key_path,
                "a variable's default can use only ${env.NAME} and ${build.NAME},"
                f" found ${{{ref}}}",
            ))
            return ""
        shell = (f"; for the shell's own ${{{ref}}}, write $${{{ref}}}"
                 if re.fullmatch(r"[A-Z_][A-Z0-9_]*", ref) else "")
        problems.append(_problem(
            where, key_path,
            f"unknown reference ${{{ref}}}; use ${{var.NAME}}, ${{env.NAME}},"
            f" ${{build.date}}, ${{build.timestamp}}, ${{build.id}} or ${{name}}{shell}",
        ))
        return ""

    whole = re.fullmatch(r"\$\{([^}]*)\}", data)
    if whole:
        ref = whole.group(1).strip()
        if refs is not None and ref.startswith("var."):
            refs[key_path] = ref.removeprefix("var.")
        return lookup(ref)

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$${":
            return "${"
        if match.group(2) is not None:
            problems.append(_problem(
                where, key_path, "a reference `${` is not closed with `}` (for a literal `${`, "
                "write `$${`)"))
            return match.group(0)
        return str(lookup(match.group(1).strip()))

    return _REF_RE.sub(substitute, data)


def _replace_name(data: Any, name: str) -> Any:
    if isinstance(data, dict):
        return {k: _replace_name(v, name) for k, v in data.items()}
    if isinstance(data, list):
        return [_replace_name(v, name) for v in data]
    if isinstance(data, str):
        return data.replace(_NAME_PLACEHOLDER, name)
    return data


def _drop_name_placeholder(data: Any) -> Any:
    """Without a valid name, `${name}` stays visible as written (the name's own error says why)."""
    return _replace_name(data, "${name}")


# --- errors --------------------------------------------------------------------------------


def _dotted(key_path: tuple[Any, ...]) -> str:
    out = ""
    for part in key_path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _describe_validation(
    exc: ValidationError,
    origins: dict[KeyPath, Path],
    fallback: Path,
    references: dict[KeyPath, str],
) -> list[Problem | str]:
    problems: list[Problem | str] = []
    for loc, err in _errors(exc):
        # Drop the discriminator tag pydantic inserts for tagged unions ("shell", "file", ...).
        loc = tuple(
            p for i, p in enumerate(loc)
            if not (i == 2 and loc[0] == "provision" and isinstance(p, str)
                    and p in ("shell", "file", "reboot"))
        )
        where = _origin(loc, origins) or fallback
        message = _error_message(err, Template)
        if loc in references:
            message += f" (the value of ${{var.{references[loc]}}})"
        problems.append(_problem(where, loc, redact.redact(message)))
    return problems


# The members pydantic names in the location of a `str | int | float | bool` value.
_PLAIN_VALUE_TAGS = ("str", "int", "float", "bool")


def _errors(exc: ValidationError) -> Iterator[tuple[KeyPath, Any]]:
    """(location, error) of each pydantic error; a value that may be text, a number or a
    boolean gets one error, not one per type it could have been."""
    said: set[KeyPath] = set()
    for err in exc.errors():
        loc: KeyPath = tuple(err["loc"])
        if loc[-1:] and loc[-1] in _PLAIN_VALUE_TAGS:
            loc = loc[:-1]
            if loc in said:
                continue
            said.add(loc)
            err = {**err, "type": "plain_value", "msg": "expected text, a number or a boolean"}
        yield loc, err


def _error_message(err: Any, root: type[BaseModel]) -> str:
    """A pydantic error in our words: what was expected, and what was found."""
    message: str = err["msg"].removeprefix("Value error, ")
    if message.startswith("Input should be "):
        message = "expected " + message.removeprefix("Input should be ")
    kind = err["type"]
    if kind == "extra_forbidden":
        key = str(err["loc"][-1])
        return "unknown key" + _did_you_mean(key, _known_keys(root, tuple(err["loc"][:-1])))
    if kind == "missing":
        return "required key is missing"
    if kind == "union_tag_invalid":
        message = (
            "unknown provisioner type; expected 'shell', 'file' or 'reboot',"
            f" found {err.get('ctx', {}).get('tag')!r}"
        )
    elif kind == "union_tag_not_found":
        message = "a provisioner needs `type` ('shell', 'file' or 'reboot')"
    elif kind in ("model_type", "dict_type"):
        message = "expected a table"
    elif kind == "path_type":
        message = "expected a path (text)"
    elif kind == "too_short":
        least = err.get("ctx", {}).get("min_length", 1)
        message = f"expected at least {least} item{'s' if least != 1 else ''}"
    elif kind == "literal_error":
        expected = err.get("ctx", {}).get("expected", "")
        message = f"expected one of {expected}"
    # A check across a table's keys explains itself: "found a table" would add nothing.
    whole_table = kind == "value_error" and isinstance(err.get("input"), dict)
    if "found " not in message and not whole_table:
        found_text = _kind_of(err.get("input"))
        if found_text not in message:  # some validators quote the value already
            message += f", found {found_text}"
    return message


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The models an annotation can hold: `X`, `X | None`, `list[X]`, `Annotated[A | B, ...]`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def _known_keys(root: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The keys allowed in the table at `loc` (a pydantic location), for "did you mean"."""
    candidates = [root]
    for part in loc:
        if isinstance(part, int):
            continue
        holding = [m for m in candidates if part in m.model_fields]
        if holding:
            candidates = _models_in(holding[0].model_fields[part].annotation)
            continue
        tagged = [  # a tagged union's tag: the provisioner whose `type` is `part`
            m for m in candidates
            if "type" in m.model_fields
            and part in typing.get_args(m.model_fields["type"].annotation)
        ]
        if tagged:
            candidates = tagged
        # otherwise a key of a table of models (variables.NAME): same candidates
    return sorted({key for model in candidates for key in model.model_fields})


def _kind_of(value: Any) -> str:
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, (int, float)):
        return f"the number {value}"
    return repr(value)


def _origin(loc: tuple[Any, ...], origins: dict[tuple[Any, ...], Path]) -> Path | None:
    for end in range(len(loc), 0, -1):
        found = origins.get(tuple(loc[:end]))
        if found is not None:
            return found
    return None
