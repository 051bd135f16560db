"""enclaves.inventory against libvirt's real test driver over the bundled hosts.

Needs libvirt-python (the ``libvirt`` marker); without it the import fails the run loudly.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator

import pytest

from enclaves.host import LibvirtHost
from enclaves.hosts import bundled_host_uri
from enclaves.inventory import discover_gpus, inventory

pytestmark = pytest.mark.libvirt


@pytest.fixture
def secret() -> Iterator[LibvirtHost]:
    with LibvirtHost(bundled_host_uri("secret-h100x8")) as host:
        yield host


@pytest.fixture
def civilian() -> Iterator[LibvirtHost]:
    with LibvirtHost(bundled_host_uri("civilian-h100x4")) as host:
        yield host


def test_secret_host_has_eight_h100s_four_per_numa_node(secret):
    gpus = discover_gpus(secret)
    assert len(gpus) == 8
    assert {gpu.model for gpu in gpus} == {"H100-SXM5-80GB"}
    assert collections.Counter(gpu.numa_node for gpu in gpus) == {0: 4, 1: 4}
    assert [gpu.address for gpu in gpus] == sorted(gpu.address for gpu in gpus)
    assert gpus[0].address == "0000:18:00.0"
    # Each GPU is alone in its own IOMMU group.
    assert len({gpu.iommu_group for gpu in gpus}) == 8
    assert all(gpu.group_members == (gpu.address,) for gpu in gpus)


def test_civilian_host_has_four_gpus_one_sharing_its_group_with_audio(civilian):
    gpus = {gpu.address: gpu for gpu in discover_gpus(civilian)}
    assert sorted(gpus) == ["0000:19:00.0", "0000:3b:00.0", "0000:9b:00.0", "0000:bb:00.0"]
    shared = gpus["0000:3b:00.0"]
    assert shared.iommu_group == 38
    assert shared.group_members == ("0000:3b:00.0", "0000:3b:00.1")
    # The audio function is a group member but not a GPU.
    assert "0000:3b:00.1" not in gpus
    assert collections.Counter(gpu.numa_node for gpu in gpus.values()) == {0: 2, 1: 2}


def test_inventory_matches_host_info(secret, civilian):
    for host, count in ((secret, 8), (civilian, 4)):
        info = host.info()
        found = inventory(host)
        assert (found.uri, found.hostname, found.cpus, found.memory_mib, found.numa_nodes) == (
            info.uri,
            info.hostname,
            info.cpus,
            info.memory_mib,
            info.numa_nodes,
        )
        assert len(found.gpus) == count
        assert found.gpus == tuple(discover_gpus(host))
