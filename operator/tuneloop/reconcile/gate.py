"""The gate: is the candidate better, beyond the noise, and no worse where it must not be?

The evaluator runs the gate's checks as one-sided paired tests (exact McNemar, paired bootstrap,
exact binomial), Holm-corrected across the family, and reports each as a GateTest. The gate passes
only if every test passed; its message names the test that decided: the first that failed, or,
when all passed, the one closest to failing.
"""

from __future__ import annotations

from tuneloop.api.evaluation import GateResult, GateTest


def _line(test: GateTest) -> str:
    return test.line() + (f" ({test.detail})" if test.detail else "")


def _closest_to_failing(tests: list[GateTest]) -> GateTest:
    tested = [test for test in tests if test.p_holm is not None]
    return max(tested, key=lambda test: test.p_holm) if tested else tests[0]


def decide(tests: list[GateTest], warnings: list[str]) -> GateResult:
    if not tests:
        return GateResult(passed=False, message="gate failed: the evaluation reported no gate test",
                          warnings=warnings)
    failed = [test for test in tests if not test.passed]
    checks = [("ok: " if test.passed else "FAILED: ") + _line(test) for test in tests]
    deciding = failed[0] if failed else _closest_to_failing(tests)
    if failed:
        others = f" (and {len(failed) - 1} more failed check{'s' if len(failed) > 2 else ''})" if len(failed) > 1 else ""
        message = f"gate failed on {_line(deciding)}{others}"
    else:
        message = (f"gate passed: {_line(deciding)}" if len(tests) == 1 else
                   f"gate passed {len(tests)} tests; weakest: {_line(deciding)}")
    return GateResult(passed=not failed, message=message, checks=checks, deciding=_line(deciding),
                      warnings=warnings)
