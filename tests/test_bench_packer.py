"""The pure parts of bench/bench_packer.py: the Packer template, the log phases, the report.

No VM and no build here: the template is checked by Packer itself (`packer validate`) when
it is installed, the phases against lines of a real Packer 1.6.6 log.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import bench_packer as bp


def write_template(tmp_path: Path) -> tuple[dict[str, object], Path]:
    image = tmp_path / "debian-12-cloud.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "64M"], check=True)
    seed = tmp_path / "seed"
    seed.mkdir()
    for name, text in bp.seed_files("ssh-ed25519 AAAAC3Nza test", "iid-1").items():
        (seed / name).write_text(text)
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    script = tmp_path / "azure-prep.sh"
    script.write_text(bp.AZURE_SCRIPT)
    template = bp.packer_template(image=image, run_dir=tmp_path / "run", seed_dir=seed,
                                  private_key=key, azure_script=script)
    path = tmp_path / "template.json"
    path.write_text(json.dumps(template))
    return template, path


def test_template_is_the_job_of_cloud_image_toml(tmp_path: Path) -> None:
    template, _ = write_template(tmp_path)
    builder = template["builders"][0]  # type: ignore[index]
    assert builder["type"] == "qemu"
    assert builder["iso_url"] == str(tmp_path / "debian-12-cloud.qcow2")
    assert (builder["disk_image"], builder["use_backing_file"]) == (True, False)
    assert (builder["disk_size"], builder["memory"], builder["cpus"]) == ("4096M", 1024, 2)
    assert builder["accelerator"] == "tcg"
    assert builder["cd_label"] == "cidata"
    assert builder["cd_files"] == [str(tmp_path / "seed" / "user-data"),
                                   str(tmp_path / "seed" / "meta-data")]
    assert "-deprovision+user" in builder["shutdown_command"]
    provisioners = template["provisioners"]  # type: ignore[index]
    assert provisioners[0] == {"type": "shell", "inline": ["uname -a", "cat /etc/os-release"]}
    assert provisioners[1]["source"] == str(bp.MOTD)
    assert provisioners[3]["script"] == str(tmp_path / "azure-prep.sh")
    raw = tmp_path / "run" / "output" / bp.VM_NAME
    vhd = tmp_path / "run" / bp.VHD_NAME
    assert template["post-processors"] == [{"type": "shell-local", "inline": [  # type: ignore[index]
        f"qemu-img convert -f raw -O vpc -o subformat=fixed,force_size {raw} {vhd}"]}]


@pytest.mark.skipif(shutil.which("packer") is None,
                    reason="packer not installed (bench/bench_packer.py installs it)")
def test_packer_accepts_the_template(tmp_path: Path) -> None:
    _, path = write_template(tmp_path)
    done = subprocess.run(["packer", "validate", str(path)], capture_output=True, text=True,
                          check=False, env={"PATH": "/usr/bin:/bin", "CHECKPOINT_DISABLE": "1",
                                            "HOME": str(tmp_path)})
    assert done.returncode == 0, done.stdout + done.stderr


def test_azure_script_is_valid_sh_doing_the_azure_work() -> None:
    done = subprocess.run(["sh", "-n"], input=bp.AZURE_SCRIPT, text=True, check=False)
    assert done.returncode == 0
    for step in ("apt-get install -y waagent", "hv_vmbus hv_storvsc hv_netvsc",
                 "update-initramfs -u", "net.ifnames=0", "update-grub",
                 "ResourceDisk.EnableSwap=y", "/etc/sudoers"):
        assert step in bp.AZURE_SCRIPT


def test_seed_user_has_the_key_and_sudo() -> None:
    files = bp.seed_files("ssh-ed25519 AAAAC3Nza test\n", "iid-7")
    assert files["meta-data"] == "instance-id: iid-7\nlocal-hostname: packer-bench\n"
    assert files["user-data"].splitlines() == [
        "#cloud-config", "users:", "  - name: packer", "    sudo: ALL=(ALL) NOPASSWD:ALL",
        "    shell: /bin/bash", "    ssh_authorized_keys:", "      - ssh-ed25519 AAAAC3Nza test"]


def test_pairs_alternate_the_starting_tool() -> None:
    assert [bp.order_of(n, None) for n in (1, 2, 3)] == [
        ["packer", "azbuild"], ["azbuild", "packer"], ["packer", "azbuild"]]
    assert bp.order_of(2, "packer") == ["packer"]


def test_wall_summary_gives_medians_and_their_ratio() -> None:
    lines = bp.wall_summary({"packer": [240.0, 230.0, 250.0], "azbuild": [180.0, 170.0, 200.0]})
    assert lines[2] == "| packer | 240.0 s (min 230.0, max 250.0, n=3) |"
    assert lines[3] == "| azbuild | 180.0 s (min 170.0, max 200.0, n=3) |"
    assert "**0.75x**" in lines[5]


def test_wall_summary_without_one_tool_has_no_ratio() -> None:
    lines = bp.wall_summary({"packer": [100.0], "azbuild": []})
    assert lines == ["| tool | wall time, median (min, max) |", "|---|---|",
                     "| packer | 100.0 s (min 100.0, max 100.0, n=1) |"]


def test_phase_table_takes_medians_over_the_runs_that_have_the_phase() -> None:
    lines = bp.phase_table([{"boot": 10.0, "shutdown": None}, {"boot": 30.0, "shutdown": 4.0},
                            {"boot": 20.0}])
    assert lines[2:] == ["| boot | 20.0 | 10.0 | 30.0 | 3 |", "| shutdown | 4.0 | 4.0 | 4.0 | 1 |"]
    assert bp.phase_table([{"x": None}])[2] == "| x | - | - | - | 0 |"


def test_azbuild_overhead_is_wall_minus_guest_minus_check() -> None:
    manifest = {"steps": {"connect": 40.0, "provision": 20.0, "check": 18.0, "export": 2.0},
                "time": {"wall_seconds": 100.0, "waiting_on_guest_seconds": 75.0,
                         "azbuild_seconds": 25.0}}
    phases = bp.azbuild_phases(manifest, elapsed=112.0)
    assert phases["step: check"] == 18.0
    assert phases["orchestration overhead (manifest wall - guest - check)"] == 7.0
    assert phases["orchestration overhead (process wall - guest - check)"] == 19.0
    assert bp.azbuild_phases(manifest, None)[
        "orchestration overhead (process wall - guest - check)"] is None


# Lines of a real run's PACKER_LOG (the first run of this benchmark, 2026-12-01, TCG),
# verbatim and coloured as Packer wrote them; most of the plugin chatter left out.
PACKER_LOG = Path(__file__).resolve().parent / "data" / "packer-1.6.6-qemu.log"


def test_phases_from_a_real_packer_log() -> None:
    log = bp.parse_packer_log(PACKER_LOG.read_text())
    assert (log.ssh_attempts, log.ssh_handshake_timeouts) == (8, 1)
    assert bp.packer_phases(log) == {
        "disk copy and resize, seed ISO": 1.0,  # 02:31:57 to the qemu command at 02:31:58
        "boot to SSH": 114.0,  # to `Connected to SSH!` at 02:33:52
        "SSH connected to first provisioner": 0.0,
        "provisioner 1: shell (inline)": 5.0,
        "provisioner 2: file motd => /tmp/motd": 0.0,
        "provisioner 3: shell (inline)": 3.0,
        "provisioner 4: shell azure.sh": 304.0,  # to `Gracefully halting` at 02:39:04
        "shutdown (deprovision, power-off)": 8.0,  # to `VM shut down.` at 02:39:12
        "VM stopped to post-processor": 0.0,
        "post-processor (qemu-img convert to VHD)": 0.0,
        "whole log": 435.0,  # Packer's own "finished after 7 minutes 15 seconds"
    }


def test_phases_of_a_log_cut_short_are_unknown_not_zero() -> None:
    text = "".join(line for line in PACKER_LOG.read_text().splitlines(keepends=True)
                   if "2026/12/01 02:3" in line and line < "2026/12/01 02:34")
    phases = bp.packer_phases(bp.parse_packer_log(text))
    assert phases["boot to SSH"] == 114.0
    assert phases["shutdown (deprovision, power-off)"] is None
    assert phases["post-processor (qemu-img convert to VHD)"] is None
    assert "provisioner 1: shell (inline)" in phases  # up to the next provisioner's line
    assert not any(name.startswith("provisioner 4") for name in phases)


def test_report_counts_only_runs_that_wrote_their_vhd(tmp_path: Path) -> None:
    vhd_bytes = 4 * 2**30 + 512
    packer = bp.Run("packer", 1, tmp_path / "packer-1", command=["packer", "build", "t.json"],
                    exit_status=0, elapsed=435.0, phases={"boot to SSH": 114.0},
                    output_size=vhd_bytes, ssh_attempts=(8, 1))
    azbuild = bp.Run("azbuild", 1, tmp_path / "azbuild-1", command=["azbuild", "build"],
                     env_shown="AZBUILD_WORK_DIR=/w", exit_status=0, elapsed=300.0,
                     phases={"step: connect": 40.0}, output_size=vhd_bytes)
    failed = bp.Run("azbuild", 2, tmp_path / "azbuild-2", command=["azbuild", "build"],
                    exit_status=1, elapsed=20.0, error="boom")
    text = bp.report([packer, azbuild, failed], [("kernel", "6.1")])
    assert "| packer | 435.0 s (min 435.0, max 435.0, n=1) |" in text
    assert "| azbuild | 300.0 s (min 300.0, max 300.0, n=1) |" in text
    assert "**0.69x**" in text
    assert "| 2 | azbuild | 1 | 20.0 s | - | nothing |" in text
    assert "## pair 2, azbuild failed; the end of its output, verbatim\n\n```\nboom\n```" in text
    assert "| boot to SSH | 114.0 | 114.0 | 114.0 | 1 |" in text
    assert "8 (1)." in text
    assert "```\nAZBUILD_WORK_DIR=/w azbuild build\n```" in text


def test_inline_scripts_are_named_alike_wherever_packer_writes_them() -> None:
    assert bp.provisioner_label(
        1, "Provisioning with shell script: /var/tmp/b/packer-1/tmp/packer-shell3870406381"
    ) == "provisioner 1: shell (inline)"
    assert bp.provisioner_label(
        4, "Provisioning with shell script: /var/tmp/b/packer-1/azure-prep.sh"
    ) == "provisioner 4: shell azure-prep.sh"
