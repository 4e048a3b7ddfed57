"""Shell quoting: plain words stay readable, and bash reads back exactly the words given."""

from __future__ import annotations

import subprocess
from pathlib import Path

from builder.quoting import shell_join, shell_quote

AWKWARD = ["plain", "two words", "it's", '"double"', "$HOME", "a;b", "", "*", "tab\there",
           "line\nbreak"]


def test_plain_words_stay_readable() -> None:
    assert shell_quote("/usr/bin/env") == "/usr/bin/env"
    assert shell_quote(42) == "42"
    assert shell_quote(Path("/tmp/a b")) == "'/tmp/a b'"
    assert shell_quote("it's") == "'it'\"'\"'s'"


def test_shell_join_is_the_words_quoted_one_by_one() -> None:
    assert shell_join(["azbuild", "convert", Path("my disk.raw"), Path("out.vhd")]) == (
        "azbuild convert 'my disk.raw' out.vhd")
    assert shell_join([]) == ""


def test_bash_reads_back_every_word() -> None:
    script = "printf '%s\\0' " + shell_join(AWKWARD)
    out = subprocess.run(["bash", "-c", script], check=True, capture_output=True).stdout
    assert out.decode().split("\0")[:-1] == AWKWARD
