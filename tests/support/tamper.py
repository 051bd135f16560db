"""What a database owner could do to the audit log's tables, for the tamper-evidence tests.

Each helper runs on a connection, in the caller's transaction, and assumes the append-only
triggers are gone (:func:`drop_append_only_triggers`), as they would be for whoever owns the
database. The product never imports this module.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from audit.merkle import MemoryTree, leaf_hash
from audit.sql import (
    APPEND_ONLY_TABLES,
    audit_checkpoints,
    audit_log,
    audit_nodes,
    audit_pending,
)
from audit.store import index_columns

#: ``(trigger, table)`` for every trigger migration 0003 creates, per dialect.
APPEND_ONLY_TRIGGERS = {
    "sqlite": [(f"{t}_no_{verb}", t) for t in APPEND_ONLY_TABLES for verb in ("update", "delete")],
    "postgresql": [
        (f"{t}_{what}", t) for t in APPEND_ONLY_TABLES for what in ("append_only", "no_truncate")
    ],
}

#: Shifts renumbered rows out of the way, since both databases check the primary key per row.
_OUT_OF_THE_WAY = 1 << 40


def drop_append_only_triggers(conn: sa.Connection) -> None:
    """Drop every append-only trigger, as the owner of the database can."""
    dialect = conn.dialect.name
    for name, table in APPEND_ONLY_TRIGGERS[dialect]:
        on = "" if dialect == "sqlite" else f" ON {table}"
        conn.exec_driver_sql(f"DROP TRIGGER {name}{on}")


def change_one_byte(entry: bytes) -> bytes:
    """``entry`` with the first byte of its target value changed (still valid JSON)."""
    at = entry.index(b'"target":"') + len(b'"target":"')
    changed = bytearray(entry)
    changed[at] = ord("X") if changed[at] != ord("X") else ord("Y")
    return bytes(changed)


def row_of(conn: sa.Connection, seq: int) -> dict[str, Any]:
    """Every column of ``audit_log`` row ``seq``."""
    return dict(conn.execute(sa.select(audit_log).where(audit_log.c.seq == seq)).one()._mapping)


def set_entry(conn: sa.Connection, seq: int, entry: bytes, *, rehash: bool) -> None:
    """Overwrite event ``seq``'s bytes; with ``rehash`` also its leaf hash and index columns."""
    values: dict[str, Any] = {"entry": entry}
    if rehash:
        values |= {"leaf_hash": leaf_hash(entry), **index_columns(entry)}
    conn.execute(audit_log.update().where(audit_log.c.seq == seq).values(**values))


def set_columns(conn: sa.Connection, seq: int, **values: Any) -> None:
    """Overwrite columns of event ``seq`` (say, the copied-out filter columns) and nothing else."""
    conn.execute(audit_log.update().where(audit_log.c.seq == seq).values(**values))


def delete_event(conn: sa.Connection, seq: int) -> None:
    """Delete one event row."""
    conn.execute(audit_log.delete().where(audit_log.c.seq == seq))


def swap_events(conn: sa.Connection, a: int, b: int) -> None:
    """Swap every column but ``seq`` between rows ``a`` and ``b`` (leaf hashes stay right)."""
    row_a, row_b = row_of(conn, a), row_of(conn, b)
    for seq, other in ((a, row_b), (b, row_a)):
        values = {k: v for k, v in other.items() if k != "seq"}
        conn.execute(audit_log.update().where(audit_log.c.seq == seq).values(**values))


def insert_event(conn: sa.Connection, at: int, entry: bytes) -> None:
    """Insert a forged event (with a correct leaf hash) at ``at``, renumbering later rows."""
    seq = audit_log.c.seq
    conn.execute(audit_log.update().where(seq >= at).values(seq=seq + _OUT_OF_THE_WAY))
    conn.execute(
        audit_log.update().where(seq >= _OUT_OF_THE_WAY).values(seq=seq - _OUT_OF_THE_WAY + 1)
    )
    conn.execute(
        audit_log.insert().values(
            seq=at, entry=entry, leaf_hash=leaf_hash(entry), **index_columns(entry)
        )
    )


def truncate_tail(conn: sa.Connection, keep: int) -> None:
    """Keep the first ``keep`` events and cover the tracks: nodes and checkpoints above go."""
    conn.execute(audit_log.delete().where(audit_log.c.seq >= keep))
    conn.execute(audit_checkpoints.delete().where(audit_checkpoints.c.size > keep))
    rebuild_nodes(conn)


def rebuild_nodes(conn: sa.Connection) -> None:
    """Recompute ``audit_nodes`` from the stored leaf hashes, so the tree matches the rows."""
    leaves = [
        bytes(h)
        for h in conn.execute(sa.select(audit_log.c.leaf_hash).order_by(audit_log.c.seq)).scalars()
    ]
    tree = MemoryTree(leaves)
    size = tree.size
    rows = [
        {"level": level, "idx": idx, "hash": tree.get(level, idx)}
        for level in range(1, size.bit_length())
        for idx in range(size >> level)
    ]
    conn.execute(audit_nodes.delete())
    if rows:
        conn.execute(audit_nodes.insert(), rows)


def forge_log(conn: sa.Connection, rewrite: Callable[[bytes], bytes]) -> None:
    """Rewrite every event with correct leaf hashes and nodes, and delete every checkpoint."""
    rows = conn.execute(sa.select(audit_log.c.seq, audit_log.c.entry)).all()
    for seq, entry in rows:
        set_entry(conn, seq, rewrite(bytes(entry)), rehash=True)
    rebuild_nodes(conn)
    conn.execute(audit_checkpoints.delete())


def set_node(conn: sa.Connection, level: int, idx: int, value: bytes) -> None:
    """Overwrite one stored node hash."""
    nodes = audit_nodes.c
    conn.execute(
        audit_nodes.update().where(nodes.level == level, nodes.idx == idx).values(hash=value)
    )


def snapshot(conn: sa.Connection) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the log tables (and the queue), in primary-key order, for comparisons."""
    tables = (audit_log, audit_nodes, audit_checkpoints, audit_pending)
    return {
        t.name: [
            tuple(row) for row in conn.execute(sa.select(t).order_by(*t.primary_key.columns)).all()
        ]
        for t in tables
    }
