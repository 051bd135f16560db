"""The hypervisor URI allow-list (:mod:`enclaves.uri`): what passes, what is refused and why, and
that every spelling of one URI has one canonical form. Pure: nothing here connects."""

from __future__ import annotations

import os
import string
import urllib.parse
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from enclaves.uri import SAFE_PARAMS, UriPolicy, UriRefusedError, check_uri

TLS = UriPolicy()
REMOTE = UriPolicy(transports=frozenset({"qemu+tls", "qemu+ssh"}))
EVERYTHING = UriPolicy(
    transports=frozenset({"qemu+tls", "qemu+ssh", "qemu", "test"}),
    params=frozenset({"no_tty"}),
)
#: libvirt's remote driver parameters (and a few more) that must never pass, whatever the
#: transport: they run programs, pick files or sockets on the control plane, or weaken checks.
DANGEROUS_PARAMS = (
    "command",
    "socket",
    "netcat",
    "proxy",
    "keyfile",
    "no_verify",
    "mode",
    "pkipath",
    "known_hosts",
    "known_hosts_verify",
    "sshauth",
    "tls_priority",
    "name",
)


@pytest.mark.parametrize(
    ("uri", "canonical"),
    [
        ("qemu+tls://node1.example/system", "qemu+tls://node1.example/system"),
        ("QEMU+TLS://Node1.EXAMPLE/system", "qemu+tls://node1.example/system"),
        ("qemu+tls://node1.example.:16514/system", "qemu+tls://node1.example/system"),
        ("qemu+tls://192.0.2.10/system", "qemu+tls://192.0.2.10/system"),
        ("qemu+tls://[2001:DB8:0:0::10]:16514/system", "qemu+tls://[2001:db8::10]/system"),
    ],
)
def test_tls_uris_pass_in_canonical_form(uri: str, canonical: str):
    assert check_uri(uri, TLS) == canonical
    assert check_uri(canonical, TLS) == canonical


def test_ssh_passes_only_where_the_policy_adds_it():
    with pytest.raises(UriRefusedError, match="not allowed"):
        check_uri("qemu+ssh://root@node1.example/system", TLS)
    assert (
        check_uri("qemu+ssh://root@Node1.example:22/system", REMOTE)
        == "qemu+ssh://root@node1.example/system"
    )


@pytest.mark.parametrize("param", DANGEROUS_PARAMS)
@pytest.mark.parametrize("scheme", ["qemu+tls://node1.example", "qemu+ssh://root@node1.example"])
def test_dangerous_query_parameters_are_refused(scheme: str, param: str):
    uri = f"{scheme}/system?{param}=/tmp/x"
    with pytest.raises(UriRefusedError, match="query parameter"):
        check_uri(uri, EVERYTHING)


def test_a_policy_cannot_allow_a_dangerous_parameter():
    for param in DANGEROUS_PARAMS:
        with pytest.raises(ValueError, match="never allowed"):
            UriPolicy(params=frozenset({param}))
    with pytest.raises(ValueError, match="unknown transports"):
        UriPolicy(transports=frozenset({"qemu+ext"}))


def test_no_tty_is_the_one_parameter_a_policy_may_allow():
    assert {"no_tty"} == SAFE_PARAMS
    uri = "qemu+ssh://root@node1.example/system?no_tty=1"
    assert check_uri(uri, EVERYTHING) == uri
    with pytest.raises(UriRefusedError):
        check_uri(uri, REMOTE)
    with pytest.raises(UriRefusedError, match="0 or 1"):
        check_uri("qemu+ssh://node1.example/system?no_tty=yes", EVERYTHING)
    with pytest.raises(UriRefusedError, match="twice"):
        check_uri("qemu+ssh://node1.example/system?no_tty=1&no_tty=0", EVERYTHING)


@pytest.mark.parametrize(
    ("uri", "reason"),
    [
        ("qemu+ext:///system?command=/tmp/evil", "runs a program"),
        ("qemu+unix:///system?socket=/run/other.sock", "local socket"),
        ("qemu+tcp://node1.example/system", "neither encrypted"),
        ("qemu+libssh://node1.example/system", "not supported"),
        ("qemu+libssh2://node1.example/system?keyfile=/root/.ssh/id", "not supported"),
        ("test:///default", "development and testing only"),
        ("xen+tls://node1.example/system", "not allowed"),
        ("qemu+tls://node1.example:1/system", "port 1 is not allowed"),
        ("qemu+tls://node1.example:22/system", "port 22 is not allowed"),
        ("qemu+tls://127.0.0.1:5432/system", "port 5432 is not allowed"),
        ("qemu+tls://node1.example:/system", "port must be a number"),
        ("qemu+tls://node1.example:99999/system", "port must be"),
        ("qemu+tls://node1.example/session", "path must be /system"),
        ("qemu+tls://node1.example/./system", "path must be /system"),
        ("qemu+tls://node1.example//system", "path must be /system"),
        ("qemu+tls://node1.example", "path must be /system"),
        ("qemu+tls://node1.example/system#x", "fragment"),
        ("qemu+tls://user:secret@node1.example/system", "passwords"),
        ("qemu+tls://root@node1.example/system", "no user name"),
        ("qemu+tls:///system", "names no host"),
        ("qemu+tls://2130706433/system", "not a valid DNS name"),
        ("qemu+tls://0x7f.1/system", "not a valid DNS name"),
        ("qemu+tls://127.1/system", "not a valid DNS name"),
        ("qemu+tls://node_1.example/system", "not a valid DNS name"),
        ("qemu+tls://node1%2eexample/system", "not a valid DNS name"),
        ("qemu+tls://0.0.0.0/system", "not one a hypervisor can have"),
        ("qemu+tls://[::]/system", "not one a hypervisor can have"),
        ("qemu+tls://[2001:db8::1/system", "malformed"),
        ("qemu+tls://node1 .example/system", "printable ASCII"),
        ("qemu+tls://node1.example/system\n", "printable ASCII"),
        ("qemu+tls://nöde.example/system", "printable ASCII"),
        ("qemu+tls:/node1.example/system", "must start with a transport"),
        ("not a uri", "printable ASCII"),
        ("", "empty"),
        ("qemu+tls://" + "a" * 1100 + "/system", "longer"),
    ],
)
def test_refused_uris_say_why(uri: str, reason: str):
    with pytest.raises(UriRefusedError, match=reason):
        check_uri(uri, REMOTE)


def test_ssh_refuses_odd_user_names_and_never_echoes_a_password():
    with pytest.raises(UriRefusedError, match="plain login name"):
        check_uri("qemu+ssh://-oProxyCommand=x@node1.example/system", REMOTE)
    with pytest.raises(UriRefusedError) as refused:
        check_uri("qemu+ssh://root:hunter2@node1.example/system", REMOTE)
    assert "hunter2" not in str(refused.value)


def test_the_local_daemon_is_exactly_qemu_system():
    local = UriPolicy(transports=frozenset({"qemu"}))
    assert check_uri("QEMU:///system", local) == "qemu:///system"
    for uri in ("qemu:///session", "qemu://node1/system", "qemu:///system?socket=/x"):
        with pytest.raises(UriRefusedError):
            check_uri(uri, local)


# -- the test driver ------------------------------------------------------------------------


@pytest.fixture
def hosts_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "hosts"
    (folder / "sub").mkdir(parents=True)
    (folder / "a host#1.xml").write_text("<node/>")
    return folder


def policy_for(folder: Path) -> UriPolicy:
    return UriPolicy(transports=frozenset({"test"}), test_dirs=(str(folder),))


def file_uri(path: str) -> str:
    return "test://" + urllib.parse.quote(path, safe="/")


def test_test_driver_files_under_the_directory_pass(hosts_dir: Path):
    canonical = file_uri(os.path.realpath(hosts_dir / "a host#1.xml"))
    assert check_uri(canonical, policy_for(hosts_dir)) == canonical


def test_test_driver_files_elsewhere_are_refused(hosts_dir: Path, tmp_path: Path):
    policy = policy_for(hosts_dir)
    outside = tmp_path / "outside.xml"
    outside.write_text("<node/>")
    (hosts_dir / "link.xml").symlink_to(outside)
    (hosts_dir / "notes").write_text("<node/>")
    (hosts_dir / "notes.xml").symlink_to(hosts_dir / "notes")
    for uri in (
        file_uri(str(outside)),
        file_uri(f"{hosts_dir}/../outside.xml"),
        file_uri(f"{hosts_dir}/link.xml"),  # a symbolic link out of the directory
        file_uri(f"{hosts_dir}/notes.xml"),  # a symbolic link to a file that is not .xml
        "test:///default",
        "test:///etc/passwd",
        f"test://localhost{hosts_dir}/a.xml",
        file_uri(f"{hosts_dir}/notes.txt"),
        file_uri(f"{hosts_dir}/a host#1.xml") + "?command=x",
    ):
        with pytest.raises(UriRefusedError):
            check_uri(uri, policy)


def test_without_a_test_directory_no_file_passes(hosts_dir: Path):
    with pytest.raises(UriRefusedError, match="no test host directory"):
        check_uri(file_uri(f"{hosts_dir}/a host#1.xml"), UriPolicy(transports=frozenset({"test"})))


_SEGMENT_NOISE = st.sampled_from(["", "/.", "/", "/sub/..", "/./sub/.."])


@settings(max_examples=200, deadline=None)
@given(noise=st.lists(_SEGMENT_NOISE, min_size=1, max_size=4), encode=st.booleans())
def test_every_spelling_of_one_test_file_has_one_canonical_form(
    tmp_path_factory: pytest.TempPathFactory, noise: list[str], encode: bool
):
    folder = tmp_path_factory.getbasetemp() / "spellings"
    (folder / "sub").mkdir(parents=True, exist_ok=True)
    (folder / "h.xml").write_text("<node/>")
    policy = policy_for(folder)
    canonical = check_uri(file_uri(os.path.realpath(folder / "h.xml")), policy)
    path = str(folder) + "".join(noise) + "/h.xml"
    spelled = file_uri(path) if not encode else "test://" + urllib.parse.quote(path, safe="")
    if encode:
        spelled = spelled.replace("%2F", "/", 1)  # keep the leading "/" of the path literal
    assert check_uri(spelled, policy) == canonical


# -- properties over arbitrary input ----------------------------------------------------------

_URI_ALPHABET = string.ascii_letters + string.digits + ":/?&=#@[]%.+-_~!$'()*,; \\\n"


@settings(max_examples=500, deadline=None)
@given(
    st.one_of(
        st.text(alphabet=_URI_ALPHABET, max_size=80),
        st.builds(
            lambda scheme, rest: f"{scheme}://{rest}",
            st.sampled_from(["qemu+tls", "QEMU+SSH", "qemu+ssh", "qemu", "test", "qemu+ext"]),
            st.text(alphabet=_URI_ALPHABET, max_size=60),
        ),
    )
)
def test_any_input_is_refused_or_canonical(uri: str):
    """Nothing but UriRefusedError escapes; what passes is its own canonical form and carries
    no parameter outside the policy."""
    try:
        canonical = check_uri(uri, EVERYTHING)
    except UriRefusedError:
        return
    assert check_uri(canonical, EVERYTHING) == canonical
    query = urllib.parse.urlsplit(canonical).query
    assert {name for name, _ in urllib.parse.parse_qsl(query)} <= SAFE_PARAMS
    assert "@" not in canonical or canonical.startswith("qemu+ssh://")


@settings(max_examples=200, deadline=None)
@given(
    name=st.text(alphabet=string.ascii_lowercase + "_", min_size=1, max_size=12).filter(
        lambda n: n not in SAFE_PARAMS
    ),
    value=st.text(alphabet=string.ascii_letters + "/._-", max_size=12),
)
def test_any_other_parameter_is_refused(name: str, value: str):
    with pytest.raises(UriRefusedError):
        check_uri(f"qemu+ssh://node1.example/system?{name}={value}", EVERYTHING)


@settings(max_examples=200, deadline=None)
@given(port=st.integers(min_value=1, max_value=65535))
def test_only_the_configured_port_passes(port: int):
    uri = f"qemu+tls://node1.example:{port}/system"
    if port == 16514:
        assert check_uri(uri, TLS) == "qemu+tls://node1.example/system"
    else:
        with pytest.raises(UriRefusedError, match="not allowed"):
            check_uri(uri, TLS)


@pytest.mark.parametrize(
    "uri",
    [
        "qemu+tls://[fe80::1%25eth0]/system",
        "qemu+tls://[fe80::1%25x;$(id)&a=b,*!]/system",
        "qemu+ssh://[fe80::1%25x;id]/system",
    ],
)
def test_an_ipv6_zone_id_is_refused(uri: str):
    # Free text inside the brackets that libvirt would hand on (to ssh as the host name).
    policy = UriPolicy(transports=frozenset({"qemu+tls", "qemu+ssh"}))
    with pytest.raises(UriRefusedError, match="zone id"):
        check_uri(uri, policy)
