"""The tamper-evident audit log behind the control plane: sequencer, signer, witness, proofs.

Owns the wiring of the ``audit`` library to the control plane's database: the checkpoint
signer (a local Ed25519 key file for now; Vault transit later), the witness file, the
sequencer (one run per :meth:`SqlAuditLog.sequence`; the loops that call it live in
:mod:`sovereign.worker`), the published-keys file (written by :meth:`SqlAuditLog.publish_keys`
only), and the reads behind the auditor API and CLI. Translates the library's errors once, here.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa

from audit.export import export
from audit.note import NoteError, NoteVerifier, parse_verifier_key, sign_note
from audit.proof import Proof, format_proof
from audit.sequencer import Sequencer, SequencerRun, TamperError
from audit.signer import Ed25519FileSigner, Signer, SignerError
from audit.sql import MissingNodeError, SqlAuditStore, SqlLogReader, SqlLogSource
from audit.store import AuditQuery, StoredEvent
from audit.verify import LogVerificationError, VerifyReport, verify_log
from audit.witness import WitnessError, WitnessFile
from sovereign.adapters.database import translate_errors
from sovereign.errors import (
    ConfigurationError,
    ConflictError,
    NotFoundError,
)
from sovereign.services.ports import Consistency
from sovereign.text import for_log

log = logging.getLogger(__name__)


def file_signer(name: str, path: Path, *, create: bool) -> Ed25519FileSigner:
    """The checkpoint signing key at ``path`` (created with mode 0600 when allowed and missing).

    :raises ConfigurationError: if the key is missing (and may not be created) or unusable.
    """
    try:
        if not path.exists() and create:
            path.parent.mkdir(parents=True, exist_ok=True)
            log.warning("created a new audit checkpoint signing key at %s", path)
            return Ed25519FileSigner(name, path, create=True)
        return Ed25519FileSigner(name, path)
    except (SignerError, NoteError) as e:
        raise ConfigurationError(reason=f"audit signing key: {e}") from e


class SqlAuditLog:
    """The control plane's view of its Merkle audit log."""

    def __init__(
        self,
        engine: sa.Engine,
        signer: Signer | None,
        origin: str,
        witness: WitnessFile | None,
        *,
        keys_file: Path | None = None,
    ) -> None:
        """``signer`` None gives a read-only log (verify, prove, export need no key)."""
        self._engine = engine
        self._keys_file = keys_file
        self._signer = signer
        self.origin = origin
        self._witness = witness
        self.sequencer = (
            Sequencer(engine, signer, origin, witness=witness, trusted=lambda: self.verifiers)
            if signer is not None
            else None
        )

    @property
    def public_keys(self) -> list[str]:
        """The note verifier keys under which checkpoints verify (newest first): the signer's
        (every version a Vault key still holds) and every key recorded in the keys file, so
        checkpoints signed before a rotation, or by a key since lost, stay verifiable.

        Reading writes nothing: :meth:`publish_keys` does, before each sequencer run.
        """
        current = self._current_keys()
        if self._keys_file is None:
            return current
        return current + [k for k in reversed(self._published()) if k not in current]

    def _current_keys(self) -> list[str]:
        signer = self._signer
        if signer is None:
            return []
        every = getattr(signer, "public_keys_all", None)
        if every is not None:
            return list(every())
        return [NoteVerifier.from_public_key(signer.name, signer.public_key).verifier_key]

    def _published(self) -> list[str]:
        """Every key the keys file lists, oldest first."""
        assert self._keys_file is not None
        return self._keys_file.read_text().split() if self._keys_file.exists() else []

    def publish_keys(self) -> None:
        """Append the signer's keys never seen before to the keys file (outside the database,
        so a database owner cannot slip in a key of their own); nothing without a keys file."""
        if self._keys_file is None:
            return
        known = self._published()
        new = [k for k in reversed(self._current_keys()) if k not in known]
        if new:
            self._keys_file.parent.mkdir(parents=True, exist_ok=True)
            with self._keys_file.open("a") as handle:
                handle.write("".join(f"{k}\n" for k in new))
                handle.flush()
                os.fsync(handle.fileno())

    @property
    def verifiers(self) -> list[NoteVerifier]:
        """Every published key, parsed."""
        return [parse_verifier_key(k) for k in self.public_keys]

    def sequence(self) -> SequencerRun:
        """Run the sequencer once. :raises ConflictError: if the stored tree was tampered with."""
        if self.sequencer is None:
            raise ConfigurationError(reason="this audit log is read-only: no signing key")
        refresh = getattr(self._signer, "refresh", None)
        try:
            with translate_errors():
                if refresh is not None:
                    # Between checkpoints, so a rotated Vault key is picked up (never mid-note).
                    refresh()
                # Publish the signing key (keys file) before anything is signed with it.
                self.publish_keys()
                return self.sequencer.run_once()
        except TamperError as e:
            log.critical("audit log tamper detected: %s", for_log(e))
            raise ConflictError(reason=f"audit log integrity check failed: {e}") from e

    @contextmanager
    def _connect(self) -> Iterator[sa.Connection]:
        with translate_errors(), self._engine.connect() as conn:
            yield conn

    def checkpoint(self) -> str:
        """The latest signed checkpoint note. :raises NotFoundError: none signed yet."""
        with self._connect() as conn:
            reader = SqlLogReader(conn)
            latest = reader.latest_checkpoint()
            if latest is None:
                raise NotFoundError(kind="checkpoint", ident="(none signed yet)")
            return latest.note

    def event(self, seq: int) -> StoredEvent:
        """Sequenced event ``seq``. :raises NotFoundError: not (yet) in the log."""
        with self._connect() as conn:
            found = SqlAuditStore(conn).query(
                AuditQuery(after_seq=seq - 1, limit=1, ascending=True)
            )
            if not found or found[0].seq != seq:
                raise NotFoundError(kind="audit event", ident=str(seq))
            return found[0]

    def events(self, query: AuditQuery) -> list[StoredEvent]:
        """Sequenced events matching ``query``, newest first (the command line's reads: whoever
        runs it holds the database, so no clearance filter applies here)."""
        with self._connect() as conn:
            return SqlAuditStore(conn).query(query)

    def proof(self, seq: int) -> str:
        """A C2SP tlog-proof of event ``seq`` under the smallest checkpoint that covers it.

        :raises NotFoundError: if the event is not covered by a signed checkpoint yet.
        """
        with self._connect() as conn:
            reader = SqlLogReader(conn)
            cp = reader.checkpoint_at_least(seq + 1)
            if cp is None:
                raise NotFoundError(kind="audit event", ident=f"{seq} (not checkpointed yet)")
            try:
                path = reader.inclusion_proof(seq, cp.size)
                entry = reader.entry(seq)
            except MissingNodeError as e:
                raise ConflictError(reason=f"audit log is missing data: {e}") from e
            return format_proof(
                Proof(entry=entry, index=seq, path=tuple(path), checkpoint_note=cp.note)
            )

    def consistency(self, old_size: int, new_size: int) -> Consistency:
        """A consistency proof between two signed sizes.

        :raises NotFoundError: if either size has no signed checkpoint.
        """
        with self._connect() as conn:
            reader = SqlLogReader(conn)
            notes = {c.size: c.note for c in reader.checkpoints() if c.size in (old_size, new_size)}
            for size in (old_size, new_size):
                if size not in notes:
                    raise NotFoundError(kind="checkpoint", ident=f"at size {size}")
            try:
                path = reader.consistency_proof(old_size, new_size)
            except (MissingNodeError, ValueError) as e:
                raise ConflictError(reason=f"cannot prove consistency: {e}") from e
            return Consistency(old_size, new_size, path, notes[old_size], notes[new_size])

    def verify(
        self, progress: Callable[[int, int], None] | None = None, *, check_columns: bool = True
    ) -> VerifyReport:
        """Rebuild and check the whole log against its checkpoints and the witness.

        A large log is checked by this process and a worker process that reads its share
        through its own connection (see :func:`audit.verify.verify_log`).

        :raises LogVerificationError: naming the first problem.
        """
        try:
            witnessed = self._witness.read() if self._witness is not None else []
        except WitnessError as e:
            raise LogVerificationError(str(e)) from e
        with self._connect() as conn:
            reader = SqlLogReader(conn)
            return verify_log(
                reader,
                self.verifiers,
                self.origin,
                witness=witnessed,
                progress=progress,
                check_columns=check_columns,
                source=SqlLogSource.for_engine(self._engine),
            )

    def signed_sizes(self) -> list[int]:
        """Every tree size a checkpoint was signed at (database and witness), smallest first.

        :raises LogVerificationError: if the witness file cannot be read.
        """
        try:
            witnessed = self._witness.read() if self._witness is not None else []
        except WitnessError as e:
            raise LogVerificationError(str(e)) from e
        with self._connect() as conn:
            stored = SqlLogReader(conn).checkpoints()
        return sorted({c.size for c in stored} | {w.size for w in witnessed})

    def sign_note(self, text: str) -> str:
        """``text`` as a signed note under the checkpoint key and origin (attestation reports).

        :raises ConfigurationError: a read-only log (no signing key) or a signer that fails.
        """
        if self._signer is None:
            raise ConfigurationError(reason="this audit log is read-only: no signing key")
        try:
            return sign_note(text, [self._signer])
        except (NoteError, SignerError) as e:
            raise ConfigurationError(reason=f"audit signing key: {e}") from e

    def export(self, fmt: str, query: AuditQuery) -> Iterator[str]:
        """Lines of the events matching ``query`` (oldest first) in ``fmt``."""
        with translate_errors(), self._engine.connect() as conn:
            store = SqlAuditStore(conn)
            after = -1
            while True:
                page = store.query(
                    AuditQuery(
                        since=query.since,
                        until=query.until,
                        after_seq=after,
                        limit=query.limit,
                        ascending=True,
                    )
                )
                if not page:
                    return
                yield from export(page, fmt)
                after = page[-1].seq
