"""`azbuild fmt`: the canonical TOML layout, comments kept, data never changed."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from builder.cli import main
from builder.errors import UsageError
from builder.toml_format import format_toml

REPO = Path(__file__).resolve().parents[1]

MESSY = '''

# A team's web image.
name="web"   # as in the portal   \t
  description =   "nginx, hardened"



  [vm]

   memory="2GiB"
cpus = 2 #two
# the first provisioner
[[provision]]
type = "shell"
inline = [
  "apt-get install -y nginx",   # as written: values are kept
  "true",
]
script_text = """
  indented and trailing   \t

# not a comment
"""


[[provision]]
type="file"
[output.extra]
formats=["vhd"]
'''

CANONICAL = '''# A team's web image.
name = "web"  # as in the portal
description = "nginx, hardened"

[vm]
memory = "2GiB"
cpus = 2  #two

# the first provisioner
[[provision]]
type = "shell"
inline = [
  "apt-get install -y nginx",   # as written: values are kept
  "true",
]
script_text = """
  indented and trailing   \t

# not a comment
"""

[[provision]]
type = "file"

[output.extra]
formats = ["vhd"]
'''


def test_the_canonical_layout_keeps_comments_and_data() -> None:
    assert format_toml(MESSY) == CANONICAL
    assert tomllib.loads(CANONICAL) == tomllib.loads(MESSY)
    assert format_toml(CANONICAL) == CANONICAL  # a fixed point


def test_the_shipped_examples_and_layers_are_canonical() -> None:
    files = sorted((REPO / "examples").glob("*.toml")) + sorted(
        (REPO / "templates").glob("*.toml"))
    assert files
    assert [f.name for f in files if format_toml(f.read_text()) != f.read_text()] == []


KEYS = st.text(alphabet="abcdefxyz_", min_size=1, max_size=6)
VALUES = st.one_of(st.integers(), st.booleans(), st.text(max_size=12),
                   st.lists(st.integers(), max_size=3))


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(KEYS, VALUES, max_size=4),
       st.dictionaries(KEYS, st.dictionaries(KEYS, VALUES, max_size=3), max_size=3),
       st.sampled_from(["", "  ", "\t"]), st.sampled_from(["=", " = ", "  =   "]))
def test_any_layout_of_the_same_data_formats_alike(
    top: dict[str, object], tables: dict[str, dict[str, object]], indent: str, sep: str
) -> None:
    import tomli_w

    tables = {k: v for k, v in tables.items() if k not in top}
    canonical = format_toml(tomli_w.dumps({**top, **tables}))
    messy = "\n\n".join(
        "\n".join(f"{indent}{line.replace(' = ', sep, 1)}" if " = " in line else line
                  for line in block.split("\n"))
        for block in canonical.split("\n\n"))
    assert tomllib.loads(messy) == tomllib.loads(canonical)
    assert format_toml(messy) == canonical


def test_not_toml_is_a_usage_error_naming_the_file_and_line() -> None:
    with pytest.raises(UsageError, match=r"^t.toml: line 2: not TOML"):
        format_toml('a = 1\nb = \n', "t.toml")


# --- the command -----------------------------------------------------------------------------


def test_fmt_rewrites_what_is_not_canonical_and_keeps_its_mode(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    messy, tidy = tmp_path / "messy.toml", tmp_path / "tidy.toml"
    messy.write_text(MESSY)
    messy.chmod(0o600)
    tidy.write_text(CANONICAL)
    before = tidy.stat().st_mtime_ns
    assert main(["fmt", str(messy), str(tidy)]) == 0
    assert capsys.readouterr().out == f"{messy}\n"  # the files it changed
    assert messy.read_text() == CANONICAL
    assert os.stat(messy).st_mode & 0o777 == 0o600
    assert tidy.stat().st_mtime_ns == before  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["messy.toml", "tidy.toml"]


def test_fmt_check_changes_nothing_and_exits_1_when_a_file_would_change(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    messy, tidy = tmp_path / "messy.toml", tmp_path / "tidy.toml"
    messy.write_text(MESSY)
    tidy.write_text(CANONICAL)
    assert main(["fmt", "--check", str(messy), str(tidy)]) == 1
    assert capsys.readouterr().out == f"{messy}\n"
    assert messy.read_text() == MESSY
    assert main(["fmt", "--check", str(tidy)]) == 0
    assert capsys.readouterr().out == ""


def test_fmt_of_a_broken_or_missing_file_exits_2_and_formats_the_others(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken, messy = tmp_path / "broken.toml", tmp_path / "messy.toml"
    broken.write_text("name = \n")
    messy.write_text(MESSY)
    assert main(["fmt", str(broken), str(tmp_path / "nope.toml"), str(messy)]) == 2
    err = capsys.readouterr().err
    assert f"{broken}: line 1: not TOML" in err
    assert f"{tmp_path / 'nope.toml'}: cannot read it: No such file or directory" in err
    assert broken.read_text() == "name = \n"
    assert messy.read_text() == CANONICAL
