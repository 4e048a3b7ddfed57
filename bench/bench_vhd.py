"""Benchmark: raw -> Azure fixed VHD, azbuild against `cp --sparse=always` and qemu-img.

    .venv/bin/python bench/bench_vhd.py [--dir DIR] [--runs 5] [--cache drop|warm]

Input: a sparse raw disk (default 8 GiB) holding 1 GiB of random data in chunks spread
over the whole disk. Contenders, interleaved round by round so drift hits all alike:

  azbuild copy      raw_to_vhd(keep_raw=True): allocated ranges only (or reflink), footer,
                    fsync, rename
  cp                cp --sparse=always RAW OUT, then `sync OUT`
  qemu-img          qemu-img convert -f raw -O vpc -o subformat=fixed,force_size RAW OUT,
                    then `sync OUT`
  azbuild in place  raw_to_vhd(keep_raw=False) on the same disk and on a 64 GiB one
                    (restored untimed after each run: truncate, rename back)

Every run ends with its output on disk (fsync). Before every run: `sync`, then with
--cache drop (default, needs root) `echo 3 > /proc/sys/vm/drop_caches`; with --cache warm
the input is read once instead. azbuild's contenders run in this process (imports done),
the others as subprocesses. Prints a Markdown report.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import platform
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from builder.image.convert import raw_to_vhd
from builder.image.disk import FICLONE, allocated_bytes
from builder.run import run
from builder.units import MiB, parse_size

CHUNK = 16 * MiB
REPO = Path(__file__).resolve().parent.parent


def make_input(path: Path, size: int, data: int) -> None:
    """A sparse raw disk of `size` bytes with `data` bytes of random data in CHUNK pieces
    spread evenly from start to end."""
    count = max(data // CHUNK, 1)
    stride = size // count
    with open(path, "wb") as f:
        f.truncate(size)
        for n in range(count):
            f.seek(n * stride)
            f.write(os.urandom(CHUNK))
        f.flush()
        os.fsync(f.fileno())


def reset_cache(mode: str, inputs: list[Path]) -> None:
    os.sync()
    if mode == "drop":
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    else:
        for path in inputs:  # read once: every input is now in the page cache
            with open(path, "rb") as f:
                while f.read(8 * MiB):
                    pass


def timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def remove(path: Path) -> None:
    path.unlink(missing_ok=True)


def filesystem_type(path: Path) -> str:
    best, fstype = "", "?"
    for line in Path("/proc/mounts").read_text().splitlines():
        parts = line.split()
        mount = parts[1]
        inside = str(path).startswith(mount.rstrip("/") + "/") or str(path) == mount
        if inside and len(mount) > len(best):
            best, fstype = mount, f"{parts[2]} ({parts[0]} on {mount})"
    return fstype


def reflink_supported(directory: Path) -> str:
    a, b = directory / ".reflink-a", directory / ".reflink-b"
    a.write_bytes(b"x" * 4096)
    try:
        with open(a, "rb") as src, open(b, "wb") as dst:
            fcntl.ioctl(dst.fileno(), FICLONE, src.fileno())
        return "yes (FICLONE works)"
    except OSError as exc:
        return f"no (FICLONE: {exc.strerror})"
    finally:
        remove(a)
        remove(b)


def machine_facts(directory: Path) -> list[tuple[str, str]]:
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
    return [
        ("date (UTC)", time.strftime("%Y-%m-%d %H:%M", time.gmtime())),
        ("kernel", platform.release()),
        ("CPU", f"{cpu}, {os.cpu_count()} cores"),
        ("memory", f"{int(mem) // 1024 // 1024} GiB"),
        ("bench directory", str(directory)),
        ("filesystem", filesystem_type(directory)),
        ("reflink on that filesystem", reflink_supported(directory)),
        ("filesystem of the repository", filesystem_type(REPO)),
        ("reflink there", reflink_supported(REPO)),
        ("qemu-img", run(["qemu-img", "--version"]).stdout.splitlines()[0]),
        ("cp", run(["cp", "--version"]).stdout.splitlines()[0]),
        ("python", platform.python_version()),
    ]


def fmt_s(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", default="/var/tmp/azbuild-bench-vhd", type=Path)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--size", default="8GiB")
    parser.add_argument("--data", default="1GiB")
    parser.add_argument("--big", default="64GiB", help="size of the second in-place disk")
    parser.add_argument("--cache", choices=("drop", "warm"), default="drop")
    parser.add_argument("--keep", action="store_true", help="keep the input files")
    args = parser.parse_args()
    size, data, big = parse_size(args.size), parse_size(args.data), parse_size(args.big)
    work: Path = args.dir
    work.mkdir(parents=True, exist_ok=True)

    raw, big_raw = work / "input.raw", work / "input-big.raw"
    out = work / "out.vhd"
    if not raw.exists() or raw.stat().st_size != size:
        print(f"creating {raw}: {args.size} with {args.data} of random data", file=sys.stderr)
        make_input(raw, size, data)
    if not big_raw.exists() or big_raw.stat().st_size != big:
        make_input(big_raw, big, CHUNK)

    def ours_copy() -> None:
        raw_to_vhd(raw, out, keep_raw=True, force=True)

    def cp() -> None:
        run(["cp", "--sparse=always", raw, out])
        run(["sync", out])

    def qemu() -> None:
        run(["qemu-img", "convert", "-f", "raw", "-O", "vpc",
             "-o", "subformat=fixed,force_size", raw, out])
        run(["sync", out])

    def in_place(source: Path) -> Callable[[], None]:
        def go() -> None:
            raw_to_vhd(source, out, keep_raw=False, force=True)
        return go

    def restore(source: Path, length: int) -> None:
        os.truncate(out, length)
        os.replace(out, source)
        os.sync()

    copying: dict[str, Callable[[], None]] = {
        "azbuild copy (keep raw)": ours_copy,
        "cp --sparse=always + sync": cp,
        "qemu-img convert force_size + sync": qemu,
    }
    times: dict[str, list[float]] = {name: [] for name in copying}
    alloc: dict[str, int] = {}
    places = {f"azbuild in place, {args.size}": (raw, size),
              f"azbuild in place, {args.big}": (big_raw, big)}
    times.update({name: [] for name in places})

    for round_no in range(args.runs):
        names = list(copying)
        names = names[round_no % len(names):] + names[:round_no % len(names)]
        for name in names:
            remove(out)
            reset_cache(args.cache, [raw])
            times[name].append(timed(copying[name]))
            alloc[name] = allocated_bytes(out)
            if name.startswith("azbuild"):
                assert out.stat().st_size == size + 512
        remove(out)
        for name, (source, length) in places.items():
            reset_cache(args.cache, [])
            times[name].append(timed(in_place(source)))
            alloc[name] = allocated_bytes(out)
            restore(source, length)
        print(f"round {round_no + 1}/{args.runs} done", file=sys.stderr)

    medians = {name: statistics.median(values) for name, values in times.items()}
    ours, cp_time = medians["azbuild copy (keep raw)"], medians["cp --sparse=always + sync"]
    qemu_time = medians["qemu-img convert force_size + sync"]
    in_alloc = allocated_bytes(raw)

    lines = ["## Machine", "", "| fact | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in machine_facts(work)]
    lines += [
        "", f"## Results ({args.runs} runs each, median; caches: {args.cache})", "",
        f"Input: {args.size} sparse raw, {args.data} random data in {CHUNK // MiB} MiB chunks, "
        f"allocated {in_alloc / MiB:.1f} MiB.", "",
        "| contender | median | min | max | output allocated |",
        "|---|---|---|---|---|",
    ]
    for name, values in times.items():
        allocated = f"{alloc[name] / MiB:.1f} MiB"
        lines.append(
            f"| {name} | {fmt_s(medians[name])} | {fmt_s(min(values))} | "
            f"{fmt_s(max(values))} | {allocated} |"
        )
    lines += [
        "",
        f"- azbuild copy / cp: {ours / cp_time:.2f}x (goal at most 1.2x)",
        f"- azbuild copy / qemu-img: {ours / qemu_time:.2f}x; qemu-img / azbuild copy: "
        f"{qemu_time / ours:.1f}x",
        "- azbuild in place / qemu-img: "
        + ", ".join(f"{name.split(', ')[1]}: {medians[name] / qemu_time:.4f}x"
                    for name in places),
        f"- azbuild copy output allocation minus input allocation: "
        f"{(alloc['azbuild copy (keep raw)'] - in_alloc) / MiB:+.2f} MiB (goal at most +1 MiB)",
        "- every run: " + ", ".join(
            f"{name}: " + " ".join(fmt_s(v) for v in values) for name, values in times.items()
        ),
    ]
    print("\n".join(lines))
    remove(out)
    if not args.keep:
        remove(raw)
        remove(big_raw)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
