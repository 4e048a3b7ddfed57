"""The rules about the kernel: R05 Hyper-V drivers in the initrds, R06 kernel versions,
R07 the kernel command line."""

from __future__ import annotations

from pathlib import PurePosixPath

from builder.image.initrd_list import InitrdError, kernel_versions_in, list_initrd, module_name
from builder.offline_check.adapter import Guest, is_reg, listed
from builder.offline_check.facts import Facts
from builder.offline_check.judge import (
    judge_cmdline,
    kernel_version_status,
    required_args,
    rootdelay_cost,
)
from builder.offline_check.parsers import (
    builtin_modules,
    grub_defaults,
    initramfs_sleep_line,
    initrd_version,
)
from builder.report.check_report import CheckResult, Status
from builder.requirements import (
    CRASHKERNEL_AUTO,
    FORBIDDEN_ARGS,
    INITRAMFS_TOOLS_INIT,
    NUMA_OFF,
    REQUIRED_MODULES,
    WANTED_MODULES,
)


def _installed_kernels(guest: Guest) -> dict[str, str]:
    """Kernel version -> where it was found."""
    kernels: dict[str, str] = {}
    for name, (mode, _size) in _boot_files(guest).items():
        for prefix in ("vmlinuz-", "vmlinux-", "kernel-"):
            if name.startswith(prefix) and "rescue" not in name and is_reg(mode):
                kernels[name[len(prefix):]] = f"/boot/{name}"
    for ver in guest.ls("/lib/modules") or guest.ls("/usr/lib/modules"):
        if ver not in kernels and "vmlinuz" in guest.ls(f"/lib/modules/{ver}"):
            kernels[ver] = f"/lib/modules/{ver}/vmlinuz"
    return kernels


def _boot_files(guest: Guest) -> dict[str, tuple[int, int]]:
    """name -> (mode, size) of /boot's entries (symlinks not followed)."""
    return guest.stat("/boot", guest.ls("/boot"))


def check_kernels(guest: Guest, facts: Facts) -> CheckResult:
    kernels = _installed_kernels(guest)
    if not kernels:
        return CheckResult("R06", "fail", "no kernel found in /boot or /lib/modules")
    worst: Status = "pass"
    parts = []
    order: dict[Status, int] = {"pass": 0, "skip": 0, "warn": 1, "fail": 2}
    for ver, where_found in sorted(kernels.items()):
        lines = [kl for kl in facts.kernel_lines if kl.kernel.endswith(ver)]
        numa_off = bool(lines) and all(NUMA_OFF in kl.args for kl in lines)
        status, text = kernel_version_status(ver, numa_off)
        parts.append(f"{text} ({where_found})")
        if order[status] > order[worst]:
            worst = status
    return CheckResult("R06", worst, "; ".join(parts))


def check_initrds(guest: Guest) -> CheckResult:
    kernels = _installed_kernels(guest)
    initrds = [
        f"/boot/{n}" for n, (mode, _size) in _boot_files(guest).items()
        if n.startswith(("initrd", "initramfs")) and "kdump" not in n and is_reg(mode)
    ]
    problems: list[str] = []
    good: list[str] = []
    warnings: list[str] = []
    covered: set[str] = set()
    builtin_cache: dict[str, set[str]] = {}

    def builtins(ver: str | None) -> set[str]:
        if ver is None:
            return set()
        if ver not in builtin_cache:
            text = guest.read_text(f"/lib/modules/{ver}/modules.builtin") or guest.read_text(
                f"/usr/lib/modules/{ver}/modules.builtin")
            builtin_cache[ver] = builtin_modules(text or "")
        return builtin_cache[ver]

    for path in initrds:
        data = guest.download(path)
        if data is None:
            problems.append(f"{path}: cannot be read")
            continue
        try:
            entries = list_initrd(data)
        except InitrdError as exc:
            problems.append(f"{path}: cannot be listed: {exc}")
            continue
        ver = initrd_version(PurePosixPath(path).name)
        in_tree = kernel_versions_in(entries)
        if ver not in kernels and len(in_tree) == 1:
            ver = next(iter(in_tree))
        if ver:
            covered.add(ver)
        segments = {e.archive: e.compression for e in entries}
        label = f"{path} ({' + '.join(segments[k] for k in sorted(segments))})"
        present = {n for e in entries if e.is_file and (n := module_name(e.name))}
        have = present | builtins(ver)
        missing = [m for m in REQUIRED_MODULES if m not in have]
        if missing:
            problems.append(f"{label} lacks {', '.join(missing)}")
        else:
            where_b = [m for m in REQUIRED_MODULES if m not in present]
            note = f" ({', '.join(where_b)} built into the kernel)" if where_b else ""
            good.append(f"{label}: {', '.join(REQUIRED_MODULES)}{note}")
        lacking = [m for m in WANTED_MODULES if m not in have]
        if lacking:
            warnings.append(f"{label} lacks {', '.join(lacking)}")
    for ver in sorted(set(kernels) - covered):
        have = builtins(ver)
        if all(m in have for m in REQUIRED_MODULES):
            good.append(f"kernel {ver}: no initrd, {', '.join(REQUIRED_MODULES)} built in")
        else:
            problems.append(f"kernel {ver} has no initrd under /boot and the Hyper-V "
                            "drivers are not built in")
    if problems:
        return CheckResult("R05", "fail", "; ".join(problems + warnings))
    if not good:
        return CheckResult("R05", "fail", "no initrd under /boot")
    if warnings:
        return CheckResult("R05", "warn", "; ".join(good + warnings))
    return CheckResult("R05", "pass", "; ".join(good) + f"; {', '.join(WANTED_MODULES)} too")


def _initrd_tool(guest: Guest) -> tuple[str, str]:
    """The image's initrd generator and the evidence: initramfs-tools (Debian, Ubuntu) when
    its init script is there, dracut when its modules are, else "unknown"."""
    if listed(guest, INITRAMFS_TOOLS_INIT):
        text = guest.read_text(INITRAMFS_TOOLS_INIT) or ""
        return "initramfs-tools", initramfs_sleep_line(text)
    for path in ("/usr/lib/dracut", "/etc/dracut.conf"):
        if listed(guest, path):
            return "dracut", path
    return "unknown", ""


def check_cmdline(guest: Guest, facts: Facts) -> CheckResult:
    problems: list[str] = []
    notes: list[str] = []
    crash = False
    tool, tool_evidence = _initrd_tool(guest)
    rootdelays: list[str] = []
    sources = [("/etc/default/grub", guest.read_text("/etc/default/grub"))] + [
        (f"/etc/default/grub.d/{n}", guest.read_text(f"/etc/default/grub.d/{n}"))
        for n in guest.ls("/etc/default/grub.d") if n.endswith(".cfg")
    ]
    files = [(path, text) for path, text in sources if text is not None]
    if files:
        values = grub_defaults(files)
        args: list[str] = []
        shown = []
        for key in ("GRUB_CMDLINE_LINUX", "GRUB_CMDLINE_LINUX_DEFAULT"):
            if key in values:
                args += values[key][0].split()
                shown.append(f'{values[key][1]}: {key}="{values[key][0]}"')
        missing, forbidden, has_crash = judge_cmdline(args, tool)
        crash = crash or has_crash
        rootdelays += forbidden
        what = "the grub defaults" if len(files) > 1 else "/etc/default/grub"
        if missing:
            problems.append(f"{what} lack{'s' if len(files) == 1 else ''} "
                            f"{' '.join(missing)} ({'; '.join(shown)})")
        if forbidden:
            problems.append(f"{what} ha{'s' if len(files) == 1 else 've'} "
                            f"{' '.join(forbidden)} ({'; '.join(shown)})")
        if not missing and not forbidden:
            notes.append("; ".join(shown))
    if not facts.kernel_lines:
        problems.append("no boot loader configuration with kernel lines (looked for grub.cfg "
                        "under /boot/grub, /boot/grub2, /boot/efi/EFI/*, grub.conf, menu.lst "
                        "and /boot/loader/entries)")
    judged = skipped = 0
    for kl in facts.kernel_lines:
        missing, forbidden, has_crash = judge_cmdline(kl.args, tool)
        crash = crash or has_crash
        rootdelays += forbidden
        if forbidden:
            problems.append(f"{kl.evidence()}: has {' '.join(forbidden)}")
        if kl.recovery:
            skipped += 1
            continue
        judged += 1
        if missing:
            problems.append(f"{kl.evidence()}: kernel line lacks {' '.join(missing)}")
    cost = rootdelay_cost(rootdelays, tool_evidence)
    if cost:
        problems.insert(0, cost)
    if problems:
        return CheckResult("R07", "fail", "; ".join(problems))
    configs = sorted({kl.path for kl in facts.kernel_lines})
    wanted = " ".join(required_args(tool))
    summary = (f"{judged} kernel line(s) in {', '.join(configs)} have "
               f"{wanted}, no {'/'.join(FORBIDDEN_ARGS)}")
    if tool == "initramfs-tools":
        summary += " and no rootdelay (initramfs-tools sleeps it on every boot)"
    if skipped:
        summary += f" ({skipped} recovery entr{'y' if skipped == 1 else 'ies'} not judged)"
    if crash:
        return CheckResult("R07", "warn", f"{CRASHKERNEL_AUTO} is set (reserves 128 MB+ of RAM); "
                       + "; ".join([summary, *notes]))
    return CheckResult("R07", "pass", "; ".join([summary, *notes]))
