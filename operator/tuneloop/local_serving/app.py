"""An OpenAI-compatible endpoint over a run's base and tuned model: GET /v1/models, POST
/v1/chat/completions (non-streaming). For one person on one machine: `tuneloop serve --local`
binds it to 127.0.0.1.

`model` is `base` or `tuned`; the run's name and its registered model name also mean `tuned`.
Answers are greedy, as the evaluator's: sampling fields (temperature, top_p, seed...) are accepted
and have no effect. Errors have OpenAI's shape, {"error": {"message", "type", "param", "code"}}.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from tuneloop.local_serving.chat_models import ROLES, ChatModels, ContextTooLong
from tuneloop.local_serving.run_model import BASE, TUNED

log = logging.getLogger("tuneloop.local_serving")

MAX_BODY_BYTES = 1_000_000
MAX_MESSAGES = 256
MAX_TOKENS = 4096


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal[ROLES]  # type: ignore[valid-type]
    content: str = Field(max_length=MAX_BODY_BYTES)


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS)
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS)
    stream: bool = False
    n: int = Field(1, ge=1, le=1, description="one answer per request")


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def response(self) -> JSONResponse:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return JSONResponse({"error": {"message": self.message, "type": kind, "param": self.param,
                                       "code": self.code}}, status_code=self.status)


def field_name(location: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in location) or "body"


def validation_error(error: ValidationError) -> ApiError:
    problems = [f"{field_name(item['loc'])}: {item['msg']}" for item in error.errors()]
    return ApiError(400, "; ".join(problems), param=field_name(error.errors()[0]["loc"]), code="invalid_value")


async def read_json_body(request: Request) -> Any:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise ApiError(413, f"the request body is larger than {MAX_BODY_BYTES} bytes", "body")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise ApiError(413, f"the request body is larger than {MAX_BODY_BYTES} bytes", "body")
    if not body:
        raise ApiError(400, "a JSON request body is required", "body")
    try:
        return json.loads(body.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise ApiError(400, f"the request body is not valid UTF-8 (byte {error.start})", "body") from error
    except json.JSONDecodeError as error:
        raise ApiError(400, f"the request body is not valid JSON: {error.msg} at line {error.lineno} "
                            f"column {error.colno}", "body") from error


def create_app(models: ChatModels, on_ready: Callable[[], None] | None = None) -> FastAPI:
    run = models.run
    created = int(time.time())
    names = {BASE: BASE, TUNED: TUNED, run.name: TUNED}
    if run.registered_model:
        names[run.registered_model] = TUNED

    def variant_of(model: str) -> str:
        if model not in names:
            raise ApiError(404, f"no model {model!r} here; this endpoint serves {', '.join(names)} "
                                f"(run {run.label})", "model", "model_not_found")
        return names[model]

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if on_ready:
            on_ready()
        yield

    app = FastAPI(title="Tuneloop local model", description=__doc__, lifespan=lifespan,
                  docs_url=None, redoc_url=None)

    @app.exception_handler(ApiError)
    async def api_error(_request: Request, error: ApiError) -> JSONResponse:
        return error.response()

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        tuned = {"run": run.label, "adapter": str(run.adapter_path), "systemPrompt": run.system_prompt,
                 "registeredModel": run.registered_model, "registeredVersion": run.registered_version}
        return {"object": "list", "data": [
            {"id": BASE, "object": "model", "created": created, "owned_by": "tuneloop",
             "tuneloop": {"run": run.label, "model": str(run.model_path), "systemPrompt": run.system_prompt}},
            {"id": TUNED, "object": "model", "created": created, "owned_by": "tuneloop", "parent": BASE,
             "tuneloop": tuned},
        ]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> JSONResponse:
        document = await read_json_body(request)
        if not isinstance(document, dict):
            raise ApiError(400, f"the request body must be a JSON object, not {type(document).__name__}", "body")
        try:
            body = ChatCompletionRequest.model_validate(document)
        except ValidationError as error:
            raise validation_error(error) from error
        if body.stream:
            raise ApiError(400, "streaming is not supported by this local server: send \"stream\": false",
                           "stream", "unsupported_value")
        variant = variant_of(body.model)
        max_new_tokens = body.max_completion_tokens or body.max_tokens or min(run.max_new_tokens, MAX_TOKENS)
        messages = [message.model_dump() for message in body.messages]
        try:
            answer = await run_in_threadpool(models.answer, variant, messages, max_new_tokens)
        except ContextTooLong as error:
            raise ApiError(400, str(error), "messages", "context_length_exceeded") from error
        except Exception as error:  # a generation failure is the server's, not the request's
            log.exception("generation failed")
            raise ApiError(500, f"generation failed: {error.__class__.__name__}: {error}") from error
        return JSONResponse({
            "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
            "model": body.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer.text},
                         "finish_reason": answer.finish_reason}],
            "usage": {"prompt_tokens": answer.prompt_tokens, "completion_tokens": answer.completion_tokens,
                      "total_tokens": answer.prompt_tokens + answer.completion_tokens},
        })

    return app
