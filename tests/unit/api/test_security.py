"""The pure security parts (token buckets, JWT checks) and the middleware, in-process."""

from __future__ import annotations

import time

import httpx
import jwt
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from edge_agent.api.security import (
    JwtVerifier,
    RateLimiter,
    SecurityMiddleware,
    bearer_token,
    is_open,
    required_scope,
    retry_after,
    token_scopes,
)
from edge_agent.errors import AuthError
from edge_agent.metrics import Metrics
from tests.helpers import JWT_SECRET, bearer, token

# ---- token buckets -------------------------------------------------------------------


def test_burst_then_refusal_with_the_wait_until_the_next_token() -> None:
    limiter = RateLimiter(rate=2.0, burst=3)
    assert [limiter.acquire("a", 0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.acquire("a", 0.0) == pytest.approx(0.5)
    assert limiter.acquire("a", 0.25) == pytest.approx(0.25)
    assert limiter.acquire("a", 0.5) == 0.0
    assert limiter.acquire("a", 0.5) == pytest.approx(0.5)


def test_refill_stops_at_burst() -> None:
    limiter = RateLimiter(rate=1.0, burst=2)
    limiter.acquire("a", 0.0)
    allowed = [limiter.acquire("a", 1000.0) == 0.0 for _ in range(4)]
    assert allowed == [True, True, False, False]


def test_clients_have_their_own_buckets() -> None:
    limiter = RateLimiter(rate=1.0, burst=1)
    assert limiter.acquire("a", 0.0) == 0.0
    assert limiter.acquire("a", 0.0) > 0
    assert limiter.acquire("b", 0.0) == 0.0


def test_per_minute_rate() -> None:
    limiter = RateLimiter.per_minute(120, burst=1)
    assert limiter.rate == 2.0
    limiter.acquire("a", 0.0)
    assert limiter.acquire("a", 0.0) == pytest.approx(0.5)


def test_idle_buckets_are_forgotten_once_full_again() -> None:
    limiter = RateLimiter(rate=1.0, burst=2)
    limiter.acquire("a", 0.0)
    limiter.acquire("b", 1.0)
    assert len(limiter) == 2
    limiter.acquire("c", 2.5)  # a has been idle 2.5 s: refilled, so forgetting it is exact
    assert len(limiter) == 2
    limiter.acquire("d", 100.0)
    assert len(limiter) == 1


def test_the_least_recently_seen_client_goes_past_the_bound() -> None:
    limiter = RateLimiter(rate=1.0, burst=1, max_clients=2)
    limiter.acquire("a", 0.0)
    limiter.acquire("b", 0.0)
    assert limiter.acquire("a", 0.0) > 0  # a is now the most recently seen
    limiter.acquire("c", 0.0)
    assert len(limiter) == 2
    assert limiter.acquire("a", 0.0) > 0  # a's empty bucket was kept
    assert limiter.acquire("b", 0.0) == 0.0  # b was forgotten: a fresh bucket


def test_many_clients_stay_bounded_and_fast() -> None:
    limiter = RateLimiter(rate=1.0, burst=5, max_clients=100)
    started = time.perf_counter()
    for i in range(20_000):
        limiter.acquire(f"ip:{i}", i * 1e-6)
    assert len(limiter) == 100
    assert time.perf_counter() - started < 1.0


def test_bad_limits_are_refused() -> None:
    with pytest.raises(ValueError, match="positive"):
        RateLimiter(rate=0.0, burst=1)
    with pytest.raises(ValueError, match="positive"):
        RateLimiter(rate=1.0, burst=0)


@pytest.mark.parametrize(("wait", "header"), [(0.001, 1), (1.0, 1), (1.01, 2), (59.5, 60)])
def test_retry_after_is_whole_seconds_at_least_one(wait: float, header: int) -> None:
    assert retry_after(wait) == header


# ---- open paths ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/health", True),
        ("/health/live", True),
        ("/metrics", True),
        ("/healthz", False),
        ("/graph/stats", False),
        ("/admin/export", False),
        ("/", False),
    ],
)
def test_open_paths_match_whole_segments(path: str, expected: bool) -> None:
    assert is_open(path, ("/health", "/metrics")) is expected


def test_root_prefix_opens_everything() -> None:
    assert is_open("/admin/export", ("/",))


# ---- bearer tokens -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (None, "missing bearer token"),
        ("", "missing bearer token"),
        ("Basic dXNlcjpwdw==", "malformed authorization header"),
        ("Bearer", "malformed authorization header"),
        ("Bearer   ", "malformed authorization header"),
    ],
)
def test_bearer_header_problems(header: str | None, reason: str) -> None:
    with pytest.raises(AuthError) as caught:
        bearer_token(header)
    assert caught.value.reason.startswith(reason)


def test_bearer_scheme_is_case_insensitive() -> None:
    assert bearer_token("bearer abc.def.ghi") == "abc.def.ghi"


def verifier(issuer: str = "semstreams") -> JwtVerifier:
    return JwtVerifier(JWT_SECRET, issuer)


def test_valid_token_gives_its_claims() -> None:
    claims = verifier().verify(f"Bearer {token(sub='alice')}")
    assert claims["sub"] == "alice"
    assert claims["iss"] == "semstreams"


def refusal(header: str, issuer: str = "semstreams") -> str:
    with pytest.raises(AuthError) as caught:
        verifier(issuer).verify(header)
    assert header.removeprefix("Bearer ") not in str(caught.value)
    return caught.value.reason


def test_expired_token() -> None:
    assert refusal(f"Bearer {token(ttl=-3600)}") == "token expired"


def test_small_clock_skew_is_tolerated() -> None:
    assert verifier().verify(f"Bearer {token(ttl=-5)}")["iss"] == "semstreams"


def test_token_without_exp_is_refused() -> None:
    assert refusal(f"Bearer {token(exp=None)}") == "token has no exp claim"


def test_bad_signature() -> None:
    other = token(secret="another-secret-0123456789abcdef01234")
    assert refusal(f"Bearer {other}") == "bad signature"


def test_wrong_issuer() -> None:
    assert refusal(f"Bearer {token(issuer='someone-else')}") == "wrong issuer"


def test_missing_issuer_when_one_is_required() -> None:
    assert refusal(f"Bearer {token(iss=None)}") == "token has no iss claim"


def test_any_issuer_when_none_is_configured() -> None:
    raw = token(issuer="someone-else")
    assert verifier(issuer="").verify(f"Bearer {raw}")["iss"] == "someone-else"


def test_malformed_token() -> None:
    assert refusal("Bearer not.a.jwt") == "malformed token"
    assert refusal("Bearer garbage") == "malformed token"


def test_not_yet_valid_token() -> None:
    assert refusal(f"Bearer {token(nbf=int(time.time()) + 3600)}") == "token not yet valid"


def test_token_for_another_audience() -> None:
    assert refusal(f"Bearer {token(aud='billing')}") == "wrong audience"


def test_other_algorithms_are_refused() -> None:
    payload = {"iss": "semstreams", "exp": int(time.time()) + 60}
    unsigned = jwt.encode(payload, None, algorithm="none")
    assert refusal(f"Bearer {unsigned}").startswith("algorithm not allowed")
    hs512 = jwt.encode(payload, JWT_SECRET + JWT_SECRET, algorithm="HS512")
    assert refusal(f"Bearer {hs512}").startswith("algorithm not allowed")


def test_verifier_repr_hides_the_secret() -> None:
    assert JWT_SECRET not in repr(verifier())


# ---- the middleware, in-process ------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def whoami(request: Request) -> JSONResponse:
    return JSONResponse({"sub": request.auth["sub"] if "auth" in request.scope else None})


def client(*, auth: bool, burst: int | None, clock: Clock, metrics: Metrics) -> httpx.AsyncClient:
    app = Starlette(
        routes=[Route("/health", whoami), Route("/graph/stats", whoami)],
        middleware=[
            Middleware(
                SecurityMiddleware,
                verifier=verifier() if auth else None,
                limiter=RateLimiter(1.0, burst) if burst else None,
                open_paths=["/health"],
                metrics=metrics,
                clock=clock,
            )
        ],
    )
    return httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://edge")


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


async def test_claims_reach_the_view_and_open_paths_need_no_token() -> None:
    metrics = Metrics()
    async with client(auth=True, burst=None, clock=Clock(), metrics=metrics) as http:
        mine = await http.get("/graph/stats", headers=bearer(sub="alice"))
        assert mine.json() == {"sub": "alice"}
        assert (await http.get("/health")).json() == {"sub": None}
        refused = await http.get("/graph/stats")
        assert refused.status_code == 401
        assert refused.json() == {"error": "missing bearer token"}
        assert refused.headers["www-authenticate"] == 'Bearer realm="semstreams"'
        bad = await http.get("/graph/stats", headers=bearer("x.y.z"))
        assert bad.status_code == 401
        assert bad.headers["www-authenticate"].endswith('error="invalid_token"')
    assert sample(metrics, "semstreams_errors_total", reason="auth") == 2


async def test_rate_limit_refills_with_the_clock() -> None:
    clock, metrics = Clock(), Metrics()
    async with client(auth=False, burst=2, clock=clock, metrics=metrics) as http:
        codes = [(await http.get("/graph/stats")).status_code for _ in range(3)]
        assert codes == [200, 200, 429]
        refused = await http.get("/graph/stats")
        assert refused.headers["retry-after"] == "1"
        assert "rate limit" in refused.json()["error"]
        for _ in range(5):
            assert (await http.get("/health")).status_code == 200
        clock.now = 1.0
        assert (await http.get("/graph/stats")).status_code == 200
    assert sample(metrics, "semstreams_rate_limited_total") == 2


async def test_each_subject_has_its_own_bucket_and_bad_tokens_spend_the_ip_bucket() -> None:
    async with client(auth=True, burst=1, clock=Clock(), metrics=Metrics()) as http:

        async def status(headers: dict[str, str] | None = None) -> int:
            return (await http.get("/graph/stats", headers=headers)).status_code

        assert await status(bearer(sub="alice")) == 200
        assert await status(bearer(sub="alice")) == 429
        assert await status(bearer(sub="bob")) == 200
        assert await status() == 401
        assert await status() == 429
        # A valid token without ``sub`` is counted against its IP, whose bucket is empty.
        assert await status(bearer()) == 429


async def test_tokens_and_the_secret_are_never_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG")
    raw = token(ttl=-3600, sub="alice")
    async with client(auth=True, burst=None, clock=Clock(), metrics=Metrics()) as http:
        assert (await http.get("/graph/stats", headers=bearer(raw))).status_code == 401
    assert "token expired" in caplog.text
    assert raw not in caplog.text
    assert JWT_SECRET not in caplog.text


# -- browser sessions: the same token in an HttpOnly cookie, with CSRF protection --------


def session_client(metrics: Metrics | None = None) -> httpx.AsyncClient:
    async def change(request: Request) -> JSONResponse:
        return JSONResponse({"changed_by": request.auth["sub"]})

    app = Starlette(
        routes=[
            Route("/graph/stats", whoami),
            Route("/devices/x/revoke", change, methods=["POST"]),
        ],
        middleware=[
            Middleware(
                SecurityMiddleware,
                verifier=verifier(),
                limiter=None,
                open_paths=["/health"],
                metrics=metrics or Metrics(),
            )
        ],
    )
    return httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://hub")


async def test_a_browser_gets_the_sign_in_page_with_its_401() -> None:
    async with session_client() as http:
        page = await http.get("/graph/stats", headers={"accept": "text/html,*/*"})
        assert page.status_code == 401 and page.headers["content-type"].startswith("text/html")
        assert 'action="/login"' in page.text and "missing bearer token" in page.text
        api = await http.get("/graph/stats", headers={"accept": "application/json"})
        assert api.status_code == 401 and api.json() == {"error": "missing bearer token"}


async def test_signing_in_sets_an_httponly_session_that_authenticates_reads() -> None:
    raw = token(sub="alice")
    async with session_client() as http:
        signed = await http.post("/login", data={"token": raw})
        assert signed.status_code == 303 and signed.headers["location"] == "/"
        session_cookie, csrf_cookie = signed.headers.get_list("set-cookie")
        assert session_cookie.startswith(f"semstreams_session={raw};")
        assert "HttpOnly" in session_cookie and "SameSite=Strict" in session_cookie
        assert "HttpOnly" not in csrf_cookie and csrf_cookie.startswith("semstreams_csrf=")
        assert (await http.get("/graph/stats")).json() == {"sub": "alice"}
        out = await http.post("/logout")
        assert out.status_code == 303
        assert (await http.get("/graph/stats")).status_code == 401


async def test_a_change_through_the_cookie_needs_the_csrf_token() -> None:
    async with session_client() as http:
        await http.post("/login", data={"token": token(sub="alice")})
        forged = await http.post("/devices/x/revoke")  # what another site could make it send
        assert forged.status_code == 403 and "CSRF" in forged.json()["error"]
        wrong = await http.post("/devices/x/revoke", headers={"x-csrf-token": "guess"})
        assert wrong.status_code == 403
        csrf = http.cookies["semstreams_csrf"]
        done = await http.post("/devices/x/revoke", headers={"x-csrf-token": csrf})
        assert done.json() == {"changed_by": "alice"}
        # A bearer header needs no CSRF token: no browser adds one on its own.
        http.cookies.clear()
        bearer_change = await http.post("/devices/x/revoke", headers=bearer(sub="bob"))
        assert bearer_change.json() == {"changed_by": "bob"}


@pytest.mark.parametrize(
    ("form", "reason"),
    [
        ({"token": "x.y.z"}, "malformed token"),
        ({"token": ""}, "no token given"),
        ({"nothing": "here"}, "no token given"),
        ({"token": "a" * 20_000}, "login form too large"),
    ],
)
async def test_a_bad_sign_in_sets_no_cookie(form: dict[str, str], reason: str) -> None:
    metrics = Metrics()
    async with session_client(metrics) as http:
        answer = await http.post("/login", data=form)
        assert answer.status_code == 401 and reason in answer.text
        assert "set-cookie" not in answer.headers
        assert (await http.get("/graph/stats")).status_code == 401
    assert sample(metrics, "semstreams_errors_total", reason="auth") == 2


async def test_an_expired_cookie_is_refused_like_an_expired_header() -> None:
    async with session_client() as http:
        http.cookies.set("semstreams_session", token(ttl=-3600, sub="alice"))
        refused = await http.get("/graph/stats")
        assert refused.status_code == 401 and refused.json() == {"error": "token expired"}


# -- scopes ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "scope"),
    [
        ("/graph/stats", "read"),
        ("/graph/query/path", "read"),
        ("/dashboard/events", "read"),
        ("/ingest", "write"),
        ("/admin/export", "admin"),
        ("/admin/config", "admin"),
        ("/devices/e1/approve", "admin"),
        ("/claim-tokens", "admin"),
        ("/ingestion", "read"),  # whole segments only
    ],
)
def test_each_path_needs_one_scope(path: str, scope: str) -> None:
    assert required_scope(path) == scope


def test_scopes_come_from_the_scope_claim() -> None:
    assert token_scopes({"scope": "read  write"}) == {"read", "write"}
    assert token_scopes({"scope": ["admin", 3]}) == {"admin"}
    assert token_scopes({}) == frozenset()


def scoped_client(metrics: Metrics) -> httpx.AsyncClient:
    async def ok(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    app = Starlette(
        routes=[
            Route("/graph/stats", ok),
            Route("/ingest", ok, methods=["POST"]),
            Route("/admin/export", ok, methods=["POST"]),
        ],
        middleware=[
            Middleware(
                SecurityMiddleware,
                verifier=JwtVerifier(JWT_SECRET, "semstreams", audience="semstreams-api"),
                limiter=None,
                open_paths=[],
                metrics=metrics,
            )
        ],
    )
    return httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://edge")


async def test_a_token_without_the_scope_gets_403_naming_it() -> None:
    metrics = Metrics()
    reader = bearer(scope="read", aud="semstreams-api")
    async with scoped_client(metrics) as http:
        assert (await http.get("/graph/stats", headers=reader)).status_code == 200
        ingest = await http.post("/ingest", headers=reader)
        assert ingest.status_code == 403
        assert ingest.json() == {"error": "the token lacks the 'write' scope this path needs"}
        admin = await http.post(
            "/admin/export", headers=bearer(scope="read write", aud="semstreams-api")
        )
        assert admin.status_code == 403 and "'admin'" in admin.json()["error"]
        unscoped = await http.get("/graph/stats", headers=bearer(scope=None, aud="semstreams-api"))
        assert unscoped.status_code == 403 and "'read'" in unscoped.json()["error"]
    assert sample(metrics, "semstreams_errors_total", reason="auth") == 3


async def test_the_audience_is_checked_when_configured() -> None:
    async with scoped_client(Metrics()) as http:
        other = await http.get("/graph/stats", headers=bearer(aud="another-service"))
        assert other.status_code == 401 and other.json() == {"error": "wrong audience"}
        none = await http.get("/graph/stats", headers=bearer())
        assert none.status_code == 401 and none.json() == {"error": "token has no aud claim"}
