"""bench/api.py's data: who calls, and a database with the demo catalogue and seeded requests."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime, timedelta
from importlib import resources

import benchkit  # noqa: F401 - first: it stops bench/audit.py shadowing the audit package
import sqlalchemy as sa

from audit.store import encode_compartments
from sovereign import create_app
from sovereign.adapters.migrations import upgrade
from sovereign.adapters.tables import enclave_requests
from sovereign.domain.identity import Principal
from sovereign.services.recording import CallContext

USER = "analyst-defence"
TENANT = "defence"
IMAGE = "debian-12-cuda"
LABEL = {"level": "SECRET", "compartments": ["NATO"]}


def token_subject(token: str) -> str:
    """The ``sub`` claim of a JWT, read without verifying it (only to label seeded rows)."""
    payload = token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return str(claims["sub"])


def prepare_database(url: str, idp_url: str, subject: str, count: int) -> None:
    """Migrate, bootstrap the demo tenants and images, and insert ``count`` pending requests."""
    upgrade(url)
    app = create_app({"ENV": "testing", "DATABASE_URL": url, "IDP_URL": idp_url, "IDP_DEV": True})
    try:
        ctx = CallContext(
            principal=Principal(subject="system", username="bootstrap"),
            actor="system:bootstrap",
            source="bench",
        )
        demo = json.loads((resources.files("sovereign") / "data" / "demo.json").read_text())
        app.extensions["sovereign"].catalog.bootstrap(ctx, demo)
    finally:
        app.extensions["sovereign"].close()
    base = datetime.now(UTC) - timedelta(days=30)
    compartments = encode_compartments(LABEL["compartments"])
    rows = [
        {
            "id": uuid.uuid4(),
            "tenant": TENANT,
            "requester": subject,
            "requester_name": USER,
            "label_level": LABEL["level"],
            "label_compartments": compartments,
            "vcpus": 4,
            "memory_mib": 8192,
            "gpus": 0,
            "gpu_model": None,
            "disk_gib": 10,
            "image": IMAGE,
            "purpose": f"seeded request {i}",
            "lease_hours": 8,
            "state": "pending",
            "reason": "",
            "created_at": base + timedelta(seconds=i),
            "updated_at": base + timedelta(seconds=i),
            "version": 1,
        }
        for i in range(count)
    ]
    if not rows:
        return
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(enclave_requests.insert(), rows)
    finally:
        engine.dispose()
