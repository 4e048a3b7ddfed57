"""The user's provisioners, then the generated Azure preparation, check and deprovision."""

from __future__ import annotations

import logging
import re
import tempfile
from contextlib import ExitStack
from pathlib import Path

from builder.cache.chain import store_cache_point
from builder.context import BuildContext, timed_guest_wait
from builder.errors import BuildError, indent
from builder.provision import run_provisioners
from builder.vm.guest import open_session
from builder.vm.ssh import SSHSession

log = logging.getLogger(__name__)

GUEST_DIR = "/var/tmp/azbuild"
PREP_TIMEOUT = 3600.0  # azure-prep.sh: package installs and an initrd rebuild under TCG
CHECK_TIMEOUT = 600.0  # azure-check.sh only reads
_CHECK_LINE = re.compile(r"^(R\d\d)\s+(pass|fail|skip|warn)\b\s*(.*)$")


def run(ctx: BuildContext, stack: ExitStack) -> None:
    """The provisioners not already in the cached disk the build started from, stopping at
    each cache point (`cache = true`) to keep the disk there (docs/cache.md)."""
    provisioners = ctx.template.provision
    if not provisioners:
        log.info("no provisioners")
        return
    start = ctx.provision_start
    if start:
        log.info("provisioners 1..%d are in the cached disk: starting at %d", start, start + 1)
    caching = bool(ctx.chain_keys)
    begin = start
    while begin < len(provisioners):
        end = begin
        while end < len(provisioners) - 1 and not (caching and provisioners[end].cache):
            end += 1
        with timed_guest_wait(ctx):
            ctx.session = run_provisioners(
                provisioners[begin:end + 1], session=_session(ctx),
                reconnect=lambda timeout: open_session(ctx, stack, timeout),
                first=begin + 1, total=len(provisioners),
                scripts=ctx.the_plan.provision_scripts,
            )
        ctx.record_fed([f"provision-{index + 1}.sh" for index in range(begin, end + 1)
                        if index in ctx.the_plan.provision_scripts])
        if caching and provisioners[end].cache:
            store_cache_point(ctx, stack, end)
        begin = end + 1


def _session(ctx: BuildContext) -> SSHSession:
    assert ctx.session is not None
    return ctx.session


def azure_preparation(ctx: BuildContext, stack: ExitStack) -> None:
    """Upload and run azure-prep.sh and azure-check.sh; start deprovision.sh detached
    (it removes the build's own user and key, so it must outlive this connection)."""
    session = _session(ctx)
    scripts = ctx.the_plan.prep_scripts
    for requirement, reason in ctx.template.azure.skip.items():
        log.warning("skipping %s as the template asks: %s", requirement, reason)
    # One upload of the whole directory: each upload costs the guest a few commands
    # (mktemp, SFTP, sudo install), seconds under TCG.
    with tempfile.TemporaryDirectory(prefix="azbuild-scripts-") as tmp:
        for name, text in scripts.items():
            (Path(tmp) / name).write_text(text)
            (Path(tmp) / name).chmod(0o700)
        session.upload(Path(tmp), GUEST_DIR, mode=0o700)
    ctx.record_fed(list(scripts))
    with timed_guest_wait(ctx):
        _run_script(session, "azure-prep.sh", "[azure-prep]")
        _run_check(session)
    log.info("starting the final deprovision script; the guest powers itself off")
    session.run_detached(f"/bin/bash {GUEST_DIR}/deprovision.sh", sudo=True)


def _run_script(session: SSHSession, name: str, prefix: str) -> list[str]:
    lines: list[str] = []

    def on_line(line: str) -> None:
        lines.append(line)
        log.info("%s %s", prefix, line)

    status = session.run(f"/bin/bash {GUEST_DIR}/{name}", sudo=True, on_line=on_line,
                         timeout=PREP_TIMEOUT)
    if status != 0:
        tail = indent(lines[-30:])
        raise BuildError(f"{name} failed with exit status {status} in the guest:\n{tail}")
    return lines


def _run_check(session: SSHSession) -> None:
    """The read-only in-guest check: every requirement must hold before generalising."""
    lines: list[str] = []

    def on_line(line: str) -> None:
        lines.append(line)
        log.info("[azure-check] %s", line)

    session.run(f"/bin/bash {GUEST_DIR}/azure-check.sh", sudo=True, on_line=on_line,
                timeout=CHECK_TIMEOUT)
    failed = [m for m in map(_CHECK_LINE.match, lines) if m and m.group(2) == "fail"]
    if failed:
        details = indent(f"{m.group(1)}: {m.group(3)}" for m in failed)
        ids = ", ".join(m.group(1) for m in failed)
        raise BuildError(
            f"the guest does not meet {ids} after the Azure preparation:\n{details}",
            hint="fix it in a provisioner, or skip it with a reason in [azure] skip",
        )
    if not any(_CHECK_LINE.match(line) for line in lines):
        raise BuildError("azure-check.sh printed no requirement lines:\n" + "\n".join(lines))
