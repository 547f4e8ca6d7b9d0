"""A passed data check, as the Validating stage's workload reports it: the tests that play a
FineTuneJob's stages hand it over before the training result."""

DATA_CHECKED = {
    "succeeded": True,
    "dataset": {"rows": 300, "trainRows": 270, "holdOutRows": 30, "trainTokens": 41234, "format": "alpaca",
                "sha256": "ab" * 32},
    "cleaning": {"rowsIn": 310, "exactDuplicates": 10, "rowsOut": 300},
    "report": {"trainingRows": 270, "truncatedRows": 4, "maxSeqLength": 512, "estimatedSteps": 68,
               "tokenLengths": [{"tokens": "1-256", "rows": 200}, {"tokens": "257-512", "rows": 66},
                                {"tokens": "> 512 (truncated)", "rows": 4}]},
}
