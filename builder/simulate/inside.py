"""The simulation itself, run inside its private network namespace:
`python -m builder.simulate.inside CONFIG.json`.

It brings the namespace's loopback up with IMDS's address on it, writes the provisioning
media, starts the fabric and the VM, waits (bounded, with progress every 30 s) for the
agent's Ready report and for SSH, checks the first boot over SSH, and writes the
outcome. Its log goes to stderr as JSON lines, which the outer process relays. Every
process it starts dies with it (setpriv --pdeathsig), and the namespace dies with the
last of them: nothing outlives a simulation, not even after kill -9.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import paramiko

from builder.errors import AzbuildError
from builder.run import run
from builder.simulate.config import SimulationConfig
from builder.simulate.exchange import HealthReport
from builder.simulate.fabric import Fabric
from builder.simulate.machine import GUEST_IP, GUEST_MAC, IMDS_IP, qemu_argv
from builder.simulate.outcome import SimulationOutcome
from builder.simulate.ovf_env import Provisioning, write_provisioning_media
from builder.simulate.probes import check_first_boot
from builder.vm.ssh import wait_for_ssh

log = logging.getLogger("builder.simulate")

# What the agents send once provisioning failed: NotReady with this substatus.
FAILED_SUBSTATUS = "ProvisioningFailed"
# After the checks: how long reports keep being watched for a late NotReady, and how long
# an agent still NotReady (waagent waiting for cloud-init) may take to report Ready.
SETTLE_SECONDS = 5.0
SETTLE_BOUND = 180.0


class JsonLines(logging.Handler):
    """Log records as JSON lines on stderr, for the outer process to relay."""

    def emit(self, record: logging.LogRecord) -> None:
        line = json.dumps({"level": record.levelname, "message": record.getMessage()})
        sys.stderr.write(line + "\n")
        sys.stderr.flush()


def configure_loopback() -> None:
    """The namespace starts with its loopback down and no IMDS address."""
    run(["ip", "link", "set", "lo", "up"])
    run(["ip", "addr", "add", f"{IMDS_IP}/32", "dev", "lo"])


def start_vm(cfg: SimulationConfig, qemu_log: Path) -> subprocess.Popen[bytes]:
    argv = ["setpriv", "--pdeathsig", "KILL", "--", *qemu_argv(cfg.vm)]
    log.info("starting the simulated VM: %s", " ".join(argv))
    with open(qemu_log, "wb") as out:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT)


def console_tail(cfg: SimulationConfig, lines: int = 15) -> str:
    try:
        text = cfg.vm.console.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.replace("\r", "").splitlines()[-lines:])


def wait_for_report(fabric: Fabric, vm: subprocess.Popen[bytes], cfg: SimulationConfig,
                    started: float, out: SimulationOutcome) -> bool:
    """Wait for Ready or ProvisioningFailed; record the assertion. True on Ready."""
    def ready() -> HealthReport | None:
        return next((r for r in fabric.health_reports() if r.state == "Ready"), None)

    def failed() -> HealthReport | None:
        return next((r for r in fabric.health_reports() if r.substatus == FAILED_SUBSTATUS),
                    None)

    fabric.wait(lambda: bool(ready() or failed()) or vm.poll() is not None,
                cfg.ready_timeout - (time.monotonic() - started),
                what="the agent's Ready report")
    report = ready()
    if report is not None:
        out.seconds_to_ready = report.time - started
        out.add("ready", "pass", "the agent reported Ready",
                f"after {out.seconds_to_ready:.1f}s, from {report.user_agent}")
        return True
    report = failed()
    if report is not None:
        evidence = (f"{report.user_agent} reported {report.state}/{report.substatus} after "
                    f"{report.time - started:.1f}s: {report.description}")
    elif vm.poll() is not None:
        evidence = f"the VM stopped (QEMU exit {vm.returncode}) before any Ready report"
    else:
        seen = sorted({e.target.split("?")[0] for e in fabric.events()})
        evidence = (f"no Ready report within {cfg.ready_timeout:.0f}s; the fabric saw "
                    + (", ".join(seen) if seen else "no request at all (no agent ran, or "
                       "none reached 168.63.129.16)"))
    out.add("ready", "fail", "the agent reported Ready", evidence)
    return False


def last_reports(fabric: Fabric) -> dict[str, HealthReport]:
    """Each agent's latest health report."""
    return {r.user_agent: r for r in fabric.health_reports()}


def settle(fabric: Fabric) -> None:
    """Watch the reports a little longer, and until every agent's last word is Ready or a
    failure (bounded): in cloud-init mode waagent's Ready follows cloud-init's."""
    time.sleep(SETTLE_SECONDS)
    fabric.wait(lambda: all(r.state == "Ready" or r.substatus == FAILED_SUBSTATUS
                            for r in last_reports(fabric).values()),
                SETTLE_BOUND, what="every agent's last report to be Ready")


def check_reports(fabric: Fabric, out: SimulationOutcome) -> None:
    """After the first Ready: no NotReady or ProvisioningFailed; who reported; the chain."""
    reports = fabric.health_reports()
    first_ready = next((r for r in reports if r.state == "Ready"), None)
    if first_ready is not None:
        # In cloud-init mode waagent reports NotReady/Provisioning while it waits for
        # cloud-init, after cloud-init's own Ready: only a failure, or an agent whose
        # last word is not Ready, is a fault.
        failures = [r for r in reports if r.time >= first_ready.time
                    and r.substatus == FAILED_SUBSTATUS]
        last = last_reports(fabric)
        unready = [r for r in last.values() if r.state != "Ready"]
        bad = failures + [r for r in unready if r not in failures]
        out.add("no-failure-after-ready", "fail" if bad else "pass",
                "no ProvisioningFailed after Ready, and each agent's last report is Ready",
                "; ".join(f"{r.user_agent}: {r.state}/{r.substatus} {r.description}"
                          for r in bad[:3]) if bad else
                f"{sum(r.state == 'Ready' for r in reports)} Ready report(s) from "
                f"{len(last)} agent(s)")
    agents = sorted({r.user_agent for r in reports if r.state == "Ready"})
    out.agents = agents
    for agent in fabric.agents():
        if agent.agent not in agents:
            continue
        # cloud-init reads only the goal state (for its container and instance ids);
        # waagent fetches the whole chain.
        whole = agent.agent.lower().startswith("walinuxagent")
        good = agent.goal_state_chain if whole else "goalstate" in agent.documents
        out.add(f"goal-state:{agent.agent.split('/')[0].lower()}", "pass" if good else "fail",
                f"{agent.agent} fetched the goal state" + (" chain" if whole else ""),
                "fetched " + (", ".join(agent.documents) or "nothing"))


def expected_agent(cfg: SimulationConfig, out: SimulationOutcome) -> None:
    if cfg.expect_agent is None:
        return
    prefix = {"waagent": "walinuxagent", "cloud-init": "cloud-init"}[cfg.expect_agent]
    seen = [a for a in out.agents if a.lower().startswith(prefix)]
    out.add("provisioning-agent", "pass" if seen else "fail",
            f"the image's provisioning agent ({cfg.expect_agent}) reported Ready",
            f"Ready from {', '.join(out.agents) or 'nobody'}")


def simulate(cfg: SimulationConfig) -> SimulationOutcome:
    out = SimulationOutcome(image=cfg.image, firmware=cfg.vm.firmware,
                            accelerator=cfg.vm.accelerator)
    began = time.monotonic()
    configure_loopback()
    provisioning = Provisioning(user=cfg.user, hostname=cfg.hostname,
                                public_key=cfg.public_key, custom_data=cfg.custom_data,
                                vm_id=cfg.vm.vm_uuid)
    write_provisioning_media(cfg.vm.media, provisioning)
    with Fabric(provisioning, cfg.fabric_log, guest_ip=GUEST_IP, guest_mac=GUEST_MAC) as fabric:
        vm = start_vm(cfg, cfg.vm.console.with_name("qemu.log"))
        started = time.monotonic()
        try:
            if wait_for_report(fabric, vm, cfg, started, out):
                session_checks(cfg, vm, started, out)
                settle(fabric)
            check_reports(fabric, out)
            expected_agent(cfg, out)
        finally:
            vm.kill()
            vm.wait()
    out.seconds = time.monotonic() - began
    return out


def session_checks(cfg: SimulationConfig, vm: subprocess.Popen[bytes], started: float,
                   out: SimulationOutcome) -> None:
    pkey = paramiko.Ed25519Key.from_private_key_file(str(cfg.private_key))
    alive: Callable[[], bool] = lambda: vm.poll() is None  # noqa: E731
    try:
        session = wait_for_ssh("127.0.0.1", cfg.vm.ssh_port, username=cfg.user, host_key=None,
                               pkey=pkey, timeout=cfg.ssh_timeout, alive=alive,
                               failure_context=lambda: "console:\n" + console_tail(cfg))
    except AzbuildError as exc:
        out.add("ssh", "fail", "SSH answers on the first boot with the ovf-env's key",
                f"{str(exc).splitlines()[0]} ({cfg.ssh_timeout:.0f}s after Ready)")
        return
    with session:
        out.seconds_to_ssh = time.monotonic() - started
        out.add("ssh", "pass", "SSH answers on the first boot with the ovf-env's key",
                f"after {out.seconds_to_ssh:.1f}s, host key {session.host_key_fingerprint()}")
        check_first_boot(session, cfg, out)


def main(argv: list[str]) -> int:
    root = logging.getLogger()
    root.handlers[:] = [JsonLines()]
    root.setLevel(logging.INFO)
    logging.getLogger("paramiko").setLevel(logging.WARNING)
    cfg = SimulationConfig.read(Path(argv[0]))
    try:
        outcome = simulate(cfg)
    except AzbuildError as exc:
        outcome = SimulationOutcome(image=cfg.image, firmware=cfg.vm.firmware,
                                    accelerator=cfg.vm.accelerator, error=str(exc))
    tmp = cfg.outcome.with_suffix(".tmp")
    tmp.write_text(json.dumps(outcome.to_json(), indent=1))
    tmp.replace(cfg.outcome)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
