"""`POST /v1/token/refresh`: a screen that runs for days swaps its token for a fresh one before it
expires, then renews its stream with it (docs/stream.md, Authentication and renewal).

Served by the gateway so that the pages reach it on their own origin. The new token has the same
subject, role and scopes and the same lifetime; the session it belongs to ends after
ICC_MAX_SESSION_HOURS, so a stolen token cannot be kept alive for ever.
"""

from __future__ import annotations

from datetime import UTC, datetime

import jwt
from fastapi import APIRouter, Request

from shared.auth import AuthError, refresh_token
from shared.problems import OrjsonResponse, Problem
from shared.runtime import CurrentRuntime

router = APIRouter()

_CHALLENGE = {"WWW-Authenticate": "Bearer"}


@router.post(
    "/v1/token/refresh",
    responses={401: {"description": "no token, or one invalid, expired or past the maximum session"}},
)
async def refresh(request: Request, runtime: CurrentRuntime) -> OrjsonResponse:
    """The presented bearer token, renewed: `{"token": …, "expires_at": …}`."""
    scheme, _, presented = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not presented:
        raise Problem(
            401,
            "unauthenticated",
            "Authentication required",
            "send Authorization: Bearer <token>",
            headers=_CHALLENGE,
        )
    try:
        token = refresh_token(
            runtime.secrets.jwt_secret,
            presented,
            max_session_seconds=runtime.settings.max_session_hours * 3600,
        )
    except AuthError as exc:
        raise Problem(401, "unauthenticated", "Token not refreshed", exc.detail, headers=_CHALLENGE) from exc
    # minted just above: only read its expiry back
    exp = int(jwt.decode(token, options={"verify_signature": False})["exp"])
    return OrjsonResponse(
        {"token": token, "expires_at": datetime.fromtimestamp(exp, UTC).isoformat()},
        headers={"Cache-Control": "no-store"},
    )
