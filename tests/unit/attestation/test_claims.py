"""Each claim holds over a consistent history and names the seqs of one injected violation."""

from __future__ import annotations

from dataclasses import replace

from sovereign.services.attestation.claims import (
    CLAIM_IDS,
    LogStatus,
    co_residency,
    completeness,
    crypto_erase,
    evaluate,
    gpu_handover,
    residency,
    two_person,
)

from .history import PARAMS, SECRET, UNCLASSIFIED, A, B, C, History, good_history

INTACT = LogStatus(intact=True, size=100, root_hash="ab", checkpoints=3, signed_sizes=(5, 100))


def test_every_claim_holds_over_a_consistent_history() -> None:
    h = good_history()
    results = evaluate(h.events, PARAMS, INTACT)
    assert [r.letter for r in results] == list("abcdef")
    assert tuple(r.id for r in results) == CLAIM_IDS
    assert {r.id: r.verdict for r in results} == dict.fromkeys(
        ["co-residency", "gpu-handover", "crypto-erase", "two-person", "residency", "completeness"],
        "holds",
    )
    by_id = {r.id: r for r in results}
    assert by_id["co-residency"].checked == 2
    assert by_id["gpu-handover"].checked == 1
    assert by_id["crypto-erase"].checked == 1
    # The SECRET approval (two officers), the UNCLASSIFIED one (one) and the kill switch.
    assert by_id["two-person"].checked == 3
    assert by_id["residency"].checked == 4  # two placements, two keys
    assert "1 clean certificate(s) came from simulated GPUs" in by_id["gpu-handover"].notes[0]


# -- (a) -------------------------------------------------------------------------------------


def test_co_residency_of_classified_and_civilian_is_found() -> None:
    h = good_history()
    first = h.place(
        C, "mad-1", ["0000:19:00.0"], SECRET, tenant="defence", country="ES", classified=True
    )
    # B (civilian) still runs on mad-1.
    result = co_residency(h.events, PARAMS)
    assert result.verdict == "violated"
    [v] = result.violations
    assert v.seqs == sorted([h.seq_of("enclave:place", f"enclave/{B}"), first])
    assert "classified and civilian" in v.message


def test_incomparable_labels_on_one_host_are_found() -> None:
    h = History()
    eu = {"level": "SECRET", "compartments": ["EU"]}
    nato = {"level": "SECRET", "compartments": ["NATO"]}
    one = h.place(A, "h", ["g0"], eu, tenant="t", country="ES", classified=True)
    two = h.place(B, "h", ["g1"], nato, tenant="t", country="ES", classified=True)
    [v] = co_residency(h.events, PARAMS).violations
    assert (v.seqs, "incomparable labels" in v.message) == ([one, two], True)


def test_sequential_enclaves_on_one_host_are_no_co_residency() -> None:
    h = History()
    h.place(A, "h", ["g0"], SECRET, tenant="t", country="ES", classified=True)
    h.end(A, "h", ["g0"])
    h.place(B, "h", ["g0"], UNCLASSIFIED, tenant="t", country="ES", classified=False)
    assert co_residency(h.events, PARAMS).verdict == "holds"


def test_a_placement_without_its_label_detail_is_a_violation_not_a_pass() -> None:
    h = History()
    seq = h.add("enclave:place", f"enclave/{A}", {"host": "h", "gpus": ["g0"]})
    [v] = co_residency(h.events, PARAMS).violations
    assert v.seqs == [seq]
    assert "lacks the detail 'label'" in v.message


# -- (b) -------------------------------------------------------------------------------------


def test_gpu_reused_without_clean_handover_is_found() -> None:
    h = good_history()
    h.end(B, "mad-1", ["0000:18:00.0"], clean=False)
    terminated = h.seq_of("enclave:terminated", f"enclave/{B}")
    again = h.place(
        C,
        "mad-1",
        ["0000:18:00.0"],
        UNCLASSIFIED,
        tenant="research",
        country="ES",
        classified=False,
    )
    result = gpu_handover(h.events, PARAMS)
    [v] = result.violations
    assert v.seqs == [terminated, again]
    assert "without a clean gpu:handover" in v.message
    assert "mad-1/0000:18:00.0" in v.message


def test_gpu_reused_before_termination_is_found() -> None:
    h = History()
    one = h.place(A, "h", ["g0"], SECRET, tenant="t", country="ES", classified=True)
    two = h.place(B, "h", ["g0"], SECRET, tenant="t", country="ES", classified=True)
    [v] = gpu_handover(h.events, PARAMS).violations
    assert v.seqs == [one, two]
    assert "still held it" in v.message


def test_a_handover_before_the_termination_does_not_count() -> None:
    h = History()
    h.place(A, "h", ["g0"], SECRET, tenant="t", country="ES", classified=True)
    h.add("gpu:handover", "gpu/h/g0", {"certificate": {"verdict": "clean"}})
    h.add("enclave:terminated", f"enclave/{A}", {"host": "h"})
    h.place(B, "h", ["g0"], SECRET, tenant="t", country="ES", classified=True)
    assert gpu_handover(h.events, PARAMS).verdict == "violated"


# -- (c) -------------------------------------------------------------------------------------


def test_terminated_enclave_without_key_destroy_is_found() -> None:
    h = good_history()
    ended = h.add("enclave:terminated", f"enclave/{B}", {"host": "mad-1"})
    result = crypto_erase(h.events, PARAMS)
    [v] = result.violations
    assert v.seqs == [ended]
    assert B in v.message


def test_events_no_signed_checkpoint_covers_are_not_evidence() -> None:
    # B's key is never destroyed; a forged key:destroy is appended past the last signed
    # checkpoint (an export's unsigned tail), dated before the period so that the period's own
    # end is still covered.
    h = good_history()
    ended = h.add("enclave:terminated", f"enclave/{B}", {"host": "mad-1"})
    signed = LogStatus(intact=True, size=ended + 2, signed_sizes=(ended + 1,))
    forged = h.add("key:destroy", f"key/transit/enclave-{B}", {"request": B, "vault": {}})
    h.events[forged] = replace(
        h.events[forged], event=replace(h.events[forged].event, time=h.events[0].event.time)
    )
    period = replace(PARAMS, since=h.events[1].event.time)
    results = {r.id: r for r in evaluate(h.events, period, signed)}
    [v] = results["crypto-erase"].violations
    assert v.seqs == [ended]
    assert any(
        f"from seq {forged} on are not yet covered" in n for n in results["completeness"].notes
    )


def test_key_destroy_without_vaults_answer_is_found() -> None:
    h = good_history()
    key = h.add("key:destroy", f"key/transit/enclave-{B}", {"request": B})
    ended = h.add("enclave:terminated", f"enclave/{B}", {"host": "mad-1"})
    [v] = crypto_erase(h.events, PARAMS).violations
    assert v.seqs == [key, ended]


# -- (d) -------------------------------------------------------------------------------------


def test_secret_request_approved_by_one_officer_is_found() -> None:
    h = good_history()
    h.request(C, "defence", SECRET, ["officer1"])
    approve = h.seq_of("request:approve", f"request/{C}")
    [v] = two_person(h.events, PARAMS).violations
    assert v.seqs == [approve]
    assert "1 distinct officer" in v.message


def test_the_requester_approving_is_found() -> None:
    h = good_history()
    h.request(C, "defence", SECRET, ["analyst", "officer2"])
    created = h.seq_of("request:create", f"request/{C}")
    first = h.seq_of("request:approve", f"request/{C}")
    [v] = two_person(h.events, PARAMS).violations
    assert v.seqs == [created, first]
    assert "its own requester" in v.message


def test_the_requester_approving_below_the_two_person_level_is_found_too() -> None:
    h = good_history()
    h.request(C, "research", UNCLASSIFIED, ["analyst"])  # one approval suffices, not their own
    created = h.seq_of("request:create", f"request/{C}")
    own = h.seq_of("request:approve", f"request/{C}")
    [v] = two_person(h.events, PARAMS).violations
    assert v.seqs == [created, own]
    assert "its own requester" in v.message


def test_an_approver_not_cleared_for_the_label_is_found() -> None:
    h = good_history()
    h.add(
        "request:create", f"request/{C}", {"tenant": "defence"}, actor="user:analyst", label=SECRET
    )
    h.add(
        "request:approve",
        f"request/{C}",
        {"to": "pending", "clearance": SECRET},
        actor="user:officer1",
        label=SECRET,
    )
    low = h.add(
        "request:approve",
        f"request/{C}",
        {"to": "approved", "clearance": {"level": "CONFIDENTIAL", "compartments": []}},
        actor="user:officer3",
        label=SECRET,
    )
    [v] = two_person(h.events, PARAMS).violations
    assert v.seqs == [low]
    assert "not cleared for SECRET" in v.message


def test_an_approval_without_clearance_detail_is_a_violation() -> None:
    h = good_history()
    h.add(
        "request:create", f"request/{C}", {"tenant": "defence"}, actor="user:analyst", label=SECRET
    )
    h.add(
        "request:approve",
        f"request/{C}",
        {"to": "pending", "clearance": SECRET},
        actor="user:officer1",
        label=SECRET,
    )
    old = h.add(
        "request:approve", f"request/{C}", {"to": "approved"}, actor="user:officer2", label=SECRET
    )
    [v] = two_person(h.events, PARAMS).violations
    assert (v.seqs, "lacks the detail 'clearance'" in v.message) == ([old], True)


def test_an_action_confirmed_by_its_proposer_is_found() -> None:
    h = good_history()
    proposed = h.add("action:propose", "action/k2", {"clearance": SECRET}, actor="user:officer1")
    confirmed = h.add("action:confirm", "action/k2", {"clearance": SECRET}, actor="user:officer1")
    [v] = two_person(h.events, PARAMS).violations
    assert v.seqs == [proposed, confirmed]
    assert "same officer" in v.message


def test_an_action_with_an_uncleared_proposer_is_found() -> None:
    h = good_history()
    proposed = h.add(
        "action:propose",
        "action/k2",
        {"clearance": UNCLASSIFIED},
        actor="user:officer3",
        label=SECRET,
    )
    h.add("action:confirm", "action/k2", {"clearance": SECRET}, actor="user:officer1", label=SECRET)
    [v] = two_person(h.events, PARAMS).violations
    assert v.seqs == [proposed]
    assert "proposer" in v.message


# -- (e) -------------------------------------------------------------------------------------


def test_placement_outside_the_tenants_residency_is_found() -> None:
    h = good_history()
    host = h.seq_of("host:add", "host/lis-1")
    tenant = h.seq_of("tenant:create", "tenant/defence")
    h.request(C, "defence", SECRET, ["officer1", "officer2"])
    placed = h.place(
        C, "lis-1", ["0000:18:00.0"], SECRET, tenant="defence", country="PT", classified=True
    )
    [v] = residency(h.events, PARAMS).violations
    assert v.seqs == sorted([host, tenant, placed])
    assert "outside its residency ES" in v.message


def test_placement_claiming_another_country_than_the_logs_is_found() -> None:
    h = good_history()
    host = h.seq_of("host:add", "host/lis-1")
    placed = h.place(
        C, "lis-1", ["g9"], UNCLASSIFIED, tenant="research", country="ES", classified=False
    )
    [v] = residency(h.events, PARAMS).violations
    assert v.seqs == [host, placed]
    assert "puts host lis-1 in PT" in v.message


def test_a_relocation_moves_the_hosts_country() -> None:
    h = good_history()
    h.end(B, "mad-1", ["0000:18:00.0"])  # an empty host may move
    moved = h.add(
        "action:confirm",
        "action/r1",
        {
            "kind": "host:relocate",
            "params": {"host": "mad-1", "site": "pt-lis-1"},
            "to_country": "PT",
        },
    )
    placed = h.place(
        C, "mad-1", ["g9"], UNCLASSIFIED, tenant="defence", country="PT", classified=True
    )
    violations = residency(h.events, PARAMS).violations
    assert [v.seqs for v in violations] == [
        sorted([moved, h.seq_of("tenant:create", "tenant/defence"), placed])
    ]


def test_key_in_another_country_than_its_enclave_is_found() -> None:
    h = good_history()
    h.request(C, "research", UNCLASSIFIED, ["officer1"])
    key = h.add("key:create", f"key/transit/enclave-{C}", {"request": C, "country": "PT"})
    placed = h.place(
        C, "mad-1", ["g9"], UNCLASSIFIED, tenant="research", country="ES", classified=False
    )
    [v] = residency(h.events, PARAMS).violations
    assert v.seqs == [key, placed]
    assert "lives in PT but the enclave ran in ES" in v.message


def test_key_without_country_is_a_violation() -> None:
    h = good_history()
    key = h.add("key:create", f"key/transit/enclave-{C}", {"request": C})
    [v] = residency(h.events, PARAMS).violations
    assert (v.seqs, "'country'" in v.message) == ([key], True)


def test_a_host_relocated_while_it_carried_an_enclave_is_found() -> None:
    h = good_history()
    placed = h.place(
        C,
        "lis-1",
        ["0000:19:00.0"],
        UNCLASSIFIED,
        tenant="research",
        country="PT",
        classified=False,
    )
    moved = h.add(
        "action:confirm",
        "action/1",
        {
            "kind": "host:relocate",
            "params": {"host": "lis-1", "site": "mad-2"},
            "to_country": "ES",
        },
    )
    [v] = residency(h.events, PARAMS).violations
    assert v.seqs == [placed, moved]
    assert "relocated to ES while it carried enclaves" in v.message
    # Once the enclave has ended, moving the host is no violation.
    h = good_history()
    h.place(
        C,
        "lis-1",
        ["0000:19:00.0"],
        UNCLASSIFIED,
        tenant="research",
        country="PT",
        classified=False,
    )
    h.end(C, "lis-1", ["0000:19:00.0"])
    h.add(
        "action:confirm",
        "action/1",
        {"kind": "host:relocate", "params": {"host": "lis-1", "site": "mad-2"}, "to_country": "ES"},
    )
    assert residency(h.events, PARAMS).verdict == "holds"


# -- (f) -------------------------------------------------------------------------------------


def test_a_log_that_does_not_verify_violates_completeness() -> None:
    h = good_history()
    broken = LogStatus(intact=False, problem="event 3 does not match its stored leaf hash")
    [v] = completeness(h.events, PARAMS, broken).violations
    assert "event 3 does not match" in v.message


def test_an_uncovered_end_of_period_violates_completeness() -> None:
    h = good_history()
    last = h.events[-1].seq
    status = replace(INTACT, signed_sizes=(last,))  # covers events 0 .. last-1 only
    [v] = completeness(h.events, PARAMS, status).violations
    assert v.seqs == [last]
    assert (
        completeness(h.events, PARAMS, replace(INTACT, signed_sizes=(last + 1,))).verdict == "holds"
    )


def test_only_subjects_in_the_period_are_checked() -> None:
    h = good_history()
    h.request(C, "defence", SECRET, ["officer1"])  # a violation, but before the period
    since = h.events[-1].event.time.replace(second=1)
    params = replace(PARAMS, since=since)
    assert two_person(h.events, params).verdict == "holds"
    assert two_person(h.events, PARAMS).verdict == "violated"
