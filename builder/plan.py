"""The build plan: everything a build feeds its guest and libvirt, decided before any VM.

`make_plan(loaded, facts)` is one pure function of the loaded template and the facts of
its local inputs (builder/local_facts.py). `azbuild validate` makes the plan, `azbuild
render` writes it, `azbuild build` executes it: the steps take the answer files, the
installer command line, the seed, the preparation and provisioner scripts and the domain
specs from here instead of computing them.

What only a running build knows is a parameter of the plan, never computed twice:
- `Generated`: what each build makes afresh and hands to the guest (its SSH keys, the
  root password's salted hash, the seed's instance-id). `render` fills in
  `PLACEHOLDERS`; the build its own.
- `Runtime`: where and how its domains run (work directory, SSH port, accelerator, the
  ISO file, who owns the domain). `render` fills in `render_runtime`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from builder.answers import (
    AnswerContext,
    guest_hostname,
    installer_cmdline,
    render_answer_files,
)
from builder.azure_prep import prep_scripts
from builder.cache.keys import (
    KEY_CLIENT_PUBLIC,
    KEY_HOST_PRIVATE,
    KEY_HOST_PUBLIC,
    install_key,
    stable_password_hash,
)
from builder.image.fetch import is_url
from builder.local_facts import IsoFacts, LocalFacts, read_local_facts
from builder.models import FileProvisioner, ShellProvisioner, Template
from builder.paths import cache_dir
from builder.placeholders import (
    PLACEHOLDER_CLIENT_PUBLIC,
    PLACEHOLDER_HOST_PRIVATE,
    PLACEHOLDER_HOST_PUBLIC,
    PLACEHOLDER_INSTANCE_ID,
    PLACEHOLDER_PASSWORD_HASH,
    PLACEHOLDER_PORT,
)
from builder.provision import inline_script
from builder.redact import redact
from builder.template import LoadedTemplate
from builder.vm.libvirt import (
    Disk,
    DomainMetadata,
    DomainSpec,
    KernelBoot,
    connection_uri,
    default_dac_label,
    domain_name,
)
from builder.vm.seed import nocloud_meta_data, nocloud_user_data
from distros import Distro, resolve

# Names in the work directory (the install step writes them; the domain specs name them).
KERNEL_FILE = "installer-kernel"
INITRD_FILE = "installer-initrd"
INITRD_WITH_ANSWERS_FILE = "installer-initrd-answers"
ANSWER_VOLUME_FILE = "answers.iso"
DISK_FILE = "disk.raw"
SEED_FILE = "seed.iso"
# The file names `render` writes besides the guest's files.
CMDLINE_FILE = "kernel-cmdline.txt"
INSTALL_DOMAIN_FILE = "domain-install.xml"
BOOT_DOMAIN_FILE = "domain-boot.xml"

LABEL_AT_BUILD_TIME = (
    "# inst.stage2=hd:LABEL=<the ISO's volume label> is added at build time: the ISO is"
    " not here to read it from\n"
)


@dataclass(frozen=True)
class Generated:
    """What a build generates afresh and hands to the guest."""

    client_public: str  # the build's ephemeral key, an authorized_keys line
    host_private: str | None  # the guest's host key azbuild pins (None: host_key_file)
    host_public: str | None
    root_password_hash: str | None  # install.root_password, SHA-512 crypt, random salt
    instance_id: str  # the seed's cloud-init instance-id




@dataclass(frozen=True)
class Runtime:
    """Where and how a build's domains run."""

    work_dir: Path
    ssh_port: int
    accelerator: Literal["kvm", "tcg"]
    metadata: DomainMetadata
    dac_label: str | None
    iso: Path | None  # the ISO file the installer boots from


@dataclass(frozen=True)
class ProvisionFile:
    index: int  # in the template's `provision`
    source: Path
    destination: str


@dataclass(frozen=True)
class BuildPlan:
    """One build, decided: see the module's doc. Frozen; `with_iso` makes the plan anew
    with the facts of an ISO the build has just fetched."""

    loaded: LoadedTemplate
    facts: LocalFacts
    distro: Distro
    uri: str  # the template's libvirt URI (`build --connect` may run it elsewhere)
    domain_name: str
    # The installer's kernel command line (None for a disk-image build), and whether the
    # RHEL stage 2 label is still to come (the ISO is not here to read it from).
    installer_cmdline: str | None
    label_pending: bool
    prep_scripts: Mapping[str, str]
    # Each shell provisioner as the script the build runs, by its index in `provision`.
    provision_scripts: Mapping[int, str]
    provision_files: tuple[ProvisionFile, ...]
    outputs: tuple[str, ...]  # the artifacts' file names, in output.formats order

    @property
    def template(self) -> Template:
        return self.loaded.template

    def with_iso(self, iso: IsoFacts) -> BuildPlan:
        return make_plan(self.loaded, replace(self.facts, iso=iso))

    # --- what the guest gets ---------------------------------------------------------------

    def answer_files(self, generated: Generated) -> dict[str, str]:
        """The installer's answer files, by the installer's file names."""
        if generated.host_private is None or generated.host_public is None:
            raise AssertionError("an ISO install always gets the host key azbuild generates")
        context = AnswerContext.for_template(
            self.template, ssh_public_key=generated.client_public,
            host_key_private=generated.host_private, host_key_public=generated.host_public,
            root_password_hash=(generated.root_password_hash
                                if self.template.install.root_password else None))
        return render_answer_files(self.distro, self.template, context)

    def seed_files(self, generated: Generated) -> dict[str, str]:
        """The NoCloud seed's user-data and meta-data."""
        return {
            "user-data": nocloud_user_data(
                username=self.template.communicator.username,
                authorized_key=generated.client_public,
                host_key_private=generated.host_private,
                host_key_public=generated.host_public,
            ),
            "meta-data": nocloud_meta_data(generated.instance_id,
                                           guest_hostname(self.template.name)),
        }

    def provision_script_files(self) -> dict[str, str]:
        """`provision-<n>.sh`, numbered as the build's log numbers the provisioners."""
        return {f"provision-{index + 1}.sh": text
                for index, text in sorted(self.provision_scripts.items())}

    def guest_files(self, generated: Generated) -> dict[str, str]:
        """Every file the guest gets, by name: answer files and the installer command line
        (from an ISO) or the seed (from a disk image), then the Azure preparation scripts
        and the provisioner scripts."""
        files: dict[str, str] = {}
        if self.installer_cmdline is not None:
            files.update(self.answer_files(generated))
            note = LABEL_AT_BUILD_TIME if self.label_pending else ""
            files[CMDLINE_FILE] = note + self.installer_cmdline + "\n"
        else:
            files.update(self.seed_files(generated))
        files.update(self.prep_scripts)
        files.update(self.provision_script_files())
        return files

    # --- the stage cache -------------------------------------------------------------------

    def keyed_answer_files(self) -> dict[str, str]:
        """The answer files with stable stand-ins for what each build generates: the same
        template, the same files."""
        password = self.template.install.root_password
        return self.answer_files(Generated(
            client_public=KEY_CLIENT_PUBLIC, host_private=KEY_HOST_PRIVATE,
            host_public=KEY_HOST_PUBLIC,
            root_password_hash=stable_password_hash(password) if password else None,
            instance_id=""))

    def install_key(self, iso_digest: str) -> str:
        """The install stage's key: what this plan hands the installer (its answer files,
        rendered with stable stand-ins for the per-build keys and salt, and its command
        line), the ISO, and the disk the installer writes to."""
        assert self.installer_cmdline is not None
        template = self.template
        return install_key(
            iso_digest=iso_digest, answer_files=self.keyed_answer_files(),
            distro_name=template.distro.name, distro_version=template.distro.version,
            disk_size=template.vm.disk_size, firmware=template.vm.firmware,
            installer_args={"kernel": template.source.installer_kernel,
                            "initrd": template.source.installer_initrd,
                            "cmdline": self.installer_cmdline})

    # --- what libvirt gets -----------------------------------------------------------------

    def domain(self, runtime: Runtime, disks: tuple[Disk, ...], serial_log: Path,
               kernel_boot: KernelBoot | None = None,
               on_reboot: Literal["restart", "destroy"] = "restart") -> DomainSpec:
        """The build's domain (the installer's or the disk's boot) on these disks."""
        vm = self.template.vm
        return DomainSpec(
            name=self.domain_name, vcpus=vm.cpus, memory=vm.memory,
            accelerator=runtime.accelerator, serial_log=serial_log,
            metadata=runtime.metadata, firmware=vm.firmware, disks=disks,
            kernel_boot=kernel_boot, on_reboot=on_reboot,
            # Forwarded to the guest's sshd; installers that fetch packages use the NIC too.
            ssh_port=runtime.ssh_port, dac_label=runtime.dac_label,
        )

    def installer_boot(self, runtime: Runtime) -> KernelBoot:
        """Direct kernel boot of the installer copied into the work directory, the answer
        files appended to its initrd where the distro reads them from there."""
        assert self.installer_cmdline is not None
        initrd = INITRD_FILE if self.answer_volume else INITRD_WITH_ANSWERS_FILE
        return KernelBoot(kernel=runtime.work_dir / KERNEL_FILE,
                          initrd=runtime.work_dir / initrd, cmdline=self.installer_cmdline)

    @property
    def answer_volume(self) -> bool:
        """Whether the answer files reach the installer on a labelled CD-ROM."""
        return self.distro.answer_volume_label is not None

    def install_domain(self, runtime: Runtime, disk: Disk, serial_log: Path) -> DomainSpec:
        assert runtime.iso is not None
        volume = runtime.work_dir / ANSWER_VOLUME_FILE if self.answer_volume else None
        return self.domain(runtime, install_disks(disk, runtime.iso, volume), serial_log,
                           self.installer_boot(runtime), on_reboot="destroy")

    def boot_domain(self, runtime: Runtime, disk: Disk, seed: Path | None,
                    serial_log: Path) -> DomainSpec:
        disks = [disk]
        if seed is not None:
            disks.append(Disk(seed, format="raw", bus="virtio", readonly=True))
        return self.domain(runtime, tuple(disks), serial_log)


def install_disks(disk: Disk, iso: Path, answer_volume: Path | None) -> tuple[Disk, ...]:
    """The install phase's drives: the target first (/dev/vda), then the ISO and the
    answer volume as SATA CD-ROMs, which every installer kernel reads."""
    drives = [disk, Disk(iso, format="raw", bus="sata", device="cdrom", readonly=True)]
    if answer_volume is not None:
        drives.append(Disk(answer_volume, format="raw", bus="sata", device="cdrom",
                           readonly=True))
    return tuple(drives)


def make_plan(loaded: LoadedTemplate, facts: LocalFacts) -> BuildPlan:
    """The plan of `loaded` given `facts`: reads no file and starts nothing. Raises
    UsageError for settings the guest scripts cannot carry (validation refuses those
    templates first, naming the key)."""
    template = loaded.template
    distro = resolve(template.distro.name, template.distro.version)
    cmdline = None
    label_pending = False
    if template.source.iso is not None:
        # Only an installer that takes it (Anaconda) is told the ISO's label.
        label = (facts.iso.label if facts.iso is not None
                 and distro.installer_takes_iso_label else None)
        cmdline = installer_cmdline(distro, template, label)
        label_pending = (distro.installer_takes_iso_label and distro.major >= 7
                         and label is None)
    scripts: dict[int, str] = {}
    files: list[ProvisionFile] = []
    for index, provisioner in enumerate(template.provision):
        if isinstance(provisioner, ShellProvisioner):
            if provisioner.script is None:
                scripts[index] = inline_script(provisioner.inline or [])
            elif index in facts.scripts:
                scripts[index] = facts.scripts[index]
        elif isinstance(provisioner, FileProvisioner):
            files.append(ProvisionFile(index, provisioner.source, provisioner.destination))
    return BuildPlan(
        loaded=loaded, facts=facts, distro=distro,
        uri=connection_uri(template.vm.connect),
        domain_name=domain_name(template.name, loaded.build.id),
        installer_cmdline=cmdline, label_pending=label_pending,
        prep_scripts=prep_scripts(distro, template.azure, firmware=template.vm.firmware,
                                  build_user=template.communicator.username),
        provision_scripts=scripts, provision_files=tuple(files),
        outputs=tuple(f"{template.name}.{fmt}" for fmt in template.output.formats),
    )


def plan_for(loaded: LoadedTemplate) -> BuildPlan:
    """The plan of `loaded` with the facts of what is on this machine now. The problems
    reading them finds are the template checks' (check_local_inputs) to report."""
    facts, _problems = read_local_facts(loaded.template)
    return make_plan(loaded, facts)


PLACEHOLDERS = Generated(
    client_public=PLACEHOLDER_CLIENT_PUBLIC, host_private=PLACEHOLDER_HOST_PRIVATE,
    host_public=PLACEHOLDER_HOST_PUBLIC, root_password_hash=PLACEHOLDER_PASSWORD_HASH,
    instance_id=PLACEHOLDER_INSTANCE_ID,
)


def render_runtime(plan: BuildPlan) -> Runtime:
    """The runtime `render` shows: the work directory the build would have (its id is the
    one ${build.id} gave the template), a placeholder port, no owner process."""
    template = plan.template
    work = Path("/var/lib/azbuild/work") / f"{template.name}-{plan.loaded.build.id}"
    iso = None
    if template.source.iso is not None:
        # Masked before XML escaping, which would hide a secret from the file's masking.
        iso = (Path(redact(template.source.iso)) if not is_url(template.source.iso)
               else cache_dir() / "iso" / "ALGORITHM-DIGEST.iso")
    return Runtime(
        work_dir=work, ssh_port=PLACEHOLDER_PORT,
        accelerator="tcg" if template.vm.accelerator == "tcg" else "kvm",
        metadata=DomainMetadata(template.name, work, 0, None, "RENDER"),
        dac_label=default_dac_label(plan.uri), iso=iso,
    )
