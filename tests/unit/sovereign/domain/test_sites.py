"""Site names, countries and operators as they may enter the records."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sovereign.domain.sites import (
    SITE_NAME,
    check_country,
    check_operator,
    check_site_name,
    slugify_site,
)
from sovereign.errors import InvalidInputError


@pytest.mark.parametrize("code", ["ES", "PT", "FR", "DE"])
def test_iso_alpha_2_codes_are_countries(code: str) -> None:
    assert check_country(code) == code


@pytest.mark.parametrize("code", ["es", "Es", "ESP", "E", "", " ES", "XX", "ZZ", "EU", "UK"])
def test_anything_else_is_refused_with_a_clear_message(code: str) -> None:
    with pytest.raises(InvalidInputError) as caught:
        check_country(code)
    assert f"unknown country {code!r}" in caught.value.message
    assert "ISO 3166-1 alpha-2" in caught.value.message


@pytest.mark.parametrize("name", ["es-mad-1", "a", "0", "pt-lis-1", "x" * 63])
def test_valid_site_names(name: str) -> None:
    assert check_site_name(name) == name


@pytest.mark.parametrize("name", ["", "-a", "Madrid", "es_mad", "x" * 64, "es mad", "es-mad-1\n"])
def test_invalid_site_names(name: str) -> None:
    with pytest.raises(InvalidInputError, match="invalid site name"):
        check_site_name(name)


def test_operators_are_one_line_of_at_most_128_characters() -> None:
    assert check_operator("Centro Nacional de IA (demo)") == "Centro Nacional de IA (demo)"
    assert check_operator("é" * 128) == "é" * 128
    for bad in (
        "",
        "   ",
        "a" * 129,
        "line\nbreak",
        "bell\x07",
        "bidi\u202e",
        "sep\u2028",
        "para\u2029",
        "nel\x85",
    ):
        with pytest.raises(InvalidInputError):
            check_operator(bad)


@given(st.text(max_size=200))
def test_slugs_are_valid_and_deterministic(text: str) -> None:
    slug = slugify_site(text)
    assert SITE_NAME.fullmatch(slug)
    assert slug == slugify_site(text)


def test_a_valid_name_is_its_own_slug_and_two_spellings_stay_apart() -> None:
    assert slugify_site("es-mad-1") == "es-mad-1"
    assert slugify_site("Madrid 1") != slugify_site("madrid-1 ")
