"""Benchmark: the simulated Azure first boot (`azbuild simulate`), image by image.

    .venv/bin/python bench/bench_simulate.py IMAGE [IMAGE ...] [--rounds 1] [--json FILE]

Each round simulates every image once, in an order that alternates from round to round
(A B C, C B A, ...), one at a time, and reads the outcome (`--json`): the time to the
agent's Ready report, to the first SSH login, the whole simulation, and which agents
reported. The images say their own generation and agent (the manifest beside them, or
their partition table). Prints a Markdown table of medians with min and max. Asserts
nothing: never run from the tests.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
AZBUILD = REPO / ".venv" / "bin" / "azbuild"
FIGURES = ("seconds_to_ready", "seconds_to_ssh", "seconds", "wall")


def simulate(image: Path) -> dict[str, Any]:
    started = time.monotonic()
    proc = subprocess.run([str(AZBUILD), "simulate", str(image), "--json"],
                          capture_output=True, text=True, check=False)
    wall = time.monotonic() - started
    if not proc.stdout.strip():
        return {"image": str(image), "error": proc.stderr[-2000:], "wall": wall}
    outcome: dict[str, Any] = json.loads(proc.stdout)
    outcome["wall"] = wall
    return outcome


def summary(runs: dict[str, list[dict[str, Any]]]) -> list[str]:
    lines = ["| image | firmware | agents | passed | Ready s | SSH s | simulation s | "
             "process wall s |", "|---|---|---|---|---|---|---|---|"]
    for image, outcomes in runs.items():
        cells = []
        for figure in FIGURES:
            values = [o[figure] for o in outcomes if o.get(figure) is not None]
            cells.append(f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"
                         if values else "-")
        first = outcomes[0]
        passed = sum(bool(o.get("passed")) for o in outcomes)
        lines.append(f"| {Path(image).name} | {first.get('firmware', '-')} | "
                     f"{', '.join(first.get('agents', [])) or '-'} | {passed}/{len(outcomes)} | "
                     + " | ".join(cells) + " |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="+", type=Path)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write every outcome here")
    args = parser.parse_args()
    runs: dict[str, list[dict[str, Any]]] = {str(i): [] for i in args.images}
    for round_number in range(args.rounds):
        order = args.images if round_number % 2 == 0 else list(reversed(args.images))
        for image in order:
            outcome = simulate(image)
            runs[str(image)].append(outcome)
            print(f"round {round_number + 1}: {image.name}: "
                  f"ready {outcome.get('seconds_to_ready')} ssh {outcome.get('seconds_to_ssh')} "
                  f"passed {outcome.get('passed')}", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(runs, indent=1))
    print("\n".join(summary(runs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
