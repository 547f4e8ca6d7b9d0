"""Bearer-token access to the /v1 routes, scoped to namespaces and models.

Each team gets its own token, listed in the YAML file that TUNELOOP_FEEDBACK_TOKENS_FILE names (a
mounted Secret):

    - name: team-a            # who it is, for logs
      token: <16+ random characters>
      namespace: team-a       # its rows are stored in, and read from, this namespace only
      models: [acme-tickets]  # optional: only these models (default: every model of the namespace)

A scoped token reads and writes its namespace's rows of its models and nothing else: another team's
rows are invisible to it, and naming another team's model is a 403. The service-wide token
(TUNELOOP_FEEDBACK_TOKEN, or the file TUNELOOP_FEEDBACK_TOKEN_FILE names) reads every namespace and
writes rows of no namespace; give it to the cluster admin, not to a team. Tokens are compared in
constant time and never logged or echoed.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import yaml
from fastapi import HTTPException, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import Field, field_validator

from tuneloop.api.common import SpecError, WireModel, validated
from tuneloop.feedback.limits import MAX_NAME_CHARS
from tuneloop.secret_settings import setting_from_environment

TOKEN_ENV = "TUNELOOP_FEEDBACK_TOKEN"
TOKEN_FILE_ENV = "TUNELOOP_FEEDBACK_TOKEN_FILE"
TOKENS_FILE_ENV = "TUNELOOP_FEEDBACK_TOKENS_FILE"
MIN_TOKEN_CHARS = 16
MAX_TOKENS = 10_000
NAMESPACE_PATTERN = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"

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


@dataclass(frozen=True)
class Scope:
    """What one token may see and write."""

    name: str
    namespace: str | None = None  # None: every namespace (the service-wide token)
    models: frozenset[str] | None = None  # None: every model

    @property
    def stored_namespace(self) -> str:
        return self.namespace or ""

    def may_use(self, model: str) -> bool:
        return self.models is None or model in self.models

    def refuse(self, model: str) -> HTTPException:
        return HTTPException(status_code=403, detail=f"this token ({self.name}) may not use model {model!r}")


EVERYTHING = Scope(name="service-wide token")


@dataclass(frozen=True)
class Tokens:
    """Every accepted token and its scope."""

    entries: tuple[tuple[bytes, Scope], ...] = ()

    def with_service_token(self, token: str | None) -> "Tokens":
        return self if token is None else Tokens(((token.encode("utf-8"), EVERYTHING), *self.entries))

    def scope_for(self, presented: str) -> Scope | None:
        candidate, found = presented.encode("utf-8"), None
        for token, scope in self.entries:  # all compared, whichever matches: no timing hint of which
            if hmac.compare_digest(candidate, token):
                found = scope
        return found


class TokenEntry(WireModel):
    """One team's entry in the tokens file."""

    name: str = Field(min_length=1, max_length=200, description="Who holds it, for logs.")
    token: str
    namespace: str = Field(max_length=63, pattern=NAMESPACE_PATTERN)
    models: list[Annotated[str, Field(min_length=1, max_length=MAX_NAME_CHARS)]] | None = Field(None, min_length=1)

    _token = field_validator("token")(check_token)

    @field_validator("token", mode="before")
    @classmethod
    def _text(cls, token: object) -> object:
        if not isinstance(token, str):  # said without the value: it is somebody's secret
            raise ValueError("must be text (quote it)")
        return token

    def scope(self) -> Scope:
        return Scope(name=self.name, namespace=self.namespace, models=frozenset(self.models) if self.models else None)


def tokens_from_yaml(text: str, source: str) -> Tokens:
    """Every entry checked, every problem named by its place (never a token's value)."""
    try:
        entries = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise TokenError(f"{source}: not YAML: {str(error).splitlines()[0]}") from None
    if not isinstance(entries, list) or not 0 < len(entries) <= MAX_TOKENS:
        raise TokenError(f"{source}: a YAML list of 1 to {MAX_TOKENS:,} tokens, each with name, token and namespace")
    parsed, problems, seen = [], [], set()
    for index, entry in enumerate(entries):
        try:
            checked = validated(TokenEntry, entry, f"entry {index + 1}")
        except SpecError as error:
            problems += error.problems
            continue
        if checked.token in seen:
            problems.append(f"entry {index + 1} ({checked.name}): the same token is listed twice")
        seen.add(checked.token)
        parsed.append((checked.token.encode("utf-8"), checked.scope()))
    if problems:
        raise TokenError(f"{source}: " + "; ".join(problems))
    return Tokens(tuple(parsed))


def tokens_from_environment(environ: dict[str, str] | None = None) -> Tokens:
    """The scoped tokens of TUNELOOP_FEEDBACK_TOKENS_FILE plus the service-wide token, if any is set."""
    environ = os.environ if environ is None else environ
    tokens = Tokens()
    if path := environ.get(TOKENS_FILE_ENV):
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise TokenError(f"cannot read the tokens file {path} ({TOKENS_FILE_ENV}): "
                             f"{getattr(error, 'strerror', None) or type(error).__name__}") from None
        tokens = tokens_from_yaml(text, path)
    return tokens.with_service_token(token_from_environment(environ))


def unauthorized(message: str, challenge: str = "Bearer") -> HTTPException:
    return HTTPException(status_code=401, detail=message, headers={"WWW-Authenticate": challenge})


def token_guard(tokens: Tokens | None) -> Callable[[HTTPAuthorizationCredentials | None], Scope]:
    """A route dependency that accepts a listed bearer token and returns its scope; None: everyone,
    with every scope (local play only)."""
    def check_bearer(credentials: HTTPAuthorizationCredentials | None = Security(bearer_scheme)) -> Scope:
        if tokens is None:
            return EVERYTHING
        if credentials is None:
            raise unauthorized("missing `Authorization: Bearer <token>` header")
        scope = tokens.scope_for(credentials.credentials)
        if scope is None:
            raise unauthorized("the bearer token is not one of the service's tokens", 'Bearer error="invalid_token"')
        return scope

    return check_bearer
