"""Benchmark: how long azbuild takes to fail when a mirror or Azure cannot be reached.

    .venv/bin/python bench/bench_fail_fast.py [--tree DIR] [--label NAME]
                                              [--scenario NAME ...] [--parallel] [--json FILE]

Every scenario runs `python -m builder --log-format json ...` from the source tree --tree
(default: this checkout; give an old commit's tree, e.g. from `git archive`, for the
"before" figures) inside a private network namespace made with `unshare -rn`: its only
interface is its own loopback, with 10.99.0.0/24 routed into it, where packets are dropped
silently. Nothing leaves the machine:

  dns        a host under .invalid: the resolver cannot reach any name server from the
             namespace, so the name fails to resolve at once, as with no network
  refused    127.0.0.1 port 9 of the namespace's loopback: nothing listens, refused
  blackhole  10.99.0.2: no answer at all, every connection attempt times out

Scenarios (mirror ones are builds of an ISO template with an inline sha256 and
accelerator = "tcg", so no VM and no KVM probe start; each has a cache and work directory
of its own):

  iso-<kind>-1     one build whose source.iso is on the unreachable mirror
  iso-<kind>-2     two builds of templates sharing that ISO, `build A B --jobs 2`
  publish-<kind>   `azbuild publish` of a small fixed VHD to a container URL with a SAS
  publish-credential  no SAS: DefaultAzureCredential with a service principal in the
                   environment whose authority (AZURE_AUTHORITY_HOST) is 10.99.0.3; the
                   identity library first asks login.microsoftonline.com, which does not
                   resolve in the namespace
  publish-credential-blackhole  the same without AZURE_AUTHORITY_HOST, with a private
                   /etc/hosts (a mount namespace too) mapping login.microsoftonline.com
                   to 10.99.0.3: the token request gets no answer at all

For each: wall seconds, exit code, the failing step (manifest.json / summary.json), the
number of stderr lines that are not JSON, and the error's first line. Prints a Markdown
table. Needs `unshare` and `ip` (util-linux, iproute2) and user namespaces.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from sparse_vhd import make_sparse_vhd  # noqa: E402

MiB = 1024 * 1024
HOSTS = {"dns": "mirror.invalid", "refused": "127.0.0.1:9", "blackhole": "10.99.0.2"}
NAMESPACE_SETUP = "ip link set lo up && ip route add 10.99.0.0/24 dev lo && exec \"$@\""
SAS = "sv=2022-11-02&sr=c&sp=racwd&sig=benchSignature%3D"
TEMPLATE = """\
name = "{name}"
[source]
iso = "{iso}"
checksum = "sha256:{digest}"
[distro]
name = "debian"
version = "12"
[vm]
accelerator = "tcg"
[output]
directory = "out/{name}"
"""


@dataclass
class Result:
    scenario: str
    label: str
    seconds: float
    exit_code: int
    failing_step: str
    non_json_lines: int
    error: str


def in_namespace(argv: list[str], hosts: Path | None = None) -> list[str]:
    if hosts is not None:  # a private /etc/hosts in a mount namespace of its own
        argv = ["unshare", "-m", "sh", "-c", 'mount --bind "$0" /etc/hosts && exec "$@"',
                str(hosts), *argv]
    return ["unshare", "-rn", "sh", "-c", NAMESPACE_SETUP, "sh", *argv]


def mirror_command(work: Path, tree: Path, kind: str, builds: int) -> list[str]:
    iso = f"http://{HOSTS[kind]}/bench/debian-12.iso"
    templates = []
    for index in range(builds):
        name = f"bench-{chr(ord('a') + index)}"
        path = work / f"{name}.toml"
        path.write_text(TEMPLATE.format(name=name, iso=iso, digest="0" * 64))
        templates.append(str(path))
    argv = [sys.executable, "-m", "builder", "--log-format", "json", "build", *templates]
    return argv + (["--jobs", str(builds)] if builds > 1 else [])


def publish_command(work: Path, kind: str) -> tuple[list[str], dict[str, str]]:
    image = work / "bench.vhd"
    make_sparse_vhd(image, 32 * MiB, 4 * MiB, extent=4 * MiB, zero_extent=0)
    env: dict[str, str] = {}
    if kind.startswith("credential"):
        url = "https://10.99.0.2/images"
        env = {"AZURE_CLIENT_ID": "00000000-0000-0000-0000-000000000001",
               "AZURE_TENANT_ID": "00000000-0000-0000-0000-000000000002",
               "AZURE_CLIENT_SECRET": "bench-secret"}
        if kind == "credential":
            env["AZURE_AUTHORITY_HOST"] = "https://10.99.0.3"
    else:
        scheme = "http" if kind == "refused" else "https"
        url = f"{scheme}://{HOSTS[kind]}/images?{SAS}"
    argv = [sys.executable, "-m", "builder", "--log-format", "json", "publish", str(image),
            "--container-url", url, "--force"]
    return argv, env


def failing_step(work: Path) -> str:
    summary = work / "out" / "summary.json"
    manifests = sorted((work / "out").glob("*/manifest.json"))
    steps = []
    if summary.is_file():
        steps = [str(b.get("failing_step")) for b in json.loads(summary.read_text())["builds"]]
    elif manifests:
        steps = [str((json.loads(m.read_text()).get("failure") or {}).get("step"))
                 for m in manifests]
    return ", ".join(steps) or "-"


def run(scenario: str, tree: Path, label: str, timeout: float) -> Result:
    kind, _, count = scenario.partition("-")[2].partition("-")
    with tempfile.TemporaryDirectory(prefix=f"bench-{scenario}-") as tmp:
        work = Path(tmp)
        env = {**os.environ, "PYTHONPATH": str(tree), "AZBUILD_CACHE_DIR": str(work / "cache"),
               "AZBUILD_WORK_DIR": str(work / "work")}
        for name in ("AZURE_STORAGE_CONNECTION_STRING", "AZURE_CLIENT_ID", "AZURE_TENANT_ID",
                     "AZURE_CLIENT_SECRET", "AZURE_AUTHORITY_HOST"):
            env.pop(name, None)
        hosts = None
        if scenario.startswith("iso-"):
            argv = mirror_command(work, tree, kind, int(count))
        else:
            kind = scenario.removeprefix("publish-")
            argv, extra = publish_command(work, kind)
            env.update(extra)
            if kind == "credential-blackhole":
                hosts = work / "hosts"
                hosts.write_text("127.0.0.1 localhost\n10.99.0.3 login.microsoftonline.com\n")
        started = time.monotonic()
        try:
            proc = subprocess.run(in_namespace(argv, hosts), cwd=work, env=env, capture_output=True,
                                  text=True, timeout=timeout, check=False)
            code, stderr = proc.returncode, proc.stderr
        except subprocess.TimeoutExpired as exc:
            code, stderr = -1, (exc.stderr or b"").decode() if isinstance(exc.stderr, bytes) \
                else str(exc.stderr or "")
        seconds = time.monotonic() - started
        records, other = [], 0
        for line in stderr.splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                other += 1
        errors = [r["message"] for r in records if r.get("level") == "error"]
        return Result(scenario, label, round(seconds, 1), code, failing_step(work), other,
                      (errors[-1].splitlines()[0] if errors else "")[:160])


SCENARIOS = [f"iso-{kind}-{n}" for kind in HOSTS for n in (1, 2)]
SCENARIOS += [f"publish-{kind}" for kind in HOSTS]
SCENARIOS += ["publish-credential", "publish-credential-blackhole"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", type=Path, default=REPO, help="the azbuild source to run")
    parser.add_argument("--label", default="after", help="the figures' label (before/after)")
    parser.add_argument("--scenario", action="append", choices=SCENARIOS,
                        help="run only these (repeatable); default: all")
    parser.add_argument("--parallel", action="store_true",
                        help="run the scenarios at once (they mostly wait)")
    parser.add_argument("--timeout", type=float, default=1800, help="per scenario, seconds")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    chosen = args.scenario or SCENARIOS
    with ThreadPoolExecutor(max_workers=len(chosen) if args.parallel else 1) as pool:
        results = list(pool.map(lambda s: run(s, args.tree.resolve(), args.label, args.timeout),
                                chosen))
    print("| scenario | label | seconds | exit | failing step | non-JSON stderr lines | error |")
    print("|---|---|---:|---:|---|---:|---|")
    for r in results:
        error = r.error.replace("|", "\\|")
        print(f"| {r.scenario} | {r.label} | {r.seconds:.1f} | {r.exit_code} | "
              f"{r.failing_step} | {r.non_json_lines} | {error} |")
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
