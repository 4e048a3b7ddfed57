"""What Azure hands a new VM on its provisioning CD: ovf-env.xml, and the CD itself.

The document follows the shape Azure writes (the OVF environment namespace as ns0, the
Windows Azure namespace as ns1, every provisioning element in ns1), which both
WALinuxAgent (`azurelinuxagent.common.protocol.ovfenv.OvfEnv`) and cloud-init
(`cloudinit.sources.helpers.azure.OvfEnvXml`) parse. The CD is a UDF bridge disc, as
Azure's is (blkid: TYPE="udf", LABEL="rd_rdfe_stable.<date>"), with ISO 9660 and Rock
Ridge names too, so `mount -t udf,iso9660` (waagent) and cloud-init's search for
TYPE=iso9660 or TYPE=udf both find `ovf-env.xml` under that exact name.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import re
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import escape

import pycdlib

from builder.errors import UsageError

OVF_NS = "http://schemas.dmtf.org/ovf/environment/1"
WA_NS = "http://schemas.microsoft.com/windowsazure"
MEDIA_FILE = "ovf-env.xml"
# Azure's provisioning CDs are labelled rd_rdfe_stable.<yymmdd-hhmm>; cloud-init's
# ds-identify takes a filesystem labelled rd_rdfe_* as a sign of Azure.
LABEL_PREFIX = "rd_rdfe_stable."
DEFAULT_VM_SIZE = "Standard_D2s_v3"

_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
_HOSTNAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,62}[A-Za-z0-9])?$")
_KEY = re.compile(r"^ssh-(rsa|ed25519|dss) [A-Za-z0-9+/=]+( .*)?$")


def _new_id() -> str:
    return str(uuid.uuid4())


@dataclass(frozen=True)
class Provisioning:
    """One VM's provisioning data: what the user asked Azure for, and the ids the
    platform gives the VM. Every id is a fresh UUID unless given."""

    user: str
    hostname: str
    public_key: str  # one OpenSSH public key line: "ssh-ed25519 AAAA... comment"
    disable_password_auth: bool = True
    password: str | None = None
    custom_data: bytes = b""
    container_id: str = field(default_factory=_new_id)
    deployment_id: str = field(default_factory=_new_id)
    vm_id: str = field(default_factory=_new_id)  # also the VM's SMBIOS system UUID
    subscription_id: str = field(default_factory=_new_id)
    resource_group: str = "azbuild-simulate"
    location: str = "eastus"
    vm_size: str = DEFAULT_VM_SIZE

    def __post_init__(self) -> None:
        problems = []
        if not _USER.match(self.user):
            problems.append(f"user name {self.user!r} is not a valid Linux user name "
                            "(lower-case letters, digits, '-' and '_', at most 32)")
        if not _HOSTNAME.match(self.hostname):
            problems.append(f"host name {self.hostname!r} is not a valid host name "
                            "(letters, digits and inner '-', at most 64)")
        if not _KEY.match(self.public_key.strip()):
            problems.append("the public key is not one OpenSSH line starting with ssh-rsa "
                            "or ssh-ed25519 (the only kinds Azure and waagent accept)")
        if problems:
            raise UsageError("cannot simulate provisioning: " + "; ".join(problems),
                             hint="give a valid user name, host name and public key")

    @property
    def role_instance_id(self) -> str:
        """The goal state's InstanceId: `<deployment id>.<VM name>`, as on Azure."""
        return f"{self.deployment_id}.{self.hostname}"

    @property
    def key_path(self) -> str:
        return f"/home/{self.user}/.ssh/authorized_keys"

    @property
    def key_fingerprint(self) -> str:
        """40 upper-case hex digits, shaped like the certificate thumbprint Azure puts
        beside a key. Both agents use the inline <Value>, never this."""
        blob = self.public_key.split()[1].encode()
        return hashlib.sha1(blob, usedforsecurity=False).hexdigest().upper()


def ovf_env_xml(p: Provisioning) -> bytes:
    """The ovf-env.xml document for `p`, UTF-8 encoded."""

    def element(name: str, text: str) -> str:
        return f"<ns1:{name}>{escape(text)}</ns1:{name}>"

    config = [
        element("ConfigurationSetType", "LinuxProvisioningConfiguration"),
        element("HostName", p.hostname),
        element("UserName", p.user),
    ]
    if p.password is not None:
        config.append(element("UserPassword", p.password))
    config += [
        element("DisableSshPasswordAuthentication", str(p.disable_password_auth).lower()),
        "<ns1:SSH><ns1:PublicKeys><ns1:PublicKey>"
        + element("Fingerprint", p.key_fingerprint)
        + element("Path", p.key_path)
        + element("Value", p.public_key.strip())
        + "</ns1:PublicKey></ns1:PublicKeys></ns1:SSH>",
    ]
    if p.custom_data:
        config.append(element("CustomData", base64.b64encode(p.custom_data).decode()))
    text = (
        '<?xml version="1.0" encoding="utf-8"?>\n'
        f'<ns0:Environment xmlns="{OVF_NS}" xmlns:ns0="{OVF_NS}" xmlns:ns1="{WA_NS}" '
        'xmlns:i="http://www.w3.org/2001/XMLSchema-instance">\n'
        "  <ns1:ProvisioningSection>\n"
        "    <ns1:Version>1.0</ns1:Version>\n"
        "    <ns1:LinuxProvisioningConfigurationSet>\n"
        + "".join(f"      {line}\n" for line in config)
        + "    </ns1:LinuxProvisioningConfigurationSet>\n"
        "  </ns1:ProvisioningSection>\n"
        "  <ns1:PlatformSettingsSection>\n"
        "    <ns1:Version>1.0</ns1:Version>\n"
        "    <ns1:PlatformSettings>\n"
        "      <ns1:KmsServerHostname>kms.core.windows.net</ns1:KmsServerHostname>\n"
        "      <ns1:ProvisionGuestAgent>true</ns1:ProvisionGuestAgent>\n"
        "      <ns1:PreprovisionedVm>false</ns1:PreprovisionedVm>\n"
        "    </ns1:PlatformSettings>\n"
        "  </ns1:PlatformSettingsSection>\n"
        "</ns0:Environment>\n"
    )
    return text.encode()


def media_label(now: float | None = None) -> str:
    """The CD's volume label in Azure's style: rd_rdfe_stable.<yymmdd-hhmm> (UTC)."""
    return LABEL_PREFIX + time.strftime("%y%m%d-%H%M", time.gmtime(now))


def write_provisioning_media(path: Path, p: Provisioning) -> None:
    """Write the provisioning CD image to `path` (atomically): ovf-env.xml alone, under
    that name on UDF and on ISO 9660 with Rock Ridge."""
    data = ovf_env_xml(p)
    iso = pycdlib.PyCdlib()
    # No Joliet: its volume identifier holds 16 characters, Azure's label 26.
    iso.new(interchange_level=3, rock_ridge="1.09", udf="2.60", vol_ident=media_label())
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        iso.add_fp(io.BytesIO(data), len(data), "/OVF_ENV.XML;1",
                   rr_name=MEDIA_FILE, udf_path=f"/{MEDIA_FILE}")
        iso.write(str(tmp))
        os.replace(tmp, path)
    finally:
        iso.close()
        tmp.unlink(missing_ok=True)
