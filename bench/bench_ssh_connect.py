"""Benchmark: from the first `SSH-2.0-` banner to an authenticated session (target: <= 1 s).

Each run starts `wait_for_ssh` against a port where nothing listens yet, then
starts a real sshd (tests/sshd.py: 127.0.0.1, generated host key, root by key)
a moment later, the way a guest's sshd comes up while the engine waits. The
probe timestamps the first banner it reads; the session records when it is
authenticated. Run as root:

    .venv/bin/python bench/bench_ssh_connect.py [--runs 7] [--delay 0.5]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from sshd import SshServer, sshd_available

from builder.vm.ssh import wait_for_ssh

log = logging.getLogger("bench_ssh_connect")


def one_run(delay: float) -> dict[str, float]:
    server = SshServer()
    spawned: list[float] = []

    def start_sshd() -> None:
        spawned.append(time.monotonic())
        server.start(wait=False)

    timer = threading.Timer(delay, start_sshd)
    try:
        begin = time.monotonic()
        timer.start()
        session = wait_for_ssh(
            "127.0.0.1", server.port, username="root",
            host_key=server.host_key.public_line, pkey=server.client_key.to_paramiko(),
            timeout=30,
        )
        with session:
            assert session.first_banner_at is not None and session.ready_at is not None
            first_command = time.monotonic()
            session.check_output("true")
            command_done = time.monotonic()
            return {
                "banner_to_session": session.ready_at - session.first_banner_at,
                "spawn_to_banner": session.first_banner_at - spawned[0],
                "total_wait": session.ready_at - begin,
                "first_command": command_done - first_command,
            }
    finally:
        timer.join()
        server.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--delay", type=float, default=0.5,
                        help="seconds between the start of the wait and the start of sshd")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stdout)
    log.setLevel(logging.INFO)
    why = sshd_available()
    if why:
        log.error("cannot run: %s", why)
        return 2
    results = [one_run(args.delay) for _ in range(max(5, args.runs))]
    log.info("%-20s %10s %10s %10s", "metric (ms)", "median", "min", "max")
    for key in ("banner_to_session", "spawn_to_banner", "total_wait", "first_command"):
        values = [r[key] * 1000 for r in results]
        log.info("%-20s %10.1f %10.1f %10.1f", key, statistics.median(values), min(values),
                 max(values))
    median = statistics.median(r["banner_to_session"] for r in results)
    verdict = "PASS" if median <= 1.0 else "FAIL"
    log.info("%s: median banner->session %.3fs over %d runs (target <= 1s)", verdict, median,
             len(results))
    return 0 if median <= 1.0 else 1


if __name__ == "__main__":
    sys.exit(main())
