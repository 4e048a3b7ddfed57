"""The cloud-init NoCloud seed (a volume labelled CIDATA) that opens a guest to the build.

The guest gets the build user with the build's public key and passwordless
sudo, and exactly the SSH host key the engine generated (cloud-init deletes
any others and generates none), so the SSH client can pin it.

user-data is written as JSON, which is YAML too: every string (multi-line
private keys included) is escaped correctly by construction.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from builder.vm.volume import write_volume

CIDATA_LABEL = "CIDATA"


def new_instance_id() -> str:
    """A fresh instance-id, so cloud-init treats every boot of a new seed as a first boot."""
    return f"azbuild-{uuid.uuid4().hex}"


def nocloud_user_config(
    *,
    username: str,
    authorized_key: str,
    host_key_private: str | None,
    host_key_public: str | None,
    password_hash: str | None = None,
) -> dict[str, Any]:
    """The cloud-config as data (see `nocloud_user_data`)."""
    user: dict[str, Any] = {
        "name": username,
        "shell": "/bin/bash",
        "sudo": "ALL=(ALL) NOPASSWD:ALL",
        "lock_passwd": password_hash is None,
        "ssh_authorized_keys": [authorized_key.strip()],
    }
    if password_hash is not None:
        user["passwd"] = password_hash
    config: dict[str, Any] = {
        "users": [user],
        "disable_root": True,
        "ssh_pwauth": password_hash is not None,
        "ssh_deletekeys": True,
    }
    if host_key_private is not None and host_key_public is not None:
        config["ssh_genkeytypes"] = []
        config["ssh_keys"] = {
            "ed25519_private": host_key_private.strip() + "\n",
            "ed25519_public": host_key_public.strip(),
        }
    # Without a key pair the guest makes its own keys, and the client pins the key
    # the template names (communicator.host_key_file).
    return config


def nocloud_user_data(
    *,
    username: str,
    authorized_key: str,
    host_key_private: str | None,
    host_key_public: str | None,
    password_hash: str | None = None,
) -> str:
    """`#cloud-config` user-data: create `username` (key login with `authorized_key`,
    passwordless sudo; password login only with `password_hash`, a crypt(3) hash) and
    install the ed25519 host key pair as the guest's only host key."""
    config = nocloud_user_config(
        username=username,
        authorized_key=authorized_key,
        host_key_private=host_key_private,
        host_key_public=host_key_public,
        password_hash=password_hash,
    )
    return "#cloud-config\n" + json.dumps(config, indent=2) + "\n"


def nocloud_meta_data(instance_id: str, hostname: str) -> str:
    return f"instance-id: {instance_id}\nlocal-hostname: {hostname}\n"


def write_seed(
    path: Path,
    *,
    username: str,
    authorized_key: str,
    host_key_private: str | None,
    host_key_public: str | None,
    hostname: str = "azbuild",
    password_hash: str | None = None,
    instance_id: str | None = None,
) -> str:
    """Write the CIDATA volume (attach it as a virtio disk: Debian's cloud kernel
    has no SATA driver) and return its instance-id."""
    instance_id = instance_id or new_instance_id()
    user_data = nocloud_user_data(
        username=username,
        authorized_key=authorized_key,
        host_key_private=host_key_private,
        host_key_public=host_key_public,
        password_hash=password_hash,
    )
    write_volume(
        path,
        CIDATA_LABEL,
        {
            "user-data": user_data.encode(),
            "meta-data": nocloud_meta_data(instance_id, hostname).encode(),
        },
    )
    return instance_id
