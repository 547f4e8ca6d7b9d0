"""Read the feedback service's API (GET, JSON, bearer token) with timeouts and retries.

Connection errors, timeouts, 5xx and 429 are retried with the shared retry policy (tuneloop.retry:
capped exponential backoff) until `retry_seconds` have passed (then FeedbackUnavailable); 401/403 and
other 4xx fail at once: a retry cannot fix a wrong token or a bad request. The token never appears in
a message.
"""

from __future__ import annotations

import logging
import urllib.parse
from typing import Any, NoReturn

import httpx
from tenacity import RetryCallState

from tuneloop.retry import RetryPolicy, attempts_made, elapsed, retrying

log = logging.getLogger("tuneloop_trainer.feedback_client")


class FeedbackError(Exception):
    """The service refused the request; retrying cannot help."""


class Unauthorized(FeedbackError):
    pass


class FeedbackUnavailable(Exception):
    """The service could not be reached or kept failing; a later attempt may succeed."""


def server_error_text(response: httpx.Response) -> str:
    """The `error` field of the service's JSON error body, else the HTTP reason."""
    try:
        return str(response.json()["error"])
    except (ValueError, KeyError, TypeError):
        return response.reason_phrase


def on_retry(state: RetryCallState) -> None:
    log.warning("%s; retry %d in %.1fs", state.outcome.exception(), state.attempt_number, state.upcoming_sleep)


class FeedbackClient:
    def __init__(self, base_url: str, token: str, timeout_seconds: float, retry_seconds: float):
        self.base_url = base_url.rstrip("/")
        self.retry = RetryPolicy(attempts=None, deadline_seconds=retry_seconds, timeout_seconds=timeout_seconds)
        self.headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}

    def get(self, path: str, params: dict[str, Any]) -> dict[str, Any]:
        query = urllib.parse.urlencode({key: value for key, value in params.items() if value is not None})
        url = f"{self.base_url}{path}?{query}"
        retryer = retrying(self.retry, lambda error: isinstance(error, FeedbackUnavailable), on_retry=on_retry)
        with httpx.Client(headers=self.headers, timeout=self.retry.timeout_seconds, follow_redirects=True) as http:
            try:
                return retryer(self.get_once, http, url)
            except FeedbackUnavailable as error:
                raise FeedbackUnavailable(f"{error} (gave up after {attempts_made(retryer)} attempts in "
                                          f"{elapsed(retryer):.0f}s)") from None

    def get_once(self, http: httpx.Client, url: str) -> dict[str, Any]:
        try:
            response = http.get(url)
        except httpx.TransportError as error:
            raise FeedbackUnavailable(f"cannot reach the feedback service at {self.base_url}: "
                                      f"{error or type(error).__name__}") from None
        if response.status_code >= 400:
            self.refuse(url, response)
        try:
            return response.json()
        except ValueError as error:
            raise FeedbackUnavailable(f"GET {url} answered something that is not JSON: {error}") from None

    def refuse(self, url: str, response: httpx.Response) -> NoReturn:
        status, text = response.status_code, server_error_text(response)
        if status in (401, 403):
            raise Unauthorized(f"the feedback service at {self.base_url} refused the token (HTTP {status}: {text})")
        if status >= 500 or status == 429:
            raise FeedbackUnavailable(f"GET {url} answered HTTP {status}: {text}")
        raise FeedbackError(f"GET {url} answered HTTP {status}: {text}")
