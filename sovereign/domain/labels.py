"""Security labels and the Bell-LaPadula dominance lattice.

A label is a level from an ordered, configurable list plus a set of compartments. Label ``a``
dominates ``b`` when ``a``'s level is at least ``b``'s and ``a``'s compartments are a superset of
``b``'s. Labels are only built through a :class:`LabelScheme`, which knows the configured levels
and compartments and rejects unknown ones.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sovereign.errors import LabelError

DEFAULT_LEVELS: tuple[str, ...] = ("UNCLASSIFIED", "RESTRICTED", "CONFIDENTIAL", "SECRET")
DEFAULT_COMPARTMENTS: tuple[str, ...] = ("CRYPTO", "EU", "NATO")


@dataclass(frozen=True, order=False)
class Label:
    """A level (with its rank in the scheme) and a set of compartments."""

    level: str
    rank: int
    compartments: frozenset[str] = field(default_factory=frozenset)

    def dominates(self, other: Label) -> bool:
        """Whether this label is at least as high as ``other`` and covers all its compartments."""
        return self.rank >= other.rank and self.compartments >= other.compartments

    def to_dict(self) -> dict[str, Any]:
        """The label as JSON-ready data: ``{"level": ..., "compartments": [sorted]}``."""
        return {"level": self.level, "compartments": sorted(self.compartments)}

    def __str__(self) -> str:
        if not self.compartments:
            return self.level
        return f"{self.level}//{'/'.join(sorted(self.compartments))}"


class LabelScheme:
    """The configured levels (lowest first) and compartments; the only factory of labels."""

    def __init__(
        self,
        levels: Sequence[str] = DEFAULT_LEVELS,
        compartments: Iterable[str] = DEFAULT_COMPARTMENTS,
    ) -> None:
        levels = tuple(levels)
        if not levels:
            raise LabelError(reason="at least one level must be configured")
        if len(set(levels)) != len(levels):
            raise LabelError(reason=f"levels must be distinct: {list(levels)}")
        self.levels = levels
        self.compartments = frozenset(compartments)
        self._rank = {name: i for i, name in enumerate(levels)}

    @property
    def lowest(self) -> Label:
        """The bottom of the lattice: lowest level, no compartments."""
        return self.label(self.levels[0])

    @property
    def highest(self) -> Label:
        """The top of the lattice: highest level, every compartment."""
        return self.label(self.levels[-1], self.compartments)

    def rank(self, level: str) -> int:
        """The position of ``level`` in the order. :raises LabelError: for unknown levels."""
        try:
            return self._rank[level]
        except KeyError:
            raise LabelError(
                reason=f"unknown level {level!r}; known levels: {', '.join(self.levels)}"
            ) from None

    def label(self, level: str, compartments: Iterable[str] = ()) -> Label:
        """Build a label. :raises LabelError: for unknown levels or compartments."""
        comps = frozenset(compartments)
        unknown = comps - self.compartments
        if unknown:
            known = ", ".join(sorted(self.compartments)) or "none"
            raise LabelError(
                reason=f"unknown compartment(s) {', '.join(sorted(unknown))}; known: {known}"
            )
        return Label(level=level, rank=self.rank(level), compartments=comps)

    def parse(self, data: Mapping[str, Any] | str) -> Label:
        """Parse ``{"level": ..., "compartments": [...]}`` or ``"LEVEL//A/B"``.

        :raises LabelError: for malformed input or unknown names.
        """
        if isinstance(data, str):
            level, _, rest = data.partition("//")
            return self.label(level.strip(), [c for c in rest.split("/") if c])
        raw_level = data.get("level")
        comps = data.get("compartments", [])
        if not isinstance(raw_level, str):
            raise LabelError(reason="level must be a string")
        if not isinstance(comps, list | tuple | frozenset | set) or not all(
            isinstance(c, str) for c in comps
        ):
            raise LabelError(reason="compartments must be a list of strings")
        return self.label(raw_level, comps)

    def join(self, labels: Iterable[Label]) -> Label:
        """The least upper bound of ``labels``: their highest level and every compartment of
        any of them (the lowest label for none). Whoever is cleared for the join is cleared for
        each of them; unlike the highest of them by rank, it also covers labels of one level
        with different compartments."""
        found = list(labels)
        if not found:
            return self.lowest
        top = max(found, key=lambda label: label.rank)
        return self.label(top.level, frozenset().union(*(label.compartments for label in found)))

    def dominated_levels(self, label: Label) -> tuple[str, ...]:
        """Names of the levels at or below ``label``'s level (for filtering in queries)."""
        return self.levels[: label.rank + 1]

    def __repr__(self) -> str:
        return f"LabelScheme(levels={self.levels!r}, compartments={sorted(self.compartments)!r})"
