"""Unit and property tests for sovereign.domain.placement.

Each rule is checked with the reason an officer reads; the property tests apply random sequences
of placements to small fleets and check that isolation rules 1 and 2 always hold and that no
enclave lands outside the countries its request allows.
"""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from sovereign.domain.fleet import Gpu
from sovereign.domain.labels import LabelScheme
from sovereign.domain.placement import (
    DEDICATED_ELSEWHERE,
    PREFERRED_ELSEWHERE,
    HostState,
    PlacementRequest,
    apply,
    as_seen_by,
    named_labels,
    place,
)

SCHEME = LabelScheme()
SECRET = SCHEME.label("SECRET")
SECRET_NATO = SCHEME.label("SECRET", ["NATO"])
CONFIDENTIAL = SCHEME.label("CONFIDENTIAL")
UNCLASSIFIED = SCHEME.label("UNCLASSIFIED")
TOP = SCHEME.highest
H100 = "H100-SXM5-80GB"
A100 = "A100-SXM4-80GB"


def gpu(n, numa=0, state="free", model=H100, group=None, members=None):
    address = f"0000:{n:02x}:00.0"
    return Gpu(
        host="h",
        address=address,
        model=model,
        numa_node=numa,
        iommu_group=n if group is None else group,
        group_members=members or (address,),
        state=state,
    )


def host(name, accreditation=TOP, gpus=None, state="active", labels=(), classified=None, **kw):
    return HostState(
        name=name,
        accreditation=accreditation,
        state=state,
        labels_present=frozenset(labels),
        classified_present=classified,
        free_vcpus=kw.get("vcpus", 128),
        free_memory_mib=kw.get("memory", 1 << 20),
        gpus=tuple(gpus if gpus is not None else [gpu(i, numa=i // 4) for i in range(8)]),
        country=kw.get("country", "ES"),
    )


def request(
    label=SECRET, classified=True, gpus=1, model=H100, vcpus=8, memory=1024, countries=None
):
    return PlacementRequest(
        label=label,
        classified=classified,
        gpus=gpus,
        gpu_model=model,
        vcpus=vcpus,
        memory_mib=memory,
        countries=countries,
        tenant="defence",
    )


def test_places_on_an_empty_accredited_host():
    placement = place(request(gpus=2), [host("a")])
    assert placement.ok
    assert placement.host == "a"
    assert placement.gpus == ("0000:00:00.0", "0000:01:00.0")
    assert placement.gpu_model == H100
    assert placement.reasons == {}


def test_host_must_be_active():
    fleet = [host("d", state="draining"), host("q", state="quarantined")]
    placement = place(request(), fleet)
    assert not placement.ok
    assert placement.reasons == {"d": "draining", "q": "quarantined"}
    assert placement.explain() == "d: draining\nq: quarantined"


def test_host_must_be_in_a_country_the_tenant_allows():
    fleet = [host("pt", country="PT"), host("unknown", country=""), host("es", country="ES")]
    placement = place(request(countries=frozenset({"ES"})), fleet)
    assert placement.host == "es"
    assert placement.reasons == {
        "pt": "country PT not allowed for tenant defence",
        "unknown": "country (unknown) not allowed for tenant defence",
    }
    # Right after "active": a draining host abroad says it is draining.
    fleet = [host("d", state="draining", country="PT")]
    assert place(request(countries=frozenset({"ES"})), fleet).reasons == {"d": "draining"}
    # ... and before accreditation: the country is the first thing an officer reads.
    fleet = [host("c", accreditation=CONFIDENTIAL, country="PT")]
    assert place(request(countries=frozenset({"ES"})), fleet).reasons == {
        "c": "country PT not allowed for tenant defence"
    }
    # None accepts any country.
    assert place(request(), [host("pt", country="PT")]).host == "pt"


def test_accreditation_must_dominate_the_label():
    placement = place(request(label=SECRET_NATO), [host("c", accreditation=CONFIDENTIAL)])
    assert placement.reasons == {"c": "accreditation CONFIDENTIAL does not dominate SECRET//NATO"}
    # Compartments count too: SECRET does not dominate SECRET//NATO.
    placement = place(request(label=SECRET_NATO), [host("s", accreditation=SECRET)])
    assert placement.reasons == {"s": "accreditation SECRET does not dominate SECRET//NATO"}


def test_labels_of_other_enclaves_are_named_only_to_readers_cleared_for_them():
    fleet = [
        host("s", labels={"SECRET//CRYPTO"}, classified=True),
        host("t", labels={"SECRET"}, classified=True),
        host("d", state="draining", labels={"SECRET//EU"}, classified=True),
    ]
    placement = place(request(label=SECRET_NATO), fleet)
    assert named_labels(placement, fleet) == {"SECRET//CRYPTO", "SECRET"}  # not the drained
    seen = as_seen_by(placement, fleet, lambda text: "CRYPTO" not in text)
    assert seen.reasons == {
        "s": DEDICATED_ELSEWHERE,
        "t": "carries SECRET enclaves; dedicated per label",
        "d": "draining",
    }
    assert as_seen_by(placement, fleet, lambda _text: True) == placement


def test_host_is_dedicated_per_label():
    fleet = [host("s", labels={"SECRET"}, classified=True)]
    placement = place(request(label=SECRET_NATO), fleet)
    assert placement.reasons == {"s": "carries SECRET enclaves; dedicated per label"}
    assert place(request(label=SECRET), fleet).host == "s"


def test_classified_and_civilian_never_share_a_host():
    fleet = [host("u", labels={"UNCLASSIFIED"}, classified=False)]
    placement = place(request(label=UNCLASSIFIED, classified=True), fleet)
    assert placement.reasons == {
        "u": "carries civilian enclaves; classified and civilian never share a host"
    }
    fleet = [host("k", labels={"UNCLASSIFIED"}, classified=True)]
    placement = place(request(label=UNCLASSIFIED, classified=False), fleet)
    assert placement.reasons == {
        "k": "carries classified enclaves; classified and civilian never share a host"
    }


def test_not_enough_free_gpus_of_the_model():
    gpus = [gpu(0), gpu(1), gpu(2, state="dirty"), gpu(3, state="sanitizing")]
    gpus += [gpu(4, state="quarantined"), gpu(5, state="allocated"), gpu(6, model=A100)]
    placement = place(request(gpus=4), [host("h", gpus=gpus)])
    assert placement.reasons == {"h": f"only 2 free {H100} GPUs, 4 needed"}
    placement = place(request(gpus=1, model="B200"), [host("h", gpus=gpus)])
    assert placement.reasons == {"h": "only 0 free B200 GPUs, 1 needed"}


def test_dirty_sanitizing_and_quarantined_gpus_are_never_allocated():
    gpus = [gpu(0, state="dirty"), gpu(1, state="sanitizing"), gpu(2, state="quarantined")]
    gpus.append(gpu(3))
    placement = place(request(gpus=1), [host("h", gpus=gpus)])
    assert placement.gpus == ("0000:03:00.0",)


def test_gpu_sharing_a_group_with_a_busy_gpu_is_not_usable():
    members = ("0000:00:00.0", "0000:01:00.0")
    gpus = [
        gpu(0, group=7, members=members),
        gpu(1, group=7, members=members, state="allocated"),
        gpu(2),
    ]
    placement = place(request(gpus=2), [host("h", gpus=gpus)])
    assert placement.reasons == {
        "h": f"only 1 free {H100} GPUs, 2 needed (1 more held back by their IOMMU group)"
    }


def test_iommu_group_of_two_gpus_is_never_split():
    members = ("0000:00:00.0", "0000:01:00.0")
    gpus = [gpu(0, group=7, members=members), gpu(1, group=7, members=members)]
    placement = place(request(gpus=1), [host("h", gpus=gpus)])
    assert placement.reasons == {
        "h": f"2 free {H100} GPUs cannot make 1 without splitting an IOMMU group"
    }
    assert place(request(gpus=2), [host("h", gpus=gpus)]).gpus == members


def test_gpu_grouped_with_a_non_gpu_function_is_usable_as_a_whole_group():
    # The civilian host's 3b:00.0 shares group 38 with an audio function; the designer passes
    # both through, so placement may hand out the GPU.
    members = ("0000:3b:00.0", "0000:3b:00.1")
    placement = place(request(gpus=1), [host("h", gpus=[gpu(0x3B, group=38, members=members)])])
    assert placement.gpus == ("0000:3b:00.0",)


def test_gpu_without_iommu_group_is_not_usable():
    no_group = replace(gpu(0), iommu_group=None, group_members=())
    placement = place(request(gpus=1), [host("h", gpus=[no_group])])
    assert placement.reasons == {
        "h": f"only 0 free {H100} GPUs, 1 needed (1 more held back by their IOMMU group)"
    }


def test_vcpus_and_memory_must_fit():
    placement = place(request(vcpus=64), [host("h", vcpus=16)])
    assert placement.reasons == {"h": "only 16 free vCPUs, 64 needed"}
    placement = place(request(memory=4096), [host("h", memory=1024)])
    assert placement.reasons == {"h": "only 1024 MiB free memory, 4096 MiB needed"}


def test_prefers_one_numa_node():
    gpus = [gpu(0, numa=0), gpu(1, numa=1), gpu(2, numa=1), gpu(3, numa=0), gpu(4, numa=1)]
    placement = place(request(gpus=2), [host("h", gpus=gpus)])
    # Node 0 holds exactly 2 (tightest fit), so both come from it.
    assert placement.gpus == ("0000:00:00.0", "0000:03:00.0")
    placement = place(request(gpus=3), [host("h", gpus=gpus)])
    assert placement.gpus == ("0000:01:00.0", "0000:02:00.0", "0000:04:00.0")
    placement = place(request(gpus=4), [host("h", gpus=gpus)])
    assert placement.gpus == ("0000:00:00.0", "0000:01:00.0", "0000:02:00.0", "0000:03:00.0")


def test_tie_breaks_same_label_then_tightest_fit_then_name():
    eight = [gpu(i, numa=i // 4) for i in range(8)]
    two = [gpu(0), gpu(1)]
    fleet = [host("b", gpus=eight), host("a", gpus=eight), host("c", gpus=two)]
    placement = place(request(gpus=2), fleet)
    assert placement.host == "c"
    assert placement.reasons == {"a": PREFERRED_ELSEWHERE, "b": PREFERRED_ELSEWHERE}
    assert place(request(gpus=4), fleet).host == "a"
    fleet.append(host("z", gpus=eight, labels={"SECRET"}, classified=True))
    assert place(request(gpus=2), fleet).host == "z"


def test_every_rejected_host_has_a_reason_and_decisions_are_deterministic():
    fleet = [
        host("a", state="draining"),
        host("b", accreditation=CONFIDENTIAL),
        host("c", labels={"SECRET//NATO"}, classified=True),
        host("d"),
        host("e"),
    ]
    first = place(request(gpus=4), fleet)
    assert first.host == "d"
    assert set(first.reasons) == {"a", "b", "c", "e"}
    assert all(first.reasons.values())
    for _ in range(5):
        assert place(request(gpus=4), list(reversed(fleet))) == first


def test_any_model_uses_one_model():
    gpus = [gpu(0, model=A100), gpu(1, model=H100), gpu(2, model=H100)]
    placement = place(request(gpus=2, model=None), [host("h", gpus=gpus)])
    assert placement.gpus == ("0000:01:00.0", "0000:02:00.0")
    assert placement.gpu_model == H100
    placement = place(request(gpus=3, model=None), [host("h", gpus=gpus)])
    assert placement.reasons == {"h": "only 2 free GPUs of any single model, 3 needed"}


def test_no_gpus_requested():
    placement = place(request(gpus=0), [host("h", gpus=[])])
    assert placement.host == "h"
    assert placement.gpus == ()


def test_apply_allocates_and_records_the_label():
    fleet = [host("a"), host("b", state="draining")]
    req = request(gpus=2, vcpus=8, memory=1024)
    placement = place(req, fleet)
    after = apply(placement, req, fleet)
    a = after[0]
    assert a.labels_present == {"SECRET"}
    assert a.classified_present is True
    assert a.free_vcpus == 120
    assert a.free_memory_mib == (1 << 20) - 1024
    assert [g.state for g in a.gpus][:3] == ["allocated", "allocated", "free"]
    assert after[1] is fleet[1]
    assert apply(place(req, [fleet[1]]), req, [fleet[1]]) == [fleet[1]]


# --- properties -------------------------------------------------------------------------------

LATTICE = [
    UNCLASSIFIED,
    CONFIDENTIAL,
    SECRET,
    SECRET_NATO,
    SCHEME.label("SECRET", ["EU"]),
]
ACCREDITATIONS = [CONFIDENTIAL, SECRET, SECRET_NATO, TOP]
SHARED = ("0000:02:00.0", "0000:03:00.0")

COUNTRIES = ["ES", "PT", "FR"]

gpu_states = st.sampled_from(["free", "free", "free", "allocated", "dirty", "sanitizing"])


@st.composite
def fleets(draw):
    hosts = []
    for index in range(draw(st.integers(1, 4))):
        states = draw(st.lists(gpu_states, min_size=6, max_size=6))
        gpus = [gpu(i, numa=i // 3, state=states[i]) for i in range(6)]
        if draw(st.booleans()):
            # Two GPUs sharing one IOMMU group.
            gpus[2] = replace(gpus[2], iommu_group=99, group_members=SHARED)
            gpus[3] = replace(gpus[3], iommu_group=99, group_members=SHARED)
        hosts.append(
            host(
                f"h{index}",
                accreditation=draw(st.sampled_from(ACCREDITATIONS)),
                gpus=gpus,
                state=draw(st.sampled_from(["active", "active", "active", "draining"])),
                vcpus=draw(st.integers(0, 64)),
                memory=draw(st.integers(0, 65536)),
                country=draw(st.sampled_from(COUNTRIES)),
            )
        )
    return hosts


requests = st.builds(
    request,
    label=st.sampled_from(LATTICE),
    classified=st.booleans(),
    gpus=st.integers(0, 4),
    model=st.sampled_from([H100, None]),
    vcpus=st.integers(0, 16),
    memory=st.integers(0, 16384),
    countries=st.none() | st.frozensets(st.sampled_from(COUNTRIES), min_size=1),
)


def _group_of(h, address):
    found = next(g for g in h.gpus if g.address == address)
    return {g.address for g in h.gpus if g.iommu_group == found.iommu_group}


@settings(max_examples=300, deadline=None)
@given(fleets(), st.lists(requests, min_size=1, max_size=12))
def test_no_sequence_of_placements_breaks_isolation(fleet, sequence):
    placed: dict[str, tuple[str, bool]] = {}
    allocated = {(h.name, g.address) for h in fleet for g in h.gpus if g.state == "allocated"}
    for req in sequence:
        placement = place(req, fleet)
        assert set(placement.reasons) == {h.name for h in fleet} - {placement.host}
        if not placement.ok:
            fleet = apply(placement, req, fleet)
            continue
        before = next(h for h in fleet if h.name == placement.host)
        assert before.state == "active"
        assert req.countries is None or before.country in req.countries
        assert before.accreditation.dominates(req.label)
        assert len(placement.gpus) == req.gpus
        free = {g.address for g in before.gpus if g.state == "free"}
        assert set(placement.gpus) <= free
        for address in placement.gpus:
            assert (before.name, address) not in allocated
            allocated.add((before.name, address))
            assert _group_of(before, address) <= set(placement.gpus)
        models = {g.model for g in before.gpus if g.address in placement.gpus}
        assert len(models) <= 1
        label = (str(req.label), req.classified)
        assert placed.setdefault(before.name, label) == label
        fleet = apply(placement, req, fleet)
        after = next(h for h in fleet if h.name == placement.host)
        assert after.free_vcpus >= 0
        assert after.free_memory_mib >= 0
    for h in fleet:
        assert len(h.labels_present) <= 1
        assert all(g.state != "allocated" or (h.name, g.address) in allocated for g in h.gpus)
