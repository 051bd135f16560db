"""Sites: the places hosts stand in, and the country each is in.

Owns :class:`Site` and the checks of what enters it: a site's name (a lower-case slug), its
country (an ISO 3166-1 alpha-2 code, exactly as the standard writes it) and its operator (free
text on one line). A host belongs to one site and carries its site's country (copied at
registration and relocation, so placement and listings need no join). It must not talk to the
database; :func:`slugify_site` is the deterministic rule migration 0009 uses for old site names.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass
from datetime import datetime

import pycountry

from sovereign.errors import InvalidInputError

__all__ = [
    "DEFAULT_COUNTRY",
    "OPERATOR_MAX",
    "SITE_NAME",
    "Site",
    "check_country",
    "check_operator",
    "check_site_name",
    "slugify_site",
]

#: A site's name: a lower-case slug of at most 63 characters (a DNS label).
SITE_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
#: Longest operator text.
OPERATOR_MAX = 128
#: The country of sites created for hosts registered before sites existed (migration 0009).
DEFAULT_COUNTRY = "ES"
_COUNTRY = re.compile(r"[A-Z]{2}")


@dataclass(frozen=True)
class Site:
    """A data centre (or a part of one) hosts stand in, in one country, run by one operator."""

    name: str
    #: ISO 3166-1 alpha-2, upper case.
    country: str
    operator: str
    created_at: datetime


def check_country(code: object) -> str:
    """``code`` if it is an ISO 3166-1 alpha-2 code as the standard writes it (``ES``, ``PT``).

    Nothing is upper-cased or trimmed: a country enters the records exactly as it is compared.

    :raises InvalidInputError: not two upper-case letters, or no country ISO 3166-1 knows.
    """
    if not isinstance(code, str) or not _COUNTRY.fullmatch(code):
        raise InvalidInputError(
            reason=f"unknown country {code!r} (ISO 3166-1 alpha-2, two upper-case letters, "
            "e.g. ES, PT)"
        )
    if pycountry.countries.get(alpha_2=code) is None:
        raise InvalidInputError(
            reason=f"unknown country {code!r} (ISO 3166-1 alpha-2, e.g. ES, PT)"
        )
    return code


def check_site_name(name: str) -> str:
    """``name`` if it is a valid site name. :raises InvalidInputError: it is not."""
    if not isinstance(name, str) or not SITE_NAME.fullmatch(name):
        raise InvalidInputError(
            reason=f"invalid site name {name!r}: lower-case letters, digits and '-', starting "
            "with a letter or digit, at most 63 characters"
        )
    return name


def check_operator(operator: str) -> str:
    """``operator`` if it is 1 to 128 characters with no control characters.

    :raises InvalidInputError: empty, too long, or a control character (a line break included).
    """
    if not isinstance(operator, str) or not operator.strip():
        raise InvalidInputError(reason="a site's operator is required")
    if len(operator) > OPERATOR_MAX:
        raise InvalidInputError(reason=f"a site's operator is at most {OPERATOR_MAX} characters")
    # Controls, and the Unicode line and paragraph separators (Zl, Zp) that line-based
    # readers (log viewers, ``sites list`` parsed by the deployment) split on.
    if any(
        unicodedata.category(ch) in {"Zl", "Zp"} or unicodedata.category(ch).startswith("C")
        for ch in operator
    ):
        raise InvalidInputError(
            reason="a site's operator may not hold control characters or line separators"
        )
    return operator


def slugify_site(text: str) -> str:
    """A valid site name for ``text``, the same for the same text (migration 0009's rule).

    A valid name is kept; otherwise lower-cased, runs of anything but ``a-z0-9`` become one
    ``-``, and an 8-hex-digit digest of the original is appended so two old names that
    slugify alike stay two sites.
    """
    if SITE_NAME.fullmatch(text):
        return text
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:8]
    return f"{slug[:54]}-{digest}" if slug else f"site-{digest}"
