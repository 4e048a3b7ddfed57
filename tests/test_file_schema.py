"""`azbuild schema` checked by taplo, the TOML toolkit behind the Even Better TOML editor
extension: every example, layer and docs snippet passes it, the bad-template fixtures that a
schema can judge fail it, and its errors are specific."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
from test_bad_templates import BASE, CASES, _write

from builder.cli import main
from builder.file_schema import file_json_schema
from builder.models import template_json_schema
from builder.template import load_template

REPO = Path(__file__).resolve().parent.parent
TAPLO_DIR = Path(os.environ.get("AZBUILD_TAPLO_DIR", "/var/cache/azbuild/taplo"))
TAPLO = TAPLO_DIR / "node_modules" / ".bin" / "taplo"

# The fixtures of tests/test_bad_templates.py that no schema of one file can judge, by why.
BEYOND_A_SCHEMA = {
    # the value is only known once variables and layers are applied
    "undefined-variable", "unknown-reference", "shell-variable-in-an-inline-command",
    "unknown-build-variable", "environment-variable-of-the-wrong-type", "unset-env-var",
    "variable-without-value", "var-for-undeclared-variable", "malformed-var",
    "missing-var-file", "json-var-file-syntax", "undefined-variable-close-to-a-declared-one",
    "var-with-a-typo", "var-not-of-the-declared-type", "variable-of-the-wrong-type",
    "sensitive-variable-in-the-name", "sensitive-variable-in-the-output-directory",
    # a layer needs no key: what is required is judged on the resolved template
    "empty-file", "missing-required-table", "neither-iso-nor-disk-image",
    "iso-without-checksum", "both-iso-and-disk-image", "host-key-file-with-an-iso",
    # other files: layers, scripts, keys, answer files, disk images
    "missing-layer", "missing-layer-file", "cyclic-extends", "template-does-not-exist",
    "missing-provisioner-script", "missing-file-provisioner-source",
    "directory-as-shell-script", "answer-file-syntax-error",
    "answer-file-with-an-unknown-variable", "private-key-file-that-is-no-key",
    "checksum-file-without-the-iso", "host-key-file-without-a-key",
    "disk-image-that-is-xz", "disk-image-that-is-vmdk", "disk-image-that-is-an-iso",
    # rules across keys, or on a value's meaning rather than its form
    "shell-inline-and-script", "kernel-arg-added-and-removed",
    "kernel-arg-added-and-removed-both-given", "cloud-init-on-rhel-6",
    "unknown-distro", "unknown-distro-version", "disk-under-20MiB", "memory-too-small",
    "zero-timeout", "swap-size-not-whole-mib", "unknown-time-zone", "unknown-locale",
    "locale-that-is-no-locale", "unknown-keymap",
}


def _taplo_ready() -> None:
    if not TAPLO.exists():
        pytest.fail(f"taplo is not installed at {TAPLO}: run scripts/setup.sh")


@pytest.fixture(scope="module")
def schema_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("schema") / "azbuild.schema.json"
    path.write_text(json.dumps(file_json_schema()))
    return path.as_uri()


def _taplo(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    _taplo_ready()
    env = {**os.environ, "RUST_LOG": "error", "NO_COLOR": "1"}
    return subprocess.run([str(TAPLO), "check", *args], capture_output=True, text=True,
                          timeout=300, env=env, cwd=cwd)


def _invalid_files(stderr: str) -> set[Path]:
    return {Path(p) for p in re.findall(r'invalid file error=.*? path="([^"]+)"', stderr)}


def _doc_snippets(directory: Path) -> list[Path]:
    """Every ```toml block of the README and docs/, one file each."""
    written = []
    for doc in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for number, match in enumerate(re.finditer(r"```toml\n(.*?)```", doc.read_text(),
                                                   re.S)):
            path = directory / f"{doc.stem}-{number}.toml"
            path.write_text(match.group(1))
            written.append(path)
    return written


def test_the_schema_is_a_valid_draft_2020_12_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(file_json_schema())


def test_every_example_layer_and_docs_snippet_passes(schema_url: str, tmp_path: Path) -> None:
    snippets = _doc_snippets(tmp_path)
    files = [*sorted((REPO / "examples").glob("*.toml")),
             *sorted((REPO / "templates").glob("*.toml")), *snippets]
    assert len(snippets) >= 20 and len(files) >= 30
    result = _taplo("--schema", schema_url, *map(str, files))
    assert result.returncode == 0, result.stderr
    assert not _invalid_files(result.stderr)


def test_the_bad_template_fixtures_a_schema_can_judge_fail(
    schema_url: str, tmp_path: Path
) -> None:
    files: list[Path] = []
    for case in CASES:
        _write(case, tmp_path / case.id)
        files += sorted((tmp_path / case.id).rglob("*.toml"))
    result = _taplo("--schema", schema_url, *map(str, files))
    failing = {path.relative_to(tmp_path).parts[0] for path in _invalid_files(result.stderr)}
    assert result.returncode == 1
    assert failing == {case.id for case in CASES} - BEYOND_A_SCHEMA, result.stderr
    assert len(failing) >= 40


def _check_one(schema_url: str, directory: Path, text: str) -> str:
    path = directory / "t.toml"
    path.write_text(text)
    result = _taplo("--schema", schema_url, str(path))
    return result.stderr if result.returncode else ""


def test_a_reference_stands_for_a_typed_value(schema_url: str, tmp_path: Path) -> None:
    layer = ('[variables]\ncpus = 4\nuefi = "uefi"\nswap = false\n'
             '[vm]\ncpus = "${var.cpus}"\nfirmware = "${var.uefi}"\nmemory = "${var.mem}"\n'
             '[azure.agent]\nenable_swap = "${var.swap}"\n'
             '[[provision]]\ntype = "file"\nsource = "f"\ndestination = "${var.dir}/f"\n'
             'mode = "${var.mode}"\n')
    assert _check_one(schema_url, tmp_path, layer) == ""
    # A whole reference only, where the value is no text: "4${x}" cannot become a number.
    assert '"4${var.x}" is not of type "integer"' in _check_one(
        schema_url, tmp_path, '[vm]\ncpus = "4${var.x}"\n')
    assert '"many" is not of type "integer"' in _check_one(
        schema_url, tmp_path, '[vm]\ncpus = "many"\n')
    # The literal `$${` is no reference.
    assert "does not match" in _check_one(schema_url, tmp_path, 'name = "a $${b}"\n')


def test_errors_name_the_provisioner_kinds_keys(schema_url: str, tmp_path: Path) -> None:
    """The schema selects on `type`: a file provisioner's mistake is judged against the file
    provisioner's keys, not reported as 'valid under none of the schemas'."""
    err = _check_one(schema_url, tmp_path, '[[provision]]\ntype = "file"\ninline = ["x"]\n'
                     'source = "a"\ndestination = "/a"\n')
    assert ('"inline" is not one of ["cache","destination","mode","name","owner","source","type"]'
            in err), err
    err = _check_one(schema_url, tmp_path, '[[provision]]\ntype = "shell"\ninline = "x"\n')
    assert '"x" is not of type "array"' in err, err
    err = _check_one(schema_url, tmp_path, '[[provision]]\ntype = "ansible"\n')
    assert '"ansible" is not one of ["file","reboot","shell"]' in err, err
    err = _check_one(schema_url, tmp_path, '[[publish]]\ntype = "azure-page-blob"\nsize = 1\n')
    assert '"size" is not one of' in err, err
    assert "any of" not in err and "none of" not in err


def test_a_schema_directive_is_taplos_and_azbuild_reads_past_it(
    schema_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`#:schema URL` on the first line: taplo checks the file against it without --schema,
    and to azbuild it is a comment (neither a problem nor a layer's description)."""
    (tmp_path / "base.toml").write_text(f"#:schema {schema_url}\n# The team's base.\n"
                                        "[vm]\nmemory = \"1GiB\"\n")
    template = tmp_path / "t.toml"
    template.write_text(f'#:schema {schema_url}\nextends = ["base.toml"]\n' + BASE)
    assert _taplo(str(template), str(tmp_path / "base.toml")).returncode == 0
    assert main(["validate", str(template)]) == 0
    assert load_template(template).template.vm.memory == 1024**3
    with_layers = {**os.environ, "AZBUILD_TEMPLATE_PATH": str(tmp_path)}
    listed = subprocess.run([str(Path(sys.executable).parent / "azbuild"), "layers",
                             "--json"], capture_output=True, text=True, env=with_layers,
                            check=True)
    base = next(layer for layer in json.loads(listed.stdout) if layer["name"] == "base")
    assert base["description"] == "The team's base."
    template.write_text(f'#:schema {schema_url}\n' + BASE + '[vm]\nfirmware = "efi"\n')
    result = _taplo(str(template))
    assert result.returncode == 1 and '"efi" is not one of ["bios","uefi"]' in result.stderr


def test_schema_prints_the_file_schema_and_resolved_the_models(
    capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["schema"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == file_json_schema() and "required" not in printed
    assert main(["schema", "--resolved"]) == 0
    assert json.loads(capsys.readouterr().out) == template_json_schema()
