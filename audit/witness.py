"""Witness copies of checkpoints, kept outside the database.

Owns :class:`WitnessFile`: an append-only file of signed checkpoints, one JSON object per line,
each written with ``fsync`` before the sequencer moves on. Point it at a WORM mount or a
directory the database owner cannot write, so that whoever controls the database cannot
rewrite history without the witness disagreeing. Every checkpoint is also logged as a JSON line
on the ``audit.witness`` logger (route it to syslog or a SIEM).
"""

from __future__ import annotations

import base64
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("audit.witness")


class WitnessError(ValueError):
    """The witness file is unreadable or malformed."""


@dataclass(frozen=True)
class WitnessedCheckpoint:
    """One line of the witness file."""

    size: int
    root_hash: bytes
    note: str


class WitnessFile:
    """An append-only file of signed checkpoints."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def append(self, size: int, root_hash: bytes, note: str) -> None:
        """Append one checkpoint durably (write, flush, fsync), and log it."""
        line = json.dumps(
            {"size": size, "root_hash": base64.b64encode(root_hash).decode(), "note": note},
            separators=(",", ":"),
        )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            os.write(fd, line.encode() + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        log.info(line)

    def read(self) -> list[WitnessedCheckpoint]:
        """Every checkpoint in the file, in file order (empty if the file does not exist).

        :raises WitnessError: naming the first malformed line.
        """
        if not self.path.exists():
            return []
        found = []
        with self.path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                try:
                    data = json.loads(line)
                    found.append(
                        WitnessedCheckpoint(
                            int(data["size"]), base64.b64decode(data["root_hash"]), data["note"]
                        )
                    )
                except (ValueError, KeyError, TypeError) as e:
                    raise WitnessError(f"{self.path}:{number}: malformed witness line") from e
        return found
