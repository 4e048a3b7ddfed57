"""Small labelled ISO 9660 volumes: cloud-init seeds (CIDATA), kickstart/AutoYaST (OEMDRV)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pycdlib


def write_volume(path: Path, label: str, files: dict[str, bytes]) -> None:
    """Write an ISO 9660 volume with Joliet and Rock Ridge names, so that every
    reader (cloud-init, Anaconda, AutoYaST) sees the files under their real names."""
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident=label)
    try:
        for index, (name, data) in enumerate(sorted(files.items())):
            iso9660_name = f"/F{index:06d}.;1"
            iso.add_fp(
                io.BytesIO(data), len(data), iso9660_name,
                rr_name=name, joliet_path=f"/{name}",
            )
        tmp = path.with_name(path.name + ".tmp")
        iso.write(str(tmp))
        os.replace(tmp, path)
    finally:
        iso.close()
