"""Skipping the disk's GRUB countdown: what the serial console shows decides whether
Enter is pressed. The key press itself is exercised by the demo's e2e build."""

from __future__ import annotations

import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any, cast

from builder.vm.guest import GRUB_COUNTDOWN, skip_boot_menu
from builder.vm.serial import SerialLog, clean

# Shaped like what GRUB 2 writes to a serial terminal (vt100 cursor moves, colours, the
# countdown line redrawn each second).
GRUB_MENU = (
    "\x1b[1;1H\x1b[0m\x1b[37m\x1b[40m                             GNU GRUB  version 2.06-13+deb12u1"
    "\x1b[3;2H*Debian GNU/Linux\x1b[4;2H Advanced options for Debian GNU/Linux"
    "\x1b[17;5H   The highlighted entry will be executed automatically in 5s.   "
    "\x1b[17;5H   The highlighted entry will be executed automatically in 4s.   "
)
LEGACY_GRUB = "Press any key to enter the menu\r\n\r\nBooting CentOS (2.6.32) in 5 seconds..."


class FakeDomain:
    """A domain reduced to what skip_boot_menu uses: its serial log and the key press."""

    def __init__(self, log: Path) -> None:
        self.name = "fake"
        self.serial = SerialLog(log)
        self.pressed = threading.Event()

    def press_enter(self) -> bool:
        self.pressed.set()
        return True


def test_grub2_countdown_is_recognised_through_its_escape_sequences() -> None:
    assert GRUB_COUNTDOWN.search(clean(GRUB_MENU))


def test_legacy_grub_countdown_is_not_matched() -> None:
    # A key there opens legacy GRUB's menu instead of booting.
    assert not GRUB_COUNTDOWN.search(clean(LEGACY_GRUB))


def test_enter_is_pressed_once_the_countdown_shows(tmp_path: Path) -> None:
    log = tmp_path / "serial.log"
    log.write_text("SeaBIOS (version 1.16.2)\r\nBooting from Hard Disk...\r\n")
    domain = FakeDomain(log)
    with ExitStack() as stack:
        skip_boot_menu(cast(Any, domain), stack, within=10)
        time.sleep(0.3)
        assert not domain.pressed.is_set()
        with log.open("a") as f:
            f.write(GRUB_MENU)
        assert domain.pressed.wait(5)


def test_no_key_without_a_countdown_and_the_watch_ends_with_the_build(tmp_path: Path) -> None:
    log = tmp_path / "serial.log"
    log.write_text(LEGACY_GRUB)
    domain = FakeDomain(log)
    started = time.monotonic()
    with ExitStack() as stack:
        skip_boot_menu(cast(Any, domain), stack, within=60)
        time.sleep(0.3)
    assert time.monotonic() - started < 5  # closing the stack stopped the watch
    assert not domain.pressed.is_set()
