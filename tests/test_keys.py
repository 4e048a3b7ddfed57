from __future__ import annotations

import shutil
import stat
import subprocess
from pathlib import Path

import paramiko
import pytest

from builder.errors import UsageError
from builder.vm.keys import (
    KeyPair,
    fingerprint,
    load_private_key,
    load_public_key,
    parse_public_line,
)

needs_keygen = pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="no ssh-keygen")


def test_generate_formats() -> None:
    pair = KeyPair.generate("build-42")
    assert pair.private_openssh.startswith("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    kind, _blob, comment = pair.public_line.split()
    assert (kind, comment) == ("ssh-ed25519", "build-42")
    assert pair.key_type == "ssh-ed25519"
    assert pair.fingerprint.startswith("SHA256:") and not pair.fingerprint.endswith("=")
    assert len(pair.fingerprint) == len("SHA256:") + 43
    assert KeyPair.generate().public_line != pair.public_line
    assert "PRIVATE" not in repr(pair)


def test_to_paramiko_is_the_same_key() -> None:
    pair = KeyPair.generate()
    key = pair.to_paramiko()
    assert isinstance(key, paramiko.Ed25519Key)
    assert f"{key.get_name()} {key.get_base64()}" == " ".join(pair.public_line.split()[:2])
    signature = key.sign_ssh_data(b"data")
    public = paramiko.PKey.from_type_string("ssh-ed25519", key.asbytes())
    signature.rewind()
    assert public.verify_ssh_sig(b"data", signature)


def test_write_private_mode_0600(tmp_path: Path) -> None:
    pair = KeyPair.generate()
    path = tmp_path / "id"
    path.write_text("old, world-readable")
    path.chmod(0o644)
    pair.write_private(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == pair.private_openssh
    assert load_private_key(path).asbytes() == pair.to_paramiko().asbytes()


@needs_keygen
def test_matches_ssh_keygen(tmp_path: Path) -> None:
    pair = KeyPair.generate("c")
    key = pair.write_private(tmp_path / "id")
    derived = subprocess.run(["ssh-keygen", "-y", "-f", str(key)], capture_output=True,
                             text=True, check=True).stdout.split()
    assert derived[:2] == pair.public_line.split()[:2]
    printed = subprocess.run(["ssh-keygen", "-lf", str(key)], capture_output=True, text=True,
                             check=True).stdout.split()
    assert printed[1] == pair.fingerprint


@needs_keygen
def test_fingerprint_of_other_key_types(tmp_path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "rsa", "-b", "2048", "-N", "", "-f",
                    str(tmp_path / "rsa")], check=True)
    line = (tmp_path / "rsa.pub").read_text()
    printed = subprocess.run(["ssh-keygen", "-lf", str(tmp_path / "rsa.pub")],
                             capture_output=True, text=True, check=True).stdout.split()
    assert fingerprint(line) == printed[1]
    (tmp_path / "host.pub").write_text("# pinned\n\n" + line)
    assert load_public_key(tmp_path / "host.pub") == line.strip()
    assert load_private_key(tmp_path / "rsa").get_name() == "ssh-rsa"


def test_bad_public_lines(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="not an OpenSSH public key"):
        parse_public_line("ssh-dss AAAA")
    with pytest.raises(UsageError, match="bad base64"):
        parse_public_line("ssh-ed25519 !!!")
    other = KeyPair.generate().public_line.split()[1]
    with pytest.raises(UsageError, match="does not match its type"):
        parse_public_line(f"ssh-rsa {other}")
    (tmp_path / "empty.pub").write_text("# nothing\n")
    with pytest.raises(UsageError, match="no public key"):
        load_public_key(tmp_path / "empty.pub")
    with pytest.raises(UsageError, match="not found"):
        load_private_key(tmp_path / "missing")
