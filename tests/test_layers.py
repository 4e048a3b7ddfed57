"""Layers you can trust: `azbuild layers`, warnings for shadowed layers and missing search-path
entries, and `azbuild inspect --provenance`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from builder.cli import main
from builder.template import LAYER_PATH_ENV, shipped_layers_dir

SHA = "a" * 64
BASE = f"""\
name = "demo"

[source]
iso = "https://example.org/demo.iso"
checksum = "sha256:{SHA}"

[distro]
name = "rocky"
version = "9"
"""
SHIPPED = sorted(p.stem for p in shipped_layers_dir().glob("*.toml"))


def test_every_shipped_layer_has_a_description(capsys: pytest.CaptureFixture[str]) -> None:
    assert SHIPPED == ["cloud-init", "gen2", "small-vm"]
    assert main(["layers", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [layer["name"] for layer in listed] == SHIPPED
    for layer in listed:
        first_line = Path(layer["file"]).read_text().splitlines()[0]
        assert first_line.startswith("# ") and layer["description"].startswith(first_line[2:])
        assert layer["shadows"] == []
    gen2 = next(layer for layer in listed if layer["name"] == "gen2")
    assert gen2["description"] == (
        "Azure Generation 2: UEFI firmware, GPT with an EFI system partition."
    )


def test_layers_lists_name_file_and_description(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["layers"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["name", "file", "description"]
    small = next(line for line in lines if line.startswith("small-vm "))
    assert small.split(None, 2) == ["small-vm", str(shipped_layers_dir() / "small-vm.toml"),
                                    "A small build VM for quick images and CI."]


@pytest.fixture()
def own_gen2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    layers = tmp_path / "layers"
    layers.mkdir()
    own = layers / "gen2.toml"
    own.write_text("# Our gen2: UEFI and 4 CPUs.\n[vm]\nfirmware = \"uefi\"\ncpus = 4\n")
    monkeypatch.setenv(LAYER_PATH_ENV, str(layers))
    return own


def test_a_shadowing_layer_is_used_with_a_warning_naming_both(
    own_gen2: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    template = tmp_path / "t.toml"
    template.write_text('extends = ["gen2"]\n' + BASE)
    assert main(["inspect", str(template), "--format", "json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["vm"]["cpus"] == 4  # ours, not the shipped one
    shipped = shipped_layers_dir().resolve() / "gen2.toml"
    assert f"layer 'gen2': {own_gen2} shadows {shipped}" in err
    assert err.count("shadows") == 1


def test_layers_shows_what_shadows_what(
    own_gen2: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["layers", "--json"]) == 0
    out, err = capsys.readouterr()
    gen2 = next(layer for layer in json.loads(out) if layer["name"] == "gen2")
    shipped = shipped_layers_dir().resolve() / "gen2.toml"
    assert gen2 == {"name": "gen2", "file": str(own_gen2),
                    "description": "Our gen2: UEFI and 4 CPUs.", "shadows": [str(shipped)]}
    assert f"layer 'gen2': {own_gen2} shadows {shipped}" in err


def test_a_missing_search_path_entry_is_a_warning_naming_it_and_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "no-such-dir"
    monkeypatch.setenv(LAYER_PATH_ENV, f"{missing}:{tmp_path}")
    template = tmp_path / "t.toml"
    template.write_text('extends = ["small-vm"]\n' + BASE)
    for argv in (["validate", str(template)], ["layers"]):
        assert main(argv) == 0
        err = capsys.readouterr().err
        assert f"{LAYER_PATH_ENV} entry {missing} does not exist" in err
        assert f"({LAYER_PATH_ENV}={missing}:{tmp_path})" in err


def test_the_shipped_directory_on_the_path_shadows_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(LAYER_PATH_ENV, str(shipped_layers_dir()))
    template = tmp_path / "t.toml"
    template.write_text('extends = ["gen2"]\n' + BASE)
    assert main(["validate", str(template)]) == 0
    assert main(["layers", "--json"]) == 0
    out, err = capsys.readouterr()
    assert "WARNING" not in err
    assert all(layer["shadows"] == [] for layer in json.loads(out.split("\n", 1)[1]))


def test_no_warning_without_shadowing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "base.toml").write_text("# Ours.\n[vm]\ncpus = 3\n")
    monkeypatch.setenv(LAYER_PATH_ENV, str(tmp_path))
    template = tmp_path / "t.toml"
    template.write_text('extends = ["base", "gen2"]\n' + BASE)
    assert main(["validate", str(template)]) == 0
    assert "WARNING" not in capsys.readouterr().err


# --- provenance -----------------------------------------------------------------------------


def test_provenance_names_the_source_of_every_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "base.toml").write_text(
        '[vm]\nmemory = "4GiB"\n[variables]\nlocale = "de_DE.UTF-8"\n'
        '[[provision]]\ntype = "reboot"\n'
    )
    (tmp_path / "vars.toml").write_text('keyboard = "de"\n')
    template = tmp_path / "t.toml"
    template.write_text(
        'extends = ["base.toml", "gen2"]\n' + BASE
        + '[variables]\nkeyboard = "us"\ncpus = 2\n'
        + '[vm]\ncpus = "${var.cpus}"\n'
        + '[install]\nlocale = "${var.locale}"\nkeyboard = "${var.keyboard}"\n'
        + '[[provision]]\ntype = "shell"\ninline = ["true"]\n'
    )
    argv = ["inspect", str(template), "--provenance", "--format", "json",
            "--var-file", "vars.toml", "--var", "cpus=6"]
    assert main(argv) == 0
    origins = {o["key"]: o for o in json.loads(capsys.readouterr().out)}
    base, vars_file = str(tmp_path / "base.toml"), str(tmp_path / "vars.toml")
    gen2 = str(shipped_layers_dir().resolve() / "gen2.toml")

    def source(key: str) -> tuple[str, str | None]:
        return origins[key]["source"], origins[key]["file"]

    assert source("name") == ("template", str(template))
    assert source("vm.memory") == ("layer", base)
    assert source("vm.firmware") == ("layer", gen2)
    assert source("vm.disk_size") == ("default", None)
    assert origins["vm.cpus"] == {"key": "vm.cpus", "value": 6, "source": "--var", "file": None,
                                  "via": "${var.cpus}", "via_file": str(template)}
    assert source("install.keyboard") == ("var-file", vars_file)
    assert source("install.locale") == ("layer", base)  # the layer declares the default
    assert origins["install.locale"]["via_file"] == str(template)
    assert source("install.timezone") == ("default", None)
    assert source("provision[0].type") == ("layer", base)
    assert source("provision[1].inline") == ("template", str(template))
    assert source("provision[1].sudo") == ("default", None)
    assert source("variables.cpus") == ("--var", None)
    assert source("variables.keyboard") == ("var-file", vars_file)
    assert source("variables.locale") == ("layer", base)


def test_provenance_as_text(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    template = tmp_path / "t.toml"
    template.write_text('extends = ["small-vm"]\n' + BASE + "[variables]\npw = { default ="
                        ' "hunter2-secret", sensitive = true }\n[install]\n'
                        'root_password = "${var.pw}"\n')
    assert main(["inspect", str(template), "--provenance"]) == 0
    lines = capsys.readouterr().out.splitlines()
    small = shipped_layers_dir().resolve() / "small-vm.toml"
    # Comments line up after the longest value of up to 48 characters.
    assert 'vm.memory = "1GiB"'.ljust(48) + f"  # layer {small}" in lines
    assert 'name = "demo"'.ljust(48) + f"  # template {template}" in lines
    assert "vm.cpus = 2".ljust(48) + "  # default" in lines
    password = next(line for line in lines if line.startswith("install.root_password"))
    assert password.startswith('install.root_password = "<sensitive>"')
    assert password.endswith(f"# template {template} (via ${{var.pw}} in {template})")
    assert "hunter2-secret" not in "\n".join(lines)
