"""What the outer azbuild process hands the simulation inside its network namespace.

The inner process (`python -m builder.simulate.inside CONFIG`) is a fresh interpreter
in a private network namespace, so everything it needs travels in one JSON file in the
simulation's work directory.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from builder.simulate.machine import SimulatedVm


@dataclass(frozen=True)
class SimulationConfig:
    vm: SimulatedVm
    user: str
    hostname: str
    public_key: str  # the simulation's client key, handed over in ovf-env.xml
    private_key: Path  # its private half, read only by the inner process
    custom_data: bytes
    custom_data_marker: Path  # the file the CustomData script writes, when an agent runs it
    fabric_log: Path  # the fabric's requests, one JSON line each
    outcome: Path  # where the inner process writes its SimulationOutcome
    image: str  # the image under test, as the user named it (for the report)
    ready_timeout: float
    ssh_timeout: float
    expect_agent: Literal["waagent", "cloud-init"] | None = None

    def write(self, path: Path) -> None:
        data = asdict(self)
        data["custom_data"] = self.custom_data.decode("latin-1")
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, default=str, indent=1))
        os.replace(tmp, path)

    @classmethod
    def read(cls, path: Path) -> SimulationConfig:
        data: dict[str, Any] = json.loads(path.read_text())
        vm = data.pop("vm")
        for key in ("disk", "media", "console", "vars_file"):
            if vm.get(key) is not None:
                vm[key] = Path(vm[key])
        data["custom_data"] = data["custom_data"].encode("latin-1")
        for key in ("private_key", "custom_data_marker", "fabric_log", "outcome"):
            data[key] = Path(data[key])
        return cls(vm=SimulatedVm(**vm), **data)


__all__ = ["SimulationConfig"]
