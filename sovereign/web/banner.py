"""The classification banner: the most sensitive thing on a page, top and bottom, by colour.

Owns working out a page's marking from the labels it shows (their least upper bound in the
lattice: the highest level and every compartment, so the marking dominates everything on the
page) and the colour of each level. Colours follow the common convention (unclassified green,
confidential blue, secret red) and can be configured per level name (``CONSOLE_BANNER_COLOURS``);
levels without a colour get one by rank.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sovereign.domain.labels import Label, LabelScheme
from sovereign.errors import LabelError

#: (background, text) per default level name; every pair has a contrast ratio above 4.5:1.
DEFAULT_COLOURS: dict[str, tuple[str, str]] = {
    "UNCLASSIFIED": ("#007a33", "#ffffff"),
    "RESTRICTED": ("#7a5c00", "#ffffff"),
    "CONFIDENTIAL": ("#0033a0", "#ffffff"),
    "SECRET": ("#c8102e", "#ffffff"),
    "TOP SECRET": ("#ff8c00", "#000000"),
}
#: For levels named nowhere: lowest green ... highest red, by rank.
BY_RANK: tuple[tuple[str, str], ...] = (
    ("#007a33", "#ffffff"),
    ("#7a5c00", "#ffffff"),
    ("#0033a0", "#ffffff"),
    ("#c8102e", "#ffffff"),
)

#: Configured colours must be plain hex colours: they are written into a stylesheet.
HEX_COLOUR = re.compile(r"^#(?:[0-9a-fA-F]{3}){1,2}$")

Shown = Label | Mapping[str, Any] | None


@dataclass(frozen=True)
class Banner:
    """A page's marking and the CSS class that colours it."""

    text: str
    css_class: str


def marking(scheme: LabelScheme, shown: Iterable[Shown]) -> Label:
    """The least upper bound of ``shown`` (labels or label dicts); the lowest label if none.

    A label the scheme does not know (say, from before a configuration change) marks the
    page at the top of the lattice rather than being left out.
    """
    rank, comps = 0, set[str]()
    for item in shown:
        if item is None:
            continue
        try:
            label = item if isinstance(item, Label) else scheme.parse(item)
        except LabelError:
            label = scheme.highest
        rank = max(rank, label.rank)
        comps |= label.compartments
    return scheme.label(scheme.levels[rank], comps)


def banner(scheme: LabelScheme, shown: Iterable[Shown]) -> Banner:
    """The banner of a page showing ``shown``."""
    label = marking(scheme, shown)
    return Banner(text=str(label), css_class=f"classification-{label.rank}")


def colours(
    levels: Sequence[str], configured: Mapping[str, Sequence[str]]
) -> list[tuple[str, str]]:
    """(background, text) per level rank: configured, else the default for the name, else by
    position in the order."""
    found: list[tuple[str, str]] = []
    top = max(len(levels) - 1, 1)
    for rank, level in enumerate(levels):
        pair = configured.get(level)
        if pair is not None and len(pair) == 2 and all(HEX_COLOUR.match(str(c)) for c in pair):
            found.append((str(pair[0]), str(pair[1])))
        elif level in DEFAULT_COLOURS:
            found.append(DEFAULT_COLOURS[level])
        else:
            found.append(BY_RANK[round(rank * (len(BY_RANK) - 1) / top)])
    return found


def stylesheet(levels: Sequence[str], configured: Mapping[str, Sequence[str]]) -> str:
    """CSS classes ``classification-<rank>`` for the banner (served, so no inline styles)."""
    rules = [
        f".classification-{rank} {{ background: {bg}; color: {fg}; }}"
        for rank, (bg, fg) in enumerate(colours(levels, configured))
    ]
    return "\n".join(rules) + "\n"
