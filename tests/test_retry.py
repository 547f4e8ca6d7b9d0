"""The one retry policy (tuneloop.retry) that every outbound call follows."""

from __future__ import annotations

import asyncio
import time

import pytest
from pydantic import ValidationError

from tuneloop.config import OperatorConfig
from tuneloop.retry import KUBERNETES_API, RetryPolicy, async_retrying, attempts_made, elapsed, retrying


class Flaky:
    """Fails with the given errors, in order, then answers "ok"."""

    def __init__(self, *errors: Exception):
        self.errors, self.calls = list(errors), 0

    def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def test_errors_worth_retrying_are_retried_until_the_attempts_run_out_and_the_last_one_is_raised():
    waits: list[float] = []
    policy = RetryPolicy(attempts=3, backoff_seconds=0.1, max_backoff_seconds=0.15)
    assert retrying(policy, lambda error: True, sleep=waits.append)(Flaky(OSError("a"), OSError("b"))) == "ok"
    assert 0.05 <= waits[0] <= 0.1 and 0.075 <= waits[1] <= 0.15  # doubled, capped, between half and all

    flaky = Flaky(OSError("1"), OSError("2"), OSError("3"), OSError("4"))
    retryer = retrying(policy, lambda error: True, sleep=lambda seconds: None)
    with pytest.raises(OSError, match="3"):
        retryer(flaky)
    assert flaky.calls == attempts_made(retryer) == 3


def test_an_error_not_worth_retrying_is_raised_at_once():
    flaky = Flaky(PermissionError("no"))
    with pytest.raises(PermissionError):
        retrying(KUBERNETES_API, lambda error: not isinstance(error, PermissionError))(flaky)
    assert flaky.calls == 1


def test_a_deadline_ends_the_retries_and_no_wait_reaches_past_it():
    policy = RetryPolicy(attempts=None, backoff_seconds=0.2, deadline_seconds=0.3)
    retryer = retrying(policy, lambda error: True)
    started = time.monotonic()
    with pytest.raises(OSError):
        retryer(Flaky(*[OSError()] * 100))
    assert 0.3 <= elapsed(retryer) <= time.monotonic() - started < 2  # bound loose: a busy machine is slow


def test_a_floor_such_as_retry_after_is_waited_at_least():
    waits: list[float] = []
    policy = RetryPolicy(attempts=2, backoff_seconds=0.01)
    retrying(policy, lambda error: True, floor=lambda error: 2.0, sleep=waits.append)(Flaky(OSError()))
    assert waits == [2.0]


def test_coroutines_are_retried_the_same_way():
    async def scenario() -> tuple[str, int]:
        flaky = Flaky(TimeoutError())

        async def call() -> str:
            return flaky()

        return await async_retrying(RetryPolicy(backoff_seconds=0.01), lambda e: True)(call), flaky.calls

    assert asyncio.run(scenario()) == ("ok", 2)


def test_a_policy_must_end_and_the_operator_config_carries_one_per_system():
    with pytest.raises(ValidationError, match="needs attempts or deadlineSeconds"):
        RetryPolicy(attempts=None)
    config = OperatorConfig.model_validate({"outbound": {"kubernetes": {"attempts": 2, "timeoutSeconds": 5}}})
    assert (config.outbound.kubernetes.attempts, config.outbound.kubernetes.timeout_seconds) == (2, 5)
    assert OperatorConfig().outbound.kubernetes == KUBERNETES_API
