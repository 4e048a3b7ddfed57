"""The NoCloud seed: user-data content and the CIDATA volume."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pycdlib
import pytest

from builder.vm.seed import (
    CIDATA_LABEL,
    new_instance_id,
    nocloud_meta_data,
    nocloud_user_data,
    write_seed,
)

PRIVATE = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\n"
    "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\n"
    "QyNTUxOQAAACBnoXh0aGlzIGlzIG5vdCBhIHJlYWwga2V5IGJ1dCBsb29rcyBsaWtlIG9u\n"
    "-----END OPENSSH PRIVATE KEY-----\n"
)
PUBLIC = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGehaG9zdCBrZXk host@azbuild"
USER_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHVzZXIga2V5 build@azbuild\n"


def _parse(user_data: str) -> dict[str, object]:
    assert user_data.startswith("#cloud-config\n")
    yaml = pytest.importorskip("yaml")
    parsed = yaml.safe_load(user_data)
    # JSON is a YAML subset: both parsers must agree.
    assert parsed == json.loads(user_data.split("\n", 1)[1])
    assert isinstance(parsed, dict)
    return parsed


def test_user_data_creates_the_build_user_and_pins_the_host_key() -> None:
    config = _parse(nocloud_user_data(
        username="azbuild", authorized_key=USER_KEY,
        host_key_private=PRIVATE, host_key_public=PUBLIC,
    ))
    assert config["users"] == [{
        "name": "azbuild",
        "shell": "/bin/bash",
        "sudo": "ALL=(ALL) NOPASSWD:ALL",
        "lock_passwd": True,
        "ssh_authorized_keys": [USER_KEY.strip()],
    }]
    assert config["ssh_deletekeys"] is True
    assert config["ssh_genkeytypes"] == []
    assert config["ssh_pwauth"] is False
    assert config["disable_root"] is True
    assert config["ssh_keys"] == {"ed25519_private": PRIVATE, "ed25519_public": PUBLIC}


def test_password_login_only_when_a_hash_is_given() -> None:
    config = _parse(nocloud_user_data(
        username="packer", authorized_key=USER_KEY,
        host_key_private=PRIVATE, host_key_public=PUBLIC, password_hash="$6$salt$hash",
    ))
    users = config["users"]
    assert isinstance(users, list)
    assert users[0]["name"] == "packer"
    assert users[0]["passwd"] == "$6$salt$hash"
    assert users[0]["lock_passwd"] is False
    assert config["ssh_pwauth"] is True


def test_meta_data_and_fresh_instance_ids() -> None:
    assert nocloud_meta_data("i-1", "box") == "instance-id: i-1\nlocal-hostname: box\n"
    assert new_instance_id() != new_instance_id()
    assert new_instance_id().startswith("azbuild-")


def test_write_seed_makes_a_cidata_volume(tmp_path: Path) -> None:
    path = tmp_path / "seed.iso"
    instance_id = write_seed(
        path, username="azbuild", authorized_key=USER_KEY,
        host_key_private=PRIVATE, host_key_public=PUBLIC, hostname="builder",
    )
    iso = pycdlib.PyCdlib()
    iso.open(str(path))
    try:
        assert iso.pvd.volume_identifier.decode().strip() == CIDATA_LABEL
        files = {}
        for name in ("user-data", "meta-data"):
            buf = io.BytesIO()
            iso.get_file_from_iso_fp(buf, rr_path=f"/{name}")
            files[name] = buf.getvalue().decode()
    finally:
        iso.close()
    assert files["meta-data"] == f"instance-id: {instance_id}\nlocal-hostname: builder\n"
    assert _parse(files["user-data"])["ssh_keys"] == {
        "ed25519_private": PRIVATE, "ed25519_public": PUBLIC,
    }
