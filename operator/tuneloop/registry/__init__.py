"""Every conversation with MLflow: runs and their story, registration, aliases, progress, the champion
(and its test rows, the next evaluation's regression set), webhooks, artifacts. No other module imports
mlflow; the operator-facing modules (progress, aliases, webhooks) import it lazily, so the operator
starts without it."""
