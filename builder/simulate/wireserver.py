"""The WireServer's answers (168.63.129.16:80): protocol versions, the goal state and the
documents it points to, the health reports an agent posts, its telemetry, and waagent's
observations of the HostGAPlugin (/HealthService).

One goal state, incarnation 1, with no certificates and no extensions: an empty
ExtensionsConfig whose GAFamilies are empty (so no agent self-update), with a status
upload blob that waagent writes through the HostGAPlugin. The goal state's URLs name the
host the request was addressed to (the guest asks 168.63.129.16, so they read
http://168.63.129.16:80/machine/..., as on Azure; a test on loopback gets its own port).
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from urllib.parse import quote
from xml.sax.saxutils import escape

from builder.simulate.exchange import Answer, Incoming
from builder.simulate.ovf_env import Provisioning

INCARNATION = "1"
PROTOCOL_VERSION = "2012-11-30"  # what both agents send as x-ms-version
XML = "text/xml; charset=utf-8"
# The `type` of each config document in the goal state, by element name.
CONFIG_TYPES = {
    "HostingEnvironmentConfig": "hostingEnvironmentConfig",
    "SharedConfig": "sharedConfig",
    "ExtensionsConfig": "extensionsConfig",
    "FullConfig": "fullConfig",
}


def _base_url(incoming: Incoming) -> str:
    host = incoming.headers.get("host") or "168.63.129.16"
    return f"http://{host}" if ":" in host else f"http://{host}:80"


def _config_path(p: Provisioning) -> str:
    return f"/machine/{p.container_id}/{quote(p.role_instance_id, safe='')}"


def versions_xml() -> str:
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n<Versions>\n'
        f"  <Preferred><Version>{PROTOCOL_VERSION}</Version></Preferred>\n"
        "  <Supported><Version>2010-12-15</Version><Version>2010-28-10</Version></Supported>\n"
        "</Versions>\n"
    )


def goal_state_xml(p: Provisioning, base_url: str) -> str:
    url = f"{base_url}{_config_path(p)}?comp=config&type="
    config = "".join(f"<{name}>{escape(f'{url}{kind}&incarnation={INCARNATION}')}</{name}>"
                     for name, kind in CONFIG_TYPES.items())
    config_name = f"{p.deployment_id}.0.{p.deployment_id}.0.{p.hostname}.1.xml"
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n'
        '<GoalState xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
        'xsi:noNamespaceSchemaLocation="goalstate10.xsd">\n'
        "  <Version>2010-12-15</Version>\n"
        f"  <Incarnation>{INCARNATION}</Incarnation>\n"
        "  <Machine><ExpectedState>Started</ExpectedState>"
        "<StopRolesDeadlineHint>300000</StopRolesDeadlineHint>"
        "<LBProbePorts><Port>16001</Port></LBProbePorts>"
        "<ExpectHealthReport>FALSE</ExpectHealthReport></Machine>\n"
        "  <Container>\n"
        f"    <ContainerId>{p.container_id}</ContainerId>\n"
        "    <RoleInstanceList><RoleInstance>\n"
        f"      <InstanceId>{escape(p.role_instance_id)}</InstanceId>\n"
        "      <State>Started</State>\n"
        f"      <Configuration>{config}<ConfigName>{escape(config_name)}</ConfigName>"
        "</Configuration>\n"
        "    </RoleInstance></RoleInstanceList>\n"
        "  </Container>\n"
        "</GoalState>\n"
    )


def _deployment(p: Provisioning) -> str:
    return (
        f'<Deployment name="{p.deployment_id}" guid="{{{p.deployment_id}}}" incarnation="0">'
        f'<Service name="{escape(p.hostname)}" guid="{{00000000-0000-0000-0000-000000000000}}" />'
        f'<ServiceInstance name="{p.deployment_id}.0" guid="{{{p.container_id}}}" />'
        "</Deployment>"
        f'<Incarnation number="{INCARNATION}" instance="{escape(p.hostname)}" '
        f'guid="{{{p.vm_id}}}" />'
        f'<Role guid="{{{p.vm_id}}}" name="{escape(p.hostname)}" settleTimeSeconds="0" />'
    )


def hosting_environment_xml(p: Provisioning) -> str:
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n'
        f'<HostingEnvironmentConfig version="1.0.0.0" goalStateIncarnation="{INCARNATION}">'
        f"<StoredCertificates />{_deployment(p)}"
        '<HostingEnvironmentSettings name="full" runtime="rd_fabric_stable.simulated">'
        '<CAS mode="full" /><PrivilegeLevel mode="max" /></HostingEnvironmentSettings>'
        "<ApplicationSettings /><ResourceReferences />"
        "</HostingEnvironmentConfig>\n"
    )


def shared_config_xml(p: Provisioning, guest_ip: str) -> str:
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n'
        f'<SharedConfig version="1.0.0.0" goalStateIncarnation="{INCARNATION}">'
        f"{_deployment(p)}"
        '<LoadBalancerSettings timeoutSeconds="0" waitLoadBalancerProbeCount="8">'
        "<Probes /></LoadBalancerSettings><OutputEndpoints />"
        f'<Instances><Instance id="{escape(p.hostname)}" address="{guest_ip}">'
        '<FaultDomains randomId="0" updateId="0" updateCount="0" /><InputEndpoints />'
        "</Instance></Instances>"
        "</SharedConfig>\n"
    )


def status_blob_url(p: Provisioning) -> str:
    """A SAS URL shaped like Azure's: waagent hands it to the HostGAPlugin's /status."""
    return (f"https://md-simulated.blob.core.windows.net/$system/{p.hostname}.{p.vm_id}"
            ".status?sv=2018-03-28&sr=b&sk=system-1&sig=simulated&se=9999-01-01T00%3a00%3a00Z"
            "&sp=rw")


def extensions_config_xml(p: Provisioning) -> str:
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n'
        f'<Extensions version="1.0.0.0" goalStateIncarnation="{INCARNATION}">'
        '<GuestAgentExtension xmlns:i="http://www.w3.org/2001/XMLSchema-instance">'
        "<GAFamilies></GAFamilies></GuestAgentExtension>"
        "<Plugins></Plugins><PluginSettings></PluginSettings>"
        f'<StatusUploadBlob statusBlobType="BlockBlob">{escape(status_blob_url(p))}'
        "</StatusUploadBlob>"
        f'<InVMGoalStateMetaData inSvdSeqNo="1" createdOnTicks="0" activityId="{p.vm_id}" '
        f'correlationId="{p.container_id}" />'
        "</Extensions>\n"
    )


def parse_health(body: bytes) -> dict[str, str]:
    """The fields of a posted Health document (empty ones left out); ValueError if the
    body is not one."""
    try:
        root = ET.fromstring(body)
    except ET.ParseError as exc:
        raise ValueError(f"not XML: {exc}") from None
    if root.tag != "Health":
        raise ValueError(f"root element is {root.tag}, not Health")
    paths = {
        "incarnation": "GoalStateIncarnation",
        "container_id": "Container/ContainerId",
        "instance_id": "Container/RoleInstanceList/Role/InstanceId",
        "state": "Container/RoleInstanceList/Role/Health/State",
        "substatus": "Container/RoleInstanceList/Role/Health/Details/SubStatus",
        "description": "Container/RoleInstanceList/Role/Health/Details/Description",
    }
    fields = {key: (root.findtext(path) or "").strip() for key, path in paths.items()}
    if fields["state"] not in ("Ready", "NotReady"):
        raise ValueError(f"health state is {fields['state']!r}, not Ready or NotReady")
    return {key: value for key, value in fields.items() if value}


def _health(incoming: Incoming, p: Provisioning) -> Answer:
    try:
        fields = parse_health(incoming.body)
    except ValueError as exc:
        return Answer(400, b"Bad Request", summary={"kind": "health", "error": str(exc)})
    wrong = [f"{key} {fields.get(key)!r} (expected {want!r})"
             for key, want in (("container_id", p.container_id),
                               ("instance_id", p.role_instance_id))
             if fields.get(key) != want]
    if wrong:
        # Azure drops a report for another VM: it never counts as this VM's Ready.
        fields["error"] = "wrong " + ", ".join(wrong)
        return Answer(400, b"Bad Request", summary={"kind": "health", **fields})
    return Answer(200, summary={"kind": "health", **fields})


def _health_service(incoming: Incoming) -> Answer:
    """waagent's observations of the HostGAPlugin (POST /HealthService): the names of the
    unhealthy ones go to the log."""
    try:
        observations = json.loads(incoming.body)["Observations"]
        unhealthy = [str(o["ObservationName"]) for o in observations if not o["IsHealthy"]]
    except (ValueError, KeyError, TypeError) as exc:
        return Answer(400, b"Bad Request", summary={"kind": "observations",
                                                    "error": f"not observations: {exc!r}"})
    return Answer(200, summary={"kind": "observations", "count": str(len(observations)),
                                "unhealthy": ",".join(unhealthy)})


def _document(name: str, text: str) -> Answer:
    return Answer(200, text.encode(), XML, {"document": name})


def wire_answer(incoming: Incoming, p: Provisioning, guest_ip: str) -> Answer:
    comp = incoming.query.get("comp", "")
    path = incoming.path.rstrip("/") or "/"
    if path == "/" and comp == "versions" and incoming.method == "GET":
        return _document("versions", versions_xml())
    if path == "/machine" and incoming.method == "GET" and comp == "goalstate":
        if "x-ms-version" not in incoming.headers:
            return Answer(400, b"Bad Request: x-ms-version header missing",
                          summary={"error": "no x-ms-version header"})
        return _document("goalstate", goal_state_xml(p, _base_url(incoming)))
    if path == "/machine" and incoming.method == "POST":
        if comp == "health":
            return _health(incoming, p)
        if comp == "telemetrydata":
            return Answer(200, summary={"kind": "telemetry",
                                        "events": str(incoming.body.count(b"<Event "))})
        if comp == "roleProperties":
            return Answer(202, summary={"kind": "roleProperties"})
    if path == "/HealthService" and incoming.method == "POST":
        return _health_service(incoming)
    if path == _config_path(p) and incoming.method == "GET" and comp == "config":
        kind = incoming.query.get("type", "")
        documents = {
            "hostingEnvironmentConfig": lambda: hosting_environment_xml(p),
            "sharedConfig": lambda: shared_config_xml(p, guest_ip),
            "extensionsConfig": lambda: extensions_config_xml(p),
            # The full config is the hosting environment's, as agents never read it.
            "fullConfig": lambda: hosting_environment_xml(p),
        }
        if kind in documents:
            return _document(kind, documents[kind]())
        return Answer(400, b"Bad Request: unknown config type")
    if path in ("/", "/machine", _config_path(p)):
        return Answer(400, b"Bad Request")
    return Answer(404, b"Not Found")
