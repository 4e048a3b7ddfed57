"""The command line: commands, options, output formats, exit codes and signals."""

from __future__ import annotations

import argparse
import json
import os
import pty
import signal
import subprocess
import sys
import textwrap
import time
import tomllib
from pathlib import Path

import jsonschema
import pytest

from builder import __version__
from builder.cli import build_parser, main
from builder.models import template_json_schema

REPO = Path(__file__).resolve().parent.parent
AZBUILD = Path(sys.executable).parent / "azbuild"
EXAMPLES = sorted(str(p) for p in (REPO / "examples").glob("*.toml"))

SUPPORTED = {
    "centos": ["6", "7", "stream8", "stream9"],
    "rhel": ["6", "7", "8", "9"],
    "rocky": ["8", "9"],
    "almalinux": ["8", "9"],
    "oracle": ["7", "8", "9"],
    "ubuntu": ["20.04", "22.04", "24.04"],
    "debian": ["11", "12"],
    "sles": ["12", "15"],
    "opensuse-leap": ["15"],
}


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("no subcommands")


COMMANDS = ["validate", "inspect", "schema", "distros", "build", "render", "convert", "check",
            "gc", "publish"]


def test_the_command_set() -> None:
    assert sorted(_subcommands()) == sorted(COMMANDS)


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"azbuild {__version__}"


@pytest.mark.parametrize("command", [[], *([c] for c in COMMANDS)], ids=lambda c: " ".join(c))
def test_help_everywhere(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: azbuild")
    assert "--debug" in out and "--log-format" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "the following arguments are required: COMMAND"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["validate"], "the following arguments are required: TEMPLATE"),
        (["inspect", "x.toml", "--format", "yaml"], "invalid choice: 'yaml'"),
        (["--log-format", "xml", "schema"], "invalid choice: 'xml'"),
    ],
)
def test_usage_errors_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_distros_lists_every_supported_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["distros"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["name", "distribution", "versions"]
    listed = {line.split()[0]: line.split(None, 1)[1] for line in lines[1:]}
    for name, versions in SUPPORTED.items():
        assert listed[name].endswith(", ".join(versions)), name
    assert main(["distros", "--json"]) == 0
    data = {d["name"]: d["versions"] for d in json.loads(capsys.readouterr().out)}
    assert data == SUPPORTED


def test_validate_every_example(capsys: pytest.CaptureFixture[str]) -> None:
    assert len(EXAMPLES) >= 9
    assert main(["validate", *EXAMPLES]) == 0
    out = capsys.readouterr().out
    assert out.count(": valid (") == len(EXAMPLES)


def test_validate_every_example_in_a_real_process() -> None:
    proc = subprocess.run([str(AZBUILD), "validate", *EXAMPLES], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("fmt", ["toml", "json"])
def test_inspect_prints_the_resolved_template(
    fmt: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["inspect", str(REPO / "examples" / "ubuntu.toml"), "--format", fmt]) == 0
    out = capsys.readouterr().out
    data = json.loads(out) if fmt == "json" else tomllib.loads(out)
    assert data["azure"]["provisioning"] == "cloud-init"  # from the cloud-init layer
    assert data["vm"]["disk_size"] == "30GiB"  # a model default, as written
    assert data["output"]["directory"] == "output/ubuntu-24.04"
    assert "extends" not in data  # resolved away
    jsonschema.Draft202012Validator(template_json_schema()).validate(data)


def test_inspect_with_var_and_var_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    var_file = tmp_path / "vars.toml"
    var_file.write_text('iso = "/srv/isos/rhel.iso"\n')
    argv = ["inspect", str(REPO / "examples" / "rhel.toml"), "--format", "json",
            "--var-file", str(var_file), "--var", "checksum=sha256:" + "b" * 64]
    assert main(argv) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["source"] == {"iso": "/srv/isos/rhel.iso", "checksum": "sha256:" + "b" * 64}


def test_schema_is_valid_json_schema(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["required"] == ["name", "source", "distro"]


@pytest.mark.parametrize(
    "argv",
    [["--debug", "--log-format", "json", "validate", "X"],
     ["validate", "X", "--debug", "--log-format", "json"]],
    ids=["before", "after"],
)
def test_global_options_before_or_after_the_command(
    argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("name = 1\n")
    assert main([str(bad) if a == "X" else a for a in argv]) == 2
    err = capsys.readouterr().err
    records = [json.loads(line) for line in err.splitlines()]  # JSON lines only
    assert any("traceback" in r for r in records)  # --debug took effect
    assert records[-1]["level"] == "error"
    assert "name: expected a valid string" in records[-1]["message"]


def test_text_logs_are_plain_when_not_on_a_terminal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    template = tmp_path / "t.toml"
    template.write_text((REPO / "examples" / "rhel.toml").read_text())
    assert main(["validate", str(template)]) == 0
    err = capsys.readouterr().err
    assert "WARNING" in err and "source.iso: file not found" in err
    assert "\x1b[" not in err


def test_rich_output_on_a_terminal() -> None:
    leader, follower = pty.openpty()
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "120"}
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen([str(AZBUILD), "distros"], stdout=follower, stderr=follower,
                            env=env)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # EIO once the child is gone
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert proc.wait(timeout=60) == 0
    out = b"".join(chunks).decode()
    assert "\x1b[" in out  # styled
    assert "openSUSE Leap" in out and "stream9" in out


def test_docs_cli_md_covers_every_command_and_option() -> None:
    text = (REPO / "docs" / "cli.md").read_text()
    for name, sub in _subcommands().items():
        assert f"## azbuild {name}" in text, name
        for action in sub._actions:
            for option in action.option_strings:
                assert option in text, f"{name} {option}"
    for code in ("0", "1", "2", "130", "143"):
        assert f"| {code} |" in text


# --- signals -------------------------------------------------------------------------------

# No command runs long enough to be interrupted reliably yet (build needs a VM), so the
# command's work is replaced by a wait; main(), its signal handling and the process's exit
# code are the real ones.
WAITER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from builder import cli

    def waiting(args):
        marker = Path(args.templates[0])
        try:
            marker.write_text("running")
            time.sleep(60)
        finally:
            marker.write_text("cleaned up")
        return 0

    cli.cmd_validate = waiting
    sys.exit(cli.main(["validate", sys.argv[1]]))
""")


@pytest.mark.parametrize(
    ("signum", "code", "message"),
    [(signal.SIGTERM, 143, "terminated by SIGTERM"), (signal.SIGINT, 130, "interrupted by Ctrl-C")],
    ids=["SIGTERM", "SIGINT"],
)
def test_signals_unwind_and_exit_with_their_code(
    tmp_path: Path, signum: int, code: int, message: str
) -> None:
    marker = tmp_path / "marker"
    proc = subprocess.Popen(
        [sys.executable, "-c", WAITER, str(marker)], cwd=REPO, stderr=subprocess.PIPE,
        text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )  # started with SIGINT ignored, as a shell's background job is: Ctrl-C must still work
    deadline = time.monotonic() + 30
    while not (marker.exists() and marker.read_text() == "running"):
        assert time.monotonic() < deadline and proc.poll() is None, "the command never started"
        time.sleep(0.02)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == code
    assert f"error: {message}; cleaned up" in err
    assert "Traceback" not in err
    assert marker.read_text() == "cleaned up"


def test_main_from_a_thread_leaves_signals_alone(capsys: pytest.CaptureFixture[str]) -> None:
    import threading

    before = signal.getsignal(signal.SIGTERM)
    results: list[int] = []
    thread = threading.Thread(target=lambda: results.append(main(["validate", EXAMPLES[0]])))
    thread.start()
    thread.join(60)
    assert results == [0]
    assert signal.getsignal(signal.SIGTERM) is before
    assert ": valid (" in capsys.readouterr().out
