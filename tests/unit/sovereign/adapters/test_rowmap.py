"""The generic row mapper on a toy table: loads, dumps, and refuses incomplete descriptions.

Every real table's map is exercised against SQLite and PostgreSQL by ``tests/contract``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import pytest
import sqlalchemy as sa

from sovereign.adapters.rowmap import Column, Composite, LabelColumns, RowMap
from sovereign.domain.labels import Label, LabelScheme

SCHEME = LabelScheme(compartments=["NATO", "EU"])

toys = sa.Table(
    "toys",
    sa.MetaData(),
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("colour", sa.String),
    sa.Column("parts", sa.String),
    sa.Column("label_level", sa.String),
    sa.Column("label_compartments", sa.String),
    sa.Column("last_level", sa.String, nullable=True),
    sa.Column("last_compartments", sa.String, nullable=True),
    sa.Column("width", sa.Integer),
    sa.Column("height", sa.Integer),
    sa.Column("note", sa.String),
    sa.Column("created_at", sa.String),
)


class Colour(StrEnum):
    RED = "red"
    BLUE = "blue"


@dataclass(frozen=True)
class Size:
    width: int
    height: int


@dataclass(frozen=True)
class Toy:
    id: int
    colour: Colour
    parts: tuple[str, ...]
    label: Label
    last: Label | None
    size: Size
    note: str


class Labels:
    def __init__(self) -> None:
        self.loaded = 0

    def load(self, level: str, compartments: str) -> Label:
        self.loaded += 1
        return SCHEME.label(level, [c for c in compartments.split(",") if c])


TOYS = RowMap(
    Toy,
    toys,
    Column("id"),
    Column("colour", load=Colour, dump=lambda c: c.value),
    Column("parts", load=lambda t: tuple(t.split(",")), dump=",".join),
    LabelColumns("label", "label"),
    LabelColumns("last", "last", optional=True),
    Composite.of("size", Size, width="width", height="height"),
    Column("note", dump=lambda text: text[:4]),
    unmapped=("created_at",),
)


def toy(**changes: Any) -> Toy:
    values: dict[str, Any] = {
        "id": 7,
        "colour": Colour.BLUE,
        "parts": ("a", "b"),
        "label": SCHEME.label("SECRET", ["NATO", "EU"]),
        "last": None,
        "size": Size(3, 4),
        "note": "kept",
    }
    return Toy(**(values | changes))


def row(values: dict[str, Any]) -> tuple[Any, ...]:
    """A row as ``select(toys)`` returns it: every column, in table order."""
    return tuple(values.get(c.name, "2026-12-06") for c in toys.columns)


def test_values_give_every_mapped_column_in_its_stored_form() -> None:
    assert TOYS.values(toy()) == {
        "id": 7,
        "colour": "blue",
        "parts": "a,b",
        "label_level": "SECRET",
        "label_compartments": ",EU,NATO,",
        "last_level": None,
        "last_compartments": None,
        "width": 3,
        "height": 4,
        "note": "kept",
    }


@pytest.mark.parametrize("last", [None, SCHEME.label("RESTRICTED", [])])
def test_a_row_loads_back_to_the_object_it_was_stored_from(last: Label | None) -> None:
    original = toy(last=last)
    labels = Labels()
    assert TOYS.load(row(TOYS.values(original)), labels) == original
    assert labels.loaded == (1 if last is None else 2)


def test_extra_attributes_are_filled_by_the_caller() -> None:
    values = TOYS.values(toy())
    assert TOYS.load(row(values), Labels(), note="other").note == "other"


def test_dump_converts_on_the_way_in() -> None:
    assert TOYS.values(toy(note="truncated"))["note"] == "trun"


def test_a_dumper_writes_only_what_it_is_given() -> None:
    assert TOYS.dumper(only=("colour", "size"))(toy()) == {
        "colour": "blue",
        "width": 3,
        "height": 4,
    }
    assert set(TOYS.dumper(exclude=("id", "label", "last", "size"))(toy())) == {
        "colour",
        "parts",
        "note",
    }
    with pytest.raises(ValueError, match="no mapped attribute"):
        TOYS.dumper(exclude=("nope",))


def test_a_column_neither_mapped_nor_unmapped_is_refused() -> None:
    with pytest.raises(ValueError, match=r"\['created_at'\]"):
        RowMap(Toy, toys, *TOYS.fields)


def test_a_field_naming_a_missing_column_is_refused() -> None:
    with pytest.raises(ValueError, match="has no column"):
        RowMap(Toy, toys, *TOYS.fields, Column("ghost"), unmapped=("created_at",))
