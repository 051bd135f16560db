"""Pure parts of enclaves.guest and enclaves.resources: XML they write and read, and refusals.

No libvirt here: every refusal below happens before a connection is opened (the host URIs
point nowhere), and the XML helpers are plain functions. The calls against libvirt itself are
contract tests (``tests/contract/test_guest_lifecycle.py``, ``test_real_guest.py``).
"""

from __future__ import annotations

import uuid

import pytest

from enclaves import config
from enclaves.designer import design
from enclaves.errors import HypervisorUnavailableError
from enclaves.guest import Guests, _sovereign_metadata
from enclaves.host import LibvirtHost
from enclaves.resources import Networks, Secrets, Volumes, _secret_xml
from tests.unit.enclaves.test_designer import classified_two_gpus

#: Never opened: a test that reaches libvirt would fail on it.
NOWHERE = LibvirtHost("test:///nonexistent/sovereign-unit-test.xml")
SECRET_UUID = uuid.UUID("5ec7e700-0000-4000-8000-0000000000aa")


def test_metadata_of_a_designed_domain_names_the_enclave_and_label() -> None:
    spec = classified_two_gpus()

    assert _sovereign_metadata(design(spec).to_string()) == (spec.uuid, spec.label)


@pytest.mark.parametrize(
    "xml",
    [
        "<domain type='kvm'><name>x</name></domain>",
        "<domain type='kvm'><metadata/></domain>",
        "<domain type='kvm'><metadata><enclave><id>0f0f0f0f-0000-4000-8000-00000000f00d</id>"
        "</enclave></metadata></domain>",  # right element name, no (or another) namespace
        f"<domain type='kvm'><metadata><enclave xmlns='{config.SOVEREIGN_NS}'><id>nope</id>"
        "</enclave></metadata></domain>",
        f"<domain type='kvm'><metadata><enclave xmlns='{config.SOVEREIGN_NS}'/></metadata>"
        "</domain>",
    ],
    ids=["no-metadata", "empty-metadata", "no-namespace", "bad-id", "no-id"],
)
def test_a_domain_without_readable_sovereign_metadata_is_not_ours(xml: str) -> None:
    assert _sovereign_metadata(xml) == (None, None)


def test_secret_xml_is_persistent_private_and_names_its_usage() -> None:
    volume = config.from_string(_secret_xml(SECRET_UUID, "volume", "/pool/enclave-1"))
    vtpm = config.from_string(_secret_xml(SECRET_UUID, "vtpm", "sovereign-vtpm-1"))

    for secret in (volume, vtpm):
        assert (secret.get("ephemeral"), secret.get("private")) == ("no", "yes")
        assert secret.findtext("uuid") == str(SECRET_UUID)
    assert volume.findtext("usage[@type='volume']/volume") == "/pool/enclave-1"
    assert vtpm.findtext("usage[@type='vtpm']/name") == "sovereign-vtpm-1"


def test_volume_xml_is_qcow2_v3_root_only_and_luks_when_given_a_secret() -> None:
    volumes = Volumes(NOWHERE, "pool", "/srv/pool")

    luks = config.from_string(volumes._volume_xml("enclave-1", 2, SECRET_UUID))
    plain = config.from_string(volumes._volume_xml("scratch", 1, None))

    assert luks.findtext("name") == "enclave-1"
    assert luks.findtext("capacity[@unit='bytes']") == str(2 * 1024**3)
    assert luks.find("target/format[@type='qcow2']") is not None
    assert luks.findtext("target/compat") == "1.1"
    assert luks.findtext("target/permissions/mode") == "0600"
    secret = luks.find("target/encryption[@format='luks']/secret[@type='passphrase']")
    assert secret is not None
    assert secret.get("uuid") == str(SECRET_UUID)
    assert plain.find("target/encryption") is None


@pytest.mark.parametrize(
    ("usage", "usage_id", "value", "match"),
    [
        ("disk", "/pool/x", b"k", "usage must be one of"),
        ("volume", "", b"k", "usage id"),
        ("volume", "/pool/x", b"", "non-empty bytes"),
        ("vtpm", "name", "text, not bytes", "non-empty bytes"),
        ("volume", "/pool/x", b"\xff\xfe-not-utf-8", "valid UTF-8"),
    ],
)
def test_secret_define_refuses_bad_input_before_talking_to_libvirt(
    usage: str, usage_id: str, value: bytes, match: str
) -> None:
    with pytest.raises(ValueError, match=match) as excinfo:
        Secrets(NOWHERE).define(SECRET_UUID, usage, usage_id, value)  # type: ignore[arg-type]

    assert repr(value) not in str(excinfo.value)


def test_a_vtpm_key_may_be_any_bytes() -> None:
    # Only LUKS passphrases go through QEMU's UTF-8 reader; this one gets as far as opening
    # the host (which does not exist, or libvirt-python is missing), so it passed validation.
    with pytest.raises(HypervisorUnavailableError) as excinfo:
        Secrets(NOWHERE).define(SECRET_UUID, "vtpm", "sovereign-vtpm-1", b"\xff" * 32)

    assert "\\xff" not in str(excinfo.value)


@pytest.mark.parametrize("capacity", [0, -1, True, 1.5])
def test_volume_capacity_must_be_a_positive_integer(capacity: object) -> None:
    with pytest.raises(ValueError, match="capacity_gib"):
        Volumes(NOWHERE, "pool", "/srv/pool").create("x", capacity, luks_secret_uuid=None)  # type: ignore[arg-type]


@pytest.mark.parametrize(("pool", "path"), [("", "/srv/pool"), ("a/b", "/srv"), ("p", "rel")])
def test_volumes_need_a_plain_pool_name_and_an_absolute_path(pool: str, path: str) -> None:
    with pytest.raises(ValueError, match="pool"):
        Volumes(NOWHERE, pool, path)


def test_volume_paths_are_normalised() -> None:
    assert "'/srv/pool'" in repr(Volumes(NOWHERE, "pool", "/srv//pool/"))


def test_stop_refuses_a_negative_timeout_and_networks_need_a_name() -> None:
    with pytest.raises(ValueError, match="timeout_s"):
        Guests(NOWHERE).stop(SECRET_UUID, timeout_s=-0.5)
    with pytest.raises(ValueError, match="name"):
        Networks(NOWHERE).ensure_isolated("")
