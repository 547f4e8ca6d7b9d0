"""The evaluator: test answers from candidate and baseline, scored, with paired tests and confidence intervals."""
