"""The report as HTML: self-contained, every claim with its verdict and violating seqs, the
framework table, and hostile text from the log escaped, never markup."""

from __future__ import annotations

import re
from html.parser import HTMLParser

from sovereign.services.attestation.frameworks import by_framework
from sovereign.services.attestation.html import render_body, render_html
from tests.unit.sovereign.services.attestation.reports import report

HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>&amp;'


class _Tags(HTMLParser):
    """Every start tag and its attributes, as a browser would parse them."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def tags(html: str) -> list[tuple[str, dict[str, str | None]]]:
    parser = _Tags()
    parser.feed(html)
    return parser.tags


def test_a_page_where_every_claim_holds():
    html = render_html(report())
    assert html.startswith("<!doctype html>")
    assert "Every claim holds" in html
    assert 'id="attestation-verdict"' in html
    for claim in ("co-residency", "gpu-handover", "crypto-erase", "two-person", "residency"):
        assert f'id="claim-{claim}"' in html
    assert "(f) Completeness: holds" in html
    assert "2 simulated certificates" in html  # notes are shown
    assert "1,234 events" in html and "ab" * 32 in html
    assert "87 signed checkpoints, 87 witnessed" in html
    assert "everything (no clearance limit)" in html


def test_the_page_is_self_contained():
    html = render_html(report(), by_framework(report(), "c5", {}))
    for tag, attrs in tags(html):
        assert tag not in ("script", "link", "iframe", "object", "embed"), tag
        if tag == "img":
            raise AssertionError("no images")
        for name in ("src", "href"):
            value = attrs.get(name)
            assert value is None or value.startswith("#"), (tag, value)
    assert "<style>" in html


def test_a_violation_is_named_with_its_seqs():
    html = render_html(report(violated={"two-person": "request r1 approved by one officer"}))
    assert "1 of 6 claims violated" in html and "(d) Two-person rule" in html
    section = html[html.index('id="claim-two-person"') :]
    assert re.search(r"seq 5, 7</span>: request r1 approved by one officer", section)


def test_hostile_text_from_the_log_is_escaped():
    hostile = report(violated={"residency": HOSTILE})
    hostile["claims"][0]["notes"] = [HOSTILE]
    hostile["claims"][1]["title"] = HOSTILE
    hostile["scope"]["clearance"] = {"level": HOSTILE, "compartments": ["<b>"]}
    for html in (render_html(hostile), render_body(hostile)):
        assert "<script>" not in html and "<img" not in html and "<b>" not in html
        assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in html
        assert "&amp;amp;" in html
        assert [t for t, _ in tags(html) if t in ("script", "img", "b")] == []


def test_the_framework_table():
    bad = report(violated={"crypto-erase": "no key:destroy for enclave e1"})
    views = by_framework(bad, "ens-high", {"vault_countries": ["ES", "PT"]})
    views += by_framework(bad, "secnumcloud", {})
    html = render_html(bad, views)
    assert 'id="framework-ens-high"' in html and 'id="framework-secnumcloud"' in html
    assert 'id="framework-c5"' not in html
    assert "ENS (Spain, RD 311/2022), category HIGH" in html
    row = html[html.index("<code>op.exp.10</code>") :]
    row = row[: row.index("</tr>")]
    assert "<td>violated</td>" in row and "crypto-erase: violated" in row
    assert "vault_countries: ES, PT" in row
    assert "declaration needed" in html  # op.acc.6
    assert render_html(bad).count("Framework controls") == 0


def test_the_body_alone_is_embeddable():
    body = render_body(report())
    assert "<html" not in body and "<style>" not in body
    assert body.lstrip().startswith('<div class="attestation">')
    assert " style=" not in body  # the console's CSP allows no inline style


def test_a_partial_report_still_renders():
    html = render_html({"claims": [], "verdict": "violated"})
    assert "0 of 0 claims violated" in html
