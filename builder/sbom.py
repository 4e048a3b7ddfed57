"""An SPDX 2.3 JSON SBOM of an image, from its inventory (builder/inventory.py).

One SPDX package for the image (an operating system), described by the document, and
one per installed package, each CONTAINed by the image, with a package-URL
(https://github.com/package-url/purl-spec) naming it in its package manager's terms.
Licences are not read from the image: every licence field says NOASSERTION.
"""

from __future__ import annotations

import json
import re
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from builder import __version__
from builder.image.disk import atomic_output
from builder.inventory import Inventory, Package

SBOM_SUFFIX = "spdx.json"
NAMESPACE_BASE = "https://spdx.org/spdxdocs/azbuild"
NOASSERTION = "NOASSERTION"


def sbom_document(inventory: Inventory, name: str, created: datetime,
                  namespace_id: str | None = None) -> dict[str, Any]:
    """The SPDX 2.3 document of image `name`; `namespace_id` makes the document's
    namespace unique (a random UUID when None)."""
    image_id = "SPDXRef-Image"
    distro = inventory.os_release.get("ID", "")
    packages: list[dict[str, Any]] = [{
        "SPDXID": image_id,
        "name": name,
        "versionInfo": inventory.os_release.get("PRETTY_NAME", "unknown"),
        "downloadLocation": NOASSERTION,
        "filesAnalyzed": False,
        "primaryPackagePurpose": "OPERATING-SYSTEM",
        "licenseConcluded": NOASSERTION,
        "licenseDeclared": NOASSERTION,
        "copyrightText": NOASSERTION,
    }]
    relationships: list[dict[str, str]] = [{
        "spdxElementId": "SPDXRef-DOCUMENT", "relationshipType": "DESCRIBES",
        "relatedSpdxElement": image_id,
    }]
    for number, package in enumerate(inventory.packages, start=1):
        spdx_id = f"SPDXRef-Package-{number}-{_id_part(package.name)}"
        entry: dict[str, Any] = {
            "SPDXID": spdx_id,
            "name": package.name,
            "versionInfo": package.version,
            "downloadLocation": NOASSERTION,
            "filesAnalyzed": False,
            "licenseConcluded": NOASSERTION,
            "licenseDeclared": NOASSERTION,
            "copyrightText": NOASSERTION,
            "sourceInfo": f"built from source package {package.source}",
        }
        purl = package_url(package, inventory.package_format, distro,
                           inventory.os_release.get("VERSION_ID", ""))
        if purl is not None:
            entry["externalRefs"] = [{"referenceCategory": "PACKAGE-MANAGER",
                                      "referenceType": "purl", "referenceLocator": purl}]
        packages.append(entry)
        relationships.append({"spdxElementId": image_id, "relationshipType": "CONTAINS",
                              "relatedSpdxElement": spdx_id})
    return {
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": f"{name} image",
        "documentNamespace": f"{NAMESPACE_BASE}/{quote(name, safe='')}-"
                             f"{namespace_id or uuid.uuid4()}",
        "creationInfo": {
            "created": created.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "creators": [f"Tool: azbuild-{__version__}"],
        },
        "packages": packages,
        "relationships": relationships,
    }


def package_url(package: Package, package_format: str, distro: str,
                distro_version: str) -> str | None:
    """`pkg:deb/debian/bash@5.2.15-2%2Bb7?arch=amd64&distro=debian-12` (rpm likewise);
    None for a package format purl has no type for."""
    if package_format not in ("deb", "rpm") or not distro:
        return None
    qualifiers = [f"arch={quote(package.architecture, safe='')}"] if package.architecture \
        else []
    if distro_version:
        qualifiers.append(f"distro={quote(f'{distro}-{distro_version}', safe='')}")
    if package.source != package.name:
        qualifiers.append(f"upstream={quote(package.source, safe='')}")
    return (f"pkg:{package_format}/{quote(distro.lower(), safe='')}/"
            f"{quote(package.name, safe='')}@{quote(package.version, safe='')}"
            + ("?" + "&".join(sorted(qualifiers)) if qualifiers else ""))


def _id_part(name: str) -> str:
    """SPDX ids allow letters, digits, '.' and '-' only."""
    return re.sub(r"[^A-Za-z0-9.-]", "-", name)


def sbom_path(output_dir: Path, name: str) -> Path:
    return output_dir / f"{name}.{SBOM_SUFFIX}"


def write_sbom(target: Path, document: dict[str, Any], *, force: bool) -> None:
    """Write the SBOM atomically (a temporary name, renamed when complete)."""
    with atomic_output(target, force=force) as tmp:
        tmp.write_text(json.dumps(document, indent=2) + "\n")
