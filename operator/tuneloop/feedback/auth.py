"""Bearer-token access to the /v1 routes.

The token is one shared secret (a Kubernetes Secret in a cluster), read from
TUNELOOP_FEEDBACK_TOKEN or from the file named by TUNELOOP_FEEDBACK_TOKEN_FILE (a mounted Secret; a
trailing newline is dropped). It is compared in constant time and never logged or echoed.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Callable

from fastapi import HTTPException, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from tuneloop.secret_settings import setting_from_environment

TOKEN_ENV = "TUNELOOP_FEEDBACK_TOKEN"
TOKEN_FILE_ENV = "TUNELOOP_FEEDBACK_TOKEN_FILE"
MIN_TOKEN_CHARS = 16

bearer_scheme = HTTPBearer(auto_error=False, scheme_name="bearerToken",
                           description=f"The service's token ({TOKEN_ENV} or {TOKEN_FILE_ENV}).")


class TokenError(ValueError):
    """No usable token; the message says where one is expected, never what was found."""


def token_from_environment(environ: dict[str, str] | None = None) -> str | None:
    try:
        value = setting_from_environment(os.environ if environ is None else environ, TOKEN_ENV, TOKEN_FILE_ENV,
                                         "token")
    except ValueError as error:
        raise TokenError(str(error)) from None
    return check_token(value) if value else None


def check_token(token: str) -> str:
    if len(token) < MIN_TOKEN_CHARS:
        raise TokenError(f"the token is shorter than {MIN_TOKEN_CHARS} characters; use a random one, "
                         "e.g. `openssl rand -hex 32`")
    if any(character.isspace() for character in token) or not token.isprintable():
        raise TokenError("the token holds spaces or control characters; it must fit an Authorization header")
    return token


def unauthorized(message: str, challenge: str = "Bearer") -> HTTPException:
    return HTTPException(status_code=401, detail=message, headers={"WWW-Authenticate": challenge})


def token_guard(expected: str | None) -> Callable[[HTTPAuthorizationCredentials | None], None]:
    """A route dependency that accepts only `Authorization: Bearer <expected>`; None: everyone."""
    expected_bytes = expected.encode("utf-8") if expected is not None else None

    def check_bearer(credentials: HTTPAuthorizationCredentials | None = Security(bearer_scheme)) -> None:
        if expected_bytes is None:
            return
        if credentials is None:
            raise unauthorized("missing `Authorization: Bearer <token>` header")
        if not hmac.compare_digest(credentials.credentials.encode("utf-8"), expected_bytes):
            raise unauthorized("the bearer token is not the service's token", 'Bearer error="invalid_token"')

    return check_bearer
