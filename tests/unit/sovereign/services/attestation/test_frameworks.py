"""The controls catalogue: it validates, each framework lists the controls the brief names,
and a control's verdict follows the claims it rests on."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

import pytest

from sovereign.adapters.keycloak import ALGORITHMS
from sovereign.config import DEFAULTS
from sovereign.errors import ConfigurationError, InvalidInputError
from sovereign.services.attestation.frameworks import (
    CLAIMS,
    DECLARATION_NEEDED,
    EVIDENCED,
    FACTS,
    FRAMEWORKS,
    NOT_EVALUATED,
    VIOLATED,
    by_framework,
    format_framework,
    gather_facts,
    load_controls,
    parse_controls,
)
from sovereign.settings import Settings
from tests.unit.sovereign.services.attestation.reports import report

#: What each framework must cover: data location, separation of duties, key custody and
#: erasure, logging and its protection, administrator access.
REQUIRED = {
    "ens-high": {"op.nub.1", "op.acc.3", "op.exp.10", "mp.si.5", "op.exp.8", "op.acc.6"},
    "secnumcloud": {"19.2", "6.2", "10.1", "10.5", "5.3", "12.6", "12.7", "19.2.c", "9.6"},
    "c5": {"PSS-12", "OIS-04", "CRY-04", "OPS-12", "OPS-14", "OPS-15", "IDM-09", "OPS-24"},
}


def raw() -> list[dict[str, Any]]:
    text = resources.files("sovereign.data").joinpath("controls.json").read_text("utf-8")
    data: list[dict[str, Any]] = json.loads(text)
    return data


def settings(**config: Any) -> Settings:
    fixed = {
        "IDP_DEV": False,
        "DATABASE_URL": "sqlite://",
        "AUDIT_SIGNING_KEY": "/k",
        "AUDIT_SIGNER": "file",
        "ENCLAVE_POOL_PATH": "/p",
        "ENCLAVE_CONSOLE_DIR": "/c",
        "CONSOLE_COOKIE_SECURE": True,
    }
    return Settings.from_config({**DEFAULTS, **fixed, **config})


def test_the_bundled_catalogue_validates():
    controls = load_controls()
    assert len({c.id for c in controls}) == len(controls)
    assert {c.framework for c in controls} == set(FRAMEWORKS)
    for control in controls:
        assert set(control.claims) <= set(CLAIMS)
        assert set(control.facts) <= set(FACTS)
        assert control.claims or control.declaration


@pytest.mark.parametrize("framework", sorted(REQUIRED))
def test_each_framework_lists_the_required_controls(framework: str):
    ids = {c.id for c in load_controls() if c.framework == framework}
    assert REQUIRED[framework] <= ids


def test_every_claim_backs_some_control_in_every_framework_but_isolation_in_secnumcloud():
    for framework in FRAMEWORKS:
        used = {
            c
            for control in load_controls()
            if control.framework == framework
            for c in control.claims
        }
        missing = set(CLAIMS) - used
        assert missing <= (
            {"gpu-handover", "co-residency"} if framework == "secnumcloud" else set()
        )


@pytest.mark.parametrize(
    ("change", "says"),
    [
        (lambda e: e.update(framework="iso27001"), "framework must be one of"),
        (lambda e: e.update(claims=["no-such-claim"]), "unknown claims ['no-such-claim']"),
        (lambda e: e.update(facts=["colour"]), "unknown facts ['colour']"),
        (lambda e: e.pop("summary"), "missing ['summary']"),
        (lambda e: e.update(extra=1), "unexpected ['extra']"),
        (lambda e: e.update(claims="residency"), "claims must be a list of strings"),
        (lambda e: e.update(claims=[], declaration=" "), "must say what is to be declared"),
        (lambda e: e.update(summary="x" * 601), "summary longer than 600"),
        (lambda e: e.update(title=3), "must be strings"),
    ],
)
def test_a_bad_entry_is_refused_naming_it(change: Any, says: str):
    data = raw()
    change(data[2])
    with pytest.raises(ConfigurationError) as caught:
        parse_controls(data)
    assert says in caught.value.message


def test_duplicate_ids_are_refused():
    data = raw()
    data.append(dict(data[0]))
    with pytest.raises(ConfigurationError, match="unique"):
        parse_controls(data)


def test_not_json_or_empty_is_refused():
    with pytest.raises(ConfigurationError, match="not JSON"):
        load_controls("{")
    with pytest.raises(ConfigurationError, match="non-empty list"):
        load_controls("[]")


def test_verdicts_follow_the_claims():
    facts = gather_facts(settings())
    views = {v.control.id: v for v in by_framework(report(), "ens-high", facts)}
    assert views["op.nub.1"].verdict == EVIDENCED
    assert views["op.acc.6"].verdict == DECLARATION_NEEDED  # rests on declaration only
    assert views["op.acc.6"].declaration
    bad = report(violated={"crypto-erase": "enclave e1 ended without key:destroy"})
    views = {v.control.id: v for v in by_framework(bad, "ens-high", facts)}
    assert views["op.exp.10"].verdict == VIOLATED  # crypto-erase + residency
    assert views["mp.si.5"].verdict == VIOLATED
    assert views["op.nub.1"].verdict == EVIDENCED
    assert [(c.id, c.verdict) for c in views["op.exp.10"].claims] == [
        ("crypto-erase", "violated"),
        ("residency", "holds"),
    ]
    # Only the control's own framework, in catalogue order.
    assert [v.control.framework for v in by_framework(bad, "c5", facts)] == ["c5"] * 8


def test_a_claim_missing_from_the_report_is_not_evaluated_never_evidenced():
    old = report()
    old["claims"] = [c for c in old["claims"] if c["id"] != "residency"]
    views = {v.control.id: v for v in by_framework(old, "c5", {})}
    assert views["PSS-12"].verdict == NOT_EVALUATED
    assert views["OIS-04"].verdict == EVIDENCED
    # An unknown verdict word is not taken for "holds".
    odd = report()
    odd["claims"][3]["verdict"] = "maybe"
    views = {v.control.id: v for v in by_framework(odd, "c5", {})}
    assert views["OIS-04"].verdict == VIOLATED


def test_unknown_framework_or_report_without_claims_is_refused():
    with pytest.raises(InvalidInputError, match="unknown framework"):
        by_framework(report(), "nist", {})
    with pytest.raises(InvalidInputError, match="no list of claims"):
        by_framework({"claims": None}, "c5", {})


def test_facts_come_from_the_settings():
    facts = gather_facts(
        settings(TWO_PERSON_LEVEL="SECRET", VAULT_ADDR="https://vault:8200"),
        sites_countries=["PT", "ES", "ES"],
    )
    assert set(facts) == set(FACTS)
    assert facts["two_person_level"] == "SECRET"
    assert facts["step_up_max_age_s"] == 600
    assert facts["vault_configured"] is True
    assert facts["sites_countries"] == ["ES", "PT"]
    assert facts["vault_countries"] == []
    assert facts["audit_signer"] == "file"
    assert facts["tokens_verified_rs256"] is False  # no identity provider configured
    assert gather_facts(settings(IDP_URL="https://idp"))["tokens_verified_rs256"] is True
    assert gather_facts(settings())["sites_countries"] is None
    # The fact names the adapter's pinned algorithm; keep them in step.
    assert ALGORITHMS == ["RS256"]


def test_vault_countries_are_listed_when_countries_have_their_own_vault():
    mapped = settings(VAULT_COUNTRIES={"PT": {"addr": "https://pt"}, "ES": {"addr": "https://es"}})
    assert gather_facts(mapped)["vault_countries"] == ["ES", "PT"]


def test_the_text_rendering_names_each_control_its_verdict_facts_and_declaration():
    facts = gather_facts(settings(), sites_countries=["ES"])
    text = format_framework(
        by_framework(report(violated={"two-person": "x"}), "secnumcloud", facts)
    )
    assert text.startswith("SecNumCloud 3.2")
    assert "6.2     [violated]  Separation of duties" in text
    assert "claims: two-person: violated" in text
    assert "fact sites_countries: ES" in text
    assert "19.2.c  [declaration needed]" in text
    assert "to declare: State from which countries" in text
    assert text.splitlines()[-1] == "3 declaration needed; 6 evidenced; 1 violated"
    assert format_framework([]) == "No controls.\n"
