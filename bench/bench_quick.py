"""Quick bench for CI: the build's output handling, without a VM (the check's appliance aside).

    .venv/bin/python bench/bench_quick.py [--size 1GiB] [--data 128MiB] [--no-cloud]
                                          [--no-check] [--accelerator tcg] [--json FILE]

A guard against regressions, not a pass/fail timing test: it prints the figures (and
writes them as JSON with --json) and fails only if a piece fails or the two hashings
disagree. Inputs, sparse raw files in a temporary directory (--dir):

  synthetic  --size bytes, holes but for --data bytes of random data in 16 MiB pieces
  cloud      the cached Debian 12 cloud image (scripts/make-cloud-image.sh), converted to
             raw and grown to 4 GiB (examples/cloud-image.toml's disk_size) untimed; left
             out when it is not cached, or with --no-cloud

Pieces, each timed in a fresh process of its own so that its peak RSS is its own:

  export    the export step's RAW: atomic_output() + copy_sparse() of the input
  vhd       raw -> fixed VHD, the copy path (raw_to_vhd keep_raw=True)
  hash-old  the manifest's hashing before: every byte of the RAW and of the VHD read
  hash-sparse  both files hashed on their own, holes not read (lever 2 alone)
  hash-new  builder.image.digest.artifact_digests: holes not read, the VHD's digest derived
            from the RAW's (levers 1 and 2)
  check     the offline check (`azbuild check`) of the VHD: the cloud image's if there
            is one, else the synthetic one (whose guest checks then fail: it has no OS)
  check+hash  with --overlap: the check while hash-new runs on a background thread, as a
            build now does (lever 3); compare with check + hash-new

With --runs N, the hashing pieces (and with --overlap, check and check+hash) run N times,
their order rotating from round to round (the load of a shared machine hits all alike);
the figures are the medians, and every sample is kept in the JSON.

The page cache is not dropped (no root needed): figures are warm-cache figures.
Runs in well under 2 minutes on the project's machine kind under TCG.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from builder.image.convert import raw_to_vhd  # noqa: E402
from builder.image.digest import (  # noqa: E402
    CHUNK,
    BackgroundDigests,
    artifact_digests,
    sha256_file,
)
from builder.image.disk import atomic_output, copy_sparse  # noqa: E402
from builder.paths import cache_dir  # noqa: E402
from builder.units import GiB, MiB, parse_size  # noqa: E402
from builder.vm.qemu_img import convert_to_raw_argv  # noqa: E402

PIECES = ("export", "vhd", "hash-old", "hash-sparse", "hash-new", "check", "check+hash")
HASHES = ("hash-old", "hash-sparse", "hash-new")
# scripts/make-cloud-image.sh caches it as images/debian-12-cloud-<key of its inputs>.qcow2.
CLOUD_IMAGES = "images/debian-12-cloud-*.qcow2"
CLOUD_DISK_SIZE = 4 * GiB


def make_synthetic(path: Path, size: int, data: int) -> None:
    piece = 16 * MiB
    count = max(data // piece, 1)
    stride = size // count // MiB * MiB
    with open(path, "wb") as f:
        f.truncate(size)
        for n in range(count):
            f.seek(n * stride)
            f.write(os.urandom(min(piece, size - n * stride)))


def make_cloud(image: Path, path: Path) -> None:
    subprocess.run(convert_to_raw_argv(image, "qcow2", path), check=True)
    # examples/cloud-image.toml's disk_size: the work disk a build exports
    os.truncate(path, max(path.stat().st_size, CLOUD_DISK_SIZE))


# --- the pieces, run in a child process -----------------------------------------------------


def piece_export(src: Path, work: Path) -> dict[str, Any]:
    with atomic_output(work / "out.raw", force=True) as tmp:
        fd = os.open(tmp, os.O_WRONLY)
        try:
            copy_sparse(src, fd)
        finally:
            os.close(fd)
    return {}


def piece_vhd(src: Path, work: Path) -> dict[str, Any]:
    raw_to_vhd(work / "out.raw", work / "out.vhd", keep_raw=True, force=True)
    return {}


def full_read_sha256(path: Path) -> str:
    """What builder.manifest did before: read and hash every byte, holes included."""
    digest = hashlib.sha256()
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as f:
        while count := f.readinto(buffer):
            digest.update(view[:count])
    return digest.hexdigest()


def piece_hash_old(src: Path, work: Path) -> dict[str, Any]:
    return {"raw": full_read_sha256(work / "out.raw"), "vhd": full_read_sha256(work / "out.vhd")}


def piece_hash_sparse(src: Path, work: Path) -> dict[str, Any]:
    return {"raw": sha256_file(work / "out.raw"), "vhd": sha256_file(work / "out.vhd")}


def piece_hash_new(src: Path, work: Path) -> dict[str, Any]:
    raw, vhd = work / "out.raw", work / "out.vhd"
    digests = artifact_digests(raw, vhd, vhd_holds_raw=True)
    return {"raw": digests[raw].sha256, "vhd": digests[vhd].sha256}


def piece_check(src: Path, work: Path, accelerator: str | None = None) -> dict[str, Any]:
    from builder.errors import UsageError
    from builder.offline_check.check import run_check

    try:
        report = run_check(work / "out.vhd", skip=[],
                           accelerator="kvm" if accelerator == "kvm" else "tcg" if accelerator
                           else None)
    except UsageError as exc:
        # The synthetic image has no OS: the appliance's time is still the figure.
        return {"ready": False, "error": str(exc).splitlines()[0]}
    return {"ready": report.ready,
            "failed": [c.id for c in report.checks if c.status == "fail"]}


def piece_check_and_hash(src: Path, work: Path, accelerator: str | None = None
                         ) -> dict[str, Any]:
    digests = BackgroundDigests({"raw": work / "out.raw", "vhd": work / "out.vhd"},
                                vhd_holds_raw=True)
    found = piece_check(src, work, accelerator)
    waited = time.monotonic()
    digests.wait()
    return {**found, "hash_seconds": round(digests.seconds, 3),
            "waited_after_check_seconds": round(time.monotonic() - waited, 3)}


RUNNERS: dict[str, Callable[..., dict[str, Any]]] = {
    "export": piece_export, "vhd": piece_vhd, "hash-old": piece_hash_old,
    "hash-sparse": piece_hash_sparse, "hash-new": piece_hash_new, "check": piece_check,
    "check+hash": piece_check_and_hash,
}


def run_piece_here(name: str, src: Path, work: Path, accelerator: str | None) -> None:
    """The child's side: run one piece, print its figures as one JSON line."""
    started = time.monotonic()
    extra = (RUNNERS[name](src, work, accelerator) if name.startswith("check")
             else RUNNERS[name](src, work))
    seconds = time.monotonic() - started
    # ru_maxrss is in KiB on Linux; children: qemu-img, the appliance's qemu.
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps({"seconds": round(seconds, 3), "peak_rss_mib": round(own, 1),
                      "children_peak_rss_mib": round(children, 1), **extra}))


def run_piece(name: str, src: Path, work: Path, accelerator: str | None) -> dict[str, Any]:
    argv = [sys.executable, __file__, "--piece", name, "--src", str(src), "--work", str(work)]
    if accelerator:
        argv += ["--accelerator", accelerator]
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"bench_quick: piece {name} failed:\n{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


# --- the parent ----------------------------------------------------------------------------


def bench(args: argparse.Namespace) -> dict[str, dict[str, dict[str, Any]]]:
    figures: dict[str, dict[str, dict[str, Any]]] = {}
    root = Path(tempfile.mkdtemp(prefix="azbuild-bench-quick-", dir=args.dir))
    try:
        inputs: dict[str, Path] = {}
        inputs["synthetic"] = root / "synthetic.raw"
        make_synthetic(inputs["synthetic"], args.size, args.data)
        cloud = args.cloud or newest_cloud_image()
        if not args.no_cloud and cloud is not None and cloud.is_file():
            inputs["cloud"] = root / "cloud.raw"
            make_cloud(cloud, inputs["cloud"])
        check_on = "cloud" if "cloud" in inputs else "synthetic"
        for name, src in inputs.items():
            work = root / f"{name}.d"
            work.mkdir()
            figures[name] = {"input": {"size": src.stat().st_size,
                                       "allocated": src.stat().st_blocks * 512}}
            for piece in ("export", "vhd"):
                figures[name][piece] = run_piece(piece, src, work, args.accelerator)
            samples: dict[str, list[dict[str, Any]]] = {h: [] for h in HASHES}
            for round_ in range(args.runs):
                for k in range(len(HASHES)):
                    piece = HASHES[(round_ + k) % len(HASHES)]
                    samples[piece].append(run_piece(piece, src, work, args.accelerator))
            for piece, runs in samples.items():
                figures[name][piece] = median_of(runs)
            digests = {(r["raw"], r["vhd"]) for runs in samples.values() for r in runs}
            if len(digests) != 1:
                raise SystemExit(f"bench_quick: the hashings disagree on {name}: {digests}")
            if not args.no_check and name == check_on:
                checks = ("check", "check+hash") if args.overlap else ("check",)
                samples = {c: [] for c in checks}
                for round_ in range(args.runs if args.overlap else 1):
                    for k in range(len(checks)):
                        piece = checks[(round_ + k) % len(checks)]
                        samples[piece].append(run_piece(piece, src, work, args.accelerator))
                for piece, runs in samples.items():
                    figures[name][piece] = median_of(runs)
            shutil.rmtree(work)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return figures


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The first run's other fields, with the median of each figure and every sample."""
    row = dict(runs[0])
    for key in ("seconds", "peak_rss_mib", "children_peak_rss_mib"):
        row[key] = statistics.median(r[key] for r in runs)
    row["samples"] = [r["seconds"] for r in runs]
    return row


def newest_cloud_image() -> Path | None:
    """The cloud image scripts/make-cloud-image.sh cached last, if any."""
    found = sorted(cache_dir().glob(CLOUD_IMAGES), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def report(figures: dict[str, dict[str, dict[str, Any]]]) -> str:
    lines = ["| input | piece | seconds | peak RSS (MiB) | children's peak RSS (MiB) | samples |",
             "|---|---|---|---|---|---|"]
    for name, pieces in figures.items():
        for piece, row in pieces.items():
            if piece == "input":
                continue
            lines.append(f"| {name} | {piece} | {row['seconds']:.2f} | {row['peak_rss_mib']:.0f}"
                         f" | {row['children_peak_rss_mib']:.0f}"
                         f" | {' '.join(f'{x:.2f}' for x in row.get('samples', []))} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=parse_size, default=parse_size("1GiB"))
    parser.add_argument("--data", type=parse_size, default=parse_size("128MiB"))
    parser.add_argument("--dir", type=Path, default=None, help="where the inputs go")
    parser.add_argument("--cloud", type=Path, default=None,
                        help="the cloud image to use (default: the newest cached one)")
    parser.add_argument("--no-cloud", action="store_true", help="the synthetic input only")
    parser.add_argument("--no-check", action="store_true", help="leave the check out")
    parser.add_argument("--accelerator", choices=("kvm", "tcg"), default="tcg",
                        help="the check's appliance accelerator (default tcg)")
    parser.add_argument("--runs", type=int, default=1, help="rounds of the hashing pieces")
    parser.add_argument("--overlap", action="store_true",
                        help="also time the check with the hashing on a background thread")
    parser.add_argument("--json", type=Path, help="also write the figures there")
    parser.add_argument("--piece", choices=PIECES, help=argparse.SUPPRESS)
    parser.add_argument("--src", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.piece:
        run_piece_here(args.piece, args.src, args.work, args.accelerator)
        return 0
    started = time.monotonic()
    figures = bench(args)
    print(report(figures))
    print(f"\ntotal {time.monotonic() - started:.1f} s")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
