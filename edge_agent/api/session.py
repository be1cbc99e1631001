"""Browser sessions on the bearer-token API: the same JWT, carried in a cookie.

A browser cannot add an ``Authorization`` header to a page load or an ``EventSource``,
so a person signs in once: ``POST /login`` with the token (a form field) sets it as an
``HttpOnly``, ``SameSite=Strict`` cookie, with a second, script-readable cookie holding
a random CSRF token. A request authenticated by the cookie that changes anything
(any method but GET, HEAD, OPTIONS) must echo that token in ``X-CSRF-Token`` (double
submit): another site can make the browser send the cookie, never read it. Pure
functions; :class:`~edge_agent.api.security.SecurityMiddleware` applies them.
"""

from __future__ import annotations

import hmac
import html
import secrets
from http.cookies import SimpleCookie
from urllib.parse import parse_qs

__all__ = [
    "CSRF_COOKIE",
    "CSRF_HEADER",
    "LOGIN_PATH",
    "LOGOUT_PATH",
    "SAFE_METHODS",
    "SESSION_COOKIE",
    "cookies",
    "csrf_ok",
    "login_page",
    "session_cookies",
    "token_from_form",
]

SESSION_COOKIE = "semstreams_session"
CSRF_COOKIE = "semstreams_csrf"
CSRF_HEADER = "x-csrf-token"
LOGIN_PATH = "/login"
LOGOUT_PATH = "/logout"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: A login form larger than this is refused unread (a JWT is well under 4 kB).
MAX_FORM_BYTES = 16 << 10


def cookies(header: str | None) -> dict[str, str]:
    """The cookies of a ``Cookie`` header (an unparsable header gives none)."""
    if not header:
        return {}
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(header)
    except Exception:
        return {}
    return {name: morsel.value for name, morsel in jar.items()}


def csrf_ok(method: str, header: str | None, jar: dict[str, str]) -> bool:
    """Whether a cookie-authenticated request may go on: safe, or it echoes the token."""
    if method in SAFE_METHODS:
        return True
    expected = jar.get(CSRF_COOKIE, "")
    return bool(expected and header) and hmac.compare_digest(expected, header or "")


def token_from_form(body: bytes) -> str:
    """The ``token`` field of an ``application/x-www-form-urlencoded`` login form."""
    fields = parse_qs(body.decode("utf-8", "replace"), max_num_fields=4)
    values = fields.get("token", [""])
    return values[0].strip()


def session_cookies(token: str, max_age: int, *, secure: bool) -> list[str]:
    """``Set-Cookie`` values for a signed-in browser (``max_age`` 0 signs it out)."""
    flags = f"Path=/; Max-Age={max(0, max_age)}; SameSite=Strict" + ("; Secure" if secure else "")
    csrf = secrets.token_urlsafe(24) if max_age > 0 else ""
    return [f"{SESSION_COOKIE}={token}; HttpOnly; {flags}", f"{CSRF_COOKIE}={csrf}; {flags}"]


def login_page(reason: str) -> bytes:
    """The sign-in page a browser gets with a 401 (the reason escaped, never a token)."""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Sign in · SemStreams</title><link rel="icon" href="data:,">
<style>body{{font:16px/1.5 system-ui,sans-serif;max-width:34em;margin:3em auto;
padding:0 1em;color:#111}}
input,button{{font:inherit;padding:6px 8px;width:100%;margin:4px 0 12px}}
.why{{color:#7a0d08}}</style></head>
<body><main><h1>Sign in</h1>
<p>This API needs a token: paste the JWT you were given (signed with the API's
<code>jwt_secret</code>). It is kept in an HttpOnly cookie until it expires.</p>
<p class="why" role="alert">{html.escape(reason)}</p>
<form method="post" action="{LOGIN_PATH}">
<label for="token">Token</label>
<input id="token" name="token" type="password" autocomplete="off" required>
<button type="submit">Sign in</button></form></main></body></html>
""".encode()
