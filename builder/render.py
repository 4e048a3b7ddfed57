"""`azbuild render`: everything a build would feed the guest, written without a VM.

Nothing is downloaded and no VM starts: installer paths come from the distro's
defaults (or the template's overrides), and the keys are placeholders, because a
build generates fresh ones.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from builder.errors import UsageError
from builder.fetch import is_url
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
from builder.paths import cache_dir
from builder.redact import redact
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
from distros.answers import AnswerContext, hash_password, installer_cmdline, render_answer_files
from distros.azure_prep import prep_scripts

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


def render(loaded: LoadedTemplate, out: Path) -> list[Path]:
    """Write the rendered files into `out` (created if needed); return their paths."""
    template = loaded.template
    distro = resolve(template.distro.name, template.distro.version)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(
            f"cannot create the output directory {out}: {exc.strerror}",
            hint="give --out a directory you can write to",
        ) from None
    files: dict[str, str] = {}
    user = template.communicator.username
    uri = connection_uri(template.vm.connect)
    # The build id the template was loaded with: the one ${build.id} gave in the template.
    work = Path("/var/lib/azbuild/work") / f"{template.name}-{loaded.build.id}"

    if template.source.iso is not None:
        password = template.install.root_password
        answers = AnswerContext(
            build_user=user,
            ssh_public_key=PLACEHOLDER_CLIENT_PUBLIC,
            host_key_private=PLACEHOLDER_HOST_PRIVATE,
            host_key_public=PLACEHOLDER_HOST_PUBLIC,
            root_password_hash=hash_password(password) if password else None,
            firmware=template.vm.firmware,
            disk_size=template.vm.disk_size,
            hostname=template.name[:63],
        )
        files.update(render_answer_files(distro, template, answers))
        cmdline = installer_cmdline(distro, template)
        files["kernel-cmdline.txt"] = cmdline + "\n"
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

    written = []
    for name, text in files.items():
        path = out / name
        tmp = path.with_name(f".{name}.tmp")
        try:
            tmp.write_text(redact(text))
            if name.endswith(".sh"):
                tmp.chmod(0o755)
            os.replace(tmp, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise UsageError(
                f"cannot write {path}: {exc.strerror}",
                hint="give --out a directory you can write to",
            ) from None
        written.append(path)
    return written


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
