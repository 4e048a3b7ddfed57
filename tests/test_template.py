"""The template loader: layers, variables, paths, defaults, schema and the generated reference."""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from test_iso import make_iso

from builder import docgen
from builder.cli import main
from builder.errors import TemplateError
from builder.models import Template, template_json_schema
from builder.template import (
    check_local_inputs,
    load_template,
    shipped_layer_names,
    shipped_layers_dir,
)
from builder.units import GiB, MiB

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((REPO / "examples").glob("*.toml"))

BASE = """\
name = "demo"
[source]
iso = "https://example.org/demo.iso"
checksum = "sha256:{}"
[distro]
name = "rocky"
version = "9"
""".format("a" * 64)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def problems_of(path: Path, **kwargs: Any) -> list[str]:
    with pytest.raises(TemplateError) as info:
        load_template(path, **kwargs)
    return info.value.problems


# --- defaults ------------------------------------------------------------------------------


def test_minimal_template_gets_the_model_defaults(tmp_path: Path) -> None:
    t = load_template(write(tmp_path / "t.toml", BASE)).template
    assert t.vm.disk_size == 30 * GiB
    assert t.vm.firmware == "bios"
    assert t.install.timeout == 3600.0
    assert t.azure.provisioning == "waagent"
    assert "console=ttyS0" in t.azure.kernel_args_add
    assert t.output.directory == "output/demo"  # ${name} filled in


def test_models_are_frozen_and_reject_unknown_keys(tmp_path: Path) -> None:
    t = load_template(write(tmp_path / "t.toml", BASE)).template
    with pytest.raises(Exception, match="frozen"):
        t.vm.cpus = 4  # type: ignore[misc]
    with pytest.raises(Exception, match="Extra inputs are not permitted"):
        Template.model_validate({**t.model_dump(), "colour": "blue"})


def _layer_params() -> list[Any]:
    return [pytest.param(name, id=name) for name in shipped_layer_names()]


def test_the_shipped_layers() -> None:
    assert {"gen2", "cloud-init", "small-vm"} <= set(shipped_layer_names())


@pytest.mark.parametrize("name", _layer_params())
def test_shipped_layers_add_choices_not_copies_of_defaults(name: str) -> None:
    """A shipped layer setting a value equal to the model's default would be a second source."""
    required = {"name": "x", "source": {"disk_image": "/x"},
                "distro": {"name": "debian", "version": "12"}}
    defaults = Template.model_validate(required).model_dump()

    def walk(layer: dict[str, Any], default: dict[str, Any], where: str) -> None:
        for key, value in layer.items():
            assert key in default, f"{where}{key} is not a template key"
            if isinstance(value, dict):
                walk(value, default[key], f"{where}{key}.")
            else:
                parsed = Template.model_validate({**required, **_nest(where + key, value)})
                assert _get(parsed.model_dump(), where + key) != default[key], (
                    f"{where}{key} copies a default"
                )

    walk(tomllib.loads((shipped_layers_dir() / f"{name}.toml").read_text()), defaults, "")


def _nest(dotted: str, value: Any) -> dict[str, Any]:
    out: Any = value
    for part in reversed(dotted.split(".")):
        out = {part: out}
    result: dict[str, Any] = out
    return result


def _get(data: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        data = data[part]
    return data


def test_sizes_and_durations_are_typed(tmp_path: Path) -> None:
    text = BASE + '[vm]\nmemory = "1536MiB"\ndisk_size = "20GiB"\n[install]\ntimeout = "45m"\n'
    text += '[communicator]\ntimeout = "90s"\n[shutdown]\ntimeout = "1h30m"\n'
    t = load_template(write(tmp_path / "t.toml", text)).template
    assert t.vm.memory == 1536 * MiB
    assert t.vm.disk_size == 20 * GiB
    assert (t.install.timeout, t.communicator.timeout, t.shutdown.timeout) == (2700, 90, 5400)


# --- layers ------------------------------------------------------------------------------


def test_shipped_layer_found_by_name(tmp_path: Path) -> None:
    t = load_template(write(tmp_path / "t.toml", 'extends = ["gen2", "cloud-init"]\n' + BASE))
    assert t.template.vm.firmware == "uefi"
    assert t.template.azure.provisioning == "cloud-init"
    assert t.template.azure.agent.enable_swap is False
    assert [p.name for p in t.layers] == ["gen2.toml", "cloud-init.toml", "t.toml"]


def test_tables_merge_key_by_key_later_layer_wins(tmp_path: Path) -> None:
    write(tmp_path / "one.toml", '[vm]\ncpus = 4\nmemory = "4GiB"\n[install]\nlocale = "de_DE"\n')
    write(tmp_path / "two.toml", '[vm]\ncpus = 8\n')
    text = 'extends = ["one.toml", "two.toml"]\n' + BASE + '[vm]\nmemory = "3GiB"\n'
    t = load_template(write(tmp_path / "t.toml", text)).template
    assert t.vm.cpus == 8  # two over one
    assert t.vm.memory == 3 * GiB  # the template over both
    assert t.install.locale == "de_DE"  # untouched keys survive


def test_provisioners_concatenate_base_layers_first(tmp_path: Path) -> None:
    write(tmp_path / "base.toml", '[[provision]]\ntype = "shell"\ninline = ["base"]\n')
    write(tmp_path / "mid.toml", 'extends = ["base.toml"]\n'
          '[[provision]]\ntype = "shell"\ninline = ["mid"]\n')
    text = ('extends = ["mid.toml"]\n' + BASE
            + '[[provision]]\ntype = "shell"\ninline = ["top"]\n')
    t = load_template(write(tmp_path / "t.toml", text)).template
    assert [p.inline for p in t.provision] == [["base"], ["mid"], ["top"]]  # type: ignore[union-attr]


def test_a_layer_reached_twice_applies_once(tmp_path: Path) -> None:
    write(tmp_path / "common.toml", '[[provision]]\ntype = "shell"\ninline = ["common"]\n')
    write(tmp_path / "a.toml", 'extends = ["common.toml"]\n[vm]\ncpus = 3\n')
    write(tmp_path / "b.toml", 'extends = ["common.toml"]\n')
    t = load_template(write(tmp_path / "t.toml", 'extends = ["a.toml", "b.toml"]\n' + BASE))
    assert len(t.template.provision) == 1
    assert t.template.vm.cpus == 3
    assert [p.name for p in t.layers] == ["common.toml", "a.toml", "b.toml", "t.toml"]


def test_layer_search_path_comes_before_shipped_layers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path / "mine" / "gen2.toml", "[vm]\ncpus = 6\n")
    write(tmp_path / "other" / "extra.toml", "[vm]\nmemory = '3GiB'\n")
    monkeypatch.setenv(
        "AZBUILD_TEMPLATE_PATH", os.pathsep.join([str(tmp_path / "mine"), str(tmp_path / "other")])
    )
    t = load_template(write(tmp_path / "t.toml", 'extends = ["gen2", "extra"]\n' + BASE))
    assert t.template.vm.cpus == 6
    assert t.template.vm.firmware == "bios"  # the shipped gen2 was shadowed
    assert t.template.vm.memory == 3 * GiB


def test_missing_layer_and_cycle_show_the_chain(tmp_path: Path) -> None:
    write(tmp_path / "a.toml", 'extends = ["b.toml"]\n')
    write(tmp_path / "b.toml", 'extends = ["a.toml"]\n')
    write(tmp_path / "c.toml", 'extends = ["nowhere"]\n')
    t = write(tmp_path / "t.toml", 'extends = ["a.toml", "c.toml"]\n' + BASE)
    problems = problems_of(t)
    assert len(problems) == 2
    cycle = next(p for p in problems if "cycle" in p)
    assert f"{tmp_path}/a.toml -> {tmp_path}/b.toml -> {tmp_path}/a.toml" in cycle
    missing = next(p for p in problems if "nowhere" in p)
    assert f"chain: {t} -> {tmp_path}/c.toml" in missing
    assert "searched" in missing


# --- paths ---------------------------------------------------------------------------------


def test_relative_paths_resolve_against_the_declaring_file(tmp_path: Path) -> None:
    write(tmp_path / "layers" / "base.toml",
          '[[provision]]\ntype = "shell"\nscript = "setup.sh"\n'
          '[install]\nanswer_file = "ks.j2"\n')
    text = ('extends = ["layers/base.toml"]\n' + BASE.replace("https://example.org/demo.iso",
                                                             "isos/demo.iso")
            + '[[provision]]\ntype = "file"\nsource = "files/motd"\ndestination = "/etc/motd"\n')
    t = load_template(write(tmp_path / "t.toml", text)).template
    assert t.provision[0].script == tmp_path / "layers" / "setup.sh"  # type: ignore[union-attr]
    assert t.install.answer_file == tmp_path / "layers" / "ks.j2"
    assert t.source.iso == str(tmp_path / "isos" / "demo.iso")
    assert t.provision[1].source == tmp_path / "files" / "motd"  # type: ignore[union-attr]


def test_checksum_file_and_urls(tmp_path: Path) -> None:
    text = BASE.replace('checksum = "sha256:' + "a" * 64, 'checksum = "file:SUMS')
    t = load_template(write(tmp_path / "t.toml", text)).template
    assert t.source.checksum == f"file:{tmp_path}/SUMS"
    assert t.source.iso == "https://example.org/demo.iso"


def test_check_local_inputs_warns_for_source_and_fails_for_the_rest(tmp_path: Path) -> None:
    text = (BASE.replace("https://example.org/demo.iso", "demo.iso")
            + '[[provision]]\ntype = "shell"\nscript = "gone.sh"\n')
    loaded = load_template(write(tmp_path / "t.toml", text))
    with pytest.raises(TemplateError) as info:
        check_local_inputs(loaded)
    assert info.value.problems == [
        f"{tmp_path}/t.toml: line 10: provision[0].script: file not found: {tmp_path}/gone.sh"
    ]
    write(tmp_path / "gone.sh", "true\n")
    warnings = check_local_inputs(loaded)
    assert warnings == [f"{tmp_path}/t.toml: line 3: source.iso: file not found:"
                        f" {tmp_path}/demo.iso (needed at build time)"]
    with pytest.raises(TemplateError, match=r"source\.iso: file not found"):
        check_local_inputs(loaded, building=True)
    write(tmp_path / "demo.iso", "")
    with pytest.raises(TemplateError, match=r"source\.iso: cannot read ISO"):
        check_local_inputs(loaded, building=True)
    make_iso(tmp_path / "demo.iso", {"images/pxeboot/vmlinuz": b"k",
                                     "images/pxeboot/initrd.img": b"i"})
    assert check_local_inputs(loaded, building=True) == []


def test_a_local_iso_without_the_installer_is_refused(tmp_path: Path) -> None:
    """The install step would find no kernel to boot, after the ISO's verification."""
    text = BASE.replace("https://example.org/demo.iso", "demo.iso")
    make_iso(tmp_path / "demo.iso", {"README": b"x"})
    loaded = load_template(write(tmp_path / "t.toml", text))
    with pytest.raises(TemplateError) as info:
        check_local_inputs(loaded)
    [problem] = info.value.problems
    assert problem.startswith(f"{tmp_path}/t.toml: line 3: source.iso: no Rocky Linux 9 "
                              "installer kernel/initrd in")
    text = text.replace("checksum =", 'installer_kernel = "boot/k"\ninstaller_initrd = '
                                      '"boot/i"\nchecksum =')
    loaded = load_template(write(tmp_path / "t.toml", text))
    with pytest.raises(TemplateError) as info:
        check_local_inputs(loaded)
    [problem] = info.value.problems
    assert problem.startswith(f"{tmp_path}/t.toml: line 4: source.installer_kernel: no Rocky")


# --- variables -----------------------------------------------------------------------------


VARS = """\
[variables]
cpus = 4
distro_version = { default = "9", description = "major version" }
greeting = "hello"
home = "${env.AZTEST_HOME}"
"""


def test_variables_everywhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AZTEST_HOME", "/home/az")
    text = BASE.replace('version = "9"', 'version = "${var.distro_version}"') + VARS + """
[vm]
cpus = "${var.cpus}"
[[provision]]
type = "shell"
inline = ["echo ${var.greeting} from ${name} in ${var.home} costs $${HOME}"]
"""
    loaded = load_template(write(tmp_path / "t.toml", text))
    t = loaded.template
    assert t.vm.cpus == 4  # a whole-string reference keeps the variable's type
    assert t.distro.version == "9"
    assert t.provision[0].inline == [  # type: ignore[union-attr]
        "echo hello from demo in /home/az costs ${HOME}"
    ]
    assert loaded.variables == {"cpus": 4, "distro_version": "9", "greeting": "hello",
                                "home": "/home/az"}


def test_var_file_then_var_override(tmp_path: Path) -> None:
    text = BASE + VARS.replace('home = "${env.AZTEST_HOME}"\n', "") + '[vm]\ncpus = "${var.cpus}"\n'
    var_file = write(tmp_path / "vars.toml", "cpus = 6\ngreeting = 'hi'\n")
    t = load_template(write(tmp_path / "t.toml", text), var_files=[var_file])
    assert t.template.vm.cpus == 6
    assert t.variables["greeting"] == "hi"
    t = load_template(tmp_path / "t.toml", cli_vars={"cpus": "8"}, var_files=[var_file])
    assert t.template.vm.cpus == 8  # --var wins, and "8" becomes an integer where one is needed


def test_escaped_name_reference_stays_literal(tmp_path: Path) -> None:
    text = BASE + '[[provision]]\ntype = "shell"\ninline = ["echo $${name} ${name}"]\n'
    t = load_template(write(tmp_path / "t.toml", text)).template
    assert t.provision[0].inline == ["echo ${name} demo"]  # type: ignore[union-attr]


def test_variable_without_value_needs_one(tmp_path: Path) -> None:
    # Said once, where it is declared; its use is not also reported as undefined.
    text = BASE + '[variables]\npw = { sensitive = true }\n[install]\nroot_password = "${var.pw}"\n'
    problems = problems_of(write(tmp_path / "t.toml", text))
    assert problems == [f"{tmp_path}/t.toml: line 9: variables.pw: no value; give it a default or "
                        "pass --var pw=..."]
    t = load_template(tmp_path / "t.toml", cli_vars={"pw": "swordfish"})
    assert t.sensitive_variables == {"pw"}
    assert t.redacted_dict()["variables"] == {"pw": "<sensitive>"}


def test_variable_default_may_only_use_env_and_build(tmp_path: Path) -> None:
    text = BASE + '[variables]\na = "x"\nb = "${var.a}"\n'
    problems = problems_of(write(tmp_path / "t.toml", text))
    assert problems == [f"{tmp_path}/t.toml: line 10: variables.b: a variable's default can use"
                        " only ${env.NAME} and ${build.NAME}, found ${var.a}"]


# --- resolved output -----------------------------------------------------------------------


def test_redacted_dict_round_trips_through_the_models(tmp_path: Path) -> None:
    loaded = load_template(write(tmp_path / "t.toml", 'extends = ["small-vm"]\n' + BASE))
    data = loaded.redacted_dict()
    assert data["vm"]["memory"] == "1GiB"
    assert data["install"]["timeout"] == "1h"
    again = Template.model_validate(data)
    assert again == loaded.template
    assert loaded.digest() == load_template(tmp_path / "t.toml").digest()


def test_schema_is_valid_draft_2020_12_and_shows_defaults() -> None:
    schema = template_json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    vm = schema["$defs"]["VM"]["properties"]
    assert vm["disk_size"]["default"] == "30GiB"
    assert vm["firmware"]["default"] == "bios"
    azure = schema["$defs"]["Azure"]["properties"]
    assert "console=ttyS0" in azure["kernel_args_add"]["default"]
    assert schema["$defs"]["Install"]["properties"]["timeout"]["default"] == "1h"


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_every_example_validates_against_the_schema(example: Path) -> None:
    validator = jsonschema.Draft202012Validator(template_json_schema())
    data = load_template(example).redacted_dict()
    errors = [f"{'.'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(data)]
    assert errors == []
    # and the schema rejects what the models reject
    data["vm"]["colour"] = "blue"
    assert any("colour" in e.message for e in validator.iter_errors(data))


def test_examples_exist() -> None:
    assert len(EXAMPLES) >= 9


# --- the generated reference ---------------------------------------------------------------


def test_docs_templates_md_is_up_to_date() -> None:
    checked_in = (REPO / "docs" / "templates.md").read_text()
    assert checked_in == docgen.render(), (
        "docs/templates.md is stale: run `python -m builder.docgen > docs/templates.md`"
    )


def test_reference_documents_every_key() -> None:
    text = docgen.render()
    schema = template_json_schema()
    for name, model in schema["$defs"].items():
        for key, node in model.get("properties", {}).items():
            assert f"| `{key}` |" in text, f"{name}.{key} is missing from the reference"
            assert node.get("description"), f"{name}.{key} has no description"
    for heading in ("[vm]", "[azure.agent]", '[[provision]] type = "shell"', "[variables.NAME]",
                    "## Layers", "## Variables", "## Paths", "## Sizes and durations"):
        assert heading in text


def test_type_names() -> None:
    assert docgen.type_name({"type": "array", "items": {"type": "string"}}) == "list of strings"
    assert docgen.type_name({"enum": ["bios", "uefi"], "type": "string"}) == '"bios" or "uefi"'
    assert docgen.type_name({"anyOf": [{"type": "string", "format": "path"},
                                       {"type": "null"}]}) == "path"
    assert json.loads(json.dumps(docgen.default_text({"default": [1]}, False).strip("`"))) \
        == "[1]"


def test_paths_given_on_the_command_line_resolve_where_they_were_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--var is relative to the working directory, --var-file to the var file; a path written
    in the template around a reference still resolves against the template."""
    text = BASE.replace('"https://example.org/demo.iso"', '"${var.iso}"').replace(
        '"sha256:' + "a" * 64 + '"', '"${var.sums}"'
    ) + ('[variables]\niso = "default.iso"\nsums = "file:SUMS"\nscript = "s.sh"\n'
         '[[provision]]\ntype = "shell"\nscript = "scripts/${var.script}"\n')
    template = write(tmp_path / "templates" / "t.toml", text)
    var_file = write(tmp_path / "vars" / "v.toml", 'sums = "file:v-SUMS"\nscript = "x.sh"\n')
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)

    t = load_template(template).template  # defaults: relative to the template
    assert t.source.iso == str(tmp_path / "templates" / "default.iso")
    assert t.source.checksum == f"file:{tmp_path}/templates/SUMS"

    t = load_template(template, cli_vars={"iso": "my.iso"}, var_files=[var_file]).template
    assert t.source.iso == str(work / "my.iso")
    assert t.source.checksum == f"file:{tmp_path}/vars/v-SUMS"
    assert t.provision[0].script == tmp_path / "templates" / "scripts" / "x.sh"  # type: ignore[union-attr]
    t = load_template(template, cli_vars={"iso": "https://example.org/x.iso"}).template
    assert t.source.iso == "https://example.org/x.iso"


def test_install_settings_with_a_disk_image_are_warned_about(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A template moved from an ISO to a disk image keeps its [install]: none of it is used.
    image = tmp_path / "disk.raw"
    image.write_bytes(b"\0" * 510 + b"\x55\xaa" + b"\0" * (1024 * 1024 - 512))  # empty MBR
    template = tmp_path / "t.toml"
    template.write_text(f'name = "t"\n[source]\ndisk_image = "{image}"\n'
                        '[distro]\nname = "almalinux"\nversion = "9"\n'
                        '[install]\npackages = ["vim-enhanced"]\ntimezone = "Europe/Paris"\n')
    assert main(["validate", str(template)]) == 0
    err = capsys.readouterr().err
    assert "line 8: install.packages: applies to an ISO install only" in err
    assert "line 9: install.timezone: applies to an ISO install only" in err
    template.write_text(template.read_text().split("[install]")[0])
    assert main(["validate", str(template)]) == 0
    assert "install." not in capsys.readouterr().err
