"""publish fails fast when Azure cannot be reached, says which host and whether it could not
be reached or refused the credentials, reports long waits, and keeps stderr JSON under
--log-format json (the Azure SDK's own records included). Endpoints that fail are on this
machine only: a closed port or a server that never answers on the loopback, Azurite for a
service that refuses, and addresses that drop every packet inside a private network
namespace (tests/unreachable.py), where host names map to them through a private /etc/hosts."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import unreachable
from sparse_vhd import make_sparse_vhd

from builder.cli import main
from builder.errors import UsageError
from builder.publish.auth import CONNECTION_STRING_ENV
from builder.publish.reach import UNREACHABLE_BOUND, token_error
from builder.units import MiB
from builder.waits import WaitBoard

REPO = Path(__file__).resolve().parent.parent
AZBUILD = REPO / ".venv" / "bin" / "azbuild"
SAS = "sv=2022-11-02&sr=c&sp=racwd&sig=TestSignature123%3D"
needs_netns = pytest.mark.skipif(not unreachable.available(), reason="needs unshare -rn")
IDENTITY_ENV = {"AZURE_CLIENT_ID": "00000000-0000-0000-0000-000000000001",
                "AZURE_TENANT_ID": "00000000-0000-0000-0000-000000000002",
                "AZURE_CLIENT_SECRET": "Sentinel-Client-Secret-42"}


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "img.vhd"
    make_sparse_vhd(path, 32 * MiB, 4 * MiB, extent=4 * MiB, zero_extent=0)
    return path


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k != CONNECTION_STRING_ENV and not k.startswith("AZURE_")}
    return {**env, **extra}


def _json_records(stderr: str) -> list[dict[str, Any]]:
    """Every line must be a JSON object: a line that is not fails the test here."""
    return [json.loads(line) for line in stderr.splitlines()]


def _publish_in_namespace(image: Path, url: str, env: dict[str, str],
                          hosts: Path | None = None) -> tuple[subprocess.CompletedProcess[str],
                                                              float]:
    argv = [str(AZBUILD), "--log-format", "json", "publish", str(image), "--container-url",
            url, "--force"]
    if hosts is not None:  # a mount namespace too, for a private /etc/hosts
        argv = ["unshare", "-m", "sh", "-c", 'mount --bind "$0" /etc/hosts && exec "$@"',
                str(hosts), *argv]
    started = time.monotonic()
    proc = unreachable.run(argv, env=env, timeout=60)
    return proc, time.monotonic() - started


@needs_netns
def test_an_unreachable_storage_endpoint_fails_within_15_s(image: Path) -> None:
    proc, seconds = _publish_in_namespace(image, f"https://{unreachable.BLACKHOLE}/images?{SAS}",
                                          _env())
    assert proc.returncode == 2, proc.stderr
    assert seconds <= 15, seconds
    records = _json_records(proc.stderr)
    assert records[-1]["message"] == (
        f"cannot reach {unreachable.BLACKHOLE} (the storage service at https://{unreachable.BLACKHOLE}"
        "/images): no connection within 4s")
    assert "refused" not in records[-1]["message"]
    assert "TestSignature123" not in proc.stderr


@needs_netns
def test_credential_discovery_that_reaches_nothing_says_so_within_15_s(
    image: Path, tmp_path: Path
) -> None:
    """A service principal in the environment; its authority drops every packet. The
    error names the host that could not be reached, not refused credentials, and the
    Azure SDK's own warnings come out as JSON records, the client secret masked."""
    hosts = tmp_path / "hosts"
    hosts.write_text(f"127.0.0.1 localhost\n{unreachable.BLACKHOLE_2} login.microsoftonline.com\n")
    proc, seconds = _publish_in_namespace(image, f"https://{unreachable.BLACKHOLE}/images",
                                          _env(**IDENTITY_ENV), hosts)
    assert proc.returncode == 2, proc.stderr
    assert seconds <= 15, seconds
    records = _json_records(proc.stderr)
    error = records[-1]
    assert error["message"] == ("cannot reach login.microsoftonline.com to get a token: "
                                "no connection within 4s")
    assert "refused" not in error["message"]
    sdk = [r for r in records if r["logger"].startswith("azure.identity")]
    assert sdk and all(r["level"] == "warning" for r in sdk)
    assert IDENTITY_ENV["AZURE_CLIENT_SECRET"] not in proc.stderr


@needs_netns
def test_an_unreachable_arm_endpoint_fails_within_15_s(tmp_path: Path) -> None:
    code = f"""
import json, time
from azure.core.credentials import AccessToken
from builder.errors import UsageError
from builder.publish.arm import ImageFacts, compute_client, create_gallery_version
from builder.publish.entries import AzureGallery

class Token:
    def get_token(self, *scopes, **kwargs):
        return AccessToken("t", int(time.time()) + 3600)

entry = AzureGallery.model_validate({{
    "type": "azure-gallery", "container_url": "https://acct.blob.core.windows.net/images",
    "storage_account_id": "/subscriptions/s/resourceGroups/rg/providers/x/a",
    "subscription_id": "s", "resource_group": "rg", "location": "westeurope",
    "gallery": "gal", "image_definition": "debian-12", "version": "1.0.0"}})
facts = ImageFacts("t", "0" * 64, "0" * 64, "uefi", 32 * 1024 * 1024)
compute = compute_client("s", credential=Token(), base_url="https://{unreachable.BLACKHOLE}")
started = time.monotonic()
try:
    create_gallery_version(compute, entry, facts, "https://acct/images/x.vhd", "cleanup", {{}})
except UsageError as exc:
    print(json.dumps({{"seconds": time.monotonic() - started, "message": exc.message}}))
"""
    proc = unreachable.run_python(code, env=_env(), timeout=60)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["seconds"] <= UNREACHABLE_BOUND <= 15
    assert result["message"] == (f"reading image definition gal/debian-12: cannot reach "
                                 f"{unreachable.BLACKHOLE}: no connection within 4s")


def test_cannot_reach_and_credentials_refused_are_different_messages(
    azurite: Any, image: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(CONNECTION_STRING_ENV, raising=False)
    azurite.service().create_container("reach")
    host = f"127.0.0.1:{azurite.port}"
    refused_url = f"{azurite.account_url}/reach?{SAS}"
    assert main(["publish", str(image), "--container-url", refused_url, "--force"]) == 2
    err = capsys.readouterr().err
    assert f"error: credentials refused by {host} (the storage service at " in err
    port = unreachable.closed_port()
    started = time.monotonic()
    closed_url = f"http://127.0.0.1:{port}/devstoreaccount1/reach?{SAS}"
    assert main(["publish", str(image), "--container-url", closed_url, "--force"]) == 2
    assert time.monotonic() - started <= 15
    err = capsys.readouterr().err
    assert f"error: cannot reach 127.0.0.1:{port} (the storage service at " in err
    assert "connection refused" in err and "refused by" not in err


@pytest.mark.slow
def test_a_service_that_never_answers_is_waited_for_out_loud_then_given_up(
    image: Path
) -> None:
    """Each request waits READ_TIMEOUT (15 s) and is retried once; past 10 s the wait is
    logged with what it waits for."""
    with unreachable.silent_server() as (port, _accepted):
        proc = subprocess.run(
            [str(AZBUILD), "--log-format", "json", "publish", str(image), "--container-url",
             f"http://127.0.0.1:{port}/devstoreaccount1/silent?{SAS}", "--force"],
            capture_output=True, text=True, timeout=120, check=False, env=_env())
    assert proc.returncode == 2, proc.stderr
    records = _json_records(proc.stderr)
    waits = [r["message"] for r in records if r["message"].startswith("waiting for ")]
    assert waits and waits[0].startswith(
        f"waiting for an answer from 127.0.0.1:{port} (HEAD /devstoreaccount1/silent/img.vhd):"
        " 10s so far (bound 19s)")
    assert records[-1]["message"] == (
        f"127.0.0.1:{port} did not answer (the storage service at http://127.0.0.1:{port}"
        "/devstoreaccount1/silent): no answer within 15s")


def test_a_wait_board_reports_each_long_wait_then_every_interval() -> None:
    import logging

    seen: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    logger = logging.getLogger("test.waits")
    logger.addHandler(Collect())
    logger.setLevel(logging.INFO)
    logger.propagate = False
    board = WaitBoard(logger, first=0.3, every=0.4, poll=0.05)
    with board.waiting("a slow thing", 2.0), board.waiting("a quick thing", None):
        time.sleep(0.2)
    assert seen == []
    with board.waiting("a slow thing", 2.0):
        time.sleep(0.9)
    assert [m.split(":")[0] for m in seen] == ["waiting for a slow thing"] * 2
    assert seen[0].endswith("s so far (bound 2s)")


def test_a_token_failure_is_told_for_what_it_is() -> None:
    from azure.core.exceptions import ClientAuthenticationError

    exc = ClientAuthenticationError(message=(
        "DefaultAzureCredential failed to retrieve a token from the included credentials.\n"
        "Attempted credentials:\n\tEnvironmentCredential: Authentication failed: AADSTS7000215"
        ": Invalid client secret provided.\n\tManagedIdentityCredential: unavailable\n"
        "To mitigate this issue, please refer to the troubleshooting guidelines"))
    refused = token_error(exc, {"login.microsoftonline.com": 401}, {"10.0.0.1": "refused"})
    assert isinstance(refused, UsageError) and refused.message.startswith(
        "credentials refused by login.microsoftonline.com (HTTP 401): the identity could "
        "not get a token:\n    EnvironmentCredential: Authentication failed: AADSTS7000215")
    unreachable = token_error(exc, {}, {"login.microsoftonline.com": "failed to resolve"})
    assert unreachable.message == ("cannot reach login.microsoftonline.com to get a token: "
                                   "failed to resolve")
    nothing = token_error(exc, {}, {})
    assert nothing.message.startswith("no Azure credential found: DefaultAzureCredential "
                                      "tried:\n    EnvironmentCredential")
    assert nothing.hint is not None and "az login" in nothing.hint
