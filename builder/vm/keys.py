"""SSH keys made by the engine: the build's ephemeral client key and the guest's host key.

Both are ed25519 pairs generated fresh for each build with `cryptography`, so
the client can pin the guest's host key exactly and nothing is ever trusted on
first use. Fingerprints are printed the way OpenSSH prints them (`SHA256:...`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from builder.errors import UsageError

_PUBLIC_KEY_TYPES = (
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
)


@dataclass(frozen=True)
class KeyPair:
    """An ed25519 key pair in OpenSSH formats."""

    private_openssh: str = field(repr=False)
    """The private key as OpenSSH writes it (`-----BEGIN OPENSSH PRIVATE KEY-----`), unencrypted."""
    public_line: str
    """`ssh-ed25519 AAAA... comment`, as in authorized_keys or a `.pub` file."""
    fingerprint: str
    """`SHA256:...` as `ssh-keygen -lf` and the ssh client print it."""

    @classmethod
    def generate(cls, comment: str = "azbuild") -> KeyPair:
        key = Ed25519PrivateKey.generate()
        private = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        ).decode("ascii")
        public = key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        ).decode("ascii")
        line = f"{public} {comment}" if comment else public
        return cls(private_openssh=private, public_line=line, fingerprint=fingerprint(line))

    @property
    def key_type(self) -> str:
        return self.public_line.split()[0]

    def write_private(self, path: Path) -> Path:
        """Write the private key with mode 0600 (never wider, not even for a moment)."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, self.private_openssh.encode("ascii"))
        finally:
            os.close(fd)
        return path

    def write_public(self, path: Path) -> Path:
        path.write_text(self.public_line + "\n", encoding="ascii")
        return path

    def to_paramiko(self) -> paramiko.PKey:
        return paramiko.Ed25519Key(file_obj=io.StringIO(self.private_openssh))


def parse_public_line(line: str) -> tuple[str, bytes]:
    """The key type and the raw key blob of an OpenSSH public key line; UsageError if malformed."""
    parts = line.strip().split()
    if len(parts) < 2 or parts[0] not in _PUBLIC_KEY_TYPES:
        raise UsageError(f"not an OpenSSH public key line: {line.strip()[:60]!r}")
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except (binascii.Error, ValueError):
        raise UsageError(f"not an OpenSSH public key line (bad base64): {line.strip()[:60]!r}") \
            from None
    # The blob starts with the length-prefixed key type; it must agree with the line's type.
    if len(blob) < 4 or blob[4 : 4 + int.from_bytes(blob[:4], "big")] != parts[0].encode():
        raise UsageError(f"public key blob does not match its type {parts[0]}")
    return parts[0], blob


def fingerprint_blob(blob: bytes) -> str:
    digest = hashlib.sha256(blob).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


def fingerprint(public_line: str) -> str:
    """The SHA256 fingerprint of an OpenSSH public key line, as OpenSSH prints it."""
    return fingerprint_blob(parse_public_line(public_line)[1])


def load_public_key(path: Path) -> str:
    """The first key line of a public key file (e.g. the communicator's `host_key_file`)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read public key {path}: {exc.strerror}") from None
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            parse_public_line(line)
            return line
    raise UsageError(f"no public key in {path}")


def load_private_key(path: Path, passphrase: str | None = None) -> paramiko.PKey:
    """A private key file of any type paramiko reads (the communicator's `private_key_file`)."""
    try:
        return paramiko.PKey.from_path(path, passphrase)
    except FileNotFoundError:
        raise UsageError(f"private key not found: {path}") from None
    except paramiko.PasswordRequiredException:
        raise UsageError(
            f"private key {path} is encrypted", hint="use an unencrypted key for builds"
        ) from None
    except (paramiko.SSHException, ValueError) as exc:
        raise UsageError(f"cannot read private key {path}: {exc}") from None
