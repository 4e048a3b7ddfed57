"""What a simulation found: one line per assertion, the times, and the verdict.

The same records go into `azbuild simulate --json`, the text summary and the build's
manifest (`simulation`), so each is written once here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Status = Literal["pass", "fail", "info"]


@dataclass(frozen=True)
class Assertion:
    """One thing the simulation checked. `info` lines never fail the simulation."""

    id: str  # stable, for scripts and the docs: ready, no-failure-after-ready, ssh, ...
    status: Status
    title: str
    evidence: str

    def line(self) -> str:
        return f"{self.status.upper():4}  {self.id}: {self.title} ({self.evidence})"


@dataclass
class SimulationOutcome:
    image: str
    firmware: str
    accelerator: str
    assertions: list[Assertion] = field(default_factory=list)
    seconds_to_ready: float | None = None
    seconds_to_ssh: float | None = None
    seconds: float = 0.0
    agents: list[str] = field(default_factory=list)  # User-Agents that reported health
    error: str | None = None  # why the simulation itself could not run to its end

    def add(self, id: str, status: Status, title: str, evidence: str) -> Assertion:
        assertion = Assertion(id, status, title, evidence)
        self.assertions.append(assertion)
        return assertion

    @property
    def passed(self) -> bool:
        return self.error is None and bool(self.assertions) and not self.failed()

    def failed(self) -> list[Assertion]:
        return [a for a in self.assertions if a.status == "fail"]

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["passed"] = self.passed
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SimulationOutcome:
        fields = {k: v for k, v in data.items() if k not in ("passed", "assertions")}
        outcome = cls(**fields)
        outcome.assertions = [Assertion(**a) for a in data.get("assertions", [])]
        return outcome

    def summary_lines(self) -> list[str]:
        lines = [a.line() for a in self.assertions]
        if self.error:
            lines.append(f"ERROR simulation: {self.error}")
        ready = "-" if self.seconds_to_ready is None else f"{self.seconds_to_ready:.1f}s"
        ssh = "-" if self.seconds_to_ssh is None else f"{self.seconds_to_ssh:.1f}s"
        verdict = "passed" if self.passed else "FAILED"
        lines.append(
            f"simulation {verdict}: Ready after {ready}, SSH after {ssh} "
            f"({self.firmware}, {self.accelerator}, {self.seconds:.1f}s in all)"
        )
        return lines


__all__ = ["Assertion", "SimulationOutcome", "Status"]
