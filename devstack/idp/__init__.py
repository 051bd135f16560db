"""A Keycloak-compatible OpenID Connect provider for development and tests only.

It serves Keycloak's URL layout and token shape so that python-keycloak and Sovereign's
Keycloak adapter run unmodified against it where no Keycloak server exists. It is refused
outside the ``development`` and ``testing`` environments (:class:`DevIdpRefusedError`), keeps
everything in memory, and logs a warning whenever one is created. Production uses a real
Keycloak.
"""

from devstack.idp.app import ALLOWED_ENVIRONMENTS, DevIdpRefusedError, create_idp_app
from devstack.idp.bruteforce import BruteForceSettings
from devstack.idp.export import (
    DEMO_CLIENTS,
    RealmExport,
    RealmExportError,
    default_realm_export,
    realm_export_path,
)
from devstack.idp.server import ServerHandle, password_token, serve_in_thread, start_dev_idp
from devstack.idp.users import (
    CLI_CLIENT_ID,
    CONSOLE_CLIENT_ID,
    CONSOLE_CLIENT_SECRET,
    DEMO_PASSWORD,
    DEMO_USERS,
    DemoClient,
    DemoUser,
)

__all__ = [
    "ALLOWED_ENVIRONMENTS",
    "CLI_CLIENT_ID",
    "CONSOLE_CLIENT_ID",
    "CONSOLE_CLIENT_SECRET",
    "DEMO_CLIENTS",
    "DEMO_PASSWORD",
    "DEMO_USERS",
    "BruteForceSettings",
    "DemoClient",
    "DemoUser",
    "DevIdpRefusedError",
    "RealmExport",
    "RealmExportError",
    "ServerHandle",
    "create_idp_app",
    "default_realm_export",
    "password_token",
    "realm_export_path",
    "serve_in_thread",
    "start_dev_idp",
]
