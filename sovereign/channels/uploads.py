"""How both channels parse an upload: multipart bodies whose files stay in memory.

Owns :class:`MemoryFormDataParser`. Werkzeug's default form parser spools any file part above
500 KiB to a temporary file; an uploaded dataset or job's code is plaintext that must never
touch the control plane's disk, so the API (:func:`sovereign.api.routing.parse_form`) and the
console (``sovereign.web.console``) both install this parser on the request before anything
reads the form. Neutral ground: imports neither channel. It does not bound the body: each
channel sets the request's size limit before the body is read.
"""

from __future__ import annotations

import io
from typing import Any

from werkzeug.formparser import FormDataParser


class MemoryFormDataParser(FormDataParser):
    """Werkzeug's form parser, but uploaded files stay in memory (never a temporary file)."""

    def __init__(self, stream_factory: Any = None, *args: Any, **kwargs: Any) -> None:
        del stream_factory  # whatever the request offers (its default spools to disk)
        super().__init__(memory_stream, *args, **kwargs)


def memory_stream(*_: Any, **__: Any) -> io.BytesIO:
    """Werkzeug's stream factory signature; every file part is buffered in memory."""
    return io.BytesIO()
