"""Benchmark: what a nightly job gains from the stage cache and from `--jobs`.

    .venv/bin/python bench/bench_nightly.py [--rounds 1] [--only cache|jobs] [--dir DIR]

Two measurements, each in the same run of this script:

- **cache**: with a fresh, empty AZBUILD_CACHE_DIR, a cold build of examples/demo.toml
  (the ISO path: the install runs and its disk is stored), then a rebuild of a copy of
  it whose last provisioner is changed to install one extra package (the install comes
  from the cache). Reports both walls, their ratio and the manifests' cache records.
- **jobs**: examples/cloud-image.toml and examples/demo.toml in one command, one after
  the other (`--jobs 1`) and two at once (`--jobs 2`), both with `--no-cache` so both
  installs run; the order alternates between rounds.

Every build gets a fresh AZBUILD_WORK_DIR and output directory; LIBGUESTFS_* variables
are removed from the environment. Prints a Markdown report. Never run from the tests:
timings are not asserted anywhere.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_build import (
    AZBUILD,
    DEMO_TEMPLATE,
    REPO,
    TEMPLATE,
    cloud_image,
    machine_facts,
    test_installer_vars,
)

EXTRA_PACKAGE = "tree"


@dataclass
class Timed:
    label: str
    wall: float
    status: int
    output_dir: Path
    log: Path


def env_for(base: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIBGUESTFS_")}
    env.update(extra)
    return env


def run_timed(label: str, args: list[str], base: Path, env: dict[str, str]) -> Timed:
    out = base / f"out-{label}"
    work = base / f"work-{label}"
    work.mkdir(parents=True)
    command = [str(AZBUILD), "build", *args, "--output-dir", str(out)]
    print(f"{label}: {' '.join(command)}", file=sys.stderr)
    log = base / f"{label}.log"
    started = time.monotonic()
    with open(log, "w") as sink:
        done = subprocess.run(command, cwd=REPO, env=dict(env, AZBUILD_WORK_DIR=str(work)),
                              stdout=sink, stderr=subprocess.STDOUT, check=False)
    timed = Timed(label, time.monotonic() - started, done.returncode, out, log)
    print(f"{label}: exit {timed.status} in {timed.wall:.1f}s", file=sys.stderr)
    if done.returncode != 0:
        print(log.read_text(errors="replace")[-3000:], file=sys.stderr)
    return timed


def rebuild_template(directory: Path) -> Path:
    """examples/demo.toml with only its last provisioner replaced: one extra package."""
    text = DEMO_TEMPLATE.read_text()
    last = text.rindex("[[provision]]")
    end = text.index("[output]", last)
    path = directory / "demo.toml"
    path.write_text(text[:last] + '[[provision]]\ntype = "shell"\n'
                    'inline = ["sudo apt-get update -q", "sudo DEBIAN_FRONTEND=noninteractive '
                    f'apt-get install -y {EXTRA_PACKAGE}"]\n\n' + text[end:])
    return path


def manifest(directory: Path) -> dict[str, Any]:
    path = directory / "manifest.json"
    return json.loads(path.read_text()) if path.exists() else {}


def cache_round(base: Path, iso_vars: list[str], n: int) -> tuple[Timed, Timed]:
    cache = base / f"cache-{n}"
    env = env_for(base, AZBUILD_CACHE_DIR=str(cache))
    cold = run_timed(f"cold-{n}", [str(DEMO_TEMPLATE), *iso_vars], base, env)
    edited = base / f"edited-{n}"
    edited.mkdir()
    warm = run_timed(f"warm-{n}", [str(rebuild_template(edited)), *iso_vars], base, env)
    shutil.rmtree(cache, ignore_errors=True)
    return cold, warm


def jobs_run(base: Path, image: Path, iso_vars: list[str], jobs: int, n: int) -> Timed:
    args = [str(TEMPLATE), str(DEMO_TEMPLATE), "--jobs", str(jobs), "--no-cache",
            "--var", f"image={image}", *iso_vars]
    return run_timed(f"jobs{jobs}-{n}", args, base, env_for(base))


def summary_lines(timed: Timed) -> list[str]:
    path = timed.output_dir / "summary.json"
    if not path.exists():
        return [f"  (no summary.json; exit {timed.status})"]
    builds = json.loads(path.read_text())["builds"]
    return [f"  {b['name']}: {b['status']}, {b['duration_seconds']:.1f}s" for b in builds]


def report(cache_runs: list[tuple[Timed, Timed]], jobs_runs: list[Timed]) -> str:
    lines = ["| fact | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in machine_facts()]
    if cache_runs:
        lines += ["", "### Stage cache: cold demo, then its last provisioner changed", "",
                  "| round | cold | warm | warm / cold | install stage (cold → warm) |",
                  "|---|---|---|---|---|"]
        for n, (cold, warm) in enumerate(cache_runs, 1):
            stages = [(manifest(t.output_dir).get("cache") or [{}])[0] for t in (cold, warm)]
            results = " → ".join(str(s.get("result", "?")) for s in stages)
            lines.append(f"| {n} | {cold.wall:.1f} s (exit {cold.status}) | {warm.wall:.1f} s "
                         f"(exit {warm.status}) | {warm.wall / cold.wall:.2f} | {results} |")
        ratio = statistics.median(w.wall / c.wall for c, w in cache_runs)
        lines += ["", f"Median warm / cold: **{ratio:.2f}**"]
    if jobs_runs:
        lines += ["", "### Two builds (cloud image + demo): one after the other, two at once",
                  "", "| run | wall | builds |", "|---|---|---|"]
        for t in jobs_runs:
            lines.append(f"| {t.label} | {t.wall:.1f} s (exit {t.status}) | "
                         + "; ".join(s.strip() for s in summary_lines(t)) + " |")
        for jobs in (1, 2):
            walls = [t.wall for t in jobs_runs if t.label.startswith(f"jobs{jobs}-")]
            if walls:
                lines.append(f"\nMedian `--jobs {jobs}`: **{statistics.median(walls):.1f} s**")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--only", choices=("cache", "jobs"))
    parser.add_argument("--dir", type=Path, help="keep everything here (default: a temp dir)")
    args = parser.parse_args()
    base = args.dir or Path(tempfile.mkdtemp(prefix="azbuild-bench-nightly-"))
    base.mkdir(parents=True, exist_ok=True)
    iso_vars = test_installer_vars()
    image = cloud_image()
    cache_runs: list[tuple[Timed, Timed]] = []
    jobs_runs: list[Timed] = []
    try:
        for n in range(1, args.rounds + 1):
            if args.only in (None, "cache"):
                cache_runs.append(cache_round(base, iso_vars, n))
            if args.only in (None, "jobs"):
                order = (1, 2) if n % 2 else (2, 1)
                jobs_runs += [jobs_run(base, image, iso_vars, jobs, n) for jobs in order]
        print(report(cache_runs, jobs_runs))  # reads the manifests: before the removal
    finally:
        if args.dir is None:
            shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
