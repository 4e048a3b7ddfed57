"""The stage cache with real files and the real qemu-img: keys (what changes them and what
must not), atomic stores, integrity checks, locking across processes, list and prune,
and a two-level qcow2 chain read back as sparse raw."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from builder.answers import AnswerContext, hash_password, render_answer_files
from builder.cache.chain import chain_keys, longest_cached_prefix
from builder.cache.keys import (
    install_key,
    provisioner_key,
    source_key,
    stable_password_hash,
)
from builder.cache.prune import Listed, list_entries, plan_prune, prune
from builder.cache.store import STAGE_FORMAT, StageCache, StoredKeys, stage_key
from builder.cli import main
from builder.local_facts import LocalFacts
from builder.models import FileProvisioner, ShellProvisioner, Template
from builder.plan import BuildPlan, make_plan
from builder.template import LoadedTemplate
from builder.vm.keys import KeyPair
from builder.vm.qemu_img import (
    chain_to_raw_argv,
    create_overlay_argv,
    create_qcow2_argv,
    raw_to_qcow2_argv,
)
from distros import resolve

MiB = 1024 * 1024
REPO = Path(__file__).resolve().parent.parent


# --- keys ------------------------------------------------------------------------------


def _template(**changes: Any) -> Template:
    data: dict[str, Any] = {
        "name": "cache-test",
        "source": {"iso": "/srv/x.iso", "checksum": "sha256:" + "0" * 64},
        "distro": {"name": "debian", "version": "12"},
        "vm": {"disk_size": "4GiB"},
        "install": {"packages": ["sudo"], "root_password": "Secret-pa55!"},
    }
    for section, values in changes.items():
        data[section] = {**data.get(section, {}), **values}
    return Template.model_validate(data)


def _plan(template: Template) -> BuildPlan:
    return make_plan(LoadedTemplate(template, Path("cache-test.toml"), [], {}), LocalFacts())


def _install_key(template: Template, iso: str = "sha256:" + "1" * 64) -> str:
    """The key as the install step computes it: from the build's plan."""
    return _plan(template).install_key(iso)


def test_install_key_is_stable_across_builds() -> None:
    # Two builds generate different SSH keys and password salts: neither reaches the key.
    assert _install_key(_template()) == _install_key(_template())
    assert len(_install_key(_template())) == 64


def test_answer_files_for_the_key_hold_no_generated_secret() -> None:
    # The real answer files differ from build to build (keys, salt); the keyed ones do not.
    distro = resolve("debian", "12")
    template = _template()

    def real() -> dict[str, str]:
        client, host = KeyPair.generate("c"), KeyPair.generate("h")
        return render_answer_files(distro, template, AnswerContext(
            build_user="azbuild", ssh_public_key=client.public_line,
            host_key_private=host.private_openssh, host_key_public=host.public_line,
            root_password_hash=hash_password("Secret-pa55!"), firmware="bios",
            disk_size=template.vm.disk_size, hostname=template.name))

    assert real() != real()
    assert _plan(template).keyed_answer_files() == _plan(template).keyed_answer_files()
    assert stable_password_hash("Secret-pa55!") == stable_password_hash("Secret-pa55!")
    assert stable_password_hash("Secret-pa55!") != stable_password_hash("Other-pa55!")


@pytest.mark.parametrize("changes", [
    {"install": {"packages": ["sudo", "vim"]}},
    {"install": {"root_password": "Another-pa55!"}},
    {"install": {"timezone": "Europe/Paris"}},
    {"vm": {"disk_size": "5GiB"}},
    {"vm": {"firmware": "uefi"}},
    {"distro": {"version": "11"}},
    {"communicator": {"username": "builder"}},
    # What reaches the installer outside its answer files: its command line (this one
    # once reused an install made with other arguments) and the kernel it boots.
    {"install": {"kernel_args": ["ipv6.disable=1"]}},
    {"source": {"installer_kernel": "/install.amd/gtk/vmlinuz"}},
    {"source": {"installer_initrd": "/install.amd/gtk/initrd.gz"}},
])
def test_install_key_changes_with_what_the_install_depends_on(changes: dict[str, Any]) -> None:
    assert _install_key(_template(**changes)) != _install_key(_template())


def test_install_key_does_not_change_with_what_comes_after_the_install() -> None:
    later = {"vm": {"memory": "2GiB", "cpus": 4}, "install": {"timeout": "2h"}}
    assert _install_key(_template(**later)) == _install_key(_template())
    provisioned = Template.model_validate({
        **_template().model_dump(mode="json", exclude_none=True),
        "provision": [{"type": "shell", "inline": ["true"]}],
    })
    assert _install_key(provisioned) == _install_key(_template())


def test_install_key_changes_with_the_iso_and_the_format_version() -> None:
    template = _template()
    assert _install_key(template, "sha256:" + "2" * 64) != _install_key(template)
    answers = _plan(template).keyed_answer_files()
    # The format version is one of the hashed parts: what a bump changes.
    assert f"format={STAGE_FORMAT}" != f"format={STAGE_FORMAT + 1}"
    assert install_key(iso_digest="sha256:x", answer_files=answers, distro_name="debian",
                       distro_version="12", disk_size=1, firmware="bios") != install_key(
        iso_digest="sha256:x", answer_files=answers, distro_name="debian",
        distro_version="12", disk_size=1, firmware="bios",
        installer_args={"kernel": "/install/vmlinuz"})


def test_stage_key_parts_do_not_run_together() -> None:
    assert stage_key("ab", "c") != stage_key("a", "bc")


def test_source_key() -> None:
    assert source_key(source_digest="sha256:a", disk_size=1) != source_key(
        source_digest="sha256:a", disk_size=2)
    assert source_key(source_digest="sha256:a", disk_size=1) != source_key(
        source_digest="sha256:b", disk_size=1)


def test_provisioner_key_follows_definition_and_file_contents(tmp_path: Path) -> None:
    script = tmp_path / "setup.sh"
    script.write_text("apt-get install -y tree\n")
    shell = ShellProvisioner.model_validate({"type": "shell", "script": str(script)})
    first = provisioner_key("0" * 64, shell)
    assert provisioner_key("0" * 64, shell) == first
    assert provisioner_key("1" * 64, shell) != first  # another parent
    script.write_text("apt-get install -y tree jq\n")
    assert provisioner_key("0" * 64, shell) != first  # the script's bytes
    inline = ShellProvisioner.model_validate({"type": "shell", "inline": ["true"]})
    assert provisioner_key("0" * 64, inline) != provisioner_key(
        "0" * 64, ShellProvisioner.model_validate({"type": "shell", "inline": ["false"]}))
    assert provisioner_key("0" * 64, inline) != provisioner_key(
        "0" * 64, ShellProvisioner.model_validate(
            {"type": "shell", "inline": ["true"], "env": {"A": "1"}}))


def test_provisioner_key_reads_every_file_of_an_uploaded_tree(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "a.conf").write_text("a=1\n")
    upload = FileProvisioner.model_validate(
        {"type": "file", "source": str(tree), "destination": "/etc/tree"})
    before = provisioner_key("0" * 64, upload)
    (tree / "sub" / "a.conf").write_text("a=2\n")
    assert provisioner_key("0" * 64, upload) != before


# --- entries ---------------------------------------------------------------------------


def _qcow2(path: Path, size: int = 8 * MiB, pattern: int | None = 0x5A) -> Path:
    subprocess.run(create_qcow2_argv(path, size), check=True)
    if pattern is not None:
        _write(path, pattern, 0, 64 * 1024)
    return path


def _write(image: Path, pattern: int, offset: int, length: int) -> None:
    subprocess.run(["qemu-io", "-f", "qcow2", "-c",
                    f"write -P {pattern:#x} {offset} {length}", str(image)],
                   check=True, capture_output=True)


def _store(cache: StageCache, key: str, parent: str | None = None,
           keys: StoredKeys | None = None, size: int = 8 * MiB) -> Path:
    tmp = cache.temp_path(key)
    if parent is None:
        _qcow2(tmp, size)
    else:
        subprocess.run(create_overlay_argv(cache.entry_path(parent), tmp), check=True)
        _write(tmp, 0x33, MiB, 4096)
    cache.store(key, tmp, parent=parent, kind="install" if parent is None else "provision",
                description=f"stage {key[:4]}", template="t", seconds=12.5, keys=keys)
    return cache.entry_path(key)


def test_store_is_atomic_read_only_and_verified(tmp_path: Path) -> None:
    cache = StageCache(tmp_path / "stages")
    key = "a" * 64
    assert cache.lookup(key) is None
    entry_path = _store(cache, key)
    assert stat.S_IMODE(entry_path.stat().st_mode) == 0o444
    assert stat.S_IMODE(cache.root.stat().st_mode) == 0o700
    assert not list(cache.root.glob(".*.tmp"))  # no temp file left behind
    sidecar = json.loads(cache.sidecar_path(key).read_text())
    assert sidecar["size"] == entry_path.stat().st_size
    assert sidecar["seconds"] == 12.5 and sidecar["format"] == STAGE_FORMAT
    entry = cache.lookup(key)
    assert entry is not None and entry.key == key and entry.kind == "install"


def test_an_entry_without_its_sidecar_is_no_entry(tmp_path: Path) -> None:
    cache = StageCache(tmp_path / "stages")
    cache.ensure_root()
    _qcow2(cache.entry_path("b" * 64))  # as a build killed before the sidecar leaves it
    assert cache.lookup("b" * 64) is None
    assert cache.entries() == []


@pytest.mark.parametrize("damage", ["truncate", "flip", "remove"])
def test_a_damaged_entry_is_discarded_never_used(tmp_path: Path, damage: str,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    cache = StageCache(tmp_path / "stages")
    key = "c" * 64
    path = _store(cache, key)
    os.chmod(path, 0o644)
    if damage == "truncate":
        os.truncate(path, path.stat().st_size - 4096)
    elif damage == "flip":
        with open(path, "r+b") as f:
            f.seek(1024)
            byte = f.read(1)
            f.seek(1024)
            f.write(bytes([byte[0] ^ 0xFF]))
    else:
        path.unlink()
    assert cache.lookup(key) is None
    assert "corrupt" in caplog.text
    assert not cache.sidecar_path(key).exists() and not path.exists()


def test_a_chain_whose_parent_is_gone_is_a_miss(tmp_path: Path) -> None:
    cache = StageCache(tmp_path / "stages")
    parent, child = "d" * 64, "e" * 64
    _store(cache, parent)
    _store(cache, child, parent=parent)
    assert cache.lookup(child) is not None
    cache.remove(parent)
    assert cache.lookup(child) is None


def test_stored_keys_are_private_and_come_back(tmp_path: Path) -> None:
    cache = StageCache(tmp_path / "stages")
    keys = StoredKeys(client=KeyPair.generate("c"), host=KeyPair.generate("h"))
    key = "f" * 64
    _store(cache, key, keys=keys)
    assert stat.S_IMODE(cache.keys_path(key).stat().st_mode) == 0o600
    loaded = cache.load_keys(key)
    assert loaded == keys
    # Tampered keys make the entry corrupt: the system in it trusts only the stored ones.
    os.chmod(cache.keys_path(key), 0o600)
    cache.keys_path(key).write_text("{}")
    assert cache.lookup(key) is None


_WORKER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from builder.cache.store import StageCache
    from builder.vm.qemu_img import create_qcow2_argv
    from builder.run import run
    cache = StageCache(Path(sys.argv[1]))
    key, go = sys.argv[2], Path(sys.argv[3])
    if cache.lookup(key) is not None:
        print("hit-at-once"); sys.exit(0)
    print("miss", flush=True)
    with cache.locked(key):
        if cache.lookup(key) is not None:
            print("hit-after-wait"); sys.exit(0)
        tmp = cache.temp_path(key)
        run(create_qcow2_argv(tmp, 1048576))
        deadline = time.monotonic() + 60
        while not go.exists() and time.monotonic() < deadline:  # the test says when
            time.sleep(0.05)
        cache.store(key, tmp, parent=None, kind="install", description="w", template="t",
                    seconds=1.0)
        print("stored")
""")


def test_two_processes_make_one_entry(tmp_path: Path) -> None:
    root = tmp_path / "stages"
    key = "1" * 64
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    first = subprocess.Popen([sys.executable, "-c", _WORKER, str(root), key, str(go)],
                             stdout=subprocess.PIPE, text=True, env=env)
    # The second starts once the first holds the lock (its temp file exists); the first
    # stores only after the second has missed, however slowly either process starts.
    deadline = time.monotonic() + 30
    while not list(root.glob(".*.tmp")) and time.monotonic() < deadline:
        time.sleep(0.05)
    second = subprocess.Popen([sys.executable, "-c", _WORKER, str(root), key, str(go)],
                              stdout=subprocess.PIPE, text=True, env=env)
    assert second.stdout is not None and second.stdout.readline().strip() == "miss"
    time.sleep(0.2)  # usually blocked on the lock by now; if not, it blocks once there
    go.touch()
    outputs = sorted([first.communicate(timeout=60)[0].strip().split("\n")[-1],
                      second.communicate(timeout=60)[0].strip()])
    assert outputs == ["hit-after-wait", "stored"]
    assert [e.key for e in StageCache(root).entries()] == [key]


# --- the chain as raw -------------------------------------------------------------------


def test_a_two_level_chain_reads_back_as_sparse_raw(tmp_path: Path) -> None:
    base = _qcow2(tmp_path / "base.qcow2", 16 * MiB, pattern=None)
    _write(base, 0x11, 0, MiB)
    _write(base, 0x22, 8 * MiB, 64 * 1024)
    middle = tmp_path / "middle.qcow2"
    subprocess.run(create_overlay_argv(base, middle), check=True)
    _write(middle, 0x33, 512 * 1024, 4096)  # over the base's data
    top = tmp_path / "top.qcow2"
    subprocess.run(create_overlay_argv(middle, top), check=True)
    _write(top, 0x44, 12 * MiB, 4096)
    raw = tmp_path / "disk.raw"
    subprocess.run(chain_to_raw_argv(top, raw), check=True)

    expected = bytearray(16 * MiB)
    expected[0:MiB] = b"\x11" * MiB
    expected[8 * MiB:8 * MiB + 65536] = b"\x22" * 65536
    expected[512 * 1024:512 * 1024 + 4096] = b"\x33" * 4096
    expected[12 * MiB:12 * MiB + 4096] = b"\x44" * 4096
    assert raw.read_bytes() == bytes(expected)
    assert raw.stat().st_blocks * 512 < 4 * MiB  # sparse: only what was written
    info = json.loads(subprocess.run(["qemu-img", "info", "--output", "json", str(top)],
                                     capture_output=True, text=True, check=True).stdout)
    assert info["backing-filename-format"] == "qcow2"


def test_qcow2_argv() -> None:
    assert create_qcow2_argv(Path("/c/x.tmp"), 4 * 1024**3) == [
        "qemu-img", "create", "-q", "-f", "qcow2", "/c/x.tmp", "4294967296"]
    assert create_overlay_argv(Path("/c/k.qcow2"), Path("/w/disk-0.qcow2")) == [
        "qemu-img", "create", "-q", "-f", "qcow2", "-b", "/c/k.qcow2", "-F", "qcow2",
        "/w/disk-0.qcow2"]
    assert raw_to_qcow2_argv(Path("/w/disk.raw"), Path("/c/.k.tmp")) == [
        "qemu-img", "convert", "-f", "raw", "-O", "qcow2", "/w/disk.raw", "/c/.k.tmp"]
    assert chain_to_raw_argv(Path("/w/disk-1.qcow2"), Path("/w/disk.raw")) == [
        "qemu-img", "convert", "-f", "qcow2", "-O", "raw", "-S", "4k", "/w/disk-1.qcow2",
        "/w/disk.raw"]


# --- list and prune ---------------------------------------------------------------------


def _age(cache: StageCache, key: str, seconds_ago: float) -> None:
    when = time.time() - seconds_ago
    os.utime(cache.sidecar_path(key), (when, when))


def test_prune_older_than_takes_children_along(tmp_path: Path) -> None:
    cache = StageCache(tmp_path / "stages")
    old, child, fresh = "2" * 64, "3" * 64, "4" * 64
    _store(cache, old)
    _store(cache, child, parent=old)
    _store(cache, fresh)
    _age(cache, old, 30 * 86400)
    _age(cache, child, 1)  # recently used, yet useless without its parent
    lines = prune(cache, older_than=14 * 86400, max_size=None)
    assert [e.key for e in cache.entries()] == [fresh]
    assert len(lines) == 2 and lines[0].startswith(f"removed {old[:12]}")


def test_prune_max_size_removes_least_recently_used(tmp_path: Path) -> None:
    cache = StageCache(tmp_path / "stages")
    a, b, c = "5" * 64, "6" * 64, "7" * 64
    for key, age in ((a, 300), (b, 100), (c, 200)):
        _store(cache, key)
        _age(cache, key, age)
    one = cache.entries()[0].size
    plan = plan_prune(list_entries(cache), older_than=None, max_size=one, now=time.time())
    assert plan == [[a], [c]]
    assert prune(cache, older_than=None, max_size=one, dry_run=True)[0].startswith(
        "would remove")
    assert len(cache.entries()) == 3  # a dry run removes nothing


def test_prune_leaves_an_entry_a_build_is_using(tmp_path: Path) -> None:
    cache = StageCache(tmp_path / "stages")
    key = "8" * 64
    _store(cache, key)
    _age(cache, key, 30 * 86400)
    with cache.in_use(key):
        assert prune(cache, older_than=1, max_size=None)[0].startswith("kept")
    assert cache.lookup(key) is not None  # a use: last used is now
    assert prune(cache, older_than=3600, max_size=None) == ["nothing to remove"]
    _age(cache, key, 30 * 86400)
    prune(cache, older_than=3600, max_size=None)
    assert cache.entries() == []


def test_plan_prune_removes_orphans() -> None:
    from builder.cache.store import Entry
    orphan = Entry(key="9" * 64, parent="0" * 64, kind="provision", description="x",
                   template="t", size=1, sha256="0" * 64, created="2026-01-01T00:00:00+00:00")
    assert plan_prune([Listed(orphan, time.time())], older_than=None, max_size=None,
                      now=time.time()) == [[orphan.key]]


def test_cache_commands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("AZBUILD_CACHE_DIR", str(tmp_path))
    cache = StageCache()
    assert cache.root == tmp_path / "stages"
    _store(cache, "a" * 64)
    assert main(["cache", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [e["key"] for e in listed] == ["a" * 64]
    assert set(listed[0]) >= {"key", "kind", "description", "template", "size", "created",
                              "last_used", "parent"}
    assert main(["cache", "list"]) == 0
    out = capsys.readouterr().out
    assert "a" * 12 in out and "LAST USED" in out
    assert main(["cache", "prune"]) == 2
    assert "--older-than" in capsys.readouterr().err
    assert main(["cache", "prune", "--max-size", "12 parsecs"]) == 2
    assert "error: --max-size: " in capsys.readouterr().err
    assert main(["cache", "prune", "--max-size", "10GB"]) == 2
    err = capsys.readouterr().err
    assert "did you mean 10GiB?" in err and "Azure" not in err  # a cache size, not a disk's
    assert main(["cache", "prune", "--older-than", "2weeks"]) == 2
    assert "error: --older-than: expected a duration" in capsys.readouterr().err
    assert main(["cache", "prune", "--max-size", "0"]) == 0
    assert "removed" in capsys.readouterr().out
    assert cache.entries() == []


# --- the provisioners' chain -------------------------------------------------------------


def _provisioners(*specs: tuple[str, bool]) -> list[ShellProvisioner]:
    return [ShellProvisioner.model_validate({"type": "shell", "inline": [cmd], "cache": cache})
            for cmd, cache in specs]


def test_chain_keys_follow_every_provisioner_before() -> None:
    provs = _provisioners(("a", False), ("b", True), ("c", False))
    keys = chain_keys("0" * 64, provs)
    assert len(keys) == 3 and len(set(keys)) == 3
    changed_first = chain_keys("0" * 64, _provisioners(("A", False), ("b", True), ("c", False)))
    assert all(a != b for a, b in zip(keys, changed_first, strict=True))
    changed_last = chain_keys("0" * 64, _provisioners(("a", False), ("b", True), ("C", False)))
    assert changed_last[:2] == keys[:2] and changed_last[2] != keys[2]


def test_the_longest_cached_prefix_is_found(tmp_path: Path) -> None:
    cache = StageCache(tmp_path / "stages")
    root = "a" * 64
    provs = _provisioners(("a", True), ("b", False), ("c", True), ("d", False))
    keys = chain_keys(root, provs)
    assert longest_cached_prefix(cache, keys, provs) is None
    _store(cache, root)
    _store(cache, keys[0], parent=root)
    found = longest_cached_prefix(cache, keys, provs)
    assert found is not None and found[0] == 1 and found[1].key == keys[0]
    _store(cache, keys[2], parent=keys[0])
    found = longest_cached_prefix(cache, keys, provs)
    assert found is not None and found[0] == 3
    # Only the last provisioner changed: the prefix up to the last cache point still hits.
    edited = _provisioners(("a", True), ("b", False), ("c", True), ("D", False))
    found = longest_cached_prefix(cache, chain_keys(root, edited), edited)
    assert found is not None and found[0] == 3


def test_a_child_made_on_an_older_parent_is_discarded(tmp_path: Path) -> None:
    cache = StageCache(tmp_path / "stages")
    root, child = "b" * 64, "c" * 64
    _store(cache, root)
    _store(cache, child, parent=root)
    cache.remove(root)  # and made again, with other bytes
    tmp = cache.temp_path(root)
    _qcow2(tmp, pattern=0x66)
    cache.store(root, tmp, parent=None, kind="install", description="again", template="t",
                seconds=1.0)
    assert cache.lookup(child) is None
    assert not cache.sidecar_path(child).exists()


def test_prune_removes_the_temp_of_a_killed_build_only(tmp_path: Path) -> None:
    cache = StageCache(tmp_path / "stages")
    stale = cache.temp_path("d" * 64)
    stale.write_bytes(b"half an install")
    live = cache.temp_path("e" * 64)
    live.write_bytes(b"an install going on")
    with cache.locked("e" * 64):
        lines = prune(cache, older_than=None, max_size=10**12)
    assert lines == [f"removed {stale.name}: left by a build killed while storing it"]
    assert not stale.exists() and live.exists()
