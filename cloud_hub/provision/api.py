"""HTTP views of enrolment (``/enrol``, open to devices: keys and claims are their proof)
and of device administration (``/devices``, ``/claim-tokens``, behind the API's auth).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import msgspec
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from cloud_hub.provision.registry import ClaimError, Status
from cloud_hub.provision.service import Enrolment, SignedReply
from edge_agent.api.security import over_rate
from edge_agent.api.views import error, json_response, read_body
from edge_agent.config.units import Duration
from edge_agent.errors import AuthError
from edge_agent.provision.messages import (
    ENROL_PROTOCOL,
    SIGNATURE_HEADER,
    ChallengeRequest,
    EnrolRequest,
    RenewRequest,
    protocol_of,
)

__all__ = ["ENROL_PATH", "provisioning_routes"]

ENROL_PATH = "/enrol"
_ACTIONS: dict[str, Status] = {"approve": "approved", "reject": "rejected", "revoke": "revoked"}


class _ClaimTokenRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    group: str = "default"
    ttl: str | float = "1h"


def _service(request: Request) -> Enrolment:
    enrolment: Enrolment = request.app.state.agent.enrolment
    return enrolment


class OldProtocol(ValueError):
    """A device speaks an enrolment protocol this hub does not."""


async def _body(request: Request, kind: type[Any]) -> Any:
    return msgspec.json.decode(await read_body(request) or b"{}", type=kind)


async def _enrol_body(request: Request, kind: type[Any]) -> Any:
    """The request as ``kind``, once it says it speaks this hub's enrolment protocol.

    Raises:
        OldProtocol: it speaks another (a device from before protocol 2 would send its
            claim secret; it is told to update, and nothing it sent is used).
    """
    body = await read_body(request) or b"{}"
    protocol = protocol_of(body)
    if protocol != ENROL_PROTOCOL:
        raise OldProtocol(
            f"enrolment protocol {protocol} is not supported: this hub speaks"
            f" {ENROL_PROTOCOL} (claim secrets no longer cross the network); update the agent"
        )
    return msgspec.json.decode(body, type=kind)


def _sync_url(request: Request) -> str:
    """Where a device that reached us at this address syncs: the same host, the sync path."""
    hub = request.app.state.agent
    scheme = "wss" if request.url.scheme == "https" else "ws"
    host = request.url.hostname or "127.0.0.1"
    port = hub.sync_port or request.url.port
    return f"{scheme}://{host}:{port}{hub.sync_path}"


def _over_rate(request: Request) -> Response | None:
    """The 429 for a source address past its enrolment rate, else ``None``."""
    address = request.client.host if request.client else "unknown"
    limiter = _service(request).limiter
    return over_rate(limiter, address, time.monotonic(), "too many enrolment requests")


async def _answer(
    request: Request, kind: type[Any], what: str, call: Callable[[Any], Any]
) -> Response:
    """Run ``call`` on the request's body (an enrolment message of ``kind``) in a worker
    thread, within this address's rate; every refusal becomes a 4xx with its reason."""
    if limited := _over_rate(request):
        return limited
    try:
        body = await _enrol_body(request, kind)
        answer = await run_in_threadpool(call, body)
    except OldProtocol as exc:
        return error(400, str(exc))
    except (msgspec.ValidationError, msgspec.DecodeError, ValueError) as exc:
        return error(400, f"bad {what}: {exc}")
    except ClaimError as exc:
        return error(exc.status, exc.reason)
    except AuthError as exc:
        return error(401, exc.reason)
    if isinstance(answer, SignedReply):
        headers = {SIGNATURE_HEADER: answer.signature}
        status = 200 if answer.status == "approved" else 202
        return Response(answer.body, status, headers=headers, media_type="application/json")
    return json_response(answer)


async def challenge(request: Request) -> Response:
    """``POST /enrol/challenge``: the hub signs the device's nonce and key, proves its
    claim, and gives it a nonce to answer."""
    service = _service(request)
    return await _answer(
        request, ChallengeRequest, "challenge", lambda body: service.challenge(body, time.time())
    )


async def enrol(request: Request) -> Response:
    """``POST /enrol``: 200 approved (credential + config), 202 pending, both signed;
    401/403/409 refused, 429 when too many devices wait or this address asks too often."""
    service, sync_url = _service(request), _sync_url(request)
    return await _answer(
        request, EnrolRequest, "enrolment", lambda body: service.enrol(body, sync_url, time.time())
    )


async def renew(request: Request) -> Response:
    """``POST /enrol/renew`` with the current credential as bearer and the device key's
    proof of possession: a fresh credential, signed."""
    service, sync_url = _service(request), _sync_url(request)
    credential = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
    return await _answer(
        request,
        RenewRequest,
        "renewal",
        lambda body: service.renew(body, credential, sync_url, time.time()),
    )


async def devices(request: Request) -> Response:
    """``GET /devices``: every device with its status, key fingerprint and hardware."""
    return json_response(await run_in_threadpool(_service(request).registry.devices))


async def device_action(request: Request) -> Response:
    """``POST /devices/{device_id}/{approve|reject|revoke|rotate}``."""
    action = request.path_params["action"]
    device_id = request.path_params["device_id"]
    service = _service(request)
    if action == "rotate":
        device = await run_in_threadpool(service.rotate, device_id, time.time())
    elif (status := _ACTIONS.get(action)) is not None:
        device = await run_in_threadpool(service.set_status, device_id, status, time.time())
    else:
        return error(404, f"unknown action {action!r} (approve, reject, revoke, rotate)")
    if device is None:
        return error(404, f"no device {device_id!r}")
    return json_response(device)


async def delete_device(request: Request) -> Response:
    """``DELETE /devices/{device_id}``: forget a device (it may enrol again) and cut its link."""
    device_id = request.path_params["device_id"]
    if not await run_in_threadpool(_service(request).delete, device_id):
        return error(404, f"no device {device_id!r}")
    return json_response({"deleted": device_id})


async def claim_tokens(request: Request) -> Response:
    """``POST /claim-tokens`` ``{"group": "west", "ttl": "1h"}``: a single-use claim token."""
    try:
        body = await _body(request, _ClaimTokenRequest)
        ttl = Duration.parse(body.ttl)
    except (msgspec.ValidationError, msgspec.DecodeError, ValueError) as exc:
        return error(400, f"bad claim token request: {exc}")
    token, expires = await run_in_threadpool(
        _service(request).registry.create_claim_token, body.group, ttl, time.time()
    )
    return json_response({"token": token, "group": body.group, "expires_at": expires}, 201)


def provisioning_routes() -> list[BaseRoute]:
    """The routes above."""
    return [
        Route(f"{ENROL_PATH}/challenge", challenge, methods=["POST"]),
        Route(ENROL_PATH, enrol, methods=["POST"]),
        Route(f"{ENROL_PATH}/renew", renew, methods=["POST"]),
        Route("/devices", devices, methods=["GET"]),
        Route("/devices/{device_id}", delete_device, methods=["DELETE"]),
        Route("/devices/{device_id}/{action}", device_action, methods=["POST"]),
        Route("/claim-tokens", claim_tokens, methods=["POST"]),
    ]
