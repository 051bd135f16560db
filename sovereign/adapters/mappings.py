"""Which column of each table holds which attribute of the domain: one :class:`RowMap` a table.

Owns the descriptions only (the machinery is :mod:`sovereign.adapters.rowmap`, the statements
the repositories in :mod:`sovereign.adapters.database` and :mod:`sovereign.adapters.fleetdb`).
An attribute not listed is a column of the same name copied as is. Columns the domain does not
keep are named in ``unmapped`` and written by the repository.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from sovereign.adapters.rowmap import Column, Composite, LabelColumns, RowMap
from sovereign.adapters.tables import (
    approvals,
    blobs,
    datasets,
    dual_actions,
    enclave_keys,
    enclave_requests,
    enclaves,
    gpus,
    hosts,
    images,
    jobs,
    sites,
    tenants,
)
from sovereign.domain.actions import ActionKind, ActionState, DualAction
from sovereign.domain.fleet import Enclave, Gpu, Host
from sovereign.domain.jobs import (
    MAX_ERROR,
    Blob,
    BlobKind,
    Dataset,
    Job,
    JobManifest,
    JobState,
    JobStep,
    OutputFile,
)
from sovereign.domain.keys import EnclaveKeys, KeyRef, WrappedSecret
from sovereign.domain.requests import Approval, Decision, EnclaveRequest, RequestState
from sovereign.domain.sites import Site
from sovereign.domain.tenants import Image, Resources, Tenant, TenantKind

#: Longest error text an enclave row keeps (the column's size).
ENCLAVE_ERROR_MAX = 2000


def _split(text: str) -> tuple[str, ...]:
    """``"a,b"`` -> ``("a", "b")``; the empty string is the empty tuple."""
    return tuple(part for part in text.split(",") if part)


def _join(parts: tuple[str, ...]) -> str:
    return ",".join(parts)


def _from_hex(text: str | None) -> bytes | None:
    return None if text is None else bytes.fromhex(text)


def _to_hex(value: bytes | None) -> str | None:
    return None if value is None else value.hex()


def _enum_value(member: Any) -> Any:
    return member.value


def _columns(*names: str) -> tuple[Column, ...]:
    """Attributes stored as is, each in the column of its own name."""
    return tuple(Column(name) for name in names)


def _wrapped(attr: str, column: str) -> Composite:
    """A data key wrapped by the row's store key (whose three columns it shares)."""
    return Composite(
        attr,
        ("mount", "key_name", "key_version", column),
        lambda mount, name, version, text: WrappedSecret(KeyRef(mount, name, version), text),
        (column,),
        lambda wrapped: (wrapped.ciphertext,),
    )


def _codes_load(text: str | None) -> tuple[str, ...] | None:
    return None if text is None else tuple(json.loads(text))


def _codes_dump(codes: tuple[str, ...] | None) -> str | None:
    return None if codes is None else json.dumps(list(codes))


TENANTS = RowMap(
    Tenant,
    tenants,
    *_columns("id", "name", "display_name"),
    Column("kind", load=TenantKind, dump=_enum_value),
    LabelColumns("max_label", "max"),
    Composite.of(
        "quota",
        Resources,
        vcpus="quota_vcpus",
        memory_mib="quota_memory_mib",
        gpus="quota_gpus",
        disk_gib="quota_disk_gib",
    ),
    Column("residency", load=_codes_load, dump=_codes_dump),
    unmapped=("created_at",),
)

IMAGES = RowMap(
    Image,
    images,
    *_columns("id", "name", "format", "checksum", "description"),
    LabelColumns("max_label", "max"),
    unmapped=("created_at",),
)

REQUESTS = RowMap(
    EnclaveRequest,
    enclave_requests,
    *_columns("id", "tenant", "requester", "requester_name", "gpu_model", "image", "purpose"),
    *_columns("lease_hours", "reason", "created_at", "updated_at", "version", "country"),
    Column("residency", load=_codes_load, dump=_codes_dump),
    LabelColumns("label", "label"),
    Composite.of(
        "resources",
        Resources,
        vcpus="vcpus",
        memory_mib="memory_mib",
        gpus="gpus",
        disk_gib="disk_gib",
    ),
    Column("state", load=RequestState, dump=_enum_value),
)

APPROVALS = RowMap(
    Approval,
    approvals,
    *_columns("officer", "officer_name", "reason", "decided_at"),
    Column("decision", load=Decision, dump=_enum_value),
    unmapped=("id", "request_id"),
)

KEYS = RowMap(
    EnclaveKeys,
    enclave_keys,
    *_columns("request_id", "created_at", "destroyed_at", "country", "vault"),
    Composite.of("key", KeyRef, mount="mount", name="key_name", version="key_version"),
    _wrapped("luks", "luks_wrapped"),
    _wrapped("vtpm", "vtpm_wrapped"),
)

HOSTS = RowMap(
    Host,
    hosts,
    *_columns("id", "name", "uri", "site", "domain_type", "vcpus", "memory_mib", "state"),
    *_columns("reason", "created_at", "updated_at", "version", "host_uuid", "hostname"),
    *_columns("country"),
    LabelColumns("accreditation", "accreditation"),
)

SITES = RowMap(Site, sites, *_columns("name", "country", "operator", "created_at"))

GPUS = RowMap(
    Gpu,
    gpus,
    *_columns("host", "address", "model", "numa_node", "iommu_group", "state", "enclave_id"),
    *_columns("last_tenant", "updated_at", "host_uuid", "uuid"),
    Column("group_members", load=_split, dump=_join),
    LabelColumns("last_label", "last_label", optional=True),
)

ENCLAVES = RowMap(
    Enclave,
    enclaves,
    *_columns("id", "host", "domain_name", "tenant", "vcpus", "memory_mib", "disk_gib"),
    *_columns("lease_expires_at", "step", "attempts", "claimed_by", "claim_until", "retry_at"),
    *_columns("created_at", "updated_at", "version", "ended_at", "country"),
    Column("gpus", load=_split, dump=_join),
    LabelColumns("label", "label"),
    Column("classified", load=bool),
    Column("error", dump=lambda text: text[:ENCLAVE_ERROR_MAX]),
    Column("canary_nonce", load=_from_hex, dump=_to_hex),
)

ACTIONS = RowMap(
    DualAction,
    dual_actions,
    *_columns("id", "reason", "proposer", "proposer_name", "confirmer", "confirmer_name"),
    *_columns("created_at", "expires_at", "decided_at", "version"),
    Column("kind", load=ActionKind, dump=_enum_value),
    Column("params", load=json.loads, dump=lambda params: json.dumps(params, sort_keys=True)),
    LabelColumns("label", "label"),
    Column("state", load=ActionState, dump=_enum_value),
)


def _manifest_load(text: str) -> JobManifest:
    data = json.loads(text)
    return JobManifest(
        entrypoint=data["entrypoint"],
        args=tuple(data["args"]),
        inputs=tuple(uuid.UUID(i) for i in data["inputs"]),
        outputs=tuple(data["outputs"]),
        max_runtime_s=int(data["max_runtime_s"]),
    )


def _manifest_dump(manifest: JobManifest) -> str:
    return json.dumps(manifest.to_dict(), sort_keys=True)


def _files_load(text: str) -> tuple[OutputFile, ...]:
    return tuple(OutputFile(f["name"], int(f["size"]), f["sha256"]) for f in json.loads(text))


def _files_dump(files: tuple[OutputFile, ...]) -> str:
    return json.dumps([f.to_dict() for f in files], sort_keys=True)


#: Longest error text a job row keeps (the column's size).
JOB_ERROR_MAX = MAX_ERROR

JOBS = RowMap(
    Job,
    jobs,
    *_columns("id", "enclave_id", "tenant", "submitted_by", "created_at", "updated_at"),
    *_columns("started_at", "finished_at", "exit_code", "runtime_s", "log_size"),
    *_columns("claimed_by", "claim_until", "version"),
    LabelColumns("label", "label"),
    Column("manifest", load=_manifest_load, dump=_manifest_dump),
    Column("files", load=_files_load, dump=_files_dump),
    Column("results", load=_files_load, dump=_files_dump),
    Column("state", load=JobState, dump=_enum_value),
    Column("step", load=JobStep, dump=_enum_value),
    Column("error", dump=lambda text: text[:JOB_ERROR_MAX]),
    Column("simulated", load=bool),
    Column("cancel_requested", load=bool),
)

DATASETS = RowMap(
    Dataset,
    datasets,
    *_columns("id", "tenant", "name", "size", "sha256", "uploaded_by", "created_at"),
    *_columns("key_mount", "key_name"),
    LabelColumns("label", "label"),
)

BLOBS = RowMap(
    Blob,
    blobs,
    *_columns("owner", "name", "seq", "size"),
    Column("kind", load=BlobKind, dump=_enum_value),
    Column("data", load=bytes),
    unmapped=("created_at",),
)
