"""The feedback service: reviewers' corrections of served answers come in over HTTP, are stored
(PostgreSQL in a cluster, a SQLite file on one machine) and are read back in id order by the
snapshot workload that turns them into a training set.

Modules: `limits` (request limits), `schemas` (request and response bodies), `models` (the table),
`database` (engines, locks), `migrate` (Alembic, run on start), `store` (queries), `auth` (bearer
token), `errors` (error bodies), `app` (routes), `server` (`serve`, `python -m tuneloop.feedback`).
"""
