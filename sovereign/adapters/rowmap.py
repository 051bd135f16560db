"""One generic mapper between SQLAlchemy Core rows and the plain domain's dataclasses.

Owns :class:`RowMap` and the field descriptions it is built from (:class:`Column`,
:class:`LabelColumns`, :class:`Composite`); the description of each table lives in
:mod:`sovereign.adapters.mappings`. Must not run SQL or know a repository's rules (locking,
versions, which columns an update may touch: the repositories pass those in).

Why not SQLAlchemy's imperative ORM mapping (``registry.map_imperatively``), which STYLE.md
names? The unit of work is built on Core: one connection per transaction, explicit
``SELECT ... FOR UPDATE`` and ``SKIP LOCKED``, and optimistic locking by a compare-and-set
``UPDATE ... WHERE version = ?`` whose row count the repository checks. ORM mapping would bring
sessions, an identity map, autoflush and instrumented domain classes (the domain's frozen
dataclasses and labels would have to become mutable, mapped attributes), and change when
statements run and what a stale read returns: a rewrite of the locking semantics, not a
refactor. A small generic mapper over Core rows keeps every statement as it is and removes only
what was repeated: a hand-written ``_row_to_x`` / ``_values`` pair per table.

Speed: listing pages map many rows, so everything is decided once, when a map is built: column
positions in the table (rows come from ``select(table)``, so a column's position is fixed),
one C-level ``itemgetter`` fetching every column copied as is, and a short list of loaders for
the fields that convert (labels, enums, tuples, JSON). No per-row reflection or name lookups.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from operator import attrgetter, itemgetter
from typing import Any, Generic, Protocol, TypeVar

import sqlalchemy as sa

from audit.store import encode_compartments
from sovereign.domain.labels import Label

#: Reads one field from a row (by position), given the unit of work's label loader.
FieldLoader = Callable[[Sequence[Any], "LabelLoader"], Any]


class LabelLoader(Protocol):
    """Rebuilds a label from its stored level and encoded compartments."""

    def load(self, level: str, compartments: str) -> Label: ...


@dataclass(frozen=True)
class Column:
    """An attribute stored in one column, copied as is or through ``load`` / ``dump``."""

    attr: str
    column: str | None = None  # the column's name, when it is not the attribute's
    load: Callable[[Any], Any] | None = None
    dump: Callable[[Any], Any] | None = None

    @property
    def name(self) -> str:
        """The column's name."""
        return self.column or self.attr

    def reads(self) -> tuple[str, ...]:
        """Columns read to load the attribute."""
        return (self.name,)

    def writes(self) -> tuple[str, ...]:
        """Columns written from the attribute."""
        return (self.name,)

    def loader(self, at: Mapping[str, int]) -> FieldLoader:
        """Load from a row whose columns sit at the positions ``at``."""
        i, load = at[self.name], self.load
        assert load is not None, "plain columns are fetched together by RowMap"
        return lambda row, _labels: load(row[i])

    def values(self, value: Any) -> tuple[Any, ...]:
        """The stored values of the attribute's ``value``, in :meth:`writes` order."""
        return (value if self.dump is None else self.dump(value),)


@dataclass(frozen=True)
class LabelColumns:
    """A label stored as ``<prefix>_level`` and ``<prefix>_compartments`` (encoded set).

    ``optional``: both columns are NULL when there is no label.
    """

    attr: str
    prefix: str
    optional: bool = False

    def reads(self) -> tuple[str, ...]:
        """Columns read to load the label."""
        return (f"{self.prefix}_level", f"{self.prefix}_compartments")

    writes = reads

    def loader(self, at: Mapping[str, int]) -> FieldLoader:
        """Load through the unit of work's label loader (which caches parsed labels)."""
        level, compartments = (at[c] for c in self.reads())
        if self.optional:
            return lambda row, labels: (
                None if row[level] is None else labels.load(row[level], row[compartments])
            )
        return lambda row, labels: labels.load(row[level], row[compartments])

    def values(self, label: Label | None) -> tuple[Any, ...]:
        """The level and encoded compartments (both None for no label)."""
        if label is None:
            return (None, None)
        return (label.level, encode_compartments(label.compartments))


@dataclass(frozen=True)
class Composite:
    """An attribute built from several columns: ``load(*values)`` reads them, in ``reads``
    order; ``dump(value)`` gives the values of ``writes``, in order."""

    attr: str
    reads_: tuple[str, ...]
    load: Callable[..., Any]
    writes_: tuple[str, ...]
    dump: Callable[[Any], tuple[Any, ...]]

    @classmethod
    def of(cls, attr: str, kind: Callable[..., Any], **columns: str) -> Composite:
        """A value object ``kind`` whose attributes (keys) are stored in ``columns`` (values)."""
        names, stored = tuple(columns), tuple(columns.values())
        get = attrgetter(*names)
        return cls(
            attr,
            stored,
            lambda *values: kind(**dict(zip(names, values, strict=True))),
            stored,
            (lambda value: (get(value),)) if len(names) == 1 else get,
        )

    def reads(self) -> tuple[str, ...]:
        """Columns read to load the attribute."""
        return self.reads_

    def writes(self) -> tuple[str, ...]:
        """Columns written from the attribute."""
        return self.writes_

    def loader(self, at: Mapping[str, int]) -> FieldLoader:
        """Load from a row whose columns sit at the positions ``at``."""
        get, load = _getter([at[c] for c in self.reads_]), self.load
        return lambda row, _labels: load(*get(row))

    def values(self, value: Any) -> tuple[Any, ...]:
        """The stored values of ``value``, in :meth:`writes` order."""
        return tuple(self.dump(value))


Field = Column | LabelColumns | Composite


def _getter(positions: Sequence[int]) -> Callable[[Sequence[Any]], tuple[Any, ...]]:
    """``itemgetter`` that always returns a tuple (it returns a bare item for one position)."""
    if len(positions) == 1:
        (i,) = positions
        return lambda row: (row[i],)
    return itemgetter(*positions)


T = TypeVar("T")


class RowMap(Generic[T]):
    """How the rows of ``table`` become ``kind`` objects and back.

    Every column of the table is either read by a field or named in ``unmapped`` (stored by the
    repository, such as a creation time the domain does not keep), and every field's columns
    exist: a column added to the table without a mapping fails at import, not at run time.
    """

    def __init__(
        self,
        kind: Callable[..., T],
        table: sa.Table,
        *fields: Field,
        unmapped: Collection[str] = (),
    ) -> None:
        self.kind = kind
        self.table = table
        self.fields = fields
        at = {c.name: i for i, c in enumerate(table.columns)}
        read = {c for f in fields for c in f.reads()} | set(unmapped)
        written = {c for f in fields for c in f.writes()}
        if missing := (read | written) - at.keys():
            raise ValueError(f"{table.name} has no column {sorted(missing)}")
        if left := at.keys() - read:
            raise ValueError(f"{table.name}: columns {sorted(left)} are not mapped nor unmapped")
        plain = [f for f in fields if isinstance(f, Column) and f.load is None]
        self._plain_attrs = tuple(f.attr for f in plain)
        self._plain = _getter([at[f.name] for f in plain])
        self._loaders = tuple(
            (f.attr, f.loader(at)) for f in fields if not (isinstance(f, Column) and f.load is None)
        )
        self._all = self.dumper()

    def select(self) -> sa.Select[Any]:
        """``SELECT`` every column of the table, in the order :meth:`load` expects."""
        return sa.select(self.table)

    def load(self, row: Sequence[Any], labels: LabelLoader, **extra: Any) -> T:
        """The object stored in ``row`` (from :meth:`select`); ``extra`` fills the attributes
        stored elsewhere (such as a request's approvals)."""
        values = dict(zip(self._plain_attrs, self._plain(row), strict=True))
        for attr, load in self._loaders:
            values[attr] = load(row, labels)
        if extra:
            values.update(extra)
        return self.kind(**values)

    def load_all(self, rows: Iterable[Sequence[Any]], labels: LabelLoader) -> list[T]:
        """:meth:`load` for every row."""
        return [self.load(row, labels) for row in rows]

    def values(self, obj: T) -> dict[str, Any]:
        """Every mapped column's value for ``obj`` (an ``INSERT``'s values)."""
        return self._all(obj)

    def dumper(
        self, *, only: Collection[str] | None = None, exclude: Collection[str] = ()
    ) -> Callable[[T], dict[str, Any]]:
        """A function giving the column values of the attributes ``only`` (default: all) less
        ``exclude``, by attribute name: what an ``UPDATE`` may change. Build it once, at import.

        :raises ValueError: if an attribute named is not mapped.
        """
        chosen = [
            f for f in self.fields if (only is None or f.attr in only) and f.attr not in exclude
        ]
        if unknown := {*(only or ()), *exclude} - {f.attr for f in self.fields}:
            raise ValueError(f"{self.table.name}: no mapped attribute {sorted(unknown)}")
        plain = [f for f in chosen if isinstance(f, Column) and f.dump is None]
        plain_columns = tuple(f.name for f in plain)
        get_plain = attrgetter(*(f.attr for f in plain)) if plain else None
        single = len(plain) == 1
        other = tuple(
            (f.writes(), attrgetter(f.attr), f.values)
            for f in chosen
            if not (isinstance(f, Column) and f.dump is None)
        )

        def dump(obj: T) -> dict[str, Any]:
            values: dict[str, Any] = {}
            if get_plain is not None:
                got = get_plain(obj)
                values.update(zip(plain_columns, (got,) if single else got, strict=True))
            for columns, get, convert in other:
                values.update(zip(columns, convert(get(obj)), strict=True))
            return values

        return dump
