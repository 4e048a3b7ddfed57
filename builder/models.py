"""The template's models: every default lives here, and the JSON Schema comes from here.

Models are frozen, reject unknown keys and are strict: no value is coerced between
booleans, numbers and strings (`port = true`, `sudo = "no"` are errors), so a typo is
an error at load time, never a surprise mid-build.
"""

from __future__ import annotations

import re
import zoneinfo
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

from builder.azure_prep import KARG_RE, MODULE_RE, PATH_RE, USER_RE
from builder.installer_names import KEYBOARD_LAYOUTS, LOCALES
from builder.publish.entries import PublishEntry
from builder.requirements import (
    DEFAULT_ARGS_ADD,
    DEFAULT_ARGS_REMOVE,
    HYPERV_MODULES,
    ID_RANGE,
    TITLES,
    arg_matches,
)
from builder.units import (
    DURATION_FORMAT,
    SIZE_FORMAT,
    Duration,
    Size,
    format_duration,
    format_size,
)
from distros import STABLE_NIC_NAMES, lookup

REQUIREMENT_IDS = tuple(TITLES)
_NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"
_MODE_RE = r"^0?[0-7]{3,4}$"
_RHSM_RE = r"^[A-Za-z0-9._:-]{1,255}$"
_CHECKSUM_RE = re.compile(r"^(sha256:[0-9a-fA-F]{64}|sha512:[0-9a-fA-F]{128}|file:.+)$")
_LOCALE_RE = re.compile(r"^(?P<base>[a-z]{2,3}_[A-Z]{2})(?:\.[A-Za-z0-9-]+)?(?P<mod>@[a-z]+)?$")
_MIB = 1024 * 1024


_ENV_NAME_RE = r"^[A-Za-z_][A-Za-z0-9_]*$"


def _items_matching(pattern: str) -> dict[str, Any]:
    """The schema of a list field whose items the field's validator checks with `pattern`,
    for editors (the validator remains what decides)."""
    return {"items": {"type": "string", "pattern": pattern}}


class Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True, strict=True)


def _path_field(description: str) -> Any:
    """An optional local path: TOML gives it as a string, which strict mode would refuse."""
    return Field(None, strict=False, description=description)


class Variable(Model):
    """A template variable; `sensitive` values never appear in any output."""

    default: str | int | float | bool | None = Field(
        None, description="the value unless --var or --var-file sets one; none: it must be set"
    )
    sensitive: bool = Field(
        False, description="mask the value as <sensitive> in every output"
    )
    description: str | None = Field(None, description="what the variable is for")


class Source(Model):
    """Where the build starts: an installer ISO or an existing disk image (exactly one)."""

    iso: str | None = Field(
        None, description="installer ISO: a local path (relative to the template) or http(s) URL"
    )
    checksum: str | None = Field(
        None, json_schema_extra={"pattern": _CHECKSUM_RE.pattern},
        description="'sha256:<hex>', 'sha512:<hex>', or 'file:<URL or path>' of a checksum file"
        " (GNU or BSD format); required with `iso`, optional with `disk_image` (verified"
        " before the image is copied)",
    )
    disk_image: Path | None = _path_field(
        "an existing disk image (qcow2, raw or VHD) to start from instead"
    )
    installer_kernel: str | None = Field(
        None, description="path of the installer kernel inside the ISO (default: the distro's)"
    )
    installer_initrd: str | None = Field(
        None, description="path of the installer initrd inside the ISO (default: the distro's)"
    )

    @field_validator("checksum")
    @classmethod
    def _checksum_syntax(cls, value: str | None) -> str | None:
        if value is not None and not _CHECKSUM_RE.match(value):
            raise ValueError(
                "expected 'sha256:<64 hex digits>', 'sha512:<128 hex digits>' or "
                f"'file:<URL or path>', found {value!r}"
            )
        return value

    @model_validator(mode="after")
    def _exactly_one(self) -> Source:
        if (self.iso is None) == (self.disk_image is None):
            raise ValueError("set exactly one of `iso` or `disk_image`")
        if self.iso is not None and self.checksum is None:
            raise ValueError("`checksum` is required with `iso` ('sha256:<hex>' or 'file:<URL>')")
        return self


class DistroRef(Model):
    """The distribution the image installs."""

    name: str = Field(description="distro name; `azbuild distros` lists them")
    version: str = Field(description="distro version, e.g. '9', 'stream9', '24.04', '12'")

    @field_validator("name")
    @classmethod
    def _known_name(cls, value: str) -> str:
        lookup(value)
        return value

    @field_validator("version", mode="before")
    @classmethod
    def _version_as_text(cls, value: object) -> object:
        if isinstance(value, float):
            # A TOML number drops trailing zeros (8.10 reads as 8.1): never guess.
            raise ValueError(
                'expected the version as a string (version = "8.10", not version = 8.10: a'
                f" TOML number drops trailing zeros), found the number {value}"
            )
        if isinstance(value, int) and not isinstance(value, bool):
            raise ValueError(
                f'expected the version as a string (version = "{value}"), found the number'
                f" {value}"
            )
        return value

    @field_validator("version")
    @classmethod
    def _supported_version(cls, value: str, info: ValidationInfo) -> str:
        name = info.data.get("name")  # absent when the name itself was rejected
        if isinstance(name, str):
            lookup(name).parse_version(value)
        return value


class VM(Model):
    """The build VM, and the size of the image's disk."""

    cpus: Annotated[int, Field(ge=1, le=256)] = Field(2, description="virtual CPUs of the build VM")
    memory: Size = Field(2 * 1024**3, description="guest memory")
    disk_size: Size = Field(
        30 * 1024**3, description="OS disk size (the VHD's virtual size); at least a local"
        " source.disk_image's virtual size",
    )
    accelerator: Literal["auto", "kvm", "tcg"] = Field(
        "auto", description="auto uses KVM only when a guest kernel really runs under it"
    )
    firmware: Literal["bios", "uefi"] = Field(
        "bios", description="bios = Azure Generation 1, uefi = Generation 2"
    )
    connect: str | None = Field(
        None,
        description="libvirt URI; default qemu:///system as root, qemu:///session otherwise",
    )

    @field_validator("memory")
    @classmethod
    def _memory_bounds(cls, value: int) -> int:
        if value < 256 * 1024**2:
            raise ValueError("memory must be at least 256MiB")
        return value

    @field_validator("disk_size")
    @classmethod
    def _disk_bounds(cls, value: int) -> int:
        if value < 20 * 1024**2:
            raise ValueError("disk_size must be at least 20MiB (Azure's minimum)")
        if value > 2040 * 1024**3:
            raise ValueError("disk_size must be at most 2040GiB (the VHD limit)")
        return value


class Install(Model):
    """The unattended install from an ISO; not used with `source.disk_image` (validate
    warns about each key set)."""

    timeout: Duration = Field(3600.0, description="bound on the whole install")
    answer_file: Path | None = _path_field("your own answer-file template instead of the distro's")
    kernel_args: list[str] = Field(
        default_factory=list, json_schema_extra=_items_matching(r"^\S+$"),
        description="extra installer kernel arguments, one word each",
    )
    packages: list[str] = Field(default_factory=list, description="extra packages to install")
    locale: str = Field(
        "en_US.UTF-8", description="the installed system's locale, one glibc supports"
        " (language_TERRITORY[.codeset][@modifier])",
    )
    keyboard: str = Field(
        "us", description="the installed system's keyboard layout, an XKB layout name"
    )
    timezone: str = Field(
        "UTC", description="the installed system's time zone, a name in the host's tz database"
    )
    root_password: str | None = Field(
        None, description="root password during the build (stored only as a SHA-512 hash)"
    )
    # Distro-specific choices; Template._distro_specific_install checks the distro.
    ubuntu_kernel: Literal["generic", "azure"] = Field(
        "generic", description="Ubuntu: the kernel installed, linux-generic or linux-azure"
    )
    rhel_activation_key: str | None = Field(
        None, json_schema_extra={"pattern": _RHSM_RE},
        description="RHEL: register in the kickstart's %post with this activation key (with"
        " rhel_organization); the deprovision unregisters; always sensitive",
    )
    rhel_organization: str | None = Field(
        None, json_schema_extra={"pattern": _RHSM_RE},
        description="RHEL: the organisation of rhel_activation_key; always sensitive",
    )

    @field_validator("kernel_args")
    @classmethod
    def _kernel_args_words(cls, value: list[str]) -> list[str]:
        for arg in value:
            if not arg or any(c.isspace() for c in arg):
                raise ValueError(
                    "each installer kernel argument is one word (the command line is joined"
                    f" with spaces), found {arg!r}"
                )
        return value

    @field_validator("locale")
    @classmethod
    def _known_locale(cls, value: str) -> str:
        match = _LOCALE_RE.match(value)
        if match is None or match["base"] + (match["mod"] or "") not in LOCALES:
            raise ValueError(
                "expected a glibc locale such as 'en_US.UTF-8' or 'de_DE.UTF-8'"
                f" (language_TERRITORY[.codeset][@modifier]), found {value!r}"
            )
        return value

    @field_validator("keyboard")
    @classmethod
    def _known_keyboard(cls, value: str) -> str:
        if value not in KEYBOARD_LAYOUTS:
            raise ValueError(
                f"expected an XKB keyboard layout such as 'us', 'gb' or 'de', found {value!r}"
            )
        return value

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        zones = _host_time_zones()
        if zones and value not in zones:
            raise ValueError(
                "expected a time zone of the tz database such as 'UTC' or 'Europe/Berlin',"
                f" found {value!r}"
            )
        return value

    @field_validator("rhel_activation_key", "rhel_organization")
    @classmethod
    def _rhsm_syntax(cls, value: str | None) -> str | None:
        if value is not None and not re.match(_RHSM_RE, value):
            raise ValueError("expected letters, digits, '.', '_', ':' or '-' only")
        return value

    @model_validator(mode="after")
    def _registration_pair(self) -> Install:
        if (self.rhel_activation_key is None) != (self.rhel_organization is None):
            raise ValueError("set both `rhel_activation_key` and `rhel_organization`, or neither")
        return self


@cache
def _host_time_zones() -> frozenset[str]:
    """The host's tz database names (empty when the host has none: nothing is refused)."""
    return frozenset(zoneinfo.available_timezones())


class Communicator(Model):
    """How azbuild logs in to the guest after the install."""

    type: Literal["ssh"] = Field("ssh", description="only SSH for now")
    username: str = Field(
        "azbuild", json_schema_extra={"pattern": USER_RE.pattern, "not": {"const": "root"}},
        description="the build's user in the guest, removed at the end: a login"
        " name (lower-case letters, digits, '_', '-'), not root",
    )
    password: str | None = Field(
        None, description="log in with this password instead of the build's ephemeral key"
    )
    private_key_file: Path | None = _path_field(
        "log in with this key instead of the build's ephemeral key"
    )
    host_key_file: Path | None = _path_field(
        "pin this public host key (for disk images that bring their own; not with `iso`)"
    )
    timeout: Duration = Field(1200.0, description="bound on the wait for SSH")
    port: Annotated[int, Field(ge=1, le=65535)] = Field(22, description="SSH port in the guest")

    @field_validator("username")
    @classmethod
    def _removable_login(cls, value: str) -> str:
        if value == "root" or not USER_RE.match(value):
            raise ValueError(
                "expected a login name the deprovision can remove: lower-case letters,"
                f" digits, '_' or '-', at most 32, not 'root', found {value!r}"
            )
        return value


def _provisioner_name() -> Any:
    return Field(None, description="names the provisioner in the log and the manifest; a "
                 "later file replaces it with one of the same name (in its place) or removes "
                 "it ([remove] provision = [NAME])")


class ShellProvisioner(Model):
    """Runs commands in the guest: `inline` or `script`, exactly one."""

    type: Literal["shell"] = Field(description="the kind of provisioner")
    name: str | None = _provisioner_name()
    inline: list[str] | None = Field(None, description="commands, run one after the other")
    script: Path | None = _path_field("a local script, uploaded and run")
    env: dict[str, str] = Field(
        default_factory=dict, description="environment variables",
        json_schema_extra={"propertyNames": {"pattern": _ENV_NAME_RE}})
    sudo: bool = Field(True, description="run as root through sudo")
    timeout: Duration = Field(7200.0, description="bound on this provisioner")
    cache: bool = Field(
        False, description="a stage-cache point: after this provisioner azbuild shuts the "
        "guest down, keeps the disk as a cache entry, and later builds with the same steps "
        "so far start from it (docs/cache.md)")

    @field_validator("env")
    @classmethod
    def _env_names(cls, value: dict[str, str]) -> dict[str, str]:
        bad = [name for name in value if not re.match(_ENV_NAME_RE, name)]
        if bad:
            raise ValueError(
                "expected environment variable names (letters, digits and '_', not starting"
                " with a digit), found " + ", ".join(repr(name) for name in bad)
            )
        return value

    @model_validator(mode="after")
    def _one_body(self) -> ShellProvisioner:
        if (self.inline is None) == (self.script is None):
            raise ValueError("a shell provisioner needs exactly one of `inline` or `script`")
        return self


class FileProvisioner(Model):
    """Uploads a local file to the guest."""

    type: Literal["file"] = Field(description="the kind of provisioner")
    name: str | None = _provisioner_name()
    source: Path = Field(
        strict=False, description="the local file, or a directory uploaded as a tree"
    )
    destination: str = Field(json_schema_extra={"pattern": "^/"},
                             description="absolute path in the guest (starts with '/')")
    mode: str | None = Field(
        None, json_schema_extra={"pattern": _MODE_RE}, description="octal file mode, e.g. '0644'"
    )
    owner: str | None = Field(None, description="'user' or 'user:group' in the guest")
    cache: bool = Field(
        False, description="a stage-cache point: after this provisioner azbuild shuts the "
        "guest down, keeps the disk as a cache entry, and later builds with the same steps "
        "so far start from it (docs/cache.md)")

    @field_validator("destination")
    @classmethod
    def _absolute_destination(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError(f"expected an absolute path in the guest, found {value!r}")
        return value

    @field_validator("mode")
    @classmethod
    def _octal_mode(cls, value: str | None) -> str | None:
        if value is not None and not re.match(_MODE_RE, value):
            raise ValueError(f"expected an octal file mode such as '0644', found {value!r}")
        return value


class RebootProvisioner(Model):
    """Reboots the guest and waits for SSH again."""

    type: Literal["reboot"] = Field(description="the kind of provisioner")
    name: str | None = _provisioner_name()
    timeout: Duration = Field(600.0, description="bound on the wait for SSH after the reboot")
    cache: bool = Field(
        False, description="a stage-cache point: after this provisioner azbuild shuts the "
        "guest down, keeps the disk as a cache entry, and later builds with the same steps "
        "so far start from it (docs/cache.md)")


Provisioner = Annotated[
    ShellProvisioner | FileProvisioner | RebootProvisioner, Field(discriminator="type")
]


class AgentSettings(Model):
    """`/etc/waagent.conf` resource-disk settings (R10, waagent mode)."""

    resource_disk_format: bool = Field(True, description="format and mount the resource disk")
    resource_disk_filesystem: Literal["ext4", "ext3", "xfs", "btrfs"] = Field(
        "ext4", description="its filesystem"
    )
    resource_disk_mount_point: str = Field(
        "/mnt/resource", json_schema_extra={"pattern": PATH_RE.pattern},
        description="where it is mounted: a plain absolute path",
    )
    enable_swap: bool = Field(True, description="swap on the resource disk")
    swap_size: Size = Field(2048 * 1024**2, description="size of that swap (whole MiB)")

    @field_validator("resource_disk_mount_point")
    @classmethod
    def _plain_mount_point(cls, value: str) -> str:
        if not PATH_RE.match(value):
            raise ValueError(
                "expected a plain absolute path (letters, digits, '_', '.', '-', '/'),"
                f" found {value!r}"
            )
        return value

    @field_validator("swap_size")
    @classmethod
    def _whole_mib(cls, value: int) -> int:
        if value % _MIB:
            raise ValueError(
                f"waagent takes the swap size in whole MiB, found {value} bytes"
                f" ({value / _MIB:.2f}MiB)"
            )
        return value


class Azure(Model):
    """How the guest is prepared for Azure; the requirement ids are those of `azbuild check`."""

    provisioning: Literal["waagent", "cloud-init"] = Field(
        "waagent", description="who provisions on first boot (R10); RHEL 6 has waagent only"
    )
    kernel_args_add: list[str] = Field(
        default_factory=lambda: [*DEFAULT_ARGS_ADD, STABLE_NIC_NAMES],
        json_schema_extra=_items_matching(KARG_RE.pattern),
        description="kernel arguments added to the bootloader defaults (R07); plain words:"
        " letters, digits and _ . , : = + / @ -",
    )
    kernel_args_remove: list[str] = Field(
        default_factory=lambda: list(DEFAULT_ARGS_REMOVE),
        json_schema_extra=_items_matching(KARG_RE.pattern),
        description="kernel arguments removed from the bootloader defaults (R07); plain"
        " words as for kernel_args_add",
    )
    hyperv_modules: list[str] = Field(
        default_factory=lambda: list(HYPERV_MODULES),
        json_schema_extra=_items_matching(MODULE_RE.pattern),
        description="modules forced into every initrd (R05)",
    )
    agent: AgentSettings = Field(
        default_factory=AgentSettings, description="the Azure Linux agent's settings"
    )
    skip: dict[str, str] = Field(
        default_factory=dict,
        json_schema_extra={"propertyNames": {"enum": list(REQUIREMENT_IDS)},
                           "additionalProperties": {"type": "string", "pattern": r"\S"}},
        description="requirements to leave alone, each with the reason: { R10 = \"...\" }",
    )

    @field_validator("kernel_args_add", "kernel_args_remove")
    @classmethod
    def _quotable_kernel_args(cls, value: list[str]) -> list[str]:
        bad = [arg for arg in value if not KARG_RE.match(arg)]
        if bad:
            raise ValueError(
                "kernel arguments go into the bootloader configuration as plain words: letters,"
                " digits and _ . , : = + / @ - only (no quotes or spaces), found "
                + ", ".join(repr(arg) for arg in bad)
            )
        return value

    @model_validator(mode="after")
    def _not_added_and_removed(self) -> Azure:
        # The preparation removes, then adds: the argument would be on the command line
        # while the check (R07) wants it gone, and the build would fail after its install.
        both = [arg for arg in self.kernel_args_add
                if any(arg_matches(arg, pattern) for pattern in self.kernel_args_remove)]
        if both:
            raise ValueError(
                f"kernel_args_add and kernel_args_remove both hold "
                f"{', '.join(repr(arg) for arg in both)}: the check (R07) would find it "
                "added where it must be gone; drop it from one list (kernel_args_remove "
                f"replaces the defaults {' '.join(DEFAULT_ARGS_REMOVE)})"
            )
        return self

    @field_validator("hyperv_modules")
    @classmethod
    def _module_names(cls, value: list[str]) -> list[str]:
        bad = [module for module in value if not MODULE_RE.match(module)]
        if bad:
            raise ValueError(
                "expected kernel module names (letters, digits, '_' and '-'), found "
                + ", ".join(repr(module) for module in bad)
            )
        return value

    @field_validator("skip")
    @classmethod
    def _known_ids(cls, value: dict[str, str]) -> dict[str, str]:
        problems = []
        for key, reason in value.items():
            if key not in REQUIREMENT_IDS:
                problems.append(f"unknown requirement {key!r}; expected one of {ID_RANGE}")
            elif not reason.strip():
                problems.append(f"skipping {key} needs a reason, found an empty one")
        if problems:
            raise ValueError("; ".join(problems))
        return value


class Shutdown(Model):
    """The guest's power-off at the end of the build."""

    timeout: Duration = Field(300.0, description="bound on the wait for the guest to power off")


OutputFormat = Literal["vhd", "raw"]


def _default_formats() -> list[OutputFormat]:
    return ["vhd"]


class Output(Model):
    """The artifacts."""

    directory: str = Field("output/${name}", description="where the artifacts go")
    formats: list[OutputFormat] = Field(
        default_factory=_default_formats, description="'vhd' (fixed VHD) and/or 'raw'", min_length=1
    )


class Test(Model):
    """What the build proves about its image besides the offline check."""

    simulate: bool = Field(
        True,
        description="boot the finished image as Azure provisions it (docs/simulate.md): "
        "the agent's Ready report, then SSH with the ovf-env's user on the first boot; "
        "the image is ready only if this passes too",
    )
    ready_timeout: Duration = Field(
        900.0, description="bound on the simulation's wait for the agent's Ready report")


class Template(Model):
    """A complete, resolved azbuild template."""

    name: str = Field(
        json_schema_extra={"pattern": _NAME_RE},
        description="names the build, its domain and its output",
    )
    description: str | None = Field(None, description="free text, shown in the manifest")
    extends: list[str] = Field(
        default_factory=list,
        description="layers under this file: shipped names (gen2, cloud-init) or relative paths",
    )
    variables: dict[str, Variable | str | int | float | bool] = Field(
        default_factory=dict, description="template variables: plain values or tables"
    )
    source: Source
    distro: DistroRef
    vm: VM = Field(default_factory=VM)
    install: Install = Field(default_factory=Install)
    communicator: Communicator = Field(default_factory=Communicator)
    provision: list[Provisioner] = Field(default_factory=list)
    azure: Azure = Field(default_factory=Azure)
    shutdown: Shutdown = Field(default_factory=Shutdown)
    output: Output = Field(default_factory=Output)
    test: Test = Field(default_factory=Test)
    publish: list[PublishEntry] = Field(
        default_factory=list,
        description="where the VHD goes after the check step (docs/publish.md)",
    )

    @model_validator(mode="after")
    def _publish_needs_vhd(self) -> Template:
        if self.publish and "vhd" not in self.output.formats:
            raise ValueError('[[publish]] uploads the VHD: add "vhd" to output.formats')
        return self

    @field_validator("name")
    @classmethod
    def _name_syntax(cls, value: str) -> str:
        if not re.match(_NAME_RE, value):
            raise ValueError(
                "expected 1 to 63 letters, digits, '.', '_' or '-', starting with a letter"
                f" or digit, found {value!r}"
            )
        return value

    @field_validator("install")
    @classmethod
    def _distro_specific_install(cls, value: Install, info: ValidationInfo) -> Install:
        ref = info.data.get("distro")  # absent when the distro itself was rejected
        if not isinstance(ref, DistroRef):
            return value
        distro = lookup(ref.name)
        if value.ubuntu_kernel != "generic" and not distro.azure_kernel_choice:
            raise ValueError("ubuntu_kernel applies to Ubuntu only")
        if value.rhel_activation_key is not None and not distro.registers_subscription:
            raise ValueError("rhel_activation_key and rhel_organization apply to RHEL only")
        return value


class _SchemaGenerator(GenerateJsonSchema):
    """Shows every default, including those made by factories (lists, tables), with sizes and
    durations as a template author writes them ('30GiB', '1h')."""

    def get_default_value(self, schema: core_schema.WithDefaultSchema) -> Any:
        factory = schema.get("default_factory")
        if factory is not None and not schema.get("default_factory_takes_data"):
            return factory()  # type: ignore[call-arg]
        return super().get_default_value(schema)

    def default_schema(self, schema: core_schema.WithDefaultSchema) -> JsonSchemaValue:
        json_schema = super().default_schema(schema)
        default = json_schema.get("default")
        kind = json_schema.get("format")
        if isinstance(default, (int, float)) and not isinstance(default, bool):
            if kind == SIZE_FORMAT:
                json_schema["default"] = format_size(int(default))
            elif kind == DURATION_FORMAT:
                json_schema["default"] = format_duration(float(default))
        return json_schema


def template_json_schema() -> dict[str, Any]:
    """The JSON Schema (Draft 2020-12) of a template, defaults included."""
    schema = Template.model_json_schema(schema_generator=_SchemaGenerator)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "azbuild template",
        **{k: v for k, v in schema.items() if k != "title"},
    }
