"""C2SP signed notes with Ed25519 signatures: verifier keys, signing and opening.

Owns the text format of c2sp.org/signed-note (sections "Format" and "Signatures"): key names,
key IDs, verifier key strings (``<name>+<key id hex>+<base64(type || public key)>``), the
signature lines (``— <name> <base64(key id || signature)>``) and the rules a verifier follows
(unknown keys are ignored, a failing known key rejects the whole note, at least one known key
must verify). Only signature type 0x01, Ed25519 per RFC 8032 (section "Ed25519 signatures"),
is supported: the spec asks implementations to support only the type their design needs.

Signing goes through the :class:`audit.signer.Signer` port so the private key can live in a
file, in memory for tests, or in Vault transit. This module never sees private keys and must
not log signatures' key material; it imports neither ``sovereign`` nor Flask.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

if TYPE_CHECKING:
    from audit.signer import Signer

#: Signature type identifier byte for Ed25519 (c2sp.org/signed-note, "Signature types").
SIGNATURE_TYPE_ED25519 = 0x01
#: Key IDs are the first four bytes of a SHA-256 hash, stored big-endian.
KEY_ID_SIZE = 4
#: RFC 8032 sizes.
ED25519_PUBLIC_KEY_SIZE = 32
ED25519_SIGNATURE_SIZE = 64
#: The spec says verifiers SHOULD cap signatures and MUST accept at least 16; 100 is the cap
#: of golang.org/x/mod/sumdb/note, so any note Go accepts we accept too.
MAX_SIGNATURES = 100
#: Every signature line starts with an em dash (U+2014) and a space.
SIGNATURE_PREFIX = "\u2014 "

# Notes MUST be valid UTF-8 without ASCII control characters other than newline; a Python str
# can only fail to be UTF-8 by holding lone surrogates, so those are refused alongside.
_FORBIDDEN = re.compile("[\x00-\x09\x0b-\x1f\ud800-\udfff]")
_KEY_ID_HEX = re.compile(r"[0-9a-fA-F]{8}")


class NoteError(ValueError):
    """A signed note, key name or verifier key is malformed or does not verify."""


class MalformedNoteError(NoteError):
    """The note text or a signature line breaks the signed-note syntax."""


class UnverifiedNoteError(NoteError):
    """No signature on the note comes from a known key."""


class InvalidSignatureError(NoteError):
    """A signature from a known key does not verify, so the whole note is rejected."""


@dataclass(frozen=True)
class NoteSignature:
    """One signature line: the key name, the 4-byte key ID and the raw signature bytes."""

    name: str
    key_id: bytes
    signature: bytes

    @property
    def key(self) -> str:
        """The ``name+keyid`` label used in messages."""
        return f"{self.name}+{self.key_id.hex()}"


@dataclass(frozen=True)
class NoteVerifier:
    """A trusted Ed25519 note key: name, key ID and raw 32-byte public key."""

    name: str
    key_id: bytes
    public_key: bytes

    def __post_init__(self) -> None:
        check_key_name(self.name)
        if len(self.public_key) != ED25519_PUBLIC_KEY_SIZE:
            raise NoteError(
                f"Ed25519 public key for {self.name!r} must be {ED25519_PUBLIC_KEY_SIZE} bytes, "
                f"got {len(self.public_key)}"
            )
        expected = key_id(self.name, self.public_key)
        if self.key_id != expected:
            raise NoteError(
                f"key id for {self.name!r} is {self.key_id.hex()}, but the name and public key "
                f"give {expected.hex()}"
            )

    @classmethod
    def from_public_key(cls, name: str, public_key: bytes) -> NoteVerifier:
        """Build the verifier for ``name`` and a raw public key, computing its key ID.

        :raises NoteError: if the name is invalid or the key is not 32 bytes.
        """
        # The name is checked before hashing it (a lone surrogate cannot be UTF-8 encoded);
        # __post_init__ checks the key size, and the key ID is right by construction.
        check_key_name(name)
        return cls(name, key_id(name, public_key), bytes(public_key))

    @property
    def key(self) -> str:
        """The ``name+keyid`` label used in messages."""
        return f"{self.name}+{self.key_id.hex()}"

    @property
    def verifier_key(self) -> str:
        """The verifier key string that :func:`parse_verifier_key` reads back."""
        return verifier_key(self.name, self.public_key)

    def verify(self, message: bytes, signature: bytes) -> bool:
        """Whether ``signature`` is a valid RFC 8032 Ed25519 signature of ``message``."""
        if len(signature) != ED25519_SIGNATURE_SIZE:
            return False
        try:
            Ed25519PublicKey.from_public_bytes(self.public_key).verify(signature, message)
        except InvalidSignature:
            return False
        return True


def decode_base64(text: str) -> bytes:
    """Decode canonical standard base64 (RFC 4648 section 4), refusing any other spelling.

    :raises ValueError: if ``text`` is not canonical standard base64.
    """
    # Canonical means re-encoding gives the same text back: no missing or extra padding, no
    # non-zero trailing bits, no whitespace or URL-safe alphabet. One value, one spelling.
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error) as exc:
        raise ValueError("not standard base64 (RFC 4648 section 4)") from exc
    if base64.b64encode(raw).decode("ascii") != text:
        raise ValueError("not canonical base64 (wrong padding or non-zero trailing bits)")
    return raw


def encode_base64(data: bytes) -> str:
    """Encode ``data`` as standard padded base64 (RFC 4648 section 4)."""
    return base64.b64encode(data).decode("ascii")


def check_key_name(name: str) -> None:
    """Check a key name is non-empty, without Unicode spaces, '+' or control characters.

    :raises NoteError: naming the offending character when the name is invalid.
    """
    if not name:
        raise NoteError("key name must not be empty")
    for position, char in enumerate(name):
        if char == "+":
            raise NoteError(f"key name {name!r} must not contain '+' (position {position})")
        if char.isspace():
            raise NoteError(
                f"key name {name!r} must not contain spaces (U+{ord(char):04X} at {position})"
            )
        if _FORBIDDEN.match(char):
            raise NoteError(
                f"key name {name!r} must not contain control characters or invalid UTF-8 "
                f"(U+{ord(char):04X} at {position})"
            )


def key_id(name: str, public_key: bytes) -> bytes:
    """The 4-byte key ID: SHA-256(name || 0x0A || 0x01 || 32-byte Ed25519 public key)[:4]."""
    digest = hashlib.sha256(
        name.encode("utf-8") + b"\n" + bytes([SIGNATURE_TYPE_ED25519]) + public_key
    ).digest()
    return digest[:KEY_ID_SIZE]


def verifier_key(name: str, public_key: bytes) -> str:
    """The verifier key string ``<name>+<key id hex>+<base64(0x01 || public key)>``.

    :raises NoteError: if the name is invalid or the key is not 32 bytes.
    """
    verifier = NoteVerifier.from_public_key(name, public_key)
    encoded = encode_base64(bytes([SIGNATURE_TYPE_ED25519]) + verifier.public_key)
    return f"{name}+{verifier.key_id.hex()}+{encoded}"


def parse_verifier_key(text: str) -> NoteVerifier:
    """Parse a verifier key string and check its key ID against its name and public key.

    :raises NoteError: saying which part is malformed, or the expected and found key IDs.
    """
    # The name cannot contain '+', so the first two '+' delimit it and the key ID; the base64
    # may itself contain '+'.
    parts = text.split("+", 2)
    if len(parts) != 3:
        raise NoteError(
            f"verifier key must look like <name>+<8 hex digits>+<base64 key>, got {text!r}"
        )
    name, id_hex, key_b64 = parts
    check_key_name(name)
    if not _KEY_ID_HEX.fullmatch(id_hex):
        raise NoteError(f"verifier key id must be 8 hex digits, got {id_hex!r}")
    try:
        typed_key = decode_base64(key_b64)
    except ValueError as exc:
        raise NoteError(f"verifier key for {name!r}: public key is {exc}") from exc
    if not typed_key:
        raise NoteError(f"verifier key for {name!r} has an empty public key")
    if typed_key[0] != SIGNATURE_TYPE_ED25519:
        raise NoteError(
            f"verifier key for {name!r} has signature type 0x{typed_key[0]:02x}, "
            f"expected 0x{SIGNATURE_TYPE_ED25519:02x} (Ed25519)"
        )
    public_key = typed_key[1:]
    if len(public_key) != ED25519_PUBLIC_KEY_SIZE:
        raise NoteError(
            f"verifier key for {name!r} has a {len(public_key)}-byte public key, "
            f"expected {ED25519_PUBLIC_KEY_SIZE}"
        )
    found = bytes.fromhex(id_hex)
    expected = key_id(name, public_key)
    if found != expected:
        raise NoteError(
            f"verifier key for {name!r} says key id {id_hex.lower()}, but its name and public "
            f"key give {expected.hex()}"
        )
    return NoteVerifier(name, expected, public_key)


def _check_text(text: str, what: str) -> None:
    """Check ``text`` holds no control character other than newline and no lone surrogate.

    :raises MalformedNoteError: naming the first offending character and its offset.
    """
    bad = _FORBIDDEN.search(text)
    if bad is not None:
        raise MalformedNoteError(
            f"{what} contains U+{ord(bad.group()):04X} at offset {bad.start()}: signed notes "
            "must be valid UTF-8 with no control characters other than newline"
        )


def sign_note(text: str, signers: Sequence[Signer]) -> str:
    """Sign ``text`` with each signer and return the signed note.

    :raises NoteError: if the text or a signer is invalid, or a signature does not verify.
    """
    # Each signer's key ID is checked against its name and public key, and each signature is
    # verified before it is written, so a misconfigured signer (say, the wrong Vault key)
    # fails here rather than producing notes nobody can verify.
    if not text.endswith("\n"):
        raise MalformedNoteError("note text must end with a newline")
    _check_text(text, "note text")
    if not signers:
        raise NoteError("a signed note needs at least one signer")
    message = text.encode("utf-8")
    seen: set[tuple[str, bytes]] = set()
    lines: list[str] = []
    for signer in signers:
        verifier = NoteVerifier.from_public_key(signer.name, signer.public_key)
        if signer.key_id != verifier.key_id:
            raise NoteError(
                f"signer {signer.name!r} claims key id {signer.key_id.hex()}, but its name "
                f"and public key give {verifier.key_id.hex()}"
            )
        if (signer.name, signer.key_id) in seen:
            raise NoteError(f"signer {verifier.key} is given more than once")
        seen.add((signer.name, signer.key_id))
        signature = signer.sign(message)
        if not verifier.verify(message, signature):
            raise InvalidSignatureError(
                f"signer {verifier.key} returned a signature that does not verify under its "
                "own public key"
            )
        lines.append(
            f"{SIGNATURE_PREFIX}{signer.name} {encode_base64(signer.key_id + signature)}\n"
        )
    return text + "\n" + "".join(lines)


def parse_note(note: str) -> tuple[str, list[NoteSignature]]:
    """Split a signed note into text and signature lines, unverified (use :func:`open_note`).

    :raises MalformedNoteError: saying which part of the note breaks the syntax.
    """
    _check_text(note, "signed note")
    # The text is separated from the signatures by the last empty line; it keeps its final
    # newline but not the separator.
    split = note.rfind("\n\n")
    if split < 0:
        raise MalformedNoteError(
            "signed note has no blank line separating the text from the signatures"
        )
    text, block = note[: split + 1], note[split + 2 :]
    if not block:
        raise MalformedNoteError("signed note has no signature lines after the blank line")
    if not block.endswith("\n"):
        raise MalformedNoteError("signed note must end with a newline after the last signature")
    raw_lines = block[:-1].split("\n")
    if len(raw_lines) > MAX_SIGNATURES:
        raise MalformedNoteError(
            f"signed note has {len(raw_lines)} signatures, more than the limit of {MAX_SIGNATURES}"
        )
    signatures = [
        _parse_signature_line(line, number) for number, line in enumerate(raw_lines, start=1)
    ]
    return text, signatures


def _parse_signature_line(line: str, number: int) -> NoteSignature:
    """Parse one ``— <name> <base64>`` line.

    :raises MalformedNoteError: naming the line number and the problem.
    """
    if not line.startswith(SIGNATURE_PREFIX):
        raise MalformedNoteError(
            f"signature line {number} must start with an em dash (U+2014) and a space, "
            f"got {line[:20]!r}"
        )
    name, space, encoded = line[len(SIGNATURE_PREFIX) :].partition(" ")
    if not space or not encoded:
        raise MalformedNoteError(f"signature line {number} must be '— <key name> <base64>'")
    try:
        check_key_name(name)
    except NoteError as exc:
        raise MalformedNoteError(f"signature line {number}: {exc}") from exc
    try:
        raw = decode_base64(encoded)
    except ValueError as exc:
        raise MalformedNoteError(f"signature line {number} for {name!r}: {exc}") from exc
    if len(raw) <= KEY_ID_SIZE:
        raise MalformedNoteError(
            f"signature line {number} for {name!r} holds {len(raw)} bytes, expected a "
            f"{KEY_ID_SIZE}-byte key id followed by a signature"
        )
    return NoteSignature(name, raw[:KEY_ID_SIZE], raw[KEY_ID_SIZE:])


def _index_verifiers(verifiers: Iterable[NoteVerifier]) -> dict[tuple[str, bytes], NoteVerifier]:
    """Map (name, key ID) to verifier.

    :raises NoteError: if two different public keys share a name and key ID.
    """
    known: dict[tuple[str, bytes], NoteVerifier] = {}
    for verifier in verifiers:
        slot = (verifier.name, verifier.key_id)
        other = known.setdefault(slot, verifier)
        if other.public_key != verifier.public_key:
            raise NoteError(f"two different verifier keys share the name and id {verifier.key}")
    return known


def open_note(note: str, verifiers: Iterable[NoteVerifier]) -> tuple[str, list[NoteSignature]]:
    """Verify a signed note; return its text and the known keys' signatures (others ignored).

    :raises MalformedNoteError: if the note breaks the signed-note syntax.
    :raises InvalidSignatureError: if a signature from a known key does not verify.
    :raises UnverifiedNoteError: if no signature comes from a known key.
    :raises NoteError: if two different verifier keys share a name and key ID.
    """
    known = _index_verifiers(verifiers)
    text, signatures = parse_note(note)
    message = text.encode("utf-8")
    verified: list[NoteSignature] = []
    for signature in signatures:
        verifier = known.get((signature.name, signature.key_id))
        if verifier is None:
            continue
        if not verifier.verify(message, signature.signature):
            raise InvalidSignatureError(
                f"signature by known key {verifier.key} does not verify over the note text "
                "(the text or the signature was altered, or it was signed by another key)"
            )
        if signature not in verified:
            verified.append(signature)
    if not verified:
        expected = ", ".join(sorted(v.key for v in known.values())) or "(no verifier keys given)"
        found = ", ".join(s.key for s in signatures)
        raise UnverifiedNoteError(
            f"note has no signature from a known key: expected one of {expected}; found {found}"
        )
    return text, verified
