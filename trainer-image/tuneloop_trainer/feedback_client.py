"""Read the feedback service's API (GET, JSON, bearer token) with timeouts and retries.

Connection errors, timeouts, 5xx and 429 are retried with capped exponential backoff until
`retry_seconds` have passed (then FeedbackUnavailable); 401/403 and other 4xx fail at once: a retry
cannot fix a wrong token or a bad request. The token never appears in a message.
"""

from __future__ import annotations

import http.client
import json
import logging
import random
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

log = logging.getLogger("tuneloop_trainer.feedback_client")

FIRST_BACKOFF_SECONDS = 0.5
MAX_BACKOFF_SECONDS = 10.0


class FeedbackError(Exception):
    """The service refused the request; retrying cannot help."""


class Unauthorized(FeedbackError):
    pass


class FeedbackUnavailable(Exception):
    """The service could not be reached or kept failing; a later attempt may succeed."""


def backoff_seconds(attempt: int) -> float:
    """Exponential, capped, with jitter so that many jobs retrying together spread out."""
    ceiling = min(MAX_BACKOFF_SECONDS, FIRST_BACKOFF_SECONDS * 2 ** attempt)
    return random.uniform(ceiling / 2, ceiling)


def server_error_text(error: urllib.error.HTTPError) -> str:
    """The `error` field of the service's JSON error body, else the HTTP reason."""
    try:
        return str(json.loads(error.read().decode("utf-8"))["error"])
    except (ValueError, KeyError, TypeError, OSError):
        return str(error.reason)


class FeedbackClient:
    def __init__(self, base_url: str, token: str, timeout_seconds: float, retry_seconds: float,
                 sleep: Callable[[float], None] = time.sleep):
        self.base_url, self.timeout_seconds, self.retry_seconds = base_url.rstrip("/"), timeout_seconds, retry_seconds
        self.headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        self.sleep = sleep

    def get(self, path: str, params: dict[str, Any]) -> dict[str, Any]:
        query = urllib.parse.urlencode({key: value for key, value in params.items() if value is not None})
        url = f"{self.base_url}{path}?{query}"
        started, attempt = time.monotonic(), 0
        while True:
            try:
                return self.get_once(url)
            except FeedbackUnavailable as error:
                elapsed = time.monotonic() - started
                if elapsed >= self.retry_seconds:
                    raise FeedbackUnavailable(f"{error} (gave up after {attempt + 1} attempts in {elapsed:.0f}s)") \
                        from None
                delay = min(backoff_seconds(attempt), self.retry_seconds - elapsed)
                attempt += 1
                log.warning("%s; retry %d in %.1fs", error, attempt, delay)
                self.sleep(delay)

    def get_once(self, url: str) -> dict[str, Any]:
        request = urllib.request.Request(url, headers=self.headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_seconds) as response:
                return json.loads(response.read().decode("utf-8"))
        except urllib.error.HTTPError as error:
            text = server_error_text(error)
            if error.code in (401, 403):
                raise Unauthorized(f"the feedback service at {self.base_url} refused the token "
                                   f"(HTTP {error.code}: {text})") from None
            if error.code >= 500 or error.code == 429:
                raise FeedbackUnavailable(f"GET {url} answered HTTP {error.code}: {text}") from None
            raise FeedbackError(f"GET {url} answered HTTP {error.code}: {text}") from None
        except (urllib.error.URLError, http.client.HTTPException, OSError) as error:
            reason = getattr(error, "reason", error)
            raise FeedbackUnavailable(f"cannot reach the feedback service at {self.base_url}: {reason}") from None
        except ValueError as error:
            raise FeedbackUnavailable(f"GET {url} answered something that is not JSON: {error}") from None
