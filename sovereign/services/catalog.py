"""Use cases for tenants and the image catalog: read them, and seed them at bootstrap.

Owns who may read which tenants (analysts: their own; officers, auditors, operators: all) and
the idempotent bootstrap that creates tenants and images from a definition file.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from sovereign.domain.identity import Role
from sovereign.domain.keys import RESERVED_DOMAINS
from sovereign.domain.labels import Label, LabelScheme
from sovereign.domain.residency import check_residency
from sovereign.domain.tenants import DEFAULT_RESIDENCY, Image, Resources, Tenant, TenantKind
from sovereign.errors import ConflictError, InvalidInputError
from sovereign.services.ports import UnitOfWorkFactory
from sovereign.services.recording import CallContext, Clock, Recorder, utcnow

ALL_TENANT_READERS = frozenset({Role.OFFICER, Role.AUDITOR, Role.OPERATOR})
_IMAGE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
#: The image store's checksums: SHA-256 of the image's manifest (enclaves.imagestore).
_CHECKSUM = re.compile(r"sha256:[0-9a-f]{64}")


class CatalogService:
    """Tenants and images."""

    def __init__(
        self, uow_factory: UnitOfWorkFactory, scheme: LabelScheme, clock: Clock = utcnow
    ) -> None:
        self._uow = uow_factory
        self._scheme = scheme
        self._recorder = Recorder(uow_factory, clock)

    def tenants(self, ctx: CallContext) -> list[Tenant]:
        """Tenants the caller may know about."""
        with self._uow(readonly=True) as uow:
            found = uow.tenants.list()
        if ctx.principal.roles & ALL_TENANT_READERS:
            return found
        return [t for t in found if t.name in ctx.principal.tenants]

    def images(self, ctx: CallContext) -> list[Image]:
        """Images whose ceiling the caller could use: all of them, for any signed-in user."""
        del ctx  # every authenticated user may read the catalog
        with self._uow(readonly=True) as uow:
            return uow.images.list()

    def import_image(
        self,
        ctx: CallContext,
        *,
        name: str,
        checksum: str,
        max_label: Label,
        image_format: str = "qcow2",
        description: str = "",
    ) -> Image:
        """Add an image whose files are in the image store to the catalog (``image:import``).

        Importing the same name and checksum again returns the existing entry; a name already
        used with another checksum is refused (an approved image never changes under its
        name: import the new one under a new name).

        :raises InvalidInputError: if the name or checksum is malformed.
        :raises ConflictError: if the name exists with another checksum.
        """
        if not _IMAGE_NAME.fullmatch(name):
            raise InvalidInputError(
                reason=f"image name must be 1-64 letters, digits, '.', '_' or '-', got {name!r}"
            )
        if not _CHECKSUM.fullmatch(checksum):
            raise InvalidInputError(reason=f"image checksum must be sha256:<hex>, got {checksum!r}")
        with self._uow() as uow:
            existing = uow.images.get(name)
            if existing is not None:
                if existing.checksum != checksum:
                    raise ConflictError(
                        reason=f"image {name!r} exists with checksum {existing.checksum}; "
                        f"import {checksum} under another name"
                    )
                return existing
            image = Image(
                id=uuid.uuid4(),
                name=name,
                format=image_format,
                checksum=checksum,
                max_label=max_label,
                description=description,
            )
            uow.images.add(image)
            self._recorder.record(
                uow,
                ctx,
                "image:import",
                f"image/{name}",
                label=max_label,
                details={"checksum": checksum, "format": image_format},
            )
            uow.commit()
        return image

    def bootstrap(self, ctx: CallContext, definition: Mapping[str, Any]) -> list[str]:
        """Create the tenants and images in ``definition`` that do not exist yet.

        Returns the names created. Idempotent: existing names are left as they are.

        :raises InvalidInputError: if the definition is malformed.
        """
        tenants = [self._tenant(t) for t in _items(definition, "tenants")]
        for tenant in tenants:
            if tenant.kind is TenantKind.CLASSIFIED and tenant.name in RESERVED_DOMAINS:
                # Its key mount would be another domain's (e.g. the audit signing key's).
                raise InvalidInputError(
                    reason=f"a classified tenant may not be named {tenant.name!r} (reserved)"
                )
        images = [self._image(i) for i in _items(definition, "images")]
        created: list[str] = []
        with self._uow() as uow:
            for tenant in tenants:
                if uow.tenants.get(tenant.name) is None:
                    uow.tenants.add(tenant)
                    created.append(f"tenant/{tenant.name}")
                    self._recorder.record(
                        uow,
                        ctx,
                        "tenant:create",
                        f"tenant/{tenant.name}",
                        label=tenant.max_label,
                        details={
                            "kind": tenant.kind.value,
                            "quota": vars(tenant.quota),
                            "residency": list(tenant.residency),
                        },
                    )
            for image in images:
                if uow.images.get(image.name) is None:
                    uow.images.add(image)
                    created.append(f"image/{image.name}")
                    self._recorder.record(
                        uow,
                        ctx,
                        "image:create",
                        f"image/{image.name}",
                        label=image.max_label,
                        details={"checksum": image.checksum, "format": image.format},
                    )
            uow.commit()
        return created

    def _tenant(self, data: Mapping[str, Any]) -> Tenant:
        try:
            quota = data.get("quota", {})
            return Tenant(
                id=uuid.uuid4(),
                name=str(data["name"]),
                display_name=str(data.get("display_name", "")),
                kind=TenantKind(data["kind"]),
                max_label=self._scheme.parse(data["max_label"]),
                quota=Resources(
                    vcpus=int(quota.get("vcpus", 0)),
                    memory_mib=int(quota.get("memory_mib", 0)),
                    gpus=int(quota.get("gpus", 0)),
                    disk_gib=int(quota.get("disk_gib", 0)),
                ),
                residency=check_residency(data.get("residency", DEFAULT_RESIDENCY)),
            )
        except (KeyError, ValueError, TypeError, AttributeError) as e:
            raise InvalidInputError(reason=f"bad tenant definition {dict(data)!r}: {e}") from e

    def _image(self, data: Mapping[str, Any]) -> Image:
        try:
            return Image(
                id=uuid.uuid4(),
                name=str(data["name"]),
                format=str(data["format"]),
                checksum=str(data["checksum"]),
                max_label=self._scheme.parse(data["max_label"]),
                description=str(data.get("description", "")),
            )
        except (KeyError, ValueError, TypeError, AttributeError) as e:
            raise InvalidInputError(reason=f"bad image definition {dict(data)!r}: {e}") from e


def _items(definition: Mapping[str, Any], key: str) -> Sequence[Mapping[str, Any]]:
    items = definition.get(key, [])
    if not isinstance(items, list) or not all(isinstance(i, Mapping) for i in items):
        raise InvalidInputError(reason=f"{key!r} must be a list of objects")
    return items
