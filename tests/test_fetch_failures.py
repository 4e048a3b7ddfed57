"""A source that cannot be fetched: each way a mirror fails, judged once by one retry policy,
shared with the builds waiting on the same download, and reported as the build's `fetch`
step with exit code 3. Mirrors that fail are on this machine only: a closed port or a
server that never answers on the loopback, a TLS server with a certificate nobody trusts,
and a name that cannot resolve inside a private network namespace (tests/unreachable.py)."""

from __future__ import annotations

import http.server
import json
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import unreachable

from builder.cli import main
from builder.errors import EXIT_INPUT_UNAVAILABLE, FetchError
from builder.image.download import DEFAULT_POLICY, RetryPolicy
from builder.image.fetch import fetch_iso
from builder.report.summary import SUMMARY_FILE

REPO = Path(__file__).resolve().parent.parent
DIGEST = "sha256:" + "0" * 64


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("AZBUILD_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("AZBUILD_WORK_DIR", str(tmp_path / "work-root"))
    return tmp_path / "cache"


@contextmanager
def not_found_server() -> Iterator[tuple[str, list[str]]]:
    """A mirror that answers 404 to everything, counting the requests."""
    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            seen.append(self.path)
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", seen
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.mark.skipif(not unreachable.available(), reason="needs unshare -rn (user namespaces)")
def test_a_name_that_does_not_resolve_fails_at_once(tmp_path: Path) -> None:
    """DNS failure: permanent, no retry, for the ISO and for a checksum file alike."""
    code = f"""
import json, time
from builder.errors import FetchError
from builder.image.fetch import fetch_iso
for checksum in ({DIGEST!r}, "file:http://sums.invalid/SHA256SUMS"):
    started = time.monotonic()
    try:
        fetch_iso("http://mirror.invalid/debian-12.iso", checksum)
    except FetchError as exc:
        print(json.dumps({{"seconds": time.monotonic() - started, "message": exc.message,
                          "hint": exc.hint, "exit_code": exc.exit_code, "cause": exc.cause}}))
"""
    proc = unreachable.run_python(code, env={"AZBUILD_CACHE_DIR": str(tmp_path / "cache")},
                            timeout=60)
    assert proc.returncode == 0, proc.stderr
    iso, checksum = (json.loads(line) for line in proc.stdout.splitlines())
    for result in (iso, checksum):
        assert result["seconds"] < 5, result
        assert result["exit_code"] == EXIT_INPUT_UNAVAILABLE and result["cause"] == "dns"
        assert ".part" not in result["hint"]
    assert iso["message"].startswith(
        "cannot fetch the ISO http://mirror.invalid/debian-12.iso: the host name "
        "mirror.invalid does not resolve (DNS: ")
    assert "DNS" in iso["hint"] and "set source.iso to the local file" in iso["hint"]
    assert "checksum file http://sums.invalid/SHA256SUMS" in checksum["message"]
    assert "sums.invalid does not resolve" in checksum["message"]
    assert "source.checksum" in checksum["hint"]
    assert "attempt" not in proc.stderr  # no retry was logged


def test_a_closed_port_is_retried_within_the_policy_then_fails() -> None:
    url = f"http://127.0.0.1:{unreachable.closed_port()}/debian-12.iso"
    policy = RetryPolicy(first_delay=0.05)
    started = time.monotonic()
    with pytest.raises(FetchError) as err:
        fetch_iso(url, DIGEST, policy=policy)
    assert time.monotonic() - started < policy.bound()
    assert err.value.exit_code == EXIT_INPUT_UNAVAILABLE and err.value.cause == "connection"
    assert err.value.message == (
        f"cannot fetch the ISO {url}: the server {url.split('/')[2]} cannot be reached or "
        f"failed ({policy.attempts} attempts failed over 0s; the last: connection refused)")
    assert err.value.hint is not None and "try again later" in err.value.hint
    assert ".part" not in err.value.hint


def test_a_server_that_never_answers_times_out_per_attempt() -> None:
    policy = RetryPolicy(attempts=2, first_delay=0.01, timeout=0.5)
    with unreachable.silent_server() as (port, accepted):
        url = f"http://127.0.0.1:{port}"
        started = time.monotonic()
        with pytest.raises(FetchError) as err:
            fetch_iso(f"{url}/debian-12.iso", DIGEST, policy=policy)
        seconds = time.monotonic() - started
    assert 2 * policy.timeout <= seconds < policy.bound() + 1
    assert len(accepted) == 2
    assert err.value.cause == "timeout" and "no answer within the timeout" in err.value.message


def test_the_default_policys_bound_is_the_documented_one() -> None:
    bound = DEFAULT_POLICY.bound()
    text = (REPO / "docs" / "iso.md").read_text()
    assert f"{bound:.0f} s" in text
    assert f"{DEFAULT_POLICY.attempts} attempts" in text
    assert f"{DEFAULT_POLICY.timeout:.0f} s" in text


def test_a_tls_failure_is_permanent(tmp_path: Path) -> None:
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=untrusted.test", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    handshakes: list[int] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

    class Server(http.server.ThreadingHTTPServer):
        def get_request(self) -> tuple[socket.socket, object]:
            conn, addr = super().get_request()
            handshakes.append(1)
            return context.wrap_socket(conn, server_side=True,
                                       do_handshake_on_connect=False), addr

        def handle_error(self, request: object, client_address: object) -> None:
            pass  # the client refuses the certificate: expected

    httpd = Server(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
    try:
        url = f"https://127.0.0.1:{httpd.server_address[1]}/debian-12.iso"
        with pytest.raises(FetchError) as err:
            fetch_iso(url, DIGEST, policy=RetryPolicy(first_delay=0.01))
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert err.value.cause == "tls" and len(handshakes) == 1
    assert "the TLS connection to 127.0.0.1" in err.value.message
    assert "(certificate not trusted: self-signed certificate)" in err.value.message
    assert err.value.hint is not None and "certificate is not trusted" in err.value.hint


def test_builds_waiting_on_a_failing_download_get_its_answer(cache: Path) -> None:
    """The first build holds the download's lock while it tries; the one that waited for
    it gets the same answer without trying again. A build that asks afterwards tries."""
    policy = RetryPolicy(attempts=2, first_delay=0.01, timeout=0.5)
    errors: dict[str, FetchError] = {}

    def fetch(who: str) -> None:
        try:
            fetch_iso(f"{url}/debian-12.iso", DIGEST, policy=policy)
        except FetchError as exc:
            errors[who] = exc

    with unreachable.silent_server() as (port, accepted):
        url = f"http://127.0.0.1:{port}"
        first = threading.Thread(target=fetch, args=("first",))
        first.start()
        time.sleep(0.2)  # the first holds the lock by now
        second = threading.Thread(target=fetch, args=("second",))
        second.start()
        first.join(30)
        second.join(30)
        assert len(accepted) == policy.attempts  # the first build's attempts only
        assert errors["second"].message == (errors["first"].message
                                            + " (the answer of the build this one waited for)")
        assert errors["second"].exit_code == EXIT_INPUT_UNAVAILABLE
        assert errors["second"].hint == errors["first"].hint
        fetch("later")
        assert len(accepted) == 2 * policy.attempts
    assert not list((cache / "iso").glob("*.part"))


def _iso_template(directory: Path, name: str, iso: str) -> Path:
    path = directory / f"{name}.toml"
    path.write_text(f'name = "{name}"\n[source]\niso = "{iso}"\nchecksum = "{DIGEST}"\n'
                    '[distro]\nname = "debian"\nversion = "12"\n[vm]\naccelerator = "tcg"\n'
                    f'[output]\ndirectory = "{directory}/out/{name}"\n')
    return path


def test_a_build_whose_iso_is_unavailable_fails_in_step_fetch_with_exit_3(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with not_found_server() as (url, seen):
        template = _iso_template(tmp_path, "t", f"{url}/debian-12.iso")
        assert main(["build", str(template)]) == EXIT_INPUT_UNAVAILABLE
    assert seen == ["/debian-12.iso"]
    err = capsys.readouterr().err
    assert f"error: cannot fetch the ISO {url}/debian-12.iso: the server " in err
    assert "answered HTTP 404" in err and "hint: check the URL" in err
    manifest = json.loads((tmp_path / "out" / "t" / "manifest.json").read_text())
    assert manifest["failure"]["step"] == "fetch"
    assert manifest["failure"]["exit_code"] == EXIT_INPUT_UNAVAILABLE
    assert list(manifest["steps"]) == ["prepare", "fetch"]


def test_several_builds_sharing_an_unavailable_iso_exit_3(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with not_found_server() as (url, _seen):
        templates = [str(_iso_template(tmp_path, name, f"{url}/debian-12.iso"))
                     for name in ("a", "b")]
        assert main(["build", *templates, "--jobs", "2"]) == EXIT_INPUT_UNAVAILABLE
    summary = json.loads((tmp_path / "out" / SUMMARY_FILE).read_text())
    assert summary["exit_code"] == EXIT_INPUT_UNAVAILABLE
    assert [(b["failing_step"], b["exit_code"]) for b in summary["builds"]] == [
        ("fetch", EXIT_INPUT_UNAVAILABLE)] * 2


def test_a_disk_images_checksum_file_that_is_unavailable_fails_in_step_fetch(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = tmp_path / "cloud.raw"
    image.write_bytes(bytes(1024 * 1024))
    with not_found_server() as (url, seen):
        template = tmp_path / "t.toml"
        template.write_text(
            f'name = "t"\n[source]\ndisk_image = "{image}"\n'
            f'checksum = "file:{url}/SHA256SUMS"\n[distro]\nname = "debian"\n'
            f'version = "12"\n[output]\ndirectory = "{tmp_path}/out"\n')
        assert main(["build", str(template)]) == EXIT_INPUT_UNAVAILABLE
    assert seen == ["/SHA256SUMS"]
    assert f"cannot fetch the checksum file {url}/SHA256SUMS" in capsys.readouterr().err
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["failure"]["step"] == "fetch"
    assert list(manifest["steps"]) == ["prepare", "fetch"]
