"""Benchmark: the build's export step (RAW) against `cp --sparse=always` + `sync`.

    .venv/bin/python bench/bench_export.py [--runs 5] [--image QCOW2] [--dir DIR] [--keep]

Target (issue 3): from the guest powering off to the RAW being exported and synced, at
most 1.2 times `cp --sparse=always` of the same data followed by `sync`.

Inputs, both sparse raw files on the same filesystem as the outputs (as a build's work
disk and output directory are, by default):

  cloud   the bootable Debian 12 cloud image (scripts/make-cloud-image.sh, or --image),
          `qemu-img convert -O raw` once, then `truncate -s 4G` (the template's disk_size)
  random  an 8 GiB sparse file holding 1 GiB of random data in 16 MiB chunks spread
          evenly from start to end

Contenders, interleaved round by round (the starting one rotates, so drift on a shared
machine hits all alike):

  export    builder.steps.export.export() itself, on a context holding only what it reads
            (the work disk, output formats ["raw"], force): atomic_output() + copy_sparse()
            into the output directory, fsync of the file, rename, fsync of the directory
  cp        `cp --sparse=always SRC DST && sync DST` (subprocesses; exec cost included)
  in place  for completeness, the VHD when no RAW is kept:
            builder.image.convert.raw_to_vhd(src, dst, keep_raw=False, force=True); restored
            untimed after each run (truncate back, rename back)

Before every run: `sync` and `echo 3 > /proc/sys/vm/drop_caches` (root), so every
contender starts from the same cold page cache and is timed until its output is on disk.
Prints a Markdown report; exits 1 if a median ratio export/cp misses 1.2. The bench
directory is removed at the end unless --keep. Never run from the tests.
"""

from __future__ import annotations

import argparse
import errno
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from types import SimpleNamespace
from typing import cast

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from builder.context import BuildContext  # noqa: E402
from builder.image.convert import raw_to_vhd  # noqa: E402
from builder.image.disk import allocated_bytes  # noqa: E402
from builder.steps.export import export  # noqa: E402
from builder.units import GiB, MiB  # noqa: E402
from builder.vm.qemu_img import convert_to_raw_argv  # noqa: E402

CHUNK = 16 * MiB
TARGET = 1.2
EXPORT, CP, IN_PLACE = "export (atomic_output + copy_sparse)", "cp --sparse=always + sync", \
    "in place VHD (raw_to_vhd keep_raw=False)"


def cloud_image() -> Path:
    done = subprocess.run(["bash", str(REPO / "scripts" / "make-cloud-image.sh")],
                          check=True, capture_output=True, text=True)
    return Path(done.stdout.strip().splitlines()[-1])


def make_cloud_input(image: Path, path: Path, size: int) -> None:
    subprocess.run(convert_to_raw_argv(image, "qcow2", path), check=True)
    os.truncate(path, size)
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def make_random_input(path: Path, size: int, data: int) -> None:
    """A sparse file of `size` bytes with `data` bytes of random data in CHUNK pieces spread
    evenly from start to end."""
    count = max(data // CHUNK, 1)
    stride = size // count
    with open(path, "wb") as f:
        f.truncate(size)
        for n in range(count):
            f.seek(n * stride)
            f.write(os.urandom(CHUNK))
        f.flush()
        os.fsync(f.fileno())


def cold_cache() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def export_step(src: Path, out_dir: Path) -> Path:
    """Run the build's export step on `src` with formats ["raw"]; returns the RAW."""
    ctx = SimpleNamespace(
        disk=src,
        template=SimpleNamespace(name="bench", output=SimpleNamespace(formats=["raw"])),
        options=SimpleNamespace(force=True),
        artifacts={},
        artifact_path=lambda fmt: out_dir / f"bench.{fmt}",
    )
    with ExitStack() as stack:
        export(cast(BuildContext, ctx), stack)
    return cast(Path, ctx.artifacts["raw"])


def data_ranges(fd: int, length: int) -> list[tuple[int, int]]:
    ranges, pos = [], 0
    while pos < length:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:
                break
            raise
        end = os.lseek(fd, start, os.SEEK_HOLE)
        ranges.append((start, end))
        pos = end
    return ranges


def count_ranges(path: Path) -> int:
    with open(path, "rb") as f:
        return len(data_ranges(f.fileno(), os.fstat(f.fileno()).st_size))


def same_bytes(a: Path, b: Path) -> bool:
    """Whether two files of equal length hold the same bytes, reading only what is
    allocated in either (a hole in both reads as zeros in both)."""
    with open(a, "rb") as fa, open(b, "rb") as fb:
        length = os.fstat(fa.fileno()).st_size
        ranges = data_ranges(fa.fileno(), length) + data_ranges(fb.fileno(), length)
        for start, end in ranges:
            for pos in range(start, end, 4 * MiB):
                count = min(4 * MiB, end - pos)
                if os.pread(fa.fileno(), count, pos) != os.pread(fb.fileno(), count, pos):
                    return False
    return True


def cp_sync(src: Path, dst: Path) -> None:
    subprocess.run(["cp", "--sparse=always", str(src), str(dst)], check=True)
    subprocess.run(["sync", str(dst)], check=True)


def timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def fmt_s(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def filesystem_type(path: Path) -> str:
    best, fstype = "", "?"
    for line in Path("/proc/mounts").read_text().splitlines():
        parts = line.split()
        mount = parts[1]
        if (str(path).startswith(mount.rstrip("/") + "/") or str(path) == mount) \
                and len(mount) > len(best):
            best, fstype = mount, f"{parts[2]} ({parts[0]} on {mount})"
    return fstype


def machine_facts(directory: Path) -> list[tuple[str, str]]:
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
    load = " / ".join(Path("/proc/loadavg").read_text().split()[:3])
    cp_version = subprocess.run(["cp", "--version"], capture_output=True, text=True,
                                check=False).stdout.splitlines()[0]
    return [
        ("date (UTC)", time.strftime("%Y-%m-%d %H:%M", time.gmtime())),
        ("kernel", platform.release()),
        ("CPU", f"{cpu}, {os.cpu_count()} cores (shared with other engineers' VM tests)"),
        ("load average at the end (1/5/15 min)", load),
        ("memory", f"{int(mem) // 1024 // 1024} GiB"),
        ("bench directory", str(directory)),
        ("filesystem", filesystem_type(directory)),
        ("cp", cp_version),
        ("python", platform.python_version()),
    ]


class Bench:
    def __init__(self, work: Path, runs: int) -> None:
        self.work = work
        self.runs = runs
        self.out_dir = work / "out"
        self.out_dir.mkdir(exist_ok=True)
        self.times: dict[tuple[str, str], list[float]] = {}
        self.alloc: dict[tuple[str, str], int] = {}

    def clear_outputs(self) -> None:
        for path in self.out_dir.iterdir():
            path.unlink()

    def run_input(self, label: str, src: Path, round_no: int) -> None:
        size = src.stat().st_size
        raw_out = self.out_dir / "bench.raw"
        cp_out = self.out_dir / "cp.raw"
        vhd_out = self.out_dir / "bench.vhd"

        def do_export() -> None:
            export_step(src, self.out_dir)

        def do_cp() -> None:
            cp_sync(src, cp_out)

        def do_in_place() -> None:
            raw_to_vhd(src, vhd_out, keep_raw=False, force=True)

        contenders: list[tuple[str, Callable[[], None], Path]] = [
            (EXPORT, do_export, raw_out), (CP, do_cp, cp_out), (IN_PLACE, do_in_place, vhd_out),
        ]
        shift = round_no % len(contenders)
        for name, action, output in contenders[shift:] + contenders[:shift]:
            self.clear_outputs()
            cold_cache()
            seconds = timed(action)
            self.times.setdefault((label, name), []).append(seconds)
            self.alloc[(label, name)] = allocated_bytes(output)
            if name == IN_PLACE:  # put the input back, untimed
                os.truncate(output, size)
                os.replace(output, src)
                os.sync()
            elif name == EXPORT and round_no == 0 and (  # checked once, untimed
                    output.stat().st_size != size or not same_bytes(src, output)):
                raise SystemExit(f"{name}: {output} differs from {src}")
        self.clear_outputs()

    def report(self, inputs: dict[str, Path]) -> tuple[str, bool]:
        lines = ["## Machine", "", "| fact | value |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in machine_facts(self.work)]
        ok = True
        for label, src in inputs.items():
            lines += [
                "", f"## {label}: {src.stat().st_size / GiB:.0f} GiB, allocated "
                f"{allocated_bytes(src) / MiB:.1f} MiB in {count_ranges(src)} data ranges "
                f"({self.runs} runs each, cold cache)", "",
                "| contender | median | min | max | output allocated |", "|---|---|---|---|---|",
            ]
            medians = {}
            for name in (EXPORT, CP, IN_PLACE):
                values = self.times[(label, name)]
                medians[name] = statistics.median(values)
                lines.append(f"| {name} | {fmt_s(medians[name])} | {fmt_s(min(values))} | "
                             f"{fmt_s(max(values))} | {self.alloc[(label, name)] / MiB:.1f} MiB |")
            ratio = medians[EXPORT] / medians[CP]
            ok = ok and ratio <= TARGET
            lines += [
                "",
                f"- export / cp (medians): **{ratio:.2f}x** (target at most {TARGET}x): "
                + ("met" if ratio <= TARGET else "MISSED"),
                "- every run, in order: " + "; ".join(
                    f"{name.split(' (')[0]}: "
                    + ", ".join(fmt_s(v) for v in self.times[(label, name)])
                    for name in (EXPORT, CP, IN_PLACE)),
            ]
        return "\n".join(lines), ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--image", type=Path,
                        help="the Debian 12 cloud image, qcow2 (default: "
                             "scripts/make-cloud-image.sh)")
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp/azbuild-bench-export"))
    parser.add_argument("--keep", action="store_true", help="keep the bench directory")
    args = parser.parse_args()
    if os.geteuid() != 0:
        parser.error("run as root: every run starts with echo 3 > /proc/sys/vm/drop_caches")

    work: Path = args.dir
    work.mkdir(parents=True, exist_ok=True)
    try:
        image = args.image or cloud_image()
        cloud, random_raw = work / "cloud.raw", work / "random.raw"
        print(f"converting {image} to {cloud} (4 GiB)", file=sys.stderr)
        make_cloud_input(image, cloud, 4 * GiB)
        print(f"creating {random_raw} (8 GiB, 1 GiB random)", file=sys.stderr)
        make_random_input(random_raw, 8 * GiB, 1 * GiB)
        inputs = {f"Debian 12 cloud image ({image.name}) as raw": cloud,
                  "Synthetic sparse file": random_raw}
        bench = Bench(work, args.runs)
        for round_no in range(args.runs):
            for label, src in inputs.items():
                bench.run_input(label, src, round_no)
            print(f"round {round_no + 1}/{args.runs} done", file=sys.stderr)
        text, ok = bench.report(inputs)
        print(text)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
