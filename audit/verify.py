"""Whole-log verification: rebuild the tree from the stored events and hold it to the signatures.

Owns :func:`verify_log`, what ``sovereign audit verify`` runs. It trusts nothing in the database
but the events' bytes: it recomputes every leaf hash, rebuilds the RFC 9162 tree from them, and
checks that at every signed checkpoint (in the database and in the witness file) the rebuilt
root equals the signed root. Since one append-only tree matches every checkpoint, consecutive
checkpoints are consistent with each other. Any change to an event, a deletion, a swap, an
insertion, a truncated tail or a wholesale re-hashed forgery makes some check fail; the error
names the first bad index it can pin down.

Pure: it reads the log through the :class:`audit.store.LogReader` port (the SQL one is
:class:`audit.sql.SqlLogReader`) and the witness as already-read checkpoints, so it imports no
database library; an import-linter contract keeps it so.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from audit.checkpoint import CheckpointError, open_checkpoint
from audit.merkle import Frontier, leaf_hashes
from audit.note import NoteError, NoteVerifier
from audit.store import LogReader, index_columns
from audit.witness import WitnessedCheckpoint

#: How many events are hashed between two progress reports.
PROGRESS_EVERY = 100_000
#: Events hashed per step.
BATCH = 10_000


class LogVerificationError(Exception):
    """The log is not intact. ``index`` is the first bad event index, where one is known."""

    def __init__(self, message: str, *, index: int | None = None) -> None:
        super().__init__(message)
        self.index = index


@dataclass(frozen=True)
class VerifyReport:
    """What an intact log looked like."""

    size: int
    root_hash: bytes
    checkpoints: int
    witnessed: int


@dataclass(frozen=True)
class _Signed:
    size: int
    root_hash: bytes
    source: str


def _open_all(
    notes: Iterable[tuple[int, bytes, str, str]], verifiers: Sequence[NoteVerifier], origin: str
) -> dict[int, _Signed]:
    """Verify each signed note and check it says what its row or line claims."""
    found: dict[int, _Signed] = {}
    for size, root, note, source in notes:
        try:
            cp = open_checkpoint(note, verifiers, origin)
        except (NoteError, CheckpointError) as e:
            raise LogVerificationError(f"{source} at size {size} does not verify: {e}") from e
        if (cp.size, cp.root_hash) != (size, root):
            raise LogVerificationError(
                f"{source} at size {size} claims root {root.hex()}, but its signed note says "
                f"size {cp.size} root {cp.root_hash.hex()}"
            )
        other = found.get(size)
        if other is not None and other.root_hash != root:
            raise LogVerificationError(
                f"{source} and {other.source} disagree at size {size}: "
                f"{root.hex()} vs {other.root_hash.hex()}",
                index=None,
            )
        found[size] = _Signed(size, root, source)
    return found


def verify_log(
    reader: LogReader,
    verifiers: Sequence[NoteVerifier],
    origin: str,
    *,
    witness: Sequence[WitnessedCheckpoint] = (),
    progress: Callable[[int, int], None] | None = None,
    check_columns: bool = True,
) -> VerifyReport:
    """Rebuild the tree from the stored events and check it against every signed checkpoint.

    With ``check_columns`` (the default) a second pass also checks that the filter columns
    queries use (actor, action, target, time, outcome, label) say what each event's bytes say,
    so no event can be hidden from, or misattributed in, a filtered view. That pass parses
    every event and costs more than the hashing; ``check_columns=False`` proves the tree only.

    :raises LogVerificationError: describing the first problem found.
    """
    stored = reader.checkpoints()
    signed = _open_all(
        [(c.size, c.root_hash, c.note, "stored checkpoint") for c in stored], verifiers, origin
    )
    witnessed = _open_all(
        [(w.size, w.root_hash, w.note, "witness checkpoint") for w in witness], verifiers, origin
    )
    for size, w in witnessed.items():
        s = signed.get(size)
        if s is not None and s.root_hash != w.root_hash:
            raise LogVerificationError(
                f"the database's checkpoint at size {size} differs from the witness's"
            )
    targets = {**signed, **witnessed}
    total = reader.size()
    largest = max(targets, default=0)
    if largest > total:
        raise LogVerificationError(
            f"log truncated: a checkpoint was signed at size {largest} but only {total} "
            "events are stored",
            index=total,
        )

    rebuilt = _Rebuilder(targets)
    entries: list[bytes] = []
    leaves: list[bytes] = []
    expected = 0
    for seq, entry, stored_leaf in reader.entries():
        if seq != expected:
            raise LogVerificationError(
                f"event {expected} is missing (the next stored event is {seq})", index=expected
            )
        entries.append(entry)
        leaves.append(stored_leaf)
        expected += 1
        if len(entries) >= BATCH:
            rebuilt.add(entries, leaves)
            entries, leaves = [], []
            if progress is not None and expected % PROGRESS_EVERY < BATCH:
                progress(expected, total)
    rebuilt.add(entries, leaves)
    if progress is not None:
        progress(expected, total)
    frontier = rebuilt.frontier
    if check_columns:
        _check_columns(reader)
    return VerifyReport(
        size=frontier.size,
        root_hash=frontier.root(),
        checkpoints=len(signed),
        witnessed=len(witnessed),
    )


def _check_columns(reader: LogReader) -> None:
    """Every event's filter columns must equal what its (already verified) bytes say."""
    for seq, entry, stored in reader.filter_columns():
        expected = index_columns(entry)
        for name, value in expected.items():
            if stored[name] != value:
                raise LogVerificationError(
                    f"event {seq}'s stored {name} is {stored[name]!r} but the event says "
                    f"{value!r}: filtered views could hide or misattribute it",
                    index=seq,
                )


class _Rebuilder:
    """The tree rebuilt from event bytes, checked at every signed size as it grows."""

    def __init__(self, targets: dict[int, _Signed]) -> None:
        self.frontier = Frontier()
        self._targets = targets
        self._sizes = sorted(targets)
        self._next = 0
        self._last_good = 0

    def add(self, entries: list[bytes], stored: list[bytes]) -> None:
        """Hash ``entries``, compare with their stored leaf hashes, extend and check roots."""
        computed = leaf_hashes(entries)
        start = self.frontier.size
        for offset, (mine, theirs) in enumerate(zip(computed, stored, strict=True)):
            if mine != theirs:
                raise LogVerificationError(
                    f"event {start + offset} does not match its stored leaf hash "
                    "(its bytes were changed)",
                    index=start + offset,
                )
        pos = 0
        while pos < len(computed):
            # Extend up to the next signed size, check the root there, go on.
            room = len(computed) - pos
            if self._next < len(self._sizes):
                room = min(room, self._sizes[self._next] - self.frontier.size)
            self.frontier.extend(computed[pos : pos + room], emit=False)
            pos += room
            self._check()

    def _check(self) -> None:
        sizes = self._sizes
        while self._next < len(sizes) and sizes[self._next] == self.frontier.size:
            want = self._targets[self.frontier.size]
            if self.frontier.root() != want.root_hash:
                raise LogVerificationError(
                    f"the first {self.frontier.size} events do not match the {want.source} "
                    f"signed at that size; the first bad event is at index {self._last_good} "
                    f"or later (events before it match an earlier checkpoint)",
                    index=self._last_good,
                )
            self._last_good = self.frontier.size
            self._next += 1
