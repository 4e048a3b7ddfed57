"""Benchmark: Packer and azbuild side by side on the same job, in alternating pairs.

    .venv/bin/python bench/bench_packer.py [--pairs 3] [--image QCOW2] [--dir DIR] [--keep]
    .venv/bin/python bench/bench_packer.py --only packer --pairs 1   # one tool alone

The job is the one of examples/cloud-image.toml: the Debian 12 cloud image from
`scripts/make-cloud-image.sh` turned into an Azure-ready fixed VHD of 4 GiB.

- **azbuild**: `.venv/bin/azbuild build examples/cloud-image.toml --var image=IMAGE
  --output-dir DIR --force`, with AZBUILD_WORK_DIR a fresh temporary directory.
- **Packer** (1.6.6, Debian's package `packer`, installed with apt-get when `packer` is
  missing) set up as a user would: a JSON template (written by this script) for the qemu
  builder booting a copy of the disk image under TCG with a NoCloud seed as a CD-ROM
  (`cd_files`, label `cidata`), the example's two provisioners, a shell script doing the
  Azure work (waagent, Hyper-V modules, update-initramfs, GRUB arguments, update-grub,
  waagent.conf, sudoers), the deprovision in `shutdown_command`, and a `shell-local`
  post-processor running `qemu-img convert -O vpc -o subformat=fixed,force_size`.

Runs alternate (P A, A P, P A, ...), each timed from here. The phases come from the
tools' own logs: Packer's (PACKER_LOG=1, PACKER_LOG_PATH) and azbuild's manifest.json
(`steps`, `time`; orchestration overhead = wall - waiting on the guest - check).
LIBGUESTFS_* variables are removed from both tools' environment. Prints a Markdown
report. Everything goes into one temporary directory, removed at the end unless --keep;
on Ctrl-C the running tool is stopped (Packer kills its qemu) before that.
Never run from the tests: timings are not asserted anywhere.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_build import AZBUILD, REPO, TEMPLATE, cloud_image, machine_facts

PACKER_PACKAGE = "packer"  # Debian 12's: Packer 1.6.6
MOTD = REPO / "examples" / "files" / "motd"
BUILD_USER = "packer"
DISK_SIZE = "4096M"  # examples/cloud-image.toml: disk_size = "4GiB"
VM_NAME = "debian-12-cloud.raw"
VHD_NAME = "debian-12-cloud.vhd"
TOOLS = ("packer", "azbuild")

# The Azure work, scripted the way a Packer user would (Microsoft's "prepare a Debian VHD
# for Azure" steps), run as root by the shell provisioner's execute_command.
AZURE_SCRIPT = """\
#!/bin/sh
set -eux
export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y waagent
systemctl enable walinuxagent
# Hyper-V drivers in the initrd
printf '%s\\n' hv_vmbus hv_storvsc hv_netvsc >> /etc/initramfs-tools/modules
update-initramfs -u
# serial console and eth0 on Azure
sed -i 's|^GRUB_CMDLINE_LINUX=.*|GRUB_CMDLINE_LINUX="console=tty0 console=ttyS0,115200n8 \
earlyprintk=ttyS0,115200 net.ifnames=0"|' /etc/default/grub
update-grub
# the agent provisions; the resource disk holds the swap
sed -i -e 's|^Provisioning.Agent=.*|Provisioning.Agent=waagent|' \\
       -e 's|^Provisioning.RegenerateSshHostKeyPair=.*|Provisioning.RegenerateSshHostKeyPair=y|' \\
       -e 's|^ResourceDisk.Format=.*|ResourceDisk.Format=y|' \\
       -e 's|^ResourceDisk.Filesystem=.*|ResourceDisk.Filesystem=ext4|' \\
       -e 's|^ResourceDisk.MountPoint=.*|ResourceDisk.MountPoint=/mnt/resource|' \\
       -e 's|^ResourceDisk.EnableSwap=.*|ResourceDisk.EnableSwap=y|' \\
       -e 's|^ResourceDisk.SwapSizeMB=.*|ResourceDisk.SwapSizeMB=2048|' /etc/waagent.conf
touch /etc/cloud/cloud-init.disabled
rm -f /etc/udev/rules.d/70-persistent-net.rules
# no root password prompts for sudo
sed -i -E \\
    's/^(Defaults[[:space:]]+targetpw|ALL[[:space:]]+ALL=\\(ALL(:ALL)?\\)[[:space:]]+ALL)/# &/' \\
    /etc/sudoers
visudo -c
"""
SHUTDOWN_COMMAND = ("sudo sh -c '/usr/sbin/waagent -force -deprovision+user "
                    "&& export HISTSIZE=0 && shutdown -P now'")


def seed_files(public_key: str, instance_id: str) -> dict[str, str]:
    """The NoCloud seed's files: one user with the key and passwordless sudo."""
    user_data = "\n".join([
        "#cloud-config",
        "users:",
        f"  - name: {BUILD_USER}",
        "    sudo: ALL=(ALL) NOPASSWD:ALL",
        "    shell: /bin/bash",
        "    ssh_authorized_keys:",
        f"      - {public_key.strip()}",
        "",
    ])
    meta_data = f"instance-id: {instance_id}\nlocal-hostname: packer-bench\n"
    return {"user-data": user_data, "meta-data": meta_data}


def packer_template(*, image: Path, run_dir: Path, seed_dir: Path, private_key: Path,
                    azure_script: Path, cpus: int = 2) -> dict[str, Any]:
    """The Packer 1.6.6 JSON template for the job; everything it writes is under run_dir."""
    output = run_dir / "output"
    raw = output / VM_NAME
    vhd = run_dir / VHD_NAME
    builder = {
        "type": "qemu",
        "iso_url": str(image),
        "iso_checksum": "none",
        "disk_image": True,
        "use_backing_file": False,
        "format": "raw",
        "disk_size": DISK_SIZE,
        "disk_interface": "virtio",
        "net_device": "virtio-net",
        "accelerator": "tcg",
        "cpus": cpus,
        "memory": 1024,
        "headless": True,
        # No boot_command, so nothing needs VNC; disabling it also skips boot_wait.
        "disable_vnc": True,
        "boot_wait": "0s",
        "cd_files": [str(seed_dir / "user-data"), str(seed_dir / "meta-data")],
        "cd_label": "cidata",
        "output_directory": str(output),
        "vm_name": VM_NAME,
        "communicator": "ssh",
        "ssh_username": BUILD_USER,
        "ssh_private_key_file": str(private_key),
        "ssh_timeout": "30m",
        "shutdown_command": SHUTDOWN_COMMAND,
        "shutdown_timeout": "10m",
    }
    as_root = "chmod +x {{ .Path }}; {{ .Vars }} sudo -E sh '{{ .Path }}'"
    provisioners = [
        {"type": "shell", "inline": ["uname -a", "cat /etc/os-release"]},
        {"type": "file", "source": str(MOTD), "destination": "/tmp/motd"},
        {"type": "shell", "inline": ["sudo install -m 0644 /tmp/motd /etc/motd"]},
        {"type": "shell", "script": str(azure_script), "execute_command": as_root},
    ]
    convert = (f"qemu-img convert -f raw -O vpc -o subformat=fixed,force_size "
               f"{raw} {vhd}")
    post = [{"type": "shell-local", "inline": [convert]}]
    return {"builders": [builder], "provisioners": provisioners, "post-processors": post}


# --- Packer's log -------------------------------------------------------------------------

# PACKER_LOG lines: "2026/12/01 02:41:07 ui: ==> qemu: Connected to SSH!" (seconds only).
LOG_LINE_RE = re.compile(r"^(\d{4}/\d\d/\d\d \d\d:\d\d:\d\d) (.*)$")
ANSI_RE = re.compile(r"\x1b\[[0-9;]*m")  # ui lines are coloured unless -color=false
# (mark, pattern on the text after the timestamp); each mark is its first match.
MARK_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("qemu start", re.compile(r"Executing \S*qemu-system")),
    ("SSH connected", re.compile(r"ui: ==> qemu: Connected to SSH!")),
    ("shutdown command", re.compile(r"ui: ==> qemu: Gracefully halting virtual machine")),
    ("VM stopped", re.compile(r"VM shut down\.")),
    ("post-processor start", re.compile(r"ui: ==> qemu: Running post-processor: shell-local")),
    ("build finished", re.compile(r"ui: Build 'qemu' finished")),
)
SSH_ATTEMPT_RE = re.compile(r"\[INFO\] Attempting SSH connection to")
# Under qemu's user network the forwarded port accepts before the guest's sshd listens,
# and Packer then waits out a fixed handshake timeout (a minute in 1.6.6).
SSH_HANDSHAKE_TIMEOUT_RE = re.compile(r"SSH handshake err: Timeout during SSH handshake")
PROVISIONER_RE = re.compile(
    r"ui: ==> qemu: (Provisioning with shell script: .*|Uploading .*=> .*)$")


@dataclass
class PackerLog:
    """The timestamps of one Packer run's log (None: the line never came)."""

    start: datetime | None = None
    end: datetime | None = None
    marks: dict[str, datetime] = field(default_factory=dict)
    provisioners: list[tuple[str, datetime]] = field(default_factory=list)
    ssh_attempts: int = 0
    ssh_handshake_timeouts: int = 0


def parse_packer_log(text: str) -> PackerLog:
    log = PackerLog()
    for line in text.splitlines():
        m = LOG_LINE_RE.match(line)
        if m is None:
            continue  # a continuation of a multi-line entry
        stamp = datetime.strptime(m.group(1), "%Y/%m/%d %H:%M:%S")
        rest = ANSI_RE.sub("", m.group(2))
        if log.start is None:
            log.start = stamp
        log.end = stamp
        for mark, pattern in MARK_PATTERNS:
            if mark not in log.marks and pattern.search(rest):
                log.marks[mark] = stamp
        log.ssh_attempts += bool(SSH_ATTEMPT_RE.search(rest))
        log.ssh_handshake_timeouts += bool(SSH_HANDSHAKE_TIMEOUT_RE.search(rest))
        if p := PROVISIONER_RE.search(rest):
            log.provisioners.append((p.group(1), stamp))
    return log


def provisioner_label(number: int, line: str) -> str:
    """A name that is the same in every run: Packer's inline scripts get random names."""
    line = re.sub(r"\S*/packer-shell\d+$", "(inline)", line)
    if m := re.match(r"Provisioning with shell script: (.*)$", line):
        kind = f"shell {Path(m.group(1)).name if m.group(1) != '(inline)' else '(inline)'}"
    elif m := re.match(r"Uploading (.*) => (.*)$", line):
        kind = f"file {Path(m.group(1)).name} => {m.group(2)}"
    else:
        kind = line
    return f"provisioner {number}: {kind}"


def packer_phases(log: PackerLog) -> dict[str, float | None]:
    """Seconds per phase, from one mark to the next (None: a mark is missing)."""
    def span(a: datetime | None, b: datetime | None) -> float | None:
        return (b - a).total_seconds() if a is not None and b is not None else None

    m = log.marks
    first_prov = log.provisioners[0][1] if log.provisioners else None
    phases: dict[str, float | None] = {
        "disk copy and resize, seed ISO": span(log.start, m.get("qemu start")),
        "boot to SSH": span(m.get("qemu start"), m.get("SSH connected")),
        "SSH connected to first provisioner": span(m.get("SSH connected"), first_prov),
    }
    # Each provisioner from its first line to the next one's (the last: to the shutdown).
    starts = [*log.provisioners, ("", m["shutdown command"])] if "shutdown command" in m \
        else log.provisioners
    for number, ((name, began), (_, ended)) in enumerate(itertools.pairwise(starts), 1):
        phases[provisioner_label(number, name)] = span(began, ended)
    phases["shutdown (deprovision, power-off)"] = span(m.get("shutdown command"),
                                                       m.get("VM stopped"))
    phases["VM stopped to post-processor"] = span(m.get("VM stopped"),
                                                  m.get("post-processor start"))
    phases["post-processor (qemu-img convert to VHD)"] = span(m.get("post-processor start"),
                                                              m.get("build finished"))
    phases["whole log"] = span(log.start, log.end)
    return phases


# --- azbuild's manifest --------------------------------------------------------------------

def azbuild_phases(manifest: dict[str, Any], elapsed: float | None) -> dict[str, float | None]:
    """The manifest's steps, its time split and the orchestration overhead: wall time minus
    the time the guest was working minus the offline check (from the manifest's wall time,
    and from the process's as timed here, which adds start-up and the manifest's hashing)."""
    t = manifest["time"]
    wall = float(t["wall_seconds"])
    guest = float(t["waiting_on_guest_seconds"])
    steps: dict[str, float] = manifest.get("steps", {})
    check = float(steps.get("check", 0.0))
    phases: dict[str, float | None] = {f"step: {k}": float(v) for k, v in steps.items()}
    phases["manifest wall time"] = wall
    phases["waiting on the guest"] = guest
    phases["orchestration overhead (manifest wall - guest - check)"] = wall - guest - check
    phases["orchestration overhead (process wall - guest - check)"] = (
        None if elapsed is None else elapsed - guest - check)
    return phases


# --- Running the tools ---------------------------------------------------------------------

@dataclass
class Run:
    tool: str
    pair: int
    run_dir: Path
    command: list[str] = field(default_factory=list)
    env_shown: str = ""  # the variables set for the tool, as the report shows them
    exit_status: int | None = None
    elapsed: float | None = None  # seconds the tool's process ran, timed from here
    phases: dict[str, float | None] = field(default_factory=dict)
    output_size: int | None = None  # bytes of the VHD it wrote
    ssh_attempts: tuple[int, int] | None = None  # Packer: attempts, handshake timeouts
    leaked: list[str] = field(default_factory=list)  # processes left behind, killed here
    error: str | None = None


def clean_env(extra: dict[str, str]) -> dict[str, str]:
    """This process's environment without LIBGUESTFS_* (neither tool gets a say there)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIBGUESTFS_")}
    env.update(extra)
    return env


def ensure_packer() -> str:
    """The packer binary, installed from Debian's package when missing."""
    found = shutil.which("packer")
    if found:
        return found
    print("packer missing: apt-get install -y packer", file=sys.stderr)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "install", "-y", PACKER_PACKAGE]
    if subprocess.run(install, env=env, check=False).returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, check=False)
        subprocess.run(install, env=env, check=False)
    found = shutil.which("packer")
    if not found:
        raise SystemExit("bench_packer: could not install Debian's package `packer` "
                         "(run as root, with apt reachable), or put packer on PATH")
    return found


def tool_version(command: list[str]) -> str:
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    return (done.stdout or done.stderr).strip().splitlines()[0] if done.returncode == 0 else "?"


def processes_under(path: Path) -> list[tuple[int, str]]:
    """Processes whose command line names something under path (ours: a unique temp dir)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        line = " ".join(a.decode(errors="replace") for a in argv if a)
        if str(path) in line:
            found.append((int(entry.name), line))
    return found


def run_timed(command: list[str], env: dict[str, str], out_path: Path,
              interrupt: signal.Signals) -> tuple[int, float]:
    """Run command in its own process group; on Ctrl-C pass `interrupt` to it (both tools
    clean up on it: Packer kills its qemu), then kill the group if it lingers."""
    with open(out_path, "w") as sink:
        start = time.monotonic()
        proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=sink,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            status = proc.wait()
        except KeyboardInterrupt:
            print(f"interrupted: stopping {command[0]} (pid {proc.pid})", file=sys.stderr)
            proc.send_signal(interrupt)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=120)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
        return status, time.monotonic() - start


def reap_leftovers(run: Run) -> None:
    for pid, line in processes_under(run.run_dir):
        run.leaked.append(line)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def tail(path: Path, lines: int = 25) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def packer_command(packer: str, template: Path, nice: int) -> list[str]:
    prefix = ["nice", "-n", str(nice)] if nice else []
    return [*prefix, packer, "build", "-force", "-color=false", str(template)]


def azbuild_command(image: Path, output: Path, nice: int) -> list[str]:
    prefix = ["nice", "-n", str(nice)] if nice else []
    return [*prefix, str(AZBUILD), "build", str(TEMPLATE), "--var", f"image={image}",
            "--output-dir", str(output), "--force"]


def run_packer(packer: str, image: Path, base: Path, pair: int, nice: int) -> Run:
    run = Run("packer", pair, base / f"packer-{pair}")
    seed = run.run_dir / "seed"
    seed.mkdir(parents=True)
    key = run.run_dir / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "packer-bench",
                    "-f", str(key)], check=True)
    for name, text in seed_files(key.with_suffix(".pub").read_text(),
                                 f"iid-packer-bench-{pair}-{int(time.time())}").items():
        (seed / name).write_text(text)
    script = run.run_dir / "azure-prep.sh"
    script.write_text(AZURE_SCRIPT)
    template = run.run_dir / "template.json"
    template.write_text(json.dumps(packer_template(
        image=image, run_dir=run.run_dir, seed_dir=seed, private_key=key,
        azure_script=script), indent=2) + "\n")
    log = run.run_dir / "packer.log"
    tmp = run.run_dir / "tmp"  # Packer's plugin sockets and its seed ISO: ours to remove
    tmp.mkdir()
    env = clean_env({"TMPDIR": str(tmp), "PACKER_LOG": "1", "PACKER_LOG_PATH": str(log),
                     "PACKER_CACHE_DIR": str(run.run_dir / "cache"),
                     "CHECKPOINT_DISABLE": "1"})
    run.command = packer_command(packer, template, nice)
    run.env_shown = " ".join(f"{k}={env[k]}" for k in ("PACKER_LOG", "PACKER_LOG_PATH",
                                                        "PACKER_CACHE_DIR", "TMPDIR"))
    print(f"pair {pair}, packer: {' '.join(run.command)}", file=sys.stderr)
    out = run.run_dir / "packer.out"
    try:
        run.exit_status, run.elapsed = run_timed(run.command, env, out, signal.SIGINT)
    finally:
        reap_leftovers(run)
    if log.exists():
        parsed = parse_packer_log(log.read_text(errors="replace"))
        run.phases = packer_phases(parsed)
        run.ssh_attempts = (parsed.ssh_attempts, parsed.ssh_handshake_timeouts)
    vhd = run.run_dir / VHD_NAME
    run.output_size = vhd.stat().st_size if vhd.exists() else None
    if run.exit_status != 0 or run.output_size is None:
        run.error = tail(out)
    return run


def run_azbuild(image: Path, base: Path, pair: int, nice: int) -> Run:
    run = Run("azbuild", pair, base / f"azbuild-{pair}")
    output, work = run.run_dir / "out", run.run_dir / "work"
    output.mkdir(parents=True)
    work.mkdir()
    run.command = azbuild_command(image, output, nice)
    run.env_shown = f"AZBUILD_WORK_DIR={work}"
    print(f"pair {pair}, azbuild: {' '.join(run.command)}  (AZBUILD_WORK_DIR={work})",
          file=sys.stderr)
    out = run.run_dir / "azbuild.out"
    try:
        run.exit_status, run.elapsed = run_timed(
            run.command, clean_env({"AZBUILD_WORK_DIR": str(work)}), out, signal.SIGTERM)
    finally:
        reap_leftovers(run)
    output = next(iter(sorted(output.glob("*/manifest.json"))),
                  output / "manifest.json").parent  # --output-dir DIR: DIR/<name>/
    manifest = output / "manifest.json"
    if manifest.exists():
        run.phases = azbuild_phases(json.loads(manifest.read_text()), run.elapsed)
    vhds = sorted(output.glob("*.vhd"))
    run.output_size = vhds[0].stat().st_size if vhds else None
    if run.exit_status != 0:
        run.error = tail(out)
    return run


def drop_images(run: Run) -> None:
    """The multi-GiB disks go as soon as a run is measured; logs stay until the end."""
    for pattern in ("*.raw", "*.vhd", "*.qcow2"):
        for path in run.run_dir.rglob(pattern):
            path.unlink()


def order_of(pair: int, only: str | None) -> list[str]:
    """Pair 1 starts with Packer, pair 2 with azbuild, and so on."""
    if only:
        return [only]
    return list(TOOLS) if pair % 2 == 1 else list(reversed(TOOLS))


# --- The report ----------------------------------------------------------------------------

def spread(values: list[float]) -> str:
    return (f"{statistics.median(values):.1f} s (min {min(values):.1f}, "
            f"max {max(values):.1f}, n={len(values)})")


def wall_summary(walls: dict[str, list[float]]) -> list[str]:
    """Median (min, max) wall time per tool and the ratio of the medians azbuild/Packer."""
    lines = ["| tool | wall time, median (min, max) |", "|---|---|"]
    for tool in TOOLS:
        if walls.get(tool):
            lines.append(f"| {tool} | {spread(walls[tool])} |")
    if walls.get("packer") and walls.get("azbuild"):
        ratio = statistics.median(walls["azbuild"]) / statistics.median(walls["packer"])
        lines += ["", f"Ratio of the medians, azbuild / Packer: **{ratio:.2f}x** "
                  "(the target of issue 12: at most 0.75x)."]
    return lines


def phase_table(runs: list[dict[str, float | None]]) -> list[str]:
    """One row per phase (in the order first seen): median, min and max over the runs
    that have it."""
    names: list[str] = []
    for phases in runs:
        names += [n for n in phases if n not in names]
    lines = ["| phase | median s | min | max | runs |", "|---|---|---|---|---|"]
    for name in names:
        values = [v for p in runs if (v := p.get(name)) is not None]
        if values:
            lines.append(f"| {name} | {statistics.median(values):.1f} | {min(values):.1f} "
                         f"| {max(values):.1f} | {len(values)} |")
        else:
            lines.append(f"| {name} | - | - | - | 0 |")
    return lines


def report(runs: list[Run], facts: list[tuple[str, str]]) -> str:
    out = ["# Packer and azbuild side by side: Debian 12 cloud image to a fixed VHD", "",
           "| fact | value |", "|---|---|"]
    out += [f"| {k} | {v} |" for k, v in facts]
    out += ["", "## Commands", ""]
    for tool in TOOLS:
        first = next((r for r in runs if r.tool == tool), None)
        if first is not None:
            out += [f"{tool} (pair {first.pair}; no LIBGUESTFS_* variable):", "", "```",
                    " ".join([first.env_shown, *first.command]).strip(), "```", ""]
    out += ["## Runs (in the order they ran)", "",
            "| pair | tool | exit status | wall time | VHD bytes | left running |",
            "|---|---|---|---|---|---|"]
    for r in runs:
        elapsed = f"{r.elapsed:.1f} s" if r.elapsed is not None else "-"
        out.append(f"| {r.pair} | {r.tool} | {r.exit_status} | {elapsed} | "
                   f"{r.output_size if r.output_size is not None else '-'} | "
                   f"{len(r.leaked) or 'nothing'} |")
    out.append("")
    good = [r for r in runs if r.exit_status == 0 and r.elapsed is not None
            and r.output_size is not None]
    walls = {t: [r.elapsed for r in good if r.tool == t and r.elapsed is not None]
             for t in TOOLS}
    out += ["## Wall time (successful runs)", "", *wall_summary(walls), ""]
    for tool, source in (("packer", "PACKER_LOG timestamps, whole seconds"),
                         ("azbuild", "manifest.json `steps` and `time`")):
        phases = [r.phases for r in good if r.tool == tool and r.phases]
        if phases:
            out += [f"## {tool} phases ({source})", "", *phase_table(phases), ""]
    attempts = [r.ssh_attempts for r in good if r.ssh_attempts is not None]
    if attempts:
        out += ["Packer's SSH attempts per run (of them, handshake timeouts, a minute each): "
                + ", ".join(f"{a} ({t})" for a, t in attempts) + ".", ""]
    for r in runs:
        if r.error is not None:
            out += [f"## pair {r.pair}, {r.tool} failed; the end of its output, verbatim", "",
                    "```", r.error, "```", ""]
        if r.leaked:
            out += [f"## pair {r.pair}, {r.tool} left processes running (killed)", "", "```",
                    *r.leaked, "```", ""]
    return "\n".join(out) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=3,
                        help="alternating pairs (P A, A P, ...); default 3")
    parser.add_argument("--only", choices=TOOLS, help="run one tool alone, --pairs times")
    parser.add_argument("--image", type=Path,
                        help="the Debian 12 cloud image (default: scripts/make-cloud-image.sh)")
    parser.add_argument("--nice", type=int, default=0,
                        help="run both tools under `nice -n N` (default: not)")
    parser.add_argument("--dir", type=Path, help="where everything goes (default: a new "
                        "temporary directory under /var/tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the outputs and logs")
    args = parser.parse_args()

    packer = ensure_packer() if args.only != "azbuild" else "packer"
    image = (args.image or cloud_image()).resolve()
    base = args.dir or Path(tempfile.mkdtemp(prefix="azbuild-bench-packer-", dir="/var/tmp"))
    base.mkdir(parents=True, exist_ok=True)
    runs: list[Run] = []
    try:
        for pair in range(1, args.pairs + 1):
            for tool in order_of(pair, args.only):
                run = (run_packer(packer, image, base, pair, args.nice) if tool == "packer"
                       else run_azbuild(image, base, pair, args.nice))
                runs.append(run)
                if not args.keep:
                    drop_images(run)
        facts = [*machine_facts(),
                 ("Packer", tool_version([packer, "version"]) if args.only != "azbuild"
                  else "not run"),
                 ("qemu", tool_version(["qemu-system-x86_64", "--version"])),
                 ("image", str(image))]
        print(report(runs, facts))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        if args.keep:
            print(f"outputs kept in {base}", file=sys.stderr)
        else:
            shutil.rmtree(base, ignore_errors=True)
    return 0 if runs and all(r.exit_status == 0 and r.output_size for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
