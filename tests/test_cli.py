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
from dataclasses import dataclass, field
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


COMMANDS = ["validate", "inspect", "layers", "schema", "distros", "build", "render", "convert",
            "check", "gc", "publish", "prune", "diff", "cache", "report", "simulate", "fmt"]


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
    assert main(["schema", "--resolved"]) == 0
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
    problem = next(r for r in records if r.get("key") == "name")
    assert problem["file"] == str(bad) and problem["line"] == 1
    assert problem["message"] == f"{bad}: line 1: name: expected a valid string, found the number 1"
    assert records[-1]["level"] == "error"
    assert records[-1]["message"] == "1 of 1 templates are invalid"


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


# --- exit codes as a contract (the table in docs/cli.md) ----------------------------------
# One case per cause, run in text through main() and in JSON in a real process. Rows for corrupt or
# truncated inputs and missing destinations of `convert` and `check` are tested with those
# commands (tests/test_convert.py, tests/test_check_format.py); 130 and 143 by
# test_signals_unwind_and_exit_with_their_code above.

DISK_BASE = textwrap.dedent("""\
    name = "exit-codes"

    [source]
    disk_image = "base.qcow2"

    [distro]
    name = "debian"
    version = "12"
""")


@dataclass
class ExitCase:
    id: str
    code: int
    argv: list[str]  # "{dir}" is the case's directory
    message: str
    files: dict[str, str] = field(default_factory=dict)
    build: bool = False  # records come from a build: each carries build_id and build_name
    env: dict[str, str] = field(default_factory=dict)  # "{dir}" is the case's directory


def _raw_image(path: Path) -> None:
    with open(path, "wb") as f:
        f.truncate(20 * 1024**2 + 3)  # not a VHD, not a whole MiB: not Azure-ready


EXIT_CASES = [
    ExitCase("1-image-not-ready", 1, ["check", "{dir}/disk.raw", "--skip",
                                      "R03,R04,R05,R06,R07,R08,R09,R10,R11,R12,R13,R14,R15"],
             "NOT READY"),
    ExitCase("2-usage-missing-argument", 2, ["build"],
             "the following arguments are required: template"),
    ExitCase("2-usage-unknown-option", 2, ["build", "{dir}/t.toml", "--frobnicate"],
             "unrecognized arguments: --frobnicate"),
    ExitCase("2-bad-template", 2, ["validate", "{dir}/t.toml"],
             "vm.cpus: expected a valid integer, found the boolean true",
             {"t.toml": DISK_BASE + "[vm]\ncpus = true\n"}),
    ExitCase("2-missing-template", 2, ["inspect", "{dir}/nope.toml"],
             "the template file does not exist"),
    ExitCase("2-missing-input", 2, ["build", "{dir}/t.toml"],
             "source.disk_image: file not found", {"t.toml": DISK_BASE}),
    ExitCase("2-missing-var-file", 2, ["render", "{dir}/t.toml", "--out", "{dir}/out",
                                       "--var-file", "{dir}/vars.toml"],
             "--var-file", {"t.toml": DISK_BASE}),
    ExitCase("2-unwritable-destination", 2, ["render", "{dir}/t.toml", "--out", "/proc/x"],
             "cannot create the output directory /proc/x", {"t.toml": DISK_BASE}),
    ExitCase("2-convert-unwritable-destination", 2, ["convert", "{dir}/disk.raw", "/proc/x.vhd"],
             "cannot write /proc/x.vhd"),
    ExitCase("2-destination-is-a-file", 2, ["render", "{dir}/t.toml", "--out", "{dir}/t.toml"],
             "t.toml exists and is not a directory", {"t.toml": DISK_BASE}),
    ExitCase("2-destination-not-empty", 2, ["render", "{dir}/t.toml", "--out", "{dir}"],
             "is not empty", {"t.toml": DISK_BASE}),
    ExitCase("2-prune-missing-output-dir", 2, ["prune", "{dir}/nope", "--keep", "3"],
             "/nope does not exist"),
    ExitCase("2-prune-keep-zero", 2, ["prune", "{dir}", "--keep", "0"],
             "--keep must be at least 1, found 0"),
    # Fails in the build's first check, before any work directory, disk or VM exists.
    ExitCase("2-build-output-is-a-file", 2,
             ["build", "{dir}/t.toml", "--output-dir", "{dir}/base.qcow2"],
             "is a file", {"t.toml": DISK_BASE}, build=True),
    # A mirror that refuses connections (port 1 of the loopback): the fetch step gives up
    # within its retry policy (builder/image/download.py), before any VM.
    ExitCase("3-input-unavailable", 3, ["build", "{dir}/t.toml", "--output-dir", "{dir}/out"],
             "cannot fetch the ISO http://127.0.0.1:1/debian-12.iso",
             {"t.toml": DISK_BASE.replace('disk_image = "base.qcow2"',
                                          'iso = "http://127.0.0.1:1/debian-12.iso"\n'
                                          f'checksum = "sha256:{"0" * 64}"')}, build=True,
             env={"AZBUILD_CACHE_DIR": "{dir}/cache"}),
]


def _exit_case_dir(case: ExitCase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name, value in case.env.items():
        monkeypatch.setenv(name, value.replace("{dir}", str(tmp_path)))
    for name, text in case.files.items():
        (tmp_path / name).write_text(text)
    if "base.qcow2" in DISK_BASE:
        # A blank qcow2: what validate and render inspect passes; no build reads it.
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(tmp_path / "base.qcow2"),
                        "64M"], check=True)
    if case.id == "2-missing-input":
        (tmp_path / "base.qcow2").unlink()
    _raw_image(tmp_path / "disk.raw")
    return tmp_path


def _run_azbuild(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(AZBUILD), *argv], capture_output=True, text=True, cwd=cwd,
                          timeout=120, check=False)


@pytest.mark.parametrize("case", EXIT_CASES, ids=lambda c: c.id)
def test_exit_code_contract(
    case: ExitCase, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    directory = _exit_case_dir(case, tmp_path, monkeypatch)
    monkeypatch.chdir(directory)
    assert main([a.replace("{dir}", str(directory)) for a in case.argv]) == case.code
    out, err = capsys.readouterr()
    assert case.message in out + err
    assert "Traceback" not in err and "internal error" not in err


@pytest.mark.parametrize("case", EXIT_CASES, ids=lambda c: c.id)
def test_every_stderr_line_is_json_under_log_format_json(
    case: ExitCase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = _exit_case_dir(case, tmp_path, monkeypatch)
    argv = ["--log-format", "json", *(a.replace("{dir}", str(directory)) for a in case.argv)]
    proc = _run_azbuild(argv, directory)
    assert proc.returncode == case.code, proc.stderr
    records = [json.loads(line) for line in proc.stderr.splitlines()]
    assert case.message in proc.stdout + " ".join(r["message"] for r in records)
    if case.code == 2:
        assert records[-1]["level"] == "error"
    if case.build:
        ids = {(r.get("build_id"), r.get("build_name")) for r in records}
        assert len(ids) == 1 and None not in next(iter(ids)), records
        assert next(iter(ids))[1] == "exit-codes"


def test_a_bug_is_an_internal_error_with_exit_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A command whose code has a bug; main()'s handling of it is what is tested.
    import builder.cli as cli

    def buggy(args: argparse.Namespace) -> int:
        return {}["missing"]  # type: ignore[no-any-return]

    monkeypatch.setattr(cli, "cmd_schema", buggy)
    assert main(["schema"]) == 1
    err = capsys.readouterr().err
    assert "error: internal error: KeyError: 'missing'" in err
    assert "please report it" in err


def test_validate_logs_one_json_record_per_problem(tmp_path: Path) -> None:
    first = tmp_path / "a.toml"
    first.write_text(DISK_BASE + '[vm]\ncpus = true\nfirmwear = "uefi"\n')
    second = tmp_path / "b.toml"
    second.write_text(DISK_BASE.replace('"12"', '"99"'))
    good = REPO / "examples" / "debian.toml"
    proc = _run_azbuild(["validate", "--log-format", "json", str(first), str(second), str(good)],
                        tmp_path)
    assert proc.returncode == 2
    records = [json.loads(line) for line in proc.stderr.splitlines()]
    problems = [r for r in records if "key" in r]
    assert [(Path(r["file"]).name, r["key"], r["line"]) for r in problems] == [
        ("a.toml", "vm.cpus", 10), ("a.toml", "vm.firmwear", 11), ("b.toml", "distro.version", 8)
    ]
    assert "did you mean 'firmware'?" in problems[1]["message"]
    assert all("\n" not in r["message"] for r in records)
    assert records[-1]["message"] == "2 of 3 templates are invalid"
    assert f"{good}: valid (debian 12)" in proc.stdout


def test_a_bad_template_for_any_command_is_one_json_record_per_problem(tmp_path: Path) -> None:
    bad = tmp_path / "a.toml"
    bad.write_text(DISK_BASE + '[vm]\ncpus = true\nmemory = "2GB"\n')
    proc = _run_azbuild(["--log-format", "json", "inspect", str(bad)], tmp_path)
    assert proc.returncode == 2
    records = [json.loads(line) for line in proc.stderr.splitlines()]
    assert [(r.get("key"), r.get("line")) for r in records] == [
        ("vm.cpus", 10), ("vm.memory", 11), (None, None)
    ]
    assert "did you mean 2GiB?" in records[1]["message"]
    assert records[-1]["message"] == "template is invalid (2 problems)"


def test_validate_in_text_stays_readable(tmp_path: Path) -> None:
    bad = tmp_path / "a.toml"
    bad.write_text(DISK_BASE + "[vm]\ncpus = true\n")
    proc = _run_azbuild(["validate", str(bad)], tmp_path)
    assert proc.returncode == 2
    assert proc.stderr == (
        f"error: {bad}: template is invalid:\n"
        f"  - {bad}: line 10: vm.cpus: expected a valid integer, found the boolean true\n"
    )


def test_records_inside_a_build_scope_carry_its_id_and_name(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import logging
    import threading

    from builder import log as azlog

    azlog.setup(log_format="json")
    logger = logging.getLogger("builder.test")
    logger.info("before")
    with azlog.build_scope("c0ffee00", "demo"):
        logger.info("in the build")
        thread = threading.Thread(target=lambda: logger.info("from a thread of the build"))
        thread.start()
        thread.join()
    logger.info("after")
    records = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [(r["message"], r.get("build_id"), r.get("build_name")) for r in records] == [
        ("before", None, None),
        ("in the build", "c0ffee00", "demo"),
        ("from a thread of the build", "c0ffee00", "demo"),
        ("after", None, None),
    ]


@pytest.mark.parametrize("command", [["layers"], ["distros"]])
def test_a_reader_that_stops_reading_ends_the_command_quietly(command: list[str]) -> None:
    # `azbuild layers | head -1`: as a Unix tool killed by SIGPIPE, 141 and no message.
    read_end, write_end = os.pipe()
    os.close(read_end)  # gone before the first line is written
    try:
        done = subprocess.run([sys.executable, "-m", "builder", *command], stdout=write_end,
                              stderr=subprocess.PIPE, text=True, timeout=60,
                              cwd=Path(__file__).resolve().parents[1])
    finally:
        os.close(write_end)
    assert done.returncode == 141, done.stderr
    assert done.stderr == ""


@pytest.mark.parametrize("argv", [["--var", "x=1", "validate", "t.toml"],
                                  ["-var", "x=1", "validate", "t.toml"]])
def test_a_command_option_before_the_command_says_where_it_goes(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    assert "(--var is an option of the command: it goes after it" in capsys.readouterr().err


# --- Packer users at home -------------------------------------------------------------------


@pytest.mark.parametrize(("argv", "meant"), [
    (["validate", "t.toml", "-var", "x=1"], "--var"),
    (["build", "t.toml", "-var-file=vars.pkrvars.hcl"], "--var-file"),
    (["build", "t.toml", "-force"], "--force"),
    (["build", "a.toml", "b.toml", "-parallel-builds=2"], "--jobs"),
    (["fmt", "-check", "t.toml"], "--check"),
])
def test_a_packer_single_dash_flag_says_which_option_is_meant(
    argv: list[str], meant: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    flag = next(a for a in argv if a.startswith("-")).partition("=")[0]
    assert f"(did you mean {meant}? azbuild's options take two dashes; Packer's {flag} is" \
        f" {meant} here)" in err


def test_a_single_dash_word_azbuild_does_not_know_gets_no_guess(
    capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["validate", "t.toml", "-frobnicate"]) == 2
    assert "did you mean" not in capsys.readouterr().err
