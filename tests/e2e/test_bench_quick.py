"""The quick bench (bench/bench_quick.py) runs, and its figures go to the test log.

A guard against regressions that a reader compares from run to run: nothing here asserts
a timing, only that every piece ran and gave its figures. It starts the libguestfs
appliance (the check), hence the e2e mark; no VM boots otherwise."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent.parent

pytestmark = [pytest.mark.e2e, pytest.mark.bench]

FIGURES = ("seconds", "peak_rss_mib", "children_peak_rss_mib")


def test_the_quick_bench_gives_figures_for_every_piece(
        cloud_image: Path, tmp_path: Path,
        record_property: Callable[[str, object], None]) -> None:
    out = tmp_path / "figures.json"
    done = subprocess.run([sys.executable, str(REPO / "bench" / "bench_quick.py"),
                           "--dir", str(tmp_path), "--json", str(out),
                           "--cloud", str(cloud_image)],
                          capture_output=True, text=True, timeout=600)
    print(done.stdout)  # the figures, in the test log (-rA shows it)
    assert done.returncode == 0, done.stderr
    figures = json.loads(out.read_text())
    record_property("bench_quick", json.dumps(figures))
    assert {"synthetic", "cloud"} <= set(figures)
    for name, pieces in figures.items():
        expected = {"export", "vhd", "hash-old", "hash-sparse", "hash-new"}
        assert expected <= set(pieces), f"{name}: {sorted(pieces)}"
        for piece in expected:
            assert all(isinstance(pieces[piece][f], float | int) for f in FIGURES), pieces[piece]
    assert sum("check" in pieces for pieces in figures.values()) == 1
