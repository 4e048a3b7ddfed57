"""The shipped layers are found by name however azbuild is installed: from a source checkout
with no install, from the editable install in .venv, and from a wheel."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
VENV_PYTHON = Path(sys.executable)
SYSTEM_PYTHON = Path("/usr/bin/python3")
# The .venv's dependencies (pydantic, tomli-w, ...). On PYTHONPATH, its .pth files (and with
# them the editable install's import hook) are not processed, so `builder` comes from
# wherever the test puts it first.
DEPS = Path(sysconfig.get_paths()["purelib"])

TEMPLATE = f"""\
name = "layered"
extends = ["gen2", "cloud-init", "small-vm"]
[source]
iso = "https://example.org/x.iso"
checksum = "sha256:{"c" * 64}"
[distro]
name = "ubuntu"
version = "24.04"
"""

# Prints where builder and the shipped layers come from, then what inspect resolves.
PROBE = """
import builder, json, sys
from builder.template import shipped_layers_dir
print(json.dumps({"builder": builder.__file__, "layers": str(shipped_layers_dir())}))
sys.stdout.flush()
from builder.cli import main
sys.exit(main(["inspect", sys.argv[1], "--format", "json"]))
"""


def _run(python: Path, template: Path, cwd: Path, pythonpath: list[Path] | None) -> tuple[
    dict[str, str], dict[str, object]
]:
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
    if pythonpath is not None:
        env["PYTHONPATH"] = ":".join(str(p) for p in pythonpath)
    proc = subprocess.run(
        [str(python), "-s", "-c", PROBE, str(template)], cwd=cwd, env=env,
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    where_line, resolved = proc.stdout.split("\n", 1)
    where: dict[str, str] = json.loads(where_line)
    data: dict[str, object] = json.loads(resolved)
    return where, data


def _assert_layers_applied(data: dict[str, object]) -> None:
    vm = data["vm"]
    azure = data["azure"]
    assert isinstance(vm, dict) and isinstance(azure, dict)
    assert vm["firmware"] == "uefi"  # gen2
    assert azure["provisioning"] == "cloud-init"  # cloud-init
    assert vm["memory"] == "1GiB"  # small-vm


@pytest.fixture
def template(tmp_path: Path) -> Path:
    path = tmp_path / "t.toml"
    path.write_text(TEMPLATE)
    return path


def test_source_checkout_without_install(template: Path, tmp_path: Path) -> None:
    """`python -m builder` with the repository on sys.path and nothing installed."""
    where, data = _run(SYSTEM_PYTHON, template, tmp_path, [REPO, DEPS])
    assert where["builder"] == str(REPO / "builder" / "__init__.py")
    assert where["layers"] == str(REPO / "templates")
    _assert_layers_applied(data)


def test_editable_install(template: Path, tmp_path: Path) -> None:
    where, data = _run(VENV_PYTHON, template, tmp_path, None)
    assert Path(where["builder"]).is_relative_to(REPO)
    assert (Path(where["layers"]) / "gen2.toml").is_file()
    _assert_layers_applied(data)


@pytest.mark.slow
def test_wheel(template: Path, tmp_path: Path) -> None:
    # Build from a copy, so that build/ and *.egg-info never land in the shared checkout.
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        if (REPO / name).exists():
            shutil.copy2(REPO / name, source / name)
    for name in ("builder", "distros", "templates"):
        shutil.copytree(REPO / name, source / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    wheels = tmp_path / "wheels"
    subprocess.run(
        [str(VENV_PYTHON), "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "--disable-pip-version-check", "-w", str(wheels), str(source)],
        check=True, capture_output=True, timeout=300,
    )
    (wheel,) = wheels.glob("azbuild-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for layer in ("gen2", "cloud-init", "small-vm"):
        assert f"builder/layers/{layer}.toml" in names
    assert not any(n.startswith("templates/") for n in names)

    target = tmp_path / "installed"
    subprocess.run(
        [str(VENV_PYTHON), "-m", "pip", "install", "-q", "--no-deps", "--no-index",
         "--disable-pip-version-check", "--target", str(target), str(wheel)],
        check=True, capture_output=True, timeout=300,
    )
    where, data = _run(SYSTEM_PYTHON, template, tmp_path, [target, DEPS])
    assert where["builder"] == str(target / "builder" / "__init__.py")
    assert where["layers"] == str(target / "builder" / "layers")
    _assert_layers_applied(data)


def test_every_python_package_is_listed_for_the_wheel() -> None:
    # setuptools takes the explicit list: a package left out is missing from a wheel install.
    import tomllib

    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"])
    found = {".".join(p.parent.relative_to(REPO).parts)
             for top in ("builder", "distros") for p in (REPO / top).rglob("__init__.py")}
    assert found <= listed, sorted(found - listed)
