"""Template loading: TOML layers (`extends`), variables, path resolution, validation.

The result is a frozen `Template` plus what the rest of the program needs to
know about where it came from. Every problem found is collected, so one run of
`azbuild validate` shows all of them.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from builder import redact
from builder.errors import TemplateError
from builder.models import Template, Variable

LAYER_PATH_ENV = "AZBUILD_TEMPLATE_PATH"
_REF_RE = re.compile(r"\$\$\{|\$\{([^}]*)\}")
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
        """sha256 of the resolved template without its secrets (for the manifest)."""
        canonical = json.dumps(self.redacted_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


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


def shipped_layer_names() -> list[str]:
    return sorted(p.stem for p in shipped_layers_dir().glob("*.toml"))


def load_template(
    path: Path | str,
    cli_vars: dict[str, str] | None = None,
    var_files: list[Path] | None = None,
) -> LoadedTemplate:
    """Load, layer, interpolate and validate a template; raise TemplateError with every problem."""
    path = Path(path)
    problems: list[str] = []
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        raise TemplateError([f"{path}: the template file {what}"])

    layers = _unique(_collect_layers(path.resolve(), [], problems))
    if problems:
        raise TemplateError(problems)

    declared, sensitive = _declared_variables(layers, problems)
    overrides, override_origins, given_bases = _variable_overrides(var_files or [], problems)
    for name, value in (cli_vars or {}).items():
        overrides[name] = value
        override_origins[name] = f"--var {name}"
        given_bases[name] = Path.cwd()
    for name in overrides:
        if name not in declared:
            known = ", ".join(sorted(declared)) or "none"
            problems.append(
                f"{override_origins[name]}: no variable {name!r} is declared in {path}"
                f" or its layers (declared: {known})"
            )
    values = _variable_values(declared, overrides, problems)
    for name in sensitive:
        if name in values:
            redact.register(values[name])

    merged: dict[str, Any] = {}
    origins: dict[tuple[Any, ...], Path] = {}
    for layer in layers:
        data = {k: v for k, v in layer.data.items() if k not in ("extends", "variables")}
        data = _anchor_given_paths(copy.deepcopy(data), values, given_bases)
        data = _interpolate(data, values, layer.path, (), problems)
        _resolve_paths(data, layer.path.parent)
        _merge(merged, data, origins, layer.path, ())
    if isinstance(merged.get("name"), str) and _NAME_PLACEHOLDER not in merged["name"]:
        merged = _replace_name(merged, merged["name"])
    else:
        merged = _drop_name_placeholder(merged)
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
        raise TemplateError(_describe_validation(exc, origins, path)) from None

    output = merged.get("output")
    if not (isinstance(output, dict) and "directory" in output):
        # The model's default directory names the build too.
        directory = template.output.directory.replace("${name}", template.name)
        template = template.model_copy(
            update={"output": template.output.model_copy(update={"directory": directory})}
        )

    loaded = LoadedTemplate(
        template=template,
        path=path.resolve(),
        layers=[layer.path for layer in layers],
        variables=values,
        sensitive_variables=sensitive,
    )
    return loaded


def check_local_inputs(loaded: LoadedTemplate, building: bool = False) -> list[str]:
    """Problems with local files the template names; the source image is a warning unless building.

    Returns warnings; raises TemplateError for missing inputs that must exist.
    """
    t = loaded.template
    problems: list[str] = []
    warnings: list[str] = []
    where = loaded.path
    for index, prov in enumerate(t.provision):
        for key in _PROVISIONER_PATH_KEYS:
            value = getattr(prov, key, None)
            if isinstance(value, Path) and not value.exists():
                problems.append(
                    f"{where}: provision[{index}].{key}: file not found: {value}"
                )
    for section, key in sorted(_PATH_KEYS - {("source", "disk_image")}):
        value = getattr(getattr(t, section), key)
        if isinstance(value, Path) and not value.exists():
            problems.append(f"{where}: {section}.{key}: file not found: {value}")
    source_problems: list[str] = []
    if t.source.disk_image is not None and not t.source.disk_image.exists():
        source_problems.append(f"{where}: source.disk_image: file not found: {t.source.disk_image}")
    if t.source.iso is not None and not _is_url(t.source.iso) and not Path(t.source.iso).exists():
        source_problems.append(f"{where}: source.iso: file not found: {t.source.iso}")
    checksum = t.source.checksum or ""
    if checksum.startswith("file:") and not _is_url(checksum[5:]) and not Path(
        checksum[5:]
    ).exists():
        source_problems.append(f"{where}: source.checksum: file not found: {checksum[5:]}")
    if building:
        problems.extend(source_problems)
    else:
        warnings.extend(p + " (needed at build time)" for p in source_problems)
    if problems:
        raise TemplateError(problems)
    loaded.warnings.extend(warnings)
    return warnings


# --- layers -------------------------------------------------------------------------------


def _read_toml(path: Path, problems: list[str]) -> dict[str, Any] | None:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        problems.append(f"{path}: cannot read: {exc.strerror}")
        return None
    if b"\x00" in raw:
        problems.append(f"{path}: not a TOML file (it contains binary data)")
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        problems.append(f"{path}: not a TOML file (invalid UTF-8 at byte {exc.start})")
        return None
    if not text.strip():
        problems.append(
            f"{path}: the file is empty; a template needs at least name, source and distro"
        )
        return None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        problems.append(_describe_syntax_error(path, text, str(exc)))
        return None


_TOML_POSITION_RE = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")


def _describe_syntax_error(path: Path, text: str, message: str) -> str:
    """'file: line L, column C: TOML syntax error: <expected>, found <what is there>'.

    The offending line itself is not quoted: it may hold a secret not yet registered.
    """
    match = _TOML_POSITION_RE.search(message)
    if match is None:  # "(at end of document)" or a message without a position
        head = message.replace(" (at end of document)", "")
        lines = text.splitlines() or [""]
        return (
            f"{path}: line {len(lines)}, column {len(lines[-1]) + 1}: TOML syntax error: "
            f"{_lower_first(head)}, found the end of the file"
        )
    line, column = int(match.group(1)), int(match.group(2))
    head = message[: match.start()]
    where = f"{path}: line {line}, column {column}: TOML syntax error: {_lower_first(head)}"
    if head.startswith("Cannot"):  # "cannot overwrite a value": the position says enough
        return where
    lines = text.split("\n")
    offset = sum(len(row) + 1 for row in lines[: line - 1]) + column - 1
    if offset >= len(text):
        found = "the end of the file"
    elif text[offset] in "\r\n":
        found = "the end of the line"
    else:
        found = repr(text[offset])
    return f"{where}, found {found}"


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]


def _find_layer(ref: str, declaring: Path) -> Path | None:
    if "/" in ref or ref.endswith(".toml"):
        candidate = Path(ref).expanduser()
        if not candidate.is_absolute():
            candidate = declaring.parent / candidate
        return candidate.resolve() if candidate.is_file() else None
    for directory in layer_search_path():
        candidate = directory / f"{ref}.toml"
        if candidate.is_file():
            return candidate.resolve()
    return None


def _collect_layers(path: Path, chain: list[Path], problems: list[str]) -> list[Layer]:
    """Depth-first: a file's layers come before the file itself."""
    if path in chain:
        cycle = " -> ".join(str(p) for p in [*chain[chain.index(path):], path])
        problems.append(f"{chain[-1]}: extends: cycle: {cycle}")
        return []
    data = _read_toml(path, problems)
    if data is None:
        return []
    extends = data.get("extends", [])
    if isinstance(extends, str):
        extends = [extends]
    if not isinstance(extends, list) or not all(isinstance(e, str) for e in extends):
        problems.append(f"{path}: extends: expected a list of layer names or paths")
        return [Layer(path, data)]
    layers: list[Layer] = []
    for ref in extends:
        found = _find_layer(ref, path)
        if found is None:
            via = " -> ".join(str(p) for p in [*chain, path])
            searched = ", ".join(str(d) for d in layer_search_path())
            hint = (
                f"relative to {path.parent}" if ("/" in ref or ref.endswith(".toml"))
                else f"searched {searched}"
            )
            problems.append(f"{path}: extends: layer {ref!r} not found ({hint}); chain: {via}")
            continue
        layers.extend(_collect_layers(found, [*chain, path], problems))
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


def _merge(
    into: dict[str, Any],
    data: dict[str, Any],
    origins: dict[tuple[Any, ...], Path],
    source: Path,
    prefix: tuple[Any, ...],
) -> None:
    """Tables merge key by key (later wins); provisioner lists concatenate."""
    for key, value in data.items():
        here = (*prefix, key)
        if prefix == () and key == "provision" and isinstance(value, list):
            existing = into.setdefault("provision", [])
            if isinstance(existing, list):
                for item in value:
                    origins[("provision", len(existing))] = source
                    existing.append(item)
                continue
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value, origins, source, here)
            continue
        into[key] = value
        origins[here] = source
        if isinstance(value, dict):
            _record_origins(value, origins, source, here)


def _record_origins(
    data: dict[str, Any],
    origins: dict[tuple[Any, ...], Path],
    source: Path,
    prefix: tuple[Any, ...],
) -> None:
    for key, value in data.items():
        origins[(*prefix, key)] = source
        if isinstance(value, dict):
            _record_origins(value, origins, source, (*prefix, key))


def _is_url(value: str) -> bool:
    return value.startswith(("http://", "https://"))


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
    if value and not _is_url(value):
        p = Path(value).expanduser()
        return str(p if p.is_absolute() else (base / p))
    return value


def _resolve_paths(data: dict[str, Any], base: Path) -> None:
    for table, key, is_checksum in _path_slots(data):
        table[key] = _absolute(table[key], base, is_checksum)


def _anchor_given_paths(
    data: dict[str, Any], values: dict[str, Any], bases: dict[str, Path]
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
    return data


# --- variables ------------------------------------------------------------------------------


def _declared_variables(
    layers: list[Layer], problems: list[str]
) -> tuple[dict[str, tuple[Variable, Path]], set[str]]:
    declared: dict[str, tuple[Variable, Path]] = {}
    for layer in layers:
        table = layer.data.get("variables", {})
        if not isinstance(table, dict):
            problems.append(f"{layer.path}: variables: expected a table")
            continue
        for name, spec in table.items():
            if isinstance(spec, dict):
                try:
                    var = Variable.model_validate(spec)
                except ValidationError as exc:
                    for err in exc.errors():
                        loc = ".".join(str(p) for p in err["loc"])
                        problems.append(
                            f"{layer.path}: variables.{name}.{loc}: {err['msg']}"
                        )
                    continue
            elif isinstance(spec, (str, int, float, bool)):
                var = Variable(default=spec)
            else:
                problems.append(
                    f"{layer.path}: variables.{name}: expected a value or a table "
                    "{ default, sensitive, description }"
                )
                continue
            previous = declared.get(name)
            if previous is not None and previous[0].sensitive and not var.sensitive:
                var = var.model_copy(update={"sensitive": True})
            declared[name] = (var, layer.path)
    sensitive = {name for name, (var, _) in declared.items() if var.sensitive}
    return declared, sensitive


def _variable_overrides(
    var_files: list[Path], problems: list[str]
) -> tuple[dict[str, Any], dict[str, str], dict[str, Path]]:
    """Values from --var-file files (later files win) and, per name, where each came from:
    a label for messages and the directory its relative paths are resolved against."""
    overrides: dict[str, Any] = {}
    origins: dict[str, str] = {}
    bases: dict[str, Path] = {}
    for var_file in var_files:
        if not var_file.is_file():
            what = "is a directory" if var_file.is_dir() else "not found"
            problems.append(f"--var-file {var_file}: file {what}")
            continue
        data = _read_toml(var_file, problems)
        if data is None:
            continue
        for name, value in data.items():
            if isinstance(value, (dict, list)):
                problems.append(
                    f"{var_file}: {name}: expected a plain value (text, number or boolean),"
                    f" found a {'table' if isinstance(value, dict) else 'list'}"
                )
            else:
                overrides[name] = value
                origins[name] = f"{var_file}: {name}"
                bases[name] = var_file.resolve().parent
    return overrides, origins, bases


def _variable_values(
    declared: dict[str, tuple[Variable, Path]],
    overrides: dict[str, Any],
    problems: list[str],
) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name, (var, where) in declared.items():
        if name in overrides:
            values[name] = overrides[name]
            continue
        if var.default is None:
            problems.append(
                f"{where}: variables.{name}: no value; give it a default or pass --var {name}=..."
            )
            continue
        value = var.default
        if isinstance(value, str):
            value = _interpolate(value, {}, where, ("variables", name), problems, env_only=True)
        values[name] = value
    return values


def _interpolate(
    data: Any,
    values: dict[str, Any],
    where: Path,
    key_path: tuple[Any, ...],
    problems: list[str],
    env_only: bool = False,
) -> Any:
    if isinstance(data, dict):
        return {
            k: _interpolate(v, values, where, (*key_path, k), problems, env_only)
            for k, v in data.items()
        }
    if isinstance(data, list):
        return [
            _interpolate(v, values, where, (*key_path, i), problems, env_only)
            for i, v in enumerate(data)
        ]
    if not isinstance(data, str) or "${" not in data:
        return data

    dotted = _dotted(key_path)

    def lookup(ref: str) -> Any:
        kind, _, name = ref.partition(".")
        if kind == "env" and name:
            if name not in os.environ:
                problems.append(
                    f"{where}: {dotted}: environment variable {name} is not set"
                )
                return ""
            return os.environ[name]
        if kind == "var" and name and not env_only:
            if name not in values:
                known = ", ".join(sorted(values)) or "none"
                problems.append(
                    f"{where}: {dotted}: undefined variable {name!r} (declared: {known})"
                )
                return ""
            return values[name]
        if ref == "name" and not env_only:
            return _NAME_PLACEHOLDER  # filled in once the merged name is known
        if env_only and (kind == "var" or ref == "name"):
            problems.append(
                f"{where}: {dotted}: a variable's default can use only ${{env.NAME}},"
                f" found ${{{ref}}}"
            )
            return ""
        problems.append(
            f"{where}: {dotted}: unknown reference ${{{ref}}}; use ${{var.NAME}}, "
            "${env.NAME} or ${name}"
        )
        return ""

    whole = re.fullmatch(r"\$\{([^}]*)\}", data)
    if whole:
        return lookup(whole.group(1).strip())

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$${":
            return "${"
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
    exc: ValidationError, origins: dict[tuple[Any, ...], Path], fallback: Path
) -> list[str]:
    problems = []
    for err in exc.errors():
        # Drop the discriminator tag pydantic inserts for tagged unions ("shell", "file", ...).
        loc = tuple(
            p for i, p in enumerate(err["loc"])
            if not (i == 2 and err["loc"][0] == "provision" and isinstance(p, str)
                    and p in ("shell", "file", "reboot"))
        )
        where = _origin(loc, origins) or fallback
        message = err["msg"].removeprefix("Value error, ")
        if message.startswith("Input should be "):
            message = "expected " + message.removeprefix("Input should be ")
        kind = err["type"]
        if kind == "extra_forbidden":
            message = "unknown key"
        elif kind == "missing":
            message = "required key is missing"
        elif kind == "union_tag_invalid":
            message = (
                "unknown provisioner type; expected 'shell', 'file' or 'reboot',"
                f" found {err.get('ctx', {}).get('tag')!r}"
            )
        elif kind == "union_tag_not_found":
            message = "a provisioner needs `type` ('shell', 'file' or 'reboot')"
        elif kind == "literal_error":
            expected = err.get("ctx", {}).get("expected", "")
            message = f"expected one of {expected}"
        found = err.get("input")
        detail = f"{where}: {_dotted(loc)}: {message}"
        if kind not in ("missing", "extra_forbidden") and "found " not in message:
            found_text = _kind_of(found)
            if found_text not in message:  # some validators quote the value already
                detail += f", found {found_text}"
        problems.append(redact.redact(detail))
    return problems


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
