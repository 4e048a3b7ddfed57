"""Naming the cause of a failed simulated first boot from what the guest's disk holds."""

from __future__ import annotations

from builder.simulate.diagnosis import GuestState, causes, datasource_list, parse_conf


def state(**changes: object) -> GuestState:
    base: dict[str, object] = dict(
        waagent_conf={"Provisioning.Agent": "waagent"}, cloud_init_installed=False,
        cloud_init_disabled=False, datasource_lists=[], host_keys=["ssh_host_rsa_key"],
        waagent_log="", cloud_init_log="", journal="")
    base.update(changes)
    return GuestState(**base)  # type: ignore[arg-type]


def test_waagent_conf_is_read_as_the_agent_reads_it() -> None:
    text = "# comment\nProvisioning.Agent=cloud-init  # trailing\nResourceDisk.Format=n\n\n"
    assert parse_conf(text) == {"Provisioning.Agent": "cloud-init", "ResourceDisk.Format": "n"}


def test_a_datasource_list_is_found_in_a_cloud_cfg() -> None:
    assert datasource_list("datasource_list: [ NoCloud, 'None' ]\n") == ["NoCloud", "None"]
    assert datasource_list("datasource:\n  Azure:\n    apply_network_config: false\n") is None


def test_cloud_init_mode_without_cloud_init_is_named() -> None:
    found = causes(state(waagent_conf={"Provisioning.Agent": "cloud-init"}), {"ready"})
    assert len(found) == 1 and "cloud-init is not installed" in found[0]


def test_cloud_init_without_the_azure_datasource_is_named() -> None:
    lists = [("/etc/cloud/cloud.cfg", ["NoCloud", "Azure", "None"]),
             ("/etc/cloud/cloud.cfg.d/90_dpkg.cfg", ["NoCloud", "None"])]
    found = causes(state(waagent_conf={"Provisioning.Agent": "cloud-init"},
                         cloud_init_installed=True, datasource_lists=lists), {"ready"})
    assert found == [
        "cloud-init's datasource_list in /etc/cloud/cloud.cfg.d/90_dpkg.cfg is [NoCloud, "
        "None], without Azure: cloud-init never reads the ovf-env and never reports Ready"]
    # The last file read decides: a later list with Azure is no fault.
    good = causes(state(waagent_conf={"Provisioning.Agent": "cloud-init"},
                        cloud_init_installed=True, datasource_lists=lists[::-1]), {"ready"})
    assert good == []


def test_a_disabled_cloud_init_in_cloud_init_mode_is_named() -> None:
    found = causes(state(waagent_conf={"Provisioning.Agent": "auto"}, cloud_init_installed=True,
                         cloud_init_disabled=True), {"ready"})
    assert len(found) == 1 and "cloud-init is disabled" in found[0]


def test_sshd_without_host_keys_on_the_first_boot_is_r15() -> None:
    journal = "[   40.1] sshd[300]: sshd: no hostkeys available -- exiting.\n"
    found = causes(state(journal=journal), {"ssh"})
    assert len(found) == 1 and "R15" in found[0] and "ssh.service had given up" in found[0]
    assert "nothing made any" in causes(state(journal=journal, host_keys=[]), {"ssh"})[0]
    assert causes(state(), {"ssh"}) == []  # keys there, no sign: nothing known to say


def test_only_the_failed_assertions_are_diagnosed() -> None:
    assert causes(state(waagent_conf={"Provisioning.Agent": "cloud-init"}), {"ssh"}) == []
    assert "sudoers.d" in causes(state(), {"sudo"})[0]


def test_waagent_refusing_an_enabled_cloud_init_is_named() -> None:
    log = ("2026-12-08T01:40:00.1Z ERROR Daemon Provisioning failed: [ProvisionError] cloud-init "
           "appears to be installed and enabled, this is not expected, cannot continue\n")
    found = causes(state(waagent_log=log), {"ready"})
    assert len(found) == 1 and "cloud-init-local.service is enabled" in found[0]
