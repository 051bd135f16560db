"""C2SP ``tlog-proof@v1`` files: offline proof that an audit entry is in the signed log.

Owns :class:`Proof`, its text form and its offline verification, as specified by
c2sp.org/tlog-proof ("Format"): the line ``c2sp.org/tlog-proof@v1``; ``extra <base64>``;
``index <decimal>``; the RFC 6962 section 2.1.1 inclusion proof, one base64 SHA-256 hash per
line from the leaf's sibling up to the root's child; an empty line; and the log's signed
checkpoint (c2sp.org/tlog-checkpoint) verbatim, witness cosignatures included.

The spec makes the ``extra`` line optional opaque data; Sovereign always writes it and
requires it, holding the logged entry's canonical bytes, so a proof is self-contained. The
extra data is not authenticated by the format, so it is never trusted as such: verification
hashes it into the RFC 6962 leaf and proves that leaf's inclusion under a checkpoint signed
by a trusted log key. Must not fetch anything (verification is offline) and imports neither
``sovereign`` nor Flask.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar

from audit import merkle
from audit.checkpoint import (
    HASH_SIZE,
    Checkpoint,
    CheckpointError,
    CheckpointOriginError,
    open_checkpoint,
)
from audit.note import NoteError, NoteVerifier, decode_base64, encode_base64, parse_note

#: The first line of every proof (c2sp.org/tlog-proof, "Format").
HEADER = "c2sp.org/tlog-proof@v1"
EXTRA_PREFIX = "extra "
INDEX_PREFIX = "index "
#: Indices are unsigned 64-bit, so no inclusion proof in a valid tree has more hashes.
MAX_PATH_LENGTH = 64
MAX_INDEX = 2**64 - 1

_DECIMAL = re.compile(r"0|[1-9][0-9]*")
# The framing lines are ASCII; the checkpoint part is held to the signed-note rules.
_FORBIDDEN = re.compile("[\x00-\x09\x0b-\x1f\ud800-\udfff]")


class TlogProofError(ValueError):
    """A tlog-proof failed; ``step`` names the verification step that failed."""

    step: ClassVar[str] = "verification"

    def __init__(self, detail: str) -> None:
        self.detail = detail
        super().__init__(f"tlog-proof {self.step} failed: {detail}")


class ProofFormatError(TlogProofError):
    """The proof text breaks the tlog-proof format (or Sovereign's required extra line)."""

    step = "parse"


class ProofCheckpointError(TlogProofError):
    """The proof's checkpoint is not signed by a trusted key or is not a valid checkpoint."""

    step = "checkpoint verification"


class ProofOriginError(ProofCheckpointError):
    """The proof's checkpoint is validly signed but by another log origin than expected."""

    step = "origin check"


class ProofInclusionError(TlogProofError):
    """The entry's leaf hash is not proven to be at the index in the checkpointed tree."""

    step = "inclusion verification"


@dataclass(frozen=True)
class Proof:
    """An entry, its leaf index, its inclusion path and the signed checkpoint note."""

    entry: bytes
    index: int
    path: tuple[bytes, ...]
    checkpoint_note: str

    def __post_init__(self) -> None:
        if not self.entry:
            raise ProofFormatError("entry (the extra data) must not be empty")
        if isinstance(self.index, bool) or not isinstance(self.index, int):
            raise ProofFormatError(f"index must be an int, got {self.index!r}")
        if not 0 <= self.index <= MAX_INDEX:
            raise ProofFormatError(f"index must be in [0, 2**64 - 1], got {self.index}")
        if len(self.path) > MAX_PATH_LENGTH:
            raise ProofFormatError(
                f"inclusion proof has {len(self.path)} hashes, more than {MAX_PATH_LENGTH}"
            )
        for number, node in enumerate(self.path, start=1):
            if len(node) != HASH_SIZE:
                raise ProofFormatError(
                    f"inclusion proof hash {number} must be {HASH_SIZE} bytes, got {len(node)}"
                )
        try:
            parse_note(self.checkpoint_note)
        except NoteError as exc:
            raise ProofFormatError(f"checkpoint is not a well-formed signed note: {exc}") from exc


@dataclass(frozen=True)
class VerifiedProof:
    """What a verified proof establishes: this entry is at this index under this checkpoint."""

    entry: bytes
    index: int
    checkpoint: Checkpoint


def format_proof(proof: Proof) -> str:
    """The ``c2sp.org/tlog-proof@v1`` text of ``proof``, with the entry as the extra line."""
    lines = [
        HEADER,
        EXTRA_PREFIX + encode_base64(proof.entry),
        INDEX_PREFIX + str(proof.index),
        *(encode_base64(node) for node in proof.path),
    ]
    return "".join(f"{line}\n" for line in lines) + "\n" + proof.checkpoint_note


def parse_proof(text: str) -> Proof:
    """Parse ``c2sp.org/tlog-proof@v1`` text strictly, without verifying anything.

    :raises ProofFormatError: naming the line that is malformed and what was expected.
    """
    bad = _FORBIDDEN.search(text)
    if bad is not None:
        raise ProofFormatError(
            f"contains U+{ord(bad.group()):04X} at offset {bad.start()}; proofs are UTF-8 text "
            "with newline line endings and no other control characters"
        )
    # Header, extra, index and hash lines are all non-empty, so the first empty line is the
    # one separating the inclusion proof from the checkpoint.
    head, separator, checkpoint_note = text.partition("\n\n")
    if not separator:
        raise ProofFormatError("no empty line between the inclusion proof and the checkpoint")
    if not checkpoint_note:
        raise ProofFormatError("no checkpoint after the empty line")
    lines = head.split("\n")
    if lines[0] != HEADER:
        raise ProofFormatError(f"line 1 must be {HEADER!r}, got {lines[0][:40]!r}")
    if len(lines) < 2 or not lines[1].startswith(EXTRA_PREFIX):
        raise ProofFormatError(
            "line 2 must be 'extra <base64>': Sovereign proofs carry the logged entry as the "
            "extra data"
        )
    try:
        entry = decode_base64(lines[1].removeprefix(EXTRA_PREFIX))
    except ValueError as exc:
        raise ProofFormatError(f"line 2 (extra) is {exc}") from exc
    if len(lines) < 3 or not lines[2].startswith(INDEX_PREFIX):
        raise ProofFormatError("line 3 must be 'index <decimal>'")
    index_text = lines[2].removeprefix(INDEX_PREFIX)
    if not _DECIMAL.fullmatch(index_text):
        raise ProofFormatError(
            f"line 3 index must be ASCII decimal without leading zeroes, got {index_text!r}"
        )
    hash_lines = lines[3:]
    if len(hash_lines) > MAX_PATH_LENGTH:
        raise ProofFormatError(
            f"inclusion proof has {len(hash_lines)} hashes, more than {MAX_PATH_LENGTH}"
        )
    path: list[bytes] = []
    for number, line in enumerate(hash_lines, start=4):
        try:
            path.append(decode_base64(line))
        except ValueError as exc:
            raise ProofFormatError(f"line {number} (inclusion proof hash) is {exc}") from exc
    return Proof(entry, int(index_text), tuple(path), checkpoint_note)


def verify_proof(
    text: str, verifiers: Iterable[NoteVerifier], origin: str | None = None
) -> VerifiedProof:
    """Verify a proof offline against the log's trusted keys (and ``origin``, if given).

    :raises ProofFormatError: if the text is not a valid proof.
    :raises ProofCheckpointError: if no trusted key signed the checkpoint, a trusted key's
        signature fails, or the signed text is not a valid checkpoint.
    :raises ProofOriginError: if the checkpoint's origin is not ``origin``.
    :raises ProofInclusionError: if the entry is not at the index in the checkpointed tree.
    """
    proof = parse_proof(text)
    try:
        checkpoint = open_checkpoint(proof.checkpoint_note, verifiers, origin)
    except CheckpointOriginError as exc:
        raise ProofOriginError(str(exc)) from exc
    except (NoteError, CheckpointError) as exc:
        raise ProofCheckpointError(str(exc)) from exc
    if proof.index >= checkpoint.size:
        raise ProofInclusionError(
            f"index {proof.index} is outside the checkpointed tree of size {checkpoint.size}"
        )
    leaf = merkle.leaf_hash(proof.entry)
    try:
        merkle.verify_inclusion(
            leaf, proof.index, checkpoint.size, list(proof.path), checkpoint.root_hash
        )
    except merkle.ProofError as exc:
        raise ProofInclusionError(
            f"entry at index {proof.index} is not included in the tree of size "
            f"{checkpoint.size} with root {encode_base64(checkpoint.root_hash)}: {exc}"
        ) from exc
    return VerifiedProof(proof.entry, proof.index, checkpoint)
