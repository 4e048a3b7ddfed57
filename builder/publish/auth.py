"""Which credential reaches a storage container, in the documented order, secrets registered.

1. a SAS in the container URL (`?sv=...&sig=...`);
2. the AZURE_STORAGE_CONNECTION_STRING environment variable;
3. azure-identity's DefaultAzureCredential (environment, managed identity, Azure CLI),
   bounded and watched (builder/publish/reach.py).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import parse_qs, urlsplit, urlunsplit

from builder import redact
from builder.errors import UsageError

if TYPE_CHECKING:
    from builder.publish.reach import Clients

log = logging.getLogger(__name__)

CONNECTION_STRING_ENV = "AZURE_STORAGE_CONNECTION_STRING"
AuthMethod = Literal["sas", "connection-string", "default-credential"]
AUTH_DESCRIPTIONS: dict[AuthMethod, str] = {
    "sas": "the SAS in the container URL",
    "connection-string": f"the connection string in {CONNECTION_STRING_ENV}",
    "default-credential": "azure-identity's DefaultAzureCredential",
}


@dataclass(frozen=True)
class ContainerUrl:
    """A container URL taken apart: what may be shown, and what may not (the query)."""

    public: str  # scheme://host/path, no query: safe for logs and manifests
    account_url: str  # scheme://host[/account] for an emulator's path-style URL
    container: str
    query: str

    @property
    def has_sas(self) -> bool:
        return "sig" in parse_qs(self.query)


def parse_container_url(url: str) -> ContainerUrl:
    """Split and check a container URL; the SAS (if any) is registered as a secret first."""
    parts = urlsplit(url)
    if parts.query:
        register_sas(parts.query)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UsageError(
            "--container-url must be an http(s) URL of a blob container, found "
            f"{redact.redact(url)!r}",
            hint="e.g. https://ACCOUNT.blob.core.windows.net/CONTAINER[?SAS]",
        )
    segments = [s for s in parts.path.split("/") if s]
    if not segments:
        raise UsageError(
            f"the container URL {urlunsplit(parts._replace(query=''))} names no container",
            hint="append the container's name: https://ACCOUNT.blob.core.windows.net/CONTAINER",
        )
    public = urlunsplit((parts.scheme, parts.netloc, "/" + "/".join(segments), "", ""))
    account_path = "/".join(segments[:-1])
    account_url = urlunsplit((parts.scheme, parts.netloc, "/" + account_path if account_path
                              else "", "", ""))
    return ContainerUrl(public, account_url, segments[-1], parts.query)


def register_sas(query: str) -> None:
    """A SAS query string and its signature never appear in any output."""
    redact.register(query)
    for value in parse_qs(query).get("sig", []):
        redact.register(value)


def register_connection_string(text: str) -> None:
    redact.register(text)
    for part in text.split(";"):
        key, _, value = part.partition("=")
        if key.strip().lower() in ("accountkey", "sharedaccesssignature"):
            redact.register(value)
            redact.register(part.partition("=")[2].strip())


IDENTITY_SECRET_ENVS = ("AZURE_CLIENT_SECRET", "AZURE_CLIENT_CERTIFICATE_PASSWORD",
                        "AZURE_PASSWORD")


def register_identity_secrets(env: Mapping[str, str]) -> None:
    """The secrets DefaultAzureCredential may read from the environment stay out of output."""
    for name in IDENTITY_SECRET_ENVS:
        if env.get(name):
            redact.register(env[name])


def choose_auth(url: ContainerUrl, env: Mapping[str, str]) -> AuthMethod:
    """The first method of the documented order that applies."""
    if url.has_sas:
        return "sas"
    if env.get(CONNECTION_STRING_ENV):
        return "connection-string"
    return "default-credential"


def open_container(url: ContainerUrl, env: Mapping[str, str], clients: Clients,
                   **client_options: Any) -> tuple[Any, AuthMethod]:
    """A ContainerClient for `url` and the method that authenticates it, with the bounds
    of builder/publish/reach.py."""
    from azure.storage.blob import BlobServiceClient, ContainerClient

    client_options = {**clients.storage_options(), **client_options}
    method = choose_auth(url, env)
    log.info("storage container %s, authenticated with %s", url.public,
             AUTH_DESCRIPTIONS[method])
    if method == "sas":
        return ContainerClient.from_container_url(
            f"{url.public}?{url.query}", **client_options), method
    if method == "connection-string":
        text = env[CONNECTION_STRING_ENV]
        register_connection_string(text)
        try:
            service = BlobServiceClient.from_connection_string(text, **client_options)
        except ValueError as exc:
            raise UsageError(
                f"{CONNECTION_STRING_ENV} is not a valid connection string: "
                f"{redact.redact(str(exc))}",
                hint="copy it from the storage account's 'Access keys' page",
            ) from None
        return service.get_container_client(url.container), method
    if not url.public.startswith("https://"):
        raise UsageError(
            f"no SAS in the URL and no {CONNECTION_STRING_ENV}, and DefaultAzureCredential's "
            f"tokens are only sent over https, not to {url.public}",
            hint="add a SAS to the URL, set the connection string, or use an https URL",
        )
    register_identity_secrets(env)
    return ContainerClient(url.account_url, url.container, credential=clients.credential(),
                           **client_options), method
