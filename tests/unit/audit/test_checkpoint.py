"""Unit tests for audit.checkpoint (C2SP tlog-checkpoint).

Known-answer vectors:

* c2sp.org/tlog-checkpoint: the example body (example.com/behind-the-sofa). Its log key is
  not published, so only the body and the note syntax are checked.
* A tree head served by sum.golang.org ("go.sum database tree", size 15368405), as quoted in
  public write-ups on the checkpoint format, verified under the sum.golang.org verifier key
  pinned in the go command (cmd/go/internal/modfetch/key.go). Its origin contains spaces,
  which the spec allows (the no-spaces rule is only a SHOULD).
"""

from __future__ import annotations

import base64
import hashlib
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from audit.checkpoint import (
    MAX_TREE_SIZE,
    Checkpoint,
    CheckpointError,
    CheckpointOriginError,
    open_checkpoint,
    parse_checkpoint_body,
    sign_checkpoint,
)
from audit.note import (
    InvalidSignatureError,
    MalformedNoteError,
    UnverifiedNoteError,
    parse_note,
    parse_verifier_key,
)
from audit.signer import Ed25519Signer

EM = "\u2014"
ORIGIN = "sovereign.example/audit"
ROOT = hashlib.sha256(b"root").digest()
ROOT_B64 = base64.b64encode(ROOT).decode()

SPEC_BODY = "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
SPEC_NOTE = (
    SPEC_BODY + "\n" + f"{EM} example.com/behind-the-sofa "
    "Az3grlgtzPICa5OS8npVmf1Myq/5IZniMp+ZJurmRDeOoRDe4URYN7u5/Zhcyv2q1gGzGku9nTo+zyWE+xeMcTOAYQ8=\n"
)

SUMDB_KEY = "sum.golang.org+033de0ae+Ac4zctda0e5eza+HJyk9SxEdh+s3Ux18htTTAD8OuAn8"
SUMDB_ORIGIN = "go.sum database tree"
SUMDB_BODY = f"{SUMDB_ORIGIN}\n15368405\n/g9am3I6YWNKaZX/jkne1fqd9zEyjss+JXyPXG0WfkY=\n"
SUMDB_NOTE = (
    SUMDB_BODY + "\n" + f"{EM} sum.golang.org "
    "Az3grqJGUaSGukG9p8nI2vKgiFn7qGHxn0W+mrwyI6Gz3F0t1J3LzmWk/p96Ybf295EjwdSwlzgijq5WA9d1Ded7owM=\n"
)


# --- known-answer vectors ----------------------------------------------------------------------


def test_spec_example_body_parses_and_formats_back_byte_for_byte() -> None:
    checkpoint = parse_checkpoint_body(SPEC_BODY)
    assert checkpoint.origin == "example.com/behind-the-sofa"
    assert checkpoint.size == 20852163
    assert checkpoint.root_hash == base64.b64decode("CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=")
    assert checkpoint.extensions == ()
    assert checkpoint.body() == SPEC_BODY


def test_spec_example_note_splits_into_body_and_log_signature() -> None:
    text, signatures = parse_note(SPEC_NOTE)
    assert text == SPEC_BODY
    assert [s.name for s in signatures] == ["example.com/behind-the-sofa"]
    # The spec does not publish this log's key: no verifier we hold accepts it.
    with pytest.raises(
        UnverifiedNoteError, match=re.escape("found example.com/behind-the-sofa+033de0ae")
    ):
        open_checkpoint(SPEC_NOTE, [parse_verifier_key(SUMDB_KEY)])


def test_sum_golang_org_checkpoint_verifies_under_the_pinned_key() -> None:
    checkpoint = open_checkpoint(SUMDB_NOTE, [parse_verifier_key(SUMDB_KEY)], origin=SUMDB_ORIGIN)
    assert checkpoint == Checkpoint(
        SUMDB_ORIGIN,
        15368405,
        base64.b64decode("/g9am3I6YWNKaZX/jkne1fqd9zEyjss+JXyPXG0WfkY="),
    )
    assert checkpoint.body() == SUMDB_BODY


def test_sum_golang_org_checkpoint_with_a_changed_size_or_root_is_rejected() -> None:
    verifiers = [parse_verifier_key(SUMDB_KEY)]
    for tampered in (
        SUMDB_NOTE.replace("15368405", "15368406"),
        SUMDB_NOTE.replace("/g9am3I6", "/g9am3I7"),
        SUMDB_NOTE.replace(SUMDB_ORIGIN, "go.sum database tre3"),
    ):
        assert tampered != SUMDB_NOTE
        with pytest.raises(InvalidSignatureError, match=re.escape("sum.golang.org+033de0ae")):
            open_checkpoint(tampered, verifiers)


def test_sum_golang_org_checkpoint_with_another_expected_origin_is_rejected() -> None:
    with pytest.raises(
        CheckpointOriginError,
        match=re.escape("checkpoint origin is 'go.sum database tree', expected 'sum.golang.org'"),
    ):
        open_checkpoint(SUMDB_NOTE, [parse_verifier_key(SUMDB_KEY)], origin="sum.golang.org")


# --- body --------------------------------------------------------------------------------------


def test_body_lists_origin_size_hash_and_extensions() -> None:
    checkpoint = Checkpoint(ORIGIN, 7, ROOT, ("ext one", "ext-two"))
    assert checkpoint.body() == f"{ORIGIN}\n7\n{ROOT_B64}\next one\next-two\n"
    assert parse_checkpoint_body(checkpoint.body()) == checkpoint


def test_empty_tree_and_largest_size_are_accepted() -> None:
    empty = Checkpoint(ORIGIN, 0, hashlib.sha256(b"").digest())
    assert empty.body().split("\n")[1] == "0"
    assert parse_checkpoint_body(empty.body()) == empty
    largest = Checkpoint(ORIGIN, MAX_TREE_SIZE, ROOT)
    assert parse_checkpoint_body(largest.body()).size == 2**64 - 1


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (f"{ORIGIN}\n7\n{ROOT_B64}", "must end with a newline"),
        (f"{ORIGIN}\n7\n", "at least 3 lines"),
        ("", "must end with a newline"),
        (f"\n7\n{ROOT_B64}\n", "origin (line 1) must not be empty"),
        (f"{ORIGIN}\n07\n{ROOT_B64}\n", "without leading zeroes, got '07'"),
        (f"{ORIGIN}\n00\n{ROOT_B64}\n", "got '00'"),
        (f"{ORIGIN}\n+7\n{ROOT_B64}\n", "got '+7'"),
        (f"{ORIGIN}\n-7\n{ROOT_B64}\n", "got '-7'"),
        (f"{ORIGIN}\n 7\n{ROOT_B64}\n", "got ' 7'"),
        (f"{ORIGIN}\n7 \n{ROOT_B64}\n", "got '7 '"),
        (f"{ORIGIN}\n1_000\n{ROOT_B64}\n", "got '1_000'"),
        (f"{ORIGIN}\n\u0667\n{ROOT_B64}\n", "ASCII decimal"),
        (f"{ORIGIN}\n0x7\n{ROOT_B64}\n", "got '0x7'"),
        (f"{ORIGIN}\n\n{ROOT_B64}\n", "got ''"),
        (f"{ORIGIN}\n{2**64}\n{ROOT_B64}\n", "exceeds 2**64 - 1"),
        (f"{ORIGIN}\n7\nnot base64!\n", "root hash (line 3) is not standard base64"),
        (f"{ORIGIN}\n7\n{ROOT_B64[:-2]}Z=\n", "root hash (line 3) is not canonical base64"),
        (
            f"{ORIGIN}\n7\n{base64.b64encode(ROOT[:31]).decode()}\n",
            "(line 3) must decode to 32 bytes, got 31",
        ),
        (f"{ORIGIN}\n7\n{base64.b64encode(ROOT + b'x').decode()}\n", "32 bytes, got 33"),
        (f"{ORIGIN}\n7\n\n", "32 bytes, got 0"),
        (f"{ORIGIN}\n7\n{ROOT_B64}\n\n", "extension line (line 4) must not be empty"),
        (f"{ORIGIN}\n7\n{ROOT_B64}\next\n\nmore\n", "(line 5) must not be empty"),
        (f"{ORIGIN}\r\n7\n{ROOT_B64}\n", "contains U+000D"),
        (f"{ORIGIN}\n7\n{ROOT_B64}\ntab\there\n", "contains U+0009"),
    ],
)
def test_malformed_bodies_are_rejected_with_the_line_at_fault(text: str, message: str) -> None:
    with pytest.raises(CheckpointError, match=re.escape(message)):
        parse_checkpoint_body(text)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"origin": ""}, "origin must not be empty"),
        ({"origin": "two\nlines"}, "origin contains U+000A"),
        ({"size": -1}, "size must be in [0, 2**64 - 1], got -1"),
        ({"size": 2**64}, "got 18446744073709551616"),
        ({"size": True}, "size must be an int, got True"),
        ({"size": 7.0}, "size must be an int, got 7.0"),
        ({"root_hash": ROOT[:16]}, "root hash must be 32 bytes, got 16"),
        ({"extensions": ("",)}, "extension line 1 must not be empty"),
        ({"extensions": ("ok", "bad\n")}, "extension line 2 contains U+000A"),
    ],
)
def test_checkpoint_refuses_invalid_fields(kwargs: dict[str, object], message: str) -> None:
    fields: dict[str, object] = {"origin": ORIGIN, "size": 7, "root_hash": ROOT, **kwargs}
    with pytest.raises(CheckpointError, match=re.escape(message)):
        Checkpoint(**fields)  # type: ignore[arg-type]


# An origin or extension line: any non-empty text without control characters or surrogates.
_line = st.text(
    alphabet=st.characters(exclude_categories=["Cs"], min_codepoint=0x20),
    min_size=1,
    max_size=40,
)
_checkpoints = st.builds(
    Checkpoint,
    origin=_line,
    size=st.integers(min_value=0, max_value=MAX_TREE_SIZE),
    root_hash=st.binary(min_size=32, max_size=32),
    extensions=st.lists(_line, max_size=3).map(tuple),
)


@given(checkpoint=_checkpoints)
def test_body_round_trips(checkpoint: Checkpoint) -> None:
    body = checkpoint.body()
    assert body.endswith("\n")
    assert body.count("\n") == 3 + len(checkpoint.extensions)
    assert parse_checkpoint_body(body) == checkpoint


_SIGNER = Ed25519Signer.generate(ORIGIN)


@given(checkpoint=_checkpoints)
def test_signed_checkpoint_round_trips(checkpoint: Checkpoint) -> None:
    note = sign_checkpoint(checkpoint, [_SIGNER])
    assert note.startswith(checkpoint.body() + "\n")
    assert open_checkpoint(note, [_SIGNER.verifier], origin=checkpoint.origin) == checkpoint


# --- signing and opening -----------------------------------------------------------------------


def test_sign_checkpoint_produces_a_note_over_the_body() -> None:
    log = Ed25519Signer.generate(ORIGIN)
    checkpoint = Checkpoint(ORIGIN, 3, ROOT)
    note = sign_checkpoint(checkpoint, [log])
    text, signatures = parse_note(note)
    assert text == checkpoint.body()
    assert [s.key for s in signatures] == [log.verifier.key]
    assert open_checkpoint(note, [log.verifier], origin=ORIGIN) == checkpoint
    assert open_checkpoint(note, [log.verifier]) == checkpoint


def test_witness_cosigned_checkpoint_opens_with_the_log_key_alone() -> None:
    log, witness = Ed25519Signer.generate(ORIGIN), Ed25519Signer.generate("witness.example")
    checkpoint = Checkpoint(ORIGIN, 3, ROOT)
    note = sign_checkpoint(checkpoint, [log, witness])
    assert open_checkpoint(note, [log.verifier], origin=ORIGIN) == checkpoint


def test_checkpoint_signed_by_an_untrusted_key_is_rejected() -> None:
    log, impostor = Ed25519Signer.generate(ORIGIN), Ed25519Signer.generate(ORIGIN)
    note = sign_checkpoint(Checkpoint(ORIGIN, 3, ROOT), [impostor])
    with pytest.raises(
        UnverifiedNoteError,
        match=f"expected one of {re.escape(log.verifier.key)}; found "
        f"{re.escape(impostor.verifier.key)}",
    ):
        open_checkpoint(note, [log.verifier], origin=ORIGIN)


def test_every_change_to_a_signed_body_is_rejected() -> None:
    log = Ed25519Signer.generate(ORIGIN)
    checkpoint = Checkpoint(ORIGIN, 12345, ROOT, ("ext",))
    note = sign_checkpoint(checkpoint, [log])
    body = checkpoint.body()
    for position, char in enumerate(body):
        if char == "\n":
            continue
        replacement = "1" if char != "1" else "2"
        tampered = body[:position] + replacement + body[position + 1 :] + note[len(body) :]
        with pytest.raises(InvalidSignatureError):
            open_checkpoint(tampered, [log.verifier])


def test_dropped_or_added_extension_is_rejected() -> None:
    log = Ed25519Signer.generate(ORIGIN)
    note = sign_checkpoint(Checkpoint(ORIGIN, 3, ROOT, ("ext",)), [log])
    for tampered in (note.replace("ext\n", ""), note.replace("ext\n", "ext\nmore\n")):
        with pytest.raises(InvalidSignatureError):
            open_checkpoint(tampered, [log.verifier])


def test_origin_mismatch_is_reported_after_the_signature_verifies() -> None:
    other = Ed25519Signer.generate("other.example/log")
    note = sign_checkpoint(Checkpoint("other.example/log", 3, ROOT), [other])
    with pytest.raises(
        CheckpointOriginError,
        match=re.escape(
            "checkpoint origin is 'other.example/log', expected 'sovereign.example/audit'"
        ),
    ):
        open_checkpoint(note, [other.verifier], origin=ORIGIN)


def test_validly_signed_text_that_is_not_a_checkpoint_is_rejected() -> None:
    from audit.note import sign_note

    log = Ed25519Signer.generate(ORIGIN)
    note = sign_note(f"{ORIGIN}\n007\n{ROOT_B64}\n", [log])
    with pytest.raises(CheckpointError, match="got '007'"):
        open_checkpoint(note, [log.verifier])


def test_malformed_checkpoint_note_is_a_note_error() -> None:
    log = Ed25519Signer.generate(ORIGIN)
    with pytest.raises(MalformedNoteError, match="no blank line"):
        open_checkpoint(Checkpoint(ORIGIN, 3, ROOT).body(), [log.verifier])
