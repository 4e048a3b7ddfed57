"""A nightly job end to end: two templates built at once, rebuilds from the stage cache,
and `azbuild diff` between last night's image and tonight's.

The two builds are conftest.py's `pair_built` (`azbuild build e2e.toml demo.toml --jobs 2`),
shared with test_build.py and test_iso_install.py. The pair's demo names what it publishes
with ${build.timestamp} and ${build.id}. Two rebuilds start from the install the pair
cached, at once: the same demo template again (another night, another id and timestamp:
diff exits 0), and the demo with its last provisioner changed to install one extra
package (diff shows exactly that package and exits 1).
"""

from __future__ import annotations

import json
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from test_build import (
    AZBUILD,
    REPO,
    Outcome,
    assert_nothing_left_but_outputs,
    lines_of,
    run_azbuild_build,
    validate_manifest,
)
from test_iso_install import DEMO, demo_iso, iso_vars
from userenv import user_env

from builder.report.summary import summary_json_schema

pytestmark = pytest.mark.e2e

EXTRA_PACKAGE = "tree"  # small, and nothing else in the demo depends on it or pulls it in


def test_two_templates_at_once_write_one_summary(pair_built: Any, libvirt_uri: str) -> None:
    assert pair_built.returncode == 0, lines_of(pair_built.demo.stderr, "demo")
    summary = json.loads((pair_built.output_dir / "summary.json").read_text())
    jsonschema.Draft202012Validator(summary_json_schema()).validate(summary)
    builds = {entry["name"]: entry for entry in summary["builds"]}
    assert set(builds) == {"e2e-debian", "demo"}
    for name, entry in builds.items():
        assert entry["status"] == "succeeded", entry
        assert entry["ready"] is True
        assert entry["failing_step"] is None
        assert Path(entry["template"]) == pair_built.templates[name]
        manifest = validate_manifest(pair_built.output_dir / name / "manifest.json")
        assert entry["duration_seconds"] > 0
        files = {Path(a).name for a in entry["artifacts"]}
        assert files == {a["file"] for a in manifest["artifacts"]}
    # Both ran at once: each build's lines are prefixed with its name.
    for name in builds:
        assert f"[{name}]" in pair_built.demo.stderr
    assert_nothing_left_but_outputs(pair_built.cloud, libvirt_uri)


def _rebuild_template(tmp: Path) -> Path:
    """examples/demo.toml with only its last provisioner (the motd file) replaced by a
    shell provisioner installing one package."""
    text = DEMO.read_text()
    last = text.rindex("[[provision]]")
    end = text.index("[output]", last)
    template = tmp / "demo.toml"
    template.write_text(
        text[:last]
        + '[[provision]]\ntype = "shell"\n'
        + 'inline = ["sudo apt-get update -q",\n'  # the installed system has no package lists
        + f'  "sudo DEBIAN_FRONTEND=noninteractive apt-get install -y {EXTRA_PACKAGE}"]\n\n'
        + text[end:])
    return template


@pytest.fixture(scope="session")
def nightly_rebuilds(pair_built: Any, test_installer_iso: Path, azurite: Any, demo_sas: str,
                     tmp_path_factory: pytest.TempPathFactory) -> dict[str, Outcome]:
    """The next night's two builds, at once, both from the install the pair cached:
    "again", the pair's demo template unchanged (its own id and timestamp), and
    "rebuilt", the demo with its last provisioner changed."""
    assert pair_built.returncode == 0, lines_of(pair_built.demo.stderr, "demo")
    again, rebuilt = tmp_path_factory.mktemp("again"), tmp_path_factory.mktemp("rebuild")
    iso = iso_vars(demo_iso(test_installer_iso))
    env = {"AZBUILD_CACHE_DIR": str(pair_built.cache_dir)}
    with ThreadPoolExecutor(2) as pool:
        builds = {
            "again": pool.submit(
                run_azbuild_build, pair_built.templates["demo"], again, *iso, "--var",
                f"container_url={azurite.account_url}/built?{demo_sas}", env=env),
            "rebuilt": pool.submit(run_azbuild_build, _rebuild_template(rebuilt), rebuilt,
                                   *iso, env=env),
        }
        return {name: future.result() for name, future in builds.items()}


@pytest.fixture(scope="session")
def demo_again(nightly_rebuilds: dict[str, Outcome]) -> Outcome:
    outcome = nightly_rebuilds["again"]
    assert outcome.returncode == 0, outcome.stderr[-6000:]
    return outcome


def _diff(old: Path, new: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*AZBUILD, "diff", "--json", str(old), str(new)],
                          capture_output=True, text=True, cwd=REPO, env=user_env(),
                          timeout=600)


def test_diff_of_two_nights_of_an_unchanged_template_exits_0(
    demo_again: Outcome, pair_built: Any
) -> None:
    """Another build id, timestamp, output directory, blob name and durations: no
    difference. The stage cache made the second night cheap."""
    first = validate_manifest(pair_built.output_dir / "demo" / "manifest.json")
    second = validate_manifest(demo_again.output_dir / "manifest.json")
    assert first["build_id"] != second["build_id"]
    assert first["publish"][0]["url"] != second["publish"][0]["url"]
    assert first["template_sha256"] == second["template_sha256"]
    assert second["cache"][0]["result"] == "hit", second["cache"]
    proc = _diff(pair_built.output_dir / "demo", demo_again.output_dir)
    data = json.loads(proc.stdout)
    assert (proc.returncode, data["changes"], data["notes"]) == (0, [], []), proc.stdout


@pytest.fixture(scope="session")
def demo_rebuilt(nightly_rebuilds: dict[str, Outcome]) -> Outcome:
    outcome = nightly_rebuilds["rebuilt"]
    assert outcome.returncode == 0, outcome.stderr[-6000:]
    return outcome


def test_rebuild_with_its_last_provisioner_changed_skips_the_install(
    demo_rebuilt: Outcome, pair_built: Any, libvirt_uri: str
) -> None:
    manifest = validate_manifest(demo_rebuilt.output_dir / "manifest.json")
    assert manifest["ready"] is True
    assert "install" not in manifest["steps"] or manifest["steps"]["install"] < 60
    stages = manifest["cache"]
    assert stages[0]["stage"] == "install" and stages[0]["result"] == "hit", stages
    first = validate_manifest(pair_built.output_dir / "demo" / "manifest.json")
    assert first["cache"][0]["result"] == "stored", first["cache"]
    assert first["cache"][0]["key"] == stages[0]["key"]
    log = (demo_rebuilt.output_dir / "build.log").read_text()
    assert "the installer finished" not in log
    assert_nothing_left_but_outputs(demo_rebuilt, libvirt_uri)


def test_diff_against_last_night_shows_exactly_the_extra_package(
    demo_rebuilt: Outcome, pair_built: Any
) -> None:
    proc = _diff(pair_built.output_dir / "demo", demo_rebuilt.output_dir)
    assert proc.returncode == 1, proc.stderr
    changes = json.loads(proc.stdout)["changes"]
    packages = [c for c in changes if c["section"] == "packages"]
    assert len(packages) == 1, packages
    assert packages[0]["item"] == EXTRA_PACKAGE and packages[0]["old"] is None, packages
    # Besides it, only the template changed (the image's services, kernels, sizes and
    # readiness did not); the build's identity is no difference.
    assert {c["section"] for c in changes} == {"packages", "inputs"}, changes
    assert "template sha256" in {c["item"] for c in changes if c["section"] == "inputs"}
