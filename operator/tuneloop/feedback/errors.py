"""Every error answers `{"error": "...", "field": "body.correction"}` (see schemas.ErrorBody):
a person reading it knows what to change without knowing FastAPI's `loc` lists."""

from __future__ import annotations

from typing import Any

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import exc
from starlette.exceptions import HTTPException

from tuneloop.api.common import field_path, humanize
from tuneloop.feedback.schemas import ErrorBody, FieldProblem
from tuneloop.feedback.store import IdempotencyConflict

log = logging.getLogger("tuneloop.feedback")


def error_response(status: int, error: str, field: str | None = None, problems: list[FieldProblem] | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    body = ErrorBody(error=error, field=field, problems=problems or [])
    return JSONResponse(body.model_dump(by_alias=True, exclude_defaults=True), status_code=status, headers=headers)


def problem(item: dict[str, Any]) -> FieldProblem:
    field = field_path("", item["loc"])
    if item["type"] == "missing" and item["loc"] == ("body",):
        return FieldProblem(field=field, error="a JSON request body is required")
    return FieldProblem(field=field, error=humanize(item))


async def invalid_request(_request: Request, error: RequestValidationError) -> JSONResponse:
    items = list(error.errors())
    broken_json = next((item for item in items if item["type"] == "json_invalid"), None)
    if broken_json is not None:
        reason = (broken_json.get("ctx") or {}).get("error", "")
        return error_response(400, f"the request body is not valid JSON: {reason}", "body")
    problems = [problem(item) for item in items]
    first = problems[0]
    summary = f"{first.field}: {first.error}" + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else "")
    return error_response(422, summary, first.field, problems if len(problems) > 1 else None)


async def http_error(_request: Request, error: HTTPException) -> JSONResponse:
    return error_response(error.status_code, str(error.detail), getattr(error, "field", None), headers=error.headers)


async def idempotency_conflict(_request: Request, error: IdempotencyConflict) -> JSONResponse:
    return error_response(409, str(error), "body.idempotencyKey")


RETRY_AFTER_SECONDS = 5


async def database_unavailable(_request: Request, error: Exception) -> JSONResponse:
    """The database is down, unreachable or locked: a JSON 503 a client can retry, not a plain 500."""
    log.warning("database unavailable: %s", str(getattr(error, "orig", None) or error).splitlines()[0])
    return error_response(503, "the database is unavailable; try again", headers={
        "Retry-After": str(RETRY_AFTER_SECONDS)})


def install_error_handlers(app: FastAPI) -> None:
    for unavailable in (exc.OperationalError, exc.InterfaceError, exc.TimeoutError):
        app.add_exception_handler(unavailable, database_unavailable)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(IdempotencyConflict, idempotency_conflict)
