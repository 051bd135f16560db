"""Test-driver host files for tests: copies of the bundled simulated hosts in a test folder,
optionally under another hypervisor identity, and the URI policy that lets them be opened."""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any

from enclaves.hosts import bundled_host_path

_SYSTEM_UUID = re.compile(r"(<hardware>.*?<uuid>)([0-9a-f-]+)(</uuid>)", re.DOTALL)


def host_copy(
    folder: Path, name: str, *, as_name: str | None = None, host_uuid: str | None = None
) -> Path:
    """Copy bundled host ``name`` to ``folder/<as_name or name>.xml``; with ``host_uuid`` the
    copy is another machine (its ``computer`` device reports that SMBIOS UUID)."""
    text = bundled_host_path(name).read_text()
    if host_uuid is not None:
        text, count = _SYSTEM_UUID.subn(rf"\g<1>{host_uuid}\g<3>", text)
        assert count == 1, "the bundled host file has one computer device with a UUID"
    path = folder / f"{as_name or name}.xml"
    path.write_text(text)
    return path


def other_machine(folder: Path, name: str, as_name: str) -> Path:
    """A copy of bundled host ``name`` that is another machine (a fresh host UUID)."""
    return host_copy(folder, name, as_name=as_name, host_uuid=str(uuid.uuid4()))


def uri_policy_for(folder: Path) -> Any:
    """Test-driver files under ``folder`` (and the bundled ones), and qemu+tls (a UriPolicy)."""
    from enclaves.hosts import bundled_hosts_dir
    from enclaves.uri import UriPolicy

    return UriPolicy(
        transports=frozenset({"qemu+tls", "test"}),
        test_dirs=(str(bundled_hosts_dir()), str(folder)),
    )
