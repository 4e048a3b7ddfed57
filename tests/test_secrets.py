"""A sensitive value never appears in any output.

One template (`sentinel_template`) carries a sentinel secret into every place a secret can
go; `assert_no_sentinel` searches any text, bytes or directory tree for it, plain or escaped.
To cover a new output (a manifest, rendered answer files, domain XML), produce it from
`sentinel_template` and pass the text or the directory to `assert_no_sentinel`.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from builder import redact
from builder.cli import main
from builder.log import JsonFormatter
from builder.template import load_template

# Quotes and a backslash make reprs and JSON escape it; TOKEN is what must never show, in
# any escaping. In TOML it is written "Sentinel-7f3a\"q\\b".
TOKEN = "Sentinel-7f3a"
SENTINEL = TOKEN + '"q\\b'
SENTINEL_TOML = TOKEN + '\\"q\\\\b'
AZBUILD = Path(sys.executable).parent / "azbuild"

TEMPLATE = f"""\
name = "secretive"

[variables]
password = {{ default = "{SENTINEL_TOML}", sensitive = true, description = "root password" }}
plain = "visible-value"

[source]
iso = "isos/${{var.password}}.iso"
checksum = "sha256:{"0" * 64}"

[distro]
name = "debian"
version = "12"

[install]
root_password = "${{var.password}}"

[communicator]
password = "${{var.password}}"

[[provision]]
type = "shell"
inline = ["echo ${{var.plain}}", "chpasswd <<< 'root:${{var.password}}'"]
env = {{ SECRET = "${{var.password}}" }}
"""


def assert_no_sentinel(output: str | bytes | Path) -> None:
    """Fail if the sentinel shows anywhere in `output`: text, bytes, a file or a directory."""
    if isinstance(output, Path):
        files = sorted(p for p in output.rglob("*") if p.is_file()) if output.is_dir() else [output]
        for path in files:
            data = path.read_bytes()
            assert TOKEN.encode() not in data, f"the secret leaked into {path}"
            assert TOKEN not in str(path.relative_to(output) if output.is_dir() else path.name)
        return
    text = output.decode("utf-8", "replace") if isinstance(output, bytes) else output
    assert TOKEN not in text, f"the secret leaked:\n{text}"


@pytest.fixture
def sentinel_template(tmp_path: Path) -> Path:
    path = tmp_path / "secretive.toml"
    path.write_text(TEMPLATE)
    return path


def test_the_fixture_really_carries_the_secret(sentinel_template: Path) -> None:
    loaded = load_template(sentinel_template)
    t = loaded.template
    assert t.install.root_password == SENTINEL
    assert t.communicator.password == SENTINEL
    assert t.provision[0].env == {"SECRET": SENTINEL}  # type: ignore[union-attr]
    assert SENTINEL in (t.source.iso or "")
    with pytest.raises(AssertionError):
        assert_no_sentinel(repr(SENTINEL))
    with pytest.raises(AssertionError):
        assert_no_sentinel(json.dumps({"x": SENTINEL}))


@pytest.mark.parametrize("fmt", ["toml", "json"])
def test_inspect(sentinel_template: Path, fmt: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", str(sentinel_template), "--format", fmt]) == 0
    out, err = capsys.readouterr()
    assert_no_sentinel(out + err)
    data = json.loads(out) if fmt == "json" else tomllib.loads(out)
    assert data["variables"] == {"password": "<sensitive>", "plain": "visible-value"}
    assert data["install"]["root_password"] == "<sensitive>"
    assert data["communicator"]["password"] == "<sensitive>"
    assert data["provision"][0]["inline"][0] == "echo visible-value"  # the rest stays readable


def test_validate_output_and_warnings(
    sentinel_template: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["validate", str(sentinel_template)]) == 0
    out, err = capsys.readouterr()
    assert "valid (debian 12)" in out
    assert "source.iso: file not found" in err  # the warning names the file, masked
    assert "<sensitive>.iso" in err
    assert_no_sentinel(out + err)


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_logs_with_debug_in_a_real_process(
    sentinel_template: Path, tmp_path: Path, log_format: str
) -> None:
    """--debug: the warning about the ISO, then a failing template whose error (and traceback)
    would quote the secret."""
    bad = tmp_path / "bad.toml"
    bad.write_text(TEMPLATE.replace('name = "debian"', 'name = "${var.password}"'))
    proc = subprocess.run(
        [str(AZBUILD), "--debug", "--log-format", log_format, "validate",
         str(sentinel_template), str(bad)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 2
    assert "Traceback" in proc.stderr  # --debug really printed one
    assert "distro.name: unknown distro '<sensitive>'" in proc.stderr
    assert_no_sentinel(proc.stdout + proc.stderr)
    if log_format == "json":
        records = [json.loads(line) for line in proc.stderr.splitlines() if line.strip()]
        assert {r["level"] for r in records} >= {"warning", "error"}


SMALL = f"""\
name = "small"
[variables]
password = {{ default = "{SENTINEL_TOML}", sensitive = true }}
[source]
iso = "https://example.org/x.iso"
checksum = "sha256:{"0" * 64}"
[distro]
name = "debian"
version = "12"
[vm]
cpus = 2
[output]
formats = ["vhd"]
"""


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("cpus = 2", 'cpus = "${var.password}"', "vm.cpus: expected a valid integer"),
        (f'"sha256:{"0" * 64}"', '"${var.password}"', "source.checksum: expected 'sha256:"),
        ("cpus = 2", 'memory = "${var.password}"', "vm.memory: expected a size"),
        ('version = "12"', 'version = "${var.password}"',
         "distro.version: unsupported Debian version"),
        ('name = "debian"', 'name = "x${var.password}"', "distro.name: unknown distro"),
        ('["vhd"]', '["${var.password}"]', "output.formats[0]: expected one of"),
        ('name = "small"', 'name = "${var.password}"', "name: expected 1 to 63 letters"),
        ("cpus = 2", 'colour = "${var.password}"', "vm.colour: unknown key"),
    ],
)
def test_a_secret_failing_validation_is_masked_in_the_error(
    tmp_path: Path, old: str, new: str, expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "t.toml"
    assert old in SMALL
    path.write_text(SMALL.replace(old, new))
    assert main(["validate", str(path)]) == 2
    out, err = capsys.readouterr()
    assert expected in err
    assert_no_sentinel(out + err)


def test_secret_from_var_and_var_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    template = tmp_path / "t.toml"
    template.write_text(TEMPLATE.replace(f'default = "{SENTINEL_TOML}", ', ""))
    var_file = tmp_path / "secret.toml"
    var_file.write_text(f'password = "{SENTINEL_TOML}"\n')
    for extra in (["--var", f"password={SENTINEL}"], ["--var-file", str(var_file)]):
        assert main(["inspect", str(template), "--format", "json", *extra]) == 0
        out, err = capsys.readouterr()
        assert json.loads(out)["variables"]["password"] == "<sensitive>"
        assert_no_sentinel(out + err)


def test_secret_from_the_environment_and_a_json_var_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    template = tmp_path / "t.toml"
    template.write_text(TEMPLATE.replace(f'default = "{SENTINEL_TOML}", ', ""))
    var_file = tmp_path / "secret.json"
    var_file.write_text(json.dumps({"password": SENTINEL}))
    for extra, env in (([], {"AZBUILD_VAR_password": SENTINEL}),
                       (["--var-file", str(var_file)], {})):
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        for command in (["--format", "json"], ["--provenance"]):
            assert main(["--debug", "inspect", str(template), *command, *extra]) == 0
            out, err = capsys.readouterr()
            assert_no_sentinel(out + err)
            if command == ["--provenance"]:
                assert "variables.password = \"<sensitive>\"" in out
            else:
                assert json.loads(out)["variables"]["password"] == "<sensitive>"
        for key in env:
            monkeypatch.delenv(key)


def test_an_environment_secret_of_the_wrong_type_is_masked_in_a_real_process(
    tmp_path: Path,
) -> None:
    path = tmp_path / "t.toml"
    path.write_text(SMALL.replace(f'default = "{SENTINEL_TOML}"', "default = 1234"))
    env = {**os.environ, "AZBUILD_VAR_password": SENTINEL}
    proc = subprocess.run(
        [str(AZBUILD), "--debug", "--log-format", "json", "validate", str(path)],
        capture_output=True, text=True, timeout=60, check=False, env=env,
    )
    assert proc.returncode == 2
    assert "AZBUILD_VAR_password: expected an integer (the type of the declared default 1234)," \
        " found <sensitive>" in proc.stderr
    assert_no_sentinel(proc.stdout + proc.stderr)


def test_redact_masks_escaped_forms_and_tracebacks() -> None:
    redact.register(SENTINEL)
    assert redact.redact(f"a {SENTINEL} b {SENTINEL!r} c {json.dumps(SENTINEL)}") == (
        "a <sensitive> b '<sensitive>' c \"<sensitive>\""
    )
    record = logging.LogRecord("azbuild.x", logging.ERROR, __file__, 1, "got %s", (SENTINEL,),
                               None)
    try:
        raise ValueError(f"bad value {SENTINEL!r}")
    except ValueError:
        record.exc_info = sys.exc_info()
    assert redact.RedactingFilter().filter(record)
    line = JsonFormatter().format(record)
    assert_no_sentinel(line)
    entry = json.loads(line)
    assert entry["message"] == "got <sensitive>"
    assert "ValueError: bad value '<sensitive>'" in entry["traceback"]


def test_short_values_are_not_registered_but_structured_output_still_masks_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    redact.register("abc")
    assert redact.redact("abc") == "abc"  # masking 3 characters everywhere would garble output
    path = tmp_path / "t.toml"
    path.write_text(TEMPLATE.replace(SENTINEL_TOML, "abc"))
    assert main(["inspect", str(path), "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["variables"]["password"] == "<sensitive>"
    assert data["install"]["root_password"] == "<sensitive>"


def test_render_output_holds_no_secret(sentinel_template: Path, tmp_path: Path) -> None:
    """Answer files, kernel command line, domain XML and the Azure scripts."""
    out = tmp_path / "rendered"
    assert main(["render", str(sentinel_template), "--out", str(out)]) == 0
    names = {p.name for p in out.iterdir()}
    assert {"domain-install.xml", "domain-boot.xml", "kernel-cmdline.txt",
            "azure-prep.sh"} <= names
    assert_no_sentinel(out)


# RHEL registration: the activation key and organisation reach the kickstart's %post, so
# they are secrets whether they come from sensitive variables or are written in the fields.
RHEL_KEY = TOKEN + "-key"
RHEL_ORG = TOKEN + "-org"
RHEL_TEMPLATE = f"""\
name = "registered"

[variables]
key = {{ default = "{RHEL_KEY}", sensitive = true }}

[source]
iso = "rhel-9.4.iso"
checksum = "sha256:{"0" * 64}"

[distro]
name = "rhel"
version = "9"

[install]
rhel_activation_key = "${{var.key}}"
rhel_organization = "{RHEL_ORG}"
"""


@pytest.fixture
def rhel_template(tmp_path: Path) -> Path:
    path = tmp_path / "registered.toml"
    path.write_text(RHEL_TEMPLATE)
    return path


def test_rhel_registration_is_masked_in_inspect(
    rhel_template: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    loaded = load_template(rhel_template)
    assert loaded.template.install.rhel_activation_key == RHEL_KEY
    assert loaded.template.install.rhel_organization == RHEL_ORG  # a literal, not a variable
    assert main(["inspect", str(rhel_template), "--format", "json"]) == 0
    out, err = capsys.readouterr()
    assert_no_sentinel(out + err)
    install = json.loads(out)["install"]
    assert install["rhel_activation_key"] == install["rhel_organization"] == "<sensitive>"


def test_rhel_registration_is_masked_in_the_rendered_kickstart(
    rhel_template: Path, tmp_path: Path
) -> None:
    out = tmp_path / "rendered"
    assert main(["render", str(rhel_template), "--out", str(out)]) == 0
    assert_no_sentinel(out)
    register = [line for line in (out / "ks.cfg").read_text().splitlines()
                if line.startswith("subscription-manager register")]
    assert register == [
        "subscription-manager register --org=__sensitive__ --activationkey=__sensitive__"
    ]  # a shell word: %post is a shell script, where `<sensitive>` would be a redirection


def test_a_bad_rhel_activation_key_is_masked_in_the_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "t.toml"
    path.write_text(RHEL_TEMPLATE.replace('"${var.key}"', f'"{RHEL_KEY} x"'))
    assert main(["validate", str(path)]) == 2
    out, err = capsys.readouterr()
    assert "install.rhel_activation_key: expected letters" in err
    assert_no_sentinel(out + err)
@pytest.mark.parametrize("log_format", ["text", "json"])
def test_publish_keeps_a_sas_and_a_connection_string_out_of_every_output(
    azurite: Any, tmp_path: Path, log_format: str
) -> None:
    """A SAS signature and an account key that carry the sentinel, refused by a real blob
    service (Azurite), with --debug: neither shows in the logs or the error."""
    from urllib.parse import quote

    from sparse_vhd import make_sparse_vhd

    image = tmp_path / "img.vhd"
    make_sparse_vhd(image, 32 * 1024**2, 4 * 1024**2, extent=4 * 1024**2, zero_extent=0)
    azurite.service().create_container(f"secrets-{log_format}")
    url = f"{azurite.account_url}/secrets-{log_format}"
    env = {k: v for k, v in os.environ.items() if k != "AZURE_STORAGE_CONNECTION_STRING"}
    sas = subprocess.run(
        [str(AZBUILD), "--debug", "--log-format", log_format, "publish", str(image),
         "--container-url", f"{url}?sv=2022-11-02&sp=rw&sig={quote(SENTINEL)}", "--force"],
        capture_output=True, text=True, timeout=120, check=False, env=env)
    assert sas.returncode == 2, sas.stderr
    assert "credentials refused by 127.0.0.1:" in sas.stderr
    assert_no_sentinel(sas.stdout + sas.stderr)
    assert quote(TOKEN) not in sas.stdout + sas.stderr
    key = azurite.connection_string.replace("AccountKey=", f"AccountKey={SENTINEL}")
    conn = subprocess.run(
        [str(AZBUILD), "--debug", "--log-format", log_format, "publish", str(image),
         "--container-url", url, "--force"],
        capture_output=True, text=True, timeout=120, check=False,
        env={**env, "AZURE_STORAGE_CONNECTION_STRING": key})
    assert conn.returncode == 2, conn.stderr
    assert_no_sentinel(conn.stdout + conn.stderr)


def test_identity_secrets_from_the_environment_are_masked() -> None:
    """DefaultAzureCredential reads a client secret from the environment: it is registered
    before any credential is made (a real failing token request takes minutes of retries
    here, so the registration itself is what is checked)."""
    from builder.publish.auth import register_identity_secrets

    register_identity_secrets({"AZURE_CLIENT_SECRET": SENTINEL, "AZURE_CLIENT_ID": "id"})
    assert_no_sentinel(redact.redact(f"token request failed: client_secret={SENTINEL!r}"))
