"""Answer files for unattended installs, the installer command line, and failure signs.

Each family's answer-file templates (Jinja2, in `distros/answers/`) are rendered
with the same variables, which a user's own `install.answer_file` also receives:

    user, ssh_public_key, host_key_private, host_key_public, root_password_hash,
    firmware, uefi, disk_size, disk_mib, hostname, locale, keyboard, keymap, timezone,
    packages, extra_packages, bootloader_args, install_kernel_args, distro, family, major, version,
    template, suse_keymap, suse_products, suse_addons, ubuntu_kernel_package,
    rhel_registration, setup_script

`setup_script` is a POSIX shell script that creates the build user, authorises
its key, grants it passwordless sudo and installs the pinned host key; the
kickstart, preseed and AutoYaST files run it inside the installed system.

Passwords reach an answer file only as SHA-512 crypt hashes (`hash_password`);
`root_password_hash = None` leaves root locked. Nothing here runs a command.
"""

from __future__ import annotations

import base64
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import jinja2
import markupsafe

import distros
from builder.errors import UsageError
from builder.quoting import shell_quote
from builder.requirements import arg_matches, kernel_args_for
from distros import Distro
from distros.suse import AUTOYAST_KEYMAPS

if TYPE_CHECKING:
    from builder.models import Template

log = logging.getLogger(__name__)

# The answer-file templates belong to the distro plugins (distros/answers/).
ANSWER_TEMPLATE_DIR = Path(distros.__file__).resolve().parent / "answers"
SERIAL_CONSOLE = "console=ttyS0,115200"

_SHA512_CRYPT_RE = re.compile(r"^\$6\$(rounds=\d+\$)?[./0-9A-Za-z]{1,16}\$[./0-9A-Za-z]{86}$")
_USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")


@dataclass(frozen=True)
class AnswerContext:
    """What the engine knows about one build that the answer files need.

    `ssh_public_key` is the build's ephemeral key (an authorized_keys line);
    `host_key_private`/`host_key_public` the ed25519 host key the engine pins
    (OpenSSH private key text and public key line); `root_password_hash` a
    SHA-512 crypt hash or None (root stays locked).
    """

    build_user: str
    ssh_public_key: str
    host_key_private: str
    host_key_public: str
    root_password_hash: str | None
    firmware: Literal["bios", "uefi"]
    disk_size: int
    hostname: str = "azbuild"

    def __post_init__(self) -> None:
        if not _USER_RE.match(self.build_user) or self.build_user == "root":
            raise UsageError(f"invalid build user name {self.build_user!r}")
        if self.root_password_hash is not None and not _SHA512_CRYPT_RE.match(
            self.root_password_hash
        ):
            raise UsageError("root_password_hash must be a SHA-512 crypt hash ($6$...)")
        if not self.host_key_public.startswith("ssh-ed25519 "):
            raise UsageError("the pinned host key must be an ed25519 public key line")
        if "PRIVATE KEY-----" not in self.host_key_private:
            raise UsageError("host_key_private must be an OpenSSH private key")
        for text in (self.ssh_public_key, self.host_key_public):
            if "\n" in text.strip():
                raise UsageError("public keys must be single lines")

    @classmethod
    def for_template(cls, template: Template, *, ssh_public_key: str, host_key_private: str,
                     host_key_public: str, root_password_hash: str | None) -> AnswerContext:
        """The context of `template`'s install with these keys and password hash: the
        build, `render`, validation and the stage cache's key derive the rest alike."""
        return cls(
            build_user=template.communicator.username,
            ssh_public_key=ssh_public_key,
            host_key_private=host_key_private,
            host_key_public=host_key_public,
            root_password_hash=root_password_hash,
            firmware=template.vm.firmware,
            disk_size=template.vm.disk_size,
            hostname=guest_hostname(template.name),
        )


def guest_hostname(name: str) -> str:
    """The guest's host name for the template `name`: a single DNS label (letters, digits,
    '-'), as d-i's netcfg requires (it asks again, waiting until install.timeout, for a
    name with '_'); '.' would make the rest a domain. `Rocky_9.4` becomes `Rocky-9-4`."""
    label = re.sub(r"[^A-Za-z0-9-]+", "-", name)[:63].strip("-")
    return label or "azbuild"


@dataclass(frozen=True)
class AnswerMedia:
    """How the rendered answer files reach the installer.

    kind "volume": write `files` to an ISO 9660 volume labelled `label`
    (builder.vm.volume.write_volume) and attach it as a CD-ROM.
    kind "initrd": append `files` to the installer initrd
    (builder.image.initrd.append_to_initrd); `label` is None.
    """

    kind: Literal["volume", "initrd"]
    label: str | None
    files: dict[str, bytes]


def hash_password(password: str) -> str:
    """A SHA-512 crypt hash of `password` (random salt), the only form answer files carry."""
    from passlib.hash import sha512_crypt

    # glibc's default of 5000 rounds gives the plain "$6$salt$hash" form that every
    # installer and crypt(3) since RHEL 6 accepts; passlib's own default adds "rounds=".
    return str(sha512_crypt.using(rounds=5000).hash(password))


def _b64(value: object) -> str:
    return base64.b64encode(str(value).encode()).decode()


def _cdata(value: object) -> markupsafe.Markup:
    # "]]>" cannot appear inside a CDATA section: split it across two sections.
    text = str(value).replace("]]>", "]]]]><![CDATA[>")
    return markupsafe.Markup(f"<![CDATA[{text}]]>")


def _environment(loader: jinja2.BaseLoader) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=loader,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=lambda name: name is not None and ".xml" in name,
    )
    env.filters["shquote"] = shell_quote
    env.filters["b64"] = _b64
    env.filters["cdata"] = _cdata
    return env


_BUILTIN = _environment(jinja2.FileSystemLoader(str(ANSWER_TEMPLATE_DIR)))


def install_packages(distro: Distro, template: Template) -> tuple[str, ...]:
    """The packages azbuild itself asks the installer for (before the template's own):
    SSH and sudo, and where the installer's repositories carry them, the agent, cloud-init
    in cloud-init mode, and on the RHEL family hyperv-daemons (Microsoft's RHEL guide)."""
    packages = [*distro.base_packages, *distro.prep_facts().recommended_packages]
    if distro.agent_at_install:
        packages.append(distro.agent_package)
        if template.azure.provisioning == "cloud-init":
            packages.append("cloud-init")
    return tuple(packages)


def answer_variables(distro: Distro, template: Template, ctx: AnswerContext) -> dict[str, Any]:
    """The variables every answer-file template (ours or the user's) is rendered with."""
    install = template.install
    base = install_packages(distro, template)
    extra = [p for p in install.packages if p not in base]
    variables: dict[str, Any] = {
        "user": ctx.build_user,
        "ssh_public_key": ctx.ssh_public_key.strip(),
        "host_key_private": ctx.host_key_private.strip() + "\n",
        "host_key_public": ctx.host_key_public.strip(),
        "root_password_hash": ctx.root_password_hash,
        "firmware": ctx.firmware,
        "uefi": ctx.firmware == "uefi",
        "disk_size": ctx.disk_size,
        "disk_mib": ctx.disk_size // (1024 * 1024),
        "hostname": ctx.hostname,
        "locale": install.locale,
        "keyboard": install.keyboard,
        # The layout in the installer's own names (the plugin's `keymaps`).
        "keymap": distro.keymaps.get(install.keyboard, install.keyboard),
        "timezone": install.timezone,
        "packages": [*base, *extra],
        "extra_packages": extra,
        "bootloader_args": " ".join(template.azure.kernel_args_add),
        # For the installed system's first boots: initramfs-tools sleeps the whole
        # rootdelay every boot, so it waits for the Azure preparation (R07) to add it.
        "install_kernel_args": " ".join(
            arg for arg in template.azure.kernel_args_add
            if not any(arg_matches(arg, p)
                       for p in kernel_args_for(distro.initrd_tool).always_removed)
        ),
        "distro": distro,
        "family": distro.family,
        "major": distro.major,
        "version": str(distro.version),
        "template": template,
        # AutoYaST's name of the layout, as every family's answer files got it before `keymap`.
        "suse_keymap": AUTOYAST_KEYMAPS.get(install.keyboard, install.keyboard),
        # SUSE: products to select and repositories to add (distros/suse.py).
        "suse_products": distro.install_products,
        "suse_addons": distro.install_addons,
        # Ubuntu: the kernel package, None for the installer's default (generic).
        "ubuntu_kernel_package": "linux-azure" if install.ubuntu_kernel == "azure" else None,
        # RHEL: subscription registration in %post, or None.
        "rhel_registration": (
            {"activation_key": install.rhel_activation_key,
             "organization": install.rhel_organization}
            if install.rhel_activation_key is not None else None
        ),
    }
    variables["setup_script"] = _BUILTIN.get_template("_guest-setup.sh.j2").render(variables)
    return variables


def render_answer_files(distro: Distro, template: Template, ctx: AnswerContext) -> dict[str, str]:
    """Render the distro's answer files, keyed by the installer's file names.

    With `install.answer_file` set, that Jinja2 file replaces the distro's main
    answer file (`ks.cfg`, `user-data`, `preseed.cfg` or `autoinst.xml`); Ubuntu's
    `meta-data` still comes from azbuild.
    """
    variables = answer_variables(distro, template, ctx)
    rendered: dict[str, str] = {}
    for index, name in enumerate(distro.answer_files):
        if index == 0 and template.install.answer_file is not None:
            rendered[name] = _render_user_file(Path(template.install.answer_file), variables)
        else:
            rendered[name] = _BUILTIN.get_template(f"{name}.j2").render(variables)
    return rendered


def _render_user_file(path: Path, variables: dict[str, Any]) -> str:
    if not path.is_file():
        raise UsageError(f"answer file not found: {path}", hint="check install.answer_file")
    env = _environment(jinja2.FileSystemLoader(str(path.parent)))
    try:
        return env.get_template(path.name).render(variables)
    except jinja2.TemplateSyntaxError as exc:
        raise UsageError(
            f"{path}:{exc.lineno}: answer-file template error: {exc.message}"
        ) from None
    except jinja2.UndefinedError as exc:
        known = ", ".join(sorted(variables))
        raise UsageError(
            f"{path}: answer-file template error: {exc.message}",
            hint=f"available variables: {known}",
        ) from None


def answer_file_syntax_error(path: Path) -> str | None:
    """The Jinja2 syntax error in a user's answer-file template, or None (checked at load time,
    before any VM; undefined variables only show when it is rendered)."""
    env = _environment(jinja2.FileSystemLoader(str(path.parent)))
    try:
        env.get_template(path.name)
    except jinja2.TemplateSyntaxError as exc:
        return f"answer-file template error at line {exc.lineno}: {exc.message}"
    return None


def installer_cmdline(distro: Distro, template: Template, iso_label: str | None = None) -> str:
    """Kernel arguments for an unattended installer boot of `distro`: the distro's own
    (`Distro.installer_args`; `iso_label` is the installer ISO's volume label, which
    Anaconda on RHEL 7+ needs for its stage 2 image), the serial console, then the
    template's `install.kernel_args`.
    """
    args = [*distro.installer_args(iso_label), SERIAL_CONSOLE]
    # The template's own arguments follow; one we already give is not repeated.
    ours = set(args)
    args.extend(arg for arg in template.install.kernel_args if arg not in ours)
    return " ".join(args)


def answer_media(distro: Distro, files: dict[str, str]) -> AnswerMedia:
    """How `files` (from render_answer_files) are handed to the installer."""
    data = {name: text.encode() for name, text in files.items()}
    if distro.answer_volume_label is None:
        return AnswerMedia(kind="initrd", label=None, files=data)
    return AnswerMedia(kind="volume", label=distro.answer_volume_label, files=data)


def installer_failure_patterns(distro: Distro) -> list[re.Pattern[str]]:
    """Regular expressions that, matched against a serial-console line, mean the unattended
    install has failed and is waiting for a human (so the build can stop at once)."""
    return [re.compile(p) for p in distro.failure_patterns]


def installer_failure_regex(distro: Distro) -> re.Pattern[str]:
    """All of `installer_failure_patterns` in one expression, to watch a console with."""
    parts = []
    for pattern in distro.failure_patterns:
        # A leading (?i) applies to the whole expression: scope it to its own pattern.
        if pattern.startswith("(?i)"):
            parts.append(f"(?i:{pattern[4:]})")
        else:
            parts.append(f"(?:{pattern})")
    return re.compile("|".join(parts))
