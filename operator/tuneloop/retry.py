"""One retry policy for every call to an outside system: the Kubernetes API, MLflow, the LLM judge and
the feedback service, from the operator and from the workloads alike.

A policy says how many attempts, how long to wait between them (exponential, capped, with jitter so
that many clients failing together spread out), how long to keep trying in all, and each request's
timeout. Which errors are worth another attempt is the caller's to say: `retrying` / `async_retrying`
build tenacity retryers from a policy and that predicate. A fresh retryer per call: its statistics
(attempts made, time spent) are that call's, for the caller's final message.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import Any

import httpx
import tenacity
from pydantic import Field, model_validator

from tuneloop.api.common import WireModel

ShouldRetry = Callable[[BaseException], bool]
OnRetry = Callable[[tenacity.RetryCallState], None]

# httpx logs every request at INFO; the callers log what failed and what is retried, once.
logging.getLogger("httpx").setLevel(logging.WARNING)


class RetryPolicy(WireModel):
    attempts: int | None = Field(5, ge=1, description="Attempts in all, the first one included; unset: as many "
                                                      "as deadlineSeconds allows.")
    backoff_seconds: float = Field(0.5, gt=0, description="Wait before the first retry; it doubles after each "
                                                          "one, and each wait is drawn between half of it and all.")
    max_backoff_seconds: float = Field(10, gt=0, description="The longest wait between two attempts.")
    deadline_seconds: float | None = Field(None, ge=0, description="No attempt starts after this long since the "
                                                                   "first one; unset: attempts alone decide.")
    timeout_seconds: float = Field(30, gt=0, description="The timeout of each request.")

    @model_validator(mode="after")
    def _ends(self) -> RetryPolicy:
        if self.attempts is None and self.deadline_seconds is None:
            raise ValueError("a retry policy needs attempts or deadlineSeconds (else it never gives up)")
        return self


def no_answer(error: BaseException) -> bool:
    """The predicate of calls retried only when the server did not answer: no connection, or a timeout."""
    return isinstance(error, (httpx.TransportError, TimeoutError))


def elapsed(retryer: tenacity.BaseRetrying) -> float:
    """Seconds from the first attempt to the end of the last one a retryer made."""
    return retryer.statistics.get("delay_since_first_attempt", 0.0)


def attempts_made(retryer: tenacity.BaseRetrying) -> int:
    return retryer.statistics.get("attempt_number", 1)


def backoff(policy: RetryPolicy, floor: Callable[[BaseException], float] | None = None) -> Callable[..., float]:
    """The wait before the next attempt; `floor(error)` (e.g. a 429's Retry-After) is waited at least.
    Never past the deadline: the last attempt starts on it."""
    def wait(state: tenacity.RetryCallState) -> float:
        ceiling = min(policy.max_backoff_seconds, policy.backoff_seconds * 2 ** (state.attempt_number - 1))
        delay = random.uniform(ceiling / 2, ceiling)
        if floor is not None:
            delay = max(delay, floor(state.outcome.exception()))
        if policy.deadline_seconds is not None:
            delay = min(delay, policy.deadline_seconds - (state.seconds_since_start or 0.0))
        return max(delay, 0.0)
    return wait


def _settings(policy: RetryPolicy, should_retry: ShouldRetry, on_retry: OnRetry | None,
              floor: Callable[[BaseException], float] | None) -> dict[str, Any]:
    stops = [tenacity.stop_after_attempt(policy.attempts)] if policy.attempts is not None else []
    if policy.deadline_seconds is not None:
        stops.append(tenacity.stop_after_delay(policy.deadline_seconds))
    return {"stop": tenacity.stop_any(*stops), "wait": backoff(policy, floor),
            "retry": tenacity.retry_if_exception(should_retry), "before_sleep": on_retry, "reraise": True}


def retrying(policy: RetryPolicy, should_retry: ShouldRetry, *, on_retry: OnRetry | None = None,
             floor: Callable[[BaseException], float] | None = None,
             sleep: Callable[[float], None] = time.sleep) -> tenacity.Retrying:
    """`retrying(...)(action)`: the action's result; its last error (re-raised as it is) when that one is
    not worth retrying, or the attempts or the deadline ran out."""
    return tenacity.Retrying(sleep=sleep, **_settings(policy, should_retry, on_retry, floor))


def async_retrying(policy: RetryPolicy, should_retry: ShouldRetry, *, on_retry: OnRetry | None = None,
                   floor: Callable[[BaseException], float] | None = None) -> tenacity.AsyncRetrying:
    """`await async_retrying(...)(action)`: as `retrying`, for a coroutine function."""
    return tenacity.AsyncRetrying(**_settings(policy, should_retry, on_retry, floor))


# Today's behaviour of each outside system, the defaults of the operator's `outbound` configuration.
KUBERNETES_API = RetryPolicy(attempts=5, backoff_seconds=0.2, max_backoff_seconds=5, timeout_seconds=30)
JUDGE = RetryPolicy(backoff_seconds=0.5, max_backoff_seconds=8)  # a JudgeSpec's maxRetries and timeoutSeconds win
TEACHER = JUDGE  # the augment stage's teacher, an LLM endpoint like the judge; a TeacherSpec's settings win
MLFLOW_REST = RetryPolicy(attempts=1, timeout_seconds=5)  # asked again on the next reconcile
FEEDBACK_STATS = RetryPolicy(attempts=1, timeout_seconds=10)  # asked again on the next reconcile
