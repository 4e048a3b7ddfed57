"""Variables a nightly job needs: ${build.*}, AZBUILD_VAR_<name>, JSON var files."""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from test_template import problems_of, write

from builder import log as azlog
from builder.cli import main
from builder.context import BuildOptions
from builder.errors import UsageError
from builder.pipeline import build
from builder.provenance import provenance
from builder.template import BuildInfo, load_template

BASE = """\
name = "demo"
[source]
iso = "https://example.org/demo.iso"
checksum = "sha256:{}"
[distro]
name = "rocky"
version = "9"
""".format("a" * 64)

VARS = """\
[variables]
cpus = 4
greeting = "hello"
fast = false
ratio = 0.5
[vm]
cpus = "${var.cpus}"
"""

# 23:15 UTC on 30 November, already 1 December in UTC+2: the values are UTC.
NIGHT = BuildInfo(id="c0ffee00", time=datetime(2026, 12, 1, 1, 15, 7,
                                               tzinfo=timezone(timedelta(hours=2))))


# --- ${build.*} ------------------------------------------------------------------------------


def test_build_values_are_utc_date_compact_timestamp_and_id() -> None:
    assert NIGHT.values() == {"date": "20261130", "timestamp": "20261130T231507Z",
                              "id": "c0ffee00"}


def test_build_variables_in_name_outputs_provisioners_and_defaults(tmp_path: Path) -> None:
    text = BASE.replace('name = "demo"', 'name = "web-${build.date}"') + """
[variables]
label = "nightly-${build.timestamp}"
[output]
directory = "images/${name}/${build.id}"
[[provision]]
type = "shell"
inline = ["echo ${build.id} ${var.label}", "echo $${build.id}"]
env = { BUILD_ID = "${build.id}" }
"""
    loaded = load_template(write(tmp_path / "t.toml", text), build=NIGHT)
    t = loaded.template
    assert t.name == "web-20261130"
    assert t.output.directory == "images/web-20261130/c0ffee00"
    assert t.provision[0].inline == [  # type: ignore[union-attr]
        "echo c0ffee00 nightly-20261130T231507Z", "echo ${build.id}",
    ]
    assert t.provision[0].env == {"BUILD_ID": "c0ffee00"}  # type: ignore[union-attr]
    assert loaded.variables == {"label": "nightly-20261130T231507Z"}
    assert loaded.build is NIGHT


def test_the_default_output_directory_takes_a_dated_name(tmp_path: Path) -> None:
    text = BASE.replace('name = "demo"', 'name = "web-${build.date}"')
    t = load_template(write(tmp_path / "t.toml", text), build=NIGHT).template
    assert t.output.directory == "output/web-20261130"


def test_each_load_is_a_new_build_with_its_own_id(tmp_path: Path) -> None:
    path = write(tmp_path / "t.toml", BASE + '[output]\ndirectory = "out/${build.id}"\n')
    before = datetime.now(UTC)
    first, second = load_template(path), load_template(path)
    assert re.fullmatch(r"[0-9a-f]{8}", first.build.id)
    assert first.build.id != second.build.id
    assert first.template.output.directory == f"out/{first.build.id}"
    assert before <= first.build.time <= datetime.now(UTC)


def test_unknown_build_variable_is_an_error_naming_the_three(tmp_path: Path) -> None:
    text = BASE + '[output]\ndirectory = "out/${build.data}"\n'
    assert problems_of(write(tmp_path / "t.toml", text), build=NIGHT) == [
        f"{tmp_path}/t.toml: line 9: output.directory: unknown build variable ${{build.data}};"
        " did you mean 'date'? (there are ${build.date}, ${build.timestamp}, ${build.id})"
    ]


def test_the_build_uses_the_id_the_template_was_loaded_with(tmp_path: Path) -> None:
    """The pipeline takes its id from the load (here it stops at its first check: the output
    directory is a file), so `inspect` and `render` show the id a build would use."""
    write(tmp_path / "base.qcow2", "")
    text = 'name = "shared"\n[source]\ndisk_image = "base.qcow2"\n[distro]\nname = "debian"\n' \
        'version = "12"\n'
    loaded = load_template(write(tmp_path / "t.toml", text), build=NIGHT)
    with pytest.raises(UsageError, match="is a file") as info:
        build(loaded, BuildOptions(output_dir=tmp_path / "base.qcow2"))
    assert getattr(info.value, azlog.BUILD_ATTRIBUTE) == {"build_id": "c0ffee00",
                                                           "build_name": "shared"}


# --- AZBUILD_VAR_<name> -----------------------------------------------------------------------


def test_precedence_defaults_var_files_environment_command_line(tmp_path: Path) -> None:
    path = write(tmp_path / "t.toml", BASE + VARS)
    var_file = write(tmp_path / "v.toml", "cpus = 6\ngreeting = 'from the file'\n")
    env = {"AZBUILD_VAR_cpus": "8", "AZBUILD_VAR_fast": "true", "AZBUILD_VAR_ratio": "0.75"}

    def values(**kwargs: Any) -> dict[str, Any]:
        return load_template(path, **kwargs).variables

    assert values(environ={}) == {"cpus": 4, "greeting": "hello", "fast": False, "ratio": 0.5}
    assert values(var_files=[var_file], environ={})["cpus"] == 6
    # The environment wins over var files, typed as --var is: "8" is a number here.
    assert values(var_files=[var_file], environ=env) == {
        "cpus": 8, "greeting": "from the file", "fast": True, "ratio": 0.75}
    both = load_template(path, cli_vars={"cpus": "10"}, var_files=[var_file], environ=env)
    assert both.variables["cpus"] == 10
    assert both.template.vm.cpus == 10
    assert both.environment_variables == {"fast", "ratio"}  # cpus came from --var


def test_the_process_environment_is_read_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AZBUILD_VAR_greeting", "from the environment")
    loaded = load_template(write(tmp_path / "t.toml", BASE + VARS))
    assert loaded.variables["greeting"] == "from the environment"


def test_environment_values_keep_the_strict_types(tmp_path: Path) -> None:
    path = write(tmp_path / "t.toml", BASE + VARS)
    env = {"AZBUILD_VAR_cpus": "many", "AZBUILD_VAR_fast": "yes"}
    assert sorted(problems_of(path, environ=env)) == [
        "AZBUILD_VAR_cpus: expected an integer (the type of the declared default 4),"
        " found 'many'",
        "AZBUILD_VAR_fast: expected true or false (the type of the declared default False),"
        " found 'yes'",
    ]


def test_an_undeclared_environment_variable_is_ignored_with_a_warning_for_a_typo(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write(tmp_path / "t.toml", BASE + VARS)
    env = {"AZBUILD_VAR_cpu": "8", "AZBUILD_VAR_other_templates_var": "x", "AZBUILD_VAR_": "y",
           "AZBUILD_VAR_FAST": "true"}  # names are case-sensitive, as in --var
    with caplog.at_level(logging.WARNING, logger="builder.template"):
        loaded = load_template(path, environ=env)
    assert loaded.variables["cpus"] == 4
    assert sorted(r.getMessage() for r in caplog.records) == [
        f"AZBUILD_VAR_FAST is set, but {path} declares no variable 'FAST' (did you mean "
        "'fast'?); it is ignored",
        f"AZBUILD_VAR_cpu is set, but {path} declares no variable 'cpu' (did you mean 'cpus'?);"
        " it is ignored",
    ]


def test_an_environment_path_is_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = BASE.replace('iso = "https://example.org/demo.iso"', 'iso = "${var.iso}"')
    path = write(tmp_path / "templates" / "t.toml", text + '[variables]\niso = "default.iso"\n')
    monkeypatch.chdir(tmp_path)
    loaded = load_template(path, environ={"AZBUILD_VAR_iso": "isos/rocky.iso"})
    assert loaded.template.source.iso == str(tmp_path / "isos" / "rocky.iso")


def test_provenance_names_the_environment_variable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path / "t.toml", BASE + VARS)
    loaded = load_template(path, environ={"AZBUILD_VAR_cpus": "8"})
    rows = {o.key: o.as_dict() for o in provenance(loaded)}
    assert rows["variables.cpus"] == {"key": "variables.cpus", "value": 8,
                                      "source": "environment", "file": None}
    assert rows["vm.cpus"]["source"] == "environment"
    monkeypatch.setenv("AZBUILD_VAR_cpus", "8")
    assert main(["inspect", str(path), "--provenance"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("# ")[1] for line in lines if line.startswith(("vm.cpus", "variables.c"))] \
        == ["environment AZBUILD_VAR_cpus",
            f"environment AZBUILD_VAR_cpus (via ${{var.cpus}} in {path})"]


# --- JSON var files ---------------------------------------------------------------------------


def test_a_json_var_file_keeps_its_types_and_mixes_with_toml(tmp_path: Path) -> None:
    path = write(tmp_path / "t.toml", BASE + VARS)
    toml_file = write(tmp_path / "a.toml", "cpus = 6\ngreeting = 'toml'\n")
    json_file = write(tmp_path / "b.json", json.dumps({"cpus": 12, "fast": True, "ratio": 2.5}))
    loaded = load_template(path, var_files=[toml_file, json_file], environ={})
    assert loaded.variables == {"cpus": 12, "greeting": "toml", "fast": True, "ratio": 2.5}
    assert loaded.variable_sources["cpus"] == json_file
    assert load_template(path, var_files=[json_file, toml_file]).variables["cpus"] == 6


def test_a_json_var_file_with_a_relative_path_is_relative_to_itself(tmp_path: Path) -> None:
    text = BASE.replace('iso = "https://example.org/demo.iso"', 'iso = "${var.iso}"')
    path = write(tmp_path / "t.toml", text + '[variables]\niso = "default.iso"\n')
    var_file = write(tmp_path / "vars" / "v.JSON", '{"iso": "rocky.iso"}')
    loaded = load_template(path, var_files=[var_file])
    assert loaded.template.source.iso == str(tmp_path / "vars" / "rocky.iso")


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ('{\n  "cpus": 6,\n  "greeting": ["a"],\n  "fast": null\n}\n',
         ["{f}: line 3: greeting: expected a plain value (text, number or boolean), found a list",
          "{f}: line 4: fast: expected a plain value (text, number or boolean), found null"]),
        ('{\n  "cpus" 6\n}\n',
         ["{f}: line 2, column 10: JSON syntax error: expecting ':' delimiter"]),
        ('[1, 2]', ["{f}: expected a JSON object of variable names to values, found a list"]),
        ('"hunter22"', ["{f}: expected a JSON object of variable names to values, found a string"]),
    ],
    ids=["not-plain", "syntax", "array", "string"],
)
def test_json_var_file_errors(tmp_path: Path, content: str, expected: list[str]) -> None:
    path = write(tmp_path / "t.toml", BASE + VARS)
    var_file = write(tmp_path / "v.json", content)
    found = problems_of(path, var_files=[var_file])
    assert [p.replace(f"{tmp_path}/", "") for p in found] == [
        e.format(f="v.json", t="t.toml") for e in expected
    ]


def test_a_toml_file_named_otherwise_is_still_toml(tmp_path: Path) -> None:
    path = write(tmp_path / "t.toml", BASE + VARS)
    var_file = write(tmp_path / "nightly.vars", "cpus = 3\n")
    assert load_template(path, var_files=[var_file]).variables["cpus"] == 3


def test_render_shows_the_build_it_was_loaded_as(tmp_path: Path) -> None:
    from xml.etree import ElementTree as ET

    from builder.plan import plan_for
    from builder.render import render

    text = BASE.replace('name = "demo"', 'name = "web-${build.date}"')
    loaded = load_template(write(tmp_path / "t.toml", text), build=NIGHT)
    out = tmp_path / "rendered"
    render(plan_for(loaded), out)
    boot = ET.fromstring((out / "domain-boot.xml").read_text())
    assert boot.findtext("name") == "azbuild-web-20261130-c0ffee00"
    assert "/web-20261130-c0ffee00/disk.raw" in (out / "domain-boot.xml").read_text()
    assert "web-20261130" in (out / "ks.cfg").read_text()


@pytest.mark.parametrize("name", ["vars.pkrvars.hcl", "vars.HCL"])
def test_an_hcl_var_file_is_said_to_be_hcl(tmp_path: Path, name: str) -> None:
    """Packer's .pkrvars.hcl: said for what it is, not parsed as TOML."""
    path = write(tmp_path / "t.toml", BASE + VARS)
    var_file = write(tmp_path / name, 'cpus = 6\n')  # valid TOML too: the name decides
    assert problems_of(path, var_files=[var_file]) == [
        f"--var-file {var_file}: HCL is not supported; write the variables as TOML"
        ' (NAME = value) or JSON ({"NAME": value}) and name the file .toml or .json']


# --- a var file's undeclared name: a warning naming the file and line, one template or many ----


@pytest.mark.parametrize("name", ["v.toml", "v.json"])
def test_a_var_file_name_the_template_does_not_declare_is_a_warning(
    tmp_path: Path, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """As Packer warns of an undefined var-file variable: the rest of the file is used."""
    path = write(tmp_path / "t.toml", BASE + VARS)
    content = ('{\n  "cpus": 6,\n  "cpuz": 7,\n  "other_image": "x"\n}\n' if name == "v.json"
               else 'cpus = 6\ncpuz = 7\nother_image = "x"\n')
    var_file = write(tmp_path / name, content)
    with caplog.at_level(logging.WARNING, logger="builder.template"):
        loaded = load_template(path, var_files=[var_file], environ={})
    assert loaded.variables["cpus"] == 6
    line = 3 if name == "v.json" else 2
    assert [r.getMessage() for r in caplog.records] == [
        f"{var_file}: line {line}: cpuz: no variable 'cpuz' is declared in {path} or its"
        " layers; it is ignored; did you mean 'cpus'?",
        f"{var_file}: line {line + 1}: other_image: no variable 'other_image' is declared in"
        f" {path} or its layers; it is ignored",
    ]


def test_one_template_and_several_say_the_same_of_a_shared_var_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The nightly images/*.toml glob that matches one file behaves as one matching two."""
    one = write(tmp_path / "one.toml", BASE + VARS)
    two = write(tmp_path / "two.toml", BASE.replace('"demo"', '"two"')
                + '[variables]\nregion = "westeurope"\n')
    var_file = write(tmp_path / "night.toml", 'cpus = 8\nregion = "northeurope"\ncolour = 1\n')
    assert main(["validate", str(one), "--var-file", str(var_file)]) == 0
    err = capsys.readouterr().err
    assert f"{var_file}: line 2: region: no variable 'region' is declared in {one}" in err
    assert f"{var_file}: line 3: colour: no variable 'colour' is declared in {one}" in err
    assert main(["validate", str(one), str(two), "--var-file", str(var_file)]) == 0
    err = capsys.readouterr().err
    assert "region" not in err  # two.toml declares it
    assert (f"{var_file}: line 3: colour: no variable 'colour' is declared in any of the"
            " templates; it is ignored") in err
