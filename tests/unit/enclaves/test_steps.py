"""The step names: one enum per phase, whose values are what the control plane stores."""

from __future__ import annotations

import ast
from pathlib import Path

from enclaves import steps
from enclaves.steps import HOST_TEARDOWN_STEPS, PROVISION_STEPS, TEARDOWN_STEPS, TeardownStep


def test_values_and_order_are_the_stored_strings():
    # Stored in the enclaves.step column and in audit events: a rename is a data migration.
    assert PROVISION_STEPS == ("secrets", "volume", "network", "define", "start")
    assert TEARDOWN_STEPS == ("stop", "undefine", "volume", "secrets", "network", "keys")
    assert f"provision:{PROVISION_STEPS[0]}" == "provision:secrets"


def test_the_host_does_every_teardown_step_but_the_key_erase():
    assert TEARDOWN_STEPS[:-1] == HOST_TEARDOWN_STEPS
    assert not TeardownStep.KEYS.on_host


def test_the_module_imports_nothing_but_enum():
    tree = ast.parse(Path(steps.__file__).read_text())
    imported = {
        alias.name if isinstance(node, ast.Import) else node.module
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    assert imported <= {"__future__", "enum"}
