"""The control plane as the integration, web and browser tests build it: a migrated SQLite file
in a test folder, the dev IdP, the audit key and witness beside it, and the demo catalog."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any

from flask import Flask

from sovereign import create_app
from sovereign.adapters.memory_hypervisor import MemoryHypervisor
from sovereign.adapters.memory_sanitizer import MemorySanitizer
from sovereign.adapters.migrations import upgrade
from sovereign.cli import _bootstrap


class AheadClock:
    """A services' clock running ``ahead`` of real time (to age a sign-in's ``auth_time``
    without waiting; tokens are still verified on real time)."""

    def __init__(self) -> None:
        self.ahead = timedelta()

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.ahead


def make_app(
    folder: Path,
    idp_url: str,
    *,
    seed: bool = True,
    clock: Callable[[], datetime] | None = None,
    backends: Mapping[str, Any] | None = None,
    **config: Any,
) -> Flask:
    """An app over ``folder/sovereign.db`` trusting the dev IdP at ``idp_url``.

    ``config`` adds or overrides settings; ``seed`` loads the demo tenants and images;
    ``clock`` replaces the services' clock (tokens are still checked on real time).
    ``backends`` replace services' backends (``create_app`` overrides, e.g. ``hypervisor``);
    with the in-memory hypervisor, GPUs are handed over by the in-memory sanitizer unless
    ``backends`` names one (the assembly's serves only test-driver and libvirt hosts).
    """
    backends = dict(backends or {})
    if isinstance(backends.get("hypervisor"), MemoryHypervisor):
        backends.setdefault("sanitizer", MemorySanitizer())
    url = f"sqlite:///{folder / 'sovereign.db'}"
    upgrade(url)
    app = create_app(
        {
            "ENV": "testing",
            "DATABASE_URL": url,
            "IDP_URL": idp_url,
            "IDP_DEV": True,
            "AUDIT_SIGNING_KEY": str(folder / "audit.key"),
            "AUDIT_WITNESS_PATH": str(folder / "witness.jsonl"),
            "ENCLAVE_POOL_PATH": str(folder / "pool"),
            "ENCLAVE_CONSOLE_DIR": str(folder / "consoles"),
            # Tests register copies of the bundled test-driver hosts kept in their folder.
            "HYPERVISOR_TEST_HOSTS_DIR": str(folder),
            # Simulated GPUs are scrubbed on 1 MiB of host memory each (fast).
            "SANITIZER_SIMULATED_MIB": 1,
            **config,
        },
        **({"clock": clock} if clock is not None else {}),
        **backends,
    )
    if seed:
        demo = json.loads((resources.files("sovereign") / "data" / "demo.json").read_text())
        _bootstrap(app, demo)
    return app
