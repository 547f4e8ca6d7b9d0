"""Bearer-token access to the /v1 routes.

The token is one shared secret (a Kubernetes Secret in a cluster), read from
TUNELOOP_FEEDBACK_TOKEN or from the file named by TUNELOOP_FEEDBACK_TOKEN_FILE (a mounted Secret; a
trailing newline is dropped). It is compared in constant time and never logged or echoed.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Callable
from pathlib import Path

from fastapi import HTTPException, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

TOKEN_ENV = "TUNELOOP_FEEDBACK_TOKEN"
TOKEN_FILE_ENV = "TUNELOOP_FEEDBACK_TOKEN_FILE"
MIN_TOKEN_CHARS = 16

bearer_scheme = HTTPBearer(auto_error=False, scheme_name="bearerToken",
                           description=f"The service's token ({TOKEN_ENV} or {TOKEN_FILE_ENV}).")


class TokenError(ValueError):
    """No usable token; the message says where one is expected, never what was found."""


def token_from_environment(environ: dict[str, str] | None = None) -> str | None:
    environ = os.environ if environ is None else environ
    value, file = environ.get(TOKEN_ENV), environ.get(TOKEN_FILE_ENV)
    if value and file:
        raise TokenError(f"both {TOKEN_ENV} and {TOKEN_FILE_ENV} are set; set one")
    if file:
        try:
            value = Path(file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as error:
            raise TokenError(f"cannot read the token file {file} ({TOKEN_FILE_ENV}): "
                             f"{getattr(error, 'strerror', None) or type(error).__name__}") from None
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
