"""RFC 9457 problem details: every error ICC answers is machine-readable."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

PROBLEM_JSON = "application/problem+json"
PROBLEM_BASE = "https://icc.invalid/problems/"


class OrjsonResponse(JSONResponse):
    """A JSON response rendered with orjson (UUIDs and datetimes as ISO text).

    FastAPI deprecated its `ORJSONResponse` in favour of declared response models. ICC's problem
    answers and hand-built bodies have none, so this is that class, kept here.
    """

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_NON_STR_KEYS)


class Problem(Exception):
    def __init__(
        self,
        status: int,
        kind: str,
        title: str,
        detail: str,
        *,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.kind = kind
        self.title = title
        self.detail = detail
        self.headers = headers or {}
        self.extra = extra

    def body(self, instance: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": PROBLEM_BASE + self.kind,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if instance:
            body["instance"] = instance
        body.update(self.extra)
        return body


def validation_problem(exc: ValidationError | RequestValidationError) -> Problem:
    errors = [
        {"field": ".".join(str(p) for p in err["loc"] if p != "body") or "<body>", "message": err["msg"]}
        for err in exc.errors()
    ]
    fields = ", ".join(e["field"] for e in errors)
    return Problem(
        422, "validation", "Request body is not valid", f"invalid field(s): {fields}", errors=errors
    )


def response(problem: Problem, request: Request | None = None) -> OrjsonResponse:
    return OrjsonResponse(
        problem.body(str(request.url.path) if request is not None else None),
        status_code=problem.status,
        media_type=PROBLEM_JSON,
        headers=problem.headers,
    )


async def problem_handler(request: Request, exc: Exception) -> OrjsonResponse:
    assert isinstance(exc, Problem)
    return response(exc, request)


async def validation_handler(request: Request, exc: Exception) -> OrjsonResponse:
    assert isinstance(exc, RequestValidationError)
    return response(validation_problem(exc), request)


async def http_handler(request: Request, exc: Exception) -> OrjsonResponse:
    assert isinstance(exc, StarletteHTTPException)
    kind = {401: "unauthenticated", 403: "forbidden", 404: "not-found", 405: "method-not-allowed"}.get(
        exc.status_code, "http"
    )
    return response(Problem(exc.status_code, kind, str(exc.detail), str(exc.detail)), request)


def install(app: Any) -> None:
    app.add_exception_handler(Problem, problem_handler)
    app.add_exception_handler(RequestValidationError, validation_handler)
    app.add_exception_handler(StarletteHTTPException, http_handler)
