"""Layers you can trust: `azbuild layers`, warnings for shadowed layers and missing search-path
entries, and `azbuild inspect --provenance`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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


# --- merge rules: lists append (or replace), [remove], named provisioners ------------------

LAYER = """\
# The team's base.
[install]
packages = ["curl", "jq"]
kernel_args = ["inst.text"]

[azure]
hyperv_modules = ["hv_vmbus"]
kernel_args_add = ["console=ttyS0"]
kernel_args_remove = ["quiet"]

[output]
formats = ["vhd", "raw"]

[[provision]]
name = "agent"
type = "shell"
inline = ["install-agent"]

[[provision]]
name = "debug-tools"
type = "shell"
inline = ["install-debug-tools"]
"""


def _team(tmp_path: Path, template_text: str) -> Path:
    (tmp_path / "base.toml").write_text(LAYER)
    template = tmp_path / "t.toml"
    template.write_text('extends = ["base.toml"]\n' + BASE + template_text)
    return template


def _inspect(template: Path, capsys: pytest.CaptureFixture[str]) -> tuple[dict[str, Any], str]:
    assert main(["inspect", str(template), "--format", "json"]) == 0
    out, err = capsys.readouterr()
    return json.loads(out), err


def test_list_keys_append_across_files_without_doubling(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    template = _team(tmp_path, '[install]\npackages = ["vim", "curl"]\nkernel_args = ["x=1"]\n'
                     '[azure]\nhyperv_modules = ["hv_netvsc"]\n'
                     'kernel_args_add = ["earlyprintk=ttyS0"]\nkernel_args_remove = ["rhgb"]\n'
                     '[[provision]]\ntype = "reboot"\n')
    data, err = _inspect(template, capsys)
    assert data["install"]["packages"] == ["curl", "jq", "vim"]  # the layer's curl stays
    assert data["install"]["kernel_args"] == ["inst.text", "x=1"]
    assert data["azure"]["hyperv_modules"] == ["hv_vmbus", "hv_netvsc"]
    assert data["azure"]["kernel_args_add"] == ["console=ttyS0", "earlyprintk=ttyS0"]
    assert data["azure"]["kernel_args_remove"] == ["quiet", "rhgb"]
    assert [p["type"] for p in data["provision"]] == ["shell", "shell", "reboot"]
    assert "WARNING" not in err


def test_a_replaced_list_is_a_warning_naming_both_files_and_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    template = _team(tmp_path, '\n[output]\nformats = ["vhd"]\n')
    assert main(["validate", str(template)]) == 0
    err = capsys.readouterr().err
    assert (f"{template}: line 13: output.formats replaces the list set in "
            f"{tmp_path / 'base.toml'}: line 12") in err
    data, _ = _inspect(template, capsys)
    assert data["output"]["formats"] == ["vhd"]


def test_a_template_removes_what_a_layer_added_by_value_and_by_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    template = _team(tmp_path, '[remove]\ninstall.packages = ["curl"]\nprovision = ["agent"]\n'
                     'azure.kernel_args_remove = ["quiet"]\n'
                     '[install]\npackages = ["wget"]\n')
    data, _ = _inspect(template, capsys)
    assert data["install"]["packages"] == ["jq", "wget"]
    assert data["azure"]["kernel_args_remove"] == []
    assert [p["name"] for p in data["provision"]] == ["debug-tools"]
    assert "remove" not in data


def test_a_provisioner_of_the_same_name_replaces_the_layers_in_its_place(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    template = _team(tmp_path, '[variables]\ncmd = "install-agent --fast"\n'
                     '[[provision]]\nname = "agent"\ntype = "shell"\ninline = ["${var.cmd}"]\n'
                     '[[provision]]\ntype = "reboot"\n')
    data, _ = _inspect(template, capsys)
    assert [(p.get("name"), p.get("inline")) for p in data["provision"]] == [
        ("agent", ["install-agent --fast"]), ("debug-tools", ["install-debug-tools"]),
        (None, None)]
    assert main(["inspect", str(template), "--provenance", "--format", "json"]) == 0
    origins = {o["key"]: o for o in json.loads(capsys.readouterr().out)}
    assert origins["provision[0].name"]["file"] == str(template)
    assert origins["provision[1].name"]["file"] == str(tmp_path / "base.toml")
    assert origins["provision[2].type"]["file"] == str(template)


def test_provenance_names_the_file_of_each_list_item(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    template = _team(tmp_path, '[remove]\ninstall.packages = ["jq"]\n'
                     '[install]\npackages = ["vim"]\n')
    assert main(["inspect", str(template), "--provenance", "--format", "json"]) == 0
    origins = {o["key"]: o for o in json.loads(capsys.readouterr().out)}
    base = str(tmp_path / "base.toml")
    assert (origins["install.packages[0]"]["value"], origins["install.packages[0]"]["file"]) \
        == ("curl", base)
    assert (origins["install.packages[1]"]["value"], origins["install.packages[1]"]["file"]) \
        == ("vim", str(template))
    assert "install.packages[2]" not in origins
    assert origins["output.formats[1]"]["file"] == base
    assert origins["azure.kernel_args_add[0]"]["file"] == base
    assert origins["vm.cpus"]["source"] == "default"
    assert main(["inspect", str(template), "--provenance"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert 'install.packages[1] = "vim"'.ljust(48) + f"  # template {template}" in lines


@pytest.mark.parametrize(("text", "expect"), [
    ('[remove]\ninstall.packages = ["nano"]\n',
     "line 12: remove.install.packages: cannot remove 'nano' from install.packages: 'nano' is "
     "not in it in the files below this one"),
    ('[remove]\nprovision = ["agnet"]\n',
     "line 12: remove.provision: cannot remove 'agnet' from provision: no provisioner named"),
    ('[remove]\nvm.cpus = ["2"]\n',
     "line 12: remove.vm.cpus: vm.cpus is not a list that layers merge"),
    ('[remove]\ninstall.packages = "curl"\n',
     "line 12: remove.install.packages: expected a list of values"),
    ('[[provision]]\nname = "x"\ntype = "reboot"\n[[provision]]\nname = "x"\ntype = "reboot"\n',
     "line 15: provision[1].name: a second provisioner named 'x' in this file"),
])
def test_a_removal_that_cannot_be_done_is_an_error_at_its_line(
    text: str, expect: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    template = _team(tmp_path, text)
    assert main(["validate", str(template)]) == 2
    err = capsys.readouterr().err
    assert expect in err, err
    assert str(template) in err


def test_a_provisioners_name_is_no_part_of_its_cache_key(tmp_path: Path) -> None:
    from builder.cache.keys import provisioner_key
    from builder.models import ShellProvisioner

    plain = ShellProvisioner(type="shell", inline=["true"])
    named = ShellProvisioner(type="shell", inline=["true"], name="noop")
    assert provisioner_key("k", plain) == provisioner_key("k", named)
    assert provisioner_key("k", plain) != provisioner_key(
        "k", ShellProvisioner(type="shell", inline=["false"]))
