"""Benchmark: real builds of examples/cloud-image.toml or the ISO demo, where time goes.

    .venv/bin/python bench/bench_build.py [--runs 1] [--image QCOW2] [--dir DIR]
    .venv/bin/python bench/bench_build.py --demo [--runs 1]   # examples/demo.toml: the ISO path
    .venv/bin/python bench/bench_build.py --from-output DIR [DIR ...]   # report only

Each run is `.venv/bin/azbuild build examples/cloud-image.toml --var image=IMAGE
--output-dir DIR/out-N --force` with AZBUILD_WORK_DIR=DIR/work-N (a fresh temporary
directory each). Without --image, `scripts/make-cloud-image.sh` is run once and the image
it prints is used. With --demo, each run builds examples/demo.toml from the test installer
ISO (`scripts/make-test-installer-iso.sh`, run once) instead: installer boot, unattended
install, then the same steps. From each build's manifest.json this reports:

  - the share of wall time spent waiting on the guest against in azbuild itself
    (`time.waiting_on_guest_seconds` and `time.azbuild_seconds` of `time.wall_seconds`);
  - seconds per step (`steps`) and each step's share of the wall time;
  - from build.log: the time from the first `SSH-2.0-` banner the guest sent to the build
    being connected (the ssh module's INFO line `SSH ready ... (N s after the first
    banner)`, cross-checked with the timestamps of its first `ssh banner` DEBUG line).

A build under TCG takes many minutes; the default is one run. A failed build is reported
with its exit status and the end of its output, verbatim. Prints a Markdown report.
Never run from the tests: timings are not asserted anywhere.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
AZBUILD = REPO / ".venv" / "bin" / "azbuild"
TEMPLATE = REPO / "examples" / "cloud-image.toml"
DEMO_TEMPLATE = REPO / "examples" / "demo.toml"

_STAMP = r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})"
READY_RE = re.compile(
    _STAMP + r" INFO\s+\S+: SSH ready on (\S+) as \S+ after ([\d.]+)s "
    r"\(([\d.]+)s after the first banner\)"
)
BANNER_RE = re.compile(_STAMP + r" DEBUG\s+\S+: ssh banner on (\S+): (SSH-2\.0-\S*)")
# Steps that wait on the guest for (nearly) all their time: booted and reachable, running
# the provisioners and the Azure preparation, powering off. A cross-check of the
# manifest's own split, which counts only what the code wraps in timed_guest_wait().
GUEST_STEPS = ("connect", "provision", "azure preparation", "shutdown", "simulate")
CONNECT_END_RE = re.compile(_STAMP + r" INFO\s+\S+: <== connect \(([\d.]+)s\)")


@dataclass
class SshFigure:
    """What build.log says about the wait for SSH (None where it says nothing)."""

    banner_to_connected: float | None = None  # from the INFO line
    wait_total: float | None = None
    banner: str | None = None
    banner_to_connect_step_end: float | None = None  # from the timestamps
    readies: int = 0  # several `SSH ready` lines: reconnects (e.g. after a reboot)


@dataclass
class BuildResult:
    output_dir: Path
    exit_status: int | None = None
    elapsed: float | None = None  # seconds the azbuild process ran, as seen from here
    manifest: dict[str, Any] | None = None
    ssh: SshFigure = field(default_factory=SshFigure)
    error: str | None = None


def _stamp(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S,%f")


def parse_build_log(path: Path) -> SshFigure:
    figure = SshFigure()
    first_banner: datetime | None = None
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if (m := BANNER_RE.match(line)) and first_banner is None:
            first_banner = _stamp(m.group(1))
            figure.banner = m.group(3)
        elif m := READY_RE.match(line):
            figure.readies += 1
            if figure.banner_to_connected is None:
                figure.wait_total = float(m.group(3))
                figure.banner_to_connected = float(m.group(4))
        elif ((m := CONNECT_END_RE.match(line)) and first_banner is not None
              and figure.banner_to_connect_step_end is None):
            delta = _stamp(m.group(1)) - first_banner
            figure.banner_to_connect_step_end = delta.total_seconds()
    return figure


def read_output(result: BuildResult) -> None:
    # --output-dir DIR: the build is in DIR/<name>/.
    result.output_dir = next((p for p in sorted(result.output_dir.glob("*/manifest.json"))),
                             result.output_dir / "manifest.json").parent
    manifest = result.output_dir / "manifest.json"
    if manifest.exists():
        result.manifest = json.loads(manifest.read_text())
    log = result.output_dir / "build.log"
    if log.exists():
        result.ssh = parse_build_log(log)


def cloud_image() -> Path:
    done = subprocess.run(["bash", str(REPO / "scripts" / "make-cloud-image.sh")],
                          check=True, capture_output=True, text=True)
    return Path(done.stdout.strip().splitlines()[-1])


def test_installer_vars() -> list[str]:
    done = subprocess.run(["bash", str(REPO / "scripts" / "make-test-installer-iso.sh")],
                          check=True, capture_output=True, text=True)
    iso_dir = Path(done.stdout.strip().splitlines()[-1]).parent
    return ["--var", f"iso={iso_dir / 'azbuild-test-installer.iso'}",
            "--var", f"checksum=file:{iso_dir / 'SHA256SUMS'}"]


def run_build(template: Path, variables: list[str], base: Path, n: int) -> BuildResult:
    out = base / f"out-{n}"
    work = base / f"work-{n}"
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    command = [str(AZBUILD), "build", str(template), *variables,
               "--output-dir", str(out), "--force"]
    env = dict(os.environ, AZBUILD_WORK_DIR=str(work))
    print(f"build {n}: {' '.join(command)}  (AZBUILD_WORK_DIR={work})", file=sys.stderr)
    result = BuildResult(out)
    start = time.monotonic()
    with open(base / f"build-{n}.out", "w") as sink:
        done = subprocess.run(command, cwd=REPO, env=env, stdout=sink,
                              stderr=subprocess.STDOUT, check=False)
    result.elapsed = time.monotonic() - start
    result.exit_status = done.returncode
    if done.returncode != 0:
        lines = (base / f"build-{n}.out").read_text(errors="replace").splitlines()
        result.error = "\n".join(lines[-25:])
    read_output(result)
    return result


def machine_facts() -> list[tuple[str, str]]:
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    load = Path("/proc/loadavg").read_text().split()[:3]
    return [
        ("date (UTC)", time.strftime("%Y-%m-%d %H:%M", time.gmtime())),
        ("kernel", platform.release()),
        ("CPU", f"{cpu}, {os.cpu_count()} cores (shared)"),
        ("load average at the end (1/5/15 min)", " / ".join(load)),
        ("/dev/kvm", "present (whether it is usable: the manifest's accelerator below)"
         if Path("/dev/kvm").exists() else "absent: guests run under TCG"),
        ("azbuild commit (when reported)", git_commit()),
    ]


def git_commit() -> str:
    done = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"],
                          capture_output=True, text=True, check=False)
    return done.stdout.strip() or "?"


def pct(part: float, whole: float) -> str:
    return f"{100 * part / whole:.1f} %" if whole else "-"


def report(results: list[BuildResult]) -> str:
    names = sorted({str(r.manifest.get("template")) for r in results if r.manifest})
    out: list[str] = [f"# Build benchmark: {', '.join(names) or TEMPLATE.name}", ""]
    out += ["| fact | value |", "|---|---|"]
    out += [f"| {k} | {v} |" for k, v in machine_facts()]
    out.append("")
    good = [r for r in results if r.manifest is not None]
    for n, r in enumerate(results, 1):
        title = f"## Build {n}: {r.output_dir}"
        out += [title, ""]
        if r.exit_status is not None:
            elapsed = f"{r.elapsed:.1f} s" if r.elapsed is not None else "?"
            out.append(f"exit status {r.exit_status}, process ran {elapsed}")
            if r.elapsed is not None and r.manifest is not None:
                rest = r.elapsed - float(r.manifest["time"]["wall_seconds"])
                out.append(f"({rest:.1f} s of it fall outside the manifest's wall time: "
                           "process start-up and the manifest step itself, which hashes "
                           "the outputs)")
            out.append("")
        if r.error is not None:
            out += ["The build failed; the end of its output, verbatim:", "", "```",
                    r.error, "```", ""]
        if r.manifest is None:
            out += ["no manifest.json: no per-step figures", ""]
        else:
            out += manifest_tables(r.manifest)
        out += ssh_lines(r)
    if len(good) > 1:
        out += summary(good)
    return "\n".join(out) + "\n"


def manifest_tables(manifest: dict[str, Any]) -> list[str]:
    t = manifest["time"]
    wall = float(t["wall_seconds"])
    guest = float(t["waiting_on_guest_seconds"])
    own = float(t["azbuild_seconds"])
    accel = manifest.get("accelerator") or {}
    lines = [
        f"accelerator: {accel.get('used')} ({accel.get('reason')}); "
        f"ready: {manifest.get('ready')}", "",
        "| wall time | waiting on the guest | in azbuild itself |", "|---|---|---|",
        f"| {wall:.1f} s | {guest:.1f} s ({pct(guest, wall)}) | {own:.1f} s ({pct(own, wall)}) |",
        "", "| step | seconds | share of wall time |", "|---|---|---|",
    ]
    steps: dict[str, float] = manifest["steps"]
    for name, seconds in steps.items():
        lines.append(f"| {name} | {seconds:.1f} | {pct(seconds, wall)} |")
    listed = sum(steps.values())
    lines.append(f"| (not in any step) | {wall - listed:.1f} | {pct(wall - listed, wall)} |")
    in_guest = sum(v for k, v in steps.items() if k in GUEST_STEPS)
    lines += [
        "", f"By step: the steps in which the guest does the work ({', '.join(GUEST_STEPS)}) "
        f"took {in_guest:.1f} s ({pct(in_guest, wall)}); the others "
        f"{listed - in_guest:.1f} s ({pct(listed - in_guest, wall)}).", "",
    ]
    return lines


def ssh_lines(r: BuildResult) -> list[str]:
    s = r.ssh
    if s.banner_to_connected is None:
        return ["First SSH-2.0- banner to connected: not in build.log (no `SSH ready` line); "
                "see docs/benchmarks-ssh.md, which measures it against a real sshd.", ""]
    lines = [f"First SSH-2.0- banner (`{s.banner}`) to connected: "
             f"**{s.banner_to_connected:.2f} s** (the ssh module's own figure; "
             f"the whole wait for SSH: {s.wait_total:.1f} s)."]
    if s.banner_to_connect_step_end is not None:
        lines.append(f"From the timestamp of the first `ssh banner` debug line to the end of "
                     f"the connect step: {s.banner_to_connect_step_end:.2f} s.")
    if s.readies > 1:
        lines.append(f"({s.readies} `SSH ready` lines: the figure is the first connection's.)")
    lines.append("")
    return lines


def summary(good: list[BuildResult]) -> list[str]:
    def med(values: list[float]) -> str:
        return f"{statistics.median(values):.1f} (min {min(values):.1f}, max {max(values):.1f})"

    walls = [float(r.manifest["time"]["wall_seconds"]) for r in good if r.manifest]
    shares = [100 * float(r.manifest["time"]["waiting_on_guest_seconds"])
              / float(r.manifest["time"]["wall_seconds"]) for r in good if r.manifest]
    lines = [f"## Over {len(good)} builds", "",
             f"- wall seconds: {med(walls)}",
             f"- waiting on the guest, % of wall: {med(shares)}"]
    ssh = [r.ssh.banner_to_connected for r in good if r.ssh.banner_to_connected is not None]
    if ssh:
        lines.append(f"- first banner to connected, s: {med(ssh)}")
    lines.append("")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--image", type=Path,
                        help="the Debian 12 cloud image (default: scripts/make-cloud-image.sh)")
    parser.add_argument("--demo", action="store_true",
                        help="build examples/demo.toml from the test installer ISO")
    parser.add_argument("--dir", type=Path, help="where outputs and work dirs go "
                        "(default: a new temporary directory under /var/tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the outputs")
    parser.add_argument("--from-output", type=Path, nargs="+", metavar="DIR",
                        help="only report on existing output directories (no build)")
    args = parser.parse_args()

    if args.from_output:
        results = []
        for d in args.from_output:
            r = BuildResult(d)
            read_output(r)
            results.append(r)
        print(report(results))
        return 0 if all(r.manifest for r in results) else 1

    if args.demo:
        template, variables = DEMO_TEMPLATE, test_installer_vars()
    else:
        template, variables = TEMPLATE, ["--var", f"image={args.image or cloud_image()}"]
    base = args.dir or Path(tempfile.mkdtemp(prefix="azbuild-bench-build-", dir="/var/tmp"))
    base.mkdir(parents=True, exist_ok=True)
    results = [run_build(template, variables, base, n) for n in range(1, args.runs + 1)]
    print(report(results))
    if args.keep:
        print(f"outputs kept in {base}", file=sys.stderr)
    else:
        shutil.rmtree(base, ignore_errors=True)
    return 0 if all(r.exit_status == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
