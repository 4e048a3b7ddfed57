"""on_failure, the one cleanup-on-failure helper, and the work directory that uses it:
removed after a build, kept after a failed one only with --on-error=abort."""

from __future__ import annotations

import dataclasses
import time
from contextlib import ExitStack
from pathlib import Path

import pytest

from builder.context import BuildContext, BuildOptions, on_failure, timed_guest_wait
from builder.errors import BuildError
from builder.paths import BUILD_LOG
from builder.template import load_template
from builder.work_dir import make_work_dir
from distros import resolve


class KeptFailure(BuildError):
    keep_outputs = True


def _unwind(error: BaseException | None, **kwargs: bool) -> list[str]:
    """What ran, in order, as a stack with on_failure between two cleanups unwinds."""
    ran: list[str] = []
    try:
        with ExitStack() as stack:
            stack.callback(ran.append, "registered before")
            on_failure(stack, lambda: ran.append("action"),
                       otherwise=lambda: ran.append("otherwise"), **kwargs)
            stack.callback(ran.append, "registered after")
            if error is not None:
                raise error
    except BaseException as exc:
        assert exc is error  # on_failure never swallows the build's exception
    return ran


def test_the_action_runs_on_failure_in_its_place_among_the_cleanups() -> None:
    assert _unwind(BuildError("boom")) == ["registered after", "action", "registered before"]


def test_otherwise_runs_on_success_and_the_action_does_not() -> None:
    assert _unwind(None) == ["registered after", "otherwise", "registered before"]


@pytest.mark.parametrize("error", [KeyboardInterrupt(), BuildError("boom")])
def test_an_interrupt_is_a_failure_too(error: BaseException) -> None:
    assert "action" in _unwind(error, unless_outputs_kept=True)


def test_a_failure_that_keeps_the_outputs_runs_neither_when_asked() -> None:
    assert _unwind(KeptFailure("check failed"), unless_outputs_kept=True) == [
        "registered after", "registered before"]
    assert "action" in _unwind(KeptFailure("check failed"))


def _context(tmp_path: Path, on_error: str) -> BuildContext:
    image = tmp_path / "disk.raw"
    image.write_bytes(b"")
    template = tmp_path / "t.toml"
    template.write_text(f'name = "t"\n[source]\ndisk_image = "{image}"\n'
                        '[distro]\nname = "debian"\nversion = "12"\n')
    options = dataclasses.replace(BuildOptions(), on_error=on_error)
    return BuildContext(loaded=load_template(template), options=options,
                        distro=resolve("debian", "12"), uri="qemu:///system",
                        output_dir=tmp_path / "out", build_id="c0ffee00")


@pytest.mark.parametrize(("on_error", "fails", "kept"), [
    ("cleanup", False, False), ("abort", False, False),
    ("cleanup", True, False), ("abort", True, True),
])
def test_the_work_directory_stays_only_for_a_failure_with_abort(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, on_error: str, fails: bool,
        kept: bool) -> None:
    monkeypatch.setenv("AZBUILD_WORK_DIR", str(tmp_path / "work-root"))
    ctx = _context(tmp_path, on_error)
    ctx.output_dir.mkdir()
    with pytest.raises(BuildError) if fails else ExitStack(), ExitStack() as stack:
        work = make_work_dir(ctx, stack)
        assert (work / BUILD_LOG).is_file()
        if fails:
            raise BuildError("boom")
    assert work.exists() is kept
    assert (ctx.output_dir / BUILD_LOG).is_file()  # kept however the build ended


def test_a_wait_inside_a_wait_counts_once(tmp_path: Path) -> None:
    """A provisioner run that reconnects after a reboot waits on the guest inside a wait:
    the guest's time is counted once, so the overhead (wall minus the guest) stays >= 0."""
    ctx = _context(tmp_path, "cleanup")
    started = time.monotonic()
    with timed_guest_wait(ctx):
        time.sleep(0.05)
        with timed_guest_wait(ctx):
            time.sleep(0.05)
    wall = time.monotonic() - started
    assert 0.1 <= ctx.guest_seconds <= wall
    assert ctx.overhead_seconds(wall) >= 0
