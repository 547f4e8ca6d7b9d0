"""The feedback service's HTTP API (FastAPI). OpenAPI at /openapi.json, browsable at /docs.

  POST /v1/feedback          store one review: a correction, verdict or rating (201; a repeated idempotency
                             key: 200, duplicate)
  GET  /v1/feedback          rows in id order, afterId < id <= upToId, paginated (for snapshots)
  GET  /v1/feedback/stats    counts, the last id, what is new since a snapshot
  GET  /healthz              the process is up (no token needed)
  GET  /readyz               the database answers (no token needed)
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import AfterValidator
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

import tuneloop
from tuneloop.feedback.auth import TOKEN_ENV, TOKEN_FILE_ENV, TOKENS_FILE_ENV, Scope, TokenError, Tokens, token_guard
from tuneloop.feedback.body_limit import BodySizeLimit
from tuneloop.feedback.database import make_engine, printable_url
from tuneloop.feedback.errors import error_response, install_error_handlers
from tuneloop.feedback.limits import DEFAULT_PAGE_SIZE, MAX_BODY_BYTES, MAX_NAME_CHARS, MAX_PAGE_SIZE
from tuneloop.feedback.migrate import upgrade_database
from tuneloop.feedback.schemas import (
    ErrorBody,
    FeedbackCreated,
    FeedbackIn,
    FeedbackPage,
    FeedbackStats,
    single_line_checker,
)
from tuneloop.feedback.store import add_feedback, feedback_page, feedback_stats

log = logging.getLogger("tuneloop.feedback")

MAX_ID = 2**63 - 1  # ids are BIGINT: a larger one is a 422, not the database's 500
READY_TIMEOUT_SECONDS = 2.0
_model_name = single_line_checker(MAX_NAME_CHARS)
ModelFilter = Annotated[str | None, Query(max_length=MAX_NAME_CHARS, description="Only this served model's rows."),
                        AfterValidator(lambda model: model if model is None else _model_name(model))]
AfterId = Annotated[int, Query(alias="afterId", ge=0, le=MAX_ID, description="Only rows with a larger id.")]
ERROR_RESPONSES = {status: {"model": ErrorBody, "description": description} for status, description in {
    400: "The body is not valid UTF-8 JSON.", 401: "Missing or wrong bearer token.",
    403: "The token's scope does not cover that model.",
    413: f"The body is larger than {MAX_BODY_BYTES} bytes.", 422: "A field is missing or invalid.",
    503: "The database is unavailable; try again after Retry-After seconds.",
}.items()}


class Utf8JsonRoute(APIRoute):
    """Bodies that are not UTF-8 are refused with their byte position (FastAPI would say only that
    parsing failed)."""

    def get_route_handler(self) -> Callable[[Request], Awaitable[Response]]:
        handle = super().get_route_handler()

        async def checked(request: Request) -> Response:
            try:
                (await request.body()).decode("utf-8")
            except UnicodeDecodeError as error:
                return error_response(400, f"the request body is not valid UTF-8 (byte {error.start})", "body")
            return await handle(request)

        return checked


def create_app(database_url: str, token: str | Tokens | None, *, allow_no_auth: bool = False) -> FastAPI:
    """The service on `database_url`; migrations run when it starts. `token`: the service-wide token,
    or every accepted token with its scope (auth.py). Without one it refuses to exist unless
    `allow_no_auth` (local play only: anyone who reaches the port may write)."""
    tokens = Tokens().with_service_token(token) if isinstance(token, str) else token
    if not (tokens and tokens.entries):
        if not allow_no_auth:
            raise TokenError(f"no token: set {TOKENS_FILE_ENV} (a token per team), or {TOKEN_ENV} or "
                             f"{TOKEN_FILE_ENV} (one service-wide token), or allow unauthenticated access "
                             "explicitly, for local use only")
        tokens = None
    engine = make_engine(database_url)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(upgrade_database, engine)
        log.info("feedback service on %s (schema up to date), %s", printable_url(engine),
                 f"{len(tokens.entries)} bearer token(s) accepted" if tokens else "NO AUTHENTICATION")
        yield
        engine.dispose()

    app = FastAPI(title="Tuneloop feedback", version=tuneloop.__version__, lifespan=lifespan,
                  description=__doc__)
    app.add_middleware(BodySizeLimit, max_bytes=MAX_BODY_BYTES)
    install_error_handlers(app)
    guard = token_guard(tokens)
    v1 = APIRouter(prefix="/v1", tags=["feedback"], route_class=Utf8JsonRoute, responses=ERROR_RESPONSES)

    def in_scope(scope: Scope, model: str | None) -> None:
        if model is not None and not scope.may_use(model):
            raise scope.refuse(model)

    @v1.post("/feedback", status_code=201, response_model=FeedbackCreated,
             responses={200: {"model": FeedbackCreated, "description": "The key was seen before; nothing stored."},
                        409: {"model": ErrorBody, "description": "The key was used for different content."}})
    def post_feedback(item: FeedbackIn, response: Response, scope: Scope = Depends(guard)) -> FeedbackCreated:
        in_scope(scope, item.model)
        stored = add_feedback(engine, item, scope)
        if stored.duplicate:
            response.status_code = 200
        return FeedbackCreated(id=stored.id, duplicate=stored.duplicate)

    @v1.get("/feedback", response_model=FeedbackPage)
    def list_feedback(
        after_id: AfterId = 0,
        model: ModelFilter = None,
        up_to_id: Annotated[int | None, Query(alias="upToId", ge=0, le=MAX_ID,
                                              description="Only rows up to this id.")] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = DEFAULT_PAGE_SIZE,
        scope: Scope = Depends(guard),
    ) -> FeedbackPage:
        in_scope(scope, model)
        return feedback_page(engine, scope, model, after_id, up_to_id, limit)

    @v1.get("/feedback/stats", response_model=FeedbackStats)
    def stats(model: ModelFilter = None, after_id: AfterId = 0, scope: Scope = Depends(guard)) -> FeedbackStats:
        in_scope(scope, model)
        return feedback_stats(engine, scope, model, after_id)

    # Both run on the event loop, not in the thread pool that database calls can fill: the process
    # answers /healthz while the database hangs, and /readyz waits for it at most READY_TIMEOUT_SECONDS.
    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    def database_answers() -> None:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))

    @app.get("/readyz", tags=["health"], responses={503: {"model": ErrorBody}})
    async def readyz() -> Response:
        try:
            await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(None, database_answers),
                                   READY_TIMEOUT_SECONDS)
        except TimeoutError:
            return error_response(503, f"the database did not answer within {READY_TIMEOUT_SECONDS:g} s",
                                  headers={"Retry-After": "5"})
        except SQLAlchemyError as error:
            return error_response(503, f"the database does not answer: {type(error).__name__}",
                                  headers={"Retry-After": "5"})
        return JSONResponse({"status": "ready"})

    app.include_router(v1)
    return app
