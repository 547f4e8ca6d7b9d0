"""The evaluator: hold-out answers from candidate and baseline, scored, with confidence intervals."""
