"""Runs the Azure agents' own code on the simulated fabric's answers; prints one JSON line.

Run by tests/agents.py with the modules of Debian's `waagent` and `cloud-init` packages
first on sys.path (never installed):

    python agent_probe.py ovf FILE_OR_DIR          both agents parse an ovf-env.xml
    python agent_probe.py goal-state FILE          both agents parse a goal state document
    python agent_probe.py extensions-config FILE   waagent parses an ExtensionsConfig
    python agent_probe.py waagent-wire HOST:PORT HGAP_PORT IMDS_ADDR LIB_DIR
    python agent_probe.py cloud-init-wire HOST:PORT
    python agent_probe.py cloud-init-imds HOST:PORT
    python agent_probe.py imds-document FILE       both agents judge an IMDS instance document

Only where to connect is changed (the agents' constants name 168.63.129.16, port 32526
and 169.254.169.254); no parser, request or report of theirs is replaced. An agent's
exception becomes {"error": class name, "message": text}.
"""

from __future__ import annotations

import enum
import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _attempt(action: Callable[[], Any]) -> Any:
    try:
        return action()
    except Exception as exc:
        return {"error": type(exc).__name__, "message": str(exc)}


def _waagent_conf(lib_dir: str) -> None:
    from azurelinuxagent.common import conf

    path = Path(lib_dir) / "waagent.conf"
    path.write_text(f"Lib.Dir={lib_dir}\nExtensions.Enabled=y\nAutoUpdate.Enabled=n\n")
    conf.load_conf_from_file(str(path))


def ovf(source: str) -> dict[str, Any]:
    from azurelinuxagent.common.protocol.ovfenv import OvfEnv
    from cloudinit.sources import DataSourceAzure as ds

    path = Path(source)
    text = (path / "ovf-env.xml" if path.is_dir() else path).read_bytes()

    def waagent() -> dict[str, Any]:
        env = OvfEnv(text.decode())
        return {"hostname": env.hostname, "username": env.username,
                "password": env.user_password, "customdata": env.customdata,
                "disable_ssh_password_auth": env.disable_ssh_password_auth,
                "ssh_pubkeys": env.ssh_pubkeys,
                "provision_guest_agent": env.provision_guest_agent}

    def cloud_init() -> dict[str, Any]:
        # load_azure_ds_dir is what cloud-init runs on the mounted provisioning CD.
        md, ud, cfg, files = (ds.load_azure_ds_dir(str(path)) if path.is_dir()
                              else (*ds.read_azure_ovf(text), {}))
        return {"metadata": md, "userdata": ud.decode() if isinstance(ud, bytes) else ud,
                "cfg": cfg, "files": sorted(files)}

    return {"waagent": _attempt(waagent), "cloud-init": _attempt(cloud_init)}


class _FileWire:
    """Hands waagent's GoalState the document in a file, as its WireClient would."""

    def __init__(self, text: str) -> None:
        self.text = text

    def get_endpoint(self) -> str:
        return "168.63.129.16"

    def get_header(self) -> dict[str, str]:
        return {}

    def fetch_config(self, uri: str, headers: dict[str, str]) -> str:
        return self.text


def goal_state(file: str) -> dict[str, Any]:
    from azurelinuxagent.common.protocol import goal_state as wa
    from cloudinit.sources.helpers import azure as ci

    text = Path(file).read_text()
    wa.time.sleep = lambda seconds: None  # waagent re-fetches an incomplete one 6 times

    def waagent() -> dict[str, Any]:
        state = wa.GoalState(_FileWire(text))
        return {"incarnation": state.incarnation, "container_id": state.container_id,
                "role_instance_id": state.role_instance_id,
                "role_config_name": state.role_config_name}

    def cloud_init() -> dict[str, Any]:
        state = ci.GoalState(text, ci.AzureEndpointHttpClient(None), need_certificate=False)
        return {"incarnation": state.incarnation, "container_id": state.container_id,
                "instance_id": state.instance_id}

    return {"waagent": _attempt(waagent), "cloud-init": _attempt(cloud_init)}


def extensions_config(file: str) -> dict[str, Any]:
    from azurelinuxagent.common.protocol.extensions_goal_state_factory import (
        ExtensionsGoalStateFactory,
    )

    def waagent() -> dict[str, Any]:
        config = ExtensionsGoalStateFactory.create_from_extensions_config(
            "1", Path(file).read_text(), None)
        return {"extensions": len(config.extensions),
                "agent_families": len(config.agent_manifests),
                "status_upload_blob": config.status_upload_blob,
                "status_upload_blob_type": config.status_upload_blob_type}

    return {"waagent": _attempt(waagent)}


def waagent_wire(wire: str, hgap_port: str, imds_address: str, lib_dir: str) -> dict[str, Any]:
    _waagent_conf(lib_dir)
    from azurelinuxagent.common.protocol import hostplugin, imds
    from azurelinuxagent.common.protocol.goal_state import GoalState
    from azurelinuxagent.common.protocol.restapi import VMStatus
    from azurelinuxagent.common.protocol.wire import WireClient

    hostplugin.HOST_PLUGIN_PORT = int(hgap_port)
    imds.IMDS_ENDPOINT = imds_address
    client = WireClient(wire)
    result: dict[str, Any] = {"versions": _attempt(client.check_wire_protocol_version)}
    # The HostGAPlugin listens on the WireServer's host; here that host is loopback.
    first = GoalState(client)
    plugin = hostplugin.HostPluginProtocol(wire.split(":")[0], first.container_id,
                                           first.role_config_name)
    plugin.health_service.endpoint = f"http://{wire}/HealthService"  # port 80 on Azure
    client._set_host_plugin(plugin)
    result["update"] = _attempt(lambda: client.update_goal_state(force_update=True))
    state, hosting = client.get_goal_state(), client.get_hosting_env()
    extensions = client.get_extensions_goal_state()
    result.update({
        "incarnation": state.incarnation, "container_id": state.container_id,
        "role_instance_id": state.role_instance_id, "vm_name": hosting.vm_name,
        "role_name": hosting.role_name, "deployment_name": hosting.deployment_name,
        "extensions": len(extensions.extensions),
        "agent_families": len(extensions.agent_manifests),
        "status_upload_blob": extensions.status_upload_blob,
        "on_hold": extensions.on_hold,
    })
    result["not_ready"] = _attempt(
        lambda: client.report_health("NotReady", "Provisioning", "Starting"))
    result["ready"] = _attempt(lambda: client.report_health("Ready", None, None))

    def upload() -> None:
        client.status_blob.set_vm_status(VMStatus(status="Ready", message="Guest Agent is running"))
        client.upload_status_blob()

    result["status"] = _attempt(upload)

    def telemetry() -> None:
        from azurelinuxagent.common.protocol.wire import event_to_v1_encoded
        from azurelinuxagent.common.telemetryevent import TelemetryEvent, TelemetryEventParam

        event = TelemetryEvent(1, "69B669B9-4AF8-4C50-BDC4-6006FA76E975")
        event.parameters.append(TelemetryEventParam("Message", "simulated"))
        client.send_encoded_event(event.providerId, event_to_v1_encoded(event))

    result["telemetry"] = _attempt(telemetry)
    imds_client = imds.get_imds_client(wire)
    result["imds_valid"] = list(imds_client.validate())
    compute = imds_client.get_compute()
    result["compute"] = {"name": compute.name, "vmId": compute.vmId, "vmSize": compute.vmSize,
                         "location": compute.location, "image_origin": compute.image_origin}
    return result


def _cloud_init_quiet() -> None:
    """cloud-init copies its own log into Hyper-V KVP files before each report: not the
    fabric's business, and it would write under /var/lib/cloud on this machine."""
    from cloudinit import temp_utils
    from cloudinit.sources.helpers import azure

    azure.push_log_to_kvp = lambda *args, **kwargs: None
    temp_utils._TMPDIR = tempfile.mkdtemp()


def cloud_init_wire(wire: str) -> dict[str, Any]:
    _cloud_init_quiet()
    from cloudinit.sources.helpers import azure

    result: dict[str, Any] = {}

    def fetch() -> dict[str, Any]:  # the goal state cloud-init reports against
        shim = azure.WALinuxAgentShim(endpoint=wire)
        shim.azure_endpoint_client = azure.AzureEndpointHttpClient(None)
        parsed = shim._fetch_goal_state_from_azure(need_certificate=False)
        return {"incarnation": parsed.incarnation, "container_id": parsed.container_id,
                "instance_id": parsed.instance_id}

    result["goal_state"] = _attempt(fetch)
    result["ready"] = _attempt(lambda: azure.get_metadata_from_fabric(wire))
    result["failure"] = _attempt(lambda: azure.report_failure_to_fabric(
        wire, description="simulated failure"))
    return result


def cloud_init_imds(address: str) -> dict[str, Any]:
    _cloud_init_quiet()
    from cloudinit.sources import DataSourceAzure as ds

    # The same request paths, on this host and port instead of 169.254.169.254.
    base = f"http://{address}/metadata"
    ds.MetadataType = enum.Enum("MetadataType", {  # type: ignore[misc]
        "ALL": f"{base}/instance", "NETWORK": f"{base}/instance/network",
        "REPROVISION_DATA": f"{base}/reprovisiondata"})
    document = ds.get_metadata_from_imds(retries=0, md_type=ds.MetadataType.ALL,
                                         api_version=ds.IMDS_VER_WANT)
    return {"document": document, **_judge_imds(document)}


def _judge_imds(document: dict[str, Any]) -> dict[str, Any]:
    from cloudinit.sources import DataSourceAzure as ds

    return {
        "username": ds._username_from_imds(document),
        "hostname": ds._hostname_from_imds(document),
        "disable_password": ds._disable_password_from_imds(document),
        "keys": _attempt(lambda: ds.DataSourceAzure._get_public_keys_from_imds(None, document)),
        "network": _attempt(lambda: ds.generate_network_config_from_instance_network_metadata(
            document["network"])),
    }


def imds_document(file: str) -> dict[str, Any]:
    _cloud_init_quiet()
    from azurelinuxagent.common.protocol import imds

    text = Path(file).read_text()
    client = imds.ImdsClient("168.63.129.16")
    # Hand validate() this document as if IMDS had answered it.
    client.get_metadata = lambda path, is_health: imds.MetadataResult(True, False, text.encode())
    return {"waagent_valid": list(client.validate()), "cloud-init": _judge_imds(json.loads(text))}


COMMANDS: dict[str, Callable[..., dict[str, Any]]] = {
    "ovf": ovf, "goal-state": goal_state, "extensions-config": extensions_config,
    "waagent-wire": waagent_wire, "cloud-init-wire": cloud_init_wire,
    "cloud-init-imds": cloud_init_imds, "imds-document": imds_document,
}

if __name__ == "__main__":
    print(json.dumps(COMMANDS[sys.argv[1]](*sys.argv[2:]), default=str))
