"""The key scanner behind the line numbers in template errors."""

from __future__ import annotations

import tomllib

from builder.toml_lines import key_lines

TEXT = '''\
# comment
name = "demo"
vm.cpus = 2

[source]
iso = "x.iso"   # a comment with key = value
"checksum" = "sha256:..."

[[provision]]
type = "shell"
inline = [
  "echo a = b",
]
script = """
fake = 1
[not-a-table]
"""
sudo = false

[[provision]]
type = "reboot"

[azure]
agent = { enable_swap = false, swap_size = "1GiB" }

[azure.skip]
R10 = "no agent"
'''


def test_key_lines() -> None:
    tomllib.loads(TEXT)  # the text is valid TOML
    lines = key_lines(TEXT)
    assert lines[("name",)] == 2
    assert lines[("vm", "cpus")] == 3
    assert lines[("source",)] == 5
    assert lines[("source", "iso")] == 6
    assert lines[("source", "checksum")] == 7
    assert lines[("provision", 0)] == 9
    assert lines[("provision", 0, "inline")] == 11
    assert lines[("provision", 0, "script")] == 14
    assert lines[("provision", 0, "sudo")] == 18
    assert lines[("provision", 1, "type")] == 21
    assert lines[("azure", "agent", "enable_swap")] == 24
    assert lines[("azure", "agent", "swap_size")] == 24
    assert lines[("azure", "skip", "R10")] == 27
    # Nothing inside strings is taken for a key or a table.
    assert ("provision", 0, "fake") not in lines and ("not-a-table",) not in lines
    assert ("provision", 0, "echo a") not in lines
