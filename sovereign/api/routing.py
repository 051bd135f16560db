"""Operations: parse -> call -> serialise, and the OpenAPI document built from the same schemas.

Owns :class:`Api`, the registry that turns a view function plus its body, query and response
schemas into a Flask route, and :func:`openapi`, which describes every registered operation.
Because validation and documentation read the same pydantic models, they cannot drift apart.
Also ``multipart/form-data`` bodies (:func:`parse_form`: uploads of job code and datasets, each
operation with its own size limit, refused with 413 above it before anything is parsed), and
views that answer with their own :class:`~flask.Response` (bytes, extra headers). Uploaded
files are held in memory only (:class:`~sovereign.channels.uploads.MemoryFormDataParser`).

Listings answer from a read model: a view returns :class:`Json`, the page already encoded (by
:func:`encode`, orjson), and the route passes it through without building or validating the
``response`` model, which still documents it; tests hold the read model's output to the
document and to what the model would have built.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from flask import Blueprint, Flask, Response, g, request
from pydantic import BaseModel, ValidationError
from pydantic.json_schema import models_json_schema
from werkzeug.datastructures import FileStorage
from werkzeug.exceptions import BadRequest, NotFound, UnsupportedMediaType
from werkzeug.routing import BaseConverter, IntegerConverter, Map

from sovereign.api.schemas import NAME_PATTERN, Problem
from sovereign.app_context import services
from sovereign.channels.inputs import PCI_ADDRESS_PATTERN
from sovereign.channels.uploads import MemoryFormDataParser
from sovereign.domain.identity import Principal
from sovereign.errors import AuthenticationError, InvalidInputError
from sovereign.services.authfailures import AUTH_FAILURE
from sovereign.services.recording import CallContext

TEXT = "text/plain"


@dataclass(frozen=True)
class Json:
    """A response body already serialised as JSON, in the shape of the operation's documented
    ``response`` schema (a read model's page); the route sends it as it is."""

    body: bytes


def encode(document: dict[str, Any]) -> Json:
    """``document`` (JSON-ready values; aware datetimes are written as pydantic writes them,
    UTC as ``Z``) as a :class:`Json` body.

    :raises TypeError: if it holds something JSON cannot represent.
    """
    try:
        return Json(orjson.dumps(document, option=orjson.OPT_UTC_Z))
    except orjson.JSONEncodeError as e:
        raise TypeError(f"not JSON-serialisable: {e}") from e


View = Callable[..., BaseModel | str | Json | Response]

PATH_PARAM = re.compile(r"<(?:(\w+):)?(\w+)>")
#: Largest integer a path parameter may hold: a signed 64-bit column (SQLite, PostgreSQL
#: ``bigint``). werkzeug's own ``int`` converter is unbounded, so a bigger number would reach
#: the database driver and fail there.
MAX_PATH_INT = 2**63 - 1


class Int64Converter(IntegerConverter):
    """The app's ``<int:...>``: werkzeug's, bounded to 0..:data:`MAX_PATH_INT`, so a bigger
    number matches no route (404, like any unknown id). Installed by :func:`install`."""

    def __init__(self, url_map: Map, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("max", MAX_PATH_INT)
        super().__init__(url_map, *args, **kwargs)


class PciAddressConverter(BaseConverter):
    """``<pci:...>``: a GPU's PCI address (``0000:18:00.0``), read in lower case as the fleet
    records it; anything else matches no route (404, like any unknown GPU). Installed by
    :func:`install`."""

    regex = PCI_ADDRESS_PATTERN.removeprefix("^").removesuffix("$")

    def to_python(self, value: str) -> str:
        """The address in lower case."""
        return value.lower()


#: OpenAPI schemas of the app's URL converters (``int`` as :class:`Int64Converter` bounds it).
PATH_SCHEMAS: dict[str, dict[str, Any]] = {
    # Werkzeug's default converter: in this API only names (hosts) travel as strings.
    "string": {"type": "string", "minLength": 1, "maxLength": 64, "pattern": NAME_PATTERN},
    "int": {"type": "integer", "minimum": 0, "maximum": MAX_PATH_INT},
    "uuid": {"type": "string", "format": "uuid"},
    # A GPU's PCI address (domain:bus:slot.function).
    "pci": {"type": "string", "minLength": 12, "maxLength": 12, "pattern": PCI_ADDRESS_PATTERN},
    # Output file names: relative paths (checked by the service; anything else is 404).
    "path": {
        "type": "string",
        "minLength": 1,
        "maxLength": 255,
        "pattern": r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$",
    },
}
#: Where pydantic puts nested definitions; the document keeps them all under components.
REF_TEMPLATE = "#/components/schemas/{model}"

#: String path parameters as the document states them (``PATH_SCHEMAS["string"]``).
_PATH_NAME = re.compile(NAME_PATTERN)
_PATH_NAME_MAX = PATH_SCHEMAS["string"]["maxLength"]


def _check_names(op: Operation, params: dict[str, Any]) -> None:
    """A string path parameter that is no name cannot name anything: 404 before the view, so
    that nothing is looked up or recorded for it (an over-long name would not fit the audit
    log's target column).

    :raises NotFound:
    """
    for name, converter in op.path_params:
        value = params.get(name)
        if converter == "string" and not (
            isinstance(value, str) and len(value) <= _PATH_NAME_MAX and _PATH_NAME.fullmatch(value)
        ):
            raise NotFound


PROBLEM_RESPONSES = {
    "400": "Malformed request (bad JSON, or a control character in the URL)",
    "401": "Missing or invalid bearer token",
    "403": "Not allowed by policy",
    "404": "Not found, or not visible to you",
    "409": "Conflict with the current state",
    "413": "Body too large",
    "415": "Body is not of the documented media type",
    "422": "Invalid input",
    "429": "Too many requests (see Retry-After)",
    "431": "Request header fields too large",
    "503": "A dependency is unavailable",
}


@dataclass
class Operation:
    """One documented endpoint."""

    method: str
    rule: str
    view: View
    summary: str
    tag: str
    response: type[BaseModel] | None
    body: type[BaseModel] | None = None
    body_optional: bool = False
    query: type[BaseModel] | None = None
    status: int = 200
    auth: bool = True
    roles: str = ""
    #: (name, werkzeug converter) of each path parameter.
    path_params: list[tuple[str, str]] = field(default_factory=list)
    #: ``text/plain`` operations return a string (signed notes, proofs, keys) instead of JSON.
    media_type: str = "application/json"
    #: A ``multipart/form-data`` body: the model documents its parts (``bytes`` ones are files);
    #: the view receives a :class:`Form`.
    form: type[BaseModel] | None = None
    #: The body's size limit for this operation (bytes), when it is not MAX_CONTENT_LENGTH.
    body_limit: Callable[[], int] | None = None
    #: Response headers the operation sets, documented: name -> description.
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def has_body(self) -> bool:
        """Whether the operation takes a request body."""
        return self.body is not None or self.form is not None


@dataclass(frozen=True)
class Form:
    """A parsed ``multipart/form-data`` body: text parts and file parts (file name, bytes) by
    part name."""

    fields: dict[str, list[str]]
    files: dict[str, list[tuple[str, bytes]]]

    def text(self, name: str, *, required: bool = True) -> str | None:
        """The one text part called ``name`` (a file part's content, read as UTF-8, too).

        :raises InvalidInputError: missing when required, given twice, or not UTF-8.
        """
        values = list(self.fields.get(name, []))
        for _, data in self.files.get(name, []):
            try:
                values.append(data.decode("utf-8"))
            except UnicodeDecodeError:
                raise InvalidInputError(reason=f"the part {name!r} is not UTF-8 text") from None
        if len(values) > 1:
            raise InvalidInputError(reason=f"the part {name!r} is given more than once")
        if not values:
            if required:
                raise InvalidInputError(reason=f"the part {name!r} is required")
            return None
        return values[0]

    def file_parts(self, name: str) -> list[tuple[str, bytes]]:
        """The file parts called ``name``, in order (a text part counts as a file without a
        name)."""
        return [*self.files.get(name, []), *(("", v.encode()) for v in self.fields.get(name, []))]


def call_context() -> CallContext:
    """The authenticated caller of this request; a refusal is counted in the audit log.

    :raises AuthenticationError: no valid token.
    """
    ctx: CallContext | None = g.get("call_context")
    if ctx is not None:
        return ctx
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip() if scheme.lower() == "bearer" else ""
    try:
        principal = _authenticate(token)
    except AuthenticationError as e:
        # Counted per source and interval; nothing about the token itself is recorded.
        services().auth_failures.failed(
            request.remote_addr or "",
            AUTH_FAILURE,
            "api",
            "invalid-token" if token else "missing-token",
            e.message,
            request_id=g.get("request_id", ""),
        )
        raise
    ctx = CallContext(
        principal=principal, request_id=g.get("request_id", ""), source=request.remote_addr or ""
    )
    g.call_context = ctx
    return ctx


def _authenticate(token: str) -> Principal:
    if not token:
        raise AuthenticationError(reason="a bearer token is required")
    return services().identity.authenticate(token)


def _validation_errors(e: ValidationError) -> list[dict[str, Any]]:
    return [
        {"loc": [str(p) for p in err["loc"]], "msg": err["msg"], "type": err["type"]}
        for err in e.errors(include_url=False, include_input=False, include_context=False)
    ]


def parse_body(model: type[BaseModel], *, optional: bool = False) -> BaseModel:
    """Validate the JSON body against ``model``.

    :raises UnsupportedMediaType: (415) if the body is not JSON.
    :raises BadRequest: (400) if it does not parse, or nests too deeply to parse.
    :raises InvalidInputError: (422) if it does not fit the schema.
    """
    raw = request.get_data(cache=False)  # enforces MAX_CONTENT_LENGTH (413) first
    if not raw and optional:
        data: Any = {}
    else:
        if request.mimetype != "application/json":
            raise UnsupportedMediaType("The body must be application/json.")
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise BadRequest(f"The body is not valid JSON: {e}") from e
        except RecursionError as e:
            # A few kilobytes of ``[[[[...`` nest deeper than the parser's stack allows. No
            # schema here nests more than a few levels, so this is never a valid body.
            raise BadRequest("The body nests too deeply.") from e
    if not isinstance(data, dict):
        raise InvalidInputError(reason="the body must be a JSON object")
    try:
        return model.model_validate(data, strict=True)
    except ValidationError as e:
        raise InvalidInputError(
            reason="the body does not match the schema", errors=_validation_errors(e)
        ) from e


def parse_form(limit: int | None) -> Form:
    """Parse a ``multipart/form-data`` body of at most ``limit`` bytes.

    :raises RequestEntityTooLarge: (413) above the limit, before anything is parsed.
    :raises UnsupportedMediaType: (415) if the body is not multipart/form-data.
    :raises BadRequest: (400) if it does not parse.
    """
    # Before the form is first read: file parts stay in memory, never in a temporary file
    # (werkzeug's default spools parts above 500 KiB to disk, and uploads are plaintext).
    request.form_data_parser_class = MemoryFormDataParser
    if limit is not None:
        # Flask 3.1: a per-request limit, checked against Content-Length (and the stream).
        request.max_content_length = limit
        request.max_form_memory_size = limit
    if request.mimetype != "multipart/form-data":
        request.get_data(cache=False)  # 413 for an oversized body of another type too
        raise UnsupportedMediaType("The body must be multipart/form-data.")
    form, files = request.form, request.files
    fields = {name: form.getlist(name) for name in form}
    parts: dict[str, list[tuple[str, bytes]]] = {}
    for name in files:
        for storage in files.getlist(name):
            parts.setdefault(name, []).append(_read(storage))
    return Form(fields, parts)


def _read(storage: FileStorage) -> tuple[str, bytes]:
    return storage.filename or "", storage.read()


def parse_query(model: type[BaseModel]) -> BaseModel:
    """Validate query parameters against ``model``. :raises InvalidInputError: (422)."""
    try:
        return model.model_validate(request.args.to_dict())
    except ValidationError as e:
        raise InvalidInputError(
            reason="the query parameters are not valid", errors=_validation_errors(e)
        ) from e


class Api:
    """A registry of operations on a blueprint."""

    def __init__(self, blueprint: Blueprint) -> None:
        self.blueprint = blueprint
        self.operations: list[Operation] = []

    def route(
        self,
        method: str,
        rule: str,
        *,
        summary: str,
        tag: str,
        response: type[BaseModel] | None,
        body: type[BaseModel] | None = None,
        body_optional: bool = False,
        query: type[BaseModel] | None = None,
        status: int = 200,
        auth: bool = True,
        roles: str = "",
        media_type: str = "application/json",
        form: type[BaseModel] | None = None,
        body_limit: Callable[[], int] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Callable[[View], View]:
        """Register ``view`` for ``method rule``; it receives the caller, body, query, params."""

        def decorate(view: View) -> View:
            op = Operation(
                method=method,
                rule=rule,
                view=view,
                summary=summary,
                tag=tag,
                response=response,
                body=body,
                body_optional=body_optional,
                query=query,
                status=status,
                auth=auth,
                roles=roles,
                path_params=[(n, c or "string") for c, n in PATH_PARAM.findall(rule)],
                media_type=media_type,
                form=form,
                body_limit=body_limit,
                headers=dict(headers or {}),
            )
            self.operations.append(op)

            def endpoint(**params: Any) -> Response:
                _check_names(op, params)
                kwargs: dict[str, Any] = dict(params)
                if op.auth:
                    kwargs["ctx"] = call_context()
                if op.body is not None:
                    kwargs["body"] = parse_body(op.body, optional=op.body_optional)
                if op.form is not None:
                    kwargs["form"] = parse_form(op.body_limit() if op.body_limit else None)
                if op.query is not None:
                    kwargs["query"] = parse_query(op.query)
                result = op.view(**kwargs)
                if isinstance(result, Response):
                    return result
                if isinstance(result, Json):
                    return Response(result.body, status=op.status, mimetype=op.media_type)
                body = result if isinstance(result, str) else result.model_dump_json()
                return Response(body, status=op.status, mimetype=op.media_type)

            self.blueprint.add_url_rule(
                rule, endpoint=view.__name__, view_func=endpoint, methods=[method]
            )
            return view

        return decorate


def install(app: Flask) -> None:
    """Give ``app`` the URL converters the document describes; before any route is added."""
    app.url_map.converters["int"] = Int64Converter
    app.url_map.converters["pci"] = PciAddressConverter


def openapi(api: Api, prefix: str, *, title: str, version: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document for every operation registered on ``api``."""
    models: set[type[BaseModel]] = {Problem}
    for op in api.operations:
        if op.response is not None:
            models.add(op.response)
        if op.body is not None:
            models.add(op.body)
        if op.form is not None:
            models.add(op.form)
    _, defs = models_json_schema(
        [(m, "validation") for m in sorted(models, key=lambda m: m.__name__)],
        ref_template=REF_TEMPLATE,
    )
    components: dict[str, Any] = dict(defs.get("$defs", {}))
    paths: dict[str, dict[str, Any]] = {}
    for op in api.operations:
        path = prefix + PATH_PARAM.sub(r"{\2}", op.rule)
        parameters: list[dict[str, Any]] = [
            {"name": name, "in": "path", "required": True, "schema": PATH_SCHEMAS[converter]}
            for name, converter in op.path_params
        ]
        if op.query is not None:
            parameters += _query_parameters(op.query, components)
        responses = _responses(op)
        operation: dict[str, Any] = {
            "operationId": op.view.__name__,
            "summary": op.summary,
            "tags": [op.tag],
            "parameters": parameters,
            "responses": responses,
        }
        if op.roles:
            operation["description"] = f"Allowed for: {op.roles}."
        if op.auth:
            operation["security"] = [{"bearer": []}]
        body = _request_body(op)
        if body is not None:
            operation["requestBody"] = body
        paths.setdefault(path, {})[op.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            },
        },
    }


def _responses(op: Operation) -> dict[str, Any]:
    """The success response (its media type, schema and headers) and the problem answers."""
    schema_ref: dict[str, Any] = (
        {"$ref": f"#/components/schemas/{op.response.__name__}"}
        if op.response is not None
        else {"type": "string"}
    )
    if op.media_type == "application/octet-stream":
        schema_ref = {"type": "string", "format": "binary"}
    success: dict[str, Any] = {
        "description": "Success",
        "content": {op.media_type: {"schema": schema_ref}},
    }
    if op.headers:
        success["headers"] = {
            name: {"description": text, "schema": {"type": "string"}}
            for name, text in op.headers.items()
        }
    problem_ref = {"$ref": "#/components/schemas/Problem"}
    responses: dict[str, Any] = {str(op.status): success}
    for code, text in PROBLEM_RESPONSES.items():
        if code in {"413", "415"} and not op.has_body:
            continue
        if code in {"401", "403"} and not op.auth:
            continue
        responses[code] = {
            "description": text,
            "content": {"application/problem+json": {"schema": problem_ref}},
        }
    return responses


def _request_body(op: Operation) -> dict[str, Any] | None:
    """The JSON or multipart request body of ``op``, or None."""
    if op.body is not None:
        media, model, required = "application/json", op.body, not op.body_optional
    elif op.form is not None:
        media, model, required = "multipart/form-data", op.form, True
    else:
        return None
    return {
        "required": required,
        "content": {media: {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}},
    }


def _query_parameters(model: type[BaseModel], components: dict[str, Any]) -> list[dict[str, Any]]:
    """One OpenAPI query parameter per field of ``model``; the definitions its fields refer to
    (enums) are added to ``components``, where their ``$ref`` points.

    An optional field's ``anyOf [X, null]`` becomes plain ``X``: a query parameter is absent or
    a string, never JSON ``null``.

    :raises ValueError: if a definition would replace a different one of the same name.
    """
    schema = model.model_json_schema(ref_template=REF_TEMPLATE)
    for name, definition in schema.get("$defs", {}).items():
        if components.setdefault(name, definition) != definition:
            raise ValueError(f"two different schemas are both called {name!r}")
    required = set(schema.get("required", []))
    parameters = []
    for name, field_schema in schema.get("properties", {}).items():
        prop = dict(field_schema)
        options = prop.pop("anyOf", None)
        if options is not None:
            not_null = [o for o in options if o != {"type": "null"}]
            if len(not_null) == 1:
                prop.update(not_null[0])
            else:
                prop["anyOf"] = not_null
        if prop.get("default", 0) is None:
            del prop["default"]
        parameters.append(
            {"name": name, "in": "query", "required": name in required, "schema": prop}
        )
    return parameters
