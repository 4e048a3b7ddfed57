"""The result of an Azure-readiness check: one line per requirement, with evidence."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Literal

from builder.report.table import aligned
from builder.requirements import TITLES

if TYPE_CHECKING:
    from builder.inventory import Inventory

Status = Literal["pass", "fail", "warn", "skip"]


@dataclass(frozen=True)
class CheckResult:
    id: str  # R01..R15, or another ID for extra findings (always warnings)
    status: Status
    evidence: str
    title: str = ""

    def __post_init__(self) -> None:
        if not self.title:
            object.__setattr__(self, "title", TITLES.get(self.id, self.id))


@dataclass
class Report:
    image: str
    checks: list[CheckResult] = field(default_factory=list)
    inventory: Inventory | None = None  # read in the same launch when asked for

    @property
    def ready(self) -> bool:
        """Ready means no R-requirement fails; warnings never change it."""
        return not any(c.status == "fail" and c.id in TITLES for c in self.checks)

    def failed(self) -> list[CheckResult]:
        return [c for c in self.checks if c.status == "fail"]

    def to_dict(self) -> dict[str, object]:
        return {
            "image": self.image,
            "ready": self.ready,
            "checks": [
                {k: v for k, v in asdict(c).items() if k in ("id", "status", "title", "evidence")}
                for c in self.checks
            ],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def to_table(self) -> str:
        rows = [("ID", "requirement", "status", "evidence")]
        rows += [(c.id, c.title, c.status.upper(), c.evidence) for c in self.checks]
        verdict = "READY for Azure" if self.ready else "NOT READY for Azure"
        return "\n".join([f"{self.image}: {verdict}", *aligned(rows)])
