"""fetch_iso against a real HTTP server on 127.0.0.1 that can drop connections and answer 503."""

from __future__ import annotations

import hashlib
import http.server
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from builder.errors import EXIT_INPUT_UNAVAILABLE, BuildError, FetchError, UsageError
from builder.image.download import RetryPolicy
from builder.image.fetch import fetch_iso, parse_checksum_file

PAYLOAD = os.urandom(3 * 1024 * 1024 + 123)  # a few chunks, not a multiple of the chunk size
SHA256 = hashlib.sha256(PAYLOAD).hexdigest()
SHA512 = hashlib.sha512(PAYLOAD).hexdigest()
FAST = RetryPolicy(first_delay=0.01)  # the default policy, without its pauses


@dataclass
class Server:
    url: str
    files: dict[str, bytes]
    # Per-request faults, consumed in order: "503", or an int = drop after that many bytes.
    faults: list[str | int] = field(default_factory=list)
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    ignore_range: bool = False

    def hits(self, path: str) -> list[str | None]:
        return [rng for p, rng in self.requests if p == path]


@pytest.fixture
def server() -> Iterator[Server]:
    state = Server(url="", files={"/img/test.iso": PAYLOAD})

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            state.requests.append((self.path, self.headers.get("Range")))
            fault = state.faults.pop(0) if state.faults else None
            if fault == "503":
                self.send_response(503)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            data = state.files.get(self.path)
            if data is None:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            start = 0
            rng = None if state.ignore_range else self.headers.get("Range")
            if rng:
                start = int(rng.removeprefix("bytes=").split("-")[0])
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            body = data[start:]
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()
            if isinstance(fault, int):
                self.wfile.write(body[:fault])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(2)
                return
            self.wfile.write(body)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("AZBUILD_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_download_lands_in_content_addressed_cache(server: Server, cache: Path) -> None:
    path = fetch_iso(f"{server.url}/img/test.iso", f"sha256:{SHA256}")
    assert path == cache / "iso" / f"sha256-{SHA256}.iso"
    assert path.read_bytes() == PAYLOAD
    assert not list((cache / "iso").glob("*.part"))


def test_cache_hit_makes_no_second_request(server: Server) -> None:
    url = f"{server.url}/img/test.iso"
    first = fetch_iso(url, f"sha512:{SHA512}")
    second = fetch_iso(url, f"sha512:{SHA512.upper()}")
    assert first == second
    assert len(server.hits("/img/test.iso")) == 1


def test_concurrent_builds_download_an_iso_once(server: Server, cache: Path) -> None:
    """Several builds (threads here: each opens its own lock file description, as separate
    processes do) ask for the same ISO at once: one downloads it under the cache entry's
    lock, the others wait and take the cached file."""
    url = f"{server.url}/img/test.iso"
    barrier = threading.Barrier(4)
    paths: list[Path] = []

    def fetch() -> None:
        barrier.wait()
        paths.append(fetch_iso(url, f"sha256:{SHA256}"))

    threads = [threading.Thread(target=fetch) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert paths == [cache / "iso" / f"sha256-{SHA256}.iso"] * 4
    assert paths[0].read_bytes() == PAYLOAD
    assert len(server.hits("/img/test.iso")) == 1
    assert not list((cache / "iso").glob("*.part"))


def test_resume_after_dropped_connection(server: Server) -> None:
    server.faults = [1_500_000]
    path = fetch_iso(f"{server.url}/img/test.iso", f"sha256:{SHA256}", policy=FAST)
    assert path.read_bytes() == PAYLOAD
    ranges = server.hits("/img/test.iso")
    assert ranges[0] is None
    assert len(ranges) == 2
    resumed_at = int(str(ranges[1]).removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_at <= 1_500_000


def test_server_without_range_support_restarts_cleanly(server: Server) -> None:
    server.ignore_range = True
    server.faults = [2_000_000]
    path = fetch_iso(f"{server.url}/img/test.iso", f"sha256:{SHA256}", policy=FAST)
    assert path.read_bytes() == PAYLOAD  # not the first 2 MB twice
    assert len(server.hits("/img/test.iso")) == 2


def test_retry_on_503_then_succeed(server: Server) -> None:
    server.faults = ["503", "503"]
    path = fetch_iso(f"{server.url}/img/test.iso", f"sha256:{SHA256}", policy=FAST)
    assert path.read_bytes() == PAYLOAD
    assert len(server.hits("/img/test.iso")) == 3


def test_gives_up_after_the_policys_attempts(server: Server, cache: Path) -> None:
    server.faults = ["503"] * 10
    with pytest.raises(FetchError, match="3 attempts failed") as err:
        fetch_iso(f"{server.url}/img/test.iso", f"sha256:{SHA256}",
                  policy=RetryPolicy(attempts=3, first_delay=0.01))
    assert len(server.hits("/img/test.iso")) == 3
    assert err.value.exit_code == EXIT_INPUT_UNAVAILABLE and "HTTP 503" in err.value.message
    assert err.value.hint is not None and ".part" not in err.value.hint  # nothing was kept


def test_a_failed_download_keeps_its_part_and_the_hint_says_where(server: Server,
                                                                   cache: Path) -> None:
    server.faults = [1_500_000, "503", "503", "503"]
    with pytest.raises(FetchError) as err:
        fetch_iso(f"{server.url}/img/test.iso", f"sha256:{SHA256}",
                  policy=RetryPolicy(attempts=3, first_delay=0.01))
    part = cache / "iso" / f"sha256-{SHA256}.iso.part"
    assert 0 < part.stat().st_size <= 1_500_000
    assert err.value.hint is not None and f"kept in {part}" in err.value.hint


def test_partial_file_from_earlier_run_is_resumed(server: Server, cache: Path) -> None:
    part = cache / "iso" / f"sha256-{SHA256}.iso.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(PAYLOAD[:1000])
    fetch_iso(f"{server.url}/img/test.iso", f"sha256:{SHA256}")
    assert server.hits("/img/test.iso") == ["bytes=1000-"]


def test_mismatch_removes_download_and_names_both_digests(server: Server, cache: Path) -> None:
    wrong = "ab" * 32
    with pytest.raises(BuildError) as err:
        fetch_iso(f"{server.url}/img/test.iso", f"sha256:{wrong}")
    assert wrong in str(err.value) and SHA256 in str(err.value)
    leftovers = [p.name for p in (cache / "iso").iterdir() if not p.name.endswith(".lock")]
    assert leftovers == []


def test_http_404_is_not_retried(server: Server) -> None:
    with pytest.raises(FetchError, match="HTTP 404") as err:
        fetch_iso(f"{server.url}/img/missing.iso", f"sha256:{SHA256}", policy=FAST)
    assert len(server.hits("/img/missing.iso")) == 1
    assert err.value.exit_code == EXIT_INPUT_UNAVAILABLE
    assert err.value.hint is not None and "moved or removed" in err.value.hint
    assert "source.iso to the local file" in err.value.hint


def test_gnu_checksum_file_over_http(server: Server) -> None:
    server.files["/img/SHA256SUMS"] = (
        f"{'0' * 64}  other.iso\n{SHA256} *test.iso\n".encode()
    )
    path = fetch_iso(f"{server.url}/img/test.iso", f"file:{server.url}/img/SHA256SUMS")
    assert path.name == f"sha256-{SHA256}.iso"


def test_bsd_checksum_file_local(server: Server, tmp_path: Path) -> None:
    sums = tmp_path / "CHECKSUM"
    sums.write_text(
        "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\n"
        f"# test.iso: {len(PAYLOAD)} bytes\nSHA256 (boot.iso) = {'1' * 64}\n"
        f"SHA512 (test.iso) = {SHA512}\n"
    )
    path = fetch_iso(f"{server.url}/img/test.iso", f"file:{sums}")
    assert path.name == f"sha512-{SHA512}.iso"


def test_checksum_file_without_the_iso_lists_what_it_has(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"no checksum for 'test.iso'.*a.iso, b.iso"):
        parse_checksum_file(f"{'0' * 64}  a.iso\n{'1' * 64}  ./b.iso\n", "test.iso")


def test_local_path_verified_in_place(tmp_path: Path, cache: Path) -> None:
    iso = tmp_path / "local.iso"
    iso.write_bytes(PAYLOAD)
    assert fetch_iso(str(iso), f"sha256:{SHA256}") == iso
    assert not (cache / "iso").exists()
    with pytest.raises(UsageError, match="checksum mismatch") as info:
        fetch_iso(str(iso), f"sha256:{'0' * 64}")
    assert info.value.message == (f"checksum mismatch for {iso}:\n"
                                  f"  expected sha256:{'0' * 64}\n"
                                  f"  actual   sha256:{SHA256}")
    assert iso.exists()  # a user's own file is never deleted
    with pytest.raises(UsageError, match="not found"):
        fetch_iso(str(tmp_path / "nope.iso"), f"sha256:{SHA256}")


def test_bad_checksum_syntax() -> None:
    with pytest.raises(UsageError):
        fetch_iso("/x.iso", "md5:abc")
    with pytest.raises(UsageError):
        fetch_iso("/x.iso", "sha256:1234")
