"""The dev IdP's HTML: its sign-in form and signed-out page.

This module owns the only pages a browser sees at the IdP: the login form the authorization
endpoint shows (never echoing the credentials back), the page after an RP-Initiated Logout
without a redirect, their "never use in production" banner and their security headers.
Templates are rendered with autoescaping, so request parameters cannot inject markup.
"""

from __future__ import annotations

from typing import Any, Final

from flask import Response, render_template_string, request

__all__ = ["login_page", "signed_out_page"]

_PAGE_HEADERS: Final = {
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    # No form-action: browsers would block the redirect to the client after the POST.
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "Referrer-Policy": "no-referrer",
}

_LAYOUT_HEAD: Final = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex">
<title>{{ title }}</title>
<style>
body { font-family: system-ui, sans-serif; max-width: 24rem; margin: 3rem auto; padding: 0 1rem; }
.banner { background: #fff3cd; border: 2px solid #8a6d00; padding: .5rem; }
.error { color: #8b0000; font-weight: bold; }
label, input, button { display: block; width: 100%; margin-top: .5rem; font-size: 1rem; }
input:focus, button:focus { outline: 3px solid #1a56db; }
</style>
</head>
<body>
<p class="banner" role="note">Development identity provider: never use in production.</p>
"""

_LOGIN_TEMPLATE: Final = (
    _LAYOUT_HEAD
    + """<main>
<h1>{{ title }}</h1>
{% if error %}<p class="error" id="login-error" role="alert">{{ error }}</p>{% endif %}
<form method="post" action="{{ action }}">
{% for name, value in params %}<input type="hidden" name="{{ name }}" value="{{ value }}">
{% endfor %}<label for="username">Username</label>
<input id="username" name="username" type="text" autocomplete="username" required autofocus
{%- if error %} aria-invalid="true" aria-describedby="login-error"{% endif %}>
<label for="password">Password</label>
<input id="password" name="password" type="password" autocomplete="current-password" required
{%- if error %} aria-invalid="true" aria-describedby="login-error"{% endif %}>
<button type="submit">Sign in</button>
</form>
</main>
</body>
</html>
"""
)

_SIGNED_OUT_TEMPLATE: Final = (
    _LAYOUT_HEAD
    + """<main>
<h1>{{ title }}</h1>
<p>You are signed out of {{ realm }}.</p>
</main>
</body>
</html>
"""
)

#: Never echoed back into the form.
_CREDENTIAL_FIELDS: Final = frozenset({"username", "password"})


def login_page(realm: str, *, error: str | None = None, status: int = 200) -> Response:
    """The sign-in form for ``realm``, carrying the authorization request's parameters."""
    params = [
        (name, value)
        for name, value in request.values.items(multi=True)
        if name not in _CREDENTIAL_FIELDS
    ]
    return _page(
        _LOGIN_TEMPLATE,
        status=status,
        title=f"Sign in to {realm}",
        action=request.path,
        params=params,
        error=error,
    )


def signed_out_page(realm: str) -> Response:
    """The page shown after an RP-Initiated Logout that names no redirect."""
    return _page(_SIGNED_OUT_TEMPLATE, realm=realm)


def _page(template: str, *, status: int = 200, **context: Any) -> Response:
    context.setdefault("title", "Signed out")
    # render_template_string autoescapes, so request parameters cannot inject markup.
    body = render_template_string(template, **context)
    return Response(body, status, {**_PAGE_HEADERS, "Content-Type": "text/html; charset=utf-8"})
