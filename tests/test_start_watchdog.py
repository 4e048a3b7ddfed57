"""The start watchdog's reading of the serial console: firmware lines are not the OS
starting, a firmware that gives up is reported at once, and a line caught half-written
(the console is written a few characters at a time under TCG) decides nothing yet."""

from __future__ import annotations

from pathlib import Path

import pytest

from builder.vm.libvirt import _STARTED_OR_NO_BOOT
from builder.vm.serial import SerialLog

# Shaped like OVMF's console when the disk holds nothing to boot (PXE tried first).
OVMF_NOTHING_TO_BOOT = (
    "BdsDxe: failed to load Boot0001 \"UEFI Misc Device\" from PciRoot(0x0)/Pci(0x3,0x0): "
    "Not Found\r\n"
    "\r\n>>Start PXE over IPv4.\r\n"
    "  PXE-E16: No valid offer received.\r\n"
    "BdsDxe: loading Boot0003 \"EFI Internal Shell\" from Fv(7CB8BDC9)/FvFile(7C04A583)\r\n"
    "BdsDxe: starting Boot0003 \"EFI Internal Shell\" from Fv(7CB8BDC9)/FvFile(7C04A583)\r\n"
    "UEFI Interactive Shell v2.2\r\nEDK II\r\nUEFI v2.70 (EDK II, 0x00010000)\r\n"
    "Mapping table\r\n     BLK0: Alias(s):\r\n"
    "Press ESC in 5 seconds to skip startup.nsh or any other key to continue.\r\nShell> "
)


def reading(tmp_path: Path, console: str) -> str | None:
    """What the watchdog concludes from `console` so far: "os", "noboot" or None."""
    log = tmp_path / "serial.log"
    log.write_text(console)
    match = SerialLog(log).wait_for(_STARTED_OR_NO_BOOT, 0)
    return None if match is None else match.lastgroup


def test_ovmf_falling_back_to_its_shell_is_no_bootable_device(tmp_path: Path) -> None:
    assert reading(tmp_path, OVMF_NOTHING_TO_BOOT) == "noboot"


@pytest.mark.parametrize("cut", range(1, 160))
def test_a_firmware_line_caught_half_written_is_not_the_os(tmp_path: Path, cut: int) -> None:
    # Every prefix of OVMF's output before it names its shell: nothing decided yet.
    before_shell = OVMF_NOTHING_TO_BOOT.index("BdsDxe: starting")
    console = OVMF_NOTHING_TO_BOOT[: min(cut * 2, before_shell)]
    assert reading(tmp_path, console) is None, repr(console)


def test_a_whole_line_of_the_os_is_the_guest_starting(tmp_path: Path) -> None:
    kernel = "[    0.000000] Linux version 6.1.0-28-cloud-amd64\r\n"
    assert reading(tmp_path, "BdsDxe: loading Boot0001\r\n" + kernel) == "os"
    assert reading(tmp_path, "BdsDxe: loading Boot0001\r\n" + kernel[:20]) is None
