"""Controls of sovereign-cloud frameworks, read against an attestation report.

Owns the control catalogue (``sovereign/data/controls.json``: ENS category HIGH under
RD 311/2022, SecNumCloud 3.2 and BSI C5:2020), its validation, the configuration facts the
control plane can state about itself (:func:`gather_facts`), and each control's verdict over a
report (:func:`by_framework`) with its text rendering (:func:`format_framework`).

The summaries in the catalogue are our own words, not the frameworks' text. A verdict here
only says what the log evidences: "evidenced" when every claim the control rests on holds,
"violated" when one does not, "declaration needed" when the control rests on what a person
must declare. Must not read the log, the database or Flask: the report and the facts are
given to it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Final

from sovereign.errors import ConfigurationError, InvalidInputError
from sovereign.services.attestation.claims import CLAIM_IDS
from sovereign.settings import Settings

#: The frameworks the catalogue covers, with the name a reader knows them by.
FRAMEWORKS: Final[Mapping[str, str]] = {
    "ens-high": "ENS (Spain, RD 311/2022), category HIGH",
    "secnumcloud": "SecNumCloud 3.2 (ANSSI, France)",
    "c5": "BSI C5:2020 (Germany)",
}

#: The claims of an attestation report (sovereign-attestation/v1), by id, in report order.
CLAIMS: Final[tuple[str, ...]] = CLAIM_IDS

#: The configuration facts the control plane states about itself, with what each one means.
FACTS: Final[Mapping[str, str]] = {
    "environment": "the configured environment (production refuses every development backend)",
    "two_person_level": "the lowest level whose requests need two distinct approving officers",
    "step_up_max_age_s": "how recently (seconds) a password must have been typed to approve "
    "classified work",
    "tokens_verified_rs256": "access tokens are verified against the identity provider's "
    "published keys with the algorithm pinned to RS256",
    "audit_witness_configured": "signed checkpoints are also written to a witness file outside "
    "the database",
    "audit_signer": "what signs the log's checkpoints (vault: a transit key; file: a key file)",
    "vault_configured": "enclave keys are kept in Vault/OpenBao (not in the development store)",
    "vault_countries": "countries with their own key store (empty: one store for every country)",
    "sites_countries": "countries of the sites registered (null: not gathered)",
    "sanitizer_image_configured": "real hosts boot a sanitizer image to scrub GPUs between "
    "tenants (otherwise their GPUs are quarantined)",
}

EVIDENCED: Final = "evidenced"
VIOLATED: Final = "violated"
DECLARATION_NEEDED: Final = "declaration needed"
#: A claim the control rests on is absent from the report (an older report version).
NOT_EVALUATED: Final = "not evaluated"

#: Where the catalogue lives, as package data.
CONTROLS_PACKAGE: Final = "sovereign.data"
CONTROLS_FILE: Final = "controls.json"

_FIELDS: Final = ("id", "framework", "title", "summary", "claims", "facts", "declaration")
#: A summary longer than this is probably pasted text, not our own short words.
MAX_SUMMARY: Final = 600


@dataclass(frozen=True)
class Control:
    """One control of one framework, and what the control plane can offer as evidence."""

    id: str
    framework: str
    title: str
    summary: str
    claims: tuple[str, ...]
    facts: tuple[str, ...]
    declaration: str


@dataclass(frozen=True)
class ClaimStatus:
    """A claim a control rests on, with its verdict in the report (or "not evaluated")."""

    id: str
    verdict: str


@dataclass(frozen=True)
class ControlView:
    """A control read against one report: its verdict, its claims, facts and declaration."""

    control: Control
    verdict: str
    claims: tuple[ClaimStatus, ...]
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def declaration(self) -> str:
        """What a person must declare for the control (empty: nothing)."""
        return self.control.declaration

    def to_dict(self) -> dict[str, Any]:
        """The view as plain JSON values."""
        return {
            "id": self.control.id,
            "framework": self.control.framework,
            "title": self.control.title,
            "summary": self.control.summary,
            "verdict": self.verdict,
            "claims": [{"id": c.id, "verdict": c.verdict} for c in self.claims],
            "facts": dict(self.facts),
            "declaration": self.control.declaration,
        }


def _bad(where: str, reason: str) -> ConfigurationError:
    return ConfigurationError(reason=f"controls catalogue, {where}: {reason}")


def _strings(entry: Mapping[str, Any], name: str, where: str) -> tuple[str, ...]:
    value = entry[name]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _bad(where, f"{name} must be a list of strings")
    if len(set(value)) != len(value):
        raise _bad(where, f"{name} names one twice")
    return tuple(value)


def _parse_entry(index: int, entry: Any, seen: set[str]) -> Control:
    where = f"entry {index}"
    if not isinstance(entry, dict):
        raise _bad(where, "must be an object")
    missing = [name for name in _FIELDS if name not in entry]
    extra = sorted(set(entry) - set(_FIELDS))
    if missing or extra:
        raise _bad(where, f"missing {missing}, unexpected {extra}")
    if not all(
        isinstance(entry[n], str) for n in ("id", "framework", "title", "summary", "declaration")
    ):
        raise _bad(where, "id, framework, title, summary and declaration must be strings")
    ident = entry["id"]
    where = f"control {ident!r}"
    if not ident or ident in seen:
        raise _bad(where, "ids must be non-empty and unique")
    if entry["framework"] not in FRAMEWORKS:
        raise _bad(where, f"framework must be one of {', '.join(FRAMEWORKS)}")
    if not entry["title"].strip() or not entry["summary"].strip():
        raise _bad(where, "title and summary must not be empty")
    if len(entry["summary"]) > MAX_SUMMARY:
        raise _bad(where, f"summary longer than {MAX_SUMMARY} characters")
    claims = _strings(entry, "claims", where)
    facts = _strings(entry, "facts", where)
    if unknown := sorted(set(claims) - set(CLAIMS)):
        raise _bad(where, f"unknown claims {unknown}")
    if unknown := sorted(set(facts) - set(FACTS)):
        raise _bad(where, f"unknown facts {unknown}")
    if not claims and not entry["declaration"].strip():
        raise _bad(where, "a control without claims must say what is to be declared")
    return Control(
        id=ident,
        framework=entry["framework"],
        title=entry["title"],
        summary=entry["summary"],
        claims=claims,
        facts=facts,
        declaration=entry["declaration"],
    )


def parse_controls(data: Any) -> tuple[Control, ...]:
    """The controls of a decoded catalogue, checked: every field present and typed, ids
    unique, frameworks, claims and facts known, and every control resting on something.

    :raises ConfigurationError: naming the entry and what is wrong with it.
    """
    if not isinstance(data, list) or not data:
        raise _bad("top level", "must be a non-empty list of controls")
    controls: list[Control] = []
    seen: set[str] = set()
    for index, entry in enumerate(data):
        control = _parse_entry(index, entry, seen)
        seen.add(control.id)
        controls.append(control)
    return tuple(controls)


def load_controls(text: str | None = None) -> tuple[Control, ...]:
    """The bundled catalogue (or the JSON ``text`` given), validated.

    :raises ConfigurationError: if it is not JSON or does not validate.
    """
    if text is None:
        text = resources.files(CONTROLS_PACKAGE).joinpath(CONTROLS_FILE).read_text("utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise _bad("file", f"not JSON: {e}") from e
    return parse_controls(data)


def gather_facts(
    settings: Settings, *, sites_countries: Iterable[str] | None = None
) -> dict[str, Any]:
    """The configuration facts (:data:`FACTS`) of ``settings``; the sites' countries come
    from the database, so the caller passes them (None: not gathered)."""
    return {
        "environment": settings.env,
        "two_person_level": settings.two_person_level,
        "step_up_max_age_s": settings.step_up_max_age_s,
        # The identity adapter pins RS256 (sovereign.adapters.keycloak.ALGORITHMS; a test
        # holds this fact to it); tokens are verified whenever an identity provider is set.
        "tokens_verified_rs256": settings.idp_url is not None,
        "audit_witness_configured": bool(settings.audit_witness_path),
        "audit_signer": settings.audit_signer,
        "vault_configured": settings.vault_addr is not None,
        "vault_countries": sorted(settings.vault_countries),
        "sites_countries": None if sites_countries is None else sorted(set(sites_countries)),
        "sanitizer_image_configured": settings.sanitizer_image is not None,
    }


def _claim_verdicts(report: Mapping[str, Any]) -> dict[str, str]:
    claims = report.get("claims")
    if not isinstance(claims, list):
        raise InvalidInputError(reason="the report has no list of claims")
    found: dict[str, str] = {}
    for claim in claims:
        if isinstance(claim, dict) and isinstance(claim.get("id"), str):
            found[claim["id"]] = str(claim.get("verdict", ""))
    return found


def _verdict(statuses: Sequence[ClaimStatus]) -> str:
    if not statuses:
        return DECLARATION_NEEDED
    if any(s.verdict not in ("holds", NOT_EVALUATED) for s in statuses):
        return VIOLATED
    if any(s.verdict == NOT_EVALUATED for s in statuses):
        return NOT_EVALUATED
    return EVIDENCED


def by_framework(
    report: Mapping[str, Any],
    framework: str,
    facts: Mapping[str, Any],
    controls: Sequence[Control] | None = None,
) -> list[ControlView]:
    """The controls of ``framework`` (catalogue order) read against ``report``: each with its
    verdict from its claims, the facts it names (from ``facts``; missing ones None) and its
    declaration.

    :raises InvalidInputError: for an unknown framework or a report without claims.
    """
    if framework not in FRAMEWORKS:
        raise InvalidInputError(
            reason=f"unknown framework {framework!r} (one of {', '.join(FRAMEWORKS)})"
        )
    verdicts = _claim_verdicts(report)
    views = []
    for control in controls if controls is not None else load_controls():
        if control.framework != framework:
            continue
        # A claim verdict other than "holds" or "violated" is not trusted as holding.
        statuses = tuple(ClaimStatus(c, verdicts.get(c, NOT_EVALUATED)) for c in control.claims)
        views.append(
            ControlView(
                control=control,
                verdict=_verdict(statuses),
                claims=statuses,
                facts={name: facts.get(name) for name in control.facts},
            )
        )
    return views


def fact_text(value: Any) -> str:
    """A configuration fact as a reader wants it: yes/no, lists joined, None as unknown."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if value is None:
        return "unknown"
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value) or "none"
    return str(value)


def format_framework(views: Sequence[ControlView]) -> str:
    """The views as text, one block per control: id, verdict, title, claims, facts and the
    declaration, with a closing count per verdict."""
    if not views:
        return "No controls.\n"
    framework = views[0].control.framework
    lines = [FRAMEWORKS.get(framework, framework), ""]
    width = max(len(v.control.id) for v in views)
    for view in views:
        lines.append(f"{view.control.id:<{width}}  [{view.verdict}]  {view.control.title}")
        pad = " " * (width + 2)
        if view.claims:
            claims = ", ".join(f"{c.id}: {c.verdict}" for c in view.claims)
            lines.append(f"{pad}claims: {claims}")
        for name, value in view.facts.items():
            lines.append(f"{pad}fact {name}: {fact_text(value)}")
        if view.declaration:
            lines.append(f"{pad}to declare: {view.declaration}")
    counts: dict[str, int] = {}
    for view in views:
        counts[view.verdict] = counts.get(view.verdict, 0) + 1
    lines.append("")
    lines.append("; ".join(f"{n} {verdict}" for verdict, n in sorted(counts.items())))
    return "\n".join(lines) + "\n"
