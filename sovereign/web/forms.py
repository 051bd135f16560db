"""Console forms: from posted fields to the same commands the API builds.

Owns turning the request form into a :class:`RequestDraft` through the API's own schema
(:class:`sovereign.channels.inputs.RequestCreate`), so the console accepts exactly what the API
accepts, with each problem attached to the field the user typed it in. Policy (who may ask for
what) stays in the services.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError
from werkzeug.datastructures import MultiDict
from werkzeug.exceptions import BadRequest

from sovereign.channels.inputs import RequestCreate
from sovereign.services.requests import RequestDraft
from sovereign.text import control_character, describe, for_log

#: Single-valued fields of the request form, as the inputs are named.
REQUEST_FIELDS = (
    "tenant",
    "level",
    "image",
    "vcpus",
    "memory_gib",
    "gpus",
    "gpu_model",
    "disk_gib",
    "lease_hours",
    "purpose",
)
#: Where a schema error's location points in the form.
_FIELD_OF: dict[tuple[str, ...], str] = {
    ("label", "level"): "level",
    ("label", "compartments"): "compartments",
    ("resources", "vcpus"): "vcpus",
    ("resources", "memory_mib"): "memory_gib",
    ("resources", "gpus"): "gpus",
    ("resources", "gpu_model"): "gpu_model",
    ("resources", "disk_gib"): "disk_gib",
}
_FRIENDLY = {
    "int_parsing": "Enter a whole number.",
    "int_type": "Enter a whole number.",
    "string_too_short": "This field is required.",
    "missing": "This field is required.",
}
MIB_PER_GIB = 1024
#: Longest free text accepted from a decision form (the API's limit too).
MAX_REASON = 2000
#: Form fields that are free text a person typed (textareas): these alone may hold tab and line
#: breaks; every other field is an identifier or a choice (see :func:`refuse_control_characters`).
#: A job's arguments and output patterns are one per line (the domain refuses any other control
#: character in them).
FREE_TEXT_FIELDS = frozenset({"reason", "purpose", "args", "outputs"})


@dataclass
class RequestForm:
    """What was typed (for showing it again), what is wrong with it, and the draft if nothing."""

    values: dict[str, Any]
    errors: dict[str, str] = field(default_factory=dict)
    draft: RequestDraft | None = None


def empty_request_form(**defaults: Any) -> RequestForm:
    """A blank form with ``defaults`` filled in."""
    values: dict[str, Any] = dict.fromkeys(REQUEST_FIELDS, "")
    values["compartments"] = []
    values["residency"] = []
    values.update(defaults)
    return RequestForm(values=values)


def parse_request_form(form: MultiDict[str, str]) -> RequestForm:
    """Validate the posted request form against the API's schema."""
    values: dict[str, Any] = {name: form.get(name, "").strip() for name in REQUEST_FIELDS}
    values["compartments"] = form.getlist("compartments")
    # Countries ticked narrow the tenant's residency; none ticked: any country it allows.
    values["residency"] = form.getlist("residency")
    errors: dict[str, str] = {}
    memory: Any = values["memory_gib"]
    try:
        memory = int(values["memory_gib"]) * MIB_PER_GIB
        if memory < MIB_PER_GIB:
            errors["memory_gib"] = "Ask for at least 1 GiB."
    except ValueError:
        errors["memory_gib"] = _FRIENDLY["int_parsing"]
    gpus = values["gpus"] or "0"
    data = {
        "tenant": values["tenant"],
        "label": {"level": values["level"], "compartments": values["compartments"]},
        "resources": {
            "vcpus": values["vcpus"],
            "memory_mib": memory,
            "gpus": gpus,
            "gpu_model": values["gpu_model"] if gpus != "0" and values["gpu_model"] else None,
            "disk_gib": values["disk_gib"],
        },
        "image": values["image"],
        "purpose": values["purpose"],
        "lease_hours": values["lease_hours"],
        "residency": values["residency"] or None,
    }
    try:
        body = RequestCreate.model_validate(data)
    except ValidationError as e:
        for err in e.errors(include_url=False, include_input=False, include_context=True):
            loc = tuple(str(p) for p in err["loc"])
            name = _FIELD_OF.get(loc[:2], loc[0] if loc else "form")
            errors.setdefault(name, _FRIENDLY.get(err["type"], err["msg"]))
        return RequestForm(values=values, errors=errors)
    if errors:
        return RequestForm(values=values, errors=errors)
    return RequestForm(values=values, draft=body.draft())


def refuse_control_characters(form: MultiDict[str, str]) -> None:
    """Refuse a posted form if any field holds a control character or line separator (free-text
    fields: any but tab and line breaks), before a view names it to a service, an audit event
    or a log line; the API's schemas refuse the same.

    :raises BadRequest: (400) naming the field and the character.
    """
    for name, value in form.items(multi=True):
        char = control_character(name) or control_character(
            value, free_text=name in FREE_TEXT_FIELDS
        )
        if char is not None:
            raise BadRequest(
                f"The form field '{for_log(name)}' holds the control character {describe(char)}."
            )


def reason_field(form: MultiDict[str, str]) -> str:
    """The free-text reason of a decision form, trimmed and bounded."""
    return form.get("reason", "").strip()[:MAX_REASON]
