"""Which libvirt URIs the control plane may open, and their one canonical spelling.

Owns :class:`UriPolicy` and :func:`check_uri`: a pure check, run *before* any connection is
attempted, of a hypervisor URI against an allow-list. libvirt's remote driver honours URI
parameters that run programs or pick files on the machine that opens the connection
(``command=`` for ``+ext`` and ``+ssh``, ``socket=``, ``netcat=``, ``proxy=``, ``keyfile=``,
``pkipath=``, ``known_hosts=``) or weaken the channel (``no_verify=``, ``tls_priority=``,
``known_hosts_verify=``, ``sshauth=``), and transports that run a program (``+ext``) or reach an
arbitrary local socket (``+unix``); and any host and port may be probed. So only these forms
pass (see libvirt's "Connection URIs" and "Remote support" documentation):

- ``qemu+tls://HOST[:PORT]/system``: the production transport (x509 both ways);
- ``qemu+ssh://[USER@]HOST[:PORT]/system``: only where the policy adds it;
- ``qemu:///system``: the local daemon's socket, only where the policy adds it;
- ``test:///ABSOLUTE/FILE.xml``: libvirt's test driver, only for files under the policy's test
  host directories (resolved, so no ``..`` or symbolic link leaves them).

HOST is a DNS name or an IP address (a name whose last label is numeric is refused, because
resolvers read ``0x7f.1`` or ``2130706433`` as addresses), PORT one the policy lists for the
transport (libvirt's 16514 for TLS and 22 for SSH by default, so the endpoint cannot be used to
scan ports), the path exactly ``/system``, no password in the authority, no fragment and no
query parameter outside :data:`SAFE_PARAMS` and the policy. The canonical form has the scheme
and host in lower case, no default port, the test file's real path percent-encoded: two
spellings of one URI give one string. (Two *URIs* of one machine, a name and its address, are
told apart by the hypervisor's identity, :meth:`enclaves.host.LibvirtHost.identity`.)

It must not open connections, resolve names or import the control plane; the only I/O is
resolving a test driver file's path.
"""

from __future__ import annotations

import ipaddress
import os
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

#: Every transport this module knows how to check; a policy picks among them.
TRANSPORTS: tuple[str, ...] = ("qemu+tls", "qemu+ssh", "qemu", "test")
#: libvirt's default ports (``libvirtd --listen`` TLS port, and sshd's).
DEFAULT_PORTS: Mapping[str, int] = MappingProxyType({"qemu+tls": 16514, "qemu+ssh": 22})
#: Query parameters a policy may allow: ``no_tty`` only stops ssh asking for a password on a
#: terminal. Every other libvirt parameter runs a program, names a file or socket on the
#: control plane, or weakens verification, and is refused whatever the configuration says.
SAFE_PARAMS = frozenset({"no_tty"})
#: Longest URI accepted (the ``hosts.uri`` column).
MAX_LENGTH = 1024
#: The only path a remote or local QEMU URI may have: the system daemon.
SYSTEM_PATH = "/system"

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_SSH_USER = re.compile(r"[a-z_][a-z0-9_.-]{0,31}")
_PARAM_VALUE = re.compile(r"[01]")
#: Why some well-known transports are refused, for a message the operator can act on.
_REFUSED_TRANSPORTS: Mapping[str, str] = MappingProxyType(
    {
        "ext": "it runs a program on the control plane",
        "unix": "it opens a local socket of the caller's choosing",
        "tcp": "it is neither encrypted nor authenticated",
        "libssh": "its key and known-hosts parameters are not supported here",
        "libssh2": "its key and known-hosts parameters are not supported here",
    }
)


class UriRefusedError(ValueError):
    """The URI is malformed or not allowed; the message says why (and is safe to show: it
    never repeats a password)."""


@dataclass(frozen=True)
class UriPolicy:
    """What :func:`check_uri` lets through."""

    #: Allowed transports, among :data:`TRANSPORTS`.
    transports: frozenset[str] = frozenset({"qemu+tls"})
    #: Allowed query parameters, among :data:`SAFE_PARAMS`.
    params: frozenset[str] = frozenset()
    #: Allowed ports per remote transport (default: libvirt's).
    ports: Mapping[str, frozenset[int]] = field(
        default_factory=lambda: {name: frozenset({port}) for name, port in DEFAULT_PORTS.items()}
    )
    #: Directories whose ``*.xml`` files the test driver may open.
    test_dirs: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        """:raises ValueError: for an unknown transport or an unsafe parameter."""
        unknown = sorted(self.transports - set(TRANSPORTS))
        if unknown:
            raise ValueError(f"unknown transports {unknown}; known: {', '.join(TRANSPORTS)}")
        unsafe = sorted(self.params - SAFE_PARAMS)
        if unsafe:
            raise ValueError(f"query parameters {unsafe} are never allowed")
        for name, ports in self.ports.items():
            if any(not 0 < port < 65536 for port in ports):
                raise ValueError(f"ports of {name} must be between 1 and 65535")


def check_uri(uri: str, policy: UriPolicy) -> str:
    """Return the canonical form of ``uri`` if ``policy`` allows it.

    :raises UriRefusedError: saying what is malformed or not allowed.
    """
    if not isinstance(uri, str) or not uri:
        raise UriRefusedError("the URI is empty")
    if len(uri) > MAX_LENGTH:
        raise UriRefusedError(f"the URI is longer than {MAX_LENGTH} characters")
    if any(not 0x20 < ord(c) < 0x7F or c in "\\\"'<>`{}|^" for c in uri):
        raise UriRefusedError(
            "the URI may only hold printable ASCII without spaces, quotes or backslashes "
            "(percent-encode the rest)"
        )
    scheme, sep, _rest = uri.partition("://")
    if not sep or not _SCHEME.fullmatch(scheme):
        raise UriRefusedError("the URI must start with a transport such as qemu+tls://")
    scheme = scheme.lower()
    if scheme not in policy.transports:
        raise UriRefusedError(_transport_refusal(scheme, policy))
    try:
        parts = urllib.parse.urlsplit(uri)
    except ValueError as exc:
        raise UriRefusedError("the URI is malformed") from exc
    if "#" in uri:
        raise UriRefusedError("the URI may not have a fragment")
    params = _params(parts.query, policy)
    if scheme == "test":
        return _test_uri(parts, params, policy)
    if scheme == "qemu":
        if parts.netloc or parts.path != SYSTEM_PATH or params:
            raise UriRefusedError("the local transport is exactly qemu:///system")
        return "qemu:///system"
    return _remote_uri(scheme, parts, params, policy)


def _transport_refusal(scheme: str, policy: UriPolicy) -> str:
    allowed = ", ".join(f"{name}://" for name in sorted(policy.transports)) or "none"
    driver, _, transport = scheme.partition("+")
    why = _REFUSED_TRANSPORTS.get(transport)
    if why is not None:
        return f"transport {scheme}:// is refused: {why} (allowed: {allowed})"
    if driver == "test":
        return f"test:// hosts are for development and testing only (allowed: {allowed})"
    return f"transport {scheme}:// is not allowed (allowed: {allowed})"


def _params(query: str, policy: UriPolicy) -> dict[str, str]:
    if not query:
        return {}
    try:
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True, strict_parsing=True)
    except ValueError as exc:
        raise UriRefusedError("the URI's query is malformed") from exc
    found: dict[str, str] = {}
    for name, value in pairs:
        if name not in policy.params:
            allowed = ", ".join(sorted(policy.params)) or "none"
            raise UriRefusedError(
                f"query parameter {name[:32]!r} is not allowed (allowed: {allowed})"
            )
        if name in found:
            raise UriRefusedError(f"query parameter {name!r} is given twice")
        if not _PARAM_VALUE.fullmatch(value):
            raise UriRefusedError(f"query parameter {name!r} must be 0 or 1")
        found[name] = value
    return found


def _test_uri(parts: urllib.parse.SplitResult, params: Mapping[str, str], policy: UriPolicy) -> str:
    if parts.netloc:
        raise UriRefusedError("a test:// URI names a local file: test:///ABSOLUTE/PATH.xml")
    if params:
        raise UriRefusedError("a test:// URI takes no query parameters")
    if not policy.test_dirs:
        raise UriRefusedError("no test host directory is configured")
    path = urllib.parse.unquote(parts.path)
    if not path.startswith("/") or "\x00" in path or not path.endswith(".xml"):
        raise UriRefusedError("a test:// URI names an absolute path to an .xml host file")
    real = os.path.realpath(path)
    roots = [os.path.realpath(folder) for folder in policy.test_dirs]
    if not any(os.path.commonpath([root, real]) == root for root in roots):
        raise UriRefusedError("test host files must lie in the configured test host directory")
    if not real.endswith(".xml"):
        raise UriRefusedError("a test:// URI names an absolute path to an .xml host file")
    return "test://" + urllib.parse.quote(real, safe="/")


def _remote_uri(
    scheme: str,
    parts: urllib.parse.SplitResult,
    params: Mapping[str, str],
    policy: UriPolicy,
) -> str:
    userinfo, at, hostport = parts.netloc.rpartition("@")
    user = ""
    if at:
        if ":" in userinfo:
            raise UriRefusedError("passwords in URIs are refused")
        if scheme != "qemu+ssh":
            raise UriRefusedError(f"a {scheme}:// URI takes no user name")
        if not _SSH_USER.fullmatch(userinfo):
            raise UriRefusedError("the ssh user name is not a plain login name")
        user = userinfo + "@"
    host, port = _host_port(hostport)
    allowed = policy.ports.get(scheme, frozenset({DEFAULT_PORTS[scheme]}))
    number = DEFAULT_PORTS[scheme] if port is None else port
    if number not in allowed:
        listed = ", ".join(str(p) for p in sorted(allowed))
        raise UriRefusedError(f"port {number} is not allowed for {scheme}:// (allowed: {listed})")
    if parts.path != SYSTEM_PATH:
        raise UriRefusedError(f"the path must be {SYSTEM_PATH} (the system daemon)")
    suffix = "" if number == DEFAULT_PORTS[scheme] else f":{number}"
    query = "?" + urllib.parse.urlencode(sorted(params.items())) if params else ""
    return f"{scheme}://{user}{host}{suffix}{SYSTEM_PATH}{query}"


def _host_port(hostport: str) -> tuple[str, int | None]:
    """Split and check ``HOST[:PORT]``; the host comes back canonical."""
    if hostport.startswith("["):
        literal, bracket, tail = hostport[1:].partition("]")
        if not bracket:
            raise UriRefusedError("an IPv6 address must be closed with ']'")
        try:
            v6 = ipaddress.IPv6Address(literal)
        except ValueError as exc:
            raise UriRefusedError("the host is not a valid IPv6 address") from exc
        if v6.scope_id is not None:
            # A zone id is free text that libvirt hands on (to ssh as part of the host name).
            raise UriRefusedError("an IPv6 address may not carry a zone id (%...)")
        host = f"[{v6.compressed}]"
        address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = v6
        port_text = tail
    else:
        name, colon, port = hostport.partition(":")
        port_text = colon + port
        host = name.lower().removesuffix(".")
        v4 = _address(host)
        if v4 is None:
            _check_name(host)
        else:
            host = v4.compressed
        address = v4
    if address is not None and (
        address.is_unspecified or address.is_multicast or str(address) == "255.255.255.255"
    ):
        raise UriRefusedError("the host address is not one a hypervisor can have")
    if not port_text:
        return host, None
    if not port_text.startswith(":") or not port_text[1:].isdigit() or len(port_text) > 6:
        raise UriRefusedError("the port must be a number")
    number = int(port_text[1:])
    if not 0 < number < 65536:
        raise UriRefusedError("the port must be between 1 and 65535")
    return host, number


def _address(host: str) -> ipaddress.IPv4Address | None:
    try:
        return ipaddress.IPv4Address(host)
    except ValueError:
        return None


def _check_name(host: str) -> None:
    if not host:
        raise UriRefusedError("the URI names no host")
    labels = host.split(".")
    if len(host) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise UriRefusedError("the host is not a valid DNS name or IP address")
    if labels[-1][0].isdigit():
        # Not a strict dotted quad, yet a resolver would read it as an address.
        raise UriRefusedError("the host is not a valid DNS name or IP address")
