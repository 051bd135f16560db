"""C2SP transparency log checkpoints: the body text, strict parsing, signing and opening.

Owns :class:`Checkpoint` and its note text as specified by c2sp.org/tlog-checkpoint ("Note
text"): the origin line, the tree size in ASCII decimal without leading zeroes, the base64
RFC 6962 root hash, then optional non-empty extension lines, each ending in a newline. A
checkpoint travels as a c2sp.org/signed-note (see :mod:`audit.note`); its text MUST be ignored
until a trusted key's signature has verified, so :func:`open_checkpoint` verifies first and
parses second. Must not decide which keys are trusted (callers pass the log's verifier keys)
and imports neither ``sovereign`` nor Flask.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from audit.note import NoteVerifier, decode_base64, encode_base64, open_note, sign_note

if TYPE_CHECKING:
    from audit.signer import Signer

#: RFC 6962 with SHA-256: every root hash is 32 bytes.
HASH_SIZE = 32
#: Tree sizes are unsigned 64-bit integers in every deployed implementation.
MAX_TREE_SIZE = 2**64 - 1

# ASCII digits only: Python's int() would also accept "+1", " 1", "1_0" and non-ASCII digits.
_DECIMAL = re.compile(r"0|[1-9][0-9]*")
# A line must be valid UTF-8 without control characters (signed-note) and cannot hold "\n".
_FORBIDDEN = re.compile("[\x00-\x1f\ud800-\udfff]")


class CheckpointError(ValueError):
    """A checkpoint is malformed, or is not the one the caller expected."""


class CheckpointOriginError(CheckpointError):
    """A verified checkpoint comes from another log origin than the one expected."""


def _check_line(value: str, what: str) -> None:
    """Check ``value`` is a non-empty line without control characters or lone surrogates.

    :raises CheckpointError: naming the field and the offending character.
    """
    if not value:
        raise CheckpointError(f"checkpoint {what} must not be empty")
    bad = _FORBIDDEN.search(value)
    if bad is not None:
        raise CheckpointError(
            f"checkpoint {what} contains U+{ord(bad.group()):04X} at offset {bad.start()}; "
            "lines must be valid UTF-8 without newlines or control characters"
        )


@dataclass(frozen=True)
class Checkpoint:
    """A log's tree head: origin, tree size, 32-byte RFC 6962 root hash and extension lines."""

    origin: str
    size: int
    root_hash: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_line(self.origin, "origin")
        # bool is an int subclass; a size of True is a bug, not a tree of one leaf.
        if isinstance(self.size, bool) or not isinstance(self.size, int):
            raise CheckpointError(f"checkpoint size must be an int, got {self.size!r}")
        if not 0 <= self.size <= MAX_TREE_SIZE:
            raise CheckpointError(f"checkpoint size must be in [0, 2**64 - 1], got {self.size}")
        if len(self.root_hash) != HASH_SIZE:
            raise CheckpointError(
                f"checkpoint root hash must be {HASH_SIZE} bytes, got {len(self.root_hash)}"
            )
        for number, extension in enumerate(self.extensions, start=1):
            _check_line(extension, f"extension line {number}")

    def body(self) -> str:
        """The checkpoint's note text: origin, size, base64 root hash, extension lines."""
        lines = [self.origin, str(self.size), encode_base64(self.root_hash), *self.extensions]
        return "".join(f"{line}\n" for line in lines)


def parse_checkpoint_body(text: str) -> Checkpoint:
    """Parse checkpoint note text strictly (c2sp.org/tlog-checkpoint, "Note text").

    :raises CheckpointError: naming the line that is malformed and what was expected.
    """
    if not text.endswith("\n"):
        raise CheckpointError("checkpoint text must end with a newline")
    lines = text[:-1].split("\n")
    if len(lines) < 3:
        raise CheckpointError(
            f"checkpoint text must have at least 3 lines (origin, size, root hash), "
            f"got {len(lines)}"
        )
    origin, size_text, hash_text, *extensions = lines
    _check_line(origin, "origin (line 1)")
    if not _DECIMAL.fullmatch(size_text):
        raise CheckpointError(
            f"checkpoint size (line 2) must be ASCII decimal without leading zeroes, "
            f"got {size_text!r}"
        )
    size = int(size_text)
    if size > MAX_TREE_SIZE:
        raise CheckpointError(f"checkpoint size (line 2) exceeds 2**64 - 1: {size_text}")
    try:
        root_hash = decode_base64(hash_text)
    except ValueError as exc:
        raise CheckpointError(f"checkpoint root hash (line 3) is {exc}") from exc
    if len(root_hash) != HASH_SIZE:
        raise CheckpointError(
            f"checkpoint root hash (line 3) must decode to {HASH_SIZE} bytes, got {len(root_hash)}"
        )
    for number, extension in enumerate(extensions, start=4):
        _check_line(extension, f"extension line (line {number})")
    return Checkpoint(origin, size, root_hash, tuple(extensions))


def sign_checkpoint(checkpoint: Checkpoint, signers: Sequence[Signer]) -> str:
    """Sign the checkpoint's body and return the signed note.

    :raises NoteError: if a signer is invalid or its signature does not verify.
    """
    # The log's own signer SHOULD be named after the origin (tlog-checkpoint, "Signatures");
    # further signers, such as witnesses, may have other names, so this is not enforced.
    return sign_note(checkpoint.body(), signers)


def open_checkpoint(
    note: str, verifiers: Iterable[NoteVerifier], origin: str | None = None
) -> Checkpoint:
    """Verify a signed checkpoint against the log's verifier keys, then parse it.

    :raises NoteError: if the note is malformed or no trusted signature verifies.
    :raises CheckpointError: if the verified text is not a valid checkpoint.
    :raises CheckpointOriginError: if ``origin`` is given and differs from the checkpoint's.
    """
    text, _ = open_note(note, verifiers)
    checkpoint = parse_checkpoint_body(text)
    if origin is not None and checkpoint.origin != origin:
        raise CheckpointOriginError(
            f"checkpoint origin is {checkpoint.origin!r}, expected {origin!r}"
        )
    return checkpoint
