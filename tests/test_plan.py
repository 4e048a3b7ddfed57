"""builder.plan: one frozen plan from the template and its local facts, filled in with what
a build generates; what a build records of the files it fed is what `render` writes."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import pytest
from test_iso import make_iso

from builder.answers import hash_password
from builder.cli import main
from builder.context import BuildContext, BuildOptions
from builder.local_facts import LocalFacts, read_iso_facts, read_local_facts
from builder.plan import (
    CMDLINE_FILE,
    LABEL_AT_BUILD_TIME,
    PLACEHOLDERS,
    Generated,
    make_plan,
    plan_for,
    render_runtime,
)
from builder.render import rendered_files
from builder.template import load_template
from builder.vm.keys import KeyPair
from builder.vm.libvirt import Disk, domain_xml
from distros import resolve

REPO = Path(__file__).resolve().parents[1]
RHEL_INSTALLER = {"images/pxeboot/vmlinuz": b"k", "images/pxeboot/initrd.img": b"i"}


def _rhel(tmp_path: Path, iso: str, extra: str = "") -> Path:
    template = tmp_path / "alma.toml"
    template.write_text(f'name = "alma"\n[source]\niso = "{iso}"\nchecksum = "sha256:{"0" * 64}"'
                        f'\n[distro]\nname = "almalinux"\nversion = "9"\n{extra}')
    return template


def _generated(password: str | None = None) -> Generated:
    client, host = KeyPair.generate("client"), KeyPair.generate("host")
    return Generated(client_public=client.public_line, host_private=host.private_openssh,
                     host_public=host.public_line,
                     root_password_hash=hash_password(password) if password else None,
                     instance_id="azbuild-0123")


def test_the_plan_is_frozen_and_a_function_of_its_inputs() -> None:
    loaded = load_template(REPO / "examples" / "rocky.toml")
    facts = LocalFacts()
    first, second = make_plan(loaded, facts), make_plan(loaded, facts)
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.installer_cmdline = "x"  # type: ignore[misc]
    assert first.guest_files(PLACEHOLDERS) == second.guest_files(PLACEHOLDERS)
    runtime = render_runtime(first)
    disk = Disk(runtime.work_dir / "disk.raw", format="raw")
    assert domain_xml(first.install_domain(runtime, disk, Path("/s"))) == domain_xml(
        second.install_domain(runtime, disk, Path("/s")))


def test_the_build_fills_in_only_what_it_generates() -> None:
    """The kickstart carries the keys as they are: with the build's keys put back to the
    placeholders, the file the guest gets is the one render shows."""
    loaded = load_template(REPO / "examples" / "rocky.toml")
    plan = make_plan(loaded, LocalFacts())
    generated = _generated()
    fed = plan.guest_files(generated)
    shown = plan.guest_files(PLACEHOLDERS)
    assert fed.keys() == shown.keys()
    pairs = [(generated.client_public, PLACEHOLDERS.client_public),
             (generated.host_public or "", PLACEHOLDERS.host_public or ""),
             ((generated.host_private or "").strip(), PLACEHOLDERS.host_private or "")]
    for name, text in fed.items():
        for real, placeholder in pairs:
            text = text.replace(real, placeholder)
        assert text == shown[name], name


def test_the_stage2_label_comes_with_the_iso(tmp_path: Path) -> None:
    loaded = load_template(_rhel(tmp_path, "https://example.invalid/alma.iso"))
    plan = make_plan(loaded, LocalFacts())
    assert plan.label_pending and plan.installer_cmdline is not None
    assert "inst.stage2" not in plan.installer_cmdline
    assert plan.guest_files(PLACEHOLDERS)[CMDLINE_FILE].startswith(LABEL_AT_BUILD_TIME)
    iso = make_iso(tmp_path / "alma.iso", RHEL_INSTALLER, label="ALMA-9")
    fetched = plan.with_iso(read_iso_facts(iso, loaded.template))
    assert not fetched.label_pending
    assert "inst.stage2=hd:LABEL=ALMA-9 " in (fetched.installer_cmdline or "")
    assert fetched.facts.iso is not None
    assert fetched.facts.iso.installer.kernel == "images/pxeboot/vmlinuz"
    assert plan.installer_cmdline != fetched.installer_cmdline  # the first plan is unchanged


def test_local_facts_read_the_iso_the_image_and_the_scripts(tmp_path: Path) -> None:
    make_iso(tmp_path / "alma.iso", RHEL_INSTALLER, label="ALMA-9")
    script = tmp_path / "s.sh"
    script.write_bytes(b"#!/bin/sh\necho \xff\n")  # not UTF-8: kept byte for byte
    loaded = load_template(_rhel(tmp_path, "alma.iso",
                                 '[[provision]]\ntype = "shell"\nscript = "s.sh"\n'))
    facts, problems = read_local_facts(loaded.template)
    assert problems == []
    assert facts.iso is not None and facts.iso.label == "ALMA-9"
    plan = make_plan(loaded, facts)
    assert plan.provision_scripts[0].encode(errors="surrogateescape") == script.read_bytes()
    assert "inst.stage2=hd:LABEL=ALMA-9 " in (plan.installer_cmdline or "")


def test_what_a_build_records_is_what_render_writes(tmp_path: Path) -> None:
    """The manifest's guest_files digests are the digests of render's files."""
    template = tmp_path / "t.toml"
    template.write_text(f'extends = ["{REPO / "examples" / "cloud-image.toml"}"]\n'
                        '[[provision]]\ntype = "shell"\ninline = ["echo hi"]\n')
    loaded = load_template(template)
    ctx = BuildContext(loaded=loaded, options=BuildOptions(), distro=resolve("debian", "12"),
                       uri="qemu:///system", output_dir=tmp_path / "out",
                       build_id=loaded.build.id, plan=plan_for(loaded))
    ctx.client_key = KeyPair.generate("client")
    ctx.host_key = KeyPair.generate("host")
    fed = ctx.the_plan.guest_files(ctx.generated())
    ctx.record_fed(list(fed))
    out = tmp_path / "rendered"
    assert main(["render", str(template), "--out", str(out)]) == 0
    for name, digest in ctx.guest_files.items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest, name
    assert set(ctx.guest_files) == set(rendered_files(ctx.the_plan)) - {"domain-boot.xml"}
    last = f"provision-{len(loaded.template.provision)}.sh"
    assert "user-data" in ctx.guest_files and last in ctx.guest_files


def test_the_seed_step_writes_the_plans_seed_and_records_it(tmp_path: Path) -> None:
    """The seed volume holds the plan's user-data and meta-data with the build's keys and
    instance-id; the record is render's file byte for byte."""
    from contextlib import ExitStack

    from builder.image.iso import open_iso, read_file
    from builder.steps.boot import write_seed_volume

    loaded = load_template(REPO / "examples" / "cloud-image.toml")
    ctx = BuildContext(loaded=loaded, options=BuildOptions(), distro=resolve("debian", "12"),
                       uri="qemu:///system", output_dir=tmp_path / "out",
                       build_id=loaded.build.id, plan=plan_for(loaded),
                       work_dir=tmp_path, client_key=KeyPair.generate("client"),
                       host_key=KeyPair.generate("host"))
    with ExitStack() as stack:
        write_seed_volume(ctx, stack)
    assert ctx.seed is not None
    with open_iso(ctx.seed) as reader:
        user_data = read_file(reader, "user-data")
        meta_data = read_file(reader, "meta-data")
    expected = ctx.the_plan.seed_files(ctx.generated())
    assert user_data == expected["user-data"].encode()
    assert meta_data == expected["meta-data"].encode()
    assert ctx.client_key is not None and ctx.client_key.public_line in expected["user-data"]
    assert ctx.instance_id in expected["meta-data"]
    out = tmp_path / "rendered"
    assert main(["render", str(REPO / "examples" / "cloud-image.toml"), "--out", str(out)]) == 0
    assert list(ctx.guest_files) == ["user-data", "meta-data"]
    for name, digest in ctx.guest_files.items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest, name


def test_the_install_step_feeds_the_plans_answer_files_and_cmdline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Up to the installer's boot (no VM here): the preseed in the initrd and the kernel
    command line of the install domain are the plan's, with this build's keys, and the
    record is render's files byte for byte."""
    import gzip
    from contextlib import ExitStack
    from types import SimpleNamespace

    from builder.steps import fetch, install

    iso = make_iso(tmp_path / "d-i.iso", {"install.amd/vmlinuz": b"kernel",
                                          "install.amd/initrd.gz": b"initrd"}, label="DEBIAN")
    digest = hashlib.sha256(iso.read_bytes()).hexdigest()
    template = tmp_path / "t.toml"
    template.write_text(f'name = "d"\n[source]\niso = "{iso}"\nchecksum = "sha256:{digest}"\n'
                        '[distro]\nname = "debian"\nversion = "12"\n')
    loaded = load_template(template)
    work = tmp_path / "work"
    work.mkdir()
    ctx = BuildContext(loaded=loaded, options=BuildOptions(use_cache=False),
                       distro=resolve("debian", "12"), uri="qemu:///system",
                       output_dir=tmp_path / "out", build_id=loaded.build.id,
                       plan=plan_for(loaded), work_dir=work, accelerator="tcg",
                       client_key=KeyPair.generate("client"), host_key=KeyPair.generate("host"))
    started = []

    def start_domain(_ctx: object, _stack: object, spec: object) -> object:
        started.append(spec)
        return SimpleNamespace(stop_reason="the guest powered off")

    monkeypatch.setattr(install, "start_domain", start_domain)
    monkeypatch.setattr(install, "_wait_for_installer", lambda _ctx, _domain: None)
    with ExitStack() as stack:
        fetch.fetch(ctx, stack)
        install.install(ctx, stack)
    [spec] = started
    plan = ctx.the_plan
    assert spec.kernel_boot.cmdline == plan.installer_cmdline  # type: ignore[attr-defined]
    initrd = (work / "installer-initrd-answers").read_bytes()
    assert initrd.startswith(b"initrd")
    archive = gzip.decompress(initrd[initrd.index(b"\x1f\x8b"):])
    preseed = plan.answer_files(ctx.generated())["preseed.cfg"]
    assert preseed.encode() in archive
    assert list(ctx.guest_files) == ["preseed.cfg", "kernel-cmdline.txt"]
    out = tmp_path / "rendered"
    assert main(["render", str(template), "--out", str(out)]) == 0
    for name, sha in ctx.guest_files.items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == sha, name


def test_the_iso_is_read_once_while_it_is_unchanged(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import builder.image.iso

    opened: list[Path] = []
    real_open = builder.image.iso.open_iso

    def counting_open(iso: Path):  # type: ignore[no-untyped-def]
        opened.append(iso)
        return real_open(iso)

    monkeypatch.setattr(builder.image.iso, "open_iso", counting_open)
    iso = make_iso(tmp_path / "alma.iso", RHEL_INSTALLER, label="ALMA-9")
    loaded = load_template(_rhel(tmp_path, "alma.iso"))
    # validate's checks, the plan's facts and the install step all ask: one reading.
    assert main(["validate", str(tmp_path / "alma.toml")]) == 0
    facts = read_iso_facts(iso, loaded.template)
    assert (facts.label, len(opened)) == ("ALMA-9", 1)
    make_iso(tmp_path / "alma.iso", RHEL_INSTALLER, label="ALMA-9-5")  # another ISO there
    assert read_iso_facts(iso, loaded.template).label == "ALMA-9-5"
    assert len(opened) == 2
