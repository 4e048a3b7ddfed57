"""`azbuild prune`: the N newest builds of each template kept, the others removed whole.

The builds are real output directories: manifest.json written by the manifest writer from
a loaded template (its `finished` time then set), an image file and build.log beside it."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from builder.cli import main
from builder.context import BuildContext, BuildOptions
from builder.housekeeping.prune import REMOVING_PREFIX
from builder.manifest import MANIFEST_FILE, Failure, write_manifest
from builder.template import load_template
from distros import resolve


def make_build(directory: Path, name: str, finished: str | None, failed: bool = False,
               ready: bool | None = None) -> Path:
    """A build's output directory: its manifest (finished at `finished`, or as written;
    ready unless it failed, or as `ready` says), an image, a log."""
    directory.mkdir(parents=True)
    template = directory.parent / f".{name}.toml"
    template.write_text(f'name = "{name}"\n[source]\ndisk_image = "/nonexistent.qcow2"\n'
                        '[distro]\nname = "debian"\nversion = "12"\n')
    ctx = BuildContext(loaded=load_template(template), options=BuildOptions(),
                       distro=resolve("debian", "12"), uri="qemu:///system",
                       output_dir=directory, build_id="c0ffee00")
    template.unlink()
    failure = Failure(step="boot", error="it broke", hint=None, exit_code=1) if failed else None
    manifest = write_manifest(ctx, failure, ["build.log"])
    data = json.loads(manifest.read_text())
    data["ready"] = not failed if ready is None else ready
    if finished is not None:
        data["finished"] = finished
    manifest.write_text(json.dumps(data))
    (directory / f"{name}.vhd").write_bytes(b"\0" * 4096)
    (directory / "build.log").write_text("log\n")
    return directory


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[str], str]:
    code = main(["prune", *argv])
    out, err = capsys.readouterr()
    return code, out.splitlines(), err


@pytest.fixture
def nightly(tmp_path: Path) -> Path:
    """Four nights of `web` (the last one failed) and two of `db`, in dated directories."""
    out = tmp_path / "images"
    for day, failed in (("27", False), ("28", False), ("29", False), ("30", True)):
        make_build(out / "web" / f"202611{day}", "web", f"2026-11-{day}T02:00:00+00:00", failed)
    make_build(out / "db" / "20261129", "db", "2026-11-29T03:00:00+00:00")
    # Another zone, the same instant order: 2026-11-30T01:30+02:00 is 23:30 UTC on the 29th.
    make_build(out / "db" / "20261130", "db", "2026-11-30T01:30:00+02:00")
    return out


def test_keeps_the_newest_of_each_template_and_removes_the_rest_whole(
    nightly: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(nightly.parent)
    code, lines, err = run(capsys, "images", "--keep", "2")
    assert (code, err) == (0, "")
    assert lines == [
        "keep          images/db/20261130  (db, finished 2026-11-30T01:30:00+02:00, succeeded,"
        " ready): the newest good build (never removed)",
        "keep          images/db/20261129  (db, finished 2026-11-29T03:00:00+00:00, succeeded,"
        " ready): good, one of the 2 newest good builds",
        "keep          images/web/20261130  (web, finished 2026-11-30T02:00:00+00:00, failed):"
        " not good, and newer than the newest good build: kept to diagnose it",
        "keep          images/web/20261129  (web, finished 2026-11-29T02:00:00+00:00,"
        " succeeded, ready): the newest good build (never removed)",
        "keep          images/web/20261128  (web, finished 2026-11-28T02:00:00+00:00,"
        " succeeded, ready): good, one of the 2 newest good builds",
        "removed       images/web/20261127  (web, finished 2026-11-27T02:00:00+00:00,"
        " succeeded, ready): good, older than the 2 newest good builds",
        "removed 1 of 6 builds of 2 templates, keeping up to 2 good each",
    ]
    assert sorted(p.name for p in (nightly / "web").iterdir()) == [
        "20261128", "20261129", "20261130"]
    assert sorted(p.name for p in (nightly / "db").iterdir()) == ["20261129", "20261130"]
    assert (nightly / "web" / "20261129" / "web.vhd").is_file()  # what is kept is untouched
    # Again: nothing more to remove.
    code, lines, _ = run(capsys, "images", "--keep", "2")
    assert (code, lines[-1]) == (
        0, "removed 0 of 5 builds of 2 templates, keeping up to 2 good each")


def test_dry_run_says_the_same_and_removes_nothing(
    nightly: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = sorted(str(p) for p in nightly.rglob("*"))
    code, lines, _ = run(capsys, str(nightly), "--keep", "1", "--dry-run")
    assert code == 0
    assert [line.split("  ")[0].strip() for line in lines[:-1]] == [
        "keep", "would remove", "keep", "keep", "would remove", "would remove"]
    assert lines[-1] == ("dry run: would remove 3 of 6 builds of 2 templates, keeping up to 1"
                         " good each; nothing was removed")
    assert sorted(str(p) for p in nightly.rglob("*")) == before


def test_what_is_not_a_readable_build_is_left_alone_and_said(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    make_build(out / "a", "web", "2026-11-29T02:00:00+00:00")
    make_build(out / "b", "web", "2026-11-30T02:00:00+00:00")
    for name, text in (("broken", "{not json"), ("no-finished", '{"template": "web"}'),
                       ("naive-time", '{"template": "web", "finished": "2026-11-01T00:00:00"}'),
                       ("list", "[]")):
        (out / name).mkdir()
        (out / name / MANIFEST_FILE).write_text(text)
    (out / "notes" / "2026" / "11").mkdir(parents=True)  # no build anywhere below: said once
    (out / "old").mkdir()
    (out / "old" / "README").write_text("kept by hand\n")
    outside = make_build(tmp_path / "elsewhere" / "c", "web", "2026-01-01T00:00:00+00:00")
    (out / "link").symlink_to(outside.parent)
    (out / "summary.json").write_text("{}")  # files are not builds, and not mentioned
    code, lines, _ = run(capsys, str(out), "--keep", "1")
    assert code == 0
    assert lines == [
        f"keep          {out}/b  (web, finished 2026-11-30T02:00:00+00:00, succeeded, ready):"
        " the newest good build (never removed)",
        f"removed       {out}/a  (web, finished 2026-11-29T02:00:00+00:00, succeeded, ready):"
        " good, older than the 1 newest good builds",
        f"left alone    {out}/broken: manifest.json is not JSON; never removed",
        f"left alone    {out}/link: a symbolic link, not followed",
        f"left alone    {out}/list: manifest.json is not a JSON object; never removed",
        f"left alone    {out}/naive-time: manifest.json has no finished time (ISO 8601 with a"
        " time zone); never removed",
        f"left alone    {out}/no-finished: manifest.json has no finished time (ISO 8601 with a"
        " time zone); never removed",
        f"left alone    {out}/notes: no manifest.json: not a build",
        f"left alone    {out}/old: no manifest.json: not a build",
        "removed 1 of 2 builds of 1 template, keeping up to 1 good each",
    ]
    assert sorted(p.name for p in out.iterdir()) == [
        "b", "broken", "link", "list", "naive-time", "no-finished", "notes", "old", "summary.json"]
    assert (outside / MANIFEST_FILE).is_file()  # the link's target is not touched


def test_ties_are_broken_by_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    for name in ("x1", "x2", "x3"):
        make_build(out / name, "web", "2026-11-30T02:00:00+00:00")
    code, lines, _ = run(capsys, str(out), "--keep", "1")
    assert code == 0
    assert [line.split()[:2] for line in lines[:-1]] == [
        ["keep", f"{out}/x3"], ["removed", f"{out}/x2"], ["removed", f"{out}/x1"]]


def test_an_interrupted_removal_is_finished(
    nightly: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    leftover = nightly / "web" / (REMOVING_PREFIX + "20261126")
    (leftover / "sub").mkdir(parents=True)
    (leftover / "sub" / "web.vhd").write_bytes(b"x")
    code, lines, _ = run(capsys, str(nightly), "--keep", "4")
    assert code == 0
    assert lines[0] == f"removed       {leftover}: an interrupted prune's"
    assert not leftover.exists()
    assert lines[-1] == "removed 0 of 6 builds of 2 templates, keeping up to 4 good each"


def test_a_build_that_cannot_be_removed_fails_the_command_after_the_rest(
    nightly: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A file where the build would be renamed to: the rename fails (root ignores permissions).
    blocker = nightly / "web" / (REMOVING_PREFIX + "20261127")
    blocker.write_text("")
    code, lines, err = run(capsys, str(nightly), "--keep", "1")
    assert code == 1
    assert lines[-3:] == [
        f"removed       {nightly}/web/20261128  (web, finished 2026-11-28T02:00:00+00:00,"
        " succeeded, ready): good, older than the 1 newest good builds",
        f"NOT removed   {nightly}/web/20261127  (web, finished 2026-11-27T02:00:00+00:00,"
        " succeeded, ready): good, older than the 1 newest good builds; cannot rename it for"
        " removal: Not a directory",
        "removed 2 of 6 builds of 2 templates, keeping up to 1 good each",
    ]
    assert err.startswith("error: could not remove 1 path:\n"
                          f"  - {nightly}/web/20261127: cannot rename it for removal")
    assert (nightly / "web" / "20261127" / MANIFEST_FILE).is_file()  # whole, not half removed


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["{d}/missing", "--keep", "1"], "error: output directory {d}/missing does not exist"),
        (["{d}/images", "--keep", "0"], "error: --keep must be at least 1, found 0"),
        (["{d}/images", "--keep", "-3"], "error: --keep must be at least 1, found -3"),
        (["{d}/images/db/20261129", "--keep", "1"],
         "error: {d}/images/db/20261129 holds a manifest.json: it is one build's output"
         " directory\nhint: give the directory that holds the builds, e.g. {d}/images/db"),
        (["{d}/images/web/20261127/web.vhd", "--keep", "1"],
         "error: output directory {d}/images/web/20261127/web.vhd is not a directory"),
        (["{d}/images", "--keep", "many"], "argument --keep: invalid int value: 'many'"),
        (["{d}/images"], "the following arguments are required: --keep"),
    ],
    ids=["missing", "zero", "negative", "a-build-itself", "a-file", "not-a-number", "no-keep"],
)
def test_usage_errors_exit_2_and_remove_nothing(
    nightly: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    before = sorted(str(p) for p in nightly.rglob("*"))
    d = str(nightly.parent)
    code, lines, err = run(capsys, *(a.format(d=d) for a in argv))
    assert code == 2
    assert lines == []
    assert message.format(d=d) in err
    assert sorted(str(p) for p in nightly.rglob("*")) == before


def test_a_manifest_as_the_writer_writes_it_is_a_build(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    make_build(tmp_path / "out" / "new", "web", None)
    make_build(tmp_path / "out" / "old", "web", "2026-01-01T00:00:00+00:00")
    code, lines, _ = run(capsys, str(tmp_path / "out"), "--keep", "1")
    assert code == 0
    kept = lines[0].split("finished ")[1].split(",")[0]
    assert lines[0].startswith(f"keep          {tmp_path}/out/new  (web, finished ")
    assert datetime.fromisoformat(kept) >= before
    assert lines[1].startswith(f"removed       {tmp_path}/out/old  ")


# --- good builds: failed nights never push the last good image out -----------------------


def test_only_good_builds_count_and_failed_ones_newer_than_them_are_kept(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "images"
    for day, failed, ready in (("25", False, True), ("26", True, None), ("27", False, True),
                               ("28", False, False), ("29", True, None)):
        make_build(out / f"202611{day}", "web", f"2026-11-{day}T02:00:00+00:00", failed, ready)
    code, lines, _ = run(capsys, str(out), "--keep", "2")
    assert code == 0
    assert [(line.split()[0], line.split()[1].rsplit("/", 1)[1]) for line in lines[:-1]] == [
        ("keep", "20261129"),  # failed after the newest good: kept to diagnose it
        ("keep", "20261128"),  # succeeded, not ready: not good, but newer than the newest good
        ("keep", "20261127"),  # the newest good
        ("removed", "20261126"),  # failed, and a good build came after it
        ("keep", "20261125"),  # the second good
    ]
    assert "not good, and a newer good build exists" in lines[3]
    assert sorted(p.name for p in out.iterdir()) == [
        "20261125", "20261127", "20261128", "20261129"]


def test_keep_1_after_a_failed_night_keeps_the_last_good_image(
    nightly: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, _ = run(capsys, str(nightly), "--keep", "1")
    assert code == 0
    assert (nightly / "web" / "20261130").is_dir()  # the failed night, to diagnose
    assert (nightly / "web" / "20261129" / "web.vhd").is_file()  # the last good image
    assert not (nightly / "web" / "20261128").exists()


def test_a_template_without_a_good_build_keeps_its_failed_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "images"
    for day in ("28", "29"):
        make_build(out / day, "web", f"2026-11-{day}T02:00:00+00:00", failed=True)
    code, lines, _ = run(capsys, str(out), "--keep", "1")
    assert code == 0 and lines[-1].startswith("removed 0 of 2 builds")
    assert "no good build of this template: kept to diagnose it" in lines[0]


def summary_of(directory: Path, *builds: Path) -> Path:
    """A summary.json as a several-template build writes it, listing `builds`."""
    path = directory / "summary.json"
    path.write_text(json.dumps({"builds": [
        {"name": b.name, "output_directory": str(b.absolute())} for b in builds]}))
    return path


def test_emptied_directories_and_summaries_without_builds_are_removed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The README's layout: one dated directory per night, a summary.json in each."""
    out = tmp_path / "images"
    nights = {}
    for day in ("27", "28", "29"):
        night = out / f"202611{day}"
        web = make_build(night / "web", "web", f"2026-11-{day}T02:00:00+00:00")
        db = make_build(night / "db", "db", f"2026-11-{day}T03:00:00+00:00") \
            if day != "28" else None
        nights[day] = summary_of(night, *(b for b in (web, db) if b is not None))
    (out / "20261129" / "notes").mkdir()  # not emptied by prune: left as it is
    code, lines, _ = run(capsys, str(out), "--keep", "1")
    assert code == 0, lines
    assert f"removed       {nights['27']}: none of its builds is left" in lines
    assert f"removed       {nights['28']}: none of its builds is left" in lines
    assert sorted(p.name for p in out.iterdir()) == ["20261129"]
    assert sorted(p.name for p in (out / "20261129").iterdir()) == [
        "db", "notes", "summary.json", "web"]


def test_json_lists_what_is_removed_and_kept_and_why(
    nightly: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = sorted(str(p) for p in nightly.rglob("*"))
    assert main(["prune", str(nightly), "--keep", "1", "--dry-run", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert sorted(str(p) for p in nightly.rglob("*")) == before  # a dry run removes nothing
    assert data["dry_run"] is True and data["keep"] == 1
    removed = {(Path(e["path"]).parent.name, Path(e["path"]).name): e for e in data["removed"]}
    assert set(removed) == {("web", "20261128"), ("web", "20261127"), ("db", "20261129")}
    assert removed[("web", "20261127")] == {
        "path": str(nightly / "web" / "20261127"), "template": "web",
        "finished": "2026-11-27T02:00:00+00:00", "status": "succeeded", "ready": True,
        "reason": "good, older than the 1 newest good builds"}
    kept = {Path(e["path"]).name: e["reason"] for e in data["kept"] if e["template"] == "web"}
    assert kept == {
        "20261130": "not good, and newer than the newest good build: kept to diagnose it",
        "20261129": "the newest good build (never removed)"}
    assert data["not_removed"] == [] and data["left_alone"] == []
    assert main(["prune", str(nightly), "--keep", "1", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["removed"]) == 3
    assert not (nightly / "web" / "20261127").exists()
