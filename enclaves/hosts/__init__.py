"""Bundled simulated GPU hosts for libvirt's test driver.

Owns the ``<node>`` description files shipped next to this module and the URIs that open
them (``test:///ABSOLUTE/PATH.xml``). Each file declares the host's ``<cpu>`` and ``<memory>``
(read into virNodeGetInfo) and its PCI node devices (``<device>`` with ``<capability
type='pci'>``, ``<iommuGroup>`` and ``<numa>``) standing for NVIDIA H100 SXM5 GPUs. They back
``sovereign dev`` and the tests; nothing in them is real hardware. This module only locates
the files: it never opens a connection and never imports libvirt.
"""

from __future__ import annotations

import pathlib
import urllib.parse
from importlib import resources

#: Names of the bundled host descriptions, in the order the dev stack registers them.
BUNDLED_HOSTS: tuple[str, ...] = ("secret-h100x8", "civilian-h100x4", "civilian-pt-1")


def bundled_hosts_dir() -> pathlib.Path:
    """Return the directory holding the bundled host descriptions (resolved).

    :raises FileNotFoundError: if the package data is not on a real file system.
    """
    folder = resources.files(__name__)
    if not isinstance(folder, pathlib.Path) or not folder.is_dir():
        raise FileNotFoundError(f"bundled host descriptions are not available as files ({folder})")
    return folder.resolve()


def bundled_host_path(name: str) -> pathlib.Path:
    """Return the absolute path of the bundled host description called ``name``.

    :raises ValueError: if ``name`` is not one of :data:`BUNDLED_HOSTS`.
    :raises FileNotFoundError: if the package data is missing or not on a real file system.
    """
    if name not in BUNDLED_HOSTS:
        known = ", ".join(BUNDLED_HOSTS)
        raise ValueError(f"unknown bundled host {name!r}; known hosts: {known}")
    resource = resources.files(__name__).joinpath(f"{name}.xml")
    # The test driver opens the file by path, so a resource inside a zip archive (which
    # importlib.resources can read but libvirt cannot) is of no use: refuse it plainly.
    if not isinstance(resource, pathlib.Path) or not resource.is_file():
        raise FileNotFoundError(
            f"bundled host description {name}.xml is not available as a file ({resource})"
        )
    return resource.resolve()


def bundled_host_uri(name: str) -> str:
    """Return the ``test:///...`` libvirt URI that opens the bundled host called ``name``.

    :raises ValueError: if ``name`` is not one of :data:`BUNDLED_HOSTS`.
    :raises FileNotFoundError: if the package data is missing or not on a real file system.
    """
    path = bundled_host_path(name).as_posix()
    # libvirt parses the URI with libxml2, which rejects a raw space and would read '#' as a
    # fragment; percent-encoding the path keeps checkouts under such directories working.
    return "test://" + urllib.parse.quote(path, safe="/")
