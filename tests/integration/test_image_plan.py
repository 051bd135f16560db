"""The enclave plan names the catalog image its request chose (what the host clones)."""

from __future__ import annotations

from pathlib import Path

from enclaves.plan import PlanImage
from tests.support.fleet import make_fleet


def test_the_plan_carries_the_requested_images_name_and_checksum(database_url: str, tmp_path: Path):
    fleet = make_fleet(database_url, folder=tmp_path)
    try:
        rid = fleet.request()
        fleet.settle()  # placed: the enclave exists
        with fleet.services.uow(readonly=True) as uow:
            enclave = uow.enclaves.get(rid)
            image = uow.images.get("debian-12-cuda")
        assert enclave is not None
        assert image is not None
        plan = fleet.reconciler().plan(enclave)
        assert plan.image == PlanImage(name="debian-12-cuda", checksum=image.checksum)
    finally:
        fleet.services.close()
