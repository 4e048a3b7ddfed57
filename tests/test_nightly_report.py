"""`azbuild report`: the HTML page read in a real browser (Debian's chromium, headless,
through Selenium and chromium-driver), and the JUnit XML read by a real consumer
(junitparser), from an output directory of two nights whose manifests, SBOMs and logs the
project's own writers made: one template unchanged, one failed, one changed."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
from junitparser import Failure, JUnitXml, Skipped
from test_diff import newer
from test_inventory import sample_inventory

from builder.cli import main
from builder.context import BuildContext, BuildOptions
from builder.errors import BuildError
from builder.inventory import Inventory
from builder.manifest import CacheStage, Simulation, SimulationLine, write_manifest
from builder.paths import BUILD_LOG, INSTALL_CONSOLE
from builder.report.check_report import CheckResult, Report
from builder.report.nightly import collect
from builder.requirements import TITLES
from builder.sbom import sbom_document, sbom_path, write_sbom
from builder.template import load_template
from builder.units import MiB
from builder.work_dir import failure_of
from distros import resolve

AZBUILD = Path(sys.executable).parent / "azbuild"
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
NIGHTS = ("20261130", "20261201")
# The steps of an ISO build and their seconds, as a demo build under TCG took them.
STEPS = {"prepare": 0.2, "accelerator": 1.4, "install": 412.6, "boot": 21.3, "connect": 16.8,
         "provision": 48.1, "azure preparation": 131.2, "shutdown": 15.9, "export": 9.4,
         "check": 38.7, "simulate": 127.8, "manifest": 0.3}
INSTALLER_ERROR = ("the installer stopped without installing: the console shows 'No kernel "
                   "modules were found'")


def write_build(root: Path, night: str, name: str, inventory: Inventory | None,
                failed: bool = False, size: int = 20 * MiB) -> Path:
    """One build of template `name` in images/NIGHT/NAME, written by the manifest, SBOM and
    failure code a build runs: a ready image, or a build failed in its install step."""
    template = root / f"{name}.toml"
    if not template.exists():
        template.write_text(f'name = "{name}"\n[source]\niso = "/srv/isos/debian.iso"\n'
                            f'checksum = "sha256:{"ab" * 32}"\n[distro]\nname = "debian"\n'
                            'version = "12"\n')
    ctx = BuildContext(loaded=load_template(template), options=BuildOptions(),
                       distro=resolve("debian", "12"), uri="qemu:///system",
                       output_dir=root / "images" / night / name,
                       build_id=os.urandom(4).hex())
    ctx.output_dir.mkdir(parents=True)
    ctx.started -= timedelta(seconds=sum(STEPS.values()))  # the steps' time, as if taken
    ctx.source_digest = "sha256:" + "ab" * 32
    lines = [f"12:00:0{i} INFO ==> {step}" for i, step in enumerate(STEPS)]
    if failed:
        ctx.timer.timings.update({k: STEPS[k] for k in ("prepare", "accelerator", "install")})
        ctx.step = "install"
        failure = failure_of(ctx, BuildError(INSTALLER_ERROR, hint="read the install console"))
        ctx.kept_console(INSTALL_CONSOLE).write_text("Loading installer...\nNo kernel modules "
                                                     "were found\n")
        (ctx.output_dir / BUILD_LOG).write_text(
            "\n".join(lines[:3]) + f"\n12:06:55 ERROR build failed in step install: "
            f"{INSTALLER_ERROR}\n")
        write_manifest(ctx, failure, [BUILD_LOG, ctx.kept_console(INSTALL_CONSOLE).name])
        return ctx.output_dir
    ctx.timer.timings.update(STEPS)
    raw = ctx.artifact_path("raw")
    with open(raw, "wb") as f:
        f.truncate(size)
    ctx.artifacts["raw"] = raw
    report = Report(str(raw), [CheckResult(rid, "pass", "as required") for rid in TITLES])
    report.inventory = inventory
    ctx.report = report
    ctx.simulation = Simulation(
        status="passed", seconds_to_ready=110.7, seconds_to_ssh=113.7,
        agents=["WALinuxAgent/2.7.3.0"],
        assertions=[SimulationLine(id="ready", status="pass", title="the agent reported Ready",
                                   evidence="after 110.7s, from WALinuxAgent/2.7.3.0")])
    ctx.cache_stages.append(CacheStage(stage="install", description="the unattended install",
                                       key="cd" * 32, result="hit", seconds_saved=412.6))
    assert inventory is not None
    write_sbom(sbom_path(ctx.output_dir, name), sbom_document(inventory, name,
                                                               ctx.started), force=True)
    (ctx.output_dir / BUILD_LOG).write_text("\n".join(lines) + "\n")
    write_manifest(ctx, None, [BUILD_LOG])
    return ctx.output_dir


@pytest.fixture
def nightly(tmp_path: Path) -> Path:
    """images/ after two nights: web unchanged, db failed on the second, app changed."""
    for name in ("app", "db", "web"):
        write_build(tmp_path, NIGHTS[0], name, sample_inventory())
    write_build(tmp_path, NIGHTS[1], "app", newer(sample_inventory()), size=24 * MiB)
    write_build(tmp_path, NIGHTS[1], "db", None, failed=True)
    write_build(tmp_path, NIGHTS[1], "web", sample_inventory())
    return tmp_path / "images"


def test_collect_takes_the_latest_build_and_the_previous_good_one(nightly: Path) -> None:
    report = collect(nightly)
    rows = {row.latest.name: row for row in report.rows}
    assert list(rows) == ["app", "db", "web"]
    assert all(row.latest.directory.parent.name == NIGHTS[1] for row in report.rows)
    assert all(row.previous_good is not None
               and row.previous_good.directory.parent.name == NIGHTS[0]
               for row in report.rows)
    assert rows["web"].changes == [] and rows["web"].not_compared is None
    assert rows["db"].not_compared == "this build failed"
    assert {(c.section, c.item) for c in rows["app"].changes} == {
        ("packages", "htop"), ("packages", "ca-certificates"), ("packages", "bash"),
        ("kernels", "6.1.0-29-cloud-amd64"), ("kernel arguments", "boot loader default"),
        ("services", "cron.service"), ("sizes", "raw")}


def test_a_template_without_an_earlier_good_build_is_not_compared(tmp_path: Path) -> None:
    write_build(tmp_path, NIGHTS[0], "db", None, failed=True)
    write_build(tmp_path, NIGHTS[1], "db", sample_inventory())
    (row,) = collect(tmp_path / "images").rows
    assert row.latest.status == "succeeded"
    assert row.previous_good is None
    assert row.not_compared == "no earlier good build of this template"


# --- the page, in a real browser ---------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.fail("chromium and chromium-driver are not installed: run scripts/setup.sh")
    options = Options()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--disable-gpu", "--window-size=1500,1000"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _page(nightly: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    page = nightly / "report.html"
    assert main(["report", str(nightly), "--html", str(page)]) == 0
    capsys.readouterr()
    return page


def test_the_page_shows_rows_statuses_and_changes(
    nightly: Path, browser: object, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webdriver import WebDriver

    assert isinstance(browser, WebDriver)
    page = _page(nightly, capsys)
    browser.get(page.as_uri())
    assert browser.title == f"azbuild report: {nightly}"
    rows = browser.find_elements(By.CSS_SELECTOR, "table.builds > tbody > tr.build")
    assert [row.get_attribute("data-template") for row in rows] == ["app", "db", "web"]

    def badges(name: str) -> list[str]:
        row = browser.find_element(By.ID, f"build-{name}")
        return [b.text for b in row.find_elements(By.CSS_SELECTOR, ".status .badge")]

    assert badges("app") == ["succeeded", "changed"]
    assert badges("db") == ["failed"]
    assert badges("web") == ["succeeded", "unchanged"]
    db = browser.find_element(By.ID, "build-db")
    assert f"failed in step install: {INSTALLER_ERROR}" in db.text
    assert db.find_element(By.CSS_SELECTOR, "ol.steps li.failed").text.split() == \
        ["install", "6", "min", "53", "s"]
    assert "this build failed" in db.find_element(By.CSS_SELECTOR, ".changes").text
    assert browser.find_element(By.ID, "total-failed").text == "1 failed"
    assert browser.find_element(By.ID, "total-changed").text == "1 changed"

    app = browser.find_element(By.ID, "build-app")
    packages = [li.text for li in app.find_elements(
        By.CSS_SELECTOR, ".changes li[data-section='packages']")]
    assert sorted(packages) == sorted([
        "bash 5.2.15-2+b8 \u2192 5.2.15-2+b9", "\u2212 ca-certificates 20230311",
        "+ htop 3.2.2-2"])
    kernels = [li.text for li in app.find_elements(By.CSS_SELECTOR,
                                                   ".changes li[data-section='kernels']")]
    assert kernels == ["+ 6.1.0-29-cloud-amd64 /boot/vmlinuz-6.1.0-29-cloud-amd64"]
    assert "raw 20.0 MiB \u2192 24.0 MiB" in app.text
    readiness = app.find_element(By.CSS_SELECTOR, ".readiness").text
    assert "15 pass" in readiness
    assert "first boot passed: Ready 111 s, SSH 114 s" in readiness
    assert "1 of 1 hit" in app.find_element(By.CSS_SELECTOR, ".cache").text
    web = browser.find_element(By.ID, "build-web")
    assert "nothing changed" in web.find_element(By.CSS_SELECTOR, ".changes").text

    shot = tmp_path / "report.png"
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
    if os.environ.get("AZBUILD_REPORT_SCREENSHOT"):  # to look at it: a path to copy it to
        shutil.copyfile(shot, os.environ["AZBUILD_REPORT_SCREENSHOT"])


def test_every_link_of_the_page_opens_an_existing_file(
    nightly: Path, browser: object, capsys: pytest.CaptureFixture[str]
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webdriver import WebDriver

    assert isinstance(browser, WebDriver)
    page = _page(nightly, capsys)
    browser.get(page.as_uri())
    links = {(a.get_attribute("data-template") or a.find_element(
        By.XPATH, "ancestor::tr[1]").get_attribute("data-template"), a.text):
        a.get_attribute("href") for a in browser.find_elements(By.CSS_SELECTOR, "a")}
    latest = nightly / NIGHTS[1]
    assert links[("app", "log")] == (latest / "app" / BUILD_LOG).as_uri()
    assert links[("app", "manifest")] == (latest / "app" / "manifest.json").as_uri()
    assert links[("app", "SBOM")] == (latest / "app" / "app.spdx.json").as_uri()
    assert links[("db", "install console")] == (latest / "db" / f"db.{INSTALL_CONSOLE}").as_uri()
    assert ("db", "SBOM") not in links  # a failed build wrote none: no dead link
    for href in links.values():
        assert href is not None and Path(unquote(urlparse(href).path)).is_file(), href
    browser.get(links[("db", "log")])  # followed by the browser, the log reads
    assert f"build failed in step install: {INSTALLER_ERROR}" in browser.find_element(
        By.TAG_NAME, "body").text
    browser.get(page.as_uri())
    browser.find_element(By.CSS_SELECTOR, "#build-app a.previous").click()
    manifest = json.loads(browser.find_element(By.TAG_NAME, "body").text)
    assert manifest["template"] == "app" and manifest["status"] == "succeeded"


def test_the_page_is_self_contained(nightly: Path, capsys: pytest.CaptureFixture[str]) -> None:
    html = _page(nightly, capsys).read_text()
    assert "<script" not in html and "http://" not in html and "https://" not in html
    assert 'href="/' not in html  # every link relative to the page


# --- JUnit --------------------------------------------------------------------------------


def test_report_junit_has_one_case_per_template_failing_with_step_and_log_tail(
    nightly: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "junit.xml"
    assert main(["report", str(nightly), "--junit", str(target)]) == 0
    out = capsys.readouterr().out
    assert "db        failed" in out
    assert "2 of 3 templates' latest builds succeeded; 1 changed" in out
    xml = JUnitXml.fromfile(str(target))
    (suite,) = list(xml)
    assert (suite.tests, suite.failures, suite.errors, suite.skipped) == (3, 1, 0, 0)
    cases = {case.name: case for case in suite}
    assert sorted(cases) == ["app", "db", "web"]
    assert cases["app"].is_passed and cases["web"].is_passed
    assert cases["app"].time == pytest.approx(json.loads(
        (nightly / NIGHTS[1] / "app" / "manifest.json").read_text())["time"]["wall_seconds"])
    (failure,) = cases["db"].result
    assert isinstance(failure, Failure)
    assert failure.message == f"failed in step install: {INSTALLER_ERROR}"
    assert "hint: read the install console" in failure.text
    assert f"last 4 lines of {nightly / NIGHTS[1] / 'db' / BUILD_LOG}" in failure.text
    assert "ERROR build failed in step install" in failure.text


@pytest.mark.parametrize("kind", ["truncated", "invalid"])
def test_build_junit_of_a_real_failed_build(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real `azbuild build --junit` whose source disk is truncated (it fails in its
    `source disk` step, before any VM) or whose template does not load."""
    monkeypatch.setenv("AZBUILD_WORK_DIR", str(tmp_path / "work"))
    image = tmp_path / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "64M"], check=True)
    with open(image, "r+b") as f:  # a qcow2 whose header promises more than the file holds
        f.truncate(image.stat().st_size // 2)
    template = tmp_path / "t.toml"
    template.write_text(f'name = "t"\n[source]\ndisk_image = "{image}"\n[distro]\n'
                        'name = "debian"\nversion = "12"\n'
                        + ('[vm]\ncpus = "many"\n' if kind == "invalid" else ""))
    target = tmp_path / "junit.xml"
    result = subprocess.run([str(AZBUILD), "build", str(template), "--output-dir",
                             str(tmp_path / "out"), "--junit", str(target)],
                            capture_output=True, text=True, env=os.environ, timeout=300)
    assert result.returncode == 2, result.stderr
    (case,) = [case for suite in JUnitXml.fromfile(str(target)) for case in suite]
    (failure,) = case.result
    assert isinstance(failure, Failure) and case.name == "t"
    if kind == "truncated":
        assert failure.message.startswith("failed in step source disk: ")
        assert f"source.disk_image {image}" in failure.message
        assert "build.log" in failure.text
    else:
        assert "vm.cpus: expected a valid integer" in failure.message
    assert not isinstance(failure, Skipped)


def test_junit_of_a_several_template_run_from_its_summary(nightly: Path,
                                                          tmp_path: Path) -> None:
    """summary.json as a several-template build writes it: built, failed, not started."""
    from builder.report.junit import cases_of_summary, write_junit
    from builder.report.summary import entry_from_manifest, new_summary, write_summary

    latest = nightly / NIGHTS[1]
    entries = [entry_from_manifest(name=name, template=tmp_path / f"{name}.toml",
                                   output_dir=latest / name, status=status, exit_code=code,
                                   duration=12.5, manifest_path=latest / name / "manifest.json")
               for name, status, code in (("app", "succeeded", 0), ("db", "failed", 1))]
    entries.append(entry_from_manifest(name="web", template=tmp_path / "web.toml",
                                       output_dir=latest / "web", status="not started",
                                       exit_code=None, duration=None, manifest_path=None))
    summary = write_summary(new_summary(started="2026-12-01T01:30:00+00:00",
                                        finished="2026-12-01T02:10:00+00:00",
                                        wall_seconds=2400.0, jobs=2, exit_code=1,
                                        builds=entries), tmp_path / "summary.json")
    target = write_junit(tmp_path / "junit.xml", cases_of_summary(summary))
    (suite,) = list(JUnitXml.fromfile(str(target)))
    assert (suite.tests, suite.failures, suite.skipped) == (3, 1, 1)
    cases = {case.name: case for case in suite}
    assert cases["app"].is_passed
    assert isinstance(cases["db"].result[0], Failure)
    assert isinstance(cases["web"].result[0], Skipped)


def test_build_junit_of_several_invalid_templates(tmp_path: Path) -> None:
    """No build starts; each template that does not load is a failing case."""
    for name in ("a", "b"):
        (tmp_path / f"{name}.toml").write_text(f'name = "{name}"\n[vm]\ncpu = 2\n')
    target = tmp_path / "junit.xml"
    assert main(["build", str(tmp_path / "a.toml"), str(tmp_path / "b.toml"),
                 "--junit", str(target)]) == 2
    (suite,) = list(JUnitXml.fromfile(str(target)))
    assert sorted(case.name for case in suite) == ["a", "b"]
    assert all("vm.cpu: unknown key" in case.result[0].message for case in suite)


# --- the README's nightly loop ---------------------------------------------------------


def _nightly_section() -> str:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    return readme[readme.index("## A nightly job"):readme.index("## Where things live")]


def _block(language: str) -> str:
    match = re.search(rf"```{language}\n(.*?)```", _nightly_section(), re.S)
    assert match is not None, f"no {language} block in the README's nightly section"
    return match.group(1)


def test_the_readme_nightly_loop_is_whole_and_its_shell_is_clean(tmp_path: Path) -> None:
    script = _block("sh")
    for command in ("azbuild build ", "--junit", "azbuild report ", "--html",
                    "azbuild diff ", "azbuild publish ", "azbuild prune "):
        assert command in script, command
    assert re.search(r"^30 1 \* \* \* root .*nightly\.sh", _nightly_section(), re.M)
    (tmp_path / "nightly.sh").write_text(script)
    if shutil.which("shellcheck") is None:
        pytest.fail("shellcheck is not installed: run scripts/setup.sh")
    result = subprocess.run(["shellcheck", "--shell=sh", str(tmp_path / "nightly.sh")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_the_readme_ci_job_is_a_valid_github_workflow(tmp_path: Path) -> None:
    """Checked by check-jsonschema against its bundled GitHub workflow schema (offline);
    the same file without `runs-on` fails, so the check is not vacuous."""
    workflow = _block("yaml")
    assert "report.html" in workflow and "junit.xml" in workflow and "cron:" in workflow
    checker = Path(sys.executable).parent / "check-jsonschema"
    good, bad = tmp_path / "nightly.yml", tmp_path / "broken.yml"
    good.write_text(workflow)
    bad.write_text(workflow.replace("    runs-on: [self-hosted, linux, libvirt]\n", ""))
    for path, code in ((good, 0), (bad, 1)):
        result = subprocess.run([str(checker), "--builtin-schema", "vendor.github-workflows",
                                 str(path)], capture_output=True, text=True, timeout=120)
        assert result.returncode == code, result.stdout + result.stderr


def test_a_build_that_wrote_no_manifest_is_the_latest_from_its_summary(
    nightly: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A third night stopped before web's turn: summary.json lists it without a manifest.
    The report must not show the night before's success as web's latest."""
    from builder.report.summary import entry_from_manifest, new_summary, write_summary

    night = nightly / "20261202"
    entry = entry_from_manifest(name="web", template=tmp_path / "web.toml",
                                output_dir=night / "web", status="not started",
                                exit_code=None, duration=None, manifest_path=None)
    write_summary(new_summary(started="2099-12-02T01:30:00+00:00",
                              finished="2099-12-02T01:31:00+00:00", wall_seconds=60.0,
                              jobs=1, exit_code=143, builds=[entry]), night / "summary.json")
    rows = {row.latest.name: row for row in collect(nightly).rows}
    web = rows["web"]
    assert (web.latest.status, web.latest.from_summary) == ("not started", True)
    assert web.latest.files() == {}
    assert web.not_compared == "this build did not start"
    assert rows["app"].latest.directory.parent.name == NIGHTS[1]
    target = tmp_path / "junit.xml"
    page = tmp_path / "report.html"
    assert main(["report", str(nightly), "--junit", str(target), "--html", str(page)]) == 0
    cases = {case.name: case for suite in JUnitXml.fromfile(str(target)) for case in suite}
    assert isinstance(cases["web"].result[0], Skipped)
    html = page.read_text()
    row = html[html.index('id="build-web"'):]
    row = row[:row.index("</tr>")]
    assert 'data-status="not started"' in row and "the run was stopped before its turn" in row
    assert "<a href" not in row.split('class="files"')[1]


@pytest.mark.parametrize("option", ["--html", "--junit"])
def test_an_unwritable_destination_or_a_missing_output_dir_is_exit_2(
    option: str, nightly: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report", str(nightly), option, "/proc/azbuild/report"]) == 2
    err = capsys.readouterr().err
    assert f"cannot write /proc/azbuild/report ({option})" in err
    assert f"give {option} a path in a writable directory" in err and "Traceback" not in err
    assert main(["report", str(tmp_path / "nothing"), option, str(tmp_path / "r")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
