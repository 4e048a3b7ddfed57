"""The stage cache's keys: what a stage's disk state depends on, and nothing else.

Pure functions over what they are given (the answer files, a provisioner's definition
and file contents), so a test can say exactly what changes a key and what does not.
The build's generated SSH keys and the random salt of the root password hash are
never part of a key: answer files are rendered for the key with stable placeholders.
"""

from __future__ import annotations

import json
from pathlib import Path

from builder.cache.store import STAGE_FORMAT, stage_key
from builder.models import FileProvisioner, RebootProvisioner, ShellProvisioner

# Stand-ins for the per-build values of the answer files. They are valid enough for
# AnswerContext's checks; they never reach a guest.
KEY_CLIENT_PUBLIC = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAzbuildCacheKeyClientPlaceholder00 cache"
KEY_HOST_PUBLIC = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAzbuildCacheKeyHostPlaceholder0000 cache"
KEY_HOST_PRIVATE = ("-----BEGIN OPENSSH PRIVATE KEY-----\nazbuild-cache-key-placeholder\n"
                    "-----END OPENSSH PRIVATE KEY-----\n")
_PASSWORD_SALT = "azbuildcachekey"  # a fixed salt: the same password, the same key


def stable_password_hash(password: str) -> str:
    """A SHA-512 crypt hash with a fixed salt: stands for the password in a key (the
    build's own hash has a random salt, so it would change the key every time)."""
    from passlib.hash import sha512_crypt

    return str(sha512_crypt.using(rounds=5000, salt=_PASSWORD_SALT).hash(password))


def install_key(*, iso_digest: str, answer_files: dict[str, str], distro_name: str,
                distro_version: str, disk_size: int, firmware: str,
                installer_args: dict[str, str | None] | None = None) -> str:
    """The key of the disk state after an ISO install. `installer_args` is what reaches the
    installer outside the answer files: its command line, the kernel/initrd paths in the
    ISO. Builds take it from the plan (`BuildPlan.install_key`)."""
    answers = json.dumps(answer_files, sort_keys=True)
    extra = json.dumps(installer_args or {}, sort_keys=True)
    return stage_key("install", f"format={STAGE_FORMAT}", iso_digest, answers,
                     distro_name, distro_version, str(disk_size), firmware, extra)


def source_key(*, source_digest: str, disk_size: int) -> str:
    """The key of a disk-image build's first stage: the copied (and grown) source disk."""
    return stage_key("source", f"format={STAGE_FORMAT}", source_digest, str(disk_size))


def provisioner_key(previous: str, provisioner: ShellProvisioner | FileProvisioner
                    | RebootProvisioner) -> str:
    """The key after one provisioner: the previous key, the provisioner's whole definition,
    and the bytes of the files it uploads or runs (a directory: every file, by path)."""
    # A name only labels the step: renaming it does not change the disk.
    definition = json.dumps(provisioner.model_dump(mode="json", exclude={"name"}),
                            sort_keys=True)
    parts: list[str | bytes] = ["provision", previous, definition]
    for path in _files_of(provisioner):
        parts += _file_parts(path)
    return stage_key(*parts)


def _files_of(provisioner: ShellProvisioner | FileProvisioner | RebootProvisioner
              ) -> list[Path]:
    if isinstance(provisioner, ShellProvisioner) and provisioner.script is not None:
        return [provisioner.script]
    if isinstance(provisioner, FileProvisioner):
        return [provisioner.source]
    return []


def _file_parts(path: Path) -> list[str | bytes]:
    if path.is_dir():
        parts: list[str | bytes] = []
        for child in sorted(p for p in path.rglob("*") if p.is_file()):
            parts += [str(child.relative_to(path)), oct(child.stat().st_mode & 0o777),
                      child.read_bytes()]
        return parts
    return [path.name, path.read_bytes()]
