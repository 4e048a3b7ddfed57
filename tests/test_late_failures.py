"""Templates that used to pass `validate` and fail only once the build had started (issue 11):
each fails `validate`, `render`, `inspect` and `build` with exit 2 before any VM, naming the
file and the key. The simple cases are in test_bad_templates.py; these need real files."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest

from builder.cli import main

HOST_PUBLIC = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\n"


def _image_template(directory: Path, extra: str = "") -> Path:
    template = directory / "t.toml"
    template.write_text(
        'name = "demo"\n\n[source]\ndisk_image = "base.qcow2"\n\n'
        '[distro]\nname = "debian"\nversion = "12"\n\n' + extra
    )
    return template


def _qcow2(path: Path, size: str) -> None:
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), size], check=True)


def test_disk_size_below_the_source_image_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _qcow2(tmp_path / "base.qcow2", "2G")
    template = _image_template(tmp_path, '[vm]\ndisk_size = "1GiB"\n')
    assert main(["validate", str(template)]) == 2
    err = capsys.readouterr().err
    assert f"{template}: line 11: vm.disk_size: 1GiB is smaller than the source image" in err
    assert "(2GiB); set vm.disk_size to at least 2GiB" in err


def test_disk_size_of_the_source_image_or_more_is_valid(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _qcow2(tmp_path / "base.qcow2", "2G")
    assert main(["validate", str(_image_template(tmp_path, '[vm]\ndisk_size = "2GiB"\n'))]) == 0
    assert ": valid (debian 12)" in capsys.readouterr().out


def test_a_raw_source_image_is_measured_by_its_length(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    template = _image_template(tmp_path, '[vm]\ndisk_size = "20MiB"\n')
    template.write_text(template.read_text().replace("base.qcow2", "base.raw"))
    with open(tmp_path / "base.raw", "wb") as raw:
        raw.truncate(21 * 1024 * 1024)
        raw.seek(510)
        raw.write(b"\x55\xaa")  # an empty MBR: a blank disk, not zeros
    assert main(["validate", str(template)]) == 2
    assert "vm.disk_size: 20MiB is smaller than the source image" in capsys.readouterr().err


def test_a_missing_source_image_is_still_only_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["validate", str(_image_template(tmp_path, '[vm]\ndisk_size = "1GiB"\n'))]) == 0
    err = capsys.readouterr().err
    assert "source.disk_image: file not found" in err and "(needed at build time)" in err


def test_a_socket_as_file_provisioner_source_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _qcow2(tmp_path / "base.qcow2", "64M")
    template = _image_template(
        tmp_path, '[[provision]]\ntype = "file"\nsource = "s.sock"\ndestination = "/etc/x"\n'
    )
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(tmp_path / "s.sock"))
        assert main(["validate", str(template)]) == 2
    err = capsys.readouterr().err
    assert f"{template}: line 12: provision[0].source:" in err
    assert "s.sock is not a regular file" in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file")
def test_an_unreadable_file_provisioner_source_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _qcow2(tmp_path / "base.qcow2", "64M")
    template = _image_template(
        tmp_path, '[[provision]]\ntype = "file"\nsource = "secret"\ndestination = "/etc/x"\n'
    )
    (tmp_path / "secret").write_text("x")
    (tmp_path / "secret").chmod(0)
    assert main(["validate", str(template)]) == 2
    assert "provision[0].source: cannot read" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["render", "inspect", "build"])
def test_every_command_that_loads_a_template_refuses_it(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A build user `root` passed validate and failed render and build (issue 11)."""
    _qcow2(tmp_path / "base.qcow2", "64M")
    template = _image_template(tmp_path, '[communicator]\nusername = "root"\n')
    args = {"render": ["--out", str(tmp_path / "out")], "inspect": [],
            "build": ["--output-dir", str(tmp_path / "out")]}[command]
    assert main([command, str(template), *args]) == 2
    err = capsys.readouterr().err
    assert f"{template}: line 11: communicator.username:" in err and "found 'root'" in err
    assert not (tmp_path / "out").exists()


def test_host_key_file_with_an_image_source_is_valid(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _qcow2(tmp_path / "base.qcow2", "64M")
    (tmp_path / "host.pub").write_text(HOST_PUBLIC)
    template = _image_template(tmp_path, '[communicator]\nhost_key_file = "host.pub"\n')
    assert main(["validate", str(template)]) == 0, capsys.readouterr().err


def test_a_directory_as_file_provisioner_source_is_valid(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A file provisioner uploads a directory as a tree (builder.vm.ssh), so it is no error."""
    _qcow2(tmp_path / "base.qcow2", "64M")
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d" / "a.conf").write_text("a")
    template = _image_template(
        tmp_path, '[[provision]]\ntype = "file"\nsource = "conf.d"\ndestination = "/etc/x"\n'
    )
    assert main(["validate", str(template)]) == 0, capsys.readouterr().err


def test_a_socket_inside_an_uploaded_directory_is_left_to_the_upload(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The upload skips what is not a file, directory or symlink (with a warning)."""
    _qcow2(tmp_path / "base.qcow2", "64M")
    (tmp_path / "conf.d").mkdir()
    template = _image_template(
        tmp_path, '[[provision]]\ntype = "file"\nsource = "conf.d"\ndestination = "/etc/x"\n'
    )
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(tmp_path / "conf.d" / "s.sock"))
        assert main(["validate", str(template)]) == 0, capsys.readouterr().err


def test_an_encrypted_private_key_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The build loads the key without a passphrase when it connects, after the VM booted."""
    _qcow2(tmp_path / "base.qcow2", "64M")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "secret", "-f",
                    str(tmp_path / "id")], check=True)
    template = _image_template(tmp_path, '[communicator]\nprivate_key_file = "id"\n')
    assert main(["validate", str(template)]) == 2
    err = capsys.readouterr().err
    assert f"{template}: line 11: communicator.private_key_file:" in err
    assert str(tmp_path / "id") in err
