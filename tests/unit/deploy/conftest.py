"""Ansible in this process, without leaking its patches into the rest of the suite.

Importing ansible-core patches ``sys.intern``, ``socket.getaddrinfo`` and a ``dataclasses``
helper for the whole process (``ansible.module_utils._internal._patches``); torch, imported
later by other tests, refuses a patched ``sys.intern``. These tests import ansible at
collection, so the patches are taken back once collection ends, applied again for each test
here, and taken back after it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest


def _patches() -> list[type]:
    from ansible.module_utils._internal._patches._dataclass_annotation_patch import (
        DataclassesIsTypePatch,
    )
    from ansible.module_utils._internal._patches._socket_patch import GetAddrInfoPatch
    from ansible.module_utils._internal._patches._sys_intern_patch import SysInternPatch

    return [DataclassesIsTypePatch, GetAddrInfoPatch, SysInternPatch]


def _take_back() -> None:
    for patch in _patches():
        if patch.is_patched():
            setattr(patch.target_container, patch.target_attribute, patch.unpatched_implementation)


def pytest_collection_finish(session: pytest.Session) -> None:
    _take_back()


@pytest.fixture(autouse=True)
def _ansible_patches() -> Iterator[None]:
    for patch in _patches():
        patch.patch()
    yield
    _take_back()
