"""The inventory of a real Debian 12 cloud image, read in the check's libguestfs launch,
and `azbuild diff` reading an image's inventory on the spot. Two appliance launches in
all (run them under the machine lock: `flock /tmp/azbuild-vm.lock ...`)."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from builder.inventory import Inventory
from builder.offline_check.check import run_check

pytestmark = pytest.mark.e2e

AZBUILD = Path(sys.executable).parent / "azbuild"
_read: dict[Path, Inventory] = {}


def inventory_of(image: Path, caplog: pytest.LogCaptureFixture) -> Inventory:
    if image not in _read:
        with caplog.at_level(logging.INFO, logger="builder.offline_check.guest_checks"):
            report = run_check(image, skip=[], inventory=True)
        took = [r.getMessage() for r in caplog.records if "reading more" in r.getMessage()]
        print(f"\n{took}")
        assert report.inventory is not None
        _read[image] = report.inventory
    return _read[image]


def test_the_inventory_of_the_debian_cloud_image(
    cloud_image: Path, caplog: pytest.LogCaptureFixture
) -> None:
    inventory = inventory_of(cloud_image, caplog)
    assert inventory.package_format == "deb"
    assert inventory.os_release["ID"] == "debian" and inventory.os_release["VERSION_ID"] == "12"
    by_name = {p.name: p for p in inventory.packages}
    assert len(by_name) > 150
    assert by_name["libc6"].source == "glibc" and by_name["libc6"].architecture == "amd64"
    assert by_name["bash"].source == "bash"
    # Every installed kernel package has its kernel, with image and modules.
    kernel_packages = [n for n in by_name if re.fullmatch(r"linux-image-\d.*", n)]
    assert kernel_packages
    versions = {k.version for k in inventory.kernels if k.image and k.modules}
    assert {n.removeprefix("linux-image-") for n in kernel_packages} <= versions
    assert "ssh.service" in inventory.services or "sshd.service" in inventory.services
    assert inventory.kernel_args.default is not None
    assert any(a.startswith("root=") for a in inventory.kernel_args.default)


def test_diff_reads_an_image_on_the_spot(
    cloud_image: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    inventory = inventory_of(cloud_image, caplog)
    removed = next(p for p in inventory.packages if p.name == "bash")
    older = inventory.model_copy(
        update={"packages": [p for p in inventory.packages if p is not removed]})
    manifest: dict[str, Any] = {
        "status": "succeeded", "template": "debian-12-cloud", "artifacts": [], "check": None,
        "inventory": older.model_dump(mode="json"),
    }
    old = tmp_path / "manifest.json"
    old.write_text(json.dumps(manifest))
    proc = subprocess.run([str(AZBUILD), "diff", "--json", str(old), str(cloud_image)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 1, proc.stderr
    data = json.loads(proc.stdout)
    assert [c for c in data["changes"] if c["section"] != "sizes"] == [
        {"section": "packages", "item": "bash", "old": None, "new": removed.version}]
    assert data["not_compared"] == {"requirements": f"{old} does not record it",
                                    "inputs": f"{cloud_image} does not record it"}
