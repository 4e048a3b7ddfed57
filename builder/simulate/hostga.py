"""The HostGAPlugin's answers (168.63.129.16:32526): its API versions, its health, and
the status blob waagent uploads through it. vmSettings answers 404, as a host without
Fast Track does, so waagent takes its extensions goal state from the WireServer."""

from __future__ import annotations

import base64
import binascii
import json

from builder.simulate.exchange import Answer, Incoming
from builder.simulate.ovf_env import Provisioning

API_VERSIONS = ["2015-09-01", "2016-02-01", "2016-07-01", "2017-01-01", "2017-03-01"]
JSON = "application/json; charset=utf-8"


def status_summary(body: bytes) -> dict[str, str]:
    """What an uploaded status blob says: the agent's own status and version, and how
    many extension handlers it reports. ValueError if the body is not a status upload."""
    try:
        upload = json.loads(body)
        content = json.loads(base64.b64decode(upload.get("content", ""), validate=True) or b"{}")
    except (ValueError, binascii.Error) as exc:
        raise ValueError(f"not a status upload: {exc}") from None
    if not isinstance(upload, dict) or not isinstance(upload.get("requestUri"), str):
        raise ValueError("not a status upload: no requestUri")
    summary = {"kind": "status"}
    aggregate = content.get("aggregateStatus", {}) if isinstance(content, dict) else {}
    agent = aggregate.get("guestAgentStatus", {})
    if isinstance(agent, dict):
        if agent.get("status"):
            summary["agent_status"] = str(agent["status"])
        if agent.get("version"):
            summary["agent_version"] = str(agent["version"])
    handlers = aggregate.get("handlerAggregateStatus")
    if isinstance(handlers, list):
        summary["extension_handlers"] = str(len(handlers))
    return summary


def hostga_answer(incoming: Incoming, p: Provisioning) -> Answer:
    path, method = incoming.path, incoming.method
    if path == "/versions" and method == "GET":
        return Answer(200, json.dumps(API_VERSIONS).encode(), JSON, {"document": "versions"})
    if path == "/health" and method == "GET":
        return Answer(200, summary={"kind": "health-probe"})
    if path == "/vmSettings" and method == "GET":
        return Answer(404, b"vmSettings are not available (no Fast Track)",
                      summary={"document": "vmSettings"})
    if path == "/extensionArtifact" and method == "GET":
        return Answer(404, b"no extension artifacts", summary={
            "artifact": incoming.headers.get("x-ms-artifact-location", "")})
    if path in ("/status", "/vmAgentLog") and method == "PUT":
        container = incoming.headers.get("x-ms-containerid")
        if container != p.container_id:
            return Answer(400, b"InvalidContainerConfiguration",
                          summary={"error": f"x-ms-containerid is {container!r}"})
        if path == "/vmAgentLog":
            return Answer(200, summary={"kind": "agent-log", "bytes": str(len(incoming.body))})
        try:
            return Answer(200, summary=status_summary(incoming.body))
        except ValueError as exc:
            return Answer(400, b"Bad Request", summary={"kind": "status", "error": str(exc)})
    return Answer(404, b"Not Found")
