"""Unit tests for audit.proof (C2SP tlog-proof@v1), over small trees built with audit.merkle.

The text layout is checked against c2sp.org/tlog-proof ("Format"): header line, ``extra``
line, ``index`` line, one base64 hash per line from the leaf's sibling upwards, an empty line,
then the signed checkpoint verbatim.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audit.checkpoint import Checkpoint, CheckpointOriginError, sign_checkpoint
from audit.merkle import InclusionProofError, MemoryTree, leaf_hash, leaf_hashes
from audit.note import InvalidSignatureError, NoteVerifier, UnverifiedNoteError, sign_note
from audit.proof import (
    HEADER,
    MAX_PATH_LENGTH,
    Proof,
    ProofCheckpointError,
    ProofFormatError,
    ProofInclusionError,
    ProofOriginError,
    TlogProofError,
    VerifiedProof,
    format_proof,
    parse_proof,
    verify_proof,
)
from audit.signer import Ed25519Signer

ORIGIN = "sovereign.example/audit"
LOG = Ed25519Signer.generate(ORIGIN)
WITNESS = Ed25519Signer.generate("witness.example/w1")


@dataclass
class Log:
    """A tiny log: entries, their tree, and a checkpoint signed over all of them."""

    entries: list[bytes]
    tree: MemoryTree
    checkpoint: Checkpoint
    note: str

    def proof(self, index: int) -> Proof:
        return Proof(self.entries[index], index, tuple(self.tree.inclusion_proof(index)), self.note)

    def text(self, index: int) -> str:
        return format_proof(self.proof(index))


def make_log(size: int, origin: str = ORIGIN, signers: list[Ed25519Signer] | None = None) -> Log:
    entries = [f'{{"seq":{i},"action":"request:approve"}}'.encode() for i in range(size)]
    tree = MemoryTree(leaf_hashes(entries))
    checkpoint = Checkpoint(origin, size, tree.root())
    note = sign_checkpoint(checkpoint, signers or [LOG])
    return Log(entries, tree, checkpoint, note)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# --- format ------------------------------------------------------------------------------------


def test_proof_text_follows_the_spec_layout() -> None:
    log = make_log(5)
    path = log.tree.inclusion_proof(2)
    assert len(path) == 3
    expected = (
        "c2sp.org/tlog-proof@v1\n"
        f"extra {b64(log.entries[2])}\n"
        "index 2\n"
        f"{b64(path[0])}\n{b64(path[1])}\n{b64(path[2])}\n"
        "\n" + log.note
    )
    assert log.text(2) == expected
    # The leaf's sibling comes first: leaf 3's hash is leaf 2's sibling in any tree of 5.
    assert path[0] == leaf_hash(log.entries[3])


def test_single_leaf_proof_has_no_hash_lines() -> None:
    log = make_log(1)
    assert log.text(0) == f"{HEADER}\nextra {b64(log.entries[0])}\nindex 0\n\n{log.note}"
    assert verify_proof(log.text(0), [LOG.verifier], ORIGIN).index == 0


def test_parse_inverts_format() -> None:
    log = make_log(7)
    for index in range(7):
        assert parse_proof(log.text(index)) == log.proof(index)


_notes = [make_log(n).note for n in (1, 3)]


@given(
    entry=st.binary(min_size=1, max_size=200),
    index=st.integers(min_value=0, max_value=2**64 - 1),
    path=st.lists(st.binary(min_size=32, max_size=32), max_size=MAX_PATH_LENGTH).map(tuple),
    note=st.sampled_from(_notes),
)
def test_format_then_parse_round_trips(
    entry: bytes, index: int, path: tuple[bytes, ...], note: str
) -> None:
    proof = Proof(entry, index, path, note)
    text = format_proof(proof)
    assert text.startswith(f"{HEADER}\nextra {b64(entry)}\nindex {index}\n")
    assert text.endswith("\n\n" + note)
    assert parse_proof(text) == proof


# --- verification ------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 7, 8, 9, 16, 17])
def test_every_entry_of_small_trees_verifies(size: int) -> None:
    log = make_log(size)
    for index in range(size):
        verified = verify_proof(log.text(index), [LOG.verifier], origin=ORIGIN)
        assert verified == VerifiedProof(log.entries[index], index, log.checkpoint)


@settings(max_examples=50)
@given(data=st.data(), size=st.integers(min_value=1, max_value=40))
def test_any_entry_of_any_small_tree_verifies(data: st.DataObject, size: int) -> None:
    entries = data.draw(st.lists(st.binary(min_size=1, max_size=40), min_size=size, max_size=size))
    index = data.draw(st.integers(min_value=0, max_value=size - 1))
    tree = MemoryTree(leaf_hashes(entries))
    note = sign_checkpoint(Checkpoint(ORIGIN, size, tree.root()), [LOG])
    text = format_proof(Proof(entries[index], index, tuple(tree.inclusion_proof(index)), note))
    verified = verify_proof(text, [LOG.verifier], ORIGIN)
    assert (verified.entry, verified.index, verified.checkpoint.size) == (
        entries[index],
        index,
        size,
    )


def test_origin_is_optional() -> None:
    log = make_log(3)
    assert verify_proof(log.text(1), [LOG.verifier]).checkpoint == log.checkpoint


def test_witness_cosigned_checkpoint_verifies_with_the_log_key() -> None:
    log = make_log(4, signers=[LOG, WITNESS])
    assert verify_proof(log.text(3), [LOG.verifier], ORIGIN).entry == log.entries[3]


def test_proof_verifies_against_the_tree_size_it_was_made_for() -> None:
    # A proof for an older, smaller checkpoint stays valid: the log only grows.
    log = make_log(9)
    old = Checkpoint(ORIGIN, 5, log.tree.root(5))
    note = sign_checkpoint(old, [LOG])
    text = format_proof(Proof(log.entries[4], 4, tuple(log.tree.inclusion_proof(4, 5)), note))
    assert verify_proof(text, [LOG.verifier], ORIGIN).checkpoint == old
    # The same path under the newer checkpoint does not verify.
    wrong = format_proof(Proof(log.entries[4], 4, tuple(log.tree.inclusion_proof(4, 5)), log.note))
    with pytest.raises(ProofInclusionError):
        verify_proof(wrong, [LOG.verifier], ORIGIN)


# --- tampering ---------------------------------------------------------------------------------


def test_changed_entry_fails_inclusion_naming_the_step() -> None:
    log = make_log(5)
    proof = log.proof(2)
    forged = Proof(
        log.entries[2].replace(b"approve", b"deny"), 2, proof.path, proof.checkpoint_note
    )
    with pytest.raises(
        ProofInclusionError, match=r"^tlog-proof inclusion verification failed: "
    ) as excinfo:
        verify_proof(format_proof(forged), [LOG.verifier], ORIGIN)
    assert excinfo.value.step == "inclusion verification"
    cause = excinfo.value.__cause__
    assert isinstance(cause, InclusionProofError)
    assert cause.expected == log.checkpoint.root_hash
    assert cause.computed != cause.expected


def test_another_entry_of_the_same_log_fails() -> None:
    log = make_log(5)
    proof = log.proof(2)
    swapped = Proof(log.entries[3], 2, proof.path, proof.checkpoint_note)
    with pytest.raises(ProofInclusionError):
        verify_proof(format_proof(swapped), [LOG.verifier], ORIGIN)


@pytest.mark.parametrize("index", [0, 1, 3, 4])
def test_changed_index_fails(index: int) -> None:
    log = make_log(5)
    proof = log.proof(2)
    moved = Proof(proof.entry, index, proof.path, proof.checkpoint_note)
    with pytest.raises(ProofInclusionError):
        verify_proof(format_proof(moved), [LOG.verifier], ORIGIN)


def test_index_outside_the_tree_fails_clearly() -> None:
    log = make_log(5)
    proof = log.proof(4)
    outside = Proof(proof.entry, 5, proof.path, proof.checkpoint_note)
    with pytest.raises(
        ProofInclusionError, match="index 5 is outside the checkpointed tree of size 5"
    ):
        verify_proof(format_proof(outside), [LOG.verifier], ORIGIN)


def test_every_bit_of_every_path_hash_matters() -> None:
    log = make_log(6)
    proof = log.proof(1)
    for position in range(len(proof.path)):
        for byte in range(32):
            node = bytearray(proof.path[position])
            node[byte] ^= 0x01
            path = (*proof.path[:position], bytes(node), *proof.path[position + 1 :])
            text = format_proof(Proof(proof.entry, 1, path, proof.checkpoint_note))
            with pytest.raises(ProofInclusionError):
                verify_proof(text, [LOG.verifier], ORIGIN)


def test_missing_extra_reordered_or_extra_path_hashes_fail() -> None:
    log = make_log(6)
    proof = log.proof(1)
    assert len(proof.path) == 3
    for path in (
        proof.path[:-1],
        (*proof.path, proof.path[-1]),
        (proof.path[1], proof.path[0], proof.path[2]),
        (),
    ):
        text = format_proof(Proof(proof.entry, 1, path, proof.checkpoint_note))
        with pytest.raises(ProofInclusionError):
            verify_proof(text, [LOG.verifier], ORIGIN)


def test_changed_checkpoint_fails_its_signature() -> None:
    log = make_log(5)
    size_line = f"\n{log.checkpoint.size}\n"
    for tampered_note in (
        log.note.replace(size_line, "\n6\n", 1),
        log.note.replace(b64(log.checkpoint.root_hash), b64(log.tree.root(4)), 1),
    ):
        assert tampered_note != log.note
        text = log.text(2).replace(log.note, tampered_note)
        with pytest.raises(
            ProofCheckpointError, match=r"^tlog-proof checkpoint verification failed: "
        ) as excinfo:
            verify_proof(text, [LOG.verifier], ORIGIN)
        assert isinstance(excinfo.value.__cause__, InvalidSignatureError)


def test_checkpoint_signed_by_an_untrusted_key_fails() -> None:
    impostor = Ed25519Signer.generate(ORIGIN)
    log = make_log(5, signers=[impostor])
    with pytest.raises(ProofCheckpointError, match="no signature from a known key") as excinfo:
        verify_proof(log.text(2), [LOG.verifier], ORIGIN)
    assert isinstance(excinfo.value.__cause__, UnverifiedNoteError)
    # A witness signature alone is not the log's signature.
    witnessed = make_log(5, signers=[WITNESS])
    with pytest.raises(ProofCheckpointError):
        verify_proof(witnessed.text(2), [LOG.verifier], ORIGIN)


def test_no_verifiers_fails() -> None:
    verifiers: list[NoteVerifier] = []
    with pytest.raises(ProofCheckpointError, match="no verifier keys given"):
        verify_proof(make_log(2).text(0), verifiers, ORIGIN)


def test_wrong_origin_fails_after_the_signature_verifies() -> None:
    other = Ed25519Signer.generate("other.example/log")
    log = make_log(3, origin="other.example/log", signers=[other])
    with pytest.raises(
        ProofOriginError,
        match=r"^tlog-proof origin check failed: checkpoint origin is 'other\.example/log', "
        r"expected 'sovereign\.example/audit'$",
    ) as excinfo:
        verify_proof(log.text(1), [other.verifier], ORIGIN)
    assert excinfo.value.step == "origin check"
    assert isinstance(excinfo.value.__cause__, CheckpointOriginError)
    assert verify_proof(log.text(1), [other.verifier], "other.example/log").index == 1


def test_signed_text_that_is_not_a_checkpoint_fails_at_the_checkpoint_step() -> None:
    log = make_log(2)
    note = sign_note(f"{ORIGIN}\n02\n{b64(log.checkpoint.root_hash)}\n", [LOG])
    text = format_proof(Proof(log.entries[0], 0, tuple(log.tree.inclusion_proof(0)), note))
    with pytest.raises(ProofCheckpointError, match="without leading zeroes"):
        verify_proof(text, [LOG.verifier], ORIGIN)


# --- malformed proofs --------------------------------------------------------------------------


def _valid_parts() -> tuple[Log, list[str]]:
    log = make_log(5)
    head, _, _ = log.text(2).partition("\n\n")
    return log, head.split("\n")


def _assemble(lines: list[str], note: str) -> str:
    return "".join(f"{line}\n" for line in lines) + "\n" + note


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda lines: ["c2sp.org/tlog-proof@v2", *lines[1:]],
            "line 1 must be 'c2sp.org/tlog-proof@v1'",
        ),
        (lambda lines: lines[1:], "line 1 must be"),
        # The spec lets the extra line be left out; Sovereign's proofs always carry the entry.
        (lambda lines: [lines[0], *lines[2:]], "line 2 must be 'extra <base64>'"),
        (lambda lines: [lines[0], "extra", *lines[2:]], "line 2 must be 'extra <base64>'"),
        (
            lambda lines: [lines[0], "extra not base64!", *lines[2:]],
            "line 2 (extra) is not standard",
        ),
        (lambda lines: [lines[0], "extra YR==", *lines[2:]], "line 2 (extra) is not canonical"),
        (
            lambda lines: [lines[0], "extra ", *lines[2:]],
            "entry (the extra data) must not be empty",
        ),
        (lambda lines: [*lines[:2], *lines[3:]], "line 3 must be 'index <decimal>'"),
        (lambda lines: [*lines[:2], "index 02", *lines[3:]], "got '02'"),
        (lambda lines: [*lines[:2], "index -2", *lines[3:]], "got '-2'"),
        (lambda lines: [*lines[:2], "index +2", *lines[3:]], "got '+2'"),
        (lambda lines: [*lines[:2], "index  2", *lines[3:]], "got ' 2'"),
        (lambda lines: [*lines[:2], "index 2 ", *lines[3:]], "got '2 '"),
        (lambda lines: [*lines[:2], "index", *lines[3:]], "line 3 must be 'index <decimal>'"),
        (lambda lines: [*lines[:2], "Index 2", *lines[3:]], "line 3 must be 'index <decimal>'"),
        (
            lambda lines: [*lines[:2], f"index {2**64}", *lines[3:]],
            "index must be in [0, 2**64 - 1]",
        ),
        (lambda lines: [*lines[:3], "not base64!", *lines[4:]], "line 4 (inclusion proof hash)"),
        (lambda lines: [*lines[:4], b64(bytes(31)), *lines[5:]], "hash 2 must be 32 bytes, got 31"),
        (lambda lines: [*lines, *[b64(bytes(32))] * 62], "65 hashes, more than 64"),
    ],
)
def test_malformed_framing_is_rejected_naming_the_line(
    edit: Callable[[list[str]], list[str]], message: str
) -> None:
    log, lines = _valid_parts()
    text = _assemble(edit(list(lines)), log.note)
    with pytest.raises(ProofFormatError, match=re.escape(message)) as excinfo:
        parse_proof(text)
    assert excinfo.value.step == "parse"
    with pytest.raises(ProofFormatError):
        verify_proof(text, [LOG.verifier], ORIGIN)


def test_malformed_layout_is_rejected() -> None:
    log = make_log(3)
    text = log.text(1)
    head = text[: -len(log.note) - 1]
    cases = {
        head.rstrip("\n"): "no empty line between the inclusion proof and the checkpoint",
        head + "\n": "no checkpoint after the empty line",
        text.replace("\n", "\r\n"): "contains U+000D",
        "\ufeff" + text: "line 1 must be",
        head + "\n" + log.checkpoint.body(): "checkpoint is not a well-formed signed note",
        text[:-1]: "checkpoint is not a well-formed signed note",
    }
    for bad, message in cases.items():
        with pytest.raises(ProofFormatError, match=re.escape(message)):
            parse_proof(bad)


def test_spec_example_without_extra_is_refused_with_a_reason() -> None:
    # The layout of the c2sp.org/tlog-proof example, with no extra line and a checkpoint we sign.
    log = make_log(3)
    text = (
        f"{HEADER}\nindex 1\n"
        + "".join(f"{b64(h)}\n" for h in log.tree.inclusion_proof(1))
        + "\n"
        + log.note
    )
    with pytest.raises(ProofFormatError, match="Sovereign proofs carry the logged entry"):
        parse_proof(text)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"entry": b""}, "entry (the extra data) must not be empty"),
        ({"index": -1}, "index must be in [0, 2**64 - 1], got -1"),
        ({"index": 2**64}, "index must be in [0, 2**64 - 1]"),
        ({"index": True}, "index must be an int, got True"),
        ({"path": (bytes(32), bytes(33))}, "inclusion proof hash 2 must be 32 bytes, got 33"),
        ({"path": (bytes(32),) * 65}, "65 hashes, more than 64"),
        ({"checkpoint_note": "x\n"}, "checkpoint is not a well-formed signed note"),
    ],
)
def test_proof_refuses_invalid_fields(kwargs: dict[str, object], message: str) -> None:
    fields: dict[str, object] = {
        "entry": b"e",
        "index": 0,
        "path": (),
        "checkpoint_note": make_log(1).note,
        **kwargs,
    }
    with pytest.raises(ProofFormatError, match=re.escape(message)):
        Proof(**fields)  # type: ignore[arg-type]


def test_all_proof_errors_share_a_base_and_are_value_errors() -> None:
    for error in (ProofFormatError, ProofCheckpointError, ProofOriginError, ProofInclusionError):
        assert issubclass(error, TlogProofError)
        assert issubclass(error, ValueError)
    assert {
        e.step
        for e in (ProofFormatError, ProofCheckpointError, ProofOriginError, ProofInclusionError)
    } == {
        "parse",
        "checkpoint verification",
        "origin check",
        "inclusion verification",
    }
