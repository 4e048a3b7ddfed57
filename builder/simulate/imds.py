"""The Instance Metadata Service's answers (169.254.169.254:80), as IMDS gives them.

Only requests with `Metadata: true` and without X-Forwarded-For are served, and only
with a known api-version, as IMDS does (400 with a JSON error otherwise). The instance
document agrees with the provisioning data: osProfile's adminUsername and computerName,
the public key, and one network interface with the guest's address and MAC (cloud-init
writes its network configuration from it, matching the NIC by that MAC).
"""

from __future__ import annotations

import ipaddress
import json
from typing import Any

from builder.simulate.exchange import Answer, Incoming
from builder.simulate.ovf_env import Provisioning

# The api-versions this IMDS knows; cloud-init 22.4 asks 2021-08-01, then 2019-06-01;
# waagent 2.7 asks 2018-02-01.
API_VERSIONS = (
    "2017-03-01", "2017-04-02", "2017-08-01", "2017-10-01", "2017-12-01", "2018-02-01",
    "2018-04-02", "2018-10-01", "2019-02-01", "2019-03-11", "2019-04-30", "2019-06-01",
    "2019-06-04", "2019-08-01", "2019-08-15", "2019-11-01", "2020-06-01", "2020-07-15",
    "2020-09-01", "2020-10-01", "2020-12-01", "2021-01-01", "2021-02-01", "2021-03-01",
    "2021-05-01", "2021-08-01", "2021-10-01", "2021-11-01", "2021-11-15", "2021-12-13",
    "2023-07-01",
)
JSON = "application/json; charset=utf-8"


def imds_mac(mac: str) -> str:
    """A MAC as IMDS writes it: 12 upper-case hex digits, no separators."""
    digits = mac.replace(":", "").replace("-", "").upper()
    if len(digits) != 12 or any(c not in "0123456789ABCDEF" for c in digits):
        raise ValueError(f"not a MAC address: {mac!r}")
    return digits


def instance_metadata(p: Provisioning, guest_ip: str, guest_mac: str,
                      prefix: int = 24) -> dict[str, Any]:
    """The /metadata/instance document for this VM."""
    subnet = ipaddress.ip_network(f"{guest_ip}/{prefix}", strict=False)
    resource_id = (f"/subscriptions/{p.subscription_id}/resourceGroups/{p.resource_group}"
                   f"/providers/Microsoft.Compute/virtualMachines/{p.hostname}")
    return {
        "compute": {
            "azEnvironment": "AzurePublicCloud",
            "isHostCompatibilityLayerVm": "false",
            "location": p.location,
            "name": p.hostname,
            "offer": "",
            "osProfile": {
                "adminUsername": p.user,
                "computerName": p.hostname,
                "disablePasswordAuthentication": str(p.disable_password_auth).lower(),
            },
            "osType": "Linux",
            "placementGroupId": "",
            "platformFaultDomain": "0",
            "platformUpdateDomain": "0",
            "provider": "Microsoft.Compute",
            "publicKeys": [{"keyData": p.public_key.strip(), "path": p.key_path}],
            "publisher": "",
            "resourceGroupName": p.resource_group,
            "resourceId": resource_id,
            "securityProfile": {"secureBootEnabled": "false", "virtualTpmEnabled": "false"},
            "sku": "",
            "subscriptionId": p.subscription_id,
            "tags": "",
            "tagsList": [],
            "userData": "",
            "version": "",
            "vmId": p.vm_id,
            "vmScaleSetName": "",
            "vmSize": p.vm_size,
            "zone": "",
        },
        "network": {
            "interface": [{
                "ipv4": {
                    "ipAddress": [{"privateIpAddress": guest_ip, "publicIpAddress": ""}],
                    "subnet": [{"address": str(subnet.network_address),
                                "prefix": str(prefix)}],
                },
                "ipv6": {"ipAddress": []},
                "macAddress": imds_mac(guest_mac),
            }],
        },
    }


def _error(message: str, newest: bool = False) -> Answer:
    document: dict[str, Any] = {"error": message}
    if newest:
        document["newest-versions"] = list(API_VERSIONS[::-1][:3])
    return Answer(400, json.dumps(document).encode(), JSON, {"error": message})


def _select(document: Any, parts: list[str]) -> Any:
    """The part of the instance document a longer path names (lists by index)."""
    for part in parts:
        if isinstance(document, dict) and part in document:
            document = document[part]
        elif isinstance(document, list) and part.isdigit() and int(part) < len(document):
            document = document[int(part)]
        else:
            raise KeyError(part)
    return document


def imds_answer(incoming: Incoming, p: Provisioning, guest_ip: str, guest_mac: str,
                prefix: int = 24) -> Answer:
    if not incoming.path.startswith("/metadata/"):
        return Answer(404, b"Not Found")
    if incoming.headers.get("metadata", "").lower() != "true":
        return _error("Bad request. Required metadata header not specified")
    if "x-forwarded-for" in incoming.headers:
        return _error("Bad request. Request contains X-Forwarded-For header")
    if incoming.method != "GET":
        return Answer(405, b"Method Not Allowed")
    if incoming.path.rstrip("/") == "/metadata/versions":
        return Answer(200, json.dumps({"apiVersions": list(API_VERSIONS)}).encode(), JSON,
                      {"document": "versions"})
    version = incoming.query.get("api-version")
    if not version:
        return _error("Bad request. api-version was not specified in the request", True)
    if version not in API_VERSIONS:
        return _error("Bad request. api-version is invalid or was not specified", True)
    parts = [part for part in incoming.path.split("/")[2:] if part]
    if not parts or parts[0] != "instance":
        # reprovisiondata (pre-provisioned VMs), identity, scheduledevents...: none here.
        return Answer(404, json.dumps({"error": "Not found"}).encode(), JSON,
                      {"document": "/".join(parts)})
    document: dict[str, Any] = instance_metadata(p, guest_ip, guest_mac, prefix)
    if incoming.query.get("extended") == "true":
        document["extended"] = {"compute": {"ppsType": "None",
                                            "hasCustomData": bool(p.custom_data)}}
    try:
        selected = _select(document, parts[1:])
    except KeyError:
        return Answer(404, json.dumps({"error": "Not found"}).encode(), JSON,
                      {"document": "/".join(parts)})
    summary = {"document": "/".join(parts)}
    if incoming.query.get("format") == "text" and not isinstance(selected, dict | list):
        return Answer(200, str(selected).encode(), "text/plain; charset=utf-8", summary)
    return Answer(200, json.dumps(selected).encode(), JSON, summary)
