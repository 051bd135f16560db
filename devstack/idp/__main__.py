"""``python -m devstack.idp``: the dev IdP as a standalone process, for test harnesses.

Serves the realm of a realm export file (the packaged ``realm-sovereign.json`` by default) with
the demo users until killed, in the ``testing`` environment, and prints its base URL (the
``IDP_URL`` a control plane under test is given) on the first line of standard output. The
deployment scenario runs it on the controller as the stand-in for a deployed Keycloak.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path

from devstack.idp.export import RealmExport, RealmExportError
from devstack.idp.server import start_dev_idp


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGTERM or SIGINT; 2 on a bad realm file."""
    parser = argparse.ArgumentParser(prog="python -m devstack.idp", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port (0: a free one)")
    parser.add_argument("--realm-file", type=Path, default=None, help="Keycloak realm export")
    parser.add_argument(
        "--redirect-uri",
        action="append",
        default=[],
        help="an extra exact redirect URI for the console client (repeatable)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        definition = RealmExport.load(args.realm_file)
    except RealmExportError as e:
        parser.exit(2, f"{parser.prog}: {e}\n")
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    handle, _app = start_dev_idp(
        environment="testing",
        host=args.host,
        port=args.port,
        realm_export=definition,
        extra_redirect_uris=args.redirect_uri,
    )
    with handle:
        sys.stdout.write(f"{handle.url}/\n")
        sys.stdout.flush()
        stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
