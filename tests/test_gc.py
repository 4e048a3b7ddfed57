"""`azbuild gc` against libvirt's in-process test driver (test:///default): a real libvirt
connection with no daemon and no guest, so finding, listing and removing leftover
domains runs in a unit test."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest

from builder.housekeeping.gc import claim_work_dir, collect_garbage
from builder.manifest import MANIFEST_FILE
from builder.paths import CACHE_ENV, WORK_ENV
from builder.vm.libvirt import DomainMetadata, connected, list_azbuild_domains, remove_domain

TEST_URI = "test:///default"


def _dead_pid() -> int:
    """The PID of a process that has exited (and been reaped)."""
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          check=True, capture_output=True, text=True)
    return int(proc.stdout)


def _domain_xml(name: str, pid: int | None) -> str:
    metadata = "" if pid is None else (
        "<metadata><azbuild:build xmlns:azbuild='https://azbuild.dev/xmlns/libvirt-domain/1'>"
        "<azbuild:template>debian-12</azbuild:template><azbuild:workdir>/w/1</azbuild:workdir>"
        f"<azbuild:pid>{pid}</azbuild:pid><azbuild:started>2026-01-02T03:04:05+00:00"
        "</azbuild:started></azbuild:build></metadata>")
    return (f"<domain type='test'><name>{name}</name><memory>1024</memory>"
            f"<os><type>hvm</type></os>{metadata}</domain>")


@pytest.fixture
def conn() -> Iterator[Any]:
    with connected(TEST_URI) as c:
        yield c


def _names(conn: Any) -> set[str]:
    return {dom.name() for dom in conn.listAllDomains(0)}


def test_azbuild_domains_are_listed_with_their_metadata_and_removed(conn: Any) -> None:
    tag = secrets.token_hex(4)
    transient, persistent, other = f"azbuild-a-{tag}", f"azbuild-b-{tag}", f"other-{tag}"
    conn.createXML(_domain_xml(transient, 4242), 0)
    conn.defineXML(_domain_xml(persistent, None)).create()
    conn.createXML(_domain_xml(other, None), 0)
    try:
        found = {d.name: d for d in list_azbuild_domains(conn)}
        assert other not in found
        assert found[transient].metadata == DomainMetadata(
            template="debian-12", work_dir=Path("/w/1"), pid=4242, pid_start=None,
            started="2026-01-02T03:04:05+00:00")
        assert found[persistent].metadata is None

        remove_domain(found[transient])
        remove_domain(found[persistent])  # running and defined: destroyed and undefined
        assert _names(conn) & {transient, persistent} == set()
        assert other in _names(conn)
        remove_domain(found[transient])  # already gone: fine
    finally:
        conn.lookupByName(other).destroy()


def test_connected_closes_the_connection() -> None:
    with connected(TEST_URI) as c:
        assert c.isAlive()
    with pytest.raises(libvirt.libvirtError):
        c.listAllDomains(0)


def test_gc_lists_then_removes_a_dead_build_s_domain_and_work_dir(
    tmp_path: Path, conn: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(WORK_ENV, str(tmp_path / "work"))
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    pid = _dead_pid()
    name = f"azbuild-debian-12-{secrets.token_hex(4)}"
    conn.createXML(_domain_xml(name, pid), 0)
    work = tmp_path / "work" / "b1"
    work.mkdir(parents=True)
    claim_work_dir(work, pid)
    out = tmp_path / "out"
    (work / "salvage.json").write_text(json.dumps({"output_dir": str(out), "manifest": {}}))

    assert collect_garbage(remove=False, connect=TEST_URI) == [
        f"domain {name} (pid {pid} gone, template debian-12): leftover",
        f"work dir {work} (pid {pid} gone): leftover",
        "run again with --yes to remove these",
    ]
    assert name in _names(conn) and work.is_dir()

    assert collect_garbage(remove=True, connect=TEST_URI) == [
        f"domain {name} (pid {pid} gone, template debian-12): destroyed",
        f"work dir {work} (pid {pid} gone): removed",
        f"  kept its build.log and a failed {MANIFEST_FILE} in {out}",
    ]
    assert name not in _names(conn) and not work.exists()
    assert (out / MANIFEST_FILE).is_file()
