"""End to end: a build's `[[publish]]` entry uploads the demo into Azurite on 127.0.0.1
(tests/azurite.py). `azbuild publish` of the shared demo build is in test_iso_install.py.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from azurite import ACCOUNT, KEY, blob_sha256
from test_iso_install import DEMO, build_iso

pytestmark = pytest.mark.e2e


def test_a_build_with_a_publish_entry_uploads_the_demo(
    test_installer_iso: Path, azurite: Any, tmp_path: Path
) -> None:
    """`azbuild build` of the demo plus one [[publish]] entry whose SAS comes in through a
    sensitive variable: the blob holds the image, the manifest records the upload, and no
    output holds the SAS."""
    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    container = azurite.service().create_container("built")
    sas = generate_container_sas(
        ACCOUNT, "built", account_key=KEY,
        permission=ContainerSasPermissions(read=True, add=True, create=True, write=True,
                                           delete=True, list=True),
        expiry=datetime.now(UTC) + timedelta(hours=3))
    template = tmp_path / "demo-published.toml"
    template.write_text(
        f'name = "demo-published"\nextends = ["{DEMO}"]\n\n'
        '[variables]\ncontainer_url = { sensitive = true, description = "with its SAS" }\n\n'
        '[[publish]]\ntype = "azure-page-blob"\ncontainer_url = "${var.container_url}"\n'
        'blob = "demo-${name}.vhd"\n')
    outcome = build_iso(template, test_installer_iso.parent / "azbuild-test-installer.iso",
                        tmp_path, "--var", f"container_url={azurite.account_url}/built?{sas}")
    assert outcome.returncode == 0, outcome.stderr[-6000:]
    manifest = json.loads((outcome.output_dir / "manifest.json").read_text())
    steps = list(manifest["steps"])
    assert steps.index("check") < steps.index("publish") < steps.index("manifest")
    [record] = manifest["publish"]
    [artifact] = [a for a in manifest["artifacts"] if a["format"] == "vhd-fixed"]
    assert record["url"] == f"{azurite.account_url}/built/demo-demo-published.vhd"
    assert record["sha256"] == artifact["sha256"] and record["ready"] is True
    assert record["bytes_sent"] + record["bytes_skipped"] == artifact["size"]
    assert record["bytes_sent"] <= artifact["allocated"] * 1.01
    blob = container.get_blob_client("demo-demo-published.vhd")
    assert blob_sha256(blob) == artifact["sha256"]
    signature = sas.split("sig=")[1].split("&")[0]
    for text in (outcome.stdout, outcome.stderr,
                 (outcome.output_dir / "manifest.json").read_text(),
                 (outcome.output_dir / "build.log").read_text()):
        assert signature not in text
