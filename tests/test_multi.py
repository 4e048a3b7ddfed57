"""`azbuild build T1 T2 ...`: validation first, collisions, variable routing, the memory
slot, relaying, signal forwarding, summary.json, and the locks between builds.

The builds run here are real `python -m builder build` children whose source disk fails
its checksum: they fail fast, before any VM exists. The scheduling and signal mechanics
run real child processes (small Python programs) through the same Runner."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from builder.cli import main
from builder.context import BuildContext, BuildOptions
from builder.errors import Terminated, UsageError
from builder.locks import (
    OUTPUT_LOCK_PATTERN,
    output_directory_lock,
    output_lock_path,
    removable_lock,
    remove_stale_locks,
)
from builder.manifest import MANIFEST_FILE, write_manifest
from builder.multi import (
    MEMORY_MARGIN,
    Job,
    Options,
    Runner,
    mem_available,
    memory_decision,
    plan_jobs,
    route_variables,
    run_builds,
    summary_path,
    tag_line,
)
from builder.report.check_report import CheckResult, Report
from builder.report.summary import (
    SUMMARY_FILE,
    Summary,
    entry_from_manifest,
    summary_json_schema,
    summary_table,
)
from builder.template import load_template
from builder.units import GiB, MiB
from distros import resolve

REPO = Path(__file__).resolve().parent.parent
WRONG = "sha256:" + "ab" * 32


@pytest.fixture
def work_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "work-root"
    monkeypatch.setenv("AZBUILD_WORK_DIR", str(root))
    return root


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "cloud.qcow2"
    subprocess.run(["qemu-img", "create", "-f", "qcow2", str(path), "64M"], check=True,
                   capture_output=True)
    return path


def template(directory: Path, name: str, image: Path, *, variables: str = "",
             memory: str = "1GiB", extra: str = "") -> Path:
    """A template whose build fails its source disk's checksum: no VM, exit 2."""
    path = directory / f"{name}.toml"
    path.write_text(
        f'name = "{name}"\n[source]\ndisk_image = "{image}"\nchecksum = "{WRONG}"\n'
        f'[distro]\nname = "debian"\nversion = "12"\n'
        f'[vm]\ndisk_size = "128MiB"\nmemory = "{memory}"\n{extra}'
        f"[variables]\n{variables}"
    )
    return path


def validate_summary(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    jsonschema.Draft202012Validator(summary_json_schema()).validate(data)
    return data


# --- validation before anything starts ----------------------------------------------------


def test_one_invalid_template_starts_nothing(
    tmp_path: Path, work_root: Path, image: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = template(tmp_path, "good", image)
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "bad"\n[vm]\ncpus = true\n')
    out = tmp_path / "out"
    assert main(["build", str(good), str(bad), "--output-dir", str(out), "--jobs", "2"]) == 2
    err = capsys.readouterr().err
    assert "vm.cpus: expected a valid integer" in err
    assert "source: required key is missing" in err
    assert "no build was started" in err
    assert not out.exists() and not work_root.exists()


def test_every_problem_is_a_json_record_in_json_format(
    tmp_path: Path, image: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad1, bad2 = tmp_path / "b1.toml", tmp_path / "b2.toml"
    bad1.write_text('name = "b1"\n[vm]\ncpus = true\n')
    bad2.write_text("name = \n")
    argv = ["build", str(bad1), str(bad2), "--log-format", "json",
            "--output-dir", str(tmp_path / "out")]
    assert main(argv) == 2
    records = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert {r["template"] for r in records if "template" in r} == {str(bad1), str(bad2)}
    assert records[-1]["message"] == "2 problem(s) in 2 templates; no build was started"


def test_same_name_or_output_directory_is_refused(
    tmp_path: Path, image: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    one = template(tmp_path, "one", image)
    copy = tmp_path / "copy.toml"
    copy.write_text(one.read_text())
    assert main(["build", str(one), str(copy), "--output-dir", str(tmp_path / "o")]) == 2
    assert "have the same name (one)" in capsys.readouterr().err

    # Different names, one output.directory.
    shared = 'output = { directory = "' + str(tmp_path / "shared") + '" }\n'
    a = template(tmp_path, "a", image, extra="")
    b = template(tmp_path, "b", image)
    for path in (a, b):
        path.write_text(shared + path.read_text())
    assert main(["build", str(a), str(b)]) == 2
    err = capsys.readouterr().err
    assert f"have the same output directory ({tmp_path / 'shared'})" in err
    assert not (tmp_path / "shared").exists()


def test_jobs_must_be_positive_and_log_file_takes_one_template(
    tmp_path: Path, image: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = template(tmp_path, "a", image), template(tmp_path, "b", image)
    assert main(["build", str(a), str(b), "--jobs", "0"]) == 2
    assert "--jobs must be at least 1" in capsys.readouterr().err
    assert main(["build", str(a), str(b), "--log-file", str(tmp_path / "l")]) == 2
    assert "--log-file takes one template" in capsys.readouterr().err


# --- variables ------------------------------------------------------------------------------


def test_a_var_goes_only_to_the_templates_that_declare_it(tmp_path: Path, image: Path) -> None:
    a = template(tmp_path, "a", image, variables='size = "1"\nshared = "x"\n')
    b = template(tmp_path, "b", image, variables='shared = "y"\n')
    routed, unknown = route_variables([a, b], {"size": "2", "shared": "z"}, [])
    assert routed == [{"size": "2", "shared": "z"}, {"shared": "z"}]
    assert unknown == []
    _, unknown = route_variables([a, b], {"sise": "2"}, [])
    assert unknown == ["sise"]


def test_a_var_no_template_declares_is_an_error(
    tmp_path: Path, image: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = template(tmp_path, "a", image, variables='size = "1"\n')
    b = template(tmp_path, "b", image)
    out = tmp_path / "out"
    assert main(["build", str(a), str(b), "--var", "colour=red", "--output-dir", str(out)]) == 2
    assert "no template declares the variable 'colour' (set by --var)" in capsys.readouterr().err
    assert not out.exists()


def test_validate_of_several_templates_says_what_their_build_would(
    tmp_path: Path, image: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A nightly job runs `validate *.toml --var ... --var-file ...` before `build *.toml`:
    # the same routing of variables, and the same refusals.
    a = template(tmp_path, "a", image, variables='size = "1"\n')
    b = template(tmp_path, "b", image, variables='colour = "blue"\n')
    var_file = tmp_path / "vars.toml"
    var_file.write_text('size = "3"\ncolour = "red"\n')
    assert main(["validate", str(a), str(b), "--var", "size=2",
                 "--var-file", str(var_file)]) == 0
    assert main(["validate", str(a), str(b), "--var", "sise=2"]) == 2
    assert "no template declares the variable 'sise'" in capsys.readouterr().err
    twin = template(tmp_path, "twin", image)
    twin.write_text(twin.read_text().replace('name = "twin"', 'name = "a"'))
    assert main(["validate", str(a), str(twin)]) == 2
    err = capsys.readouterr().err
    assert f"{a} and {twin} have the same name (a)" in err
    assert main(["build", str(a), str(twin)]) == 2  # as the build refuses them
    assert f"{a} and {twin} have the same name (a)" in capsys.readouterr().err


def test_a_shared_var_file_sets_what_each_template_declares(
    tmp_path: Path, image: Path
) -> None:
    a = template(tmp_path, "a", image, variables='size = "1"\n')
    b = template(tmp_path, "b", image, variables='colour = "blue"\n')
    var_file = tmp_path / "vars.toml"
    var_file.write_text('size = "3"\ncolour = "red"\n')
    jobs, problems = plan_jobs([str(a), str(b)], Options(var_files=[var_file],
                                                    output_dir=tmp_path / "out"))
    assert problems == []
    assert [job.argv[-1] for job in jobs] == ["--shared-var-files"] * 2
    # What each child loads, as the child's CLI does with --shared-var-files.
    loaded_a = load_template(a, {}, [var_file], ignore_undeclared_file_vars=True)
    loaded_b = load_template(b, {}, [var_file], ignore_undeclared_file_vars=True)
    assert loaded_a.variables["size"] == "3" and "colour" not in loaded_a.variables
    assert loaded_b.variables["colour"] == "red" and "size" not in loaded_b.variables


# --- the memory slot -----------------------------------------------------------------------


def test_memory_decision() -> None:
    fits = memory_decision(2 * GiB, available=8 * GiB, reserved=2 * GiB, running=1)
    assert fits.start
    assert "needs 2.0GiB + 0.5GiB margin; 8.0GiB available" in fits.reason
    # 2 GiB + margin does not fit in 4 - 2 GiB: wait while another build runs.
    waits = memory_decision(2 * GiB, available=4 * GiB, reserved=2 * GiB, running=1)
    assert not waits.start and "2.0GiB reserved by 1 running build(s)" in waits.reason
    # Exactly fitting, margin included.
    assert memory_decision(GiB, available=GiB + MEMORY_MARGIN, reserved=0, running=0).start
    assert not memory_decision(GiB, available=GiB + MEMORY_MARGIN, reserved=1, running=1).start
    # Never fits: starts alone, and says so.
    alone = memory_decision(64 * GiB, available=4 * GiB, reserved=0, running=0)
    assert alone.start and "starting it anyway, alone" in alone.reason


def test_mem_available_reads_proc_meminfo(tmp_path: Path) -> None:
    assert mem_available() > 0
    fake = tmp_path / "meminfo"
    fake.write_text("MemTotal:       16000000 kB\nMemAvailable:    1234 kB\n")
    assert mem_available(fake) == 1234 * 1024
    fake.write_text("MemTotal:       16000000 kB\n")
    with pytest.raises(UsageError, match="no MemAvailable"):
        mem_available(fake)


def _clock_job(name: str, directory: Path, memory: int, seconds: float) -> Job:
    """A real child that prints when it starts and ends (monotonic clock)."""
    code = ("import time,sys; print('start', time.monotonic(), flush=True); "
            f"time.sleep({seconds}); print('end', time.monotonic(), flush=True)")
    return Job(name=name, template=directory / f"{name}.toml", output_dir=directory / name,
               memory=memory, argv=[sys.executable, "-c", code])


def _times(lines: list[str], name: str) -> tuple[float, float]:
    mine = [line.split() for line in lines if line.startswith(f"[{name}] ")]
    found = {words[1]: float(words[2]) for words in mine}
    return found["start"], found["end"]


def test_a_build_that_does_not_fit_waits_for_the_one_running(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    jobs = [_clock_job("big1", tmp_path, 3 * GiB, 0.6), _clock_job("big2", tmp_path, 3 * GiB, 0.1),
            _clock_job("small", tmp_path, 256 * MiB, 0.1)]
    lines: list[str] = []
    # Room for one big build (plus the margin) at a time, whatever the machine has.
    runner = Runner(jobs, 3, "text", lines.append, available=lambda: 4 * GiB, poll=0.05)
    with caplog.at_level("INFO", logger="builder.multi"):
        runner.run()
    _, end1 = _times(lines, "big1")
    start2, _ = _times(lines, "big2")
    start_small, _ = _times(lines, "small")
    assert start2 >= end1, "big2 started while big1 held the memory"
    # small would have fit beside big1, but big2 was waiting ahead of it.
    assert start_small >= end1, "small overtook big2, which was waiting"
    assert caplog.text.index("[big2] starting") < caplog.text.index("[small] starting")
    assert "[big2] waiting for memory" in caplog.text
    assert all(o.exit_code == 0 for o in runner.outcomes.values())


def test_at_most_jobs_builds_run_at_once(tmp_path: Path) -> None:
    jobs = [_clock_job(f"j{i}", tmp_path, 256 * MiB, 0.3) for i in range(4)]
    lines: list[str] = []
    Runner(jobs, 2, "text", lines.append, available=lambda: 64 * GiB, poll=0.02).run()
    spans = [_times(lines, f"j{i}") for i in range(4)]
    for start, _ in spans:
        overlapping = sum(s <= start < e for s, e in spans)
        assert overlapping <= 2
    assert max(sum(s <= start < e for s, e in spans) for start, _ in spans) == 2


def test_tag_line() -> None:
    assert tag_line("deb", "06:00:00 INFO    ==> boot", "text") == "[deb] 06:00:00 INFO    ==> boot"
    tagged = json.loads(tag_line("deb", '{"message": "m", "build_name": "deb"}', "json"))
    assert tagged == {"message": "m", "build_name": "deb", "build": "deb"}
    kept = json.loads(tag_line("deb", '{"message": "m", "build": "other"}', "json"))
    assert kept["build"] == "other"
    wrapped = json.loads(tag_line("deb", "Traceback (most recent call last):", "json"))
    assert wrapped["message"] == "Traceback (most recent call last):"
    assert wrapped["build"] == "deb" and wrapped["level"] == "info"


# --- signals ---------------------------------------------------------------------------------

_TRAPPING_CHILD = """
import signal, sys, time, pathlib
marker = pathlib.Path(sys.argv[1])
def cleanup(signum, frame):
    time.sleep(0.3)  # a cleanup that takes a while
    marker.write_text("cleaned up")
    sys.exit(143)
signal.signal(signal.SIGTERM, cleanup)
print("ready", flush=True)
time.sleep(60)
"""


def test_sigterm_is_forwarded_and_waited_for_and_nothing_else_starts(tmp_path: Path) -> None:
    def raise_terminated(signum: int, frame: object) -> None:
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, raise_terminated)
    jobs = [Job(name=f"t{i}", template=tmp_path / f"t{i}.toml", output_dir=tmp_path / f"t{i}",
                memory=256 * MiB,
                argv=[sys.executable, "-c", _TRAPPING_CHILD, str(tmp_path / f"t{i}.done")])
            for i in range(3)]
    lines: list[str] = []
    summaries: list[Summary] = []

    def terminate_when_both_run() -> None:
        deadline = time.monotonic() + 30
        while sum("ready" in line for line in lines) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    killer = threading.Thread(target=terminate_when_both_run)
    killer.start()
    try:
        with pytest.raises(Terminated):
            run_builds(jobs, 2, "text", tmp_path / SUMMARY_FILE, lines.append, summaries.append,
                       available=lambda: 64 * GiB, poll=0.05)
    finally:
        killer.join()
        signal.signal(signal.SIGTERM, previous)
    # Both running children got SIGTERM and finished their cleanup before we returned.
    assert (tmp_path / "t0.done").read_text() == "cleaned up"
    assert (tmp_path / "t1.done").read_text() == "cleaned up"
    assert not (tmp_path / "t2.done").exists()
    data = validate_summary(tmp_path / SUMMARY_FILE)
    assert data["exit_code"] == 143
    assert [(b["name"], b["status"], b["exit_code"]) for b in data["builds"]] == [
        ("t0", "interrupted", 143), ("t1", "interrupted", 143), ("t2", "not started", None)]
    assert summaries[0].builds[2].duration_seconds is None


def test_ctrl_c_reaches_children_as_one_sigterm(tmp_path: Path) -> None:
    """The children run in their own sessions: a Ctrl-C (SIGINT to the terminal's process
    group) reaches the parent only, which sends each child one SIGTERM."""
    jobs = [Job(name="c", template=tmp_path / "c.toml", output_dir=tmp_path / "c",
                memory=256 * MiB,
                argv=[sys.executable, "-c", _TRAPPING_CHILD, str(tmp_path / "c.done")])]
    lines: list[str] = []
    runner = Runner(jobs, 1, "text", lines.append, available=lambda: 64 * GiB, poll=0.05)

    def interrupt() -> None:
        while not any("ready" in line for line in lines):
            time.sleep(0.05)
        child = runner.running[0].process
        assert os.getsid(child.pid) == child.pid != os.getsid(0)
        signal.raise_signal(signal.SIGINT)  # KeyboardInterrupt in the main thread

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    thread = threading.Thread(target=interrupt)
    thread.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            runner.run()
    finally:
        thread.join()
        signal.signal(signal.SIGINT, previous)
    assert (tmp_path / "c.done").read_text() == "cleaned up"
    assert runner.outcomes["c"].exit_code == 143 and runner.outcomes["c"].stopped


# --- real builds and summary.json ----------------------------------------------------------


def test_several_real_builds_write_a_summary_from_their_manifests(
    tmp_path: Path, work_root: Path, image: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = template(tmp_path, "alpha", image, variables='size = "1"\n')
    b = template(tmp_path, "beta", image)
    out = tmp_path / "out"
    code = main(["build", str(a), str(b), "--jobs", "2", "--output-dir", str(out),
                 "--var", "size=2"])
    assert code == 1
    captured = capsys.readouterr()
    assert "[alpha] " in captured.err and "[beta] " in captured.err
    assert "checksum mismatch" in captured.err
    assert "0 of 2 builds succeeded" in captured.out
    data = validate_summary(out / SUMMARY_FILE)
    assert data["exit_code"] == 1 and data["jobs"] == 2
    for entry, name, path in zip(data["builds"], ("alpha", "beta"), (a, b), strict=True):
        manifest = json.loads((out / name / MANIFEST_FILE).read_text())
        assert entry["name"] == name and entry["template"] == str(path)
        assert entry["output_directory"] == str(out / name)
        assert entry["status"] == "failed" and entry["exit_code"] == 2
        assert entry["failing_step"] == manifest["failure"]["step"] == "source disk"
        assert entry["error"] == manifest["failure"]["error"]
        assert entry["artifacts"] == [] and entry["ready"] is None
        assert entry["manifest"] == str(out / name / MANIFEST_FILE)
        assert entry["duration_seconds"] >= 0
    assert list(work_root.iterdir()) == [], "a work directory or lock file was left behind"


def test_one_template_with_output_dir_follows_the_rule_of_several(
    tmp_path: Path, work_root: Path, image: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The README's `build images/*.toml --output-dir "$night"` on a night the glob matches
    one file: DIR/<name>/ and DIR/summary.json, as with two; the build's own exit code."""
    alone = template(tmp_path, "alpha", image)
    out = tmp_path / "out"
    assert main(["build", str(alone), "--output-dir", str(out)]) == 2
    assert "checksum mismatch" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["alpha", SUMMARY_FILE]
    manifest = json.loads((out / "alpha" / MANIFEST_FILE).read_text())
    data = validate_summary(out / SUMMARY_FILE)
    [entry] = data["builds"]
    assert entry["output_directory"] == str(out / "alpha")
    assert entry["status"] == "failed" and entry["exit_code"] == 2 == data["exit_code"]
    assert entry["failing_step"] == manifest["failure"]["step"] == "source disk"
    assert data["jobs"] == 1
    assert list(work_root.iterdir()) == [], "a work directory or lock file was left behind"


def test_json_log_lines_of_children_carry_the_build(
    tmp_path: Path, work_root: Path, image: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = template(tmp_path, "a", image), template(tmp_path, "b", image)
    assert main(["build", str(a), str(b), "--log-format", "json",
                 "--output-dir", str(tmp_path / "out")]) == 1
    records = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    children = [r for r in records if r.get("logger") != "builder.multi" and "build" in r]
    assert {r["build"] for r in children} == {"a", "b"}
    assert all(r["build"] == r["build_name"] for r in children if "build_name" in r)
    parent = [r for r in records if r.get("logger") == "builder.multi" and "build" in r]
    assert {r["build"] for r in parent} == {"a", "b"}
    assert any(r["message"].startswith("[a] starting") for r in parent)


def test_summary_entry_of_a_succeeded_ready_build(tmp_path: Path) -> None:
    image = tmp_path / "disk.raw"
    image.write_bytes(b"")
    loaded = load_template(template(tmp_path, "t", image))
    ctx = BuildContext(loaded=loaded, options=BuildOptions(), distro=resolve("debian", "12"),
                       uri="qemu:///system", output_dir=tmp_path / "out", build_id="c0ffee00")
    ctx.output_dir.mkdir()
    vhd = ctx.artifact_path("vhd")
    vhd.write_bytes(b"an image")
    ctx.artifacts["vhd"] = vhd
    ctx.report = Report(image=str(vhd), checks=[CheckResult("R01", "pass", "fixed VHD")])
    manifest = write_manifest(ctx, None, ["build.log"])
    entry = entry_from_manifest(name="t", template=Path("t.toml"), output_dir=ctx.output_dir,
                                status="succeeded", exit_code=0, duration=12.34,
                                manifest_path=manifest)
    assert entry.artifacts == [str(vhd)] and entry.ready is True
    assert entry.failing_step is None and entry.error is None
    assert entry.duration_seconds == 12.3 and entry.template == str(Path("t.toml").absolute())
    summary = Summary(azbuild_version="x", started="s", finished="f", wall_seconds=13.0,
                      jobs=1, exit_code=0, builds=[entry])
    jsonschema.Draft202012Validator(summary_json_schema()).validate(
        summary.model_dump(mode="json"))
    table = summary_table(summary)
    assert table.splitlines()[1].split() == ["t", "succeeded", "yes", "12.3"]
    assert table.endswith("1 of 1 builds succeeded in 13.0s")


def test_an_earlier_build_s_manifest_does_not_pass_for_this_one_s(
    tmp_path: Path, work_root: Path, image: Path
) -> None:
    a, b = template(tmp_path, "a", image), template(tmp_path, "b", image)
    out = tmp_path / "out"
    (out / "a").mkdir(parents=True)
    (out / "a" / MANIFEST_FILE).write_text('{"status": "succeeded", "ready": true}')
    # Another azbuild is writing into out/a: this run's build of `a` is refused before it
    # writes anything, so the manifest there is not its own.
    with output_directory_lock(out / "a"):
        assert main(["build", str(a), str(b), "--output-dir", str(out)]) == 1
    data = validate_summary(out / SUMMARY_FILE)
    first = data["builds"][0]
    assert first["status"] == "failed" and first["exit_code"] == 2
    assert first["manifest"] is None and first["ready"] is None
    assert json.loads((out / "a" / MANIFEST_FILE).read_text())["ready"] is True


def test_an_output_directory_naming_the_build_is_the_one_the_build_writes(
    tmp_path: Path, work_root: Path, image: Path
) -> None:
    directory = 'output = { directory = "' + str(tmp_path) + '/images/${name}/${build.id}" }\n'
    a, b = template(tmp_path, "a", image), template(tmp_path, "b", image)
    for path in (a, b):
        path.write_text(directory + path.read_text())
    assert main(["build", str(a), str(b)]) == 1
    data = validate_summary(tmp_path / "images" / SUMMARY_FILE)
    for entry in data["builds"]:
        manifest = json.loads(Path(entry["manifest"]).read_text())
        out = Path(entry["output_directory"])
        assert out.parent == tmp_path / "images" / entry["name"]
        assert out.name == manifest["build_id"]


def test_summary_goes_to_the_common_parent_without_output_dir(tmp_path: Path) -> None:
    jobs = [Job("a", Path("a.toml"), tmp_path / "output" / "a", GiB, []),
            Job("b", Path("b.toml"), tmp_path / "output" / "b", GiB, [])]
    assert summary_path(jobs, None) == tmp_path / "output" / SUMMARY_FILE
    assert summary_path(jobs, tmp_path / "o") == tmp_path / "o" / SUMMARY_FILE


def test_summary_schema_is_printed_and_documented(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema", "--summary"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == summary_json_schema()
    jsonschema.Draft202012Validator.check_schema(printed)
    text = (REPO / "docs" / "manifest.md").read_text()
    section = text[text.index("## summary.json"):]
    fields = set(printed["properties"]) | set(printed["$defs"]["BuildEntry"]["properties"])
    missing = sorted(f for f in fields if f"`{f}`" not in section)
    assert missing == [], f"docs/manifest.md does not document {missing}"


# --- locks between processes ---------------------------------------------------------------


def _count_under_lock(lock: str, counter: str, rounds: int) -> None:
    for _ in range(rounds):
        with removable_lock(Path(lock)):
            value = int(Path(counter).read_text())
            time.sleep(0.001)  # widen the window a missing lock would lose updates in
            Path(counter).write_text(str(value + 1))


def test_removable_lock_excludes_concurrent_processes(tmp_path: Path) -> None:
    lock, counter = tmp_path / "x.lock", tmp_path / "counter"
    counter.write_text("0")
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_count_under_lock, args=(str(lock), str(counter), 40))
               for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    assert counter.read_text() == "160"
    assert not lock.exists(), "the lock file was left behind"


def test_a_second_build_into_one_output_directory_is_refused(
    tmp_path: Path, work_root: Path
) -> None:
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time, pathlib\n"
         "from builder.locks import output_directory_lock\n"
         "with output_directory_lock(pathlib.Path(sys.argv[1])):\n"
         "    print('held', flush=True); time.sleep(30)\n", str(out)],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "AZBUILD_WORK_DIR": str(work_root)})
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        refused = pytest.raises(UsageError, match=f"another azbuild build is writing into {out}")
        with refused, output_directory_lock(out):
            pass
    finally:
        holder.kill()
        holder.wait()
    # A killed holder's lock is released by the kernel.
    with output_directory_lock(out):
        assert output_lock_path(out).exists()
    assert not output_lock_path(out).exists()


def test_gc_removes_the_lock_file_a_killed_build_left_and_keeps_a_held_one(
    tmp_path: Path, work_root: Path
) -> None:
    held_out, killed_out = tmp_path / "held", tmp_path / "killed"
    code = ("import sys, time, pathlib\n"
            "from builder.locks import output_directory_lock\n"
            "with output_directory_lock(pathlib.Path(sys.argv[1])):\n"
            "    print('held', flush=True); time.sleep(60)\n")
    env = {**os.environ, "AZBUILD_WORK_DIR": str(work_root)}
    holders = [subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE,
                                text=True, env=env) for out in (held_out, killed_out)]
    try:
        for holder in holders:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        holders[1].kill()  # SIGKILL: no cleanup, its lock file stays
        holders[1].wait()
        assert output_lock_path(killed_out).exists()
        removed = remove_stale_locks(work_root, OUTPUT_LOCK_PATTERN)
        assert removed == [output_lock_path(killed_out)]
        assert output_lock_path(held_out).exists(), "a held lock was removed"
    finally:
        for holder in holders:
            holder.kill()
            holder.wait()
