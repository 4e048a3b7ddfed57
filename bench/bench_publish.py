"""Benchmark: uploading a sparse fixed VHD as a page blob to Azurite on loopback,
`azbuild publish` against azure-storage-blob's own `upload_blob` of the whole file.

    .venv/bin/python bench/bench_publish.py [--size 8GiB] [--data 1GiB] [--jobs 1,4,8,16]

Input: a fixed VHD (tests/sparse_vhd.py) of --size virtual bytes holding --data bytes of
random data in 64 MiB runs spread over the disk, each followed by 8 MiB of written zeros
(allocated, all-zero pages); the rest are holes. Azurite (scripts/setup.sh installs it)
runs on 127.0.0.1 with its data in a temporary directory. Contenders:

  azbuild publish   publish_blob() at each --jobs: local sha256, create, upload (holes not
                    read, zero pages skipped, Content-MD5 on each Put Page, footer last),
                    read-back comparison, metadata. Wall time includes all of it.
  upload_blob       BlobClient.upload_blob(file, blob_type=PageBlob) at max_concurrency 1
                    (its default) and 8: reads the whole file, skips all-zero 4 MiB chunks,
                    no Content-MD5, no verification.

Bytes sent are counted the same way for both: the Content-Length of every Put Page request,
seen through azure-core's raw_request_hook. Prints a Markdown report.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import azurite  # noqa: E402
from sparse_vhd import make_sparse_vhd  # noqa: E402

from builder.image.disk import allocated_bytes  # noqa: E402
from builder.publish.auth import CONNECTION_STRING_ENV  # noqa: E402
from builder.publish.blob import publish_blob  # noqa: E402
from builder.units import format_size, parse_size  # noqa: E402


class PutCounter:
    """Bytes and requests of Put Page, counted from the requests the SDK sends."""

    def __init__(self) -> None:
        self.bytes = 0
        self.requests = 0
        self._lock = threading.Lock()

    def __call__(self, request: Any) -> None:
        http = request.http_request
        if http.method == "PUT" and "comp=page" in http.url:
            with self._lock:
                self.bytes += int(http.headers.get("Content-Length", 0))
                self.requests += 1


def bench_azbuild(image: Path, service: azurite.Azurite, jobs: int) -> dict[str, Any]:
    counter = PutCounter()
    started = time.monotonic()
    result = publish_blob(image, f"{service.account_url}/bench", f"azbuild-{jobs}.vhd",
                          jobs=jobs, force=True,
                          env={CONNECTION_STRING_ENV: service.connection_string},
                          raw_request_hook=counter)
    wall = time.monotonic() - started
    return {"contender": f"azbuild publish --jobs {jobs}", "wall": wall,
            "upload": result.stats.seconds, "verify": result.verify_seconds,
            "sent": counter.bytes, "requests": counter.requests, "verified": "yes"}


def bench_upload_blob(image: Path, service: azurite.Azurite, concurrency: int
                      ) -> dict[str, Any]:
    from azure.storage.blob import BlobClient

    counter = PutCounter()
    blob = BlobClient.from_connection_string(service.connection_string, "bench",
                                             f"sdk-{concurrency}.vhd",
                                             raw_request_hook=counter)
    started = time.monotonic()
    with open(image, "rb") as f:
        blob.upload_blob(f, blob_type="PageBlob", length=image.stat().st_size,
                         max_concurrency=concurrency, overwrite=True)
    wall = time.monotonic() - started
    return {"contender": f"upload_blob max_concurrency={concurrency}", "wall": wall,
            "upload": wall, "verify": 0.0, "sent": counter.bytes,
            "requests": counter.requests, "verified": "no"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="8GiB")
    parser.add_argument("--data", default="1GiB")
    parser.add_argument("--jobs", default="1,4,8,16")
    parser.add_argument("--sdk-concurrency", default="1,8")
    parser.add_argument("--dir", default=None, help="where the image and Azurite's data go")
    args = parser.parse_args()
    size, data = parse_size(args.size), parse_size(args.data)
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench-publish-") as tmp:
        work = Path(tmp)
        image = work / "bench.vhd"
        written = make_sparse_vhd(image, size, data)
        allocated = allocated_bytes(image)
        (work / "azurite").mkdir()
        rows = []
        with azurite.running(work / "azurite") as service:
            container: Any = service.service()
            container.create_container("bench")
            for jobs in [int(j) for j in args.jobs.split(",")]:
                rows.append(bench_azbuild(image, service, jobs))
                print(f"done: {rows[-1]['contender']} {rows[-1]['wall']:.1f}s", file=sys.stderr)
            for concurrency in [int(c) for c in args.sdk_concurrency.split(",")]:
                rows.append(bench_upload_blob(image, service, concurrency))
                print(f"done: {rows[-1]['contender']} {rows[-1]['wall']:.1f}s", file=sys.stderr)
    load = os.getloadavg()
    version = subprocess.run([str(azurite.AZURITE_BIN), "--version"], capture_output=True,
                             text=True, check=False).stdout.strip()
    print(f"Image: fixed VHD, virtual size {format_size(size)}, {format_size(written)} of "
          f"non-zero data, {allocated / 2**20:.0f} MiB allocated. Azurite "
          f"{version} on 127.0.0.1; {os.cpu_count()} CPUs, "
          f"load average {load[0]:.1f} at the end; Python {platform.python_version()}.\n")
    print("| contender | bytes sent | Put Page requests | upload s | verify s | wall s | "
          "MiB/s of data sent | verified |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        rate = r["sent"] / r["upload"] / 2**20 if r["upload"] else 0
        print(f"| {r['contender']} | {r['sent']:,} | {r['requests']} | {r['upload']:.1f} | "
              f"{r['verify']:.1f} | {r['wall']:.1f} | {rate:.0f} | {r['verified']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
