"""`azbuild render`: everything a build would feed the guest, written without a VM.

Nothing is downloaded and no VM starts: installer paths come from the distro's
defaults (or the template's overrides), and the keys are placeholders, because a
build generates fresh ones. The files appear all at once: they are written into a
fresh directory beside `--out`, which is renamed into place at the end.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from pathlib import Path

from builder.answers import AnswerContext, hash_password, installer_cmdline, render_answer_files
from builder.azure_prep import prep_scripts
from builder.errors import BuildError, UsageError
from builder.fetch import is_url, local_iso
from builder.iso import volume_label
from builder.libvirt import (
    Disk,
    DomainMetadata,
    DomainSpec,
    KernelBoot,
    connection_uri,
    default_dac_label,
    domain_name,
    domain_xml,
)
from builder.models import ShellProvisioner
from builder.paths import cache_dir
from builder.provision import inline_script
from builder.redact import MASK, SHELL_MASK, XML_MASK, redact
from builder.seed import nocloud_meta_data, nocloud_user_data
from builder.steps.install import (
    ANSWER_VOLUME_FILE,
    INITRD_FILE,
    INITRD_WITH_ANSWERS_FILE,
    KERNEL_FILE,
    install_disks,
)
from builder.template import LoadedTemplate
from distros import resolve

# Placeholders for what every build generates afresh (shown, never used).
PLACEHOLDER_HOST_PRIVATE = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\n"
    "(the engine generates the guest's ed25519 host key at build time)\n"
    "-----END OPENSSH PRIVATE KEY-----"
)
PLACEHOLDER_HOST_PUBLIC = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI0000000000000000000000000000000000000000000"
    " azbuild-host-key"
)
PLACEHOLDER_CLIENT_PUBLIC = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI1111111111111111111111111111111111111111111"
    " azbuild-build-key"
)
PLACEHOLDER_PORT = 2222
LABEL_AT_BUILD_TIME = (
    "# inst.stage2=hd:LABEL=<the ISO's volume label> is added at build time: the ISO is"
    " not here to read it from\n"
)
# Files whose masked secrets stay in a string or a value where `<sensitive>` is valid.
_PLAIN_MASK_FILES = {"user-data", "meta-data"}
_PLAIN_MASK_SUFFIXES = (".yaml", ".yml", ".json", ".toml")

log = logging.getLogger(__name__)


def render(loaded: LoadedTemplate, out: Path, *, force: bool = False) -> list[Path]:
    """Write the rendered files into `out`, all at once; return their paths.

    `out` must be missing or empty, unless `force`, which replaces it whole.
    """
    _check_out(out, force=force)
    files = rendered_files(loaded)
    masked = {name: redact(text, mask_for(name)) for name, text in files.items()}
    _write_all(Path(os.path.abspath(out)), masked)  # `--out .` has a parent to work in
    return [out / name for name in files]


def mask_for(name: str) -> str:
    """The placeholder for a secret in the file `name` that keeps the file parsing."""
    if name.endswith(".xml"):
        return XML_MASK
    if name in _PLAIN_MASK_FILES or name.endswith(_PLAIN_MASK_SUFFIXES):
        return MASK
    return SHELL_MASK  # scripts, kickstart and preseed (shell in %post), the kernel cmdline


def rendered_files(loaded: LoadedTemplate) -> dict[str, str]:
    """Every file a build would feed the guest, by name, secrets still in place."""
    template = loaded.template
    distro = resolve(template.distro.name, template.distro.version)
    files: dict[str, str] = {}
    user = template.communicator.username
    uri = connection_uri(template.vm.connect)
    # The build id the template was loaded with: the one ${build.id} gave in the template.
    work = Path("/var/lib/azbuild/work") / f"{template.name}-{loaded.build.id}"

    if template.source.iso is not None:
        password = template.install.root_password
        answers = AnswerContext.for_template(
            template, ssh_public_key=PLACEHOLDER_CLIENT_PUBLIC,
            host_key_private=PLACEHOLDER_HOST_PRIVATE, host_key_public=PLACEHOLDER_HOST_PUBLIC,
            root_password_hash=hash_password(password) if password else None)
        files.update(render_answer_files(distro, template, answers))
        # As the install step: only an installer that takes it (Anaconda) is told the ISO's label.
        stage2 = distro.installer_takes_iso_label
        label = _iso_label(template.source.iso, template.source.checksum) if stage2 else None
        cmdline = installer_cmdline(distro, template, label)
        late_label = stage2 and distro.major >= 7 and label is None
        files["kernel-cmdline.txt"] = (LABEL_AT_BUILD_TIME if late_label else "") + cmdline + "\n"
        answer_volume = (work / ANSWER_VOLUME_FILE
                         if distro.answer_volume_label is not None else None)
        initrd = INITRD_FILE if answer_volume is not None else INITRD_WITH_ANSWERS_FILE
        iso = template.source.iso
        # Redacted before XML escaping, which would hide a secret from redact() later.
        iso_path = (Path(redact(iso)) if not is_url(iso)
                    else cache_dir() / "iso" / "ALGORITHM-DIGEST.iso")
        files["domain-install.xml"] = domain_xml(_spec(
            loaded, uri, work, list(install_disks(work / "disk.raw", iso_path, answer_volume)),
            KernelBoot(kernel=work / KERNEL_FILE, initrd=work / initrd, cmdline=cmdline),
        ))
    else:
        files["user-data"] = nocloud_user_data(
            username=user,
            authorized_key=PLACEHOLDER_CLIENT_PUBLIC,
            host_key_private=PLACEHOLDER_HOST_PRIVATE,
            host_key_public=PLACEHOLDER_HOST_PUBLIC,
        )
        files["meta-data"] = nocloud_meta_data("azbuild-RENDER", template.name[:63])

    boot_disks = [Disk(work / "disk.raw", format="raw", bus="virtio")]
    if template.source.disk_image is not None:
        boot_disks.append(Disk(work / "seed.iso", format="raw", bus="virtio", readonly=True))
    files["domain-boot.xml"] = domain_xml(_spec(loaded, uri, work, boot_disks, None))
    files.update(prep_scripts(distro, template.azure, firmware=template.vm.firmware,
                              build_user=user))
    files.update(provisioner_scripts(loaded))
    return files


def provisioner_scripts(loaded: LoadedTemplate) -> dict[str, str]:
    """Each shell provisioner as the script the build runs: `provision-<n>.sh`, numbered
    as the build's log numbers them (the inline commands as one script, or the script's
    own text)."""
    scripts: dict[str, str] = {}
    for number, provisioner in enumerate(loaded.template.provision, start=1):
        if not isinstance(provisioner, ShellProvisioner):
            continue
        name = f"provision-{number}.sh"
        if provisioner.script is None:
            scripts[name] = inline_script(provisioner.inline or [])
            continue
        try:
            scripts[name] = provisioner.script.read_text(errors="surrogateescape")
        except OSError as exc:
            raise UsageError(f"cannot read provision[{number - 1}].script "
                             f"{provisioner.script}: {exc.strerror}") from None
    return scripts


def _iso_label(iso: str, checksum: str | None) -> str | None:
    """The ISO's volume label, read as the install step reads it, when the ISO (or its
    cached download) is here; otherwise None, and the build reads it."""
    path = local_iso(iso, checksum)
    if path is None:
        log.info("the ISO is not here; the installer's stage 2 label is read at build time")
        return None
    try:
        return volume_label(path)
    except BuildError as exc:
        log.warning("%s; the installer's stage 2 label is read at build time", exc.message)
        return None


def _check_out(out: Path, *, force: bool) -> None:
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise UsageError(f"--out {out} exists and is not a directory",
                         hint="give --out a new or empty directory")
    try:
        full = out.is_dir() and any(out.iterdir())
    except OSError as exc:
        raise UsageError(f"cannot read --out {out}: {exc.strerror}",
                         hint="give --out a directory you can write to") from None
    if full and not force:
        raise UsageError(
            f"--out {out} is not empty",
            hint="give an empty or new directory, or add --force to replace it whole",
        )


def _write_all(out: Path, files: dict[str, str]) -> None:
    """Write `files` into a fresh directory beside `out`, then put it in `out`'s place.

    Nothing is left behind by a failure or an interrupt: the fresh directory is removed,
    and `out` (if it was there) is still there as it was."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fresh = Path(tempfile.mkdtemp(prefix=f".{out.name}.render-", dir=out.parent))
    except OSError as exc:
        raise UsageError(
            f"cannot create the output directory {out}: {exc.strerror}",
            hint="give --out a directory you can write to",
        ) from None
    old: Path | None = None
    try:
        for name, text in files.items():
            path = fresh / name
            path.write_text(text, errors="surrogateescape")
            if name.endswith(".sh"):
                path.chmod(0o755)
        if out.is_dir():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old)
        os.replace(fresh, out)
    except BaseException as exc:  # an interrupt too: `out` must be back as it was
        if old is not None and not out.exists():
            with contextlib.suppress(OSError):
                os.replace(old, out)
                old = None
        if isinstance(exc, OSError):
            raise UsageError(
                f"cannot write {out}: {exc.strerror}",
                hint="give --out a directory you can write to",
            ) from None
        raise
    finally:
        shutil.rmtree(fresh, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _spec(
    loaded: LoadedTemplate,
    uri: str,
    work: Path,
    disks: list[Disk],
    kernel_boot: KernelBoot | None,
) -> DomainSpec:
    vm = loaded.template.vm
    return DomainSpec(
        name=domain_name(loaded.template.name, loaded.build.id),
        vcpus=vm.cpus,
        memory=vm.memory,
        accelerator="tcg" if vm.accelerator == "tcg" else "kvm",
        serial_log=work / "serial.log",
        metadata=DomainMetadata(loaded.template.name, work, 0, None, "RENDER"),
        firmware=vm.firmware,
        disks=tuple(disks),
        kernel_boot=kernel_boot,
        on_reboot="destroy" if kernel_boot is not None else "restart",
        ssh_port=PLACEHOLDER_PORT,
        dac_label=default_dac_label(uri),
    )
