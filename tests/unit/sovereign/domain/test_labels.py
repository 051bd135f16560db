from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sovereign.domain.labels import Label, LabelScheme
from sovereign.errors import LabelError

SCHEME = LabelScheme()
labels = st.builds(
    SCHEME.label,
    st.sampled_from(SCHEME.levels),
    st.frozensets(st.sampled_from(sorted(SCHEME.compartments))),
)


def test_default_levels_are_ordered():
    assert SCHEME.levels == ("UNCLASSIFIED", "RESTRICTED", "CONFIDENTIAL", "SECRET")
    assert SCHEME.rank("SECRET") > SCHEME.rank("CONFIDENTIAL") > SCHEME.rank("UNCLASSIFIED")


def test_higher_level_with_superset_dominates():
    secret_nato = SCHEME.label("SECRET", ["NATO"])
    assert secret_nato.dominates(SCHEME.label("CONFIDENTIAL"))
    assert secret_nato.dominates(SCHEME.label("SECRET", ["NATO"]))
    assert not secret_nato.dominates(SCHEME.label("CONFIDENTIAL", ["EU"]))
    assert not SCHEME.label("CONFIDENTIAL", ["NATO", "EU"]).dominates(secret_nato)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"level": "TOP SECRET"}, "unknown level 'TOP SECRET'"),
        ({"level": "SECRET", "compartments": ["MARS"]}, "unknown compartment(s) MARS"),
        ({"level": 3}, "level must be a string"),
        ({"level": "SECRET", "compartments": "NATO"}, "compartments must be a list"),
    ],
)
def test_parse_rejects_unknown_names_with_clear_errors(data, message):
    with pytest.raises(LabelError, match=message.replace("(", r"\(").replace(")", r"\)")):
        SCHEME.parse(data)


def test_parse_string_form():
    assert SCHEME.parse("SECRET//NATO/EU") == SCHEME.label("SECRET", ["EU", "NATO"])
    assert str(SCHEME.label("SECRET", ["NATO", "EU"])) == "SECRET//EU/NATO"


def test_national_names_are_a_config_change():
    spanish = LabelScheme(
        ["SIN CLASIFICAR", "DIFUSION LIMITADA", "CONFIDENCIAL", "RESERVADO", "SECRETO"], ["OTAN"]
    )
    assert spanish.label("SECRETO").dominates(spanish.label("RESERVADO", []))
    with pytest.raises(LabelError):
        spanish.label("SECRET")


def test_duplicate_levels_refused():
    with pytest.raises(LabelError, match="distinct"):
        LabelScheme(["A", "B", "A"])


@given(labels)
def test_dominance_is_reflexive(a: Label):
    assert a.dominates(a)


@given(labels, labels)
def test_dominance_is_antisymmetric(a: Label, b: Label):
    if a.dominates(b) and b.dominates(a):
        assert a == b


@given(labels, labels, labels)
def test_dominance_is_transitive(a: Label, b: Label, c: Label):
    if a.dominates(b) and b.dominates(c):
        assert a.dominates(c)


@given(labels, labels)
def test_dominance_is_rank_and_subset(a: Label, b: Label):
    expected = SCHEME.rank(a.level) >= SCHEME.rank(b.level) and set(b.compartments) <= set(
        a.compartments
    )
    assert a.dominates(b) is expected


@given(labels)
def test_lattice_bounds(a: Label):
    assert SCHEME.highest.dominates(a)
    assert a.dominates(SCHEME.lowest)


@given(st.lists(labels, max_size=5), labels)
def test_the_join_is_the_least_upper_bound(found: list[Label], other: Label):
    join = SCHEME.join(found)
    assert all(join.dominates(a) for a in found)
    if all(other.dominates(a) for a in found):
        assert other.dominates(join)  # no upper bound sits below the join


def test_the_join_covers_labels_of_one_level_with_different_compartments():
    nato, crypto = SCHEME.label("SECRET", ["NATO"]), SCHEME.label("SECRET", ["CRYPTO"])
    assert SCHEME.join([nato, crypto]) == SCHEME.label("SECRET", ["CRYPTO", "NATO"])
    assert SCHEME.join([]) == SCHEME.lowest
