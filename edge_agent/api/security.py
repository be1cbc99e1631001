"""Bearer-token auth, per-client rate limits and TLS for the HTTP API.

Two pure parts and a thin ASGI shell:

* :class:`JwtVerifier` turns an ``Authorization`` header into claims, or raises
  :class:`~edge_agent.errors.AuthError` with a short reason for the client;
* :class:`RateLimiter` keeps one token bucket per client key; callers pass the time
  in, so it never reads a clock and its tests run in microseconds;
* :class:`SecurityMiddleware` applies both to each HTTP request outside the open paths,
  taking the token from the ``Authorization`` header or from a browser's session cookie
  (:mod:`edge_agent.api.session`: ``POST /login`` sets it, with CSRF protection).

Tokens and the secret are never logged or echoed: a reason names what was wrong with
the token, never the token itself.
"""

from __future__ import annotations

import logging
import math
import ssl
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.datastructures import Headers
from starlette.middleware import Middleware
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from edge_agent.api import session
from edge_agent.config import AuthConfig, HttpTlsConfig, RateLimitConfig
from edge_agent.errors import AuthError, ConfigError
from edge_agent.metrics import Metrics
from edge_agent.private_files import check_private

if TYPE_CHECKING:
    import jwt

__all__ = [
    "ADMIN_PATHS",
    "LEEWAY_S",
    "MAX_CLIENTS",
    "WRITE_PATHS",
    "JwtVerifier",
    "RateLimiter",
    "SecurityMiddleware",
    "bearer_token",
    "is_open",
    "over_rate",
    "required_scope",
    "retry_after",
    "security_middleware",
    "server_ssl_context",
    "token_scopes",
]

log = logging.getLogger(__name__)

#: Clock skew tolerated on ``exp``, ``nbf`` and ``iat``: a Pi has no RTC, and its
#: clock may be a little off from the token issuer's until NTP catches up.
LEEWAY_S = 30.0
#: Clients whose buckets are tracked at once; past this the least recently seen goes.
MAX_CLIENTS = 10_000

_MISSING = "missing bearer token"
_ALGORITHMS = ["HS256"]


def _reasons(jwt: Any) -> tuple[tuple[type[jwt.PyJWTError], str], ...]:
    """Why a token was refused, by error class: checked in order, first match wins
    (InvalidSignatureError is a kind of DecodeError)."""
    return (
        (jwt.ExpiredSignatureError, "token expired"),
        (jwt.InvalidSignatureError, "bad signature"),
        (jwt.InvalidIssuerError, "wrong issuer"),
        (jwt.InvalidAudienceError, "wrong audience"),
        (jwt.ImmatureSignatureError, "token not yet valid"),
        (jwt.InvalidAlgorithmError, "algorithm not allowed (HS256 only)"),
        (jwt.DecodeError, "malformed token"),
    )


def bearer_token(authorization: str | None) -> str:
    """The token of an ``Authorization: Bearer <token>`` header value.

    Raises:
        AuthError: the header is absent, or is not ``Bearer`` followed by a token.
    """
    if not authorization:
        raise AuthError(_MISSING)
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthError("malformed authorization header: expected 'Bearer <token>'")
    return token.strip()


class JwtVerifier:
    """Verify HS256 bearer tokens against one shared secret.

    A token must carry ``exp``: a token that never expires cannot be revoked short of
    changing the secret for every client. With an ``issuer``, ``iss`` must equal it.

    Args:
        secret: the HMAC key (the config loader requires at least 32 bytes).
        issuer: the required ``iss``; empty accepts any issuer.
        audience: the required ``aud``; empty accepts tokens for any audience.
        leeway: seconds of clock skew tolerated on the time claims.
    """

    def __init__(
        self, secret: str, issuer: str = "", *, audience: str = "", leeway: float = LEEWAY_S
    ) -> None:
        self._secret = secret
        self._issuer = issuer
        self._audience = audience
        self._leeway = leeway
        self._require = ["exp", *(["iss"] if issuer else []), *(["aud"] if audience else [])]
        # Imported on use: PyJWT pulls in cryptography (~10 MB resident), which an agent
        # without ``auth.type: jwt`` never needs.
        import jwt

        self._jwt = jwt
        self._reasons = _reasons(jwt)

    def __repr__(self) -> str:
        return f"JwtVerifier(issuer={self._issuer!r})"

    def verify(self, authorization: str | None) -> dict[str, Any]:
        """The claims of the token in an ``Authorization`` header value.

        Raises:
            AuthError: no token, or a token that is malformed, expired, not yet valid,
                badly signed, of another algorithm, or from the wrong issuer.
        """
        token = bearer_token(authorization)
        jwt = self._jwt
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self._secret,
                algorithms=_ALGORITHMS,
                issuer=self._issuer or None,
                audience=self._audience or None,
                leeway=self._leeway,
                options={"require": self._require, "enforce_minimum_key_length": True},
            )
        except jwt.MissingRequiredClaimError as exc:
            raise AuthError(f"token has no {exc.claim} claim") from exc
        except jwt.PyJWTError as exc:
            reason = next(
                (r for kind, r in self._reasons if isinstance(exc, kind)), "invalid token"
            )
            raise AuthError(reason) from exc
        return claims


class RateLimiter:
    """One token bucket per client key, given the time on every call.

    A bucket starts with ``burst`` tokens, each request takes one, and tokens come back
    at ``rate`` per second up to ``burst``. A bucket idle long enough to have refilled
    is the same as a new one, so it is forgotten; past ``max_clients`` buckets the least
    recently seen is forgotten too, which gives that client a fresh burst: memory stays
    bounded at the cost of exactness under a flood of distinct clients.

    Args:
        rate: tokens per second (> 0).
        burst: bucket size (>= 1).
        max_clients: buckets kept at most (>= 1).

    Raises:
        ValueError: a non-positive rate, burst or max_clients.
    """

    def __init__(self, rate: float, burst: int, *, max_clients: int = MAX_CLIENTS) -> None:
        if rate <= 0 or burst < 1 or max_clients < 1:
            raise ValueError("rate, burst and max_clients must be positive")
        self.rate = rate
        self.burst = burst
        self.max_clients = max_clients
        self._refill_s = burst / rate
        # key -> (tokens, time of the last update); ordered least recently seen first.
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    @classmethod
    def per_minute(cls, requests_per_minute: int, burst: int, **kwargs: Any) -> RateLimiter:
        """A limiter from the config's ``requests_per_minute`` and ``burst``."""
        return cls(requests_per_minute / 60.0, burst, **kwargs)

    def __len__(self) -> int:
        return len(self._buckets)

    def acquire(self, key: str, now: float) -> float:
        """Take a token from ``key``'s bucket at time ``now`` (seconds, never decreasing).

        Returns:
            0.0 when the request may go ahead; else the seconds until a token is back.
        """
        tokens, then = self._buckets.pop(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + max(0.0, now - then) * self.rate)
        if tokens >= 1.0:
            tokens, wait = tokens - 1.0, 0.0
        else:
            wait = (1.0 - tokens) / self.rate
        self._buckets[key] = (tokens, now)
        self._forget(now)
        return wait

    def _forget(self, now: float) -> None:
        # The front is the least recently seen: once it is neither idle nor over the
        # bound, nothing behind it is.
        while self._buckets:
            _, then = next(iter(self._buckets.values()))
            if len(self._buckets) <= self.max_clients and now - then < self._refill_s:
                return
            self._buckets.popitem(last=False)


def retry_after(wait: float) -> int:
    """A ``Retry-After`` value: whole seconds, at least 1."""
    return max(1, math.ceil(wait))


#: What each path needs of a token's ``scope`` claim (space-separated, as in RFC 8693):
#: changing the fleet or the graph's contents wholesale needs ``admin``, ingesting needs
#: ``write``, everything else ``read``.
ADMIN_PATHS = ("/admin", "/devices", "/claim-tokens")
WRITE_PATHS = ("/ingest",)


def required_scope(path: str) -> str:
    """The scope a request to ``path`` needs."""
    if is_open(path, ADMIN_PATHS):
        return "admin"
    if is_open(path, WRITE_PATHS):
        return "write"
    return "read"


def token_scopes(claims: dict[str, Any]) -> frozenset[str]:
    """The scopes a token grants: its ``scope`` claim, a space-separated string (or a
    list); a token without one grants none."""
    scope = claims.get("scope", "")
    if isinstance(scope, str):
        return frozenset(scope.split())
    if isinstance(scope, list):
        return frozenset(s for s in scope if isinstance(s, str))
    return frozenset()


def over_rate(limiter: RateLimiter, key: str, now: float, what: str) -> Response | None:
    """The 429 (``what``, then when to retry, and ``Retry-After``) when ``key`` is past
    its rate; ``None`` lets the request through (and spends its token)."""
    wait = limiter.acquire(key, now)
    if wait <= 0:
        return None
    seconds = retry_after(wait)
    return JSONResponse(
        {"error": f"{what}; retry in {seconds} s"}, 429, {"Retry-After": str(seconds)}
    )


def is_open(path: str, prefixes: Sequence[str]) -> bool:
    """Whether ``path`` lies under one of ``prefixes``, in whole segments.

    ``/health`` opens ``/health`` and ``/health/x`` but not ``/healthz``.
    """
    return any(path == p or path.startswith(p.rstrip("/") + "/") for p in prefixes)


class SecurityMiddleware:
    """ASGI middleware: bearer auth, then the client's rate limit, on each HTTP request.

    Paths under ``open_paths`` skip both. A client is the token's ``sub`` when the
    token is valid, else its IP address; a refused token is charged to the IP's bucket
    before the 401, so guessing tokens is rate limited too. Refusals are JSON
    ``{"error": reason}``: 401 with ``WWW-Authenticate: Bearer``, or 429 with
    ``Retry-After``. A valid token's claims are in ``request.auth``.

    Args:
        app: the app to protect.
        verifier: checks tokens; ``None`` lets every request through unauthenticated.
        limiter: the per-client buckets; ``None`` means no limit.
        open_paths: path prefixes that need no token and are never limited.
        metrics: counts 401s as ``semstreams_errors_total{reason="auth"}`` and 429s
            as ``semstreams_rate_limited_total``.
        clock: the time for the limiter (monotonic seconds).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        verifier: JwtVerifier | None,
        limiter: RateLimiter | None,
        open_paths: Sequence[str],
        metrics: Metrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._app = app
        self._verifier = verifier
        self._limiter = limiter
        self._open_paths = tuple(open_paths)
        self._metrics = metrics
        self._clock = clock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not is_open(scope["path"], self._open_paths):
            if self._verifier is not None and scope["method"] == "POST":
                if scope["path"] == session.LOGIN_PATH:
                    answer = await self._login(scope, receive)
                    await answer(scope, receive, send)
                    return
                if scope["path"] == session.LOGOUT_PATH:
                    await _signed_out(scope)(scope, receive, send)
                    return
            refusal = self._refusal(scope)
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        await self._app(scope, receive, send)

    def _credential(self, scope: Scope) -> tuple[str | None, dict[str, str] | None]:
        """The ``Authorization`` value to verify, and the cookies when it came from the
        session cookie (``None`` when it came from the header)."""
        headers = Headers(scope=scope)
        authorization = headers.get("authorization")
        if authorization:
            return authorization, None
        jar = session.cookies(headers.get("cookie"))
        token = jar.get(session.SESSION_COOKIE)
        return (f"Bearer {token}", jar) if token else (None, None)

    def _refusal(self, scope: Scope) -> Response | None:
        """The 401, 403 or 429 answer to this request, or None to let it through."""
        claims: dict[str, Any] | None = None
        failure: AuthError | None = None
        jar: dict[str, str] | None = None
        if self._verifier is not None:
            credential, jar = self._credential(scope)
            try:
                claims = self._verifier.verify(credential)
            except AuthError as exc:
                failure = exc
        client = scope["client"][0] if scope.get("client") else "unknown"
        limited = self._limited(scope, claims, client)
        if limited is not None:
            return limited
        if failure is not None:
            return self._unauthorized(scope, client, failure)
        if claims is not None:
            needed = required_scope(scope["path"])
            if needed not in token_scopes(claims):
                self._metrics.errors.labels(reason="auth").inc()
                return JSONResponse(
                    {"error": f"the token lacks the {needed!r} scope this path needs"}, 403
                )
        if jar is not None and not session.csrf_ok(
            scope["method"], Headers(scope=scope).get(session.CSRF_HEADER), jar
        ):
            self._metrics.errors.labels(reason="auth").inc()
            return JSONResponse({"error": "missing or wrong X-CSRF-Token for this session"}, 403)
        if claims is not None:
            scope["auth"] = claims
        return None

    def _limited(self, scope: Scope, claims: dict[str, Any] | None, client: str) -> Response | None:
        """The 429 when the client is over its rate limit."""
        if self._limiter is None:
            return None
        sub = claims.get("sub") if claims else None
        key = f"sub:{sub}" if isinstance(sub, str) and sub else f"ip:{client}"
        refusal = over_rate(self._limiter, key, self._clock(), "rate limit exceeded")
        if refusal is None:
            return None
        self._metrics.rate_limited.inc()
        if log.isEnabledFor(logging.DEBUG):
            log.debug("< 429 %s %s: over the rate limit", key, scope["path"])
        return refusal

    def _unauthorized(self, scope: Scope, client: str, failure: AuthError) -> Response:
        """The 401: JSON for API clients, the sign-in page for a browser's page load."""
        self._metrics.errors.labels(reason="auth").inc()
        if log.isEnabledFor(logging.DEBUG):
            log.debug("< 401 %s %s: %s", client, scope["path"], failure.reason)
        challenge = 'Bearer realm="semstreams"'
        if failure.reason != _MISSING:
            challenge += ', error="invalid_token"'
        headers = {"WWW-Authenticate": challenge}
        accept = Headers(scope=scope).get("accept", "")
        if scope["method"] == "GET" and "text/html" in accept:
            return HTMLResponse(session.login_page(failure.reason), 401, headers)
        return JSONResponse({"error": failure.reason}, 401, headers)

    async def _login(self, scope: Scope, receive: Receive) -> Response:
        """``POST /login`` (a form with ``token``): the session cookies, then ``/``."""
        client = scope["client"][0] if scope.get("client") else "unknown"
        limited = self._limited(scope, None, client)  # guesses are rate limited per address
        if limited is not None:
            return limited
        body = await _read_body(receive, session.MAX_FORM_BYTES)
        assert self._verifier is not None
        try:
            if body is None:
                raise AuthError("login form too large")
            token = session.token_from_form(body)
            if not token:
                raise AuthError("no token given")
            claims = self._verifier.verify(f"Bearer {token}")
        except AuthError as exc:
            self._metrics.errors.labels(reason="auth").inc()
            return HTMLResponse(session.login_page(exc.reason), 401)
        max_age = int(float(claims["exp"]) - time.time())
        answer = RedirectResponse("/", 303)
        for cookie in session.session_cookies(token, max_age, secure=_secure(scope)):
            answer.headers.append("set-cookie", cookie)
        return answer


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The request body, or ``None`` once it passes ``limit`` bytes (the rest unread)."""
    body = b""
    while True:
        message = await receive()
        body += bytes(message.get("body", b""))
        if len(body) > limit:
            return None
        if not message.get("more_body"):
            return body


def _secure(scope: Scope) -> bool:
    return scope.get("scheme") == "https"


def _signed_out(scope: Scope) -> Response:
    """``POST /logout``: the session cookies expired, then the sign-in page."""
    answer = RedirectResponse("/", 303)
    for cookie in session.session_cookies("", 0, secure=_secure(scope)):
        answer.headers.append("set-cookie", cookie)
    return answer


def security_middleware(
    auth: AuthConfig, rate_limit: RateLimitConfig, metrics: Metrics
) -> list[Middleware]:
    """The middleware that ``auth`` and ``rate_limit`` ask for (none when both are off)."""
    verifier = (
        JwtVerifier(auth.jwt_secret, auth.jwt_issuer, audience=auth.jwt_audience)
        if auth.type == "jwt"
        else None
    )
    limiter = (
        RateLimiter.per_minute(rate_limit.requests_per_minute, rate_limit.burst)
        if rate_limit.enabled
        else None
    )
    if verifier is None and limiter is None:
        return []
    return [
        Middleware(
            SecurityMiddleware,
            verifier=verifier,
            limiter=limiter,
            open_paths=auth.open_paths,
            metrics=metrics,
        )
    ]


def server_ssl_context(tls: HttpTlsConfig) -> ssl.SSLContext:
    """A server TLS context (TLS 1.2 or later) from the listener's cert and key files.

    Raises:
        ConfigError: a file is missing or unreadable, or the pair does not load;
            the message names the key.
    """
    where = "services.service-manager.config.tls"
    for key in ("cert_file", "key_file"):
        path = getattr(tls, key)
        if not Path(path).is_file():
            raise ConfigError([f"{where}.{key}: {path!r} is not a file"])
    check_private(tls.key_file, f"{where}.key_file")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(tls.cert_file, tls.key_file)
    except ssl.SSLError as exc:
        cause = exc.reason or exc.strerror or str(exc)
        raise ConfigError([f"{where}: cannot load cert_file and key_file: {cause}"]) from exc
    except OSError as exc:
        raise ConfigError([f"{where}: cannot read cert_file or key_file: {exc}"]) from exc
    return context
