"""The simulated Azure fabric and provisioning CD, judged by the agents' own code.

WALinuxAgent's and cloud-init's modules come from Debian's packages (tests/agents.py)
and run in a subprocess (tests/agent_probe.py): their HTTP clients talk to a real Fabric
on loopback ports, and their parsers read its documents. Each kind of document is also
shown malformed, to show that the same parsers reject what is wrong.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import socket
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pycdlib
import pytest
from agents import AgentsUnavailable, agent_modules, probe

from builder.errors import AzbuildError, UsageError
from builder.simulate.fabric import Fabric
from builder.simulate.ovf_env import Provisioning, ovf_env_xml, write_provisioning_media
from builder.vm.keys import KeyPair

GUEST_MAC = "52:54:00:12:34:56"
CUSTOM_DATA = b"#cloud-config\nruncmd: [touch /var/tmp/custom-data-ran]\n"


@pytest.fixture(scope="module")
def modules() -> Path:
    try:
        return agent_modules()
    except AgentsUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture
def provisioning() -> Provisioning:
    return Provisioning(user="azureuser", hostname="simvm-01",
                        public_key=KeyPair.generate("sim@azbuild").public_line,
                        custom_data=CUSTOM_DATA)


@pytest.fixture
def fabric(provisioning: Provisioning, tmp_path: Path) -> Iterator[Fabric]:
    loopback = ("127.0.0.1", 0)
    with Fabric(provisioning, tmp_path / "fabric.jsonl", guest_ip="10.1.0.4",
                guest_mac=GUEST_MAC, wire=loopback, hostga=loopback, imds=loopback) as f:
        yield f


def address(fabric: Fabric, server: str) -> str:
    host, port = fabric.addresses[server]
    return f"{host}:{port}"


def fetch(url: str, headers: dict[str, str] | None = None,
          data: bytes | None = None, method: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def goal_state(fabric: Fabric) -> str:
    status, body = fetch(f"http://{address(fabric, 'wireserver')}/machine/?comp=goalstate",
                         {"x-ms-version": "2012-11-30"})
    assert status == 200
    return body.decode()


def without(text: str, element: str) -> str:
    """`text` without the first <element>...</element> (namespace prefix allowed)."""
    cut = re.sub(rf"<(\w+:)?{element}>.*?</(\w+:)?{element}>", "", text, count=1, flags=re.S)
    assert cut != text, element
    return cut


def instance_document(fabric: Fabric) -> dict[str, Any]:
    status, body = fetch(f"http://{address(fabric, 'imds')}/metadata/instance"
                         "?api-version=2021-08-01", {"Metadata": "true"})
    assert status == 200
    document: dict[str, Any] = json.loads(body)
    return document


# -- ovf-env.xml and the provisioning CD ---------------------------------------------


def test_both_agents_read_the_ovf_env_from_the_provisioning_cd(
        modules: Path, tmp_path: Path) -> None:
    p = Provisioning(user="admin_1", hostname="sim-host", password="S3cret&<pw>",
                     disable_password_auth=False, custom_data=CUSTOM_DATA,
                     public_key=KeyPair.generate().public_line)
    cd = tmp_path / "provisioning.iso"
    write_provisioning_media(cd, p)
    mounted = tmp_path / "cd"  # what the agents see where they mount the CD
    mounted.mkdir()
    iso = pycdlib.PyCdlib()
    iso.open(str(cd))
    try:
        names = [c.file_identifier().decode() for c in iso.list_children(udf_path="/")
                 if c is not None and not c.is_dot() and not c.is_dotdot()]
        assert names == ["ovf-env.xml"]
        iso.get_file_from_iso(str(mounted / "ovf-env.xml"), udf_path="/ovf-env.xml")
    finally:
        iso.close()

    read = probe(modules, "ovf", str(mounted))

    waagent = read["waagent"]
    assert (waagent["username"], waagent["hostname"]) == ("admin_1", "sim-host")
    assert waagent["password"] == "S3cret&<pw>"
    assert waagent["disable_ssh_password_auth"] is False
    assert base64.b64decode(waagent["customdata"]) == CUSTOM_DATA
    assert waagent["ssh_pubkeys"] == [["/home/admin_1/.ssh/authorized_keys",
                                       p.key_fingerprint, p.public_key]]
    assert waagent["provision_guest_agent"] == "true"
    cloud_init = read["cloud-init"]
    assert cloud_init["metadata"] == {"local-hostname": "sim-host"}
    assert cloud_init["userdata"] == CUSTOM_DATA.decode()
    assert cloud_init["cfg"]["system_info"]["default_user"]["name"] == "admin_1"
    assert cloud_init["cfg"]["ssh_pwauth"] is True
    assert [k["value"] for k in cloud_init["cfg"]["_pubkeys"]] == [p.public_key]
    assert cloud_init["cfg"]["PreprovisionedVm"] is False
    assert cloud_init["files"] == ["ovf-env.xml"]


def test_both_agents_reject_an_ovf_env_without_a_user_name(
        modules: Path, provisioning: Provisioning, tmp_path: Path) -> None:
    broken = tmp_path / "ovf-env.xml"
    broken.write_text(without(ovf_env_xml(provisioning).decode(), "UserName"))
    read = probe(modules, "ovf", str(broken))
    assert read["waagent"] == {
        "error": "ProtocolError",
        "message": "[ProtocolError] Failed to validate OVF: UserName not found"}
    assert read["cloud-init"]["error"] == "BrokenAzureDataSource"
    assert "UserName" in read["cloud-init"]["message"]


def test_the_provisioning_cd_is_a_udf_disc_labelled_as_azure_labels_it(
        provisioning: Provisioning, tmp_path: Path) -> None:
    cd = tmp_path / "provisioning.iso"
    write_provisioning_media(cd, provisioning)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["provisioning.iso"]  # no tmp left
    iso = pycdlib.PyCdlib()
    iso.open(str(cd))
    try:
        for where in ({"udf_path": "/ovf-env.xml"}, {"rr_path": "/ovf-env.xml"}):
            copy = tmp_path / "copy.xml"
            iso.get_file_from_iso(str(copy), **where)
            assert copy.read_bytes() == ovf_env_xml(provisioning)
    finally:
        iso.close()
    if shutil.which("blkid") is None:
        pytest.skip("blkid is not installed")
    probed = subprocess.run(["blkid", "-o", "export", str(cd)], capture_output=True,
                            text=True, check=True).stdout
    fields = dict(line.split("=", 1) for line in probed.splitlines() if "=" in line)
    # cloud-init searches TYPE=udf and TYPE=iso9660; ds-identify knows rd_rdfe_* as Azure.
    assert fields["TYPE"] == "udf"
    assert re.fullmatch(r"rd_rdfe_stable\.\d{6}-\d{4}", fields["LABEL"])


def test_the_provisioning_cd_mounts_as_waagent_mounts_it(
        provisioning: Provisioning, tmp_path: Path) -> None:
    cd = tmp_path / "provisioning.iso"
    write_provisioning_media(cd, provisioning)
    target = tmp_path / "mnt"
    target.mkdir()
    mount = subprocess.run(["mount", "-o", "loop,ro", "-t", "udf,iso9660", str(cd),
                            str(target)], capture_output=True, text=True, check=False)
    if mount.returncode != 0:
        pytest.skip(f"cannot mount here: {mount.stderr.strip()}")
    try:
        assert sorted(p.name for p in target.iterdir()) == ["ovf-env.xml"]
        assert (target / "ovf-env.xml").read_bytes() == ovf_env_xml(provisioning)
    finally:
        subprocess.run(["umount", str(target)], check=True)


# -- WireServer and HostGAPlugin, through the agents' own clients --------------------


def test_waagent_fetches_the_goal_state_chain_reports_health_and_uploads_status(
        modules: Path, fabric: Fabric, provisioning: Provisioning, tmp_path: Path) -> None:
    lib = tmp_path / "waagent-lib"
    lib.mkdir()
    seen = probe(modules, "waagent-wire", address(fabric, "wireserver"),
                 str(fabric.addresses["hostga"][1]), address(fabric, "imds"), str(lib))

    # Every call the agent makes succeeded (an error would be {"error": ...}).
    for step in ("versions", "update", "not_ready", "ready", "status", "telemetry"):
        assert seen[step] is None, (step, seen[step])
    assert seen["incarnation"] == "1"
    assert seen["container_id"] == provisioning.container_id
    assert seen["role_instance_id"] == provisioning.role_instance_id
    assert (seen["vm_name"], seen["role_name"]) == ("simvm-01", "simvm-01")
    assert (seen["extensions"], seen["agent_families"], seen["on_hold"]) == (0, 0, False)
    assert seen["status_upload_blob"].startswith("https://")
    assert seen["imds_valid"] == [True, ""]
    assert seen["compute"]["vmId"] == provisioning.vm_id
    assert seen["compute"]["vmSize"] == "Standard_D2s_v3"

    [agent] = fabric.agents()
    assert agent.agent == "WALinuxAgent/2.7.3.0"
    assert agent.goal_state_chain and agent.imds
    assert agent.health == ("NotReady/Provisioning", "Ready")
    ready = fabric.ready_at()
    assert ready is not None and ready >= fabric.started_at
    uploads = [e for e in fabric.events() if e.target == "/status"]
    assert [(u.status, u.summary["agent_status"]) for u in uploads] == [(200, "Ready")]
    assert [e.status for e in fabric.events() if e.target == "/vmSettings"] == [404]
    assert [e.summary for e in fabric.events() if "telemetrydata" in e.target] == [
        {"kind": "telemetry", "events": "1"}]


def test_cloud_init_fetches_the_goal_state_and_reports_ready_then_failure(
        modules: Path, fabric: Fabric, provisioning: Provisioning) -> None:
    seen = probe(modules, "cloud-init-wire", address(fabric, "wireserver"))

    assert seen["goal_state"] == {"incarnation": "1",
                                  "container_id": provisioning.container_id,
                                  "instance_id": provisioning.role_instance_id}
    assert seen["ready"] is None and seen["failure"] is None
    reports = fabric.health_reports()
    assert [(r.state, r.substatus, r.description) for r in reports] == [
        ("Ready", None, None), ("NotReady", "ProvisioningFailed", "simulated failure")]
    assert {r.user_agent for r in reports} == {"Cloud-Init/22.4.2"}
    [agent] = fabric.agents()
    # cloud-init reads the goal state only: the rest of the chain is waagent's.
    assert agent.documents == ("goalstate",) and not agent.goal_state_chain


def test_both_agents_parse_the_goal_state_and_reject_one_without_its_ids(
        modules: Path, fabric: Fabric, provisioning: Provisioning, tmp_path: Path) -> None:
    document = tmp_path / "goalstate.xml"
    document.write_text(goal_state(fabric))
    read = probe(modules, "goal-state", str(document))
    assert read["waagent"]["container_id"] == provisioning.container_id
    assert read["waagent"]["role_config_name"].endswith(".xml")
    assert read["cloud-init"] == {"incarnation": "1", "container_id": provisioning.container_id,
                                  "instance_id": provisioning.role_instance_id}

    document.write_text(without(goal_state(fabric), "ContainerId"))
    read = probe(modules, "goal-state", str(document))
    assert read["cloud-init"] == {"error": "InvalidGoalStateXMLException",
                                  "message": "Missing container_id in GoalState XML"}
    document.write_text(without(goal_state(fabric), "RoleInstance"))
    read = probe(modules, "goal-state", str(document))
    assert read["waagent"]["error"] == "IncompleteGoalStateError"
    assert read["cloud-init"]["error"] == "InvalidGoalStateXMLException"


def test_waagent_parses_the_extensions_config_and_rejects_a_broken_one(
        modules: Path, fabric: Fabric, tmp_path: Path) -> None:
    url = re.search(r"<ExtensionsConfig>(.*?)</ExtensionsConfig>", goal_state(fabric))
    assert url is not None
    status, body = fetch(url.group(1).replace("&amp;", "&"), {"x-ms-version": "2012-11-30"})
    assert status == 200
    document = tmp_path / "extensions.xml"
    document.write_bytes(body)
    read = probe(modules, "extensions-config", str(document))["waagent"]
    assert (read["extensions"], read["agent_families"]) == (0, 0)
    assert read["status_upload_blob_type"] == "BlockBlob"

    document.write_bytes(body.replace(b"</Extensions>", b""))
    read = probe(modules, "extensions-config", str(document))["waagent"]
    # It raises ExtensionsConfigError; on Python 3.10 and later, waagent 2.7.3's own
    # format_exception (traceback's `etype` is gone) fails first, with a TypeError.
    assert read["error"] in ("ExtensionsConfigError", "TypeError"), read


# -- IMDS ----------------------------------------------------------------------------


def test_cloud_init_reads_the_instance_metadata_as_the_ovf_env_says(
        modules: Path, fabric: Fabric, provisioning: Provisioning) -> None:
    seen = probe(modules, "cloud-init-imds", address(fabric, "imds"))
    assert (seen["username"], seen["hostname"]) == ("azureuser", "simvm-01")
    assert seen["disable_password"] is True
    assert seen["keys"] == [provisioning.public_key]
    eth0 = seen["network"]["ethernets"]["eth0"]
    assert eth0["match"]["macaddress"] == GUEST_MAC and eth0["dhcp4"] is True
    assert seen["document"]["extended"]["compute"]["ppsType"] == "None"
    assert [e.target for e in fabric.events()] == [
        "/metadata/instance?api-version=2021-08-01&extended=true"]


def test_both_agents_reject_instance_metadata_without_a_mac_or_with_a_bad_key(
        modules: Path, fabric: Fabric, tmp_path: Path) -> None:
    document = instance_document(fabric)
    del document["network"]["interface"][0]["macAddress"]
    document["compute"]["publicKeys"][0]["keyData"] = "not an OpenSSH key"
    path = tmp_path / "instance.json"
    path.write_text(json.dumps(document))
    read = probe(modules, "imds-document", str(path))
    assert read["waagent_valid"] == [False, "Missing field: [macAddress]"]
    assert read["cloud-init"]["network"]["error"] == "KeyError"
    assert read["cloud-init"]["keys"]["error"] == "ValueError"


# -- the fabric's own rules, as Azure's ----------------------------------------------


def test_imds_answers_only_what_imds_answers(fabric: Fabric, provisioning: Provisioning) -> None:
    base = f"http://{address(fabric, 'imds')}/metadata"
    status, body = fetch(f"{base}/instance?api-version=2021-08-01")
    assert status == 400 and "metadata header" in json.loads(body)["error"]
    status, body = fetch(f"{base}/instance", {"Metadata": "true"})
    assert status == 400 and json.loads(body)["newest-versions"]
    status, _ = fetch(f"{base}/instance?api-version=2099-01-01", {"Metadata": "true"})
    assert status == 400
    status, _ = fetch(f"{base}/instance?api-version=2021-08-01",
                      {"Metadata": "true", "X-Forwarded-For": "10.0.0.9"})
    assert status == 400
    status, body = fetch(f"{base}/instance/compute/vmId?api-version=2021-08-01&format=text",
                         {"Metadata": "true"})
    assert (status, body.decode()) == (200, provisioning.vm_id)
    status, body = fetch(f"{base}/instance/network/interface/0/macAddress"
                         "?api-version=2021-08-01", {"Metadata": "true"})
    assert (status, json.loads(body)) == (200, "525400123456")
    status, _ = fetch(f"{base}/reprovisiondata?api-version=2019-06-01", {"Metadata": "true"})
    assert status == 404
    assert [e.status for e in fabric.events()] == [400, 400, 400, 400, 200, 200, 404]


def test_the_wireserver_refuses_what_azure_refuses(
        fabric: Fabric, provisioning: Provisioning) -> None:
    wire = f"http://{address(fabric, 'wireserver')}"
    assert fetch(f"{wire}/machine/?comp=goalstate")[0] == 400  # no x-ms-version
    assert fetch(f"{wire}/nothing/here")[0] == 404
    assert fetch(f"{wire}/machine/?comp=nonsense", {"x-ms-version": "2012-11-30"})[0] == 400
    health = ("<Health><GoalStateIncarnation>1</GoalStateIncarnation><Container>"
              "<ContainerId>{}</ContainerId><RoleInstanceList><Role><InstanceId>{}</InstanceId>"
              "<Health><State>Ready</State></Health></Role></RoleInstanceList></Container>"
              "</Health>")
    other_vm = health.format("00000000-0000-0000-0000-000000000000",
                             provisioning.role_instance_id).encode()
    assert fetch(f"{wire}/machine?comp=health", data=other_vm)[0] == 400
    assert fetch(f"{wire}/machine?comp=health", data=b"<Health><oops")[0] == 400
    assert fabric.health_reports() == [] and fabric.ready_at() is None
    mine = health.format(provisioning.container_id, provisioning.role_instance_id).encode()
    assert fetch(f"{wire}/machine?comp=health", data=mine)[0] == 200
    assert [r.state for r in fabric.health_reports()] == ["Ready"]
    hostga = f"http://{address(fabric, 'hostga')}"
    assert fetch(f"{hostga}/vmSettings")[0] == 404
    put = {"x-ms-containerid": "another-container", "Content-Type": "application/json"}
    assert fetch(f"{hostga}/status", put, b"{}", "PUT")[0] == 400


def test_every_request_is_a_json_line_written_at_once(fabric: Fabric) -> None:
    fetch(f"http://{address(fabric, 'wireserver')}/?comp=versions",
          {"User-Agent": "WALinuxAgent/2.7.3.0", "x-ms-agent-name": "WALinuxAgent"})
    fetch(f"http://{address(fabric, 'imds')}/metadata/instance?api-version=2021-08-01")
    lines = [json.loads(line) for line in fabric.log_path.read_text().splitlines()]
    assert [(line["server"], line["method"], line["path"], line["status"]) for line in lines] == [
        ("wireserver", "GET", "/?comp=versions", 200),
        ("imds", "GET", "/metadata/instance?api-version=2021-08-01", 400)]
    first = lines[0]
    assert first["user_agent"] == "WALinuxAgent/2.7.3.0"
    assert first["headers"] == {"x-ms-agent-name": "WALinuxAgent"}
    assert first["summary"] == {"document": "versions"}
    assert set(first) == {"time", "elapsed", "server", "method", "path", "status",
                          "user_agent", "headers", "summary"}


def test_wait_sees_ready_and_logs_progress_while_it_waits(
        fabric: Fabric, provisioning: Provisioning, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="builder.simulate.fabric")
    assert not fabric.wait(lambda: fabric.ready_at() is not None, 0.5, progress_every=0.2,
                           what="Ready")
    assert "waiting for Ready" in caplog.text and "no request yet" in caplog.text
    report = ("<Health><GoalStateIncarnation>1</GoalStateIncarnation><Container>"
              f"<ContainerId>{provisioning.container_id}</ContainerId><RoleInstanceList><Role>"
              f"<InstanceId>{provisioning.role_instance_id}</InstanceId><Health>"
              "<State>Ready</State></Health></Role></RoleInstanceList></Container></Health>")
    poster = threading.Timer(0.3, fetch, (f"http://{address(fabric, 'wireserver')}"
                                          "/machine?comp=health",), {"data": report.encode()})
    poster.start()
    assert fabric.wait(lambda: fabric.ready_at() is not None, 10, what="Ready")
    poster.join()


def test_a_taken_port_is_a_clear_error_and_every_socket_is_closed_on_the_way_out(
        provisioning: Provisioning, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        fabric = Fabric(provisioning, tmp_path / "log.jsonl", guest_ip="10.1.0.4",
                        guest_mac=GUEST_MAC, wire=("127.0.0.1", 0), hostga=("127.0.0.1", port),
                        imds=("127.0.0.1", 0))
        with pytest.raises(AzbuildError, match=f"HostGAPlugin on 127.0.0.1:{port}: the port "
                                               "is taken"):
            fabric.__enter__()
        wire_port = None
        with pytest.raises(RuntimeError, match="the test's own failure"), Fabric(
                provisioning, tmp_path / "log2.jsonl", guest_ip="10.1.0.4", guest_mac=GUEST_MAC,
                wire=("127.0.0.1", 0), hostga=("127.0.0.1", 0), imds=("127.0.0.1", 0)) as f:
            wire_port = f.addresses["wireserver"][1]
            raise RuntimeError("the test's own failure")
    with socket.socket() as again:  # free again: the fabric closed it
        again.bind(("127.0.0.1", wire_port))
    with pytest.raises(AzbuildError, match="not an address of this network namespace"):
        Fabric(provisioning, tmp_path / "log3.jsonl", guest_ip="10.1.0.4", guest_mac=GUEST_MAC,
               wire=("192.0.2.1", 0)).__enter__()


def test_provisioning_refuses_what_azure_refuses() -> None:
    key = KeyPair.generate().public_line
    for user, hostname, public_key in (("Root User", "vm", key), ("azureuser", "-bad", key),
                                       ("azureuser", "vm", "ecdsa-sha2-nistp256 AAAA")):
        with pytest.raises(UsageError, match="cannot simulate provisioning"):
            Provisioning(user=user, hostname=hostname, public_key=public_key)
