"""Unit tests for audit.note (C2SP signed notes) and audit.signer (the Signer port).

Known-answer vectors:

* golang.org/x/mod/sumdb/note (note.go package doc and note_test.go): the PeterNeumann signer
  and verifier keys, the note they sign, and the EnochRoot co-signature. Ed25519 is
  deterministic (RFC 8032), so signing the same text with the same seed must reproduce the
  published note byte for byte.
* c2sp.org/signed-note: the current example (quasimodo.example, whose public key the spec
  does not publish) and the example of an earlier revision of the spec (example.com/foo with
  its verifier key), which other implementations still test against.
"""

from __future__ import annotations

import base64
import os
import re
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given
from hypothesis import strategies as st

from audit.note import (
    MAX_SIGNATURES,
    InvalidSignatureError,
    MalformedNoteError,
    NoteError,
    NoteVerifier,
    UnverifiedNoteError,
    check_key_name,
    decode_base64,
    key_id,
    open_note,
    parse_note,
    parse_verifier_key,
    sign_note,
    verifier_key,
)
from audit.signer import Ed25519FileSigner, Ed25519Signer, Signer, SignerError

EM = "\u2014"

# golang.org/x/mod/sumdb/note, note.go package documentation and note_test.go.
GO_SIGNER_KEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_VERIFIER_KEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_TEXT = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
)
GO_PETER_SIG = (
    f"{EM} PeterNeumann "
    "x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
)
GO_NOTE = GO_TEXT + "\n" + GO_PETER_SIG
ENOCH_VERIFIER_KEY = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop"
ENOCH_SIG = (
    f"{EM} EnochRoot "
    "rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnWLox33WWd1RvMc+QQ=\n"
)

# c2sp.org/signed-note, example of an earlier revision (key published with it).
SPEC_VERIFIER_KEY = "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k"
SPEC_NOTE = (
    "This is an example message.\n\n"
    f"{EM} example.com/foo "
    "Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6TfXppzi2ONncAlTgK7Ztg1ERYNZXsYjOBH3mFXmRKuwHjG1Yu72IneyaQM=\n"
)
# c2sp.org/signed-note, current example: its text holds an empty line of its own.
QUASIMODO_NOTE = (
    "Ognuno sta solo sul cuor della terra\n"
    "trafitto da un raggio di sole:\n"
    "\n"
    "ed è subito sera.\n"
    "\n"
    f"{EM} quasimodo.example/salvatore "
    "NnugSzTjtVAewIS+Z/iJhUPeFDkO/5QQ2i5ddnGITLlC+EhfLW9oJKONrMouFSQU0xMcXxj99ihAQwaqP3ZekRwNtIc=\n"
)


def go_signer() -> Ed25519Signer:
    """The PeterNeumann signer, from the Go signer key's seed (type byte 0x01, then 32 bytes)."""
    private, key, name, id_hex, encoded = GO_SIGNER_KEY.split("+", 4)
    assert (private, key, id_hex) == ("PRIVATE", "KEY", "c74f20a3")
    typed_seed = base64.b64decode(encoded)
    assert typed_seed[0] == 0x01
    return Ed25519Signer.from_seed(name, typed_seed[1:])


def flip_char(text: str, position: int) -> str:
    """Replace one printable character with another printable character."""
    char = text[position]
    replacement = "A" if char != "A" else "B"
    return text[:position] + replacement + text[position + 1 :]


def signature_line(name: str, key_id_bytes: bytes, signature: bytes) -> str:
    return f"{EM} {name} {base64.b64encode(key_id_bytes + signature).decode()}\n"


# --- known-answer vectors ----------------------------------------------------------------------


def test_go_verifier_key_parses_to_its_name_id_and_key() -> None:
    verifier = parse_verifier_key(GO_VERIFIER_KEY)
    assert verifier.name == "PeterNeumann"
    assert verifier.key_id == bytes.fromhex("c74f20a3")
    assert verifier.public_key == base64.b64decode(GO_VERIFIER_KEY.split("+", 2)[2])[1:]
    assert verifier.verifier_key == GO_VERIFIER_KEY


def test_key_id_is_sha256_of_name_newline_type_and_key() -> None:
    verifier = parse_verifier_key(GO_VERIFIER_KEY)
    assert key_id("PeterNeumann", verifier.public_key).hex() == "c74f20a3"
    assert verifier_key("PeterNeumann", verifier.public_key) == GO_VERIFIER_KEY
    # The same key under another name has another ID: the name is hashed in.
    assert key_id("PeterNeuman", verifier.public_key).hex() != "c74f20a3"


def test_go_signer_key_derives_the_published_verifier_key() -> None:
    signer = go_signer()
    assert signer.key_id.hex() == "c74f20a3"
    assert signer.verifier_key == GO_VERIFIER_KEY
    assert signer.verifier == parse_verifier_key(GO_VERIFIER_KEY)


def test_signing_the_go_text_reproduces_the_published_note() -> None:
    assert sign_note(GO_TEXT, [go_signer()]) == GO_NOTE


def test_opening_the_go_note_returns_its_text_and_signature() -> None:
    text, signatures = open_note(GO_NOTE, [parse_verifier_key(GO_VERIFIER_KEY)])
    assert text == GO_TEXT
    assert [(s.name, s.key_id.hex()) for s in signatures] == [("PeterNeumann", "c74f20a3")]
    assert signatures[0].key == "PeterNeumann+c74f20a3"


def test_go_doubly_signed_note_verifies_both_or_ignores_the_unknown_one() -> None:
    note = GO_NOTE + ENOCH_SIG
    peter, enoch = parse_verifier_key(GO_VERIFIER_KEY), parse_verifier_key(ENOCH_VERIFIER_KEY)
    _, both = open_note(note, [peter, enoch])
    assert [s.key for s in both] == ["PeterNeumann+c74f20a3", "EnochRoot+af0cfe78"]
    _, only_peter = open_note(note, [peter])
    assert [s.key for s in only_peter] == ["PeterNeumann+c74f20a3"]
    _, only_enoch = open_note(note, [enoch])
    assert [s.key for s in only_enoch] == ["EnochRoot+af0cfe78"]


def test_spec_example_note_verifies_under_its_key() -> None:
    verifier = parse_verifier_key(SPEC_VERIFIER_KEY)
    assert verifier.key_id.hex() == "530d903a"
    text, signatures = open_note(SPEC_NOTE, [verifier])
    assert text == "This is an example message.\n"
    assert [s.name for s in signatures] == ["example.com/foo"]


def test_current_spec_example_splits_at_the_last_blank_line() -> None:
    text, signatures = parse_note(QUASIMODO_NOTE)
    assert text == (
        "Ognuno sta solo sul cuor della terra\ntrafitto da un raggio di sole:\n\n"
        "ed è subito sera.\n"
    )
    assert [s.name for s in signatures] == ["quasimodo.example/salvatore"]
    with pytest.raises(UnverifiedNoteError, match=re.escape("found quasimodo.example/salvatore")):
        open_note(QUASIMODO_NOTE, [parse_verifier_key(GO_VERIFIER_KEY)])


# --- verifier keys -----------------------------------------------------------------------------


def test_every_truncation_of_the_go_verifier_key_is_rejected() -> None:
    # As golang.org/x/mod/sumdb/note's TestNewVerifier: every proper substring fails.
    for start in range(len(GO_VERIFIER_KEY) + 1):
        for end in range(start + 1, len(GO_VERIFIER_KEY) + 1):
            if (start, end) == (0, len(GO_VERIFIER_KEY)):
                continue
            with pytest.raises(NoteError):
                parse_verifier_key(GO_VERIFIER_KEY[start:end])


@pytest.mark.parametrize("position", range(len(GO_VERIFIER_KEY)))
def test_every_one_character_change_of_the_go_verifier_key_is_rejected(position: int) -> None:
    mangled = (
        GO_VERIFIER_KEY[:position]
        + chr(ord(GO_VERIFIER_KEY[position]) + 1)
        + GO_VERIFIER_KEY[position + 1 :]
    )
    with pytest.raises(NoteError):
        parse_verifier_key(mangled)


def test_verifier_key_with_wrong_key_id_names_expected_and_found() -> None:
    with pytest.raises(NoteError, match=r"says key id c74f20a4, but .* give c74f20a3"):
        parse_verifier_key(GO_VERIFIER_KEY.replace("c74f20a3", "c74f20a4"))


def test_verifier_key_with_unknown_signature_type_is_rejected() -> None:
    # From note_test.go: algorithm byte changed, key hash adjusted to match.
    with pytest.raises(NoteError, match=r"signature type 0x65, expected 0x01"):
        parse_verifier_key("PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW")


def test_verifier_key_with_wrong_key_length_is_rejected() -> None:
    # From note_test.go; its base64 is not canonical, which we refuse first.
    with pytest.raises(NoteError, match="not canonical base64"):
        parse_verifier_key(
            "PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY=="
        )
    # A canonical 33-byte key whose key ID is adjusted to match.
    long_key = parse_verifier_key(GO_VERIFIER_KEY).public_key + b"\x00"
    text = (
        f"PeterNeumann+{key_id('PeterNeumann', long_key).hex()}+"
        + base64.b64encode(b"\x01" + long_key).decode()
    )
    with pytest.raises(NoteError, match="33-byte public key, expected 32"):
        parse_verifier_key(text)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("PeterNeumann", "must look like"),
        ("PeterNeumann+c74f20a3", "must look like"),
        ("PeterNeumann+c74f20+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "8 hex digits"),
        ("+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "must not be empty"),
        ("Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "spaces"),
        ("PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10T", "base64"),
        ("PeterNeumann+c74f20a3+", "empty public key"),
    ],
)
def test_malformed_verifier_keys_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(NoteError, match=re.escape(message)):
        parse_verifier_key(text)


def test_verifier_key_accepts_upper_case_hex_and_normalises_it() -> None:
    verifier = parse_verifier_key(GO_VERIFIER_KEY.replace("c74f20a3", "C74F20A3"))
    assert verifier.verifier_key == GO_VERIFIER_KEY


def test_note_verifier_refuses_an_inconsistent_key_id() -> None:
    peter = parse_verifier_key(GO_VERIFIER_KEY)
    with pytest.raises(NoteError, match="is 00000000, but the name and public key give c74f20a3"):
        NoteVerifier(peter.name, bytes(4), peter.public_key)
    with pytest.raises(NoteError, match="must be 32 bytes, got 31"):
        NoteVerifier.from_public_key("PeterNeumann", peter.public_key[:31])


@given(
    name=st.from_regex(r"[a-z0-9./-]{1,40}", fullmatch=True),
    public_key=st.binary(min_size=32, max_size=32),
)
def test_verifier_key_round_trips(name: str, public_key: bytes) -> None:
    text = verifier_key(name, public_key)
    parsed = parse_verifier_key(text)
    assert (parsed.name, parsed.public_key, parsed.key_id) == (
        name,
        public_key,
        key_id(name, public_key),
    )
    assert text.startswith(f"{name}+{parsed.key_id.hex()}+")


# --- key names ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["", "a b", "a+b", "a\tb", "a\nb", "a\u00a0b", "a\u2003b", "a\u3000b", "a\x00b", "a\udcffb"],
)
def test_invalid_key_names_are_rejected(name: str) -> None:
    with pytest.raises(NoteError, match="key name"):
        check_key_name(name)


@pytest.mark.parametrize("name", ["example.com/log", "go.sum", "sovereign.example/audit-1", "λ/ü"])
def test_valid_key_names_are_accepted(name: str) -> None:
    check_key_name(name)
    assert Ed25519Signer.generate(name).name == name


# --- base64 ------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["YQ", "YQ=", "YR==", "Y Q==", "YQ==\n", "-_8=", "é"])
def test_non_canonical_base64_is_rejected(text: str) -> None:
    with pytest.raises(ValueError, match="base64"):
        decode_base64(text)


def test_canonical_base64_decodes() -> None:
    assert decode_base64("YQ==") == b"a"
    assert decode_base64("") == b""


# --- tampering ---------------------------------------------------------------------------------


def test_every_change_to_the_text_invalidates_the_signature() -> None:
    verifiers = [parse_verifier_key(GO_VERIFIER_KEY)]
    for position, char in enumerate(GO_TEXT):
        if char == "\n":
            continue
        tampered = flip_char(GO_TEXT, position) + "\n" + GO_PETER_SIG
        with pytest.raises(InvalidSignatureError, match="PeterNeumann\\+c74f20a3"):
            open_note(tampered, verifiers)


def test_added_or_removed_text_invalidates_the_signature() -> None:
    verifiers = [parse_verifier_key(GO_VERIFIER_KEY)]
    for text in (GO_TEXT + "more\n", GO_TEXT.split("\n", 1)[1], "\n" + GO_TEXT):
        with pytest.raises(InvalidSignatureError):
            open_note(text + "\n" + GO_PETER_SIG, verifiers)


def test_every_change_to_the_signature_bytes_is_rejected() -> None:
    signer = go_signer()
    verifiers = [signer.verifier]
    signature = signer.sign(GO_TEXT.encode())
    for position in range(len(signature)):
        for bit in (0x01, 0x80):
            tampered = bytearray(signature)
            tampered[position] ^= bit
            line = signature_line(signer.name, signer.key_id, bytes(tampered))
            with pytest.raises(InvalidSignatureError):
                open_note(GO_TEXT + "\n" + line, verifiers)


def test_truncated_or_extended_signature_from_known_key_is_rejected() -> None:
    signer = go_signer()
    signature = signer.sign(GO_TEXT.encode())
    for bad in (signature[:63], signature + b"\x00", b"\x00"):
        line = signature_line(signer.name, signer.key_id, bad)
        with pytest.raises(InvalidSignatureError):
            open_note(GO_TEXT + "\n" + line, [signer.verifier])


def test_changed_key_id_or_name_makes_the_signature_unknown() -> None:
    signer = go_signer()
    signature = signer.sign(GO_TEXT.encode())
    for name, id_bytes in (
        (signer.name, bytes([signer.key_id[0] ^ 1]) + signer.key_id[1:]),
        ("PeterNeuman", signer.key_id),
    ):
        note = GO_TEXT + "\n" + signature_line(name, id_bytes, signature)
        with pytest.raises(UnverifiedNoteError, match="expected one of PeterNeumann\\+c74f20a3"):
            open_note(note, [signer.verifier])


def test_signature_by_another_key_is_not_accepted() -> None:
    other = Ed25519Signer.generate("PeterNeumann")
    note = sign_note(GO_TEXT, [other])
    with pytest.raises(UnverifiedNoteError) as excinfo:
        open_note(note, [parse_verifier_key(GO_VERIFIER_KEY)])
    assert f"found PeterNeumann+{other.key_id.hex()}" in str(excinfo.value)


def test_one_failing_known_signature_rejects_the_note_even_if_another_verifies() -> None:
    first, second = Ed25519Signer.generate("log.example"), Ed25519Signer.generate("witness")
    note = sign_note(GO_TEXT, [first, second])
    _, signatures = open_note(note, [first.verifier, second.verifier])
    assert len(signatures) == 2
    bad = signature_line(second.name, second.key_id, bytes(64))
    tampered = note.replace(note.splitlines(keepends=True)[-1], bad)
    assert tampered != note
    with pytest.raises(InvalidSignatureError, match="witness"):
        open_note(tampered, [first.verifier, second.verifier])
    # Without the witness key the bad line is from an unknown key and is ignored.
    text, signatures = open_note(tampered, [first.verifier])
    assert text == GO_TEXT
    assert [s.name for s in signatures] == ["log.example"]


def test_repeated_signature_lines_are_reported_once() -> None:
    peter = parse_verifier_key(GO_VERIFIER_KEY)
    _, signatures = open_note(GO_NOTE + GO_PETER_SIG + ENOCH_SIG + ENOCH_SIG, [peter])
    assert [s.key for s in signatures] == ["PeterNeumann+c74f20a3"]


def test_no_verifiers_gives_an_unverified_note_error_listing_what_was_found() -> None:
    with pytest.raises(
        UnverifiedNoteError,
        match=r"expected one of \(no verifier keys given\); found PeterNeumann\+c74f20a3, "
        r"EnochRoot\+af0cfe78",
    ):
        open_note(GO_NOTE + ENOCH_SIG, [])


def test_two_different_keys_claiming_the_same_name_and_id_are_refused() -> None:
    peter = parse_verifier_key(GO_VERIFIER_KEY)
    impostor = Ed25519Signer.generate("PeterNeumann").verifier
    # A key ID is only 32 bits: an attacker can grind a colliding key. Simulate the result.
    object.__setattr__(impostor, "key_id", peter.key_id)
    with pytest.raises(NoteError, match="share the name and id PeterNeumann\\+c74f20a3"):
        open_note(GO_NOTE, [peter, impostor])
    # The same key listed twice is not ambiguous.
    assert open_note(GO_NOTE, [peter, parse_verifier_key(GO_VERIFIER_KEY)])[0] == GO_TEXT


# --- malformed notes ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("note", "message"),
    [
        # The bad messages of golang.org/x/mod/sumdb/note's TestOpen.
        (GO_TEXT, "no blank line"),
        (GO_TEXT + "\n", "no signature lines"),
        (GO_TEXT + "\n" + GO_PETER_SIG[:-1], "must end with a newline"),
        ("\x01" + GO_NOTE, "U+0001 at offset 0"),
        ("\udcff" + GO_NOTE, "U+DCFF at offset 0"),
        (GO_TEXT + "\n" + GO_PETER_SIG.replace("PeterNeumann", "Bad Name"), "line 1"),
        (GO_NOTE + "Unexpected line.\n", "signature line 2 must start with an em dash"),
        # Our own.
        (GO_NOTE.replace("\n", "\r\n"), "U+000D"),
        (GO_TEXT + "\n" + GO_PETER_SIG.replace(EM, "--"), "em dash (U+2014)"),
        (GO_TEXT + "\n" + f"{EM} PeterNeumann\n", "'— <key name> <base64>'"),
        (GO_TEXT + "\n" + f"{EM} PeterNeumann \n", "'— <key name> <base64>'"),
        (GO_TEXT + "\n" + f"{EM} PeterNeumann x08go/ZJ!\n", "not standard base64"),
        (GO_TEXT + "\n" + f"{EM} PeterNeumann x08go/Z=\n", "not canonical base64"),
        (GO_TEXT + "\n" + f"{EM} PeterNeumann x08gow==\n", "holds 4 bytes"),
        (GO_TEXT + "\n" + f"{EM} a+b x08go/ZJ\n", "must not contain '+'"),
        # A trailing blank line moves the split to the very end: no signatures follow it.
        (GO_TEXT + "\n" + GO_PETER_SIG + "\n", "no signature lines after the blank line"),
    ],
)
def test_malformed_notes_are_rejected_with_a_clear_message(note: str, message: str) -> None:
    with pytest.raises(MalformedNoteError, match=re.escape(message)):
        open_note(note, [parse_verifier_key(GO_VERIFIER_KEY)])


def test_signature_count_limit() -> None:
    peter = parse_verifier_key(GO_VERIFIER_KEY)
    # The spec requires accepting at least 16; we accept up to the Go limit of 100.
    for count in (16, MAX_SIGNATURES):
        assert open_note(GO_TEXT + "\n" + GO_PETER_SIG * count, [peter])[0] == GO_TEXT
    with pytest.raises(MalformedNoteError, match="101 signatures, more than the limit of 100"):
        open_note(GO_TEXT + "\n" + GO_PETER_SIG * (MAX_SIGNATURES + 1), [peter])


# --- signing -----------------------------------------------------------------------------------


@given(
    lines=st.lists(
        st.text(
            alphabet=st.characters(
                exclude_categories=["Cs"], min_codepoint=0x20, exclude_characters="\x7f"
            ),
            max_size=30,
        ),
        min_size=1,
        max_size=6,
    )
)
def test_sign_then_open_round_trips_any_text(lines: list[str]) -> None:
    signer = go_signer()
    text = "".join(f"{line}\n" for line in lines)
    note = sign_note(text, [signer])
    assert note.startswith(text + "\n" + EM + " PeterNeumann ")
    opened, signatures = open_note(note, [signer.verifier])
    assert opened == text
    assert [s.key for s in signatures] == [signer.verifier.key]


def test_text_with_blank_lines_and_trailing_blank_line_round_trips() -> None:
    signer = Ed25519Signer.generate("log.example")
    for text in ("a\n\nb\n", "a\n\n", "\n", "\n\n\n"):
        assert open_note(sign_note(text, [signer]), [signer.verifier])[0] == text


def test_several_signers_each_add_a_line_in_order() -> None:
    signers = [Ed25519Signer.generate(f"signer{i}.example") for i in range(3)]
    note = sign_note(GO_TEXT, signers)
    assert note.count(f"\n{EM} ") == 3
    _, signatures = open_note(note, [s.verifier for s in signers])
    assert [s.name for s in signatures] == ["signer0.example", "signer1.example", "signer2.example"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("no newline", "must end with a newline"),
        ("", "must end with a newline"),
        ("tab\there\n", "U+0009"),
        ("cr\r\n", "U+000D"),
        ("lone \udc80 surrogate\n", "U+DC80"),
    ],
)
def test_sign_note_rejects_invalid_text(text: str, message: str) -> None:
    with pytest.raises(MalformedNoteError, match=re.escape(message)):
        sign_note(text, [go_signer()])


def test_sign_note_needs_a_signer_and_refuses_duplicates() -> None:
    with pytest.raises(NoteError, match="at least one signer"):
        sign_note(GO_TEXT, [])
    with pytest.raises(NoteError, match="PeterNeumann\\+c74f20a3 is given more than once"):
        sign_note(GO_TEXT, [go_signer(), go_signer()])


class _LyingSigner:
    """A signer whose claimed key ID or signatures do not match its public key."""

    def __init__(self, real: Ed25519Signer, *, key_id: bytes | None = None, garble: bool = False):
        self.name = real.name
        self.public_key = real.public_key
        self.key_id = real.key_id if key_id is None else key_id
        self._real = real
        self._garble = garble

    def sign(self, message: bytes) -> bytes:
        signature = self._real.sign(message)
        return bytes(64) if self._garble else signature


def test_sign_note_checks_the_signer_key_id_and_its_signature() -> None:
    real = go_signer()
    assert isinstance(_LyingSigner(real), Signer)
    assert sign_note(GO_TEXT, [_LyingSigner(real)]) == GO_NOTE
    with pytest.raises(NoteError, match=r"claims key id 00000000, but .* give c74f20a3"):
        sign_note(GO_TEXT, [_LyingSigner(real, key_id=bytes(4))])
    with pytest.raises(InvalidSignatureError, match="does not verify under its own public key"):
        sign_note(GO_TEXT, [_LyingSigner(real, garble=True)])


# --- signers -----------------------------------------------------------------------------------


def test_in_memory_signer_satisfies_the_port_and_hides_its_key() -> None:
    signer = Ed25519Signer.generate("log.example")
    assert isinstance(signer, Signer)
    assert len(signer.public_key) == 32
    assert len(signer.key_id) == 4
    assert len(signer.sign(b"x")) == 64
    assert repr(signer) == f"Ed25519Signer(name='log.example', key_id={signer.key_id.hex()})"


def test_signer_refuses_bad_names_and_seeds() -> None:
    with pytest.raises(NoteError, match="must not contain spaces"):
        Ed25519Signer.generate("log example")
    with pytest.raises(SignerError, match="must be 32 bytes, got 31"):
        Ed25519Signer.from_seed("log.example", bytes(31))


def test_file_signer_creates_a_0600_pem_key_and_loads_it_back(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.key"
    old_umask = os.umask(0o022)
    try:
        created = Ed25519FileSigner("log.example", path, create=True)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    pem = path.read_bytes()
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----\n")
    loaded = Ed25519FileSigner("log.example", path)
    assert loaded.public_key == created.public_key
    assert loaded.verifier_key == created.verifier_key
    note = sign_note(GO_TEXT, [loaded])
    assert open_note(note, [parse_verifier_key(created.verifier_key)])[0] == GO_TEXT
    # The repr names the file, never the key.
    seed = serialization.load_pem_private_key(pem, None).private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    for secret in (pem.decode(), seed.hex(), base64.b64encode(seed).decode()):
        assert secret not in repr(loaded)
    assert str(path) in repr(loaded)


def test_file_signer_refuses_to_overwrite_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.key"
    Ed25519FileSigner("log.example", path, create=True)
    before = path.read_bytes()
    with pytest.raises(SignerError, match="refusing to overwrite existing key file"):
        Ed25519FileSigner("log.example", path, create=True)
    assert path.read_bytes() == before


def test_file_signer_refuses_a_key_file_others_can_read(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.key"
    Ed25519FileSigner("log.example", path, create=True)
    path.chmod(0o640)
    with pytest.raises(SignerError, match="mode 0640; group and others must have no access"):
        Ed25519FileSigner("log.example", path)


def test_file_signer_reports_missing_garbage_and_non_ed25519_files(tmp_path: Path) -> None:
    with pytest.raises(SignerError, match="cannot read key file"):
        Ed25519FileSigner("log.example", tmp_path / "missing.key")
    garbage = tmp_path / "garbage.key"
    garbage.write_bytes(b"not a key")
    garbage.chmod(0o600)
    with pytest.raises(SignerError, match="not an unencrypted PEM PKCS#8 private key"):
        Ed25519FileSigner("log.example", garbage)
    ec_key = tmp_path / "ec.key"
    ec_key.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    ec_key.chmod(0o600)
    with pytest.raises(SignerError, match=r"holds a key of type \w+, expected Ed25519"):
        Ed25519FileSigner("log.example", ec_key)


def test_file_signer_cannot_create_in_a_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(SignerError, match="cannot create key file"):
        Ed25519FileSigner("log.example", tmp_path / "nope" / "checkpoint.key", create=True)
