"""Whole-log verification: rebuild the tree from the stored events and hold it to the signatures.

Owns :func:`verify_log`, what ``sovereign audit verify`` runs. It trusts nothing in the database
but the events' bytes: it recomputes every leaf hash, rebuilds the RFC 9162 tree from them, and
checks that at every signed checkpoint (in the database and in the witness file) the rebuilt
root equals the signed root. Since one append-only tree matches every checkpoint, consecutive
checkpoints are consistent with each other. Any change to an event, a deletion, a swap, an
insertion, a truncated tail or a wholesale re-hashed forgery makes some check fail; the error
names the first bad index it can pin down. In the same pass it holds the filter columns that
queries use to each event's bytes.

How: the log is cut into aligned chunks ``[i * 2**k, (i + 1) * 2**k)`` (one chunk when it all
runs here). Each chunk is read once, in batches, and checked on its own: indices contiguous,
leaf hashes, filter columns, and the compact range (:class:`audit.merkle.Frontier`) of the
chunk's leaves, also at every signed size inside it. Chunks are aligned subtrees, so joining
their compact ranges in order rebuilds the whole tree exactly (:meth:`Frontier.join`), and the
signed roots are checked while joining. Large logs are checked by this process and worker
processes together (``spawn``: each opens its own connection through a
:class:`audit.store.LogSource` and claims chunks from the back while this process claims from
the front); what a worker found is joined here, and a chunk whose worker died is read again
here. Which process read a chunk changes nothing in the outcome: the error reported is always
the one the events would give checked one by one in order (at each index: a missing event, then
a leaf hash, then the filter columns; a signed size is checked once all events below it are).

Pure: it reads the log through the :class:`audit.store.LogReader` port (the SQL one is
:class:`audit.sql.SqlLogReader`) and the witness as already-read checkpoints, so it imports no
database library; an import-linter contract keeps it so.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import queue
import sys
import types
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import islice
from operator import ne
from typing import Any

from audit.checkpoint import CheckpointError, open_checkpoint
from audit.merkle import Frontier, leaf_hashes
from audit.note import NoteError, NoteVerifier
from audit.store import (
    INDEX_COLUMNS,
    MALFORMED_EVENT_ERRORS,
    TIME_BLOCK,
    BatchLogReader,
    LogReader,
    LogSource,
    RowBatch,
    SummarisedLogReader,
    TimeBlock,
    index_values,
)
from audit.witness import WitnessedCheckpoint

#: How many events are checked between two progress reports.
PROGRESS_EVERY = 100_000
#: Rows per batch when reading through a plain :class:`LogReader`.
BATCH = 8192
#: Smallest log checked in several processes when none is asked for: starting a worker costs a
#: few tenths of a second, what this process checks 20,000 to 100,000 events in.
PARALLEL_MIN_EVENTS = 200_000
#: Chunks per process: enough for the processes to even out, few enough to cost nothing.
CHUNKS_PER_PROCESS = 8
#: Seconds between checks that the workers are still alive while waiting for them.
_WAIT_S = 0.5


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
    #: Events read and checked by worker processes (0 when it all ran in the calling one).
    worker_events: int = 0


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
    source: LogSource | None = None,
    processes: int | None = None,
) -> VerifyReport:
    """Rebuild the tree from the stored events and check it against every signed checkpoint.

    With ``check_columns`` (the default) it also checks that the filter columns queries use
    (actor, action, target, time, outcome, label) say what each event's bytes say, so no event
    can be hidden from, or misattributed in, a filtered view; that parses every event and costs
    more than the hashing. ``check_columns=False`` proves the tree only.

    ``processes`` is how many processes read and check the log: 1 does it all here; ``n > 1``
    starts ``n - 1`` workers, which open their own readers through ``source`` (``reader`` must
    then be a :class:`BatchLogReader`). None (the default) uses two where that pays: a
    ``source`` and a batch reader are given, more than one CPU is usable and the log holds at
    least :data:`PARALLEL_MIN_EVENTS` events.

    :raises LogVerificationError: describing the first problem found.
    :raises ValueError: if ``processes`` is below 1, or above 1 without a ``source`` and a
        :class:`BatchLogReader`.
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
    # Not trusted either: every index below it must be stored, and no signed size above it.
    total = reader.size()
    largest = max(targets, default=0)
    if largest > total:
        raise LogVerificationError(
            f"log truncated: a checkpoint was signed at size {largest} but only {total} "
            "events are stored",
            index=total,
        )

    count = _processes(reader, source, total, processes)
    meter = _Progress(total, progress)
    task = _Task(tuple(_plan(total, count)), tuple(sorted(targets)), check_columns)
    worker_events = 0
    with _collector_paused():
        if count > 1:
            assert source is not None
            assert isinstance(reader, BatchLogReader)
            parallel = _Parallel(task, source, count - 1, meter)
            scans = parallel.run(reader)
            worker_events = parallel.worker_events
        else:
            scans = [task.scan(reader, index, meter.add) for index in range(len(task.plan))]
    frontier = _join(scans, targets)
    if check_columns and isinstance(reader, SummarisedLogReader):
        _check_time_summaries(reader.time_summaries(), scans, total)
    meter.done()
    return VerifyReport(
        size=frontier.size,
        root_hash=frontier.root(),
        checkpoints=len(signed),
        witnessed=len(witnessed),
        worker_events=worker_events,
    )


def _processes(
    reader: LogReader, source: LogSource | None, total: int, processes: int | None
) -> int:
    """How many processes to check the log with (see :func:`verify_log`)."""
    can = source is not None and isinstance(reader, BatchLogReader)
    if processes is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        return 2 if can and (cpus or 1) > 1 and total >= PARALLEL_MIN_EVENTS else 1
    if processes < 1:
        raise ValueError(f"processes must be at least 1, got {processes}")
    if processes > 1 and not can:
        raise ValueError("checking in several processes needs a source and a BatchLogReader")
    return processes if total > 1 else 1


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector while the log is read (and restore it after).

    The checks make no reference cycles, but every batch allocates tens of thousands of tuples
    and dicts that live until the batch is done; each time enough of them outlive a young
    collection the collector walks the whole heap again: a quarter of a tree-only run's time
    (best of five: 300,000 events/s with it, 410,000 without; 107,000 and 120,000 with the
    column check). Memory is still freed at once by reference counting.
    """
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


@contextmanager
def _bare_main() -> Iterator[None]:
    """Start workers without the caller's ``__main__``.

    A spawned process first imports the parent's main module again (the ``sovereign`` command,
    a benchmark script), which costs it more than the rest of its start-up; the workers need
    nothing from it (their function and arguments live in ``audit``), so while they are started
    ``__main__`` is a bare module, and ``multiprocessing`` gives them none to import.
    """
    main = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = main


def _plan(total: int, processes: int) -> list[tuple[int, int]]:
    """The chunks: ``[start, stop)`` ranges of one aligned power-of-two width (the last may be
    shorter), about :data:`CHUNKS_PER_PROCESS` per process; one chunk for one process."""
    if processes == 1:
        return [(0, total)] if total else []
    width = 1 << max(0, (total // (processes * CHUNKS_PER_PROCESS)).bit_length() - 1)
    return [(start, min(start + width, total)) for start in range(0, total, width)]


class _Progress:
    """Calls ``progress(done, total)`` each time another :data:`PROGRESS_EVERY` events are done."""

    def __init__(self, total: int, progress: Callable[[int, int], None] | None) -> None:
        self._total = total
        self._progress = progress
        self._done = 0

    def add(self, events: int) -> None:
        before, self._done = self._done, self._done + events
        if self._progress is not None and before // PROGRESS_EVERY < self._done // PROGRESS_EVERY:
            self._progress(self._done, self._total)

    def done(self) -> None:
        if self._progress is not None:
            self._progress(self._done, self._total)


# -- one chunk ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Found:
    """The first problem in a chunk: the event index it is pinned to, and what it is."""

    index: int
    message: str


@dataclass(frozen=True)
class _Scan:
    """What checking one chunk found; small and picklable, so workers send it back."""

    start: int
    #: Events from ``start`` on that passed every check (all of the chunk unless ``error``).
    good: int
    #: The compact range of those events' leaves, computed over them alone.
    hashes: tuple[bytes, ...]
    #: ``(size, compact range of [start, size))`` at each signed size in ``(start, start+good]``.
    signed: tuple[tuple[int, tuple[bytes, ...]], ...]
    error: _Found | None
    #: The time range of the good events of each block the chunk touches (only when the
    #: columns are checked): a chunk may hold part of a block, so ranges are merged.
    times: dict[int, tuple[Any, Any]]


@dataclass(frozen=True)
class _Task:
    """What every process needs to check chunks (sent to the workers as it is)."""

    plan: tuple[tuple[int, int], ...]
    signed_sizes: tuple[int, ...]
    columns: bool

    def scan(
        self, reader: LogReader, index: int, on_batch: Callable[[int], None] | None = None
    ) -> _Scan:
        """Check chunk ``index``, read through ``reader``."""
        start, stop = self.plan[index]
        batches = _read(reader, start, stop, self.columns)
        return _scan(
            batches, start, stop, self.signed_sizes, columns=self.columns, on_batch=on_batch
        )


def _read(reader: LogReader, start: int, stop: int, columns: bool) -> Iterable[RowBatch]:
    """The rows of ``[start, stop)`` and the one after (it names the next event after a gap)."""
    if isinstance(reader, BatchLogReader):
        return reader.row_batches(start, stop - start + 1, columns=columns)
    assert start == 0  # a plain reader only ever reads the whole log, in this process
    return _plain_batches(reader, columns)


def _plain_batches(reader: LogReader, columns: bool) -> Iterator[RowBatch]:
    """Batches from a plain :class:`LogReader`'s two streams, read side by side."""
    rows = iter(reader.entries())
    named = iter(reader.filter_columns()) if columns else None
    while batch := list(islice(rows, BATCH)):
        seqs, entries, leaves = zip(*batch, strict=True)
        values = None
        if named is not None:
            values = []
            for seq, entry in zip(seqs, entries, strict=True):
                seq2, entry2, stored = next(named, (None, None, {}))
                if (seq2, entry2) != (seq, entry):
                    # The columns must be checked against the very bytes that were hashed.
                    raise LogVerificationError(
                        f"the reader returned event {seq} with other bytes (or at another "
                        "index) when asked for its filter columns",
                        index=seq,
                    )
                values.append(tuple(stored.get(name) for name in INDEX_COLUMNS))
        yield RowBatch(seqs, entries, leaves, values)


def _scan(
    batches: Iterable[RowBatch],
    start: int,
    stop: int,
    signed_sizes: Sequence[int],
    *,
    columns: bool,
    on_batch: Callable[[int], None] | None = None,
) -> _Scan:
    """Check the events ``[start, stop)`` from ``batches``; stop at the first problem."""
    frontier = Frontier()
    times: dict[int, tuple[Any, Any]] = {}
    wanted = [size - start for size in signed_sizes if start < size <= stop]
    at: list[tuple[int, tuple[bytes, ...]]] = []
    expected = start
    error: _Found | None = None
    for batch in batches:
        n = min(len(batch.seqs), stop - expected)
        if n <= 0:
            break  # the row after the chunk
        leaves, error = _check(expected, batch, n, columns)
        if columns:
            assert batch.columns is not None
            _fold_times(times, expected, [c[0] for c in batch.columns[: len(leaves)]])
        pos = 0
        while pos < len(leaves):
            # Extend up to the next signed size, note the compact range there, go on.
            room = len(leaves) - pos
            if wanted:
                room = min(room, wanted[0] - frontier.size)
            frontier.extend(leaves[pos : pos + room], emit=False)
            pos += room
            if wanted and wanted[0] == frontier.size:
                at.append((start + wanted.pop(0), frontier.hashes))
        expected += len(leaves)
        if on_batch is not None:
            on_batch(len(leaves))
        if error is not None:
            break
    else:
        if expected < stop:
            error = _Found(expected, f"event {expected} is missing (no later event is stored)")
    return _Scan(start, frontier.size, frontier.hashes, tuple(at), error, times)


def _check(
    expected: int, batch: RowBatch, n: int, columns: bool
) -> tuple[list[bytes], _Found | None]:
    """The leaf hashes of the first ``n`` rows of ``batch`` that pass every check, and the first
    problem (the events before it pass)."""
    seqs, entries, stored = batch.seqs[:n], batch.entries[:n], batch.leaf_hashes[:n]
    found = None
    if any(map(ne, seqs, range(expected, expected + n))):
        n = next(i for i, seq in enumerate(seqs) if seq != expected + i)
        found = _Found(
            expected + n,
            f"event {expected + n} is missing (the next stored event is {seqs[n]})",
        )
        entries = entries[:n]
    leaves = leaf_hashes(entries)
    if any(map(ne, leaves, stored)):
        n = next(
            i
            for i, (mine, theirs) in enumerate(zip(leaves, stored, strict=False))
            if mine != theirs
        )
        found = _Found(
            expected + n,
            f"event {expected + n} does not match its stored leaf hash (its bytes were changed)",
        )
        del leaves[n:]
    if columns:
        assert batch.columns is not None
        bad = _check_columns(expected, entries[:n], batch.columns[:n])
        if bad is not None:
            n, found = bad
            del leaves[n:]
    return leaves, found


def _check_columns(
    expected: int, entries: Sequence[bytes], stored: Sequence[tuple[Any, ...]]
) -> tuple[int, _Found] | None:
    """The first event (position and problem) whose stored filter columns are not what its
    bytes say, if any."""
    try:
        mine = [index_values(entry) for entry in entries]
    except MALFORMED_EVENT_ERRORS:
        pass  # found below, with the others
    else:
        if not any(map(ne, mine, stored)):
            return None
    for i, (entry, theirs) in enumerate(zip(entries, stored, strict=True)):
        seq = expected + i
        try:
            values = index_values(entry)
        except MALFORMED_EVENT_ERRORS as e:
            return i, _Found(
                seq,
                f"event {seq} is not a well-formed event, so its filter columns cannot be "
                f"checked: {type(e).__name__}: {e}",
            )
        for k, (name, value) in enumerate(zip(INDEX_COLUMNS, values, strict=True)):
            column = theirs[k] if k < len(theirs) else None
            if column != value:
                return i, _Found(
                    seq,
                    f"event {seq}'s stored {name} is {column!r} but the event says {value!r}: "
                    "filtered views could hide or misattribute it",
                )
    return None


def _fold_times(into: dict[int, tuple[Any, Any]], first: int, times: Sequence[Any]) -> None:
    """Widen each block's time range in ``into`` by ``times``, the times of the events from
    index ``first`` on (one slice per block: min and max run in C)."""
    pos = 0
    while pos < len(times):
        block = (first + pos) // TIME_BLOCK
        end = min(len(times), (block + 1) * TIME_BLOCK - first)
        part = times[pos:end]
        _widen(into, block, min(part), max(part))
        pos = end


def _widen(into: dict[int, tuple[Any, Any]], block: int, lo: Any, hi: Any) -> None:
    """Widen ``block``'s range in ``into`` to take in ``[lo, hi]``."""
    seen = into.get(block)
    into[block] = (lo, hi) if seen is None else (min(lo, seen[0]), max(hi, seen[1]))


def _check_time_summaries(stored: Sequence[TimeBlock], scans: Sequence[_Scan], size: int) -> None:
    """Each stored time summary is the time range of its block's events (whose time columns
    the scans held to their bytes), for blocks 0, 1, 2... in turn: a summary that narrows a
    block's range, or a block left out, would let a time-filtered view skip its events."""
    times: dict[int, tuple[Any, Any]] = {}
    for scan in scans:
        for block, (first, last) in scan.times.items():
            _widen(times, block, first, last)
    for k, (block, lo, hi) in enumerate(stored):
        if block != k:
            raise LogVerificationError(
                f"the time summaries skip block {k} (the next is block {block}): "
                "time-filtered views could skip its events"
            )
        if (k + 1) * TIME_BLOCK > size:
            raise LogVerificationError(
                f"there is a time summary for block {k}, which the log does not hold whole"
            )
        real_lo, real_hi = times[k]
        if (lo, hi) != (real_lo, real_hi):
            raise LogVerificationError(
                f"the time summary of block {k} says its events run from {lo.isoformat()} to "
                f"{hi.isoformat()} but they run from {real_lo.isoformat()} to "
                f"{real_hi.isoformat()}: time-filtered views could skip them"
            )


# -- the chunks together --------------------------------------------------------------------------


def _join(scans: Sequence[_Scan], targets: dict[int, _Signed]) -> Frontier:
    """Join the chunks' compact ranges in order, checking every signed root on the way.

    :raises LogVerificationError: for the first failure, in the order the events would give.
    """
    frontier = Frontier()
    last_good = 0
    for scan in scans:
        for size, hashes in scan.signed:
            tree = Frontier(frontier.size, frontier.hashes)
            tree.join(size - scan.start, hashes)
            want = targets[size]
            if tree.root() != want.root_hash:
                raise LogVerificationError(
                    f"the first {size} events do not match the {want.source} signed at that "
                    f"size; the first bad event is at index {last_good} or later (events "
                    "before it match an earlier checkpoint)",
                    index=last_good,
                )
            last_good = size
        if scan.error is not None:
            raise LogVerificationError(scan.error.message, index=scan.error.index)
        frontier.join(scan.good, scan.hashes)
    return frontier


def _claim(claims: Any, *, back: bool) -> int | None:
    """Take the next chunk to check from the front (this process) or the back (workers).

    ``claims`` holds the next front chunk, one past the next back chunk, and one past the
    first chunk with a problem (no later chunk matters then).
    """
    with claims.get_lock():
        front, end = claims[0], min(claims[1], claims[2])
        if front >= end:
            return None
        if back:
            claims[1] = end - 1
            return int(end - 1)
        claims[0] = front + 1
        return int(front)


def _stop_after(claims: Any, index: int) -> None:
    """No chunk after ``index`` needs checking: it holds a problem."""
    with claims.get_lock():
        claims[2] = min(claims[2], index + 1)


def _work(source: LogSource, task: _Task, first: Sequence[int], claims: Any, results: Any) -> None:
    """A worker process: check the chunks ``first``, then claim more from the back."""
    try:
        with _collector_paused(), source.open() as reader:
            index: int | None
            for index in first:
                if index < claims[2]:
                    _send(task, reader, index, claims, results)
            while (index := _claim(claims, back=True)) is not None:
                _send(task, reader, index, claims, results)
    finally:
        # Whatever happened, say so: the parent checks again what never came.
        results.put(None)


def _send(task: _Task, reader: BatchLogReader, index: int, claims: Any, results: Any) -> None:
    scan = task.scan(reader, index)
    if scan.error is not None:
        _stop_after(claims, index)
    results.put((index, scan))


class _Parallel:
    """Checks the chunks of a :class:`_Task` in this process and in worker processes."""

    def __init__(self, task: _Task, source: LogSource, workers: int, meter: _Progress) -> None:
        ctx = multiprocessing.get_context("spawn")
        chunks = len(task.plan)
        # The first worker starts on the last quarter of the chunks: this process, which
        # starts at once, gets more, and tests know which process checks which chunk.
        reserved = list(range(chunks - max(1, chunks // 4), chunks))
        self._task = task
        self._meter = meter
        self._claims = ctx.Array("q", [0, reserved[0], chunks])
        self._results = ctx.Queue()
        self._procs = [
            ctx.Process(
                target=_work,
                args=(source, task, reserved if w == 0 else (), self._claims, self._results),
                daemon=True,
                name=f"verify-worker-{w}",
            )
            for w in range(workers)
        ]
        self._scans: dict[int, _Scan] = {}
        self._ended = 0
        self.worker_events = 0

    def run(self, reader: BatchLogReader) -> list[_Scan]:
        """The scans in chunk order, up to the first that found a problem."""
        with _bare_main():
            for proc in self._procs:
                proc.start()
        try:
            while (index := _claim(self._claims, back=False)) is not None:
                self._scans[index] = scan = self._task.scan(reader, index, self._on_batch)
                if scan.error is not None:
                    _stop_after(self._claims, index)
            self._wait()
        finally:
            for proc in self._procs:
                proc.join(timeout=_WAIT_S)
                if proc.is_alive():
                    proc.terminate()
                    proc.join()
            self._results.close()
        needed = self._claims[2]
        for index in range(needed):
            if index not in self._scans:  # its worker died: check it here
                self._scans[index] = self._task.scan(reader, index, self._meter.add)
        return [self._scans[index] for index in range(needed)]

    def _wait(self) -> None:
        """Take the workers' results until each has ended (or died)."""
        while self._ended < len(self._procs):
            if not self._receive(_WAIT_S) and not any(p.is_alive() for p in self._procs):
                while self._receive(None):
                    pass
                return

    def _on_batch(self, events: int) -> None:
        self._meter.add(events)
        while self._receive(None):
            pass

    def _receive(self, timeout: float | None) -> bool:
        """Take one message from the workers (waiting up to ``timeout``); False if none came."""
        try:
            if timeout is None:
                message = self._results.get_nowait()
            else:
                message = self._results.get(timeout=timeout)
        except queue.Empty:
            return False
        if message is None:
            self._ended += 1
        else:
            index, scan = message
            self._scans[index] = scan
            self.worker_events += scan.good
            self._meter.add(scan.good)
        return True
